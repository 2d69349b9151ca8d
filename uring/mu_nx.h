/*
 * mu_nx: the per-request decisions of the native exchange (issue 13 §2) that need no CPython:
 * is this request head one C serves (a strict subset: anything else is declined to the
 * Python engine, which is the reference and answers errors), and what the client gets for an
 * upstream response head. Plain C over spans. The Python twins are in
 * worker/http/native_engine.py (parse_request / parse_response / client_head);
 * tests/http/test_native_engine_twins.py compares them on generated heads.
 */
#ifndef MU_NX_H
#define MU_NX_H

#include <stddef.h>

/* cdef-begin */
#define MU_NX_MAX_FIELDS 64
#define MU_NX_MAX_HEAD 8192

/* a request C serves: the spans of one whole head, and its Content-Length body: what of it
 * is in the same bytes (body_missing: the bytes of it still to come, in later reads) */
typedef struct {
    const char *method;
    size_t method_len;
    const char *path;
    size_t path_len;
    const char *query;
    size_t query_len;
    const char *host;
    size_t host_len;
    long long content_length; /* -1: none */
    size_t head_len;          /* the head's bytes; the body follows */
    size_t total;             /* head and body: what follows is the next request's */
    long long body_missing;   /* body bytes not here yet (0: the request is whole) */
    size_t nfields;
    const char *names[64];  /* MU_NX_MAX_FIELDS */
    size_t name_lens[64];
    const char *values[64];
    size_t value_lens[64];
} mu_nx_request;

/* 0: `d` (n bytes) starts with a whole request head C serves, then its Content-Length body
 * of at most max_body bytes, or the start of it (rq->body_missing bytes of it are still to
 * come); rq->total bytes, pipelined ones may follow a whole request; its spans in *rq; else
 * the reason it is declined (> 0, see mu_nx_decline_reason). */
int mu_nx_parse_request(const char *d, size_t n, long long max_body, mu_nx_request *rq);
const char *mu_nx_decline_reason(int code);

/* a response head C relays */
typedef struct {
    int status;
    int keep_alive;        /* the upstream connection may be pooled after this response */
    long long content_length; /* body bytes to relay (0: none follow the head) */
    long long announce;    /* the client's content-length line, -1: none (204, 304, HEAD without one) */
    size_t head_len;       /* bytes of the upstream head (through its blank line) */
    size_t client_len;     /* bytes of the client's head (mu_nx_client_head) */
} mu_nx_response;

/* 0: d[0, n) starts with a whole response head C relays (facts in *rs); -1: the head is not
 * complete yet (and within MU_NX_MAX_HEAD); else a decline reason (> 0). head_only: the
 * request was HEAD (no body follows, the upstream's Content-Length is announced); 204 and
 * 304 have no body and announce none. */
int mu_nx_parse_response(const char *d, size_t n, int head_only, mu_nx_response *rs);
/* The client's head for that response into out (rs->client_len bytes). */
void mu_nx_client_head(const char *d, const mu_nx_response *rs, char *out);
/* decline reasons (mu_nx_decline_reason names them) */
#define MU_NX_REASONS 13
/* cdef-end */

/* decline reasons */
enum {
    NX_OK = 0,
    NX_INCOMPLETE = 1,    /* no blank line yet, or bytes after it */
    NX_TOO_BIG,
    NX_METHOD,
    NX_TARGET,
    NX_VERSION,
    NX_FIELD,             /* a field line C does not take */
    NX_FIELDS,            /* too many fields */
    NX_FRAMING,           /* Content-Length, Transfer-Encoding */
    NX_CONNECTION,        /* Connection, Upgrade, Expect and the like: Python decides */
    NX_HOST,              /* no Host, two, or one C does not take */
    NX_STATUS,            /* a status line or code C does not relay */
    NX_RESP_FRAMING,      /* a response without a length C relays */
    NX_REASON_COUNT
};


#endif /* MU_NX_H */
