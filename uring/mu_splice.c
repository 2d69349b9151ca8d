/*
 * mu_splice: relay nbytes from fd_in to fd_out through a pipe with IORING_OP_SPLICE.
 *
 * Why a pipe: splice(2) needs one on one side; socket -> pipe -> socket moves page references,
 * the payload never enters user space. Why sequential (one splice in flight per job): the pipe
 * is the body window; a slow receiver leaves the pipe full, so nothing more is read from fd_in
 * (backpressure by construction, memory bounded by the pipe size per job).
 *
 * The kernel always runs a splice in an io-wq worker; on a non-blocking socket it then fails
 * with -EAGAIN instead of waiting, so each splice is linked behind a one-shot poll for the
 * readiness it needs (keyed with the job's token too, so a cancel can find it: a cancel does
 * not reach a request still waiting in a link chain).
 *
 * States: GATE_IN (wait until the source's multishot recv has disarmed: no completion can
 * still carry body bytes), READY (Python delivers what its transport held, then mu_splice_go),
 * GATE_OUT (wait until the sink's user-space queue is sent: bytes already buffered go first),
 * then IN (fd_in -> pipe) and OUT (pipe -> fd_out) in turn, END.
 * Python routes every completion of the job's token to mu_splice_event, which submits the next
 * step and returns RUNNING, DONE or -errno. The job holds no memory the kernel reads, so only
 * the pipe fds need care: mu_splice_free keeps an empty pipe for the next job (per-process
 * pool) and closes one that still holds bytes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* F_SETPIPE_SZ, splice flags */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>
#include <liburing.h>

#include "mu_splice.h"

#define POOL_MAX 16
#define GATE_RETRY_NS 200000 /* 0.2 ms between looks at a conn that has not let go yet */

enum { ST_GATE_IN, ST_READY, ST_GATE_OUT, ST_IN, ST_OUT, ST_END };

struct mu_splice {
    mu_ring *ring;
    mu_conn *gate_in, *gate_out;
    int fd_in, fd_out;
    int pipe_r, pipe_w, pipe_cap;
    int state;
    int inflight;      /* completions of this job still due */
    int result;        /* once ST_END: DONE or -errno */
    int64_t left;      /* bytes still to read from fd_in */
    int64_t inpipe;    /* bytes in the pipe */
    int64_t moved;     /* bytes written to fd_out */
    int64_t total_in;  /* bytes read from fd_in */
    uint64_t ud_base;
};

static struct {
    int r, w, cap;
} pool[POOL_MAX];
static int pool_n;

static int pipe_get(int want, int *r, int *w, int *cap)
{
    int fds[2];
    if (pool_n > 0) {
        pool_n--;
        fds[0] = pool[pool_n].r;
        fds[1] = pool[pool_n].w;
        *cap = pool[pool_n].cap;
    } else {
        if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
            return -errno;
        *cap = 0;
    }
    if (*cap != want) {
        int got = fcntl(fds[1], F_SETPIPE_SZ, want);
        if (got < 0) /* over /proc/sys/fs/pipe-max-size, or the user's pipe quota: keep it */
            got = fcntl(fds[1], F_GETPIPE_SZ);
        if (got <= 0) {
            int e = errno ? errno : EINVAL;
            close(fds[0]);
            close(fds[1]);
            return -e;
        }
        *cap = got;
    }
    *r = fds[0];
    *w = fds[1];
    return 0;
}

static void pipe_put(int r, int w, int cap, int clean)
{
    if (clean && pool_n < POOL_MAX) {
        pool[pool_n].r = r;
        pool[pool_n].w = w;
        pool[pool_n].cap = cap;
        pool_n++;
        return;
    }
    close(r);
    close(w);
}

int mu_splice_pool_count(void) { return pool_n; }

void mu_splice_pool_clear(void)
{
    while (pool_n > 0) {
        pool_n--;
        close(pool[pool_n].r);
        close(pool[pool_n].w);
    }
}

/* A one-shot poll on fd, linked to the splice that follows it: RUNNING, or -EBUSY. */
static int submit_step(mu_splice *s, int fd_poll, unsigned mask, int in, int out, int64_t len,
                       unsigned kind)
{
    struct io_uring_sqe *poll = mu_ring_get_sqe(s->ring);
    if (poll == NULL)
        return -EBUSY;
    struct io_uring_sqe *sp = mu_ring_get_sqe(s->ring);
    if (sp == NULL) {
        /* keep the taken SQE a harmless NOP of ours so its completion is accounted */
        io_uring_prep_nop(poll);
        io_uring_sqe_set_data64(poll, s->ud_base | MU_SPLICE_K_POLL);
        s->inflight++;
        return -EBUSY;
    }
    io_uring_prep_poll_add(poll, fd_poll, mask);
    io_uring_sqe_set_data64(poll, s->ud_base | MU_SPLICE_K_POLL);
    poll->flags |= IOSQE_IO_LINK;
    unsigned n = len > (1 << 30) ? (1u << 30) : (unsigned)len;
    io_uring_prep_splice(sp, in, -1, out, -1, n, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    io_uring_sqe_set_data64(sp, s->ud_base | kind);
    s->inflight += 2;
    return MU_SPLICE_RUNNING;
}

static int step_in(mu_splice *s)
{
    int64_t n = s->left < s->pipe_cap ? s->left : s->pipe_cap;
    s->state = ST_IN;
    return submit_step(s, s->fd_in, POLLIN | POLLRDHUP, s->fd_in, s->pipe_w, n, MU_SPLICE_K_IN);
}

static int step_out(mu_splice *s)
{
    s->state = ST_OUT;
    return submit_step(s, s->fd_out, POLLOUT, s->pipe_r, s->fd_out, s->inpipe, MU_SPLICE_K_OUT);
}

/* A look at the conns. GATE_IN: has the source's recv let go (then READY: Python delivers what
 * the transport held, then calls mu_splice_go)? GATE_OUT: is the sink's queue sent? */
static int gate(mu_splice *s)
{
    int ready;
    if (s->state == ST_GATE_IN) {
        ready = s->gate_in == NULL || !s->gate_in->recv_armed;
        if (ready) {
            s->state = ST_READY;
            return MU_SPLICE_READY;
        }
    } else {
        mu_conn *b = s->gate_out;
        ready = b == NULL || (b->pending == 0 && !b->send_inflight);
        if (ready)
            return s->left == 0 ? MU_SPLICE_DONE : step_in(s);
    }
    /* not yet: look again a short timer later (the first look was a NOP, one run away) */
    int rc = mu_timeout(s->ring, GATE_RETRY_NS, s->ud_base | MU_SPLICE_K_GATE);
    if (rc == 0)
        s->inflight++;
    return rc == 0 ? MU_SPLICE_RUNNING : rc;
}

mu_splice *mu_splice_new(mu_ring *r, int fd_in, int fd_out, uint64_t ud_base, mu_conn *gate_in,
                         mu_conn *gate_out, int pipe_size, int *err)
{
    *err = 0;
    if (pipe_size <= 0) {
        *err = -EINVAL;
        return NULL;
    }
    mu_splice *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    int rc = pipe_get(pipe_size, &s->pipe_r, &s->pipe_w, &s->pipe_cap);
    if (rc < 0) {
        free(s);
        *err = rc;
        return NULL;
    }
    s->ring = r;
    s->fd_in = fd_in;
    s->fd_out = fd_out;
    s->ud_base = ud_base;
    s->gate_in = gate_in;
    s->gate_out = gate_out;
    s->state = ST_GATE_IN;
    rc = mu_nop(r, ud_base | MU_SPLICE_K_GATE);
    if (rc < 0) {
        pipe_put(s->pipe_r, s->pipe_w, s->pipe_cap, 1);
        free(s);
        *err = rc;
        return NULL;
    }
    s->inflight = 1;
    return s;
}

/* One completion of this job (kind = low byte of its user_data): the next step, or the end. */
int mu_splice_event(mu_splice *s, unsigned kind, int res)
{
    if (s->inflight > 0)
        s->inflight--;
    if (s->state == ST_END) {
        /* late completions (after a cancel or an error): keep the pipe's count right */
        if (kind == MU_SPLICE_K_IN && res > 0) {
            s->inpipe += res;
            s->total_in += res;
        } else if (kind == MU_SPLICE_K_OUT && res > 0) {
            s->inpipe -= res;
            s->moved += res;
        }
        return s->result;
    }
    if (kind == MU_SPLICE_K_POLL)
        return MU_SPLICE_RUNNING; /* the linked splice reports (-ECANCELED if the poll failed) */
    int rc;
    switch (kind) {
    case MU_SPLICE_K_GATE:
        rc = (res < 0 && res != -ETIME) ? res : gate(s);
        break;
    case MU_SPLICE_K_IN:
        if (res > 0) {
            s->inpipe += res;
            s->left -= res;
            s->total_in += res;
            rc = step_out(s);
        } else if (res == 0) {
            rc = -ENODATA; /* the source ended before nbytes */
        } else if (res == -EAGAIN || res == -EINTR) {
            rc = step_in(s);
        } else {
            rc = res;
        }
        break;
    case MU_SPLICE_K_OUT:
        if (res > 0) {
            s->inpipe -= res;
            s->moved += res;
            if (s->inpipe > 0)
                rc = step_out(s);
            else if (s->left > 0)
                rc = step_in(s);
            else
                rc = MU_SPLICE_DONE;
        } else if (res == -EAGAIN || res == -EINTR) {
            rc = step_out(s);
        } else {
            rc = res == 0 ? -EPIPE : res;
        }
        break;
    default:
        rc = -EINVAL;
    }
    if (rc == MU_SPLICE_DONE || rc < 0) {
        s->state = ST_END;
        s->result = rc;
        return rc;
    }
    return rc == MU_SPLICE_READY ? rc : MU_SPLICE_RUNNING;
}

/* After READY: relay nbytes once the sink's queue is sent (reported by mu_splice_event). */
int mu_splice_go(mu_splice *s, int64_t nbytes)
{
    if (s->state != ST_READY || nbytes < 0)
        return -EINVAL;
    s->left = nbytes;
    s->state = ST_GATE_OUT;
    int rc = mu_nop(s->ring, s->ud_base | MU_SPLICE_K_GATE);
    if (rc < 0) {
        s->state = ST_END;
        s->result = rc;
        return rc;
    }
    s->inflight++;
    return 0;
}

int64_t mu_splice_moved(mu_splice *s) { return s->moved; }
int64_t mu_splice_read(mu_splice *s) { return s->total_in; }
int mu_splice_inflight(mu_splice *s) { return s->inflight; }
int mu_splice_pipe_size(mu_splice *s) { return s->pipe_cap; }

/* Stop: the step in flight completes with -ECANCELED (or with what it had done already). */
int mu_splice_cancel(mu_splice *s)
{
    int rc = 0;
    if (s->inflight > 0) {
        unsigned kind = s->state == ST_IN    ? MU_SPLICE_K_IN
                        : s->state == ST_OUT ? MU_SPLICE_K_OUT : MU_SPLICE_K_GATE;
        if (kind != MU_SPLICE_K_GATE)
            rc = mu_cancel(s->ring, s->ud_base | MU_SPLICE_K_POLL);
        if (rc == 0)
            rc = mu_cancel(s->ring, s->ud_base | kind);
    }
    if (s->state != ST_END) {
        s->state = ST_END;
        s->result = -ECANCELED;
    }
    return rc;
}

/* Only once no completion is due (mu_splice_inflight == 0): the pipe fds may be reused. */
void mu_splice_free(mu_splice *s)
{
    pipe_put(s->pipe_r, s->pipe_w, s->pipe_cap, s->inpipe == 0);
    free(s);
}
