/*
 * sd.c - state dicts as load_state_dict sees them (ckpt_sd_from_value) and models inferred
 * from a template checkpoint (ckpt_sd_model_from_template).
 *
 * Finding the state dict in a file is locate.c's, judging it judge.c's, the words report.c's
 * and comparing two of them diff.c's. Everything a result holds lives in one arena per result
 * (its `internal`).
 */
#include "sd_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define SD_MAX_MODULE_DEPTH 64     /* module nesting a template may infer (dots in a key) */

/* ---- state dict views -------------------------------------------------------------------- */

/* metadata[module] = {"version": v}: the version, or -1 */
static int64_t meta_version(const ckpt_value *v)
{
    const ckpt_value *ver = ckpt_dict_get(v, "version");
    if (ver && ver->type == CKPT_T_INT)
        return ver->u.i;
    if (ver && ver->type == CKPT_T_BOOL) /* Python compares True < 2 as 1 < 2 */
        return ver->u.b;
    if (ver && ver->type == CKPT_T_FLOAT) /* only `version < 2` matters */
        return ver->u.f < 2 ? 1 : 2;
    return -1;
}

static const ckpt_value *dict_metadata(const ckpt_value *d)
{
    const ckpt_value *attrs = d->u.dict.attrs;
    if (!attrs || attrs->type != CKPT_T_DICT)
        return NULL;
    const ckpt_value *meta = ckpt_dict_get(attrs, "_metadata");
    return meta && meta->type == CKPT_T_DICT ? meta : NULL;
}

static void fill_entry(ckpt_sd_entry *e, const char *key, const ckpt_value *v)
{
    e->key = key;
    e->value = v;
    e->is_tensor = v && v->type == CKPT_T_TENSOR && v->u.tensor;
    if (e->is_tensor) {
        e->dtype = v->u.tensor->dtype;
        e->ndim = v->u.tensor->ndim;
        e->shape = v->u.tensor->shape;
    } else {
        e->dtype = CKPT_DT_FLOAT32;
        e->ndim = 0;
        e->shape = NULL;
    }
}

const char *ckpt__type_label(const ckpt_value *v)
{
    switch (v->type) {
    case CKPT_T_NONE: return "NoneType";
    case CKPT_T_BOOL: return "bool";
    case CKPT_T_INT:
    case CKPT_T_BIGINT: return "int";
    case CKPT_T_FLOAT: return v->class_name ? v->class_name : "float";
    case CKPT_T_COMPLEX: return "complex";
    case CKPT_T_STR: return "str";
    case CKPT_T_BYTES: return "bytes";
    case CKPT_T_TUPLE: return v->class_name ? v->class_name : "tuple";
    case CKPT_T_LIST: return "list";
    case CKPT_T_SET: return (v->flags & CKPT_VF_FROZEN) ? "frozenset" : "set";
    case CKPT_T_DICT: return v->class_name ? v->class_name : "dict";
    case CKPT_T_GLOBAL: return "type";
    case CKPT_T_OBJECT: return v->class_name ? v->class_name : "object";
    case CKPT_T_TENSOR: return "torch.Tensor";
    case CKPT_T_STORAGE: return "torch.storage.TypedStorage";
    }
    return "object";
}

int ckpt__sd_build(ckpt__arena *ar, const ckpt_value *d, const char *prefix, ckpt_sd **out,
                   ckpt_error *err)
{
    if (!d || d->type != CKPT_T_DICT)
        return CKPT_FAIL(err, CKPT_EINVAL, "not a dict");
    if (!prefix)
        prefix = "";
    size_t plen = strlen(prefix);
    ckpt_sd *sd = ckpt__arena_alloc(ar, sizeof *sd);
    ckpt__strmap seen;
    if (!sd || !ckpt__strmap_init(ar, &seen, d->u.dict.len))
        return ckpt__arena_error(ar, err);
    sd->prefix = ckpt__arena_strdup(ar, prefix);
    sd->entries = ckpt__arena_alloc(ar, (d->u.dict.len ? d->u.dict.len : 1) * sizeof *sd->entries);
    if (!sd->prefix || !sd->entries)
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < d->u.dict.len; i++) {
        const ckpt_value *k = d->u.dict.keys[i], *v = d->u.dict.vals[i];
        if (k->type != CKPT_T_STR)
            return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                             "the dict has a key of type '%s', not a state dict's string keys",
                             ckpt__type_label(k));
        const char *key = k->u.str.data;
        if (plen && ckpt__starts_with(key, prefix))
            key += plen;
        size_t at = ckpt__strmap_add(&seen, key, sd->n_entries);
        if (at == sd->n_entries)
            sd->n_entries++;
        fill_entry(&sd->entries[at], key, v); /* a repeated key: first place, last value */
    }
    const ckpt_value *meta = dict_metadata(d);
    if (meta) {
        sd->has_metadata = true;
        sd->meta = ckpt__arena_alloc(ar, (meta->u.dict.len + 1) * sizeof *sd->meta);
        ckpt__strmap mseen;
        if (!sd->meta || !ckpt__strmap_init(ar, &mseen, meta->u.dict.len))
            return ckpt__arena_error(ar, err);
        /* keys outside the prefix keep their entries; the stripped ones win over them */
        size_t p0 = plen && prefix[plen - 1] == '.' ? plen - 1 : plen;
        for (int pass = 0; pass < 2; pass++) {
            for (size_t i = 0; i < meta->u.dict.len; i++) {
                const ckpt_value *k = meta->u.dict.keys[i];
                if (k->type != CKPT_T_STR)
                    continue;
                const char *m = k->u.str.data;
                bool under = plen && ((strlen(m) == p0 && strncmp(m, prefix, p0) == 0) ||
                                      ckpt__starts_with(m, prefix));
                if (under != (pass == 1))
                    continue;
                if (under)
                    m = strlen(m) == p0 ? "" : m + plen;
                size_t at = ckpt__strmap_add(&mseen, m, sd->n_meta);
                if (at == sd->n_meta)
                    sd->n_meta++;
                sd->meta[at].module = m;
                sd->meta[at].version = meta_version(meta->u.dict.vals[i]);
            }
        }
    }
    *out = sd;
    return CKPT_OK;
}

int ckpt_sd_from_value(const ckpt_value *dict, const char *prefix, ckpt_sd **out,
                       ckpt_error *err)
{
    *out = NULL;
    ckpt__arena *ar = ckpt__sd_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd *sd = NULL;
    int rc = ckpt__sd_build(ar, dict, prefix, &sd, err);
    if (rc) {
        ckpt__arena_free(ar);
        return rc;
    }
    sd->internal = ar;
    *out = sd;
    return CKPT_OK;
}

void ckpt_sd_free(ckpt_sd *sd)
{
    if (sd && sd->internal)
        ckpt__arena_free(sd->internal);
}

void ckpt_sd_model_free(ckpt_sd_model *m)
{
    if (m && m->internal)
        ckpt__arena_free(m->internal);
}

/* ---- models from templates --------------------------------------------------------------- */

static size_t dots(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '.';
    return n;
}

typedef struct tnode {
    const char *path;
    size_t parent;
    ckpt__vec children; /* size_t indexes, stored as pointers' worth of integers */
    ckpt__vec locals;   /* const ckpt_sd_entry * */
    const ckpt_sd_entry *extra;
    bool has_nbt;
} tnode;

static int tmpl_node(ckpt__arena *ar, ckpt__vec *nodes, ckpt__strmap *paths, const char *path,
                     size_t len, size_t *out)
{
    size_t i = ckpt__strmap_get2(paths, path, len, "", 0);
    if (i != SIZE_MAX) {
        *out = i;
        return CKPT_OK;
    }
    size_t parent = 0;
    if (len > 0) {
        const char *dot = NULL;
        for (size_t k = len; k-- > 0;)
            if (path[k] == '.') {
                dot = path + k;
                break;
            }
        int rc = tmpl_node(ar, nodes, paths, path, dot ? (size_t)(dot - path) : 0, &parent);
        if (rc)
            return rc;
    }
    tnode *n = ckpt__arena_alloc(ar, sizeof *n);
    char *p = ckpt__arena_strndup(ar, path, len);
    if (!n || !p)
        return CKPT_ENOMEM;
    n->path = p;
    n->parent = parent;
    i = nodes->len;
    if (!ckpt__vec_push(ar, nodes, n))
        return CKPT_ENOMEM;
    ckpt__strmap_add(paths, p, i);
    if (len > 0 &&
        !ckpt__vec_push(ar, &((tnode *)nodes->items[parent])->children, (void *)(uintptr_t)i))
        return CKPT_ENOMEM;
    *out = i;
    return CKPT_OK;
}

typedef struct tmpl_state {
    ckpt_sd_model *m;
    ckpt__vec *nodes;
    const ckpt_sd *tmpl;
    ckpt__strmap tmeta;
} tmpl_state;

static void tmpl_emit(tmpl_state *st, size_t ni, size_t parent_index)
{
    tnode *n = st->nodes->items[ni];
    ckpt_sd_model *m = st->m;
    size_t mi = m->n_modules++;
    ckpt_sd_module *mod = &m->modules[mi];
    mod->path = n->path;
    mod->parent = mi == 0 ? 0 : parent_index;
    mod->first = m->sd.n_entries;
    int64_t tv = -1;
    size_t at = ckpt__strmap_get(&st->tmeta, n->path);
    if (at != SIZE_MAX)
        tv = st->tmpl->meta[at].version;
    mod->batchnorm = n->has_nbt && (tv < 0 || tv == 2);
    mod->version = tv >= 0 ? tv : (mod->batchnorm ? 2 : 1);
    for (size_t k = 0; k < n->locals.len; k++)
        m->sd.entries[m->sd.n_entries++] = *(const ckpt_sd_entry *)n->locals.items[k];
    if (n->extra) {
        m->sd.entries[m->sd.n_entries++] = *n->extra;
        mod->extra_state = true;
    }
    for (size_t k = 0; k < m->sd.n_entries - mod->first; k++)
        m->sd.entries[mod->first + k].value = NULL;
    mod->count = m->sd.n_entries - mod->first;
    for (size_t c = 0; c < n->children.len; c++)
        tmpl_emit(st, (size_t)(uintptr_t)n->children.items[c], mi);
}

int ckpt__model_from_template(ckpt__arena *ar, const ckpt_sd *tmpl, const char *class_name,
                              ckpt_sd_model **out, ckpt_error *err)
{
    ckpt_sd_model *m = ckpt__arena_alloc(ar, sizeof *m);
    ckpt__vec nodes = {0};
    ckpt__strmap paths;
    if (!m || !ckpt__strmap_init(ar, &paths, 2 * tmpl->n_entries + 1))
        return ckpt__arena_error(ar, err);
    size_t root;
    if (tmpl_node(ar, &nodes, &paths, "", 0, &root))
        return ckpt__arena_error(ar, err);
    /* state_dict() records every module, stateless ones too, in the order load() visits them:
     * with _metadata the tree is exact, without it only modules holding keys are known */
    for (size_t i = 0; i < tmpl->n_meta; i++) {
        const char *mp = tmpl->meta[i].module;
        size_t ni;
        if (mp[0] == '.' || strstr(mp, "..") || (mp[0] && mp[strlen(mp) - 1] == '.') ||
            dots(mp) >= SD_MAX_MODULE_DEPTH)
            continue;
        if (tmpl_node(ar, &nodes, &paths, mp, strlen(mp), &ni))
            return ckpt__arena_error(ar, err);
    }
    for (size_t i = 0; i < tmpl->n_entries; i++) {
        const ckpt_sd_entry *e = &tmpl->entries[i];
        const char *dot = strrchr(e->key, '.');
        const char *name = dot ? dot + 1 : e->key;
        if (!*name || (dot && (dot == e->key || strstr(e->key, "..") || e->key[0] == '.')))
            return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "template key '%.200s' has an empty name",
                             e->key);
        if (dots(e->key) >= SD_MAX_MODULE_DEPTH)
            return CKPT_FAIL(err, CKPT_ELIMIT, "template key '%.200s' nests more than %d modules",
                             e->key, SD_MAX_MODULE_DEPTH);
        size_t ni;
        if (tmpl_node(ar, &nodes, &paths, e->key, dot ? (size_t)(dot - e->key) : 0, &ni))
            return ckpt__arena_error(ar, err);
        tnode *n = nodes.items[ni];
        if (!strcmp(name, "_extra_state")) {
            n->extra = e;
            continue;
        }
        if (!strcmp(name, "num_batches_tracked"))
            n->has_nbt = true;
        if (!ckpt__vec_push(ar, &n->locals, (void *)e))
            return ckpt__arena_error(ar, err);
    }
    m->class_name = ckpt__arena_strdup(ar, class_name ? class_name : "Model");
    m->modules = ckpt__arena_alloc(ar, nodes.len * sizeof *m->modules);
    m->sd.entries = ckpt__arena_alloc(ar, (tmpl->n_entries + 1) * sizeof *m->sd.entries);
    m->sd.meta = ckpt__arena_alloc(ar, nodes.len * sizeof *m->sd.meta);
    m->sd.prefix = "";
    tmpl_state st = {m, &nodes, tmpl, {0}};
    if (!m->class_name || !m->modules || !m->sd.entries || !m->sd.meta ||
        !ckpt__strmap_init(ar, &st.tmeta, tmpl->n_meta))
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < tmpl->n_meta; i++)
        ckpt__strmap_add(&st.tmeta, tmpl->meta[i].module, i);
    tmpl_emit(&st, root, 0);
    m->sd.has_metadata = true;
    m->sd.n_meta = m->n_modules;
    for (size_t i = 0; i < m->n_modules; i++) {
        m->sd.meta[i].module = m->modules[i].path;
        m->sd.meta[i].version = m->modules[i].version;
    }
    *out = m;
    return CKPT_OK;
}

int ckpt_sd_model_from_template(const ckpt_sd *tmpl, const char *class_name,
                                ckpt_sd_model **out, ckpt_error *err)
{
    *out = NULL;
    ckpt__arena *ar = ckpt__sd_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd_model *m = NULL;
    int rc = ckpt__model_from_template(ar, tmpl, class_name, &m, err);
    if (rc) {
        ckpt__arena_free(ar);
        return rc;
    }
    m->internal = ar;
    *out = m;
    return CKPT_OK;
}
