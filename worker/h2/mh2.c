/* C glue for monolake.worker.h2 (see mh2.h). Compiled as its own translation unit; warnings
 * are errors here whatever flags setuptools passes (the generated cffi module is separate). */
#pragma GCC diagnostic error "-Wall"
#pragma GCC diagnostic error "-Wextra"

#include "mh2.h"

#include <stdlib.h>
#include <string.h>

#define MH2_STACK_NV 64
#define MH2_KEEP_BUF 16384
#define MH2_KEEP_OUT 65536

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
    free(h->buf);
    free(h->log);
    free(h->out);
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

int mh2_on_stream_close_c(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                          void *user_data)
{
    (void)session;
    return record_copy(user_data, MH2_EV_CLOSE, 0, stream_id, error_code, NULL, 0);
}

int mh2_on_frame_send_c(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)session;
    if (frame->hd.type != NGHTTP2_GOAWAY)
        return 0;
    return record_goaway(user_data, MH2_EV_GOAWAY_SENT, frame);
}

int64_t mh2_send(mh2_hdrs *h, nghttp2_session *session, size_t limit)
{
    size_t total = 0;
    if (h->out_cap > MH2_KEEP_OUT) { /* a burst came and went: an idle session keeps less */
        free(h->out);
        h->out = NULL;
        h->out_cap = 0;
    }
    while (total < limit) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(session, &p);
        if (n < 0)
            return n;
        if (n == 0)
            break;
        if (grow(&h->out, &h->out_cap, total + (size_t)n) != 0)
            return NGHTTP2_ERR_NOMEM;
        memcpy(h->out + total, p, (size_t)n);
        total += (size_t)n;
    }
    return (int64_t)total;
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

/* Split block into nv[0..n); returns 0, or -1 when the block does not hold n fields. */
static int decode(const char *block, size_t len, size_t n, nghttp2_nv *nv)
{
    const char *p = block;
    const char *end = block + len;
    size_t i;
    for (i = 0; i < n; i++) {
        const char *z = memchr(p, '\0', (size_t)(end - p));
        if (z == NULL)
            return -1;
        nv[i].name = (uint8_t *)p;
        nv[i].namelen = (size_t)(z - p);
        p = z + 1;
        if (p > end)
            return -1;
        z = memchr(p, '\0', (size_t)(end - p));
        if (z == NULL)
            return -1;
        nv[i].value = (uint8_t *)p;
        nv[i].valuelen = (size_t)(z - p);
        p = z + 1;
        nv[i].flags = sensitive(&nv[i]) ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE;
    }
    return 0;
}

/* nv on the stack for ordinary heads, on the heap for big ones; nghttp2 copies the fields */
#define WITH_NV(block, len, n, call)                                                  \
    do {                                                                              \
        nghttp2_nv stack_nv[MH2_STACK_NV];                                            \
        nghttp2_nv *nv = (n) <= MH2_STACK_NV ? stack_nv : malloc((n) * sizeof(*nv));  \
        int64_t rv_;                                                                  \
        if (nv == NULL)                                                               \
            return NGHTTP2_ERR_NOMEM;                                                 \
        if (decode((block), (len), (n), nv) != 0)                                     \
            rv_ = NGHTTP2_ERR_INVALID_ARGUMENT;                                       \
        else                                                                          \
            rv_ = (call);                                                             \
        if (nv != stack_nv)                                                           \
            free(nv);                                                                 \
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
