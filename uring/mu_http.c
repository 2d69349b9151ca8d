/*
 * monolake native HTTP/1.1 parsers, published as ``monolake.uring._http`` by mu_http_install()
 * (compiled into their own extension, monolake.uring._codec, which needs no liburing; used by
 * monolake.worker.http.parser as the ``native`` parser, on either event loop).
 *
 * Why: with httptools a proxied request costs about five Python callbacks on the client side
 * and one per header on the upstream side, and the protocol then walks the header list again in
 * Python for the framing headers and the hop-by-hop rules. These parsers do the whole head in C
 * (validation, lower-cased names, framing facts, for responses the client-bound header list) and
 * call Python once per head:
 *
 *   RequestParser(proto, max_head, max_uri, max_line=8192, max_fields=100)
 *       proto.on_request_head(method, target, version, headers, host, content_length, flags)
 *       then, for a request with a body, proto.on_body(bytes)... and proto.on_message_complete().
 *       A request without a body is complete when on_request_head returns.
 *   ResponseParser(proto, head_request, collect_max=0, lend=False, max_head=65536, max_line=8192,
 *                  max_fields=100)
 *       proto.on_response(status, reason, headers, keep_alive, content_length, chunked, body)
 *       (headers already without hop-by-hop ones). `body` is the whole Content-Length body
 *       when it arrived with the head, or when it is at most collect_max bytes (the callback
 *       then waits for it, each byte copied once into the final bytes object, as nginx's
 *       proxy buffering): the response is then complete. With lend=True, a body that arrived
 *       with its head is not copied: it is a read-only memoryview of the input, valid only
 *       until on_response returns (then released, see mu_lend_end). With the attribute
 *       relay set, such a whole response (not a 101) goes instead to
 *       proto.on_relay(status, reason, block, keep_alive, body), where block is the header
 *       block a client gets ("name: value\r\n" per kept header, names lower-case, without
 *       Content-Length, which the writer sets): no header list is built. Otherwise body is None and
 *       proto.on_body(bytes)... and proto.on_message_complete() follow (streaming). Interim
 *       1xx responses other than 101 are skipped. Bytes after a complete response are parsed
 *       as the next one (its callbacks follow in the same feed_data); `leftover` counts those
 *       taken without a callback yet (a partial head, a head whose body is being collected), so
 *       a proxy can refuse to pool the connection.
 *
 * Both: chunk_left() / skip_chunk(n) let a chunk's payload go around the parser (a splice,
 * worker/http/splice_relay.py): the parser then expects the chunk's CRLF as if it had seen it.
 *
 * Heads are bounded by max_head (the sum of name + value + 4 over the fields), max_line (one
 * field: name + ": " + value) and max_fields; over any, ParseError with 431 (requests) or 502.
 *
 * feed_data(data) raises ParseError(message, status) on bad input and UpgradeRequested(rest)
 * after an upgrade head (the classes are handed over by configure()). Requests are strict (the
 * smuggling rules of docs/http.md: CRLF only, no NUL or obs-fold, one Content-Length of digits,
 * Transfer-Encoding exactly "chunked" and never with Content-Length, bounded chunk sizes);
 * responses accept bare LF line ends, as nginx does, and are otherwise as strict.
 */
#include <Python.h>
#include <structmember.h>
#include <string.h>

#include "mu_http.h"
#include "mu_head.h"
#include "mu_lend.h"

static PyObject *ParseErrorType = NULL;
static PyObject *UpgradeType = NULL;
static PyObject *s_on_request_head, *s_on_response, *s_on_relay, *s_on_body, *s_on_message_complete;
static PyObject *s_on_trailers;
static PyObject *s_version_11, *s_version_10;
static PyObject *m_get, *m_post, *m_head, *m_put, *m_delete;

/* flags passed to on_request_head */
#define RQ_CHUNKED 1
#define RQ_EXPECT 2
#define RQ_CONN_CLOSE 4
#define RQ_CONN_KEEPALIVE 8
#define RQ_UPGRADE 16

enum { S_HEAD, S_LENGTH, S_CHUNK_SIZE, S_CHUNK_DATA, S_CHUNK_CRLF, S_TRAILERS, S_UNTIL_CLOSE,
       S_COLLECT, S_DEAD };

#define MAX_HEADERS 256
#define CHUNK_LINE_MAX 4096

static unsigned char tchar[256];
static unsigned char lower[256];

typedef struct {
    PyObject_HEAD
    PyObject *proto;
    int is_request;
    int state;
    int busy;
    int head_request;   /* responses: answer to HEAD (no body) */
    int lend;           /* responses: a body that came with its head is lent as a memoryview */
    char relay;         /* responses: the next whole one goes to on_relay (settable: .relay) */
    int complete_after; /* responses: on_message_complete due after the head */
    Py_ssize_t max_head, max_uri;
    Py_ssize_t max_line;    /* one header field line: name, ": ", value */
    int max_fields;         /* header fields per head (at most MAX_HEADERS) */
    long long remaining;
    Py_ssize_t collect_max; /* responses: Content-Length bodies up to this are collected whole */
    PyObject *pending;      /* S_COLLECT: the on_response arguments but the body */
    PyObject *body;         /* S_COLLECT: the body being filled (a bytes object of its length) */
    Py_ssize_t filled;
    Py_ssize_t collect_head; /* S_COLLECT: the size of the head whose body is being collected */
    PyObject *trailers;     /* S_TRAILERS: the trailer fields so far (a list), or NULL */
    Py_ssize_t tr_size;     /* S_TRAILERS: field_limits' counts for the trailer section */
    int tr_count;
    PyObject *connection;   /* responses: the chunked head's Connection values ("a, b"), or NULL */
    char *buf;
    Py_ssize_t len, cap, scanned;
} Parser;

typedef struct { const char *p; Py_ssize_t n; } span;

static int set_parse_error(const char *msg, int status)
{
    PyObject *exc = PyObject_CallFunction(ParseErrorType, "si", msg, status);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return -1;
}

static int fail(Parser *P, const char *msg)
{
    P->state = S_DEAD;
    return set_parse_error(msg, P->is_request ? 400 : 502);
}

static int fail_status(Parser *P, const char *msg, int status)
{
    P->state = S_DEAD;
    return set_parse_error(msg, status);
}

static int ieq(const char *a, Py_ssize_t n, const char *lit)
{
    Py_ssize_t m = (Py_ssize_t)strlen(lit);
    if (n != m)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower[(unsigned char)a[i]] != (unsigned char)lit[i])
            return 0;
    return 1;
}

static span trim(const char *p, Py_ssize_t n)
{
    while (n > 0 && (*p == ' ' || *p == '\t')) { p++; n--; }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
    span s = {p, n};
    return s;
}

/* Comma-separated tokens of a Connection header into RQ_CONN_* / RQ_UPGRADE bits. */
static int connection_tokens(const char *p, Py_ssize_t n)
{
    int bits = 0;
    Py_ssize_t i = 0;
    while (i <= n) {
        Py_ssize_t j = i;
        while (j < n && p[j] != ',')
            j++;
        span t = trim(p + i, j - i);
        if (ieq(t.p, t.n, "close"))
            bits |= RQ_CONN_CLOSE;
        else if (ieq(t.p, t.n, "keep-alive"))
            bits |= RQ_CONN_KEEPALIVE;
        else if (ieq(t.p, t.n, "upgrade"))
            bits |= RQ_UPGRADE;
        i = j + 1;
    }
    return bits;
}

/* Where the head that starts at d ends (just past its empty line), or 0 if it is not complete.
 * Scans from *scanned (bytes already known to hold no empty line), so byte-by-byte feeding stays
 * linear. An empty line is "\n\r\n" or "\n\n" (the latter is refused by the strict parse). */
static Py_ssize_t head_end(const char *d, Py_ssize_t n, Py_ssize_t *scanned)
{
    Py_ssize_t i = *scanned > 2 ? *scanned - 2 : 0;
    while (i < n) {
        const char *nl = memchr(d + i, '\n', (size_t)(n - i));
        if (nl == NULL)
            break;
        Py_ssize_t k = nl - d;
        if (k + 1 < n && d[k + 1] == '\n')
            return k + 2;
        if (k + 2 < n && d[k + 1] == '\r' && d[k + 2] == '\n')
            return k + 3;
        if (k + 2 >= n) {  /* cannot tell yet */
            *scanned = k;
            return 0;
        }
        i = k + 1;
    }
    *scanned = n;
    return 0;
}

/* The next line of [*pos, end): its span without the line end. Strict: CRLF only. Returns 0, or
 * -1 with the error set. The caller knows a line end exists before `end`. */
static int next_line(Parser *P, const char *d, Py_ssize_t end, Py_ssize_t *pos, span *line)
{
    const char *s = d + *pos;
    const char *nl = memchr(s, '\n', (size_t)(end - *pos));
    if (nl == NULL)
        return fail(P, "incomplete line");
    Py_ssize_t n = nl - s;
    if (n > 0 && s[n - 1] == '\r')
        n--;
    else if (P->is_request)
        return fail(P, "bare LF in request head");
    line->p = s;
    line->n = n;
    *pos = (nl - d) + 1;
    return 0;
}

static PyObject *method_object(const char *p, Py_ssize_t n)
{
    PyObject *m = NULL;
    if (n == 3 && memcmp(p, "GET", 3) == 0) m = m_get;
    else if (n == 4 && memcmp(p, "POST", 4) == 0) m = m_post;
    else if (n == 4 && memcmp(p, "HEAD", 4) == 0) m = m_head;
    else if (n == 3 && memcmp(p, "PUT", 3) == 0) m = m_put;
    else if (n == 6 && memcmp(p, "DELETE", 6) == 0) m = m_delete;
    if (m != NULL) {
        Py_INCREF(m);
        return m;
    }
    return PyUnicode_DecodeASCII(p, n, "strict");
}

static PyObject *version_object(char major, char minor)
{
    if (major == '1' && minor == '1') { Py_INCREF(s_version_11); return s_version_11; }
    if (major == '1' && minor == '0') { Py_INCREF(s_version_10); return s_version_10; }
    char v[3] = {major, '.', minor};
    return PyUnicode_FromStringAndSize(v, 3);
}

/* One header line into name/value spans; checks the characters. 0 or -1. */
static int split_header(Parser *P, span line, span *name, span *value)
{
    if (line.p[0] == ' ' || line.p[0] == '\t')
        return fail(P, P->is_request ? "obsolete line folding in request head"
                                     : "obsolete line folding in response head");
    Py_ssize_t i = 0;
    while (i < line.n && tchar[(unsigned char)line.p[i]])
        i++;
    if (i == 0 || i >= line.n || line.p[i] != ':')
        return fail(P, "invalid header name");
    name->p = line.p;
    name->n = i;
    *value = trim(line.p + i + 1, line.n - i - 1);
    for (Py_ssize_t k = 0; k < value->n; k++) {
        unsigned char c = (unsigned char)value->p[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(P, c == 0 ? "NUL byte in header value" : "control character in header value");
    }
    return 0;
}

/* The head limits, counted as the Python parsers' twin does (HeadLimits.field in
 * worker/http/parser.py): a field line is name + ": " + value, the head's size the sum of
 * name + value + 4 over its fields. 431 for a request, 502 for a response; 0 or -1. */
static int field_limits(Parser *P, span name, span value, Py_ssize_t *size, int *count)
{
    int status = P->is_request ? 431 : 502;
    if (*count >= P->max_fields)
        return fail_status(P, "too many header fields", status);
    if (name.n + value.n + 2 > P->max_line)
        return fail_status(P, "header field line too long", status);
    *size += name.n + value.n + 4;
    if (*size > P->max_head)
        return fail_status(P, P->is_request ? "request header block too large"
                                            : "response header block too large", status);
    (*count)++;
    return 0;
}

static PyObject *lower_bytes(span s)
{
    PyObject *b = PyBytes_FromStringAndSize(NULL, s.n);
    if (b == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(b);
    for (Py_ssize_t i = 0; i < s.n; i++)
        o[i] = (char)lower[(unsigned char)s.p[i]];
    return b;
}

static PyObject *pair(span name, span value)
{
    PyObject *k = lower_bytes(name);
    if (k == NULL)
        return NULL;
    PyObject *v = PyBytes_FromStringAndSize(value.p, value.n);
    if (v == NULL) {
        Py_DECREF(k);
        return NULL;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(k);
        Py_DECREF(v);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, k);
    PyTuple_SET_ITEM(t, 1, v);
    return t;
}

static int parse_length(const char *p, Py_ssize_t n, long long *out)
{
    if (n == 0 || n > 18)
        return -1;
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 0;
}

/* proto.<name>(args[1..n-1]); args[0] is set to the protocol here. 0, or -1 when the
 * callback raised (the parser then takes nothing more). */
static int callback(Parser *P, PyObject *name, PyObject **args, size_t n)
{
    args[0] = P->proto;
    PyObject *r = PyObject_VectorcallMethod(name, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL) {
        P->state = S_DEAD;
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static void release(PyObject **args, size_t n)
{
    for (size_t i = 0; i < n; i++)
        Py_XDECREF(args[i]);
}

/* -- requests ------------------------------------------------------------------------------ */

/* Whether the line of n bytes before its '\n' ends in " HTTP/d.d\r" (check_request_line in
 * worker/http/parser.py is the twin). */
static int has_version_suffix(const char *line, Py_ssize_t n)
{
    if (n < 10)
        return 0;
    const char *s = line + n - 10;
    return memcmp(s, " HTTP/", 6) == 0 && s[6] >= '0' && s[6] <= '9' && s[7] == '.' &&
           s[8] >= '0' && s[8] <= '9' && s[9] == '\r';
}

static int request_head(Parser *P, const char *d, Py_ssize_t end)
{
    Py_ssize_t pos = 0;
    span line;
    if (next_line(P, d, end, &pos, &line) < 0)
        return -1;
    /* method SP target SP HTTP/x.y */
    Py_ssize_t i = 0;
    while (i < line.n && tchar[(unsigned char)line.p[i]])
        i++;
    if (i == 0 || i >= line.n || line.p[i] != ' ')
        return fail(P, "invalid request line");
    span method = {line.p, i};
    Py_ssize_t t0 = ++i;
    while (i < line.n && line.p[i] != ' ') {
        unsigned char c = (unsigned char)line.p[i];
        if (c < 0x21 || c == 0x7f)
            return fail(P, "invalid character in request target");
        i++;
    }
    span target = {line.p + t0, i - t0};
    if (target.n > P->max_uri)
        return fail_status(P, "request target too long", 414);
    if (target.n == 0 || i >= line.n)
        return fail(P, "invalid request line");
    const char *v = line.p + i + 1;
    if (line.n - i - 1 != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' ||
        v[6] != '.' || v[7] < '0' || v[7] > '9')
        return fail(P, "invalid HTTP version");

    PyObject *headers = PyList_New(0);
    if (headers == NULL)
        return -1;
    PyObject *host = NULL;   /* borrowed from headers */
    long long clen = -1;
    int flags = 0, te = 0, has_upgrade = 0, conn_bits = 0, fields = 0;
    Py_ssize_t size = 0;
    for (;;) {
        if (next_line(P, d, end, &pos, &line) < 0)
            goto error;
        if (line.n == 0)
            break;
        span name, value;
        if (split_header(P, line, &name, &value) < 0)
            goto error;
        if (field_limits(P, name, value, &size, &fields) < 0)
            goto error;
        PyObject *t = pair(name, value);
        if (t == NULL || PyList_Append(headers, t) < 0) {
            Py_XDECREF(t);
            goto error;
        }
        Py_DECREF(t);
        switch (name.n) {
        case 4:
            if (ieq(name.p, 4, "host")) {
                if (host != NULL) {
                    fail(P, "more than one Host header");
                    goto error;
                }
                host = PyTuple_GET_ITEM(t, 1);
            }
            break;
        case 6:
            if (ieq(name.p, 6, "expect")) {
                if (!ieq(value.p, value.n, "100-continue")) {
                    fail_status(P, "unsupported Expect", 417);
                    goto error;
                }
                flags |= RQ_EXPECT;
            }
            break;
        case 7:
            if (ieq(name.p, 7, "upgrade"))
                has_upgrade = 1;
            break;
        case 10:
            if (ieq(name.p, 10, "connection"))
                conn_bits |= connection_tokens(value.p, value.n);
            break;
        case 14:
            if (ieq(name.p, 14, "content-length")) {
                if (clen >= 0) {
                    fail(P, "more than one Content-Length");
                    goto error;
                }
                if (parse_length(value.p, value.n, &clen) < 0) {
                    fail(P, "invalid Content-Length");
                    goto error;
                }
            }
            break;
        case 17:
            if (ieq(name.p, 17, "transfer-encoding")) {
                if (te) {
                    fail(P, "duplicate Transfer-Encoding");
                    goto error;
                }
                if (!ieq(value.p, value.n, "chunked")) {
                    fail(P, "unsupported Transfer-Encoding");
                    goto error;
                }
                te = 1;
            }
            break;
        }
    }
    if (te && clen >= 0) {
        fail(P, "Content-Length with Transfer-Encoding");
        goto error;
    }
    if (te)
        flags |= RQ_CHUNKED;
    flags |= conn_bits & (RQ_CONN_CLOSE | RQ_CONN_KEEPALIVE);
    if (has_upgrade && (conn_bits & RQ_UPGRADE))
        flags |= RQ_UPGRADE;

    PyObject *args[8];
    PyObject *owned[5] = {
        method_object(method.p, method.n),
        PyUnicode_DecodeLatin1(target.p, target.n, NULL),
        version_object(v[5], v[7]),
        clen >= 0 ? PyLong_FromLongLong(clen) : Py_NewRef(Py_None),
        PyLong_FromLong(flags),
    };
    args[1] = owned[0];
    args[2] = owned[1];
    args[3] = owned[2];
    args[4] = headers;
    args[5] = host != NULL ? host : Py_None;
    args[6] = owned[3];
    args[7] = owned[4];
    int rc = -1;
    if (owned[0] && owned[1] && owned[2] && owned[3] && owned[4])
        rc = callback(P, s_on_request_head, args, 8);
    release(owned, 5);
    Py_DECREF(headers);
    if (rc < 0) {
        P->state = S_DEAD;
        return -1;
    }
    if (flags & RQ_UPGRADE)
        P->state = S_DEAD;  /* the rest belongs to the tunnel: see feed() */
    else if (te)
        P->state = S_CHUNK_SIZE;
    else if (clen > 0) {
        P->state = S_LENGTH;
        P->remaining = clen;
    } else
        P->state = S_HEAD;
    return 0;
error:
    Py_DECREF(headers);
    return -1;
}

/* -- responses ----------------------------------------------------------------------------- */

static int is_hop_by_hop(span n)
{
    switch (n.n) {
    case 2: return ieq(n.p, 2, "te");
    case 7: return ieq(n.p, 7, "trailer") || ieq(n.p, 7, "upgrade");
    case 10: return ieq(n.p, 10, "connection") || ieq(n.p, 10, "keep-alive");
    case 16: return ieq(n.p, 16, "proxy-connection");
    case 17: return ieq(n.p, 17, "transfer-encoding");
    }
    return 0;
}

/* Is `name` one of the tokens of the Connection values in vals[0..nv)? */
static int named_by_connection(span name, span *vals, int nv)
{
    for (int k = 0; k < nv; k++) {
        const char *p = vals[k].p;
        Py_ssize_t n = vals[k].n, i = 0;
        while (i <= n) {
            Py_ssize_t j = i;
            while (j < n && p[j] != ',')
                j++;
            span t = trim(p + i, j - i);
            if (t.n == name.n) {
                Py_ssize_t q = 0;
                while (q < t.n && lower[(unsigned char)t.p[q]] == lower[(unsigned char)name.p[q]])
                    q++;
                if (q == t.n)
                    return 1;
            }
            i = j + 1;
        }
    }
    return 0;
}

/* A body that came whole with its head, for a callback: lent (a view of the input, taken back
 * by whole_body_done) or copied, as the parser was made. */
static PyObject *whole_body(Parser *P, const char *p, long long n)
{
    return P->lend ? PyMemoryView_FromMemory((char *)p, (Py_ssize_t)n, PyBUF_READ)
                   : PyBytes_FromStringAndSize(p, (Py_ssize_t)n);
}

/* After the callback: a lent *body is taken back (and *body cleared); the callback's rc, or -1
 * when the callee kept a view of it (BufferError, see mu_lend_end). */
static int whole_body_done(Parser *P, PyObject **body, int rc)
{
    if (P->lend && *body != NULL) {
        if (mu_lend_end(*body) < 0)
            rc = -1;
        *body = NULL;
    }
    return rc;
}

/* A whole response for proto.on_relay: the client's header block serialised straight from
 * the input (what on_response's list would hold, minus Content-Length), the body lent or
 * copied as for on_response. Returns as response_head does. */
static int relay_whole(Parser *P, int status, span reason, span *names, span *values, int nh,
                       span *conn, int nconn, int keep_alive, const char *body_p,
                       long long clen, Py_ssize_t *body_used)
{
    char keep[MAX_HEADERS];
    Py_ssize_t size = 0;
    for (int k = 0; k < nh; k++) {
        span n = names[k];
        keep[k] = !is_hop_by_hop(n) && !(n.n == 14 && ieq(n.p, 14, "content-length")) &&
                  !(nconn && named_by_connection(n, conn, nconn));
        if (keep[k])
            size += n.n + values[k].n + 4;
    }
    PyObject *block = PyBytes_FromStringAndSize(NULL, size);
    if (block == NULL)
        return -1;
    char *o = PyBytes_AS_STRING(block);
    for (int k = 0; k < nh; k++) {
        if (!keep[k])
            continue;
        for (Py_ssize_t i = 0; i < names[k].n; i++)
            *o++ = (char)lower[(unsigned char)names[k].p[i]];
        *o++ = ':';
        *o++ = ' ';
        memcpy(o, values[k].p, (size_t)values[k].n);
        o += values[k].n;
        *o++ = '\r';
        *o++ = '\n';
    }
    PyObject *args[6];
    PyObject *owned[3] = {
        PyLong_FromLong(status),
        PyBytes_FromStringAndSize(reason.p, reason.n),
        whole_body(P, body_p, clen),
    };
    int rc = -1;
    if (owned[0] && owned[1] && owned[2]) {
        args[1] = owned[0];
        args[2] = owned[1];
        args[3] = block;
        args[4] = keep_alive ? Py_True : Py_False;
        args[5] = owned[2];
        rc = callback(P, s_on_relay, args, 6);
    }
    rc = whole_body_done(P, &owned[2], rc);
    release(owned, 3);
    Py_DECREF(block);
    if (rc < 0) {
        P->state = S_DEAD;
        return -1;
    }
    P->state = S_HEAD;  /* complete: no on_body, no on_message_complete */
    *body_used = (Py_ssize_t)clen;
    return 1;
}

/* 1: a final head was delivered; 0: an interim 1xx was skipped; -1: error. `avail` bytes start
 * at d; when a Content-Length body is all there, it goes out with the head (one callback) and
 * *body_used says how much of it was taken. */
static int response_head(Parser *P, const char *d, Py_ssize_t end, Py_ssize_t avail,
                         Py_ssize_t *body_used)
{
    Py_ssize_t pos = 0;
    span line;
    if (next_line(P, d, end, &pos, &line) < 0)
        return -1;
    /* HTTP/x.y SP 3DIGIT [SP reason] */
    const char *s = line.p;
    if (line.n < 12 || memcmp(s, "HTTP/", 5) != 0 || s[5] < '0' || s[5] > '9' || s[6] != '.' ||
        s[7] < '0' || s[7] > '9' || s[8] != ' ' || s[9] < '1' || s[9] > '9' || s[10] < '0' ||
        s[10] > '9' || s[11] < '0' || s[11] > '9' || (line.n > 12 && s[12] != ' '))
        return fail(P, "invalid status line");
    int status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    span reason = {line.n > 12 ? s + 13 : s + 12, line.n > 12 ? line.n - 13 : 0};
    for (Py_ssize_t k = 0; k < reason.n; k++) {
        unsigned char c = (unsigned char)reason.p[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(P, "control character in reason phrase");
    }
    int v11 = s[5] == '1' && s[7] == '1';
    int v10 = s[5] == '1' && s[7] == '0';
    if (!v11 && !v10)
        return fail(P, "unsupported HTTP version");

    span names[MAX_HEADERS], values[MAX_HEADERS], conn[16];
    int nh = 0, nconn = 0, te = 0, conn_bits = 0, fields = 0;
    Py_ssize_t size = 0;
    long long clen = -1;
    for (;;) {
        if (next_line(P, d, end, &pos, &line) < 0)
            return -1;
        if (line.n == 0)
            break;
        if (nh == MAX_HEADERS)
            return fail(P, "too many headers");
        if (split_header(P, line, &names[nh], &values[nh]) < 0)
            return -1;
        if (field_limits(P, names[nh], values[nh], &size, &fields) < 0)
            return -1;
        span n = names[nh], v = values[nh];
        if (n.n == 14 && ieq(n.p, 14, "content-length")) {
            long long x;
            if (parse_length(v.p, v.n, &x) < 0)
                return fail(P, "invalid Content-Length");
            if (clen >= 0 && x != clen)
                return fail(P, "conflicting Content-Length");
            clen = x;
        } else if (n.n == 17 && ieq(n.p, 17, "transfer-encoding")) {
            /* as for requests: exactly "chunked", once. Anything else (gzip, "gzip, chunked")
             * would reach the client without its coding once the hop-by-hop header is
             * dropped: refused, never decoded halfway */
            if (te)
                return fail(P, "duplicate Transfer-Encoding");
            if (!ieq(v.p, v.n, "chunked"))
                return fail(P, "unsupported Transfer-Encoding");
            te = 1;
        } else if (n.n == 10 && ieq(n.p, 10, "connection")) {
            conn_bits |= connection_tokens(v.p, v.n);
            if (nconn < 16)
                conn[nconn++] = v;
        }
        nh++;
    }
    if (status >= 100 && status < 200 && status != 101)
        return 0;  /* interim: the final head follows */

    int upgrade = status == 101;
    Py_CLEAR(P->connection);
    if (te && nconn && !P->head_request) {
        /* the trailer section's fields named by Connection are hop-by-hop too: Python drops
         * them (keep_trailers), reading these values through the `connection` attribute */
        Py_ssize_t total = 0;
        for (int k = 0; k < nconn; k++)
            total += conn[k].n + 1;
        P->connection = PyBytes_FromStringAndSize(NULL, total - 1);
        if (P->connection == NULL)
            return -1;
        char *o = PyBytes_AS_STRING(P->connection);
        for (int k = 0; k < nconn; k++) {
            if (k)
                *o++ = ',';
            memcpy(o, conn[k].p, (size_t)conn[k].n);
            o += conn[k].n;
        }
    }
    int keep_alive = v11 ? !(conn_bits & RQ_CONN_CLOSE) : (conn_bits & RQ_CONN_KEEPALIVE) != 0;
    int no_body = P->head_request || status == 204 || status == 304 || upgrade;

    int whole = !no_body && !te && clen > 0 && avail - end >= clen;
    int collect = !whole && !no_body && !te && clen > 0 && clen <= P->collect_max;
    if (whole && P->relay)
        return relay_whole(P, status, reason, names, values, nh, conn, nconn, keep_alive,
                           d + end, clen, body_used);

    PyObject *headers = PyList_New(0);
    if (headers == NULL)
        return -1;
    for (int k = 0; k < nh; k++) {
        span n = names[k];
        if (is_hop_by_hop(n)) {
            if (!upgrade || (n.n == 17))
                continue;  /* kept for a 101, except the framing */
        } else if (!upgrade && nconn && named_by_connection(n, conn, nconn))
            continue;
        PyObject *t = pair(n, values[k]);
        if (t == NULL || PyList_Append(headers, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(headers);
            return -1;
        }
        Py_DECREF(t);
    }

    PyObject *args[8];
    PyObject *owned[4] = {
        PyLong_FromLong(status),
        PyBytes_FromStringAndSize(reason.p, reason.n),
        clen >= 0 ? PyLong_FromLongLong(clen) : Py_NewRef(Py_None),
        whole ? whole_body(P, d + end, clen) : Py_NewRef(Py_None),
    };
    args[1] = owned[0];
    args[2] = owned[1];
    args[3] = headers;
    args[4] = keep_alive ? Py_True : Py_False;
    args[5] = owned[2];
    args[6] = te ? Py_True : Py_False;
    args[7] = owned[3];
    int rc = -1;
    if (!(owned[0] && owned[1] && owned[2] && owned[3])) {
        P->state = S_DEAD;
    } else if (collect) {
        /* the body follows in later reads: the callback waits until it is all here */
        Py_ssize_t have = avail - end;
        P->body = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)clen);
        P->pending = P->body ? PyTuple_Pack(6, args[1], args[2], args[3], args[4], args[5], args[6])
                             : NULL;
        if (P->pending != NULL) {
            memcpy(PyBytes_AS_STRING(P->body), d + end, (size_t)have);
            P->filled = have;
            P->collect_head = end;
            rc = 0;
        } else
            Py_CLEAR(P->body);
    } else
        rc = callback(P, s_on_response, args, 8);
    if (whole)
        rc = whole_body_done(P, &owned[3], rc);
    release(owned, 4);
    Py_DECREF(headers);
    if (rc < 0) {
        P->state = S_DEAD;
        return -1;
    }
    *body_used = 0;
    if (upgrade)
        P->state = S_DEAD;
    else if (whole) {
        P->state = S_HEAD;  /* complete: no on_body, no on_message_complete */
        *body_used = (Py_ssize_t)clen;
    } else if (collect) {
        P->state = S_COLLECT;
        *body_used = P->filled;
    } else if (no_body) {
        P->state = S_HEAD;
        P->complete_after = 1;
    } else if (te)
        P->state = S_CHUNK_SIZE;
    else if (clen > 0) {
        P->state = S_LENGTH;
        P->remaining = clen;
    } else if (clen == 0) {
        P->state = S_HEAD;
        P->complete_after = 1;
    } else
        P->state = S_UNTIL_CLOSE;
    return 1;
}

/* -- feeding ------------------------------------------------------------------------------- */

static int call0(Parser *P, PyObject *name)
{
    PyObject *args[1];
    return callback(P, name, args, 1);
}

static int emit_body(Parser *P, PyObject *whole, const char *p, Py_ssize_t n)
{
    PyObject *b;
    if (whole != NULL) {
        b = whole;
        Py_INCREF(b);
    } else {
        b = PyBytes_FromStringAndSize(p, n);
        if (b == NULL)
            return -1;
    }
    PyObject *args[2] = {NULL, b};
    int rc = callback(P, s_on_body, args, 2);
    Py_DECREF(b);
    return rc;
}

/* Body bytes at p (avail of them, at *pos of the n fed): what is left of the length or the
 * chunk goes to emit_body (the fed object itself when it is all body), *pos moves on */
static int take_body(Parser *P, PyObject *data, const char *p, Py_ssize_t avail, Py_ssize_t n,
                     Py_ssize_t *pos)
{
    Py_ssize_t take = avail < P->remaining ? avail : (Py_ssize_t)P->remaining;
    PyObject *whole = (data != NULL && *pos == 0 && take == n) ? data : NULL;
    P->remaining -= take;
    *pos += take;
    return emit_body(P, whole, p, take);
}

static int message_complete(Parser *P)
{
    P->state = S_HEAD;
    return call0(P, s_on_message_complete);
}

/* The end of a trailer section: proto.on_trailers(fields) when there were any (and the
 * protocol takes them). 0 or -1. */
static int trailers_done(Parser *P)
{
    PyObject *fields = P->trailers;
    if (fields == NULL)
        return 0;
    P->trailers = NULL;
    int has = PyObject_HasAttr(P->proto, s_on_trailers);
    int rc = has;
    if (has > 0) {
        PyObject *args[2] = {NULL, fields};
        rc = callback(P, s_on_trailers, args, 2);
    }
    Py_DECREF(fields);
    if (rc < 0)
        P->state = S_DEAD;
    return rc < 0 ? -1 : 0;
}

static int keep(Parser *P, const char *p, Py_ssize_t n, int from_buf)
{
    if (n == 0) {  /* nothing to keep (and P->buf may still be NULL: no memcpy from/to it) */
        P->len = 0;
        return 0;
    }
    if (from_buf) {
        memmove(P->buf, p, (size_t)n);
    } else {
        if (n > P->cap) {
            char *nb = PyMem_Realloc(P->buf, (size_t)n);
            if (nb == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            P->buf = nb;
            P->cap = n;
        }
        memcpy(P->buf, p, (size_t)n);
    }
    P->len = n;
    return 0;
}

static PyObject *upgrade_rest(const char *p, Py_ssize_t n)
{
    PyObject *rest = PyBytes_FromStringAndSize(p, n);
    if (rest == NULL)
        return NULL;
    PyObject *exc = PyObject_CallOneArg(UpgradeType, rest);
    Py_DECREF(rest);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* A line of a chunked body (a chunk size line, a trailer line) at p (avail bytes): its
 * length through its LF, 0 while it is not all here (within max bytes), -1 after a fail
 * (too long: too_long with status; a bare LF) */
static Py_ssize_t chunk_line(Parser *P, const char *p, Py_ssize_t avail, Py_ssize_t max,
                             const char *too_long, int status)
{
    const char *nl = memchr(p, '\n', (size_t)avail);
    if (nl == NULL) {
        if (avail <= max)
            return 0;
        fail_status(P, too_long, status);
        return -1;
    }
    Py_ssize_t ln = nl - p;
    if (ln == 0 || p[ln - 1] != '\r') {
        fail(P, "bare LF in chunked body");
        return -1;
    }
    return ln + 1;
}

static PyObject *feed(Parser *P, PyObject *data, const char *in, Py_ssize_t in_n)
{
    const char *d;
    Py_ssize_t n, pos = 0;
    int from_buf = P->len > 0;
    if (from_buf) {
        if (P->len + in_n > P->cap) {
            Py_ssize_t cap = (P->len + in_n) * 2;
            char *nb = PyMem_Realloc(P->buf, (size_t)cap);
            if (nb == NULL)
                return PyErr_NoMemory();
            P->buf = nb;
            P->cap = cap;
        }
        memcpy(P->buf + P->len, in, (size_t)in_n);
        P->len += in_n;
        d = P->buf;
        n = P->len;
        data = NULL;  /* body slices must be copied out of our buffer */
    } else {
        d = in;
        n = in_n;
    }
    while (pos < n || P->complete_after) {
        if (P->complete_after) {
            P->complete_after = 0;
            if (message_complete(P) < 0)
                return NULL;
            continue;
        }
        const char *p = d + pos;
        Py_ssize_t avail = n - pos;
        switch (P->state) {
        case S_HEAD: {
            if (P->is_request) {  /* empty lines between pipelined requests are skipped */
                while (avail >= 2 && p[0] == '\r' && p[1] == '\n') {
                    p += 2; pos += 2; avail -= 2;
                }
                if (avail == 0 || (avail == 1 && p[0] == '\r'))
                    goto incomplete;
            }
            Py_ssize_t end = head_end(p, avail, &P->scanned);
            if (end == 0) {
                const char *nl = memchr(p, '\n', (size_t)avail);
                if (nl == NULL && P->is_request && avail > P->max_uri + 64) {
                    fail_status(P, "request target too long", 414);
                    return NULL;
                }
                if (nl != NULL && P->is_request && !has_version_suffix(p, nl - p)) {
                    /* the request line is in and has no HTTP/x.y (HTTP/0.9): its head would
                     * never end, so refuse it now, not at the header timeout */
                    fail(P, "invalid request line (an HTTP/0.9 request?)");
                    return NULL;
                }
                if (avail > P->max_head + P->max_uri + 64) {
                    if (P->is_request)
                        fail_status(P, "request header block too large", 431);
                    else
                        fail(P, "response header block too large");
                    return NULL;
                }
                goto incomplete;
            }
            P->scanned = 0;
            Py_ssize_t used = 0;
            int r = P->is_request ? request_head(P, p, end) : response_head(P, p, end, avail, &used);
            if (r < 0)
                return NULL;
            pos += end + used;
            if (P->state == S_DEAD) {  /* an upgrade: the rest is the tunnel's */
                PyObject *x = upgrade_rest(d + pos, n - pos);
                P->len = 0;
                return x;
            }
            break;
        }
        case S_LENGTH: {
            if (take_body(P, data, p, avail, n, &pos) < 0)
                return NULL;
            if (P->remaining == 0 && message_complete(P) < 0)
                return NULL;
            break;
        }
        case S_CHUNK_SIZE: {
            Py_ssize_t ln = chunk_line(P, p, avail, CHUNK_LINE_MAX, "chunk size line too long",
                                       P->is_request ? 400 : 502);
            if (ln < 0)
                return NULL;
            if (ln == 0)
                goto incomplete;
            ln -= 2;
            long long size = 0;
            Py_ssize_t i = 0;
            while (i < ln) {
                char c = p[i];
                int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
                if (x < 0)
                    break;
                if (size > 0xFFFFFFFFFFFFFFLL) {  /* a 16th significant digit: over 2^60 */
                    fail(P, "chunk size too large");
                    return NULL;
                }
                size = size * 16 + x;
                i++;
            }
            Py_ssize_t e = i;  /* BWS is allowed only before a chunk extension (RFC 9112 7.1.1) */
            while (e < ln && (p[e] == ' ' || p[e] == '\t'))
                e++;
            if (i == 0 || (e < ln && p[e] != ';') || (e == ln && e > i)) {
                fail(P, "invalid chunk size");
                return NULL;
            }
            for (Py_ssize_t k = i; k < ln; k++) {
                unsigned char c = (unsigned char)p[k];
                if ((c < 0x20 && c != '\t') || c == 0x7f) {
                    fail(P, "invalid chunk extension");
                    return NULL;
                }
            }
            pos += ln + 2;
            if (size == 0) {
                P->state = S_TRAILERS;
                P->tr_size = 0;
                P->tr_count = 0;
            } else {
                P->state = S_CHUNK_DATA;
                P->remaining = size;
            }
            break;
        }
        case S_CHUNK_DATA: {
            if (take_body(P, data, p, avail, n, &pos) < 0)
                return NULL;
            if (P->remaining == 0)
                P->state = S_CHUNK_CRLF;
            break;
        }
        case S_CHUNK_CRLF:
            if (avail < 2) {
                if (p[0] != '\r') {
                    fail(P, "missing CRLF after chunk data");
                    return NULL;
                }
                goto incomplete;
            }
            if (p[0] != '\r' || p[1] != '\n') {
                fail(P, "missing CRLF after chunk data");
                return NULL;
            }
            pos += 2;
            P->state = S_CHUNK_SIZE;
            break;
        case S_TRAILERS: {
            /* the trailer section: field lines as in a head (split_header), bounded by the
             * head limits (field_limits: 431 for a request, 502 for a response), reported by
             * proto.on_trailers(list) before on_message_complete. Python decides which are
             * forwarded (keep_trailers in worker/http/message.py); a protocol without
             * on_trailers drops them */
            Py_ssize_t ln = chunk_line(P, p, avail, P->max_line + 2, "trailer field line too long",
                                       P->is_request ? 431 : 502);
            if (ln < 0)
                return NULL;
            if (ln == 0)
                goto incomplete;
            ln--; /* through the CR, as before: the LF is stepped over */
            pos += ln + 1;
            if (ln == 1) {  /* the empty line: done */
                if (trailers_done(P) < 0 || message_complete(P) < 0)
                    return NULL;
            } else {
                span line = {p, ln - 1}, name, value;
                if (line.p[0] == ' ' || line.p[0] == '\t') {
                    fail(P, "obsolete line folding in trailer section");
                    return NULL;
                }
                if (split_header(P, line, &name, &value) < 0 ||
                    field_limits(P, name, value, &P->tr_size, &P->tr_count) < 0)
                    return NULL;
                if (P->trailers == NULL && (P->trailers = PyList_New(0)) == NULL)
                    return NULL;
                PyObject *t = pair(name, value);
                if (t == NULL || PyList_Append(P->trailers, t) < 0) {
                    Py_XDECREF(t);
                    return NULL;
                }
                Py_DECREF(t);
            }
            break;
        }
        case S_COLLECT: {
            Py_ssize_t size = PyBytes_GET_SIZE(P->body);
            Py_ssize_t take = avail < size - P->filled ? avail : size - P->filled;
            memcpy(PyBytes_AS_STRING(P->body) + P->filled, p, (size_t)take);
            P->filled += take;
            pos += take;
            if (P->filled == size) {
                PyObject *pending = P->pending, *body = P->body;
                P->pending = P->body = NULL;
                P->state = S_HEAD;
                PyObject *args[8];
                for (int i = 0; i < 6; i++)
                    args[i + 1] = PyTuple_GET_ITEM(pending, i);
                args[7] = body;
                int rc = callback(P, s_on_response, args, 8);
                Py_DECREF(pending);
                Py_DECREF(body);
                if (rc < 0)
                    return NULL;
            }
            break;
        }
        case S_UNTIL_CLOSE: {
            PyObject *whole = (data != NULL && pos == 0) ? data : NULL;
            pos = n;
            int r = emit_body(P, whole, p, avail);
            if (r < 0)
                return NULL;
            break;
        }
        default: /* S_DEAD: nothing more is parsed */
            pos = n;
            break;
        }
    }
    P->len = 0;
    Py_RETURN_NONE;
incomplete:
    if (keep(P, d + pos, n - pos, from_buf) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *parser_feed_data(Parser *P, PyObject *data)
{
    if (P->busy) {
        PyErr_SetString(PyExc_RuntimeError, "feed_data called from a parser callback");
        return NULL;
    }
    PyObject *r;
    P->busy = 1;
    Py_INCREF(P);  /* a callback may drop the protocol's reference to us */
    if (PyBytes_CheckExact(data)) {
        r = feed(P, data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    } else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            r = NULL;
        } else {
            r = feed(P, NULL, view.buf, view.len);
            PyBuffer_Release(&view);
        }
    }
    P->busy = 0;
    Py_DECREF(P);
    return r;
}

/* -- the types ----------------------------------------------------------------------------- */

static int parser_traverse(Parser *P, visitproc visit, void *arg)
{
    Py_VISIT(P->proto);
    Py_VISIT(P->pending);
    Py_VISIT(P->trailers);
    return 0;
}

static int parser_clear(Parser *P)
{
    Py_CLEAR(P->proto);
    Py_CLEAR(P->pending);
    Py_CLEAR(P->body);
    Py_CLEAR(P->trailers);
    Py_CLEAR(P->connection);
    return 0;
}

static void parser_dealloc(Parser *P)
{
    PyObject_GC_UnTrack(P);
    parser_clear(P);
    PyMem_Free(P->buf);
    Py_TYPE(P)->tp_free((PyObject *)P);
}

/* A parser for proto with the head limits both kinds take (max_fields checked), or NULL. */
static Parser *parser_alloc(PyTypeObject *type, PyObject *proto, int is_request,
                            Py_ssize_t max_head, Py_ssize_t max_line, int max_fields)
{
    if (max_fields < 1 || max_fields > MAX_HEADERS) {
        PyErr_Format(PyExc_ValueError, "max_fields must be 1 ... %d", MAX_HEADERS);
        return NULL;
    }
    Parser *P = (Parser *)type->tp_alloc(type, 0);
    if (P == NULL)
        return NULL;
    Py_INCREF(proto);
    P->proto = proto;
    P->is_request = is_request;
    P->state = S_HEAD;
    P->max_head = max_head;
    P->max_line = max_line;
    P->max_fields = max_fields;
    return P;
}

static PyObject *request_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"proto", "max_head", "max_uri", "max_line", "max_fields", NULL};
    PyObject *proto;
    Py_ssize_t max_head, max_uri, max_line = 8192;
    int max_fields = 100;
    /* keywords as the docstring spells them (they used to be dropped without a word) */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onn|ni", kwlist, &proto, &max_head, &max_uri,
                                     &max_line, &max_fields))
        return NULL;
    Parser *P = parser_alloc(type, proto, 1, max_head, max_line, max_fields);
    if (P != NULL)
        P->max_uri = max_uri;
    return (PyObject *)P;
}

static PyObject *response_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"proto", "head_request", "collect_max", "lend", "max_head",
                             "max_line", "max_fields", NULL};
    PyObject *proto;
    int head_request, lend = 0, max_fields = 100;
    Py_ssize_t collect_max = 0, max_head = 65536, max_line = 8192;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Op|npnni", kwlist, &proto, &head_request,
                                     &collect_max, &lend, &max_head, &max_line, &max_fields))
        return NULL;
    Parser *P = parser_alloc(type, proto, 0, max_head, max_line, max_fields);
    if (P != NULL) {
        P->head_request = head_request;
        P->lend = lend;
        P->collect_max = collect_max;
        P->max_uri = 0;
    }
    return (PyObject *)P;
}

static PyMemberDef response_members[] = {
    {"relay", T_BOOL, offsetof(Parser, relay), 0,
     "True: a whole response that came with its head goes to on_relay (see the module doc)."},
    {NULL, 0, 0, 0, NULL},
};

/* Bytes taken that did not complete a message: kept for the next feed_data (an incomplete
 * head or chunk line) or a head whose body is being collected (no callback yet). */
static PyObject *response_leftover(Parser *P, void *closure)
{
    (void)closure;
    Py_ssize_t n = P->len;
    if (P->state == S_COLLECT)
        n += P->collect_head + P->filled;
    return PyLong_FromSsize_t(n);
}

/* The Connection values of the last chunked head ("a, b"), for its trailer section. */
static PyObject *response_connection(Parser *P, void *closure)
{
    (void)closure;
    return Py_NewRef(P->connection != NULL ? P->connection : Py_None);
}

static PyGetSetDef response_getset[] = {
    {"leftover", (getter)response_leftover, NULL,
     "Bytes taken that did not complete a message. After a complete response any is "
     "unsolicited: the caller must not reuse the connection.", NULL},
    {"connection", (getter)response_connection, NULL,
     "The Connection values of the last chunked response head, joined by commas, or None: "
     "the fields they name are dropped from its trailers too (keep_trailers).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* Chunk payloads spliced around the parser (worker/http/splice_relay.py): how much of the
 * current chunk is still due, and the report that n of those bytes went past it. */
static PyObject *parser_chunk_left(Parser *P, PyObject *Py_UNUSED(arg))
{
    long long n = (P->state == S_CHUNK_DATA && P->len == 0) ? P->remaining : 0;
    return PyLong_FromLongLong(n);
}

static PyObject *parser_skip_chunk(Parser *P, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (P->busy) {
        PyErr_SetString(PyExc_RuntimeError, "skip_chunk called from a parser callback");
        return NULL;
    }
    if (P->state != S_CHUNK_DATA || P->len != 0 || n < 0 || n > P->remaining) {
        PyErr_Format(PyExc_ValueError, "skip_chunk(%lld): %lld chunk bytes are due", n,
                     P->state == S_CHUNK_DATA && P->len == 0 ? P->remaining : 0LL);
        return NULL;
    }
    P->remaining -= n;
    if (P->remaining == 0)
        P->state = S_CHUNK_CRLF;
    Py_RETURN_NONE;
}

static PyMethodDef parser_methods[] = {
    {"feed_data", (PyCFunction)parser_feed_data, METH_O,
     "Parse bytes; calls the protocol's callbacks (see the module docstring)."},
    {"chunk_left", (PyCFunction)parser_chunk_left, METH_NOARGS,
     "Payload bytes of the current chunk still due (0 unless inside chunk data with nothing "
     "buffered): what a splice may move around the parser."},
    {"skip_chunk", (PyCFunction)parser_skip_chunk, METH_O,
     "n payload bytes of the current chunk went around the parser (at most chunk_left())."},
    {NULL, NULL, 0, NULL},
};

/* the slots the two parser types share: one struct, one lifecycle, one feed_data */
#define PARSER_TYPE_SLOTS                                   \
    .tp_basicsize = sizeof(Parser),                         \
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,    \
    .tp_dealloc = (destructor)parser_dealloc,               \
    .tp_traverse = (traverseproc)parser_traverse,           \
    .tp_clear = (inquiry)parser_clear,                      \
    .tp_methods = parser_methods

static PyTypeObject RequestParser_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "monolake.uring._http.RequestParser",
    .tp_doc = "RequestParser(proto, max_head, max_uri, max_line=8192, max_fields=100): strict HTTP/1.1 request parser.",
    .tp_new = request_new,
    .tp_getset = response_getset, /* leftover: a partial head held (the native engine asks) */
    PARSER_TYPE_SLOTS,
};

static PyTypeObject ResponseParser_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "monolake.uring._http.ResponseParser",
    .tp_doc = "ResponseParser(proto, head_request, collect_max=0, lend=False, max_head=65536, max_line=8192, max_fields=100): HTTP/1.x response parser for a proxy.",
    .tp_new = response_new,
    .tp_members = response_members,
    .tp_getset = response_getset,
    PARSER_TYPE_SLOTS,
};

static PyObject *http_configure(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *perr, *upg;
    if (!PyArg_ParseTuple(args, "OO", &perr, &upg))
        return NULL;
    Py_INCREF(perr);
    Py_INCREF(upg);
    Py_XSETREF(ParseErrorType, perr);
    Py_XSETREF(UpgradeType, upg);
    Py_RETURN_NONE;
}

/* split_headers(headers, names) -> (block, picked)
 * block: "name: value\r\n" for every (name, value) pair whose name is not in `names` (a tuple
 * of lower-case bytes); picked: the other pairs, in order. One C pass instead of a Python loop
 * per header when a head is serialised (the proxy's request to the upstream, every response). */
/* headers[i] as a (bytes, bytes) pair: 0 and *k, *v borrowed, or -1 with TypeError set */
static int header_pair(PyObject *headers, Py_ssize_t i, PyObject **k, PyObject **v)
{
    PyObject *t = PyList_GET_ITEM(headers, i);
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(t, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
        PyErr_SetString(PyExc_TypeError, "headers must be (bytes, bytes) pairs");
        return -1;
    }
    *k = PyTuple_GET_ITEM(t, 0);
    *v = PyTuple_GET_ITEM(t, 1);
    return 0;
}

static int name_in(PyObject *k, PyObject *names)
{
    Py_ssize_t kn = PyBytes_GET_SIZE(k);
    const char *kp = PyBytes_AS_STRING(k);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *n = PyTuple_GET_ITEM(names, i);
        if (PyBytes_GET_SIZE(n) == kn && memcmp(PyBytes_AS_STRING(n), kp, (size_t)kn) == 0)
            return 1;
    }
    return 0;
}

static PyObject *http_split_headers(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "split_headers(list, tuple)");
        return NULL;
    }
    PyObject *headers = args[0], *names = args[1];
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(names, i))) {
            PyErr_SetString(PyExc_TypeError, "names must be bytes");
            return NULL;
        }
    Py_ssize_t n = PyList_GET_SIZE(headers), total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k, *v;
        if (header_pair(headers, i, &k, &v) < 0)
            return NULL;
        total += PyBytes_GET_SIZE(k) + PyBytes_GET_SIZE(v) + 4;
    }
    PyObject *picked = PyList_New(0);
    if (picked == NULL)
        return NULL;
    PyObject *block = PyBytes_FromStringAndSize(NULL, total);
    if (block == NULL) {
        Py_DECREF(picked);
        return NULL;
    }
    char *o = PyBytes_AS_STRING(block);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(headers, i);
        PyObject *k = PyTuple_GET_ITEM(t, 0), *v = PyTuple_GET_ITEM(t, 1);
        if (name_in(k, names)) {
            if (PyList_Append(picked, t) < 0) {
                Py_DECREF(picked);
                Py_DECREF(block);
                return NULL;
            }
            continue;
        }
        memcpy(o, PyBytes_AS_STRING(k), (size_t)PyBytes_GET_SIZE(k));
        o += PyBytes_GET_SIZE(k);
        *o++ = ':';
        *o++ = ' ';
        memcpy(o, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
        o += PyBytes_GET_SIZE(v);
        *o++ = '\r';
        *o++ = '\n';
    }
    Py_ssize_t used = o - PyBytes_AS_STRING(block);
    if (used != total && _PyBytes_Resize(&block, used) < 0) {
        Py_DECREF(picked);
        return NULL;
    }
    PyObject *r = PyTuple_Pack(2, block, picked);
    Py_DECREF(block);
    Py_DECREF(picked);
    return r;
}

/*
 * forward_head(method, target, headers, upgrade, host_out, ip, scheme, node, via, tail) -> bytes
 * The request head the proxy sends upstream, in one pass (headers.request_head documents the
 * rules and is the reference; tests compare the two). method and target are str (latin-1),
 * headers the parser's (lower-case name, value) pairs; host_out None means "the client's Host,
 * else localhost"; ip, scheme and node are the connection's forwarding facts; via adds ours;
 * tail is the framing (Content-Length or Transfer-Encoding line and the blank line).
 * NotImplemented for more than MAX_HEADERS headers (the Python version takes those).
 */
static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* Is `name` a token of a Connection value (Python: value.split(b","), strip(), lower())? */
static int named_in(span name, PyObject **vals, int nv)
{
    for (int k = 0; k < nv; k++) {
        const char *p = PyBytes_AS_STRING(vals[k]);
        Py_ssize_t n = PyBytes_GET_SIZE(vals[k]), i = 0;
        while (i <= n) {
            Py_ssize_t j = i;
            while (j < n && p[j] != ',')
                j++;
            const char *t = p + i;
            Py_ssize_t tn = j - i;
            while (tn > 0 && is_ws(*t)) { t++; tn--; }
            while (tn > 0 && is_ws(t[tn - 1])) tn--;
            if (tn == name.n && tn > 0) {  /* an empty token names nothing (Python: `if tok`) */
                Py_ssize_t q = 0;
                while (q < tn && lower[(unsigned char)t[q]] == (unsigned char)name.p[q])
                    q++;
                if (q == tn)
                    return 1;
            }
            i = j + 1;
        }
    }
    return 0;
}

/* what forward_head does with a request header: the table mu_head.c shares (mu_head.h) */
static int forward_kind(const char *p, Py_ssize_t n)
{
    return mu_head_field_kind(p, (size_t)n);
}

typedef struct { char *o; } out_t;

static void put(out_t *w, const char *p, Py_ssize_t n)
{
    memcpy(w->o, p, (size_t)n);
    w->o += n;
}
#define PUTS(w, lit) put((w), (lit), (Py_ssize_t)sizeof(lit) - 1)
#define PUTB(w, b) put((w), PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

/* the values of one kind, ", "-joined: their total length */
static Py_ssize_t joined_len(PyObject **v, int n)
{
    Py_ssize_t t = 0;
    for (int i = 0; i < n; i++)
        t += PyBytes_GET_SIZE(v[i]) + (i ? 2 : 0);
    return t;
}

static void put_joined(out_t *w, PyObject **v, int n)
{
    for (int i = 0; i < n; i++) {
        if (i)
            PUTS(w, ", ");
        PUTB(w, v[i]);
    }
}

static PyObject *latin1(PyObject *s)
{
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "method and target must be str");
        return NULL;
    }
    if (PyUnicode_IS_ASCII(s))
        return PyBytes_FromStringAndSize(PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s));
    return PyUnicode_AsLatin1String(s);
}

static PyObject *http_forward_head(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10 || !PyList_Check(args[2]) || !PyBytes_Check(args[5]) ||
        !PyBytes_Check(args[6]) || !PyBytes_Check(args[7]) || !PyBytes_Check(args[9]) ||
        (args[4] != Py_None && !PyBytes_Check(args[4]))) {
        PyErr_SetString(PyExc_TypeError, "forward_head(method: str, target: str, headers: list, "
                        "upgrade, host_out: bytes | None, ip: bytes, scheme: bytes, node: bytes, "
                        "via, tail: bytes)");
        return NULL;
    }
    PyObject *headers = args[2], *host_out = args[4], *ip = args[5], *scheme = args[6];
    PyObject *node = args[7], *tail = args[9];
    int upgrade = PyObject_IsTrue(args[3]), via = PyObject_IsTrue(args[8]);
    if (upgrade < 0 || via < 0)
        return NULL;
    PyObject *xff[MAX_HEADERS], *fwd[MAX_HEADERS], *vias[MAX_HEADERS], *conn[MAX_HEADERS];
    int nxff = 0, nfwd = 0, nvia = 0, nconn = 0;
    PyObject *host_in = NULL, *upgrade_value = NULL;
    Py_ssize_t n = PyList_GET_SIZE(headers), block = 0;
    if (n > MAX_HEADERS)  /* more than the native parser accepts: the caller's Python path */
        Py_RETURN_NOTIMPLEMENTED;
    /* pass 1: check the pairs, collect the special values, size the kept lines */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k, *v;
        if (header_pair(headers, i, &k, &v) < 0)
            return NULL;
        switch (forward_kind(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))) {
        case F_KEEP: block += PyBytes_GET_SIZE(k) + PyBytes_GET_SIZE(v) + 4; break;
        case F_HOST: host_in = v; break;
        case F_XFF: xff[nxff++] = v; break;
        case F_FWD: fwd[nfwd++] = v; break;
        case F_VIA: vias[nvia++] = v; break;
        case F_UPGRADE: upgrade_value = v; break;
        case F_CONNECTION: conn[nconn++] = v; break;
        default: break;
        }
    }
    PyObject *mb = latin1(args[0]);
    if (mb == NULL)
        return NULL;
    PyObject *tb = latin1(args[1]);
    if (tb == NULL) {
        Py_DECREF(mb);
        return NULL;
    }
    PyObject *host = host_out != Py_None ? host_out : host_in;
    int quoted = host_in != NULL && memchr(PyBytes_AS_STRING(host_in), '"',
                                           (size_t)PyBytes_GET_SIZE(host_in)) != NULL;
    static const char via_tag[] = "1.1 monolake";
    /* an existing value that is empty gets no ", " before ours (as in Python: `if xff`) */
    Py_ssize_t lxff = joined_len(xff, nxff), lfwd = joined_len(fwd, nfwd), lvia = joined_len(vias, nvia);
    Py_ssize_t total = PyBytes_GET_SIZE(mb) + 1 + PyBytes_GET_SIZE(tb) + 11 + block
        + 6 + (host != NULL ? PyBytes_GET_SIZE(host) : 9) + 2
        + 17 + lxff + (lxff ? 2 : 0) + PyBytes_GET_SIZE(ip) + 2
        + 19 + PyBytes_GET_SIZE(scheme) + 2
        + (host_in != NULL ? 18 + PyBytes_GET_SIZE(host_in) + 2 : 0)
        + 11 + lfwd + (lfwd ? 2 : 0) + PyBytes_GET_SIZE(node)
        + (host_in != NULL && !quoted ? 7 + PyBytes_GET_SIZE(host_in) + 1 : 0) + 2
        + (via || nvia ? 5 + lvia + (via ? (lvia ? 2 : 0) + 12 : 0) + 2 : 0)
        + (upgrade && upgrade_value != NULL ? 30 + PyBytes_GET_SIZE(upgrade_value) + 2 : 0)
        + PyBytes_GET_SIZE(tail);
    PyObject *r = PyBytes_FromStringAndSize(NULL, total);
    if (r == NULL) {
        Py_DECREF(mb);
        Py_DECREF(tb);
        return NULL;
    }
    out_t w = {PyBytes_AS_STRING(r)};
    PUTB(&w, mb);
    PUTS(&w, " ");
    PUTB(&w, tb);
    PUTS(&w, " HTTP/1.1\r\n");
    Py_DECREF(mb);
    Py_DECREF(tb);
    /* pass 2: the kept lines, without those the Connection header names */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(headers, i);
        PyObject *k = PyTuple_GET_ITEM(t, 0), *v = PyTuple_GET_ITEM(t, 1);
        span name = {PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)};
        if (forward_kind(name.p, name.n) != F_KEEP || (nconn && named_in(name, conn, nconn)))
            continue;
        PUTB(&w, k);
        PUTS(&w, ": ");
        PUTB(&w, v);
        PUTS(&w, "\r\n");
    }
    PUTS(&w, "host: ");
    if (host != NULL)
        PUTB(&w, host);
    else
        PUTS(&w, "localhost");
    PUTS(&w, "\r\nx-forwarded-for: ");
    put_joined(&w, xff, nxff);
    if (lxff)
        PUTS(&w, ", ");
    PUTB(&w, ip);
    PUTS(&w, "\r\nx-forwarded-proto: ");
    PUTB(&w, scheme);
    PUTS(&w, "\r\n");
    if (host_in != NULL) {
        PUTS(&w, "x-forwarded-host: ");
        PUTB(&w, host_in);
        PUTS(&w, "\r\n");
    }
    PUTS(&w, "forwarded: ");
    put_joined(&w, fwd, nfwd);
    if (lfwd)
        PUTS(&w, ", ");
    PUTB(&w, node);
    if (host_in != NULL && !quoted) {
        PUTS(&w, ";host=\"");
        PUTB(&w, host_in);
        PUTS(&w, "\"");
    }
    PUTS(&w, "\r\n");
    if (via || nvia) {
        PUTS(&w, "via: ");
        put_joined(&w, vias, nvia);
        if (via) {
            if (lvia)
                PUTS(&w, ", ");
            put(&w, via_tag, (Py_ssize_t)sizeof(via_tag) - 1);
        }
        PUTS(&w, "\r\n");
    }
    if (upgrade && upgrade_value != NULL) {
        PUTS(&w, "connection: upgrade\r\nupgrade: ");
        PUTB(&w, upgrade_value);
        PUTS(&w, "\r\n");
    }
    PUTB(&w, tail);
    /* `total` counted the lines Connection names too (they are known only after pass 1) */
    Py_ssize_t used = w.o - PyBytes_AS_STRING(r);
    if (used > total) {  /* a sizing bug: never send a head with garbage in it */
        Py_DECREF(r);
        PyErr_Format(PyExc_SystemError, "forward_head: sized %zd, wrote %zd", total, used);
        return NULL;
    }
    if (used < total && _PyBytes_Resize(&r, used) < 0)
        return NULL;
    return r;
}

static PyMethodDef http_methods[] = {
    {"forward_head", (PyCFunction)(void (*)(void))http_forward_head, METH_FASTCALL,
     "forward_head(method, target, headers, upgrade, host_out, ip, scheme, node, via, tail) "
     "-> bytes: the request head sent upstream (see headers.request_head)."},
    {"split_headers", (PyCFunction)(void (*)(void))http_split_headers, METH_FASTCALL,
     "split_headers(headers, names) -> (block, picked): serialise the pairs not named, pick the rest."},
    {"configure", http_configure, METH_VARARGS,
     "configure(ParseError, UpgradeRequested): the exception classes the parsers raise."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef http_module = {
    PyModuleDef_HEAD_INIT, "monolake.uring._http",
    "Native HTTP/1.1 request and response parsers (see mu_http.c).", -1, http_methods,
    NULL, NULL, NULL, NULL,
};

static int http_install(void)
{
    const char *tc = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        tchar[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   (c && strchr(tc, c) != NULL);
        lower[c] = (unsigned char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    PyObject *sys_modules = PyImport_GetModuleDict();
    if (PyDict_GetItemString(sys_modules, "monolake.uring._http") != NULL)
        return 0;
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    INTERN(s_on_request_head, "on_request_head");
    INTERN(s_on_response, "on_response");
    INTERN(s_on_relay, "on_relay");
    INTERN(s_on_body, "on_body");
    INTERN(s_on_message_complete, "on_message_complete");
    INTERN(s_on_trailers, "on_trailers");
    INTERN(s_version_11, "1.1");
    INTERN(s_version_10, "1.0");
    INTERN(m_get, "GET");
    INTERN(m_post, "POST");
    INTERN(m_head, "HEAD");
    INTERN(m_put, "PUT");
    INTERN(m_delete, "DELETE");
#undef INTERN
    if (PyType_Ready(&RequestParser_Type) < 0 || PyType_Ready(&ResponseParser_Type) < 0)
        return -1;
    PyObject *m = PyModule_Create(&http_module);
    if (m == NULL)
        return -1;
    Py_INCREF(&RequestParser_Type);
    Py_INCREF(&ResponseParser_Type);
    if (PyModule_AddObject(m, "RequestParser", (PyObject *)&RequestParser_Type) < 0 ||
        PyModule_AddObject(m, "ResponseParser", (PyObject *)&ResponseParser_Type) < 0 ||
        PyModule_AddIntConstant(m, "CHUNKED", RQ_CHUNKED) < 0 ||
        PyModule_AddIntConstant(m, "EXPECT", RQ_EXPECT) < 0 ||
        PyModule_AddIntConstant(m, "CONN_CLOSE", RQ_CONN_CLOSE) < 0 ||
        PyModule_AddIntConstant(m, "CONN_KEEPALIVE", RQ_CONN_KEEPALIVE) < 0 ||
        PyModule_AddIntConstant(m, "UPGRADE", RQ_UPGRADE) < 0) {
        Py_DECREF(m);
        return -1;
    }
    if (PyDict_SetItemString(sys_modules, "monolake.uring._http", m) < 0) {
        Py_DECREF(m);
        return -1;
    }
    Py_DECREF(m);
    return 0;
}

/* Build monolake.uring._http and put it in sys.modules: 0, or -1 (the ``native`` parser is then
 * unavailable). Called through cffi, which released the GIL: take it back here. */
int mu_http_install(void)
{
    PyGILState_STATE st = PyGILState_Ensure();
    int rc = http_install();
    if (rc != 0)
        PyErr_Clear();
    PyGILState_Release(st);
    return rc;
}
