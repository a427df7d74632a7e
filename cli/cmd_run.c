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
 *
 * The command runs in steps, one function each: parse the options, read the labels, locate
 * and judge the weights, gather the inputs (images are decoded and preprocessed batch by
 * batch, so memory does not grow with the number of images), load the model, run the
 * forward passes, print. Every size that reaches an allocation is checked first: the options
 * against the limits below, products of sizes with checked arithmetic.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
    "  --labels FILE      class names, one per line; none: the class index only (default:\n"
    "                     ImageNet-1k's names, as torchvision's weights carry them, for a\n"
    "                     1000-class head, else the class index)\n"
    "  --logits           also print the raw outputs (all classes)\n"
    "  --features         also print the pooled features before fc (512 or 2048 values);\n"
    "                     on a backbone without fc (DINO, SwAV, ...), the features alone:\n"
    "                     a summary per image, the vector with --json\n"
    "  --json             one JSON document on stdout (schema in docs/CLI.md)\n"
    "  --resize S         Resize's size (default 256; 232 for torchvision's V2 weights;\n"
    "                     0: no Resize)\n"
    "  --crop C           CenterCrop's size (default 224)\n"
    "  --max-side N       the largest --resize, --crop and --input height or width accepted\n"
    "                     (default 1024: the model's memory grows with the square)\n"
    "  --batch B          images per batch (default 8, at most 1024)\n"
    "  --threads N        threads (default: the number of cores)\n"
    "  --backend B        dnnl (oneDNN, the default when built with it) or ref (plain C)\n"
    "  --precision P      fp32 (default) or bf16: bfloat16 weights and activations on dnnl,\n"
    "                     about 1.7x faster, logits within about 1e-2 (docs/INFERENCE.md);\n"
    "                     refused where the CPU has no bf16 dot products (AVX512_BF16, AMX)\n"
    "  --profile          on stderr: the phases of loading and a per-layer table (time,\n"
    "                     oneDNN implementation, GFLOP/s, % of the machine's peak measured\n"
    "                     on the same threads)\n"
    "  --input X.npy      run on a preprocessed float32 array [N,3,H,W] (or [3,H,W]) instead\n"
    "                     of images\n"
    "  --save-input X.npy write the preprocessed tensor [N,3,C,C] of the images that were read\n"
    "  --repeat N         run N times and exit 1 if any output bit differs between runs\n"
    "\n"
    "Many images: an IMAGE may be a directory (its .jpg, .jpeg and .png files; -r for\n"
    "subdirectories, --all for every file); --files-from F (-0), --jsonl (one record per\n"
    "image, written as its batch ends), --skip-done F, --shard I/N and -q work as for\n"
    "`ckpt scan` (docs/CLI.md).\n"
    "\n"
    "At most 4096 images per command (RUN_MAX_IMAGES); run it again for more.\n"
    "\n"
    "Examples:\n"
    "  ckpt run rsp-resnet-50-ckpt.pth cat.jpg dog.png --labels imagenet.txt\n"
    "  ckpt run model.pth img.png --resize 232 --json --logits\n"
    "  ckpt run model.pth img.png --save-input x.npy    # compare with your Python pipeline\n"
    "  ckpt run model.pth photos/ -r --jsonl > classes.jsonl\n";

#define RUN_DEFAULT_TOPK 5
#define RUN_DEFAULT_RESIZE 256
#define RUN_DEFAULT_CROP 224
#define RUN_DEFAULT_BATCH 8
#define RUN_MAX_TOPK (1L << 30)
#define RUN_MAX_BATCH 1024
#define RUN_MAX_THREADS 1024
#define RUN_MAX_REPEAT 1000000
#define RUN_MAX_IMAGES 4096        /* images on one command line */
#define RUN_DEFAULT_MAX_SIDE 1024  /* --resize, --crop, --input's H and W, unless --max-side */
#define RUN_MAX_LABEL_BYTES (64u << 20)

typedef struct run_options {
    cli_locate l; /* --arch, --key, ... and, once located, the weights */
    cli_inputs in; /* directories, --files-from, --jsonl, --shard, ... for the images */
    bool json, logits, features, profile, bf16;
    bool backbone; /* the weights lack the classifier: run for the features alone */
    const char *labels, *input_npy, *save_input;
    const char **images; /* the image paths */
    size_t n_images;
    long topk, resize, crop, batch, threads, repeat, max_side;
    int backend;
} run_options;

typedef struct item {
    const char *name;   /* the image path, or "X.npy[k]" */
    char *owned_name;
    char *error;        /* why it could not be run, or NULL */
    const char *status; /* with error: the library's status name, or "error" */
    const float *input; /* its 3 x H x W floats when they are already in memory, else NULL */
} item;

typedef struct run_state {
    char **labels; /* read from --labels FILE */
    size_t n_labels;
    const char *const *names; /* the class names printed: labels, ImageNet's, or none */
    size_t n_names;
    const char *names_from;   /* "imagenet1k", the --labels file, or NULL */
    item *items;
    size_t n_items;
    ckpt_npy npy;  /* --input */
    float *saved;  /* --save-input: every readable image's floats */
    int in_h, in_w;
    size_t per;    /* floats per input: 3 * in_h * in_w */
    bool image_failed;
    ckpt_model *m;
    double load_ms, forward_ms; /* wall time of steps 5 and 6, for --profile */
    int64_t classes, nfeat;
    float *logits, *features; /* n_items x classes, n_items x nfeat, of the first run */
    long differing_runs;
    size_t emitted;       /* --jsonl: the items whose records are written */
    cli_progress progress;
} run_state;

/* As cli_xrealloc does when memory runs out: report and exit 2. */
static _Noreturn void out_of_memory(void)
{
    fputs("ckpt: error: out of memory\n", stderr);
    exit(CLI_EXIT_ERROR);
}

/* n * size bytes, or exit 2 (out of memory) when the product does not fit: the operands are
 * bounded by the limits above, so this only fires when memory is truly short. */
static void *alloc_array(size_t n, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(n ? n : 1, size, &bytes))
        out_of_memory();
    return cli_xrealloc(NULL, bytes);
}

static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* ---- 1. options ---------------------------------------------------------------------------- */

/* One numeric option: "--topk takes a count from 1 to 1073741824, not '0'". */
static bool numeric(const cli_command *self, const char *name, const char *what, const char *s,
                    long min, long max, long *out, int *rc)
{
    if (!s || parse_long(s, min, max, out))
        return true;
    *rc = cli_usage_error(self, "--%s takes a %s from %ld to %ld, not '%s'", name, what, min,
                          max, s);
    return false;
}

/* Returns -1 to go on, or the exit status. */
static int parse_options(const cli_command *self, int argc, char **argv, run_options *o)
{
    const char *s_topk = NULL, *s_resize = NULL, *s_crop = NULL, *s_batch = NULL,
               *s_threads = NULL, *s_backend = NULL, *s_repeat = NULL, *s_max_side = NULL,
               *s_precision = NULL;
    const cli_opt opts[] = {
        CLI_LOCATE_OPTS(&o->l),
        {"topk", "K", NULL, &s_topk},
        {"labels", "FILE", NULL, &o->labels},
        {"logits", NULL, &o->logits, NULL},
        {"features", NULL, &o->features, NULL},
        {"json", NULL, &o->json, NULL},
        {"resize", "S", NULL, &s_resize},
        {"crop", "C", NULL, &s_crop},
        {"max-side", "N", NULL, &s_max_side},
        {"batch", "B", NULL, &s_batch},
        {"threads", "N", NULL, &s_threads},
        {"backend", "B", NULL, &s_backend},
        {"input", "X.npy", NULL, &o->input_npy},
        {"save-input", "X.npy", NULL, &o->save_input},
        {"repeat", "N", NULL, &s_repeat},
        {"precision", "P", NULL, &s_precision},
        {"profile", NULL, &o->profile, NULL},
        CLI_INPUT_OPTS(&o->in),
        {NULL, NULL, NULL, NULL},
    };
    int npos = 0, rc = -1;
    /* One more than the limit is collected, to tell "too many images" from a stray argument. */
    int rc_parse = cli_parse_args(self, argc, argv, opts, o->images, 1, 2 + RUN_MAX_IMAGES,
                                  &npos);
    if (rc_parse >= 0)
        return rc_parse;
    if (npos > 1 + RUN_MAX_IMAGES)
        return cli_usage_error(self, "at most %d images per command; run it again for the rest",
                               RUN_MAX_IMAGES);
    o->l.path = o->images[0];
    o->images++;
    o->n_images = (size_t)npos - 1;
    o->topk = RUN_DEFAULT_TOPK;
    o->resize = RUN_DEFAULT_RESIZE;
    o->crop = RUN_DEFAULT_CROP;
    o->batch = RUN_DEFAULT_BATCH;
    o->threads = 0;
    o->repeat = 1;
    o->max_side = RUN_DEFAULT_MAX_SIDE;
    o->backend = CKPT_BACKEND_AUTO;
    if (!numeric(self, "topk", "count", s_topk, 1, RUN_MAX_TOPK, &o->topk, &rc) ||
        !numeric(self, "max-side", "size", s_max_side, 1, CKPT_IMAGE_MAX_SIDE, &o->max_side,
                 &rc) ||
        !numeric(self, "resize", "size", s_resize, 0, CKPT_IMAGE_MAX_SIDE, &o->resize, &rc) ||
        !numeric(self, "crop", "size", s_crop, 1, CKPT_IMAGE_MAX_SIDE, &o->crop, &rc) ||
        !numeric(self, "batch", "count", s_batch, 1, RUN_MAX_BATCH, &o->batch, &rc) ||
        !numeric(self, "threads", "count", s_threads, 1, RUN_MAX_THREADS, &o->threads, &rc) ||
        !numeric(self, "repeat", "count", s_repeat, 1, RUN_MAX_REPEAT, &o->repeat, &rc))
        return rc;
    /* The model's activations grow with the square of the side: refused before anything is
     * decoded or allocated. */
    if (o->resize > o->max_side)
        return cli_usage_error(self, "--resize %ld is larger than %ld, the largest side "
                               "accepted; raise the limit with --max-side N", o->resize,
                               o->max_side);
    if (o->crop > o->max_side)
        return cli_usage_error(self, "--crop %ld is larger than %ld, the largest side accepted; "
                               "raise the limit with --max-side N", o->crop, o->max_side);
    if (s_backend && ((o->backend = ckpt_backend_from_name(s_backend)) < 0 ||
                      !ckpt_backend_available((ckpt_backend)o->backend)))
        return cli_usage_error(self, "--backend takes auto, ref or dnnl (when this build has "
                               "oneDNN)");
    if (s_precision && strcmp(s_precision, "fp32") != 0 && strcmp(s_precision, "bf16") != 0)
        return cli_usage_error(self, "--precision takes fp32 or bf16, not '%s'", s_precision);
    o->bf16 = s_precision && strcmp(s_precision, "bf16") == 0;
    if (o->bf16 && o->backend == CKPT_BACKEND_REF)
        return cli_usage_error(self, "--precision bf16 needs the dnnl backend");
    if (o->bf16 && !ckpt_model_bf16_available()) {
        fputs("ckpt: error: --precision bf16: this CPU has no bfloat16 dot products "
              "(AVX512_BF16 or AMX)" , stderr);
        fputs(ckpt_backend_available(CKPT_BACKEND_DNNL) ? "; use fp32\n"
                                                        : " in this build (no oneDNN)\n",
              stderr);
        return CLI_EXIT_ERROR;
    }
    if (o->input_npy && (o->n_images > 0 || o->in.files_from))
        return cli_usage_error(self, "--input replaces the images: give FILE alone");
    if ((rc = cli_inputs_check(self, &o->in)) >= 0)
        return rc;
    if (o->in.jsonl)
        o->json = true;
    if (!o->input_npy && o->n_images == 0 && !o->in.files_from)
        return cli_usage_error(self, "give at least one image (or --input X.npy)");
    return -1;
}

/* ---- 2. labels ----------------------------------------------------------------------------- */

/* Class names, one per line; a missing file is an error, fewer lines than classes is not.
 * The file must be a regular file no larger than RUN_MAX_LABEL_BYTES, checked before reading:
 * a directory, a device (/dev/zero never ends) or a huge file is an error, never a run with no
 * labels. */
static int read_labels(const char *path, char ***out, size_t *n)
{
    int fd;
    uint64_t size;
    ckpt_error err = {0};
    if (ckpt_open_input(path, &fd, &size, &err) != CKPT_OK)
        return cli_error(path, "cannot read the labels: %s", err.message);
    if (size > RUN_MAX_LABEL_BYTES) {
        close(fd);
        return cli_error(path, "the label file is larger than %u MB", RUN_MAX_LABEL_BYTES >> 20);
    }
    /* One byte more than fstat said, to notice a file that grew since. */
    char *text = cli_xrealloc(NULL, (size_t)size + 2);
    size_t len = 0;
    while (len <= size) {
        ssize_t got = read(fd, text + len, (size_t)size + 1 - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            free(text);
            close(fd);
            return cli_error(path, "cannot read the labels: %s", strerror(e));
        }
        if (got == 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    if (len > size) {
        free(text);
        return cli_error(path, "the label file changed while it was read");
    }
    text[len] = '\0';
    char **v = NULL;
    size_t count = 0, cap = 0;
    for (size_t start = 0; start < len;) {
        size_t end = start;
        while (end < len && text[end] != '\n')
            end++;
        size_t next = end + 1, stop = end;
        while (stop > start && text[stop - 1] == '\r')
            stop--;
        if (count == cap) {
            cap = cap ? cap * 2 : 256;
            v = cli_xrealloc(v, cap * sizeof *v);
        }
        v[count] = cli_xrealloc(NULL, stop - start + 1);
        memcpy(v[count], text + start, stop - start);
        v[count][stop - start] = '\0';
        count++;
        start = next;
    }
    free(text);
    *out = v;
    *n = count;
    return -1;
}

/* The class names built in (data/imagenet1k.txt, generated into imagenet1k.c). */
extern const char *const cli_imagenet1k[];
extern const size_t cli_imagenet1k_count;

/* The names to print: --labels FILE, none with --labels none, else ImageNet-1k's for a head of
 * 1000 classes (most published ResNets are ImageNet models). */
static void pick_names(const run_options *o, run_state *st)
{
    if ((o->labels && strcmp(o->labels, "none") == 0) || o->backbone)
        return;
    if (o->labels) {
        st->names = (const char *const *)st->labels;
        st->n_names = st->n_labels;
        st->names_from = o->labels;
    } else if (o->l.r->num_classes == (int64_t)cli_imagenet1k_count) {
        st->names = cli_imagenet1k;
        st->n_names = cli_imagenet1k_count;
        st->names_from = "imagenet1k";
    }
}

/* ---- 3. the weights ---------------------------------------------------------------------- */

/* Locate and judge the weights as check does; refuse any that would not load strictly. */
static int locate_weights(const cli_command *self, run_options *o)
{
    int rc = cli_locate_open(self, &o->l, o->l.path, false);
    if (rc >= 0)
        return rc;
    const ckpt_sd_report *r = o->l.r;
    /* a backbone (ckpt_sd_report.backbone): the keys outside it are left aside */
    size_t aside = r->backbone ? r->verdict->n_unexpected : 0;
    if (r->sequential_head && !o->features)
        return cli_error(o->l.path, "the classifier in fc's place is an nn.Sequential (%" PRId64
                         " classes), which run does not build: --features runs the network "
                         "for its pooled features; 'ckpt check' prints the Python that builds "
                         "it", r->num_classes);
    /* the features of a network whose classifier run cannot build are a backbone's */
    o->backbone = r->backbone || r->sequential_head;
    if (o->backbone && !o->features)
        return cli_error(o->l.path, "a backbone without its classifier ('%s' and '%s' are not "
                         "in the file): there are no classes to predict; --features runs it "
                         "for its pooled features, and 'ckpt extract' writes the backbone for "
                         "load_state_dict(sd, strict=False)",
                         ckpt_arch_head(r->arch, false), ckpt_arch_head(r->arch, true));
    if (o->backbone && o->logits)
        return cli_error(o->l.path, "a backbone without its classifier has no logits: "
                         "--features alone");
    if (o->backbone && aside)
        cli_warn(o->l.path, "%zu key%s outside the backbone ('%s'%s) left aside: the features "
                 "are the backbone's, before any head", aside, aside == 1 ? "" : "s",
                 r->verdict->unexpected[0], aside > 1 ? ", ..." : "");
    /* a backbone lacks only the classifier, which the features do not need */
    if (!r->verdict->ok && !o->backbone) {
        cli_sb why = {0};
        cli_locate_human(&why, &o->l);
        fprintf(stderr, "ckpt: error: %s: the weights would not load strictly; not running "
                        "them:\n%s", o->l.path, sb_str(&why));
        sb_free(&why);
        return CLI_EXIT_FINDING;
    }
    if (!r->arch)
        return cli_error(o->l.path, "ckpt run knows the ten torchvision ResNets; --against "
                                    "checks other models but cannot run them");
    if (!ckpt_arch_runnable(r->arch))
        return cli_error(o->l.path, "no inference for the %s family: '%s' can be checked and "
                                    "extracted, not run (ckpt run knows the ten torchvision "
                                    "ResNets)", ckpt_arch_family(r->arch), ckpt_arch_name(r->arch));
    return -1;
}

/* ---- 4. inputs ----------------------------------------------------------------------------- */

static int gather_npy(const run_options *o, run_state *st)
{
    ckpt_error err = {0};
    if (ckpt_npy_read(o->input_npy, &st->npy, &err) != CKPT_OK)
        return cli_error_ckpt(o->input_npy, &err);
    const ckpt_npy *a = &st->npy;
    bool one = a->ndim == 3;
    if (!(a->ndim == 4 || one) || a->shape[one ? 0 : 1] != 3 || a->numel == 0)
        return cli_error(o->input_npy, "expected a float32 array [N, 3, H, W] or [3, H, W]");
    int64_t h = a->shape[a->ndim - 2], w = a->shape[a->ndim - 1];
    if (h > o->max_side || w > o->max_side)
        return cli_error(o->input_npy, "the inputs are %" PRId64 "x%" PRId64 ", larger than "
                         "%ld, the largest side accepted; raise the limit with --max-side N",
                         w, h, o->max_side);
    st->n_items = one ? 1 : (size_t)a->shape[0];
    st->in_h = (int)h;
    st->in_w = (int)w;
    st->per = (size_t)3 * (size_t)h * (size_t)w; /* numel = n_items * per: no overflow */
    st->items = alloc_array(st->n_items, sizeof *st->items);
    memset(st->items, 0, st->n_items * sizeof *st->items);
    for (size_t i = 0; i < st->n_items; i++) {
        cli_sb name = {0};
        sb_put_clean(&name, o->input_npy, strlen(o->input_npy));
        if (!one)
            sb_printf(&name, "[%zu]", i);
        st->items[i].owned_name = name.buf;
        st->items[i].name = name.buf;
        st->items[i].input = a->data + i * st->per;
    }
    return -1;
}

/* Decode and preprocess item i into dst (per floats). On failure the item keeps the error,
 * which is reported once, and false is returned. */
static bool prepare(const run_options *o, run_state *st, size_t i, float *dst)
{
    item *it = &st->items[i];
    if (it->error)
        return false;
    if (it->input) {
        memcpy(dst, it->input, st->per * sizeof(float));
        return true;
    }
    ckpt_error err = {0};
    ckpt_image img;
    int rc = ckpt_image_load(it->name, NULL, &img, &err);
    if (rc == CKPT_OK) {
        rc = ckpt_image_preprocess(&img, (int)o->resize, (int)o->crop, dst,
                                   st->per * sizeof(float), &err);
        ckpt_image_free(&img);
    }
    if (rc == CKPT_OK)
        return true;
    it->error = strdup(err.message[0] ? err.message : ckpt_status_str(err.status));
    if (!it->error)
        out_of_memory();
    it->status = ckpt_status_name(err.status);
    st->image_failed = true;
    cli_progress_clear(&st->progress);
    cli_error_ckpt(it->name, &err);
    return false;
}

/* The inputs: an .npy array, or the images, which are read when their batch runs (or all at
 * once for --save-input, which then also feeds the model). */
static int gather_inputs(const run_options *o, run_state *st)
{
    if (o->input_npy) {
        int rc = gather_npy(o, st);
        if (rc >= 0)
            return rc;
    } else {
        char **paths, **errors;
        size_t n;
        int rc = cli_inputs_list(&o->in, o->images, o->n_images, cli_image_exts, &paths,
                                 &errors, &n);
        if (rc >= 0)
            return rc;
        if (n > RUN_MAX_IMAGES) {
            cli_inputs_free(paths, errors, n);
            return cli_error(NULL, "%zu images, more than %d per command; split them with "
                             "--shard I/N", n, RUN_MAX_IMAGES);
        }
        st->n_items = n;
        st->in_h = st->in_w = (int)o->crop;
        st->per = (size_t)3 * (size_t)o->crop * (size_t)o->crop;
        st->items = alloc_array(st->n_items, sizeof *st->items);
        memset(st->items, 0, st->n_items * sizeof *st->items);
        for (size_t i = 0; i < st->n_items; i++) {
            st->items[i].owned_name = paths[i];
            st->items[i].name = paths[i];
            if (errors[i]) { /* an unreadable directory */
                st->items[i].error = errors[i];
                st->items[i].status = "error";
                st->image_failed = true;
                cli_error(paths[i], "%s", errors[i]);
            }
        }
        free(paths);
        free(errors);
    }
    if (!o->save_input)
        return -1;
    size_t n_ok = 0;
    st->saved = alloc_array(st->n_items, st->per * sizeof(float)); /* per <= 3 * 65535^2 */
    for (size_t i = 0; i < st->n_items; i++) {
        float *dst = st->saved + n_ok * st->per;
        if (prepare(o, st, i, dst)) {
            st->items[i].input = dst;
            n_ok++;
        }
    }
    int64_t shape[4] = {(int64_t)n_ok, 3, st->in_h, st->in_w};
    ckpt_error err = {0};
    if (ckpt_npy_write(o->save_input, st->saved, 4, shape, &err) != CKPT_OK)
        return cli_error_ckpt(o->save_input, &err);
    return -1;
}

/* ---- 5. the model ---------------------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

/* Built once, for the input size; the checkpoint is not needed after this. */
static int load_model(const run_options *o, run_state *st)
{
    const ckpt_sd_report *r = o->l.r;
    ckpt_model_options mo = {0};
    mo.backend = (ckpt_backend)o->backend;
    mo.threads = (int)o->threads;
    mo.height = st->in_h;
    mo.width = st->in_w;
    /* every input is in_h x in_w (cropped, or one array's size) */
    mo.flags = CKPT_MODEL_ONE_SIZE | (o->profile ? CKPT_MODEL_PROFILE : 0) |
               (o->bf16 ? CKPT_MODEL_BF16 : 0);
    ckpt_error err = {0};
    double t0 = now_ms();
    /* 0 classes: the backbone alone, what torchvision's model with fc = nn.Identity() is */
    int64_t classes = o->backbone ? 0 : r->num_classes;
    if (ckpt_model_load_sd(r->arch, classes, r->sd, &mo, &st->m, &err) != CKPT_OK)
        return cli_error_ckpt(o->l.path, &err);
    st->load_ms = now_ms() - t0;
    st->classes = ckpt_model_classes(st->m);
    st->nfeat = ckpt_model_features(st->m);
    return -1;
}

/* ---- 6. forward passes ------------------------------------------------------------------ */

typedef struct batch_buf {
    float *x, *logits, *features; /* batch x per, batch x classes, batch x nfeat */
    size_t *idx;                  /* the item of each batch position */
} batch_buf;

/* One pass over every readable item, in batches, writing each item's outputs at its index. */
static void emit_done(const run_options *o, run_state *st, size_t upto);

static int run_once(const run_options *o, run_state *st, batch_buf *b, float *logits,
                    float *features)
{
    bool first = logits == st->logits;
    size_t classes = (size_t)st->classes, nfeat = (size_t)st->nfeat;
    size_t i = 0;
    while (i < st->n_items) {
        size_t nb = 0;
        for (; i < st->n_items && nb < (size_t)o->batch; i++) {
            if (prepare(o, st, i, b->x + nb * st->per))
                b->idx[nb++] = i;
        }
        if (!nb)
            break;
        ckpt_error err = {0};
        if (ckpt_model_run(st->m, b->x, (int)nb, st->in_h, st->in_w, b->logits, b->features,
                           &err) != CKPT_OK)
            return cli_error_ckpt(o->l.path, &err);
        for (size_t j = 0; j < nb; j++) {
            memcpy(logits + b->idx[j] * classes, b->logits + j * classes,
                   classes * sizeof(float));
            memcpy(features + b->idx[j] * nfeat, b->features + j * nfeat,
                   nfeat * sizeof(float));
        }
        if (first) {
            emit_done(o, st, i);
            cli_progress_update(&st->progress, i, "images");
        }
    }
    if (first)
        emit_done(o, st, st->n_items);
    return -1;
}

/* The first run's outputs stay in st; every further run (--repeat) is compared bit for bit. */
static int forward(const run_options *o, run_state *st)
{
    size_t n = st->n_items, classes = (size_t)st->classes, nfeat = (size_t)st->nfeat;
    size_t batch = (size_t)o->batch;
    batch_buf b;
    b.x = alloc_array(batch, st->per * sizeof(float));
    b.logits = alloc_array(batch, classes * sizeof(float));
    b.features = alloc_array(batch, nfeat * sizeof(float));
    b.idx = alloc_array(batch, sizeof *b.idx);
    st->logits = alloc_array(n, classes * sizeof(float));
    st->features = alloc_array(n, nfeat * sizeof(float));
    float *again = o->repeat > 1 ? alloc_array(n, classes * sizeof(float)) : NULL;
    float *again_f = o->repeat > 1 ? alloc_array(n, nfeat * sizeof(float)) : NULL;
    double t0 = now_ms();
    int rc = run_once(o, st, &b, st->logits, st->features);
    st->forward_ms = now_ms() - t0;
    for (long run = 1; rc < 0 && run < o->repeat; run++) {
        rc = run_once(o, st, &b, again, again_f);
        bool same = true;
        for (size_t j = 0; rc < 0 && j < n; j++) {
            if (!st->items[j].error &&
                (memcmp(st->logits + j * classes, again + j * classes,
                        classes * sizeof(float)) ||
                 memcmp(st->features + j * nfeat, again_f + j * nfeat, nfeat * sizeof(float))))
                same = false;
        }
        st->differing_runs += !same;
    }
    free(again);
    free(again_f);
    free(b.x);
    free(b.logits);
    free(b.features);
    free(b.idx);
    return rc;
}

/* --profile: where the time went, on stderr (human output; may change). */
static void print_profile(const run_options *o, const run_state *st)
{
    ckpt_model_profile p;
    ckpt_model_get_profile(st->m, &p);
    int threads = ckpt_model_threads(st->m);
    fprintf(stderr, "profile: %s, %s backend, %s, %d thread%s, %dx%d\n",
            ckpt_arch_name(o->l.r->arch), ckpt_backend_name(ckpt_model_backend(st->m)),
            o->bf16 ? "bf16" : "fp32", threads, threads == 1 ? "" : "s", st->in_w, st->in_h);
    fprintf(stderr, "  model load          %8.1f ms\n", st->load_ms);
    if (ckpt_model_backend(st->m) == CKPT_BACKEND_DNNL) {
        fprintf(stderr, "    build primitives  %8.1f ms\n", p.build_ms);
        fprintf(stderr, "    weights           %8.1f ms wall: read + fold BN %.1f ms on one "
                "thread, overlapped with the reorders over %d thread%s (Winograd transforms "
                "%.1f ms, blocked layouts %.1f ms of CPU)\n", p.reorder_ms, p.read_fold_ms,
                threads, threads == 1 ? "" : "s", p.winograd_cpu_ms, p.blocked_cpu_ms);
    } else {
        fprintf(stderr, "    read + fold BN    %8.1f ms\n", p.read_fold_ms);
    }
    fprintf(stderr, "  first forward       %8.1f ms (batch of %d)\n", p.first_run_ms,
            p.first_run_images);
    fprintf(stderr, "  all forwards        %8.1f ms (%zu inputs x %ld run%s", st->forward_ms,
            st->n_items, o->repeat, o->repeat == 1 ? "" : "s");
    if (ckpt_model_backend(st->m) == CKPT_BACKEND_DNNL)
        fprintf(stderr, ", batched primitives for up to %d image%s at once", p.largest_group,
                p.largest_group == 1 ? "" : "s");
    fprintf(stderr, ", with a wait per layer for the table)\n");
    ckpt_model_layer ly;
    if (!ckpt_model_get_layer(st->m, 0, &ly))
        return;
    /* the ceiling, measured after the runs so it does not warm anything up for them */
    double peak = ckpt_peak_gflops(threads, o->bf16);
    if (peak > 0)
        fprintf(stderr, "  peak                %8.1f GFLOP/s (%s on %d thread%s, measured now; "
                "Winograd layers, counted by their direct FLOPs, can pass 100 %%)\n", peak,
                o->bf16 ? "bf16 dot products" : "fp32 multiply-adds", threads,
                threads == 1 ? "" : "s");
    fprintf(stderr, "  per image, mean of %lld: %-22s %-28s %9s %9s%s\n", (long long)p.images,
            "layer", "implementation", "ms", "GFLOP/s", peak > 0 ? "   % peak" : "");
    double total = 0, flops = 0;
    for (size_t i = 0; ckpt_model_get_layer(st->m, i, &ly); i++) {
        total += ly.ms;
        flops += ly.gflop;
        fprintf(stderr, "    %-22s %-28s %9.3f", ly.name, ly.impl, ly.ms);
        if (ly.gflop > 0 && ly.ms > 0) {
            double rate = ly.gflop / (ly.ms * 1e-3);
            fprintf(stderr, " %9.1f", rate);
            if (peak > 0)
                fprintf(stderr, " %8.0f", 100 * rate / peak);
        }
        fputc('\n', stderr);
    }
    double rate = total > 0 ? flops / (total * 1e-3) : 0.0;
    fprintf(stderr, "    %-22s %-28s %9.3f %9.1f", "total (without the head)", "", total, rate);
    if (peak > 0)
        fprintf(stderr, " %8.0f", 100 * rate / peak);
    fputc('\n', stderr);
}

/* ---- 7. results -------------------------------------------------------------------------- */

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

static const char *label_of(const run_state *st, int64_t index)
{
    return (uint64_t)index < st->n_names ? st->names[index] : NULL;
}

static json_t *float_array(const float *v, int64_t n)
{
    json_t *a = json_array();
    for (int64_t c = 0; c < n; c++)
        json_array_append_new(a, jfloat(v[c]));
    return a;
}

static json_t *model_json(const run_options *o, const run_state *st)
{
    const ckpt_sd_report *r = o->l.r;
    json_t *model = json_object();
    json_object_set_new(model, "file", json_string(o->l.path));
    json_t *sdp = json_array();
    for (size_t i = 0; i < r->chosen->path_len; i++)
        json_array_append_new(sdp, cli_json_str(r->chosen->path[i], strlen(r->chosen->path[i])));
    json_object_set_new(model, "state_dict_path", sdp);
    json_object_set_new(model, "prefix", cli_json_str(r->prefix, strlen(r->prefix)));
    json_object_set_new(model, "arch", json_string(ckpt_arch_name(r->arch)));
    json_object_set_new(model, "num_classes", json_integer(st->classes)); /* 0: backbone */
    json_object_set_new(model, "features", json_integer(st->nfeat));
    json_object_set_new(model, "backend",
                        json_string(ckpt_backend_name(ckpt_model_backend(st->m))));
    json_object_set_new(model, "threads", json_integer(ckpt_model_threads(st->m)));
    json_object_set_new(model, "labels", st->names_from ? cli_json_cstr(st->names_from)
                                                        : json_null());
    json_object_set_new(model, "precision", json_string(o->bf16 ? "bf16" : "fp32"));
    if (o->input_npy) {
        json_object_set_new(model, "input", json_string(o->input_npy));
    } else {
        json_object_set_new(model, "resize", json_integer(o->resize));
        json_object_set_new(model, "crop", json_integer(o->crop));
    }
    return model;
}

/* One image's result: its top k (ti, prob: scratch of kk and classes entries), logits and
 * features when asked; for an image that failed, the error. */
static void item_json(json_t *res, const run_options *o, const run_state *st, size_t i,
                      int64_t *ti, double *prob)
{
    int kk = (int)(o->topk < st->classes ? o->topk : st->classes);
    const item *it = &st->items[i];
    const float *lg = st->logits + i * (size_t)st->classes;
    const float *ft = st->features + i * (size_t)st->nfeat;
    if (it->error) {
        json_object_set_new(res, "error", cli_json_str(it->error, strlen(it->error)));
        return;
    }
    if (o->backbone) {
        json_object_set_new(res, "features", float_array(ft, st->nfeat));
        return;
    }
    topk(lg, st->classes, kk, ti);
    softmax(lg, st->classes, prob);
    json_t *tk = json_array();
    for (int j = 0; j < kk; j++) {
        json_t *e = json_object();
        const char *label = label_of(st, ti[j]);
        json_object_set_new(e, "index", json_integer(ti[j]));
        json_object_set_new(e, "label", label ? cli_json_str(label, strlen(label))
                                              : json_null());
        json_object_set_new(e, "prob", jfloat(prob[ti[j]]));
        json_array_append_new(tk, e);
    }
    json_object_set_new(res, "topk", tk);
    if (o->logits)
        json_object_set_new(res, "logits", float_array(lg, st->classes));
    if (o->features)
        json_object_set_new(res, "features", float_array(ft, st->nfeat));
}

/* --jsonl: the records of items [st->emitted, upto), each self-contained (the model too), or
 * {"file", "error": {"status", "message"}} for an image that could not be read. */
static void emit_done(const run_options *o, run_state *st, size_t upto)
{
    if (!o->in.jsonl)
        return;
    int kk = (int)(o->topk < st->classes ? o->topk : st->classes);
    int64_t *ti = alloc_array((size_t)kk, sizeof *ti);
    double *prob = alloc_array((size_t)st->classes, sizeof *prob);
    cli_progress_clear(&st->progress);
    for (; st->emitted < upto; st->emitted++) {
        const item *it = &st->items[st->emitted];
        json_t *rec = json_object();
        json_object_set_new(rec, "file", cli_json_str(it->name, strlen(it->name)));
        if (it->error) {
            json_t *e = json_object();
            json_object_set_new(e, "status", json_string(it->status ? it->status : "error"));
            json_object_set_new(e, "message", cli_json_str(it->error, strlen(it->error)));
            json_object_set_new(rec, "error", e);
        } else {
            json_object_set_new(rec, "image", cli_json_str(it->name, strlen(it->name)));
            item_json(rec, o, st, st->emitted, ti, prob);
            json_object_set_new(rec, "model", model_json(o, st));
        }
        cli_emit_json(it->name, rec);
    }
    free(ti);
    free(prob);
}

static json_t *results_json(const run_options *o, const run_state *st)
{
    int kk = (int)(o->topk < st->classes ? o->topk : st->classes);
    int64_t *ti = alloc_array((size_t)kk, sizeof *ti);
    double *prob = alloc_array((size_t)st->classes, sizeof *prob);
    json_t *doc = json_object();
    json_object_set_new(doc, "model", model_json(o, st));
    json_t *results = json_array();
    json_object_set_new(doc, "results", results);
    if (o->repeat > 1) {
        json_t *rep = json_object();
        json_object_set_new(rep, "runs", json_integer(o->repeat));
        json_object_set_new(rep, "bit_identical", json_boolean(st->differing_runs == 0));
        json_object_set_new(doc, "repeat", rep);
    }
    for (size_t i = 0; i < st->n_items; i++) {
        const item *it = &st->items[i];
        json_t *res = json_object();
        json_object_set_new(res, "image", cli_json_str(it->name, strlen(it->name)));
        json_array_append_new(results, res);
        item_json(res, o, st, i, ti, prob);
    }
    free(ti);
    free(prob);
    return doc;
}

static void put_floats(cli_sb *out, const char *what, const float *v, int64_t n)
{
    sb_puts(out, what);
    for (int64_t c = 0; c < n; c++) {
        sb_putc(out, ' ');
        cli_fmt_float(out, v[c]);
    }
    sb_putc(out, '\n');
}

/* A backbone's features in one line, six digits: "  features: 512 values, L2 norm 23.1, min 0,
 * max 3.2, mean 0.91 (--json for the vector)". NaN and infinities show in the norm and mean. */
static void features_summary(cli_sb *out, const float *v, int64_t n)
{
    double sq = 0, sum = 0, lo = INFINITY, hi = -INFINITY;
    for (int64_t c = 0; c < n; c++) {
        sq += (double)v[c] * v[c];
        sum += v[c];
        lo = v[c] < lo ? v[c] : lo;
        hi = v[c] > hi ? v[c] : hi;
    }
    sb_printf(out, "  features: %" PRId64 " values, L2 norm %.6g, min %.6g, max %.6g, mean %.6g",
              n, sqrt(sq), lo, hi, sum / (double)n);
    sb_puts(out, " (--json for the vector)\n");
}

static void results_human(cli_sb *out, const run_options *o, const run_state *st)
{
    const ckpt_sd_report *r = o->l.r;
    int kk = (int)(o->topk < st->classes ? o->topk : st->classes);
    int64_t *ti = alloc_array((size_t)kk, sizeof *ti);
    double *prob = alloc_array((size_t)st->classes, sizeof *prob);
    if (o->backbone)
        sb_printf(out, "%s: torchvision.models.%s() backbone (fc = nn.Identity(); %s) from ",
                  o->l.path, ckpt_arch_name(r->arch),
                  r->backbone ? "the file has no classifier" : "the file's head is not run");
    else
        sb_printf(out, "%s: torchvision.models.%s(num_classes=%" PRId64 ") from ", o->l.path,
                  ckpt_arch_name(r->arch), st->classes);
    cli_locate_where(out, r->chosen);
    if (r->prefix[0]) {
        sb_puts(out, " without '");
        sb_put_clean(out, r->prefix, strlen(r->prefix));
        sb_puts(out, "'");
    }
    int threads = ckpt_model_threads(st->m);
    sb_printf(out, ", %s backend, %d thread%s", ckpt_backend_name(ckpt_model_backend(st->m)),
              threads, threads == 1 ? "" : "s");
    if (st->names_from && strcmp(st->names_from, "imagenet1k") == 0)
        sb_puts(out, ", ImageNet-1k class names (torchvision's; --labels none: indices only)");
    sb_putc(out, '\n');
    for (size_t i = 0; i < st->n_items; i++) {
        const item *it = &st->items[i];
        const float *lg = st->logits + i * (size_t)st->classes;
        if (it->error)
            continue; /* already reported on stderr */
        sb_put_clean(out, it->name, strlen(it->name));
        sb_puts(out, "\n");
        if (o->backbone) {
            features_summary(out, st->features + i * (size_t)st->nfeat, st->nfeat);
            continue;
        }
        topk(lg, st->classes, kk, ti);
        softmax(lg, st->classes, prob);
        for (int j = 0; j < kk; j++) {
            const char *label = label_of(st, ti[j]);
            sb_printf(out, "  %7.3f%%  %5" PRId64 "  ", 100.0 * prob[ti[j]], ti[j]);
            if (label)
                sb_put_clean(out, label, strlen(label));
            sb_putc(out, '\n');
        }
        if (o->logits)
            put_floats(out, "  logits:", lg, st->classes);
        if (o->features)
            put_floats(out, "  features:", st->features + i * (size_t)st->nfeat, st->nfeat);
    }
    if (o->repeat > 1)
        sb_printf(out, "%ld runs: %s\n", o->repeat,
                  st->differing_runs ? "OUTPUTS DIFFER between runs"
                                     : "every output bit-identical");
    free(ti);
    free(prob);
}

static int print_results(const run_options *o, const run_state *st)
{
    int rc;
    if (o->in.jsonl) {
        rc = CLI_EXIT_OK; /* every record is out already */
    } else if (o->json) {
        rc = cli_emit_json(o->l.path, results_json(o, st));
    } else {
        cli_sb out = {0};
        results_human(&out, o, st);
        cli_write_stdout(out.buf, out.len);
        sb_free(&out);
        rc = CLI_EXIT_OK;
    }
    if (rc == CLI_EXIT_OK && st->differing_runs)
        rc = CLI_EXIT_FINDING;
    if (rc == CLI_EXIT_OK && st->image_failed)
        rc = CLI_EXIT_ERROR;
    return rc;
}

/* ---- the command ------------------------------------------------------------------------- */

int cmd_run(int argc, char **argv, const cli_command *self)
{
    run_options o;
    run_state st;
    memset(&o, 0, sizeof o);
    memset(&st, 0, sizeof st);
    const char **pos = alloc_array(2 + RUN_MAX_IMAGES, sizeof *pos); /* FILE, the images */
    o.images = pos;
    int rc = parse_options(self, argc, argv, &o);
    if (rc < 0 && o.labels && strcmp(o.labels, "none") != 0)
        rc = read_labels(o.labels, &st.labels, &st.n_labels);
    if (rc < 0)
        rc = locate_weights(self, &o);
    if (rc < 0) {
        pick_names(&o, &st);
        rc = gather_inputs(&o, &st);
    }
    if (rc < 0)
        rc = load_model(&o, &st);
    if (rc < 0) {
        cli_jsonl = o.in.jsonl;
        cli_progress_start(&st.progress, &o.in, st.n_items);
        rc = forward(&o, &st);
        cli_progress_clear(&st.progress);
    }
    if (rc < 0 && o.profile)
        print_profile(&o, &st);
    if (rc < 0)
        rc = print_results(&o, &st);

    ckpt_model_free(st.m);
    for (size_t i = 0; i < st.n_items; i++) {
        free(st.items[i].error);
        free(st.items[i].owned_name);
    }
    free(st.items);
    free(st.saved);
    if (st.npy.data)
        ckpt_npy_free(&st.npy);
    free(st.logits);
    free(st.features);
    for (size_t i = 0; i < st.n_labels; i++)
        free(st.labels[i]);
    free(st.labels);
    free(pos);
    cli_locate_close(&o.l);
    return rc;
}
