/* convert.c - dtype conversion between the float dtypes exactly as PyTorch 1.13's CPU kernels
 * do it, and streaming a tensor's elements (row-major, converted or not) to a sink in chunks.
 *
 * The roundings are all round-to-nearest-even on the bit patterns, so no FPU mode matters
 * except for float64 -> float32, a C cast as in torch. What torch does with NaN depends on
 * which of its kernels runs (measured on 1.13.1, AVX2):
 *     float32 -> bfloat16   vector kernel 0xFFFF; scalar kernel 0x7FC0 (c10::BFloat16). The
 *                           vector one runs when the innermost iterated dimension has stride 1
 *                           (any contiguous or permuted-dense tensor), the scalar one for other
 *                           strides and for broadcasts.
 *     float64 -> bfloat16   vector kernel on blocks of 16, the last n % 16 scalar.
 *     float16 -> bfloat16   scalar: 0x7FC0.
 *     any     -> float16    sign | 0x7E00 (both kernels).
 *     float16 -> float32    quiet bit set, payload kept (the F16C instruction and c10's
 *                           scalar code agree).
 * ckpt_tensor_stream reproduces the choice from the tensor's layout; see docs/EXTRACT.md. */
#include "internal.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define CONV_BUF_BYTES (1u << 20)     /* the buffer converted or gathered elements pass through */
#define CONV_DIRECT_CHUNK (8u << 20)  /* pieces of a tensor handed over in place */
#define CONV_GATHER 256               /* elements of a strided row gathered at once */
#define CONV_F64_BLOCK 16             /* elements torch's float64 -> bfloat16 kernel vectorises */
#define BF16_NAN_VECTOR 0xFFFFu
#define BF16_NAN_SCALAR 0x7FC0u

bool ckpt_dtype_is_float(ckpt_dtype dt)
{
    return dt == CKPT_DT_FLOAT32 || dt == CKPT_DT_FLOAT64 || dt == CKPT_DT_FLOAT16 ||
           dt == CKPT_DT_BFLOAT16;
}

/* ---- scalar conversions on bit patterns (half.c) -------------------------------------- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ---- bulk conversion ------------------------------------------------------------------- */

/* How the NaNs of one call come out in bfloat16 (see the header of this file). */
typedef struct nan_rule {
    uint16_t f32;      /* float32 source: BF16_NAN_VECTOR or BF16_NAN_SCALAR */
    uint64_t f64_tail; /* float64 source: elements at this index of the tensor and after are
                        * scalar, before it vector */
    uint64_t index;    /* index in the tensor of the call's first element */
} nan_rule;

static float load_float(ckpt_dtype from, const uint8_t *p)
{
    switch (from) {
    case CKPT_DT_FLOAT16: {
        uint16_t h;
        memcpy(&h, p, 2);
        return ckpt__f32_from_bits(ckpt__f16_to_f32(h));
    }
    case CKPT_DT_BFLOAT16: {
        uint16_t b;
        memcpy(&b, p, 2);
        return ckpt__f32_from_bits(ckpt__bf16_to_f32(b));
    }
    case CKPT_DT_FLOAT64: {
        double d;
        memcpy(&d, p, 8);
        return (float)d;
    }
    default: {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    }
}

/* Converts n elements; from and to are float dtypes (checked by the callers). */
static void convert_n(ckpt_dtype to, uint8_t *dst, ckpt_dtype from, const uint8_t *src, size_t n,
                      const nan_rule *rule)
{
    size_t ies = ckpt_dtype_size(from), oes = ckpt_dtype_size(to);
    if (to == from) {
        memcpy(dst, src, n * ies);
        return;
    }
    if (from == CKPT_DT_FLOAT32 && to == CKPT_DT_FLOAT16) { /* the common cases, unrolled */
        for (size_t i = 0; i < n; i++) {
            uint32_t x;
            memcpy(&x, src + 4 * i, 4);
            uint16_t h = ckpt__f32_to_f16(x);
            memcpy(dst + 2 * i, &h, 2);
        }
        return;
    }
    if (from == CKPT_DT_FLOAT32 && to == CKPT_DT_BFLOAT16) {
        for (size_t i = 0; i < n; i++) {
            uint32_t x;
            memcpy(&x, src + 4 * i, 4);
            uint16_t b = ckpt__f32_to_bf16(x, rule->f32);
            memcpy(dst + 2 * i, &b, 2);
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = src + i * ies;
        uint8_t *d = dst + i * oes;
        if (to == CKPT_DT_FLOAT64) {
            /* torch widens float16/bfloat16 through float32; float32 -> float64 is exact
             * except that a signalling NaN is quieted, as the hardware cast does */
            double v = (double)load_float(from, s);
            memcpy(d, &v, 8);
            continue;
        }
        uint32_t x = f32_bits(load_float(from, s));
        if (to == CKPT_DT_FLOAT32) {
            memcpy(d, &x, 4);
        } else if (to == CKPT_DT_FLOAT16) {
            uint16_t h = ckpt__f32_to_f16(x);
            memcpy(d, &h, 2);
        } else {
            uint16_t nan = BF16_NAN_SCALAR;
            if (from == CKPT_DT_FLOAT32)
                nan = rule->f32;
            else if (from == CKPT_DT_FLOAT64)
                nan = rule->index + i < rule->f64_tail ? BF16_NAN_VECTOR : BF16_NAN_SCALAR;
            uint16_t b = ckpt__f32_to_bf16(x, nan);
            memcpy(d, &b, 2);
        }
    }
}

static bool convertible(ckpt_dtype to, ckpt_dtype from)
{
    return to == from || (ckpt_dtype_is_float(to) && ckpt_dtype_is_float(from));
}

int ckpt_convert(ckpt_dtype to, void *dst, ckpt_dtype from, const void *src, size_t n,
                 ckpt_error *err)
{
    if (!convertible(to, from))
        return CKPT_FAIL(err, CKPT_EINVAL, "cannot convert %s to %s",
                         ckpt_dtype_name(from) ? ckpt_dtype_name(from) : "?",
                         ckpt_dtype_name(to) ? ckpt_dtype_name(to) : "?");
    nan_rule rule = {BF16_NAN_VECTOR, n - n % CONV_F64_BLOCK, 0};
    convert_n(to, dst, from, src, n, &rule);
    return CKPT_OK;
}

/* ---- streaming a tensor ---------------------------------------------------------------- */

typedef struct stream {
    ckpt_dtype from, to;
    size_t ies, oes;
    nan_rule rule;
    uint8_t *buf; /* CONV_BUF_BYTES */
    size_t used;
    ckpt_chunk_fn fn;
    void *ud;
    ckpt_error *err;
} stream;

static int flush(stream *s)
{
    int rc = CKPT_OK;
    if (s->used)
        rc = s->fn(s->ud, s->buf, s->used, s->err);
    s->used = 0;
    return rc;
}

/* n elements at src, contiguous, converted into the buffer. */
static int emit_run(stream *s, const uint8_t *src, uint64_t n)
{
    while (n) {
        size_t room = (CONV_BUF_BYTES - s->used) / s->oes;
        size_t k = n < room ? (size_t)n : room;
        convert_n(s->to, s->buf + s->used, s->from, src, k, &s->rule);
        s->used += k * s->oes;
        s->rule.index += k;
        src += k * s->ies;
        n -= k;
        if (s->used + s->oes > CONV_BUF_BYTES) {
            int rc = flush(s);
            if (rc)
                return rc;
        }
    }
    return CKPT_OK;
}

/* The element at src, n times (a broadcast row): converted once, then copied. */
static int emit_fill(stream *s, const uint8_t *src, uint64_t n)
{
    uint8_t one[16];
    convert_n(s->to, one, s->from, src, 1, &s->rule);
    while (n) {
        size_t room = (CONV_BUF_BYTES - s->used) / s->oes;
        size_t k = n < room ? (size_t)n : room;
        uint8_t *d = s->buf + s->used;
        if (k) {
            memcpy(d, one, s->oes);
            for (size_t have = 1; have < k;) { /* doubling copies */
                size_t c = have < k - have ? have : k - have;
                memcpy(d + have * s->oes, d, c * s->oes);
                have += c;
            }
        }
        s->used += k * s->oes;
        s->rule.index += k;
        n -= k;
        if (s->used + s->oes > CONV_BUF_BYTES) {
            int rc = flush(s);
            if (rc)
                return rc;
        }
    }
    return CKPT_OK;
}

/* n elements stride elements apart. */
static int emit_gather(stream *s, const uint8_t *src, uint64_t n, int64_t stride)
{
    uint8_t raw[CONV_GATHER * 16];
    uint64_t step = (uint64_t)stride * s->ies;
    while (n) {
        size_t k = n < CONV_GATHER ? (size_t)n : CONV_GATHER;
        for (size_t i = 0; i < k; i++)
            memcpy(raw + i * s->ies, src + i * step, s->ies);
        int rc = emit_run(s, raw, k);
        if (rc)
            return rc;
        src += k * step;
        n -= k;
    }
    return CKPT_OK;
}

/* Whether torch's float32 -> bfloat16 copy takes its vector kernel for this layout: the
 * innermost dimension it iterates (the smallest non-zero stride among dimensions of more
 * than one element) has stride 1. A single element also takes it. */
static bool torch_vectorises(const ckpt_tensor *t)
{
    int inner = -1, sized = 0;
    for (int k = 0; k < t->ndim; k++) {
        if (t->shape[k] <= 1)
            continue;
        sized++;
        if (t->stride[k] > 0 && (inner < 0 || t->stride[k] <= t->stride[inner]))
            inner = k;
    }
    if (sized == 0)
        return true;
    return inner >= 0 && t->stride[inner] == 1;
}

int ckpt_tensor_stream(const ckpt_tensor *t, ckpt_dtype to, ckpt_chunk_fn fn, void *ud,
                       ckpt_error *err)
{
    if (!convertible(to, t->dtype))
        return CKPT_FAIL(err, CKPT_EINVAL, "cannot convert %s to %s",
                         ckpt_dtype_name(t->dtype) ? ckpt_dtype_name(t->dtype) : "?",
                         ckpt_dtype_name(to) ? ckpt_dtype_name(to) : "?");
    if (t->numel == 0)
        return CKPT_OK;
    const uint8_t *data = NULL;
    int rc = ckpt__storage_bytes(t->storage, &data, err);
    if (rc)
        return rc;
    size_t ies = ckpt_dtype_size(t->dtype), oes = ckpt_dtype_size(to);
    const uint8_t *base = data + (uint64_t)t->offset * ies;
    const ckpt_file *file = t->storage->file;
    bool contiguous = ckpt_tensor_is_contiguous(t);
    uint64_t numel = (uint64_t)t->numel, total;
    if (ckpt__mul_overflow(numel, (uint64_t)ies, &total) || total > SIZE_MAX)
        return CKPT_FAIL(err, CKPT_ELIMIT, "a tensor of %llu elements is too large",
                         (unsigned long long)numel);

    if (contiguous && to == t->dtype) { /* in place, no copy */
        for (uint64_t at = 0; at < total;) {
            size_t n = total - at < CONV_DIRECT_CHUNK ? (size_t)(total - at) : CONV_DIRECT_CHUNK;
            ckpt__file_prefault(file, base + at, n);
            if ((rc = fn(ud, base + at, n, err)))
                return rc;
            ckpt__file_release(file, base + at, n);
            at += n;
        }
        return CKPT_OK;
    }

    stream s = {0};
    s.from = t->dtype;
    s.to = to;
    s.ies = ies;
    s.oes = oes;
    s.rule.f32 = torch_vectorises(t) ? BF16_NAN_VECTOR : BF16_NAN_SCALAR;
    s.rule.f64_tail = contiguous ? numel - numel % CONV_F64_BLOCK : 0;
    s.fn = fn;
    s.ud = ud;
    s.err = err;
    if (!(s.buf = malloc(CONV_BUF_BYTES)))
        return CKPT_NOMEM(err);

    if (contiguous) {
        /* converted chunk by chunk; the source pages go once they are converted */
        uint64_t step = CONV_BUF_BYTES / oes;
        for (uint64_t i = 0; i < numel && !rc; i += step) {
            uint64_t k = numel - i < step ? numel - i : step;
            rc = emit_run(&s, base + i * ies, k);
            if (!rc)
                ckpt__file_release(file, base + i * ies, (size_t)(k * ies));
        }
    } else {
        /* Rows of the innermost dimension, in row-major order of the others, after merging
         * dimensions that step through memory as one (a broadcast of one element becomes a
         * single row of stride 0) and dropping those of size 1. */
        int64_t shape[CKPT_MAX_DIMS], stride[CKPT_MAX_DIMS], idx[CKPT_MAX_DIMS] = {0};
        int nd = 0;
        for (int k = 0; k < t->ndim; k++) {
            if (t->shape[k] == 1)
                continue;
            if (nd && stride[nd - 1] == t->stride[k] * t->shape[k]) {
                shape[nd - 1] *= t->shape[k]; /* at most numel: no overflow */
                stride[nd - 1] = t->stride[k];
                continue;
            }
            shape[nd] = t->shape[k];
            stride[nd++] = t->stride[k];
        }
        uint64_t inner = (uint64_t)shape[nd - 1];
        int64_t istride = stride[nd - 1];
        for (;;) {
            uint64_t off = 0;
            for (int k = 0; k < nd - 1; k++)
                off += (uint64_t)idx[k] * (uint64_t)stride[k];
            const uint8_t *p = base + off * ies;
            if (istride == 1)
                rc = emit_run(&s, p, inner);
            else if (istride == 0 || inner == 1)
                rc = emit_fill(&s, p, inner);
            else
                rc = emit_gather(&s, p, inner, istride);
            if (rc)
                break;
            int k = nd - 2;
            for (; k >= 0; k--) {
                if (++idx[k] < shape[k])
                    break;
                idx[k] = 0;
            }
            if (k < 0)
                break;
        }
    }
    if (!rc)
        rc = flush(&s);
    free(s.buf);
    return rc;
}
