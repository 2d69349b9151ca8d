/*
 * mu_fast: CPython C-API glue for the io_uring loop's hot path, published as the module
 * monolake.uring._fast (see mu_fast.c). Part of the liburing extension: it drives mu_ring.
 */
#ifndef MU_FAST_H
#define MU_FAST_H

/* cdef-begin */
int mu_fast_install(void);
/* cdef-end */

#endif /* MU_FAST_H */
