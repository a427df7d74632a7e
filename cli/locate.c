/*
 * locate.c - finding and judging the state dict, shared by `check`, `extract` and `run`.
 *
 * The three commands take the same options (--arch, --num-classes, --against, --key,
 * --strip-prefix), locate and unwrap the weights with the same library call (ckpt_sd_check),
 * and explain a failing strict load with the same words, so that what `run` or `extract`
 * refuses is exactly what `check` reports.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static bool parse_count(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > INT32_MAX)
        return false;
    *out = v;
    return true;
}

int cli_locate_open(const cli_command *self, cli_locate *l, const char *path, bool full)
{
    l->path = path;
    l->o.arch = l->arch;
    l->o.key = l->key;
    l->o.strip_prefix = l->strip;
    l->o.scan_values = full;
    l->o.explain = full;
    l->o.file_name = path;
    if (l->arch && strcmp(l->arch, "auto") != 0 && !ckpt_arch_by_name(l->arch)) {
        cli_sb names = {0};
        for (size_t i = 0; i < ckpt_arch_count(); i++)
            sb_printf(&names, i ? ", %s" : "%s", ckpt_arch_name(ckpt_arch_at(i)));
        int rc = cli_usage_error(self, "unknown architecture '%s' (auto, %s)", l->arch,
                                 sb_str(&names));
        sb_free(&names);
        return rc;
    }
    if (l->num_classes && !parse_count(l->num_classes, &l->o.num_classes))
        return cli_usage_error(self, "--num-classes takes a count from 1 to %d, not '%s'",
                               INT32_MAX, l->num_classes);
    if (l->against && l->arch && strcmp(l->arch, "auto") != 0)
        return cli_usage_error(self, "--against and --arch NAME exclude each other");
    if (!(l->f = cli_open(path)))
        return CLI_EXIT_ERROR;
    if (l->against) {
        if (!(l->t = cli_open(l->against)))
            return CLI_EXIT_ERROR;
        l->o.against = l->t;
    }
    ckpt_error err = {0};
    if (ckpt_sd_check(l->f, &l->o, &l->r, &err) != CKPT_OK)
        return cli_error_ckpt(path, &err);
    if (!l->allow_no_model) {
        const ckpt_sd_candidate *c = l->r->chosen;
        const char *not_tv = cli_locate_not_torchvision(l);
        if (not_tv) /* a CIFAR ResNet: say so, not "matches none", nor load it into resnet18 */
            return cli_error(path, "%s%s%s holds %s", c->path_len ? "'" : "",
                             c->path_len ? c->path_str : "the state dict",
                             c->path_len ? "'" : "", not_tv);
        const char *where = c->path_len ? c->path_str : NULL;
        if (!l->r->verdict)
            return cli_error(path, "%s%s%s (%zu tensor%s) matches none of the %zu known "
                             "architectures: pass --arch NAME, or --against a checkpoint of the "
                             "model", where ? "'" : "", where ? where : "the state dict",
                             where ? "'" : "", c->n_tensors, c->n_tensors == 1 ? "" : "s",
                             ckpt_arch_count());
    }
    cli_warn_globals(path, l->f);
    return -1;
}

const char *cli_locate_not_torchvision(cli_locate *l)
{
    /* the library's verdict_kind says it; the words are built only then, for the message */
    ckpt_error err;
    if (!l->r->verdict_kind || strcmp(l->r->verdict_kind, "not_torchvision") != 0 ||
        ckpt_sd_explain(l->r, &err) != CKPT_OK)
        return NULL;
    for (size_t i = 0; i < l->r->n_warnings; i++)
        if (!strcmp(l->r->warnings[i].code, "arch_not_torchvision"))
            return l->r->warnings[i].message;
    return NULL;
}


void cli_locate_close(cli_locate *l)
{
    ckpt_sd_report_free(l->r);
    ckpt_close(l->t);
    ckpt_close(l->f);
    l->r = NULL;
    l->t = l->f = NULL;
}

void cli_locate_where(cli_sb *out, const ckpt_sd_candidate *c)
{
    sb_puts(out, "ckpt");
    for (size_t i = 0; i < c->path_len; i++) {
        sb_puts(out, "['");
        sb_put_clean(out, c->path[i], strlen(c->path[i]));
        sb_puts(out, "']");
    }
}

void cli_locate_warning(cli_sb *out, const ckpt_sd_warning *w)
{
    sb_puts(out, w->message);
    if (!strcmp(w->code, "other_candidates"))
        sb_puts(out, " (choose one with --key)");
    else if (!strcmp(w->code, "arch_unknown"))
        sb_puts(out, " with --against TEMPLATE");
}

void cli_locate_human(cli_sb *out, const cli_locate *l)
{
    ckpt_error ignored;
    /* run and extract locate without the words; a refusal shows them (on failure: without) */
    ckpt_sd_explain(l->r, &ignored);
    const ckpt_sd_report *r = l->r;
    const ckpt_sd_verdict *v = r->verdict;
    sb_put_clean(out, l->path, strlen(l->path));
    sb_puts(out, ": ");
    cli_locate_where(out, r->chosen);
    if (r->prefix[0]) {
        sb_puts(out, " without '");
        sb_put_clean(out, r->prefix, strlen(r->prefix));
        sb_puts(out, "'");
    }
    /* a backbone has no class count: the file has no classifier to read it from */
    bool backbone = r->verdict_kind && !strcmp(r->verdict_kind, "backbone");
    if (r->arch && backbone) {
        sb_printf(out, " into torchvision.models.%s()", ckpt_arch_name(r->arch));
    } else if (r->arch) {
        sb_printf(out, " into torchvision.models.%s(num_classes=%" PRId64 ")",
                  ckpt_arch_name(r->arch), r->num_classes);
    } else {
        sb_puts(out, " into the model of ");
        sb_put_clean(out, l->against, strlen(l->against));
    }
    if (backbone && !v->ok)
        sb_printf(out, ": strict load FAILS, as for any backbone: %s and %s are not in the "
                  "file\n", ckpt_arch_head(r->arch, false), ckpt_arch_head(r->arch, true));
    else
        sb_puts(out, v->ok ? ": strict load OK\n" : ": strict load FAILS\n");
    sb_printf(out, "  %zu tensor%s, ", r->n_tensors, r->n_tensors == 1 ? "" : "s");
    cli_fmt_count(out, (uint64_t)r->n_parameters);
    sb_puts(out, " parameters");
    if (!v->ok)
        sb_printf(out, "; %zu missing, %zu unexpected, %zu size mismatch%s", v->n_missing,
                  v->n_unexpected, v->n_mismatch, v->n_mismatch == 1 ? "" : "es");
    sb_putc(out, '\n');
    if (v->message) {
        sb_puts(out, "\nPyTorch would raise:\n");
        if (strncmp(v->message, "IndexError", 10) != 0)
            sb_puts(out, "RuntimeError: ");
        /* the text holds tabs and newlines by design; other control characters are escaped */
        for (const char *p = v->message; *p; p++) {
            unsigned char ch = (unsigned char)*p;
            if (ch == '\n' || ch == '\t' || (ch >= 0x20 && ch != 0x7f))
                sb_putc(out, (char)ch);
            else
                sb_printf(out, "\\x%02x", ch);
        }
        sb_putc(out, '\n');
    }
    if (r->n_warnings) {
        sb_putc(out, '\n');
        for (size_t i = 0; i < r->n_warnings; i++) {
            cli_sb w = {0};
            cli_locate_warning(&w, &r->warnings[i]);
            sb_puts(out, "- ");
            sb_put_clean(out, sb_str(&w), w.len);
            sb_free(&w);
            sb_putc(out, '\n');
        }
    }
    if (r->python) {
        sb_puts(out, "\nTo load it in Python:\n");
        for (const char *p = r->python; *p;) {
            const char *nl = strchr(p, '\n');
            size_t n = nl ? (size_t)(nl - p) : strlen(p);
            sb_puts(out, "    ");
            sb_put_clean(out, p, n);
            sb_putc(out, '\n');
            p += n + (nl != NULL);
        }
    }
}
