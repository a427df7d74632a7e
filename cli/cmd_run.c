/*
 * cmd_run.c - `ckpt run FILE IMAGE...`: classify images with the weights in a checkpoint.
 *
 * The weights are located, unwrapped and judged exactly as `ckpt check` does it (locate.c);
 * a state dict that would not load strictly is refused with check's explanation, never run
 * with missing weights. Each image is decoded and preprocessed as torchvision does
 * (Resize -> CenterCrop -> ToTensor -> Normalize, bit for bit); an image that cannot be read
 * gets its own error line and the others still run. Images go through the model in batches;
 * the engine computes every image alone with the same code, so results do not depend on the
 * batch or the thread count, and --repeat checks that claim on the spot.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_run(int argc, char **argv, const cli_command *self);
extern const char cmd_run_help[];

const char cmd_run_help[] =
    "Finds the weights as `ckpt check` does (refusing, with check's explanation, any that\n"
    "would not load strictly), builds the torchvision ResNet in eval mode with BatchNorm\n"
    "folded into the convolutions, and classifies each image after torchvision's\n"
    "Resize(S) -> CenterCrop(C) -> ToTensor -> Normalize(ImageNet), reproduced bit for bit.\n"
    "Images are JPEG or PNG (any mode; converted to RGB as Pillow's convert(\"RGB\")).\n"
    "\n"
    "Options:\n"
    "  --arch NAME|auto   the architecture (default: recognise it); also --num-classes N,\n"
    "                     --key PATH and --strip-prefix P, as for `ckpt check`\n"
    "  --topk K           classes to show per image (default 5)\n"
    "  --labels FILE      class names, one per line (default: the class index)\n"
    "  --logits           also print the raw outputs (all classes)\n"
    "  --features         also print the pooled features before fc (512 or 2048 values)\n"
    "  --json             one JSON document on stdout (schema in docs/CLI.md)\n"
    "  --resize S         Resize's size (default 256; 232 for torchvision's V2 weights;\n"
    "                     0: no Resize)\n"
    "  --crop C           CenterCrop's size (default 224)\n"
    "  --batch B          images per batch (default 8)\n"
    "  --threads N        threads (default: the number of cores)\n"
    "  --backend B        dnnl (oneDNN, the default when built with it) or ref (plain C)\n"
    "  --input X.npy      run on a preprocessed float32 array [N,3,H,W] (or [3,H,W]) instead\n"
    "                     of images\n"
    "  --save-input X.npy write the preprocessed tensor [N,3,C,C] of the images that were read\n"
    "  --repeat N         run N times and exit 1 if any output bit differs between runs\n"
    "\n"
    "Exit status: 0 success; 1 the weights would not load strictly, or --repeat saw a\n"
    "difference; 2 error (the checkpoint, the options, or any image: images that could be\n"
    "read are still classified and printed).\n"
    "\n"
    "Examples:\n"
    "  ckpt run rsp-resnet-50-ckpt.pth cat.jpg dog.png --labels imagenet.txt\n"
    "  ckpt run model.pth img.png --resize 232 --json --logits\n"
    "  ckpt run model.pth img.png --save-input x.npy    # compare with your Python pipeline\n";

#define RUN_DEFAULT_TOPK 5
#define RUN_DEFAULT_BATCH 8
#define RUN_MAX_LABEL_BYTES (64u << 20)

typedef struct item {
    const char *name;  /* the image path, or "X.npy[k]" */
    char *owned_name;
    char *error;       /* why it could not be run, or NULL */
    float *input;      /* 3 x H x W, or NULL after an error */
} item;

static bool parse_int(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Class names, one per line; a missing file is an error, fewer lines than classes is not. */
static int read_labels(const char *path, char ***out, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return cli_error(path, "cannot open: %s", strerror(errno));
    char **v = NULL;
    size_t len = 0, cap = 0, total = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    while ((got = getline(&line, &lcap, fp)) >= 0) {
        total += (size_t)got;
        if (total > RUN_MAX_LABEL_BYTES) {
            free(line);
            fclose(fp);
            for (size_t i = 0; i < len; i++)
                free(v[i]);
            free(v);
            return cli_error(path, "label file larger than %u MB", RUN_MAX_LABEL_BYTES >> 20);
        }
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = '\0';
        if (len == cap) {
            cap = cap ? cap * 2 : 256;
            v = cli_xrealloc(v, cap * sizeof *v);
        }
        v[len++] = strdup(line);
    }
    free(line);
    fclose(fp);
    *out = v;
    *n = len;
    return -1;
}

/* Indexes of the k largest logits, largest first; ties keep the lower index first. */
static void topk(const float *logits, int64_t n, int k, int64_t *idx)
{
    for (int j = 0; j < k; j++)
        idx[j] = -1;
    for (int64_t c = 0; c < n; c++) {
        int j = k;
        while (j > 0 && (idx[j - 1] < 0 || logits[c] > logits[idx[j - 1]]))
            j--;
        if (j >= k)
            continue;
        memmove(idx + j + 1, idx + j, (size_t)(k - j - 1) * sizeof *idx);
        idx[j] = c;
    }
}

/* jansson has no NaN or infinity: those are written as the strings "nan", "inf", "-inf". */
static json_t *jfloat(double x)
{
    if (isfinite(x))
        return json_real(x);
    return json_string(isnan(x) ? "nan" : x > 0 ? "inf" : "-inf");
}

/* Softmax in double, so a single probability is as exact as float allows. */
static void softmax(const float *logits, int64_t n, double *p)
{
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < n; c++)
        m = logits[c] > m ? logits[c] : m;
    for (int64_t c = 0; c < n; c++)
        s += (p[c] = exp((double)logits[c] - m));
    for (int64_t c = 0; c < n; c++)
        p[c] /= s;
}

int cmd_run(int argc, char **argv, const cli_command *self)
{
    cli_locate l = {0};
    bool json = false, want_logits = false, want_features = false;
    const char *s_topk = NULL, *labels_path = NULL, *s_resize = NULL, *s_crop = NULL,
               *s_batch = NULL, *s_threads = NULL, *s_backend = NULL, *input_npy = NULL,
               *save_input = NULL, *s_repeat = NULL;
    const cli_opt opts[] = {
        CLI_LOCATE_OPTS(&l),
        {"topk", "K", NULL, &s_topk},
        {"labels", "FILE", NULL, &labels_path},
        {"logits", NULL, &want_logits, NULL},
        {"features", NULL, &want_features, NULL},
        {"json", NULL, &json, NULL},
        {"resize", "S", NULL, &s_resize},
        {"crop", "C", NULL, &s_crop},
        {"batch", "B", NULL, &s_batch},
        {"threads", "N", NULL, &s_threads},
        {"backend", "B", NULL, &s_backend},
        {"input", "X.npy", NULL, &input_npy},
        {"save-input", "X.npy", NULL, &save_input},
        {"repeat", "N", NULL, &s_repeat},
        {NULL, NULL, NULL, NULL},
    };
    enum { MAX_POS = 4096 };
    const char **pos = cli_xrealloc(NULL, MAX_POS * sizeof *pos);
    int npos = 0;
    int rc = cli_parse_args(self, argc, argv, opts, pos, 1, MAX_POS, &npos);
    if (rc >= 0) {
        free(pos);
        return rc;
    }
    long k = RUN_DEFAULT_TOPK, resize = 256, crop = 224, batch = RUN_DEFAULT_BATCH, threads = 0,
         repeat = 1;
    int backend = CKPT_BACKEND_AUTO;
    const char *bad = NULL;
    if (s_topk && !parse_int(s_topk, 1, 1L << 30, &k))
        bad = "--topk takes a count of at least 1";
    else if (s_resize && !parse_int(s_resize, 0, CKPT_IMAGE_MAX_SIDE, &resize))
        bad = "--resize takes a size from 0 to 65535";
    else if (s_crop && !parse_int(s_crop, 1, CKPT_IMAGE_MAX_SIDE, &crop))
        bad = "--crop takes a size from 1 to 65535";
    else if (s_batch && !parse_int(s_batch, 1, 1024, &batch))
        bad = "--batch takes a count from 1 to 1024";
    else if (s_threads && !parse_int(s_threads, 1, 1024, &threads))
        bad = "--threads takes a count from 1 to 1024";
    else if (s_repeat && !parse_int(s_repeat, 1, 1000000, &repeat))
        bad = "--repeat takes a count of at least 1";
    else if (s_backend && ((backend = ckpt_backend_from_name(s_backend)) < 0 ||
                           !ckpt_backend_available((ckpt_backend)backend)))
        bad = "--backend takes auto, ref or dnnl (when this build has oneDNN)";
    else if (input_npy && npos > 1)
        bad = "--input replaces the images: give FILE alone";
    else if (!input_npy && npos < 2)
        bad = "give at least one image (or --input X.npy)";
    if (bad) {
        free(pos);
        return cli_usage_error(self, "%s", bad);
    }

    char **labels = NULL;
    size_t n_labels = 0;
    if (labels_path && (rc = read_labels(labels_path, &labels, &n_labels)) >= 0) {
        free(pos);
        return rc;
    }

    ckpt_model *m = NULL;
    item *items = NULL;
    size_t n_items = 0;
    float *logits = NULL, *features = NULL, *first_logits = NULL, *first_features = NULL;
    int in_h = (int)crop, in_w = (int)crop;
    json_t *doc = NULL;
    cli_sb out = {0};
    ckpt_error err = {0};
    bool image_failed = false;

    /* 1. the weights, refused as check would refuse them */
    rc = cli_locate_open(self, &l, pos[0], false);
    if (rc >= 0)
        goto done;
    const ckpt_sd_report *r = l.r;
    if (!r->verdict->ok) {
        cli_sb why = {0};
        cli_locate_human(&why, &l);
        fprintf(stderr, "ckpt: error: %s: the weights would not load strictly; not running "
                        "them:\n%s", l.path, sb_str(&why));
        sb_free(&why);
        rc = CLI_EXIT_FINDING;
        goto done;
    }
    if (!r->arch) {
        rc = cli_error(l.path, "ckpt run knows the ten torchvision ResNets; --against checks "
                               "other models but cannot run them");
        goto done;
    }
    if (!ckpt_arch_runnable(r->arch)) {
        rc = cli_error(l.path, "no inference for the %s family: '%s' can be checked and "
                               "extracted, not run (ckpt run knows the ten torchvision ResNets)",
                       ckpt_arch_family(r->arch), ckpt_arch_name(r->arch));
        goto done;
    }
    ckpt_model_options mo = {0};
    mo.backend = (ckpt_backend)backend;
    mo.threads = (int)threads;

    /* 2. the inputs */
    if (input_npy) {
        ckpt_npy a;
        if (ckpt_npy_read(input_npy, &a, &err) != CKPT_OK) {
            rc = cli_error_ckpt(input_npy, &err);
            goto done;
        }
        bool one = a.ndim == 3;
        if (!(a.ndim == 4 || one) || a.shape[one ? 0 : 1] != 3 || a.numel == 0 ||
            a.shape[a.ndim - 1] > CKPT_IMAGE_MAX_SIDE || a.shape[a.ndim - 2] > CKPT_IMAGE_MAX_SIDE) {
            ckpt_npy_free(&a);
            rc = cli_error(input_npy, "expected a float32 array [N, 3, H, W] or [3, H, W]");
            goto done;
        }
        n_items = one ? 1 : (size_t)a.shape[0];
        in_h = (int)a.shape[a.ndim - 2];
        in_w = (int)a.shape[a.ndim - 1];
        size_t per = (size_t)3 * (size_t)in_h * (size_t)in_w;
        items = calloc(n_items, sizeof *items);
        for (size_t i = 0; i < n_items; i++) {
            items[i].owned_name = cli_xrealloc(NULL, strlen(input_npy) + 24);
            sprintf(items[i].owned_name, one ? "%s" : "%s[%zu]", input_npy, i);
            items[i].name = items[i].owned_name;
            items[i].input = cli_xrealloc(NULL, per * sizeof(float));
            memcpy(items[i].input, a.data + i * per, per * sizeof(float));
        }
        ckpt_npy_free(&a);
    } else {
        n_items = (size_t)npos - 1;
        items = calloc(n_items, sizeof *items);
        size_t per = (size_t)3 * (size_t)crop * (size_t)crop;
        for (size_t i = 0; i < n_items; i++) {
            items[i].name = pos[i + 1];
            ckpt_image img;
            if (ckpt_image_load(items[i].name, NULL, &img, &err) == CKPT_OK) {
                items[i].input = cli_xrealloc(NULL, per * sizeof(float));
                if (ckpt_image_preprocess(&img, (int)resize, (int)crop, items[i].input,
                                          per * sizeof(float), &err) != CKPT_OK) {
                    free(items[i].input);
                    items[i].input = NULL;
                }
                ckpt_image_free(&img);
            }
            if (!items[i].input) {
                items[i].error = strdup(err.message);
                image_failed = true;
                cli_error_ckpt(items[i].name, &err);
            }
        }
    }
    if (save_input) {
        size_t per = (size_t)3 * (size_t)in_h * (size_t)in_w, n_ok = 0;
        for (size_t i = 0; i < n_items; i++)
            n_ok += items[i].input != NULL;
        float *all = cli_xrealloc(NULL, (n_ok ? n_ok : 1) * per * sizeof(float));
        for (size_t i = 0, j = 0; i < n_items; i++)
            if (items[i].input)
                memcpy(all + j++ * per, items[i].input, per * sizeof(float));
        int64_t shape[4] = {(int64_t)n_ok, 3, in_h, in_w};
        int st = ckpt_npy_write(save_input, all, 4, shape, &err);
        free(all);
        if (st != CKPT_OK) {
            rc = cli_error_ckpt(save_input, &err);
            goto done;
        }
    }

    /* 3. the model, built once; the checkpoint is not needed after this */
    mo.height = in_h;
    mo.width = in_w;
    if (ckpt_model_load_sd(r->arch, r->num_classes, r->sd, &mo, &m, &err) != CKPT_OK) {
        rc = cli_error_ckpt(l.path, &err);
        goto done;
    }
    int64_t classes = ckpt_model_classes(m), nfeat = ckpt_model_features(m);
    logits = cli_xrealloc(NULL, (n_items ? n_items : 1) * (size_t)classes * sizeof(float));
    features = cli_xrealloc(NULL, (n_items ? n_items : 1) * (size_t)nfeat * sizeof(float));
    size_t per = (size_t)3 * (size_t)in_h * (size_t)in_w;
    float *xb = cli_xrealloc(NULL, (size_t)batch * per * sizeof(float));
    long differing_runs = 0;
    for (long run = 0; run < repeat; run++) {
        /* gather the readable images into batches */
        size_t i = 0;
        while (i < n_items) {
            size_t idx[1024], nb = 0;
            for (; i < n_items && nb < (size_t)batch; i++)
                if (items[i].input) {
                    memcpy(xb + nb * per, items[i].input, per * sizeof(float));
                    idx[nb++] = i;
                }
            if (!nb)
                break;
            float *lb = cli_xrealloc(NULL, nb * (size_t)classes * sizeof(float));
            float *fb = cli_xrealloc(NULL, nb * (size_t)nfeat * sizeof(float));
            int st = ckpt_model_run(m, xb, (int)nb, in_h, in_w, lb, fb, &err);
            for (size_t j = 0; st == CKPT_OK && j < nb; j++) {
                memcpy(logits + idx[j] * (size_t)classes, lb + j * (size_t)classes,
                       (size_t)classes * sizeof(float));
                memcpy(features + idx[j] * (size_t)nfeat, fb + j * (size_t)nfeat,
                       (size_t)nfeat * sizeof(float));
            }
            free(lb);
            free(fb);
            if (st != CKPT_OK) {
                free(xb);
                rc = cli_error_ckpt(l.path, &err);
                goto done;
            }
        }
        if (run == 0) {
            first_logits = cli_xrealloc(NULL, (n_items ? n_items : 1) * (size_t)classes * 4);
            first_features = cli_xrealloc(NULL, (n_items ? n_items : 1) * (size_t)nfeat * 4);
            memcpy(first_logits, logits, n_items * (size_t)classes * 4);
            memcpy(first_features, features, n_items * (size_t)nfeat * 4);
        } else {
            bool same = true;
            for (size_t j = 0; j < n_items; j++)
                if (items[j].input &&
                    (memcmp(first_logits + j * (size_t)classes, logits + j * (size_t)classes,
                            (size_t)classes * 4) ||
                     memcmp(first_features + j * (size_t)nfeat, features + j * (size_t)nfeat,
                            (size_t)nfeat * 4)))
                    same = false;
            differing_runs += !same;
        }
    }
    free(xb);

    /* 4. the results */
    int kk = (int)(k < classes ? k : classes);
    int64_t *ti = cli_xrealloc(NULL, (size_t)kk * sizeof *ti);
    double *prob = cli_xrealloc(NULL, (size_t)classes * sizeof *prob);
    json_t *results = NULL;
    if (json) {
        doc = json_object();
        json_t *model = json_object();
        json_object_set_new(model, "file", json_string(l.path));
        json_t *sdp = json_array();
        for (size_t i = 0; i < r->chosen->path_len; i++)
            json_array_append_new(sdp, cli_json_str(r->chosen->path[i], strlen(r->chosen->path[i])));
        json_object_set_new(model, "state_dict_path", sdp);
        json_object_set_new(model, "prefix", cli_json_str(r->prefix, strlen(r->prefix)));
        json_object_set_new(model, "arch", json_string(ckpt_arch_name(r->arch)));
        json_object_set_new(model, "num_classes", json_integer(classes));
        json_object_set_new(model, "features", json_integer(nfeat));
        json_object_set_new(model, "backend", json_string(ckpt_backend_name(ckpt_model_backend(m))));
        json_object_set_new(model, "threads", json_integer(ckpt_model_threads(m)));
        if (input_npy) {
            json_object_set_new(model, "input", json_string(input_npy));
        } else {
            json_object_set_new(model, "resize", json_integer(resize));
            json_object_set_new(model, "crop", json_integer(crop));
        }
        json_object_set_new(doc, "model", model);
        results = json_array();
        json_object_set_new(doc, "results", results);
        if (repeat > 1) {
            json_t *rep = json_object();
            json_object_set_new(rep, "runs", json_integer(repeat));
            json_object_set_new(rep, "bit_identical", json_boolean(differing_runs == 0));
            json_object_set_new(doc, "repeat", rep);
        }
    } else {
        sb_printf(&out, "%s: torchvision.models.%s(num_classes=%" PRId64 ") from ", l.path,
                  ckpt_arch_name(r->arch), classes);
        cli_locate_where(&out, r->chosen);
        sb_printf(&out, ", %s backend, %d thread%s\n", ckpt_backend_name(ckpt_model_backend(m)),
                  ckpt_model_threads(m), ckpt_model_threads(m) == 1 ? "" : "s");
    }
    for (size_t i = 0; i < n_items; i++) {
        const item *it = &items[i];
        const float *lg = logits + i * (size_t)classes, *ft = features + i * (size_t)nfeat;
        if (json) {
            json_t *o = json_object();
            json_object_set_new(o, "image", cli_json_str(it->name, strlen(it->name)));
            json_array_append_new(results, o);
            if (it->error) {
                json_object_set_new(o, "error", cli_json_str(it->error, strlen(it->error)));
                continue;
            }
            topk(lg, classes, kk, ti);
            softmax(lg, classes, prob);
            json_t *tk = json_array();
            for (int j = 0; j < kk; j++) {
                json_t *e = json_object();
                json_object_set_new(e, "index", json_integer(ti[j]));
                if ((size_t)ti[j] < n_labels)
                    json_object_set_new(e, "label", cli_json_str(labels[ti[j]], strlen(labels[ti[j]])));
                else
                    json_object_set_new(e, "label", json_null());
                json_object_set_new(e, "prob", jfloat(prob[ti[j]]));
                json_array_append_new(tk, e);
            }
            json_object_set_new(o, "topk", tk);
            if (want_logits) {
                json_t *a = json_array();
                for (int64_t c = 0; c < classes; c++)
                    json_array_append_new(a, jfloat(lg[c]));
                json_object_set_new(o, "logits", a);
            }
            if (want_features) {
                json_t *a = json_array();
                for (int64_t c = 0; c < nfeat; c++)
                    json_array_append_new(a, jfloat(ft[c]));
                json_object_set_new(o, "features", a);
            }
            continue;
        }
        if (it->error)
            continue; /* already reported on stderr */
        sb_put_clean(&out, it->name, strlen(it->name));
        sb_puts(&out, "\n");
        topk(lg, classes, kk, ti);
        softmax(lg, classes, prob);
        for (int j = 0; j < kk; j++) {
            sb_printf(&out, "  %7.3f%%  %5" PRId64 "  ", 100.0 * prob[ti[j]], ti[j]);
            if ((size_t)ti[j] < n_labels)
                sb_put_clean(&out, labels[ti[j]], strlen(labels[ti[j]]));
            sb_putc(&out, '\n');
        }
        if (want_logits) {
            sb_puts(&out, "  logits:");
            for (int64_t c = 0; c < classes; c++) {
                sb_putc(&out, ' ');
                cli_fmt_float(&out, lg[c]);
            }
            sb_putc(&out, '\n');
        }
        if (want_features) {
            sb_puts(&out, "  features:");
            for (int64_t c = 0; c < nfeat; c++) {
                sb_putc(&out, ' ');
                cli_fmt_float(&out, ft[c]);
            }
            sb_putc(&out, '\n');
        }
    }
    free(ti);
    free(prob);
    if (!json && repeat > 1)
        sb_printf(&out, "%ld runs: %s\n", repeat,
                  differing_runs ? "OUTPUTS DIFFER between runs" : "every output bit-identical");
    if (json) {
        rc = cli_emit_json(l.path, doc);
        doc = NULL;
    } else {
        cli_write_stdout(out.buf, out.len);
        rc = CLI_EXIT_OK;
    }
    if (rc == CLI_EXIT_OK && differing_runs)
        rc = CLI_EXIT_FINDING;
    if (rc == CLI_EXIT_OK && image_failed)
        rc = CLI_EXIT_ERROR;

done:
    json_decref(doc);
    sb_free(&out);
    ckpt_model_free(m);
    for (size_t i = 0; i < n_items; i++) {
        free(items[i].input);
        free(items[i].error);
        free(items[i].owned_name);
    }
    free(items);
    free(logits);
    free(features);
    free(first_logits);
    free(first_features);
    for (size_t i = 0; i < n_labels; i++)
        free(labels[i]);
    free(labels);
    free(pos);
    cli_locate_close(&l);
    return rc;
}
