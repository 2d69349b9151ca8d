/*
 * mu_route: Router.match (conf/routes.py) over a compiled table; see mu_route.h for the blob.
 *
 * The decision, in the Router's order:
 *   1. the host table: when the table has host tables and the request's host (the Host value
 *      lower-cased, without port or brackets: connection.py _hostname) is not empty, the table
 *      of its normalize_host key is tried first, the default table after it;
 *   2. in a table: an exact match of a fully static path, then (for a table with params or
 *      catch-alls, and a path starting with '/') the segment trie, where at each segment a
 *      static child beats a param (non-empty segment) beats a catch-all (non-empty rest), with
 *      backtracking; then the path prefixes, longest first, on a segment boundary ("/" takes
 *      everything).
 * The path is compared byte for byte: the Python router sees the target decoded as latin-1,
 * one character per byte, and the compiled strings are latin-1 too (a pattern that is not
 * latin-1 can match no request and is left out of the table).
 */
#include <stdlib.h>
#include <string.h>

#include "mu_route.h"

enum {
    H_MAGIC, H_VERSION, H_SIZE, H_NTABLES, H_TABLES, H_NSTATIC, H_STATIC, H_NNODES, H_NODES,
    H_NEDGES, H_EDGES, H_NPREFIX, H_PREFIX, H_NNAMES, H_NAMES, H_POOL, H_POOL_LEN, H_NROUTES,
};
enum { T_HOST_OFF, T_HOST_LEN, T_STATIC_FIRST, T_STATIC_COUNT, T_ROOT, T_DYNAMIC, T_PREFIX_FIRST,
       T_PREFIX_COUNT, T_WORDS };
enum { S_OFF, S_LEN, S_ROUTE, S_WORDS }; /* static, edge (S_ROUTE is the node) and prefix */
enum { N_EDGE_FIRST, N_EDGE_COUNT, N_PARAM, N_PARAM_NAME, N_CATCH_ROUTE, N_CATCH_NAME, N_ROUTE,
       N_WORDS };
enum { NM_OFF, NM_LEN, NM_WORDS };

#define MAX_NODES (1u << 20)

static const char *const errors[] = {
    "ok",
    "blob shorter than its header or not 4-byte aligned",
    "bad magic or version",
    "size field differs from the blob's length",
    "a record array lies outside the blob",
    "the string pool lies outside the blob",
    "a string lies outside the pool",
    "no default table",
    "a table's range of statics or prefixes is out of bounds",
    "a node, name or route index is out of bounds",
    "host tables, statics or edges are not strictly sorted",
    "the nodes are not trees (a node with two parents, or a child before its parent)",
    "a trie deeper than MU_ROUTE_MAX_DEPTH",
    "out of memory",
};

const char *mu_route_error(int code)
{
    int i = -code;
    if (i < 0 || i >= (int)(sizeof(errors) / sizeof(errors[0])))
        return "unknown error";
    return errors[i];
}

typedef struct {
    const uint32_t *w;
    const uint32_t *tables, *statics, *nodes, *edges, *prefixes, *names;
    const char *pool;
} view;

static void open_view(view *v, const void *blob)
{
    const uint32_t *w = blob;
    v->w = w;
    v->tables = w + w[H_TABLES] / 4;
    v->statics = w + w[H_STATIC] / 4;
    v->nodes = w + w[H_NODES] / 4;
    v->edges = w + w[H_EDGES] / 4;
    v->prefixes = w + w[H_PREFIX] / 4;
    v->names = w + w[H_NAMES] / 4;
    v->pool = (const char *)blob + w[H_POOL];
}

/* -- validation ---------------------------------------------------------------------------- */

static int array_ok(const uint32_t *w, size_t len, int count, int off, uint64_t words)
{
    uint64_t end = (uint64_t)w[off] + (uint64_t)w[count] * words * 4;
    return w[off] % 4 == 0 && w[off] >= MU_ROUTE_HEADER_WORDS * 4 && end <= len;
}

static int string_ok(const view *v, uint32_t off, uint32_t n)
{
    return (uint64_t)off + n <= v->w[H_POOL_LEN];
}

/* (length, bytes) order of two pool strings: <0, 0, >0 */
static int key_cmp(const view *v, const uint32_t *a, const uint32_t *b)
{
    if (a[S_LEN] != b[S_LEN])
        return a[S_LEN] < b[S_LEN] ? -1 : 1;
    return memcmp(v->pool + a[S_OFF], v->pool + b[S_OFF], a[S_LEN]);
}

/* strings of `count` records of `words` words from `first`: inside the pool, and sorted
 * strictly when `sorted` */
static int strings_ok(const view *v, const uint32_t *recs, uint32_t first, uint32_t count,
                      int words, int sorted, int *code)
{
    for (uint32_t i = 0; i < count; i++) {
        const uint32_t *r = recs + (size_t)(first + i) * words;
        if (!string_ok(v, r[S_OFF], r[S_LEN])) {
            *code = -6;
            return 0;
        }
        if (sorted && i > 0 && key_cmp(v, r - words, r) >= 0) {
            *code = -10;
            return 0;
        }
    }
    return 1;
}

static int range_ok(uint32_t first, uint32_t count, uint32_t n)
{
    return (uint64_t)first + count <= n;
}

int mu_route_check(const void *blob, size_t len)
{
    if (blob == NULL || len < MU_ROUTE_HEADER_WORDS * 4 || (uintptr_t)blob % 4 != 0)
        return -1;
    const uint32_t *w = blob;
    if (w[H_MAGIC] != MU_ROUTE_MAGIC || w[H_VERSION] != MU_ROUTE_VERSION)
        return -2;
    if (w[H_SIZE] != len)
        return -3;
    if (!array_ok(w, len, H_NTABLES, H_TABLES, T_WORDS) ||
        !array_ok(w, len, H_NSTATIC, H_STATIC, S_WORDS) ||
        !array_ok(w, len, H_NNODES, H_NODES, N_WORDS) ||
        !array_ok(w, len, H_NEDGES, H_EDGES, S_WORDS) ||
        !array_ok(w, len, H_NPREFIX, H_PREFIX, S_WORDS) ||
        !array_ok(w, len, H_NNAMES, H_NAMES, NM_WORDS))
        return -4;
    if ((uint64_t)w[H_POOL] + w[H_POOL_LEN] > len)
        return -5;
    if (w[H_NTABLES] < 1)
        return -7;
    if (w[H_NNODES] > MAX_NODES)
        return -9;
    view v;
    open_view(&v, blob);
    int code = 0;
    uint32_t ntables = w[H_NTABLES], nnodes = w[H_NNODES], nroutes = w[H_NROUTES];
    if (!strings_ok(&v, v.tables + T_WORDS, 0, ntables - 1, T_WORDS, 1, &code) ||
        !strings_ok(&v, v.edges, 0, w[H_NEDGES], S_WORDS, 0, &code) ||
        !strings_ok(&v, v.prefixes, 0, w[H_NPREFIX], S_WORDS, 0, &code) ||
        !strings_ok(&v, v.statics, 0, w[H_NSTATIC], S_WORDS, 0, &code) ||
        !strings_ok(&v, v.names, 0, w[H_NNAMES], NM_WORDS, 0, &code))
        return code;
    for (uint32_t i = 0; i < w[H_NSTATIC]; i++)
        if (v.statics[i * S_WORDS + S_ROUTE] >= nroutes)
            return -9;
    for (uint32_t i = 0; i < w[H_NPREFIX]; i++)
        if (v.prefixes[i * S_WORDS + S_ROUTE] >= nroutes)
            return -9;
    /* parents: MU_ROUTE_NONE until a table or a node claims the node */
    uint32_t *parent = malloc(((size_t)nnodes + 1) * sizeof(uint32_t));
    uint8_t *depth = malloc((size_t)nnodes + 1);
    if (parent == NULL || depth == NULL) {
        free(parent);
        free(depth);
        return -13;
    }
    memset(parent, 0xff, ((size_t)nnodes + 1) * sizeof(uint32_t));
    memset(depth, 0, (size_t)nnodes + 1);
    for (uint32_t t = 0; t < ntables && code == 0; t++) {
        const uint32_t *T = v.tables + (size_t)t * T_WORDS;
        if (!range_ok(T[T_STATIC_FIRST], T[T_STATIC_COUNT], w[H_NSTATIC]) ||
            !range_ok(T[T_PREFIX_FIRST], T[T_PREFIX_COUNT], w[H_NPREFIX]))
            code = -8;
        else if (T[T_ROOT] >= nnodes)
            code = -9;
        else if (parent[T[T_ROOT]] != MU_ROUTE_NONE)
            code = -11;
        else if (!strings_ok(&v, v.statics, T[T_STATIC_FIRST], T[T_STATIC_COUNT], S_WORDS, 1,
                             &code))
            break;
        else
            parent[T[T_ROOT]] = nnodes; /* a root: claimed by a table */
    }
    for (uint32_t i = 0; i < nnodes && code == 0; i++) {
        const uint32_t *N = v.nodes + (size_t)i * N_WORDS;
        if (!range_ok(N[N_EDGE_FIRST], N[N_EDGE_COUNT], w[H_NEDGES])) {
            code = -9;
            break;
        }
        if ((N[N_ROUTE] != MU_ROUTE_NONE && N[N_ROUTE] >= nroutes) ||
            (N[N_CATCH_ROUTE] != MU_ROUTE_NONE &&
             (N[N_CATCH_ROUTE] >= nroutes || N[N_CATCH_NAME] >= w[H_NNAMES])) ||
            (N[N_PARAM] != MU_ROUTE_NONE &&
             (N[N_PARAM] >= nnodes || N[N_PARAM_NAME] >= w[H_NNAMES]))) {
            code = -9;
            break;
        }
        if (!strings_ok(&v, v.edges, N[N_EDGE_FIRST], N[N_EDGE_COUNT], S_WORDS, 1, &code))
            break;
        for (uint32_t e = 0; e <= N[N_EDGE_COUNT] && code == 0; e++) {
            uint32_t c = e < N[N_EDGE_COUNT] ? v.edges[(size_t)(N[N_EDGE_FIRST] + e) * S_WORDS + S_ROUTE]
                                             : N[N_PARAM];
            if (c == MU_ROUTE_NONE && e == N[N_EDGE_COUNT])
                break;
            if (c >= nnodes)
                code = -9;
            else if (c <= i || parent[c] != MU_ROUTE_NONE)
                code = -11;
            else if (depth[i] + 1 > MU_ROUTE_MAX_DEPTH)
                code = -12;
            else {
                parent[c] = i;
                depth[c] = (uint8_t)(depth[i] + 1);
            }
        }
    }
    free(parent);
    free(depth);
    return code;
}

/* -- matching ------------------------------------------------------------------------------ */

/* latin-1 lower case, as Python's str.lower() of a latin-1 decoded byte */
static unsigned char low(unsigned char c)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 0xc0 && c <= 0xde && c != 0xd7))
        return (unsigned char)(c + 32);
    return c;
}

/* the record among recs[first, first + count) whose string is s (compared lower-cased when
 * `fold`), by binary search over the (length, bytes) order; NULL if none */
static const uint32_t *find(const view *v, const uint32_t *recs, uint32_t first, uint32_t count,
                            int words, const char *s, size_t n, int fold)
{
    uint32_t lo = 0, hi = count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const uint32_t *r = recs + (size_t)(first + mid) * words;
        int c;
        if (r[S_LEN] != n)
            c = r[S_LEN] < n ? -1 : 1;
        else if (!fold)
            c = memcmp(v->pool + r[S_OFF], s, n);
        else {
            c = 0;
            const unsigned char *k = (const unsigned char *)v->pool + r[S_OFF];
            for (size_t i = 0; i < n && c == 0; i++)
                c = (int)k[i] - (int)low((unsigned char)s[i]);
        }
        if (c == 0)
            return r;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

typedef struct {
    const view *v;
    const char *path;
    size_t len;
    mu_route_capture *caps;
    int ncaps;
} walk_t;

static void capture(walk_t *W, int at, uint32_t name, size_t off, size_t n)
{
    if (W->caps != NULL) {
        W->caps[at].name = name;
        W->caps[at].off = (uint32_t)off;
        W->caps[at].len = (uint32_t)n;
    }
}

/* _walk: the route under `node` for the segments from `pos` (past the end: none left), with
 * `at` params captured so far; -1 if none. Recursion depth is bounded by the trie's. */
static int walk(walk_t *W, uint32_t node, size_t pos, int at)
{
    const view *v = W->v;
    const uint32_t *N = v->nodes + (size_t)node * N_WORDS;
    if (pos > W->len) {
        if (N[N_ROUTE] == MU_ROUTE_NONE)
            return -1;
        W->ncaps = at;
        return (int)N[N_ROUTE];
    }
    const char *seg = W->path + pos;
    const char *slash = memchr(seg, '/', W->len - pos);
    size_t end = slash != NULL ? (size_t)(slash - W->path) : W->len;
    const uint32_t *e = find(v, v->edges, N[N_EDGE_FIRST], N[N_EDGE_COUNT], S_WORDS, seg,
                             end - pos, 0);
    if (e != NULL) {
        int found = walk(W, e[S_ROUTE], end + 1, at);
        if (found >= 0)
            return found;
    }
    if (N[N_PARAM] != MU_ROUTE_NONE && end > pos) {
        capture(W, at, N[N_PARAM_NAME], pos, end - pos);
        int found = walk(W, N[N_PARAM], end + 1, at + 1);
        if (found >= 0)
            return found;
    }
    if (N[N_CATCH_ROUTE] != MU_ROUTE_NONE && pos < W->len) {
        capture(W, at, N[N_CATCH_NAME], pos, W->len - pos);
        W->ncaps = at + 1;
        return (int)N[N_CATCH_ROUTE];
    }
    return -1;
}

/* _Table.match */
static int table_match(walk_t *W, const uint32_t *T)
{
    const view *v = W->v;
    const char *path = W->path;
    size_t len = W->len;
    W->ncaps = 0;
    const uint32_t *s = find(v, v->statics, T[T_STATIC_FIRST], T[T_STATIC_COUNT], S_WORDS, path,
                             len, 0);
    if (s != NULL)
        return (int)s[S_ROUTE];
    if (T[T_DYNAMIC] && len > 0 && path[0] == '/') {
        int found = walk(W, T[T_ROOT], 1, 0);
        if (found >= 0)
            return found;
        W->ncaps = 0;
    }
    for (uint32_t i = 0; i < T[T_PREFIX_COUNT]; i++) {
        const uint32_t *p = v->prefixes + (size_t)(T[T_PREFIX_FIRST] + i) * S_WORDS;
        const char *k = v->pool + p[S_OFF];
        size_t n = p[S_LEN];
        if ((n == 1 && k[0] == '/') ||
            (len >= n && memcmp(path, k, n) == 0 && (len == n || path[n] == '/')))
            return (int)p[S_ROUTE];
    }
    return -1;
}

/* normalize_host(_hostname(raw)): the span of `raw` that is the host key (compared
 * lower-cased); 0 when _hostname is empty (then no host table is tried) */
static int host_key(const char *raw, size_t n, const char **key, size_t *klen)
{
    const char *h = raw;
    size_t hn = n;
    if (n > 0 && raw[0] == '[') {
        const char *close = memchr(raw, ']', n);
        if (close != NULL) {  /* _hostname: between the brackets */
            h = raw + 1;
            hn = (size_t)(close - raw) - 1;
            if (hn == 0)
                return 0;
            if (h[0] == '[') {  /* normalize_host: an opening bracket without a closing one */
                h++;
                hn--;
            } else {
                const char *colon = memchr(h, ':', hn);
                if (colon != NULL && memchr(colon + 1, ':', hn - (size_t)(colon - h) - 1) == NULL)
                    hn = (size_t)(colon - h);  /* exactly one ':': what precedes it */
            }
        } else {  /* _hostname keeps it whole; normalize_host drops the bracket */
            h = raw + 1;
            hn = n - 1;
        }
    } else {
        const char *colon = memchr(raw, ':', n);
        if (colon != NULL)
            hn = (size_t)(colon - raw);
        if (hn == 0)
            return 0;
    }
    while (hn > 0 && h[hn - 1] == '.')
        hn--;
    *key = h;
    *klen = hn;
    return 1;
}

int mu_route_match(const void *blob, const char *host, size_t host_len, const char *path,
                   size_t path_len, mu_route_capture *caps, int *ncaps)
{
    view v;
    open_view(&v, blob);
    walk_t W = {&v, path != NULL ? path : "", path != NULL ? path_len : 0, caps, 0};
    int found = -1;
    if (ncaps != NULL)
        *ncaps = 0;
    if (W.len >= MU_ROUTE_NONE)
        return -1;  /* captures are 32-bit offsets (no head is that large) */
    const char *key;
    size_t klen;
    if (v.w[H_NTABLES] > 1 && host != NULL && host_key(host, host_len, &key, &klen)) {
        const uint32_t *t = find(&v, v.tables + T_WORDS, 0, v.w[H_NTABLES] - 1, T_WORDS, key,
                                 klen, 1);
        if (t != NULL)
            found = table_match(&W, t);
    }
    if (found < 0)
        found = table_match(&W, v.tables);
    if (found >= 0 && ncaps != NULL)
        *ncaps = W.ncaps;
    return found;
}

const char *mu_route_name(const void *blob, uint32_t index, uint32_t *len)
{
    view v;
    open_view(&v, blob);
    if (index >= v.w[H_NNAMES])
        return NULL;
    const uint32_t *nm = v.names + (size_t)index * NM_WORDS;
    *len = nm[NM_LEN];
    return v.pool + nm[NM_OFF];
}
