/*
 * torchscript.c - TorchScript archives (torch.jit.save) read as the modules they hold.
 *
 * A TorchScript archive is a torch zip (file.c) with more records:
 *     <root>/data.pkl            the module tree: each module is NEWOBJ of a class
 *                                __torch__.<module>.<Class> (never resolved here), then BUILD
 *                                with a dict of all its attributes in slot order
 *     <root>/constants.pkl       tensors the code uses as constants (not in state_dict())
 *     <root>/code/__torch__/a/b.py   the source of the classes of module __torch__.a.b
 *                                (__torch__.M: code/__torch__.py); a class body starts
 *                                    class Conv2d(Module):
 *                                      __parameters__ = ["weight", "bias", ]
 *                                      __buffers__ = []
 *     <root>/data/<key>          storages, as in any torch zip
 *
 * torch.jit.load(f).state_dict() is nn.Module.state_dict() over the C++ module's slots: for a
 * module at prefix p, the slots listed in __parameters__ that hold a tensor, then those in
 * __buffers__ (all of them: a scripted module keeps no non-persistent set), then each slot
 * holding a module, at p + name + '.'; _metadata has version 1 for every module (the
 * RecursiveScriptModule's _version, whatever the original class was).
 *
 * Nothing is run: the code files are only searched for those two lines per class, with a small
 * parser whose file sizes, line lengths and list lengths are bounded. Each module object's
 * state is then rewritten in place into the shape of a pickled nn.Module (_parameters,
 * _buffers, _modules, then its other attributes), which module.c turns into the state dict
 * and inspect shows as the module structure.
 */
#include "internal.h"

#define TS_MAX_DEPTH 256            /* nesting of modules */
#define TS_MAX_CODE (16u << 20)     /* bytes of one code file */
#define TS_MAX_CODE_TOTAL (256u << 20) /* bytes of all code files read for one archive */
#define TS_MAX_LINE (1u << 20)      /* bytes of one line of code */
#define TS_MAX_NAMES 65536          /* names in one __parameters__ or __buffers__ list */
#define TS_MAX_NAME 1024            /* bytes of one attribute name */
#define TS_MAX_QUALNAME 4096        /* bytes of a class's qualified name */
#define TS_MAX_CLASSES 65536        /* classes read from all code files */
#define TS_MAX_MODULES (1u << 20)   /* module objects rewritten */
#define TS_CONVERTED (1u << 31)     /* flag on a state dict this file already rewrote */
#define SEED_CLASS 0x7453

typedef struct ts_class {
    const char *qualname; /* "__torch__.torch.nn.modules.conv.Conv2d" */
    bool module;          /* class X(Module) */
    const char **params, **buffers;
    size_t n_params, n_buffers;
} ts_class;

typedef struct ts {
    ckpt_file *f;
    ckpt_error *err;
    ts_class *classes;
    size_t n_classes, cap_classes;
    ckpt__hindex class_index;
    const char **files; /* modules whose code file was read */
    size_t n_files, cap_files;
    ckpt__hindex file_index;
    size_t n_modules, n_tensors;
    uint64_t code_bytes; /* read from code files so far: many files each under TS_MAX_CODE,
                          * deflated 1000:1, would otherwise cost the CPU of terabytes */
    const ckpt_value *stack[TS_MAX_DEPTH];
} ts;

/* ---- the code files ---------------------------------------------------------------------- */

static bool ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
}

static ts_class *class_find(ts *t, const char *qualname)
{
    uint64_t h = ckpt__hash(qualname, strlen(qualname), SEED_CLASS);
    size_t pos;
    for (size_t it = ckpt__hindex_first(&t->class_index, h, &pos); it;
         it = ckpt__hindex_next(&t->class_index, h, &pos))
        if (!strcmp(t->classes[it - 1].qualname, qualname))
            return &t->classes[it - 1];
    return NULL;
}

static bool file_read(ts *t, const char *module)
{
    uint64_t h = ckpt__hash(module, strlen(module), SEED_CLASS + 1);
    size_t pos;
    for (size_t it = ckpt__hindex_first(&t->file_index, h, &pos); it;
         it = ckpt__hindex_next(&t->file_index, h, &pos))
        if (!strcmp(t->files[it - 1], module))
            return true;
    return false;
}

/* Append item to a growing arena array *v of *len (capacity *cap). */
static int push(ckpt__arena *ar, void *vp, size_t *len, size_t *cap, size_t size,
                const void *item, ckpt_error *err)
{
    void **v = vp;
    if (*len == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        void *nv = ckpt__arena_grow(ar, *v, *cap * size, ncap * size);
        if (!nv)
            return ckpt__arena_error(ar, err);
        *v = nv;
        *cap = ncap;
    }
    memcpy((char *)*v + *len * size, item, size);
    (*len)++;
    return CKPT_OK;
}

/* The names of `["a", "b", ]` at s[0..n) into *out. */
static int parse_list(ts *t, const char *file, const char *s, size_t n, const char ***out,
                      size_t *count)
{
    ckpt__arena *ar = t->f->arena;
    const char **names = NULL;
    size_t len = 0, cap = 0, i = 0;
    if (n == 0 || s[0] != '[')
        return CKPT_CORRUPT(t->err, "torchscript: '%s' has a list that does not start with '['",
                            file);
    for (i = 1; i < n && s[i] != ']';) {
        if (s[i] == ' ' || s[i] == ',') {
            i++;
            continue;
        }
        if (s[i] != '"')
            return CKPT_CORRUPT(t->err, "torchscript: '%s' has a list item that is not a name",
                                file);
        size_t a = ++i;
        while (i < n && i - a <= TS_MAX_NAME && ident_char(s[i]))
            i++;
        if (i >= n || s[i] != '"' || i == a)
            return CKPT_CORRUPT(t->err, "torchscript: '%s' has a list item that is not a name",
                                file);
        if (len >= TS_MAX_NAMES)
            return CKPT_FAIL(t->err, CKPT_ELIMIT, "torchscript: '%s' lists more than %d names",
                             file, TS_MAX_NAMES);
        const char *name = ckpt__arena_strndup(ar, s + a, i - a);
        int rc;
        if (!name)
            return ckpt__arena_error(ar, t->err);
        if ((rc = push(ar, &names, &len, &cap, sizeof *names, &name, t->err)))
            return rc;
        i++;
    }
    if (i >= n)
        return CKPT_CORRUPT(t->err, "torchscript: '%s' has a list without its ']'", file);
    *out = names;
    *count = len;
    return CKPT_OK;
}

static bool starts(const char *s, size_t n, const char *prefix)
{
    size_t k = strlen(prefix);
    return n >= k && !memcmp(s, prefix, k);
}

/* Read the classes of `module` ("__torch__.a.b") from <root>/code/__torch__/a/b.py. */
static int read_code(ts *t, const char *module)
{
    ckpt_file *f = t->f;
    ckpt__arena *ar = f->arena;
    char *path = ckpt__arena_printf(ar, "%s/code/%s.py", f->zip_root, module);
    const char *mod = ckpt__arena_strdup(ar, module);
    if (!path || !mod)
        return ckpt__arena_error(ar, t->err);
    for (char *p = path + strlen(f->zip_root) + 6; *p; p++)
        if (*p == '.' && strcmp(p, ".py"))
            *p = '/';
    const char *file = path + strlen(f->zip_root) + 1;
    int rc;
    if ((rc = push(ar, &t->files, &t->n_files, &t->cap_files, sizeof *t->files, &mod,
                   t->err)))
        return rc;
    if (ckpt__hindex_add(ar, &t->file_index, ckpt__hash(mod, strlen(mod), SEED_CLASS + 1),
                         t->n_files - 1))
        return ckpt__arena_error(ar, t->err);

    const ckpt__zip_entry *e = ckpt__zip_find(&f->zip, path);
    if (!e)
        return CKPT_CORRUPT(t->err, "torchscript: no code file '%s' for the classes of '%s'",
                            file, module);
    if (e->usize > TS_MAX_CODE) {
        char have[32], lim[32];
        return CKPT_FAIL(t->err, CKPT_ELIMIT, "torchscript: code file '%s' is %s, more than %s",
                         file, ckpt__size_str(have, e->usize), ckpt__size_str(lim, TS_MAX_CODE));
    }
    if (e->usize > TS_MAX_CODE_TOTAL - t->code_bytes) {
        char lim[32];
        return CKPT_FAIL(t->err, CKPT_ELIMIT, "torchscript: the code files read for the "
                         "archive's classes exceed %s in all",
                         ckpt__size_str(lim, TS_MAX_CODE_TOTAL));
    }
    t->code_bytes += e->usize;
    const uint8_t *data;
    void *owned;
    if ((rc = ckpt__zip_read(f->map, f->size, e, &f->alloc, TS_MAX_CODE, &data, &owned, t->err)))
        return rc;
    const char *s = (const char *)data;
    size_t n = (size_t)e->usize;
    ts_class *cur = NULL;
    for (size_t at = 0; at < n && !rc;) {
        const char *nl = memchr(s + at, '\n', n - at);
        size_t len = nl ? (size_t)(nl - (s + at)) : n - at;
        const char *line = s + at;
        at += len + 1;
        if (len > TS_MAX_LINE) {
            rc = CKPT_FAIL(t->err, CKPT_ELIMIT, "torchscript: '%s' has a line of more than %u "
                           "bytes", file, TS_MAX_LINE);
            break;
        }
        if (starts(line, len, "class ")) {
            size_t a = 6, b = a;
            while (b < len && ident_char(line[b]))
                b++;
            if (b == a || b - a > TS_MAX_NAME) {
                rc = CKPT_CORRUPT(t->err, "torchscript: '%s' has a class without a name", file);
                break;
            }
            if (t->n_classes >= TS_MAX_CLASSES) {
                rc = CKPT_FAIL(t->err, CKPT_ELIMIT, "torchscript: more than %d classes",
                               TS_MAX_CLASSES);
                break;
            }
            ts_class c = {0};
            c.qualname = ckpt__arena_printf(ar, "%s.%.*s", mod, (int)(b - a), line + a);
            c.module = starts(line + b, len - b, "(Module):");
            if (!c.qualname) {
                rc = ckpt__arena_error(ar, t->err);
                break;
            }
            if (class_find(t, c.qualname)) {
                rc = CKPT_CORRUPT(t->err, "torchscript: '%s' defines class '%s' twice", file,
                                  c.qualname);
                break;
            }
            if ((rc = push(ar, &t->classes, &t->n_classes, &t->cap_classes, sizeof c, &c,
                           t->err)))
                break;
            if (ckpt__hindex_add(ar, &t->class_index,
                                 ckpt__hash(c.qualname, strlen(c.qualname), SEED_CLASS),
                                 t->n_classes - 1)) {
                rc = ckpt__arena_error(ar, t->err);
                break;
            }
            cur = &t->classes[t->n_classes - 1];
        } else if (cur && starts(line, len, "  __parameters__ = ")) {
            rc = parse_list(t, file, line + 19, len - 19, &cur->params, &cur->n_params);
        } else if (cur && starts(line, len, "  __buffers__ = ")) {
            rc = parse_list(t, file, line + 16, len - 16, &cur->buffers, &cur->n_buffers);
        } else if (len && line[0] != ' ') {
            cur = NULL; /* a top-level statement ends the class body */
        }
    }
    ckpt__free(&f->alloc, owned, e->usize);
    return rc;
}

/* The class of a TorchScript object (NEWOBJ of a __torch__ global), or NULL for any other
 * value. Reads its code file on first use; *c is NULL for a class of torch.classes (C++). */
static int object_class(ts *t, const ckpt_value *v, const ts_class **c, bool *is_ts)
{
    *c = NULL;
    *is_ts = false;
    if (!v || v->type != CKPT_T_OBJECT || !v->u.obj.newobj || !v->u.obj.callable ||
        v->u.obj.callable->type != CKPT_T_GLOBAL)
        return CKPT_OK;
    const char *module = v->u.obj.callable->u.global.module;
    const char *name = v->u.obj.callable->u.global.name;
    if (strcmp(module, "__torch__") && strncmp(module, "__torch__.", 10))
        return CKPT_OK;
    *is_ts = true;
    if (!strncmp(module, "__torch__.torch.classes.", 24))
        return CKPT_OK;
    size_t ml = strlen(module), nl = strlen(name);
    bool ok = ml + nl < TS_MAX_QUALNAME && nl > 0;
    for (size_t i = 0; ok && i < ml; i++)
        ok = ident_char(module[i]) || (module[i] == '.' && module[i + 1] && module[i + 1] != '.');
    for (size_t i = 0; ok && i < nl; i++)
        ok = ident_char(name[i]);
    if (!ok)
        return CKPT_CORRUPT(t->err, "torchscript: '%.64s.%.64s' is not a class name", module,
                            name);
    int rc;
    if (!file_read(t, module) && (rc = read_code(t, module)))
        return rc;
    char *q = ckpt__arena_printf(t->f->arena, "%s.%s", module, name);
    if (!q)
        return ckpt__arena_error(t->f->arena, t->err);
    if (!(*c = class_find(t, q)))
        return CKPT_CORRUPT(t->err, "torchscript: class '%s' is not in its code file", q);
    return CKPT_OK;
}

/* ---- the module tree --------------------------------------------------------------------- */

static const char *where(ts *t, const char *prefix)
{
    size_t n = strlen(prefix);
    if (!n)
        return "the root module";
    const char *s = ckpt__arena_printf(t->f->arena, "module '%.*s'", (int)(n - 1), prefix);
    return s ? s : "a module";
}

static int set(ts *t, ckpt_value *d, const char *key, ckpt_value *val)
{
    ckpt_value *k = ckpt__value_str(t->f->arena, CKPT_T_STR, key, strlen(key));
    if (!k)
        return ckpt__arena_error(t->f->arena, t->err);
    return ckpt__dict_set(t->f->arena, d, k, val, t->err);
}

/* The slots named in a __parameters__ or __buffers__ list into an OrderedDict. */
static int slot_dict(ts *t, const ckpt_value *st, const char *prefix, const char *list,
                     const char **names, size_t n, ckpt_value **out)
{
    ckpt_value *d = ckpt__value_new(t->f->arena, CKPT_T_DICT);
    if (!d)
        return ckpt__arena_error(t->f->arena, t->err);
    d->class_name = "collections.OrderedDict";
    for (size_t i = 0; i < n; i++) {
        const ckpt_value *v = ckpt_dict_get(st, names[i]);
        if (!v)
            return CKPT_CORRUPT(t->err, "torchscript: %s has no attribute '%s' of its %s",
                                where(t, prefix), names[i], list);
        if (v->type != CKPT_T_NONE && v->type != CKPT_T_TENSOR)
            return CKPT_CORRUPT(t->err, "torchscript: %s has a %s '%s' in its %s",
                                where(t, prefix), ckpt_type_name(v->type), names[i], list);
        t->n_tensors += v->type == CKPT_T_TENSOR;
        int rc = set(t, d, names[i], (ckpt_value *)v);
        if (rc)
            return rc;
    }
    *out = d;
    return CKPT_OK;
}

static bool reserved(const char *name)
{
    static const char *const names[] = {"_parameters", "_buffers", "_modules",
                                        "_non_persistent_buffers_set", "_version"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i]))
            return true;
    return false;
}

/* Rewrite module object v (class c, at prefix) and the modules below it. */
static int convert(ts *t, ckpt_value *v, const ts_class *c, const char *prefix, size_t depth)
{
    if (depth >= TS_MAX_DEPTH)
        return CKPT_FAIL(t->err, CKPT_ELIMIT, "torchscript: modules are nested deeper than %d",
                         TS_MAX_DEPTH);
    for (size_t i = 0; i < depth; i++)
        if (t->stack[i] == v)
            return CKPT_CORRUPT(t->err, "torchscript: %s contains itself", where(t, prefix));
    ckpt_value *st = v->u.obj.state;
    if (st && st->type == CKPT_T_DICT && (st->flags & TS_CONVERTED))
        return CKPT_OK; /* a module shared by two parents: done through the first */
    if (!st || st->type != CKPT_T_DICT)
        return CKPT_CORRUPT(t->err, "torchscript: %s has %s state, not a dict of attributes",
                            where(t, prefix), st ? ckpt_type_name(st->type) : "no");
    if (++t->n_modules > TS_MAX_MODULES)
        return CKPT_FAIL(t->err, CKPT_ELIMIT, "torchscript: more than %u modules",
                         TS_MAX_MODULES);
    t->stack[depth] = v;

    ckpt__arena *ar = t->f->arena;
    ckpt_value *ns = ckpt__value_new(ar, CKPT_T_DICT);
    ckpt_value *mods = ckpt__value_new(ar, CKPT_T_DICT);
    ckpt_value *np = ckpt__value_new(ar, CKPT_T_SET); /* TorchScript keeps every buffer */
    ckpt_value *params, *buffers;
    if (!ns || !mods || !np)
        return ckpt__arena_error(ar, t->err);
    mods->class_name = "collections.OrderedDict";
    int rc;
    if ((rc = slot_dict(t, st, prefix, "__parameters__", c->params, c->n_params, &params)) ||
        (rc = slot_dict(t, st, prefix, "__buffers__", c->buffers, c->n_buffers, &buffers)) ||
        (rc = set(t, ns, "_parameters", params)) || (rc = set(t, ns, "_buffers", buffers)) ||
        (rc = set(t, ns, "_non_persistent_buffers_set", np)) ||
        (rc = set(t, ns, "_modules", mods)))
        return rc;
    for (size_t i = 0; i < st->u.dict.len; i++) {
        const ckpt_value *k = st->u.dict.keys[i];
        ckpt_value *a = st->u.dict.vals[i];
        if (k->type != CKPT_T_STR)
            return CKPT_CORRUPT(t->err, "torchscript: %s has a %s attribute name",
                                where(t, prefix), ckpt_type_name(k->type));
        const ts_class *ac;
        bool is_ts;
        if ((rc = object_class(t, a, &ac, &is_ts)))
            return rc;
        if (ac && ac->module) {
            const char *sub = ckpt__arena_printf(ar, "%s%s.", prefix, k->u.str.data);
            if (!sub)
                return ckpt__arena_error(ar, t->err);
            if ((rc = convert(t, a, ac, sub, depth + 1)) || (rc = set(t, mods, k->u.str.data, a)))
                return rc;
        } else if (!reserved(k->u.str.data) && !ckpt_dict_get(params, k->u.str.data) &&
                   !ckpt_dict_get(buffers, k->u.str.data)) {
            if ((rc = set(t, ns, k->u.str.data, a)))
                return rc;
        }
    }
    ns->flags |= TS_CONVERTED;
    v->u.obj.state = ns;
    return CKPT_OK;
}

int ckpt__torchscript_open(ckpt_file *f, ckpt_error *err)
{
    ts *t = ckpt__arena_alloc(f->arena, sizeof *t);
    if (!t)
        return ckpt__arena_error(f->arena, err);
    t->f = f;
    t->err = err;
    const ts_class *c;
    bool is_ts;
    int rc = object_class(t, f->root, &c, &is_ts);
    if (rc)
        return rc;
    if (!c || !c->module)
        return CKPT_CORRUPT(err, "torchscript: data.pkl holds a %s, not a scripted module",
                            is_ts ? "TorchScript object" : ckpt_type_name(f->root->type));
    if ((rc = convert(t, f->root, c, "", 0)) || t->n_tensors)
        return rc;
    /* torch.jit.freeze folds the weights into constants of the code (<root>/constants/N):
     * state_dict() is then empty, and nothing names the constants */
    size_t root_len = strlen(f->zip_root), n_constants = 0;
    for (size_t i = 0; i < f->zip.n_entries; i++) {
        const char *name = f->zip.entries[i].name;
        n_constants += !strncmp(name, f->zip_root, root_len) &&
                       !strncmp(name + root_len, "/constants/", 11);
    }
    if (n_constants)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "torchscript: the module is frozen "
                         "(torch.jit.freeze): its weights are %zu unnamed constants of its code "
                         "and its state_dict() is empty; save the state dict before freezing",
                         n_constants);
    return CKPT_OK;
}
