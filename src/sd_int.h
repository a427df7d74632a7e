/*
 * sd_int.h - what the state-dict modules share: sd.c (views, templates), locate.c (finding),
 * judge.c (PyTorch's rules), report.c (words) and diff.c. Internal.
 */
#ifndef CKPT_SD_INT_H
#define CKPT_SD_INT_H

#include "util.h"

#define SD_DEFAULT_CLASSES 1000    /* torchvision's default num_classes */
#define SD_MAX_CLASSES INT32_MAX

/* A dict of tensors that could be the state dict, as locate.c fits it. */
typedef struct ckpt__cand {
    ckpt_sd_candidate pub;
    bool *is_index;         /* per path segment: a list/tuple index */
    size_t order;           /* in walk order */
    int name_rank;
    ckpt__strmap keys;            /* raw key -> item index */
    long long quality;
    size_t names;           /* model keys present by name (for recognising) */
    size_t under;           /* the dict's keys under the chosen prefix */
    bool recognised;
    bool strings;           /* every key is a str */
    /* a naming scheme's candidate (scheme.c): pub.dict holds the renamed keys, file_keys[i]
     * the file's own key of its item i; NULL when the file's keys are used as they are */
    const struct ckpt__naming *naming;
    const char **file_keys;
    const char *module_class; /* built from a pickled nn.Module of this class, or NULL */
    /* a classifier saved outside the prefix under another name (locate.c's renamed_head):
     * the file's keys of the head's weight and bias, which pub.dict holds under the model's
     * names; NULL when there is none */
    const char *head_from[2];
} ckpt__cand;

/* A report's own state (its `internal`). */
typedef struct ckpt__check_priv {
    ckpt__arena *ar;
    ckpt_sd_model *owned_model; /* made by ckpt_arch_model: its own arena */
    ckpt__vec warnings;         /* ckpt_sd_warning * */
    bool explained;             /* warnings and python are built */
    /* what ckpt_sd_explain needs: */
    const ckpt__cand *chosen;
    const ckpt_value *root;
    const ckpt_file *file;
    bool has_float;             /* a plain Python float somewhere in the file */
    bool has_other;             /* a set, bytes or complex number (not numpy's) */
    ckpt_sd_check_options opt;
} ckpt__check_priv;

/* views (sd.c) */
int ckpt__sd_build(ckpt__arena *ar, const ckpt_value *d, const char *prefix, ckpt_sd **out,
                   ckpt_error *err);
const char *ckpt__type_label(const ckpt_value *v);
int ckpt__model_from_template(ckpt__arena *ar, const ckpt_sd *tmpl, const char *class_name,
                              ckpt_sd_model **out, ckpt_error *err);
/* the judge (judge.c) */
int ckpt__judge(ckpt__arena *ar, const ckpt_sd_model *m, const ckpt_sd *sd,
                ckpt_sd_verdict **out, ckpt_error *err);
/* zero.c: CKPT_EUNSUPPORTED when sd (candidate c of the file whose root is root) is mostly
 * tensors of shape [0], as a DeepSpeed ZeRO-3 partition is: the weights are not in the file */
int ckpt__sd_placeholders(const ckpt_value *root, const ckpt_sd_candidate *c, const ckpt_sd *sd,
                          ckpt_error *err);
/* locate.c: who adds a wrapper name ("module": "DataParallel / ..."), NULL when unknown */
const char *ckpt__sd_wrapper_what(const char *part, size_t n);

/* report.c: what the verdict says the file is (r->verdict_kind, r->backbone,
 * r->backbone_aside, r->sequential_head), with or without the words */
int ckpt__sd_kind(ckpt__arena *ar, ckpt_sd_report *r, const ckpt__cand *k,
                  const ckpt_sd_check_options *opt, ckpt_error *err);

/* naming schemes (scheme.c): rename a candidate's keys when a family's naming fits them;
 * give the report the file's own keys back (and r->naming); the Python lines that rename */
int ckpt__scheme_apply(ckpt__arena *ar, ckpt__cand *k, ckpt_error *err);
int ckpt__scheme_finish(ckpt__arena *ar, ckpt_sd_report *r, const ckpt__cand *k,
                        ckpt_error *err);
void ckpt__scheme_python(ckpt__strbuf *b, const ckpt__cand *k);
const char *ckpt__scheme_what(const ckpt__cand *k); /* "Hugging Face transformers' ..." */

#endif /* CKPT_SD_INT_H */
