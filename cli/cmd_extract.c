/*
 * cmd_extract.c - `ckpt extract FILE -o OUT`: write the weights alone, as a clean .pth or
 * .safetensors file.
 *
 * The state dict is found and unwrapped by ckpt_sd_check, exactly as `ckpt check` does it,
 * and written only if model.load_state_dict(sd, strict=True) would accept it (unless
 * --no-check): in the model's key order, or the file's when there is no model. docs/EXTRACT.md
 * has the details. Exit 0: written; 1: refused because the strict load would fail (nothing
 * written, PyTorch's error and ckpt's explanation on stdout); 2: error (nothing written).
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The command table (commands.h) declares these once extract is listed there. */
int cmd_extract(int argc, char **argv, const cli_command *self);
extern const char cmd_extract_help[];

#define EXTRACT_BAR_MIN_BYTES 100000000ull /* a progress bar for outputs larger than this */
#define EXTRACT_BAR_EVERY_NS 100000000ll   /* redraw at most every 0.1 s */
#define EXTRACT_MAX_WARNINGS 5             /* lines of one kind of warning, then a count */

const char cmd_extract_help[] =
    "Finds the state dict as 'ckpt check' does (under 'model', 'state_dict', ... at any depth,\n"
    "wrapper prefixes such as 'module.' removed), checks that model.load_state_dict(sd,\n"
    "strict=True) would accept it, and writes only its tensors: a .pth that loads with\n"
    "torch.load(OUT, weights_only=True) from PyTorch 1.13 on, or a .safetensors file. The\n"
    "output appears complete or not at all; an existing OUT is replaced only with --force, and\n"
    "never when it is the input.\n"
    "\n"
    "Options:\n"
    "  -o, --output OUT   the file to write; its extension picks the format (.pth .pt .bin\n"
    "                     .ckpt: PyTorch, .safetensors: safetensors)\n"
    "  --format F         pth or safetensors, whatever OUT's extension\n"
    "  --dtype D          float32, float16 or bfloat16: convert every floating tensor as\n"
    "                     torch's .float()/.half()/.bfloat16() do; integers stay as they are\n"
    "  --key PATH         where the state dict is, as dict keys/list indexes: model/ema\n"
    "  --strip-prefix P   remove P from the keys instead of guessing ('' removes nothing)\n"
    "  --arch NAME        check against torchvision.models.NAME; auto (default): recognise it\n"
    "  --num-classes N    the model's class count (default: from the head's shape, or 1000)\n"
    "  --against T        check against the state dict in checkpoint T (any architecture)\n"
    "  --no-check         write even when the strict load would fail or there is no model to\n"
    "                     check against (the file's own key order is kept then)\n"
    "  --force            replace OUT if it exists\n"
    "  --json             one JSON document on stdout (schema in docs/EXTRACT.md)\n"
    "  --jsonl            the same (one input, one record on one line)\n"
    "  --max-expanded BYTES  refuse to write more than this: broadcast views are written\n"
    "                     whole (default: 64 times the input's size, at least 2G; K, M, G)\n"
    "\n"
    "A state dict that is none of the known architectures needs --against (a checkpoint of\n"
    "its model) or --no-check.\n"
    "\n"
    "Examples:\n"
    "  ckpt extract rsp-resnet-50-ckpt.pth -o resnet50.safetensors\n"
    "  ckpt extract train.pt -o model.pth --key model_ema --dtype float16\n"
    "  ckpt extract vit.pt -o vit.safetensors --no-check\n";


static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ckpt['model'] or ckpt */
static void put_model(cli_sb *out, const ckpt_sd_report *r, const char *against)
{
    if (r->arch) {
        sb_printf(out, "torchvision.models.%s(num_classes=%" PRId64 ")", ckpt_arch_name(r->arch),
                  r->num_classes);
    } else {
        sb_puts(out, "the model of ");
        sb_put_clean(out, against, strlen(against));
    }
}

/* ---- progress and interruption ------------------------------------------------------- */

static volatile sig_atomic_t g_signal; /* the signal that asked us to stop, or 0 */

static void on_signal(int sig)
{
    g_signal = sig;
}

typedef struct progress {
    const char *out;
    bool bar;
    bool drawn;
    struct timespec start, last;
} progress;

static int64_t elapsed_ns(const struct timespec *a, const struct timespec *b)
{
    return (int64_t)(b->tv_sec - a->tv_sec) * 1000000000ll + (b->tv_nsec - a->tv_nsec);
}

static int on_progress(void *ud, uint64_t done, uint64_t total)
{
    progress *p = ud;
    if (g_signal)
        return 1; /* the library removes the temporary file */
    if (!p->bar || total < EXTRACT_BAR_MIN_BYTES)
        return 0;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (p->drawn && done < total && elapsed_ns(&p->last, &now) < EXTRACT_BAR_EVERY_NS)
        return 0;
    p->last = now;
    p->drawn = true;
    double secs = (double)elapsed_ns(&p->start, &now) / 1e9;
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    int width = 30, fill = pct * width / 100;
    char bar[31];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\rckpt: writing %s [%s] %3d%% %.1f/%.1f MB", base_name(p->out), bar, pct,
            (double)done / 1e6, (double)total / 1e6);
    if (secs > 0.05)
        fprintf(stderr, " %.0f MB/s", (double)done / 1e6 / secs);
    fputs("\033[K", stderr);
    fflush(stderr);
    return 0;
}

static void progress_end(progress *p)
{
    if (p->drawn) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
}

/* ---- the state dict to write ----------------------------------------------------------- */

static const ckpt_sd *g_sort_sd; /* for qsort's comparator: C11 has no context argument */

static int cmp_key(const void *a, const void *b)
{
    return strcmp(g_sort_sd->entries[*(const size_t *)a].key,
                  g_sort_sd->entries[*(const size_t *)b].key);
}

/* sd's tensor entries in the model's key order (the model's keys first, *n_model of them,
 * then the others in sd's order); non-tensor values go to dropped. Without a model: sd's
 * order. */
static void order_entries(const ckpt_sd *sd, const ckpt_sd_model *m, ckpt_sd_entry *out,
                          size_t *n_out, size_t *n_model, const char **dropped,
                          size_t *n_dropped)
{
    size_t n = sd->n_entries, k = 0, d = 0;
    bool *used = cli_xrealloc(NULL, n + 1);
    memset(used, 0, n + 1);
    if (m) {
        size_t *ix = cli_xrealloc(NULL, (n + 1) * sizeof *ix);
        for (size_t i = 0; i < n; i++)
            ix[i] = i;
        g_sort_sd = sd;
        qsort(ix, n, sizeof *ix, cmp_key);
        for (size_t j = 0; j < m->sd.n_entries; j++) {
            const char *key = m->sd.entries[j].key;
            size_t lo = 0, hi = n;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(sd->entries[ix[mid]].key, key);
                if (c == 0) {
                    lo = mid;
                    break;
                }
                if (c < 0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo < n && !strcmp(sd->entries[ix[lo]].key, key) && !used[ix[lo]] &&
                sd->entries[ix[lo]].is_tensor) {
                used[ix[lo]] = true;
                out[k++] = sd->entries[ix[lo]];
            }
        }
        free(ix);
    }
    *n_model = k;
    for (size_t i = 0; i < n; i++) {
        if (used[i])
            continue;
        if (sd->entries[i].is_tensor)
            out[k++] = sd->entries[i];
        else
            dropped[d++] = sd->entries[i].key;
    }
    free(used);
    *n_out = k;
    *n_dropped = d;
}

/* ---- output ---------------------------------------------------------------------------- */

/* check's report, then what extract did about it. */
static void explain_refusal(cli_sb *out, const cli_locate *l)
{
    cli_locate_human(out, l);
    sb_puts(out, "\nNothing was written. Fix the options (--arch, --num-classes, --key, "
                 "--strip-prefix, --against), or pass --no-check to write it anyway.\n");
}

typedef struct outcome {
    const char *path, *out, *against;
    ckpt_write_format format;
    const char *dtype;         /* NULL: kept */
    const ckpt_sd_report *r;
    bool checked, written;
    bool backbone; /* written without its classifier */
    const ckpt_write_report *w;
    const char **dropped;
    size_t n_dropped;
} outcome;

static json_t *to_json(const outcome *o)
{
    const ckpt_sd_report *r = o->r;
    const ckpt_sd_verdict *v = r->verdict;
    json_t *doc = json_object();
    json_object_set_new(doc, "file", cli_json_cstr(o->path));
    json_object_set_new(doc, "output", cli_json_cstr(o->out));
    json_object_set_new(doc, "format", json_string(ckpt_write_format_name(o->format)));
    json_object_set_new(doc, "written", json_boolean(o->written));
    json_object_set_new(doc, "state_dict_path", cli_json_strs(r->chosen->path, r->chosen->path_len));
    json_object_set_new(doc, "prefix", cli_json_cstr(r->prefix));
    json_object_set_new(doc, "arch", r->arch ? json_string(ckpt_arch_name(r->arch)) : json_null());
    json_object_set_new(doc, "num_classes",
                        r->arch ? json_integer((json_int_t)r->num_classes) : json_null());
    json_object_set_new(doc, "against", cli_json_cstr(o->against));
    json_object_set_new(doc, "checked", json_boolean(o->checked));
    json_object_set_new(doc, "ok", v ? json_boolean(v->ok) : json_null());
    json_object_set_new(doc, "missing", v ? cli_json_strs(v->missing, v->n_missing) : json_array());
    json_object_set_new(doc, "unexpected",
                        v ? cli_json_strs(v->unexpected, v->n_unexpected) : json_array());
    json_object_set_new(doc, "error_text", cli_json_cstr(v ? v->message : NULL));
    json_object_set_new(doc, "dtype", cli_json_cstr(o->dtype));
    const ckpt_write_report *w = o->w;
    json_object_set_new(doc, "tensors", json_integer(w ? (json_int_t)w->n_tensors : 0));
    json_object_set_new(doc, "records", json_integer(w ? (json_int_t)w->n_records : 0));
    json_object_set_new(doc, "bytes", json_integer(w ? (json_int_t)w->file_bytes : 0));
    json_object_set_new(doc, "data_bytes", json_integer(w ? (json_int_t)w->data_bytes : 0));
    json_object_set_new(doc, "converted", json_integer(w ? (json_int_t)w->n_converted : 0));
    json_object_set_new(doc, "dropped", cli_json_strs(o->dropped, o->n_dropped));
    json_t *sh = json_array();
    for (size_t i = 0; w && i < w->n_shared; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "key", cli_json_cstr(w->shared[i].key));
        json_object_set_new(e, "with", cli_json_cstr(w->shared[i].with));
        json_array_append_new(sh, e);
    }
    json_object_set_new(doc, "shared", sh);
    return doc;
}

static void summary(cli_sb *out, const outcome *o)
{
    const ckpt_sd_report *r = o->r;
    const ckpt_write_report *w = o->w;
    sb_puts(out, "wrote ");
    sb_put_clean(out, o->out, strlen(o->out));
    sb_printf(out, ": %zu tensor%s, ", w->n_tensors, w->n_tensors == 1 ? "" : "s");
    cli_fmt_bytes(out, w->file_bytes);
    sb_printf(out, " (%s", ckpt_write_format_name(o->format));
    if (o->dtype)
        sb_printf(out, ", %zu converted to %s", w->n_converted, o->dtype);
    sb_puts(out, ")\n  from ");
    cli_locate_where(out, r->chosen);
    if (r->prefix[0]) {
        sb_puts(out, " without '");
        sb_put_clean(out, r->prefix, strlen(r->prefix));
        sb_puts(out, "'");
    }
    if (r->verdict && o->backbone) {
        sb_printf(out, "; the backbone of torchvision.models.%s(): loads with strict=False, "
                  "'%s' and '%s' missing", ckpt_arch_name(r->arch),
                  ckpt_arch_head(r->arch, false), ckpt_arch_head(r->arch, true));
    } else if (r->verdict) {
        sb_puts(out, r->verdict->ok ? "; loads into " : "; does NOT load into ");
        put_model(out, r, o->against);
        sb_puts(out, " with strict=True");
        if (!o->checked)
            sb_puts(out, " (written with --no-check)");
    } else {
        sb_puts(out, "; not checked (no model to check against)");
    }
    sb_putc(out, '\n');
}

/* -o OUT is the one short option: spell it --output for the shared parser. */
static char **long_options(int argc, char **argv)
{
    char **v = cli_xrealloc(NULL, ((size_t)argc + 1) * sizeof *v);
    bool done = false;
    for (int i = 0; i < argc; i++) {
        v[i] = argv[i];
        if (done || i == 0)
            continue;
        if (!strcmp(argv[i], "--"))
            done = true;
        else if (!strcmp(argv[i], "-o"))
            v[i] = "--output";
    }
    v[argc] = NULL;
    return v;
}

int cmd_extract(int argc, char **argv, const cli_command *self)
{
    bool json = false, force = false, no_check = false;
    const char *out = NULL, *format = NULL, *dtype = NULL, *max_expanded = NULL;
    cli_locate l = {0};
    const cli_opt opts[] = {
        {"output", "OUT", NULL, &out},
        {"format", "F", NULL, &format},
        {"dtype", "D", NULL, &dtype},
        CLI_LOCATE_OPTS(&l),
        {"no-check", NULL, &no_check, NULL},
        {"force", NULL, &force, NULL},
        {"json", NULL, &json, NULL},
        {"jsonl", NULL, &json, NULL}, /* one input, so one record: the same */
        {"max-expanded", "BYTES", NULL, &max_expanded},
        {NULL, NULL, NULL, NULL},
    };
    const char *pos[1];
    int npos;
    char **args = long_options(argc, argv);
    int rc = cli_parse_args(self, argc, args, opts, pos, 1, 1, &npos);
    free(args);
    if (rc >= 0)
        return rc;
    const char *path = pos[0];
    if (!out || !*out)
        return cli_usage_error(self, "no output file given (-o OUT)");
    uint64_t unused;
    if (max_expanded && !cli_parse_size(max_expanded, &unused))
        return cli_usage_error(self, "--max-expanded wants a byte count (e.g. 8G), not '%s'",
                               max_expanded);
    int fmt = format ? ckpt_write_format_from_name(format) : ckpt_write_format_for_path(out);
    if (fmt < 0)
        return format ? cli_usage_error(self, "unknown format '%s' (pth, safetensors)", format)
                      : cli_usage_error(self, "cannot tell the format from '%s': name it .pth, "
                                        ".pt or .safetensors, or pass --format", out);
    ckpt_write_options wo = {0};
    wo.format = (ckpt_write_format)fmt;
    wo.force = force;
    /* test hook (docs/EXTRACT.md): ZIP64 records on small files */
    const char *z64 = getenv("CKPT_TEST_ZIP64_FROM");
    if (z64 && *z64)
        wo.zip64_from = strtoull(z64, NULL, 10);
    if (dtype) {
        int dt = ckpt_dtype_from_name(dtype);
        if (dt != CKPT_DT_FLOAT32 && dt != CKPT_DT_FLOAT16 && dt != CKPT_DT_BFLOAT16)
            return cli_usage_error(self, "--dtype takes float32, float16 or bfloat16, not '%s'",
                                   dtype);
        wo.convert = true;
        wo.dtype = (ckpt_dtype)dt;
        dtype = ckpt_dtype_name(wo.dtype);
    }
    ckpt_write_report *wr = NULL;
    ckpt_sd_entry *entries = NULL;
    const char **dropped = NULL;
    ckpt_error err = {0};
    outcome oc = {0};
    l.allow_no_model = true;
    rc = cli_locate_open(self, &l, path, false);
    if (rc >= 0)
        goto done;
    rc = CLI_EXIT_OK;
    const char *against = l.against;
    const ckpt_sd_report *r = l.r;
    oc.path = path;
    oc.out = out;
    oc.against = against;
    oc.format = wo.format;
    oc.dtype = dtype;
    oc.r = r;
    oc.checked = !no_check;
    const char *not_tv = no_check ? NULL : cli_locate_not_torchvision(&l);
    if (not_tv) {
        rc = cli_error(path, "%s%s%s holds %s; or pass --no-check to write it unchecked",
                       r->chosen->path_len ? "'" : "",
                       r->chosen->path_len ? r->chosen->path_str : "the state dict",
                       r->chosen->path_len ? "'" : "", not_tv);
        goto done;
    }
    if (!r->verdict && !no_check) {
        const char *where = r->chosen->path_len ? r->chosen->path_str : NULL;
        rc = cli_error(path, "%s%s%s (%zu tensor%s) matches none of the %zu known architectures, "
                       "so there is no model to check it against: pass --against a checkpoint "
                       "of the model, --arch NAME, or --no-check to write it unchecked",
                       where ? "'" : "", where ? where : "the state dict", where ? "'" : "",
                       r->chosen->n_tensors, r->chosen->n_tensors == 1 ? "" : "s",
                       ckpt_arch_count());
        goto done;
    }
    /* written alone: its head is not a classifier; --no-check writes the state dict whole
     * (a Sequential head that the caller builds, as ckpt check's Python does) */
    bool backbone = !no_check && r->backbone;
    if (r->verdict && !r->verdict->ok && !backbone && !no_check) {
        if (json) {
            rc = cli_emit_json(path, to_json(&oc));
        } else {
            cli_sb text = {0};
            explain_refusal(&text, &l);
            cli_write_stdout(text.buf, text.len);
            sb_free(&text);
            rc = CLI_EXIT_OK;
        }
        if (rc == CLI_EXIT_OK)
            rc = CLI_EXIT_FINDING;
        goto done;
    }

    const ckpt_sd *sd = r->sd;
    entries = cli_xrealloc(NULL, (sd->n_entries + 1) * sizeof *entries);
    dropped = cli_xrealloc(NULL, (sd->n_entries + 1) * sizeof *dropped);
    ckpt_sd view = *sd;
    view.entries = entries;
    size_t n_model;
    order_entries(sd, r->model, entries, &view.n_entries, &n_model, dropped, &oc.n_dropped);
    oc.backbone = backbone;
    if (backbone) { /* the model's keys but its classifier (an empty one): no other heads */
        const char *hw = ckpt_arch_head(r->arch, false), *hb = ckpt_arch_head(r->arch, true);
        size_t k = 0;
        for (size_t i = 0; i < n_model; i++)
            if (strcmp(entries[i].key, hw) && strcmp(entries[i].key, hb))
                entries[k++] = entries[i];
        view.n_entries = k;
    }
    /* Every tensor is written contiguous: a broadcast view costs its full logical size. */
    rc = cli_check_expanded(path, cli_sd_expanded_bytes(&view, wo.convert ? wo.dtype
                                                                         : CKPT_DT_COUNT),
                            ckpt_file_size(l.f), CLI_EXPAND_MIN_WRITE, max_expanded,
                            "; nothing written");
    if (rc >= 0)
        goto done;
    rc = CLI_EXIT_OK;
    oc.dropped = dropped;
    for (size_t i = 0; i < oc.n_dropped; i++) {
        if (i == EXTRACT_MAX_WARNINGS) {
            cli_warn(path, "and %zu more value%s that %s not tensors %s left out",
                     oc.n_dropped - i, oc.n_dropped - i == 1 ? "" : "s",
                     oc.n_dropped - i == 1 ? "is" : "are",
                     oc.n_dropped - i == 1 ? "was" : "were");
            break;
        }
        const ckpt_value *v = ckpt_dict_get(r->chosen->dict, dropped[i]);
        cli_warn(path, "'%s' is %s, not a tensor: left out", dropped[i],
                 v ? ckpt_type_name(v->type) : "not a tensor");
    }
    if (backbone)
        cli_warn(path, "a backbone without its classifier: load the file with "
                       "load_state_dict(sd, strict=False); exactly '%s' and '%s' are missing",
                 ckpt_arch_head(r->arch, false), ckpt_arch_head(r->arch, true));
    else if (r->verdict && !r->verdict->ok)
        cli_warn(path, "written with --no-check although model.load_state_dict(sd, "
                       "strict=True) would fail (%zu missing, %zu unexpected, %zu mismatched)",
                 r->verdict->n_missing, r->verdict->n_unexpected, r->verdict->n_mismatch);

    /* where the weights came from, for safetensors' __metadata__ */
    char nc_text[24] = "";
    const char *md[24];
    size_t nm = 0;
    md[nm++] = "format";
    md[nm++] = "pt";
    md[nm++] = "source";
    md[nm++] = base_name(path);
    md[nm++] = "state_dict_key";
    md[nm++] = r->chosen->path_str;
    md[nm++] = "stripped_prefix";
    md[nm++] = r->prefix;
    if (r->arch) {
        snprintf(nc_text, sizeof nc_text, "%" PRId64, r->num_classes);
        md[nm++] = "arch";
        md[nm++] = ckpt_arch_name(r->arch);
        md[nm++] = "num_classes";
        md[nm++] = nc_text;
    }
    if (against) {
        md[nm++] = "against";
        md[nm++] = base_name(against);
    }
    if (dtype) {
        md[nm++] = "dtype";
        md[nm++] = dtype;
    }
    md[nm++] = "checked";
    md[nm++] = !r->verdict ? "no model" : r->verdict->ok ? "strict load ok" : "strict load fails";
    md[nm++] = "writer";
    md[nm++] = "ckpt " CKPT_VERSION_STRING;
    md[nm] = NULL;
    wo.metadata = md;
    const char *inputs[3] = {path, against, NULL};
    wo.inputs = inputs;

    progress pr = {0};
    pr.out = out;
    pr.bar = isatty(STDERR_FILENO);
    clock_gettime(CLOCK_MONOTONIC, &pr.start);
    wo.progress = on_progress;
    wo.progress_ud = &pr;
    struct sigaction sa = {0}, old_int, old_term, old_hup;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    g_signal = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    rc = ckpt_write_sd(out, &view, &wo, &wr, &err);
    progress_end(&pr);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    if (g_signal && rc != CKPT_OK) {
        int sig = g_signal;
        cli_error(out, "interrupted: nothing written");
        cli_locate_close(&l);
        free(entries);
        free(dropped);
        signal(sig, SIG_DFL);
        raise(sig);
        return 128 + sig;
    }
    if (rc != CKPT_OK) {
        if (rc == CKPT_EEXIST)
            rc = cli_error(out, "already exists: pass --force to replace it; nothing written");
        else if (err.status == CKPT_EIO || err.status == CKPT_EINVAL)
            rc = cli_error(out, "%s; nothing written", err.message);
        else
            rc = cli_error(path, "%s; nothing written", err.message);
        goto done;
    }
    oc.written = true;
    oc.w = wr;
    for (size_t i = 0; i < wr->n_shared && wo.format == CKPT_WRITE_SAFETENSORS; i++) {
        if (i == EXTRACT_MAX_WARNINGS) {
            cli_warn(out, "and %zu more tensor%s sharing memory %s written as copies",
                     wr->n_shared - i, wr->n_shared - i == 1 ? "" : "s",
                     wr->n_shared - i == 1 ? "was" : "were");
            break;
        }
        cli_warn(out, "'%s' shares memory with '%s' (tied weights): written as a separate "
                 "copy, as safetensors has no sharing", wr->shared[i].key, wr->shared[i].with);
    }
    if (json) {
        rc = cli_emit_json(path, to_json(&oc));
    } else {
        cli_sb text = {0};
        summary(&text, &oc);
        cli_write_stdout(text.buf, text.len);
        sb_free(&text);
        rc = CLI_EXIT_OK;
    }
    /* OUT is complete and in place: removing it now could remove a file that --force
     * replaced. A report that cannot be written is still an error (exit 2), in one line that
     * says OUT was written; the stream is cleared so that main does not report it again. */
    if (rc == CLI_EXIT_OK && (fflush(stdout) != 0 || ferror(stdout))) {
        rc = cli_error(out, "written, but the report could not be written to standard "
                       "output: %s", strerror(errno));
        clearerr(stdout);
    }

done:
    ckpt_write_report_free(wr);
    cli_locate_close(&l);
    free(entries);
    free(dropped);
    return rc;
}
