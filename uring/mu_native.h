/*
 * mu_native: the native HTTP/1.1 exchange (issue 13 §2), published as the module
 * monolake.uring._native by mu_native_install(). Part of the liburing extension: it writes
 * through the transports' C writers (mu_fast.c) and runs from the loop's completion walk,
 * which calls a Client or Upstream object as the connection's reader (no Python frame).
 *
 * Three CPython types (see mu_native.c for the state machine):
 *   Engine   one per server: the route table (mu_route), the per-route head options
 *            (mu_head), the idle upstream connections C holds, the counters
 *   Client   one per client connection, its reader: serves a keep-alive request it can, or
 *            hands the bytes to the Python protocol at the request boundary (a decline)
 *   Upstream one per pooled upstream connection C holds, its reader while C holds it
 * The decisions themselves are mu_nx (request head, response head), mu_route and mu_head.
 */
#ifndef MU_NATIVE_H
#define MU_NATIVE_H

/* cdef-begin */
int mu_native_install(void);
/* cdef-end */

#endif /* MU_NATIVE_H */
