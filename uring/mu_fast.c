/*
 * monolake.uring fast path: two CPython C-API helpers compiled into the same cffi module and
 * published as the module ``monolake.uring._fast`` by mu_fast_install().
 *
 * Why: per request, the pure-Python path walks the completion batch in bytecode, slices the
 * arena through a memoryview and enters write() and a cffi call (which releases and retakes
 * the GIL). That was about twice uvloop's Python time per request. These helpers keep the same
 * semantics and objects (dicts, bound methods) but do that glue in C:
 *
 *   dispatch(out_addr, n, arena_addr, readers, handlers, on_reader_error)
 *       walks n events; data for a token in `readers` becomes one bytes object passed to
 *       readers[ud] (protocol.data_received), or, when readers[ud] is a 1-tuple (reader,), a
 *       read-only memoryview of the arena lent to reader for the call only (see mu_lend_end);
 *       everything else goes to handlers[ud >> 8](kind, res, flags, off). An exception from a
 *       reader is handed to on_reader_error(ud, exc) (SystemExit and KeyboardInterrupt
 *       propagate).
 *   FastWriter(conn_addr, high, owner, slow, after)
 *       a per-transport callable installed as the instance attribute `write`: a bytes write is
 *       queued with mu_conn_send directly; after(owner, n) is called when the pending total
 *       exceeds `high` or the send failed; anything else (other types, detached) goes to
 *       slow(owner, data). slow and after are plain functions (not bound methods: two fewer
 *       objects per connection).
 *       detach() must be called before the conn is freed; it also drops the references.
 *
 * Not available on PyPy or other implementations: the loop then uses its Python path.
 */
#include <Python.h>

#include "mu_fast.h"
#include "mu_lend.h"
#include "mu_pytype.h"
#include "mu_ring.h"

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    mu_conn *conn;
    long long high;
    PyObject *owner; /* the transport; slow and after are plain functions called with it first
                      * (two bound methods per conn saved: issue 16 §4) */
    PyObject *slow;
    PyObject *after;
} FastWriter;

static PyObject *fw_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                               PyObject *kwnames)
{
    FastWriter *w = (FastWriter *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (w->conn != NULL && nargs == 1 && kwnames == NULL && PyBytes_CheckExact(args[0])) {
        int64_t n = mu_conn_send(w->conn, PyBytes_AS_STRING(args[0]),
                                 (size_t)PyBytes_GET_SIZE(args[0]));
        if (n >= 0 && n <= w->high)
            Py_RETURN_NONE;
        PyObject *num = PyLong_FromLongLong((long long)n);
        if (num == NULL)
            return NULL;
        PyObject *cargs[2] = {w->owner, num};
        PyObject *r = PyObject_Vectorcall(w->after, cargs, 2, NULL);
        Py_DECREF(num);
        return r;
    }
    if (w->slow == NULL || w->owner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "transport writer detached");
        return NULL;
    }
    /* slow(owner, *args, **kwargs) */
    Py_ssize_t total = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8];
    PyObject **stack = small;
    if (total + 1 > (Py_ssize_t)(sizeof(small) / sizeof(small[0]))) {
        stack = PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
        if (stack == NULL)
            return PyErr_NoMemory();
    }
    stack[0] = w->owner;
    for (Py_ssize_t i = 0; i < total; i++)
        stack[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(w->slow, stack, (size_t)(nargs + 1), kwnames);
    if (stack != small)
        PyMem_Free(stack);
    return r;
}

static PyObject *fw_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *addr, *owner, *slow, *after;
    long long high;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "FastWriter() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OLOOO", &addr, &high, &owner, &slow, &after))
        return NULL;
    void *p = PyLong_AsVoidPtr(addr);
    if (p == NULL && PyErr_Occurred())
        return NULL;
    FastWriter *w = (FastWriter *)type->tp_alloc(type, 0);
    if (w == NULL)
        return NULL;
    w->vectorcall = fw_vectorcall;
    w->conn = (mu_conn *)p;
    w->high = high;
    Py_INCREF(owner);
    w->owner = owner;
    Py_INCREF(slow);
    w->slow = slow;
    Py_INCREF(after);
    w->after = after;
    return (PyObject *)w;
}

static int fw_traverse(FastWriter *w, visitproc visit, void *arg)
{
    Py_VISIT(w->owner);
    Py_VISIT(w->slow);
    Py_VISIT(w->after);
    return 0;
}

static int fw_clear(FastWriter *w)
{
    w->conn = NULL;
    Py_CLEAR(w->owner);
    Py_CLEAR(w->slow);
    Py_CLEAR(w->after);
    return 0;
}

MU_GC_DEALLOC(fw, FastWriter)

static PyObject *fw_detach(FastWriter *w, PyObject *Py_UNUSED(unused))
{
    /* keep `owner` and `slow` so a cached reference still reaches the transport's checks */
    w->conn = NULL;
    Py_CLEAR(w->after);
    Py_RETURN_NONE;
}

static PyObject *fw_get_high(FastWriter *w, void *Py_UNUSED(closure)) { return PyLong_FromLongLong(w->high); }

static int fw_set_high(FastWriter *w, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete high");
        return -1;
    }
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    w->high = v;
    return 0;
}

static PyObject *fw_get_attached(FastWriter *w, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(w->conn != NULL);
}

static PyMethodDef fw_methods[] = {
    {"detach", (PyCFunction)fw_detach, METH_NOARGS, "forget the conn (before it is freed)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef fw_getset[] = {
    {"high", (getter)fw_get_high, (setter)fw_set_high, "pause threshold (bytes pending)", NULL},
    {"attached", (getter)fw_get_attached, NULL, "still bound to a live conn", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FastWriter_Type = MU_VECTORCALL_TYPE(
    "monolake.uring._fast.FastWriter", FastWriter, fw,
    "transport.write for io_uring conns (see mu_fast.c)");

static PyObject *fetch_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* reader(data): data is a new bytes object, or a view lent for the call when the readers entry
 * is a 1-tuple; the call's result (NULL with an exception, or a new reference). */
static PyObject *call_reader(PyObject *reader, const char *p, Py_ssize_t n)
{
    if (PyTuple_CheckExact(reader) && PyTuple_GET_SIZE(reader) == 1) {
        PyObject *view = PyMemoryView_FromMemory((char *)p, n, PyBUF_READ);
        if (view == NULL)
            return NULL;
        PyObject *r = PyObject_CallOneArg(PyTuple_GET_ITEM(reader, 0), view);
        if (mu_lend_end(view) < 0)
            Py_CLEAR(r);
        return r;
    }
    PyObject *data = PyBytes_FromStringAndSize(p, n);
    if (data == NULL)
        return NULL;
    PyObject *r = PyObject_CallOneArg(reader, data);
    Py_DECREF(data);
    return r;
}

/* The dispatch walk shared by dispatch() and run(): 0, or -1 with an exception set. */
static int dispatch_events(const int64_t *out, Py_ssize_t n, const char *arena, PyObject *readers,
                           PyObject *handlers, PyObject *on_err)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t *e = out + 4 * i;
        uint64_t ud = (uint64_t)e[0];
        int64_t res = e[1];
        if (res > 0) {
            PyObject *key = PyLong_FromUnsignedLongLong(ud);
            if (key == NULL)
                return -1;
            PyObject *reader = PyDict_GetItemWithError(readers, key);
            Py_DECREF(key);
            if (reader != NULL) {
                Py_INCREF(reader);
                PyObject *r = call_reader(reader, arena + e[3], (Py_ssize_t)res);
                Py_DECREF(reader);
                if (r != NULL) {
                    Py_DECREF(r);
                    continue;
                }
                if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
                    PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
                    return -1;
                PyObject *exc = fetch_exception();
                PyObject *udo = PyLong_FromUnsignedLongLong(ud);
                PyObject *rr = NULL;
                if (udo != NULL && exc != NULL) {
                    PyObject *cargs[2] = {udo, exc};
                    rr = PyObject_Vectorcall(on_err, cargs, 2, NULL);
                }
                Py_XDECREF(udo);
                Py_XDECREF(exc);
                if (rr == NULL)
                    return -1;
                Py_DECREF(rr);
                continue;
            }
            if (PyErr_Occurred())
                return -1;
        }
        PyObject *tkey = PyLong_FromUnsignedLongLong(ud >> 8);
        if (tkey == NULL)
            return -1;
        PyObject *h = PyDict_GetItemWithError(handlers, tkey);
        Py_DECREF(tkey);
        if (h == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        Py_INCREF(h);
        PyObject *hargs[4];
        hargs[0] = PyLong_FromLong((long)(ud & 255));
        hargs[1] = PyLong_FromLongLong((long long)res);
        hargs[2] = PyLong_FromLongLong((long long)e[2]);
        hargs[3] = PyLong_FromLongLong((long long)e[3]);
        PyObject *r = NULL;
        if (hargs[0] && hargs[1] && hargs[2] && hargs[3])
            r = PyObject_Vectorcall(h, hargs, 4, NULL);
        for (int k = 0; k < 4; k++)
            Py_XDECREF(hargs[k]);
        Py_DECREF(h);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

static PyObject *fast_dispatch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "dispatch() takes 6 arguments");
        return NULL;
    }
    int64_t *out = (int64_t *)PyLong_AsVoidPtr(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    const char *arena = (const char *)PyLong_AsVoidPtr(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyDict_Check(args[3]) || !PyDict_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "readers and handlers must be dicts");
        return NULL;
    }
    if (dispatch_events(out, n, arena, args[3], args[4], args[5]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/*
 * run(ring_addr, wait_nr, timeout_ns, out_addr, max, arena_addr, readers, handlers, on_err)
 * One loop iteration's I/O in one call: mu_run (the GIL released only when it may sleep), then
 * the dispatch walk. Returns the number of events (already dispatched); OSError on a ring error.
 */
static PyObject *fast_run(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "run() takes 9 arguments");
        return NULL;
    }
    mu_ring *r = (mu_ring *)PyLong_AsVoidPtr(args[0]);
    int wait_nr = (int)PyLong_AsLong(args[1]);
    long long timeout_ns = PyLong_AsLongLong(args[2]);
    int64_t *out = (int64_t *)PyLong_AsVoidPtr(args[3]);
    int max = (int)PyLong_AsLong(args[4]);
    const char *arena = (const char *)PyLong_AsVoidPtr(args[5]);
    if (PyErr_Occurred())
        return NULL;
    if (r == NULL || out == NULL) {
        PyErr_SetString(PyExc_ValueError, "run() on a closed ring");
        return NULL;
    }
    if (!PyDict_Check(args[6]) || !PyDict_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError, "readers and handlers must be dicts");
        return NULL;
    }
    int n;
    if (wait_nr > 0 && timeout_ns != 0) {
        Py_BEGIN_ALLOW_THREADS
        n = mu_run(r, wait_nr, (int64_t)timeout_ns, out, max);
        Py_END_ALLOW_THREADS
    } else {
        n = mu_run(r, wait_nr, (int64_t)timeout_ns, out, max); /* no sleep: keep the GIL */
    }
    if (n < 0) {
        errno = -n;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (n > 0 && dispatch_events(out, n, arena, args[6], args[7], args[8]) < 0)
        return NULL;
    return PyLong_FromLong(n);
}

static PyMethodDef fast_methods[] = {
    {"dispatch", (PyCFunction)(void (*)(void))fast_dispatch, METH_FASTCALL,
     "dispatch(out_addr, n, arena_addr, readers, handlers, on_reader_error)"},
    {"run", (PyCFunction)(void (*)(void))fast_run, METH_FASTCALL,
     "run(ring_addr, wait_nr, timeout_ns, out_addr, max, arena_addr, readers, handlers, "
     "on_reader_error) -> events dispatched"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT, "monolake.uring._fast",
    "C glue for the io_uring loop's hot path (see mu_fast.c)", -1, fast_methods,
    NULL, NULL, NULL, NULL,
};

/* Build monolake.uring._fast and put it in sys.modules: 0, or -1 (the loop then stays on its
 * Python path). Called through cffi, which released the GIL: take it back here. */
int mu_fast_install(void)
{
    PyGILState_STATE st = PyGILState_Ensure();
    PyTypeObject *const types[1] = {&FastWriter_Type};
    const char *const names[1] = {"FastWriter"};
    int rc = mu_publish_module(&fast_module, types, names, 1, NULL);
    PyGILState_Release(st);
    return rc;
}
