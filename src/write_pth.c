/* write_pth.c - the PyTorch zip format, as torch.save(state_dict) writes it (docs/FORMAT.md §2.3,
 * §11), streamed: the pickle is built in memory, every storage goes from the source file to
 * the output in chunks.
 *
 * Records, in this order (torch 2.x's, without the optional .format_version records):
 *     ROOT/data.pkl     protocol 2, no memo: OrderedDict of _rebuild_tensor_v2(storage, 0,
 *                       size, stride, False, OrderedDict()) with typed storages
 *                       ('storage', torch.FloatStorage, "N", 'cpu', numel); then, when the
 *                       state dict had it, BUILD with {'_metadata': OrderedDict(module ->
 *                       {'version': v})}. Nothing else: no floats, devices, dtypes, numpy, so
 *                       PyTorch 1.13's weights_only unpickler accepts it.
 *     ROOT/byteorder    "little"
 *     ROOT/data/0 ...   one per storage, in order of first reference in data.pkl
 *     ROOT/version      "3\n"
 * Every record as miniz writes it for torch: local header (version 0, flags 0x0808 with a data
 * descriptor, 0x0800 and none for an empty record, STORED, time 0, CRC and sizes 0), the name,
 * [a ZIP64 field: u64 size and u64 0 when the size is >= 0xFFFFFFFF, u64 header offset when the
 * offset is], an "FB" field padding the data to a multiple of 64, the data, the descriptor
 * (u32 sizes, or u64 with a ZIP64 field); then the central directory (real CRC-32s, 0xFFFFFFFF
 * and a ZIP64 field for big values), the ZIP64 end record, its locator, the end record. */
#include "util.h" /* the growable buffer */

#include <stdio.h>
#include <stdlib.h>
#include <zlib.h>

#define PTH_ALIGN 64                  /* data offsets are multiples of this, as torch's */
#define PTH_Z64 0xFFFFFFFFull         /* sizes and offsets from here on need ZIP64 */
#define PTH_MAX_ROOT 255              /* bytes of the archive folder's name */
#define PTH_LOCAL_HEADER 30
#define PTH_CENTRAL_HEADER 46
#define PTH_Z64_END 56
#define PTH_Z64_LOCATOR 20
#define PTH_END 22

/* The storage class torch.load maps to each dtype (NULL: none PyTorch 1.13 can load). */
static const char *storage_class(ckpt_dtype dt)
{
    switch (dt) {
    case CKPT_DT_FLOAT32: case CKPT_DT_FLOAT64: case CKPT_DT_FLOAT16: case CKPT_DT_BFLOAT16:
    case CKPT_DT_INT64: case CKPT_DT_INT32: case CKPT_DT_INT16: case CKPT_DT_INT8:
    case CKPT_DT_UINT8: case CKPT_DT_BOOL: case CKPT_DT_COMPLEX64: case CKPT_DT_COMPLEX128:
        break;
    default:
        return NULL; /* quantized ones need _rebuild_qtensor; the rest came with torch 2.x */
    }
#define PTH_STORAGE(e, name, size, storage, st)                                               \
    if (dt == CKPT_DT_##e)                                                                     \
        return storage;
    CKPT_DTYPE_MAP(PTH_STORAGE)
#undef PTH_STORAGE
    return NULL;
}

/* ---- the pickle ------------------------------------------------------------------------- */

typedef ckpt__strbuf pk; /* the pickle's bytes */

static void pk_put(pk *p, const void *data, size_t n)
{
    ckpt__sb_addn(p, data, n);
}

static void pk_byte(pk *p, uint8_t b)
{
    pk_put(p, &b, 1);
}

static void pk_str(pk *p, const char *s) /* raw text: GLOBAL's module\nname\n */
{
    pk_put(p, s, strlen(s));
}

static void pk_unicode(pk *p, const char *s)
{
    size_t n = strlen(s);
    uint8_t hdr[5] = {'X', (uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
    pk_put(p, hdr, 5);
    pk_put(p, s, n);
}

/* Python's protocol-2 choice: K, M, J, or LONG1 with the fewest two's-complement bytes. */
static void pk_int(pk *p, int64_t v)
{
    if (v >= 0 && v < 256) {
        uint8_t b[2] = {'K', (uint8_t)v};
        pk_put(p, b, 2);
    } else if (v >= 256 && v < 65536) {
        uint8_t b[3] = {'M', (uint8_t)v, (uint8_t)(v >> 8)};
        pk_put(p, b, 3);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        uint32_t u = (uint32_t)v;
        uint8_t b[5] = {'J', (uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16),
                        (uint8_t)(u >> 24)};
        pk_put(p, b, 5);
    } else {
        uint8_t b[10];
        uint64_t u = (uint64_t)v;
        int n = 8;
        /* drop top bytes that only repeat the sign */
        while (n > 1) {
            uint8_t top = (uint8_t)(u >> (8 * (n - 1)));
            uint8_t next = (uint8_t)(u >> (8 * (n - 2)));
            if ((top == 0x00 && !(next & 0x80)) || (top == 0xFF && (next & 0x80)))
                n--;
            else
                break;
        }
        b[0] = 0x8A;
        b[1] = (uint8_t)n;
        for (int i = 0; i < n; i++)
            b[2 + i] = (uint8_t)(u >> (8 * i));
        pk_put(p, b, (size_t)n + 2);
    }
}

/* A tuple of ints: ')' , items + TUPLE1/2/3, or MARK items TUPLE. */
static void pk_int_tuple(pk *p, const int64_t *v, int n)
{
    if (n == 0) {
        pk_byte(p, ')');
        return;
    }
    if (n > 3)
        pk_byte(p, '(');
    for (int i = 0; i < n; i++)
        pk_int(p, v[i]);
    pk_byte(p, n == 1 ? 0x85 : n == 2 ? 0x86 : n == 3 ? 0x87 : 't');
}

static void pk_ordered_dict(pk *p)
{
    pk_str(p, "ccollections\nOrderedDict\n");
    pk_byte(p, ')');
    pk_byte(p, 'R');
}

/* One planned tensor. */
typedef struct plan_entry {
    const ckpt_sd_entry *e;
    const ckpt_tensor *t;
    ckpt_dtype out;
    size_t record; /* its storage: index into the records (data/N is record 2 + N) */
} plan_entry;

static void pk_tensor(pk *p, const plan_entry *pe, size_t storage)
{
    const ckpt_tensor *t = pe->t;
    char key[24];
    snprintf(key, sizeof key, "%zu", storage);
    int64_t stride[CKPT_MAX_DIMS];
    int64_t st = 1;
    for (int k = t->ndim; k-- > 0;) { /* contiguous, as torch computes it for empty dims too */
        stride[k] = st;
        st = ckpt__mul_wrap(st, t->shape[k] > 1 ? t->shape[k] : 1); /* [0, 2^40, 2^40] */
    }
    pk_str(p, "ctorch._utils\n_rebuild_tensor_v2\n");
    pk_byte(p, '(');
    pk_byte(p, '(');
    pk_unicode(p, "storage");
    pk_byte(p, 'c');
    pk_str(p, "torch\n");
    pk_str(p, storage_class(pe->out));
    pk_byte(p, '\n');
    pk_unicode(p, key);
    pk_unicode(p, "cpu");
    pk_int(p, t->numel);
    pk_byte(p, 't');
    pk_byte(p, 'Q');
    pk_int(p, 0);
    pk_int_tuple(p, t->shape, t->ndim);
    pk_int_tuple(p, stride, t->ndim);
    pk_byte(p, 0x89); /* requires_grad False */
    pk_ordered_dict(p);
    pk_byte(p, 't');
    pk_byte(p, 'R');
}

/* storage_of[i]: the data/N index of entry i's storage. */
static void build_pickle(pk *p, const ckpt_sd *sd, const plan_entry *pl,
                         const size_t *storage_of)
{
    pk_byte(p, 0x80);
    pk_byte(p, 2);
    pk_ordered_dict(p);
    size_t n = sd->n_entries;
    if (n > 1)
        pk_byte(p, '(');
    for (size_t i = 0; i < n; i++) {
        pk_unicode(p, pl[i].e->key);
        pk_tensor(p, &pl[i], storage_of[i]);
    }
    if (n)
        pk_byte(p, n > 1 ? 'u' : 's');
    if (sd->has_metadata) {
        pk_byte(p, '}');
        pk_unicode(p, "_metadata");
        pk_ordered_dict(p);
        if (sd->n_meta > 1)
            pk_byte(p, '(');
        for (size_t i = 0; i < sd->n_meta; i++) {
            pk_unicode(p, sd->meta[i].module);
            pk_byte(p, '}');
            if (sd->meta[i].version >= 0) {
                pk_unicode(p, "version");
                pk_int(p, sd->meta[i].version);
                pk_byte(p, 's');
            }
        }
        if (sd->n_meta)
            pk_byte(p, sd->n_meta > 1 ? 'u' : 's');
        pk_byte(p, 's');
        pk_byte(p, 'b');
    }
    pk_byte(p, '.');
}

/* ---- the archive ----------------------------------------------------------------------- */

typedef struct record {
    char *name;            /* ROOT/... */
    const uint8_t *bytes;  /* in-memory content, or NULL for a tensor */
    const plan_entry *pe;  /* the tensor whose elements are the content */
    uint64_t size;
    uint64_t header;       /* offset of the local header */
    uint64_t data;         /* offset of the data */
    uint16_t extra;        /* local extra length */
    uint16_t z64;          /* local ZIP64 field length, 0 for none */
    bool big_size, big_offset;
    uint32_t crc;
} record;

static void le16(uint8_t *p, uint64_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void le32(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The torch.save folder name for path: the base name up to its last dot; "archive" when that
 * is empty or not printable ASCII (torch 2.x writes non-ASCII names through a stream). */
static int root_name(const char *path, const char *given, char *out, size_t cap,
                     ckpt_error *err)
{
    const char *r = given;
    size_t n;
    if (r) {
        n = strlen(r);
    } else {
        const char *base = path;
        for (const char *q = path; *q; q++)
            if (*q == '/' || *q == '\\')
                base = q + 1;
        const char *dot = strrchr(base, '.');
        n = dot ? (size_t)(dot - base) : strlen(base);
        r = base;
        bool ok = n > 0;
        for (size_t i = 0; i < n && ok; i++)
            ok = (unsigned char)r[i] >= 0x20 && (unsigned char)r[i] < 0x7f;
        if (!ok) {
            r = "archive";
            n = 7;
        }
    }
    if (n == 0 || n > PTH_MAX_ROOT || n >= cap || memchr(r, '/', n))
        return CKPT_FAIL(err, CKPT_EINVAL, "'%.*s' cannot be an archive folder name", (int)n, r);
    memcpy(out, r, n);
    out[n] = '\0';
    return CKPT_OK;
}

/* ---- CRC-32 ------------------------------------------------------------------------------
 * zlib's crc32 runs at 1-2 GB/s, a third of the time of writing a .pth from the page cache. On
 * x86-64 with PCLMULQDQ the bulk is folded with carry-less multiplications instead (Intel's
 * "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ", bit-reflected CRC-32 of
 * zip, constants from that paper); zlib does the ends. Tests compare both with zlib. */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PTH_CRC_SIMD 1

__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_fold(const uint8_t *p, size_t n,
                                                                   uint32_t crc)
{
    /* n >= 64, a multiple of 16; crc is the raw register (not inverted) */
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
    const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124);
    const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
    const __m128i mask32 = _mm_setr_epi32(~0, 0, ~0, 0);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i x2 = _mm_loadu_si128((const __m128i *)(const void *)(p + 16));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(const void *)(p + 32));
    __m128i x4 = _mm_loadu_si128((const __m128i *)(const void *)(p + 48));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    p += 64;
    n -= 64;
    while (n >= 64) { /* four lanes, each folded 512 bits forward */
        __m128i y1 = _mm_clmulepi64_si128(x1, k1k2, 0x00);
        __m128i y2 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
        __m128i y3 = _mm_clmulepi64_si128(x3, k1k2, 0x00);
        __m128i y4 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
        x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k1k2, 0x11), y1);
        x2 = _mm_xor_si128(_mm_clmulepi64_si128(x2, k1k2, 0x11), y2);
        x3 = _mm_xor_si128(_mm_clmulepi64_si128(x3, k1k2, 0x11), y3);
        x4 = _mm_xor_si128(_mm_clmulepi64_si128(x4, k1k2, 0x11), y4);
        x1 = _mm_xor_si128(x1, _mm_loadu_si128((const __m128i *)(const void *)p));
        x2 = _mm_xor_si128(x2, _mm_loadu_si128((const __m128i *)(const void *)(p + 16)));
        x3 = _mm_xor_si128(x3, _mm_loadu_si128((const __m128i *)(const void *)(p + 32)));
        x4 = _mm_xor_si128(x4, _mm_loadu_si128((const __m128i *)(const void *)(p + 48)));
        p += 64;
        n -= 64;
    }
    /* the four lanes into one, then 128 bits at a time */
    __m128i lanes[3] = {x2, x3, x4};
    for (int i = 0; i < 3; i++) {
        __m128i lo = _mm_clmulepi64_si128(x1, k3k4, 0x00);
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), lanes[i]), lo);
    }
    while (n >= 16) {
        __m128i lo = _mm_clmulepi64_si128(x1, k3k4, 0x00);
        x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), lo);
        x1 = _mm_xor_si128(x1, _mm_loadu_si128((const __m128i *)(const void *)p));
        p += 16;
        n -= 16;
    }
    /* 128 -> 64 bits, then Barrett reduction to 32 */
    __m128i t = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), t);
    t = _mm_srli_si128(x1, 4);
    x1 = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), k5, 0x00);
    x1 = _mm_xor_si128(x1, t);
    t = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), poly, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), poly, 0x00);
    x1 = _mm_xor_si128(x1, t);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n)
{
#ifdef PTH_CRC_SIMD
    if (n >= 64 && __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1")) {
        size_t bulk = n & ~(size_t)15;
        crc = ~crc_fold(p, bulk, ~crc);
        p += bulk;
        n -= bulk;
    }
#endif
    for (size_t left = n; left;) { /* crc32's length is a uInt */
        uInt k = left > (1u << 30) ? (1u << 30) : (uInt)left;
        crc = (uint32_t)crc32(crc, p, k);
        p += k;
        left -= k;
    }
    return crc;
}

typedef struct sink {
    ckpt__write_file *w;
    uint32_t crc;
} sink;

static int sink_chunk(void *ud, const void *data, size_t n, ckpt_error *err)
{
    sink *s = ud;
    s->crc = crc_update(s->crc, data, n);
    return ckpt__write_bytes(s->w, data, n, err);
}

static int write_local(ckpt__write_file *w, record *r, ckpt_error *err)
{
    uint8_t h[PTH_LOCAL_HEADER + 4 + 24 + 4];
    size_t nlen = strlen(r->name);
    le32(h, 0x04034B50);
    le16(h + 4, 0);
    le16(h + 6, r->size ? 0x0808 : 0x0800);
    memset(h + 8, 0, 18); /* method, time, date, crc, sizes */
    le16(h + 26, nlen);
    le16(h + 28, r->extra);
    int rc = ckpt__write_bytes(w, h, PTH_LOCAL_HEADER, err);
    if (!rc)
        rc = ckpt__write_bytes(w, r->name, nlen, err);
    size_t x = 0;
    if (r->z64) {
        le16(h, 0x0001);
        le16(h + 2, r->z64 - 4u);
        x = 4;
        if (r->big_size) {
            le64(h + x, r->size);
            le64(h + x + 8, 0); /* torch's miniz writes 0 for the compressed size here */
            x += 16;
        }
        if (r->big_offset) {
            le64(h + x, r->header);
            x += 8;
        }
    }
    size_t pad = r->extra - r->z64 - 4u;
    le16(h + x, 0x4246); /* "FB" */
    le16(h + x + 2, pad);
    x += 4;
    if (!rc)
        rc = ckpt__write_bytes(w, h, x, err);
    static const uint8_t zs[PTH_ALIGN] = {
        'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z',
        'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z',
        'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z',
        'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z', 'Z'};
    if (!rc && pad)
        rc = ckpt__write_bytes(w, zs, pad, err);
    return rc;
}

static int write_record(ckpt__write_file *w, record *r, ckpt_error *err)
{
    int rc = write_local(w, r, err);
    if (rc)
        return rc;
    if (ckpt__write_offset(w) != r->data)
        return CKPT_FAIL(err, CKPT_EIO, "internal error: record '%s' at %llu, planned %llu",
                         r->name, (unsigned long long)ckpt__write_offset(w),
                         (unsigned long long)r->data);
    sink s = {w, 0};
    if (r->bytes)
        rc = sink_chunk(&s, r->bytes, (size_t)r->size, err);
    else
        rc = ckpt_tensor_stream(r->pe->t, r->pe->out, sink_chunk, &s, err);
    if (rc)
        return rc;
    r->crc = s.crc;
    if (!r->size)
        return CKPT_OK;
    uint8_t d[24];
    le32(d, 0x08074B50);
    le32(d + 4, r->crc);
    if (r->z64) {
        le64(d + 8, r->size);
        le64(d + 16, r->size);
        return ckpt__write_bytes(w, d, 24, err);
    }
    le32(d + 8, r->size);
    le32(d + 12, r->size);
    return ckpt__write_bytes(w, d, 16, err);
}

static size_t central_extra(const record *r)
{
    return r->big_size || r->big_offset ? 4u + 16u * r->big_size + 8u * r->big_offset : 0;
}

static int write_central(ckpt__write_file *w, const record *r, ckpt_error *err)
{
    uint8_t h[PTH_CENTRAL_HEADER];
    size_t nlen = strlen(r->name), cx = central_extra(r);
    le32(h, 0x02014B50);
    le16(h + 4, 0);
    le16(h + 6, 0);
    le16(h + 8, r->size ? 0x0808 : 0x0800);
    le16(h + 10, 0);
    le32(h + 12, 0);
    le32(h + 16, r->crc);
    le32(h + 20, r->big_size ? 0xFFFFFFFF : r->size);
    le32(h + 24, r->big_size ? 0xFFFFFFFF : r->size);
    le16(h + 28, nlen);
    le16(h + 30, cx);
    memset(h + 32, 0, 10); /* comment, disk, attributes */
    le32(h + 42, r->big_offset ? 0xFFFFFFFF : r->header);
    int rc = ckpt__write_bytes(w, h, sizeof h, err);
    if (!rc)
        rc = ckpt__write_bytes(w, r->name, nlen, err);
    if (!rc && cx) {
        uint8_t x[28];
        size_t k = 4;
        le16(x, 0x0001);
        le16(x + 2, cx - 4);
        if (r->big_size) {
            le64(x + k, r->size);
            le64(x + k + 8, r->size);
            k += 16;
        }
        if (r->big_offset) {
            le64(x + k, r->header);
            k += 8;
        }
        rc = ckpt__write_bytes(w, x, k, err);
    }
    return rc;
}

static int write_end(ckpt__write_file *w, uint64_t n, uint64_t cd_off, uint64_t cd_size,
                     uint64_t z64_from, ckpt_error *err)
{
    uint8_t e[PTH_Z64_END + PTH_Z64_LOCATOR + PTH_END];
    uint64_t z64_end = cd_off + cd_size;
    uint8_t *p = e;
    le32(p, 0x06064B50);
    le64(p + 4, 44);
    le16(p + 12, 0x031E);
    le16(p + 14, 0x002D);
    le32(p + 16, 0);
    le32(p + 20, 0);
    le64(p + 24, n);
    le64(p + 32, n);
    le64(p + 40, cd_size);
    le64(p + 48, cd_off);
    p += PTH_Z64_END;
    le32(p, 0x07064B50);
    le32(p + 4, 0);
    le64(p + 8, z64_end);
    le32(p + 16, 1);
    p += PTH_Z64_LOCATOR;
    le32(p, 0x06054B50);
    le16(p + 4, 0);
    le16(p + 6, 0);
    le16(p + 8, n < 0xFFFF ? n : 0xFFFF);
    le16(p + 10, n < 0xFFFF ? n : 0xFFFF);
    le32(p + 12, cd_size >= z64_from ? 0xFFFFFFFF : cd_size);
    le32(p + 16, cd_off >= z64_from ? 0xFFFFFFFF : cd_off);
    le16(p + 20, 0);
    return ckpt__write_bytes(w, e, sizeof e, err);
}

/* ---- planning ---------------------------------------------------------------------------- */

/* Orders entries so that identical views of one storage are adjacent, the first one first
 * (the pointers are into one array, so their order is the entries' order). */
static int cmp_view(const void *a, const void *b)
{
    const plan_entry *x = *(const plan_entry *const *)a, *y = *(const plan_entry *const *)b;
    const ckpt_tensor *s = x->t, *t = y->t;
    if (s->storage != t->storage)
        return (uintptr_t)s->storage < (uintptr_t)t->storage ? -1 : 1;
    if (s->dtype != t->dtype)
        return s->dtype < t->dtype ? -1 : 1;
    if (x->out != y->out)
        return x->out < y->out ? -1 : 1;
    if (s->offset != t->offset)
        return s->offset < t->offset ? -1 : 1;
    if (s->ndim != t->ndim)
        return s->ndim < t->ndim ? -1 : 1;
    for (int k = 0; k < s->ndim; k++) {
        if (s->shape[k] != t->shape[k])
            return s->shape[k] < t->shape[k] ? -1 : 1;
        if (s->stride[k] != t->stride[k])
            return s->stride[k] < t->stride[k] ? -1 : 1;
    }
    return (uintptr_t)x < (uintptr_t)y ? -1 : (uintptr_t)x > (uintptr_t)y;
}

static bool same_view(const plan_entry *x, const plan_entry *y)
{
    const ckpt_tensor *s = x->t, *t = y->t;
    if (s->storage != t->storage || s->dtype != t->dtype || x->out != y->out ||
        s->offset != t->offset || s->ndim != t->ndim)
        return false;
    for (int k = 0; k < s->ndim; k++)
        if (s->shape[k] != t->shape[k] || s->stride[k] != t->stride[k])
            return false;
    return true;
}

/* Fills pl from sd and opt: output dtypes; owner[i] = the first entry with the identical view
 * (i itself when none). */
static int plan_entries(const ckpt_sd *sd, const ckpt_write_options *opt, plan_entry *pl,
                        size_t *owner, ckpt_error *err)
{
    size_t n = sd->n_entries;
    for (size_t i = 0; i < n; i++) {
        const ckpt_sd_entry *e = &sd->entries[i];
        if (!e->value || e->value->type != CKPT_T_TENSOR)
            return CKPT_FAIL(err, CKPT_EINVAL, "'%s' is a %s, not a tensor", e->key,
                             e->value ? ckpt_type_name(e->value->type) : "missing value");
        const ckpt_tensor *t = e->value->u.tensor;
        ckpt_dtype out = t->dtype;
        if (opt && opt->convert && ckpt_dtype_is_float(t->dtype))
            out = opt->dtype;
        if (!storage_class(out))
            return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                             "'%s' is %s, which PyTorch 1.13's file format cannot hold "
                             "(write safetensors%s)", e->key, ckpt_dtype_name(out),
                             ckpt_dtype_safetensors(out) ? "" : ", or convert it");
        pl[i].e = e;
        pl[i].t = t;
        pl[i].out = out;
        owner[i] = i;
    }
    const plan_entry **ix = malloc((n + 1) * sizeof *ix);
    if (!ix)
        return CKPT_NOMEM(err);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (pl[i].t->numel > 0 && pl[i].t->storage) /* empty tensors get storages of their own */
            ix[m++] = &pl[i];
    qsort(ix, m, sizeof *ix, cmp_view);
    for (size_t k = 1; k < m; k++)
        if (same_view(ix[k], ix[k - 1]))
            owner[ix[k] - pl] = owner[ix[k - 1] - pl];
    free(ix);
    return CKPT_OK;
}

int ckpt_write_pth(const char *path, const struct ckpt_sd *sd, const ckpt_write_options *opt,
                   ckpt_write_report **report, ckpt_error *err)
{
    if (report)
        *report = NULL;
    if (opt && opt->convert && !ckpt_dtype_is_float(opt->dtype))
        return CKPT_FAIL(err, CKPT_EINVAL, "cannot convert tensors to %s",
                         ckpt_dtype_name(opt->dtype) ? ckpt_dtype_name(opt->dtype) : "?");
    uint64_t z64_from = opt && opt->zip64_from ? opt->zip64_from : PTH_Z64;
    char root[PTH_MAX_ROOT + 1];
    int rc = root_name(path, opt ? opt->root : NULL, root, sizeof root, err);
    if (rc)
        return rc;
    size_t n = sd->n_entries;
    plan_entry *pl = calloc(n + 1, sizeof *pl);
    size_t *owner = calloc(n + 1, sizeof *owner);
    size_t *storage_of = calloc(n + 1, sizeof *storage_of);
    record *recs = calloc(n + 3, sizeof *recs);
    ckpt_write_report *rep = calloc(1, sizeof *rep);
    pk p = {0};
    size_t n_recs = 0;
    ckpt__write_file *w = NULL;
    if (!pl || !owner || !storage_of || !recs || !rep) {
        rc = CKPT_NOMEM(err);
        goto out;
    }
    if ((rc = plan_entries(sd, opt, pl, owner, err)))
        goto out;

    /* storages in order of first reference; identical views share their owner's */
    size_t n_storages = 0;
    for (size_t i = 0; i < n; i++) {
        if (owner[i] == i) {
            storage_of[i] = n_storages++;
        } else {
            storage_of[i] = storage_of[owner[i]];
            rep->n_shared++;
        }
        rep->n_converted += pl[i].out != pl[i].t->dtype;
    }
    if (rep->n_shared && !(rep->shared = calloc(rep->n_shared, sizeof *rep->shared))) {
        rc = CKPT_NOMEM(err);
        goto out;
    }
    for (size_t i = 0, k = 0; i < n; i++)
        if (owner[i] != i)
            rep->shared[k++] = (ckpt_write_shared){pl[i].e->key, pl[owner[i]].e->key};
    build_pickle(&p, sd, pl, storage_of);
    if (p.failed) {
        rc = CKPT_NOMEM(err);
        goto out;
    }

    /* the records and where everything goes */
    static const uint8_t byteorder[] = "little", version[] = "3\n";
    recs[n_recs++] = (record){.name = NULL, .bytes = (const uint8_t *)p.buf, .size = p.len};
    recs[n_recs++] = (record){.name = NULL, .bytes = byteorder, .size = 6};
    for (size_t i = 0; i < n; i++) {
        if (owner[i] != i)
            continue;
        uint64_t size;
        if (ckpt__mul_overflow((uint64_t)pl[i].t->numel, (uint64_t)ckpt_dtype_size(pl[i].out),
                               &size)) {
            rc = CKPT_FAIL(err, CKPT_ELIMIT, "'%s' is too large to write", pl[i].e->key);
            goto out;
        }
        recs[n_recs++] = (record){.name = NULL, .pe = &pl[i], .size = size};
        rep->data_bytes += size;
    }
    recs[n_recs++] = (record){.name = NULL, .bytes = version, .size = 2};
    uint64_t cursor = 0, cd_size = 0;
    for (size_t i = 0; i < n_recs; i++) {
        record *r = &recs[i];
        char rec[32];
        if (i == 0)
            snprintf(rec, sizeof rec, "data.pkl");
        else if (i == 1)
            snprintf(rec, sizeof rec, "byteorder");
        else if (i == n_recs - 1)
            snprintf(rec, sizeof rec, "version");
        else
            snprintf(rec, sizeof rec, "data/%zu", i - 2);
        size_t cap = strlen(root) + 1 + strlen(rec) + 1;
        if (!(r->name = malloc(cap))) {
            rc = CKPT_NOMEM(err);
            goto out;
        }
        snprintf(r->name, cap, "%s/%s", root, rec);
        size_t nlen = strlen(r->name);
        r->header = cursor;
        r->big_size = r->size >= z64_from;
        r->big_offset = cursor >= z64_from;
        r->z64 = (uint16_t)(r->big_size || r->big_offset
                                ? 4u + 16u * r->big_size + 8u * r->big_offset : 0u);
        uint64_t start = cursor + PTH_LOCAL_HEADER + nlen + 4 + r->z64;
        uint64_t pad = (PTH_ALIGN - start % PTH_ALIGN) % PTH_ALIGN;
        r->extra = (uint16_t)(r->z64 + 4 + pad);
        r->data = start + pad;
        if (ckpt__add_overflow(r->data, r->size, &cursor) ||
            ckpt__add_overflow(cursor, (uint64_t)(r->size ? (r->z64 ? 24 : 16) : 0), &cursor)) {
            rc = CKPT_FAIL(err, CKPT_ELIMIT, "the output would be too large");
            goto out;
        }
        cd_size += PTH_CENTRAL_HEADER + nlen + central_extra(r);
    }
    uint64_t cd_off = cursor;
    uint64_t total = cd_off + cd_size + PTH_Z64_END + PTH_Z64_LOCATOR + PTH_END;

    if ((rc = ckpt__write_open(path, opt, &w, err)))
        goto out;
    if ((rc = ckpt__write_expect(w, total, err)))
        goto out;
    for (size_t i = 0; i < n_recs && !rc; i++)
        rc = write_record(w, &recs[i], err);
    for (size_t i = 0; i < n_recs && !rc; i++)
        rc = write_central(w, &recs[i], err);
    if (!rc)
        rc = write_end(w, n_recs, cd_off, cd_size, z64_from, err);
    if (!rc)
        rc = ckpt__write_finish(&w, total, err);
    if (rc)
        goto out;
    rep->file_bytes = total;
    rep->n_tensors = n;
    rep->n_records = n_storages;
    if (report) {
        *report = rep;
        rep = NULL;
    }
out:
    ckpt__write_abort(w);
    for (size_t i = 0; i < n_recs; i++)
        free(recs[i].name);
    free(recs);
    ckpt__sb_free(&p);
    free(storage_of);
    free(owner);
    free(pl);
    ckpt_write_report_free(rep);
    return rc;
}
