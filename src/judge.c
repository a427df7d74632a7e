/*
 * judge.c - PyTorch's strict rules: what load_state_dict(strict=True) says (ckpt_sd_judge).
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
#include "sd_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

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

static void sb_keylist(ckpt__strbuf *b, const char *head, const char **keys, size_t n)
{
    ckpt__sb_add(b, head);
    for (size_t i = 0; i < n; i++) {
        ckpt__sb_add(b, i ? ", \"" : "\"");
        ckpt__sb_add(b, keys[i]);
        ckpt__sb_add(b, "\"");
    }
    ckpt__sb_add(b, ". ");
}

int ckpt__judge(ckpt__arena *ar, const ckpt_sd_model *m, const ckpt_sd *sd, ckpt_sd_verdict **out,
                ckpt_error *err)
{
    ckpt_sd_verdict *v = ckpt__arena_alloc(ar, sizeof *v);
    ckpt__strmap keys, mods, locals, meta;
    if (!v || !ckpt__strmap_init(ar, &keys, sd->n_entries) ||
        !ckpt__strmap_init(ar, &mods, m->n_modules) ||
        !ckpt__strmap_init(ar, &locals, m->sd.n_entries) ||
        !ckpt__strmap_init(ar, &meta, sd->n_meta))
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < sd->n_entries; i++)
        ckpt__strmap_add(&keys, sd->entries[i].key, i);
    for (size_t i = 0; i < m->n_modules; i++)
        ckpt__strmap_add(&mods, m->modules[i].path, i);
    for (size_t i = 0; i < m->sd.n_entries; i++)
        ckpt__strmap_add(&locals, m->sd.entries[i].key, i);
    for (size_t i = 0; i < sd->n_meta; i++)
        ckpt__strmap_add(&meta, sd->meta[i].module, i);

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
            size_t at = ckpt__strmap_get(&meta, mod->path);
            if (at != SIZE_MAX)
                version = sd->meta[at].version;
        }
        for (size_t k = mod->first; k < mod->first + mod->count; k++) {
            const ckpt_sd_entry *e = &m->sd.entries[k];
            const char *name = e->key + plen;
            size_t j = ckpt__strmap_get(&keys, e->key);
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
                const char *t = c->value ? ckpt__type_label(c->value) : "NoneType";
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
            if (!ckpt__same_shape(cnd, c->shape, e->ndim, e->shape)) {
                ckpt__strbuf b = {0};
                ckpt__sb_printf(&b, "size mismatch for %s: copying a param with shape ", e->key);
                ckpt__sb_shape(&b, cnd, c->shape);
                ckpt__sb_add(&b, " from checkpoint, the shape in current model is ");
                ckpt__sb_shape(&b, e->ndim, e->shape);
                ckpt__sb_add(&b, ".");
                const char *msg = ckpt__sb_finish(&b, ar);
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
            size_t child = ckpt__strmap_get2(&mods, key, plen + nl, "", 0);
            if (child != SIZE_MAX && child != mi && m->modules[child].parent == mi) {
                if (!dot)
                    break; /* "layer1" alone: in no child's dict, rejected by nobody */
                mi = child;
                continue;
            }
            if (ckpt__strmap_get2(&locals, key, plen + nl, "", 0) == SIZE_MAX)
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
        ckpt__strbuf b = {0};
        ckpt__sb_printf(&b, "Error(s) in loading state_dict for %s:", m->class_name);
        if (v->n_missing) {
            ckpt__sb_add(&b, "\n\t");
            sb_keylist(&b, "Missing key(s) in state_dict: ", v->missing, v->n_missing);
        }
        if (v->n_unexpected) {
            ckpt__sb_add(&b, "\n\t");
            sb_keylist(&b, "Unexpected key(s) in state_dict: ", v->unexpected, v->n_unexpected);
        }
        for (size_t i = 0; i < v->n_errors; i++) {
            ckpt__sb_add(&b, "\n\t");
            ckpt__sb_add(&b, v->errors[i]);
        }
        v->message = ckpt__sb_finish(&b, ar);
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
    ckpt__arena *ar = ckpt__sd_arena();
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd_verdict *v = NULL;
    int rc = ckpt__judge(ar, m, sd, &v, err);
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
