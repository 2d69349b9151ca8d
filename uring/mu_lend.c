/* mu_lend: taking back memory lent to Python for one call (see mu_lend.h). */
#include "mu_lend.h"

/*
 * Lent memory: a memoryview of memory that is reused once the callee returns (the provided
 * receive buffers, a parser's input). Whoever kept a reference to it is left with a released
 * view (using it raises ValueError), never with bytes that changed under it. 0, or -1 with
 * BufferError set when the callee broke the contract: the view is still exported, or a view
 * derived from it (a slice, memoryview(view)) is alive, which cannot be revoked.
 */
int mu_lend_end(PyObject *view)
{
    static PyObject *s_release;
    int rc = 0;
    if (((PyMemoryViewObject *)view)->mbuf->exports > 1) {
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        if (et == NULL)
            PyErr_SetString(PyExc_BufferError, "a memoryview lent for a call was kept after it");
        else
            PyErr_Restore(et, ev, etb);
        rc = -1;
    }
    if (Py_REFCNT(view) > 1) {
        PyObject *et, *ev, *etb;  /* the callee's own exception, if any, is the one reported */
        PyErr_Fetch(&et, &ev, &etb);
        if (s_release == NULL && (s_release = PyUnicode_InternFromString("release")) == NULL)
            rc = -1;
        PyObject *r = rc == 0 ? PyObject_CallMethodNoArgs(view, s_release) : NULL;
        if (r == NULL)
            rc = -1;
        Py_XDECREF(r);
        if (et != NULL) {
            PyErr_Clear();
            PyErr_Restore(et, ev, etb);
        }
    }
    Py_DECREF(view);
    return rc;
}

