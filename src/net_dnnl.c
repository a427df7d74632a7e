/*
 * net_dnnl.c - the fast backend: ResNets on oneDNN 2.6 (Debian's libdnnl), through its C API.
 *
 * At load every convolution gets a oneDNN primitive whose weights layout is chosen by oneDNN
 * (format_tag_any) and filled once by a reorder from the BatchNorm-folded weights; the folded
 * bias is the primitive's bias. Activations stay in oneDNN's blocked layout (nChw16c on
 * AVX-512, nChw8c on AVX2) from the stem to the last block, whose output is reordered to NCHW
 * for the shared head (average pool and fc in plain C, net.c).
 *
 * Fusions: conv+ReLU is an eltwise post-op; a block's last conv writes into the buffer holding
 * its identity (the block input, or the downsample's output) with post-ops sum then ReLU, so
 * the residual add and the ReLU cost no extra pass.
 *
 * Determinism. The plan for one image (mb 1) is built at load; plans for 2, 4 and 8 images
 * are built on first use and must run exactly mb 1's kernels (pinned by implementation name,
 * with mb 1's weights layout). A conv whose kernel oneDNN offers for one image only runs
 * image by image inside the batched plan (mb 1's primitive on each image's part of the batch
 * buffers, conv_per_image); if even that cannot be, the plan is not used and images run one
 * at a time. A batch runs in groups of 8, 4, 2 and 1. oneDNN's forward direct and Winograd
 * convolutions sum each output over input channels and taps in an order fixed by the
 * kernel's blocking, which 2.6 chooses from the shapes and the ISA; threads and images split
 * the work by output blocks, rows and images, never the sum. test_net.c checks the claim:
 * every batch size from 1 to 9 at every position equals the image alone, for 1, 2 and 3
 * threads.
 *
 * Winograd. oneDNN 2.6 has F(4x4, 3x3) for any batch, and F(2x2, 3x3) for one image with
 * planes of at most 14x14; the two round differently. A conv is Winograd-eligible by a rule
 * that does not look at the image size (3x3, stride 1, no groups, and under CKPT__WINO_AUTO
 * at most WINO_MAX_CHANNELS channels: layer1 to layer3). Up to WINO_4X3_MAX_CHANNELS (layer1,
 * layer2: planes of 28x28 and more at 224) it takes F(4x4), batched; above (layer3, 14x14 at
 * 224) F(2x2) where oneDNN offers it, run image by image in batches, else the direct conv:
 * F(4x4)'s weights are 36/9 of a direct conv's (layer3's would cost 56 MB), F(2x2)'s 16/9, and
 * F(2x2) on layer3 takes 0.36-0.43 ms against the direct conv's 0.61 per image, batched or
 * not. Winograd weights cannot be reordered back, and their layout depends on the image size,
 * so eligible convs keep their folded plain weights for a later size; the others keep only
 * the blocked copy and re-reorder from it when the size changes the layout.
 *
 * Loading. The plan is built first with the weights' memories left empty, so their total size
 * is known: one arena, then the plain weights read and folded in order, group by group, and
 * each group's reorders spread over the threads (load_weights).
 */
#include "net.h"

#ifdef CKPT_HAVE_DNNL

#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define WINO_MAX_CHANNELS 256  /* CKPT__WINO_AUTO: layer1 to layer3 of the ResNets */
#define WINO_4X3_MAX_CHANNELS 128 /* F(4x4, 3x3) up to here (layer1, layer2), F(2x2, 3x3) above */
#define DNNL_ALIGN 64
#define MAX_ARGS 6

#define N_PLANS 4                  /* plans for batches of 1, 2, 4 and 8 images */
#define GROUP_BYTES (4u << 20)     /* plain weights read and folded before a parallel reorder
                                    * (at least the largest conv's) */
#define ARENA_ALIGN (2u << 20)     /* the weights arena: one transparent huge page per 2 MB */

typedef struct dconv {
    ckpt__conv *c;
    bool wino_ok;          /* eligible: keeps c->w (unless the model has one size) */
    dnnl_memory_t wmem;    /* weights in the layout of the current primitives */
    void *wbuf;            /* wmem's buffer when owned here; NULL when it lies in d->arena */
    dnnl_memory_t bmem;    /* c->b, plain */
    bool pending;          /* wmem made at load, its weights still to be read and reordered */
    size_t arena_off;      /* where a pending wmem goes in the arena */
    size_t kept_off;       /* wino_ok: where its plain weights go in d->kept */
} dconv;

typedef struct step {
    dnnl_primitive_t prim;
    bool borrowed;         /* prim belongs to an earlier step (one image of a batch each) */
    size_t layer;          /* its row of the profile (d->layers) */
    int nargs;
    dnnl_exec_arg_t args[MAX_ARGS];
} step;

/* The compiled network for mb images of h x w. Every plan has the same steps in the same
 * order, so the profile's layers are the steps of any of them. */
typedef struct plan {
    int64_t mb, h, w;      /* h == 0: not built */
    bool unusable;         /* mb > 1 whose kernels or weights would differ from mb 1's */
    step *steps;
    size_t n_steps, cap_steps;
    dnnl_memory_t *mems;   /* activation and scratchpad views, destroyed with the plan */
    size_t n_mems, cap_mems;
    void *act[4];          /* activations, then the scratchpad, in one region (big_alloc) */
    size_t act_bytes;
    void *scratch;
    size_t scratch_bytes;
    void *region;
    size_t region_mapped;
    float *out;            /* the last activation as NCHW, for the head */
    int64_t out_hw;
    dnnl_memory_t in_user; /* the caller's images, handle set per run */
} plan;

typedef struct layer {
    char name[40];
    char impl[64];         /* oneDNN's implementation in the mb 1 plan */
    double gflop;          /* per image */
    double ms;             /* summed over the profiled runs */
} layer;

struct ckpt__dnnl {
    ckpt__net *net;
    int threads;
    ckpt__wino wino;
    bool bf16;
    bool one_size;           /* never run at another size: nothing kept to re-derive layouts */
    dnnl_data_type_t dt;     /* activations and weights: f32, or bf16 */
    ckpt__conv_load_fn load; /* while ckpt__dnnl_new runs */
    void *load_ud;
    bool loading;            /* plan_build defers weights (pending) instead of reordering */
    size_t arena_bytes;
    void *arena;             /* the weights of every conv made at load (big_alloc) */
    size_t arena_mapped;
    void *kept;              /* the plain weights the Winograd convs keep: their c->w */
    size_t kept_mapped;
    dnnl_engine_t eng;
    dnnl_stream_t strm;
    dconv *convs;
    size_t n_convs;
    plan plans[N_PLANS];
    layer *layers;           /* the steps of plans[0] */
    size_t n_layers;
    bool profile;
    ckpt__load_profile prof;
};

static const char *dnnl_status_name(dnnl_status_t s)
{
    switch (s) {
    case dnnl_success:
        return "success";
    case dnnl_out_of_memory:
        return "out of memory";
    case dnnl_invalid_arguments:
        return "invalid arguments";
    case dnnl_unimplemented:
        return "unimplemented";
    case dnnl_iterator_ends:
        return "iterator ends";
    case dnnl_runtime_error:
        return "runtime error";
    case dnnl_not_required:
        return "not required";
    }
    return "unknown status";
}

static int dnnl_fail(ckpt_error *err, dnnl_status_t s, const char *what, const char *subject)
{
    int status = s == dnnl_out_of_memory ? CKPT_ENOMEM
                 : s == dnnl_unimplemented ? CKPT_EUNSUPPORTED
                                           : CKPT_EINVAL;
    return CKPT_FAIL(err, status, "onednn: %s for '%s' failed (%s)", what, subject,
                     dnnl_status_name(s));
}

#define DN(call, what, subject)                                                                \
    do {                                                                                       \
        dnnl_status_t dn_s_ = (call);                                                          \
        if (dn_s_ != dnnl_success)                                                             \
            return dnnl_fail(err, dn_s_, (what), (subject));                                   \
    } while (0)

bool ckpt__dnnl_available(void)
{
    return true;
}

/* bf16 dot products (AVX512_BF16 or AMX) as oneDNN sees them: without them oneDNN would
 * emulate bf16 at a fraction of the f32 speed, or have no kernel at all. DNNL_MAX_CPU_ISA
 * lowers what it sees, and so what this answers. */
bool ckpt__dnnl_bf16_supported(void)
{
    unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    return (isa & (unsigned)dnnl_cpu_isa_avx512_core_bf16) ==
           (unsigned)dnnl_cpu_isa_avx512_core_bf16;
}

/* ---- small tools -------------------------------------------------------------------------- */

static void *aligned_buf(size_t bytes)
{
    size_t n = (bytes + DNNL_ALIGN - 1) / DNNL_ALIGN * DNNL_ALIGN;
    return aligned_alloc(DNNL_ALIGN, n ? n : DNNL_ALIGN);
}

/* Large buffers straight from the kernel (zero pages, faulted in on first write), aligned to
 * ARENA_ALIGN: malloc would serve them from the heap after the first free (glibc raises its
 * mmap threshold), where they stay resident; huge pages asked for (advice only). */
static void *big_alloc(size_t bytes, size_t *mapped)
{
    size_t n = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (n == 0 || n > SIZE_MAX - ARENA_ALIGN)
        return NULL;
    char *p = mmap(NULL, n + ARENA_ALIGN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    uintptr_t a = ((uintptr_t)p + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (a > (uintptr_t)p)
        munmap(p, a - (uintptr_t)p);
    size_t tail = (uintptr_t)p + n + ARENA_ALIGN - (a + n);
    if (tail)
        munmap((void *)(a + n), tail);
#ifdef MADV_HUGEPAGE
    madvise((void *)a, n, MADV_HUGEPAGE);
#endif
    *mapped = n;
    return (void *)a;
}

static void big_free(void *p, size_t mapped)
{
    if (p)
        munmap(p, mapped);
}

static void act_md(dnnl_memory_desc_t *md, int64_t mb, int64_t c, int64_t h, int64_t w,
                   dnnl_data_type_t dt, dnnl_format_tag_t tag)
{
    dnnl_dims_t dims = {mb, c, h, w};
    dnnl_memory_desc_init_by_tag(md, 4, dims, dt, tag);
}

static void weights_md(dnnl_memory_desc_t *md, const ckpt__conv *c, dnnl_data_type_t dt,
                       dnnl_format_tag_t tag)
{
    if (c->groups == 1) {
        dnnl_dims_t dims = {c->oc, c->ic, c->k, c->k};
        dnnl_memory_desc_init_by_tag(md, 4, dims, dt, tag == dnnl_format_tag_any ? tag
                                                                            : dnnl_oihw);
    } else {
        dnnl_dims_t dims = {c->groups, c->oc / c->groups, c->ic / c->groups, c->k, c->k};
        dnnl_memory_desc_init_by_tag(md, 5, dims, dt, tag == dnnl_format_tag_any ? tag
                                                                            : dnnl_goihw);
    }
}

/* Copy src into dst (two memories, any layouts) with a reorder primitive built for the call,
 * on stream strm. Several threads may run it at once, each with its own stream. */
static int reorder_now(dnnl_engine_t eng, dnnl_stream_t strm, dnnl_memory_t src,
                       dnnl_memory_t dst, const char *subject, ckpt_error *err)
{
    const dnnl_memory_desc_t *smd, *dmd;
    DN(dnnl_memory_get_memory_desc(src, &smd), "reading a memory", subject);
    DN(dnnl_memory_get_memory_desc(dst, &dmd), "reading a memory", subject);
    dnnl_primitive_desc_t pd;
    DN(dnnl_reorder_primitive_desc_create(&pd, smd, eng, dmd, eng, NULL), "a reorder", subject);
    dnnl_primitive_t p;
    dnnl_status_t s = dnnl_primitive_create(&p, pd);
    dnnl_primitive_desc_destroy(pd);
    DN(s, "a reorder", subject);
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}};
    s = dnnl_primitive_execute(p, strm, 2, args);
    if (s == dnnl_success)
        s = dnnl_stream_wait(strm);
    dnnl_primitive_destroy(p);
    DN(s, "a reorder", subject);
    return CKPT_OK;
}

static const char *pd_impl(const_dnnl_primitive_desc_t pd)
{
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    return impl ? impl : "?";
}

/* The first implementation of op whose name contains pin (any when pin is NULL), or with
 * exact, whose name is pin. */
static dnnl_status_t first_impl(dnnl_primitive_desc_t *pd, const_dnnl_op_desc_t op,
                                const_dnnl_primitive_attr_t attr, dnnl_engine_t eng,
                                const char *pin, bool exact)
{
    if (!pin)
        return dnnl_primitive_desc_create(pd, op, attr, eng, NULL);
    dnnl_primitive_desc_iterator_t it;
    dnnl_status_t s = dnnl_primitive_desc_iterator_create(&it, op, attr, eng, NULL);
    if (s != dnnl_success)
        return s;
    for (;;) {
        dnnl_primitive_desc_t cand = dnnl_primitive_desc_iterator_fetch(it);
        if (!cand) {
            s = dnnl_out_of_memory;
            break;
        }
        const char *impl = pd_impl(cand);
        if (exact ? strcmp(impl, pin) == 0 : strstr(impl, pin) != NULL) {
            *pd = cand;
            break;
        }
        dnnl_primitive_desc_destroy(cand);
        if ((s = dnnl_primitive_desc_iterator_next(it)) != dnnl_success) {
            s = dnnl_unimplemented;
            break;
        }
    }
    dnnl_primitive_desc_iterator_destroy(it);
    return s;
}

/* A convolution primitive descriptor: src fixed, weights any, bias plain f32, dst fixed or
 * any (dst_md NULL) of type dt; post-ops sum (residual) and ReLU as asked, scratchpad from
 * the caller; the implementation pinned as first_impl says. */
static dnnl_status_t conv_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng, const ckpt__conv *c,
                             const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *dst_md,
                             int64_t oh, int64_t ow, bool sum, bool relu, bool winograd,
                             dnnl_data_type_t dt, const char *pin, bool exact)
{
    dnnl_memory_desc_t wmd, bmd, dmd;
    weights_md(&wmd, c, dt, dnnl_format_tag_any);
    dnnl_dims_t bdims = {c->oc};
    dnnl_memory_desc_init_by_tag(&bmd, 1, bdims, dnnl_f32, dnnl_x);
    if (dst_md)
        dmd = *dst_md;
    else
        act_md(&dmd, src->dims[0], c->oc, oh, ow, dt, dnnl_format_tag_any);
    dnnl_dims_t strides = {c->stride, c->stride}, pad = {c->pad, c->pad};
    dnnl_convolution_desc_t cd;
    dnnl_status_t s = dnnl_convolution_forward_desc_init(
        &cd, dnnl_forward_inference,
        winograd ? dnnl_convolution_winograd : dnnl_convolution_direct, src, &wmd, &bmd, &dmd,
        strides, pad, pad);
    if (s != dnnl_success)
        return s;
    dnnl_primitive_attr_t attr;
    if ((s = dnnl_primitive_attr_create(&attr)) != dnnl_success)
        return s;
    dnnl_post_ops_t po = NULL;
    s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success && (sum || relu)) {
        s = dnnl_post_ops_create(&po);
        if (s == dnnl_success && sum)
            s = dnnl_post_ops_append_sum(po, 1.0f);
        if (s == dnnl_success && relu)
            s = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f);
        if (s == dnnl_success)
            s = dnnl_primitive_attr_set_post_ops(attr, po);
    }
    if (s == dnnl_success)
        s = first_impl(pd, &cd, attr, eng, pin, exact);
    if (po)
        dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static dnnl_status_t pool_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                             const dnnl_memory_desc_t *src, int64_t oh, int64_t ow)
{
    dnnl_memory_desc_t dmd;
    act_md(&dmd, src->dims[0], src->dims[1], oh, ow, src->data_type, dnnl_format_tag_any);
    dnnl_dims_t strides = {2, 2}, kernel = {3, 3}, pad = {1, 1};
    dnnl_pooling_desc_t d;
    dnnl_status_t s = dnnl_pooling_forward_desc_init(&d, dnnl_forward_inference,
                                                     dnnl_pooling_max, src, &dmd, strides,
                                                     kernel, pad, pad);
    if (s != dnnl_success)
        return s;
    dnnl_primitive_attr_t attr;
    if ((s = dnnl_primitive_attr_create(&attr)) != dnnl_success)
        return s;
    s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success)
        s = dnnl_primitive_desc_create(pd, &d, attr, eng, NULL);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) * 1e-6;
}

/* ---- the plan ----------------------------------------------------------------------------- */

static void plan_free(plan *pl)
{
    for (size_t i = 0; i < pl->n_steps; i++)
        if (!pl->steps[i].borrowed)
            dnnl_primitive_destroy(pl->steps[i].prim);
    free(pl->steps);
    for (size_t i = 0; i < pl->n_mems; i++)
        dnnl_memory_destroy(pl->mems[i]);
    free(pl->mems);
    big_free(pl->region, pl->region_mapped);
    free(pl->out);
    if (pl->in_user)
        dnnl_memory_destroy(pl->in_user);
    memset(pl, 0, sizeof *pl);
}

/* Every activation view is bound to one of the plan's buffers once all sizes are known. */
typedef struct binding {
    dnnl_memory_t mem;
    int buf;    /* 0..3: act[buf]; BUF_SCRATCH; BUF_OUT */
    size_t off; /* bytes into it: one image of a batch */
} binding;

typedef struct planner {
    ckpt__dnnl *d;
    plan *pl;
    binding *binds;
    size_t n_binds, cap_binds;
    size_t layer;  /* the next step's row of the profile: steps of one conv run image by
                    * image share theirs */
    bool mismatch; /* mb > 1: a kernel or weights layout differs from mb 1's */
    ckpt_error *err;
} planner;

#define BUF_SCRATCH 4
#define BUF_OUT 5
#define BUF_INPUT 6 /* the caller's images: in_user, bound per run */

/* A memory view owned by the plan. The buffer is bound later (set_handles) unless given. */
static int plan_mem(planner *p, const dnnl_memory_desc_t *md, dnnl_memory_t *out)
{
    plan *pl = p->pl;
    ckpt_error *err = p->err;
    if (pl->n_mems == pl->cap_mems) {
        size_t ncap = pl->cap_mems ? 2 * pl->cap_mems : 64;
        dnnl_memory_t *nm = realloc(pl->mems, ncap * sizeof *nm);
        if (!nm)
            return CKPT_NOMEM(err);
        pl->mems = nm;
        pl->cap_mems = ncap;
    }
    DN(dnnl_memory_create(out, md, p->d->eng, DNNL_MEMORY_NONE), "a memory", "activation");
    pl->mems[pl->n_mems++] = *out;
    return CKPT_OK;
}

static int bind(planner *p, dnnl_memory_t mem, int buf, size_t off)
{
    if (p->n_binds == p->cap_binds) {
        size_t ncap = p->cap_binds ? 2 * p->cap_binds : 128;
        binding *nb = realloc(p->binds, ncap * sizeof *nb);
        if (!nb)
            return CKPT_NOMEM(p->err);
        p->binds = nb;
        p->cap_binds = ncap;
    }
    p->binds[p->n_binds++] = (binding){mem, buf, off};
    return CKPT_OK;
}

/* A view of buffer buf from byte off with layout md; grows the activation buffers' size to
 * fit. The caller's images (BUF_INPUT) are viewed whole. */
static int view_at(planner *p, const dnnl_memory_desc_t *md, int buf, size_t off,
                   dnnl_memory_t *out)
{
    plan *pl = p->pl;
    if (buf == BUF_INPUT) {
        *out = pl->in_user;
        return CKPT_OK;
    }
    size_t bytes = off + dnnl_memory_desc_get_size(md);
    if (buf < BUF_SCRATCH && bytes > pl->act_bytes)
        pl->act_bytes = bytes;
    int rc = plan_mem(p, md, out);
    return rc ? rc : bind(p, *out, buf, off);
}

static int view(planner *p, const dnnl_memory_desc_t *md, int buf, dnnl_memory_t *out)
{
    return view_at(p, md, buf, 0, out);
}

/* Add a step; for plan 0 also its row of the profile (name, implementation, GFLOP). */
static int add_step(planner *p, dnnl_primitive_desc_t pd, const dnnl_exec_arg_t *args,
                    int nargs, const char *subject, double gflop)
{
    ckpt__dnnl *d = p->d;
    plan *pl = p->pl;
    ckpt_error *err = p->err;
    if (pl->n_steps == pl->cap_steps) {
        size_t ncap = pl->cap_steps ? 2 * pl->cap_steps : 64;
        step *ns = realloc(pl->steps, ncap * sizeof *ns);
        layer *nl = pl == &d->plans[0] ? realloc(d->layers, ncap * sizeof *nl) : d->layers;
        if (nl)
            d->layers = nl;
        if (ns)
            pl->steps = ns;
        if (!ns || !nl) {
            dnnl_primitive_desc_destroy(pd);
            return CKPT_NOMEM(err);
        }
        pl->cap_steps = ncap;
    }
    if (pl == &d->plans[0]) { /* one step a layer: p->layer == pl->n_steps */
        layer *ly = &d->layers[p->layer];
        snprintf(ly->name, sizeof ly->name, "%s", subject);
        snprintf(ly->impl, sizeof ly->impl, "%s", pd_impl(pd));
        ly->gflop = gflop;
        ly->ms = 0;
        d->n_layers = p->layer + 1;
    }
    step *st = &pl->steps[pl->n_steps];
    st->borrowed = false;
    st->layer = p->layer++;
    memcpy(st->args, args, (size_t)nargs * sizeof *args);
    st->nargs = nargs;
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t sbytes = smd ? dnnl_memory_desc_get_size(smd) : 0;
    if (sbytes > 0) {
        dnnl_memory_t sm;
        int rc = plan_mem(p, smd, &sm);
        if (!rc)
            rc = bind(p, sm, BUF_SCRATCH, 0);
        if (rc) {
            dnnl_primitive_desc_destroy(pd);
            return rc;
        }
        if (sbytes > pl->scratch_bytes)
            pl->scratch_bytes = sbytes;
        st->args[st->nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, sm};
    }
    dnnl_status_t s = dnnl_primitive_create(&st->prim, pd);
    dnnl_primitive_desc_destroy(pd);
    DN(s, "creating a primitive", subject);
    pl->n_steps++;
    return CKPT_OK;
}

/* Winograd weights of conv c (plain f32 OIHW at w) in oneDNN 2.6's f32 layouts for them, the
 * transform U = G g G^T done here: oneDNN's reorder does it one scalar at a time, 40 ns a
 * weight, which made layer3's five 256-channel convs alone cost 130 ms of the load.
 *   F(2x2, 3x3), wino_wei_aaOio: [4][4][oc/16][ic/16][16 ic][16 oc];
 *   F(4x4, 3x3), wino_wei_OBaaIBOIio: [oc/(16 oc2)][6][6][ic/(16 ic2)][oc2][ic2][16 ic][16 oc]
 *   with oneDNN's scaled G for F(4x4).
 * The sums run in oneDNN's order (G g^T first, each from 0), and test_net checks every float
 * against oneDNN's reorder. false (nothing written) for any other layout: the caller reorders. */
static const float wino_g4[4][3] = {{1.0f, 0.0f, 0.0f}, {0.5f, 0.5f, 0.5f},
                                    {0.5f, -0.5f, 0.5f}, {0.0f, 0.0f, 1.0f}};
static const float wino_g6[6][3] = {
    {1.13777777777778f, 0.f, 0.f},
    {-0.688403361344538f, -0.430252100840336f, -0.26890756302521f},
    {-0.688403361344538f, 0.430252100840336f, -0.26890756302521f},
    {0.119514472455649f, 0.179271708683473f, 0.26890756302521f},
    {0.119514472455649f, -0.179271708683473f, 0.26890756302521f},
    {0.f, 0.f, 1.f}};

static bool wino_fill(const ckpt__conv *c, const float *w, const dnnl_memory_desc_t *md,
                      float *dst)
{
    if (md->format_kind != dnnl_format_kind_wino || md->data_type != dnnl_f32)
        return false;
    const dnnl_wino_desc_t *x = &md->format_desc.wino_desc;
    const bool f2 = x->wino_format == dnnl_wino_wei_aaOio;
    const int alpha = f2 ? 4 : 6;
    if ((!f2 && x->wino_format != dnnl_wino_wei_OBaaIBOIio) || x->r != 3 || x->alpha != alpha ||
        x->adj_scale != 1.0f || c->k != 3 || c->groups != 1 || x->ic != c->ic ||
        x->oc != c->oc || x->ic_block != 16 || x->oc_block != 16 || c->ic % 16 || c->oc % 16 ||
        x->size != (size_t)(alpha * alpha) * (size_t)c->ic * (size_t)c->oc * sizeof(float))
        return false;
    const size_t nb_oc = (size_t)c->oc / 16, nb_ic = (size_t)c->ic / 16;
    const size_t oc2 = f2 ? 1 : (size_t)x->oc2_block, ic2 = f2 ? 1 : (size_t)x->ic2_block;
    if (oc2 == 0 || ic2 == 0 || nb_oc % oc2 || nb_ic % ic2)
        return false;
    const float(*G)[3] = f2 ? wino_g4 : wino_g6;
    for (size_t ob = 0; ob < nb_oc; ob++)
        for (size_t ib = 0; ib < nb_ic; ib++) {
            /* where (u_h, u_w) = (0, 0) of this 16 x 16 block goes, and the step per tap */
            size_t base, tap;
            if (f2) {
                tap = nb_oc * nb_ic * 256;
                base = (ob * nb_ic + ib) * 256;
            } else {
                size_t occ = ob / oc2, o2 = ob % oc2, icc = ib / ic2, i2 = ib % ic2;
                tap = (nb_ic / ic2) * oc2 * ic2 * 256;
                base = occ * 36 * tap + ((icc * oc2 + o2) * ic2 + i2) * 256;
            }
            for (size_t oo = 0; oo < 16; oo++)
                for (size_t ii = 0; ii < 16; ii++) {
                    const float *g = w + ((ob * 16 + oo) * (size_t)c->ic + ib * 16 + ii) * 9;
                    float t[3][6];
                    for (int ih = 0; ih < 3; ih++)
                        for (int j = 0; j < alpha; j++) {
                            float a = 0.0f;
                            for (int iw = 0; iw < 3; iw++)
                                a += g[ih * 3 + iw] * G[j][iw];
                            t[ih][j] = a;
                        }
                    for (int i = 0; i < alpha; i++)
                        for (int j = 0; j < alpha; j++) {
                            float u = 0.0f;
                            for (int k = 0; k < 3; k++)
                                u += G[i][k] * t[k][j];
                            dst[base + (size_t)(i * alpha + j) * tap + ii * 16 + oo] = u;
                        }
                }
        }
    return true;
}

/* Bring conv i's weights into the layout pd wants. While loading, only the memory is made
 * (its buffer and contents come in load_weights); later, a layout change reorders at once. */
static int conv_weights(planner *p, dconv *dc, dnnl_primitive_desc_t pd)
{
    ckpt__dnnl *d = p->d;
    ckpt_error *err = p->err;
    ckpt__conv *c = dc->c;
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if (dc->wmem) {
        const dnnl_memory_desc_t *have;
        DN(dnnl_memory_get_memory_desc(dc->wmem, &have), "reading weights", c->name);
        if (dnnl_memory_desc_equal(have, want))
            return CKPT_OK;
        if (p->pl != &d->plans[0]) { /* batches share mb 1's weights, or are not batched */
            p->mismatch = true;
            return CKPT_EUNSUPPORTED;
        }
    }
    if (!dc->bmem) {
        dnnl_memory_desc_t bmd;
        dnnl_dims_t bdims = {c->oc};
        dnnl_memory_desc_init_by_tag(&bmd, 1, bdims, dnnl_f32, dnnl_x);
        DN(dnnl_memory_create(&dc->bmem, &bmd, d->eng, c->b ? c->b : DNNL_MEMORY_NONE),
           "wrapping a bias", c->name);
    }
    if (!dc->wmem && d->loading) {
        DN(dnnl_memory_create(&dc->wmem, want, d->eng, DNNL_MEMORY_NONE), "weights", c->name);
        dc->pending = true;
        dc->arena_off = d->arena_bytes;
        size_t bytes = dnnl_memory_desc_get_size(want);
        d->arena_bytes += (bytes + DNNL_ALIGN - 1) / DNNL_ALIGN * DNNL_ALIGN;
        return CKPT_OK;
    }
    /* a new size wants another layout: from the plain weights kept for it, or the old copy */
    dnnl_memory_t src = dc->wmem, plain = NULL, nw;
    if (c->w) {
        dnnl_memory_desc_t pmd;
        weights_md(&pmd, c, dnnl_f32, dnnl_oihw);
        DN(dnnl_memory_create(&plain, &pmd, d->eng, c->w), "wrapping weights", c->name);
        src = plain;
    }
    void *buf = aligned_buf(dnnl_memory_desc_get_size(want));
    dnnl_status_t s = buf ? dnnl_memory_create(&nw, want, d->eng, buf) : dnnl_out_of_memory;
    if (s != dnnl_success) {
        free(buf);
        if (plain)
            dnnl_memory_destroy(plain);
        DN(s, "allocating weights", c->name);
    }
    /* the plain weights go through the same transform as at load, so a size and back gives
     * the same bits */
    int rc = c->w && wino_fill(c, c->w, want, buf)
                 ? CKPT_OK
                 : reorder_now(d->eng, d->strm, src, nw, c->name, err);
    if (plain)
        dnnl_memory_destroy(plain);
    if (rc) {
        dnnl_memory_destroy(nw);
        free(buf);
        return rc;
    }
    if (dc->wmem)
        dnnl_memory_destroy(dc->wmem);
    free(dc->wbuf);
    dc->wmem = nw;
    dc->wbuf = buf;
    return CKPT_OK;
}

/* GFLOP of conv c for one image with an oh x ow output (a multiply-add is two). */
static double conv_gflop(const ckpt__conv *c, int64_t oh, int64_t ow)
{
    return 2e-9 * (double)(c->ic / c->groups) * (double)(c->k * c->k) * (double)c->oc *
           (double)oh * (double)ow;
}

/* md of one image of the batch md (mb outermost, each image dense after the one before, as in
 * nChw16c): false for any other layout. */
static bool one_image_md(const dnnl_memory_desc_t *md, dnnl_memory_desc_t *one)
{
    *one = *md;
    if (md->format_kind != dnnl_blocked || md->offset0 != 0 || md->padded_offsets[0] != 0)
        return false;
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    for (int k = 0; k < b->inner_nblks; k++)
        if (b->inner_idxs[k] == 0)
            return false;
    one->dims[0] = one->padded_dims[0] = 1;
    size_t es = dnnl_data_type_size(md->data_type);
    return (size_t)b->strides[0] * es == dnnl_memory_desc_get_size(one);
}

/* Conv dc of a batched plan whose one-image kernel has no batched form (oneDNN offers
 * Winograd F(2x2, 3x3) for one image only): one step per image, each running the first plan's
 * primitive on its image's part of the batch buffers. Same kernel, weights and data as the
 * image alone: the same bits, by construction. */
static int conv_per_image(planner *p, dconv *dc, const dnnl_memory_desc_t *src, int sbuf,
                          const dnnl_memory_desc_t *dst_fixed, int dbuf, bool sum, bool relu,
                          int64_t oh, int64_t ow, dnnl_memory_desc_t *dst_out)
{
    ckpt__dnnl *d = p->d;
    ckpt_error *err = p->err;
    ckpt__conv *c = dc->c;
    int64_t mb = src->dims[0];
    size_t li = p->layer;
    const char *pin = d->layers[li].impl;
    dnnl_memory_desc_t s1, f1, d1, chk;
    if (sbuf == BUF_INPUT || !one_image_md(src, &s1) ||
        (dst_fixed && !one_image_md(dst_fixed, &f1))) {
        p->mismatch = true;
        return CKPT_EUNSUPPORTED;
    }
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = dnnl_unimplemented;
    for (int wino = dc->wino_ok; wino >= 0 && s == dnnl_unimplemented; wino--)
        s = conv_pd(&pd, d->eng, c, &s1, dst_fixed ? &f1 : NULL, oh, ow, sum, relu, wino != 0,
                    d->dt, pin, true);
    if (s == dnnl_unimplemented) {
        p->mismatch = true;
        return CKPT_EUNSUPPORTED;
    }
    DN(s, "a convolution", c->name);
    d1 = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    *dst_out = d1;
    dst_out->dims[0] = dst_out->padded_dims[0] = mb;
    if (!one_image_md(dst_out, &chk) || !dnnl_memory_desc_equal(&chk, &d1)) {
        dnnl_primitive_desc_destroy(pd);
        p->mismatch = true;
        return CKPT_EUNSUPPORTED;
    }
    int rc = conv_weights(p, dc, pd);
    if (rc) {
        dnnl_primitive_desc_destroy(pd);
        return rc;
    }
    size_t ssz = dnnl_memory_desc_get_size(&s1), dsz = dnnl_memory_desc_get_size(&d1);
    double gflop = conv_gflop(c, oh, ow);
    for (int64_t i = 0; i < mb; i++) {
        dnnl_memory_t ms, md;
        if ((rc = view_at(p, &s1, sbuf, (size_t)i * ssz, &ms)) ||
            (rc = view_at(p, &d1, dbuf, (size_t)i * dsz, &md))) {
            if (i == 0)
                dnnl_primitive_desc_destroy(pd);
            return rc;
        }
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ms},
                                   {DNNL_ARG_WEIGHTS, dc->wmem},
                                   {DNNL_ARG_BIAS, dc->bmem},
                                   {DNNL_ARG_DST, md}};
        if (i == 0) {
            if ((rc = add_step(p, pd, args, 4, c->name, gflop)))
                return rc;
            continue;
        }
        plan *pl = p->pl; /* the first image's step, its scratchpad included, on image i */
        if (pl->n_steps == pl->cap_steps) {
            size_t ncap = 2 * pl->cap_steps;
            step *ns = realloc(pl->steps, ncap * sizeof *ns);
            if (!ns)
                return CKPT_NOMEM(err);
            pl->steps = ns;
            pl->cap_steps = ncap;
        }
        step *st = &pl->steps[pl->n_steps];
        *st = pl->steps[pl->n_steps - 1];
        st->borrowed = true;
        st->layer = li;
        st->args[0] = args[0];
        st->args[3] = args[3];
        pl->n_steps++;
    }
    return CKPT_OK;
}

/* Add conv dc reading src (buffer sbuf) and writing dst (buffer dbuf): a fixed layout when
 * dst_fixed (the residual's), else oneDNN's choice, returned in *dst_out.
 *
 * Which kernel: plan 0 (one image) takes oneDNN's first choice, except for Winograd convs:
 * up to WINO_4X3_MAX_CHANNELS F(4x4, 3x3) where it exists, above F(2x2, 3x3) where it exists
 * or else the direct conv (see the top). Every other plan must get plan 0's kernel by name
 * and its weights layout; a conv whose kernel has no batched form runs image by image
 * (conv_per_image); failing both, the plan is not used (p->mismatch). */
static int plan_conv(planner *p, dconv *dc, const dnnl_memory_desc_t *src, int sbuf,
                     const dnnl_memory_desc_t *dst_fixed, int dbuf, bool sum, bool relu,
                     int64_t h, int64_t w, dnnl_memory_desc_t *dst_out)
{
    ckpt__dnnl *d = p->d;
    ckpt_error *err = p->err;
    ckpt__conv *c = dc->c;
    size_t li = p->layer;
    bool first = p->pl == &d->plans[0];
    int64_t oh = ckpt__conv_out(h, c->k, c->stride, c->pad);
    int64_t ow = ckpt__conv_out(w, c->k, c->stride, c->pad);
    const char *pin = first ? NULL : d->layers[li].impl;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = dnnl_unimplemented;
    if (dc->wino_ok) {
        bool f4 = c->oc <= WINO_4X3_MAX_CHANNELS; /* else F(2x2) or nothing: see the top */
        if (first)
            s = conv_pd(&pd, d->eng, c, src, dst_fixed, oh, ow, sum, relu, true, d->dt,
                        f4 ? "wino_4x3" : "wino_2x3", false);
        if (s != dnnl_success && (f4 || !first))
            s = conv_pd(&pd, d->eng, c, src, dst_fixed, oh, ow, sum, relu, true, d->dt, pin,
                        true);
    }
    if (s != dnnl_success)
        s = conv_pd(&pd, d->eng, c, src, dst_fixed, oh, ow, sum, relu, false, d->dt, pin, true);
    if (s == dnnl_unimplemented && !first)
        return conv_per_image(p, dc, src, sbuf, dst_fixed, dbuf, sum, relu, oh, ow, dst_out);
    DN(s, "a convolution", c->name);
    int rc = conv_weights(p, dc, pd);
    if (rc) {
        dnnl_primitive_desc_destroy(pd);
        return rc;
    }
    *dst_out = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    dnnl_memory_t ms, md;
    if ((rc = view(p, src, sbuf, &ms)) || (rc = view(p, dst_out, dbuf, &md))) {
        dnnl_primitive_desc_destroy(pd);
        return rc;
    }
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ms},
                               {DNNL_ARG_WEIGHTS, dc->wmem},
                               {DNNL_ARG_BIAS, dc->bmem},
                               {DNNL_ARG_DST, md}};
    double gflop = conv_gflop(c, oh, ow);
    return add_step(p, pd, args, 4, c->name, gflop);
}

static int plan_reorder(planner *p, const dnnl_memory_desc_t *from, int fbuf,
                        const dnnl_memory_desc_t *to, int tbuf, const char *subject)
{
    ckpt__dnnl *d = p->d;
    ckpt_error *err = p->err;
    dnnl_primitive_desc_t pd;
    DN(dnnl_reorder_primitive_desc_create(&pd, from, d->eng, to, d->eng, NULL), "a reorder",
       subject);
    dnnl_memory_t mf, mt;
    int rc;
    if ((rc = view(p, from, fbuf, &mf)) || (rc = view(p, to, tbuf, &mt))) {
        dnnl_primitive_desc_destroy(pd);
        return rc;
    }
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, mf}, {DNNL_ARG_TO, mt}};
    return add_step(p, pd, args, 2, subject, 0.0);
}

static int plan_build(planner *p, int64_t mb, int64_t h, int64_t w)
{
    ckpt__dnnl *d = p->d;
    plan *pl = p->pl;
    ckpt_error *err = p->err;
    ckpt__net *n = d->net;
    dnnl_memory_desc_t user, cur, t1, t2, dn, out;

    /* the stem reads the caller's NCHW images directly (oneDNN's first-conv kernels take
     * them); in bf16 they are converted first */
    act_md(&user, mb, 3, h, w, dnnl_f32, dnnl_nchw);
    DN(dnnl_memory_create(&pl->in_user, &user, d->eng, DNNL_MEMORY_NONE), "a memory", "input");
    int rc, src_buf = BUF_INPUT;
    if (d->dt != dnnl_f32) {
        dnnl_memory_desc_t conv_in;
        act_md(&conv_in, mb, 3, h, w, d->dt, dnnl_nchw);
        if ((rc = plan_reorder(p, &user, BUF_INPUT, &conv_in, 0, "input")))
            return rc;
        user = conv_in;
        src_buf = 0;
    }
    if ((rc = plan_conv(p, &d->convs[0], &user, src_buf, NULL, 1, false, true, h, w, &cur)))
        return rc;
    h = ckpt__conv_out(h, 7, 2, 3);
    w = ckpt__conv_out(w, 7, 2, 3);
    int64_t ph = ckpt__conv_out(h, 3, 2, 1), pw = ckpt__conv_out(w, 3, 2, 1);
    dnnl_primitive_desc_t pd;
    DN(pool_pd(&pd, d->eng, &cur, ph, pw), "a max-pool", "maxpool");
    dnnl_memory_desc_t pooled = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    dnnl_memory_t ms, md;
    if ((rc = view(p, &cur, 1, &ms)) || (rc = view(p, &pooled, 0, &md))) {
        dnnl_primitive_desc_destroy(pd);
        return rc;
    }
    dnnl_exec_arg_t pargs[2] = {{DNNL_ARG_SRC, ms}, {DNNL_ARG_DST, md}};
    if ((rc = add_step(p, pd, pargs, 2, "maxpool", 0.0)))
        return rc;
    cur = pooled;
    h = ph;
    w = pw;

    int in = 0;
    size_t ci = 1;
    for (int b = 0; b < n->n_blocks; b++) {
        ckpt__block *bl = &n->blocks[b];
        int b1 = (in + 1) % 4, b2 = (in + 2) % 4, bd = (in + 3) % 4;
        const dnnl_memory_desc_t *idmd = &cur;
        int idbuf = in;
        if (bl->has_down) {
            if ((rc = plan_conv(p, &d->convs[ci++], &cur, in, NULL, bd, false, false, h, w,
                                &dn)))
                return rc;
            idmd = &dn;
            idbuf = bd;
        }
        dconv *c0 = &d->convs[ci++], *c1 = &d->convs[ci++];
        int64_t h1 = ckpt__conv_out(h, c0->c->k, c0->c->stride, c0->c->pad);
        int64_t w1 = ckpt__conv_out(w, c0->c->k, c0->c->stride, c0->c->pad);
        if ((rc = plan_conv(p, c0, &cur, in, NULL, b1, false, true, h, w, &t1)))
            return rc;
        dnnl_memory_desc_t id = *idmd; /* idmd may point at cur, rewritten below */
        if (bl->n_conv == 2) {
            if ((rc = plan_conv(p, c1, &t1, b1, &id, idbuf, true, true, h1, w1, &cur)))
                return rc;
        } else {
            if ((rc = plan_conv(p, c1, &t1, b1, NULL, b2, false, true, h1, w1, &t2)))
                return rc;
            int64_t h2 = ckpt__conv_out(h1, c1->c->k, c1->c->stride, c1->c->pad);
            int64_t w2 = ckpt__conv_out(w1, c1->c->k, c1->c->stride, c1->c->pad);
            if ((rc = plan_conv(p, &d->convs[ci++], &t2, b2, &id, idbuf, true, true, h2, w2,
                                &cur)))
                return rc;
        }
        h = ckpt__conv_out(h1, c1->c->k, c1->c->stride, c1->c->pad);
        w = ckpt__conv_out(w1, c1->c->k, c1->c->stride, c1->c->pad);
        in = idbuf;
    }
    act_md(&out, mb, n->features, h, w, dnnl_f32, dnnl_nchw);
    pl->out_hw = h * w;
    pl->out = aligned_buf(dnnl_memory_desc_get_size(&out));
    if (!pl->out)
        return CKPT_NOMEM(err);
    return plan_reorder(p, &cur, in, &out, BUF_OUT, "output");
}

/* Build plan k (batches of 2^k images) for h x w, then allocate its buffers and bind every
 * view. A plan k > 0 that cannot have plan 0's kernels is marked unusable (not an error). */
static int prepare(ckpt__dnnl *d, int k, int64_t h, int64_t w, ckpt_error *err)
{
    plan *pl = &d->plans[k];
    plan_free(pl);
    planner p = {d, pl, NULL, 0, 0, 0, false, err};
    int64_t mb = (int64_t)1 << k;
    int rc = plan_build(&p, mb, h, w);
    /* sizes come from oneDNN's descriptors of bounded images: no overflow */
    size_t act = (pl->act_bytes + DNNL_ALIGN - 1) / DNNL_ALIGN * DNNL_ALIGN;
    if (rc == CKPT_OK && !(pl->region = big_alloc(4 * act + pl->scratch_bytes, &pl->region_mapped)))
        rc = CKPT_NOMEM(err);
    for (int i = 0; i < 4 && rc == CKPT_OK; i++)
        pl->act[i] = (char *)pl->region + (size_t)i * act;
    if (rc == CKPT_OK && pl->scratch_bytes)
        pl->scratch = (char *)pl->region + 4 * act;
    for (size_t i = 0; i < p.n_binds && rc == CKPT_OK; i++) {
        int buf = p.binds[i].buf;
        void *h_ = buf < 4 ? pl->act[buf] : buf == BUF_SCRATCH ? pl->scratch : pl->out;
        h_ = (char *)h_ + p.binds[i].off;
        dnnl_status_t s = dnnl_memory_set_data_handle(p.binds[i].mem, h_);
        if (s != dnnl_success)
            rc = dnnl_fail(err, s, "binding a buffer", "activation");
    }
    free(p.binds);
    if (rc) {
        plan_free(pl);
        if (p.mismatch) {
            pl->unusable = true;
            return CKPT_OK;
        }
        return rc;
    }
    pl->mb = mb;
    pl->h = h;
    pl->w = w;
    return CKPT_OK;
}

/* ---- loading the weights ------------------------------------------------------------------ */

/* One pending conv's plain weights (c->w, f32 OIHW) into its wmem, on this thread's stream.
 * Returns the status; fills err (this thread's own). */
static int fill_one(ckpt__dnnl *d, dconv *dc, dnnl_stream_t strm, ckpt_error *err)
{
    ckpt__conv *c = dc->c;
    const dnnl_memory_desc_t *wmd;
    void *wdata = NULL;
    DN(dnnl_memory_get_memory_desc(dc->wmem, &wmd), "reading weights", c->name);
    DN(dnnl_memory_get_data_handle(dc->wmem, &wdata), "reading weights", c->name);
    if (wdata && wino_fill(c, c->w, wmd, wdata))
        return CKPT_OK;
    dnnl_memory_desc_t pmd;
    weights_md(&pmd, c, dnnl_f32, dnnl_oihw);
    dnnl_memory_t plain;
    DN(dnnl_memory_create(&plain, &pmd, d->eng, c->w), "wrapping weights", c->name);
    int rc = reorder_now(d->eng, strm, plain, dc->wmem, c->name, err);
    dnnl_memory_destroy(plain);
    return rc;
}

/* Whether conv dc keeps its plain weights after the load (in d->kept). */
static bool keeps_plain(const ckpt__dnnl *d, const dconv *dc)
{
    return dc->wino_ok && !d->one_size;
}

static size_t plain_bytes(const ckpt__conv *c)
{
    size_t n = (size_t)c->oc * (size_t)(c->ic / c->groups) * (size_t)(c->k * c->k) * sizeof(float);
    return (n + DNNL_ALIGN - 1) / DNNL_ALIGN * DNNL_ALIGN;
}

typedef struct loading {
    ckpt__dnnl *d;
    size_t *order;         /* pending convs in execution order */
    size_t *group_start;   /* group g is order[group_start[g] .. group_start[g + 1]) */
    size_t n_groups;
    float *buf[2];         /* group g's plain weights go to buf[g % 2] */
    int *status;           /* per entry of order: its reorder's status */
    ckpt_error *errs;      /* and error */
} loading;

/* Read and fold group g's plain weights (on the calling thread: weight_fn is called from one
 * thread, in order, as ckpt_model_new promises). Winograd-eligible convs keep their plain
 * weights in their own buffer; the others share buf[g % 2]. */
static int load_group(loading *ld, size_t g, ckpt_error *err)
{
    ckpt__dnnl *d = ld->d;
    size_t used = 0;
    for (size_t k = ld->group_start[g]; k < ld->group_start[g + 1]; k++) {
        dconv *dc = &d->convs[ld->order[k]];
        float *dst;
        if (keeps_plain(d, dc)) {
            dst = (float *)((char *)d->kept + dc->kept_off);
        } else {
            dst = (float *)((char *)ld->buf[g % 2] + used);
            used += plain_bytes(dc->c);
        }
        int rc = d->load(d->load_ud, dc->c, dst, err);
        dnnl_status_t s = rc ? dnnl_success : dnnl_memory_set_data_handle(dc->bmem, dc->c->b);
        if (s != dnnl_success)
            rc = dnnl_fail(err, s, "wrapping a bias", dc->c->name);
        if (rc)
            return rc;
    }
    return CKPT_OK;
}

/* Reorder entry k of ld->order on this thread, with its own stream. */
static void reorder_entry(loading *ld, size_t k, double *cpu_wino, double *cpu_blocked)
{
    ckpt__dnnl *d = ld->d;
    dconv *dc = &d->convs[ld->order[k]];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    dnnl_stream_t strm;
    ld->errs[k].status = CKPT_OK;
    dnnl_status_t s = dnnl_stream_create(&strm, d->eng, dnnl_stream_default_flags);
    if (s != dnnl_success) {
        ld->status[k] = dnnl_fail(&ld->errs[k], s, "creating a stream", dc->c->name);
    } else {
        ld->status[k] = fill_one(d, dc, strm, &ld->errs[k]);
        dnnl_stream_destroy(strm);
    }
    *(dc->wino_ok ? cpu_wino : cpu_blocked) += ms_since(&t0);
}

/* The weights of every conv the first plan left pending: one arena for all (huge pages where
 * the kernel gives them: a few hundred faults instead of tens of thousands, each of which
 * zeroes a fresh page), then, group by group, the plain weights read and folded on the
 * calling thread into one of two reused buffers while the other threads (and then it too)
 * run the previous group's reorders into the arena: blocked layouts and Winograd transforms,
 * which oneDNN runs on one thread each. A reorder copies or transforms each weight on its own,
 * so which thread runs it does not change a bit. */
static int load_weights(ckpt__dnnl *d, ckpt_error *err)
{
    if (d->arena_bytes == 0)
        return CKPT_OK;
    if (!(d->arena = big_alloc(d->arena_bytes, &d->arena_mapped)))
        return CKPT_NOMEM(err);
    loading ld = {d, NULL, NULL, 0, {NULL, NULL}, NULL, NULL};
    ld.order = malloc(d->n_convs * sizeof *ld.order);
    ld.group_start = malloc((d->n_convs + 1) * sizeof *ld.group_start);
    ld.status = calloc(d->n_convs, sizeof *ld.status);
    ld.errs = calloc(d->n_convs, sizeof *ld.errs);
    size_t mapped[2] = {0, 0}, n = 0, gcap = GROUP_BYTES, kept = 0;
    int rc = ld.order && ld.group_start && ld.status && ld.errs ? CKPT_OK : CKPT_NOMEM(err);
    for (size_t i = 0; i < d->n_convs && rc == CKPT_OK; i++) {
        dconv *dc = &d->convs[i];
        if (!dc->pending)
            continue;
        dnnl_status_t s = dnnl_memory_set_data_handle(dc->wmem, (char *)d->arena + dc->arena_off);
        if (s != dnnl_success)
            rc = dnnl_fail(err, s, "binding weights", dc->c->name);
        if (!keeps_plain(d, dc) && plain_bytes(dc->c) > gcap)
            gcap = plain_bytes(dc->c);
        if (keeps_plain(d, dc)) {
            dc->kept_off = kept;
            kept += plain_bytes(dc->c);
        }
        ld.order[n++] = i;
    }
    for (size_t k = 0, used = 0; k < n && rc == CKPT_OK; k++) {
        const dconv *dc = &d->convs[ld.order[k]];
        size_t bytes = keeps_plain(d, dc) ? 0 : plain_bytes(dc->c);
        if (k == 0 || used + bytes > gcap) {
            ld.group_start[ld.n_groups++] = k;
            used = 0;
        }
        used += bytes;
    }
    ld.group_start[ld.n_groups] = n;
    /* Fresh pages are what loading costs most (the kernel zeroes each; on a VM the host may
     * fault it in too), so the group buffers are the first plan's activations while they fit:
     * untouched until the first run, which then finds them mapped. The Winograd convs' plain
     * weights go to one huge-page block rather than a malloc (4 KB pages) each. */
    const plan *p0 = &d->plans[0];
    for (int b = 0; b < 2 && rc == CKPT_OK; b++)
        if (p0->region && (size_t)(b + 1) * gcap <= p0->region_mapped)
            ld.buf[b] = (float *)((char *)p0->region + (size_t)b * gcap); /* not owned */
        else if (!(ld.buf[b] = big_alloc(gcap, &mapped[b])))
            rc = CKPT_NOMEM(err);
    if (rc == CKPT_OK && kept && !(d->kept = big_alloc(kept, &d->kept_mapped)))
        rc = CKPT_NOMEM(err);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (rc == CKPT_OK && ld.n_groups > 0)
        rc = load_group(&ld, 0, err);
    d->prof.read_fold_ms += ms_since(&t0);
    double cpu_wino = 0, cpu_blocked = 0, fold_ms = 0;
    for (size_t g = 0; g < ld.n_groups && rc == CKPT_OK; g++) {
        size_t first = ld.group_start[g], last = ld.group_start[g + 1], next = first;
        int load_rc = CKPT_OK;
        int nthr = d->threads;
        (void)nthr;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthr) reduction(+ : cpu_wino, cpu_blocked)
#endif
        {
            double w = 0, bl = 0;
#ifdef _OPENMP
            bool loader = omp_get_thread_num() == 0;
#else
            bool loader = true;
#endif
            if (loader && g + 1 < ld.n_groups) {
                clock_gettime(CLOCK_MONOTONIC, &t1);
                load_rc = load_group(&ld, g + 1, err);
                fold_ms += ms_since(&t1);
            }
            for (;;) {
                size_t k;
#ifdef _OPENMP
#pragma omp atomic capture
#endif
                k = next++;
                if (k >= last)
                    break;
                reorder_entry(&ld, k, &w, &bl);
            }
            cpu_wino += w;
            cpu_blocked += bl;
        }
        for (size_t k = first; k < last; k++) {
            dconv *dc = &d->convs[ld.order[k]];
            if (ld.status[k] && rc == CKPT_OK) {
                *err = ld.errs[k];
                rc = ld.status[k];
            }
            dc->pending = false;
            if (!keeps_plain(d, dc))
                dc->c->w = NULL; /* it lay in a group buffer; the blocked copy is the master */
        }
        if (rc == CKPT_OK)
            rc = load_rc;
    }
    d->prof.read_fold_ms += fold_ms;
    d->prof.winograd_cpu_ms += cpu_wino;
    d->prof.blocked_cpu_ms += cpu_blocked;
    d->prof.reorder_ms += ms_since(&t0);
    /* after a failure, no conv may keep a pointer into a group buffer */
    for (size_t k = 0; k < n; k++) {
        dconv *dc = &d->convs[ld.order[k]];
        if (dc->pending && !keeps_plain(d, dc))
            dc->c->w = NULL;
    }
    for (int b = 0; b < 2; b++)
        if (mapped[b])
            big_free(ld.buf[b], mapped[b]);
    free(ld.order);
    free(ld.group_start);
    free(ld.status);
    free(ld.errs);
    return rc;
}

/* ---- the backend -------------------------------------------------------------------------- */

static bool wino_eligible(const ckpt__conv *c, ckpt__wino policy, bool bf16)
{
    if (bf16 || c->k != 3 || c->stride != 1 || c->groups != 1 || policy == CKPT__WINO_NONE)
        return false;
    return policy == CKPT__WINO_ALL || (c->ic <= WINO_MAX_CHANNELS && c->oc <= WINO_MAX_CHANNELS);
}

int ckpt__dnnl_new(ckpt__net *n, const ckpt__dnnl_options *o, ckpt__conv_load_fn load,
                   void *ud, ckpt__dnnl **out, ckpt_error *err)
{
    *out = NULL;
    if (o->bf16 && !ckpt__dnnl_bf16_supported())
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                         "this CPU has no bfloat16 dot products (AVX512_BF16 or AMX) for "
                         "bf16 inference; use float32");
    ckpt__dnnl *d = calloc(1, sizeof *d);
    if (!d)
        return CKPT_NOMEM(err);
    d->net = n;
    d->load = load;
    d->load_ud = ud;
    d->threads = o->threads;
    d->wino = o->wino;
    d->bf16 = o->bf16;
    d->one_size = o->one_size;
    d->dt = o->bf16 ? dnnl_bf16 : dnnl_f32;
    d->profile = o->profile;
    d->n_convs = ckpt__net_conv_count(n);
    d->convs = calloc(d->n_convs, sizeof *d->convs);
    int rc = CKPT_OK;
    if (!d->convs)
        rc = CKPT_NOMEM(err);
    dnnl_status_t s = dnnl_success;
    if (!rc && (s = dnnl_engine_create(&d->eng, dnnl_cpu, 0)) != dnnl_success)
        rc = dnnl_fail(err, s, "creating the engine", "cpu");
    if (!rc && (s = dnnl_stream_create(&d->strm, d->eng, dnnl_stream_default_flags)) !=
                   dnnl_success)
        rc = dnnl_fail(err, s, "creating a stream", "cpu");
    for (size_t i = 0; i < d->n_convs && rc == CKPT_OK; i++) {
        dconv *dc = &d->convs[i];
        dc->c = ckpt__net_conv_at(n, i);
        dc->wino_ok = wino_eligible(dc->c, o->wino, o->bf16);
    }
    if (rc == CKPT_OK) {
        /* build for the expected size now, so that loading does the weight reorders */
        int saved = ckpt__threads_set(d->threads);
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        d->loading = true;
        rc = prepare(d, 0, o->h, o->w, err);
        d->loading = false;
        d->prof.build_ms = ms_since(&t0);
        if (rc == CKPT_OK)
            rc = load_weights(d, err);
        ckpt__threads_restore(saved);
    }
    d->load = NULL;
    d->load_ud = NULL;
    if (rc) {
        ckpt__dnnl_free(d);
        return rc;
    }
    *out = d;
    return CKPT_OK;
}

void ckpt__dnnl_free(ckpt__dnnl *d)
{
    if (!d)
        return;
    for (int k = 0; k < N_PLANS; k++)
        plan_free(&d->plans[k]);
    for (size_t i = 0; d->convs && i < d->n_convs; i++) {
        if (d->convs[i].wmem)
            dnnl_memory_destroy(d->convs[i].wmem);
        if (d->convs[i].bmem)
            dnnl_memory_destroy(d->convs[i].bmem);
        free(d->convs[i].wbuf);
    }
    for (size_t i = 0; d->kept && d->convs && i < d->n_convs; i++) {
        float *w = d->convs[i].c ? d->convs[i].c->w : NULL; /* lent from d->kept */
        uintptr_t a = (uintptr_t)w, k = (uintptr_t)d->kept;
        if (w && a >= k && a - k < d->kept_mapped)
            d->convs[i].c->w = NULL;
    }
    free(d->convs);
    big_free(d->kept, d->kept_mapped);
    big_free(d->arena, d->arena_mapped);
    free(d->layers);
    if (d->strm)
        dnnl_stream_destroy(d->strm);
    if (d->eng)
        dnnl_engine_destroy(d->eng);
    free(d);
}

const char *ckpt__dnnl_impl(const ckpt__dnnl *d, size_t conv_index)
{
    /* the convs' steps in order: skip the input reorder and the max-pool */
    size_t seen = 0;
    for (size_t i = 0; i < d->n_layers; i++) {
        if (d->layers[i].gflop <= 0)
            continue;
        if (seen++ == conv_index)
            return d->layers[i].impl;
    }
    return NULL;
}

void ckpt__dnnl_load_profile(const ckpt__dnnl *d, ckpt__load_profile *out)
{
    *out = d->prof;
}

bool ckpt__dnnl_layer(const ckpt__dnnl *d, size_t i, const char **name, const char **impl,
                      double *gflop, double *ms)
{
    if (i >= d->n_layers)
        return false;
    *name = d->layers[i].name;
    *impl = d->layers[i].impl;
    *gflop = d->layers[i].gflop;
    *ms = d->layers[i].ms;
    return true;
}

/* Run plan pl on its mb images at x; outputs per image. */
static int run_plan(ckpt__dnnl *d, plan *pl, const float *x, float *logits, float *features,
                    ckpt_error *err)
{
    DN(dnnl_memory_set_data_handle(pl->in_user, (void *)x), "binding the input", "image");
    for (size_t i = 0; i < pl->n_steps; i++) {
        struct timespec t0;
        if (d->profile)
            clock_gettime(CLOCK_MONOTONIC, &t0);
        DN(dnnl_primitive_execute(pl->steps[i].prim, d->strm, pl->steps[i].nargs,
                                  pl->steps[i].args),
           "running a primitive", d->net->arch_name);
        if (d->profile) {
            DN(dnnl_stream_wait(d->strm), "waiting for the stream", d->net->arch_name);
            if (pl->steps[i].layer < d->n_layers)
                d->layers[pl->steps[i].layer].ms += ms_since(&t0);
        }
    }
    DN(dnnl_stream_wait(d->strm), "waiting for the stream", d->net->arch_name);
    if (d->profile)
        d->prof.images += pl->mb;
    if (pl->mb > d->prof.largest_group)
        d->prof.largest_group = (int)pl->mb;
    size_t per_out = (size_t)d->net->features * (size_t)pl->out_hw;
    for (int64_t j = 0; j < pl->mb; j++)
        ckpt__net_head(d->net, pl->out + (size_t)j * per_out, pl->out_hw,
                       logits ? logits + (size_t)j * (size_t)d->net->classes : NULL,
                       features ? features + (size_t)j * (size_t)d->net->features : NULL);
    return CKPT_OK;
}

/* n images: the largest batched plan that fits what is left, down to one image at a time.
 * Each plan has mb 1's kernels and weights, so an image's bits do not depend on the plan
 * that ran it (test_net.c checks every batch size up to 2^N_PLANS and every position). */
int ckpt__dnnl_run(ckpt__dnnl *d, const float *x, int n, int64_t h, int64_t w, float *logits,
                   float *features, ckpt_error *err)
{
    if (d->plans[0].h != h || d->plans[0].w != w) {
        for (int k = 0; k < N_PLANS; k++)
            plan_free(&d->plans[k]);
        int rc = prepare(d, 0, h, w, err);
        if (rc)
            return rc;
    }
    size_t per = (size_t)3 * (size_t)h * (size_t)w;
    int i = 0;
    while (i < n) {
        int k = N_PLANS - 1;
        for (; k > 0; k--) {
            plan *pl = &d->plans[k];
            if ((1 << k) > n - i || pl->unusable)
                continue;
            if (pl->h == 0) {
                int rc = prepare(d, k, h, w, err);
                if (rc)
                    return rc;
            }
            if (!pl->unusable)
                break;
        }
        int rc = run_plan(d, &d->plans[k], x + (size_t)i * per,
                          logits ? logits + (size_t)i * (size_t)d->net->classes : NULL,
                          features ? features + (size_t)i * (size_t)d->net->features : NULL,
                          err);
        if (rc)
            return rc;
        i += 1 << k;
    }
    return CKPT_OK;
}

/* ---- single layers, for the tests ---------------------------------------------------------- */

typedef struct once {
    dnnl_engine_t eng;
    dnnl_stream_t strm;
    dnnl_memory_t mem[10];
    int n_mem;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
} once;

static void once_free(once *o)
{
    for (int i = 0; i < o->n_mem; i++)
        dnnl_memory_destroy(o->mem[i]);
    if (o->prim)
        dnnl_primitive_destroy(o->prim);
    if (o->pd)
        dnnl_primitive_desc_destroy(o->pd);
    if (o->strm)
        dnnl_stream_destroy(o->strm);
    if (o->eng)
        dnnl_engine_destroy(o->eng);
}

static int once_mem(once *o, const dnnl_memory_desc_t *md, void *data, dnnl_memory_t *out,
                    ckpt_error *err)
{
    DN(dnnl_memory_create(out, md, o->eng, data ? data : DNNL_MEMORY_ALLOCATE), "a memory",
       "test");
    o->mem[o->n_mem++] = *out;
    return CKPT_OK;
}

static int once_exec(once *o, dnnl_exec_arg_t *args, int nargs, ckpt_error *err)
{
    const dnnl_memory_desc_t *smd =
        dnnl_primitive_desc_query_md(o->pd, dnnl_query_scratchpad_md, 0);
    if (smd && dnnl_memory_desc_get_size(smd) > 0) {
        dnnl_memory_t sm;
        int rc = once_mem(o, smd, NULL, &sm, err);
        if (rc)
            return rc;
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, sm};
    }
    DN(dnnl_primitive_create(&o->prim, o->pd), "creating a primitive", "test");
    DN(dnnl_primitive_execute(o->prim, o->strm, nargs, args), "running a primitive", "test");
    DN(dnnl_stream_wait(o->strm), "waiting for the stream", "test");
    return CKPT_OK;
}

static int once_body_conv(once *o, const ckpt__conv *c, int64_t mb, const float *x, int64_t h,
                          int64_t w, const float *residual, bool relu, bool winograd, float *y,
                          ckpt_error *err)
{
    DN(dnnl_engine_create(&o->eng, dnnl_cpu, 0), "creating the engine", "test");
    DN(dnnl_stream_create(&o->strm, o->eng, dnnl_stream_default_flags), "a stream", "test");
    int64_t oh = ckpt__conv_out(h, c->k, c->stride, c->pad);
    int64_t ow = ckpt__conv_out(w, c->k, c->stride, c->pad);
    dnnl_memory_desc_t src_any, x_md, y_md, w_md, b_md;
    act_md(&src_any, mb, c->ic, h, w, dnnl_f32, dnnl_format_tag_any);
    act_md(&x_md, mb, c->ic, h, w, dnnl_f32, dnnl_nchw);
    act_md(&y_md, mb, c->oc, oh, ow, dnnl_f32, dnnl_nchw);
    weights_md(&w_md, c, dnnl_f32, dnnl_oihw);
    dnnl_dims_t bdims = {c->oc};
    dnnl_memory_desc_init_by_tag(&b_md, 1, bdims, dnnl_f32, dnnl_x);
    dnnl_status_t s = conv_pd(&o->pd, o->eng, c, &src_any, NULL, oh, ow, residual != NULL,
                              relu, winograd, dnnl_f32, NULL, false);
    DN(s, winograd ? "a winograd convolution" : "a convolution", c->name);
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(o->pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(o->pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dmd = dnnl_primitive_desc_query_md(o->pd, dnnl_query_dst_md, 0);
    dnnl_memory_t ux, uw, ub, uy, ms, mw, md;
    int rc;
    if ((rc = once_mem(o, &x_md, (void *)x, &ux, err)) ||
        (rc = once_mem(o, &w_md, c->w, &uw, err)) || (rc = once_mem(o, &b_md, c->b, &ub, err)) ||
        (rc = once_mem(o, &y_md, y, &uy, err)) || (rc = once_mem(o, smd, NULL, &ms, err)) ||
        (rc = once_mem(o, wmd, NULL, &mw, err)) || (rc = once_mem(o, dmd, NULL, &md, err)))
        return rc;
    if ((rc = reorder_now(o->eng, o->strm, ux, ms, "test", err)) ||
        (rc = reorder_now(o->eng, o->strm, uw, mw, "test", err)))
        return rc;
    if (residual) {
        memcpy(y, residual, (size_t)(mb * c->oc * oh * ow) * sizeof *y);
        if ((rc = reorder_now(o->eng, o->strm, uy, md, "test", err)))
            return rc;
    }
    dnnl_exec_arg_t args[MAX_ARGS] = {{DNNL_ARG_SRC, ms},
                                      {DNNL_ARG_WEIGHTS, mw},
                                      {DNNL_ARG_BIAS, ub},
                                      {DNNL_ARG_DST, md}};
    if ((rc = once_exec(o, args, 4, err)))
        return rc;
    return reorder_now(o->eng, o->strm, md, uy, "test", err);
}

int ckpt__dnnl_conv_once(const ckpt__conv *c, int64_t mb, const float *x, int64_t h, int64_t w,
                         const float *residual, bool relu, bool winograd, int threads, float *y,
                         ckpt_error *err)
{
    int saved = ckpt__threads_set(threads);
    once o = {0};
    int rc = once_body_conv(&o, c, mb, x, h, w, residual, relu, winograd, y, err);
    once_free(&o);
    ckpt__threads_restore(saved);
    return rc;
}

static int once_body_pool(once *o, int64_t mb, int64_t c, const float *x, int64_t h, int64_t w,
                          float *y, ckpt_error *err)
{
    DN(dnnl_engine_create(&o->eng, dnnl_cpu, 0), "creating the engine", "test");
    DN(dnnl_stream_create(&o->strm, o->eng, dnnl_stream_default_flags), "a stream", "test");
    int64_t oh = ckpt__conv_out(h, 3, 2, 1), ow = ckpt__conv_out(w, 3, 2, 1);
    dnnl_memory_desc_t x_md, y_md, b_md;
    act_md(&x_md, mb, c, h, w, dnnl_f32, dnnl_nchw);
    act_md(&y_md, mb, c, oh, ow, dnnl_f32, dnnl_nchw);
    act_md(&b_md, mb, c, h, w, dnnl_f32, c % 16 == 0 ? dnnl_nChw16c : dnnl_nchw); /* as in the net */
    DN(pool_pd(&o->pd, o->eng, &b_md, oh, ow), "a max-pool", "test");
    const dnnl_memory_desc_t *dmd = dnnl_primitive_desc_query_md(o->pd, dnnl_query_dst_md, 0);
    dnnl_memory_t ux, uy, ms, md;
    int rc;
    if ((rc = once_mem(o, &x_md, (void *)x, &ux, err)) ||
        (rc = once_mem(o, &y_md, y, &uy, err)) || (rc = once_mem(o, &b_md, NULL, &ms, err)) ||
        (rc = once_mem(o, dmd, NULL, &md, err)))
        return rc;
    if ((rc = reorder_now(o->eng, o->strm, ux, ms, "test", err)))
        return rc;
    dnnl_exec_arg_t args[MAX_ARGS] = {{DNNL_ARG_SRC, ms}, {DNNL_ARG_DST, md}};
    if ((rc = once_exec(o, args, 2, err)))
        return rc;
    return reorder_now(o->eng, o->strm, md, uy, "test", err);
}

int ckpt__dnnl_wino_compare(const ckpt__conv *c, int64_t h, int64_t w, bool f4, size_t *differ,
                            ckpt_error *err)
{
    once o = {0};
    int rc = CKPT_OK;
    void *mine = NULL;
    dnnl_memory_t plain = NULL, theirs = NULL;
    dnnl_memory_desc_t src, pmd;
    act_md(&src, 1, c->ic, h, w, dnnl_f32, dnnl_nChw16c);
    weights_md(&pmd, c, dnnl_f32, dnnl_oihw);
    int64_t oh = ckpt__conv_out(h, c->k, c->stride, c->pad);
    int64_t ow = ckpt__conv_out(w, c->k, c->stride, c->pad);
    dnnl_status_t s = dnnl_engine_create(&o.eng, dnnl_cpu, 0);
    if (s == dnnl_success)
        s = dnnl_stream_create(&o.strm, o.eng, dnnl_stream_default_flags);
    if (s == dnnl_success)
        s = conv_pd(&o.pd, o.eng, c, &src, NULL, oh, ow, false, false, true, dnnl_f32,
                    f4 ? "wino_4x3" : "wino_2x3", false);
    if (s == dnnl_unimplemented)
        rc = CKPT_FAIL(err, CKPT_EUNSUPPORTED, "no Winograd %s for %s at %lldx%lld",
                       f4 ? "F(4x4, 3x3)" : "F(2x2, 3x3)", c->name, (long long)w, (long long)h);
    else if (s != dnnl_success)
        rc = dnnl_fail(err, s, "a Winograd convolution", c->name);
    const dnnl_memory_desc_t *want =
        rc ? NULL : dnnl_primitive_desc_query_md(o.pd, dnnl_query_weights_md, 0);
    size_t bytes = want ? dnnl_memory_desc_get_size(want) : 0;
    if (!rc && !(mine = aligned_buf(bytes)))
        rc = CKPT_NOMEM(err);
    if (!rc && !wino_fill(c, c->w, want, mine))
        rc = CKPT_FAIL(err, CKPT_EUNSUPPORTED, "%s: oneDNN's Winograd layout is not ckpt's",
                       c->name);
    if (!rc && (s = dnnl_memory_create(&plain, &pmd, o.eng, c->w)) == dnnl_success)
        s = dnnl_memory_create(&theirs, want, o.eng, DNNL_MEMORY_ALLOCATE);
    if (!rc && s != dnnl_success)
        rc = dnnl_fail(err, s, "a memory", c->name);
    if (!rc)
        rc = reorder_now(o.eng, o.strm, plain, theirs, c->name, err);
    void *t = NULL;
    if (!rc && (s = dnnl_memory_get_data_handle(theirs, &t)) != dnnl_success)
        rc = dnnl_fail(err, s, "reading a memory", c->name);
    if (!rc) {
        *differ = 0;
        for (size_t i = 0; i < bytes / sizeof(float); i++)
            *differ += memcmp((float *)mine + i, (float *)t + i, sizeof(float)) != 0;
    }
    if (plain)
        dnnl_memory_destroy(plain);
    if (theirs)
        dnnl_memory_destroy(theirs);
    free(mine);
    once_free(&o);
    return rc;
}

int ckpt__dnnl_maxpool_once(int64_t mb, int64_t c, const float *x, int64_t h, int64_t w,
                            int threads, float *y, ckpt_error *err)
{
    int saved = ckpt__threads_set(threads);
    once o = {0};
    int rc = once_body_pool(&o, mb, c, x, h, w, y, err);
    once_free(&o);
    ckpt__threads_restore(saved);
    return rc;
}

#else /* !CKPT_HAVE_DNNL */

bool ckpt__dnnl_available(void)
{
    return false;
}

bool ckpt__dnnl_bf16_supported(void)
{
    return false;
}

int ckpt__dnnl_new(ckpt__net *n, const ckpt__dnnl_options *o, ckpt__conv_load_fn load,
                   void *ud, ckpt__dnnl **out, ckpt_error *err)
{
    (void)n, (void)o, (void)load, (void)ud;
    *out = NULL;
    return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "backend 'dnnl' is not in this build of libckpt");
}

int ckpt__dnnl_run(ckpt__dnnl *d, const float *x, int n, int64_t h, int64_t w, float *logits,
                   float *features, ckpt_error *err)
{
    (void)d, (void)x, (void)n, (void)h, (void)w, (void)logits, (void)features;
    return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "backend 'dnnl' is not in this build of libckpt");
}

void ckpt__dnnl_free(ckpt__dnnl *d)
{
    (void)d;
}

const char *ckpt__dnnl_impl(const ckpt__dnnl *d, size_t i)
{
    (void)d, (void)i;
    return NULL;
}

void ckpt__dnnl_load_profile(const ckpt__dnnl *d, ckpt__load_profile *out)
{
    (void)d;
    memset(out, 0, sizeof *out);
}

bool ckpt__dnnl_layer(const ckpt__dnnl *d, size_t i, const char **name, const char **impl,
                      double *gflop, double *ms)
{
    (void)d, (void)i, (void)name, (void)impl, (void)gflop, (void)ms;
    return false;
}

int ckpt__dnnl_conv_once(const ckpt__conv *c, int64_t mb, const float *x, int64_t h, int64_t w,
                         const float *residual, bool relu, bool winograd, int threads, float *y,
                         ckpt_error *err)
{
    (void)c, (void)mb, (void)x, (void)h, (void)w, (void)residual, (void)relu, (void)winograd,
        (void)threads, (void)y;
    return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "backend 'dnnl' is not in this build of libckpt");
}

int ckpt__dnnl_maxpool_once(int64_t mb, int64_t c, const float *x, int64_t h, int64_t w,
                            int threads, float *y, ckpt_error *err)
{
    (void)mb, (void)c, (void)x, (void)h, (void)w, (void)threads, (void)y;
    return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "backend 'dnnl' is not in this build of libckpt");
}

int ckpt__dnnl_wino_compare(const ckpt__conv *c, int64_t h, int64_t w, bool f4, size_t *differ,
                            ckpt_error *err)
{
    (void)c, (void)h, (void)w, (void)f4, (void)differ;
    return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "backend 'dnnl' is not in this build of libckpt");
}

#endif /* CKPT_HAVE_DNNL */
