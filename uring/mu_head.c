/*
 * mu_head: the upstream request head; see mu_head.h. The rules, in the reference's order
 * (headers.py _request_head_py, upstream_target, framing):
 *   - the header list is the request's, without the remove_request names, then the
 *     set_request pairs (what HeaderRewrite hands the router);
 *   - request line: method, the upstream target (a URI upstream's path, the request path
 *     appended with preserve_path, the URI's query then the request's joined by '&'), HTTP/1.1;
 *   - every field but the hop-by-hop ones (Connection, Keep-Alive, Proxy-Connection, TE,
 *     Trailer, Transfer-Encoding, Upgrade), the ones the proxy writes itself (Host,
 *     Content-Length, Expect, X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-For, Forwarded,
 *     Via) and those a Connection value names; names lower-case (as the parser hands them);
 *   - host (the upstream's authority, or the client's Host with preserve_host or a unix
 *     upstream, "localhost" without one), x-forwarded-for (the client's values, then its
 *     address), x-forwarded-proto, x-forwarded-host (the client's Host), forwarded (the
 *     client's values, then for=...;proto=...;host="..."), via, connection: upgrade and the
 *     last Upgrade value for an upgrade, then the framing and the blank line.
 * Case folding is ASCII only, as bytes.lower() (names are tokens; set names are lower-case).
 */
#include <string.h>

#include "mu_head.h"

typedef struct {
    char *o;
    size_t n, cap;
} wbuf;

static void put(wbuf *w, const char *p, size_t n)
{
    if (n && w->n + n <= w->cap)
        memcpy(w->o + w->n, p, n);
    w->n += n;
}
#define PUTS(w, lit) put((w), (lit), sizeof(lit) - 1)


static void put_lower(wbuf *w, const char *p, size_t n)
{
    if (w->n + n <= w->cap)
        for (size_t i = 0; i < n; i++)
            w->o[w->n + i] = (char)mu_low((unsigned char)p[i]);
    w->n += n;
}



/* what the head does with a field of this name (mu_head.h) */
int mu_head_field_kind(const char *p, size_t n)
{
#define IS(lit) mu_ieq(p, n, lit, sizeof(lit) - 1)
    switch (n) {
    case 2: return IS("te") ? F_DROP : F_KEEP;
    case 3: return IS("via") ? F_VIA : F_KEEP;
    case 4: return IS("host") ? F_HOST : F_KEEP;
    case 6: return IS("expect") ? F_DROP : F_KEEP;
    case 7: return IS("upgrade") ? F_UPGRADE : IS("trailer") ? F_DROP : F_KEEP;
    case 9: return IS("forwarded") ? F_FWD : F_KEEP;
    case 10: return IS("connection") ? F_CONNECTION : IS("keep-alive") ? F_DROP : F_KEEP;
    case 14: return IS("content-length") ? F_DROP : F_KEEP;
    case 15: return IS("x-forwarded-for") ? F_XFF : F_KEEP;
    case 16: return IS("proxy-connection") || IS("x-forwarded-host") ? F_DROP : F_KEEP;
    case 17: return IS("transfer-encoding") || IS("x-forwarded-proto") ? F_DROP : F_KEEP;
    }
    return F_KEEP;
#undef IS
}

/* The header list HeaderRewrite leaves: the request's fields not removed, then the set ones. */
typedef struct {
    const mu_head_request *rq;
    const mu_head_route *rt;
} hlist;

static size_t hl_len(const hlist *L)
{
    return L->rq->nfields + L->rt->nset;
}

/* item i, or NULL when it is removed */
static const mu_head_field *hl_get(const hlist *L, size_t i)
{
    if (i >= L->rq->nfields)
        return &L->rt->set[i - L->rq->nfields];
    const mu_head_field *f = &L->rq->fields[i];
    for (size_t k = 0; k < L->rt->nremove; k++)
        if (mu_ieq(f->name, f->name_len, L->rt->remove[k].name, L->rt->remove[k].name_len))
            return NULL;
    return f;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

int mu_list_next(const char *v, size_t n, size_t *pos, int wide, const char **t, size_t *tn)
{
    size_t i = *pos;
    if (i > n)
        return 0;
    size_t j = i;
    while (j < n && v[j] != ',')
        j++;
    const char *s = v + i;
    size_t m = j - i;
    while (m > 0 && (*s == ' ' || *s == '\t' || (wide && is_ws(*s)))) {
        s++;
        m--;
    }
    while (m > 0 && (s[m - 1] == ' ' || s[m - 1] == '\t' || (wide && is_ws(s[m - 1]))))
        m--;
    *t = s;
    *tn = m;
    *pos = j + 1;
    return 1;
}

/* Is `name` a token of the Connection value v (split at ',', stripped, ASCII lower-cased)? */
static int token_in(const char *name, size_t n, const char *v, size_t vn)
{
    size_t pos = 0, tn;
    const char *t;
    while (mu_list_next(v, vn, &pos, 1, &t, &tn)) {
        if (tn == n && n > 0) {  /* an empty token names nothing (Python: `if tok`) */
            size_t q = 0;
            while (q < n && mu_low((unsigned char)t[q]) == mu_low((unsigned char)name[q]))
                q++;
            if (q == n)
                return 1;
        }
    }
    return 0;
}

static int named_by_connection(const hlist *L, const mu_head_field *f)
{
    size_t n = hl_len(L);
    for (size_t i = 0; i < n; i++) {
        const mu_head_field *c = hl_get(L, i);
        if (c != NULL && mu_head_field_kind(c->name, c->name_len) == F_CONNECTION &&
            token_in(f->name, f->name_len, c->value, c->value_len))
            return 1;
    }
    return 0;
}

/* the values of every field of `kind`, ", "-joined; how many there were */
static size_t put_joined(wbuf *w, const hlist *L, int kind, size_t *bytes)
{
    size_t count = 0, n = hl_len(L), start = w->n;
    for (size_t i = 0; i < n; i++) {
        const mu_head_field *f = hl_get(L, i);
        if (f == NULL || mu_head_field_kind(f->name, f->name_len) != kind)
            continue;
        if (count++)
            PUTS(w, ", ");
        put(w, f->value, f->value_len);
    }
    *bytes = w->n - start;
    return count;
}

/* upstream_target: the request target sent upstream */
static void put_target(wbuf *w, const mu_head_request *rq, const mu_head_route *rt,
                       const mu_head_upstream *up)
{
    int origin = rq->path_len > 0 && rq->path[0] == '/';
    if (up->uri) {
        const char *base = up->path_len ? up->path : "/";
        size_t bn = up->path_len ? up->path_len : 1;
        if (rt->preserve_path && origin) {
            while (bn > 0 && base[bn - 1] == '/')
                bn--;
            put(w, base, bn);
            put(w, rq->path, rq->path_len);
        } else
            put(w, base, bn);
        if (up->query_len || rq->query_len)
            PUTS(w, "?");
        put(w, up->query, up->query_len);
        if (up->query_len && rq->query_len)
            PUTS(w, "&");
        put(w, rq->query, rq->query_len);
    } else {
        if (origin)
            put(w, rq->path, rq->path_len);
        else
            PUTS(w, "/");
        if (rq->query_len) {
            PUTS(w, "?");
            put(w, rq->query, rq->query_len);
        }
    }
}

static void put_framing(wbuf *w, const mu_head_request *rq)
{
    if (rq->chunked) {
        PUTS(w, "transfer-encoding: chunked\r\n\r\n");
        return;
    }
    const char *m = rq->method;
    size_t mn = rq->method_len;
    if (rq->content_length > 0) {
        char digits[24];
        int k = (int)sizeof(digits);
        unsigned long long v = (unsigned long long)rq->content_length;
        do {
            digits[--k] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        PUTS(w, "content-length: ");
        put(w, digits + k, sizeof(digits) - (size_t)k);
        PUTS(w, "\r\n\r\n");
    } else if (rq->content_length == 0 || (mn == 4 && memcmp(m, "POST", 4) == 0) ||
               (mn == 3 && memcmp(m, "PUT", 3) == 0) || (mn == 5 && memcmp(m, "PATCH", 5) == 0))
        PUTS(w, "content-length: 0\r\n\r\n");
    else
        PUTS(w, "\r\n");
}

size_t mu_head_write(const mu_head_request *rq, const mu_head_route *rt,
                     const mu_head_upstream *up, const mu_head_conn *cn, char *out, size_t cap)
{
    wbuf w = {out, 0, out != NULL ? cap : 0};
    hlist L = {rq, rt};
    size_t n = hl_len(&L);
    const mu_head_field *host_in = NULL, *upgrade_value = NULL;
    for (size_t i = 0; i < n; i++) {
        const mu_head_field *f = hl_get(&L, i);
        if (f == NULL)
            continue;
        int k = mu_head_field_kind(f->name, f->name_len);
        if (k == F_HOST)
            host_in = f;
        else if (k == F_UPGRADE)
            upgrade_value = f;
    }
    put(&w, rq->method, rq->method_len);
    PUTS(&w, " ");
    put_target(&w, rq, rt, up);
    PUTS(&w, " HTTP/1.1\r\n");
    for (size_t i = 0; i < n; i++) {
        const mu_head_field *f = hl_get(&L, i);
        if (f == NULL || mu_head_field_kind(f->name, f->name_len) != F_KEEP || named_by_connection(&L, f))
            continue;
        put_lower(&w, f->name, f->name_len);
        PUTS(&w, ": ");
        put(&w, f->value, f->value_len);
        PUTS(&w, "\r\n");
    }
    PUTS(&w, "host: ");
    if (rt->preserve_host || !up->uri) {
        if (host_in != NULL)
            put(&w, host_in->value, host_in->value_len);
        else
            PUTS(&w, "localhost");
    } else
        put(&w, up->host_header, up->host_header_len);
    size_t joined;
    PUTS(&w, "\r\nx-forwarded-for: ");
    put_joined(&w, &L, F_XFF, &joined);
    if (joined)
        PUTS(&w, ", ");
    put(&w, cn->ip, cn->ip_len);
    PUTS(&w, "\r\nx-forwarded-proto: ");
    put(&w, cn->scheme, cn->scheme_len);
    PUTS(&w, "\r\n");
    if (host_in != NULL) {
        PUTS(&w, "x-forwarded-host: ");
        put(&w, host_in->value, host_in->value_len);
        PUTS(&w, "\r\n");
    }
    PUTS(&w, "forwarded: ");
    put_joined(&w, &L, F_FWD, &joined);
    if (joined)
        PUTS(&w, ", ");
    PUTS(&w, "for=");
    if (cn->ip_len && memchr(cn->ip, ':', cn->ip_len) != NULL) {
        PUTS(&w, "\"[");
        put(&w, cn->ip, cn->ip_len);
        PUTS(&w, "]\"");
    } else
        put(&w, cn->ip, cn->ip_len);
    PUTS(&w, ";proto=");
    put(&w, cn->scheme, cn->scheme_len);
    if (host_in != NULL &&
        (host_in->value_len == 0 || memchr(host_in->value, '"', host_in->value_len) == NULL)) {
        PUTS(&w, ";host=\"");
        put(&w, host_in->value, host_in->value_len);
        PUTS(&w, "\"");
    }
    PUTS(&w, "\r\n");
    /* via: ours after the client's; the client's alone without `via`; none when neither */
    size_t at = w.n;
    PUTS(&w, "via: ");
    size_t nvia = put_joined(&w, &L, F_VIA, &joined);
    if (rt->via) {
        if (joined)
            PUTS(&w, ", ");
        PUTS(&w, "1.1 monolake");
    }
    if (rt->via || nvia)
        PUTS(&w, "\r\n");
    else
        w.n = at;  /* nothing was written past `at` */
    if (rq->upgrade && upgrade_value != NULL) {
        PUTS(&w, "connection: upgrade\r\nupgrade: ");
        put(&w, upgrade_value->value, upgrade_value->value_len);
        PUTS(&w, "\r\n");
    }
    put_framing(&w, rq);
    return w.n;
}
