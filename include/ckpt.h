/*
 * ckpt.h - read PyTorch checkpoints without running them.
 *
 * The whole public API of libckpt. A file is opened once; everything parsed from it lives in
 * one arena that ckpt_close frees. Tensor data stays in the mapped file until asked for.
 *
 *     ckpt_file *f;
 *     ckpt_error err;
 *     if (ckpt_open("rsp-resnet-50-ckpt.pth", NULL, &f, &err) != CKPT_OK) {
 *         fprintf(stderr, "error: %s\n", err.message);
 *         return 2;
 *     }
 *     const ckpt_value *model = ckpt_dict_get(ckpt_root(f), "model");
 *     const ckpt_value *w = ckpt_dict_get(model, "fc.weight");
 *     if (w && w->type == CKPT_T_TENSOR) {
 *         float *buf = malloc(ckpt_tensor_numel(w->u.tensor) * sizeof(float));
 *         ckpt_tensor_read(w->u.tensor, CKPT_DT_FLOAT32, buf,
 *                          ckpt_tensor_numel(w->u.tensor) * sizeof(float), &err);
 *     }
 *     ckpt_close(f);
 *
 * Nothing in a file is ever executed: a pickled call is recorded as a value naming what it
 * would have called (CKPT_T_OBJECT), and every global the file names is listed by ckpt_globals
 * with its classification.
 *
 * Conventions: functions that can fail return a ckpt_status and fill the caller's ckpt_error
 * (which may be NULL). Pointers returned by accessors belong to the ckpt_file they came from
 * and stay valid until ckpt_close. The library never prints and never exits.
 *
 * The header reads top to bottom, each type before its use: status codes and errors, dtypes,
 * limits; opening a file; values; tensors; globals and the safety scan; state dicts,
 * architectures, the strict-load judge and the check; writing weight files; and last
 * inference, images and .npy arrays. Two libraries implement it: libckpt (pkg-config ckpt,
 * CMake ckpt::ckpt) all of it, libckpt-reader (ckpt-reader, ckpt::reader) all but inference and
 * images (ckpt_model_*, ckpt_backend_*, ckpt_peak_gflops, ckpt_image_*), so that it needs
 * neither libjpeg, libpng, oneDNN nor OpenMP.
 */
#ifndef CKPT_H
#define CKPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CKPT_BUILDING) && defined(__GNUC__)
#define CKPT_API __attribute__((visibility("default")))
#else
#define CKPT_API
#endif

#define CKPT_VERSION_STRING "0.1.0"

/* ---- status codes ------------------------------------------------------------------------- */

/* X(name, value, description). One list, so names and strings never drift. */
#define CKPT_STATUS_MAP(X)                                                                     \
    X(OK, 0, "success")                                                                        \
    X(EIO, 1, "input/output error")                                                            \
    X(EFORMAT, 2, "not a format ckpt reads")                                                   \
    X(ECORRUPT, 3, "corrupt or truncated file")                                                \
    X(EUNSUPPORTED, 4, "unsupported content")                                                  \
    X(ELIMIT, 5, "a safety limit was exceeded")                                                \
    X(ENOMEM, 6, "out of memory")                                                              \
    X(ENOTFOUND, 7, "not found")                                                               \
    X(EINVAL, 8, "invalid argument")                                                           \
    X(EEXIST, 9, "already exists")                                                             \
    X(EMISMATCH, 10, "does not match the architecture")

typedef enum ckpt_status {
#define CKPT__STATUS_ENUM(name, value, text) CKPT_##name = value,
    CKPT_STATUS_MAP(CKPT__STATUS_ENUM)
#undef CKPT__STATUS_ENUM
} ckpt_status;

/* "ECORRUPT", or "unknown" for a value outside the list. */
CKPT_API const char *ckpt_status_name(int status);
/* "corrupt or truncated file". */
CKPT_API const char *ckpt_status_str(int status);

/* Filled by every failing call. message is one line in git's style: lowercase, no full stop,
 * the subject quoted, and never the file's path (the caller knows it and prefixes it). */
typedef struct ckpt_error {
    int status;
    char message[512];
    const char *src_file; /* where in libckpt the error was raised, for bug reports */
    int src_line;
} ckpt_error;

/* ---- dtypes ------------------------------------------------------------------------------- */

/* X(enum, torch name, element bytes, torch storage class or NULL, safetensors name or NULL) */
#define CKPT_DTYPE_MAP(X)                                                                      \
    X(FLOAT32, "float32", 4, "FloatStorage", "F32")                                            \
    X(FLOAT64, "float64", 8, "DoubleStorage", "F64")                                           \
    X(FLOAT16, "float16", 2, "HalfStorage", "F16")                                             \
    X(BFLOAT16, "bfloat16", 2, "BFloat16Storage", "BF16")                                      \
    X(INT64, "int64", 8, "LongStorage", "I64")                                                 \
    X(INT32, "int32", 4, "IntStorage", "I32")                                                  \
    X(INT16, "int16", 2, "ShortStorage", "I16")                                                \
    X(INT8, "int8", 1, "CharStorage", "I8")                                                    \
    X(UINT8, "uint8", 1, "ByteStorage", "U8")                                                  \
    X(BOOL, "bool", 1, "BoolStorage", "BOOL")                                                  \
    X(COMPLEX64, "complex64", 8, "ComplexFloatStorage", "C64")                                 \
    X(COMPLEX128, "complex128", 16, "ComplexDoubleStorage", NULL)                              \
    X(COMPLEX32, "complex32", 4, NULL, NULL)                                                   \
    X(QUINT8, "quint8", 1, "QUInt8Storage", NULL)                                              \
    X(QINT8, "qint8", 1, "QInt8Storage", NULL)                                                 \
    X(QINT32, "qint32", 4, "QInt32Storage", NULL)                                              \
    X(QUINT4X2, "quint4x2", 1, "QUInt4x2Storage", NULL)                                        \
    X(QUINT2X4, "quint2x4", 1, "QUInt2x4Storage", NULL)                                        \
    X(UINT16, "uint16", 2, NULL, "U16")                                                        \
    X(UINT32, "uint32", 4, NULL, "U32")                                                        \
    X(UINT64, "uint64", 8, NULL, "U64")                                                        \
    X(FLOAT8_E5M2, "float8_e5m2", 1, NULL, "F8_E5M2")                                          \
    X(FLOAT8_E4M3FN, "float8_e4m3fn", 1, NULL, "F8_E4M3")                                      \
    X(FLOAT8_E5M2FNUZ, "float8_e5m2fnuz", 1, NULL, NULL)                                       \
    X(FLOAT8_E4M3FNUZ, "float8_e4m3fnuz", 1, NULL, NULL)                                       \
    X(UNTYPED, "uint8", 1, "UntypedStorage", NULL)

typedef enum ckpt_dtype {
#define CKPT__DTYPE_ENUM(e, name, size, storage, st) CKPT_DT_##e,
    CKPT_DTYPE_MAP(CKPT__DTYPE_ENUM)
#undef CKPT__DTYPE_ENUM
        CKPT_DT_COUNT
} ckpt_dtype;

CKPT_API const char *ckpt_dtype_name(ckpt_dtype dt);        /* "float32"; NULL if out of range */
CKPT_API size_t ckpt_dtype_size(ckpt_dtype dt);             /* bytes per element; 0 if out of range */
CKPT_API const char *ckpt_dtype_safetensors(ckpt_dtype dt); /* "F32", or NULL if it has none */
/* By torch name ("float32", also "float", "half", "long", ...). Returns -1 when unknown. */
CKPT_API int ckpt_dtype_from_name(const char *name);
/* By storage class name ("FloatStorage"); any module is accepted, as torch.load does. -1 if none. */
CKPT_API int ckpt_dtype_from_storage(const char *class_name);
CKPT_API int ckpt_dtype_from_safetensors(const char *st_name); /* "F32" -> CKPT_DT_FLOAT32; -1 */

/* ---- limits ------------------------------------------------------------------------------- */

#define CKPT_MAX_DIMS 64                         /* dimensions of one tensor */
#define CKPT_DEFAULT_MAX_DEPTH 1000              /* nesting of containers in a pickle */
#define CKPT_DEFAULT_MAX_MEMO (1u << 22)         /* memo entries in one pickle */
#define CKPT_DEFAULT_MAX_ALLOC (1024ull << 20)   /* bytes of parsed values, names and shapes */
#define CKPT_DEFAULT_MAX_INFLATE (1024ull << 20) /* bytes of one decompressed zip entry */
#define CKPT_ST_HEADER_COST 128                  /* a safetensors header: at most max_alloc/128 */

/* ---- opening a file ----------------------------------------------------------------------- */

typedef struct ckpt_file ckpt_file;
typedef struct ckpt_value ckpt_value;
typedef struct ckpt_tensor ckpt_tensor;
typedef struct ckpt_storage ckpt_storage;

/* Lua-style allocator: nsize == 0 frees ptr and returns NULL; otherwise behaves as realloc
 * (ptr may be NULL). osize is the old size, or 0 for a new block. Tests use it to fail the
 * n-th allocation. */
typedef void *(*ckpt_alloc_fn)(void *ud, void *ptr, size_t osize, size_t nsize);

typedef struct ckpt_options {
    uint32_t max_depth;   /* 0: CKPT_DEFAULT_MAX_DEPTH */
    uint32_t max_memo;    /* 0: CKPT_DEFAULT_MAX_MEMO */
    uint64_t max_alloc;   /* 0: CKPT_DEFAULT_MAX_ALLOC; also bounds an inflated data.pkl and,
                           * divided by CKPT_ST_HEADER_COST, a safetensors header */
    uint64_t max_inflate; /* 0: CKPT_DEFAULT_MAX_INFLATE; a compressed data/N record is also
                           * bounded by its storage's size */
    ckpt_alloc_fn alloc;  /* NULL: the C library's realloc/free */
    void *alloc_ud;
} ckpt_options;

typedef enum ckpt_format {
    CKPT_FORMAT_ZIP,         /* torch.save, torch >= 1.6 */
    CKPT_FORMAT_LEGACY,      /* torch.save(_use_new_zipfile_serialization=False) */
    CKPT_FORMAT_PICKLE,      /* a bare pickle stream; torch.load refuses it, ckpt shows it */
    CKPT_FORMAT_SAFETENSORS, /* safetensors */
    CKPT_FORMAT_TORCHSCRIPT, /* torch.jit.save: a zip whose scripted modules read as modules */
} ckpt_format;

/* "zip", "legacy", "pickle", "safetensors", "torchscript". */
CKPT_API const char *ckpt_format_name(ckpt_format fmt);

/* Open and parse path. On success *out belongs to the caller; free it with ckpt_close. On
 * failure *out is NULL and err says why (CKPT_EFORMAT for a file of another kind, with a
 * message that names that kind: "a Git LFS pointer, not the weights: run 'git lfs pull'").
 * opt may be NULL for the defaults. An open file holds its mapping and one file descriptor
 * (a shard set one per shard, for the first 64) until ckpt_close: tensors are read with
 * pread(2), which costs far fewer page faults than copying through the mapping. */
CKPT_API int ckpt_open(const char *path, const ckpt_options *opt, ckpt_file **out,
                       ckpt_error *err);
/* Open path for reading the way ckpt_open does, for the other files a program reads (label
 * lists, ...): anything but a regular file is refused without blocking on it (CKPT_EIO, "is a
 * FIFO, not a regular file", "is a directory"). On success *fd is the caller's to close and
 * *size is the file's size. */
CKPT_API int ckpt_open_input(const char *path, int *fd, uint64_t *size, ckpt_error *err);
/* Free everything parsed from f and unmap it. NULL is a no-op. */
CKPT_API void ckpt_close(ckpt_file *f);

CKPT_API ckpt_format ckpt_file_format(const ckpt_file *f);
CKPT_API uint64_t ckpt_file_size(const ckpt_file *f);
/* The unpickled object (for safetensors: a dict of the tensors, with __metadata__ as attrs). */
CKPT_API const ckpt_value *ckpt_root(const ckpt_file *f);
/* The zip archive's root folder name ("archive"), or NULL for other formats. */
CKPT_API const char *ckpt_file_zip_root(const ckpt_file *f);

/* ---- values ------------------------------------------------------------------------------- */

typedef enum ckpt_type {
    CKPT_T_NONE,
    CKPT_T_BOOL,
    CKPT_T_INT,     /* fits int64: u.i */
    CKPT_T_BIGINT,  /* does not: u.str holds the little-endian two's complement bytes */
    CKPT_T_FLOAT,   /* u.f */
    CKPT_T_COMPLEX, /* u.c */
    CKPT_T_STR,     /* u.str: UTF-8, also NUL-terminated */
    CKPT_T_BYTES,   /* u.str: raw bytes, NUL-terminated for convenience */
    CKPT_T_TUPLE,   /* u.seq */
    CKPT_T_LIST,    /* u.seq */
    CKPT_T_SET,     /* u.seq: set and frozenset, items in pickle order */
    CKPT_T_DICT,    /* u.dict: dict, OrderedDict, defaultdict, Counter; keys in insertion order */
    CKPT_T_GLOBAL,  /* u.global: a name the pickle refers to (torch.float16, a class, ...) */
    CKPT_T_OBJECT,  /* u.obj: what a REDUCE/NEWOBJ/INST/OBJ would have built */
    CKPT_T_TENSOR,  /* u.tensor */
    CKPT_T_STORAGE, /* u.storage: a storage referenced outside a tensor */
} ckpt_type;

/* "none", "bool", "int", "int", "float", "complex", "str", "bytes", "tuple", "list", "set",
 * "dict", "global", "object", "tensor", "storage": the names of the --json schema. */
CKPT_API const char *ckpt_type_name(ckpt_type t);

#define CKPT_VF_NUMPY 1u     /* a numpy scalar decoded to its value (class_name: "numpy.float64") */
#define CKPT_VF_FROZEN 2u    /* frozenset */

/* A parsed value. Read-only for users of the library; it lives in the file's arena.
 * class_name is the Python class when it is not the plain builtin one:
 * "collections.OrderedDict", "torch.Size", "numpy.float64", "argparse.Namespace", ... */
struct ckpt_value {
    ckpt_type type;
    uint32_t flags;
    const char *class_name;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            double re, im;
        } c;
        struct {
            const char *data;
            size_t len;
        } str;
        struct {
            ckpt_value **items;
            size_t len;
            size_t cap; /* internal */
        } seq;
        struct {
            ckpt_value **keys;
            ckpt_value **vals;
            size_t len;
            size_t cap;     /* internal */
            ckpt_value *attrs; /* BUILD state of an OrderedDict (holds "_metadata"), or NULL */
            void *index;    /* internal hash index */
        } dict;
        struct {
            const char *module; /* Python 3 spelling: "builtins", not "__builtin__" */
            const char *name;
        } global;
        struct {
            ckpt_value *callable; /* a CKPT_T_GLOBAL, or any value a pickle called */
            ckpt_value *args;     /* a tuple, or NULL */
            ckpt_value *state;    /* BUILD state, or NULL */
            ckpt_value *items;    /* SETITEM(S) on the object: a dict, or NULL */
            ckpt_value *list;     /* APPEND(S) on the object: a list, or NULL */
            bool newobj;          /* made by NEWOBJ (cls.__new__) rather than a call */
        } obj;
        ckpt_tensor *tensor;
        ckpt_storage *storage;
    } u;
};

/* Dict lookup by string key; NULL if d is not a dict or has no such key. */
CKPT_API const ckpt_value *ckpt_dict_get(const ckpt_value *d, const char *key);
/* Number of items of a tuple/list/set/dict; 0 for anything else. */
CKPT_API size_t ckpt_value_len(const ckpt_value *v);

/* ---- tensors ------------------------------------------------------------------------------ */

/* A strided view of a storage, in the ggml manner. Element (i_0, ..., i_{ndim-1}) is at byte
 *     (offset + sum_k i_k * stride[k]) * ckpt_dtype_size(dtype)
 * from the start of the storage. Strides and offset count elements, never bytes. Bounds were
 * checked at parse time: every element lies inside the storage. */
struct ckpt_tensor {
    ckpt_dtype dtype;
    int ndim;                /* 0 for a scalar */
    const int64_t *shape;    /* ndim sizes, each >= 0 */
    const int64_t *stride;   /* ndim strides, each >= 0 */
    int64_t offset;          /* storage offset */
    int64_t numel;           /* product of shape (1 for ndim 0) */
    ckpt_storage *storage;
    bool requires_grad;
    bool is_parameter;       /* pickled as torch.nn.Parameter */
};

CKPT_API int64_t ckpt_tensor_numel(const ckpt_tensor *t);
CKPT_API uint64_t ckpt_tensor_nbytes(const ckpt_tensor *t); /* numel * element size, or
                                                            * UINT64_MAX if that overflows */
/* True when the elements are in row-major order with no gaps (strides of size-1 dims ignored). */
CKPT_API bool ckpt_tensor_is_contiguous(const ckpt_tensor *t);

/* The storage's key in the file ("0", "939612896", or the safetensors tensor name). */
CKPT_API const char *ckpt_storage_key(const ckpt_storage *s);
CKPT_API uint64_t ckpt_storage_nbytes(const ckpt_storage *s);
CKPT_API ckpt_dtype ckpt_storage_dtype(const ckpt_storage *s);

/* A contiguous tensor's bytes in place (mapped file, or the decompressed entry), little-endian.
 * CKPT_EINVAL when t is not contiguous (use ckpt_tensor_read). On success *data stays valid
 * until ckpt_close. This is the first moment the data is touched. */
CKPT_API int ckpt_tensor_data(const ckpt_tensor *t, const void **data, ckpt_error *err);

/* Copy t's elements, row-major and contiguous, into buf (bufsize bytes) as dtype `to`:
 * either t->dtype (an exact copy) or CKPT_DT_FLOAT32 from any real float or integer dtype
 * (float16/bfloat16 widen exactly; int64 and float64 round to nearest). */
CKPT_API int ckpt_tensor_read(const ckpt_tensor *t, ckpt_dtype to, void *buf, size_t bufsize,
                              ckpt_error *err);

/* SHA-256 of the tensor's elements in row-major order as contiguous little-endian bytes (bool
 * as one byte 0/1), written as 64 lowercase hex digits and a NUL into hex. A broadcast view
 * (stride 0) whose logical size exceeds both CKPT_HASH_MIN_BYTES and CKPT_HASH_MAX_EXPANSION
 * times its storage's bytes is refused with CKPT_ELIMIT rather than hashed for hours. */
#define CKPT_HASH_MIN_BYTES (4ull << 30)
#define CKPT_HASH_MAX_EXPANSION 64
CKPT_API int ckpt_tensor_sha256(const ckpt_tensor *t, char hex[65], ckpt_error *err);

/* ---- globals and safety ------------------------------------------------------------------- */

typedef enum ckpt_global_kind {
    CKPT_GLOBAL_WEIGHTS,   /* on PyTorch 2.6's weights_only allowlist */
    CKPT_GLOBAL_DATA,      /* harmless data classes: numpy scalars, argparse.Namespace, ... */
    CKPT_GLOBAL_UNKNOWN,   /* neither: loading it in Python would import and maybe run it */
    CKPT_GLOBAL_DANGEROUS, /* known to execute code or touch the system: os.system, eval, ... */
} ckpt_global_kind;

CKPT_API const char *ckpt_global_kind_name(ckpt_global_kind k); /* "weights", "data", ... */
CKPT_API ckpt_global_kind ckpt_classify_global(const char *module, const char *name);

/* One distinct global named by the file's pickles, in order of first appearance. */
typedef struct ckpt_global_ref {
    const char *module;  /* Python 3 spelling */
    const char *name;
    ckpt_global_kind kind;
    const char *where;   /* the pickle it is in: "archive/data.pkl", "main pickle", ... */
    uint64_t offset;     /* byte offset of its first GLOBAL/STACK_GLOBAL/INST in that pickle */
    uint32_t count;      /* how many times it is named */
    /* true when a pickle torch.load runs names it; false when only side pickles do (other
     * .pkl entries, numpy object arrays, pickles after the STOP torch stops at): other
     * loaders run those, torch.load does not. where/offset then point at the first
     * occurrence on torch.load's route when there is one. */
    bool torch_load;
} ckpt_global_ref;

/* The globals of an opened file. *out belongs to f. */
CKPT_API size_t ckpt_globals(const ckpt_file *f, const ckpt_global_ref **out);

/* What `ckpt scan` needs: every global that torch.load would import from the file, found by
 * following torch.load's own route whatever the file's magic bytes claim (a zip when it starts
 * with "PK\3\4", else a torch 0.1.x tar when its first block is a valid tar header, else the
 * pickles from offset 0), plus the globals of side pickles that other loaders run (other .pkl
 * entries of a zip, numpy object arrays). Tensor data is never parsed as a pickle. Works on
 * files ckpt_open refuses. *out belongs to the caller; free it with ckpt_scan_free. */
typedef struct ckpt_scan_result {
    const char *format;       /* "zip", "torchscript", "legacy", "pickle", "tar",
                               * "safetensors", "npy" */
    ckpt_global_ref *globals;
    size_t n_globals;
    /* NULL, or why a pickle on torch.load's route stopped early: globals after that point were
     * not seen, so the file cannot be called safe. */
    const char *parse_error;
    bool safe;                /* no unknown or dangerous global */
    void *internal;
    /* Facts worth a line: bytes after the last pickle torch reads, side pickles that stop
     * early, the byte where torch.load would fail without importing anything. */
    const char *const *notes;
    size_t n_notes;
} ckpt_scan_result;

CKPT_API int ckpt_scan(const char *path, const ckpt_options *opt, ckpt_scan_result **out,
                       ckpt_error *err);
CKPT_API void ckpt_scan_free(ckpt_scan_result *r);

/* ---- state dicts (ckpt_sd_*) -------------------------------------------------------------- */
/*
 * A state dict is found in a file and unwrapped (ckpt_sd_check, or ckpt_sd_from_value when you
 * know where it is), compared with the model an architecture describes (ckpt_arch_model) or a
 * template checkpoint, and judged as load_state_dict(strict=True) would (ckpt_sd_judge).
 */

/* One item of a state dict: of a checkpoint (value set) or of a model (value NULL). */
typedef struct ckpt_sd_entry {
    const char *key;
    const ckpt_value *value; /* the checkpoint's value, tensor or not; NULL in a model */
    bool is_tensor;          /* false: value is something else and dtype/ndim/shape are unset */
    ckpt_dtype dtype;
    int ndim;
    const int64_t *shape;    /* ndim sizes */
} ckpt_sd_entry;

/* One entry of a state dict's _metadata: the module path (no trailing dot, "" the root) and
 * its "version" (-1 when the entry has no integer version). */
typedef struct ckpt_sd_meta {
    const char *module;
    int64_t version;
} ckpt_sd_meta;

/* A state dict as load_state_dict sees it, keys already unwrapped. Plain arrays: a test can
 * build one by hand. Those made by ckpt_sd_from_value point into the ckpt_file they came from
 * and stay valid until it is closed and they are freed. */
typedef struct ckpt_sd {
    ckpt_sd_entry *entries; /* in the dict's order */
    size_t n_entries;
    bool has_metadata;      /* the dict carries _metadata (an OrderedDict made by state_dict()) */
    ckpt_sd_meta *meta;
    size_t n_meta;
    const char *prefix;     /* what was stripped from the keys (and from _metadata), "" for none */
    void *internal;
} ckpt_sd;

/* A view of a dict value (string keys; other keys make CKPT_EUNSUPPORTED) with prefix, if not
 * NULL or "", removed from the keys that start with it and from the _metadata paths, as
 * `OrderedDict((k[len(p):] if k.startswith(p) else k, v) for k, v in sd.items())` would (a
 * key met twice keeps its first place and its last value). On success *out belongs to the
 * caller; free it with ckpt_sd_free before closing the file. */
CKPT_API int ckpt_sd_from_value(const ckpt_value *dict, const char *prefix, ckpt_sd **out,
                                ckpt_error *err);
CKPT_API void ckpt_sd_free(ckpt_sd *sd); /* NULL is a no-op */

/* ---- architectures (ckpt_arch_*) --------------------------------------------------------- */
/*
 * The networks ckpt knows, by torchvision's builder name: the ten ResNets ("resnet18" ...
 * "wide_resnet101_2", which ckpt can also run) and, check-only, "vgg11". Each belongs to a
 * family that knows its exact state_dict() for any class count, where its classifier is and,
 * for families that run, its inference network. A handle is static data: never freed.
 *
 *     const ckpt_arch *a = ckpt_arch_by_name("resnext50_32x4d");
 *     ckpt_sd_model *m;
 *     if (ckpt_arch_model(a, 1000, &m, &err) == CKPT_OK) {
 *         for (size_t i = 0; i < m->sd.n_entries; i++)
 *             printf("%s\n", m->sd.entries[i].key);   // 320 keys, in state_dict() order
 *         ckpt_sd_model_free(m);
 *     }
 */
typedef struct ckpt_arch ckpt_arch;

CKPT_API size_t ckpt_arch_count(void);                            /* every family's, in order */
CKPT_API const ckpt_arch *ckpt_arch_at(size_t i);                 /* NULL when out of range */
CKPT_API const ckpt_arch *ckpt_arch_by_name(const char *name);    /* NULL when unknown */
CKPT_API const char *ckpt_arch_name(const ckpt_arch *a);          /* "resnet50"; NULL for NULL */
CKPT_API const char *ckpt_arch_family(const ckpt_arch *a);        /* "resnet", "vgg" */
/* The classifier's keys: head_weight [classes, features] ("fc.weight" for a ResNet) or, with
 * bias, its bias [classes] ("fc.bias"). */
CKPT_API const char *ckpt_arch_head(const ckpt_arch *a, bool bias);
/* Channels entering the classifier: 512 * expansion for a ResNet, 4096 for VGG. */
CKPT_API int64_t ckpt_arch_features(const ckpt_arch *a);
/* Elements of model.parameters() (buffers excluded) of NAME(num_classes=num_classes). */
CKPT_API int64_t ckpt_arch_parameters(const ckpt_arch *a, int64_t num_classes);
/* The class count sd's classifier was built for: the rows of the head weight when it has the
 * right width, else the length of the head bias, else the head weight's rows; 0 when sd has
 * no head tensor. */
CKPT_API int64_t ckpt_arch_classes(const ckpt_arch *a, const ckpt_sd *sd);
/* Whether ckpt_model_new can build it (false: check-only family, or libckpt-reader, which
 * has no inference). */
CKPT_API bool ckpt_arch_runnable(const ckpt_arch *a);

/* ---- models and the judge ------------------------------------------------------------------ */

/* A module of a model: what its _load_from_state_dict looks at. */
typedef struct ckpt_sd_module {
    const char *path;       /* "layer1.0.bn1"; "" is the root */
    size_t parent;          /* index in modules; the root's is its own (0) */
    size_t first, count;    /* its parameters, then persistent buffers, then _extra_state:
                             * entries[first .. first+count) of the model's sd */
    int64_t version;        /* module._version: 2 for BatchNorm, 1 otherwise */
    bool batchnorm;         /* fills a missing num_batches_tracked when the state dict's version
                             * of it is absent or < 2 (BatchNorm with running statistics) */
    bool extra_state;       /* overrides set_extra_state: its last entry is "_extra_state" */
} ckpt_sd_module;

/* What load_state_dict compares a state dict with: the modules in the order load() visits
 * them (a module, then each child's subtree in registration order, modules without state
 * included) and the model's own state_dict(). */
typedef struct ckpt_sd_model {
    const char *class_name;  /* the name PyTorch's error text uses: "ResNet", "VGG" */
    const ckpt_arch *arch;   /* NULL when made from a template */
    int64_t num_classes;     /* 0 when made from a template */
    ckpt_sd_module *modules;
    size_t n_modules;
    ckpt_sd sd;              /* keys, dtypes and shapes in state_dict() order; meta: the versions */
    void *internal;
} ckpt_sd_model;

/* The model `torchvision.models.NAME(num_classes=num_classes)`: its modules and its exact
 * state_dict(), _metadata included. *out belongs to the caller; free it with
 * ckpt_sd_model_free. CKPT_EINVAL for num_classes < 1 or > 2^31-1. */
CKPT_API int ckpt_arch_model(const ckpt_arch *a, int64_t num_classes, ckpt_sd_model **out,
                             ckpt_error *err);
/* A model whose state_dict() is tmpl (an example checkpoint of any architecture). Modules are
 * inferred from the dotted keys; a module with a num_batches_tracked entry counts as BatchNorm
 * unless tmpl's _metadata gives it a version other than 2; an "_extra_state" entry marks a
 * module with extra state. class_name NULL: "Model". *out belongs to the caller (free it with
 * ckpt_sd_model_free) and points into tmpl's file, which must stay open. */
CKPT_API int ckpt_sd_model_from_template(const ckpt_sd *tmpl, const char *class_name,
                                         ckpt_sd_model **out, ckpt_error *err);
CKPT_API void ckpt_sd_model_free(ckpt_sd_model *m); /* NULL is a no-op */

/* A key whose shape differs, as load_state_dict reports it. */
typedef struct ckpt_sd_mismatch {
    const char *key;
    const ckpt_sd_entry *checkpoint;
    const ckpt_sd_entry *model;
} ckpt_sd_mismatch;

/* The outcome of model.load_state_dict(sd, strict=True), PyTorch 1.13 and 2.x. */
typedef struct ckpt_sd_verdict {
    bool ok;                  /* the strict load succeeds */
    const char **missing;     /* in the order PyTorch lists them (module order) */
    size_t n_missing;
    const char **unexpected;  /* in PyTorch's order (by module, then the dict's order) */
    size_t n_unexpected;
    ckpt_sd_mismatch *mismatch;
    size_t n_mismatch;
    const char **errors;      /* PyTorch's error_msgs after the missing/unexpected lines, in its
                               * order: size mismatches, non-tensor values, and an IndexError
                               * (a 1-D empty tensor for a 0-dim parameter) */
    size_t n_errors;
    const char *message;      /* RuntimeError text ("Error(s) in loading state_dict for
                               * ResNet:\n\t..."), or NULL when ok */
    size_t n_loaded;          /* model keys copied from the state dict */
    size_t n_filled;          /* num_batches_tracked filled in by BatchNorm's upgrade rule */
    void *internal;
} ckpt_sd_verdict;

/* Judge sd against m exactly as load_state_dict(strict=True) would. *out belongs to the
 * caller; free it with ckpt_sd_verdict_free. Strings point into m and sd. */
CKPT_API int ckpt_sd_judge(const ckpt_sd_model *m, const ckpt_sd *sd, ckpt_sd_verdict **out,
                           ckpt_error *err);
CKPT_API void ckpt_sd_verdict_free(ckpt_sd_verdict *v); /* NULL is a no-op */

/* ckpt check: find the weights in a file, unwrap them, recognise the model, judge. */
typedef struct ckpt_sd_check_options {
    const char *arch;          /* NULL or "auto": recognise any known one; else a ckpt_arch name */
    int64_t num_classes;       /* 0: from the head's shape (auto) or 1000 (named arch) */
    const ckpt_file *against;  /* a template checkpoint instead of an architecture, or NULL */
    const char *against_key;   /* where the template's state dict is ("a/b"), or NULL: find */
    const char *key;           /* where the state dict is ("a/b"), or NULL: find */
    const char *strip_prefix;  /* NULL: find the wrapper prefix; "" strips nothing */
    bool scan_values;          /* read tensor data: NaN/Inf, BatchNorm statistics at init */
    const char *file_name;     /* shown in the Python lines; NULL: "checkpoint.pth" */
    bool explain;              /* also build the words: warnings and python (else left empty:
                                * ckpt_sd_explain can add them later) */
} ckpt_sd_check_options;

/* A dict of tensors that could be the state dict. */
typedef struct ckpt_sd_candidate {
    const char **path;         /* dict keys and list/tuple indexes (as strings) from the root */
    size_t path_len;           /* 0: the root itself */
    const char *path_str;      /* "model/ema", "" for the root: what opt->key takes */
    const ckpt_value *dict;
    size_t n_tensors;          /* tensor values */
    size_t n_entries;          /* all values */
    const char *prefix;        /* the wrapper prefix that fits it best */
    const ckpt_arch *arch;     /* the architecture it fits best (auto), or NULL */
    size_t matched;            /* model keys present with the model's shape, after unwrapping */
    size_t expected;           /* keys of that model */
} ckpt_sd_candidate;

typedef struct ckpt_sd_warning {
    const char *code;          /* stable: "training_checkpoint", "prefix_stripped", "nan", ... */
    const char *message;       /* one line for people */
} ckpt_sd_warning;

/* Where a model key's tensor comes from in the file. */
typedef struct ckpt_sd_key_pair {
    const char *model_key;     /* "layer1.0.conv1.weight" */
    const char *file_key;      /* "module.layer1.0.conv1.weight" */
} ckpt_sd_key_pair;

/* A key of the chosen dict that the key map leaves out, and why. */
typedef struct ckpt_sd_left_out {
    const char *file_key;
    const char *why;           /* stable: "outside_prefix" (does not start with the prefix),
                                * "not_in_model", "not_a_tensor", "repeated" (a later key
                                * unwraps to the same name and wins) */
} ckpt_sd_left_out;

typedef struct ckpt_sd_report {
    ckpt_sd_candidate *candidates; /* best first */
    size_t n_candidates;
    const ckpt_sd_candidate *chosen;
    const ckpt_sd *sd;             /* the chosen dict, unwrapped */
    const char *prefix;            /* = sd->prefix */
    const ckpt_arch *arch;         /* NULL with a template or when nothing was recognised */
    int64_t num_classes;           /* 0 with a template or when nothing was recognised */
    const ckpt_sd_model *model;    /* NULL when nothing was recognised and there is no template */
    const ckpt_sd_verdict *verdict;/* NULL when model is */
    /* What model.load_state_dict(torch.load(file), strict=False) would have done (NULL when the
     * state dict is the root and needs no unwrapping). */
    const ckpt_sd_verdict *whole_file;
    /* With a model: each model key the chosen dict holds as a tensor, in the model's order,
     * with the file key it comes from; then the dict's other keys (none without a model). */
    const ckpt_sd_key_pair *key_map;
    size_t n_key_map;
    const ckpt_sd_left_out *left_out;
    size_t n_left_out;
    size_t n_tensors;
    int64_t n_parameters;          /* elements of tensors other than BatchNorm buffers */
    /* The words, with opt->explain or after ckpt_sd_explain (else none and NULL): */
    ckpt_sd_warning *warnings;
    size_t n_warnings;
    const char *python;            /* lines of Python that load the file correctly */
    void *internal;
    /* The naming scheme the chosen dict's keys were renamed from ("huggingface",
     * "sequential", "detectron2"; docs/ARCHITECTURES-DEV.md), or NULL: the key map's file
     * keys are the file's own. */
    const char *naming;
    /* What the verdict says the file is (docs/CHECK.md): "model" (the mapped
     * dict loads strictly), "backbone" (all but the classifier), "sequential_head" (loads into
     * the model with the file's nn.Sequential head), "not_torchvision" (a ResNet no
     * torchvision constructor builds), "fails" (the strict load fails), "unknown" (no model). */
    const char *verdict_kind;
    /* The file's other copies of a network, for opt->key and opt->strip_prefix: candidates
     * recognised as an architecture, and sub-trees of the chosen dict that hold the same model
     * (MoCo's encoder_k); each with its prefix and arch. alternative_kinds[i] says what it is:
     * "ema", "momentum", "student" or "other". */
    const ckpt_sd_candidate *alternatives;
    size_t n_alternatives;
    const char *const *alternative_kinds;
    /* Keys the file names otherwise, paired with the model's by shape and order: the model
     * keys the dict lacked and the dict keys the model lacked pair one to one, in order, with
     * the same last name ("weight", "running_mean") and shape (a classifier's class count
     * aside), and the dict so renamed loads strictly. The verdict, the key map and the Python
     * are then those of the renamed dict; file_key is the file's key, model_key the model's.
     * NULL and 0 when there are none. */
    const ckpt_sd_key_pair *renames;
    size_t n_renames;
    /* A backbone: the mapped dict holds every tensor of the architecture but its classifier
     * (both of its keys missing and nothing else wrong, or an empty [0, features] one). Its
     * unexpected keys, if any, lie under the classifier's module (a projection MLP in fc's
     * place, as MoCo's) or under modules the model does not have (SwAV's projection_head and
     * prototypes): backbone_aside counts the latter. A nn.Sequential classifier in fc's place
     * is no backbone ("sequential_head"). Set with or without the words. */
    bool backbone;
    size_t backbone_aside;
    /* The dict is the network with an nn.Sequential classifier in fc's place (fc.1.* of
     * Sequential(Dropout, Linear), an MLP's fc.0.* and fc.2.*): every tensor but the
     * classifier's maps exactly, and the classifier is the file's head ("sequential_head");
     * num_classes is then its last Linear's rows. */
    bool sequential_head;
} ckpt_sd_report;

/* CKPT_ENOTFOUND when there is no dict of tensors or no opt->key path; CKPT_EINVAL for bad
 * options. Not recognising the architecture is no error: model and verdict are then NULL.
 * *out belongs to the caller; free it with ckpt_sd_report_free before closing the files. */
CKPT_API int ckpt_sd_check(const ckpt_file *f, const ckpt_sd_check_options *opt,
                           ckpt_sd_report **out, ckpt_error *err);
CKPT_API void ckpt_sd_report_free(ckpt_sd_report *c); /* NULL is a no-op */
/* Add the words (warnings, python) to a report made without opt->explain; a no-op when they
 * are there. f and the options' strings given to ckpt_sd_check must still be valid. */
CKPT_API int ckpt_sd_explain(ckpt_sd_report *r, ckpt_error *err);

/* ckpt diff: two state dicts tensor by tensor. */
typedef enum ckpt_sd_diff_kind {
    CKPT_SD_SAME,       /* same dtype and shape; bit-identical (or within atol) */
    CKPT_SD_DIFFERENT,  /* same dtype and shape; values differ */
    CKPT_SD_ONLY_A,
    CKPT_SD_ONLY_B,
    CKPT_SD_SHAPE,      /* shapes differ: values not compared */
    CKPT_SD_DTYPE,      /* dtypes differ: values compared in float64 when both are real */
    CKPT_SD_NOT_TENSOR, /* one side or both hold something other than a tensor */
    CKPT_SD_DIFF_KINDS
} ckpt_sd_diff_kind;

/* "same", "different", "only_a", "only_b", "shape", "dtype", "not_tensor". */
CKPT_API const char *ckpt_sd_diff_kind_name(ckpt_sd_diff_kind k);

typedef struct ckpt_sd_diff_item {
    const char *key;
    ckpt_sd_diff_kind kind;
    bool match;                /* counts as equal (SAME, or DTYPE within atol) */
    const ckpt_sd_entry *a, *b;/* NULL on the side that lacks the key */
    bool compared;             /* values were compared: the fields below are set */
    int64_t n_differ;          /* elements that differ (bitwise, or by more than atol) */
    double max_abs;            /* max |a - b| in float64; INFINITY when NaN meets a number */
    double max_rel;            /* max |a - b| / max(|a|, |b|) */
} ckpt_sd_diff_item;

typedef struct ckpt_sd_diff_result {
    ckpt_sd_diff_item *items;  /* A's keys in A's order, then B's own keys in B's order */
    size_t n_items;
    size_t count[CKPT_SD_DIFF_KINDS]; /* items of each kind */
    bool match;                /* every item matches */
    void *internal;
} ckpt_sd_diff_result;

/* atol < 0: bitwise equality with equal dtypes. atol >= 0: |a - b| <= atol elementwise in
 * float64 (NaN equals NaN), dtypes may differ. *out belongs to the caller; free it with
 * ckpt_sd_diff_free before closing the files. Reads every tensor present on both sides. */
CKPT_API int ckpt_sd_diff(const ckpt_sd *a, const ckpt_sd *b, double atol,
                          ckpt_sd_diff_result **out, ckpt_error *err);
CKPT_API void ckpt_sd_diff_free(ckpt_sd_diff_result *d); /* NULL is a no-op */

/* ---- writing (ckpt_write_*) --------------------------------------------------------------- */
/*
 * Clean weight files from a state dict: the zip format of torch.save(state_dict),
 * loadable with torch.load(path, weights_only=True) from PyTorch 1.13 on, or safetensors.
 * Tensors are streamed from the file they were read from (converted chunk by chunk when
 * asked), never all held in memory. An output appears only complete: it is written to a
 * temporary file `.NAME.ckpt-tmp-XXXXXX` in its folder, flushed with fsync and renamed; after
 * any error the temporary file is gone and whatever was at the path before is untouched.
 *
 *     ckpt_sd_report *r;                            // ckpt_sd_check found and unwrapped it
 *     ckpt_write_options o = {0};
 *     o.format = CKPT_WRITE_SAFETENSORS;
 *     o.convert = true;
 *     o.dtype = CKPT_DT_FLOAT16;                    // floating tensors only; int64 stays int64
 *     const char *inputs[] = {"train.pth", NULL};   // never replaced, even with force
 *     o.inputs = inputs;
 *     if (ckpt_write_sd("model.safetensors", r->sd, &o, NULL, &err) != CKPT_OK)
 *         fprintf(stderr, "error: model.safetensors: %s\n", err.message);
 *
 * docs/EXTRACT.md gives the byte layouts and what is guaranteed.
 */
typedef enum ckpt_write_format {
    CKPT_WRITE_PTH,         /* torch.save's zip: data.pkl, byteorder, data/0..., version */
    CKPT_WRITE_SAFETENSORS, /* safetensors, tensors sorted as the reference serializer does */
} ckpt_write_format;

CKPT_API const char *ckpt_write_format_name(ckpt_write_format fmt); /* "pth", "safetensors" */
CKPT_API int ckpt_write_format_from_name(const char *name);           /* -1 when unknown */
/* From the extension of path: .pth .pt .bin .ckpt .tar -> PTH; .safetensors -> SAFETENSORS;
 * -1 for anything else. */
CKPT_API int ckpt_write_format_for_path(const char *path);

/* Called as the output grows (at least every few MB and once at the end) with the bytes
 * written so far and the final size. A non-zero return cancels the write: CKPT_EIO,
 * "cancelled", and no output. */
typedef int (*ckpt_progress_fn)(void *ud, uint64_t done, uint64_t total);

typedef struct ckpt_write_options {
    ckpt_write_format format;
    bool convert;               /* convert every floating tensor (float16/32/64, bfloat16) ... */
    ckpt_dtype dtype;           /* ... to this: FLOAT32, FLOAT16 or BFLOAT16 (see ckpt_convert) */
    bool force;                 /* replace an existing file at the path (never an input) */
    const char *const *inputs;  /* NULL-terminated: files the output must not be (same inode:
                                 * hard links and other spellings of the path count) */
    const char *const *metadata;/* safetensors __metadata__: key, value, key, value, ..., NULL */
    const char *root;           /* pth: the archive's folder; NULL: the output's name without
                                 * its extension, as torch.save names it ("archive" when that
                                 * is empty or not ASCII) */
    uint64_t zip64_from;        /* pth: sizes and offsets from this on take ZIP64 fields;
                                 * 0: 0xFFFFFFFF as every zip writer. Tests lower it. */
    ckpt_progress_fn progress;
    void *progress_ud;
} ckpt_write_options;

/* A tensor that shared memory with one written before it. */
typedef struct ckpt_write_shared {
    const char *key;
    const char *with;           /* the key written earlier */
} ckpt_write_shared;

typedef struct ckpt_write_report {
    uint64_t file_bytes;        /* size of the file written */
    uint64_t data_bytes;        /* tensor bytes in it */
    size_t n_tensors;
    size_t n_records;           /* pth: storages written (data/0 ...); safetensors: n_tensors */
    size_t n_converted;         /* tensors whose dtype was changed */
    /* pth: tensors that were the identical view of an earlier one's storage and share its
     * record, as torch.save would write them. safetensors: tensors overlapping an earlier
     * one's memory, written as separate copies (safetensors has no sharing). */
    ckpt_write_shared *shared;
    size_t n_shared;
    void *internal;
} ckpt_write_report;

/* Write every entry of sd (all must be tensors: CKPT_EINVAL names the first that is not) to
 * path in opt->format. pth: sd's order, sd->meta as _metadata when sd->has_metadata; a tensor
 * is written contiguous on a storage of its own unless it is the identical view (storage,
 * dtype, offset, shape, strides) of an earlier one, which then shares that storage's record.
 * safetensors: sorted by dtype (widest first) then name, opt->metadata as __metadata__.
 * CKPT_EEXIST when path exists and opt->force is false; CKPT_EINVAL when path is one of
 * opt->inputs; CKPT_EUNSUPPORTED for a dtype the format cannot hold (pth: those without a
 * PyTorch 1.13 storage class; safetensors: complex128, quantized); CKPT_EIO for a failed
 * write (its message names the system error: "no space left on device"). report may be NULL;
 * else on success *report belongs to the caller (ckpt_write_report_free). */
CKPT_API int ckpt_write_sd(const char *path, const struct ckpt_sd *sd,
                           const ckpt_write_options *opt, ckpt_write_report **report,
                           ckpt_error *err);
/* The two formats of ckpt_write_sd, whatever opt->format says. */
CKPT_API int ckpt_write_pth(const char *path, const struct ckpt_sd *sd,
                            const ckpt_write_options *opt, ckpt_write_report **report,
                            ckpt_error *err);
CKPT_API int ckpt_write_safetensors(const char *path, const struct ckpt_sd *sd,
                                    const ckpt_write_options *opt, ckpt_write_report **report,
                                    ckpt_error *err);
CKPT_API void ckpt_write_report_free(ckpt_write_report *r); /* NULL is a no-op */

/* float16, bfloat16, float32, float64. */
CKPT_API bool ckpt_dtype_is_float(ckpt_dtype dt);
/* Convert n elements between the float dtypes as PyTorch 1.13's CPU kernels do for a
 * contiguous tensor (`x.half()`, `x.bfloat16()`, `x.float()`, `x.double()`): round to nearest
 * even, float64 to float16/bfloat16 through float32 (double rounding, as torch), overflow to
 * infinity, subnormals kept. NaN: to float16 sign | 0x7E00; to bfloat16 0xFFFF from float32
 * (torch's vector kernel), 0x7FC0 from float16, from float64 0xFFFF in each whole block of 16
 * elements and 0x7FC0 in the last n % 16; float16 to float32/64 quiets a signalling NaN and
 * keeps its payload; bfloat16 to float32 is exact. to == from copies. CKPT_EINVAL for other
 * dtypes; src and dst must not overlap. */
CKPT_API int ckpt_convert(ckpt_dtype to, void *dst, ckpt_dtype from, const void *src, size_t n,
                          ckpt_error *err);

/* Hands t's elements in row-major order to fn, as dtype `to` (t->dtype: the exact bytes; a
 * float dtype: converted as ckpt_convert does, with torch's NaN choice for t's layout), in
 * pieces of at most a few MB: straight from the mapped file when t is contiguous and not
 * converted, else through a buffer of about 1 MB. fn returns CKPT_OK or an error that stops
 * the stream and is returned. A tensor with no elements makes no call. */
typedef int (*ckpt_chunk_fn)(void *ud, const void *data, size_t n, ckpt_error *err);
CKPT_API int ckpt_tensor_stream(const ckpt_tensor *t, ckpt_dtype to, ckpt_chunk_fn fn, void *ud,
                                ckpt_error *err);

/* ---- inference (ckpt_model_*) ------------------------------------------------------------- */
/*
 * In libckpt only (not in libckpt-reader), as are the images below.
 *
 * A network in eval mode (the ResNets: see ckpt_arch_runnable), built once from an
 * architecture and its weights, then run on preprocessed images (float32 NCHW, already
 * normalised):
 *
 *     const ckpt_value *sd = ...;   // a dict of tensors with torchvision's keys ("conv1.weight")
 *     ckpt_model *m;
 *     if (ckpt_model_load(ckpt_arch_by_name("resnet50"), 1000, sd, NULL, NULL, &m, &err))
 *         return fail(&err);
 *     float logits[1000];
 *     ckpt_model_run(m, image, 1, 224, 224, logits, NULL, &err);
 *     ckpt_model_free(m);
 *
 * BatchNorm is folded into the convolutions at load; the weights are copied, so the file may
 * be closed once the model is loaded. The same model, input and backend give the same output
 * bits for every thread count and for every position of an image in a batch (docs/INFERENCE.md
 * says what is and is not guaranteed across machines).
 */
typedef struct ckpt_model ckpt_model;

typedef enum ckpt_backend {
    CKPT_BACKEND_AUTO, /* dnnl when the library was built with it, else ref */
    CKPT_BACKEND_REF,  /* plain C, every layer written out; slow but needs nothing */
    CKPT_BACKEND_DNNL, /* oneDNN (libdnnl): blocked layouts, fused post-ops, Winograd */
} ckpt_backend;

/* "auto", "ref", "dnnl"; NULL when out of range. */
CKPT_API const char *ckpt_backend_name(ckpt_backend b);
/* By name; -1 when unknown. */
CKPT_API int ckpt_backend_from_name(const char *name);
/* Whether this build of the library has it (AUTO and REF: always). */
CKPT_API bool ckpt_backend_available(ckpt_backend b);

#define CKPT_MODEL_NO_WINOGRAD 1u  /* dnnl: direct convolution everywhere */
#define CKPT_MODEL_WINOGRAD_ALL 2u /* dnnl: Winograd on every stride-1 3x3 conv without groups
                                    * (the default uses it where it wins; see INFERENCE.md) */
#define CKPT_MODEL_PROFILE 4u      /* dnnl: time every layer of every run (a clock read and a
                                    * stream wait per layer); see ckpt_model_get_layer */
#define CKPT_MODEL_BF16 8u         /* dnnl: bfloat16 weights and activations (float32 bias,
                                    * accumulation and head), about 1.7x faster where the CPU
                                    * has bf16 dot products, CKPT_EUNSUPPORTED where it has not
                                    * (ckpt_model_bf16_available); accuracy in INFERENCE.md */
#define CKPT_MODEL_ONE_SIZE 16u    /* run only at the options' height x width (ckpt_model_run
                                    * refuses other sizes, CKPT_EINVAL): dnnl's Winograd convs
                                    * then need not keep their plain weights to re-derive their
                                    * layout for another size (14 MB for ResNet-50) */

typedef struct ckpt_model_options {
    ckpt_backend backend; /* CKPT_BACKEND_AUTO */
    int threads;          /* 0: the number of online CPUs */
    uint32_t flags;       /* CKPT_MODEL_* */
    int height, width;    /* the image size to prepare for at load (dnnl compiles its kernels
                           * per size; another size costs one rebuild at its first run);
                           * 0: 224 */
} ckpt_model_options;

/* Supplies one weight: the tensor called key (torchvision's state_dict name, "layer1.0.bn1.
 * running_var"), which must have exactly the shape expect_shape[0..ndim), converted to float32
 * into out (the product of the shape elements). Returns CKPT_OK, or fills err (CKPT_EMISMATCH
 * for a missing or misshapen tensor) and returns its status. */
typedef int (*ckpt_weight_fn)(void *ud, const char *key, const int64_t *expect_shape, int ndim,
                              float *out, ckpt_error *err);

/* Build the model for arch with num_classes outputs, asking fn for every weight it needs (the
 * BatchNorm num_batches_tracked counters are not asked for). num_classes 0: the backbone alone
 * (a self-supervised checkpoint without fc): the head is not asked for, and ckpt_model_run
 * writes features only, what torchvision's model with fc = nn.Identity() returns. opt may be
 * NULL. On success *out belongs to the caller; free it with ckpt_model_free.
 * CKPT_EUNSUPPORTED when opt asks for a backend this build lacks. */
CKPT_API int ckpt_model_new(const ckpt_arch *arch, int64_t num_classes, ckpt_weight_fn fn,
                            void *ud, const ckpt_model_options *opt, ckpt_model **out,
                            ckpt_error *err);
/* ckpt_model_new reading from a dict of tensors: the weight "conv1.weight" is the tensor at key
 * prefix + "conv1.weight" (prefix NULL or "" for none), read with ckpt_tensor_read, so any real
 * float or integer dtype is accepted. Extra keys are ignored; checking that the dict loads
 * strictly is ckpt_sd_*'s job. The model does not keep pointers into state_dict. */
CKPT_API int ckpt_model_load(const ckpt_arch *arch, int64_t num_classes,
                             const ckpt_value *state_dict, const char *prefix,
                             const ckpt_model_options *opt, ckpt_model **out, ckpt_error *err);
/* The same from a state dict view made by ckpt_sd_from_value (keys already unwrapped). */
CKPT_API int ckpt_model_load_sd(const ckpt_arch *arch, int64_t num_classes,
                                const struct ckpt_sd *sd, const ckpt_model_options *opt,
                                ckpt_model **out, ckpt_error *err);
/* Run batch images input[batch][3][height][width] (any height and width from 1 to 16384; the
 * average pool adapts) and write logits[batch][classes] and, if features is not NULL, the
 * pooled features before fc, features[batch][ckpt_model_features(m)] (a backbone, built with
 * num_classes 0, needs features and ignores logits, which may be NULL). A batch's outputs equal
 * those of its images run alone, bit for bit (dnnl runs groups of 8, 4 and 2 images on
 * batched primitives pinned to the one-image kernels; tests prove it per group size). Not
 * safe to call on one model from two threads at once. Sets the calling thread's OpenMP thread
 * count to the model's for the call and restores it. */
CKPT_API int ckpt_model_run(ckpt_model *m, const float *input, int batch, int height, int width,
                            float *logits, float *features, ckpt_error *err);
/* NULL is a no-op. */
CKPT_API void ckpt_model_free(ckpt_model *m);

/* Whether CKPT_MODEL_BF16 can be used on this machine (dnnl built in, and bf16 dot products:
 * AVX512_BF16 or AMX, as oneDNN sees them; DNNL_MAX_CPU_ISA can hide them). */
CKPT_API bool ckpt_model_bf16_available(void);

/* Where the time of loading and running went, in milliseconds. Load phases are always
 * recorded; per-layer times only with CKPT_MODEL_PROFILE. */
typedef struct ckpt_model_profile {
    double load_ms;         /* all of ckpt_model_new */
    double read_fold_ms;    /* reading the weights (fn) and folding BatchNorm */
    double build_ms;        /* dnnl: creating the primitives for the prepared size */
    double reorder_ms;      /* dnnl: wall time of reading, folding and reordering the convs'
                             * weights (reorders spread over the threads, overlapped with the
                             * reading of the next group) */
    double winograd_cpu_ms; /* dnnl: of which Winograd weight transforms, summed over threads */
    double blocked_cpu_ms;  /* dnnl: and reorders into blocked layouts, summed over threads */
    double first_run_ms;    /* the first ckpt_model_run call (0 before it) */
    int first_run_images;   /* its batch */
    int64_t images;         /* images run with CKPT_MODEL_PROFILE */
    int largest_group;      /* dnnl: most images run at once by batched primitives so far (1:
                             * one at a time; batched plans whose kernels would differ from
                             * one image's are not used) */
} ckpt_model_profile;

/* One step of the network as the dnnl backend runs it. */
typedef struct ckpt_model_layer {
    const char *name;       /* "conv1", "maxpool", "layer1.0.conv2", "output" (a reorder) */
    const char *impl;       /* oneDNN's implementation ("brgconv:avx512_core", ...) */
    double gflop;           /* per image at the prepared size; 0 for other than convs */
    double ms;              /* per image, mean over the profiled images (0 without profiling) */
} ckpt_model_layer;

/* The pointers in *out stay valid until the model is freed or run at another size. */
CKPT_API void ckpt_model_get_profile(const ckpt_model *m, ckpt_model_profile *out);
/* Layer i; false past the end (and always for the ref backend). */
CKPT_API bool ckpt_model_get_layer(const ckpt_model *m, size_t i, ckpt_model_layer *out);

/* This machine's arithmetic peak in GFLOP/s on `threads` threads (0: the default count),
 * measured now (about 30 ms of every thread): independent fused multiply-adds on the widest
 * vectors the CPU has (AVX-512, else AVX2), or with bf16 AVX512_BF16's dot products (two
 * multiply-adds per fp32 lane), best of three. 0 where it cannot be measured (not x86-64, no
 * such instructions). A layer's GFLOP/s over this is the share of the machine it uses. */
CKPT_API double ckpt_peak_gflops(int threads, bool bf16);

CKPT_API ckpt_backend ckpt_model_backend(const ckpt_model *m); /* REF or DNNL, never AUTO */
CKPT_API int ckpt_model_threads(const ckpt_model *m);
CKPT_API int64_t ckpt_model_classes(const ckpt_model *m);
CKPT_API int64_t ckpt_model_features(const ckpt_model *m); /* ckpt_arch_features */

/* ---- images and preprocessing (ckpt_image_*, ckpt_npy_*) ---------------------------------- */

/* What torchvision sees: `PIL.Image.open(path).convert("RGB")` for a JPEG or PNG, then
 * Resize(S) -> CenterCrop(C) -> ToTensor -> Normalize(ImageNet), reproduced bit for bit
 * (docs/PREPROCESSING.md says exactly what is replicated and what is guaranteed).
 *
 *     ckpt_image img;
 *     float *x = malloc(3 * 224 * 224 * sizeof(float));
 *     if (ckpt_image_load("cat.jpg", NULL, &img, &err) == CKPT_OK) {
 *         ckpt_image_preprocess(&img, 256, 224, x, 3 * 224 * 224 * sizeof(float), &err);
 *         ckpt_image_free(&img);
 *     }
 *     int64_t shape[4] = {1, 3, 224, 224};
 *     ckpt_npy_write("x.npy", x, 4, shape, &err);
 *
 * Every function here is thread-safe: no global state, and images are plain malloc'd memory.
 */

/* Pillow's decompression-bomb limit (2 * Image.MAX_IMAGE_PIXELS): Image.open refuses more. */
#define CKPT_IMAGE_MAX_PIXELS 178956970ull
#define CKPT_IMAGE_MAX_FILE (1ull << 30)   /* bytes of one image file */
#define CKPT_IMAGE_MAX_JPEG_SCANS 1000     /* progressive scans (Pillow has no limit) */
#define CKPT_IMAGE_MAX_SIDE 65535          /* resize and crop of ckpt_image_preprocess */

/* An 8-bit RGB image. Channel c (0 R, 1 G, 2 B) of pixel (x, y) is
 *     pixels[((size_t)y * width + x) * 3 + c]
 * rows are contiguous, with no padding. */
typedef struct ckpt_image {
    int width, height;    /* >= 1 */
    uint8_t *pixels;      /* belongs to the image: ckpt_image_free */
    const char *format;   /* "jpeg" or "png" (static strings); NULL when not decoded */
    /* The mode Pillow opens the file in, before convert("RGB"): "RGB", "L", "CMYK", "P",
     * "1", "I", "LA", "RGBA" (static strings); NULL when not decoded. */
    const char *mode;
} ckpt_image;

typedef struct ckpt_image_options {
    uint64_t max_pixels; /* 0: CKPT_IMAGE_MAX_PIXELS; more is CKPT_ELIMIT */
} ckpt_image_options;

/* Decode a JPEG or PNG file to RGB exactly as Pillow 9.4 with the system libjpeg-turbo does
 * for Image.open(path).convert("RGB"): grey is replicated, palettes are looked up, CMYK is
 * converted with Pillow's formula, 16-bit samples keep their high byte (16-bit grey saturates
 * at 255, as Pillow's "I" -> "RGB" does), alpha is dropped (not composited). What Pillow
 * refuses is refused (a truncated file is CKPT_ECORRUPT "image file is truncated"); other
 * image formats are CKPT_EUNSUPPORTED with a message naming them. opt may be NULL. On success
 * *out belongs to the caller (ckpt_image_free); on failure *out is zeroed. */
CKPT_API int ckpt_image_load(const char *path, const ckpt_image_options *opt, ckpt_image *out,
                             ckpt_error *err);
/* The same from size bytes at data (not kept after the call). Sniffs the format from the
 * first bytes, as Pillow does; the file name's extension plays no part. */
CKPT_API int ckpt_image_decode(const void *data, size_t size, const ckpt_image_options *opt,
                               ckpt_image *out, ckpt_error *err);
/* Free img->pixels and zero *img. NULL, or an image already freed, is a no-op. */
CKPT_API void ckpt_image_free(ckpt_image *img);

/* The size torchvision 0.14's Resize(size) gives a width x height image: the short side
 * becomes size, the long side int(size * long / short). CKPT_ELIMIT when it would not fit. */
CKPT_API int ckpt_image_resized_size(int width, int height, int size, int *out_width,
                                     int *out_height, ckpt_error *err);
/* PIL's in.resize((width, height), Image.BILINEAR), byte for byte (Pillow's fixed-point
 * two-pass resample; an unchanged size is a copy). On success *out belongs to the caller
 * (ckpt_image_free); at most CKPT_IMAGE_MAX_PIXELS pixels. */
CKPT_API int ckpt_image_resize(const ckpt_image *in, int width, int height, ckpt_image *out,
                               ckpt_error *err);

/* torchvision's Resize(resize) -> CenterCrop(crop) -> ToTensor() -> Normalize(mean=(0.485,
 * 0.456, 0.406), std=(0.229, 0.224, 0.225)) on img, bit for bit, as a float32 CHW tensor of
 * 3 x crop x crop written to out (out_size bytes, at least 3 * crop * crop * 4). resize 0
 * skips the Resize. A crop larger than the image is padded with black, as torchvision does.
 * Only the pixels the crop keeps are resampled, so memory is bounded by the crop. */
CKPT_API int ckpt_image_preprocess(const ckpt_image *img, int resize, int crop, float *out,
                                   size_t out_size, ckpt_error *err);

/* A float32 array read from a numpy .npy file. */
typedef struct ckpt_npy {
    int ndim;                      /* 0 ... CKPT_MAX_DIMS */
    int64_t shape[CKPT_MAX_DIMS];
    int64_t numel;                 /* product of shape (1 for ndim 0) */
    float *data;                   /* numel values, C order; belongs to the array */
} ckpt_npy;

/* Write data (C order, numel = product of shape) as a .npy file numpy 1.24's np.save would
 * write byte for byte: version 1.0, '<f4', fortran_order False, header padded to 64 bytes. */
CKPT_API int ckpt_npy_write(const char *path, const float *data, int ndim, const int64_t *shape,
                            ckpt_error *err);
/* Read a .npy file of format version 1.0, 2.0 or 3.0 holding '<f4' in C order; any other
 * dtype or layout is refused naming it, and the data must fill the file exactly. On success
 * *out belongs to the caller (ckpt_npy_free). */
CKPT_API int ckpt_npy_read(const char *path, ckpt_npy *out, ckpt_error *err);
/* The same from size bytes at data (copied). */
CKPT_API int ckpt_npy_decode(const void *data, size_t size, ckpt_npy *out, ckpt_error *err);
/* Free a->data and zero *a. NULL is a no-op. */
CKPT_API void ckpt_npy_free(ckpt_npy *a);

#ifdef __cplusplus
}
#endif
#endif /* CKPT_H */
