/*
 * family.h - the architecture seam: one table per family of networks. Internal.
 *
 * Everything below the public ckpt_arch_* accessors asks an architecture's family what its
 * state dict looks like, where its classifier is and how to build its network; nothing in
 * locate.c, judge.c, report.c or net.c names a family's modules. A family is one file
 * (resnet.c, vgg.c) defining a `const ckpt__family ckpt__family_NAME` plus one X(NAME) line in
 * CKPT__FAMILIES below. docs/ARCHITECTURES-DEV.md walks through adding one.
 */
#ifndef CKPT_FAMILY_H
#define CKPT_FAMILY_H

#include "internal.h"

typedef struct ckpt__family ckpt__family;
struct ckpt__net;

/* One architecture: a row of its family's table. Opaque to users (ckpt.h). */
struct ckpt_arch {
    const char *name;             /* torchvision's builder: "resnet50", "vgg11" */
    const ckpt__family *family;
    const void *spec;             /* the family's own description of the row */
};

/* Lays out a model for ckpt_arch_model: modules in the order load() visits them, each
 * module's parameters and persistent buffers right after it (family.c keeps the arrays and
 * the _metadata). Errors are remembered and reported once at the end, so a layout function
 * calls these without checking. Module 0 is the root (""), added by family.c. */
typedef struct ckpt__layout ckpt__layout;
/* A child module of parent named name; returns its index. BatchNorm modules get version 2
 * and BatchNorm's missing-num_batches_tracked rule in the judge. */
size_t ckpt__layout_module(ckpt__layout *b, size_t parent, const char *name, bool batchnorm);
/* An entry of the module added last. */
void ckpt__layout_entry(ckpt__layout *b, size_t module, const char *name, ckpt_dtype dt, int ndim,
                        const int64_t *shape);
/* Common modules: Conv2d (square kernel; bias when has_bias), BatchNorm2d, Linear. */
size_t ckpt__layout_conv(ckpt__layout *b, size_t parent, const char *name, int64_t out,
                         int64_t in_per_group, int64_t k, bool has_bias);
size_t ckpt__layout_bn(ckpt__layout *b, size_t parent, const char *name, int64_t c);
size_t ckpt__layout_linear(ckpt__layout *b, size_t parent, const char *name, int64_t out,
                           int64_t in);

/* Another spelling of a family's keys (Hugging Face, Detectron2, Sequential indexes...):
 * rename writes the family's key for a file key into out (cap bytes), or returns false when
 * the key is not of this scheme (or its name does not fit). python defines
 * `torchvision_key(k)`, the same function in Python (None where rename returns false); the
 * printed lines apply it (scheme.c). The list may be empty. */
typedef struct ckpt__naming {
    const char *name;             /* "huggingface": `check --json`'s "naming" */
    const char *what;             /* for people: "Hugging Face transformers' ResNet" */
    bool (*rename)(const char *key, char *out, size_t cap);
    const char *python;
} ckpt__naming;

struct ckpt__family {
    const char *name;             /* "resnet": ckpt_arch_family */
    const char *class_name;       /* the model's Python class, as PyTorch's errors name it */
    const ckpt_arch *archs;       /* its architectures, in the order ckpt_arch_at lists them */
    size_t n_archs;
    /* the classifier: weight [classes, features] and bias [classes] */
    const char *head_weight, *head_bias;
    int64_t (*features)(const ckpt_arch *a);
    /* elements of model.parameters() (buffers excluded) */
    int64_t (*parameters)(const ckpt_arch *a, int64_t classes);
    /* the modules and entries of NAME(num_classes=classes), root's children first */
    void (*layout)(const ckpt_arch *a, int64_t classes, ckpt__layout *b);
    /* the inference network (net.h) without weights; NULL: check-only family. Set it with
     * CKPT__NET(fn) and put fn inside #ifndef CKPT_READER_ONLY (see below). */
    int (*net)(const ckpt_arch *a, int64_t classes, struct ckpt__net **out, ckpt_error *err);
    const ckpt__naming *namings;  /* other names for the same tensors; may be NULL */
    size_t n_namings;
};

/* libckpt-reader is built without the inference code (net.c and its libraries): there
 * CKPT_READER_ONLY is defined, a family's network builder is left out and its table says
 * check-only. The family files with a builder are compiled once for each library
 * (CKPT_FAMILY_NET_SOURCES in CMakeLists.txt). */
#ifdef CKPT_READER_ONLY
#define CKPT__NET(fn) NULL
#else
#define CKPT__NET(fn) fn
#endif

/* The families, in the order ckpt_arch_at lists their architectures. */
#define CKPT__FAMILIES(X) \
    X(resnet)             \
    X(vgg)

#define CKPT__FAMILY_DECLARE(name) extern const ckpt__family ckpt__family_##name;
CKPT__FAMILIES(CKPT__FAMILY_DECLARE)
#undef CKPT__FAMILY_DECLARE

#endif /* CKPT_FAMILY_H */
