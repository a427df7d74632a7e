/*
 * arch.c - the ten torchvision ResNets as data (ckpt_arch_*).
 *
 * One row per architecture holds the block structure (docs/ARCHITECTURES.md §1, torchvision 0.14
 * resnet.py); ckpt_arch_model turns it into what `torchvision.models.NAME(num_classes=N)`
 * is for load_state_dict: the modules in the order load() visits them and state_dict()
 * itself. The walk mirrors the constructors:
 *
 *   ResNet:      conv1 bn1 relu maxpool layer1 layer2 layer3 layer4 avgpool fc
 *   layerN:      Sequential "0".."k-1"; block 0 carries the stride (stages 2-4)
 *   BasicBlock:  conv1 bn1 relu conv2 bn2 [downsample]
 *   Bottleneck:  conv1 bn1 conv2 bn2 conv3 bn3 relu [downsample]
 *   downsample:  Sequential "0" (1x1 conv) "1" (BatchNorm), in block 0 only, when the stride
 *                is not 1 or the channel count changes
 *
 * Conv2d has a weight only (bias=False everywhere); BatchNorm2d has weight, bias (parameters)
 * then running_mean, running_var, num_batches_tracked (buffers); fc has weight then bias.
 * Every module, stateless ones included, gets a _metadata entry: version 2 for BatchNorm, 1
 * for the rest.
 */
#include "internal.h"

#include <stdint.h>
#include <stdio.h>

#define ARCH_STAGES 4
#define ARCH_MAX_CLASSES INT32_MAX /* torch accepts more; no real head is near this */

static const ckpt_arch archs[] = {
    {"resnet18", CKPT_ARCH_BASIC, 1, {2, 2, 2, 2}, 1, 64},
    {"resnet34", CKPT_ARCH_BASIC, 1, {3, 4, 6, 3}, 1, 64},
    {"resnet50", CKPT_ARCH_BOTTLENECK, 4, {3, 4, 6, 3}, 1, 64},
    {"resnet101", CKPT_ARCH_BOTTLENECK, 4, {3, 4, 23, 3}, 1, 64},
    {"resnet152", CKPT_ARCH_BOTTLENECK, 4, {3, 8, 36, 3}, 1, 64},
    {"resnext50_32x4d", CKPT_ARCH_BOTTLENECK, 4, {3, 4, 6, 3}, 32, 4},
    {"resnext101_32x8d", CKPT_ARCH_BOTTLENECK, 4, {3, 4, 23, 3}, 32, 8},
    {"resnext101_64x4d", CKPT_ARCH_BOTTLENECK, 4, {3, 4, 23, 3}, 64, 4},
    {"wide_resnet50_2", CKPT_ARCH_BOTTLENECK, 4, {3, 4, 6, 3}, 1, 128},
    {"wide_resnet101_2", CKPT_ARCH_BOTTLENECK, 4, {3, 4, 23, 3}, 1, 128},
};
#define N_ARCHS (sizeof archs / sizeof archs[0])

size_t ckpt_arch_count(void)
{
    return N_ARCHS;
}

const ckpt_arch *ckpt_arch_at(size_t i)
{
    return i < N_ARCHS ? &archs[i] : NULL;
}

const char *ckpt_arch_name(size_t i)
{
    return i < N_ARCHS ? archs[i].name : NULL;
}

const ckpt_arch *ckpt_arch_by_name(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < N_ARCHS; i++)
        if (strcmp(archs[i].name, name) == 0)
            return &archs[i];
    return NULL;
}

int64_t ckpt_arch_planes(int stage)
{
    return stage >= 0 && stage < ARCH_STAGES ? (int64_t)64 << stage : 0;
}

int64_t ckpt_arch_width(const ckpt_arch *a, int stage)
{
    int64_t planes = ckpt_arch_planes(stage);
    if (a->block == CKPT_ARCH_BASIC)
        return planes;
    /* torchvision: int(planes * (base_width / 64.0)) * groups; exact for every row above */
    return planes * a->width_per_group / 64 * a->groups;
}

int64_t ckpt_arch_features(const ckpt_arch *a)
{
    return 512 * (int64_t)a->expansion;
}

int64_t ckpt_arch_parameters(const ckpt_arch *a, int64_t num_classes)
{
    int64_t n = 64 * 3 * 7 * 7 + 2 * 64; /* conv1, bn1 */
    int64_t inplanes = 64;
    for (int s = 0; s < ARCH_STAGES; s++) {
        int64_t planes = ckpt_arch_planes(s), width = ckpt_arch_width(a, s);
        int64_t out = planes * a->expansion;
        for (int b = 0; b < a->layers[s]; b++) {
            if (a->block == CKPT_ARCH_BASIC)
                n += width * inplanes * 9 + 2 * width + width * width * 9 + 2 * width;
            else
                n += width * inplanes + 2 * width + width * (width / a->groups) * 9 + 2 * width +
                     out * width + 2 * out;
            if (b == 0 && (s > 0 || inplanes != out))
                n += out * inplanes + 2 * out;
            inplanes = out;
        }
    }
    return n + num_classes * ckpt_arch_features(a) + num_classes;
}

/* ---- building the model ------------------------------------------------------------------ */

typedef struct builder {
    ckpt__arena *ar;
    ckpt_sd_model *m;
    size_t cap_modules, cap_entries;
    ckpt_error *err;
    int status;
} builder;

/* A module at path (parent's path + name); returns its index, or SIZE_MAX on failure. */
static size_t add_module(builder *b, size_t parent, const char *name, bool bn)
{
    ckpt_sd_model *m = b->m;
    if (b->status)
        return SIZE_MAX;
    if (m->n_modules == b->cap_modules) {
        size_t ncap = b->cap_modules ? 2 * b->cap_modules : 64;
        ckpt_sd_module *nm = ckpt__arena_grow(b->ar, m->modules, b->cap_modules * sizeof *nm,
                                              ncap * sizeof *nm);
        if (!nm) {
            b->status = ckpt__arena_error(b->ar, b->err);
            return SIZE_MAX;
        }
        m->modules = nm;
        b->cap_modules = ncap;
    }
    const char *path;
    if (m->n_modules == 0)
        path = "";
    else if (m->modules[parent].path[0] == '\0')
        path = ckpt__arena_strdup(b->ar, name);
    else
        path = ckpt__arena_printf(b->ar, "%s.%s", m->modules[parent].path, name);
    if (!path) {
        b->status = ckpt__arena_error(b->ar, b->err);
        return SIZE_MAX;
    }
    size_t i = m->n_modules++;
    ckpt_sd_module *mod = &m->modules[i];
    mod->path = path;
    mod->parent = m->n_modules == 1 ? 0 : parent;
    mod->first = m->sd.n_entries;
    mod->count = 0;
    mod->version = bn ? 2 : 1;
    mod->batchnorm = bn;
    mod->extra_state = false;
    return i;
}

/* A parameter or buffer of the module added last (entries are added in module order). */
static void add_entry(builder *b, size_t mod, const char *name, ckpt_dtype dt, int ndim,
                      const int64_t *shape)
{
    ckpt_sd_model *m = b->m;
    if (b->status)
        return;
    if (m->sd.n_entries == b->cap_entries) {
        size_t ncap = b->cap_entries ? 2 * b->cap_entries : 256;
        ckpt_sd_entry *ne = ckpt__arena_grow(b->ar, m->sd.entries,
                                             b->cap_entries * sizeof *ne, ncap * sizeof *ne);
        if (!ne) {
            b->status = ckpt__arena_error(b->ar, b->err);
            return;
        }
        m->sd.entries = ne;
        b->cap_entries = ncap;
    }
    const char *mp = m->modules[mod].path;
    char *key = mp[0] ? ckpt__arena_printf(b->ar, "%s.%s", mp, name)
                      : ckpt__arena_strdup(b->ar, name);
    int64_t *sh = ckpt__arena_alloc(b->ar, (size_t)(ndim ? ndim : 1) * sizeof *sh);
    if (!key || !sh) {
        b->status = ckpt__arena_error(b->ar, b->err);
        return;
    }
    if (ndim)
        memcpy(sh, shape, (size_t)ndim * sizeof *sh);
    ckpt_sd_entry *e = &m->sd.entries[m->sd.n_entries++];
    e->key = key;
    e->value = NULL;
    e->is_tensor = true;
    e->dtype = dt;
    e->ndim = ndim;
    e->shape = sh;
    m->modules[mod].count++;
}

static void add_conv(builder *b, size_t parent, const char *name, int64_t out, int64_t in,
                     int64_t k)
{
    size_t i = add_module(b, parent, name, false);
    int64_t shape[4] = {out, in, k, k};
    add_entry(b, i, "weight", CKPT_DT_FLOAT32, 4, shape);
}

static void add_bn(builder *b, size_t parent, const char *name, int64_t c)
{
    size_t i = add_module(b, parent, name, true);
    add_entry(b, i, "weight", CKPT_DT_FLOAT32, 1, &c);
    add_entry(b, i, "bias", CKPT_DT_FLOAT32, 1, &c);
    add_entry(b, i, "running_mean", CKPT_DT_FLOAT32, 1, &c);
    add_entry(b, i, "running_var", CKPT_DT_FLOAT32, 1, &c);
    add_entry(b, i, "num_batches_tracked", CKPT_DT_INT64, 0, NULL);
}

static void add_block(builder *b, const ckpt_arch *a, size_t layer, int index, int stage,
                      int64_t inplanes, int64_t stride)
{
    char name[16];
    snprintf(name, sizeof name, "%d", index);
    size_t blk = add_module(b, layer, name, false);
    int64_t planes = ckpt_arch_planes(stage), width = ckpt_arch_width(a, stage);
    int64_t out = planes * a->expansion;
    if (a->block == CKPT_ARCH_BASIC) {
        add_conv(b, blk, "conv1", width, inplanes, 3);
        add_bn(b, blk, "bn1", width);
        add_module(b, blk, "relu", false);
        add_conv(b, blk, "conv2", width, width, 3);
        add_bn(b, blk, "bn2", width);
    } else {
        add_conv(b, blk, "conv1", width, inplanes, 1);
        add_bn(b, blk, "bn1", width);
        add_conv(b, blk, "conv2", width, width / a->groups, 3);
        add_bn(b, blk, "bn2", width);
        add_conv(b, blk, "conv3", out, width, 1);
        add_bn(b, blk, "bn3", out);
        add_module(b, blk, "relu", false);
    }
    if (index == 0 && (stride != 1 || inplanes != out)) {
        size_t ds = add_module(b, blk, "downsample", false);
        add_conv(b, ds, "0", out, inplanes, 1);
        add_bn(b, ds, "1", out);
    }
}

int ckpt_arch_model(const ckpt_arch *a, int64_t num_classes, ckpt_sd_model **out,
                    ckpt_error *err)
{
    *out = NULL;
    if (!a)
        return CKPT_FAIL(err, CKPT_EINVAL, "no architecture given");
    if (num_classes < 1 || num_classes > ARCH_MAX_CLASSES)
        return CKPT_FAIL(err, CKPT_EINVAL, "class count %lld is out of range",
                         (long long)num_classes);
    ckpt__alloc al;
    ckpt__alloc_init(&al, NULL);
    ckpt__arena *ar = ckpt__arena_new(&al, 0);
    if (!ar)
        return CKPT_NOMEM(err);
    ckpt_sd_model *m = ckpt__arena_alloc(ar, sizeof *m);
    if (!m) {
        ckpt__arena_free(ar);
        return CKPT_NOMEM(err);
    }
    m->class_name = "ResNet";
    m->arch = a;
    m->num_classes = num_classes;
    m->internal = ar;
    m->sd.prefix = "";
    builder b = {ar, m, 0, 0, err, CKPT_OK};

    size_t root = add_module(&b, 0, "", false);
    add_conv(&b, root, "conv1", 64, 3, 7);
    add_bn(&b, root, "bn1", 64);
    add_module(&b, root, "relu", false);
    add_module(&b, root, "maxpool", false);
    int64_t inplanes = 64;
    for (int s = 0; s < ARCH_STAGES; s++) {
        char name[16];
        snprintf(name, sizeof name, "layer%d", s + 1);
        size_t layer = add_module(&b, root, name, false);
        for (int i = 0; i < a->layers[s]; i++) {
            add_block(&b, a, layer, i, s, inplanes, i == 0 && s > 0 ? 2 : 1);
            inplanes = ckpt_arch_planes(s) * a->expansion;
        }
    }
    add_module(&b, root, "avgpool", false);
    size_t fc = add_module(&b, root, "fc", false);
    int64_t w[2] = {num_classes, ckpt_arch_features(a)};
    add_entry(&b, fc, "weight", CKPT_DT_FLOAT32, 2, w);
    add_entry(&b, fc, "bias", CKPT_DT_FLOAT32, 1, w);
    if (b.status) {
        ckpt__arena_free(ar);
        return b.status;
    }

    /* _metadata: every module in visiting order, as state_dict() records them */
    m->sd.has_metadata = true;
    m->sd.n_meta = m->n_modules;
    m->sd.meta = ckpt__arena_alloc(ar, m->n_modules * sizeof *m->sd.meta);
    if (!m->sd.meta) {
        int rc = ckpt__arena_error(ar, err);
        ckpt__arena_free(ar);
        return rc;
    }
    for (size_t i = 0; i < m->n_modules; i++) {
        m->sd.meta[i].module = m->modules[i].path;
        m->sd.meta[i].version = m->modules[i].version;
    }
    *out = m;
    return CKPT_OK;
}
