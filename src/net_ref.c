/*
 * net_ref.c - the reference backend: every ResNet layer as plain C loops on NCHW float32.
 *
 * It is the yardstick for the oneDNN path (tests/test_net.c) and the fallback on machines
 * without oneDNN, so it favours obviousness over speed: a direct convolution with no im2col,
 * one output channel per thread at a time, each output summed in the order (ic, kh, kw) then
 * the bias, the residual and ReLU. The inner loop runs along an output row, so it vectorises
 * without changing any sum's order, and the result is the same for every thread count.
 */
#include "net.h"

#include <math.h>
#include <stdlib.h>

struct ckpt__ref {
    ckpt__net *net;
    int threads;
    float *buf[4];   /* activations: the block input and three scratch planes */
    size_t buf_size; /* floats in each */
};

void ckpt__ref_conv(const ckpt__conv *c, const float *x, int64_t h, int64_t w, float *y,
                    const float *residual, bool relu, int threads)
{
    const int64_t k = c->k, s = c->stride, p = c->pad;
    const int64_t oh = ckpt__conv_out(h, k, s, p), ow = ckpt__conv_out(w, k, s, p);
    const int64_t icg = c->ic / c->groups, ocg = c->oc / c->groups, plane = oh * ow;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t o = 0; o < c->oc; o++) {
        float *restrict yo = y + o * plane;
        memset(yo, 0, (size_t)plane * sizeof *yo);
        const int64_t g = o / ocg;
        for (int64_t i = 0; i < icg; i++) {
            const float *restrict xi = x + (g * icg + i) * h * w;
            const float *wk = c->w + (o * icg + i) * k * k;
            for (int64_t kh = 0; kh < k; kh++) {
                for (int64_t kw = 0; kw < k; kw++) {
                    const float wv = wk[kh * k + kw];
                    /* output columns whose input column ox*s + kw - p lies in [0, w) */
                    int64_t lo = kw >= p ? 0 : (p - kw + s - 1) / s;
                    int64_t hi = w - 1 + p - kw < 0 ? 0 : (w - 1 + p - kw) / s + 1;
                    if (hi > ow)
                        hi = ow;
                    for (int64_t oy = 0; oy < oh; oy++) {
                        const int64_t iy = oy * s + kh - p;
                        if (iy < 0 || iy >= h)
                            continue;
                        const float *restrict xr = xi + iy * w;
                        float *restrict yr = yo + oy * ow;
                        const int64_t off = kw - p;
                        if (s == 1) {
#ifdef _OPENMP
#pragma omp simd
#endif
                            for (int64_t ox = lo; ox < hi; ox++)
                                yr[ox] += wv * xr[ox + off];
                        } else {
                            for (int64_t ox = lo; ox < hi; ox++)
                                yr[ox] += wv * xr[ox * s + off];
                        }
                    }
                }
            }
        }
        const float b = c->b[o];
        const float *r = residual ? residual + o * plane : NULL;
        for (int64_t j = 0; j < plane; j++) {
            float v = yo[j] + b;
            if (r)
                v += r[j];
            yo[j] = relu && v <= 0.0f ? 0.0f : v; /* NaN stays NaN, as in PyTorch */
        }
    }
}

void ckpt__ref_maxpool(const float *x, int64_t c, int64_t h, int64_t w, float *y, int threads)
{
    const int64_t oh = ckpt__conv_out(h, 3, 2, 1), ow = ckpt__conv_out(w, 3, 2, 1);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t ch = 0; ch < c; ch++) {
        const float *xc = x + ch * h * w;
        float *yc = y + ch * oh * ow;
        for (int64_t oy = 0; oy < oh; oy++) {
            for (int64_t ox = 0; ox < ow; ox++) {
                float m = -INFINITY;
                for (int64_t ky = 0; ky < 3; ky++) {
                    const int64_t iy = oy * 2 - 1 + ky;
                    if (iy < 0 || iy >= h)
                        continue;
                    for (int64_t kx = 0; kx < 3; kx++) {
                        const int64_t ix = ox * 2 - 1 + kx;
                        if (ix < 0 || ix >= w)
                            continue;
                        const float v = xc[iy * w + ix];
                        if (v > m || isnan(v)) /* PyTorch's rule: NaN wins */
                            m = v;
                    }
                }
                yc[oy * ow + ox] = m;
            }
        }
    }
}

/* The largest activation of one image of h x w, in floats. */
static size_t max_activation(const ckpt__net *n, int64_t h, int64_t w)
{
    int64_t best = 3 * h * w;
    h = ckpt__conv_out(h, 7, 2, 3);
    w = ckpt__conv_out(w, 7, 2, 3);
    if (64 * h * w > best)
        best = 64 * h * w;
    h = ckpt__conv_out(h, 3, 2, 1);
    w = ckpt__conv_out(w, 3, 2, 1);
    for (int b = 0; b < n->n_blocks; b++) {
        const ckpt__block *bl = &n->blocks[b];
        int64_t bh = h, bw = w;
        for (int i = 0; i < bl->n_conv; i++) {
            const ckpt__conv *c = &bl->conv[i];
            bh = ckpt__conv_out(bh, c->k, c->stride, c->pad);
            bw = ckpt__conv_out(bw, c->k, c->stride, c->pad);
            if (c->oc * bh * bw > best)
                best = c->oc * bh * bw;
        }
        h = bh;
        w = bw;
    }
    return (size_t)best; /* sides <= 16384 and channels <= 2048: < 2^40 */
}

int ckpt__ref_new(ckpt__net *n, int threads, ckpt__ref **out, ckpt_error *err)
{
    ckpt__ref *r = calloc(1, sizeof *r);
    if (!r)
        return CKPT_NOMEM(err);
    r->net = n;
    r->threads = threads;
    *out = r;
    return CKPT_OK;
}

void ckpt__ref_free(ckpt__ref *r)
{
    if (!r)
        return;
    for (int i = 0; i < 4; i++)
        free(r->buf[i]);
    free(r);
}

int ckpt__ref_run(ckpt__ref *r, const float *x, int64_t h, int64_t w, float *logits,
                  float *features, ckpt_error *err)
{
    const ckpt__net *n = r->net;
    size_t need = max_activation(n, h, w);
    if (need > SIZE_MAX / sizeof(float))
        return CKPT_FAIL(err, CKPT_ELIMIT, "image of %lldx%lld is too large", (long long)w,
                         (long long)h);
    if (need > r->buf_size) {
        for (int i = 0; i < 4; i++) {
            free(r->buf[i]);
            r->buf[i] = malloc(need * sizeof(float));
            if (!r->buf[i]) {
                r->buf_size = 0;
                return CKPT_NOMEM(err);
            }
        }
        r->buf_size = need;
    }
    const int t = r->threads;
    float **buf = r->buf;
    ckpt__ref_conv(&n->stem, x, h, w, buf[1], NULL, true, t);
    h = ckpt__conv_out(h, 7, 2, 3);
    w = ckpt__conv_out(w, 7, 2, 3);
    ckpt__ref_maxpool(buf[1], 64, h, w, buf[0], t);
    h = ckpt__conv_out(h, 3, 2, 1);
    w = ckpt__conv_out(w, 3, 2, 1);
    int cur = 0;
    for (int b = 0; b < n->n_blocks; b++) {
        const ckpt__block *bl = &n->blocks[b];
        float *in = buf[cur], *t1 = buf[(cur + 1) % 4], *t2 = buf[(cur + 2) % 4];
        float *down = buf[(cur + 3) % 4];
        const float *identity = in;
        if (bl->has_down) {
            ckpt__ref_conv(&bl->down, in, h, w, down, NULL, false, t);
            identity = down;
        }
        const ckpt__conv *c0 = &bl->conv[0], *c1 = &bl->conv[1];
        ckpt__ref_conv(c0, in, h, w, t1, NULL, true, t);
        int64_t h1 = ckpt__conv_out(h, c0->k, c0->stride, c0->pad);
        int64_t w1 = ckpt__conv_out(w, c0->k, c0->stride, c0->pad);
        int next;
        if (bl->n_conv == 2) {
            ckpt__ref_conv(c1, t1, h1, w1, t2, identity, true, t);
            next = (cur + 2) % 4;
            h = ckpt__conv_out(h1, c1->k, c1->stride, c1->pad);
            w = ckpt__conv_out(w1, c1->k, c1->stride, c1->pad);
        } else {
            ckpt__ref_conv(c1, t1, h1, w1, t2, NULL, true, t);
            int64_t h2 = ckpt__conv_out(h1, c1->k, c1->stride, c1->pad);
            int64_t w2 = ckpt__conv_out(w1, c1->k, c1->stride, c1->pad);
            ckpt__ref_conv(&bl->conv[2], t2, h2, w2, t1, identity, true, t); /* t1 is free */
            next = (cur + 1) % 4;
            h = h2;
            w = w2;
        }
        cur = next;
    }
    ckpt__net_head(n, buf[cur], h * w, logits, features);
    return CKPT_OK;
}
