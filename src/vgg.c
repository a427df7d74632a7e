/*
 * vgg.c - the VGG family, check-only: torchvision 0.14's vgg11 (family.h).
 *
 * It is here to show what a family is: a table of rows, the state-dict layout, the head, and
 * no network builder (ckpt run refuses it; check and extract work). The walk mirrors vgg.py:
 *
 *   VGG:         features avgpool classifier
 *   features:    Sequential of the configuration: a number is Conv2d(in, n, 3, padding=1)
 *                (weight and bias) then ReLU, "M" is MaxPool2d(2, 2); indexes count them all
 *   classifier:  Sequential "0" Linear(512*7*7, 4096) "1" ReLU "2" Dropout "3" Linear(4096,
 *                4096) "4" ReLU "5" Dropout "6" Linear(4096, num_classes)
 *
 * Only vgg11 (configuration "A", no BatchNorm) is listed; vgg13/16/19 and the _bn variants are
 * one row each (the _bn ones add BatchNorm2d after each conv, moving the indexes).
 */
#include "family.h"

#include <stdio.h>

#define VGG_MAX_LAYERS 24 /* entries of the longest configuration (vgg19: 16 convs, 5 pools) */
#define VGG_POOL 0        /* "M" in torchvision's configurations */
#define VGG_FEATURES 4096 /* channels entering the last Linear */

typedef struct vgg_spec {
    int cfg[VGG_MAX_LAYERS]; /* conv output channels, or VGG_POOL; ends at the first -1 */
} vgg_spec;

static const vgg_spec specs[] = {
    {{64, VGG_POOL, 128, VGG_POOL, 256, 256, VGG_POOL, 512, 512, VGG_POOL, 512, 512, VGG_POOL,
      -1}},
};

static const ckpt_arch archs[] = {
    {"vgg11", &ckpt__family_vgg, &specs[0]},
};

#define SPEC(a) ((const vgg_spec *)(a)->spec)

static int64_t vgg_features(const ckpt_arch *a)
{
    (void)a;
    return VGG_FEATURES;
}

static int64_t vgg_parameters(const ckpt_arch *a, int64_t num_classes)
{
    int64_t n = 0, in = 3;
    for (const int *c = SPEC(a)->cfg; *c >= 0; c++) {
        if (*c == VGG_POOL)
            continue;
        n += *c * in * 9 + *c;
        in = *c;
    }
    n += (int64_t)VGG_FEATURES * 512 * 7 * 7 + VGG_FEATURES;
    n += (int64_t)VGG_FEATURES * VGG_FEATURES + VGG_FEATURES;
    return n + num_classes * VGG_FEATURES + num_classes;
}

static void vgg_layout(const ckpt_arch *a, int64_t num_classes, ckpt__layout *b)
{
    const size_t root = 0;
    size_t features = ckpt__layout_module(b, root, "features", false);
    int64_t in = 3;
    int index = 0;
    char name[16];
    for (const int *c = SPEC(a)->cfg; *c >= 0; c++) {
        snprintf(name, sizeof name, "%d", index++);
        if (*c == VGG_POOL) {
            ckpt__layout_module(b, features, name, false);
            continue;
        }
        ckpt__layout_conv(b, features, name, *c, in, 3, true);
        snprintf(name, sizeof name, "%d", index++);
        ckpt__layout_module(b, features, name, false); /* ReLU */
        in = *c;
    }
    ckpt__layout_module(b, root, "avgpool", false);
    size_t cls = ckpt__layout_module(b, root, "classifier", false);
    ckpt__layout_linear(b, cls, "0", VGG_FEATURES, 512 * 7 * 7);
    ckpt__layout_module(b, cls, "1", false);
    ckpt__layout_module(b, cls, "2", false);
    ckpt__layout_linear(b, cls, "3", VGG_FEATURES, VGG_FEATURES);
    ckpt__layout_module(b, cls, "4", false);
    ckpt__layout_module(b, cls, "5", false);
    ckpt__layout_linear(b, cls, "6", num_classes, VGG_FEATURES);
}

const ckpt__family ckpt__family_vgg = {
    .name = "vgg",
    .class_name = "VGG",
    .archs = archs,
    .n_archs = sizeof archs / sizeof archs[0],
    .head_weight = "classifier.6.weight",
    .head_bias = "classifier.6.bias",
    .features = vgg_features,
    .parameters = vgg_parameters,
    .layout = vgg_layout,
    .net = NULL, /* check-only */
    .namings = NULL,
    .n_namings = 0,
};
