/*
 * report.c - the words of ckpt_sd_check for people: warnings (each with a stable code) and the
 * lines of Python that load the file. Built only when the caller asks for them.
 */
#include "sd_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define SD_MAX_LISTED 8            /* names quoted in one warning */
#define SD_MAX_SCAN_READ (64u << 20) /* bytes of one tensor read to test its values */

/* ---- ckpt check ------------------------------------------------------------------------- */

static int warn(ckpt__check_priv *p, ckpt_error *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int warn(ckpt__check_priv *p, ckpt_error *err, const char *code, const char *fmt, ...)
{
    ckpt_sd_warning *w = ckpt__arena_alloc(p->ar, sizeof *w);
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (!w || !(w->message = ckpt__arena_strdup(p->ar, tmp)) ||
        !ckpt__vec_push(p->ar, &p->warnings, w))
        return ckpt__arena_error(p->ar, err);
    w->code = code;
    return CKPT_OK;
}

/* The renamed modules of shape_renames (locate.c), module by module: "'layer2.0.shortcut' as
 * 'layer2.0.downsample', ...", the first few. */
#define RENAMES_SHOWN 4
static const char *last_dot(const char *s, size_t n)
{
    while (n--)
        if (s[n] == '.')
            return s + n;
    return NULL;
}

static int renames_warning(ckpt__check_priv *p, const ckpt_sd_report *r, const char *prefix,
                           ckpt_error *err)
{
    ckpt__strbuf b = {0};
    size_t shown = 0, modules = 0;
    const char *last_f = NULL, *last_m = NULL;
    size_t last_fl = 0, last_ml = 0;
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < r->n_renames; i++) {
        const char *f = r->renames[i].file_key, *m = r->renames[i].model_key;
        if (ckpt__starts_with(f, prefix))
            f += plen;
        /* the modules that differ: the names without the last parts they share */
        size_t fl = strlen(f), ml = strlen(m);
        for (;;) {
            const char *fd = last_dot(f, fl), *md = last_dot(m, ml);
            size_t fs = fd ? (size_t)(fd - f) : 0, ms = md ? (size_t)(md - m) : 0;
            if (!fd || !md || fl - fs != ml - ms || memcmp(f + fs, m + ms, fl - fs))
                break;
            fl = fs, ml = ms;
        }
        if (last_f && fl == last_fl && ml == last_ml && !strncmp(f, last_f, fl) &&
            !strncmp(m, last_m, ml))
            continue;
        last_f = f, last_fl = fl, last_m = m, last_ml = ml;
        if (modules++ < RENAMES_SHOWN)
            ckpt__sb_printf(&b, "%s'%.*s' as '%.*s'", shown++ ? ", " : "", (int)fl, f, (int)ml, m);
    }
    if (modules > shown)
        ckpt__sb_printf(&b, " and %zu more", modules - shown);
    char *what = ckpt__sb_finish(&b, p->ar);
    if (!what)
        return ckpt__arena_error(p->ar, err);
    return warn(p, err, "renamed_keys",
                "%zu keys are named otherwise than the model's, module for module, with the "
                "same shapes in the same order: %s; ckpt loads them under the model's names "
                "(under the file's, the strict load fails)",
                r->n_renames, what);
}

/* 'a', 'b', 'c' and 4 more */
static void sb_names(ckpt__strbuf *b, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n && i < SD_MAX_LISTED; i++) {
        if (i)
            ckpt__sb_add(b, ", ");
        ckpt__sb_printf(b, "'%s'", names[i]);
    }
    if (n > SD_MAX_LISTED)
        ckpt__sb_printf(b, " and %zu more", n - SD_MAX_LISTED);
}

/* "DataParallel / DistributedDataParallel, then torch.compile" */
static const char *wrapper_story(ckpt__arena *ar, const char *prefix)
{
    ckpt__strbuf b = {0};
    const char *p = prefix;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        const char *what = ckpt__sd_wrapper_what(p, n);
        if (b.len)
            ckpt__sb_add(&b, ", then ");
        ckpt__sb_add(&b, what ? what : "a wrapper module");
        p += n;
        if (*p == '.')
            p++;
    }
    return ckpt__sb_finish(&b, ar);
}

/* Python's expression for the chosen dict: ckpt['model'], ckpt['optimizer_states'][0]. */
static void sb_pypath(ckpt__strbuf *b, const ckpt__cand *k)
{
    ckpt__sb_add(b, "ckpt");
    for (size_t i = 0; i < k->pub.path_len; i++) {
        if (k->is_index[i]) {
            ckpt__sb_printf(b, "[%s]", k->pub.path[i]);
        } else {
            ckpt__sb_add(b, "[");
            ckpt__sb_pystr(b, k->pub.path[i]);
            ckpt__sb_add(b, "]");
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
    ckpt__arena *ar;
    storage_memo *items; /* one per tensor at most */
    size_t len;
    ckpt__hindex index; /* over items, keyed by (storage, dtype) */
} memo_table;

#define SEED_MEMO 0x6d656d6f

/* The memo of (s, dt), added if fresh; NULL when the arena is out. */
static storage_memo *memo_slot(memo_table *t, const ckpt_storage *s, ckpt_dtype dt, bool *fresh)
{
    ckpt__hasher hs;
    ckpt__hasher_init(&hs, SEED_MEMO);
    ckpt__hasher_u64(&hs, (uint64_t)(uintptr_t)s);
    ckpt__hasher_u64(&hs, (uint64_t)dt);
    uint64_t h = ckpt__hasher_end(&hs);
    size_t pos;
    for (size_t it = ckpt__hindex_first(&t->index, h, &pos); it;
         it = ckpt__hindex_next(&t->index, h, &pos))
        if (t->items[it - 1].s == s && t->items[it - 1].dt == dt) {
            *fresh = false;
            return &t->items[it - 1];
        }
    if (ckpt__hindex_add(t->ar, &t->index, h, t->len) != 0)
        return NULL;
    storage_memo *m = &t->items[t->len++];
    *m = (storage_memo){.s = s, .dt = dt};
    *fresh = true;
    return m;
}

static int scan_nonfinite(const ckpt_tensor *t, memo_table *memo, int64_t *nan, int64_t *inf,
                          ckpt_error *err)
{
    *nan = *inf = 0;
    ckpt_dtype part;
    if (!ckpt__dtype_components(t->dtype, &part) || !ckpt__dtype_is_floating(part) ||
        t->numel == 0 || !t->storage)
        return CKPT_OK;
    size_t es = ckpt_dtype_size(t->dtype);
    uint64_t storage_elems = t->storage->nbytes / es;
    bool fresh;
    storage_memo *m = memo_slot(memo, t->storage, t->dtype, &fresh);
    if (!m)
        return ckpt__arena_error(memo->ar, err);
    if (fresh) {
        const uint8_t *data;
        int rc = ckpt__storage_bytes(t->storage, &data, err);
        if (rc)
            return rc;
        ckpt__count_nonfinite(t->dtype, data, (size_t)storage_elems, &m->nan, &m->inf);
    }
    if (m->nan == 0 && m->inf == 0)
        return CKPT_OK;
    if ((uint64_t)t->numel > storage_elems) {
        *nan = m->nan;
        *inf = m->inf;
        return CKPT_OK;
    }
    size_t nb;
    uint8_t *buf = ckpt__tensor_copy(t, &nb, err);
    if (!buf)
        return err ? err->status : CKPT_ENOMEM;
    ckpt__count_nonfinite(t->dtype, buf, (size_t)t->numel, nan, inf);
    free(buf);
    return CKPT_OK;
}

/* Every element of t equals x (false for a tensor too large to be BatchNorm statistics). */
static int all_equal(const ckpt_tensor *t, double x, bool *out, ckpt_error *err)
{
    ckpt_dtype part;
    *out = false;
    if (ckpt__dtype_components(t->dtype, &part) != 1 ||
        (uint64_t)t->numel > SD_MAX_SCAN_READ / ckpt_dtype_size(t->dtype))
        return CKPT_OK;
    size_t nb;
    uint8_t *buf = ckpt__tensor_copy(t, &nb, err);
    if (!buf)
        return err ? err->status : CKPT_ENOMEM;
    size_t es = ckpt_dtype_size(t->dtype);
    bool all = true;
    for (int64_t i = 0; i < t->numel && all; i++)
        all = ckpt__elem_double(t->dtype, buf + (size_t)i * es) == x;
    free(buf);
    *out = all;
    return CKPT_OK;
}

static int scan_values(ckpt__check_priv *p, const ckpt_sd *sd, const ckpt_sd_model *m,
                       value_scan *vs, ckpt_error *err)
{
    memset(vs, 0, sizeof *vs);
    memo_table memo = {.ar = p->ar};
    memo.items = ckpt__arena_alloc(p->ar, (sd->n_entries + 1) * sizeof *memo.items);
    if (!memo.items || ckpt__hindex_reserve(p->ar, &memo.index, sd->n_entries) != 0)
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
    ckpt__strmap keys;
    if (!ckpt__strmap_init(p->ar, &keys, sd->n_entries))
        return ckpt__arena_error(p->ar, err);
    for (size_t i = 0; i < sd->n_entries; i++)
        ckpt__strmap_add(&keys, sd->entries[i].key, i);
    for (size_t mi = 0; m && mi < m->n_modules; mi++) {
        const ckpt_sd_module *mod = &m->modules[mi];
        if (!mod->batchnorm)
            continue;
        const char *sm = mod->path[0] ? ".running_mean" : "running_mean";
        const char *sv = mod->path[0] ? ".running_var" : "running_var";
        size_t jm = ckpt__strmap_get2(&keys, mod->path, strlen(mod->path), sm, strlen(sm));
        size_t jv = ckpt__strmap_get2(&keys, mod->path, strlen(mod->path), sv, strlen(sv));
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

/* ---- the head in the classifier's place ------------------------------------------------- */

#define SEQ_MAX_LAYERS 16

/* An nn.Sequential where the classifier should be: fc.1.* (Dropout, Linear) of a fine-tuned
 * model, or an MLP (fc.0/fc.2, fc.0/fc.3, with BatchNorm1d layers). Layers without weights
 * (Dropout, ReLU) leave gaps in the indexes. */
typedef struct seq_head {
    int n;                          /* indexes 0..n-1 */
    char kind[SEQ_MAX_LAYERS];      /* 0: no weights, 'L': Linear, 'B': BatchNorm1d */
    int64_t in[SEQ_MAX_LAYERS], out[SEQ_MAX_LAYERS];
    bool bias[SEQ_MAX_LAYERS];
    int64_t classes;                /* out_features of the last Linear */
} seq_head;

/* The Sequential that the unexpected keys under head_mod ("fc.") form, fed by `features`;
 * false when they form anything else. */
static bool read_seq_head(const ckpt_sd *sd, const ckpt_sd_verdict *v, const char *head_mod,
                          int64_t features, seq_head *h)
{
    memset(h, 0, sizeof *h);
    size_t hm = strlen(head_mod);
    bool bn_stat[SEQ_MAX_LAYERS] = {false};
    if (v->n_unexpected == 0)
        return false;
    for (size_t i = 0; i < v->n_unexpected; i++) {
        const char *key = v->unexpected[i];
        if (strncmp(key, head_mod, hm) != 0)
            return false;
        const char *s = key + hm;
        int idx = 0, digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 3) {
            idx = idx * 10 + (*s++ - '0');
            digits++;
        }
        if (!digits || *s != '.' || idx >= SEQ_MAX_LAYERS)
            return false;
        const char *leaf = s + 1;
        const ckpt_sd_entry *e = NULL;
        for (size_t j = 0; j < sd->n_entries && !e; j++)
            if (!strcmp(sd->entries[j].key, key))
                e = &sd->entries[j];
        if (!e || !e->is_tensor)
            return false;
        if (idx + 1 > h->n)
            h->n = idx + 1;
        if (!strcmp(leaf, "weight") && e->ndim == 2) {
            if (h->kind[idx] && h->kind[idx] != 'L')
                return false;
            h->kind[idx] = 'L';
            h->out[idx] = e->shape[0];
            h->in[idx] = e->shape[1];
        } else if (!strcmp(leaf, "weight") && e->ndim == 1) {
            if (h->kind[idx] == 'L')
                return false;
            h->kind[idx] = 'B';
            h->out[idx] = h->in[idx] = e->shape[0];
        } else if (!strcmp(leaf, "bias") && e->ndim == 1) {
            h->bias[idx] = true;
        } else if (!strcmp(leaf, "running_mean") || !strcmp(leaf, "running_var") ||
                   !strcmp(leaf, "num_batches_tracked")) {
            bn_stat[idx] = true;
        } else {
            return false;
        }
    }
    /* each layer whole, and each fed by the one before */
    int64_t width = features;
    bool any_linear = false;
    for (int i = 0; i < h->n; i++) {
        if (h->kind[i] == 'B' && (!bn_stat[i] || !h->bias[i] || h->in[i] != width))
            return false;
        if (h->kind[i] == 'L') {
            if (h->in[i] != width || bn_stat[i])
                return false;
            width = h->out[i];
            h->classes = width;
            any_linear = true;
        }
        if (!h->kind[i] && (h->bias[i] || bn_stat[i]))
            return false;
    }
    return any_linear;
}

/* "torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(512, 10))": layers without
 * weights are Dropout before the first Linear, then ReLU after a layer, then Dropout. */
static void sb_seq_head(ckpt__strbuf *b, const seq_head *h)
{
    ckpt__sb_add(b, "torch.nn.Sequential(");
    bool seen = false;
    char prev = 0;
    for (int i = 0; i < h->n; i++) {
        if (i)
            ckpt__sb_add(b, ", ");
        if (h->kind[i] == 'L')
            ckpt__sb_printf(b, "torch.nn.Linear(%lld, %lld%s)", (long long)h->in[i],
                            (long long)h->out[i], h->bias[i] ? "" : ", bias=False");
        else if (h->kind[i] == 'B')
            ckpt__sb_printf(b, "torch.nn.BatchNorm1d(%lld)", (long long)h->in[i]);
        else
            ckpt__sb_add(b, seen && prev ? "torch.nn.ReLU()" : "torch.nn.Dropout()");
        seen |= h->kind[i] != 0;
        prev = h->kind[i];
    }
    ckpt__sb_add(b, ")");
}

/* A ResNet that no torchvision constructor builds: the CIFAR variant (kuangliu's
 * pytorch-cifar and its copies) has a 3x3 stem conv1, and usually shortcut.* for downsample.*
 * and linear.* for fc.*. The words, or NULL. */
static const char *cifar_resnet(ckpt__arena *ar, const ckpt_sd *sd)
{
    const ckpt_sd_entry *conv1 = NULL;
    bool shortcut = false, linear = false, layers = false;
    for (size_t i = 0; i < sd->n_entries; i++) {
        const ckpt_sd_entry *e = &sd->entries[i];
        if (!strcmp(e->key, "conv1.weight") && e->is_tensor)
            conv1 = e;
        shortcut |= strstr(e->key, ".shortcut.") != NULL;
        linear |= !strcmp(e->key, "linear.weight");
        layers |= ckpt__starts_with(e->key, "layer1.");
    }
    if (!conv1 || !layers || conv1->ndim != 4 || conv1->shape[1] != 3 || conv1->shape[2] != 3 ||
        conv1->shape[3] != 3)
        return NULL;
    ckpt__strbuf b = {0};
    ckpt__sb_add(&b, "a ResNet that is not torchvision's: a CIFAR variant (conv1.weight is ");
    ckpt__sb_dims(&b, conv1->ndim, conv1->shape);
    ckpt__sb_add(&b, ", a 3x3 stem where torchvision's is 7x7");
    if (shortcut)
        ckpt__sb_add(&b, "; shortcut.* where torchvision has downsample.*");
    if (linear)
        ckpt__sb_add(&b, "; linear.* where torchvision has fc.*");
    ckpt__sb_add(&b, "): no torchvision constructor matches it; check it --against a "
                     "checkpoint of its own model");
    return ckpt__sb_finish(&b, ar);
}

/* A shell word, single-quoted; control characters (which would end the Python comment the
 * command is printed in) become '?'. */
static void sb_shell_word(ckpt__strbuf *b, const char *s)
{
    ckpt__sb_add(b, "'");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\'')
            ckpt__sb_add(b, "'\\''");
        else if (c < 0x20 || c == 0x7f)
            ckpt__sb_add(b, "?");
        else
            ckpt__sb_addn(b, s, 1);
    }
    ckpt__sb_add(b, "'");
}

/* On the allowlist of torch 1.13's weights_only unpickler (torch/_weights_only_unpickler.py:
 * _get_allowed_globals), the oldest torch the printed Python must run on. */
static bool weights_only_113(const char *module, const char *name)
{
    static const char *const exact[] = {
        "collections.OrderedDict", "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout", "torch.Size", "torch.Tensor",
        "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
        "torch.complex32", "torch.complex64", "torch.complex128", "torch.float16",
        "torch.float32", "torch.float64", "torch.int8", "torch.int16", "torch.int32",
        "torch.int64", "torch._utils._rebuild_parameter", "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_sparse_csr_tensor",
    };
    size_t ml = strlen(module), nl = strlen(name);
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        if (!strncmp(exact[i], module, ml) && exact[i][ml] == '.' &&
            !strcmp(exact[i] + ml + 1, name))
            return true;
    /* the tensor and storage classes: torch.FloatStorage, torch.cuda.HalfTensor, ... */
    bool tmod = !strcmp(module, "torch") || !strcmp(module, "torch.cuda") ||
                !strcmp(module, "torch.sparse") || !strcmp(module, "torch.cuda.sparse");
    bool storage = nl > 7 && !strcmp(name + nl - 7, "Storage");
    bool tensor = nl > 6 && !strcmp(name + nl - 6, "Tensor");
    return tmod && ((storage && !strstr(module, "sparse")) || tensor);
}

/* The classifier's place in the chosen dict, as the words and the commands see it. */
typedef struct head_info {
    const char *hw, *hb;       /* the architecture's head keys ("fc.weight"), or NULL */
    const char *head_mod;      /* their module with its dot ("fc."), or NULL */
    size_t outside;            /* keys of the chosen dict outside the prefix */
    bool seq;                  /* an nn.Sequential classifier in the head's place (sh) */
    seq_head sh;
    const ckpt_sd_entry *fc_entry; /* the dict's head weight, when a tensor */
    bool empty_head;           /* a [0, features] head */
    bool backbone;
    size_t own_head;           /* unexpected keys under head_mod */
    size_t aside;              /* unexpected keys under modules the model does not have */
} head_info;

/* False when out of memory. */
static bool head_info_of(ckpt__arena *ar, const ckpt_sd_report *r, const ckpt__cand *k,
                         head_info *h)
{
    const ckpt_sd *sd = r->sd;
    const ckpt_sd_verdict *v = r->verdict;
    memset(h, 0, sizeof *h);
    for (size_t i = 0; i < r->n_left_out; i++)
        h->outside += !strcmp(r->left_out[i].why, "outside_prefix");
    h->hw = r->arch ? ckpt_arch_head(r->arch, false) : NULL;
    h->hb = r->arch ? ckpt_arch_head(r->arch, true) : NULL;
    const char *hdot = h->hw ? strrchr(h->hw, '.') : NULL;
    if (hdot && !(h->head_mod = ckpt__arena_strndup(ar, h->hw, (size_t)(hdot - h->hw) + 1)))
        return false;
    const char *hw = h->hw, *hb = h->hb, *head_mod = h->head_mod;
    bool fc_missing = v && hw && v->n_missing == 2 && v->n_errors == 0 &&
                      ((!strcmp(v->missing[0], hw) && !strcmp(v->missing[1], hb)) ||
                       (!strcmp(v->missing[0], hb) && !strcmp(v->missing[1], hw)));
    h->seq = fc_missing && head_mod && h->outside == 0 && !k->module_class &&
             read_seq_head(sd, v, head_mod, ckpt_arch_features(r->arch), &h->sh);
    for (size_t i = 0; hw && i < sd->n_entries && !h->fc_entry; i++)
        if (!strcmp(sd->entries[i].key, hw) && sd->entries[i].is_tensor)
            h->fc_entry = &sd->entries[i];
    /* num_classes=0 or timm's reset_classifier(0) on a Linear: a [0, features] head */
    const ckpt_sd_entry *fc = h->fc_entry;
    h->empty_head = head_mod && fc && fc->ndim == 2 && fc->shape[0] == 0 && v &&
                    v->n_missing == 0 && v->n_unexpected == 0;
    for (size_t i = 0; h->empty_head && i < v->n_mismatch; i++)
        h->empty_head = !strcmp(v->mismatch[i].key, hw) || !strcmp(v->mismatch[i].key, hb);
    /* a backbone: everything but the classifier. Unexpected keys under the classifier's
     * module are a projection or MLP head in its place (MoCo's fc.0/fc.2); under a module the
     * model does not have, another head beside it (SwAV's projection_head and prototypes).
     * One under conv1, layer1, ... would mean another network, whose features these are not. */
    h->backbone = head_mod && !h->seq && (fc_missing || h->empty_head) && r->model;
    if (!h->backbone || !v->n_unexpected)
        return true;
    const ckpt_sd *m = &r->model->sd;
    ckpt__strmap roots; /* the model's first names: conv1, bn1, layer1, ..., fc */
    if (!ckpt__strmap_init(ar, &roots, m->n_entries))
        return false;
    for (size_t j = 0; j < m->n_entries; j++) {
        const char *key = m->entries[j].key;
        size_t n = strcspn(key, ".");
        if (ckpt__strmap_get2(&roots, key, n, "", 0) == SIZE_MAX) {
            const char *root = ckpt__arena_strndup(ar, key, n);
            if (!root)
                return false;
            ckpt__strmap_add(&roots, root, j);
        }
    }
    for (size_t i = 0; h->backbone && i < v->n_unexpected; i++) {
        const char *u = v->unexpected[i];
        if (!strncmp(u, head_mod, strlen(head_mod)))
            h->own_head++;
        else if (ckpt__strmap_get2(&roots, u, strcspn(u, "."), "", 0) == SIZE_MAX)
            h->aside++;
        else
            h->backbone = false;
    }
    return true;
}

/* The distinct first names of the unexpected keys outside head_mod, in order, as Python
 * strings separated by ", " ("'projection_head', 'prototypes'"); their count, or SIZE_MAX when
 * out of memory. */
static size_t sb_aside_roots(ckpt__arena *ar, ckpt__strbuf *b, const ckpt_sd_verdict *v,
                             const char *head_mod)
{
    ckpt__strmap seen;
    if (!ckpt__strmap_init(ar, &seen, v->n_unexpected))
        return SIZE_MAX;
    size_t shown = 0, hl = strlen(head_mod);
    for (size_t i = 0; i < v->n_unexpected; i++) {
        const char *u = v->unexpected[i];
        size_t n = strcspn(u, ".");
        if (!strncmp(u, head_mod, hl) || ckpt__strmap_get2(&seen, u, n, "", 0) != SIZE_MAX)
            continue;
        const char *root = ckpt__arena_strndup(ar, u, n);
        if (!root)
            return SIZE_MAX;
        ckpt__strmap_add(&seen, root, i);
        ckpt__sb_add(b, shown++ ? ", " : "");
        ckpt__sb_pystr(b, root);
    }
    return shown;
}

int ckpt__sd_kind(ckpt__arena *ar, ckpt_sd_report *r, const ckpt__cand *k,
                  const ckpt_sd_check_options *opt, ckpt_error *err)
{
    head_info hi;
    if (!head_info_of(ar, r, k, &hi))
        return ckpt__arena_error(ar, err);
    r->backbone = hi.backbone;
    r->backbone_aside = hi.backbone ? hi.aside : 0;
    r->sequential_head = hi.seq;
    const char *cifar = r->model && !r->arch ? NULL : cifar_resnet(ar, r->sd);
    bool auto_arch = !opt->arch || !strcmp(opt->arch, "auto");
    r->verdict_kind = !r->model                ? (cifar ? "not_torchvision" : "unknown")
                      : cifar && auto_arch     ? "not_torchvision"
                      : hi.seq                 ? "sequential_head"
                      : hi.backbone            ? "backbone"
                      : r->verdict->ok         ? "model"
                                               : "fails";
    return CKPT_OK;
}

static int explain(ckpt__check_priv *p, ckpt_sd_report *r, const ckpt__cand *k,
                   const ckpt_value *root, const ckpt_sd_check_options *opt, const ckpt_file *f,
                   ckpt_error *err)
{
    ckpt__arena *ar = p->ar;
    const ckpt_sd *sd = r->sd;
    const ckpt_sd_verdict *v = r->verdict;
    int rc = CKPT_OK;
    ckpt__strbuf b = {0};

    /* the head: a Sequential in the classifier's place, an empty classifier, a backbone */
    head_info hi;
    if (!head_info_of(ar, r, k, &hi))
        return ckpt__arena_error(ar, err);
    const char *hw = hi.hw, *hb = hi.hb, *head_mod = hi.head_mod;
    bool seq = hi.seq, empty_head = hi.empty_head, backbone = r->backbone;
    const seq_head sh = hi.sh;
    const ckpt_sd_entry *fc_entry = hi.fc_entry;
    size_t own_head = hi.own_head, outside = hi.outside;

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
        ckpt__sb_printf(&b, "a training checkpoint: the weights are under '%s' (%zu tensor%s)",
                        k->pub.path_str, k->pub.n_tensors, k->pub.n_tensors == 1 ? "" : "s");
        if (ns) {
            ckpt__sb_add(&b, ", next to ");
            sb_names(&b, sib, ns);
        }
        ckpt__sb_add(&b, "; load that entry, not the whole file");
        const char *msg = ckpt__sb_finish(&b, ar);
        if (!msg || (rc = warn(p, err, "training_checkpoint", "%s", msg)))
            return msg ? rc : ckpt__arena_error(ar, err);
    }
    /* TorchScript archives (torchscript.c) hold modules of __torch__.* classes */
    bool script = k->module_class && !strncmp(k->module_class, "__torch__.", 10);
    if (k->module_class && !script &&
        (rc = warn(p, err, "whole_module", "the weights are the state_dict() of a whole pickled "
                   "'%s' object%s%s%s, rebuilt without running its pickle", k->module_class,
                   k->pub.path_len ? " at '" : "", k->pub.path_str, k->pub.path_len ? "'" : "")))
        return rc;
    if (script && (rc = warn(p, err, "torchscript", "the weights are the state_dict() of the "
                             "TorchScript module '%s' (torch.jit.save), read without running "
                             "its code", k->module_class + 10)))
        return rc;
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
    if (r->naming && (rc = warn(p, err, "renamed", "the keys are named as %s; ckpt renamed "
                                "them to torchvision's", ckpt__scheme_what(k))))
        return rc;
    if (k->head_from[0] && r->arch &&
        (rc = warn(p, err, "renamed_head",
                   "the classifier is saved beside the network, as '%s' and '%s' (a Linear of "
                   "%lld classes, as mmpretrain's head.fc and solo-learn's classifier are): "
                   "ckpt loads it as %s and %s",
                   k->head_from[0], k->head_from[1], (long long)r->num_classes,
                   ckpt_arch_head(r->arch, false), ckpt_arch_head(r->arch, true))))
        return rc;
    if (r->n_renames && (rc = renames_warning(p, r, sd->prefix, err)))
        return rc;
    const char *cifar = r->model && !r->arch ? NULL : cifar_resnet(ar, sd);
    bool auto_arch = !opt->arch || !strcmp(opt->arch, "auto");
    if (cifar && (rc = warn(p, err, "arch_not_torchvision", "%s", cifar)))
        return rc;
    if (r->arch && !(cifar && auto_arch)) {
        const char *head = hw;
        const ckpt_sd_entry *fc = fc_entry;
        if (empty_head || backbone)
            ckpt__sb_printf(&b, "%s torchvision.models.%s without a classifier",
                            auto_arch ? "recognised as" : "checked against",
                            ckpt_arch_name(r->arch));
        else
            ckpt__sb_printf(&b, "%s torchvision.models.%s(num_classes=%lld)",
                            auto_arch ? "recognised as" : "checked against",
                            ckpt_arch_name(r->arch), (long long)r->num_classes);
        if (fc) {
            ckpt__sb_printf(&b, "; %s is ", head);
            ckpt__sb_dims(&b, fc->ndim, fc->shape);
        }
        const char *msg = ckpt__sb_finish(&b, ar);
        if (!msg || (rc = warn(p, err, "arch", "%s", msg)))
            return msg ? rc : ckpt__arena_error(ar, err);
        if (empty_head &&
            (rc = warn(p, err, "head_empty",
                       "the head is empty (%s has 0 rows, as a head built for no classes or timm's "
                       "reset_classifier(0) leaves it): the file is a backbone, load it "
                       "without %s*", head, head_mod)))
            return rc;
        if (backbone && !empty_head) {
            ckpt__sb_printf(&b, "a backbone: every tensor of %s but the classifier (%s, %s) is "
                            "in the file, as self-supervised projects publish it",
                            ckpt_arch_name(r->arch), hw, hb);
            if (own_head)
                ckpt__sb_printf(&b, "; its own head under %s (%zu tensor%s: a projection head, "
                                "not a classifier) is dropped", head_mod, own_head,
                                own_head == 1 ? "" : "s");
            if (r->backbone_aside) {
                ckpt__sb_printf(&b, "; %zu tensor%s beside it, under modules %s does not have "
                                "(", r->backbone_aside, r->backbone_aside == 1 ? "" : "s",
                                ckpt_arch_name(r->arch));
                if (sb_aside_roots(ar, &b, v, head_mod) == SIZE_MAX) {
                    ckpt__sb_free(&b);
                    return ckpt__arena_error(ar, err);
                }
                ckpt__sb_add(&b, "), are left aside");
            }
            ckpt__sb_add(&b, "; load it with strict=False and check that only the classifier is "
                             "missing (below); 'ckpt run --features' computes its features, "
                             "'ckpt extract' writes it alone");
            const char *bmsg = ckpt__sb_finish(&b, ar);
            if (!bmsg || (rc = warn(p, err, "backbone", "%s", bmsg)))
                return bmsg ? rc : ckpt__arena_error(ar, err);
        }
        if (seq) {
            ckpt__sb_printf(&b, "the head is an nn.Sequential in %s with %lld classes (its last "
                            "Linear): build the model with that head (below), or rename its last "
                            "Linear to %s and %s", ckpt__arena_strndup(ar, hw, strlen(head_mod) - 1),
                            (long long)sh.classes, hw, hb);
            const char *hmsg = ckpt__sb_finish(&b, ar);
            if (!hmsg || (rc = warn(p, err, "head_sequential", "%s", hmsg)))
                return hmsg ? rc : ckpt__arena_error(ar, err);
        }
        if (!empty_head && fc && fc->ndim == 2 && fc->shape[0] != r->num_classes &&
            (rc = warn(p, err, "head",
                       "the checkpoint's head has %lld classes: build the model with "
                       "%s(num_classes=%lld)",
                       (long long)fc->shape[0], ckpt_arch_name(r->arch), (long long)fc->shape[0])))
            return rc;
    } else if (!r->model && !cifar) {
        if ((rc = warn(p, err, "arch_unknown",
                       "the keys match none of the %zu known architectures; check against "
                       "the model's own state_dict()",
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
        ckpt__sb_add(&b, "other dicts of tensors in the file: ");
        sb_names(&b, names, n);
        const char *msg = ckpt__sb_finish(&b, ar);
        if (!msg || (rc = warn(p, err, "other_candidates", "%s", msg)))
            return msg ? rc : ckpt__arena_error(ar, err);
    }
    /* other copies of the network (MoCo's key encoder, DINO's student, an EMA copy), and the
     * keys outside the chosen prefix that belong to none of them (MoCo's queue) */
    if (r->n_alternatives) {
        ckpt__sb_add(&b, "the file holds other copies of the network, not loaded here: ");
        for (size_t i = 0; i < r->n_alternatives && i < SD_MAX_LISTED; i++) {
            const ckpt_sd_candidate *c = &r->alternatives[i];
            if (i)
                ckpt__sb_add(&b, ", ");
            if (strcmp(c->path_str, r->chosen->path_str) != 0) /* another dict */
                ckpt__sb_printf(&b, "'%s'%s%s%s", c->path_str[0] ? c->path_str : "<root>",
                                c->prefix[0] ? " without '" : "", c->prefix,
                                c->prefix[0] ? "'" : "");
            else /* another sub-tree of the chosen dict */
                ckpt__sb_printf(&b, "'%s'", c->prefix);
            ckpt__sb_printf(&b, " (%s)", r->alternative_kinds[i]);
        }
        if (r->n_alternatives > SD_MAX_LISTED)
            ckpt__sb_printf(&b, " and %zu more", r->n_alternatives - SD_MAX_LISTED);
        ckpt__sb_add(&b, "; --key PATH or --strip-prefix PREFIX checks one of them");
        const char *msg = ckpt__sb_finish(&b, ar);
        if (!msg || (rc = warn(p, err, "alternatives", "%s", msg)))
            return msg ? rc : ckpt__arena_error(ar, err);
    }
    if (outside && sd->prefix[0]) {
        const char **rest = ckpt__arena_alloc(ar, outside * sizeof *rest);
        if (!rest)
            return ckpt__arena_error(ar, err);
        size_t n = 0;
        for (size_t i = 0; i < r->n_left_out; i++) {
            const char *key = r->left_out[i].file_key;
            bool copy = false;
            for (size_t j = 0; j < r->n_alternatives && !copy; j++) {
                /* a copy in the same dict: another dict's prefixes say nothing of these keys */
                const char *ap = r->alternatives[j].prefix;
                copy = ap[0] && !strcmp(r->alternatives[j].path_str, r->chosen->path_str) &&
                       !strncmp(key, ap, strlen(ap));
            }
            if (!copy && !strcmp(r->left_out[i].why, "outside_prefix"))
                rest[n++] = key;
        }
        if (n) {
            ckpt__sb_printf(&b, "%zu other key%s outside '%s' left out: ", n, n == 1 ? "" : "s",
                            sd->prefix);
            sb_names(&b, rest, n);
            const char *msg = ckpt__sb_finish(&b, ar);
            if (!msg || (rc = warn(p, err, "left_out", "%s", msg)))
                return msg ? rc : ckpt__arena_error(ar, err);
        }
    }
    if (v && r->model) {
        /* num_batches_tracked: missing and reported, or missing and filled in */
        size_t nbt_missing = 0;
        for (size_t i = 0; i < v->n_missing; i++)
            nbt_missing += !strcmp(ckpt__leaf_name(v->missing[i]), "num_batches_tracked");
        if (nbt_missing &&
            (rc = warn(p, err, "num_batches_tracked",
                       "%zu BatchNorm num_batches_tracked entries are missing and the dict's "
                       "_metadata gives BatchNorm version 2, so PyTorch reports them (a dict "
                       "without _metadata would load: BatchNorm fills them with 0)",
                       nbt_missing)))
            return rc;
        /* BatchNorm modules the file names otherwise have no _metadata entry under the
         * model's names: that, not an old version, is why they are filled */
        size_t bn_absent = 0;
        for (size_t i = 0; i < v->n_missing; i++)
            bn_absent += !strcmp(ckpt__leaf_name(v->missing[i]), "running_mean");
        bool renamed = sd->prefix[0] || r->naming || bn_absent >= v->n_filled;
        if (v->n_filled &&
            (rc = warn(p, err, "num_batches_tracked_filled",
                       "%zu num_batches_tracked entr%s missing; load_state_dict fills "
                       "%s with 0 because the dict %s",
                       v->n_filled, v->n_filled == 1 ? "y is" : "ies are",
                       v->n_filled == 1 ? "it" : "them",
                       !sd->has_metadata ? "has no _metadata"
                       : renamed ? "has no _metadata entry under the model's names for "
                                   "their modules (the file names them otherwise)"
                                 : "records an old BatchNorm version")))
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
                ckpt__sb_printf(&b, "'%s' has the model's sizes in another order (",
                                v->mismatch[i].key);
                ckpt__sb_dims(&b, c->ndim, c->shape);
                ckpt__sb_add(&b, " instead of ");
                ckpt__sb_dims(&b, e->ndim, e->shape);
                ckpt__sb_add(&b, "): was it saved transposed?");
                const char *msg = ckpt__sb_finish(&b, ar);
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
            ckpt__sb_printf(&b, "%zu value%s of the state dict %s not tensors: ", n,
                            n == 1 ? "" : "s", n == 1 ? "is" : "are");
            sb_names(&b, names, n);
            const char *msg = ckpt__sb_finish(&b, ar);
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
            if (!e->is_tensor || !strcmp(ckpt__leaf_name(e->key), "num_batches_tracked") ||
                (unsigned)e->dtype >= CKPT_DT_COUNT)
                continue;
            if (!counts[e->dtype]++)
                kinds++;
        }
        if (kinds > 1) {
            ckpt__sb_add(&b, "mixed dtypes: ");
            bool first = true;
            for (int dt = 0; dt < CKPT_DT_COUNT; dt++)
                if (counts[dt]) {
                    ckpt__sb_printf(&b, "%s%s (%zu tensor%s)", first ? "" : ", ",
                                    ckpt_dtype_name((ckpt_dtype)dt), counts[dt],
                                    counts[dt] == 1 ? "" : "s");
                    first = false;
                }
            const char *msg = ckpt__sb_finish(&b, ar);
            if (!msg || (rc = warn(p, err, "dtype_mixed", "%s", msg)))
                return msg ? rc : ckpt__arena_error(ar, err);
        }
        for (int dt = 0; dt < CKPT_DT_COUNT; dt++) {
            if (!counts[dt] || dt == CKPT_DT_FLOAT32)
                continue;
            const char *name = ckpt_dtype_name((ckpt_dtype)dt);
            if (dt == CKPT_DT_FLOAT16 || dt == CKPT_DT_BFLOAT16 || dt == CKPT_DT_FLOAT64)
                rc = warn(p, err, "dtype", "%zu tensor%s %s: load_state_dict converts "
                          "%s to the model's dtype (float32 unless the model was converted)",
                          counts[dt], counts[dt] == 1 ? " is" : "s are", name,
                          counts[dt] == 1 ? "it" : "them");
            else
                rc = warn(p, err, "dtype_unusual", "%zu tensor%s %s, unusual for weights",
                          counts[dt], counts[dt] == 1 ? " is" : "s are", name);
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

    /* the Python that loads it: as printed, on torch 1.13 and 2.x */
    const char *fname = opt->file_name ? opt->file_name : "checkpoint.pth";
    bool tv = r->arch && !(cifar && auto_arch); /* a torchvision constructor builds it */
    bool torch_save = ckpt_file_format(f) != CKPT_FORMAT_SAFETENSORS &&
                      ckpt_file_format(f) != CKPT_FORMAT_PICKLE;
    /* what 1.13's torch.load(weights_only=True) refuses: globals off its allowlist, Python
     * floats, sets, bytes, complex numbers */
    const ckpt_global_ref *g;
    size_t ng = ckpt_globals(f, &g), refused = 0;
    for (size_t i = 0; i < ng; i++)
        refused += g[i].torch_load && !weights_only_113(g[i].module, g[i].name);
    /* protocol 4 and 5 opcodes (FRAME, SHORT_BINUNICODE, MEMOIZE) are unknown to it */
    bool proto4 = f->globals.max_proto >= 4;
    bool via_extract = k->module_class ||
                       (torch_save && (refused || p->has_float || p->has_other || proto4));
    ckpt__sb_add(&b, "import torch\n");
    if (tv)
        ckpt__sb_add(&b, "import torchvision\n");
    if (via_extract) {
        if (k->module_class && !strncmp(k->module_class, "__torch__.", 10)) {
            ckpt__sb_add(&b, "# the file is a TorchScript archive: torch.jit.load compiles and "
                             "runs its code.\n");
        } else if (k->module_class) { /* torch.load would import the classes, run the pickle */
            ckpt__sb_printf(&b, "# the file pickles a whole %s object: torch.load needs its "
                            "class and runs its pickle.\n", k->module_class);
        } else {
            ckpt__sb_add(&b, "# torch 1.13's torch.load(weights_only=True) refuses the file: "
                             "it ");
            if (refused) {
                ckpt__sb_printf(&b, "names %s outside its allowlist (", refused == 1 ? "a global"
                                                                                : "globals");
                size_t shown = 0;
                for (size_t i = 0; i < ng; i++) {
                    if (!g[i].torch_load || weights_only_113(g[i].module, g[i].name))
                        continue;
                    if (shown == 4) {
                        ckpt__sb_add(&b, ", ...");
                        break;
                    }
                    ckpt__sb_printf(&b, "%s%s.%s", shown ? ", " : "", g[i].module, g[i].name);
                    shown++;
                }
                ckpt__sb_add(&b, ")");
            }
            /* sets, bytes, complex numbers come with a global below pickle protocol 3 */
            bool other = p->has_other && !refused;
            if (p->has_float || other)
                ckpt__sb_printf(&b, "%sholds %s%s%s", refused ? " and " : "",
                                p->has_float ? "Python floats" : "",
                                p->has_float && other ? ", " : "",
                                other ? "sets, bytes or complex numbers" : "");
            if (proto4)
                ckpt__sb_printf(&b, "%sis pickled with protocol %u (1.13 reads 2 and 3)",
                                refused || p->has_float || other ? "; it " : "",
                                f->globals.max_proto);
            ckpt__sb_add(&b, ".\n# weights_only=False would ");
            /* the top-level packages it would import (torch is; builtins need none) */
            size_t shown = 0;
            for (size_t i = 0; i < ng; i++) {
                const char *m = g[i].module;
                size_t ml = strcspn(m, ".");
                bool seen = !g[i].torch_load || weights_only_113(m, g[i].name) ||
                            (ml == 5 && !strncmp(m, "torch", 5)) ||
                            (ml == 8 && !strncmp(m, "builtins", 8)) ||
                            (ml == 7 && !strncmp(m, "_codecs", 7)) ||
                            (ml == 11 && !strncmp(m, "collections", 11));
                for (size_t j = 0; j < i && !seen; j++)
                    seen = g[j].torch_load && !weights_only_113(g[j].module, g[j].name) &&
                           strcspn(g[j].module, ".") == ml && !strncmp(g[j].module, m, ml);
                if (seen)
                    continue;
                ckpt__sb_printf(&b, "%s%.*s", shown ? ", " : "import ", (int)ml, m);
                shown++;
            }
            ckpt__sb_printf(&b, "%srun the file's pickle: only for files you trust.\n",
                            shown ? " and " : "");
        }
        ckpt__sb_add(&b, "# Write its weights alone first (no code runs):\n#   ckpt extract ");
        sb_shell_word(&b, fname);
        ckpt__sb_add(&b, " -o weights.pth");
        if (opt->key || opt->against) { /* extract alone might find another dict */
            ckpt__sb_add(&b, " --key ");
            sb_shell_word(&b, k->pub.path_str);
        }
        if (opt->strip_prefix) {
            ckpt__sb_add(&b, " --strip-prefix ");
            sb_shell_word(&b, opt->strip_prefix);
        }
        if (r->arch && !auto_arch)
            ckpt__sb_printf(&b, " --arch %s", ckpt_arch_name(r->arch));
        if (r->arch && opt->num_classes > 0)
            ckpt__sb_printf(&b, " --num-classes %lld", (long long)opt->num_classes);
        /* extract checks against the torchvision model it recognises and writes a backbone
         * without its head; anything else is written whole, unchecked */
        if (!(tv && v && v->ok))
            ckpt__sb_add(&b, " --no-check");
        ckpt__sb_add(&b, "\nsd = torch.load('weights.pth', map_location='cpu', "
                         "weights_only=True)\n");
    } else if (ckpt_file_format(f) == CKPT_FORMAT_SAFETENSORS) {
        ckpt__sb_add(&b, "from safetensors.torch import load_file\nsd = load_file(");
        ckpt__sb_pystr(&b, fname);
        ckpt__sb_add(&b, ")\n");
    } else if (ckpt_file_format(f) == CKPT_FORMAT_PICKLE) { /* Detectron2's .pkl: numpy arrays */
        ckpt__sb_add(&b, "import pickle\nwith open(");
        ckpt__sb_pystr(&b, fname);
        ckpt__sb_add(&b, ", 'rb') as fh:\n    ckpt = pickle.load(fh, encoding='latin1')"
                         "  # a plain pickle: only for files you trust\nsd = ");
        sb_pypath(&b, k);
        ckpt__sb_add(&b, "\nsd = {k: torch.from_numpy(v) if type(v).__module__ == 'numpy' else v "
                         "for k, v in sd.items()}\n");
    } else {
        ckpt__sb_add(&b, "ckpt = torch.load(");
        ckpt__sb_pystr(&b, fname);
        ckpt__sb_add(&b, ", map_location='cpu', weights_only=True)\nsd = ");
        sb_pypath(&b, k);
        ckpt__sb_add(&b, "\n");
    }
    /* ckpt extract wrote the keys renamed, unwrapped and of the one network */
    if (!via_extract)
        ckpt__scheme_python(&b, k);
    for (int i = 0; i < 2 && k->head_from[0] && !via_extract; i++) {
        /* the classifier saved beside the network: moved into it, under the model's names */
        ckpt__sb_add(&b, "sd[");
        ckpt__sb_pystr(&b, ckpt__arena_printf(ar, "%s%s", sd->prefix,
                                              ckpt_arch_head(r->arch, i == 1)));
        ckpt__sb_add(&b, "] = sd.pop(");
        ckpt__sb_pystr(&b, k->head_from[i]);
        ckpt__sb_add(&b, i ? ")\n" : ")  # the classifier, saved beside the network\n");
    }
    if (r->n_renames && !via_extract) {
        /* modules named otherwise: paired with the model's by shape and order (above) */
        ckpt__sb_add(&b, "renames = {  # the file's names: the model's\n");
        for (size_t i = 0; i < r->n_renames; i++) {
            const char *to = ckpt__arena_printf(ar, "%s%s", sd->prefix, r->renames[i].model_key);
            if (!to) {
                ckpt__sb_free(&b);
                return ckpt__arena_error(ar, err);
            }
            ckpt__sb_add(&b, "    ");
            ckpt__sb_pystr(&b, r->renames[i].file_key);
            ckpt__sb_add(&b, ": ");
            ckpt__sb_pystr(&b, to);
            ckpt__sb_add(&b, ",\n");
        }
        ckpt__sb_add(&b, "}\nfor old, new in renames.items():\n    sd[new] = sd.pop(old)\n");
    }
    if (sd->prefix[0] && outside && !via_extract) {
        /* one network of several: keep its sub-tree only (consume_prefix would keep the rest) */
        ckpt__sb_add(&b, "p = ");
        ckpt__sb_pystr(&b, sd->prefix);
        ckpt__sb_add(&b, "\nsd = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}\n");
    } else if (sd->prefix[0] && !via_extract) {
        ckpt__sb_add(&b, "torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(sd, ");
        ckpt__sb_pystr(&b, sd->prefix);
        ckpt__sb_add(&b, ")\n");
    }
    /* a head of another size: the lines build the model the file fits */
    int64_t nc = r->num_classes;
    size_t problems = v ? v->n_missing + v->n_unexpected + v->n_errors : 0;
    if (r->arch && v) {
        for (size_t i = 0; i < v->n_mismatch; i++) {
            const ckpt_sd_mismatch *mm = &v->mismatch[i];
            bool fcw = !strcmp(mm->key, ckpt_arch_head(r->arch, false)) &&
                       mm->checkpoint->ndim == 2 &&
                       mm->checkpoint->shape[1] == ckpt_arch_features(r->arch);
            bool fcb = !strcmp(mm->key, ckpt_arch_head(r->arch, true)) &&
                       mm->checkpoint->ndim == 1;
            if ((fcw || fcb) && !empty_head) {
                nc = mm->checkpoint->shape[0];
                problems--;
            }
        }
    }
    if (tv)
        ckpt__sb_printf(&b, "model = torchvision.models.%s(num_classes=%lld)\n",
                        ckpt_arch_name(r->arch), (long long)nc);
    else
        ckpt__sb_add(&b, "model = MyModel()  # your model class\n");
    /* a Sequential head (a fine-tuned classifier, or an MLP): build the same head */
    if (seq) {
        ckpt__sb_printf(&b, "model.%.*s = ", (int)strlen(head_mod) - 1, head_mod);
        sb_seq_head(&b, &sh);
        bool guessed = false;
        for (int i = 0; i < sh.n; i++)
            guessed |= !sh.kind[i];
        ckpt__sb_add(&b, guessed ? "  # the file's head; layers without weights are "
                                   "guessed: check them against the training code\n"
                                 : "  # the file's head\n");
        problems = 0;
    }
    /* a backbone: everything but the classifier, which is left to the user */
    if (backbone) {
        if (v->n_unexpected || empty_head) {
            ckpt__sb_add(&b, "sd = {k: v for k, v in sd.items() if not k.startswith(");
            ckpt__sb_pystr(&b, head_mod);
            ckpt__sb_add(&b, ")");
            if (r->backbone_aside) {
                ckpt__sb_add(&b, " and k.split('.')[0] not in (");
                size_t roots = sb_aside_roots(ar, &b, v, head_mod);
                if (roots == SIZE_MAX) {
                    ckpt__sb_free(&b);
                    return ckpt__arena_error(ar, err);
                }
                ckpt__sb_add(&b, roots == 1 ? ",)" : ")");
            }
            ckpt__sb_add(&b, empty_head        ? "}  # the empty head, not a classifier\n"
                             : r->backbone_aside ? "}  # heads, not the classifier\n"
                                                 : "}  # the file's own head, not a classifier\n");
        }
        if (backbone) {
            ckpt__sb_add(&b, "missing, unexpected = model.load_state_dict(sd, strict=False)\n");
            ckpt__sb_add(&b, "assert set(missing) == {");
            ckpt__sb_pystr(&b, hw);
            ckpt__sb_add(&b, ", ");
            ckpt__sb_pystr(&b, hb);
            ckpt__sb_add(&b, "} and not unexpected  # a backbone: the classifier is not in "
                             "the file");
            problems = 0;
        }
    }
    if (!backbone)
        ckpt__sb_add(&b, "model.load_state_dict(sd, strict=True)");
    if (problems && !(cifar && auto_arch))
        ckpt__sb_printf(&b,
                        "  # still fails: %zu missing, %zu unexpected, %zu other errors (above)",
                        v->n_missing, v->n_unexpected, v->n_errors);
    ckpt__sb_add(&b, "\nmodel.eval()\n");
    r->python = ckpt__sb_finish(&b, ar);
    return r->python ? CKPT_OK : ckpt__arena_error(ar, err);
}

int ckpt_sd_explain(ckpt_sd_report *r, ckpt_error *err)
{
    if (!r)
        return CKPT_FAIL(err, CKPT_EINVAL, "no report given");
    ckpt__check_priv *p = r->internal;
    if (p->explained)
        return CKPT_OK;
    p->warnings.len = 0;
    int rc = explain(p, r, p->chosen, p->root, &p->opt, p->file, err);
    if (rc)
        return rc;
    r->warnings = ckpt__arena_alloc(p->ar, (p->warnings.len + 1) * sizeof *r->warnings);
    if (!r->warnings)
        return ckpt__arena_error(p->ar, err);
    for (size_t i = 0; i < p->warnings.len; i++)
        r->warnings[i] = *(ckpt_sd_warning *)p->warnings.items[i];
    r->n_warnings = p->warnings.len;
    p->explained = true;
    return CKPT_OK;
}
