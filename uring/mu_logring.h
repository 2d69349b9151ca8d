/*
 * mu_logring: a per-worker ring of access-log records (issue 13 §2). The native exchange
 * appends one record per response in C; Python drains the ring in batches, off the request
 * path, and emits each record through structlog (or the access-log file) with the same fields
 * and values as the per-request line of worker/http/server.py log_access
 * (worker/http/native_logring.py).
 *
 * Layout: `nslots` fixed-size slots of MU_LOG_SLOT bytes. A record is a mu_log_record header
 * followed by its text fields, back to back, in field order (MU_LOG_METHOD ..
 * MU_LOG_REQUEST_ID); it takes as many whole, contiguous slots as its size needs
 * (mu_log_slots). A record that would run past the end of the ring is preceded by a pad record
 * (server == MU_LOG_PAD) that fills the slots up to the end, and starts at slot 0. Nothing is
 * truncated: the values drained are the values appended.
 *
 * Overflow: an append that does not fit in the free slots (or a record larger than the whole
 * ring) is dropped and counted in `dropped`; it never blocks and never overwrites a record not
 * yet drained. Python reports the count (stats, and a warning when it grows).
 *
 * Text fields are bytes with a per-field encoding bit: latin-1 (what the request line's bytes
 * are decoded with: C appends them raw) or UTF-8 (a Python value that latin-1 cannot encode,
 * e.g. an upstream label), and a presence bit (absent = Python's None).
 *
 * Single-threaded: appends and drains run on the worker's loop thread; no locks, no atomics.
 */
#ifndef MU_LOGRING_H
#define MU_LOGRING_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
#define MU_LOG_SLOT 256
#define MU_LOG_MAX_SLOTS 1048576
#define MU_LOG_PAD 0xffffffff

/* the text fields, in record order */
#define MU_LOG_METHOD 0
#define MU_LOG_PATH 1
#define MU_LOG_QUERY 2
#define MU_LOG_VERSION 3
#define MU_LOG_CLIENT 4
#define MU_LOG_UPSTREAM 5
#define MU_LOG_REQUEST_ID 6
#define MU_LOG_FIELDS 7

/* one text field as an appender passes it */
typedef struct {
    const char *ptr; /* NULL: absent (None) */
    uint32_t len;
    uint32_t utf8;   /* 0: latin-1 bytes, 1: UTF-8 */
} mu_log_str;

/* a record's header in the ring (and in the buffer mu_log_take fills): 80 bytes, the text
 * fields follow it; all native-endian */
typedef struct {
    uint32_t nslots;   /* slots this record takes, >= 1 */
    uint32_t server;   /* the server's id (Python maps it to its name and logger); MU_LOG_PAD */
    uint32_t status;
    uint32_t present;  /* bit i: field i present */
    uint32_t utf8;     /* bit i: field i is UTF-8 (else latin-1) */
    uint32_t size;     /* header + text bytes */
    uint64_t bytes_in;
    uint64_t bytes_out;
    double duration;   /* seconds; the line shows round(duration * 1000, 3) as duration_ms */
    uint32_t len[MU_LOG_FIELDS];
    uint32_t reserved;
} mu_log_record;

typedef struct {
    uint32_t nslots;     /* capacity in slots */
    uint32_t head;       /* next slot to write */
    uint32_t tail;       /* next slot to read */
    uint32_t used;       /* slots in use (pads included) */
    uint64_t appended;   /* records appended */
    uint64_t dropped;    /* records dropped: no room (overflow) */
    /* private { */
    unsigned char *slots;
    /* } private */
} mu_logring;

/* A ring of `nslots` slots (1 .. MU_LOG_MAX_SLOTS), or NULL. */
mu_logring *mu_log_new(uint32_t nslots);
void mu_log_free(mu_logring *r);

/* Slots a record with `text` bytes of fields takes. */
uint32_t mu_log_slots(size_t text);

/* Append one record: 0, or -1 when dropped (counted in r->dropped). `f` holds MU_LOG_FIELDS
 * fields. */
int mu_log_append(mu_logring *r, uint32_t server, uint32_t status, uint64_t bytes_in,
                  uint64_t bytes_out, double duration, const mu_log_str *f);

/* Append one record already laid out (a mu_log_record header, its `nslots` ignored, then the
 * text fields): what Python appends with one call (worker/http/native_logring.py pack). 0,
 * -1 when dropped (counted), -2 when `rec` is not a well-formed record (size, lengths, bits;
 * not counted). */
int mu_log_append_raw(mu_logring *r, const void *rec, size_t size);

/* Move whole records, oldest first, into out (cap bytes), each at an 8-byte aligned offset
 * (record i+1 starts at the next multiple of 8 after record i's `size`), pads skipped. Returns
 * the bytes used; *nrecords (if not NULL) gets the count. Stops at the first record that does
 * not fit (a cap of at least MU_LOG_SLOT * nslots takes everything). */
size_t mu_log_take(mu_logring *r, void *out, size_t cap, uint32_t *nrecords);
/* cdef-end */

#endif /* MU_LOGRING_H */
