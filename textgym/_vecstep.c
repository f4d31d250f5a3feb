/* textgym._vecstep: the per-step work of TextGenVectorEnv, compiled.
 *
 * A step of the batched env is a few microseconds of real work wrapped in per-call overheads: NumPy calls on
 * 64-element arrays, Python loops over the few sub-envs that end or reset, and the info arrays that Gymnasium's
 * vector layout asks for. Core does that work in two calls per step, around the feedback call, which stays in
 * Python:
 *
 *     batch = core.advance(actions)     # append the tokens; find, decode and return the episodes that ended
 *     total, parts = feedback(...)      # Python: the feedback function scores them
 *     return core.finish(total, parts)  # rewards, info columns, resets, observations
 *
 * The semantics are those of _NumpyCore in vector_env.py, which is the fallback where this module could not be
 * built and the reference that the tests compare it with (and both with SyncVectorEnv). Read that first.
 *
 * State: one token buffer per sub-env (row), the prompt's context followed by the generated tokens. Columns up to
 * `end` are in use; the observation is the last `ctx` columns and a completion the last `t - start[i]` columns.
 * When the buffer is full, the last `keep` columns move to the front.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <numpy/random/bitgen.h>
#include <stdint.h>
#include <string.h>

#define SLACK 64 /* steps between compactions of the token buffer */

enum { NEEDS_RESET, READY, ADVANCED };

typedef struct {
    PyObject_HEAD
    Py_ssize_t n, ctx, h, keep, width, n_prompts;
    int64_t eos, vocab;
    int same_step, phase;
    int64_t *buf;           /* n x width token ids */
    Py_ssize_t end;         /* columns in use */
    int64_t t;              /* steps since reset() */
    int64_t *start;         /* the step each sub-env's episode started */
    int64_t *prompt_idx;    /* each sub-env's prompt */
    double *last_reward;    /* for render(): the reward of the episode that just ended ... */
    char *has_reward;       /* ... or none since the last reset */
    Py_ssize_t *resetting;  /* next-step mode: sub-envs that ended and reset at the next step */
    Py_ssize_t n_resetting;
    char *is_resetting;
    Py_ssize_t *finished;   /* between advance() and finish(): the sub-envs whose episodes ended */
    Py_ssize_t n_finished;
    PyObject *terminated;   /* between advance() and finish() */
    PyObject *pending_prompts, *pending_completions; /* tuples */
    char *scratch;          /* decoding buffer */
    Py_ssize_t scratch_cap;
    PyObject *prompt_obs;   /* (n_prompts, ctx) int64 C-contiguous array */
    PyObject *prompts;      /* tuple of str */
    PyObject *references;   /* tuple of str, or NULL */
    PyObject *token_bytes;  /* tuple of bytes, indexed by token id */
    PyObject *bit_generators; /* tuple of the sub-envs' BitGenerator objects, kept alive for `bitgen` */
    PyObject *mask_keys;    /* feedback name -> "_" + name, made once */
    bitgen_t **bitgen;
} Core;

static PyObject *k_prompt, *k_prompt_m, *k_completion, *k_completion_m, *k_feedback, *k_feedback_m, *k_reason,
    *k_reason_m, *k_tokens, *k_tokens_m, *k_index, *k_index_m, *k_final_obs, *k_final_obs_m, *k_final_info,
    *k_final_info_m, *s_eos, *s_length, *empty_batch;

/* -- small helpers -------------------------------------------------------------------------------------------- */

/* Set d[key] = value and release value (a new reference, or NULL after an error). */
static int put(PyObject *d, PyObject *key, PyObject *value) {
    if (value == NULL) return -1;
    int r = PyDict_SetItem(d, key, value);
    Py_DECREF(value);
    return r;
}

static PyObject *zeros(Py_ssize_t n, int type) {
    npy_intp dims[1] = {n};
    return PyArray_ZEROS(1, dims, type, 0);
}

/* An object array of None, as np.empty(n, dtype=object) gives. */
static PyObject *nones(Py_ssize_t n) {
    npy_intp dims[1] = {n};
    return PyArray_EMPTY(1, dims, NPY_OBJECT, 0);
}

/* Replace element i of an object array (a new reference is taken to `value`). */
static void set_obj(PyObject *arr, Py_ssize_t i, PyObject *value) {
    PyObject **p = (PyObject **)PyArray_DATA((PyArrayObject *)arr);
    Py_INCREF(value);
    Py_SETREF(p[i], value);
}

static PyObject *mask_of(Py_ssize_t n, const Py_ssize_t *ids, Py_ssize_t k) {
    PyObject *m = zeros(n, NPY_BOOL);
    if (m == NULL) return NULL;
    npy_bool *p = (npy_bool *)PyArray_DATA((PyArrayObject *)m);
    for (Py_ssize_t j = 0; j < k; j++) p[ids[j]] = 1;
    return m;
}

/* `obj` as a 1-D C-contiguous float64 array (a new reference); the feedback's arrays usually are one already. */
static PyObject *as_doubles(PyObject *obj) {
    if (PyArray_CheckExact(obj) && PyArray_TYPE((PyArrayObject *)obj) == NPY_DOUBLE &&
        PyArray_NDIM((PyArrayObject *)obj) == 1 && PyArray_ISCARRAY_RO((PyArrayObject *)obj))
        return Py_NewRef(obj);
    return PyArray_FROMANY(obj, NPY_DOUBLE, 1, 1, NPY_ARRAY_CARRAY_RO);
}

/* A new mask of the sub-envs whose episodes ended at this step: each info key gets its own, as in SyncVectorEnv. */
static PyObject *finished_mask(Core *c) { return mask_of(c->n, c->finished, c->n_finished); }

static int64_t *row(Core *c, Py_ssize_t i) { return c->buf + i * c->width; }

/* The (n, ctx) observations: each buffer's last ctx columns. */
static PyObject *observations(Core *c) {
    npy_intp dims[2] = {c->n, c->ctx};
    PyObject *obs = PyArray_EMPTY(2, dims, NPY_INT64, 0);
    if (obs == NULL) return NULL;
    int64_t *o = (int64_t *)PyArray_DATA((PyArrayObject *)obs);
    for (Py_ssize_t i = 0; i < c->n; i++) memcpy(o + i * c->ctx, row(c, i) + c->end - c->ctx, c->ctx * sizeof(int64_t));
    return obs;
}

static void clear_pending(Core *c) {
    Py_CLEAR(c->terminated);
    Py_CLEAR(c->pending_prompts);
    Py_CLEAR(c->pending_completions);
    c->n_finished = 0;
}

/* Decode sub-env i's last `len` tokens: the byte-level tokens' bytes joined, then UTF-8 with U+FFFD for invalid
 * bytes, exactly as TextTokenizer.decode. */
static PyObject *decode(Core *c, Py_ssize_t i, Py_ssize_t len) {
    const int64_t *ids = row(c, i) + c->end - len;
    Py_ssize_t total = 0;
    for (Py_ssize_t j = 0; j < len; j++) total += PyBytes_GET_SIZE(PyTuple_GET_ITEM(c->token_bytes, ids[j]));
    if (total > c->scratch_cap) {
        char *p = PyMem_Realloc(c->scratch, total);
        if (p == NULL) return PyErr_NoMemory();
        c->scratch = p;
        c->scratch_cap = total;
    }
    char *out = c->scratch;
    for (Py_ssize_t j = 0; j < len; j++) {
        PyObject *b = PyTuple_GET_ITEM(c->token_bytes, ids[j]);
        memcpy(out, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
        out += PyBytes_GET_SIZE(b);
    }
    return PyUnicode_DecodeUTF8(c->scratch, total, "replace");
}

/* "_" + name, the key of a feedback component's mask; the names repeat at every step. */
static PyObject *mask_key(Core *c, PyObject *name) {
    PyObject *key = PyDict_GetItemWithError(c->mask_keys, name);
    if (key != NULL) return Py_NewRef(key);
    if (PyErr_Occurred()) return NULL;
    key = PyUnicode_FromFormat("_%U", name);
    if (key != NULL && PyDict_SetItem(c->mask_keys, name, key) < 0) Py_CLEAR(key);
    return key;
}

/* Start new episodes in sub-envs ids[0..k): a prompt each from the sub-env's own generator, drawn as
 * TextTask.draw_prompt draws it (floor(u * n_prompts) of one rng.random()), its context in the buffer, and the
 * reset info (prompt, prompt_index), joining a "prompt" column that the finished episodes may have started. */
static int reset_envs(Core *c, const Py_ssize_t *ids, Py_ssize_t k, PyObject *infos) {
    PyObject *prompt_col = PyDict_GetItemWithError(infos, k_prompt); /* borrowed */
    if (prompt_col == NULL) {
        if (PyErr_Occurred()) return -1;
        if (put(infos, k_prompt, nones(c->n)) < 0 || put(infos, k_prompt_m, zeros(c->n, NPY_BOOL)) < 0) return -1;
        prompt_col = PyDict_GetItem(infos, k_prompt);
    }
    npy_bool *prompt_mask = PyArray_DATA((PyArrayObject *)PyDict_GetItem(infos, k_prompt_m));
    PyObject *index_col = zeros(c->n, NPY_INT64);
    if (put(infos, k_index, index_col) < 0) return -1;
    if (put(infos, k_index_m, mask_of(c->n, ids, k)) < 0) return -1;
    int64_t *index = PyArray_DATA((PyArrayObject *)index_col); /* the dict holds it */
    const int64_t *contexts = PyArray_DATA((PyArrayObject *)c->prompt_obs);
    for (Py_ssize_t m = 0; m < k; m++) {
        Py_ssize_t i = ids[m];
        bitgen_t *g = c->bitgen[i];
        int64_t j = (int64_t)(g->next_double(g->state) * (double)c->n_prompts);
        if (j > c->n_prompts - 1) j = c->n_prompts - 1;
        memcpy(row(c, i) + c->end - c->ctx, contexts + j * c->ctx, c->ctx * sizeof(int64_t));
        set_obj(prompt_col, i, PyTuple_GET_ITEM(c->prompts, j));
        prompt_mask[i] = 1;
        index[i] = c->prompt_idx[i] = j;
        c->start[i] = c->t;
        c->has_reward[i] = 0;
    }
    return 0;
}

/* The finished episodes' final infos in the layout of VectorEnv._add_info: infos[key][i] and an infos["_" + key]
 * mask, for the keys of Scored.info (prompt, completion, feedback, finish_reason, completion_tokens). */
static int put_final(Core *c, PyObject *infos, PyObject *parts) {
    Py_ssize_t n = c->n, k = c->n_finished;
    PyObject *prompt, *completion, *reason, *tokens; /* each held by `infos` once put there */
    if (put(infos, k_prompt, prompt = nones(n)) < 0 || put(infos, k_completion, completion = nones(n)) < 0 ||
        put(infos, k_reason, reason = nones(n)) < 0 || put(infos, k_tokens, tokens = zeros(n, NPY_INT64)) < 0)
        return -1;
    int64_t *tok = PyArray_DATA((PyArrayObject *)tokens);
    for (Py_ssize_t j = 0; j < k; j++) {
        Py_ssize_t i = c->finished[j];
        int64_t len = c->t - c->start[i];
        set_obj(prompt, i, PyTuple_GET_ITEM(c->pending_prompts, j));
        set_obj(completion, i, PyTuple_GET_ITEM(c->pending_completions, j));
        set_obj(reason, i, len > 0 && row(c, i)[c->end - 1] == c->eos ? s_eos : s_length);
        tok[i] = len;
    }
    PyObject *feedback = PyDict_New();
    if (put(infos, k_feedback, feedback) < 0) return -1;
    PyObject *name, *values;
    Py_ssize_t pos = 0;
    while (PyDict_Next(parts, &pos, &name, &values)) {
        if (!PyUnicode_Check(name)) {
            PyErr_Format(PyExc_TypeError, "feedback names must be str, got %R", name);
            return -1;
        }
        PyObject *v = as_doubles(values);
        if (v == NULL) return -1;
        if (PyArray_DIM((PyArrayObject *)v, 0) != k) {
            PyErr_Format(PyExc_ValueError, "feedback %R has %zd values for %zd episodes",
                         name, (Py_ssize_t)PyArray_DIM((PyArrayObject *)v, 0), k);
            Py_DECREF(v);
            return -1;
        }
        PyObject *col = zeros(n, NPY_DOUBLE), *key = mask_key(c, name);
        if (col == NULL || key == NULL || PyDict_SetItem(feedback, name, col) < 0) {
            Py_XDECREF(col);
            Py_XDECREF(key);
            Py_DECREF(v);
            return -1;
        }
        const double *src = PyArray_DATA((PyArrayObject *)v);
        double *dst = PyArray_DATA((PyArrayObject *)col);
        for (Py_ssize_t j = 0; j < k; j++) dst[c->finished[j]] = src[j];
        Py_DECREF(col);
        Py_DECREF(v);
        int r = put(feedback, key, finished_mask(c));
        Py_DECREF(key);
        if (r < 0) return -1;
    }
    if (PyErr_Occurred()) return -1;
    if (put(infos, k_prompt_m, finished_mask(c)) < 0 || put(infos, k_completion_m, finished_mask(c)) < 0 ||
        put(infos, k_feedback_m, finished_mask(c)) < 0 || put(infos, k_reason_m, finished_mask(c)) < 0 ||
        put(infos, k_tokens_m, finished_mask(c)) < 0)
        return -1;
    return 0;
}

/* -- the type ------------------------------------------------------------------------------------------------- */

static void Core_dealloc(Core *c) {
    clear_pending(c);
    Py_XDECREF(c->prompt_obs);
    Py_XDECREF(c->prompts);
    Py_XDECREF(c->references);
    Py_XDECREF(c->token_bytes);
    Py_XDECREF(c->bit_generators);
    Py_XDECREF(c->mask_keys);
    void *blocks[] = {c->buf, c->start, c->prompt_idx, c->last_reward, c->has_reward, c->resetting,
                      c->is_resetting, c->finished, c->scratch, c->bitgen};
    for (size_t j = 0; j < sizeof(blocks) / sizeof(blocks[0]); j++) PyMem_Free(blocks[j]);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static int Core_init(Core *c, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"num_envs", "context_len", "max_new_tokens", "eos_id", "vocab_size", "prompt_obs",
                             "prompts", "references", "token_bytes", "same_step", NULL};
    Py_ssize_t n, ctx, h;
    long long eos, vocab;
    PyObject *prompt_obs, *prompts, *references, *token_bytes;
    int same_step;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnnLLOOOOp", kwlist, &n, &ctx, &h, &eos, &vocab, &prompt_obs,
                                     &prompts, &references, &token_bytes, &same_step))
        return -1;
    if (c->buf != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Core is initialised once");
        return -1;
    }
    if (n < 1 || ctx < 1 || h < 1) {
        PyErr_Format(PyExc_ValueError, "num_envs, context_len and max_new_tokens must be >= 1, got %zd, %zd, %zd",
                     n, ctx, h);
        return -1;
    }
    c->prompt_obs = PyArray_FROMANY(prompt_obs, NPY_INT64, 2, 2, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_ENSURECOPY);
    if (c->prompt_obs == NULL) return -1;
    c->prompts = PySequence_Tuple(prompts);
    c->token_bytes = PySequence_Tuple(token_bytes);
    c->references = references == Py_None ? NULL : PySequence_Tuple(references);
    if (c->prompts == NULL || c->token_bytes == NULL || (references != Py_None && c->references == NULL)) return -1;
    c->n_prompts = PyTuple_GET_SIZE(c->prompts);
    if (c->n_prompts < 1 || PyArray_DIM((PyArrayObject *)c->prompt_obs, 0) != c->n_prompts ||
        PyArray_DIM((PyArrayObject *)c->prompt_obs, 1) != ctx ||
        (c->references != NULL && PyTuple_GET_SIZE(c->references) != c->n_prompts)) {
        PyErr_SetString(PyExc_ValueError, "prompt_obs must be (len(prompts), context_len), references one per prompt");
        return -1;
    }
    if (PyTuple_GET_SIZE(c->token_bytes) != vocab) {
        PyErr_SetString(PyExc_ValueError, "token_bytes must hold one bytes object per token id");
        return -1;
    }
    for (Py_ssize_t j = 0; j < c->n_prompts; j++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(c->prompts, j)) ||
            (c->references != NULL && !PyUnicode_Check(PyTuple_GET_ITEM(c->references, j)))) {
            PyErr_SetString(PyExc_TypeError, "prompts and references must be str");
            return -1;
        }
    }
    for (Py_ssize_t j = 0; j < vocab; j++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(c->token_bytes, j))) {
            PyErr_SetString(PyExc_TypeError, "token_bytes must be bytes objects");
            return -1;
        }
    }
    c->n = n;
    c->ctx = ctx;
    c->h = h;
    c->eos = eos;
    c->vocab = vocab;
    c->same_step = same_step;
    c->keep = ctx > h ? ctx : h;
    c->width = c->keep + SLACK;
    c->buf = PyMem_Calloc(n * c->width, sizeof(int64_t));
    c->start = PyMem_Calloc(n, sizeof(int64_t));
    c->prompt_idx = PyMem_Calloc(n, sizeof(int64_t));
    c->last_reward = PyMem_Calloc(n, sizeof(double));
    c->has_reward = PyMem_Calloc(n, 1);
    c->resetting = PyMem_Calloc(n, sizeof(Py_ssize_t));
    c->is_resetting = PyMem_Calloc(n, 1);
    c->finished = PyMem_Calloc(n, sizeof(Py_ssize_t));
    c->bitgen = PyMem_Calloc(n, sizeof(bitgen_t *));
    if (!c->buf || !c->start || !c->prompt_idx || !c->last_reward || !c->has_reward || !c->resetting ||
        !c->is_resetting || !c->finished || !c->bitgen) {
        PyErr_NoMemory();
        return -1;
    }
    if ((c->mask_keys = PyDict_New()) == NULL) return -1;
    c->end = c->keep;
    c->phase = NEEDS_RESET;
    return 0;
}

PyDoc_STRVAR(reset_doc, "reset(generators) -> (obs, infos): new episodes in all sub-envs, prompts drawn from the "
                        "given numpy Generators (one per sub-env, used from now on).");

static PyObject *Core_reset(Core *c, PyObject *generators) {
    if (c->buf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Core.__init__() was not called");
        return NULL;
    }
    PyObject *gens = PySequence_Tuple(generators);
    if (gens == NULL) return NULL;
    if (PyTuple_GET_SIZE(gens) != c->n) {
        PyErr_Format(PyExc_ValueError, "need %zd generators, got %zd", c->n, PyTuple_GET_SIZE(gens));
        Py_DECREF(gens);
        return NULL;
    }
    PyObject *bits = PyTuple_New(c->n);
    if (bits == NULL) {
        Py_DECREF(gens);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < c->n; i++) {
        PyObject *bg = PyObject_GetAttrString(PyTuple_GET_ITEM(gens, i), "bit_generator");
        PyObject *capsule = bg ? PyObject_GetAttrString(bg, "capsule") : NULL;
        bitgen_t *p = capsule ? PyCapsule_GetPointer(capsule, "BitGenerator") : NULL;
        Py_XDECREF(capsule);
        if (p == NULL) {
            Py_XDECREF(bg);
            Py_DECREF(gens);
            Py_DECREF(bits);
            return NULL;
        }
        PyTuple_SET_ITEM(bits, i, bg); /* steals: keeps the BitGenerator, which owns *p, alive */
        c->bitgen[i] = p;
    }
    Py_DECREF(gens);
    Py_XSETREF(c->bit_generators, bits);
    c->phase = NEEDS_RESET; /* until this reset has succeeded */
    clear_pending(c);
    memset(c->is_resetting, 0, c->n);
    c->n_resetting = 0;
    c->t = 0;
    c->end = c->keep;
    PyObject *infos = PyDict_New();
    if (infos == NULL) return NULL;
    for (Py_ssize_t i = 0; i < c->n; i++) c->finished[i] = i; /* scratch: all sub-envs */
    if (reset_envs(c, c->finished, c->n, infos) < 0) {
        Py_DECREF(infos);
        return NULL;
    }
    PyObject *obs = observations(c);
    if (obs == NULL) {
        Py_DECREF(infos);
        return NULL;
    }
    c->phase = READY;
    return Py_BuildValue("(NN)", obs, infos);
}

PyDoc_STRVAR(advance_doc,
             "advance(actions) -> (prompts, completions, references) | None\n\n"
             "Append one token per sub-env and return the episodes that ended (empty lists when none did; "
             "references is None without references). None, with nothing changed, when `actions` is not a "
             "(num_envs,) int64 array of ids in the vocabulary: the caller converts it or names the error.");

static PyObject *Core_advance(Core *c, PyObject *actions) {
    if (c->phase != READY) {
        PyErr_SetString(PyExc_RuntimeError,
                        c->phase == NEEDS_RESET ? "Core.advance() before reset()"
                                                : "Core.advance() before finish(): the last step failed half-way, reset");
        return NULL;
    }
    if (!PyArray_Check(actions)) Py_RETURN_NONE;
    PyArrayObject *a = (PyArrayObject *)actions;
    if (PyArray_NDIM(a) != 1 || PyArray_DIM(a, 0) != c->n || !PyArray_ISINTEGER(a) || !PyArray_ISSIGNED(a) ||
        PyArray_ITEMSIZE(a) != 8 || !PyArray_ISNOTSWAPPED(a) || !PyArray_ISALIGNED(a))
        Py_RETURN_NONE;
    const char *data = PyArray_BYTES(a);
    npy_intp stride = PyArray_STRIDE(a, 0);
    for (Py_ssize_t i = 0; i < c->n; i++) {
        if ((uint64_t)(*(const int64_t *)(data + i * stride)) >= (uint64_t)c->vocab) Py_RETURN_NONE;
    }

    PyObject *terminated = zeros(c->n, NPY_BOOL);
    if (terminated == NULL) return NULL;
    if (c->end == c->width) { /* compact: keep the last `keep` columns, all that any window can need */
        for (Py_ssize_t i = 0; i < c->n; i++) memmove(row(c, i), row(c, i) + c->width - c->keep, c->keep * 8);
        c->end = c->keep;
    }
    c->t += 1;
    int64_t first_of_full = c->t - c->h; /* an episode that started then has max_new_tokens tokens now */
    npy_bool *term = PyArray_DATA((PyArrayObject *)terminated);
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < c->n; i++) {
        int64_t token = *(const int64_t *)(data + i * stride);
        row(c, i)[c->end] = token;
        /* next-step mode: a sub-env whose episode ended last step resets now and ignores its action */
        if (!c->is_resetting[i] && (token == c->eos || c->start[i] == first_of_full)) {
            term[i] = 1;
            c->finished[k++] = i;
        }
    }
    c->end += 1;
    c->n_finished = k;
    c->terminated = terminated;
    c->phase = ADVANCED;
    if (k == 0) {
        Py_INCREF(empty_batch);
        return empty_batch;
    }
    PyObject *prompts = PyList_New(k), *completions = PyList_New(k);
    PyObject *refs = c->references ? PyList_New(k) : Py_NewRef(Py_None);
    if (prompts == NULL || completions == NULL || refs == NULL) goto fail;
    for (Py_ssize_t j = 0; j < k; j++) {
        Py_ssize_t i = c->finished[j];
        int64_t p = c->prompt_idx[i];
        PyList_SET_ITEM(prompts, j, Py_NewRef(PyTuple_GET_ITEM(c->prompts, p)));
        if (c->references) PyList_SET_ITEM(refs, j, Py_NewRef(PyTuple_GET_ITEM(c->references, p)));
        PyObject *text = decode(c, i, (Py_ssize_t)(c->t - c->start[i]));
        if (text == NULL) goto fail;
        PyList_SET_ITEM(completions, j, text);
    }
    /* The info columns take their own copies: the feedback gets the lists and may change them. */
    if ((c->pending_prompts = PyList_AsTuple(prompts)) == NULL) goto fail;
    if ((c->pending_completions = PyList_AsTuple(completions)) == NULL) goto fail;
    return Py_BuildValue("(NNN)", prompts, completions, refs);
fail:
    Py_XDECREF(prompts);
    Py_XDECREF(completions);
    Py_XDECREF(refs);
    return NULL; /* the env is left half-stepped; TextGenVectorEnv asks for a reset */
}

PyDoc_STRVAR(finish_doc,
             "finish(total, parts) -> (obs, rewards, terminated, truncated, infos)\n\n"
             "Complete the step that advance() began: `total` is the reward and `parts` the {name: values} of each "
             "feedback component for the episodes advance() returned (both None when none ended).");

static PyObject *Core_finish(Core *c, PyObject *args) {
    PyObject *total, *parts;
    if (!PyArg_ParseTuple(args, "OO", &total, &parts)) return NULL;
    if (c->phase != ADVANCED) {
        PyErr_SetString(PyExc_RuntimeError, "Core.finish() without advance()");
        return NULL;
    }
    Py_ssize_t n = c->n, k = c->n_finished;
    PyObject *rewards = zeros(n, NPY_DOUBLE), *infos = PyDict_New(), *tot = NULL, *obs = NULL;
    if (rewards == NULL || infos == NULL) goto fail;
    if (k) {
        if (!PyDict_Check(parts)) {
            PyErr_SetString(PyExc_TypeError, "finish() needs the feedback parts as a dict when episodes ended");
            goto fail;
        }
        tot = as_doubles(total);
        if (tot == NULL) goto fail;
        if (PyArray_DIM((PyArrayObject *)tot, 0) != k) {
            PyErr_Format(PyExc_ValueError, "%zd rewards for %zd finished episodes", PyArray_DIM((PyArrayObject *)tot, 0), k);
            goto fail;
        }
        const double *r = PyArray_DATA((PyArrayObject *)tot);
        double *rew = PyArray_DATA((PyArrayObject *)rewards);
        for (Py_ssize_t j = 0; j < k; j++) {
            Py_ssize_t i = c->finished[j];
            rew[i] = c->last_reward[i] = r[j];
            c->has_reward[i] = 1;
        }
        if (!c->same_step) {
            if (put_final(c, infos, parts) < 0) goto fail;
        } else { /* the finished episodes under final_obs / final_info, then new ones in the same step */
            PyObject *final_obs = nones(n), *final_info = PyDict_New();
            if (put(infos, k_final_obs, final_obs) < 0 || put(infos, k_final_info, final_info) < 0) goto fail;
            for (Py_ssize_t j = 0; j < k; j++) {
                Py_ssize_t i = c->finished[j];
                npy_intp dims[1] = {c->ctx};
                PyObject *o = PyArray_EMPTY(1, dims, NPY_INT64, 0);
                if (o == NULL) goto fail;
                memcpy(PyArray_DATA((PyArrayObject *)o), row(c, i) + c->end - c->ctx, c->ctx * sizeof(int64_t));
                set_obj(final_obs, i, o);
                Py_DECREF(o);
            }
            if (put(infos, k_final_obs_m, finished_mask(c)) < 0 || put_final(c, final_info, parts) < 0 ||
                put(infos, k_final_info_m, finished_mask(c)) < 0 || reset_envs(c, c->finished, k, infos) < 0)
                goto fail;
        }
    }
    if (c->n_resetting) { /* after the final infos, so that the new prompts join their "prompt" column */
        if (reset_envs(c, c->resetting, c->n_resetting, infos) < 0) goto fail;
        for (Py_ssize_t m = 0; m < c->n_resetting; m++) c->is_resetting[c->resetting[m]] = 0;
        c->n_resetting = 0;
    }
    if (!c->same_step) {
        for (Py_ssize_t j = 0; j < k; j++) c->is_resetting[c->resetting[j] = c->finished[j]] = 1;
        c->n_resetting = k;
    }
    obs = observations(c);
    if (obs == NULL) goto fail;
    PyObject *truncated = zeros(n, NPY_BOOL);
    if (truncated == NULL) goto fail;
    PyObject *out = Py_BuildValue("(NNONN)", obs, rewards, c->terminated, truncated, infos);
    Py_XDECREF(tot);
    clear_pending(c);
    c->phase = READY;
    return out;
fail:
    Py_XDECREF(rewards);
    Py_XDECREF(infos);
    Py_XDECREF(tot);
    Py_XDECREF(obs);
    return NULL;
}

static PyObject *Core_completion_ids(Core *c, PyObject *Py_UNUSED(unused)) {
    PyObject *out = PyList_New(c->n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < c->n; i++) {
        Py_ssize_t len = c->phase == NEEDS_RESET ? 0 : (Py_ssize_t)(c->t - c->start[i]);
        PyObject *ids = PyList_New(len);
        if (ids == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        for (Py_ssize_t j = 0; j < len; j++) {
            PyObject *v = PyLong_FromLongLong(row(c, i)[c->end - len + j]);
            if (v == NULL) {
                Py_DECREF(ids);
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(ids, j, v);
        }
        PyList_SET_ITEM(out, i, ids);
    }
    return out;
}

static PyObject *Core_prompt_indices(Core *c, PyObject *Py_UNUSED(unused)) {
    PyObject *out = PyList_New(c->n);
    for (Py_ssize_t i = 0; out && i < c->n; i++) {
        PyObject *v = PyLong_FromLongLong(c->prompt_idx[i]);
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *Core_last_rewards(Core *c, PyObject *Py_UNUSED(unused)) {
    PyObject *out = PyList_New(c->n);
    for (Py_ssize_t i = 0; out && i < c->n; i++) {
        PyObject *v = c->has_reward[i] ? PyFloat_FromDouble(c->last_reward[i]) : Py_NewRef(Py_None);
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyMethodDef Core_methods[] = {
    {"reset", (PyCFunction)Core_reset, METH_O, reset_doc},
    {"advance", (PyCFunction)Core_advance, METH_O, advance_doc},
    {"finish", (PyCFunction)Core_finish, METH_VARARGS, finish_doc},
    {"completion_ids", (PyCFunction)Core_completion_ids, METH_NOARGS, "Each sub-env's tokens generated so far."},
    {"prompt_indices", (PyCFunction)Core_prompt_indices, METH_NOARGS, "Each sub-env's prompt index."},
    {"last_rewards", (PyCFunction)Core_last_rewards, METH_NOARGS,
     "Each sub-env's reward for the episode that just ended, None since a reset."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "textgym._vecstep.Core",
    .tp_basicsize = sizeof(Core),
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The state and per-step work of TextGenVectorEnv (see the module's docstring).",
    .tp_methods = Core_methods,
    .tp_init = (initproc)Core_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "textgym._vecstep",
    "The per-step work of TextGenVectorEnv in C; vector_env._NumpyCore is the reference and the fallback.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__vecstep(void) {
    import_array();
    const char *names[] = {"prompt", "_prompt", "completion", "_completion", "feedback", "_feedback",
                           "finish_reason", "_finish_reason", "completion_tokens", "_completion_tokens",
                           "prompt_index", "_prompt_index", "final_obs", "_final_obs", "final_info", "_final_info",
                           "eos", "length"};
    PyObject **slots[] = {&k_prompt, &k_prompt_m, &k_completion, &k_completion_m, &k_feedback, &k_feedback_m,
                          &k_reason, &k_reason_m, &k_tokens, &k_tokens_m, &k_index, &k_index_m, &k_final_obs,
                          &k_final_obs_m, &k_final_info, &k_final_info_m, &s_eos, &s_length};
    for (size_t j = 0; j < sizeof(names) / sizeof(names[0]); j++) {
        if ((*slots[j] = PyUnicode_InternFromString(names[j])) == NULL) return NULL;
    }
    empty_batch = Py_BuildValue("(()()O)", Py_None);
    if (empty_batch == NULL || PyType_Ready(&CoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
