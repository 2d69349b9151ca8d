/*
 * monolake.uring._thrift: the native Thrift relay (issue 13 §2; see mu_thrift.h).
 *
 * Client states:
 *   NATIVE  the Python engine holds no partial message: the next bytes are tried here. Each
 *           whole framed CALL or ONEWAY message, routed by method name to an endpoint of C's,
 *           goes out on an idle pooled connection of that endpoint with a fresh seqid (the
 *           Python pool's rule: one more than the connection's last, 1 after 2^31-1)
 *   PYTHON  the Python engine reads the connection: bytes go to its data_received. It comes
 *           back (rearm) when the Python deframer is empty again, unless the stream turned out
 *           to be one C never takes (unframed, TTHeader: "sticky")
 *   DEAD    the client connection is gone: replies still due are dropped, as the Python engine
 *           drops them
 * A decline hands the Python engine everything from the first message C does not take to the
 * end of the read, so every byte reaches it once and in order; the messages before it are
 * already upstream, in the order they came. Several calls of one client may be upstream at
 * once (one per pooled connection, as the Python pool's idle connections are used), and the
 * Python engine may have calls of its own in flight on the same client: each reply is written
 * whole, as the Python engine writes it.
 *
 * Upstream: the reader of a pooled connection while C holds it. A reply is relayed when it is
 * one whole frame with the seqid C sent and type REPLY, and nothing follows it; the connection
 * then goes back to the idle list (LIFO). Anything else (bytes on an idle connection, a frame
 * C does not read, another seqid, an EXCEPTION message, bytes after the reply) is "late": the
 * Python glue (worker/thrift/native.py) takes the connection back with the call on it and
 * feeds it the bytes, so the Python pool decides, exactly as if it had sent the call. The
 * upstream closing and the read timeout are seen by the Python pool, which takes the
 * connection back the same way (Upstream.detach).
 */
#include <Python.h>
#include <string.h>

#include "mu_pyglue.h"
#include "mu_pytype.h"
#include "mu_thrift.h"
#include "mu_thrift_frame.h"

enum { C_NATIVE, C_PYTHON, C_DEAD };
enum { M_CALL = 1, M_REPLY = 2, M_ONEWAY = 4 };
#define MAX_SEQID 0x7FFFFFFF

/* late reasons (the Python glue names them) */
#define LATE_UNSOLICITED 1 /* bytes on an idle connection */
#define LATE_FRAME 2       /* a reply frame mu_thrift_frame does not accept */
#define LATE_EXTRA 3       /* bytes after the reply */
#define LATE_SEQID 4       /* a reply for another seqid */
#define LATE_MTYPE 5       /* not a REPLY (an EXCEPTION message, or worse) */
#define LATE_IDLE_FULL 6   /* the idle list is full: the Python pool closes it */

enum { K_REQUESTS, K_ONEWAY, K_DECLINED, K_DECLINED_LATE, K_2XX, K_BYTES_IN, K_BYTES_OUT, K_COUNT };
static const char *const counter_names[K_COUNT] = {
    "requests", "oneway", "declined", "declined_late", "responses_2xx", "bytes_in", "bytes_out",
};

typedef struct {
    PyObject_HEAD
    PyObject *routes; /* dict: method name (bytes) -> endpoint index, -1: not C's */
    int default_ep;   /* -1: not C's (or no default route) */
    int framed;       /* the server's thrift_transport is "framed" (else "auto") */
    uint32_t max_frame;
    double read_timeout;
    PyObject *idle; /* tuple of lists of Upstream */
    int *max_idle;
    int neps;
    PyObject *late; /* late(upstream, reason, data) */
    long long inflight;
    unsigned long long k[K_COUNT];
} Engine;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Engine *eng;
    PyObject *proto, *decline, *writer;
    int state, framed, sticky, closing;
    long long busy;
    double last;
} Client;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Engine *eng;
    int ep, gone, proto;
    PyObject *conn, *writer;
    Client *client; /* the call in flight, or NULL */
    PyObject *name;
    int32_t caller, sent, next_seqid;
    double deadline, since;
    char *buf;
    size_t len, cap;
} Upstream;

static PyTypeObject Engine_Type, Client_Type, Upstream_Type;
static PyObject *s_close_if_idle;

/* ---- Engine ----------------------------------------------------------------------------- */

static int engine_traverse(Engine *e, visitproc visit, void *arg)
{
    Py_VISIT(e->routes);
    Py_VISIT(e->idle);
    Py_VISIT(e->late);
    return 0;
}

static int engine_clear(Engine *e)
{
    Py_CLEAR(e->routes);
    Py_CLEAR(e->idle);
    Py_CLEAR(e->late);
    return 0;
}

static void engine_dealloc(Engine *e)
{
    PyObject_GC_UnTrack(e);
    engine_clear(e);
    PyMem_Free(e->max_idle);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

/* Engine(routes, default_ep, max_idle, framed, max_frame, read_timeout, late)
 * max_idle: a tuple with each endpoint's max_idle_per_upstream (its length: the endpoints) */
static PyObject *engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *routes, *max_idle, *late;
    int default_ep, framed;
    unsigned long max_frame;
    double read_timeout;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Engine() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!iO!pkdO", &PyDict_Type, &routes, &default_ep, &PyTuple_Type,
                          &max_idle, &framed, &max_frame, &read_timeout, &late))
        return NULL;
    Py_ssize_t neps = PyTuple_GET_SIZE(max_idle);
    if (neps > 1 << 20 || default_ep < -1 || default_ep >= neps || max_frame > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_ValueError, "bad endpoint count, default endpoint or max_frame");
        return NULL;
    }
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e == NULL)
        return NULL;
    e->max_idle = PyMem_Calloc((size_t)neps + 1, sizeof(int));
    e->idle = PyTuple_New(neps);
    if (e->max_idle == NULL || e->idle == NULL) {
        Py_DECREF(e);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < neps; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(max_idle, i));
        PyObject *l = v < 0 && PyErr_Occurred() ? NULL : PyList_New(0);
        if (l == NULL) {
            Py_DECREF(e);
            return NULL;
        }
        e->max_idle[i] = v < 0 ? 0 : v > 1 << 20 ? 1 << 20 : (int)v;
        PyTuple_SET_ITEM(e->idle, i, l);
    }
    e->neps = (int)neps;
    e->routes = Py_NewRef(routes);
    e->late = Py_NewRef(late);
    e->default_ep = default_ep;
    e->framed = framed;
    e->max_frame = (uint32_t)max_frame;
    e->read_timeout = read_timeout;
    return (PyObject *)e;
}

/* the endpoint of a method name (worker/thrift/proxy.py MethodRouter.route): the exact name,
 * then the part after the last ':' (TMultiplexedProtocol), then the default route; -1: the
 * route is not C's. -2 with an exception set. */
static int route_of(Engine *e, PyObject *name)
{
    PyObject *v = PyDict_GetItemWithError(e->routes, name);
    if (v == NULL && PyErr_Occurred())
        return -2;
    if (v == NULL) {
        const char *s = PyBytes_AS_STRING(name);
        Py_ssize_t n = PyBytes_GET_SIZE(name);
        const char *colon = n ? memrchr(s, ':', (size_t)n) : NULL;
        if (colon != NULL) {
            PyObject *bare = PyBytes_FromStringAndSize(colon + 1, n - (colon + 1 - s));
            if (bare == NULL)
                return -2;
            v = PyDict_GetItemWithError(e->routes, bare);
            Py_DECREF(bare);
            if (v == NULL && PyErr_Occurred())
                return -2;
        }
    }
    if (v == NULL)
        return e->default_ep;
    long ep = PyLong_AsLong(v);
    if (ep == -1 && PyErr_Occurred())
        return -2;
    return ep >= 0 && ep < e->neps ? (int)ep : -1;
}

static PyObject *engine_route(Engine *e, PyObject *name)
{
    if (!PyBytes_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "route(name: bytes)");
        return NULL;
    }
    int ep = route_of(e, name);
    return ep == -2 ? NULL : PyLong_FromLong(ep);
}

static PyObject *engine_counters(Engine *e, PyObject *Py_UNUSED(unused))
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int i = 0; i <= K_COUNT; i++) {
        PyObject *v = i < K_COUNT ? PyLong_FromUnsignedLongLong(e->k[i]) : PyLong_FromLongLong(e->inflight);
        if (v == NULL || PyDict_SetItemString(d, i < K_COUNT ? counter_names[i] : "inflight", v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *engine_get_idle(Engine *e, void *Py_UNUSED(closure))
{
    return Py_NewRef(e->idle);
}

static PyMethodDef engine_methods[] = {
    {"counters", (PyCFunction)engine_counters, METH_NOARGS, "the counters (and the inflight gauge)"},
    {"route", (PyCFunction)engine_route, METH_O, "route(name: bytes) -> endpoint index, -1: not C's"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef engine_getset[] = {
    {"idle", (getter)engine_get_idle, NULL, "per endpoint, the Upstreams C may use (LIFO)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Engine_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "monolake.uring._thrift.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = engine_new,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_traverse = (traverseproc)engine_traverse,
    .tp_clear = (inquiry)engine_clear,
    .tp_methods = engine_methods,
    .tp_getset = engine_getset,
    .tp_doc = "one thrift server's native relay: routes, idle upstreams, counters (mu_thrift.c)",
};

/* ---- the relay ------------------------------------------------------------------------- */

/* the Python glue takes u back (and its call, if one is on it), then reads `data` on it */
static int late(Upstream *u, int reason, PyObject *data)
{
    Engine *e = u->eng;
    e->k[K_DECLINED_LATE]++;
    PyObject *r = PyObject_CallFunction(e->late, "OiO", (PyObject *)u, reason, data);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* u is idle again: back on its list (newest last), unless the list is full */
static int repark(Upstream *u, double now)
{
    PyObject *list = PyTuple_GET_ITEM(u->eng->idle, u->ep);
    if (PyList_GET_SIZE(list) >= u->eng->max_idle[u->ep]) {
        PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
        if (empty == NULL)
            return -1;
        int rc = late(u, LATE_IDLE_FULL, empty);
        Py_DECREF(empty);
        return rc;
    }
    u->since = now;
    return PyList_Append(list, (PyObject *)u);
}

/* the newest usable idle connection of endpoint ep (a new reference), or NULL */
static Upstream *take_idle(Engine *e, int ep)
{
    PyObject *list = PyTuple_GET_ITEM(e->idle, ep);
    while (PyList_GET_SIZE(list) > 0) {
        Py_ssize_t n = PyList_GET_SIZE(list);
        Upstream *u = (Upstream *)Py_NewRef(PyList_GET_ITEM(list, n - 1));
        if (PyList_SetSlice(list, n - 1, n, NULL) < 0) {
            Py_DECREF(u);
            return NULL;
        }
        if (!u->gone && u->conn != NULL)
            return u;
        Py_DECREF(u);
    }
    return NULL;
}

/* forward the message at p on u (taken from the idle list; the reference is consumed) */
static int forward(Client *c, Upstream *u, const char *p, const mu_thrift_msg *m, PyObject *name,
                   double now)
{
    Engine *e = c->eng;
    int32_t seq = u->next_seqid < MAX_SEQID ? u->next_seqid + 1 : 1;
    u->next_seqid = seq;
    int rc = -1;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)mu_thrift_encoded_len(m, seq));
    if (out == NULL)
        goto done;
    mu_thrift_encode(p, m, seq, PyBytes_AS_STRING(out));
    e->k[K_REQUESTS]++;
    e->k[K_BYTES_IN] += m->total;
    if (m->mtype == M_CALL) {
        u->client = (Client *)Py_NewRef(c);
        Py_XSETREF(u->name, Py_NewRef(name));
        u->caller = m->seqid;
        u->proto = m->proto;
        u->sent = seq;
        u->deadline = now + e->read_timeout;
        u->len = 0;
        c->busy++;
        e->inflight++;
    }
    if (write_to(u->writer, out) < 0)
        goto done;
    if (m->mtype == M_ONEWAY) {
        e->k[K_ONEWAY]++;
        if (repark(u, now) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_XDECREF(out);
    Py_DECREF(u);
    return rc;
}

/* Hand data (from the first message C does not take) to the Python engine */
static PyObject *decline(Client *c, PyObject *data, int sticky)
{
    c->state = C_PYTHON;
    c->sticky |= sticky;
    c->eng->k[K_DECLINED]++;
    return call1(c->decline, data);
}

static PyObject *client_read(Client *c, PyObject *data, const char *buf, size_t len)
{
    Engine *e = c->eng;
    double now = c->last;
    size_t pos = 0;
    int sticky = 0;
    while (pos < len) {
        const char *p = buf + pos;
        size_t n = len - pos;
        if (!c->framed) { /* framing.py Deframer._detect, on the stream's first message */
            if (n < 6 || (unsigned char)p[0] == 0x80 || (p[4] == 0x10 && p[5] == 0x00)) {
                sticky = n >= 6 || (unsigned char)p[0] == 0x80;
                break;
            }
            c->framed = 1;
        }
        mu_thrift_msg m;
        if (mu_thrift_frame(p, n, e->max_frame, 1, &m) != MU_TH_OK)
            break;
        if (m.mtype != M_CALL && m.mtype != M_ONEWAY)
            break;
        PyObject *name = PyBytes_FromStringAndSize(p + 4 + m.name_at, m.name_len);
        if (name == NULL)
            return NULL;
        int ep = route_of(e, name);
        Upstream *u = ep >= 0 ? take_idle(e, ep) : NULL;
        if (u == NULL) {
            Py_DECREF(name);
            if (ep == -2 || PyErr_Occurred())
                return NULL;
            break;
        }
        int rc = forward(c, u, p, &m, name, now);
        Py_DECREF(name);
        if (rc < 0)
            return NULL;
        pos += m.total;
        if (c->state != C_NATIVE) /* a write closed it */
            break;
    }
    if (pos == len)
        Py_RETURN_NONE;
    if (c->state == C_DEAD)
        Py_RETURN_NONE;
    if (pos == 0)
        return decline(c, data, sticky);
    PyObject *tail = PyBytes_FromStringAndSize(buf + pos, (Py_ssize_t)(len - pos));
    if (tail == NULL)
        return NULL;
    PyObject *r = decline(c, tail, sticky);
    Py_DECREF(tail);
    return r;
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
    if (c->state == C_DEAD)
        Py_RETURN_NONE;
    c->last = now_mono();
    if (c->state != C_NATIVE)
        return call1(c->decline, data);
    Py_buffer b;
    if (PyObject_GetBuffer(data, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_INCREF(c);
    PyObject *r = client_read(c, data, b.buf, (size_t)b.len);
    Py_DECREF(c);
    PyBuffer_Release(&b);
    return r;
}

/* Client(engine, proto, decline, writer) */
static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *eng, *proto, *dec, *writer;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Client() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!OOO", &Engine_Type, &eng, &proto, &dec, &writer))
        return NULL;
    Client *c = (Client *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->vectorcall = client_vectorcall;
    c->eng = (Engine *)Py_NewRef(eng);
    c->proto = Py_NewRef(proto);
    c->decline = Py_NewRef(dec);
    c->writer = Py_NewRef(writer);
    c->framed = ((Engine *)eng)->framed;
    c->state = C_NATIVE;
    c->last = now_mono();
    return (PyObject *)c;
}

static int client_traverse(Client *c, visitproc visit, void *arg)
{
    Py_VISIT(c->eng);
    Py_VISIT(c->proto);
    Py_VISIT(c->decline);
    Py_VISIT(c->writer);
    return 0;
}

static int client_clear(Client *c)
{
    Py_CLEAR(c->proto);
    Py_CLEAR(c->decline);
    Py_CLEAR(c->writer);
    Py_CLEAR(c->eng);
    return 0;
}

static void client_dealloc(Client *c)
{
    PyObject_GC_UnTrack(c);
    client_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* the client connection is gone: replies still due are dropped when they come */
static PyObject *client_lost(Client *c, PyObject *Py_UNUSED(unused))
{
    c->state = C_DEAD;
    Py_RETURN_NONE;
}

/* the Python deframer is empty and framed: the next read is tried here */
static PyObject *client_rearm(Client *c, PyObject *Py_UNUSED(unused))
{
    if (c->state == C_PYTHON && !c->sticky && !c->closing) {
        c->state = C_NATIVE;
        c->framed = 1;
    }
    return PyBool_FromLong(c->state == C_NATIVE);
}

/* the server drains: once C's calls are answered, proto.close_if_idle() */
static PyObject *client_close_after(Client *c, PyObject *Py_UNUSED(unused))
{
    c->closing = 1;
    return PyLong_FromLongLong(c->busy);
}

static PyObject *client_get_state(Client *c, void *Py_UNUSED(closure))
{
    static const char *const names[] = {"native", "python", "dead"};
    return PyUnicode_FromString(names[c->state]);
}

static PyObject *client_get_owned(Client *c, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(c->state == C_NATIVE);
}

static PyObject *client_get_busy(Client *c, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(c->busy);
}

static PyObject *client_get_last(Client *c, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble(c->last);
}

static PyObject *client_get_framed(Client *c, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(c->framed);
}

static PyMethodDef client_methods[] = {
    {"lost", (PyCFunction)client_lost, METH_NOARGS, "the client connection is gone"},
    {"rearm", (PyCFunction)client_rearm, METH_NOARGS, "the Python deframer is empty: try C again"},
    {"close_after", (PyCFunction)client_close_after, METH_NOARGS, "close once C's calls are answered"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef client_getset[] = {
    {"state", (getter)client_get_state, NULL, "native, python or dead", NULL},
    {"owned", (getter)client_get_owned, NULL, "C reads this connection", NULL},
    {"busy", (getter)client_get_busy, NULL, "calls C sent upstream, not answered yet", NULL},
    {"last", (getter)client_get_last, NULL, "monotonic time of the last read", NULL},
    {"framed", (getter)client_get_framed, NULL, "the stream is known to be framed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Client_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "monolake.uring._thrift.Client",
    .tp_basicsize = sizeof(Client),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Client, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = client_new,
    .tp_dealloc = (destructor)client_dealloc,
    .tp_traverse = (traverseproc)client_traverse,
    .tp_clear = (inquiry)client_clear,
    .tp_methods = client_methods,
    .tp_getset = client_getset,
    .tp_doc = "a thrift client connection's reader in the native relay (mu_thrift.c)",
};

/* ---- Upstream -------------------------------------------------------------------------- */

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

/* the call on u is answered by the frame at src: relayed with the caller's seqid */
static int reply(Upstream *u, const char *src, const mu_thrift_msg *m)
{
    Engine *e = u->eng;
    Client *c = u->client;
    int rc = 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)mu_thrift_encoded_len(m, u->caller));
    if (out == NULL)
        return -1;
    mu_thrift_encode(src, m, u->caller, PyBytes_AS_STRING(out));
    u->client = NULL;
    u->len = 0;
    Py_CLEAR(u->name);
    c->busy--;
    e->inflight--;
    e->k[K_2XX]++;
    if (c->state != C_DEAD) {
        e->k[K_BYTES_OUT] += (unsigned long long)PyBytes_GET_SIZE(out);
        rc = write_to(c->writer, out);
    }
    Py_DECREF(out);
    if (rc == 0)
        rc = repark(u, now_mono());
    if (rc == 0 && c->closing && c->busy == 0 && c->state != C_DEAD && c->proto != NULL)
        rc = call_method0(c->proto, s_close_if_idle);
    Py_DECREF(c);
    return rc;
}

static int upstream_read(Upstream *u, PyObject *data, const char *p, size_t n)
{
    if (u->client == NULL)
        return late(u, LATE_UNSOLICITED, data);
    const char *src = p;
    size_t len = n;
    if (u->len) {
        if (keep_bytes(u, p, n) < 0)
            return -1;
        src = u->buf;
        len = u->len;
    }
    mu_thrift_msg m;
    int rc = mu_thrift_frame(src, len, u->eng->max_frame, 0, &m);
    int why = rc == MU_TH_INCOMPLETE ? 0
              : rc != MU_TH_OK      ? LATE_FRAME
              : m.total != len      ? LATE_EXTRA
              : m.seqid != u->sent  ? LATE_SEQID
              : m.mtype != M_REPLY  ? LATE_MTYPE
                                    : -1;
    if (why == 0)
        return src == p ? keep_bytes(u, p, n) : 0;
    if (why > 0) {
        if (src == p)
            return late(u, why, data);
        PyObject *all = PyBytes_FromStringAndSize(u->buf, (Py_ssize_t)u->len);
        if (all == NULL)
            return -1;
        u->len = 0;
        int r = late(u, why, all);
        Py_DECREF(all);
        return r;
    }
    return reply(u, src, &m);
}

static PyObject *upstream_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                     PyObject *kwnames)
{
    Upstream *u = (Upstream *)self;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "Upstream(data) takes one argument");
        return NULL;
    }
    if (u->gone || u->eng == NULL)
        Py_RETURN_NONE;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_INCREF(u);
    int rc = upstream_read(u, args[0], b.buf, (size_t)b.len);
    Py_DECREF(u);
    PyBuffer_Release(&b);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Upstream(engine, ep, conn, writer, next_seqid) */
static PyObject *upstream_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *eng, *conn, *writer;
    int ep;
    long long next;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Upstream() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!iOOL", &Engine_Type, &eng, &ep, &conn, &writer, &next))
        return NULL;
    if (ep < 0 || ep >= ((Engine *)eng)->neps || next < 0 || next > MAX_SEQID) {
        PyErr_SetString(PyExc_ValueError, "no such endpoint, or a seqid out of range");
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
    u->next_seqid = (int32_t)next;
    return (PyObject *)u;
}

static int upstream_traverse(Upstream *u, visitproc visit, void *arg)
{
    Py_VISIT(u->eng);
    Py_VISIT(u->conn);
    Py_VISIT(u->writer);
    Py_VISIT(u->client);
    Py_VISIT(u->name);
    return 0;
}

static int upstream_clear(Upstream *u)
{
    Py_CLEAR(u->conn);
    Py_CLEAR(u->writer);
    Py_CLEAR(u->client);
    Py_CLEAR(u->name);
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

/* C lets go of the connection (the Python pool takes it back): out of the idle list; the
 * call on it, if any, as (proto, caller seqid, protocol, name, sent seqid, deadline), else
 * None. Whatever of a reply was buffered is dropped: the late path passes it on itself. */
static PyObject *upstream_detach(Upstream *u, PyObject *Py_UNUSED(unused))
{
    if (u->gone || u->eng == NULL)
        Py_RETURN_NONE;
    u->gone = 1;
    u->len = 0;
    Engine *e = u->eng;
    PyObject *list = PyTuple_GET_ITEM(e->idle, u->ep);
    for (Py_ssize_t i = PyList_GET_SIZE(list) - 1; i >= 0; i--) {
        if (PyList_GET_ITEM(list, i) == (PyObject *)u) {
            if (PyList_SetSlice(list, i, i + 1, NULL) < 0)
                return NULL;
            break;
        }
    }
    Client *c = u->client;
    if (c == NULL)
        Py_RETURN_NONE;
    PyObject *name = u->name != NULL ? u->name : Py_None;
    PyObject *r = Py_BuildValue("(OiiOid)", c->proto != NULL ? c->proto : Py_None, (int)u->caller,
                                u->proto, name, (int)u->sent, u->deadline);
    if (r == NULL)
        return NULL;
    c->busy--;
    e->inflight--;
    u->client = NULL;
    Py_CLEAR(u->name);
    Py_DECREF(c);
    return r;
}

static PyObject *upstream_get_conn(Upstream *u, void *Py_UNUSED(closure))
{
    return Py_NewRef(u->conn != NULL ? u->conn : Py_None);
}

static PyObject *upstream_get_busy(Upstream *u, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(u->client != NULL);
}

static PyObject *upstream_get_deadline(Upstream *u, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble(u->deadline);
}

static PyObject *upstream_get_next_seqid(Upstream *u, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(u->next_seqid);
}

static PyObject *upstream_get_ep(Upstream *u, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(u->ep);
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

static PyMethodDef upstream_methods[] = {
    {"detach", (PyCFunction)upstream_detach, METH_NOARGS, "C lets go: the call on it, or None"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef upstream_getset[] = {
    {"conn", (getter)upstream_get_conn, NULL, "the pool's UpstreamConnection", NULL},
    {"busy", (getter)upstream_get_busy, NULL, "a call of C's is on it", NULL},
    {"deadline", (getter)upstream_get_deadline, NULL, "that call's read deadline (monotonic)", NULL},
    {"next_seqid", (getter)upstream_get_next_seqid, NULL, "the last seqid sent on it", NULL},
    {"ep", (getter)upstream_get_ep, NULL, "its endpoint index", NULL},
    {"since", (getter)upstream_get_since, (setter)upstream_set_since, "monotonic time it went idle", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Upstream_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "monolake.uring._thrift.Upstream",
    .tp_basicsize = sizeof(Upstream),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Upstream, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = upstream_new,
    .tp_dealloc = (destructor)upstream_dealloc,
    .tp_traverse = (traverseproc)upstream_traverse,
    .tp_clear = (inquiry)upstream_clear,
    .tp_methods = upstream_methods,
    .tp_getset = upstream_getset,
    .tp_doc = "a pooled thrift upstream connection's reader in the native relay (mu_thrift.c)",
};

/* ---- module ---------------------------------------------------------------------------- */

static struct PyModuleDef thrift_module = {
    PyModuleDef_HEAD_INIT, "monolake.uring._thrift",
    "the native Thrift relay (see mu_thrift.c)", -1, NULL, NULL, NULL, NULL, NULL,
};

static int add_constants(PyObject *m)
{
    static const struct {
        const char *name;
        int value;
    } consts[] = {
        {"LATE_UNSOLICITED", LATE_UNSOLICITED}, {"LATE_FRAME", LATE_FRAME},
        {"LATE_EXTRA", LATE_EXTRA},             {"LATE_SEQID", LATE_SEQID},
        {"LATE_MTYPE", LATE_MTYPE},             {"LATE_IDLE_FULL", LATE_IDLE_FULL},
    };
    for (size_t i = 0; i < sizeof(consts) / sizeof(consts[0]); i++)
        if (PyModule_AddIntConstant(m, consts[i].name, consts[i].value) < 0)
            return -1;
    return 0;
}

/* Build monolake.uring._thrift and put it in sys.modules: 0, or -1. Called through cffi,
 * which released the GIL: take it back here. */
int mu_thrift_install(void)
{
    PyGILState_STATE st = PyGILState_Ensure();
    int rc = -1;
    if (s_close_if_idle == NULL) {
        s_close_if_idle = PyUnicode_InternFromString("close_if_idle");
        if (s_close_if_idle == NULL)
            goto done;
    }
    PyTypeObject *const types[3] = {&Engine_Type, &Client_Type, &Upstream_Type};
    const char *const names[3] = {"Engine", "Client", "Upstream"};
    rc = mu_publish_module(&thrift_module, types, names, 3, add_constants);
done:
    if (rc != 0)
        PyErr_Clear();
    PyGILState_Release(st);
    return rc;
}
