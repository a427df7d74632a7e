/* test_pickle.c - the unpickler (src/pickle.c) against Python's own.
 *
 * The table in pickle_cases/cases.h (made by pickle_cases/gen_cases.py with Python's pickle,
 * torch.save and tests/data/vectors) gives each pickle and the text rendering of what Python's
 * Unpickler builds from it; render() below prints a ckpt_value in the same form. The rest are
 * hand-made cases for what a table cannot show: shared pointers, recorded globals, limits,
 * malformed input (every truncation of the table's pickles, underflows, bad memo keys, huge
 * lengths, deep nesting) and failing allocations. */
#include "check.h"
#include "internal.h"

#include <math.h>
#include <stdarg.h>

#include "pickle_cases/cases.h"

#define N_CASES (sizeof pickle_cases / sizeof pickle_cases[0])

/* ---- a growable string ------------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            abort();
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_putn(b, tmp, n < (int)sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* ---- render: the text gen_cases.py's render() gives for the Python value ----------------- */

static void render(sbuf *b, const ckpt_value *v, int depth);

static void render_float(sbuf *b, double f)
{
    if (isnan(f))
        sb_puts(b, "nan");
    else
        sb_printf(b, "%.17g", f);
}

static void render_escaped(sbuf *b, const char *s, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'')
            sb_putn(b, (const char *)&c, 1);
        else
            sb_printf(b, "\\x%02x", c);
    }
}

/* A BIGINT's decimal digits, from its little-endian two's complement bytes. */
static void render_bigint(sbuf *b, const unsigned char *le, size_t n)
{
    unsigned char *mag = malloc(n + 1);
    char *digits = malloc(n * 3 + 2);
    bool neg = n && (le[n - 1] & 0x80);
    unsigned carry = 1;
    for (size_t k = 0; k < n; k++) { /* magnitude, most significant byte first */
        unsigned x = neg ? (unsigned char)~le[k] + carry : le[k];
        carry = x >> 8;
        mag[n - 1 - k] = (unsigned char)x;
    }
    size_t nd = 0;
    for (bool zero = false; !zero;) {
        unsigned rem = 0;
        zero = true;
        for (size_t k = 0; k < n; k++) {
            unsigned cur = rem * 256 + mag[k];
            mag[k] = (unsigned char)(cur / 10);
            rem = cur % 10;
            zero = zero && mag[k] == 0;
        }
        digits[nd++] = (char)('0' + rem);
    }
    if (neg)
        sb_puts(b, "-");
    while (nd)
        sb_putn(b, &digits[--nd], 1);
    free(mag);
    free(digits);
}

static void render_seq(sbuf *b, const ckpt_value *v, const char *open, const char *close,
                       int depth)
{
    sb_puts(b, open);
    for (size_t k = 0; k < v->u.seq.len; k++) {
        if (k)
            sb_puts(b, ", ");
        render(b, v->u.seq.items[k], depth + 1);
    }
    sb_puts(b, close);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void render_dict(sbuf *b, const ckpt_value *d, int depth)
{
    sb_puts(b, "{");
    for (size_t k = 0; k < d->u.dict.len; k++) {
        if (k)
            sb_puts(b, ", ");
        render(b, d->u.dict.keys[k], depth + 1);
        sb_puts(b, ": ");
        render(b, d->u.dict.vals[k], depth + 1);
    }
    sb_puts(b, "}");
}

static void render(sbuf *b, const ckpt_value *v, int depth)
{
    if (depth > 200) { /* a cycle made through the memo */
        sb_puts(b, "...");
        return;
    }
    if (v->class_name)
        sb_printf(b, "<%s>", v->class_name);
    switch (v->type) {
    case CKPT_T_NONE: sb_puts(b, "None"); break;
    case CKPT_T_BOOL: sb_puts(b, v->u.b ? "True" : "False"); break;
    case CKPT_T_INT: sb_printf(b, "%" PRId64, v->u.i); break;
    case CKPT_T_BIGINT:
        render_bigint(b, (const unsigned char *)v->u.str.data, v->u.str.len);
        break;
    case CKPT_T_FLOAT: render_float(b, v->u.f); break;
    case CKPT_T_COMPLEX:
        sb_puts(b, "complex(");
        render_float(b, v->u.c.re);
        sb_puts(b, ", ");
        render_float(b, v->u.c.im);
        sb_puts(b, ")");
        break;
    case CKPT_T_STR:
    case CKPT_T_BYTES:
        sb_puts(b, v->type == CKPT_T_STR ? "'" : "b'");
        render_escaped(b, v->u.str.data, v->u.str.len);
        sb_puts(b, "'");
        break;
    case CKPT_T_TUPLE: render_seq(b, v, "(", ")", depth); break;
    case CKPT_T_LIST: render_seq(b, v, "[", "]", depth); break;
    case CKPT_T_SET: {
        /* Python's set order is its own; both sides sort the rendered items. */
        char **items = calloc(v->u.seq.len + 1, sizeof *items);
        for (size_t k = 0; k < v->u.seq.len; k++) {
            sbuf item = {0};
            render(&item, v->u.seq.items[k], depth + 1);
            items[k] = item.p ? item.p : calloc(1, 1);
        }
        qsort(items, v->u.seq.len, sizeof *items, cmp_str);
        sb_puts(b, v->flags & CKPT_VF_FROZEN ? "frozenset{" : "set{");
        for (size_t k = 0; k < v->u.seq.len; k++) {
            sb_puts(b, k ? ", " : "");
            sb_puts(b, items[k]);
            free(items[k]);
        }
        sb_puts(b, "}");
        free(items);
        break;
    }
    case CKPT_T_DICT:
        render_dict(b, v, depth);
        if (v->u.dict.attrs && v->u.dict.attrs->u.dict.len) {
            sb_puts(b, "@");
            render_dict(b, v->u.dict.attrs, depth);
        }
        break;
    case CKPT_T_GLOBAL: sb_printf(b, "@%s.%s", v->u.global.module, v->u.global.name); break;
    case CKPT_T_OBJECT:
        sb_puts(b, v->u.obj.newobj ? "new(" : "call(");
        render(b, v->u.obj.callable, depth + 1);
        sb_puts(b, ", ");
        render(b, v->u.obj.args, depth + 1);
        sb_puts(b, ")");
        if (v->u.obj.state) {
            sb_puts(b, ".state(");
            render(b, v->u.obj.state, depth + 1);
            sb_puts(b, ")");
        }
        if (v->u.obj.items && v->u.obj.items->u.dict.len) {
            sb_puts(b, ".items");
            render(b, v->u.obj.items, depth + 1);
        }
        if (v->u.obj.list && v->u.obj.list->u.seq.len) {
            sb_puts(b, ".list");
            render(b, v->u.obj.list, depth + 1);
        }
        break;
    case CKPT_T_TENSOR: {
        const ckpt_tensor *t = v->u.tensor;
        sb_printf(b, "tensor(%s, [", ckpt_dtype_name(t->dtype));
        for (int k = 0; k < t->ndim; k++)
            sb_printf(b, "%s%" PRId64, k ? ", " : "", t->shape[k]);
        sb_puts(b, "], [");
        for (int k = 0; k < t->ndim; k++)
            sb_printf(b, "%s%" PRId64, k ? ", " : "", t->stride[k]);
        sb_printf(b, "], %" PRId64 ", '%s', %s, %s)", t->offset, t->storage->key,
                  t->requires_grad ? "True" : "False", t->is_parameter ? "True" : "False");
        break;
    }
    case CKPT_T_STORAGE:
        sb_printf(b, "storage('%s', %s, %llu)", v->u.storage->key,
                  v->u.storage->dtype == CKPT_DT_UNTYPED ? "untyped"
                                                         : ckpt_dtype_name(v->u.storage->dtype),
                  (unsigned long long)v->u.storage->nbytes);
        break;
    }
}

/* ---- persistent ids: what torch.load's persistent_load does, minus the data -------------- */

typedef struct pload {
    ckpt__arena *ar;
    ckpt_value *storages[256]; /* deduplicated by key, as file.c does */
    size_t n;
} pload;

static ckpt_value *str_value(ckpt__arena *ar, const char *s)
{
    return ckpt__value_str(ar, CKPT_T_STR, s, strlen(s));
}

/* ('storage', cls, key, location, numel[, view]) -> a CKPT_T_STORAGE; anything else ->
 * ('persistent', pid), as gen_cases.py's RefUnpickler.persistent_load does. */
static int test_pload(void *ud, const ckpt_value *pid, ckpt_value **out, ckpt_error *err)
{
    pload *pl = ud;
    ckpt_value *const *it = pid->type == CKPT_T_TUPLE ? pid->u.seq.items : NULL;
    if (it && pid->u.seq.len >= 5 && ckpt__value_is_str(it[0], "storage") &&
        it[1]->type == CKPT_T_GLOBAL && it[2]->type == CKPT_T_STR && it[4]->type == CKPT_T_INT) {
        for (size_t k = 0; k < pl->n; k++)
            if (strcmp(pl->storages[k]->u.storage->key, it[2]->u.str.data) == 0) {
                *out = pl->storages[k];
                return CKPT_OK;
            }
        int dt = ckpt_dtype_from_storage(it[1]->u.global.name);
        if (dt < 0 || pl->n == 256)
            return CKPT_CORRUPT(err, "test: storage class '%s'", it[1]->u.global.name);
        ckpt_storage *s = ckpt__arena_alloc(pl->ar, sizeof *s);
        ckpt_value *v = ckpt__value_new(pl->ar, CKPT_T_STORAGE);
        s->key = it[2]->u.str.data;
        s->dtype = (ckpt_dtype)dt;
        s->nbytes = (uint64_t)it[4]->u.i * ckpt_dtype_size(s->dtype);
        v->u.storage = s;
        *out = pl->storages[pl->n++] = v;
        return CKPT_OK;
    }
    ckpt_value *t = ckpt__value_new(pl->ar, CKPT_T_TUPLE);
    ckpt__seq_push(pl->ar, t, str_value(pl->ar, "persistent"), err);
    ckpt__seq_push(pl->ar, t, (ckpt_value *)pid, err);
    *out = t;
    return CKPT_OK;
}

/* ---- running one pickle ------------------------------------------------------------------ */

typedef struct run {
    ckpt__alloc alloc;
    ckpt__arena *ar;
    ckpt__globals globals;
    pload pl;
    ckpt__pickle_ctx ctx;
    ckpt_value *out;
    size_t consumed;
    ckpt_error err;
    int rc;
} run;

static void run_begin(run *r, uint64_t arena_limit)
{
    memset(r, 0, sizeof *r);
    ckpt__alloc_init(&r->alloc, NULL);
    r->ar = ckpt__arena_new(&r->alloc, arena_limit);
    if (!r->ar)
        abort();
    r->pl.ar = r->ar;
    r->ctx.arena = r->ar;
    r->ctx.globals = &r->globals;
    r->ctx.where = "test";
    r->ctx.max_depth = CKPT_DEFAULT_MAX_DEPTH;
    r->ctx.max_memo = CKPT_DEFAULT_MAX_MEMO;
    r->ctx.persistent_load = test_pload;
    r->ctx.persistent_ud = &r->pl;
}

static int run_load(run *r, const void *data, size_t len)
{
    r->rc = ckpt__pickle_load(&r->ctx, data, len, &r->out, &r->consumed, &r->err);
    return r->rc;
}

static void run_end(run *r)
{
    ckpt__arena_free(r->ar);
}

static const struct pickle_case *find_case(const char *name)
{
    for (size_t k = 0; k < N_CASES; k++)
        if (strcmp(pickle_cases[k].name, name) == 0)
            return &pickle_cases[k];
    fprintf(stderr, "no case '%s'\n", name);
    abort();
}

/* ---- the table --------------------------------------------------------------------------- */

static void test_table(void)
{
    for (size_t k = 0; k < N_CASES; k++) {
        const struct pickle_case *c = &pickle_cases[k];
        run r;
        run_begin(&r, 0);
        int rc = run_load(&r, c->data, c->len);
        if (c->expected[0] == '!') {
            if (rc == CKPT_OK || strcmp(ckpt_status_name(rc), c->expected + 1) != 0) {
                fprintf(stderr, "case %s: want %s, got %s (%s)\n", c->name, c->expected + 1,
                        ckpt_status_name(rc), rc ? r.err.message : "");
                CHECK(false);
            } else {
                CHECK(strncmp(r.err.message, "pickle: ", 8) == 0 || strncmp(r.err.message,
                                                                            "test: ", 6) == 0);
            }
        } else if (rc != CKPT_OK) {
            fprintf(stderr, "case %s: %s: %s\n", c->name, ckpt_status_name(rc), r.err.message);
            CHECK(false);
        } else {
            sbuf b = {0};
            render(&b, r.out, 0);
            if (strcmp(b.p, c->expected) != 0) {
                fprintf(stderr, "case %s:\n  want %s\n  got  %s\n", c->name, c->expected, b.p);
                CHECK(false);
            } else {
                CHECK(true);
            }
            CHECK_EQ_INT(r.consumed, c->len);
            free(b.p);
        }
        run_end(&r);
    }
}

/* Every proper prefix of every pickle is an error (none contains its STOP), never a crash. */
static void test_truncation(void)
{
    int ok = 0, bad = 0;
    for (size_t k = 0; k < N_CASES; k++) {
        const struct pickle_case *c = &pickle_cases[k];
        size_t step = c->len > 3000 ? c->len / 300 : 1;
        for (size_t n = 0; n < c->len; n += step) {
            run r;
            run_begin(&r, 0);
            /* A copy of exactly n bytes, so that ASan sees any read past the end. */
            unsigned char *copy = malloc(n ? n : 1);
            memcpy(copy, c->data, n);
            if (run_load(&r, copy, n) == CKPT_OK) {
                fprintf(stderr, "case %s: prefix of %zu bytes loaded\n", c->name, n);
                bad++;
            } else {
                ok++;
            }
            free(copy);
            run_end(&r);
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(ok > 10000);
}

/* ---- sharing ----------------------------------------------------------------------------- */

static void test_memo_sharing(void)
{
    run r;
    run_begin(&r, 0);
    /* (lambda l: [l, l, {'k': l}])([1, 'x']) */
    const struct pickle_case *c = find_case("shared_p2");
    CHECK_OK(run_load(&r, c->data, c->len), r.err);
    if (r.rc == CKPT_OK) {
        ckpt_value **it = r.out->u.seq.items;
        CHECK(it[0] == it[1]);
        CHECK(ckpt_dict_get(it[2], "k") == it[0]);
    }
    run_end(&r);

    run_begin(&r, 0);
    c = find_case("torch_views"); /* 'same' is 'base' pickled again: one BINGET */
    CHECK_OK(run_load(&r, c->data, c->len), r.err);
    if (r.rc == CKPT_OK) {
        const ckpt_value *base = ckpt_dict_get(r.out, "base"), *same = ckpt_dict_get(r.out, "same");
        CHECK(base && base->type == CKPT_T_TENSOR && base == same);
        const ckpt_value *sl = ckpt_dict_get(r.out, "slice");
        CHECK(sl && sl->u.tensor->storage == base->u.tensor->storage);
    }
    run_end(&r);

    /* [t, Parameter(t)] with t memoized: the parameter is a copy, t stays as it was. */
    run_begin(&r, 0);
    c = find_case("t_param_shared");
    CHECK_OK(run_load(&r, c->data, c->len), r.err);
    if (r.rc == CKPT_OK) {
        const ckpt_value *t = r.out->u.seq.items[0], *prm = r.out->u.seq.items[1];
        CHECK(t != prm && t->u.tensor != prm->u.tensor);
        CHECK(!t->u.tensor->is_parameter && prm->u.tensor->is_parameter);
        CHECK(prm->u.tensor->storage == t->u.tensor->storage);
    }
    run_end(&r);
}

#define BYTES(s) s, sizeof(s) - 1

/* ---- globals ----------------------------------------------------------------------------- */

static const ckpt_global_ref *find_global(const ckpt__globals *g, const char *module,
                                          const char *name)
{
    for (size_t k = 0; k < g->len; k++)
        if (strcmp(g->items[k].module, module) == 0 && strcmp(g->items[k].name, name) == 0)
            return &g->items[k];
    return NULL;
}

static void test_globals(void)
{
    run r;
    run_begin(&r, 0);
    const struct pickle_case *c = find_case("vec_checkpoint");
    CHECK_OK(run_load(&r, c->data, c->len), r.err);
    /* Offsets as pickletools lists them for checkpoint/data.pkl of tests/data/vectors/checkpoint.pt
     * (unzip it to a file, then python3 -m pickletools FILE). */
    const ckpt_global_ref *g = find_global(&r.globals, "collections", "OrderedDict");
    CHECK(g && g->offset == 63 && g->count == 1 && strcmp(g->where, "test") == 0);
    CHECK(r.globals.len > 0 && r.globals.items[0].offset == 63);
    g = find_global(&r.globals, "torch._utils", "_rebuild_tensor_v2");
    CHECK(g && g->offset == 111);
    g = find_global(&r.globals, "torch", "FloatStorage");
    CHECK(g && g->offset == 162);
    g = find_global(&r.globals, "numpy.core.multiarray", "scalar");
    CHECK(g && g->offset == 1321);
    g = find_global(&r.globals, "_codecs", "encode");
    CHECK(g && g->offset == 1415);
    run_end(&r);

    /* Python 2 names are recorded in Python 3 spelling. */
    run_begin(&r, 0);
    c = find_case("py2_copyreg");
    CHECK_OK(run_load(&r, c->data, c->len), r.err);
    CHECK(find_global(&r.globals, "copyreg", "_reconstructor") != NULL);
    CHECK(find_global(&r.globals, "builtins", "object") != NULL);
    CHECK(find_global(&r.globals, "copy_reg", "_reconstructor") == NULL);
    CHECK(find_global(&r.globals, "__builtin__", "object") == NULL);
    run_end(&r);

    /* Globals of a pickle that fails later are recorded all the same. */
    static const struct {
        const char *data;
        size_t len;
        const char *module, *name;
        uint64_t offset;
    } broken[] = {
        /* GLOBAL, then a truncated BINUNICODE */
        {BYTES("\x80\x02" "cos\nsystem\nX\x05\x00\x00\x00ls"), "os", "system", 2},
        /* STACK_GLOBAL, then an unknown opcode */
        {BYTES("\x80\x04\x8c\x02os\x8c\x06system\x93\xff"), "os", "system", 14},
        /* INST with no MARK before it */
        {BYTES("i__builtin__\neval\n."), "builtins", "eval", 0},
        /* GLOBAL, then REDUCE of a tuple, then no STOP */
        {BYTES("cposix\nsystem\nX\x01\x00\x00\x00x\x85R"), "posix", "system", 0},
    };
    for (size_t k = 0; k < sizeof broken / sizeof broken[0]; k++) {
        run_begin(&r, 0);
        CHECK(run_load(&r, broken[k].data, broken[k].len) != CKPT_OK);
        g = find_global(&r.globals, broken[k].module, broken[k].name);
        CHECK(g && g->offset == broken[k].offset);
        run_end(&r);
    }

    /* Without a globals set, nothing is recorded and nothing breaks. */
    run_begin(&r, 0);
    r.ctx.globals = NULL;
    c = find_case("vec_checkpoint");
    CHECK_OK(run_load(&r, c->data, c->len), r.err);
    CHECK_EQ_INT(r.globals.len, 0);
    run_end(&r);
}

/* ---- malformed input --------------------------------------------------------------------- */

static void test_malformed(void)
{
    static const struct {
        const char *data;
        size_t len;
        int status;
        const char *message; /* a part of the message, or NULL */
    } bad[] = {
        {BYTES(""), CKPT_ECORRUPT, "no STOP"},
        /* STOP as CPython: the top value above the innermost MARK, the rest ignored
         * (b"NN." and b"(N." load as None there; see the accepted cases below) */
        {BYTES("."), CKPT_ECORRUPT, "empty stack"},
        {BYTES("N(."), CKPT_ECORRUPT, "empty stack"},
        {BYTES("a."), CKPT_ECORRUPT, "'APPEND' at offset 0 pops an empty stack"},
        {BYTES("\x85."), CKPT_ECORRUPT, "empty stack"},
        {BYTES("N(\x85."), CKPT_ECORRUPT, "empty stack"}, /* nothing below a mark is reachable */
        {BYTES("N(a."), CKPT_ECORRUPT, "empty stack"},
        {BYTES("NR."), CKPT_ECORRUPT, "empty stack"},
        {BYTES("t."), CKPT_ECORRUPT, "no MARK"},
        {BYTES("N0."), CKPT_ECORRUPT, "empty stack"},
        {BYTES("h\x05."), CKPT_ECORRUPT, "memo key 5, which was never set"},
        {BYTES("g5\n."), CKPT_ECORRUPT, "never set"},
        {BYTES("Np-1\n."), CKPT_ECORRUPT, "bad memo key"},
        {BYTES("Nr\xf0\xff\xff\xff."), CKPT_ELIMIT, "memo key 4294967280"},
        {BYTES("X\xff\xff\xff\xff" "abc"), CKPT_ECORRUPT, "'BINUNICODE' at offset 0 runs past"},
        {BYTES("\x8d\xff\xff\xff\xff\xff\xff\xff\x7f" "a"), CKPT_ECORRUPT, "runs past"},
        {BYTES("\x8e\xff\xff\xff\xff\xff\xff\xff\xff" "a"), CKPT_ECORRUPT, "runs past"},
        {BYTES("\x96\x00\x00\x00\x00\x01\x00\x00\x00" "a"), CKPT_ECORRUPT, "runs past"},
        {BYTES("B\x10\x00\x00\x00" "a"), CKPT_ECORRUPT, "runs past"},
        {BYTES("T\xff\xff\xff\xff" "a"), CKPT_ECORRUPT, "negative length"},
        {BYTES("\x8b\xff\xff\xff\xff" "a"), CKPT_ECORRUPT, "negative length"},
        {BYTES("\x8b\x01\x00\x01\x00" "a"), CKPT_ELIMIT, "65537 bytes"},
        {BYTES("\x8a\x09" "a"), CKPT_ECORRUPT, "runs past"},
        {BYTES("J\x01\x02"), CKPT_ECORRUPT, "runs past"},
        {BYTES("\xff"), CKPT_ECORRUPT, "unknown opcode 0xff at offset 0"},
        {BYTES("N\x00."), CKPT_ECORRUPT, "unknown opcode 0x00 at offset 1"},
        {BYTES("\x82\x01."), CKPT_EUNSUPPORTED, "extension registry"},
        {BYTES("\x83\x01\x00."), CKPT_EUNSUPPORTED, "extension registry"},
        {BYTES("\x84\x01\x00\x00\x00."), CKPT_EUNSUPPORTED, "extension registry"},
        {BYTES("\x97."), CKPT_EUNSUPPORTED, "out-of-band"},
        {BYTES("\x98."), CKPT_EUNSUPPORTED, "out-of-band"},
        {BYTES("\x80\x06N."), CKPT_EUNSUPPORTED, "protocol 6"},
        {BYTES(")(NNu."), CKPT_ECORRUPT, "'SETITEMS' on a tuple at offset 4"},
        {BYTES("Ns."), CKPT_ECORRUPT, "empty stack"},
        {BYTES("K\x01NNs."), CKPT_ECORRUPT, "'SETITEM' on a int at offset 4"},
        {BYTES("}Na."), CKPT_ECORRUPT, "'APPEND' on a dict"},
        {BYTES(")(Ne."), CKPT_ECORRUPT, "'APPENDS' on a tuple"},
        {BYTES("\x80\x04(\x91(K\x01\x90."), CKPT_ECORRUPT, "'ADDITEMS' on a frozenset"},
        {BYTES("](K\x01\x90."), CKPT_ECORRUPT, "'ADDITEMS' on a list"},
        {BYTES("K\x01}b."), CKPT_ECORRUPT, "'BUILD' on a int"},
        {BYTES("}K\x01" "b."), CKPT_ECORRUPT, "gives a dict a int"},
        {BYTES("X\x02\x00\x00\x00\xc3(."), CKPT_ECORRUPT, "not valid UTF-8"},
        {BYTES("X\x03\x00\x00\x00\xe0\x80\x80."), CKPT_ECORRUPT, "not valid UTF-8"}, /* overlong */
        {BYTES("X\x04\x00\x00\x00\xf4\x90\x80\x80."), CKPT_ECORRUPT, "UTF-8"}, /* > U+10FFFF */
        {BYTES("c\xff\na\n."), CKPT_ECORRUPT, "not valid UTF-8"},
        {BYTES("cos\x00x\nsystem\n."), CKPT_ECORRUPT, "not valid UTF-8"},
        {BYTES("cos\nsystem"), CKPT_ECORRUPT, "'GLOBAL' at offset 0 runs past"},
        {BYTES("\x80\x04\x8c\x02osK\x01\x93."), CKPT_ECORRUPT, "needs two str"},
        {BYTES("\x80\x04\x8c\x02os\x8c\x03" "a\x00" "b\x93."), CKPT_ECORRUPT, "NUL"},
        {BYTES("Ffoo\n."), CKPT_ECORRUPT, "'FLOAT' at offset 0 is not a number"},
        {BYTES("F0x1p3\n."), CKPT_ECORRUPT, "not a number"},
        {BYTES("F1.5 \n."), CKPT_ECORRUPT, "not a number"},
        {BYTES("F\n."), CKPT_ECORRUPT, "not a number"},
        {BYTES("Iabc\n."), CKPT_ECORRUPT, "'INT' at offset 0 is not a number"},
        {BYTES("I\n."), CKPT_ECORRUPT, "not a number"},
        {BYTES("I1_\n."), CKPT_ECORRUPT, "not a number"},
        {BYTES("I_1\n."), CKPT_ECORRUPT, "not a number"},
        {BYTES("I1__0\n."), CKPT_ECORRUPT, "not a number"},
        {BYTES("I12"), CKPT_ECORRUPT, "runs past"},
        {BYTES("S'abc\n."), CKPT_ECORRUPT, "not quoted"},
        {BYTES("S'a\\x4'\n."), CKPT_ECORRUPT, "\\x escape"},
        {BYTES("S'a\\'\n."), CKPT_ECORRUPT, "ends with a backslash"},
        {BYTES("V\\u12\n."), CKPT_ECORRUPT, "truncated"},
        {BYTES("V\\U00110000\n."), CKPT_ECORRUPT, "above U+10FFFF"},
        {BYTES("(Nd."), CKPT_ECORRUPT, "odd number"},
        {BYTES("}(Nu."), CKPT_ECORRUPT, "odd number"},
        {BYTES("(o."), CKPT_ECORRUPT, "no class"},
        {BYTES("NN\x81."), CKPT_ECORRUPT, "arguments that are a none"},
        {BYTES("NNR."), CKPT_ECORRUPT, "'REDUCE' at offset 2 has arguments"},
        {BYTES("\x80\x04N)N\x92."), CKPT_ECORRUPT, "keyword arguments"},
        {BYTES("Pk\xe9\n."), CKPT_ECORRUPT, "not ASCII"},
        {BYTES("\x80\x02\x95\x01\x00\x00"), CKPT_ECORRUPT, "'FRAME' at offset 2 runs past"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        run r;
        run_begin(&r, 0);
        unsigned char *copy = malloc(bad[k].len + 1);
        memcpy(copy, bad[k].data, bad[k].len);
        int rc = run_load(&r, copy, bad[k].len);
        if (rc != bad[k].status ||
            (bad[k].message && !strstr(r.err.message, bad[k].message))) {
            fprintf(stderr, "malformed case %zu: want %s '%s', got %s '%s'\n", k,
                    ckpt_status_name(bad[k].status), bad[k].message ? bad[k].message : "",
                    ckpt_status_name(rc), rc ? r.err.message : "");
            CHECK(false);
        } else {
            /* On failure consumed is where the failing opcode starts: the offset the
             * message names, or the end when no STOP came. */
            CHECK(r.out == NULL && r.consumed <= bad[k].len);
            const char *at = strstr(r.err.message, " at offset ");
            if (at)
                CHECK_EQ_INT(r.consumed, strtoull(at + 11, NULL, 10));
            else if (strstr(r.err.message, "no STOP"))
                CHECK_EQ_INT(r.consumed, bad[k].len);
        }
        /* Nothing above was worth more than a few KB of memory. */
        CHECK(ckpt__arena_used(r.ar) < (1u << 20));
        free(copy);
        run_end(&r);
    }

    /* Persistent ids need a persistent_load. */
    run r;
    run_begin(&r, 0);
    r.ctx.persistent_load = NULL;
    CHECK_EQ_INT(run_load(&r, BYTES("\x80\x02K\x01Q.")), CKPT_ECORRUPT);
    CHECK(strstr(r.err.message, "persistent id at offset 4 outside a torch file") != NULL);
    CHECK_EQ_INT(run_load(&r, BYTES("Pabc\n.")), CKPT_ECORRUPT);
    run_end(&r);
}

/* ---- limits ------------------------------------------------------------------------------ */

static int load_with_depth(const unsigned char *data, size_t len, uint32_t max_depth,
                           ckpt_error *err)
{
    run r;
    run_begin(&r, 0);
    r.ctx.max_depth = max_depth;
    int rc = run_load(&r, data, len);
    *err = r.err;
    CHECK(ckpt__arena_used(r.ar) < (64u << 20));
    run_end(&r);
    return rc;
}

static void test_depth(void)
{
    enum { N = 100000 };
    unsigned char *b = malloc(3 * N + 64);
    ckpt_error err;
    size_t n;

    /* 100000 MARKs */
    memset(b, '(', N);
    b[N] = '.';
    CHECK_EQ_INT(load_with_depth(b, N + 1, 0, &err), CKPT_ELIMIT);
    CHECK(strstr(err.message, "nesting deeper than 1000") != NULL);

    /* 100000 lists appended into each other: ] ] ] ... a a a . */
    memset(b, ']', N);
    memset(b + N, 'a', N - 1);
    b[2 * N - 1] = '.';
    CHECK_EQ_INT(load_with_depth(b, 2 * N, 0, &err), CKPT_ELIMIT);

    /* (((...))) built with TUPLE1 alone: the stack never holds more than one value */
    b[0] = ')';
    memset(b + 1, 0x85, N);
    b[N + 1] = '.';
    CHECK_EQ_INT(load_with_depth(b, N + 2, 0, &err), CKPT_ELIMIT);

    /* The limit is exact: a container of depth 10 loads under max_depth 10, 11 does not. */
    b[0] = ')'; /* depth 1 */
    memset(b + 1, 0x85, 9);
    b[10] = '.';
    CHECK_EQ_INT(load_with_depth(b, 11, 10, &err), CKPT_OK);
    memset(b + 1, 0x85, 10);
    b[11] = '.';
    CHECK_EQ_INT(load_with_depth(b, 12, 10, &err), CKPT_ELIMIT);
    memset(b, '(', 10);
    memcpy(b + 10, "1111111111N.", 12);
    CHECK_EQ_INT(load_with_depth(b, 22, 10, &err), CKPT_OK);
    memset(b, '(', 11);
    CHECK_EQ_INT(load_with_depth(b, 11, 10, &err), CKPT_ELIMIT);

    /* Objects wrapping objects, list(list(...list(None))): the global is memoized, pushed
     * 600 times, then each TUPLE1 + REDUCE wraps the value above it in one more call. */
    memcpy(b, "cbuiltins\nlist\nq\x00" "0", 18);
    n = 18;
    for (int k = 0; k < 600; k++) {
        memcpy(b + n, "h\x00", 2);
        n += 2;
    }
    b[n++] = 'N';
    for (int k = 0; k < 600; k++) {
        memcpy(b + n, "\x85R", 2);
        n += 2;
    }
    b[n++] = '.';
    CHECK_EQ_INT(load_with_depth(b, n, 0, &err), CKPT_ELIMIT);
    CHECK_EQ_INT(load_with_depth(b, n, 2000, &err), CKPT_OK);
    free(b);
}

static void test_memo_limits(void)
{
    run r;
    /* A key below max_memo far past the others costs a hash slot, not a 32 MB array. */
    run_begin(&r, 0);
    CHECK_OK(run_load(&r, BYTES("Nr\x00\x00\x3f\x00" "0j\x00\x00\x3f\x00.")), r.err);
    CHECK(r.rc == CKPT_OK && r.out->type == CKPT_T_NONE);
    CHECK(ckpt__arena_used(r.ar) < (1u << 20));
    run_end(&r);

    run_begin(&r, 0);
    r.ctx.max_memo = 4;
    CHECK_OK(run_load(&r, BYTES("Nq\x03" "0Nq\x00.")), r.err);
    CHECK_EQ_INT(run_load(&r, BYTES("Nq\x04.")), CKPT_ELIMIT);
    CHECK(strstr(r.err.message, "memo key 4 at offset 1") != NULL);
    /* MEMOIZE numbers from the count of entries: the fifth is key 4. */
    CHECK_EQ_INT(run_load(&r, BYTES("\x80\x04N\x94\x94\x94\x94.")), CKPT_OK);
    CHECK_EQ_INT(run_load(&r, BYTES("\x80\x04(N\x94N\x94N\x94N\x94N\x94t.")), CKPT_ELIMIT);
    run_end(&r);

    /* PUT on an existing key replaces it; MEMOIZE counts distinct keys. */
    run_begin(&r, 0);
    CHECK_OK(run_load(&r, BYTES("\x80\x04K\x01q\x00" "0K\x02q\x00\x94" "0(h\x00h\x01t.")), r.err);
    if (r.rc == CKPT_OK) {
        sbuf b = {0};
        render(&b, r.out, 0);
        CHECK_EQ_STR(b.p, "(2, 2)");
        free(b.p);
    }
    run_end(&r);
}

/* ---- other behaviour --------------------------------------------------------------------- */

static void test_misc(void)
{
    run r;
    /* Pickles back to back: consumed stops after the first STOP. */
    run_begin(&r, 0);
    CHECK_OK(run_load(&r, BYTES("K\x01.K\x02.")), r.err);
    CHECK_EQ_INT(r.consumed, 3);
    CHECK(r.rc == CKPT_OK && r.out->type == CKPT_T_INT && r.out->u.i == 1);
    run_end(&r);

    /* STOP leaves values below the top, and MARKs left open, alone, as CPython does:
     * pickle.loads(b"K\x01K\x02.") == 2 and pickle.loads(b"(K\x01K\x02.") == 2. */
    run_begin(&r, 0);
    CHECK_OK(run_load(&r, BYTES("K\x01K\x02.")), r.err);
    CHECK(r.rc == CKPT_OK && r.out->type == CKPT_T_INT && r.out->u.i == 2);
    run_end(&r);
    run_begin(&r, 0);
    CHECK_OK(run_load(&r, BYTES("(K\x01K\x02.")), r.err);
    CHECK(r.rc == CKPT_OK && r.out->type == CKPT_T_INT && r.out->u.i == 2);
    run_end(&r);

    /* A NULL err is allowed. */
    run_begin(&r, 0);
    ckpt_value *v;
    size_t used;
    CHECK_EQ_INT(ckpt__pickle_load(&r.ctx, (const uint8_t *)"a.", 2, &v, &used, NULL),
                 CKPT_ECORRUPT);
    run_end(&r);

    /* The arena's byte limit is reported as a limit. */
    run_begin(&r, 4096);
    const struct pickle_case *c = find_case("torch_train");
    CHECK_EQ_INT(run_load(&r, c->data, c->len), CKPT_ELIMIT);
    run_end(&r);

    /* A numpy scalar as torch writes it (docs/FORMAT.md §4.3) is the number, flagged. */
    run_begin(&r, 0);
    c = find_case("vec_checkpoint");
    CHECK_OK(run_load(&r, c->data, c->len), r.err);
    const ckpt_value *acc = ckpt_dict_get(r.out, "max_accuracy");
    CHECK(acc && acc->type == CKPT_T_FLOAT && (acc->flags & CKPT_VF_NUMPY) &&
          strcmp(acc->class_name, "numpy.float64") == 0);
    const ckpt_value *sd = ckpt_dict_get(r.out, "state_dict");
    CHECK(sd && sd->type == CKPT_T_DICT && sd->class_name &&
          strcmp(sd->class_name, "collections.OrderedDict") == 0 &&
          ckpt_dict_get(sd->u.dict.attrs, "_metadata") != NULL);
    const ckpt_value *w = ckpt_dict_get(sd, "fc.weight");
    CHECK(w && w->type == CKPT_T_TENSOR && w->u.tensor->ndim == 2 &&
          w->u.tensor->shape[0] == 2 && w->u.tensor->shape[1] == 3 &&
          w->u.tensor->stride[0] == 3 && w->u.tensor->numel == 6 &&
          w->u.tensor->dtype == CKPT_DT_FLOAT32);
    run_end(&r);

    /* Whatever an object is, its class is named and nothing was called. */
    run_begin(&r, 0);
    c = find_case("os_system_p2");
    CHECK_OK(run_load(&r, c->data, c->len), r.err);
    CHECK(r.out && r.out->type == CKPT_T_OBJECT && strcmp(r.out->class_name, "posix.system") == 0);
    run_end(&r);
}

/* An allocator that fails from the n-th call on. */
typedef struct failing {
    int calls, fail_at;
} failing;

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    failing *f = ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (++f->calls >= f->fail_at)
        return NULL;
    return realloc(ptr, nsize);
}

static void test_alloc_failure(void)
{
    const struct pickle_case *c = find_case("torch_train");
    int failures = 0;
    for (int n = 2; n < 40; n++) {
        failing f = {0, n};
        ckpt_options opt = {.alloc = failing_alloc, .alloc_ud = &f};
        ckpt__alloc a;
        ckpt__alloc_init(&a, &opt);
        ckpt__arena *ar = ckpt__arena_new(&a, 0);
        if (!ar)
            continue;
        run r;
        run_begin(&r, 0);
        ckpt__arena_free(r.ar);
        r.ar = r.pl.ar = r.ctx.arena = ar;
        int rc = run_load(&r, c->data, c->len);
        CHECK(rc == CKPT_OK || rc == CKPT_ENOMEM);
        failures += rc == CKPT_ENOMEM;
        ckpt__arena_free(ar);
    }
    CHECK(failures > 0);
}

int main(void)
{
    test_table();
    test_truncation();
    test_memo_sharing();
    test_globals();
    test_malformed();
    test_depth();
    test_memo_limits();
    test_misc();
    test_alloc_failure();
    return check_exit();
}
