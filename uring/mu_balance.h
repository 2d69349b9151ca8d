/*
 * mu_balance: the upstream choice of the native exchange in C (issue 13 §2), the twin of the
 * kit's Balancer (worker/upstream/balance.py) for its five policies: random, weighted_random,
 * round_robin, first, least_conn. Python decides what the endpoints are and whether each may be
 * picked: it writes the endpoint table (weights, eligibility, SRV priority, in-flight counts)
 * and C only picks from it. Same inputs, same answer as the Python balancer:
 *
 *   - candidates: the available endpoints not excluded; none available -> MU_BAL_NONE, or
 *     with fallback_all (Thrift) every endpoint not excluded; SRV tiers (only when the
 *     priorities differed at the last mu_bal_replace, as Python's `_tiered`): only the lowest
 *     priority among the candidates;
 *   - one endpoint and no exclusions: that endpoint if available (or fallback_all), else
 *     MU_BAL_NONE, without touching the RNG or the position (Python's fast path);
 *   - round_robin: the first candidate at or after `position`, else the first candidate;
 *     position becomes (chosen + 1) % n;
 *   - first: the first candidate;
 *   - least_conn: the lowest `active`; a tie is broken with the RNG as random.choice does;
 *   - random: the RNG as random.randrange(len(candidates)) does;
 *   - weighted_random: as random.choices(candidates, weights) does (cumulative weights,
 *     bisect_right of random() * total, capped at the last candidate).
 *
 * The RNG is splitmix64 (mu_rng). Its "getrandbits(k)" is next() >> (64 - k) and "random()" is
 * (next() >> 11) * 2^-53, and "below(n)" draws getrandbits(n.bit_length()) until it is < n,
 * exactly CPython's _randbelow_with_getrandbits. So a random.Random subclass over the same
 * splitmix64 stream (worker/upstream/native_balance.py SplitMix64) makes the Python Balancer
 * draw the same numbers, and a differential test compares every choice, random ones included.
 * In production each worker seeds its own stream (the distribution is what must match).
 *
 * Eligibility (the kit's Health.available): an endpoint is available at `now` iff
 * flags == 0 and ejected_until <= now. Python keeps `flags` (draining, operator override,
 * active-check verdict) and `ejected_until` (passive ejection, monotonic seconds) up to date;
 * C never changes them. `active` is least_conn's load: whoever starts or ends a request on an
 * endpoint changes it (mu_bal_acquire / mu_bal_release in C, the wrapper's sync from Python).
 *
 * Single-threaded: one balancer per route per worker, used from the loop's thread only.
 * Memory: mu_bal_new allocates the balancer and its table (capacity grows in mu_bal_replace);
 * mu_bal_free releases it. Positions survive reloads and state migration as Python's do: read
 * `position`, and after a replace set it back with mu_bal_set_position (taken modulo n, as
 * RouterService.import_state does).
 */
#ifndef MU_BALANCE_H
#define MU_BALANCE_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
/* policies: the index in balance.POLICIES */
#define MU_BAL_RANDOM 0
#define MU_BAL_WEIGHTED 1
#define MU_BAL_ROUND_ROBIN 2
#define MU_BAL_FIRST 3
#define MU_BAL_LEAST_CONN 4
#define MU_BAL_POLICIES 5

/* mu_bal_pick: no endpoint may be picked */
#define MU_BAL_NONE -1

/* endpoint flags: any bit set = not available (the reason is only for whoever reads it) */
#define MU_EP_DRAINING 1   /* DNS dropped it */
#define MU_EP_ADMIN 2      /* the runtime API: disabled or draining */
#define MU_EP_UNHEALTHY 4  /* the active checker's verdict is not "up" */

/* one endpoint: Python writes weight, flags, ejected_until, priority; active as above */
typedef struct {
    double ejected_until; /* passive ejection: out while now < ejected_until */
    uint32_t weight;      /* weighted_random's weight, >= 1 (0 is read as 1, as max(1, w)) */
    uint32_t flags;       /* MU_EP_* */
    int32_t priority;     /* SRV priority, lower first; 0 for everything else */
    uint32_t active;      /* requests in flight (least_conn's load) */
} mu_bal_endpoint;

typedef struct {
    uint64_t state;
} mu_rng;

typedef struct {
    mu_bal_endpoint *eps; /* eps[0 .. n): the table (read and written in place) */
    uint32_t n;           /* endpoints in the table */
    uint32_t policy;      /* MU_BAL_* */
    uint32_t position;    /* round_robin's rotating position, < n (0 when n == 0) */
    uint32_t fallback_all; /* none available: pick among all (Thrift) */
    uint32_t rejecting;   /* the route's active checks reject everything: pick nothing */
    uint32_t tiered;      /* the priorities differed at the last replace */
    mu_rng rng;
    /* private { */
    uint32_t cap;
    uint32_t *cand;  /* scratch: candidate indices */
    uint64_t *cum;   /* scratch: cumulative weights */
    /* } private */
} mu_balancer;

/* A balancer with `policy` (MU_BAL_*), an empty table, its RNG seeded with `seed`; NULL on a
 * bad policy or no memory. */
mu_balancer *mu_bal_new(uint32_t policy, uint64_t seed, int fallback_all);
void mu_bal_free(mu_balancer *b);

/* The table becomes eps[0 .. n) (copied): Balancer.replace. position %= n, tiered is
 * recomputed. 0, or -1 (no memory: the old table stays). */
int mu_bal_replace(mu_balancer *b, const mu_bal_endpoint *eps, uint32_t n);

/* Balancer.reweigh is a write to eps[i].weight; Balancer.position = p is this (p % n). */
void mu_bal_set_position(mu_balancer *b, uint64_t position);

/* The index of the endpoint to use at monotonic time `now`, or MU_BAL_NONE. `exclude`
 * (nexclude indices, any order, out-of-range ones ignored; NULL/0 for none) are the
 * endpoints a retry already tried. */
int mu_bal_pick(mu_balancer *b, double now, const uint32_t *exclude, uint32_t nexclude);

/* active += 1 / active -= 1 (never below 0) for a request C starts / ends on endpoint i. */
void mu_bal_acquire(mu_balancer *b, uint32_t i);
void mu_bal_release(mu_balancer *b, uint32_t i);

/* Is endpoint i available at `now` (Health.available over the table)? */
int mu_bal_available(const mu_balancer *b, uint32_t i, double now);

/* The RNG (exposed so the Python twin can be checked against it draw by draw). */
void mu_rng_seed(mu_rng *r, uint64_t seed);
uint64_t mu_rng_next(mu_rng *r);
uint64_t mu_rng_getrandbits(mu_rng *r, unsigned k); /* 1 <= k <= 64 */
double mu_rng_random(mu_rng *r);                    /* [0, 1), 53 bits */
uint64_t mu_rng_below(mu_rng *r, uint64_t n);       /* [0, n), n >= 1 */
/* cdef-end */

#endif /* MU_BALANCE_H */
