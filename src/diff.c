/*
 * diff.c - two state dicts tensor by tensor (ckpt_sd_diff).
 */
#include "sd_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- ckpt diff --------------------------------------------------------------------------- */

const char *ckpt_sd_diff_kind_name(ckpt_sd_diff_kind k)
{
    static const char *const names[] = {"same",   "different", "only_a",    "only_b",
                                        "shape",  "dtype",     "not_tensor"};
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "unknown";
}

/* Compare the values of two tensors of equal shape. Without atol an element matches when its
 * bytes are identical (and the dtypes equal); with atol when every component is within atol
 * in float64, NaN matching NaN. */
static int compare_values(const ckpt_tensor *ta, const ckpt_tensor *tb, double atol,
                          ckpt_sd_diff_item *it, ckpt_error *err)
{
    size_t na, nb;
    uint8_t *a = ckpt__tensor_copy(ta, &na, err);
    if (!a)
        return err ? err->status : CKPT_ENOMEM;
    uint8_t *b = ckpt__tensor_copy(tb, &nb, err);
    if (!b) {
        free(a);
        return err ? err->status : CKPT_ENOMEM;
    }
    ckpt_dtype pa = CKPT_DT_FLOAT32, pb = CKPT_DT_FLOAT32;
    int ka = ckpt__dtype_components(ta->dtype, &pa), kb = ckpt__dtype_components(tb->dtype, &pb);
    bool numeric = ka && ka == kb;
    bool same_dtype = ta->dtype == tb->dtype;
    size_t esa = ckpt_dtype_size(ta->dtype), esb = ckpt_dtype_size(tb->dtype);
    size_t ca = numeric ? ckpt_dtype_size(pa) : 0, cb = numeric ? ckpt_dtype_size(pb) : 0;
    it->compared = numeric || same_dtype;
    it->max_abs = it->max_rel = 0;
    it->n_differ = 0;
    for (int64_t i = 0; i < ta->numel; i++) {
        const uint8_t *xa = a + (size_t)i * esa, *xb = b + (size_t)i * esb;
        bool differs = !same_dtype || memcmp(xa, xb, esa) != 0;
        if (numeric) {
            bool over = false;
            for (int c = 0; c < ka; c++) {
                double x = ckpt__elem_double(pa, xa + (size_t)c * ca),
                       y = ckpt__elem_double(pb, xb + (size_t)c * cb);
                double d;
                if (isnan(x) || isnan(y))
                    d = isnan(x) && isnan(y) ? 0 : INFINITY;
                else
                    d = x == y ? 0 : fabs(x - y); /* inf == inf is no difference */
                double scale = fmax(fabs(x), fabs(y));
                double rel = d == 0 ? 0 : (isinf(d) || isinf(scale)) ? INFINITY : d / scale;
                if (d > it->max_abs)
                    it->max_abs = d;
                if (rel > it->max_rel)
                    it->max_rel = rel;
                over |= !(d <= atol);
            }
            if (atol >= 0)
                differs = over;
        } else if (differs) {
            it->max_abs = it->max_rel = NAN; /* no numeric view: quantized, float8 */
        }
        it->n_differ += differs;
    }
    free(a);
    free(b);
    return CKPT_OK;
}

int ckpt_sd_diff(const ckpt_sd *a, const ckpt_sd *b, double atol, ckpt_sd_diff_result **out,
                 ckpt_error *err)
{
    *out = NULL;
    if (!a || !b)
        return CKPT_FAIL(err, CKPT_EINVAL, "two state dicts are needed");
    ckpt__arena *ar = ckpt__sd_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd_diff_result *d = ckpt__arena_alloc(ar, sizeof *d);
    ckpt__strmap ka, kb;
    int rc = CKPT_OK;
    if (!d || !ckpt__strmap_init(ar, &ka, a->n_entries) ||
        !ckpt__strmap_init(ar, &kb, b->n_entries) ||
        !(d->items = ckpt__arena_alloc(ar, (a->n_entries + b->n_entries + 1) * sizeof *d->items))) {
        ckpt__arena_free(ar);
        return CKPT_NOMEM(err);
    }
    d->internal = ar;
    for (size_t i = 0; i < a->n_entries; i++)
        ckpt__strmap_add(&ka, a->entries[i].key, i);
    for (size_t i = 0; i < b->n_entries; i++)
        ckpt__strmap_add(&kb, b->entries[i].key, i);
    d->match = true;
    for (size_t i = 0; i < a->n_entries + b->n_entries; i++) {
        ckpt_sd_diff_item *it = &d->items[d->n_items];
        memset(it, 0, sizeof *it);
        if (i < a->n_entries) {
            it->a = &a->entries[i];
            size_t j = ckpt__strmap_get(&kb, it->a->key);
            it->b = j == SIZE_MAX ? NULL : &b->entries[j];
            if (ckpt__strmap_get(&ka, it->a->key) != i)
                continue; /* a key repeated in a hand-made dict */
        } else {
            it->b = &b->entries[i - a->n_entries];
            if (ckpt__strmap_get(&ka, it->b->key) != SIZE_MAX ||
                ckpt__strmap_get(&kb, it->b->key) != i - a->n_entries)
                continue;
        }
        it->key = it->a ? it->a->key : it->b->key;
        d->n_items++;
        if (!it->b) {
            it->kind = CKPT_SD_ONLY_A;
        } else if (!it->a) {
            it->kind = CKPT_SD_ONLY_B;
        } else if (!it->a->is_tensor || !it->b->is_tensor) {
            it->kind = CKPT_SD_NOT_TENSOR;
            it->match = !it->a->is_tensor && !it->b->is_tensor;
        } else if (!ckpt__same_shape(it->a->ndim, it->a->shape, it->b->ndim, it->b->shape)) {
            it->kind = CKPT_SD_SHAPE;
        } else {
            if ((rc = compare_values(it->a->value->u.tensor, it->b->value->u.tensor, atol, it,
                                     err)))
                break;
            if (it->a->dtype != it->b->dtype) {
                it->kind = CKPT_SD_DTYPE;
                it->match = atol >= 0 && it->compared && it->n_differ == 0;
            } else {
                it->kind = it->n_differ == 0 ? CKPT_SD_SAME : CKPT_SD_DIFFERENT;
                it->match = it->n_differ == 0;
            }
        }
        d->count[it->kind]++;
        d->match &= it->match;
    }
    if (rc) {
        ckpt__arena_free(ar);
        return rc;
    }
    *out = d;
    return CKPT_OK;
}

void ckpt_sd_diff_free(ckpt_sd_diff_result *d)
{
    if (d && d->internal)
        ckpt__arena_free(d->internal);
}
