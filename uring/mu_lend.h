/*
 * mu_lend: memory lent to Python for the length of one call, as a read-only memoryview (the
 * ring's provided receive buffers in mu_fast.c, a parser's input in mu_http.c). Its own unit
 * because both extensions use it and neither depends on the other: the HTTP codec builds
 * without liburing (see uring/_build.py).
 */
#ifndef MU_LEND_H
#define MU_LEND_H

#include <Python.h>

/* Visible to the other units of one extension, not exported from its shared object (each
 * extension links its own copy). */
#define MU_INTERNAL_API __attribute__((visibility("hidden")))

/* Take back a view lent for a call: see mu_lend.c. Steals the reference to `view`. */
MU_INTERNAL_API int mu_lend_end(PyObject *view);

#endif /* MU_LEND_H */
