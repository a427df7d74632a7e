/* write.c - the output file every writer goes through, and what the writers share.
 *
 * Never lose data: the bytes go to `.NAME.ckpt-tmp-XXXXXX` in the output's folder (created
 * with O_EXCL, so nobody else's file is touched); commit flushes, fsyncs, renames it over
 * NAME and fsyncs the folder. Without force the rename refuses a NAME that exists, atomically
 * (renameat2 RENAME_NOREPLACE, else link + unlink). The inputs are recognised by device and
 * inode, at open and again just before the rename, so a hard link or another spelling of an
 * input's path is refused too. Any failure removes the temporary file; a process killed
 * mid-write leaves only it, never a partial NAME.
 *
 * Writes are buffered (small pieces) or passed straight to write(2) (tensor chunks); every
 * few MB the kernel is asked to start writing back (sync_file_range), so the final fsync
 * waits for little and dirty pages do not pile up. */
#define _GNU_SOURCE /* renameat2, sync_file_range, fallocate */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define WRITE_BUF_BYTES (1u << 20)      /* small writes are gathered into this much */
#define WRITE_SYNC_EVERY (32ull << 20)  /* start writeback after this many new bytes */
#define WRITE_PROGRESS_EVERY (4ull << 20)
#define WRITE_MAX_INPUTS 16             /* identities remembered from opt->inputs */
#define WRITE_TMP_TRIES 100             /* names tried for the temporary file */
#define WRITE_TMP_STEM_MAX 200          /* bytes of the output's name kept in the temporary's */

struct ckpt__write_file {
    int fd;
    char *path;     /* final */
    char *tmp;
    char *dir;      /* the folder of both, for its fsync */
    bool force;
    uint64_t pos;   /* bytes accepted (written or buffered) */
    uint64_t expect;
    bool reserved;  /* fallocate reserved `expect` bytes */
    uint64_t synced;
    uint8_t *buf;
    size_t used;
    ckpt_progress_fn progress;
    void *progress_ud;
    uint64_t next_progress;
    size_t n_inputs;
    dev_t in_dev[WRITE_MAX_INPUTS];
    ino_t in_ino[WRITE_MAX_INPUTS];
};

/* ---- formats -------------------------------------------------------------------------- */

const char *ckpt_write_format_name(ckpt_write_format fmt)
{
    switch (fmt) {
    case CKPT_WRITE_PTH: return "pth";
    case CKPT_WRITE_SAFETENSORS: return "safetensors";
    }
    return NULL;
}

int ckpt_write_format_from_name(const char *name)
{
    if (!name)
        return -1;
    if (!strcmp(name, "pth") || !strcmp(name, "pt") || !strcmp(name, "torch"))
        return CKPT_WRITE_PTH;
    if (!strcmp(name, "safetensors"))
        return CKPT_WRITE_SAFETENSORS;
    return -1;
}

static bool ends_with_ci(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    if (n < m)
        return false;
    for (size_t i = 0; i < m; i++) {
        char c = s[n - m + i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != suffix[i])
            return false;
    }
    return true;
}

int ckpt_write_format_for_path(const char *path)
{
    static const char *const pth[] = {".pth", ".pt", ".bin", ".ckpt", ".tar"};
    if (!path)
        return -1;
    if (ends_with_ci(path, ".safetensors"))
        return CKPT_WRITE_SAFETENSORS;
    for (size_t i = 0; i < sizeof pth / sizeof pth[0]; i++)
        if (ends_with_ci(path, pth[i]))
            return CKPT_WRITE_PTH;
    return -1;
}

int ckpt_write_sd(const char *path, const struct ckpt_sd *sd, const ckpt_write_options *opt,
                  ckpt_write_report **report, ckpt_error *err)
{
    if (opt && opt->format == CKPT_WRITE_SAFETENSORS)
        return ckpt_write_safetensors(path, sd, opt, report, err);
    if (opt && opt->format != CKPT_WRITE_PTH)
        return CKPT_FAIL(err, CKPT_EINVAL, "unknown output format %d", (int)opt->format);
    return ckpt_write_pth(path, sd, opt, report, err);
}

void ckpt_write_report_free(ckpt_write_report *r)
{
    if (!r)
        return;
    free(r->shared);
    free(r);
}

/* ---- the safe output file -------------------------------------------------------------- */

/* "no space left on device": strerror, lowercased as messages are. */
static int sys_error(ckpt_error *err, int e, const char *what)
{
    char msg[128];
    snprintf(msg, sizeof msg, "%s", strerror(e));
    if (msg[0] >= 'A' && msg[0] <= 'Z' && msg[1] >= 'a' && msg[1] <= 'z')
        msg[0] = (char)(msg[0] - 'A' + 'a');
    return CKPT_FAIL(err, CKPT_EIO, "%s: %s", what, msg);
}

static bool is_input(const ckpt__write_file *w, const struct stat *st)
{
    for (size_t i = 0; i < w->n_inputs; i++)
        if (w->in_dev[i] == st->st_dev && w->in_ino[i] == st->st_ino)
            return true;
    return false;
}

/* What is at the final path now: CKPT_OK if nothing, or a regular file (or a symlink to one)
 * that force may replace. A device, FIFO or socket is never replaced, force or not: renaming
 * a file over /dev/null would break the system, and the user meant to write to it, which an
 * atomic writer cannot do. */
static int check_target(const ckpt__write_file *w, bool force, ckpt_error *err)
{
    struct stat st, lst;
    if (stat(w->path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return CKPT_OK;
        /* a dangling symlink stats as ENOENT; anything else is for the rename to report */
        return CKPT_OK;
    }
    if (is_input(w, &st))
        return CKPT_FAIL(err, CKPT_EINVAL, "the output is an input file (the same file on "
                         "disk): writing it would destroy what is being read");
    if (S_ISDIR(st.st_mode))
        return CKPT_FAIL(err, CKPT_EINVAL, "the output is a directory");
    /* even with force: replacing /dev/null (or a link's FIFO) is never what was meant */
    if (!S_ISREG(st.st_mode) ||
        (lstat(w->path, &lst) == 0 && !S_ISREG(lst.st_mode) && !S_ISLNK(lst.st_mode)))
        return CKPT_FAIL(err, CKPT_EINVAL, "the output is %s, not a regular file; ckpt only "
                         "replaces regular files", S_ISFIFO(st.st_mode) ? "a FIFO"
                         : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                         : "a socket or other special file");
    if (!force)
        return CKPT_FAIL(err, CKPT_EEXIST, "the output already exists");
    return CKPT_OK;
}

static uint64_t seed_mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

int ckpt__write_open(const char *path, const ckpt_write_options *opt, ckpt__write_file **out,
                     ckpt_error *err)
{
    *out = NULL;
    if (!path || !*path)
        return CKPT_FAIL(err, CKPT_EINVAL, "no output path");
    ckpt__write_file *w = calloc(1, sizeof *w);
    if (!w)
        return CKPT_NOMEM(err);
    w->fd = -1;
    w->force = opt && opt->force;
    if (opt) {
        w->progress = opt->progress;
        w->progress_ud = opt->progress_ud;
    }
    for (const char *const *in = opt ? opt->inputs : NULL; in && *in; in++) {
        struct stat st;
        if (w->n_inputs < WRITE_MAX_INPUTS && stat(*in, &st) == 0) {
            w->in_dev[w->n_inputs] = st.st_dev;
            w->in_ino[w->n_inputs++] = st.st_ino;
        }
    }
    int rc = CKPT_OK;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dlen = slash ? (size_t)(slash - path) : 0;
    if (!*base) {
        rc = CKPT_FAIL(err, CKPT_EINVAL, "the output path names a directory");
        goto fail;
    }
    w->path = strdup(path);
    w->dir = slash ? strndup(path, dlen ? dlen : 1) : strdup(".");
    w->buf = malloc(WRITE_BUF_BYTES);
    size_t blen = strlen(base) < WRITE_TMP_STEM_MAX ? strlen(base) : WRITE_TMP_STEM_MAX;
    size_t tcap = dlen + 1 + 1 + blen + sizeof ".ckpt-tmp-XXXXXX";
    w->tmp = malloc(tcap);
    if (!w->path || !w->dir || !w->buf || !w->tmp) {
        rc = CKPT_NOMEM(err);
        goto fail;
    }
    if ((rc = check_target(w, w->force, err)))
        goto fail;

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t r = seed_mix((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                          ((uint64_t)getpid() << 12) ^ (uint64_t)(uintptr_t)w);
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for (int attempt = 0; attempt < WRITE_TMP_TRIES; attempt++) {
        char suffix[7];
        r = seed_mix(r + 0x9e3779b97f4a7c15ull);
        for (int i = 0; i < 6; i++)
            suffix[i] = alnum[(r >> (6 * i)) % 62];
        suffix[6] = '\0';
        snprintf(w->tmp, tcap, "%.*s%s.%.*s.ckpt-tmp-%s", (int)dlen, path, slash ? "/" : "",
                 (int)blen, base, suffix);
        w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (w->fd >= 0 || errno != EEXIST)
            break;
    }
    if (w->fd < 0) {
        int e = errno;
        rc = e == EEXIST ? CKPT_FAIL(err, CKPT_EIO, "no free temporary file name in the folder")
                         : sys_error(err, e, "cannot create a file in the output's folder");
        free(w->tmp); /* nothing was created: abort must not unlink it */
        w->tmp = NULL;
        goto fail;
    }
    *out = w;
    return CKPT_OK;
fail:
    ckpt__write_abort(w);
    return rc;
}

static int write_all(ckpt__write_file *w, const uint8_t *p, size_t n, ckpt_error *err)
{
    while (n) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return sys_error(err, errno, "cannot write the output");
        }
        p += k;
        n -= (size_t)k;
    }
    return CKPT_OK;
}

static int flush_buf(ckpt__write_file *w, ckpt_error *err)
{
    int rc = CKPT_OK;
    if (w->used)
        rc = write_all(w, w->buf, w->used, err);
    w->used = 0;
    return rc;
}

#ifdef __linux__
/* The errors that mean the data cannot fit, as opposed to "cannot reserve here". */
static bool no_room(int e)
{
#ifdef EDQUOT
    if (e == EDQUOT)
        return true;
#endif
    return e == ENOSPC || e == EFBIG;
}
#endif

int ckpt__write_expect(ckpt__write_file *w, uint64_t total, ckpt_error *err)
{
    w->expect = total;
#ifdef __linux__
    if (total > 0 && total <= (uint64_t)INT64_MAX) {
        if (fallocate(w->fd, 0, 0, (off_t)total) == 0) {
            w->reserved = true;
        } else if (no_room(errno)) {
            char what[96];
            snprintf(what, sizeof what, "cannot reserve the %llu bytes of the output",
                     (unsigned long long)total);
            return sys_error(err, errno, what);
        } /* else the file system cannot reserve: find out while writing */
    }
#endif
    return CKPT_OK;
}

int ckpt__write_bytes(ckpt__write_file *w, const void *data, size_t n, ckpt_error *err)
{
    int rc;
    if (n >= WRITE_BUF_BYTES / 2) {
        if ((rc = flush_buf(w, err)) || (rc = write_all(w, data, n, err)))
            return rc;
    } else {
        if (w->used + n > WRITE_BUF_BYTES && (rc = flush_buf(w, err)))
            return rc;
        memcpy(w->buf + w->used, data, n);
        w->used += n;
    }
    w->pos += n;
#ifdef __linux__
    uint64_t on_disk = w->pos - w->used;
    if (on_disk - w->synced >= WRITE_SYNC_EVERY) {
        sync_file_range(w->fd, (off_t)w->synced, (off_t)(on_disk - w->synced),
                        SYNC_FILE_RANGE_WRITE);
        w->synced = on_disk;
    }
#endif
    if (w->progress && w->pos >= w->next_progress) {
        w->next_progress = w->pos + WRITE_PROGRESS_EVERY;
        if (w->progress(w->progress_ud, w->pos, w->expect > w->pos ? w->expect : w->pos))
            return CKPT_FAIL(err, CKPT_EIO, "cancelled");
    }
    return CKPT_OK;
}

uint64_t ckpt__write_offset(const ckpt__write_file *w)
{
    return w->pos;
}

const char *ckpt__write_temp_path(const ckpt__write_file *w)
{
    return w->tmp;
}

/* Rename tmp to path, refusing an existing path unless force. */
static int place(ckpt__write_file *w, ckpt_error *err)
{
    if (w->force) {
        if (rename(w->tmp, w->path) != 0)
            return sys_error(err, errno, "cannot rename the finished output into place");
        return CKPT_OK;
    }
#if defined(__linux__) && defined(RENAME_NOREPLACE)
    if (renameat2(AT_FDCWD, w->tmp, AT_FDCWD, w->path, RENAME_NOREPLACE) == 0)
        return CKPT_OK;
    if (errno == EEXIST)
        return CKPT_FAIL(err, CKPT_EEXIST, "the output already exists");
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return sys_error(err, errno, "cannot rename the finished output into place");
#endif
    /* no renameat2 here: a hard link fails just as atomically on an existing name */
    if (link(w->tmp, w->path) == 0) {
        unlink(w->tmp);
        return CKPT_OK;
    }
    if (errno == EEXIST)
        return CKPT_FAIL(err, CKPT_EEXIST, "the output already exists");
    /* a file system without hard links: check, then rename (a small window remains) */
    int rc = check_target(w, false, err);
    if (rc)
        return rc;
    if (rename(w->tmp, w->path) != 0)
        return sys_error(err, errno, "cannot rename the finished output into place");
    return CKPT_OK;
}

int ckpt__write_commit(ckpt__write_file *w, ckpt_error *err)
{
    int rc = flush_buf(w, err);
    if (!rc && w->reserved && w->expect != w->pos && ftruncate(w->fd, (off_t)w->pos) != 0)
        rc = sys_error(err, errno, "cannot set the output's size");
    if (!rc && w->progress && w->progress(w->progress_ud, w->pos, w->pos))
        rc = CKPT_FAIL(err, CKPT_EIO, "cancelled");
    if (!rc && fsync(w->fd) != 0)
        rc = sys_error(err, errno, "cannot flush the output to disk");
    if (!rc) {
        int fd = w->fd;
        w->fd = -1;
        if (close(fd) != 0)
            rc = sys_error(err, errno, "cannot close the output");
    }
    if (!rc)
        rc = check_target(w, w->force, err); /* the path may have changed since open */
    if (!rc)
        rc = place(w, err);
    if (rc) {
        ckpt__write_abort(w);
        return rc;
    }
    /* the rename is durable once the folder is: best effort, some file systems refuse */
    int dfd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(w->tmp);
    w->tmp = NULL;
    ckpt__write_abort(w);
    return CKPT_OK;
}

void ckpt__write_abort(ckpt__write_file *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (w->tmp)
        unlink(w->tmp);
    free(w->tmp);
    free(w->path);
    free(w->dir);
    free(w->buf);
    free(w);
}

int ckpt__write_finish(ckpt__write_file **w, uint64_t total, ckpt_error *err)
{
    ckpt__write_file *f = *w;
    *w = NULL;
    if (ckpt__write_offset(f) != total) {
        int rc = CKPT_FAIL(err, CKPT_EIO, "internal error: wrote %llu bytes, planned %llu",
                           (unsigned long long)ckpt__write_offset(f), (unsigned long long)total);
        ckpt__write_abort(f);
        return rc;
    }
    return ckpt__write_commit(f, err);
}
