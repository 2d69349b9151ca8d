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

/* cdef-begin */
/* What the C callbacks record for Python, in wire order: one mh2_rec (16 bytes, native byte
 * order, no padding) followed by its len payload bytes, in one growing log that Python reads once
 * per receive_data / data_to_send instead of taking one Python callback per frame. */
enum mh2_ev_kind {
    MH2_EV_HEADERS = 1,     /* a complete header block: cat, flags; payload "name\0value\0..." */
    MH2_EV_DATA = 2,        /* a DATA chunk received; payload the bytes */
    MH2_EV_DATA_END = 3,    /* a DATA frame with END_STREAM received (after its chunks) */
    MH2_EV_RST = 4,         /* RST_STREAM received: aux = error code */
    MH2_EV_SETTINGS = 5,    /* SETTINGS (not ACK) received: payload n x (uint32 id, uint32 value) */
    MH2_EV_PING_ACK = 6,    /* PING ACK received: payload the 8 opaque bytes */
    MH2_EV_GOAWAY = 7,      /* GOAWAY received: aux = error code, payload int32 last id + debug */
    MH2_EV_CLOSE = 8,       /* a stream closed: aux = error code */
    MH2_EV_GOAWAY_SENT = 9  /* we sent GOAWAY: aux = error code, payload int32 last id + debug */
};

typedef struct mh2_rec {
    uint8_t kind;
    uint8_t flags;          /* the frame's flags */
    uint8_t cat;            /* HEADERS: nghttp2_headers_category */
    uint8_t pad;
    int32_t stream_id;
    uint32_t aux;
    uint32_t len;           /* payload bytes after the record */
} mh2_rec;

/* A response body the glue frames from submit until its last DATA frame is out (or the stream
 * closes first); listed on its session so that freeing the session frees it too. A small body
 * is copied in (owned); a large one stays in the caller's buffer (by reference): its DATA
 * payloads become mh2_seg entries that the caller splices into the output, one copy in all. */
typedef struct mh2_body {
    /* private { */
    struct mh2_body *prev;
    struct mh2_body *next;
    size_t len;
    size_t off;             /* bytes already framed */
    int32_t stream_id;
    int owned;              /* data[] holds the body; else the caller keeps it */
    uint8_t data[];
    /* } private */
} mh2_body;

/* A by-reference payload in mh2_send's output: body bytes [off, off + len) of stream_id's body
 * belong at offset at of h->out (before the bytes that follow there). */
typedef struct mh2_seg {
    uint32_t at;
    int32_t stream_id;
    uint32_t off;
    uint32_t len;
} mh2_seg;

/* Per-session state; nghttp2's user_data points at it. */
typedef struct mh2_hdrs {
    char *buf;              /* the block being collected, "name\0value\0..." */
    size_t len;
    size_t cap;
    size_t list_size;       /* RFC 9113 section 6.5.2 size: name + value + 32 per field */
    size_t limit;           /* max_header_list_size we advertised */
    int32_t stream_id;      /* the stream whose block is being collected */
    int too_big;            /* this block went over the limit: no longer collected */
    uint64_t too_big_count; /* blocks over the limit so far (a peer-error signal) */
    uint8_t *log;           /* mh2_rec records + payloads since the last mh2_log_reset */
    size_t log_len;
    size_t log_cap;
    uint8_t *out;           /* what mh2_send serialised last */
    size_t out_len;
    size_t out_cap;
    mh2_body *bodies;       /* bodies not yet sent completely */
    mh2_seg *segs;          /* by-reference payloads of the last mh2_send, in output order */
    size_t nsegs;
    size_t segs_cap;
} mh2_hdrs;

mh2_hdrs *mh2_hdrs_new(size_t limit);
void mh2_hdrs_free(mh2_hdrs *h);

/* nghttp2 callbacks (registered from Python) */
int mh2_begin_headers_c(nghttp2_session *session, const nghttp2_frame *frame, void *user_data);
int mh2_header_c(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                 size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                 void *user_data);
int mh2_on_frame_recv_c(nghttp2_session *session, const nghttp2_frame *frame, void *user_data);
int mh2_on_data_chunk_recv_c(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                             const uint8_t *data, size_t len, void *user_data);
int mh2_on_stream_close_c(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                          void *user_data);
int mh2_on_frame_send_c(nghttp2_session *session, const nghttp2_frame *frame, void *user_data);

/* nghttp2's send_data_callback for mh2_submit_response_body's bodies (NGHTTP2_DATA_FLAG_NO_COPY):
 * the frame head and the payload go straight into h->out, with no copy into nghttp2's buffer. */
int mh2_send_data_c(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                    size_t length, nghttp2_data_source *source, void *user_data);

/* The log has been read: empty it (and drop a big buffer an idle session need not keep). */
void mh2_log_reset(mh2_hdrs *h);

/* nghttp2_session_mem_send until nothing is due or about limit bytes are out, into h->out in
 * one piece: returns its length, or a negative nghttp2 error (h->out then holds nothing). */
int64_t mh2_send(mh2_hdrs *h, nghttp2_session *session, size_t limit);

/* Submit calls taking an encoded block of n fields (names already lower-case). Sensitive
 * fields (authorization, proxy-authorization, set-cookie, short cookies) are never indexed. */
int mh2_submit_response(nghttp2_session *session, int32_t stream_id, const char *block,
                        size_t len, size_t n, const nghttp2_data_provider *data_prd);
int32_t mh2_submit_request(nghttp2_session *session, const char *block, size_t len, size_t n,
                           const nghttp2_data_provider *data_prd);
int32_t mh2_submit_headers(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                           const char *block, size_t len, size_t n);
/* A whole response in one call: the head and a datalen-byte body (> 0), sent under flow
 * control with END_STREAM on its last DATA frame. data is copied into the glue; NULL: the
 * caller keeps the body unchanged until the stream closes and splices h->segs into the output. */
int mh2_submit_response_body(mh2_hdrs *h, nghttp2_session *session, int32_t stream_id,
                             const char *block, size_t len, size_t n, const char *data,
                             size_t datalen);
/* The same with header fields in two parts: the NUL block (":status" first), then lines, a
 * relayed HTTP/1.1 head ("name: value\r\n"..., hop-by-hop fields already gone: mu_http.c
 * relay_whole); datalen 0: no body (END_STREAM on the HEADERS). */
int mh2_submit_response_h1(mh2_hdrs *h, nghttp2_session *session, int32_t stream_id,
                           const char *block, size_t len, size_t n, const char *lines,
                           size_t lines_len, const char *data, size_t datalen);
int mh2_submit_trailer(nghttp2_session *session, int32_t stream_id, const char *block,
                       size_t len, size_t n);

/* cdef-end */

#endif
