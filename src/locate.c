/*
 * locate.c - finding the state dict in a checkpoint (ckpt_sd_check): the dicts of tensors
 * that could be it (candidates), the wrapper prefix that fits each best, the architecture it
 * fits, then the judge's verdict (judge.c) and, when asked for, the words (report.c).
 */
#include "sd_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define SD_MAX_DEPTH 8             /* containers walked from the root when looking for dicts */
#define SD_MAX_NODES 200000        /* values visited by that walk */
#define SD_MAX_CANDIDATES 64       /* dicts of tensors kept as candidates */
#define SD_MAX_PREFIXES 16         /* wrapper prefixes tried per candidate */
#define SD_MAX_PREFIX_PARTS 3      /* name components in a guessed prefix */

/* ---- finding candidates ------------------------------------------------------------------ */

static const char *const preferred_names[] = {
    "state_dict", "model_state_dict", "model", "net", "network", "module", "model_state",
    "weights", "params", "teacher", "student", "model_ema", "ema", "state_dict_ema",
    "ema_state_dict", "ema_model",
};
#define N_PREFERRED (sizeof preferred_names / sizeof preferred_names[0])

/* Wrapper modules whose names end up in front of every key. */
/* Module names that hold the network, with who adds them. The first N_WRAPPERS are
 * wrappers, tried as prefixes to strip; the rest hold one network of several and are named in
 * the report only (the candidates under them are found as sub-trees). */
static const struct {
    const char *part;
    const char *what;
} wrappers[] = {
    {"module", "DataParallel / DistributedDataParallel"},
    {"_orig_mod", "torch.compile"},
    {"model", "a Lightning module or a trainer's wrapper"},
    {"backbone", "a model that holds the network as its backbone (detection, segmentation, "
                 "self-supervised training)"},
    {"encoder", "an encoder wrapper"},
    {"encoder_q", "MoCo's query encoder"},
    {"encoder_k", "MoCo's key (momentum) encoder"},
    {"base_encoder", "MoCo v3's base encoder"},
    {"momentum_encoder", "MoCo v3's momentum encoder"},
    {"teacher", "DINO's teacher"},
    {"student", "DINO's student"},
};
#define N_WRAPPERS 5
#define N_HOLDERS (sizeof wrappers / sizeof wrappers[0])

/* The entry of s[0..n) among the first `among` of wrappers[], or -1. */
static int holder_index(const char *s, size_t n, size_t among)
{
    for (size_t i = 0; i < among; i++)
        if (strlen(wrappers[i].part) == n && strncmp(wrappers[i].part, s, n) == 0)
            return (int)i;
    return -1;
}

static int wrapper_index(const char *s, size_t n)
{
    return holder_index(s, n, N_WRAPPERS);
}

const char *ckpt__sd_wrapper_what(const char *part, size_t n)
{
    int w = holder_index(part, n, N_HOLDERS);
    return w >= 0 ? wrappers[w].what : NULL;
}

typedef struct check_ctx {
    ckpt__arena *ar;
    ckpt_error *err;
    const ckpt_sd_check_options *opt;
    ckpt__cand **cands;
    size_t n_cands;
    size_t visited;
    const char *path[SD_MAX_DEPTH + 1];
    bool is_index[SD_MAX_DEPTH + 1];
    bool has_float;         /* a plain Python float somewhere (1.13's weights_only refuses it) */
    bool has_other;         /* a set, bytes or complex number (so does it) */
    ckpt__module_budget modules; /* spent on whole pickled modules */
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
    ckpt__cand *k = ckpt__arena_alloc(ar, sizeof *k);
    if (!k)
        return ckpt__arena_error(ar, c->err);
    k->pub.path = ckpt__arena_alloc(ar, (depth + 1) * sizeof *k->pub.path);
    k->is_index = ckpt__arena_alloc(ar, (depth + 1) * sizeof *k->is_index);
    if (!k->pub.path || !k->is_index)
        return ckpt__arena_error(ar, c->err);
    ckpt__strbuf b = {0};
    for (size_t i = 0; i < depth; i++) {
        k->pub.path[i] = c->path[i];
        k->is_index[i] = c->is_index[i];
        if (i)
            ckpt__sb_add(&b, "/");
        ckpt__sb_add(&b, c->path[i]);
    }
    k->pub.path_len = depth;
    k->pub.path_str = ckpt__sb_finish(&b, ar);
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
    int rc;
    if (k->strings && (rc = ckpt__scheme_apply(ar, k, c->err))) /* another naming: scheme.c */
        return rc;
    d = k->pub.dict;
    if (k->strings) {
        if (!ckpt__strmap_init(ar, &k->keys, d->u.dict.len))
            return ckpt__arena_error(ar, c->err);
        for (size_t i = 0; i < d->u.dict.len; i++)
            ckpt__strmap_add(&k->keys, d->u.dict.keys[i]->u.str.data, i);
    }
    ckpt__cand **nc =
        ckpt__arena_grow(ar, c->cands, c->n_cands * sizeof *nc, (c->n_cands + 1) * sizeof *nc);
    if (!nc)
        return ckpt__arena_error(ar, c->err);
    c->cands = nc;
    c->cands[c->n_cands++] = k;
    return CKPT_OK;
}

/* A whole pickled nn.Module is a candidate through the state_dict() it would return. */
static int walk_module(check_ctx *c, const ckpt_value *v, size_t depth)
{
    ckpt_value *sd;
    int rc = ckpt__module_state_dict(c->ar, v, &c->modules, &sd, c->err);
    size_t nt = 0;
    for (size_t i = 0; !rc && sd && i < sd->u.dict.len; i++)
        nt += sd->u.dict.vals[i]->type == CKPT_T_TENSOR;
    if (rc || !nt || c->n_cands >= SD_MAX_CANDIDATES || (rc = add_candidate(c, sd, depth, nt)))
        return rc;
    c->cands[c->n_cands - 1]->module_class = ckpt__module_class(v, c->ar);
    return CKPT_OK;
}

static int walk(check_ctx *c, const ckpt_value *v, size_t depth)
{
    if (!v || ++c->visited > SD_MAX_NODES)
        return CKPT_OK;
    if (v->type == CKPT_T_OBJECT)
        return walk_module(c, v, depth);
    if (v->type == CKPT_T_FLOAT && !(v->flags & CKPT_VF_NUMPY))
        c->has_float = true;
    if ((v->type == CKPT_T_SET || v->type == CKPT_T_BYTES || v->type == CKPT_T_COMPLEX) &&
        !(v->flags & CKPT_VF_NUMPY))
        c->has_other = true;
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
                x->type != CKPT_T_FLOAT && x->type != CKPT_T_OBJECT &&
                x->type != CKPT_T_SET && x->type != CKPT_T_BYTES && x->type != CKPT_T_COMPLEX)
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
                x->type != CKPT_T_FLOAT && x->type != CKPT_T_OBJECT &&
                x->type != CKPT_T_SET && x->type != CKPT_T_BYTES && x->type != CKPT_T_COMPLEX)
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
            return CKPT_FAIL(c->err, CKPT_ENOTFOUND, "no '%s' in the file (key path '%s')", seg,
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

/* The value the unwrapped dict would hold for key, or NULL: the dict is filtered to the keys
 * under the prefix, so that a sub-tree (one network of several) is judged alone. */
static const ckpt_value *stripped_get(const ckpt__cand *k, const char *prefix, const char *key)
{
    size_t plen = strlen(prefix);
    size_t i = ckpt__strmap_get2(&k->keys, prefix, plen, key, strlen(key));
    return i == SIZE_MAX ? NULL : k->pub.dict->u.dict.vals[i];
}

static size_t keys_under(const ckpt__cand *k, const char *prefix)
{
    const ckpt_value *d = k->pub.dict;
    if (!prefix[0])
        return d->u.dict.len;
    size_t n = 0;
    for (size_t i = 0; i < d->u.dict.len; i++)
        n += ckpt__starts_with(d->u.dict.keys[i]->u.str.data, prefix);
    return n;
}

/* Several networks under one dict: the one each project publishes comes first. MoCo v2 keeps
 * the query encoder (encoder_q) and MoCo v3 the base encoder; their momentum copies are the
 * key encoders. DINO releases the teacher; solo-learn and BYOL-style methods keep a
 * momentum_backbone next to the backbone. 0: no opinion, 1: the copy that is not published. */
static int prefix_rank(const char *prefix)
{
    static const char *const secondary[] = {
        "encoder_k", "momentum_encoder", "momentum_backbone", "student", "target_encoder",
        "target_backbone", "momentum", "key_encoder",
    };
    for (const char *p = prefix; *p;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        for (size_t i = 0; i < sizeof secondary / sizeof secondary[0]; i++)
            if (strlen(secondary[i]) == n && !strncmp(secondary[i], p, n))
                return 1;
        p += n + (dot != NULL);
    }
    return 0;
}

/* any_head: the model's head was built for 1000 classes but any class count fits. */
static fit fit_model(const ckpt__cand *k, const char *prefix, const ckpt_sd_model *m, bool any_head)
{
    fit f = {0, 0, 0};
    const char *head_w = any_head ? ckpt_arch_head(m->arch, false) : NULL;
    const char *head_b = any_head ? ckpt_arch_head(m->arch, true) : NULL;
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
        if (head_w && !strcmp(e->key, head_w))
            ok = t->ndim == 2 && t->shape[1] == e->shape[1];
        else if (head_b && !strcmp(e->key, head_b))
            ok = t->ndim == 1;
        else
            ok = ckpt__same_shape(t->ndim, t->shape, e->ndim, e->shape) ||
                 (e->ndim == 0 && t->ndim == 1 && t->shape[0] > 0);
        f.shapes += ok;
    }
    f.quality = (long long)f.shapes + (long long)f.names - (long long)m->sd.n_entries -
                (long long)keys_under(k, prefix);
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
static size_t gather_prefixes(ckpt__arena *ar, const ckpt__cand *k, const char *const *anchors,
                              size_t n_anchors, const char **out)
{
    size_t n = 0;
    out[n++] = "";
    const ckpt_value *d = k->pub.dict;
    size_t nkeys = d->u.dict.len;
    /* any sub-tree that holds a model's first key (conv1.weight): one network among several,
     * whatever share of the dict it covers */
    for (size_t i = 0; i < nkeys && n < SD_MAX_PREFIXES; i++) {
        const char *key = d->u.dict.keys[i]->u.str.data;
        size_t kl = strlen(key);
        for (size_t a = 0; a < n_anchors && n < SD_MAX_PREFIXES; a++) {
            size_t al = strlen(anchors[a]);
            if (kl <= al + 1 || strcmp(key + kl - al, anchors[a]) != 0 ||
                key[kl - al - 1] != '.')
                continue;
            size_t len = kl - al;
            bool have = false;
            for (size_t j = 0; j < n; j++)
                have |= strlen(out[j]) == len && strncmp(out[j], key, len) == 0;
            char *s = have ? NULL : ckpt__arena_strndup(ar, key, len);
            if (s)
                out[n++] = s;
        }
    }
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

/* The rows of the last Linear of an nn.Sequential in the head's place ("fc.1.weight" of
 * Sequential(Dropout, Linear), "fc.2.weight" of an MLP), else 0. Only for a dict that is this
 * network alone: in MoCo's encoder_q the MLP is a projection head, not a classifier. */
static int64_t seq_head_classes(const ckpt__cand *k, const char *prefix, const ckpt_arch *a)
{
    const char *hw = ckpt_arch_head(a, false);
    const char *dot = strrchr(hw, '.');
    if (!dot)
        return 0;
    size_t plen = strlen(prefix), hm = (size_t)(dot - hw) + 1; /* "fc." */
    long best = -1;
    int64_t nc = 0;
    const ckpt_value *d = k->pub.dict;
    for (size_t i = 0; i < d->u.dict.len; i++) {
        const char *key = d->u.dict.keys[i]->u.str.data;
        const ckpt_value *v = d->u.dict.vals[i];
        if (strncmp(key, prefix, plen) != 0 || strncmp(key + plen, hw, hm) != 0 ||
            v->type != CKPT_T_TENSOR || v->u.tensor->ndim != 2)
            continue;
        char *end;
        const char *s = key + plen + hm;
        if (*s < '0' || *s > '9')
            continue;
        long idx = strtol(s, &end, 10);
        if (strcmp(end, ".weight") != 0 || idx <= best)
            continue;
        best = idx;
        nc = v->u.tensor->shape[0];
    }
    return nc;
}

/* The class count of the unwrapped dict's head (as ckpt_arch_classes reads it), else
 * torchvision's default. */
static int64_t head_classes(const ckpt__cand *k, const char *prefix, const ckpt_arch *a)
{
    const ckpt_value *w = stripped_get(k, prefix, ckpt_arch_head(a, false));
    const ckpt_value *b = stripped_get(k, prefix, ckpt_arch_head(a, true));
    const ckpt_tensor *tw = w && w->type == CKPT_T_TENSOR ? w->u.tensor : NULL;
    const ckpt_tensor *tb = b && b->type == CKPT_T_TENSOR ? b->u.tensor : NULL;
    int64_t nc = 0;
    if (tw && tw->ndim == 2 && tw->shape[1] == ckpt_arch_features(a))
        nc = tw->shape[0];
    else if (tb && tb->ndim == 1)
        nc = tb->shape[0];
    else if (tw && tw->ndim == 2)
        nc = tw->shape[0];
    else if (!tw && !tb && keys_under(k, prefix) == k->pub.dict->u.dict.len)
        nc = seq_head_classes(k, prefix, a);
    return nc >= 1 && nc <= SD_MAX_CLASSES ? nc : SD_DEFAULT_CLASSES;
}

static int cand_cmp(const void *pa, const void *pb)
{
    const ckpt__cand *a = *(const ckpt__cand *const *)pa, *b = *(const ckpt__cand *const *)pb;
    if (a->recognised != b->recognised)
        return a->recognised ? -1 : 1;
    /* fit only says something between candidates that fit; smaller dicts misfit less */
    /* the most of a network first (a tiny dict never beats a near-complete one), then the
     * closest fit; a dict that fits no name says nothing by its misfit */
    if (a->recognised && a->names != b->names)
        return a->names > b->names ? -1 : 1;
    if (a->recognised && a->names && a->quality != b->quality)
        return a->quality > b->quality ? -1 : 1;
    if (a->name_rank != b->name_rank)
        return a->name_rank < b->name_rank ? -1 : 1;
    if (a->pub.n_tensors != b->pub.n_tensors)
        return a->pub.n_tensors > b->pub.n_tensors ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* d with only the keys under prefix (d itself when all are); NULL when out of memory. The
 * copy keeps d's _metadata. */
static const ckpt_value *filtered(ckpt__arena *ar, const ckpt_value *d, const char *prefix)
{
    size_t n = 0, len = d->u.dict.len;
    for (size_t i = 0; i < len; i++)
        n += !prefix[0] || ckpt__starts_with(d->u.dict.keys[i]->u.str.data, prefix);
    if (n == len)
        return d;
    ckpt_value *f = ckpt__arena_alloc(ar, sizeof *f);
    ckpt_value **keys = ckpt__arena_alloc(ar, (n + 1) * sizeof *keys);
    ckpt_value **vals = ckpt__arena_alloc(ar, (n + 1) * sizeof *vals);
    if (!f || !keys || !vals)
        return NULL;
    *f = *d;
    size_t j = 0;
    for (size_t i = 0; i < len; i++)
        if (ckpt__starts_with(d->u.dict.keys[i]->u.str.data, prefix)) {
            keys[j] = d->u.dict.keys[i];
            vals[j++] = d->u.dict.vals[i];
        }
    f->u.dict.keys = keys;
    f->u.dict.vals = vals;
    f->u.dict.len = n;
    return f;
}

/* The module of a key outside prefix that it branches off at: "head" for "head.fc.weight"
 * beside "backbone.", "module.head" for "module.head.fc.weight" beside "module.backbone.";
 * its length, 0 when the key has no such module (a plain "queue"). */
static size_t branch_len(const char *key, const char *prefix)
{
    size_t common = 0;
    for (size_t i = 0; key[i] && key[i] == prefix[i]; i++)
        if (key[i] == '.')
            common = i + 1;
    const char *dot = strchr(key + common, '.');
    return dot ? (size_t)(dot - key) : 0;
}

/* Whether stem.weight and stem.bias (key w, key b) are a Linear of features inputs. */
static int64_t linear_classes(const ckpt_value *w, const ckpt_value *b, int64_t features)
{
    if (w->type != CKPT_T_TENSOR || b->type != CKPT_T_TENSOR)
        return 0;
    const ckpt_tensor *tw = w->u.tensor, *tb = b->u.tensor;
    if (tw->ndim != 2 || tb->ndim != 1 || tw->shape[1] != features || tw->shape[0] < 1 ||
        tw->shape[0] > SD_MAX_CLASSES || tb->shape[0] != tw->shape[0])
        return 0;
    return tw->shape[0];
}

/* Make a renamed dict the report's: its unwrapped view sd, its verdict v, and m (NULL: the
 * model stays) built for classes, which the report then owns. */
static void adopt(ckpt__check_priv *p, ckpt_sd_report *r, ckpt_sd_model *m, int64_t classes,
                  ckpt_sd *sd, const ckpt_sd_verdict *v, ckpt_sd **sd_io)
{
    if (m) {
        ckpt_sd_model_free(p->owned_model);
        p->owned_model = m;
        r->model = m;
        r->num_classes = classes;
    }
    r->sd = *sd_io = sd;
    r->prefix = sd->prefix;
    r->verdict = v;
}

/* Judge nd, the chosen dict under other names, for a model of classes (a new one when they
 * differ from the report's); when its strict load succeeds, make it the report's (adopt) and
 * set *kept. */
static int judge_renamed(ckpt__check_priv *p, ckpt_sd_report *r, const ckpt_value *nd,
                         int64_t classes, ckpt_sd **sd_io, bool *kept, ckpt_error *err)
{
    ckpt__arena *ar = p->ar;
    const char *prefix = r->sd->prefix;
    const ckpt_value *fd = filtered(ar, nd, prefix);
    ckpt_sd *sd;
    ckpt_sd_model *m = NULL;
    ckpt_sd_verdict *v;
    int rc;
    *kept = false;
    if (!fd)
        return ckpt__arena_error(ar, err);
    if ((rc = ckpt__sd_build(ar, fd, prefix, &sd, err)) ||
        (r->arch && classes != r->num_classes &&
         (rc = ckpt_arch_model(r->arch, classes, &m, err))) ||
        (rc = ckpt__judge(ar, m ? m : r->model, sd, &v, err)) || !v->ok) {
        ckpt_sd_model_free(m);
        return rc;
    }
    adopt(p, r, m, classes, sd, v, sd_io);
    *kept = true;
    return CKPT_OK;
}

/* A classifier saved beside the network rather than in it (mmpretrain's backbone.* and
 * head.fc.*, solo-learn's backbone.* and classifier.*): when the strict load lacks exactly the
 * classifier, and exactly one module outside the prefix holds nothing but a weight
 * [classes, features] and its bias, that Linear is the classifier. k->pub.dict (and the
 * published candidate, pub) then holds it under the model's names, k->head_from keeps the
 * file's, and the model is rebuilt for its classes; kept only if the strict load then
 * succeeds. A module with more in it (DINO's projection head, MoCo's key encoder) is never
 * taken for a classifier. */
static int renamed_head(ckpt__check_priv *p, ckpt_sd_report *r, ckpt__cand *k,
                        ckpt_sd_candidate *pub, const ckpt_sd_check_options *opt,
                        ckpt_sd **sd_io, ckpt_error *err)
{
    ckpt__arena *ar = p->ar;
    const ckpt_sd_verdict *v = r->verdict;
    const char *prefix = r->sd->prefix;
    size_t plen = strlen(prefix);
    if (!r->arch || !plen || k->naming || k->module_class || opt->against || v->n_missing != 2 ||
        v->n_unexpected || v->n_mismatch || v->n_errors)
        return CKPT_OK;
    const char *hw = ckpt_arch_head(r->arch, false), *hb = ckpt_arch_head(r->arch, true);
    if (!((!strcmp(v->missing[0], hw) && !strcmp(v->missing[1], hb)) ||
          (!strcmp(v->missing[0], hb) && !strcmp(v->missing[1], hw))))
        return CKPT_OK;
    const ckpt_value *d = k->pub.dict;
    size_t n = d->u.dict.len;
    /* the modules outside the prefix, with how many keys each holds */
    ckpt__strmap branches;
    size_t *count = ckpt__arena_alloc(ar, (n + 1) * sizeof *count);
    size_t *first = ckpt__arena_alloc(ar, (n + 1) * sizeof *first);
    size_t *second = ckpt__arena_alloc(ar, (n + 1) * sizeof *second);
    if (!count || !first || !second || !ckpt__strmap_init(ar, &branches, n))
        return ckpt__arena_error(ar, err);
    size_t nb = 0;
    for (size_t i = 0; i < n; i++) {
        const char *key = d->u.dict.keys[i]->u.str.data;
        size_t bl;
        if (ckpt__starts_with(key, prefix) || !(bl = branch_len(key, prefix)))
            continue;
        size_t j = ckpt__strmap_get2(&branches, key, bl, "", 0);
        if (j == SIZE_MAX) {
            const char *name = ckpt__arena_strndup(ar, key, bl);
            if (!name)
                return ckpt__arena_error(ar, err);
            ckpt__strmap_add(&branches, name, nb);
            first[nb] = i;
            count[nb++] = 0;
            j = nb - 1;
        }
        if (count[j]++ == 1)
            second[j] = i;
    }
    /* the one module of two keys, stem.weight and stem.bias, that is a Linear head */
    size_t wi = SIZE_MAX, bi = SIZE_MAX, found = 0;
    int64_t classes = 0;
    for (size_t j = 0; j < nb; j++) {
        if (count[j] != 2)
            continue;
        size_t a = first[j], b = second[j];
        const char *ka = d->u.dict.keys[a]->u.str.data;
        const char *kb = d->u.dict.keys[b]->u.str.data;
        size_t la = strlen(ka), lb = strlen(kb);
        bool ab = la > 7 && lb > 5 && !strcmp(ka + la - 7, ".weight") &&
                  !strcmp(kb + lb - 5, ".bias") && la - 7 == lb - 5 && !strncmp(ka, kb, la - 7);
        bool ba = lb > 7 && la > 5 && !strcmp(kb + lb - 7, ".weight") &&
                  !strcmp(ka + la - 5, ".bias") && lb - 7 == la - 5 && !strncmp(ka, kb, lb - 7);
        size_t w = ab ? a : b, bias = ab ? b : a;
        int64_t c = (ab || ba) ? linear_classes(d->u.dict.vals[w], d->u.dict.vals[bias],
                                                ckpt_arch_features(r->arch))
                               : 0;
        if (c) {
            found++;
            wi = w, bi = bias, classes = c;
        }
    }
    if (found != 1 || (opt->num_classes && opt->num_classes != classes))
        return CKPT_OK;

    /* the dict with the head under the model's names, in the file's order */
    ckpt_value *nd = ckpt__arena_alloc(ar, sizeof *nd);
    ckpt_value **keys = ckpt__arena_alloc(ar, (n + 1) * sizeof *keys);
    const char *sw = ckpt__arena_printf(ar, "%s%s", prefix, hw);
    const char *sb = ckpt__arena_printf(ar, "%s%s", prefix, hb);
    ckpt_value *kw = sw ? ckpt__value_str(ar, CKPT_T_STR, sw, plen + strlen(hw)) : NULL;
    ckpt_value *kb = sb ? ckpt__value_str(ar, CKPT_T_STR, sb, plen + strlen(hb)) : NULL;
    if (!nd || !keys || !kw || !kb)
        return ckpt__arena_error(ar, err);
    *nd = *d;
    memcpy(keys, d->u.dict.keys, n * sizeof *keys);
    keys[wi] = kw;
    keys[bi] = kb;
    nd->u.dict.keys = keys;
    bool kept;
    int rc = judge_renamed(p, r, nd, classes, sd_io, &kept, err);
    if (rc || !kept)
        return rc;
    k->head_from[0] = d->u.dict.keys[wi]->u.str.data;
    k->head_from[1] = d->u.dict.keys[bi]->u.str.data;
    k->pub.dict = nd;
    pub->dict = nd;
    return CKPT_OK;
}

#define SD_MAX_RENAMES 4096 /* keys paired by shape_renames; more is another model */

static const char *leaf_name(const char *key)
{
    const char *dot = strrchr(key, '.');
    return dot ? dot + 1 : key;
}

static bool same_shape(const ckpt_sd_entry *a, const ckpt_sd_entry *b)
{
    return a->ndim == b->ndim && !memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape);
}

/* Modules renamed one for one (a fork's 'shortcut' for 'downsample', 'norm1' for 'bn1',
 * 'classifier' or 'head' for 'fc'): when the model keys the unwrapped dict lacks and its keys
 * the model lacks pair one to one, in order, each pair with the same last name and shape (the
 * classifier's class count aside), the dict is renamed pair by pair and judged again; the
 * renames are kept only if the strict load then succeeds. The pairing never looks at names
 * beyond the last part, so any naming works; the order and shapes are what guard it. A
 * model's num_batches_tracked the dict lacks everywhere is left to BatchNorm's upgrade rule,
 * as the judge does. r->renames keeps the file's keys; pub.dict holds the model's. */
static int shape_renames(ckpt__check_priv *p, ckpt_sd_report *r, ckpt__cand *k,
                         ckpt_sd_candidate *pub, const ckpt_sd_check_options *opt,
                         ckpt_sd **sd_io, ckpt_error *err)
{
    ckpt__arena *ar = p->ar;
    const ckpt_sd *sd = *sd_io;
    const ckpt_sd_model *m = r->model;
    const ckpt_sd_verdict *v = r->verdict;
    if (!m || !v || v->ok || k->naming || k->module_class || k->head_from[0] || !k->strings)
        return CKPT_OK;
    ckpt__strmap in_sd, in_model;
    size_t ns = sd->n_entries, nm = m->sd.n_entries;
    const ckpt_sd_entry **miss = ckpt__arena_alloc(ar, (nm + 1) * sizeof *miss);
    const ckpt_sd_entry **extra = ckpt__arena_alloc(ar, (ns + 1) * sizeof *extra);
    if (!miss || !extra || !ckpt__strmap_init(ar, &in_sd, ns) ||
        !ckpt__strmap_init(ar, &in_model, nm))
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < ns; i++)
        ckpt__strmap_add(&in_sd, sd->entries[i].key, i);
    for (size_t i = 0; i < nm; i++)
        ckpt__strmap_add(&in_model, m->sd.entries[i].key, i);
    size_t n_extra = 0, n_miss = 0;
    bool extra_nbt = false;
    for (size_t i = 0; i < ns; i++)
        if (ckpt__strmap_get(&in_model, sd->entries[i].key) == SIZE_MAX) {
            if (!sd->entries[i].is_tensor)
                return CKPT_OK; /* the strict load fails on it whatever the names */
            extra_nbt |= !strcmp(leaf_name(sd->entries[i].key), "num_batches_tracked");
            extra[n_extra++] = &sd->entries[i];
        }
    for (size_t i = 0; i < nm; i++) {
        const ckpt_sd_entry *e = &m->sd.entries[i];
        if (ckpt__strmap_get(&in_sd, e->key) == SIZE_MAX &&
            (extra_nbt || strcmp(leaf_name(e->key), "num_batches_tracked")))
            miss[n_miss++] = e;
    }
    /* most of the model must be there by name: a dict renamed throughout (a prefix the
     * user chose not to strip) is not renamed module by module */
    if (!n_miss || n_miss != n_extra || n_miss > SD_MAX_RENAMES || 2 * n_miss > nm)
        return CKPT_OK;
    const char *hw = r->arch ? ckpt_arch_head(r->arch, false) : NULL;
    const char *hb = r->arch ? ckpt_arch_head(r->arch, true) : NULL;
    int64_t classes = r->num_classes;
    for (size_t i = 0; i < n_miss; i++) {
        const ckpt_sd_entry *a = miss[i], *b = extra[i];
        if (strcmp(leaf_name(a->key), leaf_name(b->key)))
            return CKPT_OK;
        /* a module the file nests in the model's (fc.1 of an nn.Sequential head in fc's
         * place) is a module of its own, not the same one renamed */
        size_t ml = (size_t)(leaf_name(a->key) - a->key);
        if (ml && !strncmp(b->key, a->key, ml))
            return CKPT_OK;
        bool head_w = hw && !strcmp(a->key, hw), head_b = hb && !strcmp(a->key, hb);
        if ((head_w || head_b) && !opt->num_classes && b->ndim == a->ndim && b->ndim >= 1 &&
            b->shape[0] >= 1 && b->shape[0] <= SD_MAX_CLASSES &&
            (head_b || (b->ndim == 2 && b->shape[1] == a->shape[1]))) {
            if (classes != r->num_classes && classes != b->shape[0])
                return CKPT_OK; /* weight and bias disagree */
            classes = b->shape[0];
        } else if (!same_shape(a, b)) {
            return CKPT_OK;
        }
    }

    /* the chosen dict under the model's names, in the file's order */
    const ckpt_value *d = k->pub.dict;
    const char *prefix = sd->prefix;
    size_t plen = strlen(prefix), n = d->u.dict.len;
    ckpt__strmap by_extra;
    ckpt_value *nd = ckpt__arena_alloc(ar, sizeof *nd);
    ckpt_value **keys = ckpt__arena_alloc(ar, (n + 1) * sizeof *keys);
    ckpt_sd_key_pair *pairs = ckpt__arena_alloc(ar, (n_miss + 1) * sizeof *pairs);
    if (!nd || !keys || !pairs || !ckpt__strmap_init(ar, &by_extra, n_miss))
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < n_miss; i++)
        ckpt__strmap_add(&by_extra, extra[i]->key, i);
    *nd = *d;
    size_t np = 0;
    for (size_t i = 0; i < n; i++) {
        const char *fk = d->u.dict.keys[i]->u.str.data;
        keys[i] = d->u.dict.keys[i];
        if (plen && !ckpt__starts_with(fk, prefix))
            continue;
        size_t j = ckpt__strmap_get(&by_extra, fk + plen);
        if (j == SIZE_MAX)
            continue;
        const char *mk = miss[j]->key, *nk = ckpt__arena_printf(ar, "%s%s", prefix, mk);
        if (!nk || !(keys[i] = ckpt__value_str(ar, CKPT_T_STR, nk, plen + strlen(mk))))
            return ckpt__arena_error(ar, err);
        if (np < n_miss) { /* a key repeated in the file is renamed each time, paired once */
            /* the model's names outlive it: it is replaced when the class count changes */
            if (!(pairs[np].model_key = ckpt__arena_strdup(ar, mk)))
                return ckpt__arena_error(ar, err);
            pairs[np++].file_key = fk;
        }
    }
    nd->u.dict.keys = keys;
    /* a classifier of another size, renamed or not: the model the file fits */
    for (size_t i = 0; hw && !opt->num_classes && classes == r->num_classes && i < n; i++) {
        const char *key = keys[i]->u.str.data;
        const ckpt_value *w = d->u.dict.vals[i];
        if (ckpt__starts_with(key, prefix) && !strcmp(key + plen, hw) &&
            w->type == CKPT_T_TENSOR && w->u.tensor->ndim == 2 && w->u.tensor->shape[0] >= 1 &&
            w->u.tensor->shape[0] <= SD_MAX_CLASSES &&
            w->u.tensor->shape[1] == ckpt_arch_features(r->arch))
            classes = w->u.tensor->shape[0];
    }
    bool kept;
    int rc = judge_renamed(p, r, nd, classes, sd_io, &kept, err);
    if (rc || !kept)
        return rc;
    k->pub.dict = nd;
    pub->dict = nd;
    r->renames = pairs;
    r->n_renames = np;
    return CKPT_OK;
}

/* The key map's file keys of the pairs shape_renames renamed: the file's own. */
static int key_map_renames(ckpt__arena *ar, ckpt_sd_report *r, ckpt_error *err)
{
    ckpt__strmap renamed;
    if (!ckpt__strmap_init(ar, &renamed, r->n_renames))
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < r->n_renames; i++)
        ckpt__strmap_add(&renamed, r->renames[i].model_key, i);
    for (size_t i = 0; i < r->n_key_map; i++) {
        ckpt_sd_key_pair *kp = (ckpt_sd_key_pair *)&r->key_map[i];
        size_t j = ckpt__strmap_get(&renamed, kp->model_key);
        if (j != SIZE_MAX)
            kp->file_key = r->renames[j].file_key;
    }
    return CKPT_OK;
}

/* The key map of the chosen dict d (unwrapped into r->sd) for r->model: which file key each
 * model key comes from (the last one that unwraps to it, as ckpt_sd_from_value keeps the last
 * value), and every other file key with why it is left out. */
static int key_map(ckpt__arena *ar, ckpt_sd_report *r, const ckpt_value *d, ckpt_error *err)
{
    const ckpt_sd *sd = r->sd;
    const ckpt_sd_model *m = r->model;
    size_t plen = strlen(sd->prefix), n = d->u.dict.len;
    ckpt__strmap entries, model;
    const char **from = ckpt__arena_alloc(ar, (sd->n_entries + 1) * sizeof *from);
    size_t *from_i = ckpt__arena_alloc(ar, (sd->n_entries + 1) * sizeof *from_i);
    bool *used = ckpt__arena_alloc(ar, (n + 1) * sizeof *used);
    ckpt_sd_key_pair *map = ckpt__arena_alloc(ar, (m->sd.n_entries + 1) * sizeof *map);
    ckpt_sd_left_out *out = ckpt__arena_alloc(ar, (n + 1) * sizeof *out);
    if (!from || !from_i || !used || !map || !out ||
        !ckpt__strmap_init(ar, &entries, sd->n_entries) ||
        !ckpt__strmap_init(ar, &model, m->sd.n_entries))
        return ckpt__arena_error(ar, err);
    memset(used, 0, (n + 1) * sizeof *used);
    for (size_t i = 0; i < sd->n_entries; i++)
        ckpt__strmap_add(&entries, sd->entries[i].key, i);
    for (size_t i = 0; i < m->sd.n_entries; i++)
        ckpt__strmap_add(&model, m->sd.entries[i].key, i);
    for (size_t i = 0; i < n; i++) { /* string keys only: ckpt__sd_build made sd from d */
        const char *fk = d->u.dict.keys[i]->u.str.data;
        bool under = plen && ckpt__starts_with(fk, sd->prefix);
        if (plen && !under)
            continue;
        size_t j = ckpt__strmap_get(&entries, under ? fk + plen : fk);
        if (j != SIZE_MAX) {
            from[j] = fk;
            from_i[j] = i;
        }
    }
    size_t nm = 0, nl = 0;
    for (size_t i = 0; i < m->sd.n_entries; i++) {
        size_t j = ckpt__strmap_get(&entries, m->sd.entries[i].key);
        if (j == SIZE_MAX || !sd->entries[j].is_tensor)
            continue;
        map[nm].model_key = m->sd.entries[i].key;
        map[nm++].file_key = from[j];
        used[from_i[j]] = true;
    }
    for (size_t i = 0; i < n; i++) {
        if (used[i])
            continue;
        const char *fk = d->u.dict.keys[i]->u.str.data;
        bool under = !plen || ckpt__starts_with(fk, sd->prefix);
        const char *key = under && plen ? fk + plen : fk;
        size_t j = ckpt__strmap_get(&entries, key);
        const char *why;
        if (!under)
            why = "outside_prefix";
        else if (j != SIZE_MAX && from_i[j] != i)
            why = "repeated";
        else if (ckpt__strmap_get(&model, key) == SIZE_MAX)
            why = "not_in_model";
        else
            why = "not_a_tensor";
        out[nl].file_key = fk;
        out[nl++].why = why;
    }
    r->key_map = map;
    r->n_key_map = nm;
    r->left_out = out;
    r->n_left_out = nl;
    return CKPT_OK;
}

/* What another copy of the network is, from its dict's name or its prefix: "ema",
 * "momentum" (MoCo's encoder_k, a momentum encoder or backbone), "student" (DINO publishes
 * the teacher) or "other". */
static const char *alternative_kind(const ckpt_sd_candidate *c, const char *prefix)
{
    const char *name = c->path_len ? c->path[c->path_len - 1] : "";
    if (strstr(name, "ema") || strstr(prefix, "ema."))
        return "ema";
    if (prefix_rank(prefix) || strstr(name, "momentum"))
        return !strcmp(name, "student") || strstr(prefix, "student.") ? "student" : "momentum";
    if (!strcmp(name, "student"))
        return "student";
    return "other";
}

/* The file's other networks: recognised candidates, then sub-trees of the chosen dict whose
 * left-out keys hold the model's first and last keys under another prefix (a key like
 * layer1.0.conv1.weight also ends in conv1.weight: the last key tells them apart). */
static int alternatives(ckpt__arena *ar, ckpt_sd_report *r, ckpt_error *err)
{
    size_t cap = r->n_candidates + r->n_left_out + 1;
    ckpt_sd_candidate *alt = ckpt__arena_alloc(ar, cap * sizeof *alt);
    const char **kinds = ckpt__arena_alloc(ar, cap * sizeof *kinds);
    if (!alt || !kinds)
        return ckpt__arena_error(ar, err);
    size_t n = 0;
    for (size_t i = 0; i < r->n_candidates; i++) {
        const ckpt_sd_candidate *c = &r->candidates[i];
        if (c == r->chosen || !c->arch)
            continue;
        alt[n] = *c;
        kinds[n++] = alternative_kind(c, c->prefix);
    }
    const char *first = r->n_key_map ? r->key_map[0].model_key : NULL;
    const char *last = r->n_key_map ? r->key_map[r->n_key_map - 1].model_key : NULL;
    size_t fl = first ? strlen(first) : 0, ll = last ? strlen(last) : 0;
    ckpt__strmap outside;
    if (first && !ckpt__strmap_init(ar, &outside, r->n_left_out))
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; first && i < r->n_left_out; i++)
        if (!strcmp(r->left_out[i].why, "outside_prefix"))
            ckpt__strmap_add(&outside, r->left_out[i].file_key, i);
    for (size_t i = 0; first && i < r->n_left_out; i++) {
        const char *k = r->left_out[i].file_key;
        size_t kl = strlen(k);
        if (strcmp(r->left_out[i].why, "outside_prefix") != 0 || kl <= fl ||
            strcmp(k + kl - fl, first) != 0 || k[kl - fl - 1] != '.' ||
            ckpt__strmap_get2(&outside, k, kl - fl, last, ll) == SIZE_MAX)
            continue;
        alt[n] = *r->chosen;
        if (!(alt[n].prefix = ckpt__arena_strndup(ar, k, kl - fl)))
            return ckpt__arena_error(ar, err);
        alt[n].arch = r->arch;
        kinds[n] = alternative_kind(r->chosen, alt[n].prefix);
        n++;
    }
    r->alternatives = alt;
    r->n_alternatives = n;
    r->alternative_kinds = kinds;
    return CKPT_OK;
}

/* The template's state dict: found and unwrapped like a checkpoint's, minus the model. */
static int template_model(ckpt__check_priv *p, const ckpt_sd_check_options *opt,
                          ckpt_sd_model **out, ckpt_error *err)
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
    if ((rc = ckpt__sd_build(p->ar, d, "", &t, err)))
        return rc;
    const char *wrap = common_wrapper(p->ar, t, false);
    if (!wrap)
        return ckpt__arena_error(p->ar, err);
    if (wrap[0] && (rc = ckpt__sd_build(p->ar, d, wrap, &t, err)))
        return rc;
    return ckpt__model_from_template(p->ar, t, NULL, out, err);
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
        return CKPT_FAIL(err, CKPT_EINVAL,
                         "a template and a named architecture exclude each other");
    const ckpt_value *root = ckpt_root(f);
    if (!root)
        return CKPT_FAIL(err, CKPT_EINVAL, "the file has no content");

    ckpt__arena *ar = ckpt__sd_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt__check_priv *p = ckpt__arena_alloc(ar, sizeof *p);
    ckpt_sd_report *r = ckpt__arena_alloc(ar, sizeof *r);
    if (!p || !r) {
        ckpt__arena_free(ar);
        return CKPT_NOMEM(err);
    }
    p->ar = ar;
    r->internal = p;
    /* one model per known architecture, or the template's slot */
    ckpt_sd_model **scratch = ckpt__arena_alloc(ar, (ckpt_arch_count() + 1) * sizeof *scratch);
    size_t n_scratch = 0;
    int rc = CKPT_OK;
    if (!scratch) {
        ckpt__arena_free(ar);
        return CKPT_NOMEM(err);
    }
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
    ckpt__cand *chosen = NULL;
    if (opt.key) { /* "" is the root itself */
        const ckpt_value *d;
        size_t depth;
        if ((rc = resolve_key(&c, root, opt.key, &d, &depth)))
            goto fail;
        for (size_t i = 0; i < c.n_cands && d->type == CKPT_T_OBJECT; i++)
            if (c.cands[i]->module_class && !strcmp(c.cands[i]->pub.path_str, opt.key))
                d = c.cands[i]->pub.dict; /* a pickled module: its state_dict() */
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
    /* each model's first key, to find the sub-trees that hold a network */
    const char *anchors[64];
    size_t n_anchors = 0;
    for (size_t mi = 0; mi < n_scratch && n_anchors < 64; mi++) {
        const ckpt_sd_model *m = tmodel ? tmodel : scratch[mi];
        if (!m || m->sd.n_entries == 0)
            continue;
        bool have = false;
        for (size_t a = 0; a < n_anchors; a++)
            have |= !strcmp(anchors[a], m->sd.entries[0].key);
        if (!have)
            anchors[n_anchors++] = m->sd.entries[0].key;
    }
    for (size_t ci = 0; ci < c.n_cands; ci++) {
        ckpt__cand *k = c.cands[ci];
        if (!k->strings)
            continue;
        const char *prefixes[SD_MAX_PREFIXES];
        size_t np = strip ? 1 : gather_prefixes(ar, k, anchors, n_anchors, prefixes);
        if (strip)
            prefixes[0] = strip;
        bool have = false, have_whole = false;
        int have_rank = 0;
        for (size_t pi = 0; pi < np; pi++) {
            int rank = prefix_rank(prefixes[pi]);
            size_t under = keys_under(k, prefixes[pi]);
            for (size_t mi = 0; mi < n_scratch; mi++) {
                const ckpt_sd_model *m = tmodel ? tmodel : scratch[mi];
                fit ft = fit_model(k, prefixes[pi], m, any_head);
                /* a fit that holds most of a network beats any that does not, whatever their
                 * scores: a few keys renamed in a ResNet must not lose to a sub-tree that
                 * holds nothing of a model */
                bool whole = 2 * ft.names >= m->sd.n_entries && 2 * ft.names >= under;
                if (!have || (whole && !have_whole) ||
                    (whole == have_whole &&
                     (ft.quality > k->quality || (ft.quality == k->quality && rank < have_rank)))) {
                    have_rank = rank;
                    have_whole = whole;
                    k->under = under;
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
                        (2 * k->names >= k->pub.expected && 2 * k->names >= k->under);
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
        if ((rc = ckpt__sd_build(ar, chosen->pub.dict, "", &sd, err)))
            goto fail;
        if (!(prefix = common_wrapper(ar, sd, true))) {
            rc = ckpt__arena_error(ar, err);
            goto fail;
        }
    }
    if ((rc = ckpt__sd_build(ar, filtered(ar, chosen->pub.dict, prefix), prefix, &sd, err)))
        goto fail;
    if ((rc = ckpt__sd_placeholders(root, &chosen->pub, sd, err)))
        goto fail; /* a ZeRO-3 partition: no class count from an empty head */
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
        if ((rc = ckpt__judge(ar, r->model, sd, &v, err)))
            goto fail;
        r->verdict = v;
        if ((rc = renamed_head(p, r, chosen, (ckpt_sd_candidate *)r->chosen, &opt, &sd,
                                err)) ||
            (rc = shape_renames(p, r, chosen, (ckpt_sd_candidate *)r->chosen, &opt, &sd,
                                err)) ||
            (rc = key_map(ar, r, chosen->pub.dict, err)) || (rc = alternatives(ar, r, err)) ||
            (rc = ckpt__scheme_finish(ar, r, chosen, err)))
            goto fail;
        /* the key map names the file's own keys of a renamed head or renamed modules */
        for (size_t i = 0; chosen->head_from[0] && i < r->n_key_map; i++) {
            ckpt_sd_key_pair *kp = (ckpt_sd_key_pair *)&r->key_map[i];
            if (!strcmp(kp->model_key, ckpt_arch_head(r->arch, false)))
                kp->file_key = chosen->head_from[0];
            else if (!strcmp(kp->model_key, ckpt_arch_head(r->arch, true)))
                kp->file_key = chosen->head_from[1];
        }
        if (r->n_renames && (rc = key_map_renames(ar, r, err)))
            goto fail;
        if ((chosen->pub.path_len > 0 || prefix[0]) && root->type == CKPT_T_DICT) {
            ckpt_sd *whole;
            ckpt_error ignored;
            /* a root with non-string keys is no state dict at all: skip the comparison */
            if (ckpt__sd_build(ar, root, "", &whole, &ignored) == CKPT_OK) {
                if ((rc = ckpt__judge(ar, r->model, whole, &v, err)))
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
        if (!ckpt__is_bn_buffer(e->key)) {
            int64_t n = ckpt__sd_numel(e);
            if (ckpt__add_overflow(r->n_parameters, n, &r->n_parameters))
                r->n_parameters = INT64_MAX;
        }
    }
    if ((rc = ckpt__sd_kind(ar, r, chosen, &opt, err)))
        goto fail;
    /* what the words need later (ckpt_sd_explain) */
    p->chosen = chosen;
    p->root = root;
    p->file = f;
    p->has_float = c.has_float;
    p->has_other = c.has_other;
    p->opt = opt;
    if (opt.explain && (rc = ckpt_sd_explain(r, err)))
        goto fail;
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
    ckpt__check_priv *p = c->internal;
    ckpt_sd_model_free(p->owned_model);
    ckpt__arena_free(p->ar);
}
