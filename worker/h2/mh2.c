/* C glue for monolake.worker.h2 (see mh2.h). Compiled as its own translation unit; warnings
 * are errors here whatever flags setuptools passes (the generated cffi module is separate). */
#pragma GCC diagnostic error "-Wall"
#pragma GCC diagnostic error "-Wextra"

#include "mh2.h"

#include <stdlib.h>
#include <string.h>

#define MH2_STACK_NV 64
#define MH2_STACK_BLOCK 4096
#define MH2_KEEP_BUF 16384
#define MH2_KEEP_OUT 65536
#define MH2_KEEP_SEGS 256

mh2_hdrs *mh2_hdrs_new(size_t limit)
{
    mh2_hdrs *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->limit = limit;
    return h;
}

void mh2_hdrs_free(mh2_hdrs *h)
{
    if (h == NULL)
        return;
    while (h->bodies != NULL) {
        mh2_body *b = h->bodies;
        h->bodies = b->next;
        free(b);
    }
    free(h->buf);
    free(h->log);
    free(h->out);
    free(h->segs);
    free(h);
}

void mh2_log_reset(mh2_hdrs *h)
{
    h->log_len = 0;
    if (h->log_cap > MH2_KEEP_BUF) {
        free(h->log);
        h->log = NULL;
        h->log_cap = 0;
    }
}

/* Grow *buf (capacity *cap) to hold need bytes; -1 when out of memory. */
static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    size_t c;
    uint8_t *p;
    if (need <= *cap)
        return 0;
    c = *cap ? *cap : 1024;
    while (c < need)
        c *= 2;
    p = realloc(*buf, c);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = c;
    return 0;
}

/* Append a record with room for len payload bytes to the log: the payload's address, or NULL
 * when out of memory (the callback then fails and nghttp2 ends the session). */
static uint8_t *record(mh2_hdrs *h, uint8_t kind, uint8_t flags, uint8_t cat, int32_t stream_id,
                       uint32_t aux, size_t len)
{
    mh2_rec r;
    uint8_t *at;
    if (len > UINT32_MAX || grow(&h->log, &h->log_cap, h->log_len + sizeof(r) + len) != 0)
        return NULL;
    memset(&r, 0, sizeof(r));
    r.kind = kind;
    r.flags = flags;
    r.cat = cat;
    r.stream_id = stream_id;
    r.aux = aux;
    r.len = (uint32_t)len;
    at = h->log + h->log_len;
    memcpy(at, &r, sizeof(r));
    h->log_len += sizeof(r) + len;
    return at + sizeof(r);
}

#define FAIL NGHTTP2_ERR_CALLBACK_FAILURE

static int record_copy(mh2_hdrs *h, uint8_t kind, uint8_t flags, int32_t stream_id, uint32_t aux,
                       const void *data, size_t len)
{
    uint8_t *p = record(h, kind, flags, 0, stream_id, aux, len);
    if (p == NULL)
        return FAIL;
    if (len)
        memcpy(p, data, len);
    return 0;
}

static int record_goaway(mh2_hdrs *h, uint8_t kind, const nghttp2_frame *frame)
{
    const nghttp2_goaway *g = &frame->goaway;
    int32_t last = g->last_stream_id;
    uint8_t *p = record(h, kind, frame->hd.flags, 0, 0, g->error_code,
                        sizeof(last) + g->opaque_data_len);
    if (p == NULL)
        return FAIL;
    memcpy(p, &last, sizeof(last));
    if (g->opaque_data_len)
        memcpy(p + sizeof(last), g->opaque_data, g->opaque_data_len);
    return 0;
}

int mh2_on_frame_recv_c(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    mh2_hdrs *h = user_data;
    const nghttp2_frame_hd *hd = &frame->hd;
    (void)session;
    switch (hd->type) {
    case NGHTTP2_HEADERS: {
        /* the block mh2_header_c collected (none if it was refused as too big) */
        size_t len = h->stream_id == hd->stream_id && !h->too_big ? h->len : 0;
        uint8_t *p = record(h, MH2_EV_HEADERS, hd->flags, (uint8_t)frame->headers.cat,
                            hd->stream_id, 0, len);
        if (p == NULL)
            return FAIL;
        if (len)
            memcpy(p, h->buf, len);
        return 0;
    }
    case NGHTTP2_DATA:
        if (!(hd->flags & NGHTTP2_FLAG_END_STREAM))
            return 0;
        return record_copy(h, MH2_EV_DATA_END, hd->flags, hd->stream_id, 0, NULL, 0);
    case NGHTTP2_RST_STREAM:
        return record_copy(h, MH2_EV_RST, hd->flags, hd->stream_id, frame->rst_stream.error_code,
                           NULL, 0);
    case NGHTTP2_SETTINGS: {
        size_t i, n = frame->settings.niv;
        uint8_t *p;
        if (hd->flags & NGHTTP2_FLAG_ACK)
            return 0;
        p = record(h, MH2_EV_SETTINGS, hd->flags, 0, 0, 0, n * 2 * sizeof(uint32_t));
        if (p == NULL)
            return FAIL;
        for (i = 0; i < n; i++) {
            uint32_t pair[2];
            pair[0] = (uint32_t)frame->settings.iv[i].settings_id;
            pair[1] = frame->settings.iv[i].value;
            memcpy(p + i * sizeof(pair), pair, sizeof(pair));
        }
        return 0;
    }
    case NGHTTP2_PING:
        if (!(hd->flags & NGHTTP2_FLAG_ACK))
            return 0;
        return record_copy(h, MH2_EV_PING_ACK, hd->flags, 0, 0, frame->ping.opaque_data, 8);
    case NGHTTP2_GOAWAY:
        return record_goaway(h, MH2_EV_GOAWAY, frame);
    default:
        return 0;
    }
}

int mh2_on_data_chunk_recv_c(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                             const uint8_t *data, size_t len, void *user_data)
{
    (void)session;
    return record_copy(user_data, MH2_EV_DATA, flags, stream_id, 0, data, len);
}

static void body_free(mh2_hdrs *h, nghttp2_session *session, int32_t stream_id, mh2_body *b)
{
    if (b->prev != NULL)
        b->prev->next = b->next;
    else
        h->bodies = b->next;
    if (b->next != NULL)
        b->next->prev = b->prev;
    free(b);
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
}

int mh2_on_stream_close_c(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                          void *user_data)
{
    mh2_body *b = nghttp2_session_get_stream_user_data(session, stream_id);
    if (b != NULL) /* reset (or closed) before its body was all out */
        body_free(user_data, session, stream_id, b);
    return record_copy(user_data, MH2_EV_CLOSE, 0, stream_id, error_code, NULL, 0);
}

int mh2_on_frame_send_c(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)session;
    if (frame->hd.type != NGHTTP2_GOAWAY)
        return 0;
    return record_goaway(user_data, MH2_EV_GOAWAY_SENT, frame);
}

/* Room for extra more bytes at the end of h->out; NULL when out of memory. */
static uint8_t *out_room(mh2_hdrs *h, size_t extra)
{
    if (grow(&h->out, &h->out_cap, h->out_len + extra) != 0)
        return NULL;
    return h->out + h->out_len;
}

int64_t mh2_send(mh2_hdrs *h, nghttp2_session *session, size_t limit)
{
    if (h->out_cap > MH2_KEEP_OUT) { /* a burst came and went: an idle session keeps less */
        free(h->out);
        h->out = NULL;
        h->out_cap = 0;
    }
    h->out_len = 0;
    h->nsegs = 0;
    if (h->segs_cap > MH2_KEEP_SEGS) {
        free(h->segs);
        h->segs = NULL;
        h->segs_cap = 0;
    }
    while (h->out_len < limit) {
        const uint8_t *p;
        uint8_t *at;
        ssize_t n = nghttp2_session_mem_send(session, &p);
        if (n < 0) {
            h->out_len = 0;
            return n;
        }
        if (n == 0)
            break;
        at = out_room(h, (size_t)n);
        if (at == NULL) {
            h->out_len = 0;
            return NGHTTP2_ERR_NOMEM;
        }
        memcpy(at, p, (size_t)n);
        h->out_len += (size_t)n;
    }
    return (int64_t)h->out_len;
}

static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    mh2_body *b = source->ptr;
    size_t left = b->len - b->off;
    (void)session;
    (void)stream_id;
    (void)buf;
    (void)user_data;
    if (length > left)
        length = left;
    *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (length == left)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)length;
}

int mh2_send_data_c(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                    size_t length, nghttp2_data_source *source, void *user_data)
{
    mh2_hdrs *h = user_data;
    mh2_body *b = source->ptr;
    size_t pad = frame->data.padlen; /* we never ask for padding; framed as RFC 9113 6.1 anyway */
    size_t payload = b->owned ? length : 0;
    uint8_t *at = out_room(h, 9 + pad + payload);
    if (at == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    memcpy(at, framehd, 9);
    at += 9;
    if (pad > 0)
        *at++ = (uint8_t)(pad - 1);
    if (b->owned) {
        memcpy(at, b->data + b->off, length);
        at += length;
    } else { /* the caller puts body[off, off + length) here */
        mh2_seg *g;
        size_t cap = h->segs_cap ? h->segs_cap : 16;
        if (h->nsegs == h->segs_cap) {
            while (cap <= h->nsegs)
                cap *= 2;
            g = realloc(h->segs, cap * sizeof(*g));
            if (g == NULL)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            h->segs = g;
            h->segs_cap = cap;
        }
        if (h->out_len + 9 + (pad > 0) > UINT32_MAX || b->off > UINT32_MAX)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        g = &h->segs[h->nsegs++];
        g->at = (uint32_t)(h->out_len + 9 + (pad > 0));
        g->stream_id = b->stream_id;
        g->off = (uint32_t)b->off;
        g->len = (uint32_t)length;
    }
    if (pad > 1)
        memset(at, 0, pad - 1);
    h->out_len += 9 + pad + payload;
    b->off += length;
    if (b->off == b->len) /* all framed: free it now, not when the stream closes */
        body_free(h, session, frame->hd.stream_id, b);
    return 0;
}

int mh2_begin_headers_c(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    mh2_hdrs *h = user_data;
    (void)session;
    if (h->cap > MH2_KEEP_BUF) {
        /* a big head came and went: an idle connection does not keep its buffer */
        free(h->buf);
        h->buf = NULL;
        h->cap = 0;
    }
    h->len = 0;
    h->list_size = 0;
    h->too_big = 0;
    h->stream_id = frame->hd.stream_id;
    return 0;
}

static int reserve(mh2_hdrs *h, size_t extra)
{
    size_t need = h->len + extra;
    size_t cap;
    char *p;
    if (need <= h->cap)
        return 0;
    cap = h->cap ? h->cap : 1024;
    while (cap < need)
        cap *= 2;
    p = realloc(h->buf, cap);
    if (p == NULL)
        return -1;
    h->buf = p;
    h->cap = cap;
    return 0;
}

int mh2_header_c(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                 size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                 void *user_data)
{
    mh2_hdrs *h = user_data;
    (void)session;
    (void)flags;
    if (frame->hd.stream_id != h->stream_id || h->too_big)
        return h->too_big ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
    h->list_size += namelen + valuelen + 32;
    if (h->list_size > h->limit) {
        /* an HPACK bomb decodes to far more than it costs to send: stop collecting and reset
         * the stream; nghttp2 keeps decoding the block so the HPACK state stays in sync */
        h->too_big = 1;
        h->too_big_count++;
        h->len = 0;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (reserve(h, namelen + valuelen + 2) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    memcpy(h->buf + h->len, name, namelen);
    h->len += namelen;
    h->buf[h->len++] = '\0';
    memcpy(h->buf + h->len, value, valuelen);
    h->len += valuelen;
    h->buf[h->len++] = '\0';
    return 0;
}

static int sensitive(const nghttp2_nv *nv)
{
    if (nv->namelen == 13 && memcmp(nv->name, "authorization", 13) == 0)
        return 1;
    if (nv->namelen == 19 && memcmp(nv->name, "proxy-authorization", 19) == 0)
        return 1;
    if (nv->namelen == 10 && memcmp(nv->name, "set-cookie", 10) == 0)
        return 1;
    /* short cookies are guessable through the compression ratio (RFC 7541 section 7.1.3) */
    return nv->namelen == 6 && memcmp(nv->name, "cookie", 6) == 0 && nv->valuelen < 20;
}

/* Split block (a writable copy) into nv[0..n), names lower-cased in place (RFC 9113 section
 * 8.2.1: the caller may pass HTTP/1.1 spellings); returns 0, or -1 when the block does not hold
 * exactly n fields. */
static int decode(char *block, size_t len, size_t n, nghttp2_nv *nv)
{
    char *p = block;
    char *end = block + len;
    size_t i;
    for (i = 0; i < n; i++) {
        char *z = memchr(p, '\0', (size_t)(end - p));
        char *c;
        if (z == NULL)
            return -1;
        for (c = p; c < z; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c + ('a' - 'A'));
        nv[i].name = (uint8_t *)p;
        nv[i].namelen = (size_t)(z - p);
        p = z + 1;
        z = memchr(p, '\0', (size_t)(end - p));
        if (z == NULL)
            return -1;
        nv[i].value = (uint8_t *)p;
        nv[i].valuelen = (size_t)(z - p);
        p = z + 1;
        nv[i].flags = sensitive(&nv[i]) ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE;
    }
    return p == end ? 0 : -1;
}

/* nv and a copy of the block on the stack for ordinary heads, on the heap for big ones;
 * nghttp2 copies the fields, so both are freed when the call returns */
#define WITH_NV(block, len, n, call)                                                  \
    do {                                                                              \
        nghttp2_nv stack_nv[MH2_STACK_NV];                                            \
        char stack_copy[MH2_STACK_BLOCK];                                             \
        nghttp2_nv *nv = (n) <= MH2_STACK_NV ? stack_nv : malloc((n) * sizeof(*nv));  \
        char *copy = (len) <= sizeof(stack_copy) ? stack_copy : malloc((len) + 1);    \
        int64_t rv_;                                                                  \
        if (nv == NULL || copy == NULL)                                               \
            rv_ = NGHTTP2_ERR_NOMEM;                                                  \
        else if (memcpy(copy, (block), (len)), decode(copy, (len), (n), nv) != 0)     \
            rv_ = NGHTTP2_ERR_INVALID_ARGUMENT;                                       \
        else                                                                          \
            rv_ = (call);                                                             \
        if (nv != stack_nv)                                                           \
            free(nv);                                                                 \
        if (copy != stack_copy)                                                       \
            free(copy);                                                               \
        return rv_;                                                                   \
    } while (0)

int mh2_submit_response(nghttp2_session *session, int32_t stream_id, const char *block,
                        size_t len, size_t n, const nghttp2_data_provider *data_prd)
{
    WITH_NV(block, len, n, nghttp2_submit_response(session, stream_id, nv, n, data_prd));
}

int32_t mh2_submit_request(nghttp2_session *session, const char *block, size_t len, size_t n,
                           const nghttp2_data_provider *data_prd)
{
    WITH_NV(block, len, n, nghttp2_submit_request(session, NULL, nv, n, data_prd, NULL));
}

int32_t mh2_submit_headers(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                           const char *block, size_t len, size_t n)
{
    WITH_NV(block, len, n,
            nghttp2_submit_headers(session, flags, stream_id, NULL, nv, n, NULL));
}

int mh2_submit_trailer(nghttp2_session *session, int32_t stream_id, const char *block,
                       size_t len, size_t n)
{
    WITH_NV(block, len, n, nghttp2_submit_trailer(session, stream_id, nv, n));
}

static int submit_body(mh2_hdrs *h, nghttp2_session *session, int32_t stream_id,
                       const nghttp2_nv *nv, size_t n, mh2_body *b)
{
    nghttp2_data_provider prd;
    int rv;
    prd.source.ptr = b;
    prd.read_callback = read_body;
    rv = nghttp2_submit_response(session, stream_id, nv, n, &prd);
    if (rv != 0)
        return rv;
    /* cannot fail (submit_response found the stream); if it did, the body would only be
     * freed after its last frame or with the session */
    (void)nghttp2_session_set_stream_user_data(session, stream_id, b);
    b->prev = NULL;
    b->next = h->bodies;
    if (h->bodies != NULL)
        h->bodies->prev = b;
    h->bodies = b;
    return 0;
}

/* Split "name: value\r\n" lines (a relayed HTTP/1.1 head, see mu_http.c relay_whole: values
 * already trimmed) into nv[0..n), names lower-cased; the value is what follows the first ": ",
 * as Response.headers (worker/http/message.py) reads it. -1 when they are not exactly n such
 * lines. */
static int decode_lines(char *p, size_t len, size_t n, nghttp2_nv *nv)
{
    char *end = p + len;
    size_t i;
    for (i = 0; i < n; i++) {
        char *eol = memchr(p, '\n', (size_t)(end - p));
        char *colon, *c;
        if (eol == NULL || eol == p || eol[-1] != '\r')
            return -1;
        colon = memchr(p, ':', (size_t)(eol - p));
        if (colon == NULL || colon == p || colon + 1 >= eol || colon[1] != ' ')
            return -1;
        for (c = p; c < colon; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c + ('a' - 'A'));
        nv[i].name = (uint8_t *)p;
        nv[i].namelen = (size_t)(colon - p);
        nv[i].value = (uint8_t *)colon + 2;
        nv[i].valuelen = (size_t)(eol - 1 - (colon + 2));
        nv[i].flags = sensitive(&nv[i]) ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE;
        p = eol + 1;
    }
    return p == end ? 0 : -1;
}

static size_t count_lines(const char *p, size_t len)
{
    size_t n = 0;
    const char *end = p + len;
    while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        n++;
        p++;
    }
    return n;
}

static mh2_body *body_new(int32_t stream_id, const char *data, size_t datalen)
{
    mh2_body *b = malloc(sizeof(*b) + (data != NULL ? datalen : 0));
    if (b == NULL)
        return NULL;
    b->len = datalen;
    b->off = 0;
    b->stream_id = stream_id;
    b->owned = data != NULL;
    if (data != NULL)
        memcpy(b->data, data, datalen);
    return b;
}

int mh2_submit_response_h1(mh2_hdrs *h, nghttp2_session *session, int32_t stream_id,
                           const char *block, size_t len, size_t n, const char *lines,
                           size_t lines_len, const char *data, size_t datalen)
{
    nghttp2_nv stack_nv[MH2_STACK_NV];
    char stack_copy[MH2_STACK_BLOCK];
    size_t nl = lines_len ? count_lines(lines, lines_len) : 0;
    size_t total = n + nl;
    size_t scratch = len + lines_len;
    nghttp2_nv *nv = total <= MH2_STACK_NV ? stack_nv : malloc(total * sizeof(*nv));
    char *copy = scratch <= sizeof(stack_copy) ? stack_copy : malloc(scratch + 1);
    int rv;
    if (datalen > UINT32_MAX)
        rv = NGHTTP2_ERR_INVALID_ARGUMENT;
    else if (nv == NULL || copy == NULL)
        rv = NGHTTP2_ERR_NOMEM;
    else {
        memcpy(copy, block, len);
        if (lines_len)
            memcpy(copy + len, lines, lines_len);
        if (decode(copy, len, n, nv) != 0 || decode_lines(copy + len, lines_len, nl, nv + n) != 0)
            rv = NGHTTP2_ERR_INVALID_ARGUMENT;
        else if (datalen == 0)
            rv = nghttp2_submit_response(session, stream_id, nv, total, NULL);
        else {
            mh2_body *b = body_new(stream_id, data, datalen);
            rv = b == NULL ? NGHTTP2_ERR_NOMEM : submit_body(h, session, stream_id, nv, total, b);
            if (rv != 0)
                free(b);
        }
    }
    if (nv != stack_nv)
        free(nv);
    if (copy != stack_copy)
        free(copy);
    return rv;
}

int mh2_submit_response_body(mh2_hdrs *h, nghttp2_session *session, int32_t stream_id,
                             const char *block, size_t len, size_t n, const char *data,
                             size_t datalen)
{
    if (datalen == 0)
        return NGHTTP2_ERR_INVALID_ARGUMENT;
    return mh2_submit_response_h1(h, session, stream_id, block, len, n, NULL, 0, data, datalen);
}
