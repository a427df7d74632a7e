/*
 * util.c - small tools the state-dict modules share (locate.c, judge.c, report.c, diff.c, sd.c):
 * a string map, the growable buffer, a pointer vector, shape helpers and element decoding.
 *
 * These were private to sd.c. The string map rides on hash.c's keyed index, the one hash
 * table of the library.
 */
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

ckpt__arena *ckpt__sd_arena(void)
{
    ckpt__alloc al;
    ckpt__alloc_init(&al, NULL);
    return ckpt__arena_new(&al, UINT64_MAX >> 1);
}

bool ckpt__starts_with(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

/* The last dotted component. */
const char *ckpt__leaf_name(const char *key)
{
    const char *d = strrchr(key, '.');
    return d ? d + 1 : key;
}

#define SEED_STRMAP 0x7374726d

/* The keyed hash of a + b, as one string. */
static uint64_t strmap_hash(const char *a, size_t na, const char *b, size_t nb)
{
    ckpt__hasher h;
    ckpt__hasher_init(&h, SEED_STRMAP);
    ckpt__hasher_add(&h, a, na);
    ckpt__hasher_add(&h, b, nb);
    return ckpt__hasher_end(&h);
}

bool ckpt__strmap_init(ckpt__arena *ar, ckpt__strmap *m, size_t n)
{
    *m = (ckpt__strmap){.ar = ar, .cap = n ? n : 1};
    if (m->cap > SIZE_MAX / sizeof *m->keys)
        return false;
    m->keys = ckpt__arena_alloc(ar, m->cap * sizeof *m->keys);
    m->vals = ckpt__arena_alloc(ar, m->cap * sizeof *m->vals);
    return m->keys && m->vals && ckpt__hindex_reserve(ar, &m->index, m->cap) == 0;
}

/* The entry holding a + b, or SIZE_MAX. */
static size_t strmap_find(const ckpt__strmap *m, uint64_t h, const char *a, size_t na,
                          const char *b, size_t nb)
{
    size_t pos;
    for (size_t it = ckpt__hindex_first(&m->index, h, &pos); it;
         it = ckpt__hindex_next(&m->index, h, &pos)) {
        const char *k = m->keys[it - 1];
        /* a and b hold no NUL, so a match of a proves k is at least na long */
        if (strncmp(k, a, na) == 0 && strncmp(k + na, b, nb) == 0 && k[na + nb] == '\0')
            return it - 1;
    }
    return SIZE_MAX;
}

/* Sets key -> v unless present; returns the index stored for key (SIZE_MAX if the map is
 * full: callers size it for every key they insert). */
size_t ckpt__strmap_add(ckpt__strmap *m, const char *key, size_t v)
{
    size_t n = strlen(key);
    uint64_t h = strmap_hash(key, n, "", 0);
    size_t at = strmap_find(m, h, key, n, "", 0);
    if (at != SIZE_MAX)
        return m->vals[at];
    if (m->len == m->cap || ckpt__hindex_add(m->ar, &m->index, h, m->len) != 0)
        return SIZE_MAX;
    m->keys[m->len] = key;
    m->vals[m->len++] = v;
    return v;
}

size_t ckpt__strmap_get2(const ckpt__strmap *m, const char *a, size_t na, const char *b, size_t nb)
{
    if (!m->len)
        return SIZE_MAX;
    size_t at = strmap_find(m, strmap_hash(a, na, b, nb), a, na, b, nb);
    return at == SIZE_MAX ? SIZE_MAX : m->vals[at];
}

size_t ckpt__strmap_get(const ckpt__strmap *m, const char *key)
{
    return ckpt__strmap_get2(m, key, strlen(key), "", 0);
}

void ckpt__sb_addn(ckpt__strbuf *b, const void *s, size_t n)
{
    if (b->failed)
        return;
    if (n >= SIZE_MAX - b->len) {
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 256;
        while (ncap < b->len + n + 1)
            ncap = ncap > SIZE_MAX / 2 ? b->len + n + 1 : ncap * 2;
        char *ns = realloc(b->buf, ncap);
        if (!ns) {
            b->failed = true;
            return;
        }
        b->buf = ns;
        b->cap = ncap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

void ckpt__sb_free(ckpt__strbuf *b)
{
    free(b->buf);
    memset(b, 0, sizeof *b);
}

void ckpt__sb_add(ckpt__strbuf *b, const char *s)
{
    ckpt__sb_addn(b, s, strlen(s));
}

void ckpt__sb_vprintf(ckpt__strbuf *b, const char *fmt, va_list ap)
{
    char tmp[512];
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    if (n < 0) {
        b->failed = true;
    } else if ((size_t)n < sizeof tmp) {
        ckpt__sb_addn(b, tmp, (size_t)n);
    } else {
        char *big = malloc((size_t)n + 1);
        if (big) {
            vsnprintf(big, (size_t)n + 1, fmt, again);
            ckpt__sb_addn(b, big, (size_t)n);
            free(big);
        } else {
            b->failed = true;
        }
    }
    va_end(again);
}

void ckpt__sb_printf(ckpt__strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ckpt__sb_vprintf(b, fmt, ap);
    va_end(ap);
}

/* The string in ar (NULL on failure); frees the heap copy. */
char *ckpt__sb_finish(ckpt__strbuf *b, ckpt__arena *ar)
{
    char *r = NULL;
    if (!b->failed)
        r = ckpt__arena_strndup(ar, b->buf ? b->buf : "", b->len);
    ckpt__sb_free(b);
    return r;
}

/* torch.Size([30, 2048]) */
void ckpt__sb_shape(ckpt__strbuf *b, int ndim, const int64_t *shape)
{
    ckpt__sb_add(b, "torch.Size(");
    ckpt__sb_dims(b, ndim, shape);
    ckpt__sb_add(b, ")");
}

/* [30, 2048] */
void ckpt__sb_dims(ckpt__strbuf *b, int ndim, const int64_t *shape)
{
    ckpt__sb_add(b, "[");
    for (int i = 0; i < ndim; i++)
        ckpt__sb_printf(b, i ? ", %lld" : "%lld", (long long)shape[i]);
    ckpt__sb_add(b, "]");
}

/* A Python string literal in single quotes. */
void ckpt__sb_pystr(ckpt__strbuf *b, const char *s)
{
    ckpt__sb_add(b, "'");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\'' || c == '\\')
            ckpt__sb_printf(b, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            ckpt__sb_printf(b, "\\x%02x", c);
        else
            ckpt__sb_addn(b, (const char *)&c, 1);
    }
    ckpt__sb_add(b, "'");
}

bool ckpt__vec_push(ckpt__arena *ar, ckpt__vec *v, void *item)
{
    if (v->len == v->cap) {
        size_t ncap = v->cap ? 2 * v->cap : 16;
        void **ni = ckpt__arena_grow(ar, v->items, v->cap * sizeof *ni, ncap * sizeof *ni);
        if (!ni)
            return false;
        v->items = ni;
        v->cap = ncap;
    }
    v->items[v->len++] = item;
    return true;
}

bool ckpt__same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    if (na != nb)
        return false;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

int64_t ckpt__sd_numel(const ckpt_sd_entry *e)
{
    int64_t n = 1;
    for (int i = 0; i < e->ndim; i++)
        if (ckpt__mul_overflow(n, e->shape[i], &n))
            return INT64_MAX;
    return n;
}

bool ckpt__is_bn_buffer(const char *key)
{
    const char *l = ckpt__leaf_name(key);
    return !strcmp(l, "running_mean") || !strcmp(l, "running_var") ||
           !strcmp(l, "num_batches_tracked");
}

/* ---- element values ---------------------------------------------------------------------- */

static uint64_t load_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

double ckpt__half_to_double(uint16_t h)
{
    return ckpt__f32_from_bits(ckpt__f16_to_f32(h));
}

static double f32_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Components per element and their element type, for the dtypes whose values ckpt compares
 * numerically; 0 for the rest (quantized, float8, untyped: compared bitwise only). */
int ckpt__dtype_components(ckpt_dtype dt, ckpt_dtype *part)
{
    switch (dt) {
    case CKPT_DT_COMPLEX64: *part = CKPT_DT_FLOAT32; return 2;
    case CKPT_DT_COMPLEX128: *part = CKPT_DT_FLOAT64; return 2;
    case CKPT_DT_COMPLEX32: *part = CKPT_DT_FLOAT16; return 2;
    case CKPT_DT_FLOAT32: case CKPT_DT_FLOAT64: case CKPT_DT_FLOAT16: case CKPT_DT_BFLOAT16:
    case CKPT_DT_INT64: case CKPT_DT_INT32: case CKPT_DT_INT16: case CKPT_DT_INT8:
    case CKPT_DT_UINT8: case CKPT_DT_BOOL: case CKPT_DT_UINT16: case CKPT_DT_UINT32:
    case CKPT_DT_UINT64:
        *part = dt;
        return 1;
    default: return 0;
    }
}

/* One component of a real dtype at p (little-endian), as a double. */
double ckpt__elem_double(ckpt_dtype dt, const uint8_t *p)
{
    switch (dt) {
    case CKPT_DT_FLOAT32: return f32_bits((uint32_t)load_le(p, 4));
    case CKPT_DT_FLOAT64: {
        uint64_t u = load_le(p, 8);
        double d;
        memcpy(&d, &u, sizeof d);
        return d;
    }
    case CKPT_DT_FLOAT16: return ckpt__half_to_double((uint16_t)load_le(p, 2));
    case CKPT_DT_BFLOAT16: return f32_bits(ckpt__bf16_to_f32((uint16_t)load_le(p, 2)));
    case CKPT_DT_INT64: return (double)(int64_t)load_le(p, 8);
    case CKPT_DT_INT32: return (int32_t)(uint32_t)load_le(p, 4);
    case CKPT_DT_INT16: return (int16_t)(uint16_t)load_le(p, 2);
    case CKPT_DT_INT8: return (int8_t)p[0];
    case CKPT_DT_UINT8: return p[0];
    case CKPT_DT_BOOL: return p[0] != 0;
    case CKPT_DT_UINT16: return (double)load_le(p, 2);
    case CKPT_DT_UINT32: return (double)load_le(p, 4);
    case CKPT_DT_UINT64: return (double)load_le(p, 8);
    default: return 0;
    }
}

bool ckpt__dtype_is_floating(ckpt_dtype dt)
{
    switch (dt) {
    case CKPT_DT_FLOAT32: case CKPT_DT_FLOAT64: case CKPT_DT_FLOAT16: case CKPT_DT_BFLOAT16:
    case CKPT_DT_COMPLEX64: case CKPT_DT_COMPLEX128: case CKPT_DT_COMPLEX32:
    case CKPT_DT_FLOAT8_E5M2: case CKPT_DT_FLOAT8_E4M3FN: case CKPT_DT_FLOAT8_E5M2FNUZ:
    case CKPT_DT_FLOAT8_E4M3FNUZ:
        return true;
    default: return false;
    }
}

/* A contiguous copy of t's elements on the C heap (free it), or NULL with err set. */
uint8_t *ckpt__tensor_copy(const ckpt_tensor *t, size_t *nbytes, ckpt_error *err)
{
    uint64_t n;
    if (ckpt__mul_overflow((uint64_t)t->numel, (uint64_t)ckpt_dtype_size(t->dtype), &n) ||
        n > SIZE_MAX) {
        CKPT_FAIL(err, CKPT_ELIMIT, "a tensor is too large to read");
        return NULL;
    }
    uint8_t *buf = malloc(n ? (size_t)n : 1);
    if (!buf) {
        CKPT_NOMEM(err);
        return NULL;
    }
    if (n && ckpt_tensor_read(t, t->dtype, buf, (size_t)n, err) != CKPT_OK) {
        free(buf);
        return NULL;
    }
    *nbytes = (size_t)n;
    return buf;
}

/* NaN and infinite components among n elements of dt at p. */
void ckpt__count_nonfinite(ckpt_dtype dt, const uint8_t *p, size_t n, int64_t *nan, int64_t *inf)
{
    ckpt_dtype part;
    int k = ckpt__dtype_components(dt, &part);
    if (k == 0 || !ckpt__dtype_is_floating(part))
        return;
    size_t es = ckpt_dtype_size(part);
    for (size_t i = 0; i < n * (size_t)k; i++) {
        double d = ckpt__elem_double(part, p + i * es);
        if (isnan(d))
            (*nan)++;
        else if (isinf(d))
            (*inf)++;
    }
}

