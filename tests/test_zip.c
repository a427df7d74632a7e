/* test_zip.c - the zip reader (src/zip.c) against archives written by Python's zipfile
 * (zip_cases/cases.h, made by zip_cases/gen_cases.py), by torch (tests/data/vectors and the
 * corpus), and built here byte by byte to be broken on purpose: truncation at every offset,
 * random byte flips, offsets and sizes past the end or overflowing, overlaps, deflate bombs,
 * bad CRCs, encryption. Expected values come from Python, docs/FORMAT.md, or the bytes built
 * here. */
#include "check.h"
#include "internal.h"
#include "zip_cases/cases.h"

#include <dirent.h>
#include <time.h>
#include <zlib.h>

#define MB (1024u * 1024u)

static ckpt__alloc std_alloc;

/* ---- small helpers ------------------------------------------------------------------------ */

static uint8_t *data_file(const char *rel, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", check_data_dir(), rel);
    uint8_t *p = check_slurp(path, len);
    if (!p)
        fprintf(stderr, "cannot read %s\n", path);
    return p;
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *q = malloc(n ? n : 1);
    if (n)
        memcpy(q, p, n);
    return q;
}

static bool fold_equal(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        int x = (*a >= 'A' && *a <= 'Z') ? *a - 'A' + 'a' : *a;
        int y = (*b >= 'A' && *b <= 'Z') ? *b - 'A' + 'a' : *b;
        if (x != y)
            return false;
    }
    return *a == *b;
}

static uint32_t crc_of(const uint8_t *p, uint64_t n)
{
    return (uint32_t)crc32(crc32(0L, Z_NULL, 0), n ? p : Z_NULL, (uInt)n);
}

/* Open map[0..size) in a fresh arena; the caller frees *ar. */
static int open_zip(const uint8_t *map, size_t size, ckpt__arena **ar, ckpt__zip *z,
                    ckpt_error *err)
{
    *ar = ckpt__arena_new(&std_alloc, 0);
    memset(err, 0, sizeof *err);
    return ckpt__zip_open(*ar, map, size, z, err);
}

/* What any successful open must satisfy, whatever the bytes: entries inside the file, found by
 * their names, readable or refused with an error, inflated ones checked. */
static void check_consistent(const uint8_t *map, size_t size, const ckpt__zip *z)
{
    for (size_t i = 0; i < z->n_entries; i++) {
        const ckpt__zip_entry *e = &z->entries[i];
        CHECK(e->data_offset <= size && e->csize <= size - e->data_offset);
        const ckpt__zip_entry *f = ckpt__zip_find(z, e->name);
        CHECK(f != NULL && fold_equal(f->name, e->name) && f <= e);
        const uint8_t *data;
        void *owned;
        ckpt_error err = {0};
        int rc = ckpt__zip_read(map, size, e, &std_alloc, 4 * MB, &data, &owned, &err);
        if (rc == CKPT_OK) {
            CHECK(data != NULL);
            if (e->method == 0) {
                CHECK(data == map + e->data_offset && owned == NULL && e->csize == e->usize);
            } else {
                CHECK(crc_of(data, e->usize) == e->crc32);
            }
            ckpt__free(&std_alloc, owned, (size_t)e->usize);
        } else {
            CHECK(owned == NULL && data == NULL);
            CHECK(strncmp(err.message, "zip: ", 5) == 0);
        }
    }
}

/* ---- a zip writer for hand-made and broken archives ----------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void u16(buf *b, uint64_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    put(b, x, 2);
}

static void u32(buf *b, uint64_t v)
{
    u16(b, v & 0xffff), u16(b, (v >> 16) & 0xffff);
}

static void u64(buf *b, uint64_t v)
{
    u32(b, v & 0xffffffffu), u32(b, v >> 32);
}

static void set32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}

static void set16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8);
}

static void set64(uint8_t *p, uint64_t v)
{
    set32(p, (uint32_t)v), set32(p + 4, (uint32_t)(v >> 32));
}

typedef struct tentry {
    const char *name;
    const uint8_t *data;
    size_t len;
    uint16_t method;
    uint16_t flags;
    /* filled in by build() */
    size_t local, central, data_off, csize;
    uint32_t crc;
} tentry;

typedef struct topts {
    bool zip64;               /* all-ones fields, zip64 extras, zip64 end record and locator */
    const uint8_t *comment;
    size_t comment_len;
    size_t trailing;          /* junk after the end record */
} topts;

typedef struct tzip {
    buf b;
    size_t cd_off, cd_size, z64_off, eocd_off;
} tzip;

static size_t raw_deflate(const uint8_t *in, size_t n, uint8_t **out)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    deflateInit2(&zs, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY);
    size_t cap = deflateBound(&zs, (uLong)n) + 16;
    *out = malloc(cap);
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)n;
    zs.next_out = *out;
    zs.avail_out = (uInt)cap;
    int rc = deflate(&zs, Z_FINISH);
    CHECK(rc == Z_STREAM_END);
    size_t len = zs.total_out;
    deflateEnd(&zs);
    return len;
}

static tzip build(tentry *es, size_t n, const topts *o)
{
    static const topts none;
    if (!o)
        o = &none;
    tzip t = {0};
    buf *b = &t.b;
    uint8_t **packed = calloc(n ? n : 1, sizeof *packed);
    for (size_t i = 0; i < n; i++) {
        tentry *e = &es[i];
        e->crc = crc_of(e->data, e->len);
        const uint8_t *payload = e->data;
        e->csize = e->len;
        if (e->method == 8) {
            e->csize = raw_deflate(e->data, e->len, &packed[i]);
            payload = packed[i];
        }
        e->local = b->len;
        u32(b, 0x04034b50), u16(b, 20), u16(b, e->flags), u16(b, e->method), u32(b, 0);
        u32(b, e->crc), u32(b, e->csize), u32(b, e->len);
        u16(b, strlen(e->name)), u16(b, 4);
        put(b, e->name, strlen(e->name));
        u16(b, 0xcafe), u16(b, 0); /* an empty extra field, as some writers leave */
        e->data_off = b->len;
        put(b, payload, e->csize);
    }
    t.cd_off = b->len;
    for (size_t i = 0; i < n; i++) {
        tentry *e = &es[i];
        e->central = b->len;
        u32(b, 0x02014b50), u16(b, 20), u16(b, 20), u16(b, e->flags), u16(b, e->method);
        u32(b, 0), u32(b, e->crc);
        u32(b, o->zip64 ? 0xffffffffu : e->csize), u32(b, o->zip64 ? 0xffffffffu : e->len);
        u16(b, strlen(e->name)), u16(b, o->zip64 ? 28 : 0), u16(b, 0), u16(b, 0), u16(b, 0);
        u32(b, 0), u32(b, o->zip64 ? 0xffffffffu : e->local);
        put(b, e->name, strlen(e->name));
        if (o->zip64)
            u16(b, 1), u16(b, 24), u64(b, e->len), u64(b, e->csize), u64(b, e->local);
    }
    t.cd_size = b->len - t.cd_off;
    if (o->zip64) {
        t.z64_off = b->len;
        u32(b, 0x06064b50), u64(b, 44), u16(b, 45), u16(b, 45), u32(b, 0), u32(b, 0);
        u64(b, n), u64(b, n), u64(b, t.cd_size), u64(b, t.cd_off);
        u32(b, 0x07064b50), u32(b, 0), u64(b, t.z64_off), u32(b, 1);
    }
    t.eocd_off = b->len;
    u32(b, 0x06054b50), u16(b, 0), u16(b, 0);
    u16(b, o->zip64 ? 0xffff : n), u16(b, o->zip64 ? 0xffff : n);
    u32(b, o->zip64 ? 0xffffffffu : t.cd_size), u32(b, o->zip64 ? 0xffffffffu : t.cd_off);
    u16(b, o->comment_len);
    put(b, o->comment, o->comment_len);
    for (size_t i = 0; i < o->trailing; i++)
        put(b, "\x55", 1);
    for (size_t i = 0; i < n; i++)
        free(packed[i]);
    free(packed);
    /* Exactly sized, for ASan. */
    uint8_t *exact = dup_bytes(b->p, b->len);
    free(b->p);
    b->p = exact;
    return t;
}

/* Open t; return the status, with the message in *err. */
static int try_open(const tzip *t, ckpt_error *err)
{
    ckpt__arena *ar;
    ckpt__zip z;
    int rc = open_zip(t->b.p, t->b.len, &ar, &z, err);
    if (rc == CKPT_OK)
        check_consistent(t->b.p, t->b.len, &z);
    ckpt__arena_free(ar);
    return rc;
}

/* Open t and read its entry `i`; return the read's status. */
static int try_read(const tzip *t, size_t i, uint64_t max_inflate, ckpt_error *err)
{
    ckpt__arena *ar;
    ckpt__zip z;
    int rc = open_zip(t->b.p, t->b.len, &ar, &z, err);
    CHECK_OK(rc, *err);
    if (rc == CKPT_OK) {
        const uint8_t *data;
        void *owned;
        rc = ckpt__zip_read(t->b.p, t->b.len, &z.entries[i], &std_alloc, max_inflate, &data,
                            &owned, err);
        if (rc == CKPT_OK)
            ckpt__free(&std_alloc, owned, (size_t)z.entries[i].usize);
        else
            CHECK(owned == NULL && data == NULL);
    }
    ckpt__arena_free(ar);
    return rc;
}

static void check_msg(const ckpt_error *err, const char *text)
{
    check_count++;
    if (!strstr(err->message, text)) {
        check_failures++;
        fprintf(stderr, "message \"%s\" lacks \"%s\"\n", err->message, text);
    }
}

/* ---- archives written by Python's zipfile ------------------------------------------------- */

static void test_python_cases(void)
{
    for (size_t c = 0; c < sizeof zc_cases / sizeof zc_cases[0]; c++) {
        const zc_case *k = &zc_cases[c];
        uint8_t *map = dup_bytes(k->bytes, k->len);
        ckpt__arena *ar;
        ckpt__zip z;
        ckpt_error err;
        int rc = open_zip(map, k->len, &ar, &z, &err);
        if (strcmp(k->what, "duplicates") == 0) {
            /* names alike (up to ASCII case): torch 1.13 may read another copy than ckpt */
            CHECK_EQ_INT(rc, CKPT_ECORRUPT);
            check_msg(&err, "zip: entry 'dup/X' appears more than once");
            ckpt__arena_free(ar);
            free(map);
            continue;
        }
        CHECK_OK(rc, err);
        if (rc != CKPT_OK) {
            fprintf(stderr, "  in case %s\n", k->what);
            ckpt__arena_free(ar);
            free(map);
            continue;
        }
        CHECK_EQ_INT(z.n_entries, k->n_entries);
        for (size_t i = 0; i < k->n_entries && i < z.n_entries; i++) {
            const zc_entry *x = &k->entries[i];
            const ckpt__zip_entry *e = &z.entries[i];
            CHECK_EQ_STR(e->name, x->name);
            CHECK_EQ_INT(e->method, x->method);
            CHECK_EQ_INT(e->flags, x->flags);
            CHECK_EQ_INT(e->crc32, x->crc);
            CHECK_EQ_INT(e->csize, x->csize);
            CHECK_EQ_INT(e->usize, x->usize);
            CHECK_EQ_INT(e->data_offset, x->data_offset);

            /* Lookups return the first entry of that name, ignoring ASCII case. */
            size_t first = i;
            for (size_t j = 0; j < i; j++)
                if (fold_equal(k->entries[j].name, x->name)) {
                    first = j;
                    break;
                }
            char upper[256], lower[256];
            size_t n = strlen(x->name);
            for (size_t j = 0; j <= n && j < sizeof upper; j++) {
                char ch = x->name[j];
                upper[j] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 'a' + 'A') : ch;
                lower[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
            }
            CHECK(ckpt__zip_find(&z, x->name) == &z.entries[first]);
            CHECK(ckpt__zip_find(&z, upper) == &z.entries[first]);
            CHECK(ckpt__zip_find(&z, lower) == &z.entries[first]);

            const uint8_t *data;
            void *owned;
            rc = ckpt__zip_read(map, k->len, e, &std_alloc, 1 * MB, &data, &owned, &err);
            CHECK_OK(rc, err);
            if (rc == CKPT_OK) {
                CHECK_EQ_INT(crc_of(data, x->usize), x->crc);
                if (x->method == 0)
                    CHECK(data == map + x->data_offset && owned == NULL);
                else
                    CHECK(owned == (x->usize ? (void *)data : NULL));
                ckpt__free(&std_alloc, owned, (size_t)e->usize);
            }
        }
        CHECK(ckpt__zip_find(&z, "") == NULL);
        CHECK(ckpt__zip_find(&z, "arch/data.pk") == NULL);
        CHECK(ckpt__zip_find(&z, "arch/data.pkl2") == NULL);
        CHECK(ckpt__zip_find(&z, "nothing/here") == NULL);
        check_consistent(map, k->len, &z);
        ckpt__arena_free(ar);
        free(map);
    }
}

/* ---- archives written by torch ------------------------------------------------------------ */

/* docs/FORMAT.md §2.3, §10: two.pt holds two/data.pkl@64 (235 B), two/data/0@384 (24 B),
 * two/data/1@512 (8 B), two/version@640 ("3\n"). */
static void test_two_pt(void)
{
    size_t len;
    uint8_t *map = data_file("vectors/two.pt", &len);
    CHECK(map != NULL);
    if (!map)
        return;
    CHECK_EQ_INT(len, 983);
    ckpt__arena *ar;
    ckpt__zip z;
    ckpt_error err;
    CHECK_OK(open_zip(map, len, &ar, &z, &err), err);
    static const struct {
        const char *name;
        uint64_t offset, size;
    } want[] = {{"two/data.pkl", 64, 235}, {"two/data/0", 384, 24}, {"two/data/1", 512, 8},
                {"two/version", 640, 2}};
    CHECK_EQ_INT(z.n_entries, 4);
    for (size_t i = 0; i < 4 && i < z.n_entries; i++) {
        CHECK_EQ_STR(z.entries[i].name, want[i].name);
        CHECK_EQ_INT(z.entries[i].data_offset, want[i].offset);
        CHECK_EQ_INT(z.entries[i].csize, want[i].size);
        CHECK_EQ_INT(z.entries[i].usize, want[i].size);
        CHECK_EQ_INT(z.entries[i].method, 0);
        CHECK_EQ_INT(z.entries[i].flags, 0x0808);
    }
    /* The data descriptor after data.pkl records its CRC (docs/FORMAT.md §2.3). */
    CHECK_EQ_INT(z.entries[0].crc32, 0x03852647);
    const ckpt__zip_entry *v = ckpt__zip_find(&z, "TWO/Version");
    CHECK(v == &z.entries[3]);
    const uint8_t *data;
    void *owned;
    if (v) {
        CHECK_OK(ckpt__zip_read(map, len, v, &std_alloc, 0, &data, &owned, &err), err);
        CHECK(memcmp(data, "3\n", 2) == 0);
    }
    const ckpt__zip_entry *p = ckpt__zip_find(&z, "two/data.pkl");
    if (p) {
        CHECK_OK(ckpt__zip_read(map, len, p, &std_alloc, 0, &data, &owned, &err), err);
        CHECK(data[0] == 0x80 && data[1] == 2 && data[234] == '.');
    }
    ckpt__arena_free(ar);
    free(map);
}

/* Every torch-written zip in tests/data (vectors and corpus): opens, every record is 64-byte
 * aligned (docs/FORMAT.md §2.3), STORED, and readable. Torch zips are told apart by their first
 * record, "<root>/data.pkl". */
static void test_torch_files(void)
{
    static const char *const dirs[] = {"vectors", "corpus/burn_pytorch_tests",
                                       "corpus/burn_reader", "corpus/candle", "corpus/modelscan",
                                       "corpus/picklescan", "corpus/safetensors"};
    int seen = 0;
    for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", check_data_dir(), dirs[d]);
        DIR *dir = opendir(path);
        CHECK(dir != NULL);
        if (!dir)
            continue;
        struct dirent *de;
        while ((de = readdir(dir))) {
            char rel[1024];
            snprintf(rel, sizeof rel, "%s/%s", dirs[d], de->d_name);
            if (de->d_name[0] == '.' || strstr(de->d_name, ".dis"))
                continue;
            size_t len;
            uint8_t *map = data_file(rel, &len);
            if (!map || len < 4 || memcmp(map, "PK\3\4", 4) != 0) {
                free(map);
                continue;
            }
            ckpt__arena *ar;
            ckpt__zip z;
            ckpt_error err;
            int rc = open_zip(map, len, &ar, &z, &err);
            CHECK_OK(rc, err);
            if (rc == CKPT_OK && z.n_entries && strstr(z.entries[0].name, "/data.pkl")) {
                seen++;
                for (size_t i = 0; i < z.n_entries; i++) {
                    const ckpt__zip_entry *e = &z.entries[i];
                    if (e->data_offset % 64 != 0 || e->method != 0)
                        fprintf(stderr, "%s: %s at %llu\n", rel, e->name,
                                (unsigned long long)e->data_offset);
                    CHECK(e->data_offset % 64 == 0);
                    CHECK_EQ_INT(e->method, 0);
                }
            }
            if (rc == CKPT_OK)
                check_consistent(map, len, &z);
            ckpt__arena_free(ar);
            free(map);
        }
        closedir(dir);
    }
    CHECK(seen >= 50); /* 6 vectors + 51 corpus files at the time of writing */
}

/* ---- encrypted and tampered archives from picklescan's tests ------------------------------ */

static void test_picklescan_zips(void)
{
    static const struct {
        const char *file;
        const char *name;
        int read_status;
    } cases[] = {
        {"benign_password_protected.zip", "test.txt", CKPT_EUNSUPPORTED},
        {"malicious1_0x1.zip", "model/config.pkl", CKPT_EUNSUPPORTED},  /* flag 1: encrypted */
        {"malicious1_0x20.zip", "model/config.pkl", CKPT_EUNSUPPORTED}, /* compressed patch */
        {"malicious1_0x40.zip", "model/config.pkl", CKPT_EUNSUPPORTED}, /* strong encryption */
        /* The local header says "datap.kl"; torch goes by the central directory, and so do we. */
        {"malicious1_central_directory.zip", "data.pkl", CKPT_OK},
        /* A wrong CRC on a STORED entry is not checked, as torch does not check it. */
        {"malicious1_crc.zip", "data.pkl", CKPT_OK},
        {"int_arrays_compressed.npz", "b.npy", CKPT_OK},
        {"object_arrays_compressed.npz", "a.npy", CKPT_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "corpus/picklescan/%s", cases[i].file);
        size_t len;
        uint8_t *map = data_file(rel, &len);
        CHECK(map != NULL);
        if (!map)
            continue;
        ckpt__arena *ar;
        ckpt__zip z;
        ckpt_error err;
        CHECK_OK(open_zip(map, len, &ar, &z, &err), err);
        const ckpt__zip_entry *e = ckpt__zip_find(&z, cases[i].name);
        CHECK(e != NULL);
        if (e) {
            const uint8_t *data;
            void *owned;
            int rc = ckpt__zip_read(map, len, e, &std_alloc, MB, &data, &owned, &err);
            CHECK_EQ_INT(rc, cases[i].read_status);
            if (rc == CKPT_EUNSUPPORTED && (e->flags & 0x41))
                check_msg(&err, "is encrypted");
            if (rc == CKPT_OK && e->method == 0)
                CHECK(data[0] == 0x80); /* the pickle, PROTO 4 */
            if (rc == CKPT_OK && e->method == 8)
                CHECK(memcmp(data, "\x93NUMPY", 6) == 0);
            if (rc == CKPT_OK)
                ckpt__free(&std_alloc, owned, (size_t)e->usize);
        }
        ckpt__arena_free(ar);
        free(map);
    }
}

/* ---- hand-built archives ------------------------------------------------------------------ */

static uint8_t *pattern(size_t n, unsigned seed)
{
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((i * 31 + seed) ^ (i >> 7));
    return p;
}

static void test_handmade_zip64(void)
{
    uint8_t *a = pattern(5000, 1), *b = pattern(300, 2);
    tentry es[] = {{.name = "r/a", .data = a, .len = 5000, .method = 8},
                   {.name = "r/b", .data = b, .len = 300, .method = 0},
                   {.name = "r/empty", .data = NULL, .len = 0, .method = 8}};
    topts o = {.zip64 = true};
    tzip t = build(es, 3, &o);
    ckpt__arena *ar;
    ckpt__zip z;
    ckpt_error err;
    CHECK_OK(open_zip(t.b.p, t.b.len, &ar, &z, &err), err);
    CHECK_EQ_INT(z.n_entries, 3);
    for (size_t i = 0; i < 3 && i < z.n_entries; i++) {
        const ckpt__zip_entry *e = &z.entries[i];
        CHECK_EQ_INT(e->data_offset, es[i].data_off);
        CHECK_EQ_INT(e->csize, es[i].csize);
        CHECK_EQ_INT(e->usize, es[i].len);
        const uint8_t *data;
        void *owned;
        CHECK_OK(ckpt__zip_read(t.b.p, t.b.len, e, &std_alloc, MB, &data, &owned, &err), err);
        CHECK(data != NULL && (es[i].len == 0 || memcmp(data, es[i].data, es[i].len) == 0));
        ckpt__free(&std_alloc, owned, (size_t)e->usize);
    }
    ckpt__arena_free(ar);

    /* The locator points past the end, or at no record. */
    uint8_t *loc = t.b.p + t.eocd_off - 20;
    set64(loc + 8, t.b.len + 100);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set64(loc + 8, t.z64_off - 4);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set64(loc + 8, t.z64_off);
    /* More entries than the limit: refused before anything is allocated for them. */
    set64(t.b.p + t.z64_off + 24, (1u << 20) + 1);
    set64(t.b.p + t.z64_off + 32, (1u << 20) + 1);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ELIMIT);
    /* More entries than the directory's bytes can hold. */
    set64(t.b.p + t.z64_off + 24, 1000);
    set64(t.b.p + t.z64_off + 32, 1000);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    check_msg(&err, "cannot hold");
    set64(t.b.p + t.z64_off + 24, 3);
    set64(t.b.p + t.z64_off + 32, 3);
    CHECK_OK(try_open(&t, &err), err);
    /* A directory offset that overflows when its size is added. */
    set64(t.b.p + t.z64_off + 48, UINT64_MAX - 10);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set64(t.b.p + t.z64_off + 48, t.cd_off);
    /* Several disks. */
    set32(loc + 16, 2);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_EUNSUPPORTED);
    set32(loc + 16, 1);

    /* Entry sizes and offsets from the zip64 extra field, overflowing. */
    uint8_t *x = t.b.p + es[0].central + 46 + 3 + 4; /* after "r/a" and the field header */
    set64(x + 8, UINT64_MAX - 8); /* csize */
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    check_msg(&err, "zip: entry 'r/a' runs past the end of the file");
    set64(x + 8, es[0].csize);
    set64(x + 16, UINT64_MAX); /* local header offset */
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set64(x + 16, UINT64_MAX - 29);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set64(x + 16, 0);
    set64(x, UINT64_MAX); /* usize: only the read notices, more than DEFLATE can give */
    CHECK_OK(try_open(&t, &err), err);
    CHECK_EQ_INT(try_read(&t, 0, MB, &err), CKPT_ECORRUPT);
    check_msg(&err, "more than DEFLATE can expand to");
    set64(x, es[0].csize * 1000); /* possible, but more than max_inflate */
    CHECK_OK(try_open(&t, &err), err);
    CHECK_EQ_INT(try_read(&t, 0, 16, &err), CKPT_ELIMIT);
    check_msg(&err, "more than the limit of 16 bytes (raise ckpt_options.max_inflate)");
    set64(x, 5000);
    /* A zip64 field too short for the three values it must hold. */
    set16(x - 2, 16);
    set16(t.b.p + es[0].central + 30, 20);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set16(x - 2, 24);
    set16(t.b.p + es[0].central + 30, 28);
    CHECK_OK(try_open(&t, &err), err);
    /* A classic end record of all ones without the zip64 records. */
    set32(loc, 0);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    check_msg(&err, "zip64");
    free(t.b.p);
    free(a);
    free(b);
}

static void test_comments(void)
{
    uint8_t *comment = malloc(65535);
    for (size_t i = 0; i < 65535; i++)
        comment[i] = (uint8_t)('a' + i % 26);
    tentry es[] = {{.name = "c/x", .data = (const uint8_t *)"xyz", .len = 3}};
    topts o = {.comment = comment, .comment_len = 65535};
    tzip t = build(es, 1, &o);
    ckpt_error err;
    CHECK_OK(try_open(&t, &err), err);
    free(t.b.p);
    /* One byte more after the longest comment puts the record out of reach. */
    o.trailing = 1;
    t = build(es, 1, &o);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    CHECK_EQ_STR(err.message, "zip: no end of central directory record (truncated?)");
    free(t.b.p);
    /* Trailing bytes after a short comment are tolerated, as miniz tolerates them. */
    o.comment_len = 10;
    o.trailing = 100;
    t = build(es, 1, &o);
    CHECK_OK(try_open(&t, &err), err);
    free(t.b.p);
    /* An end record inside the comment is the last one in the file: miniz takes it, so do we
     * (this one describes an empty archive). */
    static const uint8_t fake[22] = {'P', 'K', 5, 6};
    o.comment = fake;
    o.comment_len = sizeof fake;
    o.trailing = 0;
    t = build(es, 1, &o);
    ckpt__arena *ar;
    ckpt__zip z;
    CHECK_OK(open_zip(t.b.p, t.b.len, &ar, &z, &err), err);
    CHECK_EQ_INT(z.n_entries, 0);
    CHECK(ckpt__zip_find(&z, "c/x") == NULL);
    ckpt__arena_free(ar);
    free(t.b.p);
    free(comment);
}

static void test_broken_directory(void)
{
    uint8_t *a = pattern(1000, 3), *b = pattern(64, 4);
    tentry es[] = {{.name = "k/a", .data = a, .len = 1000},
                   {.name = "k/b", .data = b, .len = 64}};
    tzip t = build(es, 2, NULL);
    uint8_t *eocd = t.b.p + t.eocd_off;
    ckpt_error err;
    CHECK_OK(try_open(&t, &err), err);

    /* Directory offset past the end, size past the end, directory into the end record. */
    set32(eocd + 16, (uint32_t)t.b.len + 100);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    check_msg(&err, "runs past the end of the file");
    set32(eocd + 16, (uint32_t)t.cd_off);
    set32(eocd + 12, 0xfffffff0u);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set32(eocd + 12, (uint32_t)t.cd_size + 4);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set32(eocd + 12, (uint32_t)t.cd_size);
    /* Entry count: more than recorded, fewer (allowed: the rest is ignored, as miniz does). */
    set16(eocd + 8, 3), set16(eocd + 10, 3);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set16(eocd + 8, 1), set16(eocd + 10, 1);
    CHECK_OK(try_open(&t, &err), err);
    set16(eocd + 8, 2);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_EUNSUPPORTED); /* 2 here, 1 in all: several disks */
    set16(eocd + 10, 2);
    set16(eocd + 4, 1);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_EUNSUPPORTED);
    set16(eocd + 4, 0);
    CHECK_OK(try_open(&t, &err), err);

    uint8_t *c0 = t.b.p + es[0].central, *c1 = t.b.p + es[1].central;
    /* Bad central signature. */
    c1[0] = 'X';
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    c1[0] = 'P';
    /* A name running past the directory. */
    set16(c1 + 28, 200);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set16(c1 + 28, 3);
    /* A NUL in a name. */
    c0[46 + 1] = 0;
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    c0[46 + 1] = '/';
    /* Local header past the end, at a place with no local header, bad local signature. */
    set32(c1 + 42, (uint32_t)t.b.len - 10);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set32(c1 + 42, 0xffffffffu); /* no zip64 field: taken literally, as miniz does */
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set32(c1 + 42, (uint32_t)es[0].data_off);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set32(c1 + 42, (uint32_t)es[1].local);
    t.b.p[es[1].local + 2] = 7;
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    t.b.p[es[1].local + 2] = 3;
    /* A local extra length that pushes the data past the end. */
    set16(t.b.p + es[1].local + 28, 0xffff);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set16(t.b.p + es[1].local + 28, 4);
    CHECK_OK(try_open(&t, &err), err);

    /* The last entry's data grown into the central directory, sizes kept equal (STORED). */
    set32(c1 + 20, 64 + 10), set32(c1 + 24, 64 + 10);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    check_msg(&err, "zip: entry 'k/b' overlaps the central directory");
    /* ... and past the end of the file. */
    set32(c1 + 20, (uint32_t)t.b.len), set32(c1 + 24, (uint32_t)t.b.len);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    check_msg(&err, "zip: entry 'k/b' runs past the end of the file");
    /* A local header inside the central directory. */
    set32(c1 + 20, 64), set32(c1 + 24, 64);
    set32(c1 + 42, (uint32_t)t.cd_off);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set32(c1 + 42, (uint32_t)es[1].local);
    /* STORED with csize != usize; an empty csize for a non-empty entry. */
    set32(c1 + 24, 63);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    check_msg(&err, "stored entry 'k/b'");
    set32(c1 + 24, 64);
    set16(c1 + 10, 8), set32(c1 + 20, 0);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    set16(c1 + 10, 0), set32(c1 + 20, 64);
    CHECK_OK(try_open(&t, &err), err);

    /* A hostile name is quoted with its control bytes escaped. */
    c0[46] = 0x1b;
    CHECK_OK(try_open(&t, &err), err);
    uint32_t into_cd = (uint32_t)(t.cd_off - es[0].data_off + 10);
    set32(c0 + 20, into_cd), set32(c0 + 24, into_cd);
    CHECK_EQ_INT(try_open(&t, &err), CKPT_ECORRUPT);
    CHECK_EQ_STR(err.message, "zip: entry '\\x1b/a' overlaps the central directory");
    free(t.b.p);
    free(a);
    free(b);
}

/* An allocator with no memory at all. */
static void *fail_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud, (void)osize;
    if (nsize == 0)
        free(ptr);
    return NULL;
}

static void test_deflate(void)
{
    ckpt_error err;
    /* A bomb: 16 MB of zeros in a few kB. */
    size_t big = 16 * MB;
    uint8_t *zeros = calloc(big, 1);
    tentry bomb[] = {{.name = "b/zeros", .data = zeros, .len = big, .method = 8}};
    tzip t = build(bomb, 1, NULL);
    CHECK(t.b.len < 64 * 1024);
    CHECK_EQ_INT(try_read(&t, 0, MB, &err), CKPT_ELIMIT);
    check_msg(&err, "more than the limit");
    CHECK_EQ_INT(try_read(&t, 0, big - 1, &err), CKPT_ELIMIT);
    CHECK_OK(try_read(&t, 0, big, &err), err);
    /* The same stream claiming a smaller size: inflation stops there. */
    uint8_t *c = t.b.p + bomb[0].central;
    set32(c + 24, 1000);
    CHECK_EQ_INT(try_read(&t, 0, MB, &err), CKPT_ECORRUPT);
    check_msg(&err, "inflates to more than its size of 1000 bytes");
    free(t.b.p);
    free(zeros);

    uint8_t *text = pattern(20000, 5);
    for (size_t i = 0; i < 20000; i++)
        text[i] = (uint8_t)('a' + text[i] % 8);
    tentry es[] = {{.name = "d/t", .data = text, .len = 20000, .method = 8},
                   {.name = "d/u", .data = (const uint8_t *)"unsupported", .len = 11},
                   {.name = "d/e", .data = (const uint8_t *)"locked", .len = 6, .flags = 1}};
    t = build(es, 3, NULL);
    c = t.b.p + es[0].central;
    CHECK_OK(try_read(&t, 0, MB, &err), err);
    /* Sizes that do not match the stream. */
    set32(c + 24, 20001);
    CHECK_EQ_INT(try_read(&t, 0, MB, &err), CKPT_ECORRUPT);
    check_msg(&err, "inflates to 20000 bytes, not its size of 20001");
    set32(c + 24, 20000);
    /* A stream cut short. */
    set32(c + 20, (uint32_t)es[0].csize / 2);
    CHECK_EQ_INT(try_read(&t, 0, MB, &err), CKPT_ECORRUPT);
    check_msg(&err, "truncated deflate stream");
    /* Bytes after the end of the stream (the next local header). */
    set32(c + 20, (uint32_t)es[0].csize + 5);
    CHECK_EQ_INT(try_read(&t, 0, MB, &err), CKPT_ECORRUPT);
    check_msg(&err, "5 bytes after the end of its deflate stream");
    set32(c + 20, (uint32_t)es[0].csize);
    /* A bad CRC. */
    set32(c + 16, es[0].crc ^ 1);
    CHECK_EQ_INT(try_read(&t, 0, MB, &err), CKPT_ECORRUPT);
    check_msg(&err, "fails its CRC-32 check");
    set32(c + 16, es[0].crc);
    /* Garbage where the stream starts: block type 3 does not exist. */
    uint8_t saved = t.b.p[es[0].data_off];
    t.b.p[es[0].data_off] = 0xff;
    CHECK_EQ_INT(try_read(&t, 0, MB, &err), CKPT_ECORRUPT);
    check_msg(&err, "corrupt deflate stream");
    t.b.p[es[0].data_off] = saved;
    CHECK_OK(try_read(&t, 0, MB, &err), err);
    /* A method other than STORED/DEFLATE, an encrypted entry: accepted at open, refused on read. */
    set16(t.b.p + es[1].central + 10, 12);
    CHECK_EQ_INT(try_read(&t, 1, MB, &err), CKPT_EUNSUPPORTED);
    CHECK_EQ_STR(err.message,
                 "zip: entry 'd/u' is compressed with method 12 (bzip2), which ckpt does not read");
    CHECK_EQ_INT(try_read(&t, 2, MB, &err), CKPT_EUNSUPPORTED);
    CHECK_EQ_STR(err.message, "zip: entry 'd/e' is encrypted");

    /* Out of memory for the inflated copy. */
    ckpt__arena *ar;
    ckpt__zip z;
    CHECK_OK(open_zip(t.b.p, t.b.len, &ar, &z, &err), err);
    ckpt__alloc none = {.fn = fail_alloc};
    const uint8_t *data;
    void *owned;
    CHECK_EQ_INT(ckpt__zip_read(t.b.p, t.b.len, &z.entries[0], &none, MB, &data, &owned, &err),
                 CKPT_ENOMEM);
    ckpt__arena_free(ar);
    free(t.b.p);
    free(text);
}

static void test_arena_limit(void)
{
    size_t len;
    uint8_t *map = data_file("vectors/views.pt", &len);
    if (!map)
        return;
    ckpt__arena *ar = ckpt__arena_new(&std_alloc, 1024);
    ckpt__zip z;
    ckpt_error err = {0};
    CHECK_EQ_INT(ckpt__zip_open(ar, map, len, &z, &err), CKPT_ELIMIT);
    CHECK(z.n_entries == 0 && z.entries == NULL);
    ckpt__arena_free(ar);
    free(map);
}

static void test_empty_and_many(void)
{
    ckpt_error err;
    tzip t = build(NULL, 0, NULL);
    ckpt__arena *ar;
    ckpt__zip z;
    CHECK_OK(open_zip(t.b.p, t.b.len, &ar, &z, &err), err);
    CHECK_EQ_INT(z.n_entries, 0);
    CHECK(ckpt__zip_find(&z, "x") == NULL);
    ckpt__arena_free(ar);
    free(t.b.p);
    ckpt__zip zero = {0};
    CHECK(ckpt__zip_find(&zero, "x") == NULL);

    enum { N = 5000 };
    static tentry es[N];
    static char names[N][32];
    for (size_t i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "many/data/%zu", i);
        es[i] = (tentry){.name = names[i], .data = (const uint8_t *)names[i],
                         .len = strlen(names[i])};
    }
    t = build(es, N, NULL);
    CHECK_OK(open_zip(t.b.p, t.b.len, &ar, &z, &err), err);
    CHECK_EQ_INT(z.n_entries, N);
    clock_t t0 = clock();
    int found = 0;
    for (int round = 0; round < 20; round++)
        for (size_t i = 0; i < N; i++) {
            const ckpt__zip_entry *e = ckpt__zip_find(&z, names[i]);
            found += e == &z.entries[i];
        }
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    CHECK_EQ_INT(found, 20 * N);
    CHECK(secs < 2.0); /* 100000 lookups; a linear search would take minutes under ASan */
    CHECK(ckpt__zip_find(&z, "many/data/5000") == NULL);
    CHECK(ckpt__zip_find(&z, "MANY/DATA/4999") == &z.entries[4999]);
    ckpt__arena_free(ar);
    free(t.b.p);
}

/* ---- truncation and random damage --------------------------------------------------------- */

static void test_truncation(void)
{
    size_t len;
    uint8_t *map = data_file("vectors/two.pt", &len);
    if (!map)
        return;
    int ok = 0;
    for (size_t n = 0; n < len; n++) {
        uint8_t *part = dup_bytes(map, n);
        ckpt__arena *ar;
        ckpt__zip z;
        ckpt_error err;
        int rc = open_zip(part, n, &ar, &z, &err);
        if (rc == CKPT_OK) {
            ok++;
            check_consistent(part, n, &z);
        } else {
            CHECK(strncmp(err.message, "zip: ", 5) == 0);
            CHECK(rc == CKPT_ECORRUPT || rc == CKPT_EUNSUPPORTED || rc == CKPT_ELIMIT);
        }
        ckpt__arena_free(ar);
        free(part);
    }
    /* Every prefix loses the end record, which is the file's last 22 bytes. */
    CHECK_EQ_INT(ok, 0);
    free(map);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void flip_test(const uint8_t *orig, size_t len, int rounds, const char *what)
{
    int opened = 0;
    for (int r = 0; r < rounds; r++) {
        uint8_t *m = dup_bytes(orig, len);
        int flips = 1 + (int)(rng() % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = (size_t)(rng() % len);
            /* Half the time aim at the directory and end records, where the structure is. */
            if (rng() % 2 && len > 200)
                at = len - 1 - (size_t)(rng() % 200);
            m[at] ^= (uint8_t)(1 + rng() % 255);
        }
        ckpt__arena *ar;
        ckpt__zip z;
        ckpt_error err;
        int rc = open_zip(m, len, &ar, &z, &err);
        if (rc == CKPT_OK) {
            opened++;
            check_consistent(m, len, &z);
        } else {
            CHECK(strncmp(err.message, "zip: ", 5) == 0);
        }
        ckpt__arena_free(ar);
        free(m);
    }
    printf("%s: %d of %d damaged copies still opened\n", what, opened, rounds);
}

static void test_flips(void)
{
    size_t len;
    uint8_t *map = data_file("vectors/two.pt", &len);
    if (map)
        flip_test(map, len, 3000, "two.pt");
    free(map);
    for (size_t c = 0; c < sizeof zc_cases / sizeof zc_cases[0]; c++)
        flip_test(zc_cases[c].bytes, zc_cases[c].len, 500, zc_cases[c].what);
}

int main(void)
{
    ckpt__alloc_init(&std_alloc, NULL);
    test_python_cases();
    test_two_pt();
    test_torch_files();
    test_picklescan_zips();
    test_handmade_zip64();
    test_comments();
    test_broken_directory();
    test_deflate();
    test_arena_limit();
    test_empty_and_many();
    test_truncation();
    test_flips();
    return check_exit();
}
