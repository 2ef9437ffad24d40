/* weir_plugin._native: optional speedups for the worker runtime.
 *
 * Built from this file by `python -m weir_plugin.native build DIR` when the plugin host
 * prepares the venv (any C compiler the interpreter's sysconfig names will do). Nothing here
 * changes what a plugin sees; without the module the worker runs the same code paths, only
 * slower.
 *
 * Arena cache. CPython's small-object allocator takes memory from the OS in arenas (1 MiB on
 * 3.10+) and unmaps an arena as soon as its last object is freed. A WAL batch of a million
 * rows is ~400 MB of dicts, floats and ints, all freed when `process_writes` returns, so the
 * next batch maps and page-faults the same amount in again: measured on CPython 3.11, 35-40%
 * of the time to build the rows went to the kernel zeroing fresh pages. `keep_arenas(n)`
 * puts an allocator in front of the default one that keeps up to `n` bytes of freed arenas
 * mapped and hands them out again. Kept arenas are marked MADV_FREE, so the kernel can still
 * take their pages back under memory pressure (a reused arena whose pages were taken is
 * simply faulted in again).
 *
 * Row building. `wal_rows(segments)` turns WAL rows sent as columns (see `rows.py` for the
 * format) into the list of dicts `process_writes` gets, one pre-sized dict per row, with
 * floats and ints made straight from the column buffers and tag values shared. It builds
 * exactly what `rows.py`'s pure-Python decoder builds, about twice as fast as
 * `marshal.loads` builds the same dicts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* ---------------------------------------------------------------- arena cache */

#define MAX_KEPT 65536

static PyObjectArenaAllocator base_arenas;
static pthread_mutex_t arenas_lock = PTHREAD_MUTEX_INITIALIZER;
static void *kept[MAX_KEPT];
static size_t kept_size[MAX_KEPT];
static size_t n_kept = 0, kept_bytes = 0, budget = 0;
static unsigned long long reused = 0, released = 0;

static void *arena_alloc(void *ctx, size_t size) {
    (void)ctx;
    void *p = NULL;
    pthread_mutex_lock(&arenas_lock);
    for (size_t i = n_kept; i > 0; i--) {
        if (kept_size[i - 1] == size) {
            p = kept[i - 1];
            kept[i - 1] = kept[n_kept - 1];
            kept_size[i - 1] = kept_size[n_kept - 1];
            n_kept--;
            kept_bytes -= size;
            reused++;
            break;
        }
    }
    pthread_mutex_unlock(&arenas_lock);
    return p ? p : base_arenas.alloc(base_arenas.ctx, size);
}

static void arena_free(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    pthread_mutex_lock(&arenas_lock);
    if (n_kept < MAX_KEPT && kept_bytes + size <= budget) {
#ifdef MADV_FREE
        madvise(ptr, size, MADV_FREE);
#endif
        kept[n_kept] = ptr;
        kept_size[n_kept] = size;
        n_kept++;
        kept_bytes += size;
        pthread_mutex_unlock(&arenas_lock);
        return;
    }
    released++;
    pthread_mutex_unlock(&arenas_lock);
    base_arenas.free(base_arenas.ctx, ptr, size);
}

/* Give kept arenas back until at most `limit` bytes are kept. Called with the lock held. */
static void trim_to(size_t limit) {
    while (n_kept > 0 && kept_bytes > limit) {
        n_kept--;
        kept_bytes -= kept_size[n_kept];
        released++;
        base_arenas.free(base_arenas.ctx, kept[n_kept], kept_size[n_kept]);
    }
}

static PyObject *keep_arenas(PyObject *self, PyObject *arg) {
    (void)self;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "keep_arenas: the byte budget must be >= 0");
        return NULL;
    }
    pthread_mutex_lock(&arenas_lock);
    if (base_arenas.alloc == NULL) {
        /* Under the lock: two first calls at once (free-threaded builds) install it once. */
        PyObject_GetArenaAllocator(&base_arenas);
        PyObjectArenaAllocator mine = {NULL, arena_alloc, arena_free};
        PyObject_SetArenaAllocator(&mine);
    }
    budget = (size_t)n;
    trim_to(budget);
    pthread_mutex_unlock(&arenas_lock);
    Py_RETURN_NONE;
}

static PyObject *arena_stats(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    pthread_mutex_lock(&arenas_lock);
    size_t b = budget, k = kept_bytes;
    unsigned long long r = reused, f = released;
    pthread_mutex_unlock(&arenas_lock);
    return Py_BuildValue("{s:n,s:n,s:K,s:K}", "budget", (Py_ssize_t)b, "kept", (Py_ssize_t)k, "reused", r,
                         "released", f);
}

/* ---------------------------------------------------------------- row building */

/* Column kinds; the numbers are the wire format (rows.py names them). */
enum { K_F64 = 0, K_I64 = 1, K_U64 = 2, K_BOOL = 3, K_REF = 4, K_OBJ = 5 };

/* Everything the builder reads must be of the exact built-in types marshal produces (list,
 * str, int, bytes): then nothing it calls can run Python code (no __index__, __hash__ or
 * buffer hooks), so the borrowed references below stay valid while the rows are built. */
typedef struct {
    PyObject *key;          /* borrowed: an exact str */
    int kind;
    const uint8_t *present; /* one byte per row, 0 = null (key left out); NULL = all present */
    const uint8_t *data;    /* fixed-width values, or REF indices (inside a bytes object) */
    PyObject *objects;      /* borrowed: the REF values or the OBJ values (an exact list) */
} Column;

static int bad(const char *what, PyObject *name) {
    PyErr_Format(PyExc_ValueError, "wal_rows: column %R: %s", name, what);
    return -1;
}

/* Check one column description `[name, kind, present, data, values]` for `n` rows. */
static int parse_column(PyObject *desc, Py_ssize_t n, Column *c) {
    if (!PyList_CheckExact(desc) || PyList_GET_SIZE(desc) != 5) {
        PyErr_SetString(PyExc_ValueError, "wal_rows: a column is [name, kind, present, data, values]");
        return -1;
    }
    c->key = PyList_GET_ITEM(desc, 0);
    if (!PyUnicode_CheckExact(c->key))
        return bad("the name is not a str", c->key);
    PyObject *kind_obj = PyList_GET_ITEM(desc, 1);
    if (!PyLong_CheckExact(kind_obj))
        return bad("the kind is not an int", c->key);
    long kind = PyLong_AsLong(kind_obj);
    if (kind == -1 && PyErr_Occurred())
        return -1;
    if (kind < K_F64 || kind > K_OBJ)
        return bad("unknown kind", c->key);
    c->kind = (int)kind;
    PyObject *present = PyList_GET_ITEM(desc, 2), *data = PyList_GET_ITEM(desc, 3);
    PyObject *values = PyList_GET_ITEM(desc, 4);
    if (present != Py_None) {
        if (!PyBytes_CheckExact(present) || PyBytes_GET_SIZE(present) != n)
            return bad("the presence mask is not bytes with one byte per row", c->key);
        c->present = (const uint8_t *)PyBytes_AS_STRING(present);
    }
    if (c->kind == K_OBJ) {
        if (!PyList_CheckExact(data) || PyList_GET_SIZE(data) != n)
            return bad("the values are not a list with one item per row", c->key);
        c->objects = data;
        return 0;
    }
    Py_ssize_t width = c->kind == K_BOOL ? 1 : c->kind == K_REF ? 4 : 8;
    if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) % width != 0 || PyBytes_GET_SIZE(data) / width != n)
        return bad("the data is not bytes holding one value per row", c->key);
    c->data = (const uint8_t *)PyBytes_AS_STRING(data);
    if (c->kind == K_REF) {
        if (!PyList_CheckExact(values))
            return bad("the referenced values are not a list", c->key);
        c->objects = values;
        Py_ssize_t nvalues = PyList_GET_SIZE(values);
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t ix;
            memcpy(&ix, c->data + 4 * i, 4);
            if ((c->present == NULL || c->present[i]) && (Py_ssize_t)ix >= nvalues)
                return bad("a value index is out of range", c->key);
        }
    }
    return 0;
}

static PyObject *value_at(const Column *c, Py_ssize_t i) {
    PyObject *v;
    switch (c->kind) {
    case K_F64: {
        double x;
        memcpy(&x, c->data + 8 * i, 8);
        return PyFloat_FromDouble(x);
    }
    case K_I64: {
        int64_t x;
        memcpy(&x, c->data + 8 * i, 8);
        return PyLong_FromLongLong(x);
    }
    case K_U64: {
        uint64_t x;
        memcpy(&x, c->data + 8 * i, 8);
        return PyLong_FromUnsignedLongLong(x);
    }
    case K_BOOL:
        v = c->data[i] ? Py_True : Py_False;
        break;
    case K_REF: {
        uint32_t ix;
        memcpy(&ix, c->data + 4 * i, 4);
        v = PyList_GET_ITEM(c->objects, ix);
        break;
    }
    default:
        v = PyList_GET_ITEM(c->objects, i);
    }
    Py_INCREF(v);
    return v;
}

static PyObject *new_row(Py_ssize_t ncols) {
#if PY_VERSION_HEX < 0x030D0000
    return _PyDict_NewPresized(ncols);
#else
    (void)ncols;
    return PyDict_New();
#endif
}

/* Append the `n` rows of one segment's `descs` to `out` starting at `at`. */
static int build_segment(PyObject *descs, Py_ssize_t n, PyObject *out, Py_ssize_t at) {
    Py_ssize_t ncols = PyList_GET_SIZE(descs);
    Column *cols = PyMem_Calloc(ncols ? (size_t)ncols : 1, sizeof(Column));
    if (cols == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = -1;
    for (Py_ssize_t j = 0; j < ncols; j++)
        if (parse_column(PyList_GET_ITEM(descs, j), n, &cols[j]) < 0)
            goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = new_row(ncols);
        if (row == NULL)
            goto done;
        PyList_SET_ITEM(out, at + i, row);
        for (Py_ssize_t j = 0; j < ncols; j++) {
            const Column *c = &cols[j];
            if (c->present != NULL && !c->present[i])
                continue;
            PyObject *v = value_at(c, i);
            if (v == NULL)
                goto done;
            int failed = PyDict_SetItem(row, c->key, v);
            Py_DECREF(v);
            if (failed)
                goto done;
        }
    }
    rc = 0;
done:
    PyMem_Free(cols);
    return rc;
}

static PyObject *wal_rows(PyObject *self, PyObject *segments) {
    (void)self;
    if (!PyList_CheckExact(segments)) {
        PyErr_SetString(PyExc_TypeError, "wal_rows: expected a list of segments");
        return NULL;
    }
    Py_ssize_t nseg = PyList_GET_SIZE(segments);
    Py_ssize_t *counts = PyMem_Calloc(nseg ? (size_t)nseg : 1, sizeof(Py_ssize_t));
    if (counts == NULL)
        return PyErr_NoMemory();
    PyObject *out = NULL;
    Py_ssize_t total = 0;
    for (Py_ssize_t s = 0; s < nseg; s++) {
        PyObject *seg = PyList_GET_ITEM(segments, s);
        if (!PyList_CheckExact(seg) || PyList_GET_SIZE(seg) != 2 || !PyLong_CheckExact(PyList_GET_ITEM(seg, 0))
            || !PyList_CheckExact(PyList_GET_ITEM(seg, 1))) {
            PyErr_SetString(PyExc_ValueError, "wal_rows: a segment is [row count, columns]");
            goto fail;
        }
        Py_ssize_t n = PyLong_AsSsize_t(PyList_GET_ITEM(seg, 0));
        if (n == -1 && PyErr_Occurred())
            goto fail;
        if (n < 0 || n > PY_SSIZE_T_MAX / 8 - total) {
            PyErr_SetString(PyExc_ValueError, "wal_rows: a negative or impossibly large row count");
            goto fail;
        }
        counts[s] = n;
        total += n;
    }
    /* Unfilled slots are NULL, which list deallocation skips, so an error part-way is safe. */
    out = PyList_New(total);
    if (out == NULL)
        goto fail;
    /* The rows hold no containers, so no cycle can form while they are built: the collector
     * would only walk the growing list again and again (and could run finalizers). */
#if PY_VERSION_HEX >= 0x030A0000
    int collecting = PyGC_Disable();
#else
    int collecting = 0;
#endif
    Py_ssize_t at = 0;
    for (Py_ssize_t s = 0; s < nseg; s++) {
        if (build_segment(PyList_GET_ITEM(PyList_GET_ITEM(segments, s), 1), counts[s], out, at) < 0) {
            Py_CLEAR(out);
            break;
        }
        at += counts[s];
    }
#if PY_VERSION_HEX >= 0x030A0000
    if (collecting)
        PyGC_Enable();
#else
    (void)collecting;
#endif
fail:
    PyMem_Free(counts);
    return out;
}

/* ---------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"wal_rows", wal_rows, METH_O,
     "wal_rows(segments) -> list[dict]: WAL rows sent as columns, as process_writes gets them (see rows.py)."},
    {"keep_arenas", keep_arenas, METH_O,
     "keep_arenas(nbytes): keep up to nbytes of freed allocator arenas mapped for reuse (0 gives them all back)."},
    {"arena_stats", arena_stats, METH_NOARGS,
     "arena_stats() -> {budget, kept, reused, released}: the arena cache's budget and counters."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "weir_plugin._native",
                                    "Optional C speedups for the Weir worker runtime.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
