/*
 * family.c - the architectures of every family (ckpt_arch_*), and the models
 * `torchvision.models.NAME(num_classes=N)` that load_state_dict judges a state dict against.
 *
 * A family (family.h) lays out its modules and entries; this file keeps them in the arrays of a
 * ckpt_sd_model and adds the _metadata that state_dict() records: every module, stateless ones
 * included, in visiting order, version 2 for BatchNorm and 1 for the rest.
 */
#include "family.h"

#include <stdint.h>
#include <stdio.h>

#define ARCH_MAX_CLASSES INT32_MAX /* torch accepts more; no real head is near this */

static const ckpt__family *const families[] = {
#define CKPT__FAMILY_ROW(name) &ckpt__family_##name,
    CKPT__FAMILIES(CKPT__FAMILY_ROW)
#undef CKPT__FAMILY_ROW
};
#define N_FAMILIES (sizeof families / sizeof families[0])

size_t ckpt_arch_count(void)
{
    size_t n = 0;
    for (size_t f = 0; f < N_FAMILIES; f++)
        n += families[f]->n_archs;
    return n;
}

const ckpt_arch *ckpt_arch_at(size_t i)
{
    for (size_t f = 0; f < N_FAMILIES; f++) {
        if (i < families[f]->n_archs)
            return &families[f]->archs[i];
        i -= families[f]->n_archs;
    }
    return NULL;
}

const ckpt_arch *ckpt_arch_by_name(const char *name)
{
    if (!name)
        return NULL;
    for (size_t f = 0; f < N_FAMILIES; f++)
        for (size_t i = 0; i < families[f]->n_archs; i++)
            if (strcmp(families[f]->archs[i].name, name) == 0)
                return &families[f]->archs[i];
    return NULL;
}

const char *ckpt_arch_name(const ckpt_arch *a)
{
    return a ? a->name : NULL;
}

const char *ckpt_arch_family(const ckpt_arch *a)
{
    return a ? a->family->name : NULL;
}

const char *ckpt_arch_head(const ckpt_arch *a, bool bias)
{
    return a ? bias ? a->family->head_bias : a->family->head_weight : NULL;
}

int64_t ckpt_arch_features(const ckpt_arch *a)
{
    return a ? a->family->features(a) : 0;
}

int64_t ckpt_arch_parameters(const ckpt_arch *a, int64_t num_classes)
{
    return a ? a->family->parameters(a, num_classes) : 0;
}

bool ckpt_arch_runnable(const ckpt_arch *a)
{
    return a && a->family->net;
}

int64_t ckpt_arch_classes(const ckpt_arch *a, const ckpt_sd *sd)
{
    if (!a || !sd)
        return 0;
    const ckpt_sd_entry *w = NULL, *b = NULL;
    for (size_t i = 0; i < sd->n_entries; i++) {
        const ckpt_sd_entry *e = &sd->entries[i];
        if (e->is_tensor && !strcmp(e->key, a->family->head_weight))
            w = e;
        else if (e->is_tensor && !strcmp(e->key, a->family->head_bias))
            b = e;
    }
    int64_t nc = 0;
    if (w && w->ndim == 2 && w->shape[1] == ckpt_arch_features(a))
        nc = w->shape[0];
    else if (b && b->ndim == 1)
        nc = b->shape[0];
    else if (w && w->ndim == 2)
        nc = w->shape[0];
    return nc >= 1 && nc <= ARCH_MAX_CLASSES ? nc : 0;
}

/* ---- laying out a model ------------------------------------------------------------------ */

struct ckpt__layout {
    ckpt__arena *ar;
    ckpt_sd_model *m;
    size_t cap_modules, cap_entries;
    ckpt_error *err;
    int status;
};

size_t ckpt__layout_module(ckpt__layout *b, size_t parent, const char *name, bool bn)
{
    ckpt_sd_model *m = b->m;
    if (b->status)
        return 0;
    if (m->n_modules == b->cap_modules) {
        size_t ncap = b->cap_modules ? 2 * b->cap_modules : 64;
        ckpt_sd_module *nm = ckpt__arena_grow(b->ar, m->modules, b->cap_modules * sizeof *nm,
                                              ncap * sizeof *nm);
        if (!nm) {
            b->status = ckpt__arena_error(b->ar, b->err);
            return 0;
        }
        m->modules = nm;
        b->cap_modules = ncap;
    }
    const char *path;
    if (m->n_modules == 0)
        path = "";
    else if (m->modules[parent].path[0] == '\0')
        path = ckpt__arena_strdup(b->ar, name);
    else
        path = ckpt__arena_printf(b->ar, "%s.%s", m->modules[parent].path, name);
    if (!path) {
        b->status = ckpt__arena_error(b->ar, b->err);
        return 0;
    }
    size_t i = m->n_modules++;
    ckpt_sd_module *mod = &m->modules[i];
    mod->path = path;
    mod->parent = m->n_modules == 1 ? 0 : parent;
    mod->first = m->sd.n_entries;
    mod->count = 0;
    mod->version = bn ? 2 : 1;
    mod->batchnorm = bn;
    mod->extra_state = false;
    return i;
}

void ckpt__layout_entry(ckpt__layout *b, size_t mod, const char *name, ckpt_dtype dt, int ndim,
                        const int64_t *shape)
{
    ckpt_sd_model *m = b->m;
    if (b->status)
        return;
    if (m->sd.n_entries == b->cap_entries) {
        size_t ncap = b->cap_entries ? 2 * b->cap_entries : 256;
        ckpt_sd_entry *ne = ckpt__arena_grow(b->ar, m->sd.entries,
                                             b->cap_entries * sizeof *ne, ncap * sizeof *ne);
        if (!ne) {
            b->status = ckpt__arena_error(b->ar, b->err);
            return;
        }
        m->sd.entries = ne;
        b->cap_entries = ncap;
    }
    const char *mp = m->modules[mod].path;
    char *key = mp[0] ? ckpt__arena_printf(b->ar, "%s.%s", mp, name)
                      : ckpt__arena_strdup(b->ar, name);
    int64_t *sh = ckpt__arena_alloc(b->ar, (size_t)(ndim ? ndim : 1) * sizeof *sh);
    if (!key || !sh) {
        b->status = ckpt__arena_error(b->ar, b->err);
        return;
    }
    if (ndim)
        memcpy(sh, shape, (size_t)ndim * sizeof *sh);
    ckpt_sd_entry *e = &m->sd.entries[m->sd.n_entries++];
    e->key = key;
    e->value = NULL;
    e->is_tensor = true;
    e->dtype = dt;
    e->ndim = ndim;
    e->shape = sh;
    m->modules[mod].count++;
}

size_t ckpt__layout_conv(ckpt__layout *b, size_t parent, const char *name, int64_t out,
                         int64_t in_per_group, int64_t k, bool has_bias)
{
    size_t i = ckpt__layout_module(b, parent, name, false);
    int64_t shape[4] = {out, in_per_group, k, k};
    ckpt__layout_entry(b, i, "weight", CKPT_DT_FLOAT32, 4, shape);
    if (has_bias)
        ckpt__layout_entry(b, i, "bias", CKPT_DT_FLOAT32, 1, &out);
    return i;
}

size_t ckpt__layout_bn(ckpt__layout *b, size_t parent, const char *name, int64_t c)
{
    size_t i = ckpt__layout_module(b, parent, name, true);
    ckpt__layout_entry(b, i, "weight", CKPT_DT_FLOAT32, 1, &c);
    ckpt__layout_entry(b, i, "bias", CKPT_DT_FLOAT32, 1, &c);
    ckpt__layout_entry(b, i, "running_mean", CKPT_DT_FLOAT32, 1, &c);
    ckpt__layout_entry(b, i, "running_var", CKPT_DT_FLOAT32, 1, &c);
    ckpt__layout_entry(b, i, "num_batches_tracked", CKPT_DT_INT64, 0, NULL);
    return i;
}

size_t ckpt__layout_linear(ckpt__layout *b, size_t parent, const char *name, int64_t out,
                           int64_t in)
{
    size_t i = ckpt__layout_module(b, parent, name, false);
    int64_t w[2] = {out, in};
    ckpt__layout_entry(b, i, "weight", CKPT_DT_FLOAT32, 2, w);
    ckpt__layout_entry(b, i, "bias", CKPT_DT_FLOAT32, 1, w);
    return i;
}

int ckpt_arch_model(const ckpt_arch *a, int64_t num_classes, ckpt_sd_model **out,
                    ckpt_error *err)
{
    *out = NULL;
    if (!a)
        return CKPT_FAIL(err, CKPT_EINVAL, "no architecture given");
    if (num_classes < 1 || num_classes > ARCH_MAX_CLASSES)
        return CKPT_FAIL(err, CKPT_EINVAL, "class count %lld is out of range",
                         (long long)num_classes);
    ckpt__alloc al;
    ckpt__alloc_init(&al, NULL);
    ckpt__arena *ar = ckpt__arena_new(&al, 0);
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd_model *m = ckpt__arena_alloc(ar, sizeof *m);
    if (!m) {
        ckpt__arena_free(ar);
        return CKPT_NOMEM(err);
    }
    m->class_name = a->family->class_name;
    m->arch = a;
    m->num_classes = num_classes;
    m->internal = ar;
    m->sd.prefix = "";
    ckpt__layout b = {ar, m, 0, 0, err, CKPT_OK};
    ckpt__layout_module(&b, 0, "", false);
    a->family->layout(a, num_classes, &b);
    if (b.status) {
        ckpt__arena_free(ar);
        return b.status;
    }

    /* _metadata: every module in visiting order, as state_dict() records them */
    m->sd.has_metadata = true;
    m->sd.n_meta = m->n_modules;
    m->sd.meta = ckpt__arena_alloc(ar, m->n_modules * sizeof *m->sd.meta);
    if (!m->sd.meta) {
        int rc = ckpt__arena_error(ar, err);
        ckpt__arena_free(ar);
        return rc;
    }
    for (size_t i = 0; i < m->n_modules; i++) {
        m->sd.meta[i].module = m->modules[i].path;
        m->sd.meta[i].version = m->modules[i].version;
    }
    *out = m;
    return CKPT_OK;
}
