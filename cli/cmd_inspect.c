/*
 * cmd_inspect.c - `ckpt inspect FILE [--depth N] [--json]`: the object tree as a person wants
 * to read it.
 *
 *     checkpoint.pt: zip, dict of 16 items, 12 tensors, 45 parameters, 180 B
 *       epoch        = 5
 *       state_dict:    OrderedDict of 7 tensors, 17 parameters, 72 B (float32, int64)
 *       args         = argparse.Namespace(lr=0.1, epochs=10, arch='resnet18')
 *
 * Scalars, short containers of scalars and objects are shown as their Python repr after " = ";
 * tensors, storages and longer containers after ": ". Containers at level < depth are expanded
 * (the root is level 0, its items level 1); deeper ones get a one-line summary: a dict whose
 * values are all tensors (a state dict) its count, parameters, bytes and dtypes. No tensor data
 * is read.
 *
 * A container the pickle references from several places is expanded where it is first met and
 * shown as "<same as PATH>" afterwards, and the output is bounded relative to the file's size
 * (--max-output): a few KB of memo references must not print gigabytes.
 */
#include "cli.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define INSPECT_DEFAULT_DEPTH 1
#define INSPECT_INLINE_MAX 100   /* a container of scalars shorter than this is shown inline */
#define INSPECT_OBJECT_MAX 120   /* a collapsed object's repr is cut here */
#define INSPECT_STR_MAX 200      /* characters of a string value shown */
#define INSPECT_LABEL_MAX 40     /* labels longer than this are not used to align the column */
#define INSPECT_SEQ_SHOWN 100    /* items of an expanded list, tuple or set shown */
/* Each summary line re-counts the tensors under its container, so expanding D levels walks
 * about D times the tree: the counting walk gets this many times the expansion's budget. */
#define INSPECT_STATS_BUDGET 8

const char cmd_inspect_help[] =
    "Shows the keys, types and values of the object a checkpoint holds, the dtype and shape of\n"
    "each tensor, and for each dict of tensors (a state dict) a one-line summary: count,\n"
    "parameters, bytes, dtypes. Nothing in the file is run, and no tensor data is read.\n"
    "Warnings on stderr name any global that torch.load would import and that is not on PyTorch's\n"
    "weights_only allowlist or a known harmless class ('ckpt scan' tells more).\n"
    "\n"
    "Options:\n"
    "  --depth N  expand N levels of containers (default 1: the top level; 0: one line)\n"
    "  --json     the whole tree as one JSON document on stdout (schema in docs/CLI.md);\n"
    "             --depth does not apply\n"
    "  --max-output BYTES  refuse to print more than this (default: 64 times the file's\n"
    "             size, at least 64M; K, M, G suffixes)\n"
    "\n" CLI_INPUT_HELP "\n"
    "Examples:\n"
    "  ckpt inspect resnet50-ckpt.pth\n"
    "  ckpt inspect --depth 2 resnet50-ckpt.pth\n"
    "  ckpt inspect --json model.pt | jq '.root.items[].key'\n";

typedef struct inspect_ctx {
    cli_walk w;     /* the containers being expanded */
    cli_walk stats; /* summaries; its item budget is shared by all of them */
    cli_sb *out;
    size_t charged; /* bytes of out charged to w's output limit */
    int depth;
} inspect_ctx;

typedef struct child {
    cli_sb label;
    size_t width; /* of the label on screen */
    const ckpt_value *v;
} child;

/* ---- labels ----------------------------------------------------------------------------- */

/* Keys shown bare: names such as fc.weight or layer1/0. Others (and digit-only strings, which
 * would read as int keys) are quoted. */
static bool simple_key(const char *s, size_t n)
{
    bool digits_only = true;
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-' || c == '/' || c == '@' || c == '+' || c == '#'))
            return false;
        if (c < '0' || c > '9')
            digits_only = false;
    }
    return !digits_only;
}

static void key_label(cli_sb *sb, const ckpt_value *k)
{
    if (k->type == CKPT_T_STR && simple_key(k->u.str.data, k->u.str.len))
        sb_putn(sb, k->u.str.data, k->u.str.len);
    else
        cli_repr(sb, k, 60, CLI_REPR_TENSORS);
}

static void add_child(child **cs, size_t *n, size_t *cap, const ckpt_value *v)
{
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        *cs = cli_xrealloc(*cs, *cap * sizeof **cs);
    }
    (*cs)[*n].label = (cli_sb){0};
    (*cs)[*n].v = v;
    (*n)++;
}

static void add_dict_children(child **cs, size_t *n, size_t *cap, const ckpt_value *d)
{
    for (size_t i = 0; i < d->u.dict.len; i++) {
        add_child(cs, n, cap, d->u.dict.vals[i]);
        key_label(&(*cs)[*n - 1].label, d->u.dict.keys[i]);
    }
}

static void add_seq_children(child **cs, size_t *n, size_t *cap, const ckpt_value *s,
                             const char *prefix)
{
    size_t shown = s->u.seq.len < INSPECT_SEQ_SHOWN ? s->u.seq.len : INSPECT_SEQ_SHOWN;
    for (size_t i = 0; i < shown; i++) {
        add_child(cs, n, cap, s->u.seq.items[i]);
        sb_printf(&(*cs)[*n - 1].label, "%s[%zu]", prefix, i);
    }
}

/* The items of an expanded container: dict keys, [i] of sequences, and for objects the
 * attributes of a dict state, args[i], and SETITEMS/APPENDS contents. */
static child *children_of(const ckpt_value *v, size_t *n)
{
    child *cs = NULL;
    size_t cap = 0;
    *n = 0;
    switch (v->type) {
    case CKPT_T_DICT: add_dict_children(&cs, n, &cap, v); break;
    case CKPT_T_TUPLE:
    case CKPT_T_LIST:
    case CKPT_T_SET: add_seq_children(&cs, n, &cap, v, ""); break;
    case CKPT_T_OBJECT: {
        const ckpt_value *a = v->u.obj.args, *st = v->u.obj.state;
        if (a && a->type == CKPT_T_TUPLE)
            add_seq_children(&cs, n, &cap, a, "args");
        else if (a) {
            add_child(&cs, n, &cap, a);
            sb_puts(&cs[*n - 1].label, "args");
        }
        if (st && st->type == CKPT_T_DICT)
            add_dict_children(&cs, n, &cap, st);
        else if (st) {
            add_child(&cs, n, &cap, st);
            sb_puts(&cs[*n - 1].label, "state");
        }
        if (v->u.obj.items && v->u.obj.items->type == CKPT_T_DICT)
            add_dict_children(&cs, n, &cap, v->u.obj.items);
        if (v->u.obj.list && v->u.obj.list->type == CKPT_T_LIST)
            add_seq_children(&cs, n, &cap, v->u.obj.list, "");
        break;
    }
    default: break;
    }
    return cs;
}

static void free_children(child *cs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sb_free(&cs[i].label);
    free(cs);
}

/* ---- one-line descriptions ------------------------------------------------------------- */

static void tensor_desc(cli_sb *sb, const ckpt_tensor *t, size_t dtype_width)
{
    const char *dt = ckpt_dtype_name(t->dtype) ? ckpt_dtype_name(t->dtype) : "?";
    sb_printf(sb, "%-*s ", (int)dtype_width, dt);
    cli_fmt_dims(sb, t->shape, t->ndim);
    cli_fmt_tensor_flags(sb, t);
}

static bool all_tensors(const ckpt_value *d)
{
    if (d->type != CKPT_T_DICT || d->u.dict.len == 0)
        return false;
    for (size_t i = 0; i < d->u.dict.len; i++) {
        if (d->u.dict.vals[i]->type != CKPT_T_TENSOR)
            return false;
    }
    return true;
}

static void type_word(cli_sb *sb, const ckpt_value *v)
{
    const char *cls = v->class_name;
    switch (v->type) {
    case CKPT_T_DICT:
        if (cls && strncmp(cls, "collections.", 12) == 0)
            cls += 12;
        sb_puts(sb, cls ? cls : "dict");
        break;
    case CKPT_T_SET: sb_puts(sb, v->flags & CKPT_VF_FROZEN ? "frozenset" : "set"); break;
    case CKPT_T_OBJECT: {
        cli_sb scratch = {0};
        const char *c = cli_class_of(v, &scratch);
        if (c) {
            sb_put_clean(sb, c, strlen(c));
            sb_puts(sb, " object");
        } else { /* made by calling something that is not a plain global */
            sb_puts(sb, "object made by ");
            cli_repr(sb, v->u.obj.callable, 60, CLI_REPR_TENSORS);
        }
        sb_free(&scratch);
        break;
    }
    default:
        if (cls)
            sb_put_clean(sb, cls, strlen(cls));
        else
            sb_puts(sb, ckpt_type_name(v->type));
        break;
    }
}

/* The tensors under v, or false when the shared budget ran out. */
static bool stats_of(inspect_ctx *c, const ckpt_value *v, cli_tensor_stats *st)
{
    memset(st, 0, sizeof *st);
    c->stats.depth = 0;
    if (c->stats.error[0])
        return false;
    return cli_tensor_stats_add(&c->stats, v, st);
}

/* "dict of 3 items (a, b, c), 4 tensors, ..." or, for a state dict, "OrderedDict of 320
 * tensors, 25.6 M parameters, 102.2 MB (float32)". Key names only when collapsed. */
static void summary(inspect_ctx *c, cli_sb *sb, const ckpt_value *v, bool collapsed)
{
    cli_tensor_stats st;
    bool counted = stats_of(c, v, &st);
    type_word(sb, v);
    if (all_tensors(v) && counted) {
        sb_puts(sb, " of ");
        cli_fmt_stats(sb, &st, true);
        return;
    }
    size_t n = ckpt_value_len(v);
    if (v->type == CKPT_T_OBJECT) {
        const ckpt_value *state = v->u.obj.state;
        if (state && state->type == CKPT_T_DICT)
            sb_printf(sb, " with %zu field%s", state->u.dict.len,
                      state->u.dict.len == 1 ? "" : "s");
    } else {
        sb_printf(sb, " of %zu item%s", n, n == 1 ? "" : "s");
    }
    if (collapsed && v->type == CKPT_T_DICT && n > 0) {
        size_t start = sb->len;
        sb_puts(sb, " (");
        for (size_t i = 0; i < n; i++) {
            if (sb->len - start > 60) {
                sb_puts(sb, ", ...");
                break;
            }
            if (i)
                sb_puts(sb, ", ");
            key_label(sb, v->u.dict.keys[i]);
        }
        sb_putc(sb, ')');
    }
    if (!counted)
        sb_puts(sb, ", too large to count its tensors");
    else if (st.count) {
        sb_puts(sb, ", ");
        cli_fmt_stats(sb, &st, false);
    }
}

/* ---- the tree ------------------------------------------------------------------------------ */

static bool show_children(inspect_ctx *c, const ckpt_value *v, size_t indent, int level);

/* Charge what was written since the last call to the output limit. */
static bool charge(inspect_ctx *c)
{
    bool ok = cli_walk_charge(&c->w, c->out->len - c->charged);
    c->charged = c->out->len;
    return ok;
}

/* One item: its line, then (when expanded) its own items. */
static bool show(inspect_ctx *c, size_t indent, const child *ch, size_t width, size_t dwidth,
                 int level)
{
    cli_sb *out = c->out;
    if (!charge(c))
        return false;
    const ckpt_value *v = ch->v;
    size_t pad = ch->width < width ? width - ch->width : 0;
    sb_pad(out, indent);
    sb_puts(out, sb_str(&ch->label));

    if (v->type == CKPT_T_TENSOR || v->type == CKPT_T_STORAGE) {
        sb_putc(out, ':');
        sb_pad(out, pad + 2);
        if (v->type == CKPT_T_TENSOR)
            tensor_desc(out, v->u.tensor, dwidth);
        else {
            const ckpt_storage *s = v->u.storage;
            const char *dt = ckpt_dtype_name(ckpt_storage_dtype(s));
            const char *key = ckpt_storage_key(s) ? ckpt_storage_key(s) : "";
            sb_printf(out, "storage %s, key ", dt ? dt : "?");
            cli_repr_str(out, key, strlen(key), 60);
            sb_puts(out, ", ");
            cli_fmt_bytes(out, ckpt_storage_nbytes(s));
        }
        sb_putc(out, '\n');
        return true;
    }
    if (!cli_is_container(v)) {
        sb_pad(out, pad);
        sb_puts(out, " = ");
        cli_repr(out, v, INSPECT_STR_MAX + 10, 0);
        sb_putc(out, '\n');
        return true;
    }

    /* A short container of scalars reads best as its repr. */
    cli_sb r = {0};
    bool inline_ok = cli_repr(&r, v, INSPECT_INLINE_MAX, 0);
    if (inline_ok) {
        sb_pad(out, pad);
        sb_puts(out, " = ");
        sb_puts(out, sb_str(&r));
        sb_putc(out, '\n');
        sb_free(&r);
        return true;
    }
    sb_free(&r);

    /* The path component: a sequence item's index without its brackets. */
    const char *comp = sb_str(&ch->label);
    size_t comp_len = ch->label.len;
    if (comp_len > 2 && comp[0] == '[' && comp[comp_len - 1] == ']') {
        comp++;
        comp_len -= 2;
    }
    cli_enter e = cli_walk_enter_at(&c->w, v, comp, comp_len);
    if (e == CLI_LIMIT)
        return false;
    if (e == CLI_CYCLE || e == CLI_SHARED) {
        sb_putc(out, ':');
        sb_pad(out, pad + 2);
        if (e == CLI_CYCLE) {
            sb_puts(out, "... (the container it is in)\n");
            return true;
        }
        sb_puts(out, "<same as ");
        cli_walk_ref_path(&c->w, v, "/", out);
        sb_puts(out, ">\n");
        return charge(c);
    }
    bool expand = level < c->depth;
    bool ok = true;
    if (!expand && v->type == CKPT_T_OBJECT) {
        sb_pad(out, pad);
        sb_puts(out, " = ");
        cli_repr(out, v, INSPECT_OBJECT_MAX, CLI_REPR_TENSORS);
        cli_tensor_stats st;
        if (stats_of(c, v, &st) && st.count) {
            sb_puts(out, "  [");
            cli_fmt_stats(out, &st, false);
            sb_putc(out, ']');
        }
        sb_putc(out, '\n');
    } else {
        sb_putc(out, ':');
        sb_pad(out, pad + 2);
        summary(c, out, v, !expand);
        sb_putc(out, '\n');
        if (expand)
            ok = show_children(c, v, indent + 2, level + 1);
    }
    cli_walk_leave(&c->w);
    return ok;
}

static bool show_children(inspect_ctx *c, const ckpt_value *v, size_t indent, int level)
{
    size_t n;
    child *cs = children_of(v, &n);
    size_t width = 0, dwidth = 0;
    for (size_t i = 0; i < n; i++) {
        cs[i].width = cli_width(sb_str(&cs[i].label), cs[i].label.len);
        if (cs[i].width <= INSPECT_LABEL_MAX && cs[i].width > width)
            width = cs[i].width;
        if (cs[i].v->type == CKPT_T_TENSOR) {
            const char *dt = ckpt_dtype_name(cs[i].v->u.tensor->dtype);
            size_t len = strlen(dt ? dt : "?");
            dwidth = len > dwidth ? len : dwidth;
        }
    }
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++)
        ok = show(c, indent, &cs[i], width, dwidth, level);
    free_children(cs, n);
    size_t total = v->type == CKPT_T_OBJECT ? 0 : ckpt_value_len(v);
    if (ok && v->type != CKPT_T_DICT && total > INSPECT_SEQ_SHOWN) {
        sb_pad(c->out, indent);
        sb_printf(c->out, "... and %zu more items\n", total - INSPECT_SEQ_SHOWN);
    }
    return ok;
}

static bool human(inspect_ctx *c, const char *path, const ckpt_file *f)
{
    const ckpt_value *root = ckpt_root(f);
    cli_sb *out = c->out;
    sb_put_clean(out, path, strlen(path));
    sb_printf(out, ": %s, ", ckpt_format_name(ckpt_file_format(f)));
    if (root->type == CKPT_T_TENSOR) {
        tensor_desc(out, root->u.tensor, 0);
        sb_putc(out, '\n');
        return true;
    }
    if (!cli_is_container(root)) {
        cli_repr(out, root, INSPECT_STR_MAX + 10, CLI_REPR_TENSORS);
        sb_putc(out, '\n');
        return true;
    }
    summary(c, out, root, c->depth == 0);
    sb_putc(out, '\n');
    if (c->depth == 0)
        return true;
    if (cli_walk_enter(&c->w, root) != CLI_ENTERED)
        return false;
    bool ok = show_children(c, root, 2, 1);
    cli_walk_leave(&c->w);
    return ok && charge(c);
}

typedef struct inspect_opts {
    bool json;
    int depth;
    const char *max_output;
} inspect_opts;

static int inspect_one(const char *path, void *ctx)
{
    const inspect_opts *o = ctx;
    bool json = o->json;
    const char *max_output = o->max_output;
    int rc = CLI_EXIT_OK;
    ckpt_file *f = cli_open(path);
    if (!f)
        return CLI_EXIT_ERROR;

    inspect_ctx *c = cli_xrealloc(NULL, sizeof *c); /* two walks of a few KB each */
    memset(c, 0, sizeof *c);
    c->depth = o->depth;
    cli_walk_init(&c->w, ckpt_root(f));
    c->stats = c->w;
    c->stats.max_items *= INSPECT_STATS_BUDGET;
    cli_walk_limit_output(&c->w, max_output, ckpt_file_size(f));
    cli_walk_share(&c->w);
    if (json) {
        json_t *root = cli_json_value(&c->w, ckpt_root(f));
        if (!root)
            rc = cli_error(path, "%s", c->w.error);
        else {
            json_t *doc = json_object();
            json_object_set_new(doc, "file", cli_json_str(path, strlen(path)));
            json_object_set_new(doc, "format", json_string(ckpt_format_name(ckpt_file_format(f))));
            json_object_set_new(doc, "root", root);
            rc = cli_emit_json(path, doc);
        }
    } else {
        cli_sb out = {0};
        c->out = &out;
        if (human(c, path, f)) {
            cli_write_stdout(out.buf, out.len);
            rc = CLI_EXIT_OK;
        } else {
            rc = cli_error(path, "%s", c->w.error);
        }
        sb_free(&out);
    }
    if (rc == CLI_EXIT_OK) {
        fflush(stdout); /* the tree first, then what to beware of */
        cli_warn_globals(path, f);
    }
    cli_walk_free(&c->w);
    free(c);
    ckpt_close(f);
    return rc;
}

int cmd_inspect(int argc, char **argv, const cli_command *self)
{
    inspect_opts o = {false, INSPECT_DEFAULT_DEPTH, NULL};
    const char *depth_arg = NULL;
    cli_inputs in = {0};
    const cli_opt opts[] = {{"json", NULL, &o.json, NULL},
                            {"depth", "N", NULL, &depth_arg},
                            {"max-output", "BYTES", NULL, &o.max_output},
                            CLI_INPUT_OPTS(&in),
                            {NULL, NULL, NULL, NULL}};
    const char **pos;
    int npos;
    int rc = cli_inputs_parse(self, argc, argv, opts, &in, &pos, &npos);
    if (rc < 0 && depth_arg) {
        char *end;
        long d = strtol(depth_arg, &end, 10);
        if (end == depth_arg || *end || d < 0)
            rc = cli_usage_error(self, "--depth wants a number of levels, not '%s'", depth_arg);
        else
            o.depth = d > CLI_MAX_DEPTH ? CLI_MAX_DEPTH : (int)d;
    }
    uint64_t unused;
    if (rc < 0 && o.max_output && !cli_parse_size(o.max_output, &unused))
        rc = cli_usage_error(self, "--max-output wants a byte count (e.g. 2G), not '%s'",
                             o.max_output);
    if (rc < 0) {
        o.json = o.json || in.jsonl;
        rc = cli_inputs_each(self, &in, pos, (size_t)npos, cli_checkpoint_exts, inspect_one,
                             &o);
    }
    free(pos);
    return rc;
}
