/*
 * cmd_tensors.c - `ckpt tensors FILE [--json] [--sha256]`: every tensor reachable from the
 * root, depth-first in container order, once per path (tied weights appear under each key).
 *
 * Path components are str(key) for dict keys and the index for list, tuple and set items, as
 * a Python walk over the torch.load result names them. Objects (CKPT_T_OBJECT) are entered
 * too, since that is where a pickled nn.Module keeps its tensors: the keys of a dict state
 * directly (attribute names), any other state under "__state__", the call's arguments under
 * "__args__", and SETITEMS/APPENDS contents directly.
 *
 * The pickle memo lets one container be referenced from many places, so the paths of a small
 * file can number in the billions. Each container is walked once; where it is met again, a
 * row refers to the first path (when tensors were found under it), and the output as a whole
 * is bounded relative to the file's size (--max-output).
 */
#include "cli.h"
#include "util.h" /* the library's keyed hash index, in an arena */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

const char cmd_tensors_help[] =
    "One line per tensor: its path from the root (keys joined with '/'), dtype, shape and size,\n"
    "then flags: parameter, requires_grad, the strides of a non-contiguous view, a storage\n"
    "offset. A tensor reachable by two paths (tied weights) is listed under both; a container\n"
    "met again (shared by reference in the pickle) is listed once, then as '<same as PATH>'.\n"
    "\n"
    "Options:\n"
    "  --json     one JSON document on stdout (schema in docs/CLI.md)\n"
    "  --sha256   also hash each tensor's elements (row-major, contiguous, little-endian; bool\n"
    "             as one byte): two files hold the same weights when the hashes match\n"
    "  --max-output BYTES  refuse to print more than this (default: 64 times the file's\n"
    "             size, at least 64M; K, M, G suffixes)\n"
    "  --max-expanded BYTES  --sha256: refuse to hash more than this in all (broadcast views\n"
    "             count whole; default: 64 times the file's size, at least 1G)\n"
    "\n" CLI_INPUT_HELP "\n"
    "Examples:\n"
    "  ckpt tensors model.pt\n"
    "  ckpt tensors --sha256 a.pt > a.txt; ckpt tensors --sha256 b.pt > b.txt; diff a.txt b.txt\n"
    "  ckpt tensors --json checkpoint.pth | jq -r '.tensors[].path | join(\".\")'\n";

typedef struct row {
    char *path; /* components joined with '/' */
    const ckpt_tensor *t; /* NULL for a reference: */
    char *ref;            /* the path of the first occurrence of a shared container */
    char sha[65];
} row;

typedef struct tensors_ctx {
    cli_walk w;
    cli_sb cur;        /* the current path: components, each followed by '\0' */
    size_t *offs;      /* start of each component in cur */
    size_t depth, cap;
    bool json, sha256;
    json_t *list;      /* --json: the "tensors" array */
    row *rows;         /* human: the lines, printed once widths are known */
    size_t n_rows, cap_rows;
    ckpt_error err;    /* a failed hash */
    bool failed;
    /* --sha256: each distinct tensor is hashed once, however many paths reach it */
    struct hashed {
        const ckpt_tensor *t;
        char hex[65];
    } *hashed;
    size_t n_hashed, cap_hashed;
    ckpt__arena *hash_ar; /* for hash_index, made at the first hash */
    ckpt__hindex hash_index; /* over hashed, keyed by the tensor's address */
    uint64_t hashed_bytes, max_hashed; /* logical bytes hashed so far, and the limit */
    const char *max_expanded;          /* --max-expanded, or NULL */
} tensors_ctx;

#define SEED_TENSOR 0x74656e73

static bool tensor_sha256(tensors_ctx *c, const ckpt_tensor *t, char hex[65])
{
    uint64_t h = ckpt__hash_u64((uint64_t)(uintptr_t)t, SEED_TENSOR);
    size_t pos;
    for (size_t it = ckpt__hindex_first(&c->hash_index, h, &pos); it;
         it = ckpt__hindex_next(&c->hash_index, h, &pos))
        if (c->hashed[it - 1].t == t) {
            memcpy(hex, c->hashed[it - 1].hex, 65);
            return true;
        }
    /* ckpt_tensor_sha256 bounds one broadcast view; the sum over many is bounded here. */
    uint64_t nb = ckpt_tensor_nbytes(t);
    c->hashed_bytes = nb > UINT64_MAX - c->hashed_bytes ? UINT64_MAX : c->hashed_bytes + nb;
    if (c->hashed_bytes > c->max_hashed) {
        cli_sb lim = {0};
        cli_fmt_bytes(&lim, c->max_hashed);
        c->err.status = CKPT_ELIMIT;
        if (c->max_expanded)
            snprintf(c->err.message, sizeof c->err.message, "the tensors to hash pass the "
                     "--max-expanded limit of %s", sb_str(&lim));
        else
            snprintf(c->err.message, sizeof c->err.message, "the tensors to hash pass %s "
                     "(broadcast views?), the limit for a file of this size; raise it with "
                     "--max-expanded BYTES", sb_str(&lim));
        sb_free(&lim);
        return false;
    }
    if (ckpt_tensor_sha256(t, hex, &c->err) != CKPT_OK)
        return false;
    if ((!c->hash_ar && !(c->hash_ar = ckpt__sd_arena())) ||
        ckpt__hindex_add(c->hash_ar, &c->hash_index, h, c->n_hashed) != 0) {
        c->err.status = CKPT_ENOMEM;
        snprintf(c->err.message, sizeof c->err.message, "out of memory");
        return false;
    }
    if (c->n_hashed == c->cap_hashed) {
        c->cap_hashed = c->cap_hashed ? 2 * c->cap_hashed : 256;
        c->hashed = cli_xrealloc(c->hashed, c->cap_hashed * sizeof *c->hashed);
    }
    c->hashed[c->n_hashed].t = t;
    memcpy(c->hashed[c->n_hashed++].hex, hex, 65);
    return true;
}

static void push_comp(tensors_ctx *c, const char *s, size_t n)
{
    if (c->depth == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 32;
        c->offs = cli_xrealloc(c->offs, c->cap * sizeof *c->offs);
    }
    c->offs[c->depth++] = c->cur.len;
    sb_putn(&c->cur, s, n);
    sb_putc(&c->cur, '\0');
}

static void push_key(tensors_ctx *c, const ckpt_value *key)
{
    if (c->depth == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 32;
        c->offs = cli_xrealloc(c->offs, c->cap * sizeof *c->offs);
    }
    c->offs[c->depth++] = c->cur.len;
    cli_key_str(&c->cur, key);
    sb_putc(&c->cur, '\0');
}

static void push_index(tensors_ctx *c, size_t i)
{
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%zu", i);
    push_comp(c, buf, (size_t)n);
}

static void pop_comp(tensors_ctx *c)
{
    c->cur.len = c->offs[--c->depth];
}

/* The bytes a row costs (its path, the rest of a line or JSON object), charged to the output
 * limit before it is stored. */
#define TENSORS_ROW_BYTES 200

static bool charge_row(tensors_ctx *c, size_t extra)
{
    return cli_walk_charge(&c->w, c->cur.len + extra + TENSORS_ROW_BYTES);
}

static json_t *json_path(const tensors_ctx *c)
{
    json_t *path = json_array();
    for (size_t i = 0; i < c->depth; i++) {
        const char *s = c->cur.buf + c->offs[i];
        size_t end = i + 1 < c->depth ? c->offs[i + 1] - 1 : c->cur.len - 1;
        json_array_append_new(path, cli_json_str(s, end - c->offs[i]));
    }
    return path;
}

static row *new_row(tensors_ctx *c)
{
    if (c->n_rows == c->cap_rows) {
        c->cap_rows = c->cap_rows ? 2 * c->cap_rows : 64;
        c->rows = cli_xrealloc(c->rows, c->cap_rows * sizeof *c->rows);
    }
    row *r = &c->rows[c->n_rows++];
    cli_sb p = {0};
    for (size_t i = 0; i < c->depth; i++) {
        if (i)
            sb_putc(&p, '/');
        const char *comp = c->cur.buf + c->offs[i];
        sb_put_clean(&p, comp, strlen(comp));
    }
    if (c->depth == 0)
        sb_putc(&p, '.'); /* the root itself is the tensor */
    r->path = p.buf;
    r->t = NULL;
    r->ref = NULL;
    r->sha[0] = '\0';
    return r;
}

/* A shared container met again: one row naming where it was listed, if tensors were there. */
static bool add_ref(tensors_ctx *c, const ckpt_value *v)
{
    if (!cli_walk_marked(&c->w, v))
        return true;
    cli_sb ref = {0};
    cli_walk_ref_path(&c->w, v, "/", &ref);
    if (!charge_row(c, ref.len)) {
        sb_free(&ref);
        return false;
    }
    cli_walk_mark(&c->w);
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "path", json_path(c));
        json_object_set_new(o, "ref", cli_walk_ref_json(&c->w, v));
        json_array_append_new(c->list, o);
        sb_free(&ref);
        return true;
    }
    row *r = new_row(c);
    r->ref = ref.buf ? ref.buf : cli_xrealloc(NULL, 1);
    if (!ref.buf)
        r->ref[0] = '\0';
    return true;
}

static bool add_tensor(tensors_ctx *c, const ckpt_tensor *t)
{
    char sha[65] = "";
    if (!charge_row(c, 0))
        return false;
    cli_walk_mark(&c->w);
    if (c->sha256 && !tensor_sha256(c, t, sha)) {
        c->failed = true;
        return false;
    }
    if (c->json) {
        json_t *o = json_object();
        json_object_set_new(o, "path", json_path(c));
        cli_json_tensor_fields(o, t);
        if (c->sha256)
            json_object_set_new(o, "sha256", json_string(sha));
        json_array_append_new(c->list, o);
        return true;
    }
    row *r = new_row(c);
    r->t = t;
    memcpy(r->sha, sha, sizeof sha);
    return true;
}

static bool walk(tensors_ctx *c, const ckpt_value *v);

static bool walk_seq(tensors_ctx *c, const ckpt_value *v)
{
    for (size_t i = 0; i < v->u.seq.len; i++) {
        push_index(c, i);
        bool ok = walk(c, v->u.seq.items[i]);
        pop_comp(c);
        if (!ok)
            return false;
    }
    return true;
}

static bool walk_dict(tensors_ctx *c, const ckpt_value *v)
{
    for (size_t i = 0; i < v->u.dict.len; i++) {
        push_key(c, v->u.dict.keys[i]);
        bool ok = walk(c, v->u.dict.vals[i]);
        pop_comp(c);
        if (!ok)
            return false;
    }
    return true;
}

static bool walk_under(tensors_ctx *c, const char *comp, const ckpt_value *v)
{
    push_comp(c, comp, strlen(comp));
    bool ok = walk(c, v);
    pop_comp(c);
    return ok;
}

static bool walk_object(tensors_ctx *c, const ckpt_value *v)
{
    const ckpt_value *st = v->u.obj.state;
    if (v->u.obj.args && !walk_under(c, "__args__", v->u.obj.args))
        return false;
    if (st && st->type == CKPT_T_DICT) {
        if (!walk_dict(c, st))
            return false;
    } else if (st && !walk_under(c, "__state__", st)) {
        return false;
    }
    if (v->u.obj.items && v->u.obj.items->type == CKPT_T_DICT && !walk_dict(c, v->u.obj.items))
        return false;
    if (v->u.obj.list && (v->u.obj.list->type == CKPT_T_LIST) && !walk_seq(c, v->u.obj.list))
        return false;
    return true;
}

static bool walk(tensors_ctx *c, const ckpt_value *v)
{
    if (!v)
        return true;
    if (v->type == CKPT_T_TENSOR)
        return add_tensor(c, v->u.tensor);
    if (!cli_is_container(v))
        return true;
    cli_enter e;
    if (c->depth == 0) {
        e = cli_walk_enter(&c->w, v);
    } else {
        const char *comp = c->cur.buf + c->offs[c->depth - 1];
        e = cli_walk_enter_at(&c->w, v, comp, strlen(comp));
    }
    if (e == CLI_CYCLE)
        return true;
    if (e == CLI_SHARED)
        return add_ref(c, v);
    if (e == CLI_LIMIT)
        return false;
    bool ok;
    switch (v->type) {
    case CKPT_T_DICT: ok = walk_dict(c, v); break;
    case CKPT_T_OBJECT: ok = walk_object(c, v); break;
    default: ok = walk_seq(c, v); break;
    }
    cli_walk_leave(&c->w);
    return ok;
}

static void print_rows(const tensors_ctx *c, cli_sb *out)
{
    size_t wp = 0, wd = 0, ws = 0, wb = 0;
    cli_sb cell = {0};
    for (size_t i = 0; i < c->n_rows; i++) {
        const ckpt_tensor *t = c->rows[i].t;
        if (!t)
            continue;
        size_t lp = cli_width(c->rows[i].path, strlen(c->rows[i].path));
        const char *dt = ckpt_dtype_name(t->dtype);
        size_t ld = strlen(dt ? dt : "?");
        cell.len = 0;
        cli_fmt_dims(&cell, t->shape, t->ndim);
        size_t ls = cell.len;
        cell.len = 0;
        cli_fmt_bytes(&cell, ckpt_tensor_nbytes(t));
        wp = lp > wp ? lp : wp;
        wd = ld > wd ? ld : wd;
        ws = ls > ws ? ls : ws;
        wb = cell.len > wb ? cell.len : wb;
    }
    if (wp > 60)
        wp = 60;
    for (size_t i = 0; i < c->n_rows; i++) {
        const row *r = &c->rows[i];
        const ckpt_tensor *t = r->t;
        size_t lp = cli_width(r->path, strlen(r->path));
        sb_puts(out, r->path);
        sb_pad(out, lp < wp ? wp - lp : 0);
        if (!t) {
            sb_printf(out, "  <same as %s>\n", r->ref);
            continue;
        }
        const char *dt = ckpt_dtype_name(t->dtype) ? ckpt_dtype_name(t->dtype) : "?";
        sb_printf(out, "  %-*s  ", (int)wd, dt);
        size_t start = out->len;
        cli_fmt_dims(out, t->shape, t->ndim);
        sb_pad(out, ws - (out->len - start));
        cell.len = 0;
        cli_fmt_bytes(&cell, ckpt_tensor_nbytes(t));
        sb_pad(out, 2 + wb - cell.len); /* sizes right-aligned */
        sb_puts(out, sb_str(&cell));
        if (c->sha256)
            sb_printf(out, "  %s", r->sha);
        cli_fmt_tensor_flags(out, t);
        sb_putc(out, '\n');
    }
    sb_free(&cell);
}

/* The options, the same for every file. */
typedef struct tensors_opts {
    bool json, sha256;
    const char *max_output, *max_expanded;
} tensors_opts;

static int tensors_one(const char *path, void *ctx)
{
    const tensors_opts *o = ctx;
    int rc = CLI_EXIT_OK;
    const char *max_output = o->max_output;
    tensors_ctx *c = cli_xrealloc(NULL, sizeof *c); /* cli_walk is a few KB: not on the stack */
    memset(c, 0, sizeof *c);
    c->json = o->json;
    c->sha256 = o->sha256;
    c->max_expanded = o->max_expanded;
    if (c->max_expanded)
        cli_parse_size(c->max_expanded, &c->max_hashed); /* validated by cmd_tensors */
    ckpt_file *f = cli_open(path);
    if (!f) {
        free(c);
        return CLI_EXIT_ERROR;
    }
    cli_walk_init(&c->w, ckpt_root(f));
    cli_walk_limit_output(&c->w, max_output, ckpt_file_size(f));
    if (!c->max_expanded) {
        uint64_t size = ckpt_file_size(f);
        c->max_hashed = size > UINT64_MAX / CLI_EXPAND_PER_INPUT_BYTE
                            ? UINT64_MAX
                            : size * CLI_EXPAND_PER_INPUT_BYTE;
        if (c->max_hashed < CLI_EXPAND_MIN_READ)
            c->max_hashed = CLI_EXPAND_MIN_READ;
    }
    cli_walk_share(&c->w);
    json_t *doc = NULL;
    if (c->json) {
        doc = json_object();
        json_object_set_new(doc, "file", cli_json_str(path, strlen(path)));
        json_object_set_new(doc, "format", json_string(ckpt_format_name(ckpt_file_format(f))));
        c->list = json_array();
        json_object_set_new(doc, "tensors", c->list);
    }

    if (!walk(c, ckpt_root(f)))
        rc = c->failed ? cli_error_ckpt(path, &c->err) : cli_error(path, "%s", c->w.error);
    else if (c->json) {
        rc = cli_emit_json(path, doc);
        doc = NULL;
    } else {
        cli_sb out = {0};
        print_rows(c, &out);
        cli_write_stdout(out.buf, out.len);
        sb_free(&out);
        rc = CLI_EXIT_OK;
    }
    if (rc == CLI_EXIT_OK)
        cli_warn_globals(path, f);

    json_decref(doc);
    for (size_t i = 0; i < c->n_rows; i++) {
        free(c->rows[i].path);
        free(c->rows[i].ref);
    }
    cli_walk_free(&c->w);
    free(c->rows);
    free(c->offs);
    free(c->hashed);
    ckpt__arena_free(c->hash_ar);
    sb_free(&c->cur);
    free(c);
    ckpt_close(f);
    return rc;
}

int cmd_tensors(int argc, char **argv, const cli_command *self)
{
    tensors_opts o = {0};
    cli_inputs in = {0};
    const cli_opt opts[] = {{"json", NULL, &o.json, NULL},
                            {"sha256", NULL, &o.sha256, NULL},
                            {"max-output", "BYTES", NULL, &o.max_output},
                            {"max-expanded", "BYTES", NULL, &o.max_expanded},
                            CLI_INPUT_OPTS(&in),
                            {NULL, NULL, NULL, NULL}};
    const char **pos;
    int npos;
    uint64_t unused;
    int rc = cli_inputs_parse(self, argc, argv, opts, &in, &pos, &npos);
    if (rc < 0 && o.max_output && !cli_parse_size(o.max_output, &unused))
        rc = cli_usage_error(self, "--max-output wants a byte count (e.g. 2G), not '%s'",
                             o.max_output);
    if (rc < 0 && o.max_expanded && !cli_parse_size(o.max_expanded, &unused))
        rc = cli_usage_error(self, "--max-expanded wants a byte count (e.g. 8G), not '%s'",
                             o.max_expanded);
    if (rc < 0) {
        o.json = o.json || in.jsonl;
        rc = cli_inputs_each(self, &in, pos, (size_t)npos, cli_checkpoint_exts, tensors_one,
                             &o);
    }
    free(pos);
    return rc;
}
