/*
 * mu_thrift: the native Thrift relay (issue 13 §2), published as the module
 * monolake.uring._thrift by mu_thrift_install(). It runs on the machinery of the native HTTP
 * exchange (mu_native.h): a Client object is the client connection's reader, called from the
 * io_uring completion walk (mu_fast.c) with no Python frame; an Upstream object is the reader
 * of a pooled upstream connection while C holds it (the Python pool parks idle connections
 * in the Engine's per-endpoint lists and takes them back, worker/thrift/native.py); the
 * counters live in the Engine and are merged into the server's stats().
 *
 * Three CPython types (the state machine is in mu_thrift.c):
 *   Engine   one per thrift server: the method route table, the idle lists, the counters
 *   Client   one per client connection: forwards the framed CALL/ONEWAY messages it can, hands
 *            the rest of the read to the Python engine at a message boundary (a decline)
 *   Upstream one per pooled upstream connection C holds: relays the reply to the call it
 *            carries, or gives the connection and its call to the Python engine (late)
 * The per-message decision is mu_thrift_frame.
 */
#ifndef MU_THRIFT_H
#define MU_THRIFT_H

/* cdef-begin */
int mu_thrift_install(void);
/* cdef-end */

#endif /* MU_THRIFT_H */
