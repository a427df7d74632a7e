/*
 * format.c - text for people: a growable buffer, numbers and sizes, Python-like reprs of
 * parsed values, path components, and the bounded walk over a file's object graph.
 *
 * Reprs follow Python's where Python has one (repr(float), str quoting, b'...', (1,), set(),
 * OrderedDict({...})) so that what `ckpt inspect` shows is what a user would see after
 * torch.load, without running anything.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLI_MAX_BIGINT_BYTES 8192 /* larger ints are shown by size: decimal is quadratic */
#define CLI_REPR_MAX_DEPTH 64     /* nesting shown inside one repr */

/* ---- buffer ---------------------------------------------------------------------------- */

static _Noreturn void out_of_memory(void)
{
    fputs("ckpt: error: out of memory\n", stderr);
    exit(CLI_EXIT_ERROR);
}

void *cli_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        out_of_memory();
    return q;
}

void sb_putn(cli_sb *sb, const char *s, size_t n)
{
    ckpt__sb_addn(sb, s, n);
    if (sb->failed)
        out_of_memory();
}

void sb_puts(cli_sb *sb, const char *s) { sb_putn(sb, s, strlen(s)); }
void sb_putc(cli_sb *sb, char c) { sb_putn(sb, &c, 1); }

void sb_printf(cli_sb *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ckpt__sb_vprintf(sb, fmt, ap);
    va_end(ap);
    if (sb->failed)
        out_of_memory();
}

void sb_pad(cli_sb *sb, size_t n)
{
    static const char spaces[] = "                                ";
    while (n > 0) {
        size_t k = n < sizeof spaces - 1 ? n : sizeof spaces - 1;
        sb_putn(sb, spaces, k);
        n -= k;
    }
}

void sb_free(cli_sb *sb)
{
    ckpt__sb_free(sb);
}

const char *sb_str(const cli_sb *sb) { return sb->buf ? sb->buf : ""; }

size_t cli_width(const char *s, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        w += ((unsigned char)s[i] & 0xc0) != 0x80;
    return w;
}

void sb_put_clean(cli_sb *sb, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            sb_printf(sb, "\\x%02x", c);
        else
            sb_putc(sb, (char)c);
    }
}

/* ---- numbers ------------------------------------------------------------------------------ */

void cli_fmt_float(cli_sb *sb, double x)
{
    if (isnan(x)) {
        sb_puts(sb, "nan");
        return;
    }
    if (isinf(x)) {
        sb_puts(sb, x < 0 ? "-inf" : "inf");
        return;
    }
    /* Shortest "%.{p}e" that reads back as x: its digits and exponent, then Python's layout
     * (exponent form when the exponent is below -4 or at least 16). */
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    const char *p = buf;
    if (*p == '-') {
        sb_putc(sb, '-');
        p++;
    }
    char digits[24];
    size_t nd = 0;
    for (; *p && *p != 'e'; p++) {
        if (*p >= '0' && *p <= '9' && nd < sizeof digits - 1)
            digits[nd++] = *p;
    }
    int exp10 = *p == 'e' ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';

    if (exp10 < -4 || exp10 >= 16) {
        sb_putc(sb, digits[0]);
        if (nd > 1) {
            sb_putc(sb, '.');
            sb_putn(sb, digits + 1, nd - 1);
        }
        sb_printf(sb, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
        return;
    }
    int decpt = exp10 + 1; /* digits before the point */
    if (decpt <= 0) {
        sb_puts(sb, "0.");
        for (int i = 0; i < -decpt; i++)
            sb_putc(sb, '0');
        sb_putn(sb, digits, nd);
    } else if ((size_t)decpt >= nd) {
        sb_putn(sb, digits, nd);
        for (size_t i = nd; i < (size_t)decpt; i++)
            sb_putc(sb, '0');
        sb_puts(sb, ".0");
    } else {
        sb_putn(sb, digits, (size_t)decpt);
        sb_putc(sb, '.');
        sb_putn(sb, digits + decpt, nd - (size_t)decpt);
    }
}

static void fmt_scaled(cli_sb *sb, uint64_t n, const char *const *units, size_t n_units,
                       const char *unit0)
{
    if (n < 1000) {
        sb_printf(sb, "%" PRIu64 "%s", n, unit0);
        return;
    }
    double v = (double)n;
    size_t u = 0;
    do {
        v /= 1000.0;
        u++;
    } while (v >= 999.95 && u < n_units);
    sb_printf(sb, "%.1f %s", v, units[u - 1]);
}

void cli_fmt_bytes(cli_sb *sb, uint64_t n)
{
    static const char *const units[] = {"KB", "MB", "GB", "TB", "PB", "EB"};
    fmt_scaled(sb, n, units, sizeof units / sizeof units[0], " B");
}

void cli_fmt_count(cli_sb *sb, uint64_t n)
{
    static const char *const units[] = {"K", "M", "B", "T", "P", "E"};
    fmt_scaled(sb, n, units, sizeof units / sizeof units[0], "");
}

void cli_fmt_dims(cli_sb *sb, const int64_t *d, int n)
{
    ckpt__sb_dims(sb, n, d);
    if (sb->failed)
        out_of_memory();
}

void cli_fmt_bigint(cli_sb *sb, const unsigned char *le, size_t n)
{
    if (n == 0) {
        sb_putc(sb, '0');
        return;
    }
    if (n > CLI_MAX_BIGINT_BYTES) {
        sb_printf(sb, "<int of %zu bytes>", n);
        return;
    }
    /* Magnitude bytes (little-endian): two's complement negation when the sign bit is set;
     * -2^(8n-1) becomes 2^(8n-1), which still fits n unsigned bytes. */
    bool neg = le[n - 1] & 0x80;
    unsigned char *mag = cli_xrealloc(NULL, n);
    unsigned carry = 1;
    for (size_t i = 0; i < n; i++) {
        if (neg) {
            unsigned b = (unsigned char)~le[i] + carry;
            mag[i] = (unsigned char)b;
            carry = b >> 8;
        } else {
            mag[i] = le[i];
        }
    }
    /* 32-bit limbs, most significant first. */
    size_t nl = (n + 3) / 4;
    uint32_t *limb = cli_xrealloc(NULL, nl * sizeof *limb);
    memset(limb, 0, nl * sizeof *limb);
    for (size_t i = 0; i < n; i++)
        limb[nl - 1 - i / 4] |= (uint32_t)mag[i] << (8 * (i % 4));
    free(mag);
    /* Repeated division by 10^9, chunks collected least significant first. */
    size_t cap = nl * 10 / 9 + 2, nc = 0;
    uint32_t *chunk = cli_xrealloc(NULL, cap * sizeof *chunk);
    size_t first = 0;
    while (first < nl && limb[first] == 0)
        first++;
    while (first < nl) {
        uint64_t rem = 0;
        for (size_t i = first; i < nl; i++) {
            uint64_t cur = (rem << 32) | limb[i];
            limb[i] = (uint32_t)(cur / 1000000000u);
            rem = cur % 1000000000u;
        }
        chunk[nc++] = (uint32_t)rem;
        while (first < nl && limb[first] == 0)
            first++;
    }
    if (neg)
        sb_putc(sb, '-');
    if (nc == 0)
        sb_putc(sb, '0');
    else {
        sb_printf(sb, "%" PRIu32, chunk[nc - 1]);
        for (size_t i = nc - 1; i-- > 0;)
            sb_printf(sb, "%09" PRIu32, chunk[i]);
    }
    free(chunk);
    free(limb);
}

/* ---- strings ------------------------------------------------------------------------------ */

size_t cli_utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, cp = c & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

/* Python's quoting: single quotes unless the text has ' and no ". Control characters and
 * bytes that are not UTF-8 are escaped, so the line stays one line on a terminal. */
static void repr_text(cli_sb *sb, const char *s, size_t n, size_t max_chars, bool bytes)
{
    const unsigned char *u = (const unsigned char *)s;
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    if (bytes)
        sb_putc(sb, 'b');
    sb_putc(sb, q);
    size_t i = 0, shown = 0;
    while (i < n) {
        if (shown++ >= max_chars) {
            sb_puts(sb, "...");
            break;
        }
        unsigned c = u[i];
        size_t len = bytes ? 1 : cli_utf8_len(u + i, n - i);
        if (c == '\\' || c == (unsigned char)q)
            sb_putc(sb, '\\'), sb_putc(sb, (char)c);
        else if (c == '\n')
            sb_puts(sb, "\\n");
        else if (c == '\r')
            sb_puts(sb, "\\r");
        else if (c == '\t')
            sb_puts(sb, "\\t");
        else if (c < 0x20 || c == 0x7f || (bytes && c >= 0x80) || len == 0)
            sb_printf(sb, "\\x%02x", c);
        else if (len > 1 && c == 0xc2 && u[i + 1] < 0xa0) /* C1 controls */
            sb_printf(sb, "\\x%02x", u[i + 1]);
        else {
            sb_putn(sb, s + i, len);
            i += len;
            continue;
        }
        i += len ? len : 1;
    }
    sb_putc(sb, q);
}

void cli_repr_str(cli_sb *sb, const char *s, size_t n, size_t max_chars)
{
    repr_text(sb, s, n, max_chars, false);
}

/* ---- values ------------------------------------------------------------------------------- */

bool cli_is_container(const ckpt_value *v)
{
    switch (v->type) {
    case CKPT_T_TUPLE:
    case CKPT_T_LIST:
    case CKPT_T_SET:
    case CKPT_T_DICT:
    case CKPT_T_OBJECT:
        return true;
    default:
        return false;
    }
}

const char *cli_class_of(const ckpt_value *v, cli_sb *scratch)
{
    const ckpt_value *g = v;
    if (v->type == CKPT_T_OBJECT) {
        if (v->class_name)
            return v->class_name;
        g = v->u.obj.callable;
    }
    if (!g || g->type != CKPT_T_GLOBAL)
        return NULL;
    scratch->len = 0;
    sb_printf(scratch, "%s.%s", g->u.global.module ? g->u.global.module : "?",
              g->u.global.name ? g->u.global.name : "?");
    return sb_str(scratch);
}

static bool is_identifier(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

/* The dict classes shown as CLASS({...}); any other class_name on a dict is an object whose
 * attributes the library kept as a dict (argparse.Namespace), shown as CLASS(k=v, ...). */
static bool is_dict_class(const char *cls)
{
    return strcmp(cls, "collections.OrderedDict") == 0 ||
           strcmp(cls, "collections.defaultdict") == 0 ||
           strcmp(cls, "collections.Counter") == 0 || strcmp(cls, "builtins.dict") == 0;
}

static const char *short_class(const char *cls)
{
    if (strncmp(cls, "collections.", 12) == 0)
        return cls + 12;
    if (strncmp(cls, "builtins.", 9) == 0)
        return cls + 9;
    return cls;
}

typedef struct repr_ctx {
    cli_sb *sb;
    size_t limit;
    unsigned flags;
    bool ok;             /* false once it did not fit or met a tensor without CLI_REPR_TENSORS */
    const ckpt_value *path[CLI_REPR_MAX_DEPTH];
    int depth;
} repr_ctx;

static void repr_value(repr_ctx *c, const ckpt_value *v);

static bool repr_full(repr_ctx *c)
{
    if (c->sb->len > c->limit) {
        c->ok = false;
        return true;
    }
    return false;
}

static void repr_items(repr_ctx *c, ckpt_value *const *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i)
            sb_puts(c->sb, ", ");
        if (repr_full(c))
            return;
        repr_value(c, items[i]);
    }
}

static void repr_dict_items(repr_ctx *c, const ckpt_value *d, bool as_kwargs)
{
    for (size_t i = 0; i < d->u.dict.len; i++) {
        if (i)
            sb_puts(c->sb, ", ");
        if (repr_full(c))
            return;
        const ckpt_value *k = d->u.dict.keys[i];
        if (as_kwargs) {
            sb_putn(c->sb, k->u.str.data, k->u.str.len);
            sb_putc(c->sb, '=');
        } else {
            repr_value(c, k);
            sb_puts(c->sb, ": ");
        }
        repr_value(c, d->u.dict.vals[i]);
    }
}

/* All keys are identifiers: the dict can be shown as keyword arguments. */
static bool kwargs_keys(const ckpt_value *d)
{
    for (size_t i = 0; i < d->u.dict.len; i++) {
        const ckpt_value *k = d->u.dict.keys[i];
        if (k->type != CKPT_T_STR || !is_identifier(k->u.str.data, k->u.str.len))
            return false;
    }
    return true;
}

static void repr_tensor(repr_ctx *c, const ckpt_tensor *t)
{
    if (!(c->flags & CLI_REPR_TENSORS)) {
        c->ok = false;
        return;
    }
    sb_printf(c->sb, "tensor(%s ", ckpt_dtype_name(t->dtype) ? ckpt_dtype_name(t->dtype) : "?");
    cli_fmt_dims(c->sb, t->shape, t->ndim);
    sb_putc(c->sb, ')');
}

/* numpy.dtype('f8', False, True) and numpy's _reconstruct(ndarray, ...) + BUILD state. */
static bool repr_numpy(repr_ctx *c, const ckpt_value *v, const char *cls)
{
    const ckpt_value *a = v->u.obj.args, *st = v->u.obj.state;
    if (strcmp(cls, "numpy.dtype") == 0 && a && a->type == CKPT_T_TUPLE && a->u.seq.len >= 1 &&
        a->u.seq.items[0]->type == CKPT_T_STR) {
        sb_puts(c->sb, "numpy.dtype(");
        repr_value(c, a->u.seq.items[0]);
        sb_putc(c->sb, ')');
        return true;
    }
    bool recon = strcmp(cls, "numpy.core.multiarray._reconstruct") == 0 ||
                 strcmp(cls, "numpy._core.multiarray._reconstruct") == 0;
    if (recon && st && st->type == CKPT_T_TUPLE && st->u.seq.len == 5) {
        /* state: (version, shape, dtype, is_fortran, raw data) */
        sb_puts(c->sb, "numpy.ndarray(shape=");
        repr_value(c, st->u.seq.items[1]);
        sb_puts(c->sb, ", dtype=");
        const ckpt_value *dt = st->u.seq.items[2];
        const ckpt_value *da = dt->type == CKPT_T_OBJECT ? dt->u.obj.args : NULL;
        if (da && da->type == CKPT_T_TUPLE && da->u.seq.len >= 1)
            repr_value(c, da->u.seq.items[0]);
        else
            repr_value(c, dt);
        sb_putc(c->sb, ')');
        return true;
    }
    return false;
}

static void repr_object(repr_ctx *c, const ckpt_value *v)
{
    cli_sb scratch = {0};
    const char *cls = cli_class_of(v, &scratch);
    if (cls && repr_numpy(c, v, cls)) {
        sb_free(&scratch);
        return;
    }
    if (cls)
        sb_put_clean(c->sb, cls, strlen(cls));
    else {
        sb_putc(c->sb, '(');
        repr_value(c, v->u.obj.callable);
        sb_putc(c->sb, ')');
    }
    sb_free(&scratch);
    sb_putc(c->sb, '(');
    bool any = false;
    const ckpt_value *a = v->u.obj.args, *st = v->u.obj.state;
    if (a && a->type == CKPT_T_TUPLE) {
        repr_items(c, a->u.seq.items, a->u.seq.len);
        any = a->u.seq.len > 0;
    } else if (a) {
        repr_value(c, a);
        any = true;
    }
    if (st && !repr_full(c)) {
        if (any)
            sb_puts(c->sb, ", ");
        if (st->type == CKPT_T_DICT && kwargs_keys(st))
            repr_dict_items(c, st, true);
        else {
            sb_puts(c->sb, "state=");
            repr_value(c, st);
        }
        any = any || st->type != CKPT_T_DICT || st->u.dict.len > 0;
    }
    if (v->u.obj.items && !repr_full(c)) {
        sb_puts(c->sb, any ? ", items=" : "items=");
        repr_value(c, v->u.obj.items);
        any = true;
    }
    if (v->u.obj.list && !repr_full(c)) {
        sb_puts(c->sb, any ? ", list=" : "list=");
        repr_value(c, v->u.obj.list);
    }
    sb_putc(c->sb, ')');
}

static void repr_value(repr_ctx *c, const ckpt_value *v)
{
    if (repr_full(c))
        return;
    if (!v) {
        sb_puts(c->sb, "None");
        return;
    }
    if (cli_is_container(v)) {
        for (int i = 0; i < c->depth; i++) {
            if (c->path[i] == v) {
                sb_puts(c->sb, "...");
                return;
            }
        }
        if (c->depth == CLI_REPR_MAX_DEPTH) {
            sb_puts(c->sb, "...");
            c->ok = false;
            return;
        }
        c->path[c->depth++] = v;
    }
    cli_sb *sb = c->sb;
    const char *cls = v->class_name;
    switch (v->type) {
    case CKPT_T_NONE: sb_puts(sb, "None"); break;
    case CKPT_T_BOOL: sb_puts(sb, v->u.b ? "True" : "False"); break;
    case CKPT_T_INT: sb_printf(sb, "%" PRId64, v->u.i); break;
    case CKPT_T_BIGINT:
        cli_fmt_bigint(sb, (const unsigned char *)v->u.str.data, v->u.str.len);
        break;
    case CKPT_T_FLOAT: cli_fmt_float(sb, v->u.f); break;
    case CKPT_T_COMPLEX: {
        /* Python: 1j, (1+2j), (1.5-0j): parts without a trailing ".0" */
        cli_sb re = {0}, im = {0};
        cli_fmt_float(&re, v->u.c.re);
        cli_fmt_float(&im, v->u.c.im);
        if (re.len > 2 && strcmp(re.buf + re.len - 2, ".0") == 0)
            re.buf[re.len -= 2] = '\0';
        if (im.len > 2 && strcmp(im.buf + im.len - 2, ".0") == 0)
            im.buf[im.len -= 2] = '\0';
        if (v->u.c.re == 0 && !signbit(v->u.c.re))
            sb_printf(sb, "%sj", sb_str(&im));
        else
            sb_printf(sb, "(%s%s%sj)", sb_str(&re), sb_str(&im)[0] == '-' ? "" : "+", sb_str(&im));
        sb_free(&re);
        sb_free(&im);
        break;
    }
    case CKPT_T_STR: repr_text(sb, v->u.str.data, v->u.str.len, c->limit, false); break;
    case CKPT_T_BYTES: repr_text(sb, v->u.str.data, v->u.str.len, c->limit, true); break;
    case CKPT_T_TUPLE:
        if (cls) {
            sb_printf(sb, "%s([", short_class(cls));
            repr_items(c, v->u.seq.items, v->u.seq.len);
            sb_puts(sb, "])");
        } else {
            sb_putc(sb, '(');
            repr_items(c, v->u.seq.items, v->u.seq.len);
            sb_puts(sb, v->u.seq.len == 1 ? ",)" : ")");
        }
        break;
    case CKPT_T_LIST:
        if (cls) {
            sb_put_clean(sb, short_class(cls), strlen(short_class(cls)));
            sb_putc(sb, '(');
        }
        sb_putc(sb, '[');
        repr_items(c, v->u.seq.items, v->u.seq.len);
        sb_putc(sb, ']');
        if (cls)
            sb_putc(sb, ')');
        break;
    case CKPT_T_SET: {
        bool frozen = v->flags & CKPT_VF_FROZEN;
        if (v->u.seq.len == 0) {
            sb_puts(sb, frozen ? "frozenset()" : "set()");
            break;
        }
        sb_puts(sb, frozen ? "frozenset({" : "{");
        repr_items(c, v->u.seq.items, v->u.seq.len);
        sb_puts(sb, frozen ? "})" : "}");
        break;
    }
    case CKPT_T_DICT:
        if (cls && !is_dict_class(cls) && kwargs_keys(v)) {
            sb_put_clean(sb, cls, strlen(cls));
            sb_putc(sb, '(');
            repr_dict_items(c, v, true);
            sb_putc(sb, ')');
            break;
        }
        if (cls && strcmp(cls, "builtins.dict") != 0) {
            const char *shown = is_dict_class(cls) ? short_class(cls) : cls;
            sb_put_clean(sb, shown, strlen(shown));
            sb_putc(sb, '(');
        }
        sb_putc(sb, '{');
        repr_dict_items(c, v, false);
        sb_putc(sb, '}');
        if (cls && strcmp(cls, "builtins.dict") != 0)
            sb_putc(sb, ')');
        break;
    case CKPT_T_GLOBAL: {
        const char *m = v->u.global.module ? v->u.global.module : "?";
        const char *n = v->u.global.name ? v->u.global.name : "?";
        sb_put_clean(sb, m, strlen(m));
        sb_putc(sb, '.');
        sb_put_clean(sb, n, strlen(n));
        break;
    }
    case CKPT_T_OBJECT: repr_object(c, v); break;
    case CKPT_T_TENSOR: repr_tensor(c, v->u.tensor); break;
    case CKPT_T_STORAGE:
        if (!(c->flags & CLI_REPR_TENSORS))
            c->ok = false;
        else
        {
            const char *dt = ckpt_dtype_name(ckpt_storage_dtype(v->u.storage));
            sb_printf(sb, "storage(%s, ", dt ? dt : "?");
            const char *key = ckpt_storage_key(v->u.storage);
            repr_text(sb, key ? key : "", key ? strlen(key) : 0, 100, false);
            sb_putc(sb, ')');
        }
        break;
    default: sb_puts(sb, "<?>"); break;
    }
    if (cli_is_container(v))
        c->depth--;
}

bool cli_repr(cli_sb *sb, const ckpt_value *v, size_t limit, unsigned flags)
{
    repr_ctx c = {.sb = sb, .limit = sb->len + limit, .flags = flags, .ok = true};
    repr_value(&c, v);
    if (sb->len > c.limit) {
        sb->len = c.limit;
        while (sb->len > 0 && ((unsigned char)sb->buf[sb->len] & 0xc0) == 0x80)
            sb->len--; /* not inside a UTF-8 sequence */
        sb->buf[sb->len] = '\0';
        sb_puts(sb, "...");
        c.ok = false;
    }
    return c.ok;
}

void cli_key_str(cli_sb *sb, const ckpt_value *key)
{
    switch (key->type) {
    case CKPT_T_STR: sb_putn(sb, key->u.str.data, key->u.str.len); break;
    case CKPT_T_BYTES: /* latin-1: each byte is the code point of the same value */
        for (size_t i = 0; i < key->u.str.len; i++) {
            unsigned char b = (unsigned char)key->u.str.data[i];
            if (b < 0x80)
                sb_putc(sb, (char)b);
            else
                sb_putc(sb, (char)(0xc0 | (b >> 6))), sb_putc(sb, (char)(0x80 | (b & 0x3f)));
        }
        break;
    default: cli_repr(sb, key, 1000, CLI_REPR_TENSORS); break;
    }
}

/* ---- walking ------------------------------------------------------------------------------ */

/* ---- distinct items: a visited set of containers ---- */

typedef struct ptr_set {
    const void **items; /* in insertion order */
    size_t len, cap;
    ckpt__arena *ar;    /* for index */
    ckpt__hindex index; /* over items: the library's keyed hash index */
} ptr_set;

#define SEED_PTR 0x70747273

static uint64_t ptr_hash(const void *p)
{
    return ckpt__hash_u64((uint64_t)(uintptr_t)p, SEED_PTR);
}

/* The index of p in s, or SIZE_MAX. */
static size_t ptr_set_find(const ptr_set *s, const void *p, uint64_t h)
{
    size_t pos;
    for (size_t it = ckpt__hindex_first(&s->index, h, &pos); it;
         it = ckpt__hindex_next(&s->index, h, &pos))
        if (s->items[it - 1] == p)
            return it - 1;
    return SIZE_MAX;
}

/* Appends p (not in s yet); its index. */
static size_t ptr_set_put(ptr_set *s, const void *p, uint64_t h)
{
    if (!s->ar && !(s->ar = ckpt__sd_arena()))
        out_of_memory();
    if (ckpt__hindex_add(s->ar, &s->index, h, s->len) != 0)
        out_of_memory();
    if (s->len == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 1024;
        s->items = cli_xrealloc(s->items, s->cap * sizeof *s->items);
    }
    s->items[s->len] = p;
    return s->len++;
}

/* Adds p; false if it was there already. */
static bool ptr_set_add(ptr_set *s, const void *p)
{
    uint64_t h = ptr_hash(p);
    if (ptr_set_find(s, p, h) != SIZE_MAX)
        return false;
    ptr_set_put(s, p, h);
    return true;
}

static void ptr_set_free(ptr_set *s)
{
    free(s->items);
    ckpt__arena_free(s->ar);
    memset(s, 0, sizeof *s);
}

static void push_pending(const ckpt_value ***st, size_t *n, size_t *cap, const ckpt_value *v)
{
    if (!v || !cli_is_container(v))
        return;
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        *st = cli_xrealloc(*st, *cap * sizeof **st);
    }
    (*st)[(*n)++] = v;
}

void cli_walk_init(cli_walk *w, const ckpt_value *root)
{
    w->depth = 0;
    w->items = 0;
    w->out = 0;
    w->error[0] = '\0';
    /* Iterative, so that a long chain of containers cannot exhaust the C stack. */
    ptr_set seen = {0};
    const ckpt_value **st = NULL;
    size_t n = 0, cap = 0;
    uint64_t distinct = 0;
    push_pending(&st, &n, &cap, root);
    while (n > 0) {
        const ckpt_value *v = st[--n];
        if (!ptr_set_add(&seen, v))
            continue;
        distinct += 1 + ckpt_value_len(v);
        switch (v->type) {
        case CKPT_T_TUPLE:
        case CKPT_T_LIST:
        case CKPT_T_SET:
            for (size_t i = 0; i < v->u.seq.len; i++)
                push_pending(&st, &n, &cap, v->u.seq.items[i]);
            break;
        case CKPT_T_DICT:
            for (size_t i = 0; i < v->u.dict.len; i++) {
                push_pending(&st, &n, &cap, v->u.dict.keys[i]);
                push_pending(&st, &n, &cap, v->u.dict.vals[i]);
            }
            push_pending(&st, &n, &cap, v->u.dict.attrs);
            break;
        case CKPT_T_OBJECT:
            push_pending(&st, &n, &cap, v->u.obj.callable);
            push_pending(&st, &n, &cap, v->u.obj.args);
            push_pending(&st, &n, &cap, v->u.obj.state);
            push_pending(&st, &n, &cap, v->u.obj.items);
            push_pending(&st, &n, &cap, v->u.obj.list);
            break;
        default: break;
        }
    }
    free(st);
    ptr_set_free(&seen);
    w->max_items = distinct * CLI_ITEMS_PER_DISTINCT;
    if (w->max_items < CLI_MIN_ITEMS)
        w->max_items = CLI_MIN_ITEMS;
}

/* ---- output budget and shared containers ---- */

bool cli_parse_size(const char *s, uint64_t *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9')
        return false;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    if (errno)
        return false;
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k')
        shift = 10;
    else if (*end == 'M' || *end == 'm')
        shift = 20;
    else if (*end == 'G' || *end == 'g')
        shift = 30;
    if (shift)
        end++;
    if (*end || n > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)n << shift;
    return true;
}

bool cli_walk_limit_output(cli_walk *w, const char *opt, uint64_t file_size)
{
    w->max_out_given = opt != NULL;
    if (opt)
        return cli_parse_size(opt, &w->max_out);
    w->max_out = file_size > UINT64_MAX / CLI_OUTPUT_PER_INPUT_BYTE
                     ? UINT64_MAX
                     : file_size * CLI_OUTPUT_PER_INPUT_BYTE;
    if (w->max_out < CLI_OUTPUT_MIN)
        w->max_out = CLI_OUTPUT_MIN;
    return true;
}

bool cli_walk_charge(cli_walk *w, uint64_t n)
{
    if (w->error[0])
        return false;
    w->out += n;
    if (w->max_out && w->out > w->max_out) {
        cli_sb lim = {0};
        cli_fmt_bytes(&lim, w->max_out);
        if (w->max_out_given)
            snprintf(w->error, sizeof w->error,
                     "the output would pass the --max-output limit of %s", sb_str(&lim));
        else
            snprintf(w->error, sizeof w->error,
                     "the output would pass %s, the limit for a file of this size (shared "
                     "references?); raise it with --max-output BYTES", sb_str(&lim));
        sb_free(&lim);
        return false;
    }
    return true;
}

#define SEEN_ROOT UINT32_MAX /* parent of a record met at the top of the walk */

/* Each container expanded so far, with the component it was met under and the record of the
 * container it was in: a path is rebuilt from these only when a reference is printed. */
struct cli_seen {
    ptr_set set;       /* the containers, keyed by address ... */
    uint32_t *rec_of;  /* ... and, at the same index, their record */
    size_t cap_rec_of;
    struct seen_rec {
        uint32_t parent;
        bool marked;     /* cli_walk_mark was called under it */
        size_t off, len; /* the component in comps */
    } *recs;
    size_t n_recs, cap_recs;
    cli_sb comps;
};

static bool seen_find(const cli_seen *s, const void *p, uint32_t *rec)
{
    size_t i = ptr_set_find(&s->set, p, ptr_hash(p));
    if (i == SIZE_MAX)
        return false;
    *rec = s->rec_of[i];
    return true;
}

static void seen_put(cli_seen *s, const void *p, uint32_t rec)
{
    size_t i = ptr_set_put(&s->set, p, ptr_hash(p));
    if (s->cap_rec_of < s->set.cap) {
        s->cap_rec_of = s->set.cap;
        s->rec_of = cli_xrealloc(s->rec_of, s->cap_rec_of * sizeof *s->rec_of);
    }
    s->rec_of[i] = rec;
}

void cli_walk_share(cli_walk *w)
{
    if (!w->seen) {
        w->seen = cli_xrealloc(NULL, sizeof *w->seen);
        memset(w->seen, 0, sizeof *w->seen);
    }
}

void cli_walk_free(cli_walk *w)
{
    if (!w->seen)
        return;
    ptr_set_free(&w->seen->set);
    free(w->seen->rec_of);
    free(w->seen->recs);
    sb_free(&w->seen->comps);
    free(w->seen);
    w->seen = NULL;
}

/* The records from the root down to v's, in rec[0..return). */
static size_t ref_chain(const cli_walk *w, const ckpt_value *v, uint32_t rec[CLI_MAX_DEPTH])
{
    uint32_t r;
    size_t n = 0;
    if (!w->seen || !seen_find(w->seen, v, &r))
        return 0;
    for (; r != SEEN_ROOT && n < CLI_MAX_DEPTH; r = w->seen->recs[r].parent)
        rec[n++] = r;
    for (size_t i = 0; i < n / 2; i++) {
        uint32_t t = rec[i];
        rec[i] = rec[n - 1 - i];
        rec[n - 1 - i] = t;
    }
    return n;
}

void cli_walk_ref_path(const cli_walk *w, const ckpt_value *v, const char *sep, cli_sb *sb)
{
    uint32_t rec[CLI_MAX_DEPTH];
    size_t n = ref_chain(w, v, rec);
    for (size_t i = 0; i < n; i++) {
        const struct seen_rec *r = &w->seen->recs[rec[i]];
        if (i)
            sb_puts(sb, sep);
        sb_put_clean(sb, w->seen->comps.buf + r->off, r->len);
    }
}

json_t *cli_walk_ref_json(const cli_walk *w, const ckpt_value *v)
{
    uint32_t rec[CLI_MAX_DEPTH];
    size_t n = ref_chain(w, v, rec);
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        const struct seen_rec *r = &w->seen->recs[rec[i]];
        json_array_append_new(a, cli_json_str(w->seen->comps.buf + r->off, r->len));
    }
    return a;
}

cli_enter cli_walk_enter_at(cli_walk *w, const ckpt_value *v, const char *comp, size_t n)
{
    cli_seen *s = w->seen;
    uint32_t rec;
    if (!s || w->error[0] || w->depth == 0) /* the root has no component: no references */
        return cli_walk_enter(w, v);
    for (size_t i = 0; i < w->depth; i++) {
        if (w->path[i] == v)
            return CLI_CYCLE;
    }
    if (seen_find(s, v, &rec))
        return CLI_SHARED;
    /* The remembered component is output-like memory: it is charged to the same budget. */
    if (!cli_walk_charge(w, n + sizeof(struct seen_rec)))
        return CLI_LIMIT;
    cli_enter e = cli_walk_enter(w, v);
    if (e != CLI_ENTERED)
        return e;
    if (s->n_recs == s->cap_recs) {
        s->cap_recs = s->cap_recs ? 2 * s->cap_recs : 256;
        s->recs = cli_xrealloc(s->recs, s->cap_recs * sizeof *s->recs);
    }
    rec = (uint32_t)s->n_recs++;
    s->recs[rec].parent = w->depth >= 2 ? w->node[w->depth - 2] : SEEN_ROOT;
    s->recs[rec].marked = false;
    s->recs[rec].off = s->comps.len;
    s->recs[rec].len = n;
    sb_putn(&s->comps, comp, n);
    seen_put(s, v, rec);
    w->node[w->depth - 1] = rec;
    return CLI_ENTERED;
}

cli_enter cli_walk_enter(cli_walk *w, const ckpt_value *v)
{
    if (w->error[0])
        return CLI_LIMIT;
    for (size_t i = 0; i < w->depth; i++) {
        if (w->path[i] == v)
            return CLI_CYCLE;
    }
    if (w->depth == CLI_MAX_DEPTH) {
        snprintf(w->error, sizeof w->error,
                 "the object tree nests more than %d containers deep", CLI_MAX_DEPTH);
        return CLI_LIMIT;
    }
    w->items += 1 + ckpt_value_len(v);
    if (w->items > w->max_items) {
        snprintf(w->error, sizeof w->error,
                 "shared references expand the object tree past %" PRIu64 " items; "
                 "the file holds far fewer (a pickle bomb?)", w->max_items);
        return CLI_LIMIT;
    }
    w->node[w->depth] = SEEN_ROOT; /* references below it start here */
    w->path[w->depth++] = v;
    return CLI_ENTERED;
}

void cli_walk_leave(cli_walk *w)
{
    w->depth--;
    uint32_t r = w->node[w->depth];
    if (w->seen && r != SEEN_ROOT && w->seen->recs[r].marked && w->depth > 0 &&
        w->node[w->depth - 1] != SEEN_ROOT)
        w->seen->recs[w->node[w->depth - 1]].marked = true;
}

void cli_walk_mark(cli_walk *w)
{
    if (w->seen && w->depth > 0 && w->node[w->depth - 1] != SEEN_ROOT)
        w->seen->recs[w->node[w->depth - 1]].marked = true;
}

bool cli_walk_marked(const cli_walk *w, const ckpt_value *v)
{
    uint32_t r;
    return w->seen && seen_find(w->seen, v, &r) && w->seen->recs[r].marked;
}

static bool stats_children(cli_walk *w, ckpt_value *const *items, size_t n,
                           cli_tensor_stats *st)
{
    for (size_t i = 0; i < n; i++) {
        if (items[i] && !cli_tensor_stats_add(w, items[i], st))
            return false;
    }
    return true;
}

bool cli_tensor_stats_add(cli_walk *w, const ckpt_value *v, cli_tensor_stats *st)
{
    if (v->type == CKPT_T_TENSOR) {
        const ckpt_tensor *t = v->u.tensor;
        st->count++;
        st->numel += (uint64_t)ckpt_tensor_numel(t);
        st->nbytes += ckpt_tensor_nbytes(t);
        int k = 0;
        while (k < st->n_dtypes && st->dtypes[k] != t->dtype)
            k++;
        if (k == st->n_dtypes && k < CKPT_DT_COUNT)
            st->dtypes[st->n_dtypes++] = t->dtype;
        return true;
    }
    if (!cli_is_container(v))
        return true;
    cli_enter e = cli_walk_enter(w, v);
    if (e == CLI_CYCLE)
        return true;
    if (e == CLI_LIMIT)
        return false;
    bool ok = true;
    switch (v->type) {
    case CKPT_T_TUPLE:
    case CKPT_T_LIST:
    case CKPT_T_SET: ok = stats_children(w, v->u.seq.items, v->u.seq.len, st); break;
    case CKPT_T_DICT: ok = stats_children(w, v->u.dict.vals, v->u.dict.len, st); break;
    case CKPT_T_OBJECT: {
        ckpt_value *parts[] = {v->u.obj.args, v->u.obj.state, v->u.obj.items, v->u.obj.list};
        ok = stats_children(w, parts, 4, st);
        break;
    }
    default: break;
    }
    cli_walk_leave(w);
    return ok;
}

void cli_fmt_tensor_flags(cli_sb *sb, const ckpt_tensor *t)
{
    if (t->is_parameter)
        sb_puts(sb, "  parameter");
    else if (t->requires_grad)
        sb_puts(sb, "  requires_grad");
    if (!ckpt_tensor_is_contiguous(t)) {
        sb_puts(sb, "  stride ");
        cli_fmt_dims(sb, t->stride, t->ndim);
    }
    if (t->offset)
        sb_printf(sb, "  offset %" PRId64, t->offset);
}

void cli_fmt_stats(cli_sb *sb, const cli_tensor_stats *st, bool with_dtypes)
{
    sb_printf(sb, "%" PRIu64 " tensor%s, ", st->count, st->count == 1 ? "" : "s");
    cli_fmt_count(sb, st->numel);
    sb_printf(sb, " parameter%s, ", st->numel == 1 ? "" : "s");
    cli_fmt_bytes(sb, st->nbytes);
    if (with_dtypes && st->n_dtypes > 0) {
        sb_puts(sb, " (");
        for (int i = 0; i < st->n_dtypes; i++) {
            const char *name = ckpt_dtype_name(st->dtypes[i]);
            sb_printf(sb, "%s%s", i ? ", " : "", name ? name : "?");
        }
        sb_putc(sb, ')');
    }
}
