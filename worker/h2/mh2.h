/* C glue for monolake.worker.h2: header blocks crossed between nghttp2 and Python in one
 * piece instead of one Python callback (or one cffi call) per header field.
 *
 * A header block travels as "name\0value\0name\0value\0..." - HTTP/2 field names and values
 * cannot contain NUL (RFC 9113 section 8.2.1, enforced by nghttp2 on receive), so the
 * separator is unambiguous and Python splits it with one bytes.split.
 */
#ifndef MH2_H
#define MH2_H

#include <stddef.h>
#include <stdint.h>
#include <nghttp2/nghttp2.h>

/* Per-session receive state; nghttp2's user_data points at it. */
typedef struct mh2_hdrs {
    char *buf;              /* the block being collected, "name\0value\0..." */
    size_t len;
    size_t cap;
    size_t list_size;       /* RFC 9113 section 6.5.2 size: name + value + 32 per field */
    size_t limit;           /* max_header_list_size we advertised */
    int32_t stream_id;      /* the stream whose block is being collected */
    int too_big;            /* this block went over the limit: no longer collected */
    uint64_t too_big_count; /* blocks over the limit so far (a peer-error signal) */
} mh2_hdrs;

mh2_hdrs *mh2_hdrs_new(size_t limit);
void mh2_hdrs_free(mh2_hdrs *h);

/* nghttp2 callbacks (registered from Python) */
int mh2_begin_headers_c(nghttp2_session *session, const nghttp2_frame *frame, void *user_data);
int mh2_header_c(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                 size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                 void *user_data);

/* Submit calls taking an encoded block of n fields (names already lower-case). Sensitive
 * fields (authorization, proxy-authorization, set-cookie, short cookies) are never indexed. */
int mh2_submit_response(nghttp2_session *session, int32_t stream_id, const char *block,
                        size_t len, size_t n, const nghttp2_data_provider *data_prd);
int32_t mh2_submit_request(nghttp2_session *session, const char *block, size_t len, size_t n,
                           const nghttp2_data_provider *data_prd);
int32_t mh2_submit_headers(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                           const char *block, size_t len, size_t n);
int mh2_submit_trailer(nghttp2_session *session, int32_t stream_id, const char *block,
                       size_t len, size_t n);

#endif
