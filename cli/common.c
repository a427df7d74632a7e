/*
 * common.c - what every subcommand does the same way: parse its options, report errors and
 * warnings in git's one-line style, open the file, and write the finished output.
 */
#include "cli.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLI_MAX_WARNED_GLOBALS 5 /* one line each; the rest are counted in one more line */

/* ---- arguments -------------------------------------------------------------------------- */

ckpt_options cli_limits;

/* The library's limits, accepted by every command (docs/CLI.md): one table, one parser. */
typedef struct limit_opt {
    const char *name;
    const char *arg;
    uint64_t max;
    uint64_t dflt;
} limit_opt;

static const limit_opt limit_opts[] = {
    {"max-alloc", "SIZE", UINT64_MAX, CKPT_DEFAULT_MAX_ALLOC},
    {"max-inflate", "SIZE", UINT64_MAX, CKPT_DEFAULT_MAX_INFLATE},
    {"max-depth", "N", UINT32_MAX, CKPT_DEFAULT_MAX_DEPTH},
    {"max-memo", "N", UINT32_MAX, CKPT_DEFAULT_MAX_MEMO},
    {NULL, NULL, 0, 0},
};

static void set_limit(size_t which, uint64_t v)
{
    switch (which) {
    case 0: cli_limits.max_alloc = v; break;
    case 1: cli_limits.max_inflate = v; break;
    case 2: cli_limits.max_depth = (uint32_t)v; break;
    case 3: cli_limits.max_memo = (uint32_t)v; break;
    }
}

/* "64M", "2G", "1048576", "1GiB": binary multiples. */
static int parse_limit(const cli_command *cmd, const limit_opt *o, const char *s)
{
    uint64_t v = 0, mul = 1;
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return cli_usage_error(cmd, "--%s takes a number, not '%s'", o->name, s);
    bool over = false;
    for (; isdigit((unsigned char)*p); p++) {
        over |= __builtin_mul_overflow(v, 10, &v);
        over |= __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v);
    }
    if (*p && o->arg[0] == 'S') {
        const char *units = "KMGTPE";
        const char *u = strchr(units, toupper((unsigned char)*p));
        if (!u)
            return cli_usage_error(cmd, "--%s: unknown unit in '%s' (K, M, G or T)", o->name, s);
        for (int k = 0; k <= (int)(u - units); k++)
            mul *= 1024;
        p++;
        if (*p == 'i' || *p == 'I')
            p++;
        if (*p == 'B' || *p == 'b')
            p++;
    }
    if (*p)
        return cli_usage_error(cmd, "--%s takes a number, not '%s'", o->name, s);
    if (v == 0)
        return cli_usage_error(cmd, "--%s must be at least 1", o->name);
    if (over || __builtin_mul_overflow(v, mul, &v) || v > o->max)
        return cli_usage_error(cmd, "--%s value '%s' is too large (at most %llu)", o->name, s,
                               (unsigned long long)o->max);
    set_limit((size_t)(o - limit_opts), v);
    return -1;
}

void cli_print_help(const cli_command *cmd, FILE *to)
{
    fprintf(to, "usage: %s\n\n%c%s.\n", cmd->usage, toupper((unsigned char)cmd->summary[0]),
            cmd->summary + 1);
    if (cmd->help && *cmd->help)
        fprintf(to, "\n%s", cmd->help);
    fputs("\nExit status: see 'ckpt help'.\n", to);
    fputs("\nLimits on what a file may make ckpt do (every command; SIZE takes K, M, G):\n", to);
    for (const limit_opt *o = limit_opts; o->name; o++)
        fprintf(to, "  --%s %s%*s default %llu%s\n", o->name, o->arg,
                (int)(16 - strlen(o->name) - strlen(o->arg)), "",
                (unsigned long long)(o->arg[0] == 'S' ? o->dflt >> 30 : o->dflt),
                o->arg[0] == 'S' ? "G" : "");
}

int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    fputs("ckpt: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: %s\n", cmd->usage);
    return CLI_EXIT_ERROR;
}

int cli_parse_args(const cli_command *cmd, int argc, char **argv, const cli_opt *opts,
                   const char **pos, int min_pos, int max_pos, int *npos)
{
    bool options_done = false;
    *npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options_done || a[0] != '-' || a[1] == '\0') {
            if (*npos == max_pos)
                return cli_usage_error(cmd, "unexpected argument '%s'", a);
            pos[(*npos)++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            options_done = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            cli_print_help(cmd, stdout);
            return CLI_EXIT_OK;
        }
        const char *name = a + 2, *eq;
        if (a[1] != '-') {
            /* The few short options of the many-input commands. */
            static const char *const shorts[][2] = {{"-r", "recursive"}, {"-0", "null"},
                                                    {"-q", "quiet"}};
            name = NULL;
            for (size_t k = 0; k < sizeof shorts / sizeof shorts[0]; k++)
                for (const cli_opt *o = opts; o->name && !name; o++)
                    if (strcmp(a, shorts[k][0]) == 0 && strcmp(o->name, shorts[k][1]) == 0)
                        name = o->name;
            if (!name)
                return cli_usage_error(cmd, "unknown option '%s'", a);
        }
        eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const limit_opt *lo = limit_opts;
        while (lo->name && !(strlen(lo->name) == len && strncmp(lo->name, name, len) == 0))
            lo++;
        if (lo->name) {
            if (!eq && i + 1 >= argc)
                return cli_usage_error(cmd, "option '--%s' needs a value (%s)", lo->name,
                                       lo->arg);
            int rc = parse_limit(cmd, lo, eq ? eq + 1 : argv[++i]);
            if (rc >= 0)
                return rc;
            continue;
        }
        const cli_opt *o = opts;
        while (o->name && !(strlen(o->name) == len && strncmp(o->name, name, len) == 0))
            o++;
        if (!o->name)
            return cli_usage_error(cmd, "unknown option '%s'", a);
        if (!o->arg) {
            if (eq)
                return cli_usage_error(cmd, "option '--%s' takes no value", o->name);
            *o->flag = true;
        } else if (eq) {
            *o->value = eq + 1;
        } else if (i + 1 < argc) {
            *o->value = argv[++i];
        } else {
            return cli_usage_error(cmd, "option '--%s' needs a value (%s)", o->name, o->arg);
        }
    }
    if (*npos < min_pos)
        return cli_usage_error(cmd, min_pos == 1 ? "no file given" : "too few arguments");
    return -1;
}

/* ---- errors and warnings ---------------------------------------------------------------- */

/* Control characters would break the one-line contract; a path or message may hold them. */
static void put_clean(const char *s, FILE *to)
{
    for (; *s; s++)
        fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, to);
}

bool cli_jsonl;
unsigned long cli_records;
static char last_error[1024];
static const char *last_status = "error";

void cli_error_capture_reset(void)
{
    last_error[0] = '\0';
    last_status = "error";
}

void cli_emit_error_record(const char *path)
{
    json_t *doc = json_object();
    json_object_set_new(doc, "file", cli_json_str(path, strlen(path)));
    json_t *e = json_object();
    json_object_set_new(e, "status", json_string(last_status));
    json_object_set_new(e, "message", cli_json_str(last_error, strlen(last_error)));
    json_object_set_new(doc, "error", e);
    cli_emit_json(path, doc);
}

/* The library names its limits by their ckpt_options field; the CLI's user sets them with a
 * flag. Rewrites "raise ckpt_options.max_alloc" in msg to "raise it with --max-alloc". */
static void limit_advice(char *msg, size_t cap)
{
    static const char *const limits[][2] = {
        {"raise ckpt_options.max_alloc", "raise it with --max-alloc"},
        {"raise ckpt_options.max_inflate", "raise it with --max-inflate"},
    };
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        char *at = strstr(msg, limits[i][0]);
        size_t from = strlen(limits[i][0]), to = strlen(limits[i][1]);
        if (at && strlen(msg) - from + to < cap) { /* the flag is never longer: always fits */
            memmove(at + to, at + from, strlen(at + from) + 1);
            memcpy(at, limits[i][1], to);
        }
    }
}

__attribute__((format(printf, 3, 0)))
static void report(const char *what, const char *path, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    limit_advice(msg, sizeof msg);
    if (what[0] == 'e' && !last_error[0])
        memcpy(last_error, msg, sizeof msg);
    fprintf(stderr, "ckpt: %s: ", what);
    if (path) {
        put_clean(path, stderr);
        fputs(": ", stderr);
    }
    put_clean(msg, stderr);
    fputc('\n', stderr);
}

int cli_error(const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("error", path, fmt, ap);
    va_end(ap);
    return CLI_EXIT_ERROR;
}

void cli_warn(const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report("warning", path, fmt, ap);
    va_end(ap);
}

int cli_error_ckpt(const char *path, const ckpt_error *err)
{
    const char *msg = err->message[0] ? err->message : ckpt_status_str(err->status);
    bool first = !last_error[0];
    int rc = cli_error(path, "%s", msg);
    if (first)
        last_status = ckpt_status_name(err->status);
    return rc;
}

ckpt_file *cli_open(const char *path)
{
    ckpt_file *f = NULL;
    ckpt_error err = {0};
    if (ckpt_open(path, &cli_limits, &f, &err) != CKPT_OK) {
        cli_error_ckpt(path, &err);
        return NULL;
    }
    return f;
}

/* torch.jit.load resolves a TorchScript archive's __torch__.* classes against the archive's
 * own code and torch.jit._pickle.* in its C++ unpickler: Python imports neither ('ckpt scan'
 * still lists them). */
static bool script_global(const ckpt_file *f, const ckpt_global_ref *g)
{
    return ckpt_file_format(f) == CKPT_FORMAT_TORCHSCRIPT &&
           (!strcmp(g->module, "__torch__") || !strncmp(g->module, "__torch__.", 10) ||
            !strcmp(g->module, "torch.jit._pickle"));
}

void cli_warn_globals(const char *path, const ckpt_file *f)
{
    const ckpt_global_ref *g;
    size_t n = ckpt_globals(f, &g), shown = 0, more = 0;
    /* Dangerous ones first: they are the reason to read the warnings at all. */
    for (int pass = 0; pass < 2; pass++) {
        ckpt_global_kind want = pass == 0 ? CKPT_GLOBAL_DANGEROUS : CKPT_GLOBAL_UNKNOWN;
        for (size_t i = 0; i < n; i++) {
            if (g[i].kind != want || script_global(f, &g[i]))
                continue;
            if (shown == CLI_MAX_WARNED_GLOBALS) {
                more++;
                continue;
            }
            shown++;
            if (want == CKPT_GLOBAL_DANGEROUS)
                cli_warn(path, "names dangerous global '%s.%s': torch.load would run it "
                         "(ckpt did not)", g[i].module, g[i].name);
            else
                cli_warn(path, "names unknown global '%s.%s': torch.load would import it "
                         "(ckpt did not)", g[i].module, g[i].name);
        }
    }
    if (more)
        cli_warn(path, "and %zu more unknown or dangerous globals; see 'ckpt scan'", more);
}

/* ---- output --------------------------------------------------------------------------- */

void cli_write_stdout(const char *buf, size_t len)
{
    if (len)
        fwrite(buf, 1, len, stdout);
}

int cli_emit_json(const char *path, json_t *doc)
{
    cli_sb text = {0};
    bool ok = cli_json_dump(&text, doc);
    json_decref(doc);
    if (ok) {
        sb_putc(&text, '\n');
        cli_write_stdout(text.buf, text.len);
        cli_records++;
        if (cli_jsonl)
            fflush(stdout);
    }
    sb_free(&text);
    return ok ? CLI_EXIT_OK : cli_error(path, "out of memory while writing JSON");
}

/* ---- broadcast views ------------------------------------------------------------------- */

uint64_t cli_sd_expanded_bytes(const ckpt_sd *sd, ckpt_dtype to)
{
    uint64_t total = 0;
    size_t to_size = to < CKPT_DT_COUNT ? ckpt_dtype_size(to) : 0;
    for (size_t i = 0; i < sd->n_entries; i++) {
        const ckpt_sd_entry *e = &sd->entries[i];
        if (!e->is_tensor || !e->value || e->value->type != CKPT_T_TENSOR)
            continue;
        int64_t numel = ckpt_tensor_numel(e->value->u.tensor);
        size_t es = ckpt_dtype_size(e->dtype);
        if (to_size > es)
            es = to_size;
        if (numel < 0)
            return UINT64_MAX;
        if ((uint64_t)numel > (UINT64_MAX - total) / (es ? es : 1))
            return UINT64_MAX;
        total += (uint64_t)numel * es;
    }
    return total;
}

int cli_check_expanded(const char *path, uint64_t bytes, uint64_t input_size, uint64_t min,
                       const char *opt, const char *tail)
{
    uint64_t max;
    if (opt) {
        if (!cli_parse_size(opt, &max))
            max = 0;
    } else {
        max = input_size > UINT64_MAX / CLI_EXPAND_PER_INPUT_BYTE
                  ? UINT64_MAX
                  : input_size * CLI_EXPAND_PER_INPUT_BYTE;
        if (max < min)
            max = min;
    }
    if (bytes <= max)
        return -1;
    cli_sb b = {0}, m = {0};
    cli_fmt_bytes(&b, bytes);
    cli_fmt_bytes(&m, max);
    int rc = opt ? cli_error(path, "the tensors expand to %s, past the --max-expanded limit of "
                             "%s%s", sb_str(&b), sb_str(&m), tail)
                 : cli_error(path, "the tensors expand to %s (broadcast views?), past %s, the "
                             "limit for inputs of this size; raise it with --max-expanded "
                             "BYTES%s", sb_str(&b), sb_str(&m), tail);
    sb_free(&b);
    sb_free(&m);
    return rc;
}
