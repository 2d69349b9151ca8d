/*
 * mu_counters: a server's stats() counters as the native exchange counts them (issue 13 §2),
 * the twin of worker/http/stats.py's Stats: the same counters in the same order (the
 * fields below are Stats' COUNTERS, then its GAUGES, then the duration bins; a test holds the
 * two lists together), bumped in C per request, read by Python when stats() is asked and added
 * to the Python engine's (worker/http/native_counters.py).
 *
 * count_status is Stats.count_status; observe_us is Stats.observe after its
 * int(seconds * 1e6): one bin (bisect_left over MU_CTR_BOUNDS_US, the last bin is > 5 s), the
 * sum and the count. Single-threaded: one struct per server per worker, the loop's thread.
 */
#ifndef MU_COUNTERS_H
#define MU_COUNTERS_H

#include <stdint.h>

/* cdef-begin */
#define MU_CTR_BUCKETS 8 /* DURATION_BUCKETS_MS: 1 5 10 50 100 500 1000 5000 */

typedef struct {
    /* SERVER_COUNTERS (worker/counters.py) */
    int64_t connections_total;
    int64_t requests;
    int64_t responses_1xx;
    int64_t responses_2xx;
    int64_t responses_3xx;
    int64_t responses_4xx;
    int64_t responses_5xx;
    int64_t errors;
    int64_t bytes_in;
    int64_t bytes_out;
    int64_t upstream_connect_failures;
    int64_t upstream_ejections;
    int64_t upstream_unsolicited;
    /* HTTP's own (worker/http/stats.py COUNTERS) */
    int64_t duration_sum_us;
    int64_t duration_count;
    int64_t h2_connections_total;
    int64_t h2_requests;
    int64_t h2_upstream_requests;
    int64_t h2_upstream_retries;
    int64_t h2_upstream_retry_failures;
    int64_t h2_upstream_cap_waits;
    int64_t h2_upstream_cap_timeouts;
    /* GAUGES */
    int64_t open_connections;
    int64_t active_requests;
    /* per bin, not cumulative; bins[MU_CTR_BUCKETS]: > 5 s */
    int64_t bins[9];
} mu_counters;

void mu_ctr_count_status(mu_counters *c, int status);
void mu_ctr_observe_us(mu_counters *c, int64_t us);
/* cdef-end */

#endif /* MU_COUNTERS_H */
