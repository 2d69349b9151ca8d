/*
 * mu_thrift_frame: one framed Thrift message at the front of a buffer (issue 13 §2), the
 * decision the native Thrift relay (mu_thrift.c) makes before it forwards a request or relays
 * a reply, and the seqid rewrite it then writes. Plain C, no CPython: its Python twin is
 * worker/thrift/native_scan.py (scan_frame, encode_frame), compared by
 * tests/thrift/test_thrift_native_twins.py and the fuzz target thrift (tests/fuzz).
 *
 * What is accepted: a 4-byte big-endian length, then a strict binary (0x8001) or compact
 * (0x82) message head, the same checks worker/thrift/message.py parse_head makes. Every
 * rejection is a reason code: the relay hands the bytes to the Python engine, which takes
 * its own decision on them (an error, or a message C does not take: old binary, a name that
 * is not ASCII and so needs a UTF-8 check).
 */
#ifndef MU_THRIFT_FRAME_H
#define MU_THRIFT_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
#define MU_TH_INCOMPLETE -1 /* the frame is not all here */
#define MU_TH_OK 0
#define MU_TH_OVERSIZE 1 /* its length is over max_frame (the Python engine's FrameError) */
#define MU_TH_HEAD 2     /* no valid message head (the Python engine's FrameError) */
#define MU_TH_LOOSE 3    /* old non-strict binary: the Python engine's */
#define MU_TH_NAME 4     /* a name byte >= 0x80: UTF-8 is checked by the Python engine */

#define MU_TH_BINARY 0  /* worker/thrift/message.py BINARY */
#define MU_TH_COMPACT 2 /* worker/thrift/message.py COMPACT */
#define MU_TH_MAX_NAME 65536

typedef struct {
    uint32_t total;     /* bytes of the frame: 4 + its length */
    int proto;          /* MU_TH_BINARY or MU_TH_COMPACT */
    int mtype;          /* CALL 1, REPLY 2, EXCEPTION 3, ONEWAY 4 (any byte value) */
    int32_t seqid;
    uint32_t seqid_at;  /* offset of the seqid in the message (after the 4 length bytes) */
    uint32_t seqid_len; /* 4, or 1-5 for a compact varint */
    uint32_t name_at;   /* offset of the method name in the message */
    uint32_t name_len;
} mu_thrift_msg;

/* The frame at buf[0:len]: MU_TH_OK (m filled), MU_TH_INCOMPLETE or a reason. names: check the
 * method name (requests; a binary reply's name is not read, as the Python engine's). */
int mu_thrift_frame(const char *buf, size_t len, uint32_t max_frame, int names, mu_thrift_msg *m);
/* The size of that frame with seqid in place of its own. */
size_t mu_thrift_encoded_len(const mu_thrift_msg *m, int32_t seqid);
/* Write it to out (mu_thrift_encoded_len bytes): framing.py Frame.encode for FRAMED. */
void mu_thrift_encode(const char *buf, const mu_thrift_msg *m, int32_t seqid, char *out);
const char *mu_thrift_reason(int rc);
/* cdef-end */

#endif /* MU_THRIFT_FRAME_H */
