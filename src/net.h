/*
 * net.h - what the three inference modules share (net.c, net_ref.c, net_dnnl.c).
 *
 * An architecture's family (family.h) describes its ckpt__net and net.c loads its weights: the
 * convolutions in execution order with BatchNorm folded in (done once, at load), the linear
 * head, and nothing backend-specific.
 * A backend then prepares its own form of it (net_ref.c keeps the folded arrays, net_dnnl.c
 * reorders them into oneDNN's blocked layouts and compiles primitives) and runs images.
 *
 * Folding, for a convolution with weights w[oc][ic/g][k][k] followed by BatchNorm (eps 1e-5):
 *     s[oc] = bn.weight[oc] / sqrt(bn.running_var[oc] + eps)
 *     w'[oc][...] = w[oc][...] * s[oc]          b'[oc] = bn.bias[oc] - bn.running_mean[oc] * s[oc]
 * so that conv(x, w') + b' is eval-mode BatchNorm(conv(x, w)) up to rounding.
 */
#ifndef CKPT_NET_H
#define CKPT_NET_H

#include "internal.h"

#define CKPT__NET_BN_EPS 1e-5f
#define CKPT__NET_MAX_SIDE 16384      /* largest input height or width */
#define CKPT__NET_DEFAULT_SIDE 224    /* the size the dnnl backend prepares for by default */
#define CKPT__NET_MAX_BATCH 65536     /* images per ckpt_model_run call */
#define CKPT__NET_MAX_THREADS 1024
#define CKPT__NET_MAX_FEATURES 2048   /* 512 * expansion: no ResNet has more */

/* A convolution with its BatchNorm folded in: y = conv(x, w) + b. No dilation. */
typedef struct ckpt__conv {
    const char *name;  /* "layer1.0.conv1": its weight is name + ".weight" */
    const char *bn;    /* "layer1.0.bn1": the BatchNorm folded into it */
    int64_t ic, oc;    /* input and output channels */
    int64_t k;         /* square kernel */
    int64_t stride, pad, groups;
    float *w;          /* [oc][ic / groups][k][k], or NULL once a backend has taken it over */
    float *b;          /* [oc] */
} ckpt__conv;

/* One residual block. Basic: conv[0] 3x3 -> ReLU -> conv[1] 3x3. Bottleneck: conv[0] 1x1 ->
 * ReLU -> conv[1] 3x3 (stride, groups) -> ReLU -> conv[2] 1x1. The last conv adds the identity
 * (x, or down(x)) and applies ReLU. */
typedef struct ckpt__block {
    int n_conv;        /* 2 or 3 */
    ckpt__conv conv[3];
    bool has_down;
    ckpt__conv down;   /* 1x1 with the block's stride */
} ckpt__block;

typedef struct ckpt__net {
    char arch_name[32];
    ckpt__conv stem;   /* 7x7 s2 p3, ReLU, then max-pool 3x3 s2 p1 */
    ckpt__block *blocks;
    int n_blocks;
    int64_t features;  /* channels after layer4 */
    int64_t classes;
    float *fc_w;       /* [classes][features] */
    float *fc_b;       /* [classes] */
} ckpt__net;

/* Fills c's geometry and names (copies; ckpt__net_free frees them); pad is k / 2. A family's
 * network builder (family.h) calls it for each convolution. */
int ckpt__conv_init(ckpt__conv *c, const char *name, const char *bn, int64_t ic, int64_t oc,
                    int64_t k, int64_t stride, int64_t groups, ckpt_error *err);
/* Every convolution of the net in execution order: stem, then per block [down], conv[0..]. */
size_t ckpt__net_conv_count(const ckpt__net *n);
ckpt__conv *ckpt__net_conv_at(ckpt__net *n, size_t i);
void ckpt__net_free(ckpt__net *n);

/* Output side of a convolution or the max-pool (3x3 s2 p1). */
static inline int64_t ckpt__conv_out(int64_t in, int64_t k, int64_t stride, int64_t pad)
{
    return (in + 2 * pad - k) / stride + 1;
}

/* ---- the reference backend (net_ref.c): plain C, NCHW, one image at a time ---------------- */

/* y[oc][oh][ow] = relu?(b + sum_{ic,kh,kw} w * x (+ residual)). x is [ic][h][w]; residual, when
 * not NULL, has y's shape. Each output is summed in the order (ic, kh, kw) by one thread, so
 * the result does not depend on `threads`. */
void ckpt__ref_conv(const ckpt__conv *c, const float *x, int64_t h, int64_t w, float *y,
                    const float *residual, bool relu, int threads);
/* 3x3, stride 2, padding 1 max-pool of x [c][h][w]; NaN propagates as in PyTorch. */
void ckpt__ref_maxpool(const float *x, int64_t c, int64_t h, int64_t w, float *y, int threads);
/* The head shared by both backends: features[c] = mean of x[c][..] (x is [c][hw], summed in
 * order), logits = fc_w . features + fc_b. features may be NULL, and logits when the net has
 * no classes (a backbone). */
void ckpt__net_head(const ckpt__net *n, const float *x, int64_t hw, float *logits,
                    float *features);

typedef struct ckpt__ref ckpt__ref;
int ckpt__ref_new(ckpt__net *n, int threads, ckpt__ref **out, ckpt_error *err);
/* One image [3][h][w] -> logits [classes] and features [features] (may be NULL). */
int ckpt__ref_run(ckpt__ref *r, const float *x, int64_t h, int64_t w, float *logits,
                  float *features, ckpt_error *err);
void ckpt__ref_free(ckpt__ref *r);

/* ---- the oneDNN backend (net_dnnl.c, with CKPT_HAVE_DNNL) -------------------------------- */

/* Which stride-1 3x3 convolutions use Winograd F(4x4, 3x3). */
typedef enum ckpt__wino {
    CKPT__WINO_AUTO,   /* where it wins (see net_dnnl.c) */
    CKPT__WINO_NONE,
    CKPT__WINO_ALL,
} ckpt__wino;

typedef struct ckpt__dnnl ckpt__dnnl;
/* Fills c->b and the folded weights: into w (oc * ic/groups * k * k floats, which c->w then
 * points at without owning) when w is not NULL, else into a new c->w. The dnnl backend calls
 * it conv by conv in execution order after planning, so that a bounded group of plain weights
 * exists at a time. */
typedef int (*ckpt__conv_load_fn)(void *ud, ckpt__conv *c, float *w, ckpt_error *err);

typedef struct ckpt__dnnl_options {
    int threads;
    ckpt__wino wino;
    bool bf16;          /* bf16 weights and activations (f32 bias, accumulation and head) */
    bool profile;       /* time every step of every run */
    int64_t h, w;       /* the image size to plan for at load */
    bool one_size;      /* never run at another (ckpt_model_run refuses it) */
} ckpt__dnnl_options;

/* Where loading went (milliseconds); the model adds its own phases (net.c). */
typedef struct ckpt__load_profile {
    double read_fold_ms;    /* reading the convs' weights and folding BatchNorm */
    double reorder_ms;      /* wall time of read + fold + reorders, overlapped (load_weights) */
    double winograd_cpu_ms; /* of which Winograd transforms, summed over threads */
    double blocked_cpu_ms;  /* and reorders into blocked layouts, summed over threads */
    double build_ms;        /* planning: primitive descriptors and primitives */
    int64_t images;         /* images run with profiling on */
    int largest_group;      /* most images one plan ran at once */
} ckpt__load_profile;

bool ckpt__dnnl_available(void);
/* Whether oneDNN sees bf16 dot products (AVX512_BF16 or AMX) on this CPU. */
bool ckpt__dnnl_bf16_supported(void);
/* Takes over the folded weights: every conv is loaded with load(ud, ...) once planned; each w
 * is freed once reordered, unless the conv may need it again (see net_dnnl.c). */
int ckpt__dnnl_new(ckpt__net *n, const ckpt__dnnl_options *o, ckpt__conv_load_fn load,
                   void *ud, ckpt__dnnl **out, ckpt_error *err);
/* n images [n][3][h][w] -> logits [n][classes] and features [n][features] (may be NULL). */
int ckpt__dnnl_run(ckpt__dnnl *d, const float *x, int n, int64_t h, int64_t w, float *logits,
                   float *features, ckpt_error *err);
void ckpt__dnnl_free(ckpt__dnnl *d);
void ckpt__dnnl_load_profile(const ckpt__dnnl *d, ckpt__load_profile *out);
/* Step i of the one-image plan: its name ("conv1", "maxpool", "output"), oneDNN's
 * implementation, GFLOP per image and milliseconds summed over the profiled runs; false past
 * the end. */
bool ckpt__dnnl_layer(const ckpt__dnnl *d, size_t i, const char **name, const char **impl,
                      double *gflop, double *ms);
/* Name of the oneDNN implementation of each conv at the last prepared size ("jit:avx512_core",
 * "jit_wino_4x3:avx512_core", ...), for tests and docs; NULL past the end. */
const char *ckpt__dnnl_impl(const ckpt__dnnl *d, size_t conv_index);

/* Single layers on oneDNN, for the per-op tests against the reference: NCHW in and out, batch
 * mb, primitives built and freed per call. */
int ckpt__dnnl_conv_once(const ckpt__conv *c, int64_t mb, const float *x, int64_t h, int64_t w,
                         const float *residual, bool relu, bool winograd, int threads, float *y,
                         ckpt_error *err);
int ckpt__dnnl_maxpool_once(int64_t mb, int64_t c, const float *x, int64_t h, int64_t w,
                            int threads, float *y, ckpt_error *err);
/* Conv c's plain weights (c->w) to Winograd F(4x4, 3x3) (f4) or F(2x2, 3x3) for one h x w
 * image, by ckpt's own transform and by oneDNN's reorder: *differ is how many of the floats
 * differ. CKPT_EUNSUPPORTED when oneDNN offers no such kernel there, or its layout is not one
 * ckpt transforms into. */
int ckpt__dnnl_wino_compare(const ckpt__conv *c, int64_t h, int64_t w, bool f4, size_t *differ,
                            ckpt_error *err);

/* OpenMP's thread count for the calling thread (a no-op without OpenMP): set returns the
 * previous value for restore, so a library call leaves the caller's setting as it found it. */
int ckpt__threads_set(int threads);
void ckpt__threads_restore(int saved);
/* Online CPUs, at least 1. */
int ckpt__threads_default(void);

#endif /* CKPT_NET_H */
