/*
 * module.c - the state dict of a whole pickled nn.Module, from its recorded reconstruction.
 *
 * torch.save(model) pickles the module object itself: NEWOBJ of its class (or, at protocols 0
 * and 1, copyreg._reconstructor(cls, object, None)), then BUILD with its __dict__:
 *
 *     _parameters                  OrderedDict name -> Parameter or None
 *     _buffers                     OrderedDict name -> Tensor or None
 *     _non_persistent_buffers_set  set of buffer names left out of state_dict() (torch >= 1.6)
 *     _modules                     OrderedDict name -> child module or None
 *     (hooks, training, the class's own attributes)
 *
 * Nothing of that is run here. Module.state_dict() is replayed on the recorded values: for a
 * module at prefix p, _metadata[p without its dot] = {'version': cls._version}, then its
 * parameters and persistent buffers that are not None, then each child that is not None at
 * p + name + '.'. _version is a class attribute, so it comes from a table of the classes that
 * raise it (an instance's own _version wins); every other class has Module's 1.
 */
#include "internal.h"

#include <stdio.h>

#define MODULE_MAX_DEPTH 256          /* nesting of modules (state_dict() recurses per level) */
/* Work for all the modules of one file together (a file may hold many references to one big
 * module): */
#define MODULE_MAX_VISITS (1u << 20)  /* modules visited: a shared child is visited per path */
#define MODULE_MAX_ENTRIES (1u << 22) /* keys of the state dicts */

/* Classes whose _version is not Module's 1 (torch 1.13, torchvision 0.14). A module entry with
 * a NULL name matches every class of that module. */
static const struct {
    const char *module, *name;
    int64_t version;
} versions[] = {
    {"torch.nn.modules.batchnorm", NULL, 2},     /* _NormBase: BatchNorm*, SyncBatchNorm */
    {"torch.nn.modules.instancenorm", NULL, 2},  /* _InstanceNorm(_NormBase) */
    {"torch.nn.intrinsic.qat.modules.conv_fused", NULL, 2},
    {"torch.ao.nn.intrinsic.qat.modules.conv_fused", NULL, 2},
    {"torchvision.models._utils", "IntermediateLayerGetter", 2},
    {"torchvision.models.densenet", "_DenseBlock", 2},
    {"torchvision.models.mnasnet", "MNASNet", 2},
    {"torchvision.models.vision_transformer", "MLPBlock", 2},
};

typedef struct walk {
    ckpt__arena *ar;
    ckpt_error *err;
    ckpt_value *sd, *meta;
    const ckpt_value *stack[MODULE_MAX_DEPTH];
    ckpt__module_budget *used;
} walk;

/* The class an object was made from, or NULL. */
static const ckpt_value *object_class(const ckpt_value *v)
{
    const ckpt_value *fn = v->u.obj.callable;
    if (!fn || fn->type != CKPT_T_GLOBAL)
        return NULL;
    if (v->u.obj.newobj)
        return fn;
    const ckpt_value *a = v->u.obj.args;
    if (ckpt__global_is(fn, "copyreg", "_reconstructor") && a && a->type == CKPT_T_TUPLE &&
        a->u.seq.len >= 1 && a->u.seq.items[0]->type == CKPT_T_GLOBAL)
        return a->u.seq.items[0];
    return NULL;
}

/* The module's __dict__ when v looks like a pickled nn.Module, else NULL. */
static const ckpt_value *module_state(const ckpt_value *v)
{
    if (!v || v->type != CKPT_T_OBJECT || !object_class(v))
        return NULL;
    const ckpt_value *st = v->u.obj.state;
    if (!st || st->type != CKPT_T_DICT)
        return NULL;
    return ckpt_dict_get(st, "_parameters") && ckpt_dict_get(st, "_modules") ? st : NULL;
}

static int64_t class_version(const ckpt_value *cls, const ckpt_value *st)
{
    const ckpt_value *own = ckpt_dict_get(st, "_version");
    if (own && own->type == CKPT_T_INT)
        return own->u.i;
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++)
        if (!strcmp(versions[i].module, cls->u.global.module) &&
            (!versions[i].name || !strcmp(versions[i].name, cls->u.global.name)))
            return versions[i].version;
    return 1;
}

static ckpt_value *str_value(ckpt__arena *ar, const char *s)
{
    return ckpt__value_str(ar, CKPT_T_STR, s, strlen(s));
}

/* "module 'layer1.0'" or "the root module", for messages. */
static const char *where(walk *w, const char *prefix)
{
    size_t n = strlen(prefix);
    if (!n)
        return "the root module";
    const char *s = ckpt__arena_printf(w->ar, "module '%.*s'", (int)(n - 1), prefix);
    return s ? s : "a module";
}

/* The state dict's items of one of the module's dicts (_parameters, _buffers). */
static int save_dict(walk *w, const ckpt_value *st, const char *field, const char *prefix,
                     const ckpt_value *skip)
{
    const ckpt_value *d = ckpt_dict_get(st, field);
    if (!d)
        return CKPT_CORRUPT(w->err, "%s has no %s", where(w, prefix), field);
    if (d->type != CKPT_T_DICT)
        return CKPT_CORRUPT(w->err, "%s has a %s %s, not a dict", where(w, prefix),
                            ckpt_type_name(d->type), field);
    for (size_t i = 0; i < d->u.dict.len; i++) {
        const ckpt_value *k = d->u.dict.keys[i], *v = d->u.dict.vals[i];
        if (k->type != CKPT_T_STR)
            return CKPT_CORRUPT(w->err, "%s has a %s key in %s", where(w, prefix),
                                ckpt_type_name(k->type), field);
        if (v->type == CKPT_T_NONE)
            continue;
        bool skipped = false;
        for (size_t j = 0; skip && j < skip->u.seq.len && !skipped; j++)
            skipped = ckpt__value_is_str(skip->u.seq.items[j], k->u.str.data);
        if (skipped)
            continue;
        if (++w->used->entries > MODULE_MAX_ENTRIES)
            return CKPT_FAIL(w->err, CKPT_ELIMIT, "the modules' state dicts have more than %u "
                             "keys", MODULE_MAX_ENTRIES);
        ckpt_value *key = NULL, *val = (ckpt_value *)v;
        const char *name = ckpt__arena_printf(w->ar, "%s%s", prefix, k->u.str.data);
        if (name)
            key = str_value(w->ar, name);
        if (key && v->type == CKPT_T_TENSOR) { /* state_dict() holds param.detach() */
            ckpt_tensor *t = ckpt__arena_alloc(w->ar, sizeof *t);
            val = t ? ckpt__value_new(w->ar, CKPT_T_TENSOR) : NULL;
            if (val) {
                *t = *v->u.tensor;
                t->is_parameter = t->requires_grad = false;
                val->u.tensor = t;
            }
        }
        if (!key || !val)
            return ckpt__arena_error(w->ar, w->err);
        int rc = ckpt__dict_set(w->ar, w->sd, key, val, w->err);
        if (rc)
            return rc;
    }
    return CKPT_OK;
}

static int save_module(walk *w, const ckpt_value *v, const char *prefix, size_t depth)
{
    const ckpt_value *st = module_state(v);
    if (!st)
        return CKPT_CORRUPT(w->err, "%s is a %s, not a pickled nn.Module", where(w, prefix),
                            ckpt_type_name(v->type));
    if (depth >= MODULE_MAX_DEPTH)
        return CKPT_FAIL(w->err, CKPT_ELIMIT, "modules are nested deeper than %d",
                         MODULE_MAX_DEPTH);
    for (size_t i = 0; i < depth; i++)
        if (w->stack[i] == v)
            return CKPT_CORRUPT(w->err, "%s contains itself: its _modules form a cycle",
                                where(w, prefix));
    if (++w->used->visits > MODULE_MAX_VISITS)
        return CKPT_FAIL(w->err, CKPT_ELIMIT, "more than %u modules (shared children count "
                         "once per path)", MODULE_MAX_VISITS);
    w->stack[depth] = v;

    size_t plen = strlen(prefix);
    ckpt_value *mk = ckpt__value_str(w->ar, CKPT_T_STR, prefix, plen ? plen - 1 : 0);
    ckpt_value *mv = ckpt__value_new(w->ar, CKPT_T_DICT);
    ckpt_value *vk = str_value(w->ar, "version");
    ckpt_value *vv = ckpt__value_int(w->ar, class_version(object_class(v), st));
    if (!mk || !mv || !vk || !vv)
        return ckpt__arena_error(w->ar, w->err);
    int rc;
    if ((rc = ckpt__dict_set(w->ar, mv, vk, vv, w->err)) ||
        (rc = ckpt__dict_set(w->ar, w->meta, mk, mv, w->err)))
        return rc;

    const ckpt_value *skip = ckpt_dict_get(st, "_non_persistent_buffers_set");
    if (skip && skip->type != CKPT_T_SET)
        return CKPT_CORRUPT(w->err, "%s has a %s _non_persistent_buffers_set, not a set",
                            where(w, prefix), ckpt_type_name(skip->type));
    if ((rc = save_dict(w, st, "_parameters", prefix, NULL)) ||
        (rc = save_dict(w, st, "_buffers", prefix, skip)))
        return rc;

    const ckpt_value *mods = ckpt_dict_get(st, "_modules");
    if (mods->type != CKPT_T_DICT)
        return CKPT_CORRUPT(w->err, "%s has a %s _modules, not a dict", where(w, prefix),
                            ckpt_type_name(mods->type));
    for (size_t i = 0; i < mods->u.dict.len; i++) {
        const ckpt_value *k = mods->u.dict.keys[i], *c = mods->u.dict.vals[i];
        if (k->type != CKPT_T_STR)
            return CKPT_CORRUPT(w->err, "%s has a %s key in _modules", where(w, prefix),
                                ckpt_type_name(k->type));
        if (c->type == CKPT_T_NONE)
            continue;
        const char *sub = ckpt__arena_printf(w->ar, "%s%s.", prefix, k->u.str.data);
        if (!sub)
            return ckpt__arena_error(w->ar, w->err);
        if ((rc = save_module(w, c, sub, depth + 1)))
            return rc;
    }
    return CKPT_OK;
}

/* Is s[0..n) "___torch_mangle_<digits>", the segment TorchScript adds to a class compiled
 * twice (torchscript.c)? */
static bool mangle_segment(const char *s, size_t n)
{
    size_t k = strlen("___torch_mangle_");
    if (n <= k || strncmp(s, "___torch_mangle_", k))
        return false;
    for (size_t i = k; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

const char *ckpt__module_class(const ckpt_value *v, ckpt__arena *ar)
{
    if (!module_state(v))
        return NULL;
    const ckpt_value *cls = object_class(v);
    char *q = ckpt__arena_printf(ar, "%s.%s", cls->u.global.module, cls->u.global.name);
    if (!q || strncmp(q, "__torch__.", 10))
        return q;
    /* "__torch__.torch.nn.modules.conv.___torch_mangle_17.Conv2d": drop the mangle segment */
    char *o = q;
    for (const char *p = q; *p;) {
        size_t n = strcspn(p, ".");
        if (!mangle_segment(p, n)) {
            memmove(o, p, n);
            o += n;
            if (p[n])
                *o++ = '.';
        }
        p += n + (p[n] == '.');
    }
    if (o > q && o[-1] == '.')
        o--;
    *o = '\0';
    return q;
}

int ckpt__module_state_dict(ckpt__arena *ar, const ckpt_value *v, ckpt__module_budget *used,
                            ckpt_value **out, ckpt_error *err)
{
    *out = NULL;
    if (!module_state(v))
        return CKPT_OK;
    walk *w = ckpt__arena_alloc(ar, sizeof *w);
    if (!w)
        return ckpt__arena_error(ar, err);
    w->ar = ar;
    w->err = err;
    w->used = used;
    w->sd = ckpt__value_new(ar, CKPT_T_DICT);
    w->meta = ckpt__value_new(ar, CKPT_T_DICT);
    ckpt_value *attrs = ckpt__value_new(ar, CKPT_T_DICT);
    ckpt_value *mkey = str_value(ar, "_metadata");
    if (!w->sd || !w->meta || !attrs || !mkey)
        return ckpt__arena_error(ar, err);
    w->sd->class_name = w->meta->class_name = "collections.OrderedDict";
    int rc = save_module(w, v, "", 0);
    if (!rc)
        rc = ckpt__dict_set(ar, attrs, mkey, w->meta, err);
    if (rc)
        return rc;
    w->sd->u.dict.attrs = attrs;
    *out = w->sd;
    return CKPT_OK;
}
