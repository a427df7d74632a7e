/*
 * resnet.c - the ResNet family: the ten torchvision ResNets (family.h).
 *
 * One row per architecture holds the block structure (torchvision 0.14 resnet.py); the layout
 * turns it into what `torchvision.models.NAME(num_classes=N)` is for load_state_dict (the
 * modules in the order load() visits them, and state_dict() itself) and the network builder
 * into the inference graph of net.h. The walk mirrors the constructors:
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
 */
#include "family.h"
#include "net.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARCH_STAGES 4

typedef enum resnet_block {
    RESNET_BASIC,      /* conv1 3x3 (stride) -> bn1 -> relu -> conv2 3x3 -> bn2; expansion 1 */
    RESNET_BOTTLENECK, /* conv1 1x1 -> bn1 -> conv2 3x3 (stride, groups) -> bn2 -> conv3 1x1
                        * -> bn3; expansion 4 */
} resnet_block;

typedef struct resnet_spec {
    resnet_block block;
    int expansion;       /* 1 (basic) or 4 (bottleneck) */
    int layers[4];       /* blocks in layer1..layer4 */
    int groups;          /* of every bottleneck conv2: 1, or 32/64 for ResNeXt */
    int width_per_group; /* torchvision's base_width: 64, 4 or 8 (ResNeXt), 128 (wide) */
} resnet_spec;

static const resnet_spec specs[] = {
    {RESNET_BASIC, 1, {2, 2, 2, 2}, 1, 64},
    {RESNET_BASIC, 1, {3, 4, 6, 3}, 1, 64},
    {RESNET_BOTTLENECK, 4, {3, 4, 6, 3}, 1, 64},
    {RESNET_BOTTLENECK, 4, {3, 4, 23, 3}, 1, 64},
    {RESNET_BOTTLENECK, 4, {3, 8, 36, 3}, 1, 64},
    {RESNET_BOTTLENECK, 4, {3, 4, 6, 3}, 32, 4},
    {RESNET_BOTTLENECK, 4, {3, 4, 23, 3}, 32, 8},
    {RESNET_BOTTLENECK, 4, {3, 4, 23, 3}, 64, 4},
    {RESNET_BOTTLENECK, 4, {3, 4, 6, 3}, 1, 128},
    {RESNET_BOTTLENECK, 4, {3, 4, 23, 3}, 1, 128},
};

static const ckpt_arch archs[] = {
    {"resnet18", &ckpt__family_resnet, &specs[0]},
    {"resnet34", &ckpt__family_resnet, &specs[1]},
    {"resnet50", &ckpt__family_resnet, &specs[2]},
    {"resnet101", &ckpt__family_resnet, &specs[3]},
    {"resnet152", &ckpt__family_resnet, &specs[4]},
    {"resnext50_32x4d", &ckpt__family_resnet, &specs[5]},
    {"resnext101_32x8d", &ckpt__family_resnet, &specs[6]},
    {"resnext101_64x4d", &ckpt__family_resnet, &specs[7]},
    {"wide_resnet50_2", &ckpt__family_resnet, &specs[8]},
    {"wide_resnet101_2", &ckpt__family_resnet, &specs[9]},
};
#define N_ARCHS (sizeof archs / sizeof archs[0])

#define SPEC(a) ((const resnet_spec *)(a)->spec)

/* Planes of stage 0..3: 64, 128, 256, 512. */
static int64_t planes(int stage)
{
    return (int64_t)64 << stage;
}

/* Channels inside a block of the stage: planes for basic blocks, int(planes * width_per_group
 * / 64) * groups for bottlenecks (conv1's output, conv2's input and output). */
static int64_t width(const resnet_spec *r, int stage)
{
    if (r->block == RESNET_BASIC)
        return planes(stage);
    /* torchvision: int(planes * (base_width / 64.0)) * groups; exact for every row above */
    return planes(stage) * r->width_per_group / 64 * r->groups;
}

/* Channels entering fc: 512 * expansion. */
static int64_t resnet_features(const ckpt_arch *a)
{
    return 512 * (int64_t)SPEC(a)->expansion;
}

static int64_t resnet_parameters(const ckpt_arch *a, int64_t num_classes)
{
    const resnet_spec *r = SPEC(a);
    int64_t n = 64 * 3 * 7 * 7 + 2 * 64; /* conv1, bn1 */
    int64_t inplanes = 64;
    for (int s = 0; s < ARCH_STAGES; s++) {
        int64_t wd = width(r, s), out = planes(s) * r->expansion;
        for (int b = 0; b < r->layers[s]; b++) {
            if (r->block == RESNET_BASIC)
                n += wd * inplanes * 9 + 2 * wd + wd * wd * 9 + 2 * wd;
            else
                n += wd * inplanes + 2 * wd + wd * (wd / r->groups) * 9 + 2 * wd + out * wd +
                     2 * out;
            if (b == 0 && (s > 0 || inplanes != out))
                n += out * inplanes + 2 * out;
            inplanes = out;
        }
    }
    return n + num_classes * resnet_features(a) + num_classes;
}

/* ---- the state dict ---------------------------------------------------------------------- */

static void layout_block(ckpt__layout *b, const resnet_spec *r, size_t layer, int index,
                         int stage, int64_t inplanes, int64_t stride)
{
    char name[16];
    snprintf(name, sizeof name, "%d", index);
    size_t blk = ckpt__layout_module(b, layer, name, false);
    int64_t wd = width(r, stage), out = planes(stage) * r->expansion;
    if (r->block == RESNET_BASIC) {
        ckpt__layout_conv(b, blk, "conv1", wd, inplanes, 3, false);
        ckpt__layout_bn(b, blk, "bn1", wd);
        ckpt__layout_module(b, blk, "relu", false);
        ckpt__layout_conv(b, blk, "conv2", wd, wd, 3, false);
        ckpt__layout_bn(b, blk, "bn2", wd);
    } else {
        ckpt__layout_conv(b, blk, "conv1", wd, inplanes, 1, false);
        ckpt__layout_bn(b, blk, "bn1", wd);
        ckpt__layout_conv(b, blk, "conv2", wd, wd / r->groups, 3, false);
        ckpt__layout_bn(b, blk, "bn2", wd);
        ckpt__layout_conv(b, blk, "conv3", out, wd, 1, false);
        ckpt__layout_bn(b, blk, "bn3", out);
        ckpt__layout_module(b, blk, "relu", false);
    }
    if (index == 0 && (stride != 1 || inplanes != out)) {
        size_t ds = ckpt__layout_module(b, blk, "downsample", false);
        ckpt__layout_conv(b, ds, "0", out, inplanes, 1, false);
        ckpt__layout_bn(b, ds, "1", out);
    }
}

static void resnet_layout(const ckpt_arch *a, int64_t num_classes, ckpt__layout *b)
{
    const resnet_spec *r = SPEC(a);
    const size_t root = 0;
    ckpt__layout_conv(b, root, "conv1", 64, 3, 7, false);
    ckpt__layout_bn(b, root, "bn1", 64);
    ckpt__layout_module(b, root, "relu", false);
    ckpt__layout_module(b, root, "maxpool", false);
    int64_t inplanes = 64;
    for (int s = 0; s < ARCH_STAGES; s++) {
        char name[16];
        snprintf(name, sizeof name, "layer%d", s + 1);
        size_t layer = ckpt__layout_module(b, root, name, false);
        for (int i = 0; i < r->layers[s]; i++) {
            layout_block(b, r, layer, i, s, inplanes, i == 0 && s > 0 ? 2 : 1);
            inplanes = planes(s) * r->expansion;
        }
    }
    ckpt__layout_module(b, root, "avgpool", false);
    ckpt__layout_linear(b, root, "fc", num_classes, resnet_features(a));
}

/* ---- the network ------------------------------------------------------------------------- */
#ifndef CKPT_READER_ONLY

/* The skeleton of the network: every conv's geometry, its name and its BatchNorm's, no
 * weights yet. */
static int resnet_net(const ckpt_arch *a, int64_t classes, ckpt__net **out, ckpt_error *err)
{
    const resnet_spec *r = SPEC(a);
    *out = NULL;
    ckpt__net *n = calloc(1, sizeof *n);
    if (!n)
        return CKPT_NOMEM(err);
    snprintf(n->arch_name, sizeof n->arch_name, "%s", a->name);
    int total = 0;
    for (int s = 0; s < ARCH_STAGES; s++)
        total += r->layers[s];
    n->blocks = calloc((size_t)total, sizeof *n->blocks);
    if (!n->blocks) {
        free(n);
        return CKPT_NOMEM(err);
    }
    n->n_blocks = total;
    int rc = ckpt__conv_init(&n->stem, "conv1", "bn1", 3, 64, 7, 2, 1, err);
    int64_t inplanes = 64;
    int bi = 0;
    for (int s = 0; s < ARCH_STAGES && rc == CKPT_OK; s++) {
        int64_t wd = width(r, s), outc = planes(s) * r->expansion;
        for (int i = 0; i < r->layers[s] && rc == CKPT_OK; i++) {
            ckpt__block *b = &n->blocks[bi++];
            int64_t stride = i == 0 && s > 0 ? 2 : 1;
            char name[64], bn[64];
#define CONV(leaf, bnleaf)                                                                   \
    (snprintf(name, sizeof name, "layer%d.%d.%s", s + 1, i, (leaf)),                        \
     snprintf(bn, sizeof bn, "layer%d.%d.%s", s + 1, i, (bnleaf)), name)
            if (r->block == RESNET_BASIC) {
                b->n_conv = 2;
                rc = ckpt__conv_init(&b->conv[0], CONV("conv1", "bn1"), bn, inplanes, wd, 3,
                                     stride, 1, err);
                if (!rc)
                    rc = ckpt__conv_init(&b->conv[1], CONV("conv2", "bn2"), bn, wd, wd, 3, 1, 1,
                                         err);
            } else {
                b->n_conv = 3;
                rc = ckpt__conv_init(&b->conv[0], CONV("conv1", "bn1"), bn, inplanes, wd, 1, 1, 1,
                                     err);
                if (!rc)
                    rc = ckpt__conv_init(&b->conv[1], CONV("conv2", "bn2"), bn, wd, wd, 3, stride,
                                         r->groups, err);
                if (!rc)
                    rc = ckpt__conv_init(&b->conv[2], CONV("conv3", "bn3"), bn, wd, outc, 1, 1, 1,
                                         err);
            }
            if (!rc && i == 0 && (stride != 1 || inplanes != outc)) {
                b->has_down = true;
                rc = ckpt__conv_init(&b->down, CONV("downsample.0", "downsample.1"), bn, inplanes,
                                     outc, 1, stride, 1, err);
            }
#undef CONV
            inplanes = outc;
        }
    }
    n->features = inplanes;
    n->classes = classes;
    if (rc) {
        ckpt__net_free(n);
        return rc;
    }
    *out = n;
    return CKPT_OK;
}
#endif /* CKPT_READER_ONLY */

/* ---- other names for the same tensors (docs/ARCHITECTURES-DEV.md) ------------------------ */

/* The matchers below read a key left to right; each returns where it stopped, or NULL. Their
 * Python twins (each naming's `python`) are regular expressions that accept the same keys. */
static const char *lit(const char *p, const char *s)
{
    size_t n = strlen(s);
    return p && !strncmp(p, s, n) ? p + n : NULL;
}

/* A module index as nn.Sequential/ModuleList spell it: (0|[1-9][0-9]{0,3}), then a dot. */
static const char *index_dot(const char *p, int *v)
{
    if (!p || *p < '0' || *p > '9')
        return NULL;
    int n = 0, x = 0;
    while (p[n] >= '0' && p[n] <= '9' && n < 5)
        x = 10 * x + (p[n++] - '0');
    if (n > 4 || (n > 1 && p[0] == '0') || p[n] != '.')
        return NULL;
    *v = x;
    return p + n + 1;
}

/* The last component: [^.]+ */
static bool leaf(const char *p)
{
    return p && *p && !strchr(p, '.');
}

static bool put(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool put(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < cap;
}

/* Hugging Face transformers' ResNetModel / ResNetForImageClassification (modeling_resnet.py):
 * ResNetConvLayer is (convolution, normalization); a stage's layers hold `shortcut` (a
 * ResNetShortCut, or a stateless Identity) and `layer`, a Sequential of 2 or 3 conv layers. */
static bool hf_rename(const char *key, char *out, size_t cap)
{
    const char *k = lit(key, "resnet.") ? key + 7 : key, *p, *t;
    int s, l, i;
    if ((t = lit(lit(k, "embedder.embedder."), "convolution.")) && leaf(t))
        return put(out, cap, "conv1.%s", t);
    if ((t = lit(lit(k, "embedder.embedder."), "normalization.")) && leaf(t))
        return put(out, cap, "bn1.%s", t);
    if ((t = lit(key, "classifier.1.")) && leaf(t))
        return put(out, cap, "fc.%s", t);
    p = lit(k, "encoder.stages.");
    if (!p || *p < '0' || *p > '3' || p[1] != '.')
        return false;
    s = *p - '0';
    if (!(p = index_dot(lit(p + 2, "layers."), &l)))
        return false;
    if ((t = lit(lit(p, "shortcut."), "convolution.")) && leaf(t))
        return put(out, cap, "layer%d.%d.downsample.0.%s", s + 1, l, t);
    if ((t = lit(lit(p, "shortcut."), "normalization.")) && leaf(t))
        return put(out, cap, "layer%d.%d.downsample.1.%s", s + 1, l, t);
    if (!(p = lit(p, "layer.")) || *p < '0' || *p > '2' || p[1] != '.')
        return false;
    i = *p - '0';
    if ((t = lit(p + 2, "convolution.")) && leaf(t))
        return put(out, cap, "layer%d.%d.conv%d.%s", s + 1, l, i + 1, t);
    if ((t = lit(p + 2, "normalization.")) && leaf(t))
        return put(out, cap, "layer%d.%d.bn%d.%s", s + 1, l, i + 1, t);
    return false;
}

/* nn.Sequential(*list(model.children())[:-1]) and the like: children by position, conv1 bn1
 * relu maxpool layer1..layer4 avgpool fc (relu, the pools: no state). */
static bool sequential_rename(const char *key, char *out, size_t cap)
{
    static const char *const child[10] = {"conv1", "bn1", NULL, NULL, "layer1", "layer2",
                                          "layer3", "layer4", NULL, "fc"};
    if (key[0] < '0' || key[0] > '9' || key[1] != '.' || !key[2] || !child[key[0] - '0'])
        return false;
    return put(out, cap, "%s.%s", child[key[0] - '0'], key + 2);
}

/* Detectron2's tools/convert-torchvision-to-d2.py renames torchvision's keys: 'stem.' before
 * keys without 'layer', layerN -> res(N+1), bnK -> convK.norm, downsample.0 -> shortcut,
 * downsample.1 -> shortcut.norm (so fc becomes stem.fc); this undoes it. Detectron2's own
 * ResNet names its classifier `linear`. */
static bool d2_rename(const char *key, char *out, size_t cap)
{
    const char *t, *p;
    int s, b;
    if ((t = lit(key, "stem.conv1.norm.")) && leaf(t))
        return put(out, cap, "bn1.%s", t);
    if ((t = lit(key, "stem.conv1.")) && leaf(t))
        return put(out, cap, "conv1.%s", t);
    if ((t = lit(key, "stem.fc.")) && leaf(t))
        return put(out, cap, "fc.%s", t);
    if ((t = lit(key, "linear.")) && leaf(t))
        return put(out, cap, "fc.%s", t);
    p = lit(key, "res");
    if (!p || *p < '2' || *p > '5' || p[1] != '.')
        return false;
    s = *p - '0';
    if (!(p = index_dot(p + 2, &b)))
        return false;
    int conv; /* 1..3, or 0: the shortcut */
    if ((t = lit(p, "shortcut."))) {
        conv = 0;
    } else if ((t = lit(p, "conv")) && *t >= '1' && *t <= '3' && t[1] == '.') {
        conv = *t - '0';
        t += 2;
    } else {
        return false;
    }
    bool norm = lit(t, "norm.") && leaf(t + 5);
    if (norm)
        t += 5;
    if (!leaf(t))
        return false;
    if (conv)
        return put(out, cap, "layer%d.%d.%s%d.%s", s - 1, b, norm ? "bn" : "conv", conv, t);
    return put(out, cap, "layer%d.%d.downsample.%d.%s", s - 1, b, norm, t);
}

static const ckpt__naming resnet_namings[] = {
    {"huggingface", "Hugging Face transformers' ResNet does",
     hf_rename,
     "import re\n"
     "def torchvision_key(k):  # Hugging Face transformers' ResNet names -> torchvision's\n"
     "    m = re.fullmatch(r'(?:resnet\\.)?embedder\\.embedder\\.(convolution|normalization)"
     "\\.([^.]+)', k)\n"
     "    if m:\n"
     "        return ('conv1.' if m[1] == 'convolution' else 'bn1.') + m[2]\n"
     "    m = re.fullmatch(r'classifier\\.1\\.([^.]+)', k)\n"
     "    if m:\n"
     "        return 'fc.' + m[1]\n"
     "    m = re.fullmatch(r'(?:resnet\\.)?encoder\\.stages\\.([0-3])\\.layers\\."
     "(0|[1-9][0-9]{0,3})\\.(shortcut|layer\\.([0-2]))\\.(convolution|normalization)"
     "\\.([^.]+)', k)\n"
     "    if not m:\n"
     "        return None\n"
     "    s, l, part, i, kind, t = m.groups()\n"
     "    if part == 'shortcut':\n"
     "        mod = 'downsample.0' if kind == 'convolution' else 'downsample.1'\n"
     "    else:\n"
     "        mod = ('conv%d' if kind == 'convolution' else 'bn%d') % (int(i) + 1)\n"
     "    return 'layer%d.%s.%s.%s' % (int(s) + 1, l, mod, t)\n"},
    {"sequential", "nn.Sequential(*list(model.children())[:-1]) does",
     sequential_rename,
     "import re\n"
     "def torchvision_key(k):  # nn.Sequential(*list(resnet.children())[:-1]) -> torchvision\n"
     "    m = re.fullmatch(r'([0145679])\\.(.+)', k, re.S)\n"
     "    children = ['conv1', 'bn1', None, None, 'layer1', 'layer2', 'layer3', 'layer4', None,"
     " 'fc']\n"
     "    return children[int(m[1])] + '.' + m[2] if m else None\n"},
    {"detectron2", "Detectron2's convert-torchvision-to-d2.py does",
     d2_rename,
     "import re\n"
     "def torchvision_key(k):  # Detectron2's convert-torchvision-to-d2.py names -> torchvision's\n"
     "    m = re.fullmatch(r'stem\\.conv1\\.norm\\.([^.]+)', k)\n"
     "    if m:\n"
     "        return 'bn1.' + m[1]\n"
     "    m = re.fullmatch(r'stem\\.(conv1|fc)\\.([^.]+)|linear\\.([^.]+)', k)\n"
     "    if m:\n"
     "        return m[1] + '.' + m[2] if m[1] else 'fc.' + m[3]\n"
     "    m = re.fullmatch(r'res([2-5])\\.(0|[1-9][0-9]{0,3})\\.(conv[1-3]|shortcut)"
     "(\\.norm)?\\.([^.]+)', k)\n"
     "    if not m:\n"
     "        return None\n"
     "    s, b, mod, norm, t = m.groups()\n"
     "    if mod == 'shortcut':\n"
     "        mod = 'downsample.1' if norm else 'downsample.0'\n"
     "    elif norm:\n"
     "        mod = 'bn' + mod[4]\n"
     "    return 'layer%d.%s.%s.%s' % (int(s) - 1, b, mod, t)\n"},
};

const ckpt__family ckpt__family_resnet = {
    .name = "resnet",
    .class_name = "ResNet",
    .archs = archs,
    .n_archs = N_ARCHS,
    .head_weight = "fc.weight",
    .head_bias = "fc.bias",
    .features = resnet_features,
    .parameters = resnet_parameters,
    .layout = resnet_layout,
    .net = CKPT__NET(resnet_net),
    .namings = resnet_namings,
    .n_namings = sizeof resnet_namings / sizeof resnet_namings[0],
};
