/*
 * mu_http: the native HTTP/1.1 request and response parsers, published as the module
 * monolake.uring._http (see mu_http.c for the callbacks and the strictness rules). Needs only
 * CPython, not liburing: it is its own extension, monolake.uring._codec, so the epoll runtime
 * and a machine without liburing headers have it too (see uring/_build.py).
 */
#ifndef MU_HTTP_H
#define MU_HTTP_H

/* cdef-begin */
int mu_http_install(void);
/* cdef-end */

#endif /* MU_HTTP_H */
