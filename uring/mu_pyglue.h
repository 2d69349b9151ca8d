/*
 * mu_pyglue: the few CPython calls the native engines make from the completion walk (the
 * HTTP exchange, mu_native.c, and the Thrift relay, mu_thrift.c): one clock, one-argument
 * vectorcalls, a write through a transport's writer, a no-argument method. Static inline so
 * each unit keeps its own copy and no symbol is shared between them.
 */
#ifndef MU_PYGLUE_H
#define MU_PYGLUE_H

#include <Python.h>
#include <time.h>

/* CLOCK_MONOTONIC in seconds: the clock of time.monotonic(), which the loops' time() reads */
static inline double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline PyObject *call1(PyObject *fn, PyObject *arg)
{
    PyObject *args[1] = {arg};
    return PyObject_Vectorcall(fn, args, 1, NULL);
}

/* writer(data), the result dropped: 0, or -1 with the exception set */
static inline int write_to(PyObject *writer, PyObject *data)
{
    PyObject *r = call1(writer, data);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* obj.name() when obj is not NULL: 0, or -1 with the exception set */
static inline int call_method0(PyObject *obj, PyObject *name)
{
    if (obj == NULL)
        return 0;
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

#endif /* MU_PYGLUE_H */
