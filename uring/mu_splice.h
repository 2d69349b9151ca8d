/*
 * mu_splice: a body relayed socket -> pipe -> socket by IORING_OP_SPLICE, bytes never copied
 * into user space (issue 13 §2). Python decides (which fds, how many bytes); C moves the bytes
 * and tells Python when it is done or why it stopped. See mu_splice.c for the state machine.
 */
#ifndef MU_SPLICE_H
#define MU_SPLICE_H

#include <stdint.h>

#include "mu_ring.h"

/* cdef-begin */
typedef struct mu_splice mu_splice;

/* the Python kinds (low 8 bits of a user_data) of a splice job's completions */
#define MU_SPLICE_K_GATE 20 /* a NOP or a timeout: look whether the job may start */
#define MU_SPLICE_K_IN 21   /* fd_in -> pipe */
#define MU_SPLICE_K_OUT 22  /* pipe -> fd_out */
#define MU_SPLICE_K_POLL 23 /* the readiness poll linked before each splice */

/* mu_splice_event results besides -errno (-ENODATA: fd_in ended before nbytes) */
#define MU_SPLICE_RUNNING 1
#define MU_SPLICE_DONE 0
#define MU_SPLICE_READY 2 /* the source has let go: deliver what it held, then mu_splice_go */

mu_splice *mu_splice_new(mu_ring *r, int fd_in, int fd_out, uint64_t ud_base, mu_conn *gate_in,
                         mu_conn *gate_out, int pipe_size, int *err);
int mu_splice_go(mu_splice *s, int64_t nbytes);
int mu_splice_event(mu_splice *s, unsigned kind, int res);
int64_t mu_splice_moved(mu_splice *s);
int64_t mu_splice_read(mu_splice *s);
int mu_splice_inflight(mu_splice *s);
int mu_splice_pipe_size(mu_splice *s);
int mu_splice_cancel(mu_splice *s);
void mu_splice_free(mu_splice *s);
int mu_splice_pool_count(void);
void mu_splice_pool_clear(void);
/* cdef-end */

#endif /* MU_SPLICE_H */
