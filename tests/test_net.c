/*
 * test_net.c - the inference engine: oneDNN layers against the reference, determinism.
 *
 * Without arguments (CTest): every layer of the dnnl backend against the plain C reference on
 * random small shapes, with an error bound per op (ggml's test-backend-ops), whole networks
 * ref against dnnl, and determinism: the same bits for 1, 2 (and 3) threads, for an image
 * alone and at every position of every batch size from 1 to 9 (the batched plans of 2, 4 and
 * 8 images, and their mixes), and after the model was rebuilt for another image size; bf16
 * within its bound of the reference and with the same determinism, or refused. The expected values of the accuracy tests against PyTorch live in test_net.py.
 *
 * With arguments it is the driver test_net.py and bench/bench_run.py use before `ckpt run`
 * exists:
 *
 *   test_net run CKPT ARCH NUM_CLASSES INPUT.npy OUT.npy [--features F.npy] [--backend B]
 *                [--threads N] [--no-winograd|--winograd-all] [--bf16] [--repeat N]
 *                [--prefix P] [--via-sd]
 *       logits of every image of INPUT ([B,3,H,W] float32) into OUT ([B,NUM_CLASSES]);
 *       --repeat N runs N times and fails if any bit differs; --prefix: the weights' keys
 *       start with P; --via-sd: read them through ckpt_sd_from_value and ckpt_model_load_sd.
 *   test_net maxpool ref|dnnl IN.npy OUT.npy   (one max-pool, for test_net.py)
 *   test_net bench CKPT ARCH NUM_CLASSES [--batch B] [--size S] [--runs N] [--warmup N]
 *                [--backend B] [--threads N] [--no-winograd] [--bf16]
 *       prints one JSON line: load time, per-run milliseconds, median, peak RSS.
 *   test_net backends
 *       the backends of this build, one a line.
 *
 * The weights come from the checkpoint's root dict, or its 'model' or 'state_dict' entry.
 */
#include "ckpt.h"
#include "check.h"
#include "net.h"

#include <math.h>
#include <stdint.h>
#include <time.h>

/* ---- random numbers and weights ---------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((double)(rng_next() >> 11) / 9007199254740992.0);
}

static float normal(void)
{
    double u1 = ((double)(rng_next() >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(rng_next() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void fill_normal(float *p, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        p[i] = normal() * scale;
}

/* uniform with standard deviation sd: cheaper than normal() for millions of weights */
static void fill_sd(float *p, size_t n, float sd)
{
    const float a = sd * 1.7320508f;
    for (size_t i = 0; i < n; i++)
        p[i] = uniform(-a, a);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Random weights with non-trivial BatchNorm statistics, kaiming-like conv weights so that
 * activations keep their scale through deep nets. Counts the calls. */
static int n_weight_calls;
static const char *fail_key; /* this key is reported missing */

static int random_weight(void *ud, const char *key, const int64_t *shape, int ndim, float *out,
                         ckpt_error *err)
{
    (void)ud;
    n_weight_calls++;
    if (fail_key && strcmp(key, fail_key) == 0)
        return CKPT_FAIL(err, CKPT_EMISMATCH, "weight '%s' is missing", key);
    /* values depend on the key only: backends may ask in different orders */
    uint64_t hsh = 1469598103934665603ull;
    for (const char *p = key; *p; p++)
        hsh = (hsh ^ (unsigned char)*p) * 1099511628211ull;
    rng_state = hsh;
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    if (ends_with(key, "running_var"))
        for (size_t i = 0; i < n; i++)
            out[i] = uniform(0.5f, 2.0f);
    else if (ends_with(key, "running_mean"))
        fill_sd(out, n, 0.1f);
    else if (ndim == 1 && ends_with(key, "bn3.weight"))
        for (size_t i = 0; i < n; i++) /* small last BN keeps deep residual sums in range */
            out[i] = uniform(0.1f, 0.3f);
    else if (ndim == 1 && ends_with(key, ".weight") && !strstr(key, "fc."))
        for (size_t i = 0; i < n; i++)
            out[i] = uniform(0.5f, 1.5f);
    else if (ndim == 1)
        fill_sd(out, n, 0.1f);
    else {
        size_t fan_in = n / (size_t)shape[0];
        fill_sd(out, n, sqrtf(2.0f / (float)fan_in));
    }
    return CKPT_OK;
}

/* ---- comparisons ------------------------------------------------------------------------- */

/* max |a - b| / max(1, max |b|) */
static double rel_err(const float *a, const float *b, size_t n)
{
    double md = 0, mb = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= md)) /* NaN counts as infinite */
            md = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > mb)
            mb = fabs((double)b[i]);
    }
    return md / mb;
}

static bool same_bits(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof *a) == 0;
}

/* ---- per-op tests ------------------------------------------------------------------------ */

typedef struct conv_case {
    int64_t ic, oc, k, stride, groups, h, w;
    bool residual, relu;
} conv_case;

static const conv_case conv_cases[] = {
    {3, 64, 7, 2, 1, 37, 41, false, true},   /* stem, odd sizes */
    {3, 64, 7, 2, 1, 64, 64, false, true},
    {64, 64, 3, 1, 1, 15, 13, false, true},  /* basic conv, Winograd-eligible */
    {64, 64, 3, 1, 1, 14, 14, true, true},   /* basic conv2: sum + relu */
    {64, 128, 3, 2, 1, 15, 16, false, true}, /* strided 3x3 */
    {64, 256, 1, 1, 1, 9, 11, true, true},   /* bottleneck conv3 */
    {256, 64, 1, 1, 1, 8, 8, false, true},   /* bottleneck conv1 */
    {256, 512, 1, 2, 1, 9, 9, false, false}, /* downsample */
    {128, 128, 3, 2, 32, 10, 12, false, true}, /* ResNeXt conv2 with groups */
    {256, 256, 3, 1, 64, 7, 7, false, true},
    {32, 48, 3, 1, 1, 5, 5, true, false},
    {16, 16, 3, 1, 1, 1, 1, false, true},    /* 1x1 image */
};

static void test_conv_ops(void)
{
    double worst[2] = {0, 0};
    for (size_t ci = 0; ci < sizeof conv_cases / sizeof conv_cases[0]; ci++) {
        const conv_case *t = &conv_cases[ci];
        ckpt__conv c = {"test", NULL, t->ic, t->oc, t->k, t->stride, t->k / 2, t->groups, NULL, NULL};
        size_t nw = (size_t)(t->oc * (t->ic / t->groups) * t->k * t->k);
        int64_t oh = ckpt__conv_out(t->h, t->k, t->stride, t->k / 2);
        int64_t ow = ckpt__conv_out(t->w, t->k, t->stride, t->k / 2);
        const int64_t mb = 2;
        size_t nx = (size_t)(t->ic * t->h * t->w), ny = (size_t)(t->oc * oh * ow);
        c.w = malloc(nw * sizeof(float));
        c.b = malloc((size_t)t->oc * sizeof(float));
        float *x = malloc(mb * nx * sizeof(float)), *res = malloc(mb * ny * sizeof(float));
        float *yr = malloc(mb * ny * sizeof(float)), *yd = malloc(mb * ny * sizeof(float));
        fill_normal(c.w, nw, sqrtf(2.0f / (float)(nw / (size_t)t->oc)));
        fill_normal(c.b, (size_t)t->oc, 0.5f);
        fill_normal(x, mb * nx, 1.0f);
        fill_normal(res, mb * ny, 1.0f);
        for (int64_t i = 0; i < mb; i++)
            ckpt__ref_conv(&c, x + i * nx, t->h, t->w, yr + i * ny,
                           t->residual ? res + i * ny : NULL, t->relu, 2);
        for (int wino = 0; wino < 2; wino++) {
            if (wino && !(t->k == 3 && t->stride == 1 && t->groups == 1))
                continue;
            ckpt_error err;
            memset(yd, 0, mb * ny * sizeof(float));
            int rc = ckpt__dnnl_conv_once(&c, mb, x, t->h, t->w, t->residual ? res : NULL,
                                          t->relu, wino, 2, yd, &err);
            if (wino && rc == CKPT_EUNSUPPORTED)
                continue; /* no Winograd for this shape or ISA */
            CHECK_OK(rc, err);
            double e = rel_err(yd, yr, mb * ny);
            /* direct: float sums in another order; Winograd F(4,3): transforms add rounding */
            double bound = wino ? 2e-5 : 5e-6;
            if (e > worst[wino])
                worst[wino] = e;
            if (!(e <= bound))
                fprintf(stderr, "conv case %zu (%s): rel err %.3g > %.3g\n", ci,
                        wino ? "winograd" : "direct", e, bound);
            CHECK(e <= bound);
        }
        free(c.w);
        free(c.b);
        free(x);
        free(res);
        free(yr);
        free(yd);
    }
    printf("conv ops, dnnl vs ref: max rel diff %.3g direct, %.3g winograd\n", worst[0],
           worst[1]);
}

static void test_maxpool_op(void)
{
    static const int64_t cases[][3] = {{64, 56, 56}, {64, 17, 9}, {16, 1, 1}, {64, 2, 3}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int64_t c = cases[ci][0], h = cases[ci][1], w = cases[ci][2];
        int64_t oh = ckpt__conv_out(h, 3, 2, 1), ow = ckpt__conv_out(w, 3, 2, 1);
        size_t nx = (size_t)(c * h * w), ny = (size_t)(c * oh * ow);
        float *x = malloc(nx * sizeof(float)), *yr = malloc(ny * sizeof(float));
        float *yd = malloc(ny * sizeof(float));
        fill_normal(x, nx, 1.0f);
        ckpt__ref_maxpool(x, c, h, w, yr, 2);
        ckpt_error err;
        CHECK_OK(ckpt__dnnl_maxpool_once(1, c, x, h, w, 2, yd, &err), err);
        CHECK(same_bits(yd, yr, ny)); /* a max is exact */
        free(x);
        free(yr);
        free(yd);
    }
}

/* ---- whole networks ---------------------------------------------------------------------- */

static ckpt_model *model_random(const char *arch, int64_t classes, ckpt_backend b, int threads,
                                uint32_t flags, int h, int w)
{
    ckpt_model_options o = {b, threads, flags, h, w};
    ckpt_model *m = NULL;
    ckpt_error err;
    CHECK_OK(ckpt_model_new(ckpt_arch_by_name(arch), classes, random_weight, NULL, &o, &m, &err),
             err);
    return m;
}

static float *run(ckpt_model *m, const float *x, int batch, int h, int w)
{
    float *out = calloc((size_t)batch * (size_t)ckpt_model_classes(m), sizeof *out);
    ckpt_error err;
    if (m)
        CHECK_OK(ckpt_model_run(m, x, batch, h, w, out, NULL, &err), err);
    return out;
}

/* nt: thread counts 1..nt must agree bit for bit (nt > 2 oversubscribes this machine).
 * The dnnl backend runs a batch in groups of 8, 4, 2 and 1 images on batched primitives, so
 * every batch size from 1 to BATCH_SIZES (every group and every mix of them) is run, with
 * every thread count, and each of its images must have the bits it has alone on one thread.
 * group: the largest group the batched plans must reach at this size (oneDNN gives some
 * small images other weight layouts for more images, and those plans are then not used). */
#define BATCH_SIZES 9
static void test_net_arch(const char *arch, int h, int w, int nt, int group)
{
    const int64_t classes = 17;
    const int batch = BATCH_SIZES;
    size_t per = (size_t)3 * (size_t)h * (size_t)w;
    float *x = malloc(batch * per * sizeof *x);
    rng_state = 777;
    fill_normal(x, batch * per, 1.0f);

    /* the reference on two images is enough (and keeps the sanitizer build quick) */
    const int nref = 2;
    ckpt_model *ref = model_random(arch, classes, CKPT_BACKEND_REF, 2, 0, h, w);
    ckpt_model *ref1 = model_random(arch, classes, CKPT_BACKEND_REF, 1, 0, h, w);
    float *lr = run(ref, x, nref, h, w), *lr1 = run(ref1, x, 1, h, w);
    CHECK(same_bits(lr, lr1, classes)); /* ref: threads do not change a bit */

    for (int nowino = 0; nowino < 2; nowino++) {
        uint32_t fl = nowino ? CKPT_MODEL_NO_WINOGRAD : 0;
        enum { NT = 4 };
        ckpt_model *d[NT];
        for (int t = 0; t < nt; t++)
            d[t] = model_random(arch, classes, CKPT_BACKEND_DNNL, t + 1, fl, h, w);
        /* every image alone on one thread: the yardstick */
        float *alone = malloc((size_t)batch * classes * sizeof *alone);
        for (int i = 0; i < batch; i++) {
            float *one = run(d[0], x + i * per, 1, h, w);
            memcpy(alone + (size_t)i * classes, one, classes * sizeof *one);
            free(one);
        }
        double e = rel_err(alone, lr, (size_t)nref * classes);
        printf("%-18s %dx%d dnnl%s vs ref: max rel diff %.3g\n", arch, h, w,
               nowino ? " (direct)" : "", e);
        CHECK(e <= 1e-4);
        int differ = 0;
        for (int t = 0; t < nt; t++) {
            for (int b = 1; b <= batch; b++) {
                float *all = run(d[t], x, b, h, w);
                for (int i = 0; i < b; i++) {
                    if (!same_bits(all + (size_t)i * classes, alone + (size_t)i * classes,
                                   classes)) {
                        fprintf(stderr, "%s%s: %d threads, image %d of a batch of %d differs "
                                        "from the image alone\n",
                                arch, nowino ? " (direct)" : "", t + 1, i, b);
                        differ++;
                    }
                }
                free(all);
            }
        }
        CHECK_EQ_INT(differ, 0);
        ckpt_model_profile prof;
        ckpt_model_get_profile(d[0], &prof);
        printf("%-18s %dx%d dnnl%s: batch sizes 1-%d x %d thread counts bit-identical to "
               "one image, groups of up to %d\n", arch, h, w, nowino ? " (direct)" : "",
               batch, nt, prof.largest_group);
        CHECK(prof.largest_group >= group); /* the batched plans were used, not skipped */
        /* after rebuilds for other sizes and back: h x 4 takes layer3's Winograd convs to
         * another F(2x2) weights layout or to the direct conv, whose weights come from the
         * plain copy kept for it, and back */
        float *other = run(d[1], x, 2, h + 5, w + 3);
        free(other);
        float *x4 = calloc((size_t)16 * per, sizeof *x4);
        other = run(d[1], x4, 1, h * 4, w * 4);
        free(other);
        free(x4);
        float *again = run(d[1], x, batch, h, w);
        CHECK(same_bits(again, alone, (size_t)batch * classes));
        free(again);
        free(alone);
        for (int t = 0; t < nt; t++)
            ckpt_model_free(d[t]);
    }
    free(lr);
    free(lr1);
    ckpt_model_free(ref);
    ckpt_model_free(ref1);
    free(x);
}

/* bf16 (where the CPU has it): within a bf16-sized bound of the reference, and the same
 * determinism promise as fp32 (threads, every batch size and position); elsewhere refused. */
static void test_bf16(const char *arch, int h, int w)
{
    const int64_t classes = 17;
    if (!ckpt_model_bf16_available()) {
        ckpt_model_options o = {CKPT_BACKEND_DNNL, 1, CKPT_MODEL_BF16, h, w};
        ckpt_model *m = NULL;
        ckpt_error err;
        int rc = ckpt_model_new(ckpt_arch_by_name(arch), classes, random_weight, NULL, &o, &m,
                                &err);
        CHECK_EQ_INT(rc, CKPT_EUNSUPPORTED);
        CHECK(m == NULL);
        printf("bf16: not on this CPU (refused: %s)\n", err.message);
        return;
    }
    const int batch = BATCH_SIZES;
    size_t per = (size_t)3 * (size_t)h * (size_t)w;
    float *x = malloc(batch * per * sizeof *x);
    rng_state = 4242;
    fill_normal(x, batch * per, 1.0f);
    ckpt_model *ref = model_random(arch, classes, CKPT_BACKEND_REF, 2, 0, h, w);
    ckpt_model *d1 = model_random(arch, classes, CKPT_BACKEND_DNNL, 1, CKPT_MODEL_BF16, h, w);
    ckpt_model *d2 = model_random(arch, classes, CKPT_BACKEND_DNNL, 2, CKPT_MODEL_BF16, h, w);
    float *lr = run(ref, x, 2, h, w);
    float *alone = malloc((size_t)batch * classes * sizeof *alone);
    for (int i = 0; i < batch; i++) {
        float *one = run(d1, x + i * per, 1, h, w);
        memcpy(alone + (size_t)i * classes, one, classes * sizeof *one);
        free(one);
    }
    double e = rel_err(alone, lr, 2 * (size_t)classes);
    printf("%-18s %dx%d dnnl bf16 vs ref (fp32): max rel diff %.3g\n", arch, h, w, e);
    CHECK(e <= 0.1); /* 8 mantissa bits through ~20 layers; measured ~1e-2 */
    int differ = 0;
    ckpt_model *ms[2] = {d1, d2};
    for (int t = 0; t < 2; t++)
        for (int b = 1; b <= batch; b++) {
            float *all = run(ms[t], x, b, h, w);
            for (int i = 0; i < b; i++)
                differ += !same_bits(all + (size_t)i * classes, alone + (size_t)i * classes,
                                     classes);
            free(all);
        }
    CHECK_EQ_INT(differ, 0);
    ckpt_model_layer ly;
    CHECK(ckpt_model_get_layer(d1, 1, &ly));
    CHECK(strstr(ly.impl, "bf16") != NULL); /* a real bf16 kernel, not an emulation */
    free(alone);
    free(lr);
    free(x);
    ckpt_model_free(ref);
    ckpt_model_free(d1);
    ckpt_model_free(d2);
}

static void test_api_errors(void)
{
    ckpt_error err;
    ckpt_model *m = (ckpt_model *)&err;
    fail_key = "layer2.0.downsample.1.running_var";
    n_weight_calls = 0;
    CHECK_EQ_INT(ckpt_model_new(ckpt_arch_by_name("resnet18"), 10, random_weight, NULL, NULL, &m,
                                &err),
                 CKPT_EMISMATCH);
    CHECK(m == NULL);
    CHECK(strstr(err.message, "layer2.0.downsample.1.running_var") != NULL);
    fail_key = NULL;
    CHECK_EQ_INT(ckpt_model_new(NULL, 10, random_weight, NULL, NULL, &m, &err), CKPT_EINVAL);
    CHECK_EQ_INT(ckpt_model_new(ckpt_arch_by_name("resnet18"), -1, random_weight, NULL, NULL, &m,
                                &err),
                 CKPT_EINVAL);
    ckpt_model_options o = {CKPT_BACKEND_REF, -1, 0, 0, 0};
    CHECK_EQ_INT(ckpt_model_new(ckpt_arch_by_name("resnet18"), 10, random_weight, NULL, &o, &m,
                                &err),
                 CKPT_EINVAL);
    /* resnet18: 20 convs x 5 tensors + fc weight and bias; no num_batches_tracked */
    n_weight_calls = 0;
    m = model_random("resnet18", 10, CKPT_BACKEND_REF, 1, 0, 0, 0);
    CHECK_EQ_INT(n_weight_calls, 20 * 5 + 2);
    CHECK_EQ_INT(ckpt_model_features(m), 512);
    CHECK_EQ_INT(ckpt_model_classes(m), 10);
    CHECK(ckpt_model_backend(m) == CKPT_BACKEND_REF);
    float x[3 * 4 * 4] = {0}, out[10];
    CHECK_EQ_INT(ckpt_model_run(m, x, 1, 0, 4, out, NULL, &err), CKPT_EINVAL);
    CHECK_EQ_INT(ckpt_model_run(m, x, -1, 4, 4, out, NULL, &err), CKPT_EINVAL);
    CHECK_OK(ckpt_model_run(m, x, 1, 4, 4, out, NULL, &err), err); /* tiny images work */
    ckpt_model_free(m);
    ckpt_model_free(NULL);
    CHECK_EQ_STR(ckpt_backend_name(CKPT_BACKEND_DNNL), "dnnl");
    CHECK_EQ_INT(ckpt_backend_from_name("ref"), CKPT_BACKEND_REF);
    CHECK_EQ_INT(ckpt_backend_from_name("cuda"), -1);
}

/* num_classes 0: the backbone alone. fc is never asked for, the features are the full model's
 * bit for bit (the same code up to the head), logits may be NULL and features may not. */
static void test_backbone(ckpt_backend b)
{
    enum { S = 40 };
    ckpt_error err;
    size_t nx = 2 * 3 * S * S;
    float *x = malloc(nx * sizeof *x), logits[2 * 10], full[2 * 512], feat[2 * 512];
    rng_state = 99;
    fill_normal(x, nx, 1.0f);
    n_weight_calls = 0;
    fail_key = "fc.weight"; /* asking for it fails the load */
    ckpt_model *bb = model_random("resnet18", 0, b, 2, 0, S, S);
    fail_key = NULL;
    CHECK_EQ_INT(n_weight_calls, 20 * 5);
    CHECK_EQ_INT(ckpt_model_classes(bb), 0);
    CHECK_EQ_INT(ckpt_model_features(bb), 512);
    ckpt_model *m = model_random("resnet18", 10, b, 2, 0, S, S);
    CHECK_OK(ckpt_model_run(m, x, 2, S, S, logits, full, &err), err);
    memset(feat, 0xff, sizeof feat);
    CHECK_OK(ckpt_model_run(bb, x, 2, S, S, NULL, feat, &err), err);
    CHECK(same_bits(feat, full, 2 * 512));
    CHECK_EQ_INT(ckpt_model_run(bb, x, 2, S, S, logits, NULL, &err), CKPT_EINVAL);
    ckpt_model_free(bb);
    ckpt_model_free(m);
    free(x);
}

/* ---- the driver -------------------------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* "VmHWM:" (peak) or "VmRSS:" (now) of this process, in kB. */
static long rss_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct driver_opts {
    ckpt_model_options mo;
    int repeat, batch, size, runs, warmup;
    const char *features;
    const char *prefix; /* key prefix of the weights ("module.") */
    bool via_sd;        /* through ckpt_sd_from_value + ckpt_model_load_sd */
} driver_opts;

static int parse_opts(int argc, char **argv, int first, driver_opts *o)
{
    *o = (driver_opts){{CKPT_BACKEND_AUTO, 0, 0, 0, 0}, 1, 1, 224, 20, 3, NULL, NULL, false};
    for (int i = first; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--via-sd") == 0) {
            o->via_sd = true;
            continue;
        }
        if (strcmp(a, "--bf16") == 0) {
            o->mo.flags |= CKPT_MODEL_BF16;
            continue;
        }
        if (strcmp(a, "--no-winograd") == 0 || strcmp(a, "--winograd-all") == 0) {
            o->mo.flags |= a[2] == 'n' ? CKPT_MODEL_NO_WINOGRAD : CKPT_MODEL_WINOGRAD_ALL;
            continue;
        }
        if (!v) {
            fprintf(stderr, "error: option '%s' needs a value\n", a);
            return -1;
        }
        i++;
        if (strcmp(a, "--backend") == 0) {
            int b = ckpt_backend_from_name(v);
            if (b < 0) {
                fprintf(stderr, "error: unknown backend '%s'\n", v);
                return -1;
            }
            o->mo.backend = (ckpt_backend)b;
        } else if (strcmp(a, "--threads") == 0)
            o->mo.threads = atoi(v);
        else if (strcmp(a, "--repeat") == 0)
            o->repeat = atoi(v);
        else if (strcmp(a, "--batch") == 0)
            o->batch = atoi(v);
        else if (strcmp(a, "--size") == 0)
            o->size = atoi(v);
        else if (strcmp(a, "--runs") == 0)
            o->runs = atoi(v);
        else if (strcmp(a, "--warmup") == 0)
            o->warmup = atoi(v);
        else if (strcmp(a, "--features") == 0)
            o->features = v;
        else if (strcmp(a, "--prefix") == 0)
            o->prefix = v;
        else {
            fprintf(stderr, "error: unknown option '%s'\n", a);
            return -1;
        }
    }
    return 0;
}

static const ckpt_value *find_sd(const ckpt_value *root)
{
    const ckpt_value *v;
    if ((v = ckpt_dict_get(root, "model")) && v->type == CKPT_T_DICT)
        return v;
    if ((v = ckpt_dict_get(root, "state_dict")) && v->type == CKPT_T_DICT)
        return v;
    return root;
}

static int load(const char *path, const char *arch, const char *classes, const driver_opts *o,
                ckpt_model **m, double *seconds)
{
    ckpt_file *f;
    ckpt_error err;
    double t0 = now();
    if (ckpt_open(path, NULL, &f, &err) != CKPT_OK) {
        fprintf(stderr, "error: %s: %s\n", path, err.message);
        return 2;
    }
    const ckpt_arch *a = ckpt_arch_by_name(arch);
    if (!a) {
        fprintf(stderr, "error: unknown architecture '%s'\n", arch);
        ckpt_close(f);
        return 2;
    }
    int rc;
    if (o->via_sd) {
        ckpt_sd *sd = NULL;
        rc = ckpt_sd_from_value(find_sd(ckpt_root(f)), o->prefix, &sd, &err);
        if (rc == CKPT_OK)
            rc = ckpt_model_load_sd(a, atoll(classes), sd, &o->mo, m, &err);
        ckpt_sd_free(sd);
    } else {
        rc = ckpt_model_load(a, atoll(classes), find_sd(ckpt_root(f)), o->prefix, &o->mo, m,
                             &err);
    }
    ckpt_close(f);
    if (rc) {
        fprintf(stderr, "error: %s: %s\n", path, err.message);
        return 2;
    }
    *seconds = now() - t0;
    return 0;
}

static int driver_run(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: test_net run CKPT ARCH NUM_CLASSES INPUT.npy OUT.npy [opts]\n");
        return 2;
    }
    driver_opts o;
    if (parse_opts(argc, argv, 7, &o))
        return 2;
    ckpt_npy in;
    ckpt_error err;
    if (ckpt_npy_read(argv[5], &in, &err)) {
        fprintf(stderr, "error: %s: %s\n", argv[5], err.message);
        return 2;
    }
    const int64_t *shape = in.shape;
    const float *x = in.data;
    if (in.ndim != 4 || shape[1] != 3 || shape[0] < 1 || shape[2] < 1 || shape[3] < 1) {
        fprintf(stderr, "error: '%s' is not a [B,3,H,W] array\n", argv[5]);
        ckpt_npy_free(&in);
        return 2;
    }
    ckpt_model *m;
    double load_s;
    o.mo.height = (int)shape[2];
    o.mo.width = (int)shape[3];
    if (load(argv[2], argv[3], argv[4], &o, &m, &load_s)) {
        ckpt_npy_free(&in);
        return 2;
    }
    int64_t nc = ckpt_model_classes(m), nf = ckpt_model_features(m);
    size_t nl = (size_t)(shape[0] * nc), nfe = (size_t)(shape[0] * nf);
    float *logits = malloc(nl * sizeof *logits), *first = malloc(nl * sizeof *first);
    float *feat = malloc(nfe * sizeof *feat);
    int status = 0;
    for (int r = 0; r < (o.repeat > 0 ? o.repeat : 1) && status == 0; r++) {
        if (ckpt_model_run(m, x, (int)shape[0], (int)shape[2], (int)shape[3], logits, feat,
                           &err)) {
            fprintf(stderr, "error: %s\n", err.message);
            status = 2;
        } else if (r == 0)
            memcpy(first, logits, nl * sizeof *logits);
        else if (!same_bits(first, logits, nl)) {
            fprintf(stderr, "error: run %d differs from run 1\n", r + 1);
            status = 1;
        }
    }
    int64_t lshape[2] = {shape[0], nc}, fshape[2] = {shape[0], nf};
    if (status == 0 && (ckpt_npy_write(argv[6], logits, 2, lshape, &err) ||
                        (o.features && ckpt_npy_write(o.features, feat, 2, fshape, &err)))) {
        fprintf(stderr, "error: %s\n", err.message);
        status = 2;
    }
    fprintf(stderr, "backend %s, %d threads, load %.3f s\n",
            ckpt_backend_name(ckpt_model_backend(m)), ckpt_model_threads(m), load_s);
    ckpt_model_free(m);
    ckpt_npy_free(&in);
    free(logits);
    free(first);
    free(feat);
    return status;
}

static int driver_bench(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: test_net bench CKPT ARCH NUM_CLASSES [opts]\n");
        return 2;
    }
    driver_opts o;
    if (parse_opts(argc, argv, 5, &o) || o.batch < 1 || o.size < 1 || o.runs < 1)
        return 2;
    ckpt_model *m;
    double load_s;
    o.mo.height = o.mo.width = o.size;
    if (load(argv[2], argv[3], argv[4], &o, &m, &load_s))
        return 2;
    long loaded_kb = rss_kb("VmRSS:"), load_peak_kb = rss_kb("VmHWM:");
    size_t per = (size_t)3 * (size_t)o.size * (size_t)o.size;
    float *x = malloc((size_t)o.batch * per * sizeof *x);
    float *logits = malloc((size_t)o.batch * (size_t)ckpt_model_classes(m) * sizeof *logits);
    double *ms = malloc((size_t)o.runs * sizeof *ms);
    rng_state = 1;
    fill_normal(x, (size_t)o.batch * per, 1.0f);
    ckpt_error err;
    int status = 0;
    double t0 = now();
    for (int r = 0; r < o.warmup + o.runs && status == 0; r++) {
        double t = now();
        if (ckpt_model_run(m, x, o.batch, o.size, o.size, logits, NULL, &err)) {
            fprintf(stderr, "error: %s\n", err.message);
            status = 2;
        }
        if (r == 0)
            t0 = now() - t0;
        if (r >= o.warmup)
            ms[r - o.warmup] = (now() - t) * 1e3;
    }
    if (status == 0) {
        printf("{\"backend\": \"%s\", \"threads\": %d, \"batch\": %d, \"size\": %d, "
               "\"load_s\": %.4f, \"first_run_s\": %.4f, \"ms\": [",
               ckpt_backend_name(ckpt_model_backend(m)), ckpt_model_threads(m), o.batch, o.size,
               load_s, t0);
        for (int r = 0; r < o.runs; r++)
            printf("%s%.3f", r ? ", " : "", ms[r]);
        qsort(ms, (size_t)o.runs, sizeof *ms, cmp_double);
        double med = o.runs % 2 ? ms[o.runs / 2] : 0.5 * (ms[o.runs / 2 - 1] + ms[o.runs / 2]);
        printf("], \"median_ms\": %.3f, \"rss_after_load_kb\": %ld, \"load_peak_rss_kb\": %ld, "
               "\"peak_rss_kb\": %ld}\n",
               med, loaded_kb, load_peak_kb, rss_kb("VmHWM:"));
    }
    ckpt_model_free(m);
    free(x);
    free(logits);
    free(ms);
    return status;
}

/* test_net maxpool ref|dnnl IN.npy OUT.npy: one 3x3/2 pad-1 max-pool of a [C,H,W] array, for
 * test_net.py to compare with torch's max_pool2d (NaN and infinities included). */
static int driver_maxpool(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: test_net maxpool ref|dnnl IN.npy OUT.npy\n");
        return 2;
    }
    ckpt_npy in;
    ckpt_error err;
    if (ckpt_npy_read(argv[3], &in, &err)) {
        fprintf(stderr, "error: %s: %s\n", argv[3], err.message);
        return 2;
    }
    if (in.ndim != 3) {
        fprintf(stderr, "error: '%s' is not a [C,H,W] array\n", argv[3]);
        ckpt_npy_free(&in);
        return 2;
    }
    int64_t c = in.shape[0], h = in.shape[1], w = in.shape[2];
    int64_t oshape[3] = {c, ckpt__conv_out(h, 3, 2, 1), ckpt__conv_out(w, 3, 2, 1)};
    float *y = malloc((size_t)(oshape[0] * oshape[1] * oshape[2]) * sizeof *y);
    int status = 0;
    if (strcmp(argv[2], "ref") == 0)
        ckpt__ref_maxpool(in.data, c, h, w, y, 2);
    else if (ckpt__dnnl_maxpool_once(1, c, in.data, h, w, 2, y, &err) != CKPT_OK) {
        fprintf(stderr, "error: %s\n", err.message);
        status = 2;
    }
    if (status == 0 && ckpt_npy_write(argv[4], y, 3, oshape, &err)) {
        fprintf(stderr, "error: %s\n", err.message);
        status = 2;
    }
    free(y);
    ckpt_npy_free(&in);
    return status;
}

/* ckpt's Winograd weight transforms (net_dnnl.c, wino_fill) against oneDNN's reorder into the
 * same layouts: every float the same, for the shapes of layer1 to layer3 at 224 and others,
 * weights of magnitudes from 1e-30 to 1e30 with both signs. */
static void test_wino_transform(void)
{
    static const struct { int64_t ic, oc, h; bool f4; } cases[] = {
        {256, 256, 14, false}, {256, 256, 7, false}, {64, 128, 5, false}, {512, 256, 3, false},
        {64, 64, 56, true}, {128, 128, 28, true}, {64, 128, 20, true}, {256, 256, 14, true},
        {256, 256, 56, true}}; /* the last: oc2_block 4 */
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        ckpt__conv c = {"wino", NULL, cases[ci].ic, cases[ci].oc, 3, 1, 1, 1, NULL, NULL};
        size_t nw = (size_t)(c.oc * c.ic * 9);
        c.w = malloc(nw * sizeof *c.w);
        fill_normal(c.w, nw, 0.05f);
        for (size_t i = 0; i < nw; i += 97) /* scattered extremes */
            c.w[i] *= (i / 97) % 3 == 0 ? 1e-30f : (i / 97) % 3 == 1 ? 1e30f : -1.0f;
        size_t differ = 99;
        ckpt_error err;
        int rc = ckpt__dnnl_wino_compare(&c, cases[ci].h, cases[ci].h, cases[ci].f4, &differ,
                                         &err);
        CHECK_OK(rc, err);
        printf("wino %s %lld->%lld at %lldx%lld: ckpt's transform vs oneDNN's: %zu of %zu "
               "floats differ\n", cases[ci].f4 ? "F(4x4,3x3)" : "F(2x2,3x3)", (long long)c.ic,
               (long long)c.oc, (long long)cases[ci].h, (long long)cases[ci].h, differ,
               nw * (cases[ci].f4 ? 36 : 16) / 9);
        CHECK(rc == CKPT_OK && differ == 0);
        free(c.w);
    }
}

/* CKPT_MODEL_ONE_SIZE: the same bits as a model that may change size (its Winograd convs
 * dropped their plain weights after the load, nothing else), and another size refused. */
static void test_one_size(const char *arch, int h, int w)
{
    const int64_t classes = 11;
    size_t per = (size_t)3 * (size_t)h * (size_t)w;
    float *x = malloc(3 * per * sizeof *x);
    fill_normal(x, 3 * per, 1.0f);
    ckpt_model *any = model_random(arch, classes, CKPT_BACKEND_DNNL, 2, 0, h, w);
    ckpt_model *one = model_random(arch, classes, CKPT_BACKEND_DNNL, 2, CKPT_MODEL_ONE_SIZE, h, w);
    float *a = run(any, x, 3, h, w), *b = run(one, x, 3, h, w);
    CHECK(same_bits(a, b, 3 * (size_t)classes));
    float out[11];
    ckpt_error err;
    CHECK(one && ckpt_model_run(one, x, 1, h + 1, w, out, NULL, &err) == CKPT_EINVAL &&
          strstr(err.message, "runs") != NULL);
    free(b);
    b = run(one, x, 3, h, w); /* and still runs at its size */
    CHECK(same_bits(a, b, 3 * (size_t)classes));
    printf("%-18s %dx%d dnnl, one size: the same bits; %dx%d refused\n", arch, h, w, w, h + 1);
    free(a);
    free(b);
    free(x);
    ckpt_model_free(any);
    ckpt_model_free(one);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "maxpool") == 0)
        return driver_maxpool(argc, argv);
    if (argc > 1 && strcmp(argv[1], "run") == 0)
        return driver_run(argc, argv);
    if (argc > 1 && strcmp(argv[1], "bench") == 0)
        return driver_bench(argc, argv);
    if (argc > 1 && strcmp(argv[1], "backends") == 0) {
        for (int b = CKPT_BACKEND_REF; b <= CKPT_BACKEND_DNNL; b++)
            if (ckpt_backend_available((ckpt_backend)b))
                printf("%s\n", ckpt_backend_name((ckpt_backend)b));
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "usage: test_net [run ...|bench ...|backends]\n");
        return 2;
    }
    test_api_errors();
    test_backbone(CKPT_BACKEND_REF);
    if (ckpt_backend_available(CKPT_BACKEND_DNNL)) {
        test_maxpool_op();
        test_conv_ops();
        test_wino_transform();
        test_one_size("resnet50", 40, 56);
        test_net_arch("resnet18", 64, 64, 3, 1); /* 1 thread: Winograd at 64x64 lays its weights
                                                   * out per batch size, so no batched plans */
        test_net_arch("resnet50", 40, 56, 2, 8);
        test_net_arch("resnext50_32x4d", 33, 32, 2, 8);
        test_bf16("resnet18", 64, 64);
        test_backbone(CKPT_BACKEND_DNNL);
    } else {
        printf("dnnl backend not built: per-op and determinism tests of it skipped\n");
    }
    return check_exit();
}
