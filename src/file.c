/* file.c - opening a checkpoint: mapping, telling formats apart, running the pickles, and
 * binding persistent ids to storages.
 *
 * Zip format (torch >= 1.6), docs/FORMAT.md §2:
 *     <root>/data.pkl      the pickle; storages appear as persistent ids
 *                          ('storage', <Xxx>Storage | UntypedStorage, key, location, numel)
 *     <root>/data/<key>    raw little-endian bytes of each storage (numel * element size)
 *     <root>/version       "3\n" (torch 1.13 accepts 1..10); <root>/byteorder "little"|"big"
 * Legacy format, §6: five pickles back to back -- magic, protocol 1001, sys_info, the object
 * (ids are 6-tuples with an optional (view_key, offset, numel) view), the sorted key list --
 * then for each key of that list: int64 element count and the storage's bytes.
 * A bare pickle (no torch framing) is opened too, so that ckpt can show what it would do. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LEGACY_PROTOCOL_VERSION 1001
#define ZIP_VERSION_MIN 1  /* what torch 1.13's reader accepts in <root>/version */
#define ZIP_VERSION_MAX 10
#define MAX_KEY_LEN 4096   /* a storage key longer than this is not something torch wrote */

/* ---- storage index: key -> storage (the keyed hash index over f->storages) -------------- */

#define SEED_STORAGE_KEY 0x5354

static ckpt_storage *storage_find(const ckpt_file *f, const char *key)
{
    uint64_t h = ckpt__hash(key, strlen(key), SEED_STORAGE_KEY);
    size_t pos;
    for (size_t it = ckpt__hindex_first(&f->storage_index, h, &pos); it;
         it = ckpt__hindex_next(&f->storage_index, h, &pos))
        if (strcmp(f->storages[it - 1]->key, key) == 0)
            return f->storages[it - 1];
    return NULL;
}

/* Add a new storage (the key must not be present). */
int ckpt__storage_register(ckpt_file *f, ckpt_storage *s, ckpt_error *err)
{
    if (f->n_storages == f->cap_storages) {
        size_t ncap = f->cap_storages ? f->cap_storages * 2 : 16;
        ckpt_storage **v = ckpt__arena_grow(f->arena, f->storages,
                                            f->cap_storages * sizeof *v, ncap * sizeof *v);
        if (!v)
            return ckpt__arena_error(f->arena, err);
        f->storages = v;
        f->cap_storages = ncap;
    }
    if (ckpt__hindex_add(f->arena, &f->storage_index,
                         ckpt__hash(s->key, strlen(s->key), SEED_STORAGE_KEY),
                         f->n_storages) != 0)
        return ckpt__arena_error(f->arena, err);
    f->storages[f->n_storages++] = s;
    return CKPT_OK;
}

/* ---- persistent ids ---------------------------------------------------------------------- */

static const char *pid_key(ckpt_file *f, const ckpt_value *v, ckpt_error *err)
{
    if (v->type == CKPT_T_STR) {
        if (v->u.str.len > MAX_KEY_LEN || memchr(v->u.str.data, '\0', v->u.str.len))
            return CKPT_CORRUPT(err, "storage key is not a plain name"), NULL;
        return v->u.str.data;
    }
    if (v->type == CKPT_T_INT) {
        char *k = ckpt__arena_printf(f->arena, "%lld", (long long)v->u.i);
        if (!k)
            ckpt__arena_error(f->arena, err);
        return k;
    }
    CKPT_CORRUPT(err, "storage key is a %s, not a string", ckpt_type_name(v->type));
    return NULL;
}

/* Reads the common part of a storage id: ('storage', cls, key, location, numel, ...). */
static int parse_pid(ckpt_file *f, const ckpt_value *pid, size_t min_len, ckpt_dtype *dt,
                     const char **key, uint64_t *numel, ckpt_error *err)
{
    if (pid->type != CKPT_T_TUPLE || pid->u.seq.len < min_len)
        return CKPT_CORRUPT(err, "persistent id is not a storage tuple");
    ckpt_value **it = pid->u.seq.items;
    if (!ckpt__value_is_str(it[0], "storage"))
        return CKPT_CORRUPT(err, "persistent id of an unknown kind (not 'storage')");
    const ckpt_value *cls = it[1];
    int d = -1;
    if (cls->type == CKPT_T_GLOBAL)
        d = ckpt_dtype_from_storage(cls->u.global.name);
    if (d < 0)
        return CKPT_CORRUPT(err, "persistent id names '%s', which is not a storage class",
                            cls->type == CKPT_T_GLOBAL ? cls->u.global.name
                                                       : ckpt_type_name(cls->type));
    *dt = (ckpt_dtype)d;
    if (!(*key = pid_key(f, it[2], err)))
        return err ? err->status : CKPT_ECORRUPT;
    if (it[4]->type != CKPT_T_INT || it[4]->u.i < 0)
        return CKPT_CORRUPT(err, "storage '%s' has an invalid size", *key);
    *numel = (uint64_t)it[4]->u.i;
    return CKPT_OK;
}

static ckpt_value *storage_value(ckpt_file *f, ckpt_storage *s)
{
    ckpt_value *v = ckpt__value_new(f->arena, CKPT_T_STORAGE);
    if (v)
        v->u.storage = s;
    return v;
}

static ckpt_storage *storage_new(ckpt_file *f, const char *key, ckpt_dtype dt, uint64_t numel,
                                 ckpt_error *err)
{
    uint64_t nbytes;
    if (ckpt__mul_overflow(numel, (uint64_t)ckpt_dtype_size(dt), &nbytes)) {
        CKPT_CORRUPT(err, "storage '%s' size overflows", key);
        return NULL;
    }
    ckpt_storage *s = ckpt__arena_alloc(f->arena, sizeof *s);
    char *k = s ? ckpt__arena_strdup(f->arena, key) : NULL;
    if (!k) {
        ckpt__arena_error(f->arena, err);
        return NULL;
    }
    s->file = f;
    s->key = k;
    s->dtype = dt;
    s->nbytes = nbytes;
    return s;
}

/* "123" -> 123 for a canonical decimal key (no sign, no leading zero) below limit, else -1. */
static long long decimal_key(const char *k, size_t limit)
{
    if (!*k || (k[0] == '0' && k[1]) || strlen(k) > 18)
        return -1;
    long long v = 0;
    for (; *k; k++) {
        if (*k < '0' || *k > '9')
            return -1;
        v = v * 10 + (*k - '0');
    }
    return (unsigned long long)v < limit ? v : -1;
}

/* Index the <root>/data/<n> records by n (exact spelling; other spellings still resolve through
 * the case-insensitive ckpt__zip_find). */
static int index_data_records(ckpt_file *f, ckpt_error *err)
{
    size_t n = f->zip.n_entries, root_len = strlen(f->zip_root);
    f->data_by_num = ckpt__arena_alloc(f->arena, (n ? n : 1) * sizeof *f->data_by_num);
    if (!f->data_by_num)
        return ckpt__arena_error(f->arena, err);
    f->n_data_by_num = n;
    for (size_t i = 0; i < n; i++) {
        const char *name = f->zip.entries[i].name;
        if (strncmp(name, f->zip_root, root_len) != 0 || strncmp(name + root_len, "/data/", 6))
            continue;
        long long k = decimal_key(name + root_len + 6, n);
        if (k >= 0 && !f->data_by_num[k]) /* (duplicate names were refused by the zip layer) */
            f->data_by_num[k] = &f->zip.entries[i];
    }
    return CKPT_OK;
}

static int zip_persistent_load(void *ud, const ckpt_value *pid, ckpt_value **out, ckpt_error *err)
{
    ckpt_file *f = ud;
    ckpt_dtype dt;
    const char *key;
    uint64_t numel;
    int rc = parse_pid(f, pid, 5, &dt, &key, &numel, err);
    if (rc)
        return rc;
    ckpt_storage *s = storage_find(f, key);
    if (!s) {
        /* An UntypedStorage's numel counts bytes; the dtype arrives with _rebuild_tensor_v3. */
        if (!(s = storage_new(f, key, dt, numel, err)))
            return err ? err->status : CKPT_ECORRUPT;
        long long k = decimal_key(key, f->n_data_by_num);
        s->entry = k >= 0 ? f->data_by_num[k] : NULL;
        const char *name = s->entry ? s->entry->name : NULL;
        if (!s->entry) {
            if (!(name = ckpt__arena_printf(f->arena, "%s/data/%s", f->zip_root, key)))
                return ckpt__arena_error(f->arena, err);
            s->entry = ckpt__zip_find(&f->zip, name);
        }
        if (!s->entry)
            return CKPT_CORRUPT(err, "zip: storage '%s' has no record '%s'", key, name);
        /* torch writes records of exactly the storage's size; a compressed one that would
         * inflate to more than the storage holds can only be a decompression bomb */
        if (s->entry->method != 0 && s->entry->usize > s->nbytes) {
            char have[32], need[32];
            return CKPT_CORRUPT(err, "zip: compressed record '%s' inflates to %s, more than the "
                                "%s of storage '%s'", name, ckpt__size_str(have, s->entry->usize),
                                ckpt__size_str(need, s->nbytes), key);
        }
        /* torch does not check this and reads out of bounds (docs/FORMAT.md §2.4); we do. */
        if (s->entry->usize < s->nbytes)
            return CKPT_CORRUPT(err,
                                "zip: record '%s' holds %llu bytes, but storage '%s' needs %llu",
                                name, (unsigned long long)s->entry->usize, key,
                                (unsigned long long)s->nbytes);
        if ((rc = ckpt__storage_register(f, s, err)))
            return rc;
    }
    /* A key seen before is the same storage whatever this id says, as in torch.load; tensor
     * bounds are checked against the storage as first declared. */
    return (*out = storage_value(f, s)) ? CKPT_OK : ckpt__arena_error(f->arena, err);
}

static int legacy_persistent_load(void *ud, const ckpt_value *pid, ckpt_value **out,
                                  ckpt_error *err)
{
    ckpt_file *f = ud;
    if (pid->type == CKPT_T_TUPLE && pid->u.seq.len == 4 &&
        ckpt__value_is_str(pid->u.seq.items[0], "module")) {
        /* ('module', cls, source_file, source): a whole nn.Module was saved; keep the class. */
        *out = pid->u.seq.items[1];
        return CKPT_OK;
    }
    ckpt_dtype dt;
    const char *key;
    uint64_t numel;
    int rc = parse_pid(f, pid, 6, &dt, &key, &numel, err);
    if (rc)
        return rc;
    ckpt_storage *root = storage_find(f, key);
    if (!root) {
        if (!(root = storage_new(f, key, dt, numel, err)))
            return err ? err->status : CKPT_ECORRUPT;
        if ((rc = ckpt__storage_register(f, root, err)))
            return rc;
    }
    const ckpt_value *view = pid->u.seq.items[5];
    if (view->type == CKPT_T_NONE)
        return (*out = storage_value(f, root)) ? CKPT_OK : ckpt__arena_error(f->arena, err);
    /* Old writers: (view_key, offset, view_numel) names a slice of the root storage. */
    if (view->type != CKPT_T_TUPLE || view->u.seq.len != 3 ||
        view->u.seq.items[1]->type != CKPT_T_INT || view->u.seq.items[2]->type != CKPT_T_INT ||
        view->u.seq.items[1]->u.i < 0 || view->u.seq.items[2]->u.i < 0)
        return CKPT_CORRUPT(err, "storage '%s' has invalid view metadata", key);
    const char *vkey = pid_key(f, view->u.seq.items[0], err);
    if (!vkey)
        return err ? err->status : CKPT_ECORRUPT;
    ckpt_storage *vs = storage_find(f, vkey);
    if (!vs) {
        uint64_t off = (uint64_t)view->u.seq.items[1]->u.i, vn = (uint64_t)view->u.seq.items[2]->u.i;
        uint64_t end;
        if (ckpt__add_overflow(off, vn, &end) ||
            end > root->nbytes / ckpt_dtype_size(root->dtype))
            return CKPT_CORRUPT(err, "view '%s' runs past the end of storage '%s'", vkey, key);
        if (!(vs = storage_new(f, vkey, root->dtype, vn, err)))
            return err ? err->status : CKPT_ECORRUPT;
        /* A view of a view is a view of the same root, its offsets added: a chain of them,
         * which a hostile file can make as long as it likes, never needs walking. */
        vs->base = root->base ? root->base : root;
        vs->base_offset = off * ckpt_dtype_size(root->dtype);
        if (root->base) /* inside root, so inside root->base: no overflow */
            vs->base_offset += root->base_offset;
        if ((rc = ckpt__storage_register(f, vs, err)))
            return rc;
    }
    return (*out = storage_value(f, vs)) ? CKPT_OK : ckpt__arena_error(f->arena, err);
}

/* ---- the legacy magic number ------------------------------------------------------------ */

/* 0x1950a86a20f9469cfc6c as LONG1 bytes: what the first pickle of a legacy file holds. With
 * pickle_protocol >= 3 its opcodes differ from the 15 bytes detect.c matches, so the value
 * itself is what identifies the format. */
static const uint8_t legacy_magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

bool ckpt__is_legacy_magic(const ckpt_value *v)
{
    return v && v->type == CKPT_T_BIGINT && v->u.str.len == sizeof legacy_magic &&
           memcmp(v->u.str.data, legacy_magic, sizeof legacy_magic) == 0;
}

bool ckpt__is_legacy_stream(ckpt_file *f)
{
    ckpt__pickle_ctx ctx = {.arena = f->arena, .where = "magic number",
                            .max_depth = f->opt.max_depth, .max_memo = f->opt.max_memo};
    ckpt_value *v;
    size_t used;
    ckpt_error e;
    if (ckpt__pickle_load(&ctx, f->map, (size_t)f->size, &v, &used, &e) != CKPT_OK)
        return false;
    return ckpt__is_legacy_magic(v);
}

/* ---- running pickles --------------------------------------------------------------------- */

static void pickle_ctx(ckpt_file *f, ckpt__pickle_ctx *ctx, const char *where,
                       int (*pl)(void *, const ckpt_value *, ckpt_value **, ckpt_error *))
{
    memset(ctx, 0, sizeof *ctx);
    ctx->arena = f->arena;
    ctx->globals = &f->globals;
    ctx->where = where;
    ctx->max_depth = f->opt.max_depth;
    ctx->max_memo = f->opt.max_memo;
    ctx->persistent_load = pl;
    ctx->persistent_ud = f;
}

static int open_zip(ckpt_file *f, ckpt_error *err)
{
    int rc = ckpt__zip_open_lazy(f->arena, f->map, f->size, &f->zip, err);
    if (rc)
        return rc;
    const char *why = ckpt__zip_kind_message(&f->zip);
    if (why)
        return CKPT_FAIL(err, CKPT_EFORMAT, "%s", why);
    const char *first = f->zip.entries[0].name;
    f->zip_root = ckpt__arena_strndup(f->arena, first, (size_t)(strchr(first, '/') - first));
    if (!f->zip_root)
        return ckpt__arena_error(f->arena, err);

    if ((rc = index_data_records(f, err)))
        return rc;
    const char *vname = ckpt__arena_printf(f->arena, "%s/version", f->zip_root);
    const char *vname2 = ckpt__arena_printf(f->arena, "%s/.data/version", f->zip_root);
    const char *bname = ckpt__arena_printf(f->arena, "%s/byteorder", f->zip_root);
    const char *pname = ckpt__arena_printf(f->arena, "%s/data.pkl", f->zip_root);
    if (!vname || !vname2 || !bname || !pname)
        return ckpt__arena_error(f->arena, err);
    const ckpt__zip_entry *ve = ckpt__zip_find(&f->zip, vname);
    if (!ve)
        ve = ckpt__zip_find(&f->zip, vname2);
    if (!ve)
        return CKPT_CORRUPT(err, "zip: no '%s' record (torch.load would refuse the file)", vname);
    const uint8_t *data;
    void *owned;
    if ((rc = ckpt__zip_read(f->map, f->size, ve, &f->alloc, 64, &data, &owned, err)))
        return rc;
    char vbuf[32] = {0};
    size_t vlen = ve->usize < sizeof vbuf - 1 ? (size_t)ve->usize : sizeof vbuf - 1;
    memcpy(vbuf, data, vlen);
    ckpt__free(&f->alloc, owned, ve->usize);
    char *end;
    errno = 0;
    unsigned long long version = strtoull(vbuf, &end, 10);
    if (end == vbuf || errno || version < ZIP_VERSION_MIN || version > ZIP_VERSION_MAX)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                         "zip: format version '%.*s' is not one torch 1.13 reads (%d to %d)",
                         (int)strcspn(vbuf, "\r\n"), vbuf, ZIP_VERSION_MIN, ZIP_VERSION_MAX);

    const ckpt__zip_entry *be = ckpt__zip_find(&f->zip, bname);
    if (be) {
        if ((rc = ckpt__zip_read(f->map, f->size, be, &f->alloc, 64, &data, &owned, err)))
            return rc;
        bool big = be->usize == 3 && memcmp(data, "big", 3) == 0;
        bool little = be->usize == 6 && memcmp(data, "little", 6) == 0;
        ckpt__free(&f->alloc, owned, be->usize);
        if (big)
            return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "big-endian checkpoints are not supported");
        if (!little)
            return CKPT_CORRUPT(err, "zip: '%s' is neither 'little' nor 'big'", bname);
    }

    const ckpt__zip_entry *pe = ckpt__zip_find(&f->zip, pname);
    if (!pe)
        return CKPT_CORRUPT(err, "zip: no '%s' record", pname);
    /* The pickle becomes values in the arena: it may inflate as far as they may grow. */
    if (pe->method != 0 && pe->usize > f->opt.max_alloc) {
        char have[32], lim[32];
        return CKPT_FAIL(err, CKPT_ELIMIT, "zip: '%s' inflates to %s, more than the limit of %s "
                         "(raise ckpt_options.max_alloc)", pe->name, ckpt__size_str(have, pe->usize),
                         ckpt__size_str(lim, f->opt.max_alloc));
    }
    if ((rc = ckpt__zip_read(f->map, f->size, pe, &f->alloc, f->opt.max_inflate, &data,
                             &f->pickle_owned, err)))
        return rc;
    f->pickle_owned_size = pe->usize;
    ckpt__pickle_ctx ctx;
    pickle_ctx(f, &ctx, pe->name, zip_persistent_load);
    size_t used;
    if ((rc = ckpt__pickle_load(&ctx, data, (size_t)pe->usize, &f->root, &used, err)))
        return rc;
    f->format = CKPT_FORMAT_ZIP;
    const char *cname = ckpt__arena_printf(f->arena, "%s/constants.pkl", f->zip_root);
    if (!cname)
        return ckpt__arena_error(f->arena, err);
    if (ckpt__zip_find(&f->zip, cname)) { /* TorchScript: the module tree as state dicts */
        f->format = CKPT_FORMAT_TORCHSCRIPT;
        if ((rc = ckpt__torchscript_open(f, err)))
            return rc;
    }
    /* torch.load never runs another pickle of the archive, but one hidden beside data.pkl is
     * still worth a warning: list its globals too. Storage records are not looked at. */
    size_t root_len = strlen(f->zip_root);
    for (size_t k = 0; k < f->zip.n_entries; k++) {
        const ckpt__zip_entry *e = &f->zip.entries[k];
        if (e == pe || (strncmp(e->name, f->zip_root, root_len) == 0 &&
                        strncmp(e->name + root_len, "/data/", 6) == 0))
            continue;
        ckpt__scan_entry(f, e, NULL);
    }
    return CKPT_OK;
}

static int legacy_small(ckpt_file *f, uint64_t *pos, const char *what, ckpt_value **out,
                        ckpt_error *err)
{
    ckpt__pickle_ctx ctx;
    pickle_ctx(f, &ctx, what, NULL);
    size_t used;
    int rc = ckpt__pickle_load(&ctx, f->map + *pos, (size_t)(f->size - *pos), out, &used, err);
    *pos += used;
    return rc;
}

static int open_legacy(ckpt_file *f, ckpt_error *err)
{
    uint64_t pos = 0;
    ckpt_value *v;
    int rc;
    if ((rc = legacy_small(f, &pos, "magic number", &v, err)))
        return rc;
    if (!ckpt__is_legacy_magic(v))
        return CKPT_FAIL(err, CKPT_EFORMAT, "legacy: wrong magic number");
    if ((rc = legacy_small(f, &pos, "protocol version", &v, err)))
        return rc;
    if (v->type != CKPT_T_INT || v->u.i != LEGACY_PROTOCOL_VERSION)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "legacy: protocol version is not %d",
                         LEGACY_PROTOCOL_VERSION);
    if ((rc = legacy_small(f, &pos, "sys_info", &v, err)))
        return rc;
    const ckpt_value *le = ckpt_dict_get(v, "little_endian");
    if (le && le->type == CKPT_T_BOOL && !le->u.b)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "big-endian checkpoints are not supported");

    ckpt__pickle_ctx ctx;
    pickle_ctx(f, &ctx, "main pickle", legacy_persistent_load);
    size_t used;
    if ((rc = ckpt__pickle_load(&ctx, f->map + pos, (size_t)(f->size - pos), &f->root, &used,
                                err)))
        return rc;
    pos += used;
    ckpt_value *keys;
    if ((rc = legacy_small(f, &pos, "storage key list", &keys, err)))
        return rc;
    if (keys->type != CKPT_T_LIST && keys->type != CKPT_T_TUPLE)
        return CKPT_CORRUPT(err, "legacy: the storage key list is a %s", ckpt_type_name(keys->type));

    /* The blobs follow in key-list order: int64 element count, then the bytes. */
    for (size_t k = 0; k < keys->u.seq.len; k++) {
        const char *key = pid_key(f, keys->u.seq.items[k], err);
        if (!key)
            return err ? err->status : CKPT_ECORRUPT;
        ckpt_storage *s = storage_find(f, key);
        if (!s || s->base)
            return CKPT_CORRUPT(err, "legacy: storage '%s' is listed but never used", key);
        if (s->located)
            return CKPT_CORRUPT(err, "legacy: storage '%s' is listed twice", key);
        if (f->size - pos < 8)
            return CKPT_CORRUPT(err, "legacy: storage '%s' runs past the end of the file", key);
        int64_t count;
        memcpy(&count, f->map + pos, 8); /* little-endian hosts only (see README) */
        pos += 8;
        uint64_t nbytes;
        if (count < 0 || ckpt__mul_overflow((uint64_t)count, ckpt_dtype_size(s->dtype), &nbytes) ||
            nbytes != s->nbytes)
            return CKPT_CORRUPT(err, "legacy: storage '%s' has wrong byte size", key);
        if (f->size - pos < nbytes)
            return CKPT_CORRUPT(err, "legacy: storage '%s' runs past the end of the file", key);
        s->file_offset = pos;
        s->located = true;
        pos += nbytes;
    }
    for (size_t k = 0; k < f->n_storages; k++) {
        ckpt_storage *s = f->storages[k];
        if (!s->base && !s->located)
            return CKPT_CORRUPT(err, "legacy: storage '%s' has no data", s->key);
    }
    f->format = CKPT_FORMAT_LEGACY;
    return CKPT_OK;
}

static int open_pickle(ckpt_file *f, ckpt_error *err)
{
    ckpt__pickle_ctx ctx;
    pickle_ctx(f, &ctx, "pickle", NULL);
    size_t used;
    int rc = ckpt__pickle_load(&ctx, f->map, (size_t)f->size, &f->root, &used, err);
    if (rc)
        return rc;
    f->format = CKPT_FORMAT_PICKLE;
    return CKPT_OK;
}

/* ---- open and close ---------------------------------------------------------------------- */

const char *ckpt__not_regular(unsigned m)
{
    if (S_ISDIR(m))
        return "is a directory";
    if (S_ISFIFO(m))
        return "is a FIFO, not a regular file";
    if (S_ISCHR(m))
        return "is a character device, not a regular file";
    if (S_ISBLK(m))
        return "is a block device, not a regular file";
    if (S_ISSOCK(m))
        return "is a socket, not a regular file";
    return "is not a regular file";
}

int ckpt__open_regular(const char *path, int *fd_out, uint64_t *size, ckpt_error *err)
{
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever,
     * before fstat could say what it is (and a tty's open could take the terminal). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return CKPT_FAIL(err, CKPT_EIO, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return CKPT_FAIL(err, CKPT_EIO, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return CKPT_FAIL(err, CKPT_EIO, "%s", ckpt__not_regular(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return CKPT_FAIL(err, CKPT_EIO, "cannot open: %s", strerror(e));
    }
    *fd_out = fd;
    *size = (uint64_t)st.st_size;
    return CKPT_OK;
}

int ckpt_open_input(const char *path, int *fd, uint64_t *size, ckpt_error *err)
{
    if (!path || !fd || !size)
        return CKPT_FAIL(err, CKPT_EINVAL, "no path or no place for the result");
    return ckpt__open_regular(path, fd, size, err);
}

int ckpt__file_map(ckpt_file *f, const char *path, ckpt_error *err)
{
    int fd = -1;
    int rc = ckpt__open_regular(path, &fd, &f->size, err);
    if (rc)
        return rc;
    if (f->size > 0) {
        void *m = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return CKPT_FAIL(err, CKPT_EIO, "cannot map: %s", strerror(e));
        }
        f->map = m;
    }
    if (f->map)
        f->fd = fd; /* for ckpt__file_read */
    else
        close(fd);
    return CKPT_OK;
}

ckpt_file *ckpt__file_new(const ckpt_options *opt, ckpt_error *err)
{
    ckpt__alloc a;
    ckpt__alloc_init(&a, opt);
    ckpt_file *f = ckpt__malloc(&a, sizeof *f);
    if (!f) {
        CKPT_NOMEM(err);
        return NULL;
    }
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->alloc = a;
    if (opt)
        f->opt = *opt;
    if (!f->opt.max_depth)
        f->opt.max_depth = CKPT_DEFAULT_MAX_DEPTH;
    if (!f->opt.max_memo)
        f->opt.max_memo = CKPT_DEFAULT_MAX_MEMO;
    if (!f->opt.max_alloc)
        f->opt.max_alloc = CKPT_DEFAULT_MAX_ALLOC;
    if (!f->opt.max_inflate)
        f->opt.max_inflate = CKPT_DEFAULT_MAX_INFLATE;
    f->arena = ckpt__arena_new(&f->alloc, f->opt.max_alloc);
    if (!f->arena) {
        ckpt__free(&a, f, sizeof *f);
        CKPT_NOMEM(err);
        return NULL;
    }
    return f;
}

/* Map one file and parse it by its kind. */
static int open_mapped(ckpt_file *f, const char *path, ckpt_error *err)
{
    int rc = ckpt__file_map(f, path, err);
    if (rc)
        return rc;
    switch (ckpt__detect(f->map, f->size, err)) {
    case CKPT__KIND_ZIP: rc = open_zip(f, err); break;
    case CKPT__KIND_LEGACY: rc = open_legacy(f, err); break;
    case CKPT__KIND_PICKLE:
        rc = ckpt__is_legacy_stream(f) ? open_legacy(f, err) : open_pickle(f, err);
        break;
    case CKPT__KIND_SAFETENSORS: rc = ckpt__safetensors_open(f, err); break;
    case CKPT__KIND_OTHER: rc = err ? err->status : CKPT_EFORMAT; break;
    }
    return rc;
}

int ckpt__open(const char *path, const ckpt_options *opt, ckpt_file **out, ckpt_file **partial,
               ckpt_error *err)
{
    *out = NULL;
    if (partial)
        *partial = NULL;
    if (!path)
        return CKPT_FAIL(err, CKPT_EINVAL, "no path given");
    ckpt_file *f = ckpt__file_new(opt, err);
    if (!f)
        return err ? err->status : CKPT_ENOMEM;
    int rc = CKPT_OK;
    if (ckpt__shards_path(path))
        rc = ckpt__shards_open(f, path, err);
    else
        rc = open_mapped(f, path, err);
    if (rc != CKPT_OK) {
        if (partial)
            *partial = f;
        else
            ckpt_close(f);
        return rc;
    }
    *out = f;
    return CKPT_OK;
}

int ckpt__open_single(const char *path, const ckpt_options *opt, ckpt_file **out,
                      ckpt_error *err)
{
    *out = NULL;
    ckpt_file *f = ckpt__file_new(opt, err);
    if (!f)
        return err ? err->status : CKPT_ENOMEM;
    int rc = open_mapped(f, path, err);
    if (rc != CKPT_OK) {
        ckpt_close(f);
        return rc;
    }
    *out = f;
    return CKPT_OK;
}

int ckpt_open(const char *path, const ckpt_options *opt, ckpt_file **out, ckpt_error *err)
{
    if (!out)
        return CKPT_FAIL(err, CKPT_EINVAL, "no place for the result");
    return ckpt__open(path, opt, out, NULL, err);
}

void ckpt_close(ckpt_file *f)
{
    if (!f)
        return;
    for (size_t k = 0; k < f->n_storages; k++)
        ckpt__free(&f->alloc, f->storages[k]->owned, f->storages[k]->entry
                                                         ? f->storages[k]->entry->usize : 0);
    ckpt__free(&f->alloc, f->pickle_owned, f->pickle_owned_size);
    for (size_t k = 0; k < f->n_parts; k++)
        ckpt_close(f->parts[k]);
    if (f->map)
        munmap((void *)f->map, (size_t)f->size);
    ckpt__file_close_fd(f);
    ckpt__alloc a = f->alloc;
    ckpt__arena_free(f->arena);
    ckpt__free(&a, f, sizeof *f);
}

ckpt_format ckpt_file_format(const ckpt_file *f) { return f->format; }
uint64_t ckpt_file_size(const ckpt_file *f) { return f->size; }
const ckpt_value *ckpt_root(const ckpt_file *f) { return f->root; }
const char *ckpt_file_zip_root(const ckpt_file *f) { return f->zip_root; }

size_t ckpt_globals(const ckpt_file *f, const ckpt_global_ref **out)
{
    *out = f->globals.items;
    return f->globals.len;
}

/* ---- storage bytes ----------------------------------------------------------------------- */

int ckpt__storage_bytes(ckpt_storage *s, const uint8_t **data, ckpt_error *err)
{
    if (s->data || s->nbytes == 0) {
        *data = s->data;
        return CKPT_OK;
    }
    ckpt_file *f = s->file;
    int rc;
    if (s->base) { /* a root: views of views are flattened when they are made */
        const uint8_t *b = NULL;
        if (s->base->base)
            return CKPT_CORRUPT(err, "storage '%s' is a view of a view", s->key);
        if ((rc = ckpt__storage_bytes(s->base, &b, err)))
            return rc;
        s->data = b + s->base_offset;
    } else if (s->entry) {
        if ((rc = ckpt__zip_read(f->map, f->size, s->entry, &f->alloc, f->opt.max_inflate,
                                 &s->data, &s->owned, err)))
            return rc;
    } else if (s->located) {
        s->data = f->map + s->file_offset;
    } else {
        return CKPT_CORRUPT(err, "storage '%s' has no data", s->key);
    }
    *data = s->data;
    return CKPT_OK;
}

/* ---- the mapping's pages ----------------------------------------------------------------- */

/* The file (f or a shard of it) whose mapping holds [p, p+n), or NULL. */
static const ckpt_file *mapping_of(const ckpt_file *f, const uint8_t *p, size_t n)
{
    for (size_t k = 0; f && k < f->n_parts; k++) {
        const ckpt_file *part = mapping_of(f->parts[k], p, n);
        if (part)
            return part;
    }
    if (!f || !f->map || !p || p < f->map || n > (size_t)(f->map + f->size - p))
        return NULL;
    return f;
}

/* The page-aligned part of [p, p+n) when it lies in f's mapping or a shard's (not in an
 * inflated entry's heap copy): the pages it touches (outer) or the pages wholly inside it. */
static bool mapped_range(const ckpt_file *f, const void *pv, size_t n, bool outer, uintptr_t *a,
                         uintptr_t *b)
{
    const uint8_t *p = pv;
    if (!mapping_of(f, p, n))
        return false;
    long ps = sysconf(_SC_PAGESIZE);
    if (ps <= 0)
        return false;
    uintptr_t mask = (uintptr_t)ps - 1;
    *a = outer ? (uintptr_t)p & ~mask : ((uintptr_t)p + mask) & ~mask;
    *b = outer ? ((uintptr_t)p + n + mask) & ~mask : ((uintptr_t)p + n) & ~mask;
    return *b > *a;
}

void ckpt__file_prefault(const ckpt_file *f, const void *p, size_t n)
{
#ifdef MADV_POPULATE_READ
    uintptr_t a, b;
    if (mapped_range(f, p, n, true, &a, &b))
        madvise((void *)a, b - a, MADV_POPULATE_READ); /* a hint: failure changes nothing */
#else
    (void)f;
    (void)p;
    (void)n;
#endif
}

void ckpt__file_release(const ckpt_file *f, const void *p, size_t n)
{
    uintptr_t a, b;
    if (mapped_range(f, p, n, false, &a, &b))
        madvise((void *)a, b - a, MADV_DONTNEED); /* advice only: a failure changes nothing */
}

int ckpt__file_read(const ckpt_file *f, const void *p, size_t n, void *dst, ckpt_error *err)
{
    const ckpt_file *m = mapping_of(f, p, n);
    if (!m || m->fd < 0)
        return 0;
    uint64_t off = (uint64_t)((const uint8_t *)p - m->map);
    uint8_t *d = dst;
    while (n > 0) {
        /* Linux moves at most 0x7ffff000 bytes a call */
        size_t want = n < ((size_t)1 << 30) ? n : (size_t)1 << 30;
        ssize_t got = pread(m->fd, d, want, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            CKPT_FAIL(err, CKPT_EIO, "cannot read: %s", strerror(errno));
            return -1;
        }
        if (got == 0) {
            CKPT_FAIL(err, CKPT_EIO, "the file ends at byte %llu, before the data it held "
                      "when it was opened: it changed while being read",
                      (unsigned long long)off);
            return -1;
        }
        d += got;
        off += (uint64_t)got;
        n -= (size_t)got;
    }
    return 1;
}

void ckpt__file_close_fd(ckpt_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
}

const char *ckpt_storage_key(const ckpt_storage *s) { return s->key; }
uint64_t ckpt_storage_nbytes(const ckpt_storage *s) { return s->nbytes; }
ckpt_dtype ckpt_storage_dtype(const ckpt_storage *s) { return s->dtype; }
