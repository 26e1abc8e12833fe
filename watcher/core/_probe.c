/* watcher.core._probe: AddressIndex.matches' probe loop in C, for the compact table.
 *
 * The reference is the loop in watcher/core/addresses.py (AddressIndex._matches_py): the same
 * home slot (hash(key) & mask: CPython's own keyed hash of the bytes), the same 7-bit tag, the
 * same linear probe until an empty slot, the same answer (tests/unit/test_addresses.py runs
 * both on the same tables). No I/O, no state; the table is only read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TAG_SHIFT 40
#define TAG_BITS 0x7F
#define USED_BIT 0x80

/* matches(keys, states, table, mask, size) -> list of positions, or None when a key is not
 * exactly `bytes` (a subclass could lie in __hash__ / __eq__: the caller's careful path). */
static PyObject *matches(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "matches(keys, states, table, mask, size) takes 5 arguments");
        return NULL;
    }
    PyObject *keys = args[0], *states_obj = args[1], *table_obj = args[2];
    if (!PyList_Check(keys) || !PyByteArray_Check(states_obj) || !PyByteArray_Check(table_obj)) {
        PyErr_SetString(PyExc_TypeError, "matches: keys must be a list, states and table bytearrays");
        return NULL;
    }
    Py_ssize_t mask = PyLong_AsSsize_t(args[3]);
    if (mask == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t size = PyLong_AsSsize_t(args[4]);
    if (size == -1 && PyErr_Occurred()) return NULL;
    if (mask < 0 || (mask & (mask + 1)) != 0 || size <= 0) {
        PyErr_SetString(PyExc_ValueError, "matches: mask must be 2**k - 1 and size positive");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(keys);
    for (Py_ssize_t pos = 0; pos < n; pos++) {
        if (!PyBytes_CheckExact(PyList_GET_ITEM(keys, pos))) Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    /* Nothing below runs Python code but PyList_Append (a collection could run a finalizer),
     * so the sizes are checked again at each key. */
    for (Py_ssize_t pos = 0; pos < PyList_GET_SIZE(keys); pos++) {
        PyObject *key = PyList_GET_ITEM(keys, pos);
        if (!PyBytes_CheckExact(key) || PyBytes_GET_SIZE(key) != size) continue;  /* never watched */
        if (PyByteArray_GET_SIZE(states_obj) != mask + 1 || PyByteArray_GET_SIZE(table_obj) / size != mask + 1) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_ValueError, "matches: the table is not mask + 1 slots");
            return NULL;
        }
        const uint8_t *states = (const uint8_t *)PyByteArray_AS_STRING(states_obj);
        const char *table = PyByteArray_AS_STRING(table_obj);
        Py_hash_t h = PyObject_Hash(key);
        if (h == -1 && PyErr_Occurred()) {
            Py_DECREF(out);
            return NULL;
        }
        /* Python's h & mask and (h >> 40) & 0x7f on a negative h read the same bits as these */
        size_t i = (size_t)h & (size_t)mask;
        uint8_t s = states[i];
        if (s == 0) continue;
        const uint8_t tag = (uint8_t)((((uint64_t)h >> TAG_SHIFT) & TAG_BITS) | USED_BIT);
        const char *k = PyBytes_AS_STRING(key);
        while (s != 0) {
            if (s == tag && memcmp(table + i * (size_t)size, k, (size_t)size) == 0) {
                PyObject *p = PyLong_FromSsize_t(pos);
                if (p == NULL || PyList_Append(out, p) < 0) {
                    Py_XDECREF(p);
                    Py_DECREF(out);
                    return NULL;
                }
                Py_DECREF(p);
                break;
            }
            i = (i + 1) & (size_t)mask;
            s = states[i];
        }
    }
    return out;
}

static PyMethodDef methods[] = {
    {"matches", (PyCFunction)(void (*)(void))matches, METH_FASTCALL,
     "matches(keys, states, table, mask, size) -> list[int] | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "watcher.core._probe",
    "C build of AddressIndex.matches' probe loop (see watcher/core/addresses.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__probe(void) {
    return PyModule_Create(&module);
}
