/* chainmail._sigbatch: many ed25519 verifications in one call, without the GIL.
 *
 * verify(open_address, items) calls libsodium's crypto_sign_open once per
 * item, each a (signed, public) pair of bytes: signed is signature || data,
 * public the 32-byte key. It answers with bytes of one 0 or 1 per item (1:
 * the signature verifies). The calls run with the GIL released, so verify
 * threads of one process use every core while the event loop and the writer
 * keep the interpreter; one release a batch, not one a message.
 *
 * open_address is the address of crypto_sign_open in the libsodium PyNaCl
 * loaded (keys.py reads it through cffi), so this module links against
 * nothing and calls exactly the function keys.verify_signed calls, and the
 * function chainmail bench times for the machine's ceiling. As there, the
 * call has no output buffer: libsodium then verifies without copying out.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef int (*sign_open_fn)(unsigned char *m, unsigned long long *mlen_p, const unsigned char *sm,
                            unsigned long long smlen, const unsigned char *pk);

#define SIGNATURE_BYTES 64
#define PUBLIC_BYTES 32

typedef struct {
    const unsigned char *signed_;
    Py_ssize_t size;
    const unsigned char *public_;
} Item;

PyDoc_STRVAR(verify_doc,
             "verify(open_address, items, /) -> bytes\n\n"
             "crypto_sign_open (at open_address) of each (signed, public) item, GIL released;\n"
             "one byte per item, 1 when it verifies. A signed shorter than a signature or a\n"
             "public that is not 32 bytes is 0. Raises TypeError for anything not bytes.");

static PyObject *verify(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "verify expects (open_address, items)");
        return NULL;
    }
    uintptr_t address = (uintptr_t)PyLong_AsUnsignedLongLong(args[0]);
    if (address == (uintptr_t)-1 && PyErr_Occurred()) return NULL;
    if (address == 0) {
        PyErr_SetString(PyExc_ValueError, "open_address is null");
        return NULL;
    }
    sign_open_fn sign_open = (sign_open_fn)address;
    /* A tuple of the items, this call's own: nothing else can change it while
     * the GIL is released (a list could be cleared by another thread), so it
     * keeps every pair, and every bytes object the pointers are in, alive. */
    PyObject *items = PySequence_Tuple(args[1]);
    if (items == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject **objs = &PyTuple_GET_ITEM(items, 0);
    Item *work = PyMem_New(Item, n > 0 ? n : 1);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (work == NULL || out == NULL) {
        PyMem_Free(work);
        Py_XDECREF(out);
        Py_DECREF(items);
        return work == NULL ? PyErr_NoMemory() : NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = objs[i];
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "each item must be a (signed, public) pair of bytes");
            PyMem_Free(work);
            Py_DECREF(out);
            Py_DECREF(items);
            return NULL;
        }
        PyObject *sm = PyTuple_GET_ITEM(pair, 0);
        PyObject *pk = PyTuple_GET_ITEM(pair, 1);
        work[i].signed_ = (const unsigned char *)PyBytes_AS_STRING(sm);
        work[i].size = PyBytes_GET_SIZE(sm);
        work[i].public_ = PyBytes_GET_SIZE(pk) == PUBLIC_BYTES
                              ? (const unsigned char *)PyBytes_AS_STRING(pk)
                              : NULL;
    }
    unsigned char *ok = (unsigned char *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        ok[i] = work[i].public_ != NULL && work[i].size >= SIGNATURE_BYTES &&
                sign_open(NULL, NULL, work[i].signed_, (unsigned long long)work[i].size,
                          work[i].public_) == 0;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(work);
    Py_DECREF(items);
    return out;
}

static PyMethodDef methods[] = {
    {"verify", (PyCFunction)(void (*)(void))verify, METH_FASTCALL, verify_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "chainmail._sigbatch",
    .m_doc = "Many ed25519 verifications in one call, without the GIL (see keys.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__sigbatch(void) { return PyModule_Create(&module_def); }
