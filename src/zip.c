/*
 * zip.c - the zip container of torch.save files (docs/FORMAT.md §2), read the way torch's miniz
 * reads it: through the central directory only. torch writes local headers with zero sizes and
 * CRCs followed by data descriptors (§2.3), so the local header is used for nothing but the
 * length of its name and extra field, which place the data.
 *
 * Layout parsed (integers little-endian, offsets from the start of the file):
 *
 *   local header, name, extra, data        one per entry, anywhere before the directory
 *   central directory header, name, extra, comment      one per entry
 *   zip64 end of central directory record  optional (torch always writes it)
 *   zip64 end of central directory locator optional, the 20 bytes just before the EOCD
 *   end of central directory record (EOCD), comment of at most 65535 bytes
 *
 *   local header  30 B: u32 0x04034b50, u16 needed, u16 flags, u16 method, u16 time, u16 date,
 *                 u32 crc, u32 csize, u32 usize, u16 name len, u16 extra len
 *   central hdr   46 B: u32 0x02014b50, u16 made by, u16 needed, u16 flags, u16 method,
 *                 u16 time, u16 date, u32 crc, u32 csize, u32 usize, u16 name len,
 *                 u16 extra len, u16 comment len, u16 disk, u16 int attr, u32 ext attr,
 *                 u32 local header offset
 *   zip64 extra   u16 0x0001, u16 len, then u64 usize, u64 csize, u64 offset: each present
 *                 only when its 32-bit field in the central header is 0xFFFFFFFF, in this order
 *   zip64 EOCD    56 B+: u32 0x06064b50, u64 record size - 12, u16 made by, u16 needed,
 *                 u32 disk, u32 cd disk, u64 entries on disk, u64 entries, u64 cd size,
 *                 u64 cd offset
 *   zip64 locator 20 B: u32 0x07064b50, u32 disk of zip64 EOCD, u64 its offset, u32 disks
 *   EOCD          22 B: u32 0x06054b50, u16 disk, u16 cd disk, u16 entries on disk,
 *                 u16 entries, u32 cd size, u32 cd offset, u16 comment len
 *
 * Choices, each made to see the file exactly as torch does (a scanner that read another
 * directory than torch could be fooled) or to fail safely where torch would misbehave:
 *  - the EOCD is the last signature in the final 65535 + 22 bytes whose 22 bytes fit in the
 *    file, as miniz finds it; the comment length is not compared with the file size;
 *  - names in local headers are not compared with the central directory (torch ignores them);
 *  - with duplicate names (case-insensitively), lookups return the first in directory order;
 *  - STORED entries are returned in place and their CRC is not verified: torch does not
 *    verify it either, and checking it would touch every page of every tensor at open;
 *  - DEFLATE entries are inflated whole and their CRC is verified;
 *  - multi-disk archives, which miniz refuses, are refused.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <time.h>
#include <zlib.h>

/* ---- limits and record sizes -------------------------------------------------------------- */

#define ZIP_DEFLATE_MAX_RATIO 1032 /* the most DEFLATE can expand, asymptotically */
#define ZIP_DEFLATE_SLACK 1024     /* and what a short stream may add to that */

#define CKPT__ZIP_MAX_ENTRIES (1u << 20) /* entries in one archive */
#define ZIP_MAX_COMMENT 65535u           /* the EOCD comment length is a u16 */
#define ZIP_NAME_SHOWN 120               /* bytes of an entry name quoted in a message */
#define ZIP_INFLATE_CHUNK (1u << 30)     /* zlib counts in uInt: feed it at most this */

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_ZIP64_EOCD 0x06064b50u
#define SIG_ZIP64_LOCATOR 0x07064b50u

#define LOCAL_SIZE 30u
#define CENTRAL_SIZE 46u
#define EOCD_SIZE 22u
#define ZIP64_EOCD_SIZE 56u
#define ZIP64_LOCATOR_SIZE 20u
#define ZIP64_EXTRA_ID 0x0001u

/* General-purpose flags that make an entry unreadable without a key (miniz refuses them all). */
#define FLAG_ENCRYPTED 0x0001u
#define FLAG_PATCH 0x0020u
#define FLAG_STRONG_ENCRYPTION 0x0040u
#define FLAG_MASKED_HEADER 0x2000u

#define METHOD_STORED 0
#define METHOD_DEFLATE 8

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

/* An entry name fit for a one-line message: control bytes escaped (a hostile name must not
 * drive the terminal), quotes and backslashes escaped, long names cut. */
typedef struct shown_name {
    char s[ZIP_NAME_SHOWN * 4 + 8];
} shown_name;

static const char *show(shown_name *b, const char *name)
{
    size_t o = 0, i;
    for (i = 0; name[i] && i < ZIP_NAME_SHOWN; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x20 || c == 0x7f || c == '\\' || c == '\'')
            o += (size_t)snprintf(b->s + o, sizeof b->s - o, "\\x%02x", c);
        else
            b->s[o++] = (char)c;
    }
    if (name[i])
        memcpy(b->s + o, "...", 3), o += 3;
    b->s[o] = '\0';
    return b->s;
}

/* ---- the name index ----------------------------------------------------------------------- */

/* The keyed hash index (hash.c) over the entries: names come from the file, and a hash its
 * author could compute would let a hostile archive put its million entries in one chain.
 * ASCII case folding only, as miniz's MZ_TOLOWER. */

#define SEED_ZIP_NAME 0x7a6970

static unsigned char fold(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

static bool names_equal(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (fold((unsigned char)*a) != fold((unsigned char)*b))
            return false;
    return *a == *b;
}

static uint64_t name_hash(const char *s)
{
    ckpt__hasher h;
    ckpt__hasher_init(&h, SEED_ZIP_NAME);
    for (; *s; s++)
        ckpt__hasher_byte(&h, fold((unsigned char)*s));
    return ckpt__hasher_end(&h);
}

static int index_build(ckpt__arena *ar, ckpt__zip *z, ckpt_error *err)
{
    ckpt__hindex *ix = ckpt__arena_alloc(ar, sizeof *ix);
    if (!ix || ckpt__hindex_reserve(ar, ix, z->n_entries) != 0)
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < z->n_entries; i++) {
        const char *name = z->entries[i].name;
        uint64_t h = name_hash(name);
        size_t pos;
        for (size_t it = ckpt__hindex_first(ix, h, &pos); it; it = ckpt__hindex_next(ix, h, &pos)) {
            const char *other = z->entries[it - 1].name;
            if (names_equal(other, name) && !z->duplicate) {
                z->duplicate = name;
                z->duplicate_case = strcmp(other, name) != 0;
            }
        }
        if (ckpt__hindex_add(ar, ix, h, i) != 0)
            return ckpt__arena_error(ar, err);
    }
    z->index = ix;
    return CKPT_OK;
}

const ckpt__zip_entry *ckpt__zip_find(const ckpt__zip *z, const char *name)
{
    if (!z || !name)
        return NULL;
    const ckpt__hindex *ix = z->index;
    if (!ix) {
        for (size_t i = 0; i < z->n_entries; i++)
            if (names_equal(z->entries[i].name, name))
                return &z->entries[i];
        return NULL;
    }
    uint64_t h = name_hash(name);
    size_t pos;
    for (size_t it = ckpt__hindex_first(ix, h, &pos); it; it = ckpt__hindex_next(ix, h, &pos))
        if (names_equal(z->entries[it - 1].name, name))
            return &z->entries[it - 1];
    return NULL;
}

/* ---- end records -------------------------------------------------------------------------- */

typedef struct zip_dir {
    uint64_t n_entries;
    uint64_t cd_offset, cd_size;
    uint64_t cd_limit; /* the directory must end by here: the first end record */
} zip_dir;

static int find_eocd(const uint8_t *map, uint64_t size, uint64_t *out, ckpt_error *err)
{
    if (size >= EOCD_SIZE) {
        uint64_t last = size - EOCD_SIZE;
        uint64_t first = last > ZIP_MAX_COMMENT ? last - ZIP_MAX_COMMENT : 0;
        for (uint64_t off = last + 1; off-- > first;) {
            if (map[off] == 'P' && rd32(map + off) == SIG_EOCD) {
                *out = off;
                return CKPT_OK;
            }
        }
    }
    return CKPT_CORRUPT(err, "zip: no end of central directory record (truncated?)");
}

static int multi_disk(ckpt_error *err)
{
    return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                     "zip: the archive is split over several disks, which ckpt does not read");
}

static int read_end_records(const uint8_t *map, uint64_t size, zip_dir *d, ckpt_error *err)
{
    uint64_t eocd = 0;
    int rc = find_eocd(map, size, &eocd, err);
    if (rc)
        return rc;
    const uint8_t *e = map + eocd;
    uint64_t this_disk = rd16(e + 4), cd_disk = rd16(e + 6);
    uint64_t entries_here = rd16(e + 8);
    d->n_entries = rd16(e + 10);
    d->cd_size = rd32(e + 12);
    d->cd_offset = rd32(e + 16);
    d->cd_limit = eocd;

    if (eocd >= ZIP64_LOCATOR_SIZE && rd32(e - ZIP64_LOCATOR_SIZE) == SIG_ZIP64_LOCATOR) {
        uint64_t loc = eocd - ZIP64_LOCATOR_SIZE;
        const uint8_t *l = map + loc;
        uint64_t z64 = rd64(l + 8);
        if (rd32(l + 4) != 0 || rd32(l + 16) > 1)
            return multi_disk(err);
        if (z64 > loc || loc - z64 < ZIP64_EOCD_SIZE)
            return CKPT_CORRUPT(err, "zip: zip64 end of central directory record at offset %"
                                PRIu64 " is outside the file", z64);
        const uint8_t *r = map + z64;
        if (rd32(r) != SIG_ZIP64_EOCD)
            return CKPT_CORRUPT(err, "zip: no zip64 end of central directory record at offset %"
                                PRIu64, z64);
        uint64_t rsize = rd64(r + 4);
        if (rsize < ZIP64_EOCD_SIZE - 12 || rsize > loc - z64 - 12)
            return CKPT_CORRUPT(err, "zip: zip64 end of central directory record has a bad "
                                "size (%" PRIu64 ")", rsize);
        this_disk = rd32(r + 16), cd_disk = rd32(r + 20);
        entries_here = rd64(r + 24);
        d->n_entries = rd64(r + 32);
        d->cd_size = rd64(r + 40);
        d->cd_offset = rd64(r + 48);
        d->cd_limit = z64;
    } else if (d->cd_size == 0xFFFFFFFFu || d->cd_offset == 0xFFFFFFFFu) {
        return CKPT_CORRUPT(err, "zip: end of central directory record needs a zip64 record, "
                                 "which is missing");
    }
    if (entries_here != d->n_entries ||
        ((this_disk | cd_disk) != 0 && (this_disk != 1 || cd_disk != 1)))
        return multi_disk(err);

    uint64_t cd_end;
    if (ckpt__add_overflow(d->cd_offset, d->cd_size, &cd_end) || cd_end > size)
        return CKPT_CORRUPT(err, "zip: central directory (%" PRIu64 " bytes at offset %" PRIu64
                            ") runs past the end of the file",
                            d->cd_size, d->cd_offset);
    if (cd_end > d->cd_limit)
        return CKPT_CORRUPT(err, "zip: central directory (%" PRIu64 " bytes at offset %" PRIu64
                            ") runs into the end of central directory record",
                            d->cd_size, d->cd_offset);
    if (d->n_entries > CKPT__ZIP_MAX_ENTRIES)
        return CKPT_FAIL(err, CKPT_ELIMIT, "zip: the archive has %" PRIu64
                         " entries, more than the limit of %u",
                         d->n_entries, CKPT__ZIP_MAX_ENTRIES);
    /* n <= 2^20, so no overflow: every record is at least CENTRAL_SIZE bytes. */
    if (d->n_entries * CENTRAL_SIZE > d->cd_size)
        return CKPT_CORRUPT(err, "zip: a central directory of %" PRIu64
                            " bytes cannot hold %" PRIu64 " entries",
                            d->cd_size, d->n_entries);
    return CKPT_OK;
}

/* ---- central directory -------------------------------------------------------------------- */

/* Replace the 32-bit fields that are all ones with their zip64 values, in the order the
 * format lays them out. Without a zip64 field the 32-bit values stand (as miniz and Python
 * read them). */
static int apply_zip64(const uint8_t *x, size_t xlen, ckpt__zip_entry *e, uint64_t *local,
                       ckpt_error *err)
{
    bool big_u = e->usize == 0xFFFFFFFFu, big_c = e->csize == 0xFFFFFFFFu;
    bool big_o = *local == 0xFFFFFFFFu;
    shown_name sn;
    if (!big_u && !big_c && !big_o)
        return CKPT_OK;
    while (xlen > 0) {
        if (xlen < 4)
            return CKPT_CORRUPT(err, "zip: entry '%s' has a malformed extra field",
                                show(&sn, e->name));
        uint16_t id = rd16(x), len = rd16(x + 2);
        if (len > xlen - 4)
            return CKPT_CORRUPT(err, "zip: entry '%s' has a malformed extra field",
                                show(&sn, e->name));
        if (id == ZIP64_EXTRA_ID) {
            size_t need = 8u * ((size_t)big_u + (size_t)big_c + (size_t)big_o);
            if (len < need)
                return CKPT_CORRUPT(err, "zip: entry '%s' has a truncated zip64 extra field",
                                    show(&sn, e->name));
            const uint8_t *p = x + 4;
            if (big_u)
                e->usize = rd64(p), p += 8;
            if (big_c)
                e->csize = rd64(p), p += 8;
            if (big_o)
                *local = rd64(p);
            return CKPT_OK;
        }
        x += 4 + (size_t)len;
        xlen -= 4 + (size_t)len;
    }
    return CKPT_OK;
}

/* Find the entry's data through its local header and check it against the file. */
int ckpt__zip_place(const uint8_t *map, uint64_t size, ckpt__zip_entry *e, ckpt_error *err)
{
    shown_name sn;
    uint64_t local = e->local_offset;
    if (local > size || size - local < LOCAL_SIZE)
        return CKPT_CORRUPT(err, "zip: entry '%s' has its local header past the end of the file",
                            show(&sn, e->name));
    const uint8_t *h = map + local;
    if (rd32(h) != SIG_LOCAL)
        return CKPT_CORRUPT(err, "zip: entry '%s' has no local header at offset %" PRIu64,
                            show(&sn, e->name), local);
    uint64_t data_end;
    e->data_offset = local + LOCAL_SIZE + rd16(h + 26) + rd16(h + 28); /* local <= size - 30 */
    if (e->data_offset > size || ckpt__add_overflow(e->data_offset, e->csize, &data_end) ||
        data_end > size)
        return CKPT_CORRUPT(err, "zip: entry '%s' runs past the end of the file",
                            show(&sn, e->name));
    /* From the local header to the end of the data, nothing may lie in the directory. */
    if (local < e->cd_offset + e->cd_size && e->cd_offset < data_end)
        return CKPT_CORRUPT(err, "zip: entry '%s' overlaps the central directory",
                            show(&sn, e->name));
    e->placed = true;
    return CKPT_OK;
}

#define ZIP_LAZY 1             /* local headers are read on first use */
#define ZIP_ALLOW_DUPLICATES 2 /* for the scanner, which reads every copy */

static int zip_open(ckpt__arena *ar, const uint8_t *map, uint64_t size, ckpt__zip *out,
                    int flags, ckpt_error *err)
{
    bool lazy = (flags & ZIP_LAZY) != 0;
    memset(out, 0, sizeof *out);
    zip_dir d;
    int rc = read_end_records(map, size, &d, err);
    if (rc)
        return rc;

    ckpt__zip z = {0};
    z.n_entries = (size_t)d.n_entries;
    if (z.n_entries) {
        z.entries = ckpt__arena_alloc(ar, z.n_entries * sizeof *z.entries);
        if (!z.entries)
            return ckpt__arena_error(ar, err);
    }
    const uint8_t *p = map + d.cd_offset;
    uint64_t left = d.cd_size;
    shown_name sn;
    for (size_t i = 0; i < z.n_entries; i++) {
        ckpt__zip_entry *e = &z.entries[i];
        if (left < CENTRAL_SIZE)
            return CKPT_CORRUPT(err, "zip: the central directory ends before entry %zu", i);
        if (rd32(p) != SIG_CENTRAL)
            return CKPT_CORRUPT(err, "zip: central directory entry %zu has a bad signature", i);
        size_t nlen = rd16(p + 28), xlen = rd16(p + 30), clen = rd16(p + 32);
        size_t rec = CENTRAL_SIZE + nlen + xlen + clen;
        if (rec > left)
            return CKPT_CORRUPT(err, "zip: central directory entry %zu runs past the end of "
                                     "the directory",
                                i);
        const char *raw = (const char *)p + CENTRAL_SIZE;
        if (memchr(raw, '\0', nlen))
            return CKPT_CORRUPT(err, "zip: the name of entry %zu contains a NUL byte", i);
        if (!(e->name = ckpt__arena_strndup(ar, raw, nlen)))
            return ckpt__arena_error(ar, err);
        e->flags = rd16(p + 8);
        e->method = rd16(p + 10);
        e->crc32 = rd32(p + 16);
        e->csize = rd32(p + 20);
        e->usize = rd32(p + 24);
        uint64_t local = rd32(p + 42);
        if ((rc = apply_zip64(p + CENTRAL_SIZE + nlen, xlen, e, &local, err)))
            return rc;

        bool locked = (e->flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION | FLAG_MASKED_HEADER |
                                   FLAG_PATCH)) != 0;
        if (e->method == METHOD_STORED && !locked && e->csize != e->usize)
            return CKPT_CORRUPT(err, "zip: stored entry '%s' has compressed size %" PRIu64
                                " but size %" PRIu64,
                                show(&sn, e->name), e->csize, e->usize);
        if (e->csize == 0 && e->usize != 0)
            return CKPT_CORRUPT(err, "zip: entry '%s' has no data but a size of %" PRIu64,
                                show(&sn, e->name), e->usize);
        e->local_offset = local;
        e->cd_offset = d.cd_offset;
        e->cd_size = d.cd_size;
        if (lazy ? local > size || size - local < LOCAL_SIZE
                 : (rc = ckpt__zip_place(map, size, e, err)) != CKPT_OK)
            return lazy ? CKPT_CORRUPT(err, "zip: entry '%s' has its local header past the end "
                                            "of the file", show(&sn, e->name))
                        : rc;
        p += rec;
        left -= rec;
    }
    if ((rc = index_build(ar, &z, err)))
        return rc;
    if (z.duplicate && !(flags & ZIP_ALLOW_DUPLICATES)) {
        /* torch 1.13 reads one copy or the other depending on the layout: refuse rather than
         * show weights that are not the ones torch.load would use */
        return CKPT_CORRUPT(err, "zip: entry '%s' appears more than once%s",
                            show(&sn, z.duplicate), z.duplicate_case ?
                            " (names differing only in case are the same name)" : "");
    }
    *out = z;
    return CKPT_OK;
}

int ckpt__zip_open(ckpt__arena *ar, const uint8_t *map, uint64_t size, ckpt__zip *out,
                   ckpt_error *err)
{
    return zip_open(ar, map, size, out, 0, err);
}

int ckpt__zip_open_lazy(ckpt__arena *ar, const uint8_t *map, uint64_t size, ckpt__zip *out,
                        ckpt_error *err)
{
    return zip_open(ar, map, size, out, ZIP_LAZY, err);
}

int ckpt__zip_open_scan(ckpt__arena *ar, const uint8_t *map, uint64_t size, ckpt__zip *out,
                        ckpt_error *err)
{
    return zip_open(ar, map, size, out, ZIP_LAZY | ZIP_ALLOW_DUPLICATES, err);
}

/* ---- reading an entry --------------------------------------------------------------------- */

static const char *method_name(unsigned m)
{
    switch (m) {
    case 1: return "shrink";
    case 6: return "implode";
    case 9: return "deflate64";
    case 12: return "bzip2";
    case 14: return "lzma";
    case 93: return "zstd";
    case 95: return "xz";
    case 98: return "ppmd";
    case 99: return "aes";
    default: return "unknown";
    }
}

/* Inflate exactly e->usize bytes into out (NULL when usize is 0), consuming exactly e->csize
 * bytes of src. */
static int inflate_entry(const uint8_t *src, const ckpt__zip_entry *e, uint8_t *out,
                         ckpt_error *err)
{
    shown_name sn;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    int zr = inflateInit2(&zs, -MAX_WBITS);
    if (zr != Z_OK)
        return zr == Z_MEM_ERROR ? CKPT_NOMEM(err)
                                 : CKPT_FAIL(err, CKPT_EIO, "zip: zlib failed to start (%d)", zr);
    uint64_t in_left = e->csize, out_left = e->usize;
    uint8_t spare_byte; /* where output beyond usize lands, to notice it */
    bool spare = false; /* out is full and spare is offered */
    zs.next_in = (Bytef *)(uintptr_t)src; /* zlib's API is not const; it only reads input */
    zs.next_out = out;
    int rc = CKPT_OK;
    for (;;) {
        if (zs.avail_in == 0 && in_left) {
            zs.avail_in = in_left > ZIP_INFLATE_CHUNK ? ZIP_INFLATE_CHUNK : (uInt)in_left;
            in_left -= zs.avail_in;
        }
        if (zs.avail_out == 0 && !spare) {
            if (out_left) {
                zs.avail_out = out_left > ZIP_INFLATE_CHUNK ? ZIP_INFLATE_CHUNK : (uInt)out_left;
                out_left -= zs.avail_out;
            } else {
                zs.next_out = &spare_byte;
                zs.avail_out = 1;
                spare = true;
            }
        }
        uLong seen_in = zs.total_in, seen_out = zs.total_out;
        zr = inflate(&zs, Z_NO_FLUSH);
        bool stuck = zs.total_in == seen_in && zs.total_out == seen_out;
        if (spare && zs.avail_out == 0) {
            rc = CKPT_CORRUPT(err, "zip: entry '%s' inflates to more than its size of %" PRIu64
                              " bytes",
                              show(&sn, e->name), e->usize);
            break;
        }
        if (zr == Z_STREAM_END) {
            uint64_t unused = (uint64_t)zs.avail_in + in_left;
            uint64_t missing = spare ? 0 : out_left + zs.avail_out;
            if (missing)
                rc = CKPT_CORRUPT(err, "zip: entry '%s' inflates to %" PRIu64
                                  " bytes, not its size of %" PRIu64,
                                  show(&sn, e->name), e->usize - missing, e->usize);
            else if (unused)
                rc = CKPT_CORRUPT(err, "zip: entry '%s' has %" PRIu64
                                  " bytes after the end of its deflate stream",
                                  show(&sn, e->name), unused);
            break;
        }
        if (zr == Z_MEM_ERROR) {
            rc = CKPT_NOMEM(err);
            break;
        }
        if (zr == Z_BUF_ERROR && zs.avail_in == 0 && in_left == 0) {
            rc = CKPT_CORRUPT(err, "zip: entry '%s' has a truncated deflate stream",
                              show(&sn, e->name));
            break;
        }
        /* Z_BUF_ERROR with room on both sides cannot happen; never spin if it does. */
        if ((zr != Z_OK && zr != Z_BUF_ERROR) || (zr == Z_BUF_ERROR && stuck)) {
            rc = CKPT_CORRUPT(err, "zip: entry '%s' has a corrupt deflate stream (%s)",
                              show(&sn, e->name), zs.msg ? zs.msg : "zlib error");
            break;
        }
    }
    inflateEnd(&zs);
    return rc;
}

static uint32_t crc32_of(const uint8_t *p, uint64_t n)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    while (n) {
        uInt k = n > ZIP_INFLATE_CHUNK ? ZIP_INFLATE_CHUNK : (uInt)n;
        crc = crc32(crc, p, k);
        p += k, n -= k;
    }
    return (uint32_t)crc;
}

int ckpt__zip_read(const uint8_t *map, uint64_t size, const ckpt__zip_entry *e,
                   const ckpt__alloc *a, uint64_t max_inflate, const uint8_t **data,
                   void **owned, ckpt_error *err)
{
    static const uint8_t empty[1]; /* what an empty inflated entry points to: never NULL */
    shown_name sn;
    *data = NULL;
    *owned = NULL;
    if (e->flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION | FLAG_MASKED_HEADER))
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "zip: entry '%s' is encrypted",
                         show(&sn, e->name));
    if (e->flags & FLAG_PATCH)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                         "zip: entry '%s' is a compressed patch, which ckpt does not read",
                         show(&sn, e->name));
    if (e->method != METHOD_STORED && e->method != METHOD_DEFLATE)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                         "zip: entry '%s' is compressed with method %u (%s), which ckpt does "
                         "not read",
                         show(&sn, e->name), (unsigned)e->method, method_name(e->method));
    /* Entries of a lazily opened archive are placed on first use (the entry lives in the
     * file's arena, which the caller owns, so this is not a write to someone else's data). */
    if (!e->placed) {
        int rc = ckpt__zip_place(map, size, (ckpt__zip_entry *)e, err);
        if (rc)
            return rc;
    }
    /* Checked when placed; checked again because the entry is the caller's to pass. */
    if (e->data_offset > size || e->csize > size - e->data_offset)
        return CKPT_CORRUPT(err, "zip: entry '%s' runs past the end of the file",
                            show(&sn, e->name));
    const uint8_t *src = map + e->data_offset;

    if (e->method == METHOD_STORED) {
        if (e->csize != e->usize)
            return CKPT_CORRUPT(err, "zip: stored entry '%s' has compressed size %" PRIu64
                                " but size %" PRIu64,
                                show(&sn, e->name), e->csize, e->usize);
        *data = src;
        return CKPT_OK;
    }

    /* DEFLATE expands at most 1032:1 (a 258-byte match per two bits): a claim beyond that is
     * a lie, refused before a byte is allocated for it. */
    uint64_t most;
    if (!ckpt__mul_overflow(e->csize, (uint64_t)ZIP_DEFLATE_MAX_RATIO, &most) &&
        e->usize > most + ZIP_DEFLATE_SLACK)
        return CKPT_CORRUPT(err, "zip: entry '%s' claims %" PRIu64 " bytes from %" PRIu64
                            " compressed bytes, more than DEFLATE can expand to",
                            show(&sn, e->name), e->usize, e->csize);
    char lim[32], want[32];
    if (e->usize > max_inflate || e->usize > SIZE_MAX)
        return CKPT_FAIL(err, CKPT_ELIMIT, "zip: entry '%s' inflates to %s, more than the "
                         "limit of %s (raise ckpt_options.max_inflate)", show(&sn, e->name),
                         ckpt__size_str(want, e->usize), ckpt__size_str(lim, max_inflate));
    uint8_t *buf = NULL;
    if (e->usize && !(buf = ckpt__malloc(a, (size_t)e->usize)))
        return CKPT_FAIL(err, CKPT_ENOMEM, "zip: entry '%s' inflates to %s, and that much "
                         "memory cannot be allocated", show(&sn, e->name),
                         ckpt__size_str(want, e->usize));
    int rc = inflate_entry(src, e, buf, err);
    if (rc == CKPT_OK) {
        uint32_t crc = crc32_of(buf, e->usize);
        if (crc != e->crc32)
            rc = CKPT_CORRUPT(err, "zip: entry '%s' fails its CRC-32 check (recorded %08" PRIx32
                              ", computed %08" PRIx32 ")",
                              show(&sn, e->name), e->crc32, crc);
    }
    if (rc != CKPT_OK) {
        ckpt__free(a, buf, (size_t)e->usize);
        return rc;
    }
    *data = buf ? buf : empty;
    *owned = buf;
    return CKPT_OK;
}
