/* mu_balance: the kit's Balancer in C; see mu_balance.h for what it decides and why. */
#include "mu_balance.h"

#include <stdlib.h>
#include <string.h>

/* ----- the RNG: splitmix64, drawn as CPython's Random draws from getrandbits/random ----- */

void mu_rng_seed(mu_rng *r, uint64_t seed) { r->state = seed; }

uint64_t mu_rng_next(mu_rng *r) {
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t mu_rng_getrandbits(mu_rng *r, unsigned k) {
    if (k == 0)
        return 0;
    if (k > 64)
        k = 64;
    return mu_rng_next(r) >> (64 - k);
}

double mu_rng_random(mu_rng *r) { return (double)(mu_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

static unsigned bit_length(uint64_t n) {
    unsigned k = 0;
    while (n) {
        k++;
        n >>= 1;
    }
    return k;
}

/* random._randbelow_with_getrandbits */
uint64_t mu_rng_below(mu_rng *r, uint64_t n) {
    if (n == 0)
        return 0;
    unsigned k = bit_length(n);
    uint64_t x = mu_rng_getrandbits(r, k);
    while (x >= n)
        x = mu_rng_getrandbits(r, k);
    return x;
}

/* ----- the table ----- */

mu_balancer *mu_bal_new(uint32_t policy, uint64_t seed, int fallback_all) {
    if (policy >= MU_BAL_POLICIES)
        return NULL;
    mu_balancer *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->policy = policy;
    b->fallback_all = fallback_all ? 1 : 0;
    mu_rng_seed(&b->rng, seed);
    return b;
}

void mu_bal_free(mu_balancer *b) {
    if (!b)
        return;
    free(b->eps);
    free(b->cand);
    free(b->cum);
    free(b);
}

static int reserve(mu_balancer *b, uint32_t n) {
    if (n <= b->cap) /* (a table passed from b->eps itself is never more than cap) */
        return 0;
    mu_bal_endpoint *eps = malloc((size_t)n * sizeof *eps);
    uint32_t *cand = malloc((size_t)n * sizeof *cand);
    uint64_t *cum = malloc((size_t)n * sizeof *cum);
    if (!eps || !cand || !cum) {
        free(eps);
        free(cand);
        free(cum);
        return -1;
    }
    if (b->n)
        memcpy(eps, b->eps, (size_t)b->n * sizeof *eps);
    free(b->eps);
    free(b->cand);
    free(b->cum);
    b->eps = eps;
    b->cand = cand;
    b->cum = cum;
    b->cap = n;
    return 0;
}

int mu_bal_replace(mu_balancer *b, const mu_bal_endpoint *eps, uint32_t n) {
    if (reserve(b, n) < 0)
        return -1;
    if (n && eps != b->eps)
        memmove(b->eps, eps, (size_t)n * sizeof *eps);
    b->n = n;
    b->position = n ? b->position % n : 0;
    b->tiered = 0;
    for (uint32_t i = 1; i < n; i++)
        if (eps[i].priority != eps[0].priority) {
            b->tiered = 1;
            break;
        }
    return 0;
}

void mu_bal_set_position(mu_balancer *b, uint64_t position) {
    b->position = b->n ? (uint32_t)(position % b->n) : 0;
}

void mu_bal_acquire(mu_balancer *b, uint32_t i) {
    if (i < b->n)
        b->eps[i].active++;
}

void mu_bal_release(mu_balancer *b, uint32_t i) {
    if (i < b->n && b->eps[i].active)
        b->eps[i].active--;
}

static int available(const mu_bal_endpoint *ep, double now) {
    return ep->flags == 0 && ep->ejected_until <= now;
}

int mu_bal_available(const mu_balancer *b, uint32_t i, double now) {
    return i < b->n && available(&b->eps[i], now);
}

static int excluded(uint32_t i, const uint32_t *exclude, uint32_t nexclude) {
    for (uint32_t j = 0; j < nexclude; j++)
        if (exclude[j] == i)
            return 1;
    return 0;
}

/* ----- the policies: each gets the candidates (ascending indices, at least one) ----- */

static uint32_t round_robin(mu_balancer *b, const uint32_t *idx, uint32_t m) {
    uint32_t chosen = idx[0];
    for (uint32_t j = 0; j < m; j++)
        if (idx[j] >= b->position) {
            chosen = idx[j];
            break;
        }
    b->position = (chosen + 1) % b->n;
    return chosen;
}

/* random.choices(idx, weights)[0]: bisect_right(cum, random() * total, 0, m - 1) */
static uint32_t weighted(mu_balancer *b, const uint32_t *idx, uint32_t m) {
    uint64_t total = 0;
    for (uint32_t j = 0; j < m; j++) {
        uint32_t w = b->eps[idx[j]].weight;
        total += w ? w : 1;
        b->cum[j] = total;
    }
    double x = mu_rng_random(&b->rng) * (double)total;
    uint32_t lo = 0, hi = m - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (x < (double)b->cum[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return idx[lo];
}

/* the lowest load; a tie: random.choice among the tied (compacted into idx in place) */
static uint32_t least_conn(mu_balancer *b, uint32_t *idx, uint32_t m) {
    uint32_t low = b->eps[idx[0]].active;
    for (uint32_t j = 1; j < m; j++)
        if (b->eps[idx[j]].active < low)
            low = b->eps[idx[j]].active;
    uint32_t k = 0;
    for (uint32_t j = 0; j < m; j++)
        if (b->eps[idx[j]].active == low)
            idx[k++] = idx[j];
    return k == 1 ? idx[0] : idx[mu_rng_below(&b->rng, k)];
}

int mu_bal_pick(mu_balancer *b, double now, const uint32_t *exclude, uint32_t nexclude) {
    if (b->rejecting || b->n == 0)
        return MU_BAL_NONE;
    if (!exclude)
        nexclude = 0;
    const mu_bal_endpoint *eps = b->eps;
    uint32_t n = b->n;
    if (n == 1 && nexclude == 0) /* Python's fast path: no RNG, no position */
        return b->fallback_all || available(&eps[0], now) ? 0 : MU_BAL_NONE;
    uint32_t *idx = b->cand;
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++)
        if (available(&eps[i], now) && !excluded(i, exclude, nexclude))
            idx[m++] = i;
    if (m == 0) {
        if (!b->fallback_all)
            return MU_BAL_NONE;
        for (uint32_t i = 0; i < n; i++)
            if (!excluded(i, exclude, nexclude))
                idx[m++] = i;
        if (m == 0)
            return MU_BAL_NONE;
    }
    if (b->tiered) {
        int32_t low = eps[idx[0]].priority;
        for (uint32_t j = 1; j < m; j++)
            if (eps[idx[j]].priority < low)
                low = eps[idx[j]].priority;
        uint32_t k = 0;
        for (uint32_t j = 0; j < m; j++)
            if (eps[idx[j]].priority == low)
                idx[k++] = idx[j];
        m = k;
    }
    switch (b->policy) {
    case MU_BAL_RANDOM:
        return (int)idx[mu_rng_below(&b->rng, m)];
    case MU_BAL_WEIGHTED:
        return (int)weighted(b, idx, m);
    case MU_BAL_ROUND_ROBIN:
        return (int)round_robin(b, idx, m);
    case MU_BAL_FIRST:
        return (int)idx[0];
    default:
        return (int)least_conn(b, idx, m);
    }
}
