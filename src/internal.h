/*
 * internal.h - what the modules of libckpt share and nobody else sees.
 *
 * Non-static names that are not public API carry the ckpt__ prefix (libuv's uv__). Every
 * module has one prefix: ckpt__arena_*, ckpt__value_*, ckpt__pickle_*, ckpt__zip_*,
 * ckpt__detect_*, ckpt__storage_*, ckpt__sd_*, ckpt__arch_*.
 */
#ifndef CKPT_INTERNAL_H
#define CKPT_INTERNAL_H

#include "ckpt.h"

#include <stdarg.h>
#include <string.h>

/* ---- errors ------------------------------------------------------------------------------- */

/* Sets err (if not NULL) and returns status; records the source line (SQLite's _BKPT). */
int ckpt__error_set(ckpt_error *err, int status, const char *src_file, int src_line,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Every rejection of file content goes through this: return CKPT_CORRUPT(err, "...", ...); */
#define CKPT_CORRUPT(err, ...) ckpt__error_set((err), CKPT_ECORRUPT, __FILE__, __LINE__, __VA_ARGS__)
#define CKPT_FAIL(err, status, ...) ckpt__error_set((err), (status), __FILE__, __LINE__, __VA_ARGS__)
#define CKPT_NOMEM(err) ckpt__error_set((err), CKPT_ENOMEM, __FILE__, __LINE__, "out of memory")

/* ---- checked arithmetic ------------------------------------------------------------------- */

/* Return true on overflow, like the builtins they wrap; *out then holds the result modulo
 * 2^64 (torch's int64 arithmetic wraps so, e.g. for the strides of an empty [0, 2^40, 2^40]:
 * ckpt__mul_wrap gives that result without signed-overflow UB). */
#define ckpt__mul_overflow(a, b, out) __builtin_mul_overflow((a), (b), (out))
#define ckpt__add_overflow(a, b, out) __builtin_add_overflow((a), (b), (out))
static inline int64_t ckpt__mul_wrap(int64_t a, int64_t b)
{
    int64_t r;
    (void)ckpt__mul_overflow(a, b, &r);
    return r;
}

/* ---- allocation --------------------------------------------------------------------------- */

typedef struct ckpt__alloc {
    ckpt_alloc_fn fn;
    void *ud;
} ckpt__alloc;

/* Fills a from opt (NULL or a NULL alloc: the C library). */
void ckpt__alloc_init(ckpt__alloc *a, const ckpt_options *opt);
void *ckpt__malloc(const ckpt__alloc *a, size_t n);
void *ckpt__realloc(const ckpt__alloc *a, void *p, size_t osize, size_t nsize);
void ckpt__free(const ckpt__alloc *a, void *p, size_t size);

/* One arena per opened file: everything parsed from it, freed at once. Allocations are 16-byte
 * aligned and zeroed. `limit` bounds the total (CKPT_ELIMIT is the caller's to report when an
 * allocation returns NULL and ckpt__arena_over_limit says so). */
typedef struct ckpt__arena ckpt__arena;
ckpt__arena *ckpt__arena_new(const ckpt__alloc *a, uint64_t limit);
void ckpt__arena_free(ckpt__arena *ar);
void *ckpt__arena_alloc(ckpt__arena *ar, size_t n);
/* Grow a block allocated from this arena (copies; the old block stays until the arena dies). */
void *ckpt__arena_grow(ckpt__arena *ar, void *p, size_t osize, size_t nsize);
char *ckpt__arena_strndup(ckpt__arena *ar, const char *s, size_t n);
char *ckpt__arena_strdup(ckpt__arena *ar, const char *s);
char *ckpt__arena_printf(ckpt__arena *ar, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t ckpt__arena_used(const ckpt__arena *ar);
bool ckpt__arena_over_limit(const ckpt__arena *ar); /* the last NULL was the limit, not malloc */
/* "1 GiB", "3 MiB", "1000 bytes": a limit or a claimed size, for messages (buf: 32 bytes). */
const char *ckpt__size_str(char buf[32], uint64_t n);
/* The right error for an arena allocation that returned NULL. */
int ckpt__arena_error(const ckpt__arena *ar, ckpt_error *err);

/* ---- float16 and bfloat16, on bit patterns, as torch converts them (half.c) --------------- */

uint32_t ckpt__f16_to_f32(uint16_t h);  /* exact; NaN quietened, payload kept */
uint16_t ckpt__f32_to_f16(uint32_t x);  /* nearest even; NaN -> sign | 0x7E00 */
uint32_t ckpt__bf16_to_f32(uint16_t b); /* exact, NaN untouched */
uint16_t ckpt__f32_to_bf16(uint32_t x, uint16_t nan); /* nearest even; NaN -> nan */
float ckpt__f32_from_bits(uint32_t u);

/* ---- keyed hashing and the hash index (hash.c) --------------------------------------------- */

/* SipHash-1-3 under a per-process random key: what a file's author cannot aim collisions at.
 * seed separates kinds of keys. Streaming: init, add bytes, end (end does not consume). */
typedef struct ckpt__hasher {
    uint64_t v[4], m;
    size_t n;
} ckpt__hasher;
void ckpt__hasher_init(ckpt__hasher *h, uint64_t seed);
void ckpt__hasher_byte(ckpt__hasher *h, uint8_t b);
void ckpt__hasher_add(ckpt__hasher *h, const void *p, size_t n);
void ckpt__hasher_u64(ckpt__hasher *h, uint64_t x);
uint64_t ckpt__hasher_end(const ckpt__hasher *h);
uint64_t ckpt__hash(const void *p, size_t n, uint64_t seed);
uint64_t ckpt__hash_u64(uint64_t x, uint64_t seed);

/* An index over items kept in the caller's array (item i is stored as i + 1): open addressing,
 * at most half full, slots from the arena. Zero-initialised is empty. */
typedef struct ckpt__hslot {
    uint32_t hash; /* low bits of the item's hash */
    uint32_t item; /* index + 1; 0: an empty slot */
} ckpt__hslot;
typedef struct ckpt__hindex {
    ckpt__hslot *slots;
    size_t mask, len;
} ckpt__hindex;
/* Candidates for hash h, as item index + 1 (0: no more); the caller compares the keys. */
size_t ckpt__hindex_first(const ckpt__hindex *ix, uint64_t h, size_t *pos);
size_t ckpt__hindex_next(const ckpt__hindex *ix, uint64_t h, size_t *pos);
/* Add item (not already present) with hash h; 0, or -1 when the arena is out (its error). */
int ckpt__hindex_add(ckpt__arena *ar, ckpt__hindex *ix, uint64_t h, size_t item);
/* Make room for n items in all, so that adding them does not grow the table. */
int ckpt__hindex_reserve(ckpt__arena *ar, ckpt__hindex *ix, size_t n);

/* ---- values ------------------------------------------------------------------------------- */

ckpt_value *ckpt__value_new(ckpt__arena *ar, ckpt_type t);
ckpt_value *ckpt__value_str(ckpt__arena *ar, ckpt_type t, const char *s, size_t n); /* STR/BYTES */
ckpt_value *ckpt__value_int(ckpt__arena *ar, int64_t i);
/* Append to a TUPLE/LIST/SET. CKPT_OK, or the arena's error. */
int ckpt__seq_push(ckpt__arena *ar, ckpt_value *seq, ckpt_value *item, ckpt_error *err);
/* d[key] = val with Python's semantics: an equal hashable key (None, bool, int, float, str,
 * bytes, tuples of those) is replaced in place, keeping its position; keys of other kinds
 * are compared by identity. Amortised O(1) (hash index), so a hostile SETITEMS stays linear. */
int ckpt__dict_set(ckpt__arena *ar, ckpt_value *d, ckpt_value *key, ckpt_value *val,
                   ckpt_error *err);
/* Lookup by value key with the same equality; NULL if absent. */
ckpt_value *ckpt__dict_lookup(const ckpt_value *d, const ckpt_value *key);
bool ckpt__value_is_str(const ckpt_value *v, const char *s);
bool ckpt__global_is(const ckpt_value *v, const char *module, const char *name);

/* ---- the set of distinct globals a file names --------------------------------------------- */

typedef struct ckpt__globals {
    ckpt_global_ref *items;
    size_t len, cap;
    ckpt__hindex index; /* over items */
    uint64_t named;     /* occurrences recorded, distinct or not */
    bool side;          /* recording a side pickle: occurrences do not set torch_load */
    unsigned max_proto; /* the highest PROTO of the pickles torch.load runs (0: none) */
} ckpt__globals;

/* Record one occurrence; module is normalised to Python 3 spelling by the caller. */
int ckpt__globals_add(ckpt__arena *ar, ckpt__globals *g, const char *module, const char *name,
                      const char *where, uint64_t offset, ckpt_error *err);

/* ---- the unpickler (pickle.c) ------------------------------------------------------------- */

typedef struct ckpt__pickle_ctx {
    ckpt__arena *arena;
    ckpt__globals *globals; /* every GLOBAL / STACK_GLOBAL / INST is recorded here, or NULL */
    const char *where;      /* name of this pickle for ckpt_global_ref.where */
    uint32_t max_depth;
    uint32_t max_memo;
    /* Turns a persistent id (BINPERSID/PERSID: usually the tuple ('storage', cls, key, loc,
     * numel[, view])) into a value, normally a CKPT_T_STORAGE. NULL: persistent ids are an
     * error ("pickle uses persistent ids outside a torch file"). */
    int (*persistent_load)(void *ud, const ckpt_value *pid, ckpt_value **out, ckpt_error *err);
    void *persistent_ud;
} ckpt__pickle_ctx;

/* Evaluate one pickle starting at buf[0] and ending with its STOP. Never executes anything:
 * calls become values (see docs/FORMAT.md §9 for which ones are understood). On success
 * *out is the result and *consumed the bytes up to and including STOP. On failure the globals
 * met so far are already recorded in ctx->globals, and *consumed is the offset of the opcode
 * that failed (len when the data ends before a STOP). */
int ckpt__pickle_load(ckpt__pickle_ctx *ctx, const uint8_t *buf, size_t len, ckpt_value **out,
                      size_t *consumed, ckpt_error *err);

/* ---- pickled nn.Modules (module.c) -------------------------------------------------------- */

/* If v is a pickled torch.nn.Module (an object whose state holds _parameters and _modules),
 * build what its state_dict() would return, from the recorded values only: an OrderedDict of
 * str keys in state_dict()'s order with {'_metadata': ...} as attrs, in ar. *out is NULL when v
 * is no module. A module that state_dict() would fail on (a _parameters that is no dict, a
 * child that is no module, a cycle in _modules) is CKPT_ECORRUPT; absurd nesting, or more work
 * than the budget allows for all of a file's modules together, CKPT_ELIMIT. */
typedef struct ckpt__module_budget {
    size_t visits, entries; /* spent so far on one file's modules: start at zero */
} ckpt__module_budget;
int ckpt__module_state_dict(ckpt__arena *ar, const ckpt_value *v, ckpt__module_budget *used,
                            ckpt_value **out, ckpt_error *err);
/* "torchvision.models.resnet.ResNet" when v is a pickled nn.Module, else NULL (or out of
 * memory). */
const char *ckpt__module_class(const ckpt_value *v, ckpt__arena *ar);

/* ---- TorchScript archives (torchscript.c) ------------------------------------------------ */

/* f is a torch zip holding <root>/constants.pkl whose data.pkl is in f->root: rewrite each
 * scripted module object's state into a pickled nn.Module's (_parameters, _buffers, _modules
 * as torch.jit.load(f).state_dict() walks them, read from the __parameters__ and __buffers__
 * lines of <root>/code/), so that module.c gives its state dict. A missing code file, a
 * malformed list, a cycle are CKPT_ECORRUPT; sizes past the limits, CKPT_ELIMIT. */
int ckpt__torchscript_open(ckpt_file *f, ckpt_error *err);

/* ---- zip archives (zip.c) ----------------------------------------------------------------- */

typedef struct ckpt__zip_entry {
    const char *name;     /* as stored, NUL-terminated */
    uint64_t data_offset; /* of the entry's (compressed) data in the file */
    uint64_t csize;       /* compressed size */
    uint64_t usize;       /* uncompressed size */
    uint32_t crc32;       /* from the central directory */
    uint16_t method;      /* 0 STORED, 8 DEFLATE */
    uint16_t flags;
    /* Where the local header is and what the data may not overlap; data_offset is valid once
     * placed (ckpt__zip_open places every entry, ckpt__zip_open_lazy none, until read). */
    uint64_t local_offset, cd_offset, cd_size;
    bool placed;
} ckpt__zip_entry;

typedef struct ckpt__zip {
    ckpt__zip_entry *entries; /* in central-directory order */
    size_t n_entries;
    void *index; /* internal: case-insensitive name lookup */
    const char *duplicate; /* a name that appears twice (only ckpt__zip_open_scan allows it) */
    bool duplicate_case;   /* ... differing from its twin in case only */
} ckpt__zip;

/* Parse the central directory of the zip held in map[0..size) (end records, ZIP64 records,
 * local headers: every offset and size checked against size). Entries that are encrypted,
 * or compressed with anything but STORED/DEFLATE, are accepted here and refused on read. */
int ckpt__zip_open(ckpt__arena *ar, const uint8_t *map, uint64_t size, ckpt__zip *out,
                   ckpt_error *err);
/* The same, but without reading the local headers: an entry's data is found and checked at
 * its first ckpt__zip_read (or ckpt__zip_place). Opening a checkpoint then touches the central
 * directory only, not one page per storage record of a file of hundreds of MB. */
int ckpt__zip_open_lazy(ckpt__arena *ar, const uint8_t *map, uint64_t size, ckpt__zip *out,
                        ckpt_error *err);
/* The same as ckpt__zip_open_lazy, but an archive holding a name twice is accepted (with
 * z->duplicate set), for the scanner, which reads every copy: torch reads one or the other. */
int ckpt__zip_open_scan(ckpt__arena *ar, const uint8_t *map, uint64_t size, ckpt__zip *out,
                        ckpt_error *err);
/* Find e's data through its local header and check it against the file (sets data_offset). */
int ckpt__zip_place(const uint8_t *map, uint64_t size, ckpt__zip_entry *e, ckpt_error *err);
/* Case-insensitive exact name lookup (torch uses miniz's, which ignores case). NULL: absent. */
const ckpt__zip_entry *ckpt__zip_find(const ckpt__zip *z, const char *name);
/* The entry's bytes: STORED ones in place (*owned = NULL), DEFLATE ones inflated with zlib into
 * a buffer from `a` (*owned = it; free with ckpt__free(a, owned, e->usize)), refusing more
 * than max_inflate bytes (CKPT_ELIMIT naming --max-inflate), a size DEFLATE cannot expand
 * csize to, or a size other than usize -- before allocating. */
int ckpt__zip_read(const uint8_t *map, uint64_t size, const ckpt__zip_entry *e,
                   const ckpt__alloc *a, uint64_t max_inflate, const uint8_t **data,
                   void **owned, ckpt_error *err);

/* ---- format detection (detect.c) ---------------------------------------------------------- */

typedef enum ckpt__kind {
    CKPT__KIND_ZIP,          /* PK\3\4 at 0: a torch zip, TorchScript, npz, or other zip */
    CKPT__KIND_LEGACY,       /* the legacy magic pickle */
    CKPT__KIND_PICKLE,       /* some other pickle stream */
    CKPT__KIND_SAFETENSORS,
    CKPT__KIND_OTHER,        /* refused; the message says what it is */
} ckpt__kind;

/* Sniff the first bytes. For CKPT__KIND_OTHER, fills err with CKPT_EFORMAT and a message that
 * names the kind ("a Git LFS pointer, not the weights: run 'git lfs pull'", "an HTML page, not
 * a checkpoint (the download went wrong?)", "an empty file", "a numpy .npy file, not a torch
 * checkpoint", "a torch 0.1.x tar checkpoint, which ckpt does not read", "a PNG image", ...). */
ckpt__kind ckpt__detect(const uint8_t *map, uint64_t size, ckpt_error *err);

/* NULL when z looks like a torch zip (first entry in a folder, <root>/data.pkl present); else
 * why it is not one (TorchScript, numpy .npz, no root folder, no data.pkl). */
const char *ckpt__zip_kind_message(const ckpt__zip *z);

/* ---- storages and files (file.c, tensor.c) ------------------------------------------------ */

struct ckpt_storage {
    ckpt_file *file;
    const char *key;
    ckpt_dtype dtype;    /* of the storage class; CKPT_DT_UNTYPED for UntypedStorage */
    uint64_t nbytes;
    /* Where the bytes are; resolved lazily by ckpt__storage_bytes. */
    const ckpt__zip_entry *entry; /* zip */
    uint64_t file_offset;         /* legacy/safetensors: offset of the bytes in the file */
    bool located;                 /* file_offset is valid (legacy: after the blob walk) */
    ckpt_storage *base;           /* legacy view storages: the root storage they slice */
    uint64_t base_offset;         /* byte offset of this view in base */
    const uint8_t *data;          /* resolved bytes, or NULL */
    void *owned;                  /* inflated copy to free, or NULL */
};

struct ckpt_file {
    ckpt__alloc alloc;
    ckpt__arena *arena;
    ckpt_options opt;      /* with defaults filled in */
    const uint8_t *map;
    uint64_t size;
    int fd;                /* the mapped file, kept open for ckpt__file_read; -1: none */
    ckpt_format format;
    const char *zip_root;
    ckpt__zip zip;
    ckpt_value *root;
    ckpt__globals globals;
    ckpt_storage **storages; /* distinct storages, in order of first reference */
    size_t n_storages, cap_storages;
    ckpt__hindex storage_index; /* key -> storage */
    /* zip: <root>/data/<n> records by n, for the decimal keys torch writes ("0".."N-1"), so
     * that binding a storage needs no name formatting or hashing; others use ckpt__zip_find */
    const ckpt__zip_entry **data_by_num;
    size_t n_data_by_num;
    void *pickle_owned;      /* inflated data.pkl to free, or NULL */
    uint64_t pickle_owned_size;
    /* Malformed pickles: the globals named before the error stay listed (for ckpt_scan). */
    ckpt_file **parts;       /* a shard set (shards.c): the shards, closed with f */
    size_t n_parts;
};

/* A file record with defaults filled in and its arena, but nothing mapped (file.c). */
ckpt_file *ckpt__file_new(const ckpt_options *opt, ckpt_error *err);
/* Open path read-only, refusing anything but a regular file ("is a directory", ...); on
 * success *fd is the caller's to close and *size the file's size. */
int ckpt__open_regular(const char *path, int *fd, uint64_t *size, ckpt_error *err);
/* Why a file of mode m (st_mode, not a regular file) cannot be used: "is a FIFO, not a regular
 * file", "is a directory", ... */
const char *ckpt__not_regular(unsigned m);
/* Map path read-only into f (a regular file; a directory or device is refused). */
int ckpt__file_map(ckpt_file *f, const char *path, ckpt_error *err);

/* Does the mapped file start with a pickle of the legacy magic number (any protocol)? */
bool ckpt__is_legacy_stream(ckpt_file *f);
/* Is v the legacy magic number 0x1950a86a20f9469cfc6c? */
bool ckpt__is_legacy_magic(const ckpt_value *v);

/* If zip entry e holds a pickle (by name or by its first bytes), list its globals in
 * f->globals without building anything that could be used; STORED entries are read whatever
 * their flags say. Returns whether it held one; *parse_error (if not NULL and still NULL)
 * receives why a pickle stopped early (scan.c). */
bool ckpt__scan_entry(ckpt_file *f, const ckpt__zip_entry *e, const char **parse_error);

/* Open one mapped file (not a shard set) of any kind ckpt reads (file.c). */
int ckpt__open_single(const char *path, const ckpt_options *opt, ckpt_file **out,
                      ckpt_error *err);
/* shards.c: is path a shard set's index (*.index.json), a shard (-00001-of-00002) or a
 * folder? Then ckpt__shards_open opens the whole set into f (its root: the merged dict). */
bool ckpt__shards_path(const char *path);
int ckpt__shards_open(ckpt_file *f, const char *path, ckpt_error *err);

/* Open a mapped file of any kind ckpt reads (file.c). On failure with a file that got as far
 * as its pickles, *partial (if not NULL) receives the half-built file so that its globals can
 * still be listed; the caller closes it. */
int ckpt__open(const char *path, const ckpt_options *opt, ckpt_file **out, ckpt_file **partial,
               ckpt_error *err);

/* Parse a safetensors file's header into f->root: a dict of tensors in header order, with
 * __metadata__ (a str -> str map) as the dict's attrs (safetensors.c). */
int ckpt__safetensors_open(ckpt_file *f, ckpt_error *err);

/* Add a new storage to f's list and key index (the key must not be present yet). */
int ckpt__storage_register(ckpt_file *f, ckpt_storage *s, ckpt_error *err);

/* The safe output file the writers use: bytes go to a temporary file beside path; commit
 * flushes, fsyncs and renames it (refusing, without opt->force, a path that appeared
 * meanwhile), abort removes it. Only opt->force, inputs and progress are used here. */
typedef struct ckpt__write_file ckpt__write_file;

/* On success *out belongs to the caller until ckpt__write_commit or ckpt__write_abort. */
int ckpt__write_open(const char *path, const ckpt_write_options *opt,
                      ckpt__write_file **out, ckpt_error *err);
/* The final size, when known: reserves the space at once (a full disk fails here, before any
 * data is written) and is the total passed to the progress callback. */
int ckpt__write_expect(ckpt__write_file *w, uint64_t total, ckpt_error *err);
int ckpt__write_bytes(ckpt__write_file *w, const void *data, size_t n, ckpt_error *err);
uint64_t ckpt__write_offset(const ckpt__write_file *w); /* bytes written so far */
const char *ckpt__write_temp_path(const ckpt__write_file *w);
/* Frees w whatever the outcome; on failure the temporary file is removed. */
int ckpt__write_commit(ckpt__write_file *w, ckpt_error *err);
void ckpt__write_abort(ckpt__write_file *w); /* NULL is a no-op */

/* The writers' last step (write.c): check that exactly the planned `total` bytes were written,
 * then commit (fsync, rename), or abort. *w is consumed either way and set to NULL. */
int ckpt__write_finish(ckpt__write_file **w, uint64_t total, ckpt_error *err);

/* Hints about the mapped file's pages in [p, p+n) (no-ops for bytes outside the mapping, such
 * as an inflated entry): prefault maps them in one call before a bulk copy (a fault inside
 * write(2) takes a slow path); release drops them from this process's resident set once they
 * were copied -- they are clean pages of a private read-only mapping, so a later read faults
 * them back in unchanged, and a streamed copy or a model load stays small. */
void ckpt__file_prefault(const ckpt_file *f, const void *p, size_t n);
void ckpt__file_release(const ckpt_file *f, const void *p, size_t n);

/* Copy the n mapped bytes at p (a pointer into f's mapping, or a shard's) to dst with pread(2)
 * instead of through the mapping: the kernel copies straight from the page cache, with none of
 * the page faults and page-table updates that touching the mapping costs (on a virtual machine
 * they were three quarters of a model's read time). 1: copied; 0: not applicable (p is not in
 * a mapping that has its file open, such as an inflated entry), copy from p instead; -1: the
 * read failed or came back short (the file changed since it was opened), err filled. */
int ckpt__file_read(const ckpt_file *f, const void *p, size_t n, void *dst, ckpt_error *err);
/* Close f's file descriptor, keeping its mapping (reads then go through the mapping): a shard
 * set keeps at most a few of its shards' descriptors open. */
void ckpt__file_close_fd(ckpt_file *f);

/* Resolve s's bytes (checked: s->nbytes bytes inside the file or the inflated entry). */
int ckpt__storage_bytes(ckpt_storage *s, const uint8_t **data, ckpt_error *err);

#endif /* CKPT_INTERNAL_H */
