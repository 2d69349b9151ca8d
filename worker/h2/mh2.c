/* C glue for monolake.worker.h2 (see mh2.h). Compiled as its own translation unit; warnings
 * are errors here whatever flags setuptools passes (the generated cffi module is separate). */
#pragma GCC diagnostic error "-Wall"
#pragma GCC diagnostic error "-Wextra"

#include "mh2.h"

#include <stdlib.h>
#include <string.h>

#define MH2_STACK_NV 64
#define MH2_KEEP_BUF 16384

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
    free(h);
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
