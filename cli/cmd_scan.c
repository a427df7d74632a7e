/*
 * cmd_scan.c - `ckpt scan FILE... [--json]`: every global the file's pickles name, classified,
 * with where it first occurs. Exit 0 when only weights and data globals occur, 1 when any is
 * unknown or dangerous, 2 when the file cannot be scanned (or a parse error leaves a file with
 * only safe globals, which then cannot be called safe).
 */
#include "cli.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

const char cmd_scan_help[] =
    "Lists every global (module.name) the file's pickles refer to, without running any of them,\n"
    "as one of:\n"
    "  dangerous  known to run code or touch the system (os.system, builtins.eval, ...)\n"
    "  unknown    anything else not below: torch.load would import it, and may run it\n"
    "  data       harmless data classes (numpy scalars, argparse.Namespace, ...)\n"
    "  weights    on PyTorch 2.6's weights_only allowlist (rebuild functions, dtypes, ...)\n"
    "It reads what torch.load would read, whatever the file's first bytes claim: a zip's\n"
    "data.pkl (and constants.pkl of TorchScript), a torch 0.1.x tar's pickles, otherwise the\n"
    "pickles from offset 0 (five for the legacy format, else one; later bytes are reported,\n"
    "not parsed). Side pickles other loaders run (other .pkl entries, numpy object arrays) are\n"
    "listed too. Tensor data is never parsed as a pickle.\n"
    "\n"
    "Options:\n"
    "  --json     one JSON document on stdout (schema in docs/CLI.md)\n"
    "\n" CLI_INPUT_HELP "\n"
    "\n"
    "Examples:\n"
    "  ckpt scan pytorch_model.bin\n"
    "  ckpt scan --json downloaded.pt | jq '.globals[] | select(.kind == \"dangerous\")'\n";

static const ckpt_global_kind kind_order[] = {CKPT_GLOBAL_DANGEROUS, CKPT_GLOBAL_UNKNOWN,
                                              CKPT_GLOBAL_DATA, CKPT_GLOBAL_WEIGHTS};

static void human(cli_sb *out, const char *path, const ckpt_scan_result *r)
{
    size_t n_kind[4] = {0}, wname = 0, bad_route = 0;
    cli_sb name = {0};
    for (size_t i = 0; i < r->n_globals; i++) {
        const ckpt_global_ref *g = &r->globals[i];
        if ((unsigned)g->kind < 4)
            n_kind[g->kind]++;
        if (g->torch_load && (g->kind == CKPT_GLOBAL_DANGEROUS || g->kind == CKPT_GLOBAL_UNKNOWN))
            bad_route++;
        size_t len = strlen(g->module) + 1 + strlen(g->name);
        if (len > wname)
            wname = len;
    }
    if (wname > 60)
        wname = 60;
    sb_put_clean(out, path, strlen(path));
    sb_printf(out, ": %s, %zu global%s\n", r->format ? r->format : "?", r->n_globals,
              r->n_globals == 1 ? "" : "s");
    for (size_t k = 0; k < 4; k++) {
        for (size_t i = 0; i < r->n_globals; i++) {
            const ckpt_global_ref *g = &r->globals[i];
            if (g->kind != kind_order[k])
                continue;
            name.len = 0;
            sb_put_clean(&name, g->module, strlen(g->module));
            sb_putc(&name, '.');
            sb_put_clean(&name, g->name, strlen(g->name));
            sb_printf(out, "  %-9s  %s", ckpt_global_kind_name(g->kind), sb_str(&name));
            sb_pad(out, name.len < wname ? wname - name.len : 0);
            sb_puts(out, "  ");
            sb_put_clean(out, g->where ? g->where : "?", strlen(g->where ? g->where : "?"));
            sb_printf(out, " @ %" PRIu64, g->offset);
            if (g->count > 1)
                sb_printf(out, " (%" PRIu32 " times)", g->count);
            sb_putc(out, '\n');
        }
    }
    size_t bad = n_kind[CKPT_GLOBAL_DANGEROUS] + n_kind[CKPT_GLOBAL_UNKNOWN];
    if (bad) {
        sb_printf(out, "unsafe: %zu dangerous and %zu unknown global%s; ",
                  n_kind[CKPT_GLOBAL_DANGEROUS], n_kind[CKPT_GLOBAL_UNKNOWN],
                  n_kind[CKPT_GLOBAL_UNKNOWN] == 1 ? "" : "s");
        if (bad_route == bad)
            sb_puts(out, "torch.load(weights_only=False) would import and run them\n");
        else if (bad_route == 0)
            sb_printf(out, "only side pickles name %s: torch.load does not run %s, a loader "
                      "that reads every pickle (pickle.load again, numpy.load(allow_pickle=True)"
                      ") would\n", bad == 1 ? "it" : "them", bad == 1 ? "it" : "them");
        else
            sb_printf(out, "torch.load(weights_only=False) would import and run %zu of them; "
                      "the other %zu are named only by side pickles that other loaders run\n",
                      bad_route, bad - bad_route);
    } else if (r->n_globals == 0)
        sb_puts(out, "safe: names no globals\n");
    else
        sb_puts(out, "safe: only weights and data globals\n");
    for (size_t i = 0; i < r->n_notes; i++) {
        sb_puts(out, "note: ");
        sb_put_clean(out, r->notes[i], strlen(r->notes[i]));
        sb_putc(out, '\n');
    }
    sb_free(&name);
}

static json_t *to_json(const char *path, const ckpt_scan_result *r, bool safe)
{
    json_t *doc = json_object();
    json_object_set_new(doc, "file", cli_json_str(path, strlen(path)));
    json_object_set_new(doc, "format", r->format ? json_string(r->format) : json_null());
    json_t *a = json_array();
    json_object_set_new(doc, "globals", a);
    cli_sb name = {0};
    for (size_t i = 0; i < r->n_globals; i++) {
        const ckpt_global_ref *g = &r->globals[i];
        json_t *o = json_object();
        name.len = 0;
        sb_printf(&name, "%s.%s", g->module, g->name);
        json_object_set_new(o, "name", cli_json_str(name.buf, name.len));
        json_object_set_new(o, "module", cli_json_str(g->module, strlen(g->module)));
        json_object_set_new(o, "kind", json_string(ckpt_global_kind_name(g->kind)));
        json_object_set_new(o, "where", g->where ? cli_json_str(g->where, strlen(g->where))
                                                 : json_null());
        json_object_set_new(o, "offset", json_integer((json_int_t)g->offset));
        json_object_set_new(o, "count", json_integer(g->count));
        json_object_set_new(o, "torch_load", json_boolean(g->torch_load));
        json_array_append_new(a, o);
    }
    sb_free(&name);
    json_object_set_new(doc, "safe", json_boolean(safe));
    json_t *notes = json_array();
    for (size_t i = 0; i < r->n_notes; i++)
        json_array_append_new(notes, cli_json_str(r->notes[i], strlen(r->notes[i])));
    json_object_set_new(doc, "notes", notes);
    json_object_set_new(doc, "parse_error", r->parse_error ? cli_json_str(r->parse_error,
                                                   strlen(r->parse_error)) : json_null());
    return doc;
}

static int scan_one(const char *path, void *ctx)
{
    bool json = *(const bool *)ctx;
    ckpt_scan_result *r = NULL;
    ckpt_error err = {0};
    if (ckpt_scan(path, &cli_limits, &r, &err) != CKPT_OK)
        return cli_error_ckpt(path, &err);

    int rc;
    bool unsafe = !r->safe; /* an unknown or dangerous global */
    if (!unsafe && r->parse_error) {
        /* Nothing bad was seen, but not everything could be seen. */
        rc = cli_error(path, "%s", r->parse_error);
        ckpt_scan_free(r);
        return rc;
    }
    if (json) {
        rc = cli_emit_json(path, to_json(path, r, !unsafe));
    } else {
        cli_sb out = {0};
        human(&out, path, r);
        cli_write_stdout(out.buf, out.len);
        sb_free(&out);
        rc = CLI_EXIT_OK;
    }
    if (r->parse_error)
        cli_warn(path, "%s; globals after that point were not seen", r->parse_error);
    ckpt_scan_free(r);
    if (rc != CLI_EXIT_OK)
        return rc;
    return unsafe ? CLI_EXIT_FINDING : CLI_EXIT_OK;
}

int cmd_scan(int argc, char **argv, const cli_command *self)
{
    bool json = false;
    cli_inputs in = {0};
    const cli_opt opts[] = {{"json", NULL, &json, NULL}, CLI_INPUT_OPTS(&in),
                            {NULL, NULL, NULL, NULL}};
    const char **pos;
    int npos;
    int rc = cli_inputs_parse(self, argc, argv, opts, &in, &pos, &npos);
    if (rc < 0) {
        json = json || in.jsonl;
        rc = cli_inputs_each(self, &in, pos, (size_t)npos, cli_checkpoint_exts, scan_one, &json);
    }
    free(pos);
    return rc;
}
