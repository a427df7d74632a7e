/* write_st.c - the safetensors writer, streamed.
 *
 * Layout (as huggingface/safetensors' serialize writes it):
 *     u64 N (little-endian)     length of the header, padding included
 *     N bytes                   compact JSON, then spaces up to a multiple of 8:
 *         {"__metadata__":{"k":"v",...},
 *          "name":{"dtype":"F32","shape":[2,3],"data_offsets":[begin,end]},...}
 *     the data                  each tensor row-major, contiguous, little-endian, back to back
 * Tensors are ordered as the reference's prepare() sorts them: by dtype in descending order of
 * its Dtype enum (U64 I64 F64 C64 F32 U32 I32 BF16 F16 U16 I16 F8_E4M3 F8_E5M2 I8 U8 BOOL:
 * widest first, so every tensor is aligned to its element size), then by name (bytewise).
 * Tensors sharing memory are written as separate copies; the report lists them. */
#include "internal.h"

#include <jansson.h>
#include <stdlib.h>

#define ST_MAX_HEADER (100u << 20) /* the reference reader refuses longer headers */
#define ST_ALIGN 8

/* Position in the reference's Dtype enum; -1: no safetensors dtype. */
static int st_rank(ckpt_dtype dt)
{
    static const char *const order[] = {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16",
                                        "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64",
                                        "U64"};
    const char *name = ckpt_dtype_safetensors(dt);
    for (int i = 0; name && i < (int)(sizeof order / sizeof order[0]); i++)
        if (!strcmp(order[i], name))
            return i;
    return -1;
}

typedef struct st_item {
    const ckpt_sd_entry *e;
    const ckpt_tensor *t;
    ckpt_dtype out;
    int rank;
    uint64_t nbytes;
    uint64_t begin, end;    /* source bytes it covers in its storage, for sharing */
} st_item;

static int cmp_order(const void *a, const void *b)
{
    const st_item *x = *(const st_item *const *)a, *y = *(const st_item *const *)b;
    if (x->rank != y->rank)
        return x->rank > y->rank ? -1 : 1;
    return strcmp(x->e->key, y->e->key);
}

static int cmp_memory(const void *a, const void *b)
{
    const st_item *x = *(const st_item *const *)a, *y = *(const st_item *const *)b;
    if (x->t->storage != y->t->storage)
        return (uintptr_t)x->t->storage < (uintptr_t)y->t->storage ? -1 : 1;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (uintptr_t)x < (uintptr_t)y ? -1 : (uintptr_t)x > (uintptr_t)y; /* sd order */
}

/* The bytes of its storage a tensor can touch: [first element, last element]. */
static void extent(st_item *it)
{
    const ckpt_tensor *t = it->t;
    uint64_t es = ckpt_dtype_size(t->dtype), last = (uint64_t)t->offset;
    for (int k = 0; k < t->ndim; k++)
        last += (uint64_t)(t->shape[k] - 1) * (uint64_t)t->stride[k];
    it->begin = (uint64_t)t->offset * es;
    it->end = (last + 1) * es; /* bounds were checked at parse time: no overflow */
}

/* The tensors whose memory overlaps an earlier one's (in sd order): report->shared. */
static int find_shared(st_item *items, size_t n, ckpt_write_report *rep, ckpt_error *err)
{
    st_item **ix = malloc((n + 1) * sizeof *ix);
    if (!ix)
        return CKPT_NOMEM(err);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (items[i].t->numel > 0 && items[i].t->storage) {
            extent(&items[i]);
            ix[m++] = &items[i];
        }
    }
    qsort(ix, m, sizeof *ix, cmp_memory);
    /* within a storage, by start: a tensor overlaps the run before it when it starts before
     * the run's furthest end; it is reported against the earliest tensor of that run */
    const char **with = calloc(n + 1, sizeof *with);
    if (!with) {
        free(ix);
        return CKPT_NOMEM(err);
    }
    size_t count = 0;
    for (size_t k = 0; k < m;) {
        size_t j = k + 1;
        uint64_t end = ix[k]->end;
        const st_item *first = ix[k];
        while (j < m && ix[j]->t->storage == ix[k]->t->storage && ix[j]->begin < end) {
            if (ix[j]->end > end)
                end = ix[j]->end;
            if (ix[j] < first)
                first = ix[j];
            j++;
        }
        for (size_t q = k; q < j && j - k > 1; q++) {
            if (ix[q] != first) {
                with[ix[q] - items] = first->e->key;
                count++;
            }
        }
        k = j;
    }
    free(ix);
    if (count && !(rep->shared = calloc(count, sizeof *rep->shared))) {
        free(with);
        return CKPT_NOMEM(err);
    }
    for (size_t i = 0; i < n; i++)
        if (with[i])
            rep->shared[rep->n_shared++] = (ckpt_write_shared){items[i].e->key, with[i]};
    free(with);
    return CKPT_OK;
}

static int sink_chunk(void *ud, const void *data, size_t n, ckpt_error *err)
{
    return ckpt__write_bytes(ud, data, n, err);
}

/* The header text, padded; *out is malloc'ed. */
static int build_header(st_item **order, size_t n, const ckpt_write_options *opt, char **out,
                        size_t *len, ckpt_error *err)
{
    int rc = CKPT_OK;
    json_t *root = json_object();
    if (!root)
        return CKPT_NOMEM(err);
    const char *const *md = opt ? opt->metadata : NULL;
    if (md && *md) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m)) {
            rc = CKPT_NOMEM(err);
            goto out;
        }
        for (; md[0]; md += 2) {
            json_t *v = md[1] ? json_string(md[1]) : NULL;
            if (!v || json_object_set_new(m, md[0], v)) {
                rc = CKPT_FAIL(err, CKPT_EINVAL, "metadata '%s' is not a pair of UTF-8 strings",
                               md[0]);
                goto out;
            }
        }
    }
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        st_item *it = order[i];
        json_t *o = json_object(), *shape = json_array(), *offs = json_array();
        if (!o || !shape || !offs) {
            json_decref(o);
            json_decref(shape);
            json_decref(offs);
            rc = CKPT_NOMEM(err);
            goto out;
        }
        for (int k = 0; k < it->t->ndim; k++)
            json_array_append_new(shape, json_integer(it->t->shape[k]));
        json_array_append_new(offs, json_integer((json_int_t)at));
        json_array_append_new(offs, json_integer((json_int_t)(at + it->nbytes)));
        at += it->nbytes;
        json_object_set_new(o, "dtype", json_string(ckpt_dtype_safetensors(it->out)));
        json_object_set_new(o, "shape", shape);
        json_object_set_new(o, "data_offsets", offs);
        if (!strcmp(it->e->key, "__metadata__") || json_object_get(root, it->e->key)) {
            json_decref(o);
            rc = CKPT_FAIL(err, CKPT_EINVAL, "tensor name '%s' %s", it->e->key,
                           strcmp(it->e->key, "__metadata__") ? "appears twice"
                                                              : "is the header's own");
            goto out;
        }
        /* json_object_set_new refuses a key that is not valid UTF-8 */
        if (json_object_set_new(root, it->e->key, o)) {
            rc = CKPT_FAIL(err, CKPT_EINVAL, "tensor name '%s' is not valid UTF-8", it->e->key);
            goto out;
        }
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        rc = CKPT_NOMEM(err);
        goto out;
    }
    size_t tl = strlen(text), padded = (tl + ST_ALIGN - 1) / ST_ALIGN * ST_ALIGN;
    if (padded > ST_MAX_HEADER) {
        free(text);
        rc = CKPT_FAIL(err, CKPT_ELIMIT, "the safetensors header would take %zu bytes, more than "
                       "readers accept (%u)", padded, ST_MAX_HEADER);
        goto out;
    }
    char *p = realloc(text, padded + 1);
    if (!p) {
        free(text);
        rc = CKPT_NOMEM(err);
        goto out;
    }
    memset(p + tl, ' ', padded - tl);
    p[padded] = '\0';
    *out = p;
    *len = padded;
out:
    json_decref(root);
    return rc;
}

int ckpt_write_safetensors(const char *path, const struct ckpt_sd *sd,
                           const ckpt_write_options *opt, ckpt_write_report **report,
                           ckpt_error *err)
{
    if (report)
        *report = NULL;
    if (opt && opt->convert && !ckpt_dtype_is_float(opt->dtype))
        return CKPT_FAIL(err, CKPT_EINVAL, "cannot convert tensors to %s",
                         ckpt_dtype_name(opt->dtype) ? ckpt_dtype_name(opt->dtype) : "?");
    size_t n = sd->n_entries;
    st_item *items = calloc(n + 1, sizeof *items);
    st_item **order = calloc(n + 1, sizeof *order);
    ckpt_write_report *rep = calloc(1, sizeof *rep);
    char *header = NULL;
    size_t hlen = 0;
    ckpt__write_file *w = NULL;
    int rc = CKPT_OK;
    if (!items || !order || !rep) {
        rc = CKPT_NOMEM(err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const ckpt_sd_entry *e = &sd->entries[i];
        if (!e->value || e->value->type != CKPT_T_TENSOR) {
            rc = CKPT_FAIL(err, CKPT_EINVAL, "'%s' is a %s, not a tensor", e->key,
                           e->value ? ckpt_type_name(e->value->type) : "missing value");
            goto out;
        }
        st_item *it = &items[i];
        it->e = e;
        it->t = e->value->u.tensor;
        it->out = it->t->dtype;
        if (opt && opt->convert && ckpt_dtype_is_float(it->out))
            it->out = opt->dtype;
        if ((it->rank = st_rank(it->out)) < 0) {
            rc = CKPT_FAIL(err, CKPT_EUNSUPPORTED, "'%s' is %s, which safetensors cannot hold",
                           e->key, ckpt_dtype_name(it->out));
            goto out;
        }
        if (ckpt__mul_overflow((uint64_t)it->t->numel, (uint64_t)ckpt_dtype_size(it->out),
                               &it->nbytes) ||
            ckpt__add_overflow(rep->data_bytes, it->nbytes, &rep->data_bytes) ||
            rep->data_bytes > (uint64_t)INT64_MAX) {
            rc = CKPT_FAIL(err, CKPT_ELIMIT, "'%s' is too large to write", e->key);
            goto out;
        }
        rep->n_converted += it->out != it->t->dtype;
        order[i] = it;
    }
    if ((rc = find_shared(items, n, rep, err)))
        goto out;
    qsort(order, n, sizeof *order, cmp_order);
    if ((rc = build_header(order, n, opt, &header, &hlen, err)))
        goto out;

    uint64_t total = 8 + hlen + rep->data_bytes;
    if ((rc = ckpt__write_open(path, opt, &w, err)) || (rc = ckpt__write_expect(w, total, err)))
        goto out;
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    if ((rc = ckpt__write_bytes(w, lenbuf, 8, err)) ||
        (rc = ckpt__write_bytes(w, header, hlen, err)))
        goto out;
    for (size_t i = 0; i < n && !rc; i++)
        rc = ckpt_tensor_stream(order[i]->t, order[i]->out, sink_chunk, w, err);
    if (!rc)
        rc = ckpt__write_finish(&w, total, err);
    if (rc)
        goto out;
    rep->file_bytes = total;
    rep->n_tensors = n;
    rep->n_records = n;
    if (report) {
        *report = rep;
        rep = NULL;
    }
out:
    ckpt__write_abort(w);
    free(header);
    free(order);
    free(items);
    ckpt_write_report_free(rep);
    return rc;
}
