/*
 * mu_nx: the native exchange's head decisions (see mu_nx.h). Deliberately a strict subset of
 * what the Python engine accepts: a head C is not sure the Python engine would treat the same
 * way is declined, and the Python engine (the reference) serves it, errors included.
 *
 * Request: "METHOD SP origin-form SP HTTP/1.1 CRLF" (GET, HEAD, POST, PUT, DELETE, PATCH),
 * field lines "token: value CRLF" (visible ASCII, SP, HTAB in values; trimmed), one Host of
 * [A-Za-z0-9.-] with an optional port, the blank line, then the body its one Content-Length
 * announces (at most max_body bytes; none without one), whole. Declined:
 * Transfer-Encoding, Connection, Upgrade, Expect, Proxy-Connection, Keep-Alive; a '%',
 * "//", "/." or '#' in the target (the Python side's normalisation is not repeated here).
 *
 * Response: "HTTP/1.1|HTTP/1.0 SP 3DIGIT SP reason CRLF" with a non-empty reason, status 200
 * to 599, one Content-Length (or equal copies; none needed for 204, 304 and HEAD), CRLF line
 * ends, no Transfer-Encoding, a Connection of close / keep-alive tokens only.
 * The client's head is what the Python engine writes (connection.py response_head over
 * mu_http.c relay_whole / on_response): "HTTP/1.1 <code> <reason>", the fields minus hop-by-hop
 * and Content-Length with lower-case names, then "content-length: N" (none for 204 and 304;
 * for HEAD the upstream's, if it sent one).
 */
#include <stdio.h>
#include <string.h>

#include "mu_head.h"
#include "mu_nx.h"

static const char *const reasons[MU_NX_REASONS] = {
    "ok", "incomplete", "too big", "method", "target", "version", "field", "fields",
    "framing", "connection", "host", "status", "response framing",
};

const char *mu_nx_decline_reason(int code)
{
    return code >= 0 && code < MU_NX_REASONS ? reasons[code] : "unknown";
}

/* character classes, one table lookup per byte (the field scan is per byte of every head) */
enum { CL_TCHAR = 1, CL_TARGET = 2 };
static unsigned char classes[256];

static void classes_init(void)
{
    if (classes['a'])
        return;
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        unsigned char k = 0;
        if (alnum || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL))
            k |= CL_TCHAR;
        /* target characters C takes: unreserved, sub-delims, ':', '@', '/', '?' (no '%',
         * no '#') */
        if (alnum || (c != 0 && strchr("-._~!$&'()*+,;=:@/?", c) != NULL))
            k |= CL_TARGET;
        classes[c] = k;
    }
}

static int is_tchar(unsigned char c) { return classes[c] & CL_TCHAR; }

/* a field name (a[0, n)) against a lower-case literal, in any case (mu_head.h) */
static int ieq(const char *a, size_t n, const char *lit)
{
    return mu_ieq(a, n, lit, strlen(lit));
}

static int target_char(unsigned char c) { return classes[c] & CL_TARGET; }

/* One "name: value" line (no line end) into trimmed spans; 0 or a reason. */
static int field(const char *p, size_t n, int strict_value, const char **name, size_t *nlen,
                 const char **value, size_t *vlen)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i]))
        i++;
    if (i == 0 || i >= n || p[i] != ':')
        return NX_FIELD;
    *name = p;
    *nlen = i;
    const char *v = p + i + 1;
    size_t m = n - i - 1;
    while (m > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        m--;
    }
    while (m > 0 && (v[m - 1] == ' ' || v[m - 1] == '\t'))
        m--;
    for (size_t k = 0; k < m; k++) {
        unsigned char c = (unsigned char)v[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f || (strict_value && c >= 0x80))
            return NX_FIELD;
    }
    *value = v;
    *vlen = m;
    return 0;
}

/* The next CRLF-ended line of [*pos, n): 0 and its span, or NX_INCOMPLETE / NX_FIELD (a bare
 * LF or CR). */
static int line_at(const char *d, size_t n, size_t *pos, const char **p, size_t *len)
{
    const char *s = d + *pos;
    const char *nl = memchr(s, '\n', n - *pos);
    if (nl == NULL)
        return NX_INCOMPLETE;
    size_t k = (size_t)(nl - s);
    if (k == 0 || s[k - 1] != '\r')
        return NX_FIELD;
    if (memchr(s, '\r', k - 1) != NULL)
        return NX_FIELD;
    *p = s;
    *len = k - 1;
    *pos += k + 1;
    return 0;
}

/* The next field line of a head (count: the fields before it): 0 and its span, -1 at the
 * blank line that ends the head, else a decline reason */
static int field_line(const char *d, size_t n, size_t *pos, const char **line, size_t *len,
                      size_t count)
{
    int rc = line_at(d, n, pos, line, len);
    if (rc)
        return rc;
    if (*len == 0)
        return -1;
    return count >= MU_NX_MAX_FIELDS ? NX_FIELDS : 0;
}

/* A Content-Length value: its number, or -1 (empty, more than 15 digits, not all digits) */
static long long length_value(const char *v, size_t vl)
{
    if (vl == 0 || vl > 15)
        return -1;
    long long x = 0;
    for (size_t k = 0; k < vl; k++) {
        if (v[k] < '0' || v[k] > '9')
            return -1;
        x = x * 10 + (v[k] - '0');
    }
    return x;
}

static int host_ok(const char *h, size_t n)
{
    size_t i = 0;
    while (i < n && ((h[i] >= 'a' && h[i] <= 'z') || (h[i] >= 'A' && h[i] <= 'Z') ||
                     (h[i] >= '0' && h[i] <= '9') || h[i] == '.' || h[i] == '-'))
        i++;
    if (i == 0)
        return 0;
    if (i == n)
        return 1;
    if (h[i] != ':' || i + 1 == n || n - i - 1 > 5)
        return 0;
    for (i++; i < n; i++)
        if (h[i] < '0' || h[i] > '9')
            return 0;
    return 1;
}

static const struct {
    const char *text;
    size_t len;
} methods[] = {{"GET ", 4}, {"HEAD ", 5}, {"POST ", 5}, {"PUT ", 4}, {"DELETE ", 7}, {"PATCH ", 6}};

int mu_nx_parse_request(const char *d, size_t all, long long max_body, mu_nx_request *rq)
{
    classes_init();
    const char *blank = NULL;
    size_t scan = all < MU_NX_MAX_HEAD ? all : MU_NX_MAX_HEAD;
    for (size_t i = 0; i + 4 <= scan; i++) {
        const char *p = memchr(d + i, '\r', scan - i);
        if (p == NULL || (size_t)(p - d) + 4 > scan)
            break;
        i = (size_t)(p - d);
        if (memcmp(p, "\r\n\r\n", 4) == 0) {
            blank = p;
            break;
        }
    }
    if (blank == NULL)
        return all > MU_NX_MAX_HEAD ? NX_TOO_BIG : NX_INCOMPLETE;
    size_t n = (size_t)(blank - d) + 4;
    rq->head_len = n;
    rq->content_length = -1;
    size_t pos = 0;
    const char *line;
    size_t len;
    int rc = line_at(d, n, &pos, &line, &len);
    if (rc)
        return rc;
    /* method */
    rq->method_len = 0;
    for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++)
        if (len >= methods[m].len && memcmp(line, methods[m].text, methods[m].len) == 0)
            rq->method_len = methods[m].len - 1;
    if (rq->method_len == 0)
        return NX_METHOD;
    rq->method = line;
    const char *t = line + rq->method_len + 1;
    if (len < rq->method_len + 1 + 1 + 9 || memcmp(line + len - 9, " HTTP/1.1", 9) != 0)
        return NX_VERSION;
    size_t tlen = (size_t)(line + len - 9 - t);
    if (tlen == 0 || t[0] != '/')
        return NX_TARGET;
    size_t q = tlen;
    for (size_t i = 0; i < tlen; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!target_char(c))
            return NX_TARGET;
        if (c == '?' && q == tlen)
            q = i;
        if (q == tlen && c == '/' && i + 1 < tlen && (t[i + 1] == '/' || t[i + 1] == '.'))
            return NX_TARGET;
    }
    rq->path = t;
    rq->path_len = q;
    rq->query = q < tlen ? t + q + 1 : t + tlen;
    rq->query_len = q < tlen ? tlen - q - 1 : 0;
    rq->host = NULL;
    rq->host_len = 0;
    rq->nfields = 0;
    while ((rc = field_line(d, n, &pos, &line, &len, rq->nfields)) != -1) {
        if (rc)
            return rc;
        size_t k = rq->nfields;
        rc = field(line, len, 1, &rq->names[k], &rq->name_lens[k], &rq->values[k], &rq->value_lens[k]);
        if (rc)
            return rc;
        const char *nm = rq->names[k];
        size_t nl = rq->name_lens[k];
        if (ieq(nm, nl, "content-length")) {
            long long x = length_value(rq->values[k], rq->value_lens[k]);
            if (rq->content_length >= 0 || x < 0)
                return NX_FRAMING;
            rq->content_length = x;
        }
        if (ieq(nm, nl, "transfer-encoding"))
            return NX_FRAMING;
        if (ieq(nm, nl, "connection") || ieq(nm, nl, "upgrade") || ieq(nm, nl, "expect") ||
            ieq(nm, nl, "proxy-connection") || ieq(nm, nl, "keep-alive") ||
            ieq(nm, nl, "http2-settings"))
            return NX_CONNECTION;
        if (ieq(nm, nl, "host")) {
            if (rq->host != NULL || !host_ok(rq->values[k], rq->value_lens[k]))
                return NX_HOST;
            rq->host = rq->values[k];
            rq->host_len = rq->value_lens[k];
        }
        rq->nfields++;
    }
    if (rq->host == NULL)
        return NX_HOST;
    long long body = rq->content_length < 0 ? 0 : rq->content_length;
    if (body > max_body)
        return NX_FRAMING;
    long long have = (long long)(all - n) < body ? (long long)(all - n) : body;
    rq->body_missing = body - have; /* the rest comes in later reads */
    rq->total = n + (size_t)have;
    return NX_OK;
}

/* hop-by-hop names and Content-Length: not copied to the client */
static int dropped(const char *p, size_t n)
{
    switch (n) {
    case 2: return ieq(p, n, "te");
    case 7: return ieq(p, n, "trailer") || ieq(p, n, "upgrade");
    case 10: return ieq(p, n, "connection") || ieq(p, n, "keep-alive");
    case 14: return ieq(p, n, "content-length");
    case 16: return ieq(p, n, "proxy-connection");
    case 17: return ieq(p, n, "transfer-encoding");
    }
    return 0;
}

/* Connection tokens: 1 close, 2 keep-alive; -1 for any other (it names a field to drop,
 * which the Python engine does: declined) */
static int conn_tokens(const char *p, size_t n)
{
    int bits = 0;
    size_t pos = 0, m;
    const char *s;
    while (mu_list_next(p, n, &pos, 0, &s, &m)) {
        if (ieq(s, m, "close"))
            bits |= 1;
        else if (ieq(s, m, "keep-alive"))
            bits |= 2;
        else if (m != 0)
            return -1;
    }
    return bits;
}

int mu_nx_parse_response(const char *d, size_t n, int head_only, mu_nx_response *rs)
{
    classes_init();
    const char *end = NULL;
    size_t scan = n < MU_NX_MAX_HEAD ? n : MU_NX_MAX_HEAD;
    for (size_t i = 0; i < scan; i++) {
        const char *nl = memchr(d + i, '\n', scan - i);
        if (nl == NULL)
            break;
        i = (size_t)(nl - d);
        if (i + 2 < scan && nl[1] == '\r' && nl[2] == '\n') {
            end = nl + 3;
            break;
        }
        if (i + 1 < scan && nl[1] == '\n')
            return NX_FIELD; /* a bare LF blank line */
    }
    if (end == NULL)
        return n >= MU_NX_MAX_HEAD ? NX_TOO_BIG : -1;
    size_t hn = (size_t)(end - d), pos = 0, len;
    const char *line;
    int rc = line_at(d, hn, &pos, &line, &len);
    if (rc)
        return rc;
    if (len < 14 || (memcmp(line, "HTTP/1.1 ", 9) != 0 && memcmp(line, "HTTP/1.0 ", 9) != 0) ||
        line[9] < '2' || line[9] > '5' || line[10] < '0' || line[10] > '9' || line[11] < '0' ||
        line[11] > '9' || line[12] != ' ')
        return NX_STATUS;
    int v11 = line[7] == '1';
    int status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    for (size_t k = 13; k < len; k++) {
        unsigned char c = (unsigned char)line[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return NX_STATUS;
    }
    int no_body = status == 204 || status == 304 || head_only;
    size_t client = 9 + 4 + (len - 13) + 2; /* "HTTP/1.1 " "200 " reason CRLF */
    long long clen = -1;
    int conn = 0, nf = 0;
    while ((rc = field_line(d, hn, &pos, &line, &len, (size_t)nf++)) != -1) {
        if (rc)
            return rc;
        const char *nm, *v;
        size_t nl, vl;
        rc = field(line, len, 0, &nm, &nl, &v, &vl);
        if (rc)
            return rc;
        if (ieq(nm, nl, "content-length")) {
            long long x = length_value(v, vl);
            if (x < 0 || (clen >= 0 && x != clen))
                return NX_RESP_FRAMING;
            clen = x;
        } else if (ieq(nm, nl, "transfer-encoding")) {
            return NX_RESP_FRAMING;
        } else if (ieq(nm, nl, "connection")) {
            int b = conn_tokens(v, vl);
            if (b < 0)
                return NX_CONNECTION;
            conn |= b;
        }
        if (!dropped(nm, nl))
            client += nl + 2 + vl + 2;
    }
    if (clen < 0 && !no_body)
        return NX_RESP_FRAMING;
    long long announce = status == 204 || status == 304 ? -1 : clen;
    char num[32];
    if (announce >= 0)
        client += (size_t)snprintf(num, sizeof num, "content-length: %lld\r\n", announce);
    client += 2;
    rs->status = status;
    rs->keep_alive = v11 ? !(conn & 1) : (conn & 2) != 0;
    rs->content_length = no_body ? 0 : clen;
    rs->announce = announce;
    rs->head_len = hn;
    rs->client_len = client;
    return NX_OK;
}

void mu_nx_client_head(const char *d, const mu_nx_response *rs, char *out)
{
    classes_init();
    size_t pos = 0, len;
    const char *line;
    char *o = out;
    line_at(d, rs->head_len, &pos, &line, &len);
    memcpy(o, "HTTP/1.1 ", 9);
    memcpy(o + 9, line + 9, len - 9);
    o += len;
    *o++ = '\r';
    *o++ = '\n';
    for (;;) {
        line_at(d, rs->head_len, &pos, &line, &len);
        if (len == 0)
            break;
        const char *nm, *v;
        size_t nl, vl;
        field(line, len, 0, &nm, &nl, &v, &vl);
        if (dropped(nm, nl))
            continue;
        for (size_t i = 0; i < nl; i++)
            *o++ = (char)mu_low((unsigned char)nm[i]);
        *o++ = ':';
        *o++ = ' ';
        memcpy(o, v, vl);
        o += vl;
        *o++ = '\r';
        *o++ = '\n';
    }
    if (rs->announce >= 0) {
        char num[32];
        int k = snprintf(num, sizeof num, "content-length: %lld\r\n", rs->announce);
        memcpy(o, num, (size_t)k);
        o += k;
    }
    *o++ = '\r';
    *o++ = '\n';
}
