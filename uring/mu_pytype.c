/*
 * mu_pytype: publishing the CPython modules of the io_uring extension (mu_fast's _fast,
 * mu_native's _native); see mu_pytype.h.
 */
#include "mu_pytype.h"

int mu_publish_module(PyModuleDef *def, PyTypeObject *const *types, const char *const *names,
                      int n, int (*extra)(PyObject *m))
{
    int rc = -1;
    PyObject *m = NULL;
    for (int i = 0; i < n; i++)
        if (PyType_Ready(types[i]) < 0)
            goto done;
    m = PyModule_Create(def);
    if (m == NULL || (extra != NULL && extra(m) < 0))
        goto done;
    for (int i = 0; i < n; i++) {
        Py_INCREF(types[i]);
        if (PyModule_AddObject(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            goto done;
        }
    }
    if (PyDict_SetItemString(PyImport_GetModuleDict(), def->m_name, m) < 0)
        goto done;
    rc = 0;
done:
    if (rc != 0)
        PyErr_Clear();
    Py_XDECREF(m);
    return rc;
}
