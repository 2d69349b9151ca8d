/*
 * monolake.uring C layer: a "fat" shim over liburing, shaped so that Python never touches an
 * SQE or a CQE.
 *
 *  - prep calls take plain ints and pointers and make no syscall;
 *  - mu_run() submits, waits once and reaps, copying the batch of completions into a flat
 *    int64 array (user_data, res, flags, offset in the buffer area) that Python walks;
 *  - stream sockets ("conns") are driven here: multishot recv on a provided-buffer ring whose
 *    payloads are read in place (the event carries the payload's offset in the buffer area; a
 *    buffer the kernel is done with is given back at the start of the next mu_run, i.e. once
 *    Python has turned its payloads into bytes: no copy in C). Where the kernel has it (6.12+)
 *    the buffers are consumed incrementally (IOU_PBUF_RING_INC): a few large buffers hold
 *    many small reads and a large read is one completion; C-owned sends
 *    (a large write on an idle conn is tried with one send() first and only the rest is
 *    copied; otherwise copied, queued, one in flight per conn, short writes resubmitted,
 *    successful completions swallowed), and an orderly close that reports QUIESCED only once
 *    no operation references the fd any more (closing an fd with a multishot recv armed does
 *    not close the socket);
 *  - an eventfd with a multishot poll wakes the loop from other threads.
 *
 * user_data layout
 *   bit 63 clear: a Python token (Python's business, reported as is);
 *   bit 63 set:   internal: [63]=1 [62..36]=generation [35..4]=conn slot [3..0]=kind.
 * Conn slots carry a generation so a late CQE or a cancel can never hit a reused slot.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <errno.h>
#include <signal.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <liburing.h>

#include "mu_ring.h"

#define MU_INTERNAL (1ULL << 63)


/* internal kinds (low 4 bits of an internal user_data) */
enum { CK_IGNORE = 1, CK_WAKE = 2, CK_RECV = 3, CK_SEND = 4, CK_QUIESCE = 5 };

/* one queued write of a conn (mu_conn.head / tail) */
typedef struct mu_sbuf {
    struct mu_sbuf *next;
    size_t len;
    size_t off;
    char data[];
} mu_sbuf;

/* the iovecs and header of a conn's sendmsg: allocated for a send of several queued buffers
 * and freed when it completes, so an idle conn does not carry ~300 bytes it rarely uses */
typedef struct mu_sendvec {
    struct iovec iov[MU_IOV];
    struct msghdr msg;
} mu_sendvec;

/* writes at least this large on an idle conn try a direct send() first (see mu_conn_send) */
#ifndef MU_DIRECT_SEND
#define MU_DIRECT_SEND 8192
#endif

#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2 /* struct io_uring_buf_reg.flags (the 'pad' field before 6.12) */
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4) /* incremental buffer: the kernel keeps filling it */
#endif

struct mu_ring {
    struct io_uring ring;
    unsigned setup_flags;
    /* tunables (mu_ring_set_option) */
    unsigned direct_min;   /* writes this large on an idle conn try send() first */
    int efd;
    int wake_armed;
    int shutting_down;
    /* provided-buffer ring */
    void *br_mem;
    size_t br_mem_len;
    struct io_uring_buf_ring *br;
    char *bufs;
    size_t bufs_len;
    unsigned nbufs, buf_size, bmask;
    int bgid;
    int br_registered;
    int buf_inc;         /* buffers consumed incrementally (IOU_PBUF_RING_INC) */
    uint32_t *buf_used;  /* per bid: bytes already handed out (incremental mode) */
    /* buffers lent to Python by the current batch (bids), given back by the next mu_run */
    uint16_t *lent;
    unsigned nlent;
    /* output of the current mu_run */
    int64_t *out;
    int out_max, out_n;
    /* bookkeeping */
    int64_t inflight; /* SQEs submitted or queued whose final CQE was not seen */
    mu_conn **slots;
    uint32_t nslots;
    uint32_t *free_slots;
    uint32_t nfree;
    uint32_t gen_counter;
};

static uint64_t conn_ud(mu_conn *c, unsigned kind)
{
    return MU_INTERNAL | ((uint64_t)(c->gen & 0x7ffffff) << 36) | ((uint64_t)c->slot << 4) | kind;
}

static mu_conn *conn_from_ud(mu_ring *r, uint64_t ud)
{
    uint32_t slot = (uint32_t)((ud >> 4) & 0xffffffffULL);
    uint32_t gen = (uint32_t)((ud >> 36) & 0x7ffffff);
    if (slot >= r->nslots)
        return NULL;
    mu_conn *c = r->slots[slot];
    if (c == NULL || (c->gen & 0x7ffffff) != gen)
        return NULL;
    return c;
}

/* An SQE, flushing the SQ to the kernel once if it is full. */
static struct io_uring_sqe *get_sqe(mu_ring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (sqe == NULL) {
        io_uring_submit(&r->ring);
        sqe = io_uring_get_sqe(&r->ring);
    }
    if (sqe != NULL)
        r->inflight++;
    return sqe;
}

struct io_uring_sqe *mu_ring_get_sqe(mu_ring *r) { return get_sqe(r); }

static void emit(mu_ring *r, uint64_t ud, int64_t res, int64_t flags, int64_t off)
{
    /* reap() keeps two free slots before it consumes a CQE */
    int64_t *o = r->out + 4 * r->out_n;
    o[0] = (int64_t)ud;
    o[1] = res;
    o[2] = flags;
    o[3] = off;
    r->out_n++;
}

unsigned mu_flags_from_mask(unsigned mask)
{
    unsigned f = IORING_SETUP_SUBMIT_ALL;
    if (mask & 1)
        f |= IORING_SETUP_SINGLE_ISSUER;
    if (mask & 2)
        f |= IORING_SETUP_DEFER_TASKRUN;
    if (mask & 4)
        f |= IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    return f;
}

static int setup_ring(struct io_uring *ring, unsigned entries, unsigned flags)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = flags | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    p.cq_entries = entries * 4;
    if (flags & IORING_SETUP_DEFER_TASKRUN)
        p.flags |= IORING_SETUP_TASKRUN_FLAG; /* SQ_TASKRUN: mu_run can skip needless enters */
    int ret = io_uring_queue_init_params(entries, ring, &p);
    if (ret == -EINVAL && (flags & IORING_SETUP_DEFER_TASKRUN)) {
        memset(&p, 0, sizeof(p)); /* a kernel that refuses the flag with DEFER_TASKRUN */
        p.flags = flags | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        p.cq_entries = entries * 4;
        ret = io_uring_queue_init_params(entries, ring, &p);
    }
    if (ret < 0)
        return ret;
    if (!(p.features & IORING_FEAT_EXT_ARG) || !(p.features & IORING_FEAT_NODROP)) {
        io_uring_queue_exit(ring);
        return -EOPNOTSUPP;
    }
    return 0;
}

static int setup_buf_ring(mu_ring *r, unsigned nbufs, unsigned buf_size, int inc)
{
    long page = sysconf(_SC_PAGESIZE);
    r->nbufs = nbufs;
    r->buf_size = buf_size;
    r->bmask = io_uring_buf_ring_mask(nbufs);
    r->bgid = 0;
    r->br_mem_len = ((nbufs * sizeof(struct io_uring_buf)) + page - 1) & ~(size_t)(page - 1);
    r->br_mem = mmap(NULL, r->br_mem_len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (r->br_mem == MAP_FAILED) {
        r->br_mem = NULL;
        return -errno;
    }
    r->br = (struct io_uring_buf_ring *)r->br_mem;
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)r->br_mem;
    reg.ring_entries = nbufs;
    reg.bgid = r->bgid;
    int ret = -EINVAL;
    if (inc) {
        reg.pad = IOU_PBUF_RING_INC;
        ret = io_uring_register_buf_ring(&r->ring, &reg, 0);
        r->buf_inc = ret == 0;
        reg.pad = 0;
    }
    if (!r->buf_inc)
        ret = io_uring_register_buf_ring(&r->ring, &reg, 0); /* before 6.12: EINVAL above */
    if (ret < 0)
        return ret;
    r->br_registered = 1;
    r->bufs_len = (size_t)nbufs * buf_size;
    r->bufs = mmap(NULL, r->bufs_len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (r->bufs == MAP_FAILED) {
        r->bufs = NULL;
        return -errno;
    }
    io_uring_buf_ring_init(r->br);
    for (unsigned i = 0; i < nbufs; i++)
        io_uring_buf_ring_add(r->br, r->bufs + (size_t)i * buf_size, buf_size, i, r->bmask, i);
    io_uring_buf_ring_advance(r->br, nbufs);
    return 0;
}

/* Undo setup_ring and setup_buf_ring, as far as they got: the buffer ring's registration,
 * the ring, the buffers' and the buffer ring's memory. */
static void ring_teardown(mu_ring *r)
{
    if (r->br_registered)
        io_uring_unregister_buf_ring(&r->ring, r->bgid);
    if (r->ring.ring_fd >= 0)
        io_uring_queue_exit(&r->ring);
    if (r->bufs)
        munmap(r->bufs, r->bufs_len);
    if (r->br_mem)
        munmap(r->br_mem, r->br_mem_len);
}

/* Create (and destroy) a ring with these flags and a buffer ring: 0 or -errno. */
int mu_try_setup(unsigned entries, unsigned flags)
{
    mu_ring r;
    memset(&r, 0, sizeof(r));
    int ret = setup_ring(&r.ring, entries, flags);
    if (ret < 0)
        return ret;
    ret = setup_buf_ring(&r, 8, 4096, 0);
    ring_teardown(&r);
    return ret < 0 ? (ret == -EINVAL ? -EOPNOTSUPP : ret) : 0;
}

static int arm_wake(mu_ring *r)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    if (sqe == NULL)
        return -EBUSY;
    io_uring_prep_poll_multishot(sqe, r->efd, POLLIN);
    io_uring_sqe_set_data64(sqe, MU_INTERNAL | CK_WAKE);
    r->wake_armed = 1;
    return 0;
}

static void ring_release(mu_ring *r)
{
    ring_teardown(r);
    if (r->efd >= 0)
        close(r->efd);
    free(r->lent);
    free(r->buf_used);
    free(r->slots);
    free(r->free_slots);
    free(r);
}

mu_ring *mu_ring_new(unsigned entries, unsigned flags, unsigned nbufs, unsigned buf_size,
                     int buf_inc, int *err)
{
    mu_ring *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    r->efd = -1;
    r->ring.ring_fd = -1;
    if (nbufs == 0 || (nbufs & (nbufs - 1)) || nbufs > 32768 || buf_size < 512) {
        *err = -EINVAL;
        free(r);
        return NULL;
    }
    int ret = setup_ring(&r->ring, entries, flags);
    if (ret < 0) {
        r->ring.ring_fd = -1;
        goto fail;
    }
    r->setup_flags = flags;
    r->direct_min = MU_DIRECT_SEND;
    /* the ring fd in the task's registered-ring table: io_uring_enter skips an fdget/fdput
     * (~30 ns per enter measured); without a free slot (16 per thread) the plain fd is used */
    io_uring_register_ring_fd(&r->ring);
    ret = setup_buf_ring(r, nbufs, buf_size, buf_inc);
    if (ret < 0)
        goto fail;
    r->buf_used = calloc(nbufs, sizeof(*r->buf_used));
    if (r->buf_used == NULL) {
        ret = -ENOMEM;
        goto fail;
    }
    r->lent = malloc(sizeof(*r->lent) * nbufs);
    if (r->lent == NULL) {
        ret = -ENOMEM;
        goto fail;
    }
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0) {
        ret = -errno;
        goto fail;
    }
    ret = arm_wake(r);
    if (ret < 0)
        goto fail;
    *err = 0;
    return r;
fail:
    *err = ret;
    ring_release(r);
    return NULL;
}

/* Tunables, for A/B measurements (scripts/bench_loop.py io_uring:key=value): 0 or -EINVAL. */
int mu_ring_set_option(mu_ring *r, int opt, int64_t value)
{
    if (value < 0)
        return -EINVAL;
    switch (opt) {
    case MU_OPT_DIRECT_MIN:
        r->direct_min = (unsigned)(value > UINT32_MAX ? UINT32_MAX : value);
        return 0;
    case MU_OPT_REG_RING_FD: {
        if (!value) {
            if (r->ring.int_flags & 1)
                io_uring_unregister_ring_fd(&r->ring);
            return 0;
        }
        if (r->ring.int_flags & 1)
            return 0;
        int ret = io_uring_register_ring_fd(&r->ring);
        return ret < 0 ? ret : 0;
    }
    default:
        return -EINVAL;
    }
}

int mu_ring_eventfd(mu_ring *r) { return r->efd; }
int mu_ring_fd(mu_ring *r) { return r->ring.ring_fd; }
unsigned mu_ring_setup_flags(mu_ring *r) { return r->setup_flags; }
/* The provided-buffer area: a received payload is at mu_arena(r) + offset until the next run. */
char *mu_arena(mu_ring *r) { return r->bufs; }
int mu_ring_buf_inc(mu_ring *r) { return r->buf_inc; }

/* Does this kernel consume provided buffers incrementally (6.12+)? 1, 0, or -errno. */
int mu_pbuf_inc_supported(void)
{
    mu_ring r;
    memset(&r, 0, sizeof(r));
    int ret = setup_ring(&r.ring, 4, 0);
    if (ret < 0)
        return ret;
    ret = setup_buf_ring(&r, 8, 4096, 1);
    ring_teardown(&r);
    return ret < 0 ? ret : r.buf_inc;
}
size_t mu_arena_size(mu_ring *r) { return r->bufs_len; }

/* Give the buffers lent by the previous batch back to the kernel (one ring tail update). */
static void return_lent(mu_ring *r)
{
    unsigned n = r->nlent;
    if (n == 0)
        return;
    for (unsigned i = 0; i < n; i++) {
        unsigned bid = r->lent[i];
        io_uring_buf_ring_add(r->br, r->bufs + (size_t)bid * r->buf_size, r->buf_size, bid,
                              r->bmask, (int)i);
        r->buf_used[bid] = 0;
    }
    io_uring_buf_ring_advance(r->br, (int)n);
    r->nlent = 0;
}
int64_t mu_ring_inflight(mu_ring *r) { return r->inflight; }

int mu_wake(mu_ring *r)
{
    eventfd_t one = 1;
    return write(r->efd, &one, sizeof(one)) < 0 ? -errno : 0;
}

/* ---- plain operations keyed by a Python token ---- */

/* Take an SQE (-EBUSY when the ring is full), prepare it with `prep` (which names it `sqe`),
 * key its completion with `ud`, return 0. */
#define PREP_KEYED(r, ud, prep)                          \
    do {                                                 \
        struct io_uring_sqe *sqe = get_sqe(r);           \
        if (sqe == NULL)                                 \
            return -EBUSY;                               \
        prep;                                            \
        io_uring_sqe_set_data64(sqe, ud);                \
        return 0;                                        \
    } while (0)

int mu_nop(mu_ring *r, uint64_t ud)
{
    PREP_KEYED(r, ud, io_uring_prep_nop(sqe));
}

/* One-shot poll: the selector re-arms after each event, which gives level-triggered semantics. */
int mu_poll_add(mu_ring *r, int fd, unsigned mask, uint64_t ud)
{
    PREP_KEYED(r, ud, io_uring_prep_poll_add(sqe, fd, mask));
}

/* Multishot poll (non-exclusive: every waiter on the file is woken, as with epoll). */
int mu_poll_multishot(mu_ring *r, int fd, unsigned mask, uint64_t ud)
{
    PREP_KEYED(r, ud, io_uring_prep_poll_multishot(sqe, fd, mask));
}

/* accept4() until EAGAIN or max. Returns the count; *err is 0 when the queue was drained (or
 * max reached), else the errno that stopped it (EMFILE, ENFILE, ENOBUFS, ENOMEM...): with an
 * edge-triggered poll the caller must then retry later, or queued connections are stranded. */
int mu_accept_many(int fd, int *out, int max, int *err)
{
    int n = 0, skipped = 0;
    *err = 0;
    while (n < max) {
        int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c >= 0) {
            out[n++] = c;
            continue;
        }
        int e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK)
            break;
        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM || e == EBADF ||
            e == EINVAL || e == ENOTSOCK || ++skipped > max) {
            *err = e;
            break;
        }
        /* EINTR, ECONNABORTED, EPROTO, EPERM (firewall)...: that connection only */
    }
    return n;
}

/* Multishot accept. Its poll is EPOLLEXCLUSIVE: with a listening socket shared between
 * processes, a wake-up taken by a ring whose accept is then cancelled is lost for the others
 * (the connection waits in the queue until the next one arrives). The loop therefore accepts
 * on a non-exclusive poll by default and uses this only when asked to. */
int mu_accept(mu_ring *r, int fd, uint64_t ud)
{
    PREP_KEYED(r, ud, io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
}

/* A cancel of every operation matching (ud, or fd when by_fd); its own CQE is swallowed. */
static int cancel_all(mu_ring *r, uint64_t ud, int fd, int by_fd)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    if (sqe == NULL)
        return -EBUSY;
    if (by_fd)
        io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    else
        io_uring_prep_cancel64(sqe, ud, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, MU_INTERNAL | CK_IGNORE);
    return 0;
}

/* Cancel the operation(s) with this user_data. */
int mu_cancel(mu_ring *r, uint64_t ud)
{
    return cancel_all(r, ud, -1, 0);
}

/* Cancel the operation(s) on this fd. */
int mu_cancel_fd(mu_ring *r, int fd)
{
    return cancel_all(r, 0, fd, 1);
}

/* A timeout reported to Python as ud (res -ETIME when it fires). Submitted at once: the kernel
 * reads the timespec at submission, so it can live on the stack. */
int mu_timeout(mu_ring *r, int64_t ns, uint64_t ud)
{
    struct __kernel_timespec ts;
    struct io_uring_sqe *sqe = get_sqe(r);
    if (sqe == NULL)
        return -EBUSY;
    ts.tv_sec = ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    io_uring_prep_timeout(sqe, &ts, 0, 0);
    io_uring_sqe_set_data64(sqe, ud);
    int ret = io_uring_submit(&r->ring);
    return ret < 0 ? ret : 0;
}

int mu_close_fd(mu_ring *r, int fd, uint64_t ud)
{
    PREP_KEYED(r, ud, io_uring_prep_close(sqe, fd));
}

int mu_shutdown_fd(mu_ring *r, int fd, int how, uint64_t ud)
{
    PREP_KEYED(r, ud, io_uring_prep_shutdown(sqe, fd, how));
}

/* ---- conns: stream sockets driven by C ---- */

mu_conn *mu_conn_new(mu_ring *r, int fd, uint64_t ud_base)
{
    mu_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    uint32_t slot;
    if (r->nfree > 0) {
        slot = r->free_slots[--r->nfree];
    } else {
        if (r->nslots == UINT32_MAX) {
            free(c);
            return NULL;
        }
        uint32_t n = r->nslots ? r->nslots * 2 : 64;
        mu_conn **s = realloc(r->slots, n * sizeof(*s));
        if (s == NULL) {
            free(c);
            return NULL;
        }
        uint32_t *f = realloc(r->free_slots, n * sizeof(*f));
        if (f == NULL) {
            r->slots = s;
            free(c);
            return NULL;
        }
        r->slots = s;
        r->free_slots = f;
        for (uint32_t i = n; i > r->nslots + 1; i--)
            r->free_slots[r->nfree++] = i - 1;
        for (uint32_t i = r->nslots; i < n; i++)
            r->slots[i] = NULL;
        slot = r->nslots;
        r->nslots = n;
    }
    c->ring = r;
    c->fd = fd;
    c->ud_base = ud_base;
    c->slot = slot;
    c->gen = ++r->gen_counter;
    c->notify_below = -1;
    r->slots[slot] = c;
    return c;
}

static void free_queue(mu_conn *c)
{
    mu_sbuf *b = c->head;
    while (b) {
        mu_sbuf *n = b->next;
        free(b);
        b = n;
    }
    c->head = c->tail = NULL;
    c->pending = 0;
}

static void conn_free(mu_conn *c)
{
    mu_ring *r = c->ring;
    free_queue(c);
    free(c->vec);
    r->slots[c->slot] = NULL;
    r->free_slots[r->nfree++] = c->slot;
    free(c);
}

static int arm_recv(mu_conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(c->ring);
    if (sqe == NULL)
        return -EBUSY;
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = c->ring->bgid;
    io_uring_sqe_set_data64(sqe, conn_ud(c, CK_RECV));
    c->recv_armed = 1;
    c->inflight++;
    return 0;
}

static int cancel_ud(mu_ring *r, uint64_t ud)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    if (sqe == NULL)
        return -EBUSY;
    io_uring_prep_cancel64(sqe, ud, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, MU_INTERNAL | CK_IGNORE);
    return 0;
}

/* Once closing and nothing references the fd, post a NOP whose CQE reports QUIESCED. */
static void maybe_quiesce(mu_conn *c)
{
    if (!c->closing || c->quiesce_posted || c->recv_armed || c->send_inflight)
        return;
    if (c->head != NULL && !c->aborting && c->error == 0)
        return; /* graceful close: flush first */
    struct io_uring_sqe *sqe = get_sqe(c->ring);
    if (sqe == NULL)
        return; /* retried on the next conn event or ring teardown */
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, conn_ud(c, CK_QUIESCE));
    c->quiesce_posted = 1;
    c->inflight++;
}

int mu_conn_recv_start(mu_conn *c)
{
    if (c->closing)
        return -EBADF;
    c->recv_want = 1;
    if (!c->recv_armed)
        return arm_recv(c);
    return 0; /* armed, or cancelling: the final CQE re-arms because recv_want is set */
}

int mu_conn_recv_stop(mu_conn *c)
{
    c->recv_want = 0;
    if (c->recv_armed && !c->recv_cancelling) {
        c->recv_cancelling = 1;
        return cancel_ud(c->ring, conn_ud(c, CK_RECV));
    }
    return 0;
}

static int submit_send(mu_conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(c->ring);
    if (sqe == NULL)
        return -EBUSY;
    mu_sbuf *b = c->head;
    if (b->next == NULL) {
        io_uring_prep_send(sqe, c->fd, b->data + b->off, b->len - b->off, MSG_NOSIGNAL);
    } else {
        mu_sendvec *v = c->vec;
        if (v == NULL) {
            v = c->vec = malloc(sizeof(*v));
            if (v == NULL) {
                /* no memory for the vector: send the first buffer alone */
                io_uring_prep_send(sqe, c->fd, b->data + b->off, b->len - b->off, MSG_NOSIGNAL);
                goto prepped;
            }
        }
        int n = 0;
        for (; b != NULL && n < MU_IOV; b = b->next, n++) {
            v->iov[n].iov_base = b->data + b->off;
            v->iov[n].iov_len = b->len - b->off;
        }
        memset(&v->msg, 0, sizeof(v->msg));
        v->msg.msg_iov = v->iov;
        v->msg.msg_iovlen = n;
        io_uring_prep_sendmsg(sqe, c->fd, &v->msg, MSG_NOSIGNAL);
    }
prepped:
    io_uring_sqe_set_data64(sqe, conn_ud(c, CK_SEND));
    c->send_inflight = 1;
    c->inflight++;
    return 0;
}

static void do_shutdown(mu_conn *c)
{
    if (c->shut_req && !c->shut_done && c->head == NULL && !c->send_inflight) {
        c->shut_done = 1;
        shutdown(c->fd, SHUT_WR);
    }
}

/*
 * Copy and queue; returns the bytes now pending, or -errno (-EPIPE after close/shutdown).
 * A write of at least MU_DIRECT_SEND bytes on a conn with nothing queued or in flight is first
 * tried with one non-blocking send(): what the socket takes needs no copy, no malloc and no
 * SQE (for large bodies the copy cost more than the syscall); only the rest is queued. Any
 * error there is left to the queued io_uring send, which reports it the usual way.
 */
int64_t mu_conn_send(mu_conn *c, const char *data, size_t len)
{
    if (c->error)
        return -c->error;
    if (c->closing || c->shut_req)
        return -EPIPE;
    if (len == 0)
        return c->pending;
    if (len >= c->ring->direct_min && c->head == NULL && !c->send_inflight) {
        ssize_t n = send(c->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            if ((size_t)n == len)
                return c->pending;
            data += n;
            len -= (size_t)n;
        }
    }
    mu_sbuf *b = malloc(sizeof(*b) + len);
    if (b == NULL)
        return -ENOMEM;
    b->next = NULL;
    b->len = len;
    b->off = 0;
    memcpy(b->data, data, len);
    if (c->tail)
        c->tail->next = b;
    else
        c->head = b;
    c->tail = b;
    c->pending += (int64_t)len;
    if (!c->send_inflight) {
        int ret = submit_send(c);
        if (ret < 0)
            return ret;
    }
    return c->pending;
}

/*
 * Two buffers in order (a response head and its body): like two mu_conn_send calls, but a large
 * pair on an idle conn goes out with one sendmsg() and neither is copied (what the socket does
 * not take is queued). Returns the bytes now pending, or -errno.
 */
int64_t mu_conn_send2(mu_conn *c, const char *a, size_t alen, const char *b, size_t blen)
{
    if (c->error)
        return -c->error;
    if (c->closing || c->shut_req)
        return -EPIPE;
    if (alen + blen >= c->ring->direct_min && c->head == NULL && !c->send_inflight) {
        struct iovec iov[2] = {{(void *)a, alen}, {(void *)b, blen}};
        struct msghdr m;
        memset(&m, 0, sizeof(m));
        m.msg_iov = iov;
        m.msg_iovlen = 2;
        ssize_t n = sendmsg(c->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            if ((size_t)n >= alen) {
                size_t k = (size_t)n - alen;
                return mu_conn_send(c, b + k, blen - k);
            }
            a += n;
            alen -= (size_t)n;
        }
    }
    int64_t ret = mu_conn_send(c, a, alen);
    if (ret < 0)
        return ret;
    return mu_conn_send(c, b, blen);
}

/* Half-close: shutdown(SHUT_WR) once the queued data is sent. */
int mu_conn_shutdown(mu_conn *c)
{
    if (c->closing)
        return -EBADF;
    c->shut_req = 1;
    do_shutdown(c);
    return 0;
}

/* Close: stop receiving, flush (or drop, when aborting) the queue, then report QUIESCED; the
 * conn is freed right after that event: Python must not use the pointer once it has it. */
int mu_conn_close(mu_conn *c, int abort)
{
    if (c->closing && (!abort || c->aborting))
        return 0;
    c->closing = 1;
    c->recv_want = 0;
    if (c->recv_armed && !c->recv_cancelling) {
        c->recv_cancelling = 1;
        cancel_ud(c->ring, conn_ud(c, CK_RECV));
    }
    if (abort) {
        c->aborting = 1;
        if (c->send_inflight) {
            if (!c->send_cancelling) {
                c->send_cancelling = 1;
                cancel_ud(c->ring, conn_ud(c, CK_SEND));
            }
        } else {
            free_queue(c);
        }
        c->pending = 0;
    }
    maybe_quiesce(c);
    return 0;
}

static void on_send(mu_ring *r, mu_conn *c, int res)
{
    c->send_inflight = 0;
    c->send_cancelling = 0;
    free(c->vec); /* the kernel is done with it; a resubmission allocates again if needed */
    c->vec = NULL;
    if (c->aborting) {
        free_queue(c);
    } else if (res >= 0) {
        size_t left = (size_t)res;
        c->pending -= res;
        while (left > 0 && c->head) {
            mu_sbuf *b = c->head;
            size_t avail = b->len - b->off;
            if (left >= avail) {
                left -= avail;
                c->head = b->next;
                if (c->head == NULL)
                    c->tail = NULL;
                free(b);
            } else {
                b->off += left;
                left = 0;
            }
        }
        if (c->head && !r->shutting_down)
            submit_send(c);
    } else if (res == -EINTR || res == -EAGAIN) {
        if (!r->shutting_down)
            submit_send(c);
    } else {
        c->error = -res;
        free_queue(c);
        if (!c->closing && !r->shutting_down)
            emit(r, c->ud_base | MU_EV_SENDERR, res, 0, 0);
    }
    if (c->notify_below >= 0 && c->pending <= c->notify_below && !c->closing &&
        !r->shutting_down) {
        c->notify_below = -1;
        emit(r, c->ud_base | MU_EV_DRAIN, c->pending, 0, 0);
    }
    do_shutdown(c);
}

/*
 * A completion used buffer `bid`: returns the payload's offset in the buffer area. The data
 * starts where the previous reads from this buffer ended (always 0 without incremental mode).
 * Once the kernel is done with the buffer (no BUF_MORE) it is lent until the next mu_run, then
 * given back: each bid is out at most once, so nlent <= nbufs.
 */
static int64_t buffer_consumed(mu_ring *r, unsigned bid, int res, unsigned flags)
{
    if (bid >= r->nbufs)
        return 0;
    int64_t off = (int64_t)bid * r->buf_size + r->buf_used[bid];
    if (res > 0)
        r->buf_used[bid] += (uint32_t)res;
    if (!r->buf_inc || !(flags & IORING_CQE_F_BUF_MORE))
        r->lent[r->nlent++] = (uint16_t)bid;
    return off;
}

static void on_recv(mu_ring *r, mu_conn *c, int res, unsigned flags)
{
    int more = (flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        c->recv_armed = 0;
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        int64_t off = buffer_consumed(r, bid, res, flags);
        if (res > 0 && !c->closing && !r->shutting_down)
            emit(r, c->ud_base | MU_EV_RECV, res, flags, off);
    } else if (res == 0) {
        if (!c->closing && !r->shutting_down)
            emit(r, c->ud_base | MU_EV_RECV, 0, flags, 0);
        c->recv_want = 0;
    } else if (res < 0 && res != -ECANCELED && res != -ENOBUFS) {
        if (!c->closing && !r->shutting_down)
            emit(r, c->ud_base | MU_EV_RECV, res, flags, 0);
        c->recv_want = 0;
    }
    if (!c->recv_armed) {
        c->recv_cancelling = 0;
        if (c->recv_want && !c->closing && !r->shutting_down)
            arm_recv(c);
    }
}


static void reap(mu_ring *r)
{
    struct io_uring_cqe *cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&r->ring, head, cqe)
    {
        /* one CQE emits at most two events (SENDERR and DRAIN): keep two slots */
        if (r->out_n + 2 > r->out_max)
            break;
        seen++;
        uint64_t ud = cqe->user_data;
        int res = cqe->res;
        unsigned flags = cqe->flags;
        if (!(flags & IORING_CQE_F_MORE))
            r->inflight--;
        if (!(ud & MU_INTERNAL)) {
            emit(r, ud, res, flags, 0);
            continue;
        }
        unsigned kind = (unsigned)(ud & 0xf);
        if (kind == CK_IGNORE)
            continue;
        if (kind == CK_WAKE) {
            eventfd_t v;
            if (read(r->efd, &v, sizeof(v)) < 0) {
                /* EAGAIN: already drained */
            }
            if (!(flags & IORING_CQE_F_MORE)) {
                r->wake_armed = 0;
                if (!r->shutting_down)
                    arm_wake(r);
            }
            continue;
        }
        mu_conn *c = conn_from_ud(r, ud);
        if (c == NULL) {
            /* stale: should not happen (conns outlive their SQEs); account for the buffer */
            if (flags & IORING_CQE_F_BUFFER)
                buffer_consumed(r, flags >> IORING_CQE_BUFFER_SHIFT, res, flags);
            continue;
        }
        if (!(flags & IORING_CQE_F_MORE))
            c->inflight--;
        switch (kind) {
        case CK_RECV:
            on_recv(r, c, res, flags);
            break;
        case CK_SEND:
            on_send(r, c, res);
            break;
        case CK_QUIESCE:
            if (!r->shutting_down)
                emit(r, c->ud_base | MU_EV_QUIESCED, 0, 0, 0);
            conn_free(c);
            continue;
        default:
            break;
        }
        maybe_quiesce(c);
    }
    io_uring_cq_advance(&r->ring, seen);
}

/*
 * One loop iteration: submit what is queued, wait for wait_nr completions (at most timeout_ns,
 * < 0 = no limit), reap into out[4*i .. 4*i+3]. Returns the number of events, or -errno for a
 * real error (timeouts and signals are not errors: they return what was reaped).
 */
int mu_run(mu_ring *r, int wait_nr, int64_t timeout_ns, int64_t *out, int max)
{
    int ret;
    r->out = out;
    r->out_max = max;
    r->out_n = 0;
    return_lent(r); /* Python is done with the previous batch's payloads */
    /* flush the SQ (single issuer, no SQPOLL: a plain tail store) and make one enter */
    struct io_uring_sq *sq = &r->ring.sq;
    unsigned tail = sq->sqe_tail;
    if (sq->sqe_head != tail) {
        sq->sqe_head = tail;
        io_uring_smp_store_release(sq->ktail, tail);
    }
    unsigned to_submit = tail - *sq->khead;
    unsigned enter_flags = IORING_ENTER_GETEVENTS;
    int fd = r->ring.ring_fd;
    if (r->ring.int_flags & 1) {
        enter_flags |= IORING_ENTER_REGISTERED_RING;
        fd = r->ring.enter_ring_fd;
    }
    if (wait_nr <= 0 || timeout_ns == 0 || io_uring_cq_ready(&r->ring) > 0) {
        /* work is ready: submit and run the deferred completions, do not sleep. With
         * TASKRUN_FLAG the kernel sets SQ_TASKRUN while completions wait in the deferred list:
         * with nothing to submit, no flag and no overflow, an enter would find nothing. */
        unsigned sqf = IO_URING_READ_ONCE(*sq->kflags);
        if (to_submit == 0 && (r->ring.flags & IORING_SETUP_TASKRUN_FLAG) &&
            !(sqf & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)))
            ret = 0;
        else
            ret = (int)syscall(__NR_io_uring_enter, fd, to_submit, 0, enter_flags, NULL,
                               _NSIG / 8);
    } else {
        struct __kernel_timespec ts;
        struct io_uring_getevents_arg arg;
        memset(&arg, 0, sizeof(arg));
        arg.sigmask_sz = _NSIG / 8;
        if (timeout_ns > 0) {
            ts.tv_sec = timeout_ns / 1000000000;
            ts.tv_nsec = timeout_ns % 1000000000;
            arg.ts = (uint64_t)(uintptr_t)&ts;
        }
        ret = (int)syscall(__NR_io_uring_enter, fd, to_submit, (unsigned)wait_nr,
                           enter_flags | IORING_ENTER_EXT_ARG, &arg, sizeof(arg));
    }
    if (ret < 0)
        ret = -errno;
    reap(r);
    r->out = NULL;
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY &&
        r->out_n == 0)
        return ret;
    return r->out_n;
}

/*
 * Tear down: cancel everything and reap until no SQE references our memory (or the deadline
 * passes), then destroy the ring. Conns still registered are freed (their fds belong to Python).
 * Returns the number of operations still in flight at exit (0 = everything was accounted for;
 * otherwise the buffers are leaked on purpose rather than freed under the kernel's feet).
 */
int64_t mu_ring_free(mu_ring *r, int timeout_ms)
{
    int64_t scratch[4 * 64];
    r->shutting_down = 1;
    struct io_uring_sqe *sqe = get_sqe(r);
    if (sqe != NULL) {
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
        io_uring_sqe_set_data64(sqe, MU_INTERNAL | CK_IGNORE);
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (r->inflight > 0) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (elapsed >= timeout_ms)
            break;
        mu_run(r, 1, 10 * 1000000LL, scratch, 64);
        /* anything armed after the first cancel (re-arms are blocked, but be thorough) */
        if (r->inflight > 0 && elapsed > timeout_ms / 2) {
            sqe = io_uring_get_sqe(&r->ring);
            if (sqe != NULL) {
                r->inflight++;
                io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
                io_uring_sqe_set_data64(sqe, MU_INTERNAL | CK_IGNORE);
            }
        }
    }
    int64_t left = r->inflight;
    for (uint32_t i = 0; i < r->nslots; i++) {
        mu_conn *c = r->slots[i];
        if (c == NULL)
            continue;
        if (left == 0) {
            free_queue(c);
            free(c->vec);
            free(c);
        }
        r->slots[i] = NULL;
    }
    if (left == 0) {
        ring_release(r);
    } else {
        /* the kernel may still write into bufs or read send buffers: destroy the ring (which
         * cancels and waits in the kernel) but keep the user memory mapped */
        io_uring_queue_exit(&r->ring);
        if (r->efd >= 0)
            close(r->efd);
    }
    return left;
}
