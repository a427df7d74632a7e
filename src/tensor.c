/* tensor.c - strided tensor views over storages: element access, contiguous copies with
 * conversion to float32, and the SHA-256 of a tensor's row-major bytes.
 *
 * Element (i_0..i_{n-1}) of t is at byte (offset + sum i_k * stride[k]) * elsize of its
 * storage. The pickle layer checked at parse time that every element lies inside the storage,
 * so the walkers here only re-check that the storage's bytes are there. */
#include "internal.h"

#include <nettle/sha2.h>

int64_t ckpt_tensor_numel(const ckpt_tensor *t)
{
    return t->numel;
}

uint64_t ckpt_tensor_nbytes(const ckpt_tensor *t)
{
    uint64_t n;
    if (ckpt__mul_overflow((uint64_t)t->numel, (uint64_t)ckpt_dtype_size(t->dtype), &n))
        return UINT64_MAX; /* only a broadcast view can be this large */
    return n;
}

bool ckpt_tensor_is_contiguous(const ckpt_tensor *t)
{
    if (t->numel <= 1)
        return true;
    int64_t expect = 1;
    for (int k = t->ndim - 1; k >= 0; k--) {
        if (t->shape[k] != 1 && t->stride[k] != expect)
            return false;
        expect *= t->shape[k];
    }
    return true;
}

/* The storage's bytes and the tensor's first byte in them. */
static int tensor_base(const ckpt_tensor *t, const uint8_t **base, ckpt_error *err)
{
    const uint8_t *data = NULL;
    if (t->numel == 0) {
        *base = NULL;
        return CKPT_OK;
    }
    int rc = ckpt__storage_bytes(t->storage, &data, err);
    if (rc)
        return rc;
    *base = data + (uint64_t)t->offset * ckpt_dtype_size(t->dtype);
    return CKPT_OK;
}

int ckpt_tensor_data(const ckpt_tensor *t, const void **data, ckpt_error *err)
{
    if (!ckpt_tensor_is_contiguous(t))
        return CKPT_FAIL(err, CKPT_EINVAL, "tensor is not contiguous; copy it with ckpt_tensor_read");
    const uint8_t *base;
    int rc = tensor_base(t, &base, err);
    if (rc == CKPT_OK)
        *data = base;
    return rc;
}

/* Calls run(ud, src, n) for the tensor's elements in row-major order, in runs of n elements
 * that are contiguous in memory (the innermost dimension when its stride is 1). */
typedef void (*run_fn)(void *ud, const uint8_t *src, size_t n);

static void walk(const ckpt_tensor *t, const uint8_t *base, run_fn run, void *ud)
{
    size_t es = ckpt_dtype_size(t->dtype);
    if (t->numel == 0)
        return;
    if (ckpt_tensor_is_contiguous(t)) {
        run(ud, base, (size_t)t->numel);
        return;
    }
    int nd = t->ndim;
    int64_t idx[CKPT_MAX_DIMS] = {0};
    int64_t inner = t->shape[nd - 1], istride = t->stride[nd - 1];
    for (;;) {
        uint64_t off = 0;
        for (int k = 0; k < nd - 1; k++)
            off += (uint64_t)(idx[k] * t->stride[k]);
        const uint8_t *p = base + off * es;
        if (istride == 1) {
            run(ud, p, (size_t)inner);
        } else {
            for (int64_t i = 0; i < inner; i++)
                run(ud, p + (uint64_t)(i * istride) * es, 1);
        }
        int k = nd - 2;
        for (; k >= 0; k--) {
            if (++idx[k] < t->shape[k])
                break;
            idx[k] = 0;
        }
        if (k < 0)
            return;
    }
}

/* ---- conversion to float32 ------------------------------------------------------------- */

static float load_f32(ckpt_dtype dt, const uint8_t *p)
{
    switch (dt) {
    case CKPT_DT_FLOAT32: { float v; memcpy(&v, p, 4); return v; }
    case CKPT_DT_FLOAT64: { double v; memcpy(&v, p, 8); return (float)v; }
    case CKPT_DT_FLOAT16: {
        uint16_t v;
        memcpy(&v, p, 2);
        return ckpt__f32_from_bits(ckpt__f16_to_f32(v));
    }
    case CKPT_DT_BFLOAT16: {
        uint16_t v;
        memcpy(&v, p, 2);
        return ckpt__f32_from_bits(ckpt__bf16_to_f32(v));
    }
    case CKPT_DT_INT64: { int64_t v; memcpy(&v, p, 8); return (float)v; }
    case CKPT_DT_INT32: { int32_t v; memcpy(&v, p, 4); return (float)v; }
    case CKPT_DT_INT16: { int16_t v; memcpy(&v, p, 2); return (float)v; }
    case CKPT_DT_INT8: return (float)(int8_t)p[0];
    case CKPT_DT_UINT8: return (float)p[0];
    case CKPT_DT_BOOL: return p[0] ? 1.0f : 0.0f;
    case CKPT_DT_UINT16: { uint16_t v; memcpy(&v, p, 2); return (float)v; }
    case CKPT_DT_UINT32: { uint32_t v; memcpy(&v, p, 4); return (float)v; }
    case CKPT_DT_UINT64: { uint64_t v; memcpy(&v, p, 8); return (float)v; }
    default: return 0.0f; /* unreachable: refused by convertible() */
    }
}

static bool convertible(ckpt_dtype dt)
{
    switch (dt) {
    case CKPT_DT_FLOAT32: case CKPT_DT_FLOAT64: case CKPT_DT_FLOAT16: case CKPT_DT_BFLOAT16:
    case CKPT_DT_INT64: case CKPT_DT_INT32: case CKPT_DT_INT16: case CKPT_DT_INT8:
    case CKPT_DT_UINT8: case CKPT_DT_BOOL: case CKPT_DT_UINT16: case CKPT_DT_UINT32:
    case CKPT_DT_UINT64:
        return true;
    default:
        return false;
    }
}

typedef struct copy_ctx {
    uint8_t *dst;
    size_t elsize;
    ckpt_dtype from;
    bool to_f32;
} copy_ctx;

static void copy_run(void *ud, const uint8_t *src, size_t n)
{
    copy_ctx *c = ud;
    if (!c->to_f32) {
        memcpy(c->dst, src, n * c->elsize);
        c->dst += n * c->elsize;
        return;
    }
    float *out = (float *)(void *)c->dst;
    for (size_t i = 0; i < n; i++)
        out[i] = load_f32(c->from, src + i * c->elsize);
    c->dst += n * sizeof(float);
}

int ckpt_tensor_read(const ckpt_tensor *t, ckpt_dtype to, void *buf, size_t bufsize,
                     ckpt_error *err)
{
    bool to_f32 = to != t->dtype;
    if (to_f32 && (to != CKPT_DT_FLOAT32 || !convertible(t->dtype)))
        return CKPT_FAIL(err, CKPT_EINVAL, "cannot convert %s to %s", ckpt_dtype_name(t->dtype),
                         ckpt_dtype_name(to) ? ckpt_dtype_name(to) : "?");
    uint64_t need = (uint64_t)t->numel * ckpt_dtype_size(to);
    if (bufsize < need)
        return CKPT_FAIL(err, CKPT_EINVAL, "buffer of %zu bytes is smaller than the %llu needed",
                         bufsize, (unsigned long long)need);
    const uint8_t *base;
    int rc = tensor_base(t, &base, err);
    if (rc)
        return rc;
    if (!to_f32 && ckpt_tensor_is_contiguous(t) && need > 0) {
        int got = ckpt__file_read(t->storage->file, base, (size_t)need, buf, err);
        if (got != 0)
            return got > 0 ? CKPT_OK : err ? err->status : CKPT_EIO;
    }
    copy_ctx c = {buf, ckpt_dtype_size(t->dtype), t->dtype, to_f32};
    walk(t, base, copy_run, &c);
    return CKPT_OK;
}

/* ---- SHA-256 --------------------------------------------------------------------------- */

typedef struct hash_ctx {
    struct sha256_ctx sha;
    size_t elsize;
    bool is_bool;
} hash_ctx;

static void hash_run(void *ud, const uint8_t *src, size_t n)
{
    hash_ctx *h = ud;
    if (!h->is_bool) {
        sha256_update(&h->sha, n * h->elsize, src);
        return;
    }
    /* bool is one byte 0/1, whatever other non-zero byte a writer stored */
    uint8_t tmp[4096];
    while (n) {
        size_t m = n < sizeof tmp ? n : sizeof tmp;
        for (size_t i = 0; i < m; i++)
            tmp[i] = src[i] != 0;
        sha256_update(&h->sha, m, tmp);
        src += m;
        n -= m;
    }
}

int ckpt_tensor_sha256(const ckpt_tensor *t, char hex[65], ckpt_error *err)
{
    /* A stride-0 view can name 2^62 elements of a 4-byte storage; hashing what it names is
     * allowed up to a multiple of the bytes really stored (see the header). */
    uint64_t logical, stored = t->storage ? t->storage->nbytes : 0;
    if (ckpt__mul_overflow((uint64_t)t->numel, (uint64_t)ckpt_dtype_size(t->dtype), &logical))
        logical = UINT64_MAX;
    if (logical > CKPT_HASH_MIN_BYTES && logical / CKPT_HASH_MAX_EXPANSION > stored)
        return CKPT_FAIL(err, CKPT_ELIMIT,
                         "a view of %lld elements over a %llu-byte storage is too large to hash",
                         (long long)t->numel, (unsigned long long)stored);
    const uint8_t *base;
    int rc = tensor_base(t, &base, err);
    if (rc)
        return rc;
    hash_ctx h;
    sha256_init(&h.sha);
    h.elsize = ckpt_dtype_size(t->dtype);
    h.is_bool = t->dtype == CKPT_DT_BOOL;
    walk(t, base, hash_run, &h);
    uint8_t digest[SHA256_DIGEST_SIZE];
    sha256_digest(&h.sha, sizeof digest, digest);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = '\0';
    return CKPT_OK;
}
