/*
 * mu_head: the upstream request head written in C (issue 13 §2), the twin of the Python
 * engine's upstream_target + request_head (worker/http/headers.py, _request_head_py is the
 * reference), after the request side of the header_rewrite options (worker/http/layers.py
 * HeaderRewrite: remove_request, set_request). Plain C over spans, no CPython: the input is a
 * parsed head as mu_http.c's request parser sees it (method, target, field name/value spans
 * with the names in any case and the values trimmed, the framing facts), the route's and the
 * upstream's options (compiled once, see worker/http/native_head.py) and the connection's
 * forwarding facts. The output is byte for byte what the Python engine sends.
 */
#ifndef MU_HEAD_H
#define MU_HEAD_H

#include <stddef.h>

/* cdef-begin */
typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} mu_head_field;

typedef struct {
    const char *method;
    size_t method_len;
    const char *path;   /* the request target's path: the target up to its first '?' */
    size_t path_len;
    const char *query;  /* what follows that '?' (empty: none) */
    size_t query_len;
    const mu_head_field *fields;
    size_t nfields;
    int upgrade;        /* an upgrade request (Upgrade named by Connection: RQ_UPGRADE) */
    int chunked;        /* Transfer-Encoding: chunked */
    long long content_length; /* -1: none */
} mu_head_request;

typedef struct {
    int uri;            /* a URI upstream (Upstream.kind == "uri"); else unix: the client's path */
    const char *path;   /* the URI's path ("/" when it has none) */
    size_t path_len;
    const char *query;  /* the URI's query, without '?' */
    size_t query_len;
    const char *host_header; /* its authority, the Host it gets unless preserve_host */
    size_t host_header_len;
} mu_head_upstream;

typedef struct {
    int preserve_path;  /* the route's: the request path appended to the URI's */
    int preserve_host;  /* the server's: the client's Host goes upstream */
    int via;            /* the server's: add "1.1 monolake" to Via */
    const mu_head_field *set;      /* header_rewrite set_request: appended, names lower-case */
    size_t nset;
    const mu_head_field *remove;   /* remove_request and the set names (value unused) */
    size_t nremove;
} mu_head_route;

typedef struct {
    const char *ip;     /* the client's address as text ("unknown" off IP) */
    size_t ip_len;
    const char *scheme; /* "http" or "https" */
    size_t scheme_len;
} mu_head_conn;

/* Write the upstream head (request line, kept fields, forwarding fields, framing, the blank
 * line) into out[0, cap) and return its length; when that is more than cap nothing useful is
 * in `out` (as snprintf: call again with a buffer that large; out may be NULL with cap 0). */
size_t mu_head_write(const mu_head_request *rq, const mu_head_route *rt,
                     const mu_head_upstream *up, const mu_head_conn *cn, char *out, size_t cap);
/* cdef-end */

/* The next element of the comma-separated list v[*pos, n] (a field value such as
 * Connection's): its span in *t, *tn, stripped of spaces and tabs (and, when wide, of the
 * other ASCII whitespace too); 1, or 0 past the last element. Empty elements count (the
 * callers skip them); start with *pos = 0. Shared by mu_head and mu_nx. */
int mu_list_next(const char *v, size_t n, size_t *pos, int wide, const char **t, size_t *tn);

/* ASCII lower case of c, and: is a[0, n) the lower-case literal lit[0, m) in any case?
 * (static inline: mu_nx calls it per field name on the request path) */
static inline unsigned char mu_low(unsigned char c)
{
    return (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
}

static inline int mu_ieq(const char *a, size_t n, const char *lit, size_t m)
{
    if (n != m)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (mu_low((unsigned char)a[i]) != (unsigned char)lit[i])
            return 0;
    return 1;
}

/* What an upstream request head does with a client's field, by name (any case): kept,
 * dropped (hop-by-hop and framing fields the proxy rewrites) or handled by a rule. One
 * table for this unit and for mu_http.c's forward_head, so the two heads cannot disagree. */
enum { F_KEEP, F_DROP, F_HOST, F_XFF, F_FWD, F_VIA, F_UPGRADE, F_CONNECTION };
int mu_head_field_kind(const char *name, size_t len);

#endif /* MU_HEAD_H */
