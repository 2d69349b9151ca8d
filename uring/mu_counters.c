/* mu_counters: Stats' counting rules in C; see mu_counters.h. */
#include "mu_counters.h"

static const int64_t bounds_us[MU_CTR_BUCKETS] = {1000, 5000, 10000, 50000, 100000, 500000, 1000000, 5000000};

void mu_ctr_count_status(mu_counters *c, int status) {
    if (status < 200)
        c->responses_1xx++;
    else if (status < 300)
        c->responses_2xx++;
    else if (status < 400)
        c->responses_3xx++;
    else if (status < 500)
        c->responses_4xx++;
    else
        c->responses_5xx++;
}

void mu_ctr_observe_us(mu_counters *c, int64_t us) {
    int i = 0;
    while (i < MU_CTR_BUCKETS && bounds_us[i] < us) /* bisect_left: the first bound >= us */
        i++;
    c->bins[i]++;
    c->duration_sum_us += us;
    c->duration_count++;
}
