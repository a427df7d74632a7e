/* fuzz_pickle.c - libFuzzer harness for the unpickler (src/pickle.c).
 *
 * Any input may fail, none may crash, hang or read out of bounds. A successful load is walked
 * to check what pickle.c promises: every tensor lies inside its storage, strings are
 * NUL-terminated and str values valid UTF-8, *consumed ends at a STOP inside the input, and
 * every recorded global has a name and an offset inside the input.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc fuzz/fuzz_pickle.c \
 *       src/pickle.c src/value.c src/arena.c src/error.c src/safety.c -lm -o fuzz_pickle
 *   ./fuzz_pickle -jobs=1 -max_total_time=300 corpus/
 */
#include "internal.h"

#include <stdlib.h>

#define FUZZ_MAX_DEPTH 64   /* a small limit, so deep inputs reach it */
#define FUZZ_WALK_NODES 100000

/* Storages as torch.load would make them, sized from the pid so that bounds checks matter. */
static int fuzz_pload(void *ud, const ckpt_value *pid, ckpt_value **out, ckpt_error *err)
{
    ckpt__arena *ar = ud;
    ckpt_storage *s = ckpt__arena_alloc(ar, sizeof *s);
    ckpt_value *v = s ? ckpt__value_new(ar, CKPT_T_STORAGE) : NULL;
    if (!v)
        return ckpt__arena_error(ar, err);
    s->key = "fuzz";
    s->dtype = CKPT_DT_FLOAT32;
    s->nbytes = 64;
    if (pid->type == CKPT_T_TUPLE && pid->u.seq.len >= 5) {
        ckpt_value *const *it = pid->u.seq.items;
        if (it[1]->type == CKPT_T_GLOBAL) {
            int dt = ckpt_dtype_from_storage(it[1]->u.global.name);
            if (dt >= 0)
                s->dtype = (ckpt_dtype)dt;
        }
        if (it[2]->type == CKPT_T_STR)
            s->key = it[2]->u.str.data;
        if (it[4]->type == CKPT_T_INT && it[4]->u.i >= 0 && it[4]->u.i < (1 << 20))
            s->nbytes = (uint64_t)it[4]->u.i * ckpt_dtype_size(s->dtype);
    } else if (pid->type == CKPT_T_STR && pid->u.str.len == 1) {
        return CKPT_CORRUPT(err, "fuzz: refused persistent id");
    }
    v->u.storage = s;
    *out = v;
    return CKPT_OK;
}

static bool valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t k = 0; k < n;) {
        unsigned c = s[k], len = c < 0x80 ? 1 : c < 0xc2 ? 0 : c < 0xe0 ? 2 : c < 0xf0 ? 3
                                                                             : c < 0xf5 ? 4 : 0;
        if (!len || k + len > n)
            return false;
        for (unsigned j = 1; j < len; j++)
            if ((s[k + j] & 0xc0) != 0x80)
                return false;
        if ((c == 0xe0 && s[k + 1] < 0xa0) || (c == 0xed && s[k + 1] >= 0xa0) ||
            (c == 0xf0 && s[k + 1] < 0x90) || (c == 0xf4 && s[k + 1] >= 0x90))
            return false;
        k += len;
    }
    return true;
}

static void check_tensor(const ckpt_tensor *t)
{
    if (t->ndim < 0 || t->ndim > CKPT_MAX_DIMS || t->offset < 0 || !t->storage)
        __builtin_trap();
    int64_t numel = 1;
    unsigned __int128 last = (uint64_t)t->offset;
    for (int k = 0; k < t->ndim; k++) {
        if (t->shape[k] < 0 || t->stride[k] < 0)
            __builtin_trap();
        numel *= t->shape[k];
        if (t->shape[k])
            last += (unsigned __int128)(uint64_t)(t->shape[k] - 1) * (uint64_t)t->stride[k];
    }
    if (numel != t->numel)
        __builtin_trap();
    if (numel && (last + 1) * ckpt_dtype_size(t->dtype) > t->storage->nbytes)
        __builtin_trap();
}

/* Walks at most FUZZ_WALK_NODES nodes (shared values are walked again; cycles are cut by the
 * node budget). Returns the depth below v. */
static unsigned walk(const ckpt_value *v, unsigned depth, long *budget)
{
    if (!v)
        __builtin_trap();
    if (--*budget < 0 || depth > 4 * FUZZ_MAX_DEPTH)
        return 0;
    unsigned below = 0, d;
    switch (v->type) {
    case CKPT_T_STR:
        if (!valid_utf8((const unsigned char *)v->u.str.data, v->u.str.len))
            __builtin_trap();
        /* fall through */
    case CKPT_T_BYTES:
    case CKPT_T_BIGINT:
        if (v->u.str.data[v->u.str.len] != 0)
            __builtin_trap();
        break;
    case CKPT_T_TUPLE:
    case CKPT_T_LIST:
    case CKPT_T_SET:
        for (size_t k = 0; k < v->u.seq.len; k++)
            if ((d = walk(v->u.seq.items[k], depth + 1, budget) + 1) > below)
                below = d;
        break;
    case CKPT_T_DICT:
        for (size_t k = 0; k < v->u.dict.len; k++) {
            if ((d = walk(v->u.dict.keys[k], depth + 1, budget) + 1) > below)
                below = d;
            if ((d = walk(v->u.dict.vals[k], depth + 1, budget) + 1) > below)
                below = d;
        }
        if (v->u.dict.attrs && (d = walk(v->u.dict.attrs, depth + 1, budget) + 1) > below)
            below = d;
        break;
    case CKPT_T_OBJECT: {
        const ckpt_value *parts[] = {v->u.obj.callable, v->u.obj.args, v->u.obj.state,
                                     v->u.obj.items, v->u.obj.list};
        for (int k = 0; k < 5; k++)
            if ((k < 2 || parts[k]) && (d = walk(parts[k], depth + 1, budget) + 1) > below)
                below = d;
        break;
    }
    case CKPT_T_TENSOR: check_tensor(v->u.tensor); break;
    case CKPT_T_GLOBAL:
        if (!v->u.global.module || !v->u.global.name)
            __builtin_trap();
        break;
    default: break;
    }
    return below;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt__alloc a;
    ckpt__alloc_init(&a, NULL);
    ckpt__arena *ar = ckpt__arena_new(&a, 256u << 20);
    if (!ar)
        return 0;
    ckpt__globals globals = {0};
    ckpt__pickle_ctx ctx = {
        .arena = ar,
        .globals = &globals,
        .where = "fuzz",
        .max_depth = FUZZ_MAX_DEPTH,
        .max_memo = 1u << 16,
        .persistent_load = fuzz_pload,
        .persistent_ud = ar,
    };
    ckpt_value *v;
    size_t used;
    ckpt_error err;
    int rc = ckpt__pickle_load(&ctx, data, size, &v, &used, &err);
    if (rc == CKPT_OK) {
        if (!v || used == 0 || used > size || data[used - 1] != '.')
            __builtin_trap();
        long budget = FUZZ_WALK_NODES;
        walk(v, 0, &budget);
    } else if (rc < 0 || rc > CKPT_EMISMATCH || err.status != rc || !err.message[0]) {
        __builtin_trap();
    }
    for (size_t k = 0; k < globals.len; k++)
        if (!globals.items[k].module || !globals.items[k].name ||
            globals.items[k].offset >= size)
            __builtin_trap();
    ckpt__arena_free(ar);
    return 0;
}
