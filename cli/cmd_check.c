/*
 * cmd_check.c - `ckpt check FILE`: would `model.load_state_dict(sd, strict=True)` succeed?
 *
 * Finds the state dict in the file, strips wrapper prefixes, recognises the torchvision ResNet
 * (or takes --arch / --against), then prints PyTorch's own verdict (its RuntimeError text when
 * the load fails), ckpt's explanations, and the Python that loads the file correctly. The JSON
 * schema is in docs/CHECK.md. Exit 0: a strict load succeeds; 1: it fails; 2: error.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* The command table (commands.h) declares these once check is listed there. */
int cmd_check(int argc, char **argv, const cli_command *self);
extern const char cmd_check_help[];

const char cmd_check_help[] =
    "Finds the dict of tensors that holds the model (at the root, or under 'model',\n"
    "'state_dict', 'model_ema', ... at any depth), removes wrapper prefixes ('module.',\n"
    "'_orig_mod.', 'model.', stacked ones), recognises which known architecture it is (the\n"
    "ten torchvision ResNets; vgg11, check-only) and its class count, and says what\n"
    "model.load_state_dict(sd, strict=True) would do in PyTorch 1.13/2.x: the missing,\n"
    "unexpected and mismatched keys, in PyTorch's words.\n"
    "Then what else is worth knowing (a training checkpoint, BatchNorm statistics never\n"
    "trained, NaN/Inf values, unusual dtypes) and the few lines of Python that load it.\n"
    "\n"
    "Options:\n"
    "  --arch NAME        check against torchvision.models.NAME (resnet18/34/50/101/152,\n"
    "                     resnext50_32x4d, resnext101_32x8d, resnext101_64x4d,\n"
    "                     wide_resnet50_2, wide_resnet101_2, vgg11); auto (default):\n"
    "                     recognise it\n"
    "  --num-classes N    the model's class count (default: from the head's shape with auto,\n"
    "                     torchvision's 1000 with --arch NAME)\n"
    "  --against T        check against the state dict in checkpoint T instead, e.g.\n"
    "                     torch.save(MyModel().state_dict(), 'T.pth'): any architecture\n"
    "  --key PATH         where the state dict is, as dict keys/list indexes: model/ema\n"
    "  --strip-prefix P   remove P from the keys instead of guessing ('' removes nothing)\n"
    "  --json             one JSON document on stdout (schema in docs/CHECK.md)\n"
    "\n" CLI_INPUT_HELP "\n"
    "\n"
    "Examples:\n"
    "  ckpt check rsp-resnet-50-ckpt.pth\n"
    "  ckpt check model.pth --arch resnet50 --num-classes 51\n"
    "  ckpt check trained.pt --against template.pth --json\n";


/* The file's other copies of a network (docs/CHECK.md), for --key and --strip-prefix. */
/* [[model_key, file_key], ...] */
static json_t *key_pairs(const ckpt_sd_key_pair *p, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *pair = json_array();
        json_array_append_new(pair, cli_json_cstr(p[i].model_key));
        json_array_append_new(pair, cli_json_cstr(p[i].file_key));
        json_array_append_new(a, pair);
    }
    return a;
}

static json_t *alternatives(const ckpt_sd_report *r)
{
    json_t *alts = json_array();
    for (size_t i = 0; i < r->n_alternatives; i++) {
        const ckpt_sd_candidate *c = &r->alternatives[i];
        json_t *o = json_object();
        json_object_set_new(o, "path", cli_json_strs(c->path, c->path_len));
        json_object_set_new(o, "prefix", cli_json_cstr(c->prefix));
        json_object_set_new(o, "kind", json_string(r->alternative_kinds[i]));
        json_object_set_new(o, "arch", c->arch ? json_string(ckpt_arch_name(c->arch))
                                               : json_null());
        json_array_append_new(alts, o);
    }
    return alts;
}

static json_t *to_json(const char *path, const char *against, const ckpt_sd_report *r)
{
    const ckpt_sd_verdict *v = r->verdict;
    json_t *doc = json_object();
    json_object_set_new(doc, "file", cli_json_cstr(path));
    json_object_set_new(doc, "state_dict_path", cli_json_strs(r->chosen->path, r->chosen->path_len));
    json_object_set_new(doc, "prefix", cli_json_cstr(r->prefix));
    json_object_set_new(doc, "naming", r->naming ? json_string(r->naming) : json_null());
    json_object_set_new(doc, "arch", r->arch ? json_string(ckpt_arch_name(r->arch)) : json_null());
    json_object_set_new(doc, "num_classes",
                        r->arch ? json_integer((json_int_t)r->num_classes) : json_null());
    json_object_set_new(doc, "against", against ? cli_json_cstr(against) : json_null());
    json_object_set_new(doc, "ok", json_boolean(v->ok));
    json_object_set_new(doc, "verdict_kind", cli_json_cstr(r->verdict_kind));
    json_object_set_new(doc, "alternatives", alternatives(r));
    json_object_set_new(doc, "missing", cli_json_strs(v->missing, v->n_missing));
    json_object_set_new(doc, "unexpected", cli_json_strs(v->unexpected, v->n_unexpected));
    json_t *mm = json_array();
    for (size_t i = 0; i < v->n_mismatch; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "key", cli_json_cstr(v->mismatch[i].key));
        json_object_set_new(o, "checkpoint", cli_json_dims(v->mismatch[i].checkpoint->shape,
                                                           v->mismatch[i].checkpoint->ndim));
        json_object_set_new(o, "model", cli_json_dims(v->mismatch[i].model->shape,
                                                      v->mismatch[i].model->ndim));
        json_array_append_new(mm, o);
    }
    json_object_set_new(doc, "size_mismatch", mm);
    json_object_set_new(doc, "errors", cli_json_strs(v->errors, v->n_errors));
    json_object_set_new(doc, "error_text", cli_json_cstr(v->message));
    json_object_set_new(doc, "tensors", json_integer((json_int_t)r->n_tensors));
    json_object_set_new(doc, "parameters", json_integer((json_int_t)r->n_parameters));
    json_object_set_new(doc, "loaded", json_integer((json_int_t)v->n_loaded));
    if (r->whole_file) {
        json_t *w = json_object();
        json_object_set_new(w, "loaded", json_integer((json_int_t)r->whole_file->n_loaded));
        json_object_set_new(w, "missing", json_integer((json_int_t)r->whole_file->n_missing));
        json_object_set_new(w, "unexpected",
                            json_integer((json_int_t)r->whole_file->n_unexpected));
        json_object_set_new(doc, "whole_file", w);
    } else {
        json_object_set_new(doc, "whole_file", json_null());
    }
    json_object_set_new(doc, "key_map", key_pairs(r->key_map, r->n_key_map));
    json_object_set_new(doc, "renames", key_pairs(r->renames, r->n_renames));
    json_t *left = json_array();
    for (size_t i = 0; i < r->n_left_out; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "key", cli_json_cstr(r->left_out[i].file_key));
        json_object_set_new(o, "why", json_string(r->left_out[i].why));
        json_array_append_new(left, o);
    }
    json_object_set_new(doc, "left_out", left);
    json_t *cands = json_array();
    for (size_t i = 0; i < r->n_candidates; i++) {
        const ckpt_sd_candidate *c = &r->candidates[i];
        json_t *o = json_object();
        json_object_set_new(o, "path", cli_json_strs(c->path, c->path_len));
        json_object_set_new(o, "tensors", json_integer((json_int_t)c->n_tensors));
        json_object_set_new(o, "entries", json_integer((json_int_t)c->n_entries));
        json_object_set_new(o, "prefix", cli_json_cstr(c->prefix));
        json_object_set_new(o, "arch",
                            c->arch ? json_string(ckpt_arch_name(c->arch)) : json_null());
        json_object_set_new(o, "matched", json_integer((json_int_t)c->matched));
        json_object_set_new(o, "expected", json_integer((json_int_t)c->expected));
        json_object_set_new(o, "chosen", json_boolean(c == r->chosen));
        json_array_append_new(cands, o);
    }
    json_object_set_new(doc, "candidates", cands);
    json_t *warns = json_array();
    for (size_t i = 0; i < r->n_warnings; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "code", json_string(r->warnings[i].code));
        cli_sb w = {0};
        cli_locate_warning(&w, &r->warnings[i]);
        json_object_set_new(o, "message", cli_json_cstr(sb_str(&w)));
        sb_free(&w);
        json_array_append_new(warns, o);
    }
    json_object_set_new(doc, "warnings", warns);
    json_object_set_new(doc, "python", cli_json_cstr(r->python));
    return doc;
}

typedef struct check_opts {
    bool json;
    cli_locate l; /* the options; each file gets a copy */
    const cli_command *self;
} check_opts;

static int check_one(const char *path, void *ctx)
{
    const check_opts *o = ctx;
    cli_locate l = o->l;
    int rc = cli_locate_open(o->self, &l, path, true);
    if (rc < 0) {
        const ckpt_sd_report *r = l.r;
        if (o->json) {
            rc = cli_emit_json(l.path, to_json(l.path, l.against, r));
            if (rc == CLI_EXIT_OK && !r->verdict->ok)
                rc = CLI_EXIT_FINDING;
        } else {
            cli_sb out = {0};
            cli_locate_human(&out, &l);
            cli_write_stdout(out.buf, out.len);
            sb_free(&out);
            rc = r->verdict->ok ? CLI_EXIT_OK : CLI_EXIT_FINDING;
        }
    }
    cli_locate_close(&l);
    return rc;
}

int cmd_check(int argc, char **argv, const cli_command *self)
{
    check_opts o;
    memset(&o, 0, sizeof o);
    o.self = self;
    cli_inputs in = {0};
    const cli_opt opts[] = {
        CLI_LOCATE_OPTS(&o.l),
        {"json", NULL, &o.json, NULL},
        CLI_INPUT_OPTS(&in),
        {NULL, NULL, NULL, NULL},
    };
    const char **pos;
    int npos;
    int rc = cli_inputs_parse(self, argc, argv, opts, &in, &pos, &npos);
    if (rc < 0) {
        o.json = o.json || in.jsonl;
        rc = cli_inputs_each(self, &in, pos, (size_t)npos, cli_checkpoint_exts, check_one, &o);
    }
    free(pos);
    return rc;
}
