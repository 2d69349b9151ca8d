/*
 * mu_ring: the liburing shim (see mu_ring.c for the design). This header is the one statement
 * of its API: mu_ring.c and mu_fast.c include it, and uring/_build.py hands the part between
 * the cdef markers to cffi (see cdef_from_header there for the few rewriting rules), so the
 * Python-facing declarations cannot drift from the C ones.
 *
 * Needs _GNU_SOURCE before the first system header (POLLRDHUP); Python.h defines it.
 */
#ifndef MU_RING_H
#define MU_RING_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define MU_IOV 16 /* iovecs per sendmsg of a conn's queue */

/* cdef-begin */
typedef struct mu_ring mu_ring;

/* A stream socket driven by the ring. Python reads the first three fields; the rest is the
 * shim's own. */
typedef struct mu_conn {
    int64_t pending;      /* bytes accepted by mu_conn_send and not yet sent */
    int64_t notify_below; /* >= 0: report MU_EV_DRAIN once pending <= this */
    int64_t error;        /* first send error (positive errno), 0 if none */
    /* private { */
    struct mu_ring *ring;
    int fd;
    uint64_t ud_base; /* Python's token << 8 */
    uint32_t slot;
    uint32_t gen;
    struct mu_sbuf *head, *tail;
    struct mu_sendvec *vec; /* the iovecs of a sendmsg in flight; NULL while idle (issue 16) */
    int inflight; /* SQEs referencing this conn, completion not yet seen */
    unsigned send_inflight : 1, recv_armed : 1, recv_want : 1, recv_cancelling : 1,
        shut_req : 1, shut_done : 1, closing : 1, aborting : 1, send_cancelling : 1,
        quiesce_posted : 1;
    /* } private */
} mu_conn;

/* kinds of the events reported to Python for a conn (low 8 bits of the Python user_data) */
#define MU_EV_RECV 1
#define MU_EV_SENDERR 2
#define MU_EV_DRAIN 3
#define MU_EV_QUIESCED 4

/* poll masks, as the kernel spells them */
/* cdef: #define POLLIN ... */
/* cdef: #define POLLOUT ... */
/* cdef: #define POLLERR ... */
/* cdef: #define POLLHUP ... */
/* cdef: #define POLLRDHUP ... */

/* mu_ring_set_option keys */
#define MU_OPT_DIRECT_MIN 1
#define MU_OPT_REG_RING_FD 2

unsigned mu_flags_from_mask(unsigned mask);
int mu_try_setup(unsigned entries, unsigned flags);
mu_ring *mu_ring_new(unsigned entries, unsigned flags, unsigned nbufs, unsigned buf_size,
                     int buf_inc, int *err);
int mu_ring_buf_inc(mu_ring *r);
int mu_pbuf_inc_supported(void);
int64_t mu_ring_free(mu_ring *r, int timeout_ms);
int mu_ring_set_option(mu_ring *r, int opt, int64_t value);
int mu_ring_eventfd(mu_ring *r);
int mu_ring_fd(mu_ring *r);
unsigned mu_ring_setup_flags(mu_ring *r);
char *mu_arena(mu_ring *r);
size_t mu_arena_size(mu_ring *r);
int64_t mu_ring_inflight(mu_ring *r);
int mu_wake(mu_ring *r);

int mu_run(mu_ring *r, int wait_nr, int64_t timeout_ns, int64_t *out, int max);

int mu_nop(mu_ring *r, uint64_t ud);
int mu_poll_add(mu_ring *r, int fd, unsigned mask, uint64_t ud);
int mu_accept(mu_ring *r, int fd, uint64_t ud);
int mu_poll_multishot(mu_ring *r, int fd, unsigned mask, uint64_t ud);
int mu_accept_many(int fd, int *out, int max, int *err);
int mu_cancel(mu_ring *r, uint64_t ud);
int mu_cancel_fd(mu_ring *r, int fd);
int mu_timeout(mu_ring *r, int64_t ns, uint64_t ud);
int mu_close_fd(mu_ring *r, int fd, uint64_t ud);
int mu_shutdown_fd(mu_ring *r, int fd, int how, uint64_t ud);

mu_conn *mu_conn_new(mu_ring *r, int fd, uint64_t ud_base);
int mu_conn_recv_start(mu_conn *c);
int mu_conn_recv_stop(mu_conn *c);
int64_t mu_conn_send(mu_conn *c, const char *data, size_t len);
int64_t mu_conn_send2(mu_conn *c, const char *a, size_t alen, const char *b, size_t blen);
int mu_conn_shutdown(mu_conn *c);
int mu_conn_close(mu_conn *c, int abort);
/* cdef-end */

/* For the other C units of the extension (mu_splice.c): an SQE counted as in flight, or NULL
 * when the ring is full (the SQ is flushed once first). Not for Python. */
struct io_uring_sqe;
struct io_uring_sqe *mu_ring_get_sqe(mu_ring *r) __attribute__((visibility("hidden")));

#endif /* MU_RING_H */
