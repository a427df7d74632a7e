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
#define CKPT_DEFAULT_MAX_INFLATE (64ull << 30)   /* bytes of one decompressed zip entry */

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
    uint64_t max_alloc;   /* 0: CKPT_DEFAULT_MAX_ALLOC */
    uint64_t max_inflate; /* 0: CKPT_DEFAULT_MAX_INFLATE */
    ckpt_alloc_fn alloc;  /* NULL: the C library's realloc/free */
    void *alloc_ud;
} ckpt_options;

typedef enum ckpt_format {
    CKPT_FORMAT_ZIP,         /* torch.save, torch >= 1.6 */
    CKPT_FORMAT_LEGACY,      /* torch.save(_use_new_zipfile_serialization=False) */
    CKPT_FORMAT_PICKLE,      /* a bare pickle stream; torch.load refuses it, ckpt shows it */
    CKPT_FORMAT_SAFETENSORS, /* safetensors */
} ckpt_format;

/* "zip", "legacy", "pickle", "safetensors". */
CKPT_API const char *ckpt_format_name(ckpt_format fmt);

/* Open and parse path. On success *out belongs to the caller; free it with ckpt_close. On
 * failure *out is NULL and err says why (CKPT_EFORMAT for a file of another kind, with a
 * message that names that kind: "a Git LFS pointer, not the weights: run 'git lfs pull'").
 * opt may be NULL for the defaults. */
CKPT_API int ckpt_open(const char *path, const ckpt_options *opt, ckpt_file **out,
                       ckpt_error *err);
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
CKPT_API uint64_t ckpt_tensor_nbytes(const ckpt_tensor *t); /* numel * element size */
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
 * as one byte 0/1), written as 64 lowercase hex digits and a NUL into hex. */
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
} ckpt_global_ref;

/* The globals of an opened file. *out belongs to f. */
CKPT_API size_t ckpt_globals(const ckpt_file *f, const ckpt_global_ref **out);

/* What `ckpt scan` needs: every global of every pickle in the file, even when a pickle is
 * malformed after naming them (parse_error then says what is wrong). Works on files ckpt_open
 * refuses as long as they hold pickles: bare pickles, several pickles back to back, zips with
 * any .pkl entry. *out belongs to the caller; free it with ckpt_scan_free. */
typedef struct ckpt_scan_result {
    const char *format;       /* "zip", "legacy", "pickle", "safetensors", or the refused kind */
    ckpt_global_ref *globals;
    size_t n_globals;
    const char *parse_error;  /* NULL, or why parsing stopped early */
    bool safe;                /* no unknown or dangerous global */
    void *internal;
} ckpt_scan_result;

CKPT_API int ckpt_scan(const char *path, const ckpt_options *opt, ckpt_scan_result **out,
                       ckpt_error *err);
CKPT_API void ckpt_scan_free(ckpt_scan_result *r);

/* ---- state dicts (ckpt_sd_*) -------------------------------------------------------------- */
/* (issue 3: finding, unwrapping and judging state dicts; declarations follow in this section) */

#ifdef __cplusplus
}
#endif
#endif /* CKPT_H */
