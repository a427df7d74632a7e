/* scan.c - list every global that torch.load would import from a file, without trusting or
 * running any of it.
 *
 * The scan follows torch.load's own route (serialization.py, torch 1.13 to 2.x), never the
 * file's magic bytes, because a file can be two things at once:
 *
 *   1. "PK\3\4" at offset 0 (torch's _is_zipfile): a zip. torch reads <root>/data.pkl, <root>
 *      being the folder of the first entry, found case-insensitively as miniz does; a
 *      TorchScript archive (one with <root>/constants.pkl) goes to torch.jit.load, which reads
 *      constants.pkl and data.pkl. Those pickles are torch's route. Every other entry named
 *      *.pkl or *.pickle, any other STORED entry that starts like a pickle, and the object
 *      arrays of .npy entries are side pickles, scanned because other loaders run them. Tensor
 *      data records (<root>/data/...) and torch's raw records are never parsed, whatever their
 *      bytes look like. No other route exists for a zip: torch never falls back.
 *   2. Anything else is first tried as a torch 0.1.x tar (tarfile.open(mode='r:')): when the
 *      first 512-byte block is a valid tar header, torch extracts 'storages' (a count pickle,
 *      then per storage a (key, location, storage type) pickle and its raw bytes, then a views
 *      pickle), 'tensors' (a count pickle, then per tensor a pickle and a raw shape record) and
 *      'pickle' (the object), and runs every pickle in them. A tar error anywhere in the
 *      archive (a truncated member, a broken extended header) makes torch fall back to 3.
 *   3. Otherwise torch unpickles from offset 0. The first pickle always runs; only when its
 *      value is the legacy magic number do the protocol version, sys_info, the object and the
 *      storage key list follow, and after them come raw storage bytes. Bytes after the last
 *      pickle torch reads are reported, never parsed as more pickles.
 *
 * When route 2 is taken, route 3 is scanned as well (a polyglot whose tar structure Python
 * rejects where this reader accepts it must not hide a pickle); its globals are listed, and its
 * parse error only counts when no global was named before it. A pickle that fails before
 * naming any global imports nothing in Python either: a non-pickle file (safetensors, npy)
 * then keeps its own kind, and its verdict says what torch.load would do.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#define SCAN_MAX_NOTES 32          /* facts kept for the report; more are counted, not kept */
#define SCAN_MAX_RECORDS (1u << 24) /* storages or tensors a legacy tar member may claim */
#define LEGACY_PICKLES 5            /* magic, protocol, sys_info, object, storage keys */
#define TAR_BLOCK 512u
#define SCAN_MAX_PICKLES 4096       /* side pickles back to back after a STOP */

typedef struct scan {
    ckpt_file *f;
    const char *parse_error; /* the first error on torch's route */
    const char **notes;
    size_t n_notes, dropped_notes;
} scan;

static void note(scan *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(scan *s, const char *fmt, ...)
{
    if (!s->notes)
        return;
    if (s->n_notes == SCAN_MAX_NOTES) {
        s->dropped_notes++;
        return;
    }
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    const char *copy = ckpt__arena_strndup(s->f->arena, buf, strlen(buf));
    if (copy)
        s->notes[s->n_notes++] = copy;
}

static void route_error(scan *s, const char *where, const ckpt_error *e)
{
    if (!s->parse_error)
        s->parse_error = ckpt__arena_printf(s->f->arena, "%s (in %s)", e->message, where);
    if (!s->parse_error)
        s->parse_error = "out of memory";
}

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
    ckpt_storage *st = ckpt__arena_alloc(f->arena, sizeof *st);
    ckpt_value *v = st ? ckpt__value_new(f->arena, CKPT_T_STORAGE) : NULL;
    if (!v)
        return ckpt__arena_error(f->arena, err);
    st->file = f;
    st->key = "(scan)";
    st->dtype = dt;
    st->nbytes = INT64_MAX;
    v->u.storage = st;
    *out = v;
    return CKPT_OK;
}

/* One pickle at buf[0..len). On success *v is its value; *used is the bytes up to its STOP,
 * or on failure the offset of the opcode that failed. *named counts the globals it named. */
static int one_pickle(scan *s, const uint8_t *buf, size_t len, const char *where,
                      ckpt_value **v, size_t *used, size_t *named, ckpt_error *e)
{
    ckpt__pickle_ctx ctx = {
        .arena = s->f->arena,
        .globals = &s->f->globals,
        .where = where,
        .max_depth = s->f->opt.max_depth,
        .max_memo = s->f->opt.max_memo,
        .persistent_load = stub_persistent_load,
        .persistent_ud = s->f,
    };
    uint64_t before = s->f->globals.named;
    int rc = ckpt__pickle_load(&ctx, buf, len, v, used, e);
    if (named)
        *named = (size_t)(s->f->globals.named - before);
    return rc;
}

/* ---- numpy object arrays ------------------------------------------------------------------ */

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

/* A side pickle (one torch.load does not run): its globals are listed, its errors noted. */
static void side_pickle(scan *s, const uint8_t *buf, size_t len, const char *where)
{
    ckpt_value *v;
    size_t used, named;
    ckpt_error e;
    s->f->globals.side = true;
    int rc = one_pickle(s, buf, len, where, &v, &used, &named, &e);
    s->f->globals.side = false;
    if (rc != CKPT_OK)
        note(s, "%s stops early (%s); globals after that point were not seen", where,
             e.message);
}

/* Bytes after the last pickle torch reads: torch.load ignores them, but a second pickle there
 * runs under a loader that calls pickle.load again, so pickles are listed as side pickles
 * while they parse; whatever does not parse is only counted. */
static void trailing(scan *s, const uint8_t *buf, size_t len, const char *after)
{
    size_t pos = 0;
    int count = 0;
    while (pos < len && count < SCAN_MAX_PICKLES) {
        const char *where = ckpt__arena_printf(s->f->arena, "%s (pickle %d, after its STOP)",
                                               after, count + 2);
        ckpt_value *v;
        size_t used, named;
        ckpt_error e;
        s->f->globals.side = true;
        int rc = one_pickle(s, buf + pos, len - pos, where ? where : after, &v, &used, &named,
                            &e);
        s->f->globals.side = false;
        if (rc != CKPT_OK) {
            if (named)
                note(s, "%s stops early (%s); globals after that point were not seen",
                     where ? where : after, e.message);
            break;
        }
        pos += used;
        count++;
    }
    if (count)
        note(s, "%s is followed by %d more pickle%s: torch.load does not read %s, another "
             "pickle.load would", after, count, count == 1 ? "" : "s",
             count == 1 ? "it" : "them");
    if (pos < len)
        note(s, "%s is followed by %zu bytes that torch.load does not read", count ?
             "the last pickle" : after, len - pos);
}

/* ---- route 1: zip archives ---------------------------------------------------------------- */

static bool ends_with_ci(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

/* A pickle of protocol 2 or more starts with PROTO. */
static bool looks_like_pickle(const uint8_t *p, uint64_t n)
{
    return n >= 2 && p[0] == 0x80 && p[1] >= 2 && p[1] <= 5;
}

/* Is name <root>/<rest>, case-insensitively (miniz's lookup)? */
static bool is_record(const char *name, const char *root, size_t root_len, const char *rest)
{
    return root && strncasecmp(name, root, root_len) == 0 && name[root_len] == '/' &&
           strcasecmp(name + root_len + 1, rest) == 0;
}

/* Tensor data and torch's raw records: never pickles, whatever their first bytes are. */
static bool is_raw_record(const char *name, const char *root, size_t root_len)
{
    if (!root || strncasecmp(name, root, root_len) != 0 || name[root_len] != '/')
        return false;
    const char *rest = name + root_len + 1;
    return strncmp(rest, "data/", 5) == 0 || strncmp(rest, ".data/", 6) == 0 ||
           strcmp(rest, "version") == 0 || strcmp(rest, "byteorder") == 0 ||
           strncmp(rest, "code/", 5) == 0 || strncmp(rest, "extra/", 6) == 0;
}

/* The bytes of entry e, in place or inflated; NULL with a note when they cannot be had. */
static const uint8_t *entry_bytes(scan *s, const ckpt__zip_entry *e, bool torch_route,
                                  uint64_t *n, void **owned)
{
    ckpt_file *f = s->f;
    ckpt_error e1;
    *owned = NULL;
    if (e->method == 0) {
        /* In place, whatever the flags claim: flipping the "encrypted" bit must not hide a
         * pickle from the scanner (ckpt__zip_place checks the range). */
        if (!e->placed &&
            ckpt__zip_place(f->map, f->size, (ckpt__zip_entry *)e, &e1) != CKPT_OK)
            goto fail;
        *n = e->csize;
        return f->map + e->data_offset;
    }
    const uint8_t *data;
    if (ckpt__zip_read(f->map, f->size, e, &f->alloc, f->opt.max_inflate, &data, owned,
                       &e1) != CKPT_OK)
        goto fail;
    *n = e->usize;
    return data;
fail:
    if (torch_route)
        route_error(s, e->name, &e1);
    else
        note(s, "%s cannot be read (%s)", e->name, e1.message);
    return NULL;
}

static int scan_zip(scan *s, const char **format, ckpt_error *err)
{
    ckpt_file *f = s->f;
    /* Lazily, as ckpt_open does: one bad local header (of a tensor record, say) must not hide
     * the other entries' pickles, which torch.load would still run. */
    int rc = ckpt__zip_open_scan(f->arena, f->map, f->size, &f->zip, err);
    if (rc)
        return rc;
    if (f->zip.duplicate)
        note(s, "entry '%s' appears more than once: torch reads one copy or another, so every "
             "copy was scanned (other ckpt commands refuse the file)", f->zip.duplicate);
    /* torch takes the archive's name from its first entry and refuses one outside a folder */
    const char *first = f->zip.n_entries ? f->zip.entries[0].name : "";
    const char *slash = strchr(first, '/');
    const char *root = slash ? ckpt__arena_strndup(f->arena, first, (size_t)(slash - first))
                             : NULL;
    size_t root_len = root ? strlen(root) : 0;
    bool torchscript = false;
    for (size_t k = 0; k < f->zip.n_entries; k++)
        torchscript = torchscript || is_record(f->zip.entries[k].name, root, root_len,
                                               "constants.pkl");
    *format = torchscript ? "torchscript" : "zip";

    size_t torch_pickles = 0, side = 0;
    for (size_t k = 0; k < f->zip.n_entries; k++) {
        const ckpt__zip_entry *e = &f->zip.entries[k];
        bool route = is_record(e->name, root, root_len, "data.pkl") ||
                     (torchscript && is_record(e->name, root, root_len, "constants.pkl"));
        bool by_name = ends_with_ci(e->name, ".pkl") || ends_with_ci(e->name, ".pickle");
        bool npy = ends_with_ci(e->name, ".npy");
        if (!route && is_raw_record(e->name, root, root_len))
            continue;
        /* Not worth inflating every compressed member to peek at its first bytes. */
        if (!route && !by_name && !npy && e->method != 0)
            continue;
        uint64_t n;
        void *owned;
        const uint8_t *data = entry_bytes(s, e, route, &n, &owned);
        if (!data)
            continue;
        const uint8_t *pk;
        size_t pklen;
        if (route) {
            torch_pickles++;
            ckpt_value *v;
            size_t used;
            ckpt_error pe;
            if (one_pickle(s, data, (size_t)n, e->name, &v, &used, NULL, &pe) != CKPT_OK)
                route_error(s, e->name, &pe);
            else if (used < n)
                trailing(s, data + used, (size_t)(n - used), e->name);
        } else if (npy && npy_pickle(data, n, &pk, &pklen)) {
            side++;
            side_pickle(s, pk, pklen, e->name);
        } else if (by_name || looks_like_pickle(data, n)) {
            side++;
            side_pickle(s, data, (size_t)n, e->name);
        }
        ckpt__free(&f->alloc, owned, e->usize);
    }
    if (!torch_pickles) {
        if (!root)
            note(s, "the archive's first entry is not in a folder: torch.load refuses it "
                 "without running a pickle");
        else
            note(s, "the archive has no '%s/data.pkl': torch.load refuses it without running "
                 "a pickle", root);
    }
    if (!torch_pickles && !side && !s->parse_error) {
        size_t encrypted = 0;
        for (size_t k = 0; k < f->zip.n_entries; k++)
            encrypted += (f->zip.entries[k].flags & 1) != 0;
        return CKPT_FAIL(err, CKPT_EFORMAT, "zip archive holds no pickle ckpt can read%s",
                         encrypted ? " (its entries are encrypted)" : "");
    }
    return CKPT_OK;
}

/* ---- route 2: torch 0.1.x tar files ------------------------------------------------------- */
/*
 * A tar archive is a sequence of 512-byte headers, each followed by its member's data padded
 * to 512 bytes:
 *
 *   offset  size  field
 *        0   100  name, NUL-terminated unless it fills the field
 *      124    12  size: octal text, or base-256 when the first byte is 0x80
 *      148     8  checksum: octal text; the byte sum of the header with this field as spaces
 *      156     1  type: '0' or NUL regular, '1' hard link, '2' symlink, '5' directory,
 *                 'L' GNU long name of the next member, 'x' pax header of the next member,
 *                 'g' pax header of all following members
 *      157   100  link target
 *      257     6  "ustar" magic (POSIX), then version
 *      345   155  name prefix (POSIX): the name is prefix + "/" + name
 *
 * Python's tarfile accepts the archive when the first header's checksum holds (unsigned or
 * signed byte sum); a bad header later ends the member list, a zero block ends it, and a member
 * whose data runs past the end raises a tar error.
 */

typedef enum { TAR_NOT, TAR_OK, TAR_BROKEN } tar_kind;

typedef struct tar_member {
    const char *name;
    uint8_t type;
    const char *link;
    uint64_t offset, size; /* of its data */
    bool found;
} tar_member;

/* Python's int(text, 8) after tarfile's nts(): up to the first NUL, ASCII, surrounding white
 * space stripped, an optional sign and "0o" prefix, single underscores between digits. */
static bool tar_octal(const uint8_t *p, size_t n, int64_t *out)
{
    size_t end = 0;
    while (end < n && p[end])
        end++;
    size_t i = 0;
    static const char ws[] = " \t\n\r\v\f\x1c\x1d\x1e\x1f";
    while (i < end && strchr(ws, p[i]))
        i++;
    while (end > i && strchr(ws, p[end - 1]))
        end--;
    if (i == end) {
        *out = 0; /* int("" or "0") */
        return true;
    }
    bool neg = false;
    if (p[i] == '+' || p[i] == '-')
        neg = p[i++] == '-';
    if (i + 1 < end && p[i] == '0' && (p[i + 1] == 'o' || p[i + 1] == 'O')) {
        i += 2;
        if (i < end && p[i] == '_')
            i++;
    }
    if (i == end)
        return false;
    uint64_t v = 0;
    bool digit = false;
    for (; i < end; i++) {
        if (p[i] == '_' && digit && i + 1 < end && p[i + 1] != '_') {
            digit = false;
            continue;
        }
        if (p[i] < '0' || p[i] > '7' || v > (UINT64_MAX >> 4))
            return false;
        v = v * 8 + (uint64_t)(p[i] - '0');
        digit = true;
    }
    if (!digit || v > INT64_MAX)
        return false;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

/* tarfile's nti(): base-256 when the first byte is 0x80 (positive) or 0xff (negative). */
static bool tar_number(const uint8_t *p, size_t n, int64_t *out)
{
    if (p[0] != 0x80 && p[0] != 0xff)
        return tar_octal(p, n, out);
    uint64_t v = 0;
    for (size_t i = 1; i < n; i++) {
        if (v > (UINT64_MAX >> 8))
            return false;
        v = v << 8 | p[i];
    }
    if (p[0] == 0xff)
        return false; /* negative: no size, no checksum */
    if (v > INT64_MAX)
        return false;
    *out = (int64_t)v;
    return true;
}

static bool tar_header_valid(const uint8_t *h, int64_t *size)
{
    int64_t sum;
    if (!tar_number(h + 148, 8, &sum))
        return false;
    int64_t usum = 256, ssum = 256; /* the checksum field counts as eight spaces */
    for (size_t i = 0; i < TAR_BLOCK; i++) {
        if (i >= 148 && i < 156)
            continue;
        usum += h[i];
        ssum += (int8_t)h[i];
    }
    if (sum != usum && sum != ssum)
        return false;
    return tar_number(h + 124, 12, size);
}

static const char *tar_field(scan *s, const uint8_t *p, size_t n)
{
    size_t len = 0;
    while (len < n && p[len])
        len++;
    return ckpt__arena_strndup(s->f->arena, (const char *)p, len);
}

/* The "path" and "size" records of a pax header ("%d path=...\n" records). */
static void tar_pax(scan *s, const uint8_t *p, uint64_t n, const char **path, int64_t *size)
{
    uint64_t i = 0;
    while (i < n) {
        uint64_t len = 0, j = i;
        while (j < n && p[j] >= '0' && p[j] <= '9' && len < n)
            len = len * 10 + (uint64_t)(p[j++] - '0');
        if (j >= n || p[j] != ' ' || len <= j - i || len > n - i)
            return;
        const uint8_t *kv = p + j + 1, *end = p + i + len;
        const uint8_t *eq = memchr(kv, '=', (size_t)(end - kv));
        if (!eq)
            return;
        size_t vlen = (size_t)(end - eq - 1);
        if (vlen && eq[vlen] == '\n')
            vlen--;
        if (eq - kv == 4 && memcmp(kv, "path", 4) == 0) {
            *path = ckpt__arena_strndup(s->f->arena, (const char *)eq + 1, vlen);
        } else if (eq - kv == 4 && memcmp(kv, "size", 4) == 0) {
            char buf[24];
            if (vlen < sizeof buf) {
                memcpy(buf, eq + 1, vlen);
                buf[vlen] = 0;
                char *e;
                long long x = strtoll(buf, &e, 10);
                if (*e == 0 && x >= 0)
                    *size = x;
            }
        }
        i += len;
    }
}

/* Walk the members as tarfile does, keeping the last occurrence of each name torch extracts
 * (and, for links, resolving them to the member they name). */
static tar_kind tar_walk(scan *s, tar_member want[3])
{
    const uint8_t *map = s->f->map;
    uint64_t size = s->f->size, off = 0;
    const char *next_name = NULL, *global_name = NULL;
    int64_t next_size = -1, global_size = -1;
    static const char *const names[3] = {"storages", "tensors", "pickle"};
    while (size - off >= TAR_BLOCK) {
        const uint8_t *h = map + off;
        bool zero = true;
        for (size_t i = 0; i < TAR_BLOCK && zero; i++)
            zero = h[i] == 0;
        int64_t hsize;
        if (zero || !tar_header_valid(h, &hsize) || hsize < 0)
            return off == 0 ? TAR_NOT : TAR_OK;
        uint8_t type = h[156];
        const char *name = tar_field(s, h, 100);
        const char *prefix = tar_field(s, h + 345, 155);
        const char *link = tar_field(s, h + 157, 100);
        if (!name || !prefix || !link)
            return TAR_BROKEN;
        bool gnu = type == 'L' || type == 'K' || type == 'S';
        if (*prefix && !gnu)
            name = ckpt__arena_printf(s->f->arena, "%s/%s", prefix, name);
        uint64_t data = off + TAR_BLOCK;
        uint64_t claimed = (uint64_t)hsize;
        if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
            if (claimed > size - data)
                return TAR_BROKEN; /* an extended header runs past the end: a tar error */
            if (type == 'L')
                next_name = tar_field(s, map + data, (size_t)claimed);
            else if (type == 'x')
                tar_pax(s, map + data, claimed, &next_name, &next_size);
            else if (type == 'g')
                tar_pax(s, map + data, claimed, &global_name, &global_size);
            off = data + ((claimed + TAR_BLOCK - 1) / TAR_BLOCK) * TAR_BLOCK;
            if (off > size)
                return TAR_BROKEN;
            continue;
        }
        if (next_name || global_name)
            name = next_name ? next_name : global_name;
        if (next_size >= 0 || global_size >= 0)
            claimed = (uint64_t)(next_size >= 0 ? next_size : global_size);
        next_name = NULL;
        next_size = -1;
        if (!name)
            return TAR_BROKEN;
        size_t nl = strlen(name);
        bool dir = type == '5' || (type == 0 && nl && name[nl - 1] == '/');
        bool special = type == '1' || type == '2' || type == '3' || type == '4' || type == '5' ||
                       type == '6';
        /* Regular files and types tarfile does not know carry data; the others do not. */
        bool has_data = !dir && !special;
        for (int k = 0; k < 3; k++) {
            if (strcmp(name, names[k]) == 0) {
                want[k] = (tar_member){name, dir ? (uint8_t)'5' : type, link, data,
                                       has_data ? claimed : 0, true};
            }
        }
        if (has_data) {
            /* tarfile checks that the padded data is there before the next header */
            uint64_t padded = claimed + (TAR_BLOCK - claimed % TAR_BLOCK) % TAR_BLOCK;
            if (claimed > size - data || padded > size - data)
                return TAR_BROKEN; /* "unexpected end of data" */
            off = data + padded;
        } else {
            off = data;
        }
    }
    return off == 0 ? TAR_NOT : TAR_OK;
}

/* A link member is followed to the regular member it names, as extractfile does. */
static bool tar_resolve(scan *s, tar_member *m)
{
    for (int hops = 0; m->found && (m->type == '1' || m->type == '2') && hops < 8; hops++) {
        const char *target = m->link;
        /* walk again, remembering the last member called target before m */
        const uint8_t *map = s->f->map;
        uint64_t size = s->f->size, off = 0;
        tar_member hit = {0};
        while (size - off >= TAR_BLOCK && off + TAR_BLOCK <= m->offset) {
            const uint8_t *h = map + off;
            int64_t hsize;
            if (!tar_header_valid(h, &hsize) || hsize < 0)
                break;
            const char *name = tar_field(s, h, 100);
            uint8_t type = h[156];
            uint64_t data = off + TAR_BLOCK;
            bool has_data = !(type >= '1' && type <= '6');
            if (name && strcmp(name, target) == 0)
                hit = (tar_member){name, type, tar_field(s, h + 157, 100), data,
                                   has_data ? (uint64_t)hsize : 0, true};
            if (!has_data)
                hsize = 0;
            if ((uint64_t)hsize > size - data)
                break;
            off = data + (((uint64_t)hsize + TAR_BLOCK - 1) / TAR_BLOCK) * TAR_BLOCK;
        }
        if (!hit.found || !hit.link) {
            note(s, "tar member '%s' links to '%s', which is not in the archive", m->name,
                 target);
            return false;
        }
        *m = hit;
    }
    return m->found && m->type != '5' && m->type != '1' && m->type != '2';
}

/* A pickle on torch's route inside a tar member; false (error recorded) when it fails. */
static bool tar_pickle(scan *s, const tar_member *m, uint64_t *pos, const char *what,
                       ckpt_value **v)
{
    const char *where = ckpt__arena_printf(s->f->arena, "tar member '%s' (%s)", m->name, what);
    if (!where)
        where = m->name;
    size_t used;
    ckpt_error e;
    if (*pos >= m->size) {
        CKPT_CORRUPT(&e, "tar: member '%s' ends before its %s", m->name, what);
        route_error(s, where, &e);
        return false;
    }
    if (one_pickle(s, s->f->map + m->offset + *pos, (size_t)(m->size - *pos), where, v, &used,
                   NULL, &e) != CKPT_OK) {
        route_error(s, where, &e);
        return false;
    }
    *pos += used;
    return true;
}

/* What torch does with a value it needs to be of one shape: a plain value of another shape
 * makes it raise (the route ends, nothing more runs); a recorded call may return anything at
 * run time, so the walk cannot follow it and the file cannot be called safe. */
static void tar_stop(scan *s, const tar_member *m, const ckpt_value *v, const char *what)
{
    if (v->type == CKPT_T_OBJECT) {
        ckpt_error e;
        CKPT_FAIL(&e, CKPT_EUNSUPPORTED, "tar: the %s of member '%s' is computed by a call, "
                  "so what torch.load reads after it cannot be known", what, m->name);
        route_error(s, m->name, &e);
    } else {
        note(s, "tar member '%s': the %s is not what torch.load expects; it stops there",
             m->name, what);
    }
}

static bool tar_count(scan *s, const tar_member *m, const ckpt_value *v, int64_t *n)
{
    if (v->type == CKPT_T_INT && v->u.i >= 0 && v->u.i <= SCAN_MAX_RECORDS) {
        *n = v->u.i;
        return true;
    }
    tar_stop(s, m, v, "record count");
    return false;
}

static bool tar_skip(scan *s, const tar_member *m, uint64_t *pos, uint64_t n)
{
    if (n > m->size - *pos) {
        ckpt_error e;
        CKPT_CORRUPT(&e, "tar: member '%s' ends inside a raw record", m->name);
        route_error(s, m->name, &e);
        return false;
    }
    *pos += n;
    return true;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* storages: count, then per storage (key, location, type) and u64 element count + bytes;
 * then the views pickle. */
static void tar_storages(scan *s, const tar_member *m)
{
    uint64_t pos = 0;
    ckpt_value *v;
    int64_t n;
    if (!tar_pickle(s, m, &pos, "storage count", &v) || !tar_count(s, m, v, &n))
        return;
    for (int64_t i = 0; i < n; i++) {
        if (!tar_pickle(s, m, &pos, "storage record", &v))
            return;
        int dt = -1;
        if (v->type == CKPT_T_TUPLE && v->u.seq.len == 3 &&
            v->u.seq.items[2]->type == CKPT_T_GLOBAL)
            dt = ckpt_dtype_from_storage(v->u.seq.items[2]->u.global.name);
        if (dt < 0) {
            tar_stop(s, m, v, "storage record");
            return;
        }
        size_t elsize = ckpt_dtype_size((ckpt_dtype)dt);
        uint64_t pos8 = pos;
        if (!tar_skip(s, m, &pos, 8))
            return;
        uint64_t count = le64(s->f->map + m->offset + pos8);
        if (count > UINT64_MAX / elsize || !tar_skip(s, m, &pos, count * elsize))
            return;
    }
    tar_pickle(s, m, &pos, "storage views", &v);
}

/* tensors: count, then per tensor a pickle and i32 ndim, 4 bytes, ndim sizes and strides
 * (i64), an i64 storage offset. */
static void tar_tensors(scan *s, const tar_member *m)
{
    uint64_t pos = 0;
    ckpt_value *v;
    int64_t n;
    if (!tar_pickle(s, m, &pos, "tensor count", &v) || !tar_count(s, m, v, &n))
        return;
    for (int64_t i = 0; i < n; i++) {
        if (!tar_pickle(s, m, &pos, "tensor record", &v))
            return;
        if (v->type != CKPT_T_TUPLE || v->u.seq.len != 3) {
            tar_stop(s, m, v, "tensor record");
            return;
        }
        uint64_t pos4 = pos;
        if (!tar_skip(s, m, &pos, 8))
            return;
        const uint8_t *p = s->f->map + m->offset + pos4;
        int32_t ndim = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                 (uint32_t)p[3] << 24);
        if (ndim < 0 || !tar_skip(s, m, &pos, (uint64_t)ndim * 16 + 8)) {
            if (ndim < 0) {
                ckpt_error e;
                CKPT_CORRUPT(&e, "tar: a tensor record of member '%s' has %d dimensions",
                             m->name, (int)ndim);
                route_error(s, m->name, &e);
            }
            return;
        }
    }
}

/* ---- route 3: pickles from offset 0 ------------------------------------------------------- */

/* The pickles torch.load runs from offset 0. Returns the globals they named; *format becomes
 * "legacy" or "pickle". With quiet, a failure of the first pickle before any global is named
 * is not recorded (the caller decides what it means); *first_failed says whether it failed. */
static size_t scan_stream(scan *s, bool quiet, const char **format, bool *first_failed,
                          size_t *fail_at, ckpt_error *first_err)
{
    const uint8_t *map = s->f->map;
    size_t len = (size_t)s->f->size, pos = 0, used, named, total = 0;
    ckpt_value *v;
    *first_failed = false;
    *format = "pickle";
    if (one_pickle(s, map, len, "pickle", &v, &used, &named, first_err) != CKPT_OK) {
        *first_failed = true;
        *fail_at = used;
        if (!quiet || named)
            route_error(s, "pickle", first_err);
        return named;
    }
    total += named;
    pos = used;
    if (ckpt__is_legacy_magic(v)) {
        static const char *const what[LEGACY_PICKLES] = {
            "magic number", "protocol version", "sys_info", "legacy object", "storage keys"};
        *format = "legacy";
        for (int k = 1; k < LEGACY_PICKLES; k++) {
            ckpt_error e;
            if (one_pickle(s, map + pos, len - pos, what[k], &v, &used, &named, &e) !=
                CKPT_OK) {
                route_error(s, what[k], &e);
                return total + named;
            }
            total += named;
            pos += used;
        }
        return total; /* raw storage bytes follow */
    }
    /* A recorded call (eval('0x1950a86a20f9469cfc6c')) may return the magic number at run
     * time, and torch then reads four more pickles: the pickles that follow are listed. */
    if (v->type == CKPT_T_OBJECT)
        note(s, "the first pickle's value is computed by a call; if it returns the legacy "
             "magic number, torch.load goes on to the pickles after it");
    if (pos < len)
        trailing(s, map + pos, len - pos, "the pickle");
    return total;
}

static const char *kind_name(ckpt__kind k)
{
    switch (k) {
    case CKPT__KIND_SAFETENSORS: return "safetensors";
    case CKPT__KIND_LEGACY: return "legacy";
    default: return "pickle";
    }
}

static int scan_file(scan *s, const char **format, ckpt_error *err)
{
    ckpt_file *f = s->f;
    if (f->size >= 4 && memcmp(f->map, "PK\x03\x04", 4) == 0)
        return scan_zip(s, format, err);

    tar_member want[3] = {{0}};
    tar_kind tar = tar_walk(s, want);
    if (tar == TAR_OK) {
        *format = "tar";
        for (int k = 0; k < 3; k++) {
            if (!want[k].found) {
                note(s, "the tar archive has no member '%s': torch.load stops there",
                     k == 0 ? "storages" : k == 1 ? "tensors" : "pickle");
                continue;
            }
            if (!tar_resolve(s, &want[k]))
                continue;
            if (k == 0)
                tar_storages(s, &want[0]);
            else if (k == 1)
                tar_tensors(s, &want[1]);
            else {
                uint64_t pos = 0;
                ckpt_value *v;
                tar_pickle(s, &want[2], &pos, "object", &v);
            }
        }
        /* The same bytes read as a pickle, in case Python's tarfile disagrees about the
         * structure: its globals count, its failure only when it named any. */
        const char *pformat;
        bool failed;
        size_t at;
        ckpt_error e;
        scan_stream(s, true, &pformat, &failed, &at, &e);
        return CKPT_OK;
    }
    if (tar == TAR_BROKEN)
        note(s, "the file starts with a tar header, but its archive is broken: torch.load "
             "falls back to reading it as a pickle");

    ckpt_error derr;
    ckpt__kind kind = ckpt__detect(f->map, f->size, &derr);
    bool failed;
    size_t at;
    ckpt_error e;
    size_t named = scan_stream(s, true, format, &failed, &at, &e);
    if (!failed)
        return CKPT_OK;
    if (named) /* recorded by scan_stream: the file names globals, then breaks */
        return CKPT_OK;
    /* torch.load stops at byte `at` with an unpickling error, before importing anything. */
    const uint8_t *pk;
    size_t pklen;
    if (npy_pickle(f->map, f->size, &pk, &pklen)) {
        *format = "npy";
        note(s, "torch.load stops at byte %zu without importing anything; "
             "numpy.load(allow_pickle=True) would run its object array's pickle", at);
        ckpt_value *v;
        size_t used;
        ckpt_error pe;
        if (one_pickle(s, pk, pklen, "npy object array", &v, &used, NULL, &pe) != CKPT_OK)
            route_error(s, "npy object array", &pe);
        return CKPT_OK;
    }
    if (kind == CKPT__KIND_SAFETENSORS) {
        *format = kind_name(kind);
        note(s, "torch.load stops at byte %zu without importing anything", at);
        return CKPT_OK;
    }
    if (kind == CKPT__KIND_OTHER) /* a kind ckpt names: a PNG, an HTML page, ... */
        return err ? (*err = derr, derr.status) : derr.status;
    *format = kind_name(kind);
    route_error(s, *format, &e);
    return CKPT_OK;
}

bool ckpt__scan_entry(ckpt_file *f, const ckpt__zip_entry *e, const char **parse_error)
{
    scan s = {.f = f};
    bool by_name = ends_with_ci(e->name, ".pkl") || ends_with_ci(e->name, ".pickle");
    bool npy = ends_with_ci(e->name, ".npy");
    if (!by_name && !npy && e->method != 0)
        return false;
    uint64_t n;
    void *owned;
    const uint8_t *data = entry_bytes(&s, e, true, &n, &owned);
    bool found = false;
    const uint8_t *pk;
    size_t pklen;
    ckpt_value *v;
    size_t used;
    ckpt_error pe;
    if (data && npy && npy_pickle(data, n, &pk, &pklen)) {
        found = true;
        if (one_pickle(&s, pk, pklen, e->name, &v, &used, NULL, &pe) != CKPT_OK)
            route_error(&s, e->name, &pe);
    } else if (data && !npy && (by_name || looks_like_pickle(data, n))) {
        found = true;
        if (one_pickle(&s, data, (size_t)n, e->name, &v, &used, NULL, &pe) != CKPT_OK)
            route_error(&s, e->name, &pe);
    }
    if (data)
        ckpt__free(&f->alloc, owned, e->usize);
    if (parse_error && !*parse_error)
        *parse_error = s.parse_error;
    return found;
}

int ckpt_scan(const char *path, const ckpt_options *opt, ckpt_scan_result **out, ckpt_error *err)
{
    *out = NULL;
    ckpt_file *f = ckpt__file_new(opt, err);
    if (!f)
        return err ? err->status : CKPT_ENOMEM;
    int rc = ckpt__file_map(f, path, err);
    ckpt_scan_result *r = rc ? NULL : ckpt__arena_alloc(f->arena, sizeof *r);
    const char **notes = r ? ckpt__arena_alloc(f->arena, SCAN_MAX_NOTES * sizeof *notes) : NULL;
    if (!rc && !notes)
        rc = ckpt__arena_error(f->arena, err);
    if (rc) {
        ckpt_close(f);
        return rc;
    }
    scan s = {.f = f, .notes = notes};
    const char *format = NULL;
    if ((rc = scan_file(&s, &format, err))) {
        ckpt_close(f);
        return rc;
    }
    if (s.dropped_notes) {
        s.n_notes--;
        note(&s, "%zu more notes not shown", s.dropped_notes + 1);
    }
    r->format = format;
    r->globals = f->globals.items;
    r->n_globals = f->globals.len;
    r->parse_error = s.parse_error;
    r->notes = s.notes;
    r->n_notes = s.n_notes;
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
