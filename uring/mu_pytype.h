/*
 * mu_pytype: the shape of the CPython types whose instances are called by the loop's
 * completion walk with one vectorcall (mu_fast's FastWriter, mu_native's Client and
 * Upstream): garbage-collected, the vectorcall slot at offsetof(STRUCT, vectorcall), the
 * usual new / dealloc / traverse / clear. One definition, so the types cannot drift apart;
 * and the one way their modules are published (mu_pytype.c).
 */
#ifndef MU_PYTYPE_H
#define MU_PYTYPE_H

#include <Python.h>
#include <stddef.h>

/* static PyTypeObject X_Type = MU_VECTORCALL_TYPE("pkg.Name", Struct, prefix, "doc");
 * with prefix_new, prefix_dealloc, prefix_traverse, prefix_clear, prefix_methods and
 * prefix_getset defined before it */
#define MU_VECTORCALL_TYPE(NAME, STRUCT, PREFIX, DOC)                                       \
    {                                                                                       \
        PyVarObject_HEAD_INIT(NULL, 0)                                                      \
        .tp_name = NAME,                                                                    \
        .tp_basicsize = sizeof(STRUCT),                                                     \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,   \
        .tp_vectorcall_offset = offsetof(STRUCT, vectorcall),                               \
        .tp_call = PyVectorcall_Call,                                                       \
        .tp_new = PREFIX##_new,                                                             \
        .tp_dealloc = (destructor)PREFIX##_dealloc,                                         \
        .tp_traverse = (traverseproc)PREFIX##_traverse,                                     \
        .tp_clear = (inquiry)PREFIX##_clear,                                                \
        .tp_methods = PREFIX##_methods,                                                     \
        .tp_getset = PREFIX##_getset,                                                       \
        .tp_doc = DOC,                                                                      \
    }

/* PREFIX_dealloc for a type whose PREFIX_clear drops all it holds */
#define MU_GC_DEALLOC(PREFIX, STRUCT)                                                       \
    static void PREFIX##_dealloc(STRUCT *o)                                                 \
    {                                                                                       \
        PyObject_GC_UnTrack(o);                                                             \
        PREFIX##_clear(o);                                                                  \
        Py_TYPE(o)->tp_free((PyObject *)o);                                                 \
    }

/* The module `def` with the n types (readied) under their names, and whatever extra(m)
 * adds (NULL: nothing), put in sys.modules under def->m_name: 0, or -1 with the exception
 * cleared. The caller holds the GIL. */
int mu_publish_module(PyModuleDef *def, PyTypeObject *const *types, const char *const *names,
                      int n, int (*extra)(PyObject *m));

#endif /* MU_PYTYPE_H */
