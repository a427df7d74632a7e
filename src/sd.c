/*
 * sd.c - state dicts: find them in a checkpoint, unwrap them, judge them (ckpt_sd_*).
 *
 * The judge reproduces nn.Module.load_state_dict(strict=True) of PyTorch 1.13 (unchanged in
 * 2.x for what it decides). load() visits the modules depth first, parent before children;
 * each visit runs the module's _load_from_state_dict on the keys under its prefix:
 *
 *   1. BatchNorm (with running stats) first fills a missing num_batches_tracked with 0 when
 *      the state dict's _metadata version for it is absent or < 2;
 *   2. each parameter, then each persistent buffer: absent -> missing_keys; not a tensor ->
 *      an error_msgs line; a 0-dim parameter takes input[0] of a 1-D input (IndexError when
 *      that is empty); other shapes must be equal, else a "size mismatch" error_msgs line;
 *   3. "<prefix>_extra_state" in the dict of a module without set_extra_state -> unexpected;
 *   4. every key under the prefix whose next name component is neither a child module nor a
 *      local parameter/buffer -> unexpected, in the dict's order.
 *
 * So missing keys come in model order, unexpected keys grouped by the module that rejects
 * them, and the RuntimeError text is "Error(s) in loading state_dict for <Class>:\n\t" joined
 * with "\n\t" over [missing line], [unexpected line], error_msgs.
 *
 * Everything a result holds lives in one arena per result (its `internal`).
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define SD_MAX_DEPTH 8             /* containers walked from the root when looking for dicts */
#define SD_MAX_NODES 200000        /* values visited by that walk */
#define SD_MAX_CANDIDATES 64       /* dicts of tensors kept as candidates */
#define SD_MAX_PREFIXES 12         /* wrapper prefixes tried per candidate */
#define SD_MAX_PREFIX_PARTS 3      /* name components in a guessed prefix */
#define SD_MAX_LISTED 8            /* names quoted in one warning */
#define SD_MAX_MODULE_DEPTH 64     /* module nesting a template may infer (dots in a key) */
#define SD_MAX_SCAN_READ (64u << 20) /* bytes of one tensor read to test its values */
#define SD_DEFAULT_CLASSES 1000    /* torchvision's default num_classes */
#define SD_MAX_CLASSES INT32_MAX

/* ---- small tools ------------------------------------------------------------------------- */

static ckpt__arena *new_arena(void)
{
    ckpt__alloc al;
    ckpt__alloc_init(&al, NULL);
    return ckpt__arena_new(&al, UINT64_MAX >> 1);
}

static bool starts_with(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

/* The last dotted component. */
static const char *leaf_name(const char *key)
{
    const char *d = strrchr(key, '.');
    return d ? d + 1 : key;
}

/* A string map (key -> index) in an arena: open addressing, FNV-1a. Lookups may give the key
 * as two pieces, so "prefix" + "name" needs no concatenation. */
typedef struct strmap {
    size_t cap; /* power of two */
    const char **keys;
    size_t *vals;
} strmap;

static uint64_t hash2(const char *a, size_t na, const char *b, size_t nb)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < na; i++)
        h = (h ^ (unsigned char)a[i]) * 1099511628211ull;
    for (size_t i = 0; i < nb; i++)
        h = (h ^ (unsigned char)b[i]) * 1099511628211ull;
    return h;
}

static bool strmap_init(ckpt__arena *ar, strmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n + 1) {
        if (cap > SIZE_MAX / 4)
            return false;
        cap *= 2;
    }
    m->cap = cap;
    m->keys = ckpt__arena_alloc(ar, cap * sizeof *m->keys);
    m->vals = ckpt__arena_alloc(ar, cap * sizeof *m->vals);
    return m->keys && m->vals;
}

static size_t strmap_slot(const strmap *m, const char *a, size_t na, const char *b, size_t nb)
{
    size_t i = (size_t)hash2(a, na, b, nb) & (m->cap - 1);
    for (;; i = (i + 1) & (m->cap - 1)) {
        const char *k = m->keys[i];
        if (!k)
            return i;
        /* a and b hold no NUL, so a match of a proves k is at least na long */
        if (strncmp(k, a, na) == 0 && strncmp(k + na, b, nb) == 0 && k[na + nb] == '\0')
            return i;
    }
}

/* Sets key -> v unless present; returns the index stored for key. Callers size the map for
 * every key they insert, so a free slot always exists. */
static size_t strmap_add(strmap *m, const char *key, size_t v)
{
    size_t i = strmap_slot(m, key, strlen(key), "", 0);
    if (!m->keys[i]) {
        m->keys[i] = key;
        m->vals[i] = v;
    }
    return m->vals[i];
}

static size_t strmap_get2(const strmap *m, const char *a, size_t na, const char *b, size_t nb)
{
    if (!m->cap)
        return SIZE_MAX;
    size_t i = strmap_slot(m, a, na, b, nb);
    return m->keys[i] ? m->vals[i] : SIZE_MAX;
}

static size_t strmap_get(const strmap *m, const char *key)
{
    return strmap_get2(m, key, strlen(key), "", 0);
}

/* A growable string on the C heap, copied into an arena when done. On allocation failure it
 * stops growing and remembers it. */
typedef struct strbuf {
    char *s;
    size_t len, cap;
    bool failed;
} strbuf;

static void sb_addn(strbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 256;
        while (ncap < b->len + n + 1)
            ncap *= 2;
        char *ns = realloc(b->s, ncap);
        if (!ns) {
            b->failed = true;
            return;
        }
        b->s = ns;
        b->cap = ncap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_add(strbuf *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        sb_addn(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_addn(b, big, (size_t)n);
    free(big);
}

/* The string in ar (NULL on failure); frees the heap copy. */
static char *sb_finish(strbuf *b, ckpt__arena *ar)
{
    char *r = NULL;
    if (!b->failed)
        r = ckpt__arena_strndup(ar, b->s ? b->s : "", b->len);
    free(b->s);
    memset(b, 0, sizeof *b);
    return r;
}

/* torch.Size([30, 2048]) */
static void sb_shape(strbuf *b, int ndim, const int64_t *shape)
{
    sb_add(b, "torch.Size([");
    for (int i = 0; i < ndim; i++)
        sb_printf(b, i ? ", %lld" : "%lld", (long long)shape[i]);
    sb_add(b, "])");
}

/* [30, 2048] */
static void sb_dims(strbuf *b, int ndim, const int64_t *shape)
{
    sb_add(b, "[");
    for (int i = 0; i < ndim; i++)
        sb_printf(b, i ? ", %lld" : "%lld", (long long)shape[i]);
    sb_add(b, "]");
}

/* A Python string literal in single quotes. */
static void sb_pystr(strbuf *b, const char *s)
{
    sb_add(b, "'");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\'' || c == '\\')
            sb_printf(b, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            sb_printf(b, "\\x%02x", c);
        else
            sb_addn(b, (const char *)&c, 1);
    }
    sb_add(b, "'");
}

/* A pointer array that grows in an arena. */
typedef struct vec {
    void **items;
    size_t len, cap;
} vec;

static bool vec_push(ckpt__arena *ar, vec *v, void *item)
{
    if (v->len == v->cap) {
        size_t ncap = v->cap ? 2 * v->cap : 16;
        void **ni = ckpt__arena_grow(ar, v->items, v->cap * sizeof *ni, ncap * sizeof *ni);
        if (!ni)
            return false;
        v->items = ni;
        v->cap = ncap;
    }
    v->items[v->len++] = item;
    return true;
}

static bool same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    if (na != nb)
        return false;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

static int64_t numel_of(const ckpt_sd_entry *e)
{
    int64_t n = 1;
    for (int i = 0; i < e->ndim; i++)
        if (ckpt__mul_overflow(n, e->shape[i], &n))
            return INT64_MAX;
    return n;
}

static bool is_bn_buffer(const char *key)
{
    const char *l = leaf_name(key);
    return !strcmp(l, "running_mean") || !strcmp(l, "running_var") ||
           !strcmp(l, "num_batches_tracked");
}

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

static const char *type_label(const ckpt_value *v)
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

static int sd_build(ckpt__arena *ar, const ckpt_value *d, const char *prefix, ckpt_sd **out,
                    ckpt_error *err)
{
    if (!d || d->type != CKPT_T_DICT)
        return CKPT_FAIL(err, CKPT_EINVAL, "not a dict");
    if (!prefix)
        prefix = "";
    size_t plen = strlen(prefix);
    ckpt_sd *sd = ckpt__arena_alloc(ar, sizeof *sd);
    strmap seen;
    if (!sd || !strmap_init(ar, &seen, d->u.dict.len))
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
                             type_label(k));
        const char *key = k->u.str.data;
        if (plen && starts_with(key, prefix))
            key += plen;
        size_t at = strmap_add(&seen, key, sd->n_entries);
        if (at == sd->n_entries)
            sd->n_entries++;
        fill_entry(&sd->entries[at], key, v); /* a repeated key: first place, last value */
    }
    const ckpt_value *meta = dict_metadata(d);
    if (meta) {
        sd->has_metadata = true;
        sd->meta = ckpt__arena_alloc(ar, (meta->u.dict.len + 1) * sizeof *sd->meta);
        strmap mseen;
        if (!sd->meta || !strmap_init(ar, &mseen, meta->u.dict.len))
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
                                      starts_with(m, prefix));
                if (under != (pass == 1))
                    continue;
                if (under)
                    m = strlen(m) == p0 ? "" : m + plen;
                size_t at = strmap_add(&mseen, m, sd->n_meta);
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
    ckpt__arena *ar = new_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd *sd = NULL;
    int rc = sd_build(ar, dict, prefix, &sd, err);
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
    vec children; /* size_t indexes, stored as pointers' worth of integers */
    vec locals;   /* const ckpt_sd_entry * */
    const ckpt_sd_entry *extra;
    bool has_nbt;
} tnode;

static int tmpl_node(ckpt__arena *ar, vec *nodes, strmap *paths, const char *path, size_t len,
                     size_t *out)
{
    size_t i = strmap_get2(paths, path, len, "", 0);
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
    if (!vec_push(ar, nodes, n))
        return CKPT_ENOMEM;
    strmap_add(paths, p, i);
    if (len > 0 && !vec_push(ar, &((tnode *)nodes->items[parent])->children, (void *)(uintptr_t)i))
        return CKPT_ENOMEM;
    *out = i;
    return CKPT_OK;
}

typedef struct tmpl_state {
    ckpt_sd_model *m;
    vec *nodes;
    const ckpt_sd *tmpl;
    strmap tmeta;
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
    size_t at = strmap_get(&st->tmeta, n->path);
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

static int model_from_template(ckpt__arena *ar, const ckpt_sd *tmpl, const char *class_name,
                               ckpt_sd_model **out, ckpt_error *err)
{
    ckpt_sd_model *m = ckpt__arena_alloc(ar, sizeof *m);
    vec nodes = {0};
    strmap paths;
    if (!m || !strmap_init(ar, &paths, 2 * tmpl->n_entries + 1))
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
        if (!vec_push(ar, &n->locals, (void *)e))
            return ckpt__arena_error(ar, err);
    }
    m->class_name = ckpt__arena_strdup(ar, class_name ? class_name : "Model");
    m->modules = ckpt__arena_alloc(ar, nodes.len * sizeof *m->modules);
    m->sd.entries = ckpt__arena_alloc(ar, (tmpl->n_entries + 1) * sizeof *m->sd.entries);
    m->sd.meta = ckpt__arena_alloc(ar, nodes.len * sizeof *m->sd.meta);
    m->sd.prefix = "";
    tmpl_state st = {m, &nodes, tmpl, {0}};
    if (!m->class_name || !m->modules || !m->sd.entries || !m->sd.meta ||
        !strmap_init(ar, &st.tmeta, tmpl->n_meta))
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < tmpl->n_meta; i++)
        strmap_add(&st.tmeta, tmpl->meta[i].module, i);
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
    ckpt__arena *ar = new_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd_model *m = NULL;
    int rc = model_from_template(ar, tmpl, class_name, &m, err);
    if (rc) {
        ckpt__arena_free(ar);
        return rc;
    }
    m->internal = ar;
    *out = m;
    return CKPT_OK;
}

/* ---- the judge --------------------------------------------------------------------------- */

typedef struct unexp {
    size_t module;
    int kind; /* 0: the module's _extra_state key, reported before the loop; 1: the loop */
    size_t pos;
} unexp;

static int unexp_cmp(const void *pa, const void *pb)
{
    const unexp *a = pa, *b = pb;
    if (a->module != b->module)
        return a->module < b->module ? -1 : 1;
    if (a->kind != b->kind)
        return a->kind - b->kind;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

static void sb_keylist(strbuf *b, const char *head, const char **keys, size_t n)
{
    sb_add(b, head);
    for (size_t i = 0; i < n; i++) {
        sb_add(b, i ? ", \"" : "\"");
        sb_add(b, keys[i]);
        sb_add(b, "\"");
    }
    sb_add(b, ". ");
}

static int judge(ckpt__arena *ar, const ckpt_sd_model *m, const ckpt_sd *sd,
                 ckpt_sd_verdict **out, ckpt_error *err)
{
    ckpt_sd_verdict *v = ckpt__arena_alloc(ar, sizeof *v);
    strmap keys, mods, locals, meta;
    if (!v || !strmap_init(ar, &keys, sd->n_entries) || !strmap_init(ar, &mods, m->n_modules) ||
        !strmap_init(ar, &locals, m->sd.n_entries) || !strmap_init(ar, &meta, sd->n_meta))
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < sd->n_entries; i++)
        strmap_add(&keys, sd->entries[i].key, i);
    for (size_t i = 0; i < m->n_modules; i++)
        strmap_add(&mods, m->modules[i].path, i);
    for (size_t i = 0; i < m->sd.n_entries; i++)
        strmap_add(&locals, m->sd.entries[i].key, i);
    for (size_t i = 0; i < sd->n_meta; i++)
        strmap_add(&meta, sd->meta[i].module, i);

    size_t n = m->sd.n_entries;
    v->missing = ckpt__arena_alloc(ar, (n + 1) * sizeof *v->missing);
    v->mismatch = ckpt__arena_alloc(ar, (n + 1) * sizeof *v->mismatch);
    v->errors = ckpt__arena_alloc(ar, (n + 2) * sizeof *v->errors);
    unexp *ux = ckpt__arena_alloc(ar, (sd->n_entries + 1) * sizeof *ux);
    v->unexpected = ckpt__arena_alloc(ar, (sd->n_entries + 1) * sizeof *v->unexpected);
    if (!v->missing || !v->mismatch || !v->errors || !ux || !v->unexpected)
        return ckpt__arena_error(ar, err);
    const char *index_error = NULL;

    for (size_t mi = 0; mi < m->n_modules; mi++) {
        const ckpt_sd_module *mod = &m->modules[mi];
        size_t plen = mod->path[0] ? strlen(mod->path) + 1 : 0;
        int64_t version = -1; /* None */
        if (sd->has_metadata) {
            size_t at = strmap_get(&meta, mod->path);
            if (at != SIZE_MAX)
                version = sd->meta[at].version;
        }
        for (size_t k = mod->first; k < mod->first + mod->count; k++) {
            const ckpt_sd_entry *e = &m->sd.entries[k];
            const char *name = e->key + plen;
            size_t j = strmap_get(&keys, e->key);
            if (mod->extra_state && k == mod->first + mod->count - 1) {
                if (j == SIZE_MAX)
                    v->missing[v->n_missing++] = e->key;
                else
                    v->n_loaded++;
                continue;
            }
            if (j == SIZE_MAX) {
                if (mod->batchnorm && !strcmp(name, "num_batches_tracked") && version < 2)
                    v->n_filled++;
                else
                    v->missing[v->n_missing++] = e->key;
                continue;
            }
            const ckpt_sd_entry *c = &sd->entries[j];
            if (!e->is_tensor) { /* a template's non-tensor entry: only its presence counts */
                v->n_loaded++;
                continue;
            }
            if (!c->is_tensor) {
                const char *t = c->value ? type_label(c->value) : "NoneType";
                const char *msg = ckpt__arena_printf(
                    ar,
                    "While copying the parameter named \"%s\", expected torch.Tensor or "
                    "Tensor-like object from checkpoint but received <class '%s'>",
                    e->key, t);
                if (!msg)
                    return ckpt__arena_error(ar, err);
                v->errors[v->n_errors++] = msg;
                continue;
            }
            int cnd = c->ndim;
            if (e->ndim == 0 && cnd == 1) {
                if (c->shape[0] == 0) {
                    index_error = "index 0 is out of bounds for dimension 0 with size 0";
                    continue;
                }
                cnd = 0;
            }
            if (!same_shape(cnd, c->shape, e->ndim, e->shape)) {
                strbuf b = {0};
                sb_printf(&b, "size mismatch for %s: copying a param with shape ", e->key);
                sb_shape(&b, cnd, c->shape);
                sb_add(&b, " from checkpoint, the shape in current model is ");
                sb_shape(&b, e->ndim, e->shape);
                sb_add(&b, ".");
                const char *msg = sb_finish(&b, ar);
                if (!msg)
                    return ckpt__arena_error(ar, err);
                v->errors[v->n_errors++] = msg;
                ckpt_sd_mismatch *mm = &v->mismatch[v->n_mismatch++];
                mm->key = e->key;
                mm->checkpoint = c;
                mm->model = e;
                continue;
            }
            v->n_loaded++;
        }
    }

    /* each key is rejected, if at all, by the deepest module whose prefix it starts with */
    size_t nux = 0;
    for (size_t j = 0; j < sd->n_entries; j++) {
        const char *key = sd->entries[j].key;
        size_t mi = 0;
        for (;;) {
            const ckpt_sd_module *mod = &m->modules[mi];
            size_t plen = mod->path[0] ? strlen(mod->path) + 1 : 0;
            const char *rest = key + plen;
            if (!mod->extra_state && !strcmp(rest, "_extra_state")) {
                ux[nux++] = (unexp){mi, 0, j};
                break;
            }
            const char *dot = strchr(rest, '.');
            size_t nl = dot ? (size_t)(dot - rest) : strlen(rest);
            size_t child = strmap_get2(&mods, key, plen + nl, "", 0);
            if (child != SIZE_MAX && child != mi && m->modules[child].parent == mi) {
                if (!dot)
                    break; /* "layer1" alone: in no child's dict, rejected by nobody */
                mi = child;
                continue;
            }
            if (strmap_get2(&locals, key, plen + nl, "", 0) == SIZE_MAX)
                ux[nux++] = (unexp){mi, 1, j};
            break;
        }
    }
    qsort(ux, nux, sizeof *ux, unexp_cmp);
    for (size_t i = 0; i < nux; i++)
        v->unexpected[v->n_unexpected++] = sd->entries[ux[i].pos].key;

    if (index_error) {
        v->errors[v->n_errors++] = index_error;
        v->message = ckpt__arena_printf(ar, "IndexError: %s", index_error);
        if (!v->message)
            return ckpt__arena_error(ar, err);
    } else if (v->n_missing || v->n_unexpected || v->n_errors) {
        strbuf b = {0};
        sb_printf(&b, "Error(s) in loading state_dict for %s:", m->class_name);
        if (v->n_missing) {
            sb_add(&b, "\n\t");
            sb_keylist(&b, "Missing key(s) in state_dict: ", v->missing, v->n_missing);
        }
        if (v->n_unexpected) {
            sb_add(&b, "\n\t");
            sb_keylist(&b, "Unexpected key(s) in state_dict: ", v->unexpected, v->n_unexpected);
        }
        for (size_t i = 0; i < v->n_errors; i++) {
            sb_add(&b, "\n\t");
            sb_add(&b, v->errors[i]);
        }
        v->message = sb_finish(&b, ar);
        if (!v->message)
            return ckpt__arena_error(ar, err);
    }
    v->ok = v->message == NULL;
    *out = v;
    return CKPT_OK;
}

int ckpt_sd_judge(const ckpt_sd_model *m, const ckpt_sd *sd, ckpt_sd_verdict **out,
                  ckpt_error *err)
{
    *out = NULL;
    if (!m || !sd || m->n_modules == 0)
        return CKPT_FAIL(err, CKPT_EINVAL, "no model or no state dict to judge");
    ckpt__arena *ar = new_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd_verdict *v = NULL;
    int rc = judge(ar, m, sd, &v, err);
    if (rc) {
        ckpt__arena_free(ar);
        return rc;
    }
    v->internal = ar;
    *out = v;
    return CKPT_OK;
}

void ckpt_sd_verdict_free(ckpt_sd_verdict *v)
{
    if (v && v->internal)
        ckpt__arena_free(v->internal);
}

/* ---- element values ---------------------------------------------------------------------- */

static uint64_t load_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

static double half_to_double(uint16_t h)
{
    int e = (h >> 10) & 0x1f;
    double m = h & 0x3ff;
    double v;
    if (e == 0)
        v = ldexp(m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp(m + 1024, e - 25);
    return (h & 0x8000) ? -v : v;
}

static double f32_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Components per element and their element type, for the dtypes whose values ckpt compares
 * numerically; 0 for the rest (quantized, float8, untyped: compared bitwise only). */
static int components(ckpt_dtype dt, ckpt_dtype *part)
{
    switch (dt) {
    case CKPT_DT_COMPLEX64: *part = CKPT_DT_FLOAT32; return 2;
    case CKPT_DT_COMPLEX128: *part = CKPT_DT_FLOAT64; return 2;
    case CKPT_DT_COMPLEX32: *part = CKPT_DT_FLOAT16; return 2;
    case CKPT_DT_FLOAT32: case CKPT_DT_FLOAT64: case CKPT_DT_FLOAT16: case CKPT_DT_BFLOAT16:
    case CKPT_DT_INT64: case CKPT_DT_INT32: case CKPT_DT_INT16: case CKPT_DT_INT8:
    case CKPT_DT_UINT8: case CKPT_DT_BOOL: case CKPT_DT_UINT16: case CKPT_DT_UINT32:
    case CKPT_DT_UINT64:
        *part = dt;
        return 1;
    default: return 0;
    }
}

/* One component of a real dtype at p (little-endian), as a double. */
static double elem(ckpt_dtype dt, const uint8_t *p)
{
    switch (dt) {
    case CKPT_DT_FLOAT32: return f32_bits((uint32_t)load_le(p, 4));
    case CKPT_DT_FLOAT64: {
        uint64_t u = load_le(p, 8);
        double d;
        memcpy(&d, &u, sizeof d);
        return d;
    }
    case CKPT_DT_FLOAT16: return half_to_double((uint16_t)load_le(p, 2));
    case CKPT_DT_BFLOAT16: return f32_bits((uint32_t)load_le(p, 2) << 16);
    case CKPT_DT_INT64: return (double)(int64_t)load_le(p, 8);
    case CKPT_DT_INT32: return (int32_t)(uint32_t)load_le(p, 4);
    case CKPT_DT_INT16: return (int16_t)(uint16_t)load_le(p, 2);
    case CKPT_DT_INT8: return (int8_t)p[0];
    case CKPT_DT_UINT8: return p[0];
    case CKPT_DT_BOOL: return p[0] != 0;
    case CKPT_DT_UINT16: return (double)load_le(p, 2);
    case CKPT_DT_UINT32: return (double)load_le(p, 4);
    case CKPT_DT_UINT64: return (double)load_le(p, 8);
    default: return 0;
    }
}

static bool is_floating(ckpt_dtype dt)
{
    switch (dt) {
    case CKPT_DT_FLOAT32: case CKPT_DT_FLOAT64: case CKPT_DT_FLOAT16: case CKPT_DT_BFLOAT16:
    case CKPT_DT_COMPLEX64: case CKPT_DT_COMPLEX128: case CKPT_DT_COMPLEX32:
    case CKPT_DT_FLOAT8_E5M2: case CKPT_DT_FLOAT8_E4M3FN: case CKPT_DT_FLOAT8_E5M2FNUZ:
    case CKPT_DT_FLOAT8_E4M3FNUZ:
        return true;
    default: return false;
    }
}

/* A contiguous copy of t's elements on the C heap (free it), or NULL with err set. */
static uint8_t *read_tensor(const ckpt_tensor *t, size_t *nbytes, ckpt_error *err)
{
    uint64_t n;
    if (ckpt__mul_overflow((uint64_t)t->numel, (uint64_t)ckpt_dtype_size(t->dtype), &n) ||
        n > SIZE_MAX) {
        CKPT_FAIL(err, CKPT_ELIMIT, "a tensor is too large to read");
        return NULL;
    }
    uint8_t *buf = malloc(n ? (size_t)n : 1);
    if (!buf) {
        CKPT_NOMEM(err);
        return NULL;
    }
    if (n && ckpt_tensor_read(t, t->dtype, buf, (size_t)n, err) != CKPT_OK) {
        free(buf);
        return NULL;
    }
    *nbytes = (size_t)n;
    return buf;
}

/* NaN and infinite components among n elements of dt at p. */
static void count_nonfinite(ckpt_dtype dt, const uint8_t *p, size_t n, int64_t *nan,
                            int64_t *inf)
{
    ckpt_dtype part;
    int k = components(dt, &part);
    if (k == 0 || !is_floating(part))
        return;
    size_t es = ckpt_dtype_size(part);
    for (size_t i = 0; i < n * (size_t)k; i++) {
        double d = elem(part, p + i * es);
        if (isnan(d))
            (*nan)++;
        else if (isinf(d))
            (*inf)++;
    }
}

/* ---- finding candidates ------------------------------------------------------------------ */

static const char *const preferred_names[] = {
    "state_dict", "model_state_dict", "model", "net", "network", "module", "model_state",
    "weights", "params", "teacher", "student", "model_ema", "ema", "state_dict_ema",
    "ema_state_dict", "ema_model",
};
#define N_PREFERRED (sizeof preferred_names / sizeof preferred_names[0])

/* Wrapper modules whose names end up in front of every key. */
static const struct {
    const char *part;
    const char *what;
} wrappers[] = {
    {"module", "DataParallel / DistributedDataParallel"},
    {"_orig_mod", "torch.compile"},
    {"model", "a Lightning module or a trainer's wrapper"},
    {"backbone", "a detection/segmentation wrapper"},
    {"encoder", "an encoder wrapper"},
};
#define N_WRAPPERS (sizeof wrappers / sizeof wrappers[0])

static int wrapper_index(const char *s, size_t n)
{
    for (size_t i = 0; i < N_WRAPPERS; i++)
        if (strlen(wrappers[i].part) == n && strncmp(wrappers[i].part, s, n) == 0)
            return (int)i;
    return -1;
}

typedef struct cand {
    ckpt_sd_candidate pub;
    bool *is_index;         /* per path segment: a list/tuple index */
    size_t order;           /* in walk order */
    int name_rank;
    strmap keys;            /* raw key -> item index */
    long long quality;
    size_t names;           /* model keys present by name (for recognising) */
    bool recognised;
    bool strings;           /* every key is a str */
} cand;

typedef struct check_ctx {
    ckpt__arena *ar;
    ckpt_error *err;
    const ckpt_sd_check_options *opt;
    cand **cands;
    size_t n_cands;
    size_t visited;
    const char *path[SD_MAX_DEPTH + 1];
    bool is_index[SD_MAX_DEPTH + 1];
    bool has_float;         /* a plain Python float somewhere (1.13's weights_only refuses it) */
} check_ctx;

static int name_rank(const char *name)
{
    for (size_t i = 0; i < N_PREFERRED; i++)
        if (!strcmp(preferred_names[i], name))
            return (int)i + 1;
    return (int)N_PREFERRED + 1;
}

static int add_candidate(check_ctx *c, const ckpt_value *d, size_t depth, size_t n_tensors)
{
    ckpt__arena *ar = c->ar;
    cand *k = ckpt__arena_alloc(ar, sizeof *k);
    if (!k)
        return ckpt__arena_error(ar, c->err);
    k->pub.path = ckpt__arena_alloc(ar, (depth + 1) * sizeof *k->pub.path);
    k->is_index = ckpt__arena_alloc(ar, (depth + 1) * sizeof *k->is_index);
    if (!k->pub.path || !k->is_index)
        return ckpt__arena_error(ar, c->err);
    strbuf b = {0};
    for (size_t i = 0; i < depth; i++) {
        k->pub.path[i] = c->path[i];
        k->is_index[i] = c->is_index[i];
        if (i)
            sb_add(&b, "/");
        sb_add(&b, c->path[i]);
    }
    k->pub.path_len = depth;
    k->pub.path_str = sb_finish(&b, ar);
    if (!k->pub.path_str)
        return ckpt__arena_error(ar, c->err);
    k->pub.dict = d;
    k->pub.n_tensors = n_tensors;
    k->pub.n_entries = d->u.dict.len;
    k->pub.prefix = "";
    k->order = c->n_cands;
    k->name_rank = depth ? name_rank(c->path[depth - 1]) : 0;
    for (size_t i = 0; i < depth; i++)
        if (strstr(c->path[i], "optim")) /* an optimizer's per-parameter state */
            k->name_rank += (int)N_PREFERRED + 2;
    k->strings = true;
    for (size_t i = 0; i < d->u.dict.len; i++)
        if (d->u.dict.keys[i]->type != CKPT_T_STR)
            k->strings = false;
    if (k->strings) {
        if (!strmap_init(ar, &k->keys, d->u.dict.len))
            return ckpt__arena_error(ar, c->err);
        for (size_t i = 0; i < d->u.dict.len; i++)
            strmap_add(&k->keys, d->u.dict.keys[i]->u.str.data, i);
    }
    cand **nc = ckpt__arena_grow(ar, c->cands, c->n_cands * sizeof *nc,
                                 (c->n_cands + 1) * sizeof *nc);
    if (!nc)
        return ckpt__arena_error(ar, c->err);
    c->cands = nc;
    c->cands[c->n_cands++] = k;
    return CKPT_OK;
}

static int walk(check_ctx *c, const ckpt_value *v, size_t depth)
{
    if (!v || ++c->visited > SD_MAX_NODES)
        return CKPT_OK;
    if (v->type == CKPT_T_FLOAT && !(v->flags & CKPT_VF_NUMPY))
        c->has_float = true;
    if (v->type == CKPT_T_DICT) {
        size_t n_tensors = 0;
        bool strings = true;
        for (size_t i = 0; i < v->u.dict.len; i++) {
            if (v->u.dict.vals[i]->type == CKPT_T_TENSOR)
                n_tensors++;
            if (v->u.dict.keys[i]->type != CKPT_T_STR)
                strings = false;
        }
        /* an int-keyed dict is an optimizer's per-parameter state, not a model */
        if (!strings)
            return CKPT_OK;
        if (n_tensors > 0 && 2 * n_tensors >= v->u.dict.len &&
            c->n_cands < SD_MAX_CANDIDATES) {
            int rc = add_candidate(c, v, depth, n_tensors);
            if (rc)
                return rc;
        }
        if (depth >= SD_MAX_DEPTH)
            return CKPT_OK;
        for (size_t i = 0; i < v->u.dict.len; i++) {
            const ckpt_value *x = v->u.dict.vals[i];
            if (x->type != CKPT_T_DICT && x->type != CKPT_T_LIST && x->type != CKPT_T_TUPLE &&
                x->type != CKPT_T_FLOAT)
                continue;
            c->path[depth] = v->u.dict.keys[i]->u.str.data;
            c->is_index[depth] = false;
            int rc = walk(c, x, depth + 1);
            if (rc)
                return rc;
        }
    } else if (v->type == CKPT_T_LIST || v->type == CKPT_T_TUPLE) {
        if (depth >= SD_MAX_DEPTH)
            return CKPT_OK;
        for (size_t i = 0; i < v->u.seq.len && c->visited <= SD_MAX_NODES; i++) {
            const ckpt_value *x = v->u.seq.items[i];
            if (x->type != CKPT_T_DICT && x->type != CKPT_T_LIST && x->type != CKPT_T_TUPLE &&
                x->type != CKPT_T_FLOAT)
                continue;
            char *seg = ckpt__arena_printf(c->ar, "%zu", i);
            if (!seg)
                return ckpt__arena_error(c->ar, c->err);
            c->path[depth] = seg;
            c->is_index[depth] = true;
            int rc = walk(c, x, depth + 1);
            if (rc)
                return rc;
        }
    }
    return CKPT_OK;
}

/* Follow "a/b/0" from the root. */
static int resolve_key(check_ctx *c, const ckpt_value *root, const char *key,
                       const ckpt_value **out, size_t *depth)
{
    const ckpt_value *v = root;
    size_t d = 0;
    const char *s = key;
    while (*s) {
        const char *slash = strchr(s, '/');
        size_t n = slash ? (size_t)(slash - s) : strlen(s);
        if (d >= SD_MAX_DEPTH)
            return CKPT_FAIL(c->err, CKPT_ELIMIT, "key path '%s' is deeper than %d", key,
                             SD_MAX_DEPTH);
        char *seg = ckpt__arena_strndup(c->ar, s, n);
        if (!seg)
            return ckpt__arena_error(c->ar, c->err);
        const ckpt_value *next = NULL;
        bool index = false;
        char *end;
        long long iv = strtoll(seg, &end, 10);
        bool numeric = n > 0 && *end == '\0';
        if (v->type == CKPT_T_DICT) {
            next = ckpt_dict_get(v, seg);
            for (size_t i = 0; !next && numeric && i < v->u.dict.len; i++)
                if (v->u.dict.keys[i]->type == CKPT_T_INT && v->u.dict.keys[i]->u.i == iv)
                    next = v->u.dict.vals[i];
        } else if ((v->type == CKPT_T_LIST || v->type == CKPT_T_TUPLE) && numeric && iv >= 0 &&
                   (unsigned long long)iv < v->u.seq.len) {
            next = v->u.seq.items[iv];
            index = true;
        }
        if (!next)
            return CKPT_FAIL(c->err, CKPT_ENOTFOUND, "no '%s' in the file (--key '%s')", seg,
                             key);
        c->path[d] = seg;
        c->is_index[d] = index;
        d++;
        v = next;
        s += n;
        if (*s == '/')
            s++;
    }
    *out = v;
    *depth = d;
    return CKPT_OK;
}

/* ---- fitting a candidate to a model ------------------------------------------------------ */

typedef struct fit {
    size_t names, shapes;
    long long quality;
} fit;

/* The value the unwrapped dict would hold for key, or NULL. */
static const ckpt_value *stripped_get(const cand *k, const char *prefix, const char *key)
{
    size_t plen = strlen(prefix);
    size_t i = strmap_get2(&k->keys, prefix, plen, key, strlen(key));
    if (i == SIZE_MAX && (plen == 0 || !starts_with(key, prefix)))
        i = strmap_get(&k->keys, key);
    return i == SIZE_MAX ? NULL : k->pub.dict->u.dict.vals[i];
}

/* any_head: the model's fc was built for 1000 classes but any class count fits. */
static fit fit_model(const cand *k, const char *prefix, const ckpt_sd_model *m, bool any_head)
{
    fit f = {0, 0, 0};
    for (size_t i = 0; i < m->sd.n_entries; i++) {
        const ckpt_sd_entry *e = &m->sd.entries[i];
        const ckpt_value *v = stripped_get(k, prefix, e->key);
        if (!v)
            continue;
        f.names++;
        if (!e->is_tensor) {
            f.shapes++;
            continue;
        }
        if (v->type != CKPT_T_TENSOR)
            continue;
        const ckpt_tensor *t = v->u.tensor;
        bool ok;
        if (any_head && !strcmp(e->key, "fc.weight"))
            ok = t->ndim == 2 && t->shape[1] == e->shape[1];
        else if (any_head && !strcmp(e->key, "fc.bias"))
            ok = t->ndim == 1;
        else
            ok = same_shape(t->ndim, t->shape, e->ndim, e->shape) ||
                 (e->ndim == 0 && t->ndim == 1 && t->shape[0] > 0);
        f.shapes += ok;
    }
    f.quality = (long long)f.shapes + (long long)f.names - (long long)m->sd.n_entries -
                (long long)k->pub.n_entries;
    return f;
}

/* Length of key's first `parts` components with their dot ("a.b." for 2), when something
 * follows them; else 0. */
static size_t lead_len(const char *key, int parts)
{
    const char *p = key, *dot = NULL;
    for (int j = 0; j < parts; j++) {
        dot = strchr(p, '.');
        if (!dot)
            return 0;
        p = dot + 1;
    }
    return *p ? (size_t)(p - key) : 0;
}

/* Wrapper prefixes worth trying on k, "" first. */
static size_t gather_prefixes(ckpt__arena *ar, const cand *k, const char **out)
{
    size_t n = 0;
    out[n++] = "";
    const ckpt_value *d = k->pub.dict;
    size_t nkeys = d->u.dict.len;
    /* runs of known wrapper names: module., module._orig_mod., ... */
    for (size_t i = 0; i < nkeys && n < SD_MAX_PREFIXES; i++) {
        const char *key = d->u.dict.keys[i]->u.str.data, *p = key;
        for (int depth = 0; depth < SD_MAX_PREFIX_PARTS; depth++) {
            const char *dot = strchr(p, '.');
            if (!dot || wrapper_index(p, (size_t)(dot - p)) < 0)
                break;
            size_t len = (size_t)(dot - key) + 1;
            bool have = false;
            for (size_t j = 0; j < n; j++)
                have |= strlen(out[j]) == len && strncmp(out[j], key, len) == 0;
            if (!have && n < SD_MAX_PREFIXES) {
                char *s = ckpt__arena_strndup(ar, key, len);
                if (s)
                    out[n++] = s;
            }
            p = dot + 1;
        }
    }
    /* the leading components (1 to 3) of a majority of the keys: Boyer-Moore vote, then a
     * count, so a hostile key list costs linear time */
    for (int parts = 1; parts <= SD_MAX_PREFIX_PARTS && n < SD_MAX_PREFIXES; parts++) {
        const char *cand_key = NULL;
        size_t cand_len = 0, votes = 0;
        for (size_t i = 0; i < nkeys; i++) {
            const char *key = d->u.dict.keys[i]->u.str.data;
            size_t len = lead_len(key, parts);
            if (votes == 0 && len) {
                cand_key = key;
                cand_len = len;
                votes = 1;
            } else if (len && len == cand_len && strncmp(key, cand_key, len) == 0) {
                votes++;
            } else if (votes) {
                votes--;
            }
        }
        if (!cand_key)
            continue;
        size_t count = 0;
        for (size_t i = 0; i < nkeys; i++)
            count += strncmp(d->u.dict.keys[i]->u.str.data, cand_key, cand_len) == 0;
        bool have = false;
        for (size_t j = 0; j < n; j++)
            have |= strlen(out[j]) == cand_len && strncmp(out[j], cand_key, cand_len) == 0;
        if (!have && 2 * count >= nkeys) {
            char *pfx = ckpt__arena_strndup(ar, cand_key, cand_len);
            if (pfx)
                out[n++] = pfx;
        }
    }
    return n;
}

/* Without a model: the longest run of wrapper names that every key starts with (and goes on
 * after). any_wrapper false: only module. and _orig_mod., which are never a real submodule. */
static const char *common_wrapper(ckpt__arena *ar, const ckpt_sd *sd, bool any_wrapper)
{
    if (sd->n_entries == 0)
        return "";
    const char *first = sd->entries[0].key, *p = first;
    size_t best = 0;
    for (;;) {
        const char *dot = strchr(p, '.');
        int w = dot ? wrapper_index(p, (size_t)(dot - p)) : -1;
        if (w < 0 || (!any_wrapper && w > 1))
            break;
        size_t len = (size_t)(dot - first) + 1;
        bool all = true;
        for (size_t i = 0; i < sd->n_entries && all; i++)
            all = strncmp(sd->entries[i].key, first, len) == 0 && sd->entries[i].key[len];
        if (!all)
            break;
        best = len;
        p = dot + 1;
    }
    return best ? ckpt__arena_strndup(ar, first, best) : "";
}

/* The class count of the unwrapped dict's head: fc.weight's rows when it has the right
 * width, else fc.bias's length, else fc.weight's rows, else torchvision's default. */
static int64_t head_classes(const cand *k, const char *prefix, const ckpt_arch *a)
{
    const ckpt_value *w = stripped_get(k, prefix, "fc.weight");
    const ckpt_value *b = stripped_get(k, prefix, "fc.bias");
    const ckpt_tensor *tw = w && w->type == CKPT_T_TENSOR ? w->u.tensor : NULL;
    const ckpt_tensor *tb = b && b->type == CKPT_T_TENSOR ? b->u.tensor : NULL;
    int64_t nc = 0;
    if (tw && tw->ndim == 2 && tw->shape[1] == ckpt_arch_features(a))
        nc = tw->shape[0];
    else if (tb && tb->ndim == 1)
        nc = tb->shape[0];
    else if (tw && tw->ndim == 2)
        nc = tw->shape[0];
    return nc >= 1 && nc <= SD_MAX_CLASSES ? nc : SD_DEFAULT_CLASSES;
}

static int cand_cmp(const void *pa, const void *pb)
{
    const cand *a = *(const cand *const *)pa, *b = *(const cand *const *)pb;
    if (a->recognised != b->recognised)
        return a->recognised ? -1 : 1;
    /* fit only says something between candidates that fit; smaller dicts misfit less */
    if (a->recognised && a->quality != b->quality)
        return a->quality > b->quality ? -1 : 1;
    if (a->name_rank != b->name_rank)
        return a->name_rank < b->name_rank ? -1 : 1;
    if (a->pub.n_tensors != b->pub.n_tensors)
        return a->pub.n_tensors > b->pub.n_tensors ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* ---- ckpt check ------------------------------------------------------------------------- */

typedef struct check_priv {
    ckpt__arena *ar;
    ckpt_sd_model *owned_model; /* made by ckpt_arch_model: its own arena */
    vec warnings;               /* ckpt_sd_warning * */
} check_priv;

static int warn(check_priv *p, ckpt_error *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int warn(check_priv *p, ckpt_error *err, const char *code, const char *fmt, ...)
{
    ckpt_sd_warning *w = ckpt__arena_alloc(p->ar, sizeof *w);
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (!w || !(w->message = ckpt__arena_strdup(p->ar, tmp)) || !vec_push(p->ar, &p->warnings, w))
        return ckpt__arena_error(p->ar, err);
    w->code = code;
    return CKPT_OK;
}

/* 'a', 'b', 'c' and 4 more */
static void sb_names(strbuf *b, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n && i < SD_MAX_LISTED; i++) {
        if (i)
            sb_add(b, ", ");
        sb_printf(b, "'%s'", names[i]);
    }
    if (n > SD_MAX_LISTED)
        sb_printf(b, " and %zu more", n - SD_MAX_LISTED);
}

/* "DataParallel / DistributedDataParallel, then torch.compile" */
static const char *wrapper_story(ckpt__arena *ar, const char *prefix)
{
    strbuf b = {0};
    const char *p = prefix;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        int w = wrapper_index(p, n);
        if (b.len)
            sb_add(&b, ", then ");
        sb_add(&b, w >= 0 ? wrappers[w].what : "a wrapper module");
        p += n;
        if (*p == '.')
            p++;
    }
    return sb_finish(&b, ar);
}

/* Python's expression for the chosen dict: ckpt['model'], ckpt['optimizer_states'][0]. */
static void sb_pypath(strbuf *b, const cand *k)
{
    sb_add(b, "ckpt");
    for (size_t i = 0; i < k->pub.path_len; i++) {
        if (k->is_index[i]) {
            sb_printf(b, "[%s]", k->pub.path[i]);
        } else {
            sb_add(b, "[");
            sb_pystr(b, k->pub.path[i]);
            sb_add(b, "]");
        }
    }
}

typedef struct value_scan {
    int64_t nan_tensors, inf_tensors;
    const char *nan_first, *inf_first;
    size_t bn_layers, bn_at_init;
} value_scan;

/* NaN/Inf in one tensor: the storage is scanned first (once per storage and dtype: a hash of
 * them); only a storage that holds some is looked at through the tensor's view, and only when
 * the view is no larger than the storage (a broadcast view is judged by its storage). */
typedef struct storage_memo {
    const ckpt_storage *s;
    ckpt_dtype dt;
    int64_t nan, inf;
} storage_memo;

typedef struct memo_table {
    storage_memo *slots;
    size_t cap; /* power of two */
} memo_table;

static storage_memo *memo_slot(memo_table *t, const ckpt_storage *s, ckpt_dtype dt, bool *fresh)
{
    uint64_t h = ((uint64_t)(uintptr_t)s * 0x9e3779b97f4a7c15ull) ^ (uint64_t)dt;
    for (size_t i = (size_t)(h >> 17) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        storage_memo *m = &t->slots[i];
        if (!m->s) {
            m->s = s;
            m->dt = dt;
            *fresh = true;
            return m;
        }
        if (m->s == s && m->dt == dt) {
            *fresh = false;
            return m;
        }
    }
}

static int scan_nonfinite(const ckpt_tensor *t, memo_table *memo, int64_t *nan, int64_t *inf,
                          ckpt_error *err)
{
    *nan = *inf = 0;
    ckpt_dtype part;
    if (!components(t->dtype, &part) || !is_floating(part) || t->numel == 0 || !t->storage)
        return CKPT_OK;
    size_t es = ckpt_dtype_size(t->dtype);
    uint64_t storage_elems = t->storage->nbytes / es;
    bool fresh;
    storage_memo *m = memo_slot(memo, t->storage, t->dtype, &fresh);
    if (fresh) {
        const uint8_t *data;
        int rc = ckpt__storage_bytes(t->storage, &data, err);
        if (rc)
            return rc;
        count_nonfinite(t->dtype, data, (size_t)storage_elems, &m->nan, &m->inf);
    }
    if (m->nan == 0 && m->inf == 0)
        return CKPT_OK;
    if ((uint64_t)t->numel > storage_elems) {
        *nan = m->nan;
        *inf = m->inf;
        return CKPT_OK;
    }
    size_t nb;
    uint8_t *buf = read_tensor(t, &nb, err);
    if (!buf)
        return err ? err->status : CKPT_ENOMEM;
    count_nonfinite(t->dtype, buf, (size_t)t->numel, nan, inf);
    free(buf);
    return CKPT_OK;
}

/* Every element of t equals x (false for a tensor too large to be BatchNorm statistics). */
static int all_equal(const ckpt_tensor *t, double x, bool *out, ckpt_error *err)
{
    ckpt_dtype part;
    *out = false;
    if (components(t->dtype, &part) != 1 ||
        (uint64_t)t->numel > SD_MAX_SCAN_READ / ckpt_dtype_size(t->dtype))
        return CKPT_OK;
    size_t nb;
    uint8_t *buf = read_tensor(t, &nb, err);
    if (!buf)
        return err ? err->status : CKPT_ENOMEM;
    size_t es = ckpt_dtype_size(t->dtype);
    bool all = true;
    for (int64_t i = 0; i < t->numel && all; i++)
        all = elem(t->dtype, buf + (size_t)i * es) == x;
    free(buf);
    *out = all;
    return CKPT_OK;
}

static int scan_values(check_priv *p, const ckpt_sd *sd, const ckpt_sd_model *m, value_scan *vs,
                       ckpt_error *err)
{
    memset(vs, 0, sizeof *vs);
    memo_table memo = {NULL, 16};
    while (memo.cap < 2 * sd->n_entries + 1)
        memo.cap *= 2;
    memo.slots = ckpt__arena_alloc(p->ar, memo.cap * sizeof *memo.slots);
    if (!memo.slots)
        return ckpt__arena_error(p->ar, err);
    for (size_t i = 0; i < sd->n_entries; i++) {
        const ckpt_sd_entry *e = &sd->entries[i];
        if (!e->is_tensor)
            continue;
        int64_t nan, inf;
        int rc = scan_nonfinite(e->value->u.tensor, &memo, &nan, &inf, err);
        if (rc)
            return rc;
        if (nan && !vs->nan_tensors++)
            vs->nan_first = e->key;
        if (inf && !vs->inf_tensors++)
            vs->inf_first = e->key;
    }
    /* BatchNorm statistics straight from the constructor: mean 0 and variance 1 */
    strmap keys;
    if (!strmap_init(p->ar, &keys, sd->n_entries))
        return ckpt__arena_error(p->ar, err);
    for (size_t i = 0; i < sd->n_entries; i++)
        strmap_add(&keys, sd->entries[i].key, i);
    for (size_t mi = 0; m && mi < m->n_modules; mi++) {
        const ckpt_sd_module *mod = &m->modules[mi];
        if (!mod->batchnorm)
            continue;
        const char *sm = mod->path[0] ? ".running_mean" : "running_mean";
        const char *sv = mod->path[0] ? ".running_var" : "running_var";
        size_t jm = strmap_get2(&keys, mod->path, strlen(mod->path), sm, strlen(sm));
        size_t jv = strmap_get2(&keys, mod->path, strlen(mod->path), sv, strlen(sv));
        if (jm == SIZE_MAX || jv == SIZE_MAX || !sd->entries[jm].is_tensor ||
            !sd->entries[jv].is_tensor)
            continue;
        vs->bn_layers++;
        bool zero = false, one = false;
        int rc = all_equal(sd->entries[jm].value->u.tensor, 0.0, &zero, err);
        if (!rc)
            rc = all_equal(sd->entries[jv].value->u.tensor, 1.0, &one, err);
        if (rc)
            return rc;
        vs->bn_at_init += zero && one;
    }
    return CKPT_OK;
}

static int explain(check_priv *p, ckpt_sd_report *r, const cand *k, const ckpt_value *root,
                   const ckpt_sd_check_options *opt, const ckpt_file *f, bool has_float,
                   ckpt_error *err)
{
    ckpt__arena *ar = p->ar;
    const ckpt_sd *sd = r->sd;
    const ckpt_sd_verdict *v = r->verdict;
    int rc = CKPT_OK;
    strbuf b = {0};

    if (k->pub.path_len > 0 && root->type == CKPT_T_DICT) {
        const char **sib = ckpt__arena_alloc(ar, (root->u.dict.len + 1) * sizeof *sib);
        if (!sib)
            return ckpt__arena_error(ar, err);
        size_t ns = 0;
        for (size_t i = 0; i < root->u.dict.len; i++) {
            const ckpt_value *key = root->u.dict.keys[i];
            if (key->type == CKPT_T_STR && strcmp(key->u.str.data, k->pub.path[0]) != 0)
                sib[ns++] = key->u.str.data;
        }
        sb_printf(&b, "a training checkpoint: the weights are under '%s' (%zu tensors)",
                  k->pub.path_str, k->pub.n_tensors);
        if (ns) {
            sb_add(&b, ", next to ");
            sb_names(&b, sib, ns);
        }
        sb_add(&b, "; load that entry, not the whole file");
        const char *msg = sb_finish(&b, ar);
        if (!msg || (rc = warn(p, err, "training_checkpoint", "%s", msg)))
            return msg ? rc : ckpt__arena_error(ar, err);
    }
    if (r->whole_file && r->model) {
        const ckpt_sd_verdict *w = r->whole_file;
        size_t n = r->model->sd.n_entries;
        rc = CKPT_OK;
        if (w->n_loaded == 0)
            rc = warn(p, err, "strict_false",
                      "model.load_state_dict(<the whole file>, strict=False) would match none of "
                      "the %zu keys and leave every weight at its random initialisation: outputs "
                      "would then change from run to run",
                      n);
        else if (w->n_loaded + w->n_filled < n)
            rc = warn(p, err, "strict_false",
                      "model.load_state_dict(<the whole file>, strict=False) would match only "
                      "%zu of the %zu keys and leave the rest at their random initialisation",
                      w->n_loaded, n);
        if (rc)
            return rc;
    }
    if (sd->prefix[0]) {
        const char *story = wrapper_story(ar, sd->prefix);
        if (!story || (rc = warn(p, err, "prefix_stripped",
                                 "the keys carry the prefix '%s' (added by %s); ckpt stripped it",
                                 sd->prefix, story)))
            return story ? rc : ckpt__arena_error(ar, err);
    }
    if (r->arch) {
        const ckpt_sd_entry *fc = NULL;
        for (size_t i = 0; i < sd->n_entries && !fc; i++)
            if (!strcmp(sd->entries[i].key, "fc.weight") && sd->entries[i].is_tensor)
                fc = &sd->entries[i];
        bool auto_arch = !opt->arch || !strcmp(opt->arch, "auto");
        sb_printf(&b, "%s torchvision.models.%s(num_classes=%lld)",
                  auto_arch ? "recognised as" : "checked against", r->arch->name,
                  (long long)r->num_classes);
        if (fc) {
            sb_add(&b, "; fc.weight is ");
            sb_dims(&b, fc->ndim, fc->shape);
        }
        const char *msg = sb_finish(&b, ar);
        if (!msg || (rc = warn(p, err, "arch", "%s", msg)))
            return msg ? rc : ckpt__arena_error(ar, err);
        if (fc && fc->ndim == 2 && fc->shape[0] != r->num_classes &&
            (rc = warn(p, err, "head",
                       "the checkpoint's head has %lld classes: build the model with "
                       "%s(num_classes=%lld)",
                       (long long)fc->shape[0], r->arch->name, (long long)fc->shape[0])))
            return rc;
    } else if (!r->model) {
        if ((rc = warn(p, err, "arch_unknown",
                       "the keys match none of the %zu torchvision ResNets; check against "
                       "the model's own state_dict() with --against TEMPLATE",
                       ckpt_arch_count())))
            return rc;
    }
    /* other candidates */
    if (r->n_candidates > 1) {
        const char **names = ckpt__arena_alloc(ar, r->n_candidates * sizeof *names);
        if (!names)
            return ckpt__arena_error(ar, err);
        size_t n = 0;
        for (size_t i = 0; i < r->n_candidates; i++)
            if (&r->candidates[i] != r->chosen)
                names[n++] = r->candidates[i].path_str[0] ? r->candidates[i].path_str : "<root>";
        sb_add(&b, "other dicts of tensors in the file: ");
        sb_names(&b, names, n);
        sb_add(&b, " (choose one with --key)");
        const char *msg = sb_finish(&b, ar);
        if (!msg || (rc = warn(p, err, "other_candidates", "%s", msg)))
            return msg ? rc : ckpt__arena_error(ar, err);
    }
    if (v && r->model) {
        /* num_batches_tracked: missing and reported, or missing and filled in */
        size_t nbt_missing = 0;
        for (size_t i = 0; i < v->n_missing; i++)
            nbt_missing += !strcmp(leaf_name(v->missing[i]), "num_batches_tracked");
        if (nbt_missing &&
            (rc = warn(p, err, "num_batches_tracked",
                       "%zu BatchNorm num_batches_tracked entries are missing and the dict's "
                       "_metadata gives BatchNorm version 2, so PyTorch reports them (a dict "
                       "without _metadata would load: BatchNorm fills them with 0)",
                       nbt_missing)))
            return rc;
        if (v->n_filled &&
            (rc = warn(p, err, "num_batches_tracked_filled",
                       "%zu num_batches_tracked entries are missing; load_state_dict fills "
                       "them with 0 because the dict %s",
                       v->n_filled, sd->has_metadata ? "records an old BatchNorm version"
                                                     : "has no _metadata")))
            return rc;
        for (size_t i = 0; i < v->n_mismatch; i++) {
            const ckpt_sd_entry *c = v->mismatch[i].checkpoint, *e = v->mismatch[i].model;
            if (c->ndim != e->ndim || c->ndim < 2 || c->ndim > CKPT_MAX_DIMS)
                continue;
            /* same sizes in another order: saved transposed or permuted */
            int64_t a[CKPT_MAX_DIMS], bb[CKPT_MAX_DIMS];
            memcpy(a, c->shape, (size_t)c->ndim * sizeof *a);
            memcpy(bb, e->shape, (size_t)e->ndim * sizeof *bb);
            bool perm = true;
            for (int x = 0; x < c->ndim && perm; x++) {
                bool found = false;
                for (int y = 0; y < e->ndim && !found; y++)
                    if (bb[y] == a[x] && bb[y] >= 0) {
                        bb[y] = -1;
                        found = true;
                    }
                perm = found;
            }
            if (perm) {
                sb_printf(&b, "'%s' has the model's sizes in another order (", v->mismatch[i].key);
                sb_dims(&b, c->ndim, c->shape);
                sb_add(&b, " instead of ");
                sb_dims(&b, e->ndim, e->shape);
                sb_add(&b, "): was it saved transposed?");
                const char *msg = sb_finish(&b, ar);
                if (!msg || (rc = warn(p, err, "transposed", "%s", msg)))
                    return msg ? rc : ckpt__arena_error(ar, err);
            }
        }
    }
    /* values that are not tensors */
    {
        const char **names = ckpt__arena_alloc(ar, (sd->n_entries + 1) * sizeof *names);
        if (!names)
            return ckpt__arena_error(ar, err);
        size_t n = 0;
        for (size_t i = 0; i < sd->n_entries; i++)
            if (!sd->entries[i].is_tensor)
                names[n++] = sd->entries[i].key;
        if (n) {
            sb_printf(&b, "%zu value%s of the state dict %s not tensors: ", n, n == 1 ? "" : "s",
                      n == 1 ? "is" : "are");
            sb_names(&b, names, n);
            const char *msg = sb_finish(&b, ar);
            if (!msg || (rc = warn(p, err, "not_tensor", "%s", msg)))
                return msg ? rc : ckpt__arena_error(ar, err);
        }
    }
    /* dtypes */
    {
        size_t counts[CKPT_DT_COUNT] = {0};
        size_t kinds = 0;
        for (size_t i = 0; i < sd->n_entries; i++) {
            const ckpt_sd_entry *e = &sd->entries[i];
            if (!e->is_tensor || !strcmp(leaf_name(e->key), "num_batches_tracked") ||
                (unsigned)e->dtype >= CKPT_DT_COUNT)
                continue;
            if (!counts[e->dtype]++)
                kinds++;
        }
        if (kinds > 1) {
            sb_add(&b, "mixed dtypes: ");
            bool first = true;
            for (int dt = 0; dt < CKPT_DT_COUNT; dt++)
                if (counts[dt]) {
                    sb_printf(&b, "%s%s (%zu tensors)", first ? "" : ", ",
                              ckpt_dtype_name((ckpt_dtype)dt), counts[dt]);
                    first = false;
                }
            const char *msg = sb_finish(&b, ar);
            if (!msg || (rc = warn(p, err, "dtype_mixed", "%s", msg)))
                return msg ? rc : ckpt__arena_error(ar, err);
        }
        for (int dt = 0; dt < CKPT_DT_COUNT; dt++) {
            if (!counts[dt] || dt == CKPT_DT_FLOAT32)
                continue;
            const char *name = ckpt_dtype_name((ckpt_dtype)dt);
            if (dt == CKPT_DT_FLOAT16 || dt == CKPT_DT_BFLOAT16 || dt == CKPT_DT_FLOAT64)
                rc = warn(p, err, "dtype", "%zu tensors are %s: load_state_dict converts them to "
                          "the model's dtype (float32 unless the model was converted)",
                          counts[dt], name);
            else
                rc = warn(p, err, "dtype_unusual",
                          "%zu tensors are %s, unusual for weights", counts[dt], name);
            if (rc)
                return rc;
        }
    }
    if (opt->scan_values) {
        value_scan vs;
        if ((rc = scan_values(p, sd, r->model, &vs, err)))
            return rc;
        if (vs.nan_tensors &&
            (rc = warn(p, err, "nan", "%lld tensor%s hold NaN values (first: '%s')",
                       (long long)vs.nan_tensors, vs.nan_tensors == 1 ? "" : "s", vs.nan_first)))
            return rc;
        if (vs.inf_tensors &&
            (rc = warn(p, err, "inf", "%lld tensor%s hold infinite values (first: '%s')",
                       (long long)vs.inf_tensors, vs.inf_tensors == 1 ? "" : "s", vs.inf_first)))
            return rc;
        if (vs.bn_layers && vs.bn_at_init == vs.bn_layers &&
            (rc = warn(p, err, "bn_init",
                       "BatchNorm statistics are at their initial values in all %zu layers "
                       "(running_mean 0, running_var 1): the model was never trained, or its "
                       "running statistics were not saved",
                       vs.bn_layers)))
            return rc;
    }

    /* the Python that loads it */
    bool trusted = true;
    const ckpt_global_ref *g;
    size_t ng = ckpt_globals(f, &g);
    for (size_t i = 0; i < ng; i++)
        trusted &= g[i].kind == CKPT_GLOBAL_WEIGHTS;
    const char *fname = opt->file_name ? opt->file_name : "checkpoint.pth";
    sb_add(&b, "import torch\n");
    if (r->arch)
        sb_add(&b, "import torchvision\n");
    if (ckpt_file_format(f) == CKPT_FORMAT_SAFETENSORS) {
        sb_add(&b, "from safetensors.torch import load_file\nsd = load_file(");
        sb_pystr(&b, fname);
        sb_add(&b, ")\n");
    } else {
        sb_add(&b, "ckpt = torch.load(");
        sb_pystr(&b, fname);
        sb_printf(&b, ", map_location='cpu', weights_only=%s)", trusted ? "True" : "False");
        if (!trusted)
            sb_add(&b, "  # it pickles more than tensors: only for files you trust");
        else if (has_float)
            sb_add(&b, "  # torch >= 2.0 (1.13's weights_only refuses Python floats)");
        sb_add(&b, "\nsd = ");
        sb_pypath(&b, k);
        sb_add(&b, "\n");
    }
    if (sd->prefix[0]) {
        sb_add(&b, "torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(sd, ");
        sb_pystr(&b, sd->prefix);
        sb_add(&b, ")\n");
    }
    /* a head of another size: the lines build the model the file fits */
    int64_t nc = r->num_classes;
    size_t problems = v ? v->n_missing + v->n_unexpected + v->n_errors : 0;
    if (r->arch && v) {
        for (size_t i = 0; i < v->n_mismatch; i++) {
            const ckpt_sd_mismatch *mm = &v->mismatch[i];
            bool fcw = !strcmp(mm->key, "fc.weight") && mm->checkpoint->ndim == 2 &&
                       mm->checkpoint->shape[1] == ckpt_arch_features(r->arch);
            bool fcb = !strcmp(mm->key, "fc.bias") && mm->checkpoint->ndim == 1;
            if (fcw || fcb) {
                nc = mm->checkpoint->shape[0];
                problems--;
            }
        }
    }
    if (r->arch)
        sb_printf(&b, "model = torchvision.models.%s(num_classes=%lld)\n", r->arch->name,
                  (long long)nc);
    else
        sb_add(&b, "model = MyModel()  # your model class\n");
    sb_add(&b, "model.load_state_dict(sd, strict=True)");
    if (problems)
        sb_printf(&b, "  # still fails: %zu missing, %zu unexpected, %zu other errors (above)",
                  v->n_missing, v->n_unexpected, v->n_errors);
    sb_add(&b, "\nmodel.eval()\n");
    r->python = sb_finish(&b, ar);
    return r->python ? CKPT_OK : ckpt__arena_error(ar, err);
}

/* The template's state dict: found and unwrapped like a checkpoint's, minus the model. */
static int template_model(check_priv *p, const ckpt_sd_check_options *opt, ckpt_sd_model **out,
                          ckpt_error *err)
{
    check_ctx c = {0};
    c.ar = p->ar;
    c.err = err;
    c.opt = opt;
    const ckpt_value *root = ckpt_root(opt->against), *d = NULL;
    int rc;
    if (opt->against_key) {
        size_t depth;
        if ((rc = resolve_key(&c, root, opt->against_key, &d, &depth)))
            return rc;
        if (d->type != CKPT_T_DICT)
            return CKPT_FAIL(err, CKPT_EINVAL, "template: '%s' is a %s, not a dict",
                             opt->against_key, ckpt_type_name(d->type));
    } else {
        if ((rc = walk(&c, root, 0)))
            return rc;
        if (c.n_cands == 0)
            return CKPT_FAIL(err, CKPT_ENOTFOUND, "template: no dict of tensors in the file");
        for (size_t i = 0; i < c.n_cands; i++)
            c.cands[i]->recognised = true;
        qsort(c.cands, c.n_cands, sizeof *c.cands, cand_cmp);
        d = c.cands[0]->pub.dict;
    }
    ckpt_sd *t;
    if ((rc = sd_build(p->ar, d, "", &t, err)))
        return rc;
    const char *wrap = common_wrapper(p->ar, t, false);
    if (!wrap)
        return ckpt__arena_error(p->ar, err);
    if (wrap[0] && (rc = sd_build(p->ar, d, wrap, &t, err)))
        return rc;
    return model_from_template(p->ar, t, NULL, out, err);
}

int ckpt_sd_check(const ckpt_file *f, const ckpt_sd_check_options *opt_in, ckpt_sd_report **out,
                  ckpt_error *err)
{
    *out = NULL;
    ckpt_sd_check_options opt = {0};
    if (opt_in)
        opt = *opt_in;
    bool auto_arch = !opt.arch || !strcmp(opt.arch, "auto");
    const ckpt_arch *named = auto_arch ? NULL : ckpt_arch_by_name(opt.arch);
    if (!auto_arch && !named)
        return CKPT_FAIL(err, CKPT_EINVAL, "unknown architecture '%s'", opt.arch);
    if (opt.num_classes < 0 || opt.num_classes > SD_MAX_CLASSES)
        return CKPT_FAIL(err, CKPT_EINVAL, "class count %lld is out of range",
                         (long long)opt.num_classes);
    if (opt.against && named)
        return CKPT_FAIL(err, CKPT_EINVAL, "--against and --arch exclude each other");
    const ckpt_value *root = ckpt_root(f);
    if (!root)
        return CKPT_FAIL(err, CKPT_EINVAL, "the file has no content");

    ckpt__arena *ar = new_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    check_priv *p = ckpt__arena_alloc(ar, sizeof *p);
    ckpt_sd_report *r = ckpt__arena_alloc(ar, sizeof *r);
    if (!p || !r) {
        ckpt__arena_free(ar);
        return CKPT_NOMEM(err);
    }
    p->ar = ar;
    r->internal = p;
    ckpt_sd_model *scratch[16] = {0};
    size_t n_scratch = 0;
    int rc = CKPT_OK;
    check_ctx c = {0};
    c.ar = ar;
    c.err = err;
    c.opt = &opt;
    const char *strip = NULL;
    if (opt.strip_prefix) {
        size_t n = strlen(opt.strip_prefix);
        if (n && opt.strip_prefix[n - 1] != '.')
            strip = ckpt__arena_printf(ar, "%s.", opt.strip_prefix);
        else
            strip = ckpt__arena_strdup(ar, opt.strip_prefix);
        if (!strip) {
            rc = ckpt__arena_error(ar, err);
            goto fail;
        }
    }

    /* candidates */
    if ((rc = walk(&c, root, 0)))
        goto fail;
    cand *chosen = NULL;
    if (opt.key) { /* "" is the root itself */
        const ckpt_value *d;
        size_t depth;
        if ((rc = resolve_key(&c, root, opt.key, &d, &depth)))
            goto fail;
        if (d->type != CKPT_T_DICT) {
            rc = CKPT_FAIL(err, CKPT_EINVAL, "'%s' is a %s, not a dict of tensors", opt.key,
                           ckpt_type_name(d->type));
            goto fail;
        }
        for (size_t i = 0; i < c.n_cands && !chosen; i++)
            if (c.cands[i]->pub.dict == d)
                chosen = c.cands[i];
        if (!chosen) {
            size_t nt = 0;
            for (size_t i = 0; i < d->u.dict.len; i++)
                nt += d->u.dict.vals[i]->type == CKPT_T_TENSOR;
            if ((rc = add_candidate(&c, d, depth, nt)))
                goto fail;
            chosen = c.cands[c.n_cands - 1];
        }
        if (!chosen->strings) {
            rc = CKPT_FAIL(err, CKPT_EUNSUPPORTED, "'%s' has keys that are not strings", opt.key);
            goto fail;
        }
    }
    if (c.n_cands == 0) {
        const ckpt_value *cls = root->type == CKPT_T_OBJECT ? root->u.obj.callable : NULL;
        if (cls && cls->type == CKPT_T_GLOBAL)
            rc = CKPT_FAIL(err, CKPT_ENOTFOUND,
                           "the file is a whole pickled '%s.%s' object, not a state dict: "
                           "only Python with that class can load it (save its state_dict() "
                           "instead)", cls->u.global.module, cls->u.global.name);
        else
            rc = CKPT_FAIL(err, CKPT_ENOTFOUND, "no dict of tensors in the file: nothing to check");
        goto fail;
    }

    /* the models a candidate is fitted to */
    ckpt_sd_model *tmodel = NULL;
    bool any_head = false;
    if (opt.against) {
        if ((rc = template_model(p, &opt, &tmodel, err)))
            goto fail;
        scratch[n_scratch++] = NULL; /* keeps indexes uniform: slot 0 is the template */
    } else if (named) {
        int64_t nc = opt.num_classes ? opt.num_classes : SD_DEFAULT_CLASSES;
        if ((rc = ckpt_arch_model(named, nc, &scratch[n_scratch], err)))
            goto fail;
        n_scratch++;
    } else {
        any_head = opt.num_classes == 0;
        for (size_t i = 0; i < ckpt_arch_count(); i++) {
            int64_t nc = opt.num_classes ? opt.num_classes : SD_DEFAULT_CLASSES;
            if ((rc = ckpt_arch_model(ckpt_arch_at(i), nc, &scratch[n_scratch], err)))
                goto fail;
            n_scratch++;
        }
    }
    for (size_t ci = 0; ci < c.n_cands; ci++) {
        cand *k = c.cands[ci];
        if (!k->strings)
            continue;
        const char *prefixes[SD_MAX_PREFIXES];
        size_t np = strip ? 1 : gather_prefixes(ar, k, prefixes);
        if (strip)
            prefixes[0] = strip;
        bool have = false;
        for (size_t pi = 0; pi < np; pi++) {
            for (size_t mi = 0; mi < n_scratch; mi++) {
                const ckpt_sd_model *m = tmodel ? tmodel : scratch[mi];
                fit ft = fit_model(k, prefixes[pi], m, any_head);
                if (!have || ft.quality > k->quality) {
                    have = true;
                    k->quality = ft.quality;
                    k->names = ft.names;
                    k->pub.prefix = prefixes[pi];
                    k->pub.arch = m->arch;
                    k->pub.matched = ft.shapes;
                    k->pub.expected = m->sd.n_entries;
                }
            }
        }
        k->recognised = opt.against || named ||
                        (2 * k->names >= k->pub.expected && 2 * k->names >= k->pub.n_tensors);
        if (!k->recognised)
            k->pub.arch = NULL;
    }
    qsort(c.cands, c.n_cands, sizeof *c.cands, cand_cmp);
    if (!chosen)
        chosen = c.cands[0];

    /* publish the candidates, best first */
    r->candidates = ckpt__arena_alloc(ar, c.n_cands * sizeof *r->candidates);
    if (!r->candidates) {
        rc = ckpt__arena_error(ar, err);
        goto fail;
    }
    r->n_candidates = c.n_cands;
    for (size_t i = 0; i < c.n_cands; i++) {
        r->candidates[i] = c.cands[i]->pub;
        if (c.cands[i] == chosen)
            r->chosen = &r->candidates[i];
    }

    /* the model and the unwrapped dict */
    const char *prefix = chosen->pub.prefix;
    ckpt_sd *sd;
    if (!chosen->recognised && !strip) {
        if ((rc = sd_build(ar, chosen->pub.dict, "", &sd, err)))
            goto fail;
        if (!(prefix = common_wrapper(ar, sd, true))) {
            rc = ckpt__arena_error(ar, err);
            goto fail;
        }
    }
    if ((rc = sd_build(ar, chosen->pub.dict, prefix, &sd, err)))
        goto fail;
    r->sd = sd;
    r->prefix = sd->prefix;
    if (tmodel) {
        r->model = tmodel;
    } else if (chosen->recognised) {
        const ckpt_arch *a = named ? named : chosen->pub.arch;
        int64_t nc = opt.num_classes ? opt.num_classes
                                     : named ? SD_DEFAULT_CLASSES : head_classes(chosen, prefix, a);
        if ((rc = ckpt_arch_model(a, nc, &p->owned_model, err)))
            goto fail;
        r->model = p->owned_model;
        r->arch = a;
        r->num_classes = nc;
    }
    if (r->model) {
        ckpt_sd_verdict *v;
        if ((rc = judge(ar, r->model, sd, &v, err)))
            goto fail;
        r->verdict = v;
        if ((chosen->pub.path_len > 0 || prefix[0]) && root->type == CKPT_T_DICT) {
            ckpt_sd *whole;
            ckpt_error ignored;
            /* a root with non-string keys is no state dict at all: skip the comparison */
            if (sd_build(ar, root, "", &whole, &ignored) == CKPT_OK) {
                if ((rc = judge(ar, r->model, whole, &v, err)))
                    goto fail;
                r->whole_file = v;
            }
        }
    }
    for (size_t i = 0; i < sd->n_entries; i++) {
        const ckpt_sd_entry *e = &sd->entries[i];
        if (!e->is_tensor)
            continue;
        r->n_tensors++;
        if (!is_bn_buffer(e->key)) {
            int64_t n = numel_of(e);
            if (ckpt__add_overflow(r->n_parameters, n, &r->n_parameters))
                r->n_parameters = INT64_MAX;
        }
    }
    if ((rc = explain(p, r, chosen, root, &opt, f, c.has_float, err)))
        goto fail;
    r->warnings = ckpt__arena_alloc(ar, (p->warnings.len + 1) * sizeof *r->warnings);
    if (!r->warnings) {
        rc = ckpt__arena_error(ar, err);
        goto fail;
    }
    for (size_t i = 0; i < p->warnings.len; i++)
        r->warnings[i] = *(ckpt_sd_warning *)p->warnings.items[i];
    r->n_warnings = p->warnings.len;
    for (size_t i = 0; i < n_scratch; i++)
        ckpt_sd_model_free(scratch[i]);
    *out = r;
    return CKPT_OK;

fail:
    for (size_t i = 0; i < n_scratch; i++)
        ckpt_sd_model_free(scratch[i]);
    ckpt_sd_model_free(p->owned_model);
    ckpt__arena_free(ar);
    return rc;
}

void ckpt_sd_report_free(ckpt_sd_report *c)
{
    if (!c)
        return;
    check_priv *p = c->internal;
    ckpt_sd_model_free(p->owned_model);
    ckpt__arena_free(p->ar);
}

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
    uint8_t *a = read_tensor(ta, &na, err);
    if (!a)
        return err ? err->status : CKPT_ENOMEM;
    uint8_t *b = read_tensor(tb, &nb, err);
    if (!b) {
        free(a);
        return err ? err->status : CKPT_ENOMEM;
    }
    ckpt_dtype pa = CKPT_DT_FLOAT32, pb = CKPT_DT_FLOAT32;
    int ka = components(ta->dtype, &pa), kb = components(tb->dtype, &pb);
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
                double x = elem(pa, xa + (size_t)c * ca), y = elem(pb, xb + (size_t)c * cb);
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
    ckpt__arena *ar = new_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd_diff_result *d = ckpt__arena_alloc(ar, sizeof *d);
    strmap ka, kb;
    int rc = CKPT_OK;
    if (!d || !strmap_init(ar, &ka, a->n_entries) || !strmap_init(ar, &kb, b->n_entries) ||
        !(d->items = ckpt__arena_alloc(ar, (a->n_entries + b->n_entries + 1) * sizeof *d->items))) {
        ckpt__arena_free(ar);
        return CKPT_NOMEM(err);
    }
    d->internal = ar;
    for (size_t i = 0; i < a->n_entries; i++)
        strmap_add(&ka, a->entries[i].key, i);
    for (size_t i = 0; i < b->n_entries; i++)
        strmap_add(&kb, b->entries[i].key, i);
    d->match = true;
    for (size_t i = 0; i < a->n_entries + b->n_entries; i++) {
        ckpt_sd_diff_item *it = &d->items[d->n_items];
        memset(it, 0, sizeof *it);
        if (i < a->n_entries) {
            it->a = &a->entries[i];
            size_t j = strmap_get(&kb, it->a->key);
            it->b = j == SIZE_MAX ? NULL : &b->entries[j];
            if (strmap_get(&ka, it->a->key) != i)
                continue; /* a key repeated in a hand-made dict */
        } else {
            it->b = &b->entries[i - a->n_entries];
            if (strmap_get(&ka, it->b->key) != SIZE_MAX ||
                strmap_get(&kb, it->b->key) != i - a->n_entries)
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
        } else if (!same_shape(it->a->ndim, it->a->shape, it->b->ndim, it->b->shape)) {
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
