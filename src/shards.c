/*
 * shards.c - a set of shard files opened as one state dict.
 *
 * transformers' save_pretrained splits large weights into shards beside an index:
 *
 *     pytorch_model-00001-of-00002.bin ... + pytorch_model.bin.index.json
 *     model-00001-of-00002.safetensors ... + model.safetensors.index.json
 *
 *     index: {"metadata": {"total_size": N}, "weight_map": {"<key>": "<shard file>", ...}}
 *
 * Each shard is an ordinary torch file (a plain dict of tensors) or safetensors file. The set is
 * opened from its index, from any shard's name (the index beside it, else the siblings
 * -00001-of-M .. -M-of-M), or from the folder holding it; every shard is opened (mapped, its
 * tensors left in place), and the file's root is one dict: the shards' items in shard-name
 * order, as `sd = {}; for s in sorted(shards): sd.update(torch.load(s))` builds it. The shards
 * stay open with the set (ckpt_close closes them), so memory is bounded by what a command
 * reads, not by the set. The index and the shards must agree: a missing shard, a key held by
 * two shards, a key the index puts in a shard that does not hold it, or a shard key the index
 * does not name is an error naming it.
 */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define SHARDS_MAX 4096                /* shard files in a set */
#define SHARDS_OPEN_FDS 64             /* shards whose descriptors stay open (fast reads) */
#define SHARDS_MAX_INDEX (256u << 20)  /* bytes of an index.json */

static const char *const dir_indexes[] = {
    "model.safetensors.index.json", "pytorch_model.bin.index.json",
};
static const char *const dir_singles[] = {"model.safetensors", "pytorch_model.bin"};

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* In a base name, "-00001-of-00002" before the extension (or the end): where it starts, the
 * shard's number, the count and the digits' width. */
static bool shard_name(const char *base, size_t *at, size_t *len, long *num, long *count,
                       int *width)
{
    const char *of = strstr(base, "-of-");
    if (!of)
        return false;
    const char *a = of, *b = of + 4;
    while (a > base && a[-1] >= '0' && a[-1] <= '9')
        a--;
    const char *e = b;
    while (*e >= '0' && *e <= '9')
        e++;
    if (a == of || a == base || a[-1] != '-' || e == b || (*e && *e != '.') || e - b > 9 ||
        of - a > 9)
        return false;
    *num = strtol(a, NULL, 10);
    *count = strtol(b, NULL, 10);
    *at = (size_t)(a - 1 - base);
    *len = (size_t)(e - (a - 1));
    *width = (int)(e - b);
    return *num >= 1 && *num <= *count;
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

bool ckpt__shards_path(const char *path)
{
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    size_t at, len;
    long num, count;
    int width;
    return ends_with(path, ".index.json") || is_dir(path) ||
           shard_name(base, &at, &len, &num, &count, &width);
}

typedef struct set {
    ckpt_file *f;
    ckpt_error *err;
    const char *dir;          /* with its trailing slash, or "" */
    const char **names;       /* shard files, sorted */
    size_t n;
    json_t *map;              /* the index's weight_map, or NULL */
    const char *index_name;
} set;

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int add_name(set *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name))
            return CKPT_OK;
    if (s->n >= SHARDS_MAX)
        return CKPT_FAIL(s->err, CKPT_ELIMIT, "the set has more than %d shards", SHARDS_MAX);
    if (!*name || strchr(name, '/') || !strcmp(name, "..") || !strcmp(name, "."))
        return CKPT_CORRUPT(s->err, "'%s' names the shard '%s', not a file beside it",
                            s->index_name, name);
    const char **nn = ckpt__arena_grow(s->f->arena, s->names, s->n * sizeof *nn,
                                       (s->n + 1) * sizeof *nn);
    char *copy = nn ? ckpt__arena_strdup(s->f->arena, name) : NULL;
    if (!copy)
        return ckpt__arena_error(s->f->arena, s->err);
    s->names = nn;
    s->names[s->n++] = copy;
    return CKPT_OK;
}

static int read_index(set *s, const char *path, json_t **out)
{
    int fd;
    uint64_t size;
    int rc = ckpt__open_regular(path, &fd, &size, s->err);
    if (rc)
        return rc;
    if (size > SHARDS_MAX_INDEX || size > s->f->opt.max_alloc) {
        close(fd);
        return CKPT_FAIL(s->err, CKPT_ELIMIT, "index '%s' is larger than %u MiB", path,
                         SHARDS_MAX_INDEX >> 20);
    }
    char *buf = malloc(size ? (size_t)size : 1);
    size_t got = 0;
    while (buf && got < size) {
        ssize_t r = read(fd, buf + got, (size_t)(size - got));
        if (r <= 0 && !(r < 0 && errno == EINTR))
            break;
        got += r > 0 ? (size_t)r : 0;
    }
    close(fd);
    if (!buf)
        return CKPT_NOMEM(s->err);
    json_error_t je;
    json_t *j = got == size ? json_loadb(buf, got, JSON_REJECT_DUPLICATES, &je) : NULL;
    free(buf);
    if (got != size)
        return CKPT_FAIL(s->err, CKPT_EIO, "cannot read index '%s'", path);
    if (!j)
        return CKPT_CORRUPT(s->err, "index '%s' is not JSON: %s (line %d)", path, je.text,
                            je.line);
    *out = j;
    return CKPT_OK;
}

static int from_index(set *s, const char *path, json_t **root)
{
    int rc = read_index(s, path, root);
    if (rc)
        return rc;
    json_t *map = json_object_get(*root, "weight_map");
    if (!json_is_object(map))
        return CKPT_CORRUPT(s->err, "index '%s' has no \"weight_map\" object", path);
    const char *key;
    json_t *v;
    json_object_foreach(map, key, v) {
        if (!json_is_string(v))
            return CKPT_CORRUPT(s->err, "index '%s' maps '%s' to something other than a "
                                "file name", path, key);
        if ((rc = add_name(s, json_string_value(v))))
            return rc;
    }
    if (s->n == 0)
        return CKPT_CORRUPT(s->err, "index '%s' names no shard", path);
    s->map = map;
    return CKPT_OK;
}

/* Open every shard and merge their dicts into s->f->root. */
static int merge(set *s)
{
    ckpt_file *f = s->f;
    ckpt__arena *ar = f->arena;
    qsort(s->names, s->n, sizeof *s->names, name_cmp);
    f->parts = ckpt__arena_alloc(ar, s->n * sizeof *f->parts);
    ckpt_value *root = ckpt__value_new(ar, CKPT_T_DICT);
    ckpt_value *owner = ckpt__value_new(ar, CKPT_T_DICT); /* key -> shard, for messages */
    if (!f->parts || !root || !owner)
        return ckpt__arena_error(ar, s->err);
    int rc;
    for (size_t i = 0; i < s->n; i++) {
        const char *name = s->names[i];
        char *path = ckpt__arena_printf(ar, "%s%s", s->dir, name);
        ckpt_value *shard = ckpt__value_str(ar, CKPT_T_STR, name, strlen(name));
        if (!path || !shard)
            return ckpt__arena_error(ar, s->err);
        ckpt_file *part;
        if (!exists(path))
            return CKPT_FAIL(s->err, CKPT_EIO, "shard '%s'%s%s%s is missing", path,
                             s->index_name ? " (named by '" : "",
                             s->index_name ? s->index_name : "", s->index_name ? "')" : "");
        if ((rc = ckpt__open_single(path, &f->opt, &part, s->err))) {
            char msg[sizeof s->err->message];
            snprintf(msg, sizeof msg, "%s", s->err ? s->err->message : "");
            return CKPT_FAIL(s->err, rc, "shard '%s': %s", path, msg);
        }
        f->parts[f->n_parts++] = part;
        if (i >= SHARDS_OPEN_FDS) /* the rest read through their mappings */
            ckpt__file_close_fd(part);
        if (i == 0)
            f->format = part->format;
        f->size += part->size;
        for (size_t g = 0; g < part->globals.len; g++) {
            const ckpt_global_ref *r = &part->globals.items[g];
            if ((rc = ckpt__globals_add(ar, &f->globals, r->module, r->name, path, r->offset,
                                        s->err)))
                return rc;
        }
        const ckpt_value *d = part->root;
        if (!d || d->type != CKPT_T_DICT)
            return CKPT_CORRUPT(s->err, "shard '%s' holds a %s, not a dict of tensors", path,
                                d ? ckpt_type_name(d->type) : "nothing");
        for (size_t k = 0; k < d->u.dict.len; k++) {
            ckpt_value *key = d->u.dict.keys[k];
            if (key->type != CKPT_T_STR)
                return CKPT_CORRUPT(s->err, "shard '%s' has a %s key", path,
                                    ckpt_type_name(key->type));
            const ckpt_value *prev = ckpt__dict_lookup(owner, key);
            if (prev)
                return CKPT_CORRUPT(s->err, "'%s' is in two shards, '%s' and '%s'",
                                    key->u.str.data, prev->u.str.data, name);
            if (s->map) {
                json_t *want = json_object_get(s->map, key->u.str.data);
                if (!want)
                    return CKPT_CORRUPT(s->err, "shard '%s' holds '%s', which index '%s' does "
                                        "not name", path, key->u.str.data, s->index_name);
                if (strcmp(json_string_value(want), name) != 0)
                    return CKPT_CORRUPT(s->err, "shard '%s' holds '%s', which index '%s' puts "
                                        "in '%s'", path, key->u.str.data, s->index_name,
                                        json_string_value(want));
            }
            if ((rc = ckpt__dict_set(ar, owner, key, shard, s->err)) ||
                (rc = ckpt__dict_set(ar, root, key, d->u.dict.vals[k], s->err)))
                return rc;
        }
    }
    if (s->map && json_object_size(s->map) != owner->u.dict.len) {
        const char *key;
        json_t *v;
        json_object_foreach(s->map, key, v) {
            if (!ckpt_dict_get(owner, key))
                return CKPT_CORRUPT(s->err, "index '%s' puts '%s' in shard '%s', which does "
                                    "not hold it", s->index_name, key, json_string_value(v));
        }
    }
    f->root = root;
    return CKPT_OK;
}

int ckpt__shards_open(ckpt_file *f, const char *path, ckpt_error *err)
{
    set s = {0};
    s.f = f;
    s.err = err;
    ckpt__arena *ar = f->arena;
    const char *index = NULL;
    char *dir;
    if (is_dir(path)) {
        size_t n = strlen(path);
        dir = ckpt__arena_printf(ar, "%s%s", path, n && path[n - 1] == '/' ? "" : "/");
        if (!dir)
            return ckpt__arena_error(ar, err);
        s.dir = dir;
        for (size_t i = 0; i < 2 && !index; i++) {
            char *p = ckpt__arena_printf(ar, "%s%s", dir, dir_indexes[i]);
            if (!p)
                return ckpt__arena_error(ar, err);
            if (exists(p))
                index = p;
        }
        for (size_t i = 0; i < 2 && !index; i++) {
            char *p = ckpt__arena_printf(ar, "%s%s", dir, dir_singles[i]);
            if (!p)
                return ckpt__arena_error(ar, err);
            if (exists(p)) {
                int rc = add_name(&s, dir_singles[i]);
                return rc ? rc : merge(&s);
            }
        }
        if (!index)
            return CKPT_FAIL(err, CKPT_EFORMAT, "is a directory without %s, %s, %s or %s",
                             dir_indexes[0], dir_indexes[1], dir_singles[0], dir_singles[1]);
    } else {
        const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
        dir = ckpt__arena_strndup(ar, path, (size_t)(base - path));
        if (!dir)
            return ckpt__arena_error(ar, err);
        s.dir = dir;
        size_t at, len;
        long num, count;
        int width;
        if (ends_with(path, ".index.json")) {
            index = path;
        } else if (shard_name(base, &at, &len, &num, &count, &width)) {
            char *p = ckpt__arena_printf(ar, "%s%.*s%s.index.json", dir, (int)at, base,
                                         base + at + len);
            if (!p)
                return ckpt__arena_error(ar, err);
            if (exists(p)) {
                index = p;
            } else { /* no index: the siblings by name */
                if (count > SHARDS_MAX)
                    return CKPT_FAIL(err, CKPT_ELIMIT, "the set has more than %d shards",
                                     SHARDS_MAX);
                s.index_name = NULL;
                for (long i = 1; i <= count; i++) {
                    int numw = (int)len - 5 - width; /* "-" num "-of-" count */
                    char *nm = ckpt__arena_printf(ar, "%.*s-%0*ld-of-%.*s%s", (int)at, base,
                                                  numw, i, width, base + at + len - width,
                                                  base + at + len);
                    int rc = nm ? add_name(&s, nm) : ckpt__arena_error(ar, err);
                    if (rc)
                        return rc;
                }
                return merge(&s);
            }
        }
    }
    json_t *root = NULL;
    s.index_name = index;
    int rc = from_index(&s, index, &root);
    if (!rc)
        rc = merge(&s);
    json_decref(root);
    return rc;
}
