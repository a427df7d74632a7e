/*
 * cli.h - what the files of the `ckpt` command share: the command table, argument parsing,
 * error and warning lines, a growable text buffer, Python-like formatting of values, JSON
 * nodes, and the guard that keeps walks over a file's object graph finite.
 *
 * Output rule: a command builds its whole stdout in memory and writes it only once nothing can
 * fail any more, so an error leaves stdout empty (exit 2, one `ckpt: error: FILE: ...` line).
 */
#ifndef CKPT_CLI_H
#define CKPT_CLI_H

#include "ckpt.h"
#include "commands.h"
#include "util.h" /* ckpt__strbuf */

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- the command table (main.c) -------------------------------------------------------- */

typedef struct cli_command cli_command;
typedef int (*cli_fn)(int argc, char **argv, const cli_command *self);

struct cli_command {
    const char *name;
    cli_fn fn;
    const char *usage;   /* "ckpt inspect FILE [--depth N] [--json]" */
    const char *summary; /* one line for `ckpt help` */
    const char *help;    /* options and examples for `ckpt NAME --help` */
};

#define CLI__DECLARE(name, usage, summary)                                                     \
    int cmd_##name(int argc, char **argv, const cli_command *self);                            \
    extern const char cmd_##name##_help[];
CKPT_CLI_COMMANDS(CLI__DECLARE)
#undef CLI__DECLARE

/* Exit statuses (docs/CLI.md). */
#define CLI_EXIT_OK 0
#define CLI_EXIT_FINDING 1 /* scan: the file names unknown or dangerous globals */
#define CLI_EXIT_ERROR 2   /* unreadable or invalid file, bad command line */

/* ---- arguments (common.c) --------------------------------------------------------------- */

typedef struct cli_opt {
    const char *name;   /* "json" for --json */
    const char *arg;    /* NULL for a flag; else the value's name in messages ("N") */
    bool *flag;         /* set for a flag */
    const char **value; /* set for an option with a value */
} cli_opt;

/* Parse argv[1..argc) against opts (terminated by a {NULL} entry): --name, --name=value,
 * --name value, -h/--help, `--` to end options; positionals go to pos (between min_pos and
 * max_pos of them). Returns -1 to go on, or the exit status when done: 0 after printing the
 * help, 2 after reporting a usage error. */
int cli_parse_args(const cli_command *cmd, int argc, char **argv, const cli_opt *opts,
                   const char **pos, int min_pos, int max_pos, int *npos);
/* The library's limits from --max-alloc, --max-inflate, --max-depth, --max-memo (accepted by
 * every command through cli_parse_args; 0 fields are the defaults). Pass to ckpt_open and
 * ckpt_scan. */
extern ckpt_options cli_limits;
/* "ckpt: error: MESSAGE" and the usage line on stderr; returns CLI_EXIT_ERROR. */
int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* What the exit status means, for every command (main.c; `ckpt help` prints it). */
extern const char cli_exit_status_text[];

void cli_print_help(const cli_command *cmd, FILE *to);

/* ---- errors, warnings, output (common.c) ------------------------------------------------ */

/* "ckpt: error: PATH: MESSAGE" (one line, control characters replaced); returns 2. */
int cli_error(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cli_error_ckpt(const char *path, const ckpt_error *err);
/* "ckpt: warning: PATH: MESSAGE". */
void cli_warn(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One warning line per dangerous or unknown global of f (a few, then a count). */
void cli_warn_globals(const char *path, const ckpt_file *f);
/* Open path, or report the error; returns NULL after cli_error_ckpt. */
ckpt_file *cli_open(const char *path);
/* Write the finished output to stdout. */
void cli_write_stdout(const char *buf, size_t len);
/* Write one JSON document (cli_json_dump, then a newline) to stdout, and free it. Returns 0,
 * or 2 after an error line (out of memory). */
int cli_emit_json(const char *path, json_t *doc);

/* --jsonl (inputs.c sets it): cli_emit_json flushes each record, and a failed input gets an
 * error record. cli_records counts the documents cli_emit_json has written. */
extern bool cli_jsonl;
extern unsigned long cli_records;
/* The last error line's message and status name ("ECORRUPT"; "error" when not the library's),
 * kept since cli_error_capture_reset for the input's error record. */
void cli_error_capture_reset(void);
/* {"file": PATH, "error": {"status": ..., "message": ...}} on one line of stdout. */
void cli_emit_error_record(const char *path);

/* ---- many inputs (inputs.c) ---------------------------------------------------------------- */

/* The options of commands that take many inputs. Zero it, add CLI_INPUT_OPTS to the option
 * table, then hand the positionals to cli_inputs_each. */
typedef struct cli_inputs {
    bool recursive, all, null_sep, jsonl, quiet;
    const char *files_from, *skip_done, *shard;
} cli_inputs;

#define CLI_INPUT_OPTS(in)                                                                     \
    {"recursive", NULL, &(in)->recursive, NULL}, {"all", NULL, &(in)->all, NULL},              \
        {"files-from", "FILE", NULL, &(in)->files_from}, {"null", NULL, &(in)->null_sep, NULL}, \
        {"jsonl", NULL, &(in)->jsonl, NULL}, {"skip-done", "FILE.jsonl", NULL, &(in)->skip_done}, \
        {"shard", "I/N", NULL, &(in)->shard}, {"quiet", NULL, &(in)->quiet, NULL}

/* The options' help lines, for the commands' help texts. */
#define CLI_INPUT_HELP                                                                         \
    "Many inputs (docs/CLI.md): FILE... may be several files and directories.\n"              \
    "  -r, --recursive    descend into subdirectories (never through symbolic links)\n"       \
    "  --all              take every regular file of a directory, not only the usual\n"      \
    "                     extensions\n"                                                       \
    "  --files-from F     read more paths from F, one a line ('-': standard input)\n"         \
    "  -0, --null         the paths in F are separated by NUL bytes\n"                        \
    "  --jsonl            one JSON record per input, each on its own line, written as it ends\n" \
    "  --skip-done F      skip the inputs F (an earlier --jsonl output) already has records for\n" \
    "  --shard I/N        take only share I of N (by a hash of the path): N workers cover the\n" \
    "                     inputs exactly once\n"                                              \
    "  -q, --quiet        no progress line on a terminal\n"

/* Directory entries taken without --all. */
extern const char *const cli_checkpoint_exts[]; /* .pt .pth .bin .ckpt .tar .safetensors */
extern const char *const cli_image_exts[];      /* .jpg .jpeg .png */

/* Called once per input; returns that input's exit status. */
typedef int (*cli_each_fn)(const char *path, void *ctx);
/* Parse argv for a command that takes many inputs (its opts include CLI_INPUT_OPTS(in)):
 * *pos receives the positionals (free it), and at least one input, positional or
 * --files-from, is required. -1 to go on, else the exit status. */
int cli_inputs_parse(const cli_command *self, int argc, char **argv, const cli_opt *opts,
                     const cli_inputs *in, const char ***pos, int *npos);
/* Validate in's options; -1 to go on, else the exit status after a usage error. */
int cli_inputs_check(const cli_command *self, const cli_inputs *in);
/* The inputs: pos and --files-from, directories expanded (exts), then the shard and
 * --skip-done applied. paths[k] with errors[k] non-NULL cannot be tried (an unreadable
 * directory). Returns -1, or 2 after an error line (an unreadable list). Free with
 * cli_inputs_free. */
int cli_inputs_list(const cli_inputs *in, const char *const *pos, size_t npos,
                    const char *const *exts, char ***paths, char ***errors, size_t *n);
void cli_inputs_free(char **paths, char **errors, size_t n);
/* Call fn for each input, in order; the worst status (2 > 1 > 0). */
int cli_inputs_each(const cli_command *self, const cli_inputs *in, const char *const *pos,
                    size_t npos, const char *const *exts, cli_each_fn fn, void *ctx);
/* The shard hash: the same on every machine. */
uint64_t cli_path_hash(const char *path);

/* One line on stderr, only when it is a terminal and --quiet is not given. */
typedef struct cli_progress {
    bool on, shown;
    double start, last;
    size_t total;
} cli_progress;
void cli_progress_start(cli_progress *p, const cli_inputs *in, size_t total);
void cli_progress_update(cli_progress *p, size_t done, const char *what);
void cli_progress_clear(cli_progress *p); /* before anything else goes to stderr */

/* ---- broadcast views (common.c) ---------------------------------------------------------- */

/* A view with stride 0 makes a few stored bytes stand for any number of elements. Commands that
 * expand tensors (extract writes them contiguous, diff reads both sides whole) bound their
 * logical bytes by the inputs' size, as ckpt_tensor_sha256 does with CKPT_HASH_MAX_EXPANSION:
 * refused above CLI_EXPAND_PER_INPUT_BYTE times the input bytes, at least CLI_EXPAND_MIN_*,
 * unless --max-expanded BYTES says otherwise. */
#define CLI_EXPAND_PER_INPUT_BYTE 64
#define CLI_EXPAND_MIN_WRITE (2ull << 30) /* extract: written in chunks, costs disk and time */
#define CLI_EXPAND_MIN_READ (1ull << 30)  /* diff: each pair of tensors is held in memory */

/* The bytes of sd's tensors once expanded, each element as `to` when that is larger than its
 * own dtype (CKPT_DT_COUNT: as stored); saturates at UINT64_MAX. */
uint64_t cli_sd_expanded_bytes(const ckpt_sd *sd, ckpt_dtype to);
/* -1 when `bytes` fits the limit for input_size bytes of input (opt: the --max-expanded value,
 * already validated with cli_parse_size, or NULL); else the exit status after an error line
 * naming path, the limit and the option, followed by `tail` ("; nothing written" or ""). */
int cli_check_expanded(const char *path, uint64_t bytes, uint64_t input_size, uint64_t min,
                       const char *opt, const char *tail);

/* ---- text buffer (format.c) ------------------------------------------------------------- */

/* The library's growable buffer (src/util.h); these wrappers exit on out of memory. */
typedef ckpt__strbuf cli_sb;

void sb_putn(cli_sb *sb, const char *s, size_t n);
void sb_puts(cli_sb *sb, const char *s);
void sb_putc(cli_sb *sb, char c);
void sb_printf(cli_sb *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_pad(cli_sb *sb, size_t n); /* n spaces */
void sb_free(cli_sb *sb);
const char *sb_str(const cli_sb *sb); /* "" when empty */
/* Columns s[0..n) takes on a terminal: its UTF-8 code points. */
size_t cli_width(const char *s, size_t n);
/* s[0..n) with control characters as \xNN: names from a file must not drive the terminal. */
void sb_put_clean(cli_sb *sb, const char *s, size_t n);

/* Out of memory in the CLI: report and exit 2 (git's xmalloc). */
void *cli_xrealloc(void *p, size_t n);

/* ---- formatting values the Python way (format.c) ---------------------------------------- */

/* repr(float): the shortest digits that read back as x ("0.9327", "1e-05", "100.0", "nan"). */
void cli_fmt_float(cli_sb *sb, double x);
/* 102.2 MB (SI units, one decimal; bytes below 1000 as "72 B"). */
void cli_fmt_bytes(cli_sb *sb, uint64_t n);
/* 25.6 M, 7.2 B, 840 (parameter counts). */
void cli_fmt_count(cli_sb *sb, uint64_t n);
/* [64, 3, 7, 7] */
void cli_fmt_dims(cli_sb *sb, const int64_t *d, int n);
/* Decimal digits of a little-endian two's complement integer. */
void cli_fmt_bigint(cli_sb *sb, const unsigned char *le, size_t n);
/* "module.name" of a global value, or of an object's callable; NULL if it has none. */
const char *cli_class_of(const ckpt_value *v, cli_sb *scratch);

#define CLI_REPR_TENSORS 1u /* show tensors as tensor(float32 [2, 3]) instead of failing */

/* Python-like repr of v appended to sb, stopping once sb grows past `limit` bytes. Returns
 * false when it did not fit (the text ends in "...") or, without CLI_REPR_TENSORS, when v holds
 * a tensor or storage. */
bool cli_repr(cli_sb *sb, const ckpt_value *v, size_t limit, unsigned flags);
/* str(key) for a path component, as Python's walk does: strings as they are, bytes as
 * latin-1, numbers and tuples as their repr. */
void cli_key_str(cli_sb *sb, const ckpt_value *key);
/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one. */
size_t cli_utf8_len(const unsigned char *s, size_t n);
/* s[0..n) quoted the way Python's repr quotes a str, at most max_chars characters shown. */
void cli_repr_str(cli_sb *sb, const char *s, size_t n, size_t max_chars);

/* ---- walking the object graph (format.c) ------------------------------------------------ */

/* A memo can make a container hold itself, and shared references can make a 300-byte file a
 * tree of 2^40 items; every walk goes through a cli_walk that knows the containers on the
 * current path and counts the items it visits. The budget is a multiple of the items the file
 * really holds (each container counted once), so a legitimately huge pickle can be shown in
 * full while a small one that expands exponentially is stopped early. */
#define CLI_MAX_DEPTH 1000          /* containers on one path */
#define CLI_MIN_ITEMS (1u << 17)    /* the budget is at least this ... */
#define CLI_ITEMS_PER_DISTINCT 4    /* ... or this many times the distinct items */

/* Output that a walk prints (inspect, tensors) is bounded relative to the file: a printed
 * path repeats its parents' keys, and one string can be referenced from every item, so even a
 * walk that expands each container once could print far more than the file holds. */
#define CLI_OUTPUT_PER_INPUT_BYTE 64     /* the output limit is this many times the file ... */
#define CLI_OUTPUT_MIN (64ull << 20)     /* ... or at least this */

typedef struct cli_seen cli_seen;

typedef struct cli_walk {
    const ckpt_value *path[CLI_MAX_DEPTH];
    size_t depth;
    uint64_t items, max_items;
    uint64_t out, max_out; /* bytes charged by cli_walk_charge, and their limit (0: none) */
    bool max_out_given;    /* max_out came from --max-output */
    cli_seen *seen;        /* containers already expanded (cli_walk_share) */
    uint32_t node[CLI_MAX_DEPTH]; /* with seen: each path entry's record in it */
    char error[160]; /* set when a limit stopped the walk */
} cli_walk;

/* Reset w for walks under root, sizing the item budget from root's distinct items. */
void cli_walk_init(cli_walk *w, const ckpt_value *root);
/* Bound the bytes charged to w: `opt` (a --max-output value, or NULL for the default of
 * CLI_OUTPUT_PER_INPUT_BYTE times file_size, at least CLI_OUTPUT_MIN). Returns false when opt
 * is not a size (the caller reports the usage error). */
bool cli_walk_limit_output(cli_walk *w, const char *opt, uint64_t file_size);
/* Add n bytes of output; false (and w->error) once they pass w->max_out. */
bool cli_walk_charge(cli_walk *w, uint64_t n);
/* From now on cli_walk_enter_at expands each container once: a container met again is
 * CLI_SHARED, to be printed as a reference to where it was first expanded. */
void cli_walk_share(cli_walk *w);
void cli_walk_free(cli_walk *w); /* what cli_walk_share allocated */
typedef enum cli_enter { CLI_ENTERED, CLI_CYCLE, CLI_LIMIT, CLI_SHARED } cli_enter;
/* Enter container v (push it on the path). CLI_CYCLE: v is already on the path (not pushed).
 * CLI_LIMIT: a limit was hit (w->error says which; not pushed, and every later call fails). */
cli_enter cli_walk_enter(cli_walk *w, const ckpt_value *v);
/* The same, with the path component under which v is met (for references to it); after
 * cli_walk_share it returns CLI_SHARED (not pushed) for a container expanded before. */
cli_enter cli_walk_enter_at(cli_walk *w, const ckpt_value *v, const char *comp, size_t n);
void cli_walk_leave(cli_walk *w);
/* Mark the container on top of the path (and, as the walk leaves them, those around it): a
 * walk that lists only some items (tensors) prints references only to marked containers. */
void cli_walk_mark(cli_walk *w);
bool cli_walk_marked(const cli_walk *w, const ckpt_value *v);
/* The path of a CLI_SHARED container's first expansion: components joined with sep (control
 * characters escaped), or as a JSON array of strings. */
void cli_walk_ref_path(const cli_walk *w, const ckpt_value *v, const char *sep, cli_sb *sb);
json_t *cli_walk_ref_json(const cli_walk *w, const ckpt_value *v);
/* A byte count: digits with an optional K, M, G suffix (powers of 1024). */
bool cli_parse_size(const char *s, uint64_t *out);
bool cli_is_container(const ckpt_value *v); /* tuple, list, set, dict, object */

/* Tensors under v (v included), by occurrence. */
typedef struct cli_tensor_stats {
    uint64_t count, numel, nbytes;
    ckpt_dtype dtypes[CKPT_DT_COUNT]; /* in order of first appearance */
    int n_dtypes;
} cli_tensor_stats;
/* false when a limit stopped the count (w->error). */
bool cli_tensor_stats_add(cli_walk *w, const ckpt_value *v, cli_tensor_stats *st);
/* "  parameter  stride [1, 4]  offset 2": what is unusual about t, each after two spaces. */
void cli_fmt_tensor_flags(cli_sb *sb, const ckpt_tensor *t);
/* "320 tensors, 25.6 M parameters, 102.2 MB (float32)". */
void cli_fmt_stats(cli_sb *sb, const cli_tensor_stats *st, bool with_dtypes);

/* ---- locating the state dict (locate.c) --------------------------------------------------- */

/* The options check, extract and run share, and what they found. Zero it, point the option
 * table at it with CLI_LOCATE_OPTS, then call cli_locate_open. */
typedef struct cli_locate {
    const char *arch, *num_classes, *against, *key, *strip; /* option values, or NULL */
    bool allow_no_model; /* a dict that matches no architecture is not an error (the caller
                          * then finds l->r->verdict NULL) */
    const char *path;
    ckpt_sd_check_options o;
    ckpt_file *f, *t; /* the checkpoint and the --against template */
    ckpt_sd_report *r;
} cli_locate;

#define CLI_LOCATE_OPTS(l)                                                                     \
    {"arch", "NAME", NULL, &(l)->arch}, {"num-classes", "N", NULL, &(l)->num_classes},         \
        {"against", "TEMPLATE", NULL, &(l)->against}, {"key", "PATH", NULL, &(l)->key},        \
        {"strip-prefix", "P", NULL, &(l)->strip}

/* Validate the options, open path (and the template), find and judge the state dict, and warn
 * about dangerous globals. full: check's whole report (tensor values read, the words built);
 * else the verdict only (cli_locate_human adds the words when it needs them). Returns -1 to go
 * on (l->r has a verdict), or the exit status after reporting the error. Call
 * cli_locate_close in every case. */
int cli_locate_open(const cli_command *self, cli_locate *l, const char *path, bool full);
void cli_locate_close(cli_locate *l);
/* The words for a ResNet no torchvision constructor builds (a CIFAR ResNet) when no model
 * was named (--arch auto, no --against), whether or not a torchvision ResNet fits its names;
 * else NULL. */
const char *cli_locate_not_torchvision(cli_locate *l);
/* check's human report: the verdict, PyTorch's error text, explanations, Python lines. */
void cli_locate_human(cli_sb *out, const cli_locate *l);
/* A warning of the report for the command line: its message, plus the option that acts on it
 * (the library's words name no option). */
void cli_locate_warning(cli_sb *out, const ckpt_sd_warning *w);
/* "ckpt['model']" */
void cli_locate_where(cli_sb *out, const ckpt_sd_candidate *c);

/* ---- JSON (json.c) ------------------------------------------------------------------------ */

/* A C string as JSON (NULL: null), and an array of them. */
json_t *cli_json_cstr(const char *s);
json_t *cli_json_strs(const char *const *v, size_t n);
/* A JSON string from bytes that may not be UTF-8 (invalid sequences become U+FFFD). */
json_t *cli_json_str(const char *s, size_t n);
/* The inspect schema's NODE for v (docs/CLI.md); NULL when a limit stopped it (w->error).
 * After cli_walk_share, a container met again is {"ref": [PATH...]}. Output is charged. */
json_t *cli_json_value(cli_walk *w, const ckpt_value *v);
/* The tensor fields shared by inspect and tensors: dtype, shape, stride, storage_offset,
 * storage, nbytes, requires_grad, parameter. */
void cli_json_tensor_fields(json_t *o, const ckpt_tensor *t);
json_t *cli_json_dims(const int64_t *d, int n);
/* doc as compact JSON text, keys in insertion order, reals as their shortest repr. False when
 * out of memory. */
bool cli_json_dump(cli_sb *sb, json_t *doc);

#endif
