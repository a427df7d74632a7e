/*
 * cmd_diff.c - `ckpt diff A B`: two checkpoints' state dicts, tensor by tensor.
 *
 * Each file's state dict is found and unwrapped as `ckpt check` does it (so a training
 * checkpoint compares with the clean file extracted from it). Values are compared bit for bit
 * by default, or within --atol in float64. The JSON schema is in docs/CHECK.md.
 * Exit 0: every tensor matches; 1: something differs; 2: error.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The command table (commands.h) declares these once diff is listed there. */
int cmd_diff(int argc, char **argv, const cli_command *self);
extern const char cmd_diff_help[];

#define DIFF_MAX_LINES 200 /* per-key lines in the human output before a summary */

const char cmd_diff_help[] =
    "Finds the state dict in each file as 'ckpt check' does (so --key and prefixes such as\n"
    "'module.' are handled) and compares them key by key: same, different (with the largest\n"
    "absolute and relative difference), only in A, only in B, shape or dtype differs.\n"
    "\n"
    "Options:\n"
    "  --key-a PATH   where A's state dict is (model/ema); default: found\n"
    "  --key-b PATH   where B's state dict is\n"
    "  --atol X       values match when |a - b| <= X in float64 (dtypes may then differ);\n"
    "                 default: bit-identical values with equal dtypes\n"
    "  --json         one JSON document on stdout (schema in docs/CHECK.md)\n"
    "  --jsonl        the same (one input, one record on one line)\n"
    "  --max-expanded BYTES  refuse when the tensors hold more than this once broadcast\n"
    "                 views are expanded (default: 64 times the two files' size, at least\n"
    "                 1G; K, M, G suffixes)\n"
    "\n"
    "Examples:\n"
    "  ckpt diff rsp-resnet-50-ckpt.pth resnet50-clean.pth\n"
    "  ckpt diff a.pt b.pt --atol 1e-6 --json\n";

static json_t *jstr(const char *s)
{
    return s ? cli_json_str(s, strlen(s)) : json_null();
}

/* JSON has no infinity or NaN: those become null. */
static json_t *jnum(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static json_t *side_json(const char *path, const ckpt_sd_report *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "file", jstr(path));
    json_t *p = json_array();
    for (size_t i = 0; i < r->chosen->path_len; i++)
        json_array_append_new(p, jstr(r->chosen->path[i]));
    json_object_set_new(o, "state_dict_path", p);
    json_object_set_new(o, "prefix", jstr(r->prefix));
    json_object_set_new(o, "tensors", json_integer((json_int_t)r->n_tensors));
    return o;
}

static json_t *to_json(const char *pa, const char *pb, const ckpt_sd_report *ra,
                       const ckpt_sd_report *rb, double atol, const ckpt_sd_diff_result *d)
{
    json_t *doc = json_object();
    json_object_set_new(doc, "a", side_json(pa, ra));
    json_object_set_new(doc, "b", side_json(pb, rb));
    json_object_set_new(doc, "atol", atol >= 0 ? json_real(atol) : json_null());
    json_object_set_new(doc, "match", json_boolean(d->match));
    json_t *counts = json_object();
    for (int k = 0; k < CKPT_SD_DIFF_KINDS; k++)
        json_object_set_new(counts, ckpt_sd_diff_kind_name((ckpt_sd_diff_kind)k),
                            json_integer((json_int_t)d->count[k]));
    json_object_set_new(doc, "counts", counts);
    json_t *items = json_array();
    for (size_t i = 0; i < d->n_items; i++) {
        const ckpt_sd_diff_item *it = &d->items[i];
        json_t *o = json_object();
        json_object_set_new(o, "key", jstr(it->key));
        json_object_set_new(o, "status", json_string(ckpt_sd_diff_kind_name(it->kind)));
        json_object_set_new(o, "match", json_boolean(it->match));
        const ckpt_sd_entry *e[2] = {it->a, it->b};
        const char *dt[2] = {"dtype_a", "dtype_b"}, *sh[2] = {"shape_a", "shape_b"};
        for (int s = 0; s < 2; s++) {
            bool t = e[s] && e[s]->is_tensor;
            json_object_set_new(o, dt[s], t ? json_string(ckpt_dtype_name(e[s]->dtype))
                                            : json_null());
            json_object_set_new(o, sh[s], t ? cli_json_dims(e[s]->shape, e[s]->ndim)
                                            : json_null());
        }
        if (it->compared) {
            json_object_set_new(o, "differing", json_integer((json_int_t)it->n_differ));
            json_object_set_new(o, "max_abs", jnum(it->max_abs));
            json_object_set_new(o, "max_rel", jnum(it->max_rel));
        } else {
            json_object_set_new(o, "differing", json_null());
            json_object_set_new(o, "max_abs", json_null());
            json_object_set_new(o, "max_rel", json_null());
        }
        json_array_append_new(items, o);
    }
    json_object_set_new(doc, "tensors", items);
    return doc;
}

static void put_side(cli_sb *out, const char *label, const char *path, const ckpt_sd_report *r)
{
    sb_printf(out, "%s: ", label);
    sb_put_clean(out, path, strlen(path));
    for (size_t i = 0; i < r->chosen->path_len; i++) {
        sb_puts(out, "['");
        sb_put_clean(out, r->chosen->path[i], strlen(r->chosen->path[i]));
        sb_puts(out, "']");
    }
    sb_printf(out, " (%zu tensors", r->n_tensors);
    if (r->prefix[0]) {
        sb_puts(out, ", prefix '");
        sb_put_clean(out, r->prefix, strlen(r->prefix));
        sb_puts(out, "' stripped");
    }
    sb_puts(out, ")\n");
}

static void put_entry(cli_sb *out, const ckpt_sd_entry *e)
{
    if (!e) {
        sb_puts(out, "-");
    } else if (!e->is_tensor) {
        sb_puts(out, "not a tensor");
    } else {
        sb_printf(out, "%s ", ckpt_dtype_name(e->dtype));
        cli_fmt_dims(out, e->shape, e->ndim);
    }
}

static void human(cli_sb *out, const char *pa, const char *pb, const ckpt_sd_report *ra,
                  const ckpt_sd_report *rb, double atol, const ckpt_sd_diff_result *d)
{
    put_side(out, "A", pa, ra);
    put_side(out, "B", pb, rb);
    size_t lines = 0, hidden = 0;
    for (size_t i = 0; i < d->n_items; i++) {
        const ckpt_sd_diff_item *it = &d->items[i];
        if (it->kind == CKPT_SD_SAME)
            continue;
        if (lines == DIFF_MAX_LINES) {
            hidden++;
            continue;
        }
        lines++;
        sb_printf(out, "%-10s  ", ckpt_sd_diff_kind_name(it->kind));
        sb_put_clean(out, it->key, strlen(it->key));
        switch (it->kind) {
        case CKPT_SD_DIFFERENT:
        case CKPT_SD_DTYPE:
            if (it->kind == CKPT_SD_DTYPE) {
                sb_puts(out, "  ");
                put_entry(out, it->a);
                sb_puts(out, " vs ");
                put_entry(out, it->b);
            }
            if (it->compared && !isnan(it->max_abs))
                sb_printf(out, "  %" PRId64 " of %" PRId64 " elements differ, max abs %g, "
                          "max rel %g%s", it->n_differ, it->a->value->u.tensor->numel,
                          it->max_abs, it->max_rel, it->match ? " (within atol)" : "");
            break;
        case CKPT_SD_SHAPE:
        case CKPT_SD_NOT_TENSOR:
            sb_puts(out, "  ");
            put_entry(out, it->a);
            sb_puts(out, " vs ");
            put_entry(out, it->b);
            break;
        default:
            sb_puts(out, "  ");
            put_entry(out, it->a ? it->a : it->b);
            break;
        }
        sb_putc(out, '\n');
    }
    if (hidden)
        sb_printf(out, "... and %zu more differences (--json lists them all)\n", hidden);
    sb_printf(out, "%zu same, %zu different, %zu only in A, %zu only in B, %zu shape, "
              "%zu dtype, %zu not tensors\n",
              d->count[CKPT_SD_SAME], d->count[CKPT_SD_DIFFERENT], d->count[CKPT_SD_ONLY_A],
              d->count[CKPT_SD_ONLY_B], d->count[CKPT_SD_SHAPE], d->count[CKPT_SD_DTYPE],
              d->count[CKPT_SD_NOT_TENSOR]);
    if (d->match)
        sb_puts(out, atol >= 0 ? "match: every tensor is within atol\n"
                               : "match: every tensor is bit-identical\n");
    else
        sb_puts(out, "differ\n");
}

/* Find and unwrap one side's state dict; prints the error and returns NULL on failure. */
static ckpt_sd_report *locate(const char *path, const ckpt_file *f, const char *key)
{
    ckpt_sd_check_options o = {0};
    o.key = key;
    o.file_name = path;
    ckpt_sd_report *r = NULL;
    ckpt_error err = {0};
    if (ckpt_sd_check(f, &o, &r, &err) != CKPT_OK) {
        cli_error_ckpt(path, &err);
        return NULL;
    }
    return r;
}

int cmd_diff(int argc, char **argv, const cli_command *self)
{
    bool json = false;
    const char *key_a = NULL, *key_b = NULL, *atol_s = NULL, *max_expanded = NULL;
    const cli_opt opts[] = {
        {"key-a", "PATH", NULL, &key_a},
        {"key-b", "PATH", NULL, &key_b},
        {"atol", "X", NULL, &atol_s},
        {"json", NULL, &json, NULL},
        {"jsonl", NULL, &json, NULL}, /* one input, so one record: the same */
        {"max-expanded", "BYTES", NULL, &max_expanded},
        {NULL, NULL, NULL, NULL},
    };
    const char *pos[2];
    int npos;
    int rc = cli_parse_args(self, argc, argv, opts, pos, 2, 2, &npos);
    if (rc >= 0)
        return rc;
    double atol = -1;
    if (atol_s) {
        char *end;
        errno = 0;
        atol = strtod(atol_s, &end);
        if (errno || end == atol_s || *end || !(atol >= 0) || !isfinite(atol))
            return cli_usage_error(self, "--atol takes a number >= 0, not '%s'", atol_s);
    }
    uint64_t unused;
    if (max_expanded && !cli_parse_size(max_expanded, &unused))
        return cli_usage_error(self, "--max-expanded wants a byte count (e.g. 8G), not '%s'",
                               max_expanded);
    const char *pa = pos[0], *pb = pos[1];
    ckpt_file *fa = cli_open(pa);
    if (!fa)
        return CLI_EXIT_ERROR;
    ckpt_file *fb = cli_open(pb);
    if (!fb) {
        ckpt_close(fa);
        return CLI_EXIT_ERROR;
    }
    ckpt_sd_report *ra = locate(pa, fa, key_a);
    ckpt_sd_report *rb = ra ? locate(pb, fb, key_b) : NULL;
    rc = CLI_EXIT_ERROR;
    if (ra && rb) {
        /* Both sides are read whole: bound what broadcast views make of them first. */
        uint64_t in = ckpt_file_size(fa) + ckpt_file_size(fb);
        uint64_t ea = cli_sd_expanded_bytes(ra->sd, CKPT_DT_COUNT);
        uint64_t eb = cli_sd_expanded_bytes(rb->sd, CKPT_DT_COUNT);
        rc = cli_check_expanded(ea >= eb ? pa : pb, ea > UINT64_MAX - eb ? UINT64_MAX : ea + eb,
                                in, CLI_EXPAND_MIN_READ, max_expanded, "");
        if (rc >= 0)
            goto done;
        rc = CLI_EXIT_ERROR;
        cli_warn_globals(pa, fa);
        cli_warn_globals(pb, fb);
        ckpt_sd_diff_result *d = NULL;
        ckpt_error err = {0};
        if (ckpt_sd_diff(ra->sd, rb->sd, atol, &d, &err) != CKPT_OK) {
            rc = cli_error(pa, "%s", err.message);
        } else if (json) {
            rc = cli_emit_json(pa, to_json(pa, pb, ra, rb, atol, d));
            if (rc == CLI_EXIT_OK && !d->match)
                rc = CLI_EXIT_FINDING;
        } else {
            cli_sb out = {0};
            human(&out, pa, pb, ra, rb, atol, d);
            cli_write_stdout(out.buf, out.len);
            sb_free(&out);
            rc = d->match ? CLI_EXIT_OK : CLI_EXIT_FINDING;
        }
        ckpt_sd_diff_free(d);
    }
done:
    ckpt_sd_report_free(rb);
    ckpt_sd_report_free(ra);
    ckpt_close(fb);
    ckpt_close(fa);
    return rc;
}
