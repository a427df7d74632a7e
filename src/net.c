/*
 * net.c - ResNet inference: the network description, weight loading with BatchNorm folded in,
 * and the public ckpt_model_* API that hands the work to a backend (net_ref.c, net_dnnl.c).
 *
 * The description follows torchvision's constructors (docs/ARCHITECTURES.md §1): stem
 * conv1/bn1/ReLU and a 3x3 s2 p1 max-pool, four stages of blocks whose block 0 carries the
 * stride (stages 2-4) and a downsample when the stride or channel count changes, adaptive
 * average pool, fc. Weights are asked for by torchvision's state_dict names through a
 * ckpt_weight_fn, so the engine does not care where they came from.
 */
#include "family.h"
#include "net.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define NET_MAX_CLASSES INT32_MAX
#define NET_MAX_KEY 128

struct ckpt_model {
    ckpt_backend backend;
    int threads;
    ckpt__net *net; /* what the backend did not take over */
    ckpt__ref *ref;
    ckpt__dnnl *dnnl;
    ckpt_model_profile prof; /* the phases net.c times; the backend's are added on request */
    bool has_run;
    int one_h, one_w;        /* CKPT_MODEL_ONE_SIZE: the only size run accepts; 0: any */
};

static double ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) * 1e-6;
}

/* ---- threads ----------------------------------------------------------------------------- */

int ckpt__threads_default(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > CKPT__NET_MAX_THREADS ? CKPT__NET_MAX_THREADS : (int)n;
}

int ckpt__threads_set(int threads)
{
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    return saved;
#else
    (void)threads;
    return 1;
#endif
}

void ckpt__threads_restore(int saved)
{
#ifdef _OPENMP
    omp_set_num_threads(saved);
#else
    (void)saved;
#endif
}

/* ---- the description ---------------------------------------------------------------------- */

size_t ckpt__net_conv_count(const ckpt__net *n)
{
    size_t c = 1;
    for (int i = 0; i < n->n_blocks; i++)
        c += (size_t)n->blocks[i].n_conv + n->blocks[i].has_down;
    return c;
}

ckpt__conv *ckpt__net_conv_at(ckpt__net *n, size_t i)
{
    if (i == 0)
        return &n->stem;
    i--;
    for (int b = 0; b < n->n_blocks; b++) {
        ckpt__block *bl = &n->blocks[b];
        if (bl->has_down) {
            if (i == 0)
                return &bl->down;
            i--;
        }
        if (i < (size_t)bl->n_conv)
            return &bl->conv[i];
        i -= (size_t)bl->n_conv;
    }
    return NULL;
}

static void conv_free(ckpt__conv *c)
{
    free((void *)c->name);
    free((void *)c->bn);
    free(c->w);
    free(c->b);
    c->name = c->bn = NULL;
    c->w = c->b = NULL;
}

void ckpt__net_free(ckpt__net *n)
{
    if (!n)
        return;
    size_t nc = ckpt__net_conv_count(n);
    for (size_t i = 0; i < nc; i++)
        conv_free(ckpt__net_conv_at(n, i));
    free(n->blocks);
    free(n->fc_w);
    free(n->fc_b);
    free(n);
}

int ckpt__conv_init(ckpt__conv *c, const char *name, const char *bn, int64_t ic, int64_t oc,
                    int64_t k, int64_t stride, int64_t groups, ckpt_error *err)
{
    c->name = strdup(name);
    c->bn = strdup(bn);
    if (!c->name || !c->bn)
        return CKPT_NOMEM(err);
    c->ic = ic;
    c->oc = oc;
    c->k = k;
    c->stride = stride;
    c->pad = k / 2; /* 7x7: 3, 3x3: 1, 1x1: 0 */
    c->groups = groups;
    return CKPT_OK;
}

/* ---- weights ------------------------------------------------------------------------------ */

typedef struct loader {
    ckpt_weight_fn fn;
    void *ud;
    ckpt_error *err;
} loader;

static int get(loader *l, const char *key, const int64_t *shape, int ndim, float *out)
{
    ckpt_error local;
    ckpt_error *err = l->err ? l->err : &local;
    err->status = CKPT_OK;
    err->message[0] = '\0';
    int rc = l->fn(l->ud, key, shape, ndim, out, err);
    if (rc != CKPT_OK && err->status == CKPT_OK)
        return CKPT_FAIL(l->err, rc, "weight '%s' could not be read", key);
    return rc;
}

static int bn_key(char *buf, size_t size, const char *bn, const char *leaf)
{
    return snprintf(buf, size, "%s.%s", bn, leaf) < (int)size ? 0 : -1;
}

/* Read conv c's weight (into w when not NULL, else a new buffer) and fold the BatchNorm
 * called bn into it. */
static int load_conv(loader *l, ckpt__conv *c, float *w, const char *bn)
{
    int64_t icg = c->ic / c->groups;
    size_t per_oc = (size_t)(icg * c->k * c->k), count = (size_t)c->oc * per_oc;
    c->w = w ? w : malloc(count * sizeof *c->w);
    c->b = malloc((size_t)c->oc * sizeof *c->b);
    float *stats = malloc(4 * (size_t)c->oc * sizeof *stats);
    if (!c->w || !c->b || !stats) {
        free(stats);
        return CKPT_NOMEM(l->err);
    }
    char key[NET_MAX_KEY];
    int64_t shape[4] = {c->oc, icg, c->k, c->k};
    snprintf(key, sizeof key, "%s.weight", c->name);
    int rc = get(l, key, shape, 4, c->w);
    static const char *const leaves[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int i = 0; i < 4 && rc == CKPT_OK; i++) {
        if (bn_key(key, sizeof key, bn, leaves[i]))
            rc = CKPT_FAIL(l->err, CKPT_EINVAL, "weight name too long");
        else
            rc = get(l, key, &c->oc, 1, stats + (size_t)i * (size_t)c->oc);
    }
    if (rc == CKPT_OK) {
        const float *gamma = stats, *beta = stats + c->oc, *mean = stats + 2 * c->oc,
                    *var = stats + 3 * c->oc;
        for (int64_t o = 0; o < c->oc; o++) {
            /* PyTorch's CPU kernel also applies eval BatchNorm as x * s + (beta - mean * s);
             * folding s into w adds one rounding per weight, far inside the 1e-4 bound */
            float s = gamma[o] / sqrtf(var[o] + CKPT__NET_BN_EPS);
            float *wo = c->w + (size_t)o * per_oc;
            for (size_t j = 0; j < per_oc; j++)
                wo[j] *= s;
            c->b[o] = beta[o] - mean[o] * s;
        }
    }
    free(stats);
    return rc;
}

static int load_conv_cb(void *ud, ckpt__conv *c, float *w, ckpt_error *err)
{
    loader *l = ud;
    (void)err; /* l->err is the same record */
    return load_conv(l, c, w, c->bn);
}

/* The head (the family's head_w, head_b) unless it has no classes (a backbone); the convs
 * too when all_convs (the dnnl backend loads them one at a time). */
static int net_load(ckpt__net *n, loader *l, bool all_convs, const char *head_w,
                    const char *head_b)
{
    size_t nc = ckpt__net_conv_count(n);
    for (size_t i = 0; i < nc && all_convs; i++) {
        int rc = load_conv_cb(l, ckpt__net_conv_at(n, i), NULL, l->err);
        if (rc)
            return rc;
    }
    if (n->classes == 0)
        return CKPT_OK;
    size_t fcn;
    if (ckpt__mul_overflow((size_t)n->classes, (size_t)n->features, &fcn) ||
        fcn > SIZE_MAX / sizeof(float))
        return CKPT_FAIL(l->err, CKPT_ELIMIT, "a head of %lld classes is too large",
                         (long long)n->classes);
    n->fc_w = malloc(fcn * sizeof *n->fc_w);
    n->fc_b = malloc((size_t)n->classes * sizeof *n->fc_b);
    if (!n->fc_w || !n->fc_b)
        return CKPT_NOMEM(l->err);
    int64_t shape[2] = {n->classes, n->features};
    int rc = get(l, head_w, shape, 2, n->fc_w);
    if (rc == CKPT_OK)
        rc = get(l, head_b, &n->classes, 1, n->fc_b);
    return rc;
}

/* ---- the head ----------------------------------------------------------------------------- */

void ckpt__net_head(const ckpt__net *n, const float *x, int64_t hw, float *logits,
                    float *features)
{
    float local[CKPT__NET_MAX_FEATURES];
    float *f = features ? features : local;
    for (int64_t c = 0; c < n->features; c++) {
        const float *xc = x + c * hw;
        float s = 0.0f;
        for (int64_t i = 0; i < hw; i++)
            s += xc[i];
        f[c] = s / (float)hw;
    }
    /* Eight interleaved partial sums, combined in a fixed tree: four times shorter dependency
     * chains than one running sum, and still one order whatever the thread count. */
    const int64_t nf = n->features, nf8 = nf / 8 * 8;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n->classes >= 64)
#endif
    for (int64_t j = 0; j < n->classes; j++) {
        const float *wj = n->fc_w + j * nf;
        float acc[8] = {0};
        for (int64_t c = 0; c < nf8; c += 8)
            for (int l = 0; l < 8; l++)
                acc[l] += wj[c + l] * f[c + l];
        for (int64_t c = nf8; c < nf; c++)
            acc[c - nf8] += wj[c] * f[c];
        float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        logits[j] = s + n->fc_b[j];
    }
}

/* ---- the public API ----------------------------------------------------------------------- */

const char *ckpt_backend_name(ckpt_backend b)
{
    switch (b) {
    case CKPT_BACKEND_AUTO:
        return "auto";
    case CKPT_BACKEND_REF:
        return "ref";
    case CKPT_BACKEND_DNNL:
        return "dnnl";
    }
    return NULL;
}

int ckpt_backend_from_name(const char *name)
{
    for (int b = CKPT_BACKEND_AUTO; b <= CKPT_BACKEND_DNNL; b++)
        if (name && strcmp(name, ckpt_backend_name((ckpt_backend)b)) == 0)
            return b;
    return -1;
}

bool ckpt_backend_available(ckpt_backend b)
{
    switch (b) {
    case CKPT_BACKEND_AUTO:
    case CKPT_BACKEND_REF:
        return true;
    case CKPT_BACKEND_DNNL:
        return ckpt__dnnl_available();
    }
    return false;
}

int ckpt_model_new(const ckpt_arch *arch, int64_t num_classes, ckpt_weight_fn fn, void *ud,
                   const ckpt_model_options *opt, ckpt_model **out, ckpt_error *err)
{
    if (!out)
        return CKPT_FAIL(err, CKPT_EINVAL, "no place for the model");
    *out = NULL;
    if (!arch || !fn)
        return CKPT_FAIL(err, CKPT_EINVAL, "no architecture or weights given");
    if (!arch->family->net)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "no inference for the %s family ('%s')",
                         arch->family->name, arch->name);
    if (num_classes < 0 || num_classes > NET_MAX_CLASSES) /* 0: a backbone, no head */
        return CKPT_FAIL(err, CKPT_EINVAL, "class count %lld is out of range",
                         (long long)num_classes);
    ckpt_model_options o = opt ? *opt : (ckpt_model_options){0};
    if (o.threads < 0 || o.threads > CKPT__NET_MAX_THREADS)
        return CKPT_FAIL(err, CKPT_EINVAL, "thread count %d is out of range (1 to %d)",
                         o.threads, CKPT__NET_MAX_THREADS);
    if (o.threads == 0)
        o.threads = ckpt__threads_default();
    if (o.height < 0 || o.width < 0 || o.height > CKPT__NET_MAX_SIDE ||
        o.width > CKPT__NET_MAX_SIDE)
        return CKPT_FAIL(err, CKPT_EINVAL, "image size %dx%d is out of range", o.width,
                         o.height);
    if (o.height == 0)
        o.height = CKPT__NET_DEFAULT_SIDE;
    if (o.width == 0)
        o.width = CKPT__NET_DEFAULT_SIDE;
    if (o.backend == CKPT_BACKEND_AUTO)
        o.backend = ckpt__dnnl_available() ? CKPT_BACKEND_DNNL : CKPT_BACKEND_REF;
    if (o.backend != CKPT_BACKEND_REF && o.backend != CKPT_BACKEND_DNNL)
        return CKPT_FAIL(err, CKPT_EINVAL, "unknown backend %d", (int)o.backend);
    if (!ckpt_backend_available(o.backend))
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                         "backend 'dnnl' is not in this build of libckpt (use 'ref')");

    if ((o.flags & CKPT_MODEL_BF16) && o.backend != CKPT_BACKEND_DNNL)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "bf16 inference needs the 'dnnl' backend");
    if ((o.flags & CKPT_MODEL_BF16) && !ckpt__dnnl_bf16_supported())
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                         "this CPU has no bfloat16 dot products (AVX512_BF16 or AMX) for "
                         "bf16 inference; use float32");

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ckpt_model *m = calloc(1, sizeof *m);
    if (!m)
        return CKPT_NOMEM(err);
    m->backend = o.backend;
    m->threads = o.threads;
    if (o.flags & CKPT_MODEL_ONE_SIZE) {
        m->one_h = o.height;
        m->one_w = o.width;
    }
    int rc = arch->family->net(arch, num_classes, &m->net, err);
    loader l = {fn, ud, err};
    if (rc == CKPT_OK)
        rc = net_load(m->net, &l, o.backend == CKPT_BACKEND_REF, ckpt_arch_head(arch, false),
                      ckpt_arch_head(arch, true));
    m->prof.read_fold_ms = ms_since(&t0);
    if (rc == CKPT_OK) {
        if (o.backend == CKPT_BACKEND_REF) {
            rc = ckpt__ref_new(m->net, m->threads, &m->ref, err);
        } else {
            ckpt__dnnl_options dopt = {
                m->threads,
                o.flags & CKPT_MODEL_NO_WINOGRAD    ? CKPT__WINO_NONE
                : o.flags & CKPT_MODEL_WINOGRAD_ALL ? CKPT__WINO_ALL
                                                    : CKPT__WINO_AUTO,
                (o.flags & CKPT_MODEL_BF16) != 0,
                (o.flags & CKPT_MODEL_PROFILE) != 0,
                o.height,
                o.width,
                (o.flags & CKPT_MODEL_ONE_SIZE) != 0,
            };
            rc = ckpt__dnnl_new(m->net, &dopt, load_conv_cb, &l, &m->dnnl, err);
        }
    }
    m->prof.load_ms = ms_since(&t0);
    if (rc) {
        ckpt_model_free(m);
        return rc;
    }
    *out = m;
    return CKPT_OK;
}

void ckpt_model_free(ckpt_model *m)
{
    if (!m)
        return;
    ckpt__ref_free(m->ref);
    ckpt__dnnl_free(m->dnnl);
    ckpt__net_free(m->net);
    free(m);
}

ckpt_backend ckpt_model_backend(const ckpt_model *m)
{
    return m->backend;
}

bool ckpt_model_bf16_available(void)
{
    return ckpt__dnnl_available() && ckpt__dnnl_bf16_supported();
}

void ckpt_model_get_profile(const ckpt_model *m, ckpt_model_profile *out)
{
    *out = m->prof;
    if (m->dnnl) {
        ckpt__load_profile p;
        ckpt__dnnl_load_profile(m->dnnl, &p);
        out->read_fold_ms += p.read_fold_ms;
        out->build_ms = p.build_ms;
        out->reorder_ms = p.reorder_ms;
        out->winograd_cpu_ms = p.winograd_cpu_ms;
        out->blocked_cpu_ms = p.blocked_cpu_ms;
        out->images = p.images;
        out->largest_group = p.largest_group;
    } else {
        out->largest_group = m->has_run ? 1 : 0;
    }
}

bool ckpt_model_get_layer(const ckpt_model *m, size_t i, ckpt_model_layer *out)
{
    double ms;
    if (!m->dnnl || !ckpt__dnnl_layer(m->dnnl, i, &out->name, &out->impl, &out->gflop, &ms))
        return false;
    ckpt__load_profile p;
    ckpt__dnnl_load_profile(m->dnnl, &p);
    out->ms = p.images > 0 ? ms / (double)p.images : 0.0;
    return true;
}

int ckpt_model_threads(const ckpt_model *m)
{
    return m->threads;
}

int64_t ckpt_model_classes(const ckpt_model *m)
{
    return m->net->classes;
}

int64_t ckpt_model_features(const ckpt_model *m)
{
    return m->net->features;
}

int ckpt_model_run(ckpt_model *m, const float *input, int batch, int height, int width,
                   float *logits, float *features, ckpt_error *err)
{
    if (!m || !input || (m->net->classes ? !logits : !features))
        return CKPT_FAIL(err, CKPT_EINVAL, "no model, input or output given");
    if (!m->net->classes)
        logits = NULL; /* a backbone writes none */
    if (batch < 0 || batch > CKPT__NET_MAX_BATCH)
        return CKPT_FAIL(err, CKPT_EINVAL, "batch of %d images is out of range (0 to %d)",
                         batch, CKPT__NET_MAX_BATCH);
    if (height < 1 || width < 1 || height > CKPT__NET_MAX_SIDE || width > CKPT__NET_MAX_SIDE)
        return CKPT_FAIL(err, CKPT_EINVAL, "image of %dx%d is out of range (1 to %d a side)",
                         width, height, CKPT__NET_MAX_SIDE);
    if (m->one_h && (height != m->one_h || width != m->one_w))
        return CKPT_FAIL(err, CKPT_EINVAL,
                         "this model runs %dx%d images only (made with CKPT_MODEL_ONE_SIZE), "
                         "not %dx%d", m->one_w, m->one_h, width, height);
    size_t per_image = (size_t)3 * (size_t)height * (size_t)width; /* < 2^30 by the limits */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int saved = ckpt__threads_set(m->threads);
    int rc = CKPT_OK;
    if (m->backend == CKPT_BACKEND_DNNL)
        rc = ckpt__dnnl_run(m->dnnl, input, batch, height, width, logits, features, err);
    for (int i = 0; i < batch && rc == CKPT_OK && m->backend == CKPT_BACKEND_REF; i++) {
        const float *x = input + (size_t)i * per_image;
        float *lo = logits ? logits + (size_t)i * (size_t)m->net->classes : NULL;
        float *fe = features ? features + (size_t)i * (size_t)m->net->features : NULL;
        rc = ckpt__ref_run(m->ref, x, height, width, lo, fe, err);
    }
    ckpt__threads_restore(saved);
    if (!m->has_run && rc == CKPT_OK && batch > 0) {
        m->has_run = true;
        m->prof.first_run_ms = ms_since(&t0);
        m->prof.first_run_images = batch;
    }
    return rc;
}

/* ---- weights from a dict of tensors ------------------------------------------------------- */

typedef struct dict_src {
    const ckpt_value *dict;
    const ckpt_sd *sd;
    const char *prefix;
} dict_src;

static void shape_str(char *buf, size_t size, const int64_t *shape, int ndim)
{
    size_t n = 0;
    n += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size)
        snprintf(buf + n, size - n, "]");
}

static int read_tensor(const ckpt_value *v, const char *key, const int64_t *shape, int ndim,
                       float *out, ckpt_error *err)
{
    if (!v)
        return CKPT_FAIL(err, CKPT_EMISMATCH, "weight '%s' is missing", key);
    if (v->type != CKPT_T_TENSOR)
        return CKPT_FAIL(err, CKPT_EMISMATCH, "weight '%s' is a %s, not a tensor", key,
                         ckpt_type_name(v->type));
    const ckpt_tensor *t = v->u.tensor;
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char want[128], got[128];
        shape_str(want, sizeof want, shape, ndim);
        shape_str(got, sizeof got, t->shape, t->ndim);
        return CKPT_FAIL(err, CKPT_EMISMATCH, "weight '%s' has shape %s, expected %s", key, got,
                         want);
    }
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++)
        numel *= shape[i]; /* the model's own shapes: no overflow */
    int rc = ckpt_tensor_read(t, CKPT_DT_FLOAT32, out, (size_t)numel * sizeof(float), err);
    /* the model holds its own copy now: the file's pages need not stay resident */
    if (rc == CKPT_OK && t->storage && t->storage->data)
        ckpt__file_release(t->storage->file, t->storage->data, t->storage->nbytes);
    return rc;
}

static int dict_weight(void *ud, const char *key, const int64_t *shape, int ndim, float *out,
                       ckpt_error *err)
{
    const dict_src *s = ud;
    if (s->sd) {
        for (size_t i = 0; i < s->sd->n_entries; i++)
            if (strcmp(s->sd->entries[i].key, key) == 0)
                return read_tensor(s->sd->entries[i].value, key, shape, ndim, out, err);
        return read_tensor(NULL, key, shape, ndim, out, err);
    }
    if (!s->prefix || !s->prefix[0])
        return read_tensor(ckpt_dict_get(s->dict, key), key, shape, ndim, out, err);
    char full[512];
    if (snprintf(full, sizeof full, "%s%s", s->prefix, key) >= (int)sizeof full)
        return CKPT_FAIL(err, CKPT_EINVAL, "prefix '%s' is too long", s->prefix);
    return read_tensor(ckpt_dict_get(s->dict, full), full, shape, ndim, out, err);
}

int ckpt_model_load(const ckpt_arch *arch, int64_t num_classes, const ckpt_value *state_dict,
                    const char *prefix, const ckpt_model_options *opt, ckpt_model **out,
                    ckpt_error *err)
{
    if (!state_dict || state_dict->type != CKPT_T_DICT) {
        if (out)
            *out = NULL;
        return CKPT_FAIL(err, CKPT_EINVAL, "the state dict is not a dict");
    }
    dict_src s = {state_dict, NULL, prefix};
    return ckpt_model_new(arch, num_classes, dict_weight, &s, opt, out, err);
}

int ckpt_model_load_sd(const ckpt_arch *arch, int64_t num_classes, const ckpt_sd *sd,
                       const ckpt_model_options *opt, ckpt_model **out, ckpt_error *err)
{
    if (!sd) {
        if (out)
            *out = NULL;
        return CKPT_FAIL(err, CKPT_EINVAL, "no state dict given");
    }
    dict_src s = {NULL, sd, NULL};
    return ckpt_model_new(arch, num_classes, dict_weight, &s, opt, out, err);
}
