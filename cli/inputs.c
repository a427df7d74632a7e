/*
 * inputs.c - many inputs for one command: files, directories, --files-from lists, a shard of
 * them, the ones a previous --jsonl run has not done yet; one call of the command's function per
 * input, one bad input never stopping the others, a progress line on a terminal.
 *
 * The exit status summarises: 2 if any input failed, else 1 if any had a finding, else 0; a
 * single file given alone behaves exactly as the command always did.
 */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CLI_MAX_LIST_BYTES (1ull << 30) /* a --files-from or --skip-done file */

const char *const cli_checkpoint_exts[] = {".pt", ".pth", ".bin", ".ckpt", ".tar",
                                           ".safetensors", NULL};
const char *const cli_image_exts[] = {".jpg", ".jpeg", ".png", NULL};

/* ---- the list ---------------------------------------------------------------------------- */

typedef struct input {
    char *path;
    char *error; /* why it cannot even be tried (an unreadable directory), or NULL */
} input;

typedef struct input_list {
    input *v;
    size_t n, cap;
} input_list;

static void add(input_list *l, const char *path, const char *error)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = cli_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n].path = cli_xrealloc(NULL, strlen(path) + 1);
    strcpy(l->v[l->n].path, path);
    l->v[l->n].error = NULL;
    if (error) {
        l->v[l->n].error = cli_xrealloc(NULL, strlen(error) + 1);
        strcpy(l->v[l->n].error, error);
    }
    l->n++;
}

static bool has_ext(const char *name, const char *const *exts)
{
    size_t n = strlen(name);
    for (; *exts; exts++) {
        size_t e = strlen(*exts);
        if (n > e && strcasecmp(name + n - e, *exts) == 0)
            return true;
    }
    return false;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The files of directory dir, in name order; its subdirectories too when recursive. A
 * symbolic link to a directory is never followed (a link to a parent would loop); one to a
 * file is. */
static void walk_dir(const cli_inputs *in, const char *dir, const char *const *exts,
                     input_list *out)
{
    DIR *d = opendir(dir);
    if (!d) {
        char msg[300];
        snprintf(msg, sizeof msg, "cannot read the directory: %s", strerror(errno));
        add(out, dir, msg);
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = cli_xrealloc(names, cap * sizeof *names);
        }
        names[n] = cli_xrealloc(NULL, strlen(e->d_name) + 1);
        strcpy(names[n++], e->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    size_t dlen = strlen(dir);
    bool slash = dlen && dir[dlen - 1] == '/';
    for (size_t i = 0; i < n; i++) {
        char *p = cli_xrealloc(NULL, dlen + strlen(names[i]) + 2);
        sprintf(p, "%s%s%s", dir, slash ? "" : "/", names[i]);
        struct stat st;
        if (lstat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                if (in->recursive)
                    walk_dir(in, p, exts, out);
            } else if (S_ISLNK(st.st_mode)) {
                if (stat(p, &st) == 0 && S_ISREG(st.st_mode) && (in->all || has_ext(p, exts)))
                    add(out, p, NULL);
            } else if (S_ISREG(st.st_mode) && (in->all || has_ext(p, exts))) {
                add(out, p, NULL);
            }
        }
        free(p);
        free(names[i]);
    }
    free(names);
}

/* A path from the command line or a list: a directory is expanded, anything else is tried as
 * it is (so a missing file gets the command's own error). */
static void add_arg(const cli_inputs *in, const char *path, const char *const *exts,
                    input_list *out)
{
    struct stat st;
    if (!(stat(path, &st) == 0 && S_ISDIR(st.st_mode))) {
        add(out, path, NULL);
        return;
    }
    size_t before = out->n;
    walk_dir(in, path, exts, out);
    /* Naming a directory that holds nothing to read is a mistake worth an error (an unpacked
     * checkpoint 'model.pt/' is a directory too). */
    if (out->n == before) {
        char msg[200];
        snprintf(msg, sizeof msg, "is a directory with no %s files in it%s",
                 exts == cli_image_exts ? "image" : "checkpoint",
                 in->recursive ? (in->all ? "" : "; --all takes every file")
                               : "; -r descends into subdirectories");
        add(out, path, msg);
    }
}

/* The whole of a list file (or stdin for "-"), at most CLI_MAX_LIST_BYTES. NULL after an
 * error line. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        cli_error(path, "cannot open: %s", strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 65536;
            buf = cli_xrealloc(buf, cap + 1);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n > CLI_MAX_LIST_BYTES) {
            cli_error(path, "the list is larger than %llu MB",
                      (unsigned long long)(CLI_MAX_LIST_BYTES >> 20));
            break;
        }
        if (got == 0)
            break;
    }
    bool bad = ferror(f) || n > CLI_MAX_LIST_BYTES;
    if (ferror(f))
        cli_error(path, "cannot read: %s", strerror(errno));
    if (f != stdin)
        fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* ---- sharding and resuming --------------------------------------------------------------- */

/* FNV-1a over the path's bytes, then splitmix64's finaliser so that N shards split evenly.
 * Fixed, not keyed: every worker, on any machine, must compute the same share. */
uint64_t cli_path_hash(const char *path)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)path; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 31);
}

static bool parse_shard(const char *s, uint64_t *i, uint64_t *n)
{
    char *end;
    errno = 0;
    unsigned long long a = strtoull(s, &end, 10);
    if (errno || end == s || *end != '/' || s[0] == '-')
        return false;
    const char *t = end + 1;
    unsigned long long b = strtoull(t, &end, 10);
    if (errno || end == t || *end || t[0] == '-' || b == 0 || a >= b)
        return false;
    *i = a;
    *n = b;
    return true;
}

/* The "file" of every record in a JSON Lines file, sorted; a line that does not parse (the
 * last one of a killed run) is ignored. A missing file holds nothing. */
static int read_done(const char *path, char ***out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (access(path, F_OK) != 0 && errno == ENOENT)
        return -1;
    size_t len;
    char *text = slurp(path, &len);
    if (!text)
        return CLI_EXIT_ERROR;
    char **v = NULL;
    size_t n = 0, cap = 0;
    for (char *line = text; line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        size_t ll = nl ? (size_t)(nl - line) : (size_t)(text + len - line);
        json_t *doc = json_loadb(line, ll, 0, NULL);
        const char *file = json_string_value(json_object_get(doc, "file"));
        if (file) {
            if (n == cap) {
                cap = cap ? cap * 2 : 256;
                v = cli_xrealloc(v, cap * sizeof *v);
            }
            v[n] = cli_xrealloc(NULL, strlen(file) + 1);
            strcpy(v[n++], file);
        }
        json_decref(doc);
        line += ll + 1;
    }
    free(text);
    if (n)
        qsort(v, n, sizeof *v, cmp_str);
    *out = v;
    *n_out = n;
    return -1;
}

/* ---- progress ----------------------------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_progress_start(cli_progress *p, const cli_inputs *in, size_t total)
{
    memset(p, 0, sizeof *p);
    p->on = !in->quiet && total > 1 && isatty(STDERR_FILENO);
    p->start = p->last = now();
    p->total = total;
}

void cli_progress_clear(cli_progress *p)
{
    if (p->shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        p->shown = false;
    }
}

/* "ckpt: 120/1000 files, 35.2/s, 25 s left" on one line that the next one overwrites; at most
 * five times a second, and always for the last. */
void cli_progress_update(cli_progress *p, size_t done, const char *what)
{
    if (!p->on)
        return;
    double t = now();
    if (done < p->total && t - p->last < 0.2)
        return;
    p->last = t;
    double rate = t > p->start ? (double)done / (t - p->start) : 0;
    fprintf(stderr, "\r\033[Kckpt: %zu/%zu %s", done, p->total, what);
    if (done && rate > 0) {
        fprintf(stderr, ", %.1f/s", rate);
        if (done < p->total)
            fprintf(stderr, ", %.0f s left", (double)(p->total - done) / rate);
    }
    fflush(stderr);
    p->shown = true;
}

/* ---- the driver --------------------------------------------------------------------------- */

int cli_inputs_parse(const cli_command *self, int argc, char **argv, const cli_opt *opts,
                     const cli_inputs *in, const char ***pos, int *npos)
{
    *pos = cli_xrealloc(NULL, (size_t)(argc > 0 ? argc : 1) * sizeof **pos);
    *npos = 0;
    int rc = cli_parse_args(self, argc, argv, opts, *pos, 0, argc, npos);
    if (rc < 0 && *npos == 0 && !in->files_from)
        rc = cli_usage_error(self, "no file given");
    return rc;
}

int cli_inputs_check(const cli_command *self, const cli_inputs *in)
{
    uint64_t i, n;
    if (in->shard && !parse_shard(in->shard, &i, &n))
        return cli_usage_error(self, "--shard takes I/N with 0 <= I < N (e.g. 0/4), not '%s'",
                               in->shard);
    if (in->null_sep && !in->files_from)
        return cli_usage_error(self, "-0 goes with --files-from");
    if (in->skip_done && !in->jsonl)
        return cli_usage_error(self, "--skip-done reads the records of an earlier --jsonl run; "
                               "give --jsonl too");
    return -1;
}

int cli_inputs_list(const cli_inputs *in, const char *const *pos, size_t npos,
                    const char *const *exts, char ***paths, char ***errors, size_t *n_out)
{
    input_list l = {0};
    for (size_t k = 0; k < npos; k++)
        add_arg(in, pos[k], exts, &l);
    if (in->files_from) {
        size_t len;
        char *text = slurp(in->files_from, &len);
        if (!text) {
            for (size_t k = 0; k < l.n; k++) {
                free(l.v[k].path);
                free(l.v[k].error);
            }
            free(l.v);
            return CLI_EXIT_ERROR;
        }
        char sep = in->null_sep ? '\0' : '\n';
        for (size_t s = 0; s < len;) {
            size_t e = s;
            while (e < len && text[e] != sep)
                e++;
            text[e] = '\0';
            size_t t = e;
            if (!in->null_sep)
                while (t > s && text[t - 1] == '\r')
                    text[--t] = '\0';
            if (t > s)
                add_arg(in, text + s, exts, &l);
            s = e + 1;
        }
        free(text);
    }
    uint64_t si = 0, sn = 1;
    if (in->shard)
        parse_shard(in->shard, &si, &sn);
    char **done = NULL;
    size_t n_done = 0;
    if (in->skip_done) {
        int rc = read_done(in->skip_done, &done, &n_done);
        if (rc >= 0) {
            for (size_t k = 0; k < l.n; k++) {
                free(l.v[k].path);
                free(l.v[k].error);
            }
            free(l.v);
            return rc;
        }
    }
    char **p = cli_xrealloc(NULL, (l.n ? l.n : 1) * sizeof *p);
    char **e = cli_xrealloc(NULL, (l.n ? l.n : 1) * sizeof *e);
    size_t m = 0;
    for (size_t k = 0; k < l.n; k++) {
        const char *key = l.v[k].path;
        bool keep = cli_path_hash(key) % sn == si &&
                    !(n_done && bsearch(&key, done, n_done, sizeof *done, cmp_str));
        if (keep) {
            p[m] = l.v[k].path;
            e[m++] = l.v[k].error;
        } else {
            free(l.v[k].path);
            free(l.v[k].error);
        }
    }
    free(l.v);
    for (size_t k = 0; k < n_done; k++)
        free(done[k]);
    free(done);
    *paths = p;
    *errors = e;
    *n_out = m;
    return -1;
}

void cli_inputs_free(char **paths, char **errors, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        free(paths[k]);
        free(errors[k]);
    }
    free(paths);
    free(errors);
}

/* The worse of two statuses: an error outranks a finding, which outranks success. */
static int worse(int a, int b)
{
    return a > b ? a : b;
}

int cli_inputs_each(const cli_command *self, const cli_inputs *in, const char *const *pos,
                    size_t npos, const char *const *exts, cli_each_fn fn, void *ctx)
{
    int rc = cli_inputs_check(self, in);
    if (rc >= 0)
        return rc;
    char **paths, **errors;
    size_t n;
    rc = cli_inputs_list(in, pos, npos, exts, &paths, &errors, &n);
    if (rc >= 0)
        return rc;
    cli_jsonl = in->jsonl;
    cli_progress p;
    cli_progress_start(&p, in, n);
    int status = CLI_EXIT_OK;
    for (size_t k = 0; k < n; k++) {
        cli_progress_clear(&p);
        cli_error_capture_reset();
        unsigned long records = cli_records;
        int one;
        if (errors[k])
            one = cli_error(paths[k], "%s", errors[k]);
        else
            one = fn(paths[k], ctx);
        if (one == CLI_EXIT_ERROR && in->jsonl && cli_records == records)
            cli_emit_error_record(paths[k]);
        if (in->jsonl)
            fflush(stdout);
        status = worse(status, one);
        cli_progress_update(&p, k + 1, "files");
    }
    cli_progress_clear(&p);
    cli_inputs_free(paths, errors, n);
    return status;
}
