/* npy.c - numpy's .npy format, for float32 arrays in C order (ckpt run --input/--save-input).
 *
 * Layout (numpy/lib/format.py):
 *     6 bytes   "\x93NUMPY"
 *     2 bytes   format version major, minor: 1.0, 2.0 or 3.0
 *     u16 (1.0) or u32 (2.0, 3.0), little-endian: N, the header's length
 *     N bytes   a Python dict literal, latin-1 (3.0: UTF-8), padded with spaces and ending in
 *               '\n' so that the data starts at a multiple of 64:
 *               {'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 224, 224), }
 *     data      the elements, here little-endian float32, C order, filling the file exactly
 *
 * The writer reproduces numpy 1.24's np.save byte for byte (sorted keys, the spare spaces it
 * leaves after the dict for the first axis to grow, the 64-byte alignment).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAX_HEADER 10000           /* numpy 1.24's _MAX_HEADER_SIZE */
#define NPY_MAX_FILE (16ull << 30)     /* bytes of one .npy file read */
#define NPY_GROWTH_AXIS_MAX_DIGITS 21  /* numpy's GROWTH_AXIS_MAX_DIGITS */
#define NPY_ALIGN 64

static bool host_is_little_endian(void)
{
    const uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static void swap32(void *p, size_t n)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++, b += 4) {
        uint8_t t0 = b[0], t1 = b[1];
        b[0] = b[3];
        b[1] = b[2];
        b[2] = t1;
        b[3] = t0;
    }
}

/* ---- writing ------------------------------------------------------------------------------ */

int ckpt_npy_write(const char *path, const float *data, int ndim, const int64_t *shape,
                   ckpt_error *err)
{
    if (ndim < 0 || ndim > CKPT_MAX_DIMS || (ndim > 0 && !shape))
        return CKPT_FAIL(err, CKPT_EINVAL, "npy: %d dimensions", ndim);
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return CKPT_FAIL(err, CKPT_EINVAL, "npy: dimension %d is negative", i);
        if (ckpt__mul_overflow(numel, (uint64_t)shape[i], &numel))
            return CKPT_FAIL(err, CKPT_EINVAL, "npy: the shape's size overflows");
    }
    uint64_t nbytes;
    if (ckpt__mul_overflow(numel, (uint64_t)4, &nbytes) || nbytes > SIZE_MAX)
        return CKPT_FAIL(err, CKPT_EINVAL, "npy: the array is too large");
    if (numel && !data)
        return CKPT_FAIL(err, CKPT_EINVAL, "npy: no data");

    /* 64 dims of at most 19 digits each keep the header far below numpy's 65535 for 1.0. */
    char h[2048];
    size_t n = (size_t)snprintf(h, sizeof h, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < ndim; i++)
        n += (size_t)snprintf(h + n, sizeof h - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    n += (size_t)snprintf(h + n, sizeof h - n, "%s), }", ndim == 1 ? "," : "");
    if (ndim > 0) {
        int digits = snprintf(NULL, 0, "%lld", (long long)shape[0]);
        for (int i = digits; i < NPY_GROWTH_AXIS_MAX_DIGITS; i++)
            h[n++] = ' ';
    }
    size_t hlen = n + 1; /* with the final '\n' */
    size_t pad = NPY_ALIGN - (6 + 2 + 2 + hlen) % NPY_ALIGN;
    memset(h + n, ' ', pad);
    n += pad;
    h[n++] = '\n';
    uint8_t pre[10];
    memcpy(pre, NPY_MAGIC, 6);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (uint8_t)(n & 0xff);
    pre[9] = (uint8_t)(n >> 8);

    /* Only a regular file is written (a FIFO would block, a device is not a file to fill):
     * looked at before opening, for the message, and after, for what was opened. */
    struct stat st = {0};
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return CKPT_FAIL(err, CKPT_EINVAL, "%s", ckpt__not_regular(st.st_mode));
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0666);
    if (fd < 0)
        return CKPT_FAIL(err, CKPT_EIO, "cannot create: %s", strerror(errno));
    int fl = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? fcntl(fd, F_GETFL) : -1;
    FILE *fp = fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0 && ftruncate(fd, 0) == 0
                   ? fdopen(fd, "wb")
                   : NULL;
    if (!fp) {
        int e = errno;
        close(fd);
        if (fl < 0)
            return CKPT_FAIL(err, CKPT_EINVAL, "%s", ckpt__not_regular(st.st_mode));
        return CKPT_FAIL(err, CKPT_EIO, "cannot create: %s", strerror(e));
    }
    bool ok = fwrite(pre, 1, sizeof pre, fp) == sizeof pre && fwrite(h, 1, n, fp) == n;
    if (ok && numel == 0) {
        /* nothing to write */
    } else if (ok && host_is_little_endian()) {
        ok = fwrite(data, 4, (size_t)numel, fp) == (size_t)numel;
    } else if (ok) {
        float chunk[1024];
        for (size_t i = 0; ok && i < (size_t)numel; i += 1024) {
            size_t m = (size_t)numel - i < 1024 ? (size_t)numel - i : 1024;
            memcpy(chunk, data + i, m * 4);
            swap32(chunk, m);
            ok = fwrite(chunk, 4, m, fp) == m;
        }
    }
    int e = errno;
    if (fclose(fp) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        unlink(path);
        return CKPT_FAIL(err, CKPT_EIO, "cannot write: %s", strerror(e));
    }
    return CKPT_OK;
}

/* ---- reading ------------------------------------------------------------------------------ */

typedef struct hdr {
    const char *p, *end;
} hdr;

static void skip_ws(hdr *h)
{
    while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r'))
        h->p++;
}

static bool eat(hdr *h, char c)
{
    skip_ws(h);
    if (h->p < h->end && *h->p == c) {
        h->p++;
        return true;
    }
    return false;
}

/* A quoted Python string without escapes, into buf. */
static bool read_str(hdr *h, char *buf, size_t cap)
{
    skip_ws(h);
    if (h->p >= h->end || (*h->p != '\'' && *h->p != '"'))
        return false;
    char q = *h->p++;
    size_t n = 0;
    while (h->p < h->end && *h->p != q) {
        if (*h->p == '\\' || n + 1 >= cap)
            return false;
        buf[n++] = *h->p++;
    }
    if (h->p >= h->end)
        return false;
    h->p++;
    buf[n] = '\0';
    return true;
}

static bool read_word(hdr *h, const char *w)
{
    skip_ws(h);
    size_t n = strlen(w);
    if ((size_t)(h->end - h->p) < n || memcmp(h->p, w, n) != 0)
        return false;
    h->p += n;
    return true;
}

/* A Python tuple of non-negative ints ("()", "(3,)", "(1, 3, 224, 224)"); Python 2 writers
 * put an L after each, which numpy filters out of 1.0 and 2.0 headers. */
static int read_shape(hdr *h, ckpt_npy *a, bool allow_long, ckpt_error *err)
{
    if (!eat(h, '('))
        return CKPT_CORRUPT(err, "npy: 'shape' is not a tuple");
    a->ndim = 0;
    bool comma = false;
    for (;;) {
        skip_ws(h);
        if (eat(h, ')'))
            break;
        if (a->ndim > 0 && !comma)
            return CKPT_CORRUPT(err, "npy: 'shape' is not a tuple of ints");
        skip_ws(h);
        if (h->p >= h->end || *h->p < '0' || *h->p > '9')
            return CKPT_CORRUPT(err, "npy: 'shape' is not a tuple of non-negative ints");
        int64_t v = 0;
        while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
            if (ckpt__mul_overflow(v, (int64_t)10, &v) ||
                ckpt__add_overflow(v, (int64_t)(*h->p - '0'), &v))
                return CKPT_CORRUPT(err, "npy: a dimension of 'shape' overflows");
            h->p++;
        }
        if (allow_long && h->p < h->end && *h->p == 'L')
            h->p++;
        if (a->ndim >= CKPT_MAX_DIMS)
            return CKPT_FAIL(err, CKPT_ELIMIT, "npy: more than %d dimensions", CKPT_MAX_DIMS);
        a->shape[a->ndim++] = v;
        comma = eat(h, ',');
    }
    if (a->ndim == 1 && !comma) /* "(5)" is an int in Python, not a tuple */
        return CKPT_CORRUPT(err, "npy: 'shape' is not a tuple");
    return CKPT_OK;
}

int ckpt_npy_decode(const void *data, size_t size, ckpt_npy *out, ckpt_error *err)
{
    if (!out)
        return CKPT_FAIL(err, CKPT_EINVAL, "npy: no array to fill");
    memset(out, 0, sizeof *out);
    const uint8_t *p = data;
    if (!p || size < 10 || memcmp(p, NPY_MAGIC, 6) != 0)
        return CKPT_FAIL(err, CKPT_EFORMAT, "not a numpy .npy file");
    int major = p[6], minor = p[7];
    size_t hlen, start;
    if (major == 1 && minor == 0) {
        hlen = (size_t)p[8] | (size_t)p[9] << 8;
        start = 10;
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (size < 12)
            return CKPT_CORRUPT(err, "npy: the header is truncated");
        uint32_t v = (uint32_t)p[8] | (uint32_t)p[9] << 8 | (uint32_t)p[10] << 16 |
                     (uint32_t)p[11] << 24;
        hlen = v;
        start = 12;
    } else {
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "npy: format version %d.%d is not 1.0, 2.0 or "
                         "3.0", major, minor);
    }
    if (hlen > NPY_MAX_HEADER)
        return CKPT_FAIL(err, CKPT_ELIMIT, "npy: header of %zu bytes is over numpy's limit of %d",
                         hlen, NPY_MAX_HEADER);
    if (size - start < hlen)
        return CKPT_CORRUPT(err, "npy: the header is truncated");

    hdr h = {(const char *)p + start, (const char *)p + start + hlen};
    char descr[64] = "", key[32];
    int fortran = -1;
    bool have_descr = false, have_shape = false;
    if (!eat(&h, '{'))
        return CKPT_CORRUPT(err, "npy: the header is not a dict");
    for (;;) {
        if (eat(&h, '}'))
            break;
        if (!read_str(&h, key, sizeof key) || !eat(&h, ':'))
            return CKPT_CORRUPT(err, "npy: the header is not a dict of 'descr', "
                                "'fortran_order' and 'shape'");
        if (strcmp(key, "descr") == 0 && !have_descr) {
            skip_ws(&h);
            if (h.p < h.end && *h.p == '[')
                return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "npy: a structured dtype, not float32");
            if (!read_str(&h, descr, sizeof descr))
                return CKPT_CORRUPT(err, "npy: 'descr' is not a dtype string");
            have_descr = true;
        } else if (strcmp(key, "fortran_order") == 0 && fortran < 0) {
            if (read_word(&h, "True"))
                fortran = 1;
            else if (read_word(&h, "False"))
                fortran = 0;
            else
                return CKPT_CORRUPT(err, "npy: 'fortran_order' is not True or False");
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            int rc = read_shape(&h, out, major < 3, err);
            if (rc != CKPT_OK)
                return rc;
            have_shape = true;
        } else {
            return CKPT_CORRUPT(err, "npy: unexpected or repeated key '%s' in the header", key);
        }
        if (!eat(&h, ',')) {
            if (!eat(&h, '}'))
                return CKPT_CORRUPT(err, "npy: the header is not a dict");
            break;
        }
    }
    skip_ws(&h);
    if (h.p != h.end)
        return CKPT_CORRUPT(err, "npy: text after the header's dict");
    if (!have_descr || fortran < 0 || !have_shape)
        return CKPT_CORRUPT(err, "npy: the header lacks '%s'",
                            !have_descr ? "descr" : fortran < 0 ? "fortran_order" : "shape");
    if (strcmp(descr, "<f4") != 0) {
        if (strcmp(descr, ">f4") == 0)
            return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "npy: big-endian float32 ('>f4') is not "
                             "supported; save x.astype('<f4')");
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "npy: dtype '%s' is not float32 ('<f4'); save "
                         "x.astype(np.float32)", descr);
    }
    if (fortran)
        return CKPT_FAIL(err, CKPT_EUNSUPPORTED, "npy: a Fortran-order array; save "
                         "np.ascontiguousarray(x)");

    uint64_t numel = 1, nbytes;
    for (int i = 0; i < out->ndim; i++)
        if (ckpt__mul_overflow(numel, (uint64_t)out->shape[i], &numel))
            return CKPT_CORRUPT(err, "npy: the shape's size overflows");
    if (ckpt__mul_overflow(numel, (uint64_t)4, &nbytes))
        return CKPT_CORRUPT(err, "npy: the shape's size overflows");
    size_t avail = size - start - hlen;
    if (nbytes > avail)
        return CKPT_CORRUPT(err, "npy: the data is truncated (%llu bytes for the shape, %zu in "
                            "the file)", (unsigned long long)nbytes, avail);
    if (nbytes < avail)
        return CKPT_CORRUPT(err, "npy: %llu bytes after the data", (unsigned long long)(avail -
                            nbytes));
    out->numel = (int64_t)numel;
    out->data = malloc(nbytes ? (size_t)nbytes : 1);
    if (!out->data) {
        memset(out, 0, sizeof *out);
        return CKPT_NOMEM(err);
    }
    memcpy(out->data, p + start + hlen, (size_t)nbytes);
    if (!host_is_little_endian())
        swap32(out->data, (size_t)numel);
    return CKPT_OK;
}

int ckpt_npy_read(const char *path, ckpt_npy *out, ckpt_error *err)
{
    if (!out)
        return CKPT_FAIL(err, CKPT_EINVAL, "npy: no array to fill");
    memset(out, 0, sizeof *out);
    int fd;
    uint64_t size;
    int rc0 = ckpt__open_regular(path, &fd, &size, err); /* never blocks on a FIFO */
    if (rc0)
        return rc0;
    FILE *fp = fdopen(fd, "rb");
    if (!fp) {
        close(fd);
        return CKPT_FAIL(err, CKPT_EIO, "cannot open: %s", strerror(errno));
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = CKPT_OK;
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 1 << 16;
            if (ncap > NPY_MAX_FILE) {
                rc = CKPT_FAIL(err, CKPT_ELIMIT, "npy: file over the limit of %llu bytes",
                               (unsigned long long)NPY_MAX_FILE);
                break;
            }
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                rc = CKPT_NOMEM(err);
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, fp);
        len += n;
        if (n == 0) {
            if (ferror(fp))
                rc = CKPT_FAIL(err, CKPT_EIO, "cannot read: %s", strerror(errno));
            break;
        }
    }
    fclose(fp);
    if (rc == CKPT_OK)
        rc = ckpt_npy_decode(buf, len, out, err);
    free(buf);
    return rc;
}

void ckpt_npy_free(ckpt_npy *a)
{
    if (!a)
        return;
    free(a->data);
    memset(a, 0, sizeof *a);
}
