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
 * Determinism. Primitives are built for one image (mb = 1) and a batch runs image by image,
 * so an image's bits cannot depend on its batch or position. oneDNN's forward direct and
 * Winograd convolutions sum each output over input channels and taps in an order fixed by the
 * kernel's blocking, which 2.6 chooses from the shapes and the ISA; threads split the work by
 * output blocks and rows, never the sum (bit-identical for 1, 2 and 3 threads: test_net.c).
 *
 * Winograd. oneDNN's F(2x2, 3x3) and F(4x4, 3x3) kernels keep 16/9 or 36/9 times the weights
 * of a direct conv, and the transformed weights cannot be reordered back. So: a conv
 * is Winograd-eligible by a rule that does not look at the image size (3x3, stride 1, no
 * groups, and under CKPT__WINO_AUTO at most WINO_MAX_CHANNELS channels, where the planes are
 * 14x14 or larger at 224 and the speed-up pays for the memory); eligible convs keep their
 * folded plain weights so any later image size can re-derive its layout; the others free them
 * once reordered and re-reorder from the blocked copy when the size changes the layout.
 */
#include "net.h"

#ifdef CKPT_HAVE_DNNL

#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>

#define WINO_MAX_CHANNELS 256  /* CKPT__WINO_AUTO: layer1..layer3 of the ResNets */
#define DNNL_ALIGN 64
#define MAX_ARGS 6

typedef struct dconv {
    ckpt__conv *c;
    bool wino_ok;          /* eligible: keeps c->w */
    dnnl_memory_t wmem;    /* weights in the layout of the current primitive */
    dnnl_memory_t bmem;    /* c->b, plain */
    char impl[64];         /* implementation at the current size */
} dconv;

typedef struct step {
    dnnl_primitive_t prim;
    int nargs;
    dnnl_exec_arg_t args[MAX_ARGS];
} step;

struct ckpt__dnnl {
    ckpt__net *net;
    int threads;
    ckpt__wino wino;
    ckpt__conv_load_fn load; /* while ckpt__dnnl_new runs */
    void *load_ud;
    dnnl_engine_t eng;
    dnnl_stream_t strm;
    dconv *convs;
    size_t n_convs;
    /* the plan for one image of h x w; h == 0 when there is none */
    int64_t h, w;
    step *steps;
    size_t n_steps, cap_steps;
    dnnl_memory_t *mems;   /* activation and scratchpad views, destroyed with the plan */
    size_t n_mems, cap_mems;
    void *act[4];          /* blocked activations */
    size_t act_bytes;
    void *scratch;
    size_t scratch_bytes;
    float *out;            /* the last activation as NCHW, for the head */
    int64_t out_hw;
    dnnl_memory_t in_user; /* the caller's image, handle set per run */
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

/* ---- small tools -------------------------------------------------------------------------- */

static void *aligned_buf(size_t bytes)
{
    size_t n = (bytes + DNNL_ALIGN - 1) / DNNL_ALIGN * DNNL_ALIGN;
    return aligned_alloc(DNNL_ALIGN, n ? n : DNNL_ALIGN);
}

static void act_md(dnnl_memory_desc_t *md, int64_t mb, int64_t c, int64_t h, int64_t w,
                   dnnl_format_tag_t tag)
{
    dnnl_dims_t dims = {mb, c, h, w};
    dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32, tag);
}

static void weights_md(dnnl_memory_desc_t *md, const ckpt__conv *c, dnnl_format_tag_t tag)
{
    if (c->groups == 1) {
        dnnl_dims_t dims = {c->oc, c->ic, c->k, c->k};
        dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32, tag == dnnl_format_tag_any ? tag
                                                                                  : dnnl_oihw);
    } else {
        dnnl_dims_t dims = {c->groups, c->oc / c->groups, c->ic / c->groups, c->k, c->k};
        dnnl_memory_desc_init_by_tag(md, 5, dims, dnnl_f32, tag == dnnl_format_tag_any ? tag
                                                                                  : dnnl_goihw);
    }
}

/* Copy src into dst (two memories, any layouts) with a reorder primitive built for the call. */
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

/* A convolution primitive descriptor: src fixed, weights any, bias plain, dst fixed or any
 * (dst_md NULL); post-ops sum (residual) and ReLU as asked, scratchpad from the caller. */
static dnnl_status_t conv_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng, const ckpt__conv *c,
                             const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *dst_md,
                             int64_t oh, int64_t ow, bool sum, bool relu, bool winograd)
{
    dnnl_memory_desc_t wmd, bmd, dmd;
    weights_md(&wmd, c, dnnl_format_tag_any);
    dnnl_dims_t bdims = {c->oc};
    dnnl_memory_desc_init_by_tag(&bmd, 1, bdims, dnnl_f32, dnnl_x);
    if (dst_md)
        dmd = *dst_md;
    else
        act_md(&dmd, src->dims[0], c->oc, oh, ow, dnnl_format_tag_any);
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
        s = dnnl_primitive_desc_create(pd, &cd, attr, eng, NULL);
    if (po)
        dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static dnnl_status_t pool_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng,
                             const dnnl_memory_desc_t *src, int64_t oh, int64_t ow)
{
    dnnl_memory_desc_t dmd;
    act_md(&dmd, src->dims[0], src->dims[1], oh, ow, dnnl_format_tag_any);
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

/* ---- the plan ----------------------------------------------------------------------------- */

static void plan_free(ckpt__dnnl *d)
{
    for (size_t i = 0; i < d->n_steps; i++)
        dnnl_primitive_destroy(d->steps[i].prim);
    free(d->steps);
    d->steps = NULL;
    d->n_steps = d->cap_steps = 0;
    for (size_t i = 0; i < d->n_mems; i++)
        dnnl_memory_destroy(d->mems[i]);
    free(d->mems);
    d->mems = NULL;
    d->n_mems = d->cap_mems = 0;
    for (int i = 0; i < 4; i++) {
        free(d->act[i]);
        d->act[i] = NULL;
    }
    free(d->scratch);
    free(d->out);
    d->scratch = NULL;
    d->out = NULL;
    d->act_bytes = d->scratch_bytes = 0;
    if (d->in_user)
        dnnl_memory_destroy(d->in_user);
    d->in_user = NULL;
    d->h = d->w = 0;
}

/* A memory view owned by the plan. The buffer is bound later (set_handles) unless given. */
static int plan_mem(ckpt__dnnl *d, const dnnl_memory_desc_t *md, dnnl_memory_t *out,
                    ckpt_error *err)
{
    if (d->n_mems == d->cap_mems) {
        size_t ncap = d->cap_mems ? 2 * d->cap_mems : 64;
        dnnl_memory_t *nm = realloc(d->mems, ncap * sizeof *nm);
        if (!nm)
            return CKPT_NOMEM(err);
        d->mems = nm;
        d->cap_mems = ncap;
    }
    DN(dnnl_memory_create(out, md, d->eng, DNNL_MEMORY_NONE), "a memory", "activation");
    d->mems[d->n_mems++] = *out;
    return CKPT_OK;
}

/* Every activation view is bound to one of the plan's buffers once all sizes are known. */
typedef struct binding {
    dnnl_memory_t mem;
    int buf; /* 0..3: act[buf]; BUF_SCRATCH; BUF_OUT */
} binding;

typedef struct planner {
    ckpt__dnnl *d;
    binding *binds;
    size_t n_binds, cap_binds;
    ckpt_error *err;
} planner;

#define BUF_SCRATCH 4
#define BUF_OUT 5
#define BUF_INPUT 6 /* the caller's image: in_user, bound per run */

static int bind(planner *p, dnnl_memory_t mem, int buf)
{
    if (p->n_binds == p->cap_binds) {
        size_t ncap = p->cap_binds ? 2 * p->cap_binds : 128;
        binding *nb = realloc(p->binds, ncap * sizeof *nb);
        if (!nb)
            return CKPT_NOMEM(p->err);
        p->binds = nb;
        p->cap_binds = ncap;
    }
    p->binds[p->n_binds++] = (binding){mem, buf};
    return CKPT_OK;
}

/* A view of buffer buf with layout md; grows the activation buffers' size to fit. */
static int view(planner *p, const dnnl_memory_desc_t *md, int buf, dnnl_memory_t *out)
{
    ckpt__dnnl *d = p->d;
    if (buf == BUF_INPUT) {
        *out = d->in_user;
        return CKPT_OK;
    }
    size_t bytes = dnnl_memory_desc_get_size(md);
    if (buf < BUF_SCRATCH && bytes > d->act_bytes)
        d->act_bytes = bytes;
    int rc = plan_mem(d, md, out, p->err);
    return rc ? rc : bind(p, *out, buf);
}

static int add_step(planner *p, dnnl_primitive_desc_t pd, const dnnl_exec_arg_t *args,
                    int nargs, const char *subject)
{
    ckpt__dnnl *d = p->d;
    ckpt_error *err = p->err;
    if (d->n_steps == d->cap_steps) {
        size_t ncap = d->cap_steps ? 2 * d->cap_steps : 64;
        step *ns = realloc(d->steps, ncap * sizeof *ns);
        if (!ns) {
            dnnl_primitive_desc_destroy(pd);
            return CKPT_NOMEM(err);
        }
        d->steps = ns;
        d->cap_steps = ncap;
    }
    step *st = &d->steps[d->n_steps];
    memcpy(st->args, args, (size_t)nargs * sizeof *args);
    st->nargs = nargs;
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t sbytes = smd ? dnnl_memory_desc_get_size(smd) : 0;
    if (sbytes > 0) {
        dnnl_memory_t sm;
        int rc = plan_mem(d, smd, &sm, err);
        if (!rc)
            rc = bind(p, sm, BUF_SCRATCH);
        if (rc) {
            dnnl_primitive_desc_destroy(pd);
            return rc;
        }
        if (sbytes > d->scratch_bytes)
            d->scratch_bytes = sbytes;
        st->args[st->nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, sm};
    }
    dnnl_status_t s = dnnl_primitive_create(&st->prim, pd);
    dnnl_primitive_desc_destroy(pd);
    DN(s, "creating a primitive", subject);
    d->n_steps++;
    return CKPT_OK;
}

/* Bring conv i's weights into the layout pd wants (once per layout change). */
static int conv_weights(ckpt__dnnl *d, dconv *dc, dnnl_primitive_desc_t pd, ckpt_error *err)
{
    ckpt__conv *c = dc->c;
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if (dc->wmem) {
        const dnnl_memory_desc_t *have;
        DN(dnnl_memory_get_memory_desc(dc->wmem, &have), "reading weights", c->name);
        if (dnnl_memory_desc_equal(have, want))
            return CKPT_OK;
    }
    if (!dc->wmem && !c->w && d->load) {
        int rc = d->load(d->load_ud, c, err);
        if (rc)
            return rc;
    }
    dnnl_memory_t src = dc->wmem, plain = NULL, nw;
    if (c->w) {
        dnnl_memory_desc_t pmd;
        weights_md(&pmd, c, dnnl_oihw);
        DN(dnnl_memory_create(&plain, &pmd, d->eng, c->w), "wrapping weights", c->name);
        src = plain;
    }
    dnnl_status_t s = dnnl_memory_create(&nw, want, d->eng, DNNL_MEMORY_ALLOCATE);
    if (s != dnnl_success) {
        if (plain)
            dnnl_memory_destroy(plain);
        DN(s, "allocating weights", c->name);
    }
    int rc = reorder_now(d->eng, d->strm, src, nw, c->name, err);
    if (plain)
        dnnl_memory_destroy(plain);
    if (rc) {
        dnnl_memory_destroy(nw);
        return rc;
    }
    if (dc->wmem)
        dnnl_memory_destroy(dc->wmem);
    dc->wmem = nw;
    if (!dc->bmem) {
        dnnl_memory_desc_t bmd;
        dnnl_dims_t bdims = {c->oc};
        dnnl_memory_desc_init_by_tag(&bmd, 1, bdims, dnnl_f32, dnnl_x);
        DN(dnnl_memory_create(&dc->bmem, &bmd, d->eng, c->b), "wrapping a bias", c->name);
    }
    if (!dc->wino_ok) { /* the blocked copy is the master from now on */
        free(c->w);
        c->w = NULL;
    }
    return CKPT_OK;
}

/* Add conv dc reading src (buffer sbuf) and writing dst (buffer dbuf): a fixed layout when
 * dst_fixed (the residual's), else oneDNN's choice, returned in *dst_out. */
static int plan_conv(planner *p, dconv *dc, const dnnl_memory_desc_t *src, int sbuf,
                     const dnnl_memory_desc_t *dst_fixed, int dbuf, bool sum, bool relu,
                     int64_t h, int64_t w, dnnl_memory_desc_t *dst_out)
{
    ckpt__dnnl *d = p->d;
    ckpt_error *err = p->err;
    ckpt__conv *c = dc->c;
    int64_t oh = ckpt__conv_out(h, c->k, c->stride, c->pad);
    int64_t ow = ckpt__conv_out(w, c->k, c->stride, c->pad);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = dnnl_unimplemented;
    if (dc->wino_ok)
        s = conv_pd(&pd, d->eng, c, src, dst_fixed, oh, ow, sum, relu, true);
    if (s != dnnl_success)
        s = conv_pd(&pd, d->eng, c, src, dst_fixed, oh, ow, sum, relu, false);
    DN(s, "a convolution", c->name);
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    snprintf(dc->impl, sizeof dc->impl, "%s", impl ? impl : "?");
    int rc = conv_weights(d, dc, pd, err);
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
    return add_step(p, pd, args, 4, c->name);
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
    return add_step(p, pd, args, 2, subject);
}

static int plan_build(planner *p, int64_t h, int64_t w)
{
    ckpt__dnnl *d = p->d;
    ckpt_error *err = p->err;
    ckpt__net *n = d->net;
    dnnl_memory_desc_t user, cur, t1, t2, dn, out;

    /* the stem reads the caller's NCHW image directly (oneDNN's first-conv kernels take it) */
    act_md(&user, 1, 3, h, w, dnnl_nchw);
    DN(dnnl_memory_create(&d->in_user, &user, d->eng, DNNL_MEMORY_NONE), "a memory", "input");
    int rc = plan_conv(p, &d->convs[0], &user, BUF_INPUT, NULL, 1, false, true, h, w, &cur);
    if (rc)
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
    if ((rc = add_step(p, pd, pargs, 2, "maxpool")))
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
    act_md(&out, 1, n->features, h, w, dnnl_nchw);
    d->out_hw = h * w;
    d->out = aligned_buf(dnnl_memory_desc_get_size(&out));
    if (!d->out)
        return CKPT_NOMEM(err);
    return plan_reorder(p, &cur, in, &out, BUF_OUT, "output");
}

/* Build the plan for h x w, then allocate the buffers and bind every view to its buffer. */
static int prepare(ckpt__dnnl *d, int64_t h, int64_t w, ckpt_error *err)
{
    plan_free(d);
    planner p = {d, NULL, 0, 0, err};
    int rc = plan_build(&p, h, w);
    for (int i = 0; i < 4 && rc == CKPT_OK; i++)
        if (!(d->act[i] = aligned_buf(d->act_bytes)))
            rc = CKPT_NOMEM(err);
    if (rc == CKPT_OK && d->scratch_bytes && !(d->scratch = aligned_buf(d->scratch_bytes)))
        rc = CKPT_NOMEM(err);
    for (size_t i = 0; i < p.n_binds && rc == CKPT_OK; i++) {
        int buf = p.binds[i].buf;
        void *h_ = buf < 4 ? d->act[buf] : buf == BUF_SCRATCH ? d->scratch : d->out;
        dnnl_status_t s = dnnl_memory_set_data_handle(p.binds[i].mem, h_);
        if (s != dnnl_success)
            rc = dnnl_fail(err, s, "binding a buffer", "activation");
    }
    free(p.binds);
    if (rc) {
        plan_free(d);
        return rc;
    }
    d->h = h;
    d->w = w;
    return CKPT_OK;
}

/* ---- the backend -------------------------------------------------------------------------- */

static bool wino_eligible(const ckpt__conv *c, ckpt__wino policy)
{
    if (c->k != 3 || c->stride != 1 || c->groups != 1 || policy == CKPT__WINO_NONE)
        return false;
    return policy == CKPT__WINO_ALL || (c->ic <= WINO_MAX_CHANNELS && c->oc <= WINO_MAX_CHANNELS);
}

int ckpt__dnnl_new(ckpt__net *n, int threads, ckpt__wino wino, int64_t h, int64_t w,
                   ckpt__conv_load_fn load, void *ud, ckpt__dnnl **out, ckpt_error *err)
{
    *out = NULL;
    ckpt__dnnl *d = calloc(1, sizeof *d);
    if (!d)
        return CKPT_NOMEM(err);
    d->net = n;
    d->load = load;
    d->load_ud = ud;
    d->threads = threads;
    d->wino = wino;
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
        dc->wino_ok = wino_eligible(dc->c, wino);
    }
    if (rc == CKPT_OK) {
        /* build for the expected size now, so that loading does the weight reorders */
        int saved = ckpt__threads_set(threads);
        rc = prepare(d, h, w, err);
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
    plan_free(d);
    for (size_t i = 0; d->convs && i < d->n_convs; i++) {
        if (d->convs[i].wmem)
            dnnl_memory_destroy(d->convs[i].wmem);
        if (d->convs[i].bmem)
            dnnl_memory_destroy(d->convs[i].bmem);
    }
    free(d->convs);
    if (d->strm)
        dnnl_stream_destroy(d->strm);
    if (d->eng)
        dnnl_engine_destroy(d->eng);
    free(d);
}

const char *ckpt__dnnl_impl(const ckpt__dnnl *d, size_t i)
{
    return i < d->n_convs ? d->convs[i].impl : NULL;
}

int ckpt__dnnl_run(ckpt__dnnl *d, const float *x, int64_t h, int64_t w, float *logits,
                   float *features, ckpt_error *err)
{
    if (d->h != h || d->w != w) {
        int rc = prepare(d, h, w, err);
        if (rc)
            return rc;
    }
    DN(dnnl_memory_set_data_handle(d->in_user, (void *)x), "binding the input", "image");
    for (size_t i = 0; i < d->n_steps; i++)
        DN(dnnl_primitive_execute(d->steps[i].prim, d->strm, d->steps[i].nargs,
                                  d->steps[i].args),
           "running a primitive", d->net->arch_name);
    DN(dnnl_stream_wait(d->strm), "waiting for the stream", d->net->arch_name);
    ckpt__net_head(d->net, d->out, d->out_hw, logits, features);
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
    act_md(&src_any, mb, c->ic, h, w, dnnl_format_tag_any);
    act_md(&x_md, mb, c->ic, h, w, dnnl_nchw);
    act_md(&y_md, mb, c->oc, oh, ow, dnnl_nchw);
    weights_md(&w_md, c, dnnl_oihw);
    dnnl_dims_t bdims = {c->oc};
    dnnl_memory_desc_init_by_tag(&b_md, 1, bdims, dnnl_f32, dnnl_x);
    dnnl_status_t s = conv_pd(&o->pd, o->eng, c, &src_any, NULL, oh, ow, residual != NULL,
                              relu, winograd);
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
    act_md(&x_md, mb, c, h, w, dnnl_nchw);
    act_md(&y_md, mb, c, oh, ow, dnnl_nchw);
    act_md(&b_md, mb, c, h, w, c % 16 == 0 ? dnnl_nChw16c : dnnl_nchw); /* as in the net */
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

int ckpt__dnnl_new(ckpt__net *n, int threads, ckpt__wino wino, int64_t h, int64_t w,
                   ckpt__conv_load_fn load, void *ud, ckpt__dnnl **out, ckpt_error *err)
{
    (void)n, (void)threads, (void)wino, (void)h, (void)w, (void)load, (void)ud;
    *out = NULL;
    return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "backend 'dnnl' is not in this build of libckpt");
}

int ckpt__dnnl_run(ckpt__dnnl *d, const float *x, int64_t h, int64_t w, float *logits,
                   float *features, ckpt_error *err)
{
    (void)d, (void)x, (void)h, (void)w, (void)logits, (void)features;
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

#endif /* CKPT_HAVE_DNNL */
