/* safetensors.c - reading the safetensors format.
 *
 * Layout:
 *     u64 N (little-endian)     length of the header
 *     N bytes                   UTF-8 JSON object, padded with spaces:
 *         {"__metadata__": {"k": "v", ...},                       (optional, str -> str)
 *          "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
 *     the data buffer           offsets are relative to its start; tensors are row-major,
 *                               little-endian, and tile the buffer exactly
 * As the reference implementation does, ckpt refuses duplicate names, ranges that overlap or
 * leave gaps, and a buffer whose size is not the end of the last range. */
#include "internal.h"

#include <jansson.h>
#include <stdlib.h>

#define ST_MAX_HEADER (100u << 20) /* the reference implementation's limit */
/* Parsing costs up to this many bytes of memory per header byte (jansson's objects: "{}," is
 * 3 bytes and ~200 bytes once parsed; then ckpt's values). The header may therefore be at most
 * max_alloc / CKPT_ST_HEADER_COST bytes (8 MiB by default; a header of 10^5 tensors is ~7 MB),
 * checked before parsing: a 72 MB header of 1.2 M tensors took 3 GB. */

typedef struct st_range {
    uint64_t begin, end;
    const char *name;
} st_range;

static int cmp_range(const void *a, const void *b)
{
    const st_range *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static bool json_u64(const json_t *j, uint64_t *out)
{
    if (!json_is_integer(j) || json_integer_value(j) < 0)
        return false;
    *out = (uint64_t)json_integer_value(j);
    return true;
}

static int parse_tensor(ckpt_file *f, const char *name, json_t *info, uint64_t data_start,
                        uint64_t data_len, st_range *range, ckpt_value **out, ckpt_error *err)
{
    json_t *jd = json_object_get(info, "dtype"), *js = json_object_get(info, "shape"),
           *jo = json_object_get(info, "data_offsets");
    if (!json_is_object(info) || !json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) ||
        json_array_size(jo) != 2)
        return CKPT_CORRUPT(err, "safetensors: tensor '%s' lacks dtype, shape or data_offsets",
                            name);
    int dt = ckpt_dtype_from_safetensors(json_string_value(jd));
    if (dt < 0)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "safetensors: tensor '%s' has dtype '%s'", name,
                         json_string_value(jd));
    size_t ndim = json_array_size(js);
    if (ndim > CKPT_MAX_DIMS)
        return CKPT_FAIL(err, CKPT_ELIMIT, "safetensors: tensor '%s' has %zu dimensions", name,
                         ndim);
    ckpt__arena *ar = f->arena;
    ckpt_value *v = ckpt__value_new(ar, CKPT_T_TENSOR);
    ckpt_tensor *t = v ? ckpt__arena_alloc(ar, sizeof *t) : NULL;
    int64_t *shape = t ? ckpt__arena_alloc(ar, (ndim + 1) * sizeof *shape) : NULL;
    int64_t *stride = shape ? ckpt__arena_alloc(ar, (ndim + 1) * sizeof *stride) : NULL;
    if (!stride)
        return ckpt__arena_error(ar, err);
    uint64_t numel = 1;
    for (size_t k = 0; k < ndim; k++) {
        uint64_t d;
        if (!json_u64(json_array_get(js, k), &d) || d > INT64_MAX)
            return CKPT_CORRUPT(err, "safetensors: tensor '%s' has an invalid shape", name);
        shape[k] = (int64_t)d;
        if (ckpt__mul_overflow(numel, d, &numel) || numel > INT64_MAX)
            return CKPT_CORRUPT(err, "safetensors: tensor '%s' is too large", name);
    }
    int64_t st = 1;
    for (size_t k = ndim; k-- > 0;) {
        stride[k] = st;
        /* as torch computes it: the sizes of an empty tensor may multiply past 2^63, and
         * torch's strides wrap then ([0, 2^40, 2^40] has strides (0, 2^40, 1)) */
        st = ckpt__mul_wrap(st, shape[k] ? shape[k] : 1);
    }
    uint64_t nbytes, begin, end;
    if (!json_u64(json_array_get(jo, 0), &begin) || !json_u64(json_array_get(jo, 1), &end) ||
        begin > end || end > data_len)
        return CKPT_CORRUPT(err, "safetensors: tensor '%s' has data_offsets outside the file",
                            name);
    if (ckpt__mul_overflow(numel, (uint64_t)ckpt_dtype_size(dt), &nbytes) || nbytes != end - begin)
        return CKPT_CORRUPT(err, "safetensors: tensor '%s' has %llu bytes of data for %llu "
                                 "elements of %s", name, (unsigned long long)(end - begin),
                            (unsigned long long)numel, ckpt_dtype_name(dt));
    ckpt_storage *s = ckpt__arena_alloc(ar, sizeof *s);
    if (!s || !(s->key = ckpt__arena_strdup(ar, name)))
        return ckpt__arena_error(ar, err);
    s->file = f;
    s->dtype = dt;
    s->nbytes = nbytes;
    s->file_offset = data_start + begin;
    s->located = true;
    t->dtype = dt;
    t->ndim = (int)ndim;
    t->shape = shape;
    t->stride = stride;
    t->numel = (int64_t)numel;
    t->storage = s;
    v->u.tensor = t;
    range->begin = begin;
    range->end = end;
    range->name = s->key;
    *out = v;
    return CKPT_OK;
}

int ckpt__safetensors_open(ckpt_file *f, ckpt_error *err)
{
    uint64_t n;
    if (f->size < 8)
        return CKPT_CORRUPT(err, "safetensors: file shorter than its header length");
    memcpy(&n, f->map, 8);
    if (n > ST_MAX_HEADER || n > f->size - 8)
        return CKPT_CORRUPT(err, "safetensors: header length %llu does not fit the file",
                            (unsigned long long)n);
    if (n > f->opt.max_alloc / CKPT_ST_HEADER_COST) {
        char have[32], lim[32];
        return CKPT_FAIL(err, CKPT_ELIMIT, "safetensors: the header is %s; parsing it may take "
                         "%llu times that, more than the limit of %s (raise ckpt_options.max_alloc)",
                         ckpt__size_str(have, n), (unsigned long long)CKPT_ST_HEADER_COST,
                         ckpt__size_str(lim, f->opt.max_alloc));
    }
    json_error_t jerr;
    json_t *hdr = json_loadb((const char *)f->map + 8, (size_t)n,
                             JSON_REJECT_DUPLICATES, &jerr);
    if (!hdr)
        return CKPT_CORRUPT(err, "safetensors: header is not valid JSON (%s)", jerr.text);
    int rc = CKPT_OK;
    st_range *ranges = NULL;
    size_t n_ranges = 0, cap = json_object_size(hdr);
    ckpt_value *root = ckpt__value_new(f->arena, CKPT_T_DICT);
    if (!json_is_object(hdr)) {
        rc = CKPT_CORRUPT(err, "safetensors: header is not a JSON object");
        goto out;
    }
    if (!root || !(ranges = ckpt__malloc(&f->alloc, (cap + 1) * sizeof *ranges))) {
        rc = root ? CKPT_NOMEM(err) : ckpt__arena_error(f->arena, err);
        goto out;
    }
    uint64_t data_start = 8 + n, data_len = f->size - data_start;
    const char *name;
    json_t *info;
    json_object_foreach(hdr, name, info) {
        if (strcmp(name, "__metadata__") == 0) {
            ckpt_value *meta = ckpt__value_new(f->arena, CKPT_T_DICT);
            if (!meta || !json_is_object(info)) {
                rc = meta ? CKPT_CORRUPT(err, "safetensors: __metadata__ is not an object")
                          : ckpt__arena_error(f->arena, err);
                goto out;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(info, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = CKPT_CORRUPT(err, "safetensors: __metadata__ value '%s' is not a string",
                                      mk);
                    goto out;
                }
                ckpt_value *k = ckpt__value_str(f->arena, CKPT_T_STR, mk, strlen(mk));
                ckpt_value *v = k ? ckpt__value_str(f->arena, CKPT_T_STR, json_string_value(mv),
                                                    json_string_length(mv))
                                  : NULL;
                if (!v) {
                    rc = ckpt__arena_error(f->arena, err);
                    goto out;
                }
                if ((rc = ckpt__dict_set(f->arena, meta, k, v, err)))
                    goto out;
            }
            root->u.dict.attrs = meta;
            continue;
        }
        ckpt_value *tv = NULL;
        if ((rc = parse_tensor(f, name, info, data_start, data_len, &ranges[n_ranges], &tv, err)))
            goto out;
        n_ranges++;
        ckpt_value *k = ckpt__value_str(f->arena, CKPT_T_STR, name, strlen(name));
        if (!k) {
            rc = ckpt__arena_error(f->arena, err);
            goto out;
        }
        if ((rc = ckpt__dict_set(f->arena, root, k, tv, err)))
            goto out;
        if ((rc = ckpt__storage_register(f, tv->u.tensor->storage, err)))
            goto out;
    }
    qsort(ranges, n_ranges, sizeof *ranges, cmp_range);
    uint64_t at = 0;
    for (size_t k = 0; k < n_ranges; k++) {
        if (ranges[k].begin != at) {
            rc = CKPT_CORRUPT(err, "safetensors: tensor '%s' %s", ranges[k].name,
                              ranges[k].begin < at ? "overlaps another tensor"
                                                   : "leaves a gap before it in the data");
            goto out;
        }
        at = ranges[k].end;
    }
    if (at != data_len) {
        rc = CKPT_CORRUPT(err, "safetensors: %llu bytes of data follow the last tensor",
                          (unsigned long long)(data_len - at));
        goto out;
    }
    f->root = root;
    f->format = CKPT_FORMAT_SAFETENSORS;
out:
    ckpt__free(&f->alloc, ranges, (cap + 1) * sizeof *ranges);
    json_decref(hdr);
    return rc;
}
