/* scan.c - list every global a file's pickles name, without trusting or running any of them.
 *
 * Unlike ckpt_open, the scanner does not need the file to be a valid checkpoint: it walks
 * every pickle it can find -- the five of a legacy file, every .pkl entry of any zip
 * (TorchScript and hand-made zips included), several pickles back to back in a bare stream,
 * the object arrays of .npy/.npz files -- and keeps the globals named before a malformed
 * pickle stops. Storages are replaced by placeholders that are never read. */
#include "internal.h"

#include <stdlib.h>
#include <strings.h>

#define SCAN_MAX_PICKLES 4096 /* pickles in one stream */

/* Every storage id becomes a placeholder large enough for any view: nothing is read. */
static int stub_persistent_load(void *ud, const ckpt_value *pid, ckpt_value **out,
                                ckpt_error *err)
{
    ckpt_file *f = ud;
    ckpt_dtype dt = CKPT_DT_UNTYPED;
    if (pid->type == CKPT_T_TUPLE && pid->u.seq.len >= 2 &&
        pid->u.seq.items[1]->type == CKPT_T_GLOBAL) {
        int d = ckpt_dtype_from_storage(pid->u.seq.items[1]->u.global.name);
        if (d >= 0)
            dt = (ckpt_dtype)d;
    }
    ckpt_storage *s = ckpt__arena_alloc(f->arena, sizeof *s);
    ckpt_value *v = s ? ckpt__value_new(f->arena, CKPT_T_STORAGE) : NULL;
    if (!v)
        return ckpt__arena_error(f->arena, err);
    s->file = f;
    s->key = "(scan)";
    s->dtype = dt;
    s->nbytes = INT64_MAX;
    v->u.storage = s;
    *out = v;
    return CKPT_OK;
}

/* Run up to max pickles from buf; the first failure is remembered and ends the stream. */
static void scan_stream(ckpt_file *f, const uint8_t *buf, size_t len, const char *where, int max,
                        const char **parse_error)
{
    size_t pos = 0;
    for (int n = 0; n < max && pos < len; n++) {
        ckpt__pickle_ctx ctx = {
            .arena = f->arena,
            .globals = &f->globals,
            .where = n == 0 ? where : ckpt__arena_printf(f->arena, "%s (pickle %d)", where, n + 1),
            .max_depth = f->opt.max_depth,
            .max_memo = f->opt.max_memo,
            .persistent_load = stub_persistent_load,
            .persistent_ud = f,
        };
        if (!ctx.where)
            ctx.where = where;
        ckpt_value *v;
        size_t used = 0;
        ckpt_error e;
        if (ckpt__pickle_load(&ctx, buf + pos, len - pos, &v, &used, &e) != CKPT_OK) {
            if (parse_error && !*parse_error)
                *parse_error = ckpt__arena_printf(f->arena, "%s (in %s)", e.message, ctx.where);
            return;
        }
        if (used == 0)
            return;
        pos += used;
    }
}

/* A .npy of dtype object holds a pickle after its header. Returns true if it had one. */
static bool npy_pickle(const uint8_t *p, uint64_t n, const uint8_t **pk, size_t *pklen)
{
    if (n < 10 || memcmp(p, "\x93NUMPY", 6) != 0)
        return false;
    uint64_t hlen, start;
    if (p[6] == 1) {
        hlen = (uint64_t)p[8] | (uint64_t)p[9] << 8;
        start = 10;
    } else if (n >= 12) {
        hlen = (uint64_t)p[8] | (uint64_t)p[9] << 8 | (uint64_t)p[10] << 16 | (uint64_t)p[11] << 24;
        start = 12;
    } else {
        return false;
    }
    if (hlen > n - start)
        return false;
    /* The header is a Python dict literal; object arrays say 'descr': '|O'. */
    const char *h = (const char *)p + start;
    bool object = false;
    for (uint64_t i = 0; i + 2 <= hlen; i++)
        if (h[i] == '|' && h[i + 1] == 'O')
            object = true;
    if (!object)
        return false;
    *pk = p + start + hlen;
    *pklen = (size_t)(n - start - hlen);
    return true;
}

static bool ends_with_ci(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

/* A pickle of protocol 2 or more starts with PROTO; torch never writes protocol 0/1 in zips. */
static bool looks_like_pickle(const uint8_t *p, uint64_t n)
{
    return n >= 2 && p[0] == 0x80 && p[1] <= 5;
}

bool ckpt__scan_entry(ckpt_file *f, const ckpt__zip_entry *e, const char **parse_error)
{
    bool by_name = ends_with_ci(e->name, ".pkl") || ends_with_ci(e->name, ".pickle");
    bool npy = ends_with_ci(e->name, ".npy");
    const uint8_t *data;
    void *owned = NULL;
    if (e->method == 0) {
        /* In place, whatever the flags claim: flipping the "encrypted" bit must not hide a
         * pickle from the scanner (ckpt__zip_place checks the range). */
        ckpt_error e1;
        if (!e->placed && ckpt__zip_place(f->map, f->size, (ckpt__zip_entry *)e, &e1) != CKPT_OK) {
            if (parse_error && !*parse_error)
                *parse_error = ckpt__arena_printf(f->arena, "%s", e1.message);
            return false;
        }
        data = f->map + e->data_offset;
    } else {
        if (!by_name && !npy)
            return false; /* not worth inflating every compressed member to peek */
        ckpt_error e2;
        if (ckpt__zip_read(f->map, f->size, e, &f->alloc, f->opt.max_inflate, &data, &owned,
                           &e2) != CKPT_OK) {
            if (parse_error && !*parse_error)
                *parse_error = ckpt__arena_printf(f->arena, "%s", e2.message);
            return false;
        }
    }
    uint64_t n = e->method == 0 ? e->csize : e->usize;
    const uint8_t *pk = data;
    size_t pklen = (size_t)n;
    bool found = false;
    if (npy) {
        if ((found = npy_pickle(data, n, &pk, &pklen)))
            scan_stream(f, pk, pklen, e->name, 1, parse_error);
    } else if (by_name || looks_like_pickle(data, n)) {
        found = true;
        scan_stream(f, pk, pklen, e->name, SCAN_MAX_PICKLES, parse_error);
    }
    ckpt__free(&f->alloc, owned, e->usize);
    return found;
}

static int scan_zip(ckpt_file *f, const char **parse_error, ckpt_error *err)
{
    /* Lazily, as ckpt_open does: one bad local header (of a tensor record, say) must not hide
     * the other entries' pickles, which torch.load would still run. */
    int rc = ckpt__zip_open_lazy(f->arena, f->map, f->size, &f->zip, err);
    if (rc)
        return rc;
    size_t found = 0, encrypted = 0;
    for (size_t k = 0; k < f->zip.n_entries; k++) {
        found += ckpt__scan_entry(f, &f->zip.entries[k], parse_error);
        encrypted += (f->zip.entries[k].flags & 1) != 0;
    }
    if (!found && !*parse_error)
        return CKPT_FAIL(err, CKPT_EFORMAT, "zip archive holds no pickle ckpt can read%s",
                         encrypted ? " (its entries are encrypted)" : "");
    return CKPT_OK;
}

int ckpt_scan(const char *path, const ckpt_options *opt, ckpt_scan_result **out, ckpt_error *err)
{
    *out = NULL;
    ckpt_file *f = ckpt__file_new(opt, err);
    if (!f)
        return err ? err->status : CKPT_ENOMEM;
    int rc = ckpt__file_map(f, path, err);
    if (rc) {
        ckpt_close(f);
        return rc;
    }
    const char *parse_error = NULL;
    ckpt_scan_result *r = ckpt__arena_alloc(f->arena, sizeof *r);
    if (!r) {
        rc = ckpt__arena_error(f->arena, err);
        ckpt_close(f);
        return rc;
    }
    ckpt_error derr;
    const uint8_t *pk;
    size_t pklen;
    switch (ckpt__detect(f->map, f->size, &derr)) {
    case CKPT__KIND_ZIP:
        r->format = "zip";
        rc = scan_zip(f, &parse_error, err);
        break;
    case CKPT__KIND_LEGACY:
        /* magic, protocol, sys_info, the object, the key list; storage bytes follow */
        r->format = "legacy";
        scan_stream(f, f->map, (size_t)f->size, "legacy stream", 5, &parse_error);
        break;
    case CKPT__KIND_PICKLE:
        if (ckpt__is_legacy_stream(f)) {
            r->format = "legacy";
            scan_stream(f, f->map, (size_t)f->size, "legacy stream", 5, &parse_error);
        } else {
            r->format = "pickle";
            scan_stream(f, f->map, (size_t)f->size, "pickle", SCAN_MAX_PICKLES, &parse_error);
        }
        break;
    case CKPT__KIND_SAFETENSORS:
        r->format = "safetensors"; /* no pickles: nothing can name a global */
        break;
    case CKPT__KIND_OTHER:
        if (npy_pickle(f->map, f->size, &pk, &pklen)) {
            r->format = "npy";
            scan_stream(f, pk, pklen, "npy object array", 1, &parse_error);
        } else {
            rc = err ? (*err = derr, derr.status) : derr.status;
        }
        break;
    }
    if (rc) {
        ckpt_close(f);
        return rc;
    }
    r->globals = f->globals.items;
    r->n_globals = f->globals.len;
    r->parse_error = parse_error;
    r->safe = true;
    for (size_t k = 0; k < r->n_globals; k++)
        if (r->globals[k].kind == CKPT_GLOBAL_UNKNOWN || r->globals[k].kind == CKPT_GLOBAL_DANGEROUS)
            r->safe = false;
    r->internal = f;
    *out = r;
    return CKPT_OK;
}

void ckpt_scan_free(ckpt_scan_result *r)
{
    if (r)
        ckpt_close(r->internal);
}
