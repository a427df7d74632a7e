/* value.c - parsed pickle values: constructors, dict semantics, the set of globals, dtypes.
 *
 * Dicts keep insertion order in two parallel arrays and a hash index over the hashable keys,
 * so that SETITEMS from a hostile file stays linear and a replaced key keeps its position, as
 * in Python. Equality follows Python for the key types pickles use as keys: None, bool, int,
 * float (True == 1 == 1.0), str, bytes and tuples of those; any other key is compared by
 * identity. */
#include "internal.h"

#include <math.h>

/* ---- dtypes ---------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
    const char *storage;
    const char *st;
} dtype_table[CKPT_DT_COUNT] = {
#define CKPT__DTYPE_ROW(e, name, size, storage, st) {name, size, storage, st},
    CKPT_DTYPE_MAP(CKPT__DTYPE_ROW)
#undef CKPT__DTYPE_ROW
};

const char *ckpt_dtype_name(ckpt_dtype dt)
{
    return (unsigned)dt < CKPT_DT_COUNT ? dtype_table[dt].name : NULL;
}

size_t ckpt_dtype_size(ckpt_dtype dt)
{
    return (unsigned)dt < CKPT_DT_COUNT ? dtype_table[dt].size : 0;
}

const char *ckpt_dtype_safetensors(ckpt_dtype dt)
{
    return (unsigned)dt < CKPT_DT_COUNT ? dtype_table[dt].st : NULL;
}

int ckpt_dtype_from_name(const char *name)
{
    static const struct {
        const char *alias;
        ckpt_dtype dt;
    } aliases[] = {
        {"float", CKPT_DT_FLOAT32},   {"double", CKPT_DT_FLOAT64}, {"half", CKPT_DT_FLOAT16},
        {"long", CKPT_DT_INT64},      {"int", CKPT_DT_INT32},      {"short", CKPT_DT_INT16},
        {"cfloat", CKPT_DT_COMPLEX64}, {"cdouble", CKPT_DT_COMPLEX128},
        {"chalf", CKPT_DT_COMPLEX32},
    };
    if (!name)
        return -1;
    if (strncmp(name, "torch.", 6) == 0)
        name += 6;
    /* UNTYPED shares the name "uint8" with UINT8; the first match wins, which is UINT8. */
    for (int i = 0; i < CKPT_DT_COUNT; i++)
        if (strcmp(dtype_table[i].name, name) == 0)
            return i;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(aliases[i].alias, name) == 0)
            return (int)aliases[i].dt;
    return -1;
}

int ckpt_dtype_from_storage(const char *class_name)
{
    if (!class_name)
        return -1;
    const char *dot = strrchr(class_name, '.');
    if (dot)
        class_name = dot + 1;
    for (int i = 0; i < CKPT_DT_COUNT; i++)
        if (dtype_table[i].storage && strcmp(dtype_table[i].storage, class_name) == 0)
            return i;
    if (strcmp(class_name, "TypedStorage") == 0)
        return -1;
    return -1;
}

int ckpt_dtype_from_safetensors(const char *st_name)
{
    if (!st_name)
        return -1;
    for (int i = 0; i < CKPT_DT_COUNT; i++)
        if (dtype_table[i].st && strcmp(dtype_table[i].st, st_name) == 0)
            return i;
    return -1;
}

/* ---- type names ------------------------------------------------------------------------ */

const char *ckpt_type_name(ckpt_type t)
{
    static const char *const names[] = {
        "none", "bool",  "int",  "int",  "float",  "complex", "str",    "bytes",
        "tuple", "list", "set",  "dict", "global", "object",  "tensor", "storage",
    };
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

const char *ckpt_format_name(ckpt_format fmt)
{
    switch (fmt) {
    case CKPT_FORMAT_ZIP: return "zip";
    case CKPT_FORMAT_LEGACY: return "legacy";
    case CKPT_FORMAT_PICKLE: return "pickle";
    case CKPT_FORMAT_SAFETENSORS: return "safetensors";
    case CKPT_FORMAT_TORCHSCRIPT: return "torchscript";
    }
    return "unknown";
}

/* ---- constructors ---------------------------------------------------------------------- */

ckpt_value *ckpt__value_new(ckpt__arena *ar, ckpt_type t)
{
    ckpt_value *v = ckpt__arena_alloc(ar, sizeof *v);
    if (v)
        v->type = t;
    return v;
}

ckpt_value *ckpt__value_str(ckpt__arena *ar, ckpt_type t, const char *s, size_t n)
{
    ckpt_value *v = ckpt__value_new(ar, t);
    if (!v)
        return NULL;
    char *p = ckpt__arena_strndup(ar, s, n);
    if (!p)
        return NULL;
    v->u.str.data = p;
    v->u.str.len = n;
    return v;
}

ckpt_value *ckpt__value_int(ckpt__arena *ar, int64_t i)
{
    ckpt_value *v = ckpt__value_new(ar, CKPT_T_INT);
    if (v)
        v->u.i = i;
    return v;
}

int ckpt__seq_push(ckpt__arena *ar, ckpt_value *seq, ckpt_value *item, ckpt_error *err)
{
    if (seq->u.seq.len == seq->u.seq.cap) {
        size_t ncap = seq->u.seq.cap ? seq->u.seq.cap * 2 : 4;
        ckpt_value **items = ckpt__arena_grow(ar, seq->u.seq.items,
                                              seq->u.seq.cap * sizeof *items, ncap * sizeof *items);
        if (!items)
            return ckpt__arena_error(ar, err);
        seq->u.seq.items = items;
        seq->u.seq.cap = ncap;
    }
    seq->u.seq.items[seq->u.seq.len++] = item;
    return CKPT_OK;
}

/* ---- hashing and equality -------------------------------------------------------------- */

#define HASH_MAX_DEPTH 32 /* tuples nested deeper are hashed and compared by identity */

/* Seeds of ckpt__hash per kind of key: "1" and b"1" and 1 hash apart. */
enum { SEED_INT = 1, SEED_FLOAT, SEED_STR, SEED_BYTES, SEED_BIGINT, SEED_TUPLE, SEED_NONE,
       SEED_OTHER, SEED_GLOBAL };

/* Is v a number equal to an int64 (so that 1, True and 1.0 hash alike)? */
static bool as_int(const ckpt_value *v, int64_t *out)
{
    switch (v->type) {
    case CKPT_T_BOOL: *out = v->u.b; return true;
    case CKPT_T_INT: *out = v->u.i; return true;
    case CKPT_T_FLOAT:
        if (v->u.f >= -9.2e18 && v->u.f <= 9.2e18 && v->u.f == (double)(int64_t)v->u.f) {
            *out = (int64_t)v->u.f;
            return true;
        }
        return false;
    default: return false;
    }
}

static uint64_t value_hash(const ckpt_value *v, int depth)
{
    int64_t i;
    if (as_int(v, &i))
        return ckpt__hash_u64((uint64_t)i, SEED_INT);
    switch (v->type) {
    case CKPT_T_NONE: return ckpt__hash_u64(0, SEED_NONE);
    case CKPT_T_FLOAT: {
        uint64_t bits;
        double f = v->u.f;
        memcpy(&bits, &f, sizeof bits);
        return ckpt__hash_u64(bits, SEED_FLOAT);
    }
    case CKPT_T_STR: return ckpt__hash(v->u.str.data, v->u.str.len, SEED_STR);
    case CKPT_T_BYTES: return ckpt__hash(v->u.str.data, v->u.str.len, SEED_BYTES);
    case CKPT_T_BIGINT: return ckpt__hash(v->u.str.data, v->u.str.len, SEED_BIGINT);
    case CKPT_T_TUPLE:
        if (depth < HASH_MAX_DEPTH) {
            ckpt__hasher h;
            ckpt__hasher_init(&h, SEED_TUPLE);
            ckpt__hasher_u64(&h, v->u.seq.len);
            for (size_t k = 0; k < v->u.seq.len; k++)
                ckpt__hasher_u64(&h, value_hash(v->u.seq.items[k], depth + 1));
            return ckpt__hasher_end(&h);
        }
        /* fall through */
    default: return ckpt__hash_u64((uint64_t)(uintptr_t)v, SEED_OTHER);
    }
}

static bool value_eq(const ckpt_value *a, const ckpt_value *b, int depth)
{
    if (a == b)
        return true;
    int64_t ia = 0, ib = 0;
    bool na = as_int(a, &ia), nb = as_int(b, &ib);
    if (na || nb)
        return na && nb && ia == ib;
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case CKPT_T_NONE: return true;
    case CKPT_T_FLOAT: return a->u.f == b->u.f;
    case CKPT_T_STR:
    case CKPT_T_BYTES:
    case CKPT_T_BIGINT:
        return a->u.str.len == b->u.str.len &&
               memcmp(a->u.str.data, b->u.str.data, a->u.str.len) == 0;
    case CKPT_T_TUPLE:
        if (depth >= HASH_MAX_DEPTH || a->u.seq.len != b->u.seq.len)
            return false;
        for (size_t k = 0; k < a->u.seq.len; k++)
            if (!value_eq(a->u.seq.items[k], b->u.seq.items[k], depth + 1))
                return false;
        return true;
    default: return false;
    }
}

/* ---- dicts ----------------------------------------------------------------------------- */

#define DICT_MAX_ITEMS (UINT32_MAX / 2)
#define DICT_INDEX_FROM 16 /* smaller dicts are scanned */

static size_t dict_find(const ckpt_value *d, const ckpt_value *key)
{
    const ckpt__hindex *ix = d->u.dict.index;
    if (!ix) {
        for (size_t k = 0; k < d->u.dict.len; k++)
            if (value_eq(d->u.dict.keys[k], key, 0))
                return k;
        return SIZE_MAX;
    }
    uint64_t h = value_hash(key, 0);
    size_t pos;
    for (size_t it = ckpt__hindex_first(ix, h, &pos); it; it = ckpt__hindex_next(ix, h, &pos))
        if (value_eq(d->u.dict.keys[it - 1], key, 0))
            return it - 1;
    return SIZE_MAX;
}

ckpt_value *ckpt__dict_lookup(const ckpt_value *d, const ckpt_value *key)
{
    if (!d || d->type != CKPT_T_DICT)
        return NULL;
    size_t k = dict_find(d, key);
    return k == SIZE_MAX ? NULL : d->u.dict.vals[k];
}

int ckpt__dict_set(ckpt__arena *ar, ckpt_value *d, ckpt_value *key, ckpt_value *val,
                   ckpt_error *err)
{
    size_t k = dict_find(d, key);
    if (k != SIZE_MAX) {
        d->u.dict.vals[k] = val;
        return CKPT_OK;
    }
    if (d->u.dict.len >= DICT_MAX_ITEMS)
        return CKPT_FAIL(err, CKPT_ELIMIT, "a dict has more than %u items", DICT_MAX_ITEMS);
    if (d->u.dict.len == d->u.dict.cap) {
        size_t ncap = d->u.dict.cap ? d->u.dict.cap * 2 : 8;
        ckpt_value **keys = ckpt__arena_grow(ar, d->u.dict.keys, d->u.dict.cap * sizeof *keys,
                                             ncap * sizeof *keys);
        ckpt_value **vals = keys ? ckpt__arena_grow(ar, d->u.dict.vals,
                                                    d->u.dict.cap * sizeof *vals,
                                                    ncap * sizeof *vals)
                                 : NULL;
        if (!vals)
            return ckpt__arena_error(ar, err);
        d->u.dict.keys = keys;
        d->u.dict.vals = vals;
        d->u.dict.cap = ncap;
    }
    d->u.dict.keys[d->u.dict.len] = key;
    d->u.dict.vals[d->u.dict.len] = val;
    d->u.dict.len++;
    /* Small dicts are scanned; from DICT_INDEX_FROM items on, a keyed index. */
    ckpt__hindex *ix = d->u.dict.index;
    size_t n = d->u.dict.len;
    if (!ix && n >= DICT_INDEX_FROM) {
        if (!(ix = ckpt__arena_alloc(ar, sizeof *ix)))
            return ckpt__arena_error(ar, err);
        for (size_t j = 0; j + 1 < n; j++)
            if (ckpt__hindex_add(ar, ix, value_hash(d->u.dict.keys[j], 0), j) != 0)
                return ckpt__arena_error(ar, err);
        d->u.dict.index = ix;
    }
    if (ix && ckpt__hindex_add(ar, ix, value_hash(key, 0), n - 1) != 0)
        return ckpt__arena_error(ar, err);
    return CKPT_OK;
}

const ckpt_value *ckpt_dict_get(const ckpt_value *d, const char *key)
{
    if (!d || d->type != CKPT_T_DICT || !key)
        return NULL;
    ckpt_value k = {.type = CKPT_T_STR};
    k.u.str.data = key;
    k.u.str.len = strlen(key);
    return ckpt__dict_lookup(d, &k);
}

size_t ckpt_value_len(const ckpt_value *v)
{
    if (!v)
        return 0;
    switch (v->type) {
    case CKPT_T_TUPLE:
    case CKPT_T_LIST:
    case CKPT_T_SET: return v->u.seq.len;
    case CKPT_T_DICT: return v->u.dict.len;
    default: return 0;
    }
}

bool ckpt__value_is_str(const ckpt_value *v, const char *s)
{
    return v && v->type == CKPT_T_STR && v->u.str.len == strlen(s) &&
           memcmp(v->u.str.data, s, v->u.str.len) == 0;
}

bool ckpt__global_is(const ckpt_value *v, const char *module, const char *name)
{
    return v && v->type == CKPT_T_GLOBAL && strcmp(v->u.global.module, module) == 0 &&
           strcmp(v->u.global.name, name) == 0;
}

/* ---- globals --------------------------------------------------------------------------- */

#define GLOBALS_MAX 65536 /* distinct globals in one file */

static uint64_t global_hash(const char *module, const char *name)
{
    ckpt__hasher h;
    ckpt__hasher_init(&h, SEED_GLOBAL);
    ckpt__hasher_add(&h, module, strlen(module) + 1); /* with its NUL: "a.b" "c" != "a" "b.c" */
    ckpt__hasher_add(&h, name, strlen(name));
    return ckpt__hasher_end(&h);
}

int ckpt__globals_add(ckpt__arena *ar, ckpt__globals *g, const char *module, const char *name,
                      const char *where, uint64_t offset, ckpt_error *err)
{
    g->named++;
    uint64_t h = global_hash(module, name);
    size_t pos;
    for (size_t it = ckpt__hindex_first(&g->index, h, &pos); it;
         it = ckpt__hindex_next(&g->index, h, &pos)) {
        ckpt_global_ref *r = &g->items[it - 1];
        if (strcmp(r->name, name) == 0 && strcmp(r->module, module) == 0) {
            if (r->count < UINT32_MAX)
                r->count++;
            if (!g->side && !r->torch_load) { /* first seen in a side pickle */
                r->torch_load = true;
                r->where = where;
                r->offset = offset;
            }
            return CKPT_OK;
        }
    }
    if (g->len >= GLOBALS_MAX)
        return CKPT_FAIL(err, CKPT_ELIMIT, "pickle names more than %d distinct globals",
                         GLOBALS_MAX);
    if (g->len == g->cap) {
        size_t ncap = g->cap ? g->cap * 2 : 16;
        ckpt_global_ref *items = ckpt__arena_grow(ar, g->items, g->cap * sizeof *items,
                                                  ncap * sizeof *items);
        if (!items)
            return ckpt__arena_error(ar, err);
        g->items = items;
        g->cap = ncap;
    }
    ckpt_global_ref *r = &g->items[g->len];
    r->module = ckpt__arena_strdup(ar, module);
    r->name = ckpt__arena_strdup(ar, name);
    if (!r->module || !r->name)
        return ckpt__arena_error(ar, err);
    r->kind = ckpt_classify_global(r->module, r->name);
    r->where = where;
    r->offset = offset;
    r->count = 1;
    r->torch_load = !g->side;
    if (ckpt__hindex_add(ar, &g->index, h, g->len) != 0)
        return ckpt__arena_error(ar, err);
    g->len++;
    return CKPT_OK;
}
