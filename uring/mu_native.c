/*
 * monolake.uring._native: the native HTTP/1.1 exchange (issue 13 §2; see mu_native.h).
 *
 * Why CPython types and not cffi callbacks: the loop's completion walk (mu_fast.c dispatch)
 * calls a connection's reader with one vectorcall. A Client or Upstream object *is* that
 * reader, so a keep-alive request served here runs no Python frame: parse (mu_nx), route
 * (mu_route), upstream head (mu_head), the writes through the transports' FastWriters, the
 * response relayed, the upstream connection put back, counters in the Engine.
 *
 * Client states:
 *   NATIVE  at a request boundary, the Python protocol idle: the next bytes are tried here
 *   BUSY    a request of ours is upstream; bytes from the client wait in `pend`
 *   PYTHON  the Python protocol owns the connection: bytes go to its data_received. It comes
 *           back (rearm) when the Python engine is idle again after a request we handed it
 *           whole (a "clean" decline: no route of ours, no idle upstream connection); after
 *           any other decline it stays Python's for good ("sticky")
 * A decline happens before any byte of the request went upstream (early: the bytes go to
 * the Python protocol as they came) or after the head went upstream but before any byte
 * reached the client (late: Engine.late gets the request, the head sent and the response
 * bytes so far, and the Python engine takes the exchange over on that same connection, see
 * worker/http/native_engine.py). Once the client has bytes of the response, C finishes it or
 * the connection is aborted, as the Python engine does mid-body.
 *
 * Upstream connections: the Python pool parks the ones C may use in Engine.idle (one list
 * per endpoint, LIFO); an Upstream is the reader of its connection while it is held here.
 * It goes back to the list only after a complete response with nothing after it and a
 * keep-alive upstream (the pool's rule, docs/http.md "Upstreams").
 */
#include <Python.h>
#include <string.h>

#include "mu_balance.h"
#include "mu_head.h"
#include "mu_native.h"
#include "mu_nx.h"
#include "mu_pyglue.h"
#include "mu_pytype.h"
#include "mu_route.h"

enum { C_NATIVE, C_BUSY, C_PYTHON, C_DEAD };

/* late decline reasons beyond the mu_nx ones */
#define LATE_EOF 100      /* the upstream closed before any response byte reached the client */
#define LATE_MIDBODY 101  /* the upstream went away mid-body: the client is aborted */
#define LATE_TIMEOUT 102  /* the upstream read timeout, nothing relayed yet */
#define LATE_BIG 103      /* a body at or above the splice threshold: Python splices it */
#define LATE_EXTRA 104    /* bytes after the whole response in the same read */
#define LATE_CLOSING 105  /* keep-alive went off (client EOF, drain) before the head went out:
                           * the Python engine writes it with its "connection: close" */
#define LATE_UPLOAD 106   /* the upstream answered while the request body was still coming:
                           * the Python engine takes the exchange and the rest of the body */

enum {
    K_REQUESTS, K_DECLINED, K_DECLINED_LATE, K_2XX, K_3XX, K_4XX, K_5XX, K_BYTES_IN,
    K_BYTES_OUT, K_UNSOLICITED, K_ABORTED, K_UPLOAD_PAUSED, K_COUNT
};
static const char *const counter_names[K_COUNT] = {
    "requests", "declined", "declined_late", "responses_2xx", "responses_3xx",
    "responses_4xx", "responses_5xx", "bytes_in", "bytes_out", "upstream_unsolicited",
    "aborted", "upload_paused",
};

/* A route of ours: its balancer (mu_balance, the table Python keeps current and the Python
 * engine also picks from, worker/http/native_balance.py) and, per balancer index, the engine
 * endpoint (idle list) and upstream head options. bal == NULL: not ours (or no longer: the
 * upstream list changed, drop_route). */
typedef struct {
    mu_balancer *bal;
    int n;                         /* the balancer's length when the engine was built */
    int *eps;                      /* eps[i]: the engine endpoint of balancer index i */
    const mu_head_upstream **hus;  /* hus[i]: its upstream head options */
    const mu_head_route *hr;
} nx_route;

typedef struct {
    PyObject_HEAD
    char *blob;
    size_t blob_len;
    int nroutes;
    nx_route *routes;
    PyObject *refs;    /* what keeps the head options alive */
    PyObject *idle;    /* tuple of lists of Upstream */
    PyObject *late;    /* late(client, upstream, reason, request, head, body_len, response, started) */
    PyObject *facts;   /* facts(proto) -> (ip, scheme) */
    double keepalive, read_timeout;
    long long max_body, collect_max, max_req_body;
    size_t max_head, max_uri;
    int max_fields;
    unsigned long long k[K_COUNT];
} Engine;

typedef struct Upstream Upstream;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Engine *eng;
    PyObject *proto, *py_reader, *writer, *reader, *transport;
    PyObject *ip, *scheme;
    int state, sticky, closing, fresh_done, head_only, wrote, paused;
    int wpaused; /* the client transport is above its high-water mark (pause_writing) */
    Upstream *up;
    mu_balancer *bal; /* the request in flight counts in bal's endpoint bal_i (least_conn) */
    int bal_i;
    PyObject *req, *head, *pend;
    long long remaining, body_len;
    long long req_left; /* request body bytes still to come from the client (an upload that
                         * spans reads: relayed upstream as they come, kept in req) */
    Py_ssize_t kept_head; /* an upload's head length in req (-1: not an upload) */
    int status;
    double started;
} Client;

struct Upstream {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Engine *eng;
    int ep;
    PyObject *conn, *writer;
    Client *client;
    char *buf;
    size_t len, cap;
    int dead, keep_alive, have_head;
    int rpaused; /* its reading paused by us: the client is not taking the body */
    int wpaused; /* its transport is above its high-water mark (the connection's
                  * pause_writing): an upload's client stops being read meanwhile */
    PyObject *coll;      /* a small body being collected whole: the client's bytes, the client
                          * head first (rs.client_len), then coll_have body bytes; buf keeps
                          * only the upstream head meanwhile */
    long long coll_have;
    mu_nx_response rs; /* the head, once it is in (have_head) */
    double since;
};

static PyTypeObject Engine_Type, Client_Type, Upstream_Type;
static PyObject *s_deadline, *s_fresh, *s_close, *s_abort, *s_close_conn, *s_pause, *s_resume,
    *s_transport, *s_peer_closed, *s_eof_received;

#define KEEP_MAX (1024 * 1024) /* an upload's body bytes kept with its request for a late
                                 * decline; past them only their count (see upload) */
#define PEND_MAX (256 * 1024) /* pipelined bytes held while a request is upstream: then the
                               * client's reading pauses, as the Python engine's queue does */

static int set_deadline(Client *c, double when)
{
    if (c->reader == NULL)
        return 0;
    PyObject *f = PyFloat_FromDouble(when);
    if (f == NULL)
        return -1;
    int rc = PyObject_SetAttr(c->reader, s_deadline, f);
    Py_DECREF(f);
    return rc;
}

/* Backpressure: the upstream connection's reading off (on = 0) while the client's transport
 * is above its high-water mark, on again when it drained, so a client that stops reading
 * never makes the worker hold more than what was read before the pause took effect. */
static int upstream_reading(Upstream *u, int on);

/* ---- Engine ----------------------------------------------------------------------------- */

static void engine_dealloc(Engine *e)
{
    PyObject_GC_UnTrack(e);
    PyMem_Free(e->blob);
    for (int i = 0; e->routes != NULL && i < e->nroutes; i++) {
        PyMem_Free(e->routes[i].eps);
        PyMem_Free(e->routes[i].hus);
    }
    PyMem_Free(e->routes);
    Py_CLEAR(e->refs);
    Py_CLEAR(e->idle);
    Py_CLEAR(e->late);
    Py_CLEAR(e->facts);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int engine_traverse(Engine *e, visitproc visit, void *arg)
{
    Py_VISIT(e->refs);
    Py_VISIT(e->idle);
    Py_VISIT(e->late);
    Py_VISIT(e->facts);
    return 0;
}

static int engine_clear(Engine *e)
{
    Py_CLEAR(e->refs);
    Py_CLEAR(e->idle);
    Py_CLEAR(e->late);
    Py_CLEAR(e->facts);
    return 0;
}

/* Engine(blob, routes, neps, late, facts,
 *        (max_head, max_uri, max_fields, max_body, collect_max, max_request_body),
 *        (keepalive, read_timeout), refs)
 * routes: a list with, per route index, None (not ours) or (balancer_addr, route_opts_addr,
 * ((ep, upstream_opts_addr), ...) per balancer index); refs: whatever owns those structs. */
static PyObject *engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_buffer blob;
    PyObject *routes, *late, *facts, *refs;
    int neps, max_fields;
    Py_ssize_t max_head, max_uri;
    long long max_body, collect_max, max_req_body;
    double keepalive, read_timeout;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Engine() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*O!iOO(nniLLL)(dd)O", &blob, &PyList_Type, &routes, &neps,
                          &late, &facts, &max_head, &max_uri, &max_fields, &max_body, &collect_max,
                          &max_req_body,
                          &keepalive, &read_timeout, &refs))
        return NULL;
    Engine *e = NULL;
    if (mu_route_check(blob.buf, (size_t)blob.len) != 0) {
        PyErr_SetString(PyExc_ValueError, "route table rejected by mu_route_check");
        goto fail;
    }
    if (neps < 0 || neps > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "bad endpoint count");
        goto fail;
    }
    e = (Engine *)type->tp_alloc(type, 0);
    if (e == NULL)
        goto fail;
    e->blob = PyMem_Malloc((size_t)blob.len + 1);
    e->nroutes = (int)PyList_GET_SIZE(routes);
    e->routes = PyMem_Calloc((size_t)e->nroutes + 1, sizeof(nx_route));
    if (e->blob == NULL || e->routes == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    memcpy(e->blob, blob.buf, (size_t)blob.len);
    e->blob_len = (size_t)blob.len;
    for (int i = 0; i < e->nroutes; i++) {
        PyObject *r = PyList_GET_ITEM(routes, i);
        if (r == Py_None)
            continue;
        PyObject *a, *b, *ups;
        if (!PyArg_ParseTuple(r, "OOO!", &a, &b, &PyTuple_Type, &ups))
            goto fail;
        void *pa = PyLong_AsVoidPtr(a), *pb = PyLong_AsVoidPtr(b);
        if (PyErr_Occurred())
            goto fail;
        Py_ssize_t n = PyTuple_GET_SIZE(ups);
        mu_balancer *bal = pa;
        if (pa == NULL || pb == NULL || n < 1 || n > 1 << 16 || (Py_ssize_t)bal->n != n) {
            PyErr_SetString(PyExc_ValueError, "bad route entry");
            goto fail;
        }
        nx_route *rt = &e->routes[i];
        rt->eps = PyMem_Calloc((size_t)n, sizeof(int));
        rt->hus = PyMem_Calloc((size_t)n, sizeof(*rt->hus));
        if (rt->eps == NULL || rt->hus == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        for (Py_ssize_t j = 0; j < n; j++) {
            int ep;
            PyObject *h;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(ups, j), "iO", &ep, &h))
                goto fail;
            void *ph = PyLong_AsVoidPtr(h);
            if (PyErr_Occurred())
                goto fail;
            if (ep < 0 || ep >= neps || ph == NULL) {
                PyErr_SetString(PyExc_ValueError, "bad route entry");
                goto fail;
            }
            rt->eps[j] = ep;
            rt->hus[j] = ph;
        }
        rt->n = (int)n;
        rt->hr = pb;
        rt->bal = bal;
    }
    e->idle = PyTuple_New(neps);
    if (e->idle == NULL)
        goto fail;
    for (int i = 0; i < neps; i++) {
        PyObject *l = PyList_New(0);
        if (l == NULL)
            goto fail;
        PyTuple_SET_ITEM(e->idle, i, l);
    }
    Py_INCREF(late);
    e->late = late;
    Py_INCREF(facts);
    e->facts = facts;
    Py_INCREF(refs);
    e->refs = refs;
    e->max_head = max_head < MU_NX_MAX_HEAD ? (size_t)max_head : MU_NX_MAX_HEAD;
    e->max_uri = (size_t)max_uri;
    e->max_fields = max_fields < MU_NX_MAX_FIELDS ? max_fields : MU_NX_MAX_FIELDS;
    e->max_body = max_body;
    e->collect_max = collect_max;
    e->max_req_body = max_req_body;
    e->keepalive = keepalive;
    e->read_timeout = read_timeout;
    PyBuffer_Release(&blob);
    return (PyObject *)e;
fail:
    PyBuffer_Release(&blob);
    Py_XDECREF(e);
    return NULL;
}

static PyObject *engine_counters(Engine *e, PyObject *Py_UNUSED(unused))
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int i = 0; i < K_COUNT; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(e->k[i]);
        if (v == NULL || PyDict_SetItemString(d, counter_names[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *engine_match(Engine *e, PyObject *args)
{
    Py_buffer path, host;
    if (!PyArg_ParseTuple(args, "y*y*", &path, &host))
        return NULL;
    int r = mu_route_match(e->blob, host.len ? host.buf : NULL, (size_t)host.len, path.buf,
                           (size_t)path.len, NULL, NULL);
    PyBuffer_Release(&path);
    PyBuffer_Release(&host);
    return PyLong_FromLong(r);
}

/* drop_route(i): route i is no longer ours (its upstream list changed: the balancer indices
 * no longer name the endpoints the engine was built with); its requests go to Python. */
static PyObject *engine_drop_route(Engine *e, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i >= 0 && i < e->nroutes)
        e->routes[i].bal = NULL;
    Py_RETURN_NONE;
}

static PyMethodDef engine_methods[] = {
    {"counters", (PyCFunction)engine_counters, METH_NOARGS, "the counters, as a dict"},
    {"drop_route", (PyCFunction)engine_drop_route, METH_O, "drop_route(i): route i is Python's"},
    {"match", (PyCFunction)engine_match, METH_VARARGS, "match(path, host) -> route index or -1"},
    {NULL, NULL, 0, NULL},
};

static PyObject *engine_get_idle(Engine *e, void *Py_UNUSED(closure))
{
    Py_INCREF(e->idle);
    return e->idle;
}

static PyObject *engine_get_ours(Engine *e, void *Py_UNUSED(closure))
{
    PyObject *t = PyTuple_New(e->nroutes);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < e->nroutes; i++)
        PyTuple_SET_ITEM(t, i, PyBool_FromLong(e->routes[i].bal != NULL));
    return t;
}

static PyGetSetDef engine_getset[] = {
    {"ours", (getter)engine_get_ours, NULL, "per route index, whether C serves it", NULL},
    {"idle", (getter)engine_get_idle, NULL, "per endpoint, the Upstreams C may use (LIFO)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Engine_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "monolake.uring._native.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = engine_new,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_traverse = (traverseproc)engine_traverse,
    .tp_clear = (inquiry)engine_clear,
    .tp_methods = engine_methods,
    .tp_getset = engine_getset,
    .tp_doc = "one server's native exchange: routes, idle upstreams, counters (mu_native.c)",
};

/* ---- the exchange ---------------------------------------------------------------------- */

/* Hand `data` to the Python protocol (the connection is Python's from here). */
static PyObject *decline(Client *c, PyObject *data, int sticky)
{
    c->state = C_PYTHON;
    c->sticky |= sticky;
    c->eng->k[K_DECLINED]++;
    return call1(c->py_reader, data);
}

/* The request in flight no longer counts in its endpoint's in-flight load (it ended, or the
 * Python engine took it over and counts it itself). */
static void bal_done(Client *c)
{
    if (c->bal != NULL) {
        mu_bal_release(c->bal, (uint32_t)c->bal_i);
        c->bal = NULL;
    }
}

/* Detach c and u from each other (each drops the reference it held on the other). */
static void unlink_pair(Client *c, Upstream *u)
{
    bal_done(c);
    c->up = NULL;
    c->req_left = 0;
    u->client = NULL;
    u->len = 0;
    u->have_head = 0;
    Py_CLEAR(u->coll);
    Py_CLEAR(c->req);
    Py_CLEAR(c->head);
    Py_DECREF(u);
    Py_DECREF(c);
}

static PyObject *client_request(Client *c, PyObject *data);

/* The client's reading follows what C holds for it: paused while more than PEND_MAX
 * pipelined bytes wait, or while an upload's upstream connection is above its high-water
 * mark (so a fast client never makes the worker hold more than one read of its body). */
static int client_reading(Client *c)
{
    int up = c->req_left > 0 && c->up != NULL && c->up->wpaused;
    int want = c->state == C_BUSY && (up || (c->pend != NULL && PyBytes_GET_SIZE(c->pend) > PEND_MAX));
    if (want == c->paused || c->transport == NULL)
        return 0;
    c->paused = want;
    if (want && up)
        c->eng->k[K_UPLOAD_PAUSED]++;
    return call_method0(c->transport, want ? s_pause : s_resume);
}

/* Bytes of the request body in flight (an upload that spans reads): the first req_left of
 * `data` go upstream as they are; returns how many were taken, or -1. The first KEEP_MAX
 * body bytes are also kept with the request: a late decline hands the Python engine the
 * request so far, whose body bytes C sent already its upstream connection skips
 * (presend_body), so past KEEP_MAX late_decline stands zeros in for them (the memory an
 * upload holds stays bounded; the Python exchange never retries a request whose body it
 * consumed, and C takes no body it would answer itself: max_body_size, splice). */
static Py_ssize_t upload(Client *c, PyObject *data)
{
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    Py_ssize_t take = (long long)n > c->req_left ? (Py_ssize_t)c->req_left : n;
    PyObject *piece = take == n ? Py_NewRef(data)
                                : PyBytes_FromStringAndSize(PyBytes_AS_STRING(data), take);
    if (piece == NULL)
        return -1;
    c->req_left -= take;
    c->body_len += take;
    c->eng->k[K_BYTES_IN] += (unsigned long long)take;
    int rc = write_to(c->up->writer, piece);
    if (rc == 0 && c->req != NULL && c->body_len - take < KEEP_MAX) {
        PyBytes_Concat(&c->req, piece);
        if (c->req == NULL)
            rc = -1;
    }
    Py_DECREF(piece);
    return rc < 0 ? -1 : take;
}

/* The request in flight is answered: the upstream goes back to the idle list (pool) or is
 * closed; the client is ready for its next request, or handed over with what waited. */
static int finish(Client *c, int pool)
{
    Upstream *u = c->up;
    Engine *e = c->eng;
    double now = now_mono();
    int rc = 0;
    int s = c->status;
    e->k[K_REQUESTS]++;
    e->k[s < 300 ? K_2XX : s < 400 ? K_3XX : s < 500 ? K_4XX : K_5XX]++;
    Py_INCREF(u);
    Py_INCREF(c);
    if (u->rpaused && !u->dead && upstream_reading(u, 1) < 0)
        rc = -1;
    if (pool && u->keep_alive && !u->dead) {
        u->since = now;
        if (PyList_Append(PyTuple_GET_ITEM(e->idle, u->ep), (PyObject *)u) < 0)
            rc = -1;
    } else if (call_method0(u->conn, s_close_conn) < 0)
        rc = -1;
    unlink_pair(c, u);
    c->state = C_NATIVE;
    if (!c->fresh_done && c->reader != NULL) {
        c->fresh_done = 1;
        if (PyObject_SetAttr(c->reader, s_fresh, Py_False) < 0)
            rc = -1;
    }
    if (set_deadline(c, now + e->keepalive) < 0)
        rc = -1;
    if (c->closing) {
        c->state = C_PYTHON;
        c->sticky = 1;
        if (c->proto != NULL && call_method0(c->proto, s_close) < 0)
            rc = -1;
    } else if (c->pend != NULL) {
        /* the next pipelined request: ours or Python's, as any other */
        PyObject *pend = c->pend;
        c->pend = NULL;
        PyObject *r = client_request(c, pend);
        Py_DECREF(pend);
        if (r == NULL)
            rc = -1;
        Py_XDECREF(r);
    }
    if (c->paused && c->state != C_BUSY) {
        c->paused = 0;
        if (c->transport != NULL && call_method0(c->transport, s_resume) < 0)
            rc = -1;
    }
    Py_DECREF(u);
    Py_DECREF(c);
    return rc;
}

/* Give the exchange to the Python engine (nothing reached the client yet), or, mid-body,
 * let it abort the client. */
static int flatten(Upstream *u);

static int late_decline(Client *c, int reason)
{
    Upstream *u = c->up;
    Engine *e = c->eng;
    if (flatten(u) < 0) /* the response bytes so far, as they came */
        return -1;
    e->k[reason == LATE_MIDBODY ? K_ABORTED : K_DECLINED_LATE]++;
    PyObject *resp = PyBytes_FromStringAndSize(u->buf, (Py_ssize_t)u->len);
    if (resp == NULL)
        return -1;
    PyObject *req = c->req, *head = c->head, *pend = c->pend;
    Py_INCREF(req);
    Py_INCREF(head);
    if (c->kept_head >= 0 && PyBytes_GET_SIZE(req) < c->kept_head + c->body_len) {
        /* an upload past KEEP_MAX: zeros stand in for the body bytes sent and not kept */
        Py_ssize_t have = PyBytes_GET_SIZE(req), want = c->kept_head + (Py_ssize_t)c->body_len;
        PyObject *full = PyBytes_FromStringAndSize(NULL, want);
        if (full != NULL) {
            memcpy(PyBytes_AS_STRING(full), PyBytes_AS_STRING(req), (size_t)have);
            memset(PyBytes_AS_STRING(full) + have, 0, (size_t)(want - have));
        }
        Py_DECREF(req);
        if (full == NULL) {
            Py_DECREF(head);
            return -1;
        }
        req = full;
    }
    c->pend = NULL;
    if (pend != NULL) { /* what the client sent meanwhile follows the request */
        PyObject *both = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(req) + PyBytes_GET_SIZE(pend));
        if (both != NULL) {
            memcpy(PyBytes_AS_STRING(both), PyBytes_AS_STRING(req), (size_t)PyBytes_GET_SIZE(req));
            memcpy(PyBytes_AS_STRING(both) + PyBytes_GET_SIZE(req), PyBytes_AS_STRING(pend),
                   (size_t)PyBytes_GET_SIZE(pend));
        }
        Py_DECREF(req);
        Py_DECREF(pend);
        req = both;
        c->sticky = 1;
    }
    if (c->paused) { /* reading paused for the pipeline held here: Python's from now on */
        c->paused = 0;
        if (c->transport != NULL && call_method0(c->transport, s_resume) < 0)
            PyErr_Clear();
    }
    PyObject *rnum = PyLong_FromLong(reason);
    PyObject *blen = PyLong_FromLongLong(c->body_len);
    PyObject *started = PyFloat_FromDouble(c->started);
    Py_INCREF(u);
    Py_INCREF(c);
    unlink_pair(c, u);
    c->state = reason == LATE_MIDBODY ? C_DEAD : C_PYTHON;
    /* a body at or above the splice threshold (LATE_BIG) is a whole response the Python
     * engine relays (spliced) as it would a chunked one: C may take the next request */
    if (reason >= LATE_EOF && reason != LATE_BIG)
        c->sticky = 1;
    PyObject *r = NULL;
    if (req != NULL && rnum != NULL && blen != NULL && started != NULL) {
        PyObject *args[8] = {(PyObject *)c, (PyObject *)u, rnum, req, head, blen, resp, started};
        r = PyObject_Vectorcall(e->late, args, 8, NULL);
    }
    Py_XDECREF(rnum);
    Py_XDECREF(blen);
    Py_XDECREF(started);
    Py_XDECREF(req);
    Py_DECREF(head);
    Py_DECREF(resp);
    Py_DECREF(u);
    Py_DECREF(c);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int take_facts(Client *c)
{
    PyObject *t = call1(c->eng->facts, c->proto);
    if (t == NULL)
        return -1;
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(t, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
        Py_DECREF(t);
        PyErr_SetString(PyExc_TypeError, "facts() must return (ip: bytes, scheme: bytes)");
        return -1;
    }
    c->ip = Py_NewRef(PyTuple_GET_ITEM(t, 0));
    c->scheme = Py_NewRef(PyTuple_GET_ITEM(t, 1));
    Py_DECREF(t);
    return 0;
}

static int rt_n(const nx_route *rt)
{
    return rt != NULL ? rt->n : 0;
}

/* A request in the NATIVE state: serve it, or decline it. */
static PyObject *client_request(Client *c, PyObject *data)
{
    Engine *e = c->eng;
    Py_buffer b;
    if (PyObject_GetBuffer(data, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    mu_nx_request rq;
    int rc = mu_nx_parse_request(b.buf, (size_t)b.len, e->max_req_body, &rq);
    if (rc == 0 && (rq.head_len > e->max_head || (int)rq.nfields > e->max_fields ||
                    rq.path_len + rq.query_len + 1 > e->max_uri))
        rc = NX_FIELDS;
    if (rc != 0) {
        PyBuffer_Release(&b);
        return decline(c, data, 1);
    }
    int r = mu_route_match(e->blob, rq.host, rq.host_len, rq.path, rq.path_len, NULL, NULL);
    nx_route *rt = r >= 0 && r < e->nroutes && e->routes[r].bal != NULL ? &e->routes[r] : NULL;
    mu_balancer *bal = rt != NULL ? rt->bal : NULL;
    /* the pick changes the balancer (position, RNG): undone when C declines after it, so
     * the Python engine's pick from the same table makes this very choice again */
    uint32_t pos0 = bal != NULL ? bal->position : 0;
    mu_rng rng0 = bal != NULL ? bal->rng : (mu_rng){0};
    int pick = bal != NULL ? mu_bal_pick(bal, now_mono(), NULL, 0) : MU_BAL_NONE;
    if (pick >= rt_n(rt))
        pick = MU_BAL_NONE;
    PyObject *list = pick >= 0 ? PyTuple_GET_ITEM(e->idle, rt->eps[pick]) : NULL;
    Upstream *u = NULL;
    while (list != NULL && PyList_GET_SIZE(list) > 0) {
        Py_ssize_t last = PyList_GET_SIZE(list) - 1;
        u = (Upstream *)Py_NewRef(PyList_GET_ITEM(list, last));
        if (PyList_SetSlice(list, last, last + 1, NULL) < 0) {
            Py_DECREF(u);
            PyBuffer_Release(&b);
            return NULL;
        }
        if (!u->dead)
            break;
        Py_CLEAR(u);
    }
    if (u == NULL) {
        PyBuffer_Release(&b);
        if (bal != NULL) {
            bal->position = pos0;
            bal->rng = rng0;
        }
        /* no route of ours, no upstream to pick (Python answers) or no idle connection to
         * it (Python connects): Python's */
        return decline(c, data, 0);
    }
    if (c->ip == NULL && take_facts(c) < 0)
        goto fail;
    mu_head_field fields[MU_NX_MAX_FIELDS];
    for (size_t i = 0; i < rq.nfields; i++) {
        fields[i].name = rq.names[i];
        fields[i].name_len = rq.name_lens[i];
        fields[i].value = rq.values[i];
        fields[i].value_len = rq.value_lens[i];
    }
    mu_head_request hrq = {rq.method, rq.method_len, rq.path, rq.path_len, rq.query,
                           rq.query_len, fields, rq.nfields, 0, 0, rq.content_length};
    size_t body = rq.total - rq.head_len;
    mu_head_conn cn = {PyBytes_AS_STRING(c->ip), (size_t)PyBytes_GET_SIZE(c->ip),
                       PyBytes_AS_STRING(c->scheme), (size_t)PyBytes_GET_SIZE(c->scheme)};
    char stack[4096];
    const mu_head_upstream *hu = rt->hus[pick];
    size_t n = mu_head_write(&hrq, rt->hr, hu, &cn, stack, sizeof stack);
    PyObject *head;
    if (n <= sizeof stack) {
        head = PyBytes_FromStringAndSize(stack, (Py_ssize_t)n);
    } else {
        head = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (head != NULL)
            mu_head_write(&hrq, rt->hr, hu, &cn, PyBytes_AS_STRING(head), n);
    }
    if (head == NULL)
        goto fail;
    PyObject *out = head; /* what goes upstream: the head, and the body after it */
    if (body > 0) {
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n + body));
        if (out == NULL) {
            Py_DECREF(head);
            goto fail;
        }
        memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(head), n);
        memcpy(PyBytes_AS_STRING(out) + n, (const char *)b.buf + rq.head_len, body);
    }
    PyObject *first = data; /* the request itself; pipelined bytes wait in pend */
    if (rq.total < (size_t)b.len) {
        first = PyBytes_FromStringAndSize(b.buf, (Py_ssize_t)rq.total);
        c->pend = first != NULL ? PyBytes_FromStringAndSize((const char *)b.buf + rq.total,
                                                            b.len - (Py_ssize_t)rq.total)
                                : NULL;
        if (c->pend == NULL) {
            Py_XDECREF(first);
            if (out != head)
                Py_DECREF(out);
            Py_DECREF(head);
            goto fail;
        }
    } else
        Py_INCREF(first);
    c->head_only = rq.method_len == 4 && memcmp(rq.method, "HEAD", 4) == 0;
    c->body_len = (long long)body;
    c->req_left = rq.body_missing;
    c->kept_head = rq.body_missing > 0 ? (Py_ssize_t)rq.head_len : -1;
    e->k[K_BYTES_IN] += (unsigned long long)rq.total;
    PyBuffer_Release(&b);
    /* linked both ways: the upstream's reference came from the idle list */
    c->up = u;
    mu_bal_acquire(bal, (uint32_t)pick);
    c->bal = bal;
    c->bal_i = pick;
    u->client = (Client *)Py_NewRef(c);
    u->len = 0;
    c->req = first;
    c->head = head;
    c->wrote = 0;
    c->state = C_BUSY;
    c->started = now_mono();
    rc = set_deadline(c, c->started + e->read_timeout) < 0 ? -1 : write_to(u->writer, out);
    if (out != head)
        Py_DECREF(out);
    if (rc < 0 || client_reading(c) < 0)
        return NULL;
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&b);
    bal->position = pos0; /* as if C had not picked */
    bal->rng = rng0;
    /* back where it was: nothing was sent on it */
    if (PyList_Append(list, (PyObject *)u) < 0) {
        Py_DECREF(u);
        return NULL;
    }
    Py_DECREF(u);
    return NULL;
}

static PyObject *client_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    Client *c = (Client *)self;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "Client(data) takes one argument");
        return NULL;
    }
    PyObject *data = args[0];
    switch (c->state) {
    case C_NATIVE:
        return client_request(c, data);
    case C_BUSY: {
        if (!PyBytes_Check(data)) {
            PyErr_SetString(PyExc_TypeError, "Client reads bytes");
            return NULL;
        }
        Py_ssize_t off = 0;
        if (c->req_left > 0) { /* the request body goes on: upstream as it comes */
            if ((off = upload(c, data)) < 0)
                return NULL;
            if (off == PyBytes_GET_SIZE(data))
                Py_RETURN_NONE;
        }
        /* the client sent more while its request is upstream: it waits for the response */
        PyObject *rest = off == 0 ? Py_NewRef(data)
                                  : PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + off,
                                                              PyBytes_GET_SIZE(data) - off);
        if (rest == NULL)
            return NULL;
        if (c->pend == NULL)
            c->pend = rest;
        else {
            PyBytes_Concat(&c->pend, rest);
            Py_DECREF(rest);
        }
        if (c->pend == NULL || client_reading(c) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    case C_PYTHON:
        return call1(c->py_reader, data);
    }
    Py_RETURN_NONE; /* dead: the connection is going */
}

/* Client(engine, proto, py_reader, writer, reader, transport) */
static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *eng, *proto, *py_reader, *writer, *reader, *transport;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Client() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!OOOOO", &Engine_Type, &eng, &proto, &py_reader, &writer,
                          &reader, &transport))
        return NULL;
    Client *c = (Client *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->vectorcall = client_vectorcall;
    c->eng = (Engine *)Py_NewRef(eng);
    c->proto = Py_NewRef(proto);
    c->py_reader = Py_NewRef(py_reader);
    c->writer = Py_NewRef(writer);
    c->reader = Py_NewRef(reader);
    c->transport = Py_NewRef(transport);
    /* the first request is Python's (the transport delivers it before the reader is ours);
     * rearm() once the Python engine is idle with nothing held */
    c->state = C_PYTHON;
    return (PyObject *)c;
}

static int client_traverse(Client *c, visitproc visit, void *arg)
{
    Py_VISIT(c->eng);
    Py_VISIT(c->proto);
    Py_VISIT(c->py_reader);
    Py_VISIT(c->writer);
    Py_VISIT(c->reader);
    Py_VISIT(c->transport);
    Py_VISIT(c->ip);
    Py_VISIT(c->scheme);
    Py_VISIT(c->up);
    Py_VISIT(c->req);
    Py_VISIT(c->head);
    Py_VISIT(c->pend);
    return 0;
}

static int client_clear(Client *c)
{
    Py_CLEAR(c->proto);
    Py_CLEAR(c->py_reader);
    Py_CLEAR(c->writer);
    Py_CLEAR(c->reader);
    Py_CLEAR(c->transport);
    Py_CLEAR(c->ip);
    Py_CLEAR(c->scheme);
    Py_CLEAR(c->up);
    Py_CLEAR(c->req);
    Py_CLEAR(c->head);
    Py_CLEAR(c->pend);
    Py_CLEAR(c->eng);
    return 0;
}

MU_GC_DEALLOC(client, Client)

/* the client connection is gone: an exchange in flight is abandoned (its upstream closed) */
static PyObject *client_lost(Client *c, PyObject *Py_UNUSED(unused))
{
    Upstream *u = c->up;
    int rc = 0;
    c->state = C_DEAD;
    if (u != NULL) {
        u->dead = 1;
        Py_INCREF(u);
        Py_INCREF(c);
        unlink_pair(c, u);
        rc = call_method0(u->conn, s_abort);
        Py_DECREF(u);
        Py_DECREF(c);
    }
    PyObject *keep = (PyObject *)c;
    Py_INCREF(keep);
    Py_CLEAR(c->pend);
    Py_CLEAR(c->proto);
    Py_CLEAR(c->py_reader);
    Py_CLEAR(c->writer);
    Py_CLEAR(c->reader);
    Py_CLEAR(c->transport);
    Py_DECREF(keep);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* the Python engine is idle again after a clean decline: the next request is tried here */
static PyObject *client_rearm(Client *c, PyObject *Py_UNUSED(unused))
{
    if (c->state == C_PYTHON && !c->sticky && !c->closing)
        c->state = C_NATIVE;
    return PyBool_FromLong(c->state == C_NATIVE);
}

/* The client sent its FIN (the transport's eof_received: close_after is also called when
 * keep-alive goes off for a drain, where an upload goes on) */
static int peer_eof(Client *c)
{
    if (c->transport == NULL)
        return 0;
    PyObject *v = PyObject_GetAttr(c->transport, s_eof_received);
    if (v == NULL) {
        PyErr_Clear();
        return 0;
    }
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (r < 0)
        PyErr_Clear();
    return r > 0;
}

/* keep-alive is off (client EOF, drain): finish what is in flight, then Python closes */
static PyObject *client_close_after(Client *c, PyObject *Py_UNUSED(unused))
{
    c->closing = 1;
    if (c->state == C_BUSY && c->req_left > 0 && c->up != NULL && peer_eof(c)) {
        /* the client ended its side mid-upload: the request can never be whole. The Python
         * engine takes the exchange (as for an early answer) and then hears of the FIN
         * (its reader's peer_closed fails the body), so it ends it as it would have */
        PyObject *reader = Py_XNewRef(c->reader);
        int rc = late_decline(c, LATE_UPLOAD);
        if (rc == 0 && reader != NULL)
            rc = call_method0(reader, s_peer_closed);
        Py_XDECREF(reader);
        if (rc < 0)
            return NULL;
        Py_RETURN_FALSE;
    }
    if (c->state == C_NATIVE) {
        c->state = C_PYTHON;
        c->sticky = 1;
    }
    return PyBool_FromLong(c->state == C_BUSY);
}

/* the upstream read timeout is due (the protocol's sweep): as the Python engine would */
static PyObject *client_timeout(Client *c, PyObject *Py_UNUSED(unused))
{
    if (c->state != C_BUSY || c->up == NULL)
        Py_RETURN_FALSE;
    if (c->up->rpaused) { /* the client is the slow side: no upstream timeout (as Python's) */
        if (set_deadline(c, now_mono() + c->eng->read_timeout) < 0)
            return NULL;
        Py_RETURN_FALSE;
    }
    if (late_decline(c, c->wrote ? LATE_MIDBODY : LATE_TIMEOUT) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* write_paused(flag): the client transport paused (True) or resumed (False) writing (the
 * protocol's pause_writing / resume_writing): mid-body, the upstream's reading follows */
static PyObject *client_write_paused(Client *c, PyObject *arg)
{
    int flag = PyObject_IsTrue(arg);
    if (flag < 0)
        return NULL;
    c->wpaused = flag;
    if (c->state == C_BUSY && c->up != NULL && c->wrote && c->remaining > 0) {
        if (upstream_reading(c->up, !flag) < 0)
            return NULL;
        if (!flag && set_deadline(c, now_mono() + c->eng->read_timeout) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *client_get_state(Client *c, void *Py_UNUSED(closure))
{
    static const char *const names[] = {"native", "busy", "python", "dead"};
    return PyUnicode_FromString(names[c->state]);
}

static PyObject *client_get_busy(Client *c, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(c->state == C_BUSY);
}

static PyObject *client_get_owned(Client *c, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(c->state == C_BUSY || c->state == C_NATIVE);
}

static PyMethodDef client_methods[] = {
    {"lost", (PyCFunction)client_lost, METH_NOARGS, "the client connection is gone"},
    {"rearm", (PyCFunction)client_rearm, METH_NOARGS, "the Python engine is idle: try C again"},
    {"close_after", (PyCFunction)client_close_after, METH_NOARGS, "no keep-alive from here"},
    {"timeout", (PyCFunction)client_timeout, METH_NOARGS, "the upstream read timeout is due"},
    {"write_paused", (PyCFunction)client_write_paused, METH_O, "the client transport paused writing"},
    {NULL, NULL, 0, NULL},
};

static PyObject *client_get_proto(Client *c, void *Py_UNUSED(closure))
{
    if (c->proto == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(c->proto);
}

static PyGetSetDef client_getset[] = {
    {"proto", (getter)client_get_proto, NULL, "the Python protocol (None once lost)", NULL},
    {"state", (getter)client_get_state, NULL, "native, busy, python or dead", NULL},
    {"busy", (getter)client_get_busy, NULL, "a request of ours is upstream", NULL},
    {"owned", (getter)client_get_owned, NULL, "C reads this connection (native or busy)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Client_Type = MU_VECTORCALL_TYPE(
    "monolake.uring._native.Client", Client, client,
    "a client connection's reader in the native exchange (mu_native.c)");

/* ---- Upstream -------------------------------------------------------------------------- */

static int upstream_reading(Upstream *u, int on)
{
    if (u->conn == NULL || u->rpaused == !on)
        return 0;
    PyObject *t = PyObject_GetAttr(u->conn, s_transport);
    if (t == NULL)
        return -1;
    int rc = t == Py_None ? 0 : call_method0(t, on ? s_resume : s_pause);
    Py_DECREF(t);
    if (rc == 0)
        u->rpaused = !on;
    return rc;
}

static int keep_bytes(Upstream *u, const char *p, size_t n)
{
    if (u->len + n > u->cap) {
        size_t cap = (u->len + n) * 2;
        char *nb = PyMem_Realloc(u->buf, cap);
        if (nb == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        u->buf = nb;
        u->cap = cap;
    }
    memcpy(u->buf + u->len, p, n);
    u->len += n;
    return 0;
}

static int relay(Client *c, const char *p, size_t n)
{
    PyObject *b = PyBytes_FromStringAndSize(p, (Py_ssize_t)n);
    if (b == NULL)
        return -1;
    c->eng->k[K_BYTES_OUT] += n;
    int rc = write_to(c->writer, b);
    Py_DECREF(b);
    return rc;
}

/* bytes of the response to the client's request in flight */
/* A collected body goes back behind the upstream head in buf (a late decline hands Python
 * the response bytes as they came). */
static int flatten(Upstream *u)
{
    if (u->coll == NULL)
        return 0;
    PyObject *coll = u->coll;
    u->coll = NULL;
    int rc = keep_bytes(u, PyBytes_AS_STRING(coll) + u->rs.client_len, (size_t)u->coll_have);
    Py_DECREF(coll);
    return rc;
}

/* bytes of the response to the client's request in flight; `obj` is the object they came in
 * (written on as it is when it is all body: no copy) */
static int upstream_response(Upstream *u, Client *c, PyObject *obj, const char *p, size_t n)
{
    Engine *e = u->eng;
    if (c->req_left > 0) { /* an answer before the whole body went up: the Python engine's */
        if (keep_bytes(u, p, n) < 0)
            return -1;
        return late_decline(c, LATE_UPLOAD);
    }
    if (c->wrote) {
        size_t take = (long long)n > c->remaining ? (size_t)c->remaining : n;
        int rc;
        if (take == n && PyBytes_CheckExact(obj)) {
            e->k[K_BYTES_OUT] += n;
            rc = write_to(c->writer, obj);
        } else
            rc = relay(c, p, take);
        if (rc < 0)
            return -1;
        c->remaining -= (long long)take;
        if (take < n) { /* bytes after the response: never pooled */
            e->k[K_UNSOLICITED]++;
            u->dead = 1;
        }
        if (c->remaining == 0)
            return finish(c, !u->dead);
        /* the upstream read timeout counts from the last byte in, as the Python client's */
        if (set_deadline(c, now_mono() + e->read_timeout) < 0)
            return -1;
        return c->wpaused ? upstream_reading(u, 0) : 0;
    }
    if (u->coll != NULL) { /* collecting a small body: straight into the client's bytes */
        const mu_nx_response *cr = &u->rs;
        if ((long long)n > cr->content_length - u->coll_have) {
            if (flatten(u) < 0 || keep_bytes(u, p, n) < 0)
                return -1;
            return late_decline(c, LATE_EXTRA);
        }
        memcpy(PyBytes_AS_STRING(u->coll) + cr->client_len + u->coll_have, p, n);
        u->coll_have += (long long)n;
        if (u->coll_have < cr->content_length)
            return 0;
        if (c->closing)
            return late_decline(c, LATE_CLOSING);
        PyObject *out = u->coll;
        u->coll = NULL;
        c->wrote = 1;
        c->status = cr->status;
        c->remaining = 0;
        u->keep_alive = cr->keep_alive;
        u->len = 0;
        u->have_head = 0;
        e->k[K_BYTES_OUT] += cr->client_len + (unsigned long long)cr->content_length;
        int rc = write_to(c->writer, out);
        Py_DECREF(out);
        return rc < 0 ? -1 : finish(c, 1);
    }
    /* the head is parsed where it is: in the read itself when nothing of it was held (the
     * common case: the read is not copied whole), else in buf, where its start waits */
    const char *base = p;
    size_t blen = n;
    if (u->len > 0) {
        if (keep_bytes(u, p, n) < 0)
            return -1;
        base = u->buf;
        blen = u->len;
    }
    int held = base == u->buf; /* buf has all the response bytes so far */
    mu_nx_response rs;
    int prc = mu_nx_parse_response(base, blen, c->head_only, &rs);
    if (prc < 0) /* the head is not all here: kept */
        return held ? 0 : keep_bytes(u, p, n);
    /* a late decline hands the Python engine the response bytes so far, from buf */
    int why = prc > 0 ? prc : rs.content_length > e->max_body ? LATE_BIG : 0;
    size_t have = blen - rs.head_len;
    if (why == 0 && (long long)have > rs.content_length)
        why = LATE_EXTRA;
    if (why != 0)
        return !held && keep_bytes(u, p, n) < 0 ? -1 : late_decline(c, why);
    if ((long long)have < rs.content_length && rs.content_length <= e->collect_max) {
        /* as the Python engine's parser: a small body is collected whole before the head
         * goes out (so an upstream that stops halfway gets a 502, not a cut response):
         * into the bytes the client gets, its head first, so the body is copied once */
        PyObject *coll = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(rs.client_len + (size_t)rs.content_length));
        if (coll == NULL)
            return -1;
        mu_nx_client_head(base, &rs, PyBytes_AS_STRING(coll));
        memcpy(PyBytes_AS_STRING(coll) + rs.client_len, base + rs.head_len, have);
        if (!held && keep_bytes(u, p, rs.head_len) < 0) { /* buf keeps the head (flatten) */
            Py_DECREF(coll);
            return -1;
        }
        u->rs = rs;
        u->have_head = 1;
        u->coll = coll;
        u->coll_have = (long long)have;
        u->len = rs.head_len;
        return 0;
    }
    if (c->closing)
        return !held && keep_bytes(u, p, n) < 0 ? -1 : late_decline(c, LATE_CLOSING);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(rs.client_len + have));
    if (out == NULL)
        return -1;
    mu_nx_client_head(base, &rs, PyBytes_AS_STRING(out));
    memcpy(PyBytes_AS_STRING(out) + rs.client_len, base + rs.head_len, have);
    c->wrote = 1;
    c->status = rs.status;
    c->remaining = rs.content_length - (long long)have;
    u->keep_alive = rs.keep_alive;
    u->len = 0;
    u->have_head = 0;
    e->k[K_BYTES_OUT] += rs.client_len + have;
    int rc = write_to(c->writer, out);
    Py_DECREF(out);
    if (rc < 0)
        return -1;
    if (c->remaining == 0)
        return finish(c, 1);
    return c->wpaused && c->up == u ? upstream_reading(u, 0) : 0;
}

static PyObject *upstream_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                     PyObject *kwnames)
{
    Upstream *u = (Upstream *)self;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "Upstream(data) takes one argument");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    Client *c = u->client;
    int rc;
    if (c == NULL) {
        /* bytes on an idle connection: the upstream is confused; never reuse it */
        u->eng->k[K_UNSOLICITED]++;
        u->dead = 1;
        rc = call_method0(u->conn, s_abort);
    } else {
        Py_INCREF(c);
        rc = upstream_response(u, c, args[0], b.buf, (size_t)b.len);
        Py_DECREF(c);
    }
    PyBuffer_Release(&b);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Upstream(engine, ep, conn, writer) */
static PyObject *upstream_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *eng, *conn, *writer;
    int ep;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Upstream() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!iOO", &Engine_Type, &eng, &ep, &conn, &writer))
        return NULL;
    if (ep < 0 || ep >= PyTuple_GET_SIZE(((Engine *)eng)->idle)) {
        PyErr_SetString(PyExc_ValueError, "no such endpoint");
        return NULL;
    }
    Upstream *u = (Upstream *)type->tp_alloc(type, 0);
    if (u == NULL)
        return NULL;
    u->vectorcall = upstream_vectorcall;
    u->eng = (Engine *)Py_NewRef(eng);
    u->ep = ep;
    u->conn = Py_NewRef(conn);
    u->writer = Py_NewRef(writer);
    u->keep_alive = 1;
    return (PyObject *)u;
}

static int upstream_traverse(Upstream *u, visitproc visit, void *arg)
{
    Py_VISIT(u->eng);
    Py_VISIT(u->conn);
    Py_VISIT(u->writer);
    Py_VISIT(u->client);
    return 0;
}

static int upstream_clear(Upstream *u)
{
    Py_CLEAR(u->coll);
    Py_CLEAR(u->conn);
    Py_CLEAR(u->writer);
    Py_CLEAR(u->client);
    Py_CLEAR(u->eng);
    return 0;
}

static void upstream_dealloc(Upstream *u)
{
    PyObject_GC_UnTrack(u);
    upstream_clear(u);
    PyMem_Free(u->buf);
    Py_TYPE(u)->tp_free((PyObject *)u);
}

/* the connection closed (the pool's forget): out of the idle list, or the exchange on it
 * ends as the Python engine's would (a retry before any response byte, an abort after) */
static PyObject *upstream_lost(Upstream *u, PyObject *Py_UNUSED(unused))
{
    u->dead = 1;
    Client *c = u->client;
    if (c != NULL) {
        Py_INCREF(c);
        int rc = late_decline(c, c->wrote ? LATE_MIDBODY : LATE_EOF);
        Py_DECREF(c);
        if (rc < 0)
            return NULL;
        Py_RETURN_TRUE;
    }
    if (u->eng != NULL) {
        PyObject *list = PyTuple_GET_ITEM(u->eng->idle, u->ep);
        for (Py_ssize_t i = PyList_GET_SIZE(list) - 1; i >= 0; i--) {
            if (PyList_GET_ITEM(list, i) == (PyObject *)u) {
                if (PyList_SetSlice(list, i, i + 1, NULL) < 0)
                    return NULL;
                break;
            }
        }
    }
    Py_RETURN_FALSE;
}

static PyObject *upstream_get_conn(Upstream *u, void *Py_UNUSED(closure))
{
    if (u->conn == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(u->conn);
}

static PyObject *upstream_get_busy(Upstream *u, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(u->client != NULL);
}

static PyObject *upstream_get_since(Upstream *u, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble(u->since);
}

static int upstream_set_since(Upstream *u, PyObject *value, void *Py_UNUSED(closure))
{
    double v = value != NULL ? PyFloat_AsDouble(value) : -1.0;
    if (v == -1.0 && (value == NULL || PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "cannot delete since");
        return -1;
    }
    u->since = v;
    return 0;
}

static PyObject *upstream_get_ep(Upstream *u, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(u->ep);
}

/* write_paused(flag): the connection's transport went above (True) or back below (False) its
 * high-water mark (its pause_writing / resume_writing): an upload's client reading follows */
static PyObject *upstream_write_paused(Upstream *u, PyObject *arg)
{
    int flag = PyObject_IsTrue(arg);
    if (flag < 0)
        return NULL;
    u->wpaused = flag;
    if (u->client != NULL && client_reading(u->client) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef upstream_methods[] = {
    {"lost", (PyCFunction)upstream_lost, METH_NOARGS, "the connection closed"},
    {"write_paused", (PyCFunction)upstream_write_paused, METH_O, "its transport paused writing"},
    {NULL, NULL, 0, NULL},
};

/* The loop lends an upstream's reads as views valid for the call (uring/transport.py): every
 * byte kept is copied here anyway (the collected body, the head, a relayed piece), so the
 * loop's own copy into a bytes object would be one more. */
static PyObject *upstream_get_lent(Upstream *Py_UNUSED(u), void *Py_UNUSED(closure))
{
    Py_RETURN_TRUE;
}

static PyGetSetDef upstream_getset[] = {
    {"reads_lent_views", (getter)upstream_get_lent, NULL, "reads come as lent views", NULL},
    {"conn", (getter)upstream_get_conn, NULL, "the pool's UpstreamConnection", NULL},
    {"busy", (getter)upstream_get_busy, NULL, "serving a request of ours", NULL},
    {"since", (getter)upstream_get_since, (setter)upstream_set_since, "monotonic time it went idle", NULL},
    {"ep", (getter)upstream_get_ep, NULL, "its endpoint index", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Upstream_Type = MU_VECTORCALL_TYPE(
    "monolake.uring._native.Upstream", Upstream, upstream,
    "a pooled upstream connection's reader in the native exchange (mu_native.c)");

/* ---- module ---------------------------------------------------------------------------- */

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "monolake.uring._native",
    "the native HTTP/1.1 exchange (see mu_native.c)", -1, NULL, NULL, NULL, NULL, NULL,
};

static int add_constants(PyObject *m)
{
    return PyModule_AddIntConstant(m, "LATE_EOF", LATE_EOF) < 0 ||
                   PyModule_AddIntConstant(m, "LATE_MIDBODY", LATE_MIDBODY) < 0 ||
                   PyModule_AddIntConstant(m, "LATE_TIMEOUT", LATE_TIMEOUT) < 0 ||
                   PyModule_AddIntConstant(m, "LATE_BIG", LATE_BIG) < 0 ||
                   PyModule_AddIntConstant(m, "LATE_EXTRA", LATE_EXTRA) < 0 ||
                   PyModule_AddIntConstant(m, "LATE_CLOSING", LATE_CLOSING) < 0 ||
                   PyModule_AddIntConstant(m, "LATE_UPLOAD", LATE_UPLOAD) < 0
               ? -1
               : 0;
}

/* Build monolake.uring._native and put it in sys.modules: 0, or -1. Called through cffi,
 * which released the GIL: take it back here. */
int mu_native_install(void)
{
    PyGILState_STATE st = PyGILState_Ensure();
    int rc = -1;
    if (s_deadline == NULL) {
        s_deadline = PyUnicode_InternFromString("deadline");
        s_fresh = PyUnicode_InternFromString("fresh");
        s_close = PyUnicode_InternFromString("_close");
        s_abort = PyUnicode_InternFromString("abort");
        s_close_conn = PyUnicode_InternFromString("close");
        s_pause = PyUnicode_InternFromString("pause_reading");
        s_resume = PyUnicode_InternFromString("resume_reading");
        s_transport = PyUnicode_InternFromString("transport");
        s_peer_closed = PyUnicode_InternFromString("peer_closed");
        s_eof_received = PyUnicode_InternFromString("_eof_received"); /* uring/transport.py */
        if (!s_deadline || !s_fresh || !s_close || !s_abort || !s_close_conn || !s_pause ||
            !s_resume || !s_transport || !s_peer_closed || !s_eof_received)
            goto done;
    }
    PyTypeObject *const types[3] = {&Engine_Type, &Client_Type, &Upstream_Type};
    const char *const names[3] = {"Engine", "Client", "Upstream"};
    rc = mu_publish_module(&native_module, types, names, 3, add_constants);
done:
    if (rc != 0)
        PyErr_Clear();
    PyGILState_Release(st);
    return rc;
}
