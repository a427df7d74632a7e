/*
 * pickle.c - evaluate a pickle (protocols 0 to 5) without importing, calling or running anything.
 *
 * A pickle is a program for a small stack machine (Python's Lib/pickletools.py is the reference).
 * Each opcode is one byte followed by its argument, encoded as one of:
 *
 *   u1, u2, u4, u8       little-endian unsigned   BININT1, BININT2, BINPUT, FRAME, BINUNICODE8 ...
 *   i4                   little-endian signed     BININT, BINSTRING and LONG4 lengths, EXT4
 *   f8                   IEEE double, BIG-endian  BINFLOAT (the one big-endian field)
 *   line                 bytes up to '\n'         INT, LONG, FLOAT, STRING, UNICODE, PUT, GET,
 *                                                 PERSID; GLOBAL and INST take two lines
 *   counted bytes        a length, then the bytes SHORT_BINUNICODE (u1), BINUNICODE (u4), ...
 *
 * State: the value stack; the mark stack (positions in the value stack: as in CPython's
 * _pickle.c, nothing below the top mark can be popped except by the opcode that consumes the
 * mark); the memo (key -> value; a GET yields the same ckpt_value, so sharing is preserved).
 *
 * Nothing is ever called. GLOBAL/STACK_GLOBAL push a name (CKPT_T_GLOBAL), recorded in
 * ctx->globals as soon as it is read. REDUCE/NEWOBJ/INST/OBJ become the value a known callable
 * would build -- dicts, sets, bytes, complex numbers, torch.Size, tensors, numpy scalars
 * (docs/FORMAT.md §4 and §9) -- or a CKPT_T_OBJECT that records the call.
 *
 * Values are shared where Python shares them: a memo GET yields the same ckpt_value (a tensor
 * pickled twice is one pointer). None, True, False, () and, in large pickles, the ints 0..1023
 * are one value each per pickle. Values are read-only once built, except the containers that
 * later opcodes fill.
 *
 * Evaluation is a loop over opcodes, never a recursion on the input. Limits: marks and the
 * nesting of containers (ctx->max_depth), memo keys (ctx->max_memo), text ints, LONG4 sizes and
 * text floats (the PK_MAX_* constants below); all memory comes from ctx->arena, whose byte
 * limit bounds the rest.
 *
 * Lenient where Python 3 would be strict, and why:
 *  - Python 2 str (STRING, BINSTRING, SHORT_BINSTRING) is decoded as latin-1 into a UTF-8 str.
 *    Python 3's default encoding='ASCII' would refuse bytes >= 0x80, but torch.load passes
 *    encoding='latin1' for old checkpoints, and latin-1 never fails.
 *  - Lone surrogates (which Python's str allows, and BINUNICODE carries as 'surrogatepass'
 *    UTF-8) become U+FFFD, so that every CKPT_T_STR is valid UTF-8.
 *  - Py2 module names are mapped for every protocol, not only below 3: what a global is
 *    called must not depend on the PROTO byte.
 *  - BUILD with a None state is a no-op on anything (as in CPython); set items are kept as
 *    pickled, without removing duplicates.
 * and strict where Python is lenient: STOP must find exactly one value and no open MARK.
 */
#include "internal.h"

#include <locale.h>
#include <math.h>
#include <stdlib.h>

/* ---- limits --------------------------------------------------------------------------------- */

#define PK_HIGHEST_PROTOCOL 5
#define PK_MAX_LONG_BYTES (1u << 16)  /* bytes of one LONG1/LONG4 int: a 524288-bit int */
#define PK_MAX_INT_DIGITS 4300        /* digits of a text int (Python's int_max_str_digits) */
#define PK_BIG_LIMBS (PK_MAX_INT_DIGITS / 8 + 2) /* 32-bit limbs for that many hex digits */
#define PK_MAX_FLOAT_TEXT 128         /* characters of a text float (repr needs 24) */
#define PK_MAX_REBUILD_NESTING 8      /* _rebuild_from_type_v2 applied to itself */
#define PK_STACK_INIT 64
#define PK_MEMO_SLACK 128             /* dense memo keys may run this far ahead of the count */
#define PK_SMALL_INTS 1024            /* ints 0..1023 are shared within a large pickle */
#define PK_SMALL_INTS_FROM 4096       /* bytes of pickle from which that pays */

/* ---- opcodes -------------------------------------------------------------------------------- */

#define PK_OPCODES(X)                                                                          \
    X(MARK, 0x28) X(STOP, 0x2e) X(POP, 0x30) X(POP_MARK, 0x31) X(DUP, 0x32) X(FLOAT, 0x46)     \
    X(INT, 0x49) X(BININT, 0x4a) X(BININT1, 0x4b) X(LONG, 0x4c) X(BININT2, 0x4d)              \
    X(NONE, 0x4e) X(PERSID, 0x50) X(BINPERSID, 0x51) X(REDUCE, 0x52) X(STRING, 0x53)           \
    X(BINSTRING, 0x54) X(SHORT_BINSTRING, 0x55) X(UNICODE, 0x56) X(BINUNICODE, 0x58)           \
    X(APPEND, 0x61) X(BUILD, 0x62) X(GLOBAL, 0x63) X(DICT, 0x64) X(EMPTY_DICT, 0x7d)           \
    X(APPENDS, 0x65) X(GET, 0x67) X(BINGET, 0x68) X(INST, 0x69) X(LONG_BINGET, 0x6a)           \
    X(LIST, 0x6c) X(EMPTY_LIST, 0x5d) X(OBJ, 0x6f) X(PUT, 0x70) X(BINPUT, 0x71)                \
    X(LONG_BINPUT, 0x72) X(SETITEM, 0x73) X(TUPLE, 0x74) X(EMPTY_TUPLE, 0x29)                  \
    X(SETITEMS, 0x75) X(BINFLOAT, 0x47) X(BINBYTES, 0x42) X(SHORT_BINBYTES, 0x43)              \
    X(PROTO, 0x80) X(NEWOBJ, 0x81) X(EXT1, 0x82) X(EXT2, 0x83) X(EXT4, 0x84) X(TUPLE1, 0x85)   \
    X(TUPLE2, 0x86) X(TUPLE3, 0x87) X(NEWTRUE, 0x88) X(NEWFALSE, 0x89) X(LONG1, 0x8a)          \
    X(LONG4, 0x8b) X(SHORT_BINUNICODE, 0x8c) X(BINUNICODE8, 0x8d) X(BINBYTES8, 0x8e)           \
    X(EMPTY_SET, 0x8f) X(ADDITEMS, 0x90) X(FROZENSET, 0x91) X(NEWOBJ_EX, 0x92)                 \
    X(STACK_GLOBAL, 0x93) X(MEMOIZE, 0x94) X(FRAME, 0x95) X(BYTEARRAY8, 0x96)                  \
    X(NEXT_BUFFER, 0x97) X(READONLY_BUFFER, 0x98)

enum {
#define PK_OP_ENUM(name, code) OP_##name = code,
    PK_OPCODES(PK_OP_ENUM)
#undef PK_OP_ENUM
};

static const char *op_name(unsigned op)
{
    switch (op) {
#define PK_OP_NAME(name, code)                                                                 \
    case code:                                                                                 \
        return #name;
        PK_OPCODES(PK_OP_NAME)
#undef PK_OP_NAME
    }
    return "unknown";
}

/* ---- evaluator state ------------------------------------------------------------------------ */

typedef struct memo_slot {
    uint32_t key1; /* key + 1 */
    ckpt_value *v;
} memo_slot;

typedef struct depth_slot {
    const ckpt_value *v;
    uint64_t depth;
} depth_slot;

typedef struct pk {
    ckpt__pickle_ctx *ctx;
    ckpt__arena *ar;
    ckpt_error *err;
    const uint8_t *buf;
    size_t len, pos;
    size_t at; /* offset of the opcode being run, for messages and global records */
    unsigned op;
    uint32_t max_depth, max_memo;
    ckpt_value **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t n_marks, marks_cap;
    /* The memo: keys are dense in pickles Python writes (0, 1, 2, ...), so an array holds
     * them; it grows only as far as the entries stored justify, and keys far past it go to a
     * hash table, so that a hostile LONG_BINPUT 4000000 does not cost 32 MB. */
    ckpt_value **dense;
    size_t dense_cap;
    memo_slot *memo;           /* the keys past the array, indexed by memo_index */
    size_t memo_len, memo_cap;
    ckpt__hindex memo_index;
    size_t memo_count;         /* distinct keys: MEMOIZE's next key */
    /* Nesting depth of containers that hold containers; absent means 1 (a container) or 0. */
    depth_slot *deep;
    size_t deep_len, deep_cap;
    ckpt__hindex deep_index;
    ckpt_value *none, *yes, *no, *empty_tuple;
    ckpt_value **small_ints; /* PK_SMALL_INTS shared ints, for large pickles only */
    const ckpt_value *named_fn; /* the callable whose "module.name" is in fn_name */
    const char *fn_name;
} pk;

#define PK_OOM(p) ckpt__arena_error((p)->ar, (p)->err)

static int truncated(pk *p)
{
    return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu runs past the end of the data",
                        op_name(p->op), p->at);
}

static int too_deep(pk *p)
{
    return CKPT_FAIL(p->err, CKPT_ELIMIT, "pickle: nesting deeper than %u at offset %zu",
                     p->max_depth, p->at);
}

/* ---- reading arguments ---------------------------------------------------------------------- */

static int read_bytes(pk *p, uint64_t n, const uint8_t **s)
{
    if (n > p->len - p->pos)
        return truncated(p);
    *s = p->buf + p->pos;
    p->pos += (size_t)n;
    return CKPT_OK;
}

static int read_uint(pk *p, unsigned n, uint64_t *v)
{
    const uint8_t *b = NULL;
    int rc = read_bytes(p, n, &b);
    if (rc)
        return rc;
    uint64_t x = 0;
    for (unsigned k = n; k-- > 0;)
        x = x << 8 | b[k];
    *v = x;
    return CKPT_OK;
}

/* A little-endian int32 (BININT, EXT4, and the BINSTRING/LONG4 lengths). */
static int read_i32(pk *p, int64_t *v)
{
    uint64_t u;
    int rc = read_uint(p, 4, &u);
    if (rc)
        return rc;
    *v = u >= 0x80000000u ? (int64_t)u - 0x100000000ll : (int64_t)u;
    return CKPT_OK;
}

/* The text up to '\n', without it. */
static int read_line(pk *p, const char **s, size_t *n)
{
    const uint8_t *start = p->buf + p->pos;
    const uint8_t *nl = p->pos < p->len ? memchr(start, '\n', p->len - p->pos) : NULL;
    if (!nl)
        return truncated(p);
    *s = (const char *)start;
    *n = (size_t)(nl - start);
    p->pos += *n + 1;
    return CKPT_OK;
}

/* ---- stacks --------------------------------------------------------------------------------- */

static int push(pk *p, ckpt_value *v)
{
    if (p->sp == p->stack_cap) {
        size_t ncap = p->stack_cap ? p->stack_cap * 2 : PK_STACK_INIT;
        ckpt_value **s = ckpt__arena_grow(p->ar, p->stack, p->stack_cap * sizeof *s,
                                          ncap * sizeof *s);
        if (!s)
            return PK_OOM(p);
        p->stack = s;
        p->stack_cap = ncap;
    }
    p->stack[p->sp++] = v;
    return CKPT_OK;
}

static size_t fence(const pk *p)
{
    return p->n_marks ? p->marks[p->n_marks - 1] : 0;
}

static int underflow(pk *p)
{
    return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu pops an empty stack", op_name(p->op),
                        p->at);
}

static int pop(pk *p, ckpt_value **v)
{
    if (p->sp <= fence(p))
        return underflow(p);
    *v = p->stack[--p->sp];
    return CKPT_OK;
}

static int peek(pk *p, ckpt_value **v)
{
    if (p->sp <= fence(p))
        return underflow(p);
    *v = p->stack[p->sp - 1];
    return CKPT_OK;
}

static int push_mark(pk *p)
{
    if (p->n_marks >= p->max_depth)
        return too_deep(p);
    if (p->n_marks == p->marks_cap) {
        size_t ncap = p->marks_cap ? p->marks_cap * 2 : 16;
        size_t *m = ckpt__arena_grow(p->ar, p->marks, p->marks_cap * sizeof *m, ncap * sizeof *m);
        if (!m)
            return PK_OOM(p);
        p->marks = m;
        p->marks_cap = ncap;
    }
    p->marks[p->n_marks++] = p->sp;
    return CKPT_OK;
}

/* The values since the top mark, which is removed. *items stays valid until the next push. */
static int pop_mark(pk *p, ckpt_value ***items, size_t *n)
{
    if (!p->n_marks)
        return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has no MARK before it",
                            op_name(p->op), p->at);
    size_t m = p->marks[--p->n_marks];
    *items = p->stack + m;
    *n = p->sp - m;
    p->sp = m;
    return CKPT_OK;
}

/* ---- nesting depth -------------------------------------------------------------------------- */

/* Depth of a container: 1 + the deepest container it holds. It is tracked as values are put
 * into containers, so the `((((...))))` a pickle can build with TUPLE1 alone, or with MARKs,
 * or EMPTY_LIST + APPEND, is refused before any consumer recurses into it. A container that
 * changes after being put into another (only possible through the memo, and how cycles are
 * made) does not update its parents: code walking values must still bound its recursion. */

#define SEED_DEPTH 0x64657074

static uint64_t ptr_hash(const void *v)
{
    return ckpt__hash_u64((uint64_t)(uintptr_t)v, SEED_DEPTH);
}

static depth_slot *depth_find(const pk *p, const ckpt_value *v)
{
    uint64_t h = ptr_hash(v);
    size_t pos;
    for (size_t it = ckpt__hindex_first(&p->deep_index, h, &pos); it;
         it = ckpt__hindex_next(&p->deep_index, h, &pos))
        if (p->deep[it - 1].v == v)
            return &p->deep[it - 1];
    return NULL;
}

static bool is_container(const ckpt_value *v)
{
    switch (v->type) {
    case CKPT_T_TUPLE:
    case CKPT_T_LIST:
    case CKPT_T_SET:
    case CKPT_T_DICT:
    case CKPT_T_OBJECT: return true;
    default: return false;
    }
}

static uint64_t depth_of(const pk *p, const ckpt_value *v)
{
    if (!is_container(v))
        return 0;
    const depth_slot *d = depth_find(p, v);
    return d ? d->depth : 1;
}

static int set_depth(pk *p, const ckpt_value *v, uint64_t depth)
{
    if (depth > p->max_depth)
        return too_deep(p);
    if (depth <= 1)
        return CKPT_OK;
    depth_slot *d = depth_find(p, v);
    if (d) {
        d->depth = depth;
        return CKPT_OK;
    }
    if (p->deep_len == p->deep_cap) {
        size_t ncap = p->deep_cap ? p->deep_cap * 2 : 64;
        depth_slot *t = ckpt__arena_grow(p->ar, p->deep, p->deep_cap * sizeof *t,
                                         ncap * sizeof *t);
        if (!t)
            return PK_OOM(p);
        p->deep = t;
        p->deep_cap = ncap;
    }
    if (ckpt__hindex_add(p->ar, &p->deep_index, ptr_hash(v), p->deep_len))
        return PK_OOM(p);
    p->deep[p->deep_len].v = v;
    p->deep[p->deep_len].depth = depth;
    p->deep_len++;
    return CKPT_OK;
}

/* parent now holds child. */
static int nest(pk *p, const ckpt_value *parent, const ckpt_value *child)
{
    uint64_t d = depth_of(p, child);
    if (d == 0 || d + 1 <= depth_of(p, parent))
        return CKPT_OK;
    return set_depth(p, parent, d + 1);
}

/* ---- memo ----------------------------------------------------------------------------------- */

#define SEED_MEMO 0x6d656d6f

static memo_slot *hash_find(const pk *p, uint32_t key1)
{
    uint64_t h = ckpt__hash_u64(key1, SEED_MEMO);
    size_t pos;
    for (size_t it = ckpt__hindex_first(&p->memo_index, h, &pos); it;
         it = ckpt__hindex_next(&p->memo_index, h, &pos))
        if (p->memo[it - 1].key1 == key1)
            return &p->memo[it - 1];
    return NULL;
}

static int hash_put(pk *p, uint32_t key1, ckpt_value *v)
{
    memo_slot *s = hash_find(p, key1);
    if (s) {
        s->v = v;
        return CKPT_OK;
    }
    if (p->memo_len == p->memo_cap) {
        size_t ncap = p->memo_cap ? p->memo_cap * 2 : 64;
        memo_slot *t = ckpt__arena_grow(p->ar, p->memo, p->memo_cap * sizeof *t,
                                        ncap * sizeof *t);
        if (!t)
            return PK_OOM(p);
        p->memo = t;
        p->memo_cap = ncap;
    }
    if (ckpt__hindex_add(p->ar, &p->memo_index, ckpt__hash_u64(key1, SEED_MEMO), p->memo_len))
        return PK_OOM(p);
    p->memo[p->memo_len].key1 = key1;
    p->memo[p->memo_len].v = v;
    p->memo_len++;
    p->memo_count++;
    return CKPT_OK;
}

static int memo_put(pk *p, uint64_t key, ckpt_value *v)
{
    if (key >= p->max_memo)
        return CKPT_FAIL(p->err, CKPT_ELIMIT,
                         "pickle: memo key %llu at offset %zu is not below the limit of %u",
                         (unsigned long long)key, p->at, p->max_memo);
    uint32_t key1 = (uint32_t)key + 1; /* max_memo <= UINT32_MAX, so no wrap */
    size_t reach = 2 * (p->memo_count + PK_MEMO_SLACK);
    if (key >= p->dense_cap && key < reach) {
        size_t ncap = p->dense_cap ? p->dense_cap * 2 : PK_MEMO_SLACK;
        if (ncap <= key)
            ncap = (size_t)key + 1;
        if (ncap > reach)
            ncap = reach;
        if (ncap > p->max_memo)
            ncap = p->max_memo;
        ckpt_value **d = ckpt__arena_grow(p->ar, p->dense, p->dense_cap * sizeof *d,
                                          ncap * sizeof *d);
        if (!d)
            return PK_OOM(p);
        p->dense = d;
        p->dense_cap = ncap;
    }
    if (key >= p->dense_cap)
        return hash_put(p, key1, v);
    /* A key the hash table took before the array reached it was counted then. */
    if (!p->dense[key] && !(p->memo_len && hash_find(p, key1)))
        p->memo_count++;
    p->dense[key] = v;
    return CKPT_OK;
}

static int push_memo(pk *p, uint64_t key)
{
    if (key < p->dense_cap && p->dense[key])
        return push(p, p->dense[key]);
    const memo_slot *s = key < p->max_memo ? hash_find(p, (uint32_t)key + 1) : NULL;
    if (s)
        return push(p, s->v);
    return CKPT_CORRUPT(p->err,
                        "pickle: '%s' at offset %zu reads memo key %llu, which was never set",
                        op_name(p->op), p->at, (unsigned long long)key);
}

static int memo_top(pk *p, uint64_t key)
{
    ckpt_value *v = NULL;
    int rc = peek(p, &v);
    return rc ? rc : memo_put(p, key, v);
}

/* ---- scalar values -------------------------------------------------------------------------- */

static int new_value(pk *p, ckpt_type t, ckpt_value **out)
{
    *out = ckpt__value_new(p->ar, t);
    return *out ? CKPT_OK : PK_OOM(p);
}

/* None, True, False and () are immutable; one value each per pickle saves allocations. */
static int push_const(pk *p, ckpt_value **slot, ckpt_type t, bool b)
{
    if (!*slot) {
        int rc = new_value(p, t, slot);
        if (rc)
            return rc;
        (*slot)->u.b = b;
    }
    return push(p, *slot);
}

/* Ints are immutable too; a large pickle repeats its sizes and strides thousands of times. */
static int push_int(pk *p, int64_t i)
{
    ckpt_value **slot = NULL;
    if (i >= 0 && i < PK_SMALL_INTS && p->len >= PK_SMALL_INTS_FROM) {
        if (!p->small_ints &&
            !(p->small_ints = ckpt__arena_alloc(p->ar, PK_SMALL_INTS * sizeof *p->small_ints)))
            return PK_OOM(p);
        slot = &p->small_ints[i];
        if (*slot)
            return push(p, *slot);
    }
    ckpt_value *v = ckpt__value_int(p->ar, i);
    if (!v)
        return PK_OOM(p);
    if (slot)
        *slot = v;
    return push(p, v);
}

static int push_float(pk *p, double f)
{
    ckpt_value *v;
    int rc = new_value(p, CKPT_T_FLOAT, &v);
    if (rc)
        return rc;
    v->u.f = f;
    return push(p, v);
}

/* An int from n bytes of little-endian two's complement: CKPT_T_INT when it fits int64, else
 * CKPT_T_BIGINT holding the shortest encoding. */
static int int_from_le(pk *p, const uint8_t *b, size_t n, ckpt_value **out)
{
    while (n > 1 && ((b[n - 1] == 0x00 && !(b[n - 2] & 0x80)) ||
                     (b[n - 1] == 0xff && (b[n - 2] & 0x80))))
        n--;
    if (n <= 8) {
        uint64_t u = 0;
        for (size_t k = n; k-- > 0;)
            u = u << 8 | b[k];
        if (n > 0 && n < 8 && (b[n - 1] & 0x80))
            u |= ~(uint64_t)0 << (8 * n);
        int64_t i;
        memcpy(&i, &u, sizeof i);
        *out = ckpt__value_int(p->ar, i);
    } else {
        *out = ckpt__value_str(p->ar, CKPT_T_BIGINT, (const char *)b, n);
    }
    return *out ? CKPT_OK : PK_OOM(p);
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int bad_number(pk *p)
{
    return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu is not a number", op_name(p->op),
                        p->at);
}

/* Python's int(text, 0) for what pickles hold: blanks around, a sign, a 0x/0o/0b prefix or
 * decimal digits, single '_' between digits. (Leading zeros are accepted, which Python's
 * base 0 refuses.) */
static int text_int(pk *p, const char *s, size_t n, ckpt_value **out)
{
    while (n && is_blank(s[n - 1]))
        n--;
    while (n && is_blank(*s))
        s++, n--;
    bool neg = false;
    if (n && (*s == '+' || *s == '-')) {
        neg = *s == '-';
        s++, n--;
    }
    unsigned base = 10;
    bool prefixed = false;
    if (n >= 2 && s[0] == '0') {
        char c = (char)(s[1] | 0x20);
        base = c == 'x' ? 16 : c == 'o' ? 8 : c == 'b' ? 2 : 10;
        if (base != 10) {
            s += 2, n -= 2;
            prefixed = true;
        }
    }
    uint32_t limbs[PK_BIG_LIMBS];
    size_t nl = 0, digits = 0;
    for (size_t k = 0; k < n; k++) {
        char c = s[k];
        if (c == '_' && (k > 0 || prefixed) && k + 1 < n && s[k + 1] != '_')
            continue;
        unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'z' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'Z' ? (unsigned)(c - 'A' + 10)
                                            : 99;
        if (d >= base)
            return bad_number(p);
        if (++digits > PK_MAX_INT_DIGITS)
            return CKPT_FAIL(p->err, CKPT_ELIMIT,
                             "pickle: '%s' at offset %zu has more than %d digits", op_name(p->op),
                             p->at, PK_MAX_INT_DIGITS);
        uint64_t carry = d;
        for (size_t j = 0; j < nl; j++) {
            uint64_t t = (uint64_t)limbs[j] * base + carry;
            limbs[j] = (uint32_t)t;
            carry = t >> 32;
        }
        if (carry) {
            if (nl == PK_BIG_LIMBS)
                return bad_number(p);
            limbs[nl++] = (uint32_t)carry;
        }
    }
    if (!digits)
        return bad_number(p);
    /* Magnitude to little-endian bytes with a sign byte, negated in two's complement. */
    uint8_t le[PK_BIG_LIMBS * 4 + 1];
    size_t nb = nl * 4 + 1;
    for (size_t j = 0; j < nl; j++)
        for (unsigned k = 0; k < 4; k++)
            le[j * 4 + k] = (uint8_t)(limbs[j] >> (8 * k));
    le[nb - 1] = 0;
    if (neg) {
        unsigned carry = 1;
        for (size_t k = 0; k < nb; k++) {
            unsigned t = (uint8_t)~le[k] + carry;
            le[k] = (uint8_t)t;
            carry = t >> 8;
        }
    }
    return int_from_le(p, le, nb, out);
}

/* A FLOAT line as CPython's _pickle reads it (PyOS_string_to_double: digits, sign, point,
 * exponent, inf, nan; no blanks). */
static int text_float(pk *p, const char *s, size_t n, double *out)
{
    if (n == 0 || n >= PK_MAX_FLOAT_TEXT)
        return bad_number(p);
    /* strtod follows the C locale's decimal point; the pickle's is always '.'. */
    const char *dp = localeconv()->decimal_point;
    char point = dp && dp[0] && !dp[1] ? dp[0] : '.';
    char tmp[PK_MAX_FLOAT_TEXT];
    for (size_t k = 0; k < n; k++) {
        char c = s[k];
        /* Hex floats and nan(...) are strtod's, not Python's. */
        if (!c || !((c >= '0' && c <= '9') || strchr("+-.eEinfatyINFATY", c)))
            return bad_number(p);
        tmp[k] = c == '.' ? point : c;
    }
    tmp[n] = 0;
    char *end;
    double f = strtod(tmp, &end);
    if (end != tmp + n)
        return bad_number(p);
    *out = f;
    return CKPT_OK;
}

/* ---- strings -------------------------------------------------------------------------------- */

/* Length of the UTF-8 sequence at s (1 to 4), or 0 when invalid. Surrogates (ED A0..BF xx)
 * are accepted, as Python's 'surrogatepass', and reported. */
static size_t utf8_seq(const uint8_t *s, size_t n, bool *surrogate)
{
    uint8_t c = s[0];
    *surrogate = false;
    if (c < 0x80)
        return 1;
    if (c < 0xc2 || c > 0xf4)
        return 0;
    if (c < 0xe0)
        return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c < 0xf0) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (c == 0xe0 && s[1] < 0xa0))
            return 0;
        *surrogate = c == 0xed && s[1] >= 0xa0;
        return 3;
    }
    if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80 ||
        (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))
        return 0;
    return 4;
}

/* Writes code point cp (<= 0x10FFFF) as UTF-8; a surrogate becomes U+FFFD. */
static size_t put_utf8(char *d, uint32_t cp)
{
    if (cp >= 0xd800 && cp <= 0xdfff)
        cp = 0xfffd;
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xc0 | cp >> 6);
        d[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xe0 | cp >> 12);
        d[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        d[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    d[0] = (char)(0xf0 | cp >> 18);
    d[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    d[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A STR value over d[0..n), which the caller allocated with room for the NUL (zeroed). */
static int str_value(pk *p, char *d, size_t n, ckpt_value **out)
{
    int rc = new_value(p, CKPT_T_STR, out);
    if (rc)
        return rc;
    (*out)->u.str.data = d;
    (*out)->u.str.len = n;
    return CKPT_OK;
}

static char *alloc_text(pk *p, size_t n, size_t factor)
{
    size_t m;
    if (ckpt__mul_overflow(n, factor, &m) || ckpt__add_overflow(m, (size_t)1, &m))
        return NULL;
    return ckpt__arena_alloc(p->ar, m);
}

/* UTF-8 as Python decodes it for BINUNICODE ('surrogatepass'). */
static int utf8_str(pk *p, const uint8_t *s, size_t n, ckpt_value **out)
{
    char *d = alloc_text(p, n, 1);
    if (!d)
        return PK_OOM(p);
    for (size_t k = 0; k < n;) {
        if (s[k] < 0x80) {
            d[k] = (char)s[k];
            k++;
            continue;
        }
        bool sur;
        size_t m = utf8_seq(s + k, n - k, &sur);
        if (!m)
            return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu is not valid UTF-8",
                                op_name(p->op), p->at);
        memcpy(d + k, sur ? "\xef\xbf\xbd" : (const char *)s + k, m);
        k += m;
    }
    return str_value(p, d, n, out);
}

/* Bytes read as latin-1 (Python 2 str), into a UTF-8 STR. */
static int latin1_str(pk *p, const uint8_t *s, size_t n, ckpt_value **out)
{
    char *d = alloc_text(p, n, 2);
    if (!d)
        return PK_OOM(p);
    size_t m = 0;
    for (size_t k = 0; k < n; k++)
        m += put_utf8(d + m, s[k]);
    return str_value(p, d, m, out);
}

static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* STRING: a quoted Python 2 repr, decoded as codecs.escape_decode does, then as latin-1. */
static int quoted_str(pk *p, const char *s, size_t n, ckpt_value **out)
{
    if (n < 2 || s[0] != s[n - 1] || (s[0] != '\'' && s[0] != '"'))
        return CKPT_CORRUPT(p->err, "pickle: 'STRING' at offset %zu is not quoted", p->at);
    s++, n -= 2;
    uint8_t *b = ckpt__arena_alloc(p->ar, n + 1);
    if (!b)
        return PK_OOM(p);
    size_t m = 0;
    for (size_t k = 0; k < n;) {
        if (s[k] != '\\') {
            b[m++] = (uint8_t)s[k++];
            continue;
        }
        if (++k == n)
            return CKPT_CORRUPT(p->err, "pickle: 'STRING' at offset %zu ends with a backslash",
                                p->at);
        char c = s[k++];
        switch (c) {
        case '\n': break;
        case '\\': b[m++] = '\\'; break;
        case '\'': b[m++] = '\''; break;
        case '"': b[m++] = '"'; break;
        case 'a': b[m++] = '\a'; break;
        case 'b': b[m++] = '\b'; break;
        case 'f': b[m++] = '\f'; break;
        case 'n': b[m++] = '\n'; break;
        case 'r': b[m++] = '\r'; break;
        case 't': b[m++] = '\t'; break;
        case 'v': b[m++] = '\v'; break;
        case 'x': {
            int hi = k < n ? hexval(s[k]) : -1, lo = k + 1 < n ? hexval(s[k + 1]) : -1;
            if (hi < 0 || lo < 0)
                return CKPT_CORRUPT(p->err, "pickle: 'STRING' at offset %zu has a bad \\x escape",
                                    p->at);
            b[m++] = (uint8_t)(hi << 4 | lo);
            k += 2;
            break;
        }
        default:
            if (c >= '0' && c <= '7') {
                unsigned v = (unsigned)(c - '0');
                for (int j = 0; j < 2 && k < n && s[k] >= '0' && s[k] <= '7'; j++)
                    v = v * 8 + (unsigned)(s[k++] - '0');
                b[m++] = (uint8_t)v;
            } else {
                b[m++] = '\\';
                b[m++] = (uint8_t)c;
            }
        }
    }
    return latin1_str(p, b, m, out);
}

/* UNICODE: 'raw-unicode-escape' -- latin-1, except \uXXXX and \UXXXXXXXX after an odd number
 * of backslashes. */
static int raw_unicode_str(pk *p, const char *s, size_t n, ckpt_value **out)
{
    char *d = alloc_text(p, n, 2);
    if (!d)
        return PK_OOM(p);
    size_t m = 0;
    for (size_t k = 0; k < n;) {
        if (s[k] != '\\') {
            m += put_utf8(d + m, (uint8_t)s[k++]);
            continue;
        }
        size_t bs = k;
        while (k < n && s[k] == '\\')
            d[m++] = s[k++];
        if (((k - bs) & 1) == 0 || k >= n || (s[k] != 'u' && s[k] != 'U'))
            continue;
        m--; /* the odd backslash introduces the escape */
        unsigned count = s[k] == 'u' ? 4 : 8;
        k++;
        uint32_t cp = 0;
        for (; count; count--, k++) {
            int h = k < n ? hexval(s[k]) : -1;
            if (h < 0)
                return CKPT_CORRUPT(p->err, "pickle: 'UNICODE' at offset %zu has a truncated "
                                            "\\uXXXX escape", p->at);
            cp = cp << 4 | (uint32_t)h;
        }
        if (cp > 0x10ffff)
            return CKPT_CORRUPT(p->err, "pickle: 'UNICODE' at offset %zu has a \\U escape "
                                        "above U+10FFFF", p->at);
        m += put_utf8(d + m, cp);
    }
    return str_value(p, d, m, out);
}

/* The bytes of a str whose characters are all U+0000..U+00FF: _codecs.encode(s, 'latin1'),
 * which is how Python 3 pickles bytes below protocol 3. */
static int str_latin1(pk *p, const ckpt_value *s, const char *cls, ckpt_value **out)
{
    const uint8_t *u = (const uint8_t *)s->u.str.data;
    size_t n = s->u.str.len, m = 0;
    char *d = alloc_text(p, n, 1);
    if (!d)
        return PK_OOM(p);
    for (size_t k = 0; k < n;) {
        if (u[k] < 0x80) {
            d[m++] = (char)u[k++];
        } else if ((u[k] == 0xc2 || u[k] == 0xc3) && k + 1 < n && (u[k + 1] & 0xc0) == 0x80) {
            d[m++] = (char)((u[k] & 3) << 6 | (u[k + 1] & 0x3f));
            k += 2;
        } else {
            return CKPT_CORRUPT(p->err, "pickle: bytes at offset %zu are encoded as latin-1 but "
                                        "hold a character above U+00FF", p->at);
        }
    }
    int rc = new_value(p, CKPT_T_BYTES, out);
    if (rc)
        return rc;
    (*out)->u.str.data = d;
    (*out)->u.str.len = m;
    (*out)->class_name = cls;
    return CKPT_OK;
}

/* BINBYTES and the like: a little-endian length of `width` bytes, then the bytes. */
static int push_bytes(pk *p, unsigned width, const char *cls)
{
    const uint8_t *s = NULL;
    uint64_t n = 0;
    int rc = read_uint(p, width, &n);
    if (rc || (rc = read_bytes(p, n, &s)))
        return rc;
    ckpt_value *v = ckpt__value_str(p->ar, CKPT_T_BYTES, (const char *)s, (size_t)n);
    if (!v)
        return PK_OOM(p);
    v->class_name = cls;
    return push(p, v);
}

/* ---- globals -------------------------------------------------------------------------------- */

/* Python 2 spellings that Python 3's Unpickler maps (a subset of _compat_pickle). */
static const char *py3_module(const char *m)
{
    if (strcmp(m, "__builtin__") == 0)
        return "builtins";
    if (strcmp(m, "copy_reg") == 0)
        return "copyreg";
    return m;
}

/* Record and push module.name; module and name are NUL-terminated arena strings. */
static int push_global(pk *p, const char *module, const char *name)
{
    module = py3_module(module);
    int rc;
    if (p->ctx->globals &&
        (rc = ckpt__globals_add(p->ar, p->ctx->globals, module, name,
                                p->ctx->where ? p->ctx->where : "pickle", p->at, p->err)))
        return rc;
    ckpt_value *g;
    if ((rc = new_value(p, CKPT_T_GLOBAL, &g)))
        return rc;
    g->u.global.module = module;
    g->u.global.name = name;
    return push(p, g);
}

/* A GLOBAL/INST line: UTF-8 (Python decodes it strictly) and without NUL, so that the C
 * string is the whole name and the classification cannot be fooled by a truncation. */
static int global_part(pk *p, const char **out)
{
    const char *s = NULL;
    size_t n = 0;
    int rc = read_line(p, &s, &n);
    if (rc)
        return rc;
    for (size_t k = 0; k < n;) {
        bool sur;
        size_t m = s[k] ? utf8_seq((const uint8_t *)s + k, n - k, &sur) : 0;
        if (!m || sur)
            return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu names a module or class that "
                                        "is not valid UTF-8", op_name(p->op), p->at);
        k += m;
    }
    *out = ckpt__arena_strndup(p->ar, s, n);
    return *out ? CKPT_OK : PK_OOM(p);
}

/* ---- building containers -------------------------------------------------------------------- */

static int make_seq(pk *p, ckpt_type t, ckpt_value *const *items, size_t n, ckpt_value **out)
{
    ckpt_value *v;
    int rc = new_value(p, t, &v);
    if (rc)
        return rc;
    if (n) {
        ckpt_value **a = ckpt__arena_alloc(p->ar, n * sizeof *a);
        if (!a)
            return PK_OOM(p);
        memcpy(a, items, n * sizeof *a);
        v->u.seq.items = a;
        v->u.seq.len = v->u.seq.cap = n;
        for (size_t k = 0; k < n; k++)
            if ((rc = nest(p, v, items[k])))
                return rc;
    }
    *out = v;
    return CKPT_OK;
}

static int seq_add(pk *p, ckpt_value *seq, ckpt_value *item)
{
    int rc = ckpt__seq_push(p->ar, seq, item, p->err);
    return rc ? rc : nest(p, seq, item);
}

static int dict_add(pk *p, ckpt_value *d, ckpt_value *k, ckpt_value *v)
{
    int rc = ckpt__dict_set(p->ar, d, k, v, p->err);
    if (!rc)
        rc = nest(p, d, k);
    return rc ? rc : nest(p, d, v);
}

static const char *type_name(const ckpt_value *v)
{
    return ckpt_type_name(v->type);
}

/* SETITEM(S): into a dict, or into an object's items (defaultdict subclasses and the like). */
static int set_items(pk *p, ckpt_value *target, ckpt_value **kv, size_t n)
{
    int rc;
    ckpt_value *d = target;
    if (target->type == CKPT_T_OBJECT) {
        if (!target->u.obj.items && (rc = new_value(p, CKPT_T_DICT, &target->u.obj.items)))
            return rc;
        d = target->u.obj.items;
    } else if (target->type != CKPT_T_DICT) {
        return CKPT_CORRUPT(p->err, "pickle: '%s' on a %s at offset %zu", op_name(p->op),
                            type_name(target), p->at);
    }
    for (size_t k = 0; k + 1 < n; k += 2)
        if ((rc = dict_add(p, d, kv[k], kv[k + 1])))
            return rc;
    return d == target ? CKPT_OK : nest(p, target, d);
}

/* APPEND(S) and ADDITEMS: into a list (a set), or into an object's list (deque and such). */
static int add_items(pk *p, ckpt_value *target, ckpt_value **items, size_t n, ckpt_type want)
{
    int rc;
    ckpt_value *l = target;
    if (target->type == CKPT_T_OBJECT) {
        if (!target->u.obj.list && (rc = new_value(p, CKPT_T_LIST, &target->u.obj.list)))
            return rc;
        l = target->u.obj.list;
    } else if (target->type != want || (target->flags & CKPT_VF_FROZEN)) {
        return CKPT_CORRUPT(p->err, "pickle: '%s' on a %s%s at offset %zu", op_name(p->op),
                            target->flags & CKPT_VF_FROZEN ? "frozen" : "", type_name(target),
                            p->at);
    }
    for (size_t k = 0; k < n; k++)
        if ((rc = seq_add(p, l, items[k])))
            return rc;
    return l == target ? CKPT_OK : nest(p, target, l);
}

/* BUILD on a dict: its instance attributes (an OrderedDict's _metadata). */
static int dict_attrs(pk *p, ckpt_value *d, ckpt_value *state)
{
    ckpt_value *parts[2] = {state, NULL};
    if (state->type == CKPT_T_TUPLE && state->u.seq.len == 2) { /* (dict, slotstate) */
        parts[0] = state->u.seq.items[0];
        parts[1] = state->u.seq.items[1];
    }
    int rc;
    for (int k = 0; k < 2; k++) {
        ckpt_value *s = parts[k];
        if (!s || s->type == CKPT_T_NONE)
            continue;
        if (s->type != CKPT_T_DICT)
            return CKPT_CORRUPT(p->err, "pickle: 'BUILD' at offset %zu gives a dict a %s as its "
                                        "state", p->at, type_name(s));
        ckpt_value *attrs = d->u.dict.attrs;
        if (!attrs) {
            if ((rc = new_value(p, CKPT_T_DICT, &attrs)))
                return rc;
            d->u.dict.attrs = attrs;
        }
        for (size_t j = 0; j < s->u.dict.len; j++)
            if ((rc = dict_add(p, attrs, s->u.dict.keys[j], s->u.dict.vals[j])))
                return rc;
        if ((rc = nest(p, d, attrs)))
            return rc;
    }
    return CKPT_OK;
}

/* ---- calls: what a known callable would have built ------------------------------------------ */

/* Every handler below returns CKPT_OK with *out NULL when it does not understand its
 * arguments; the call then becomes a CKPT_T_OBJECT. Wrong arguments to the tensor functions
 * are errors instead, as torch.load would fail on them. */

static bool is_seq(const ckpt_value *v)
{
    return v->type == CKPT_T_TUPLE || v->type == CKPT_T_LIST;
}

static bool is_pair(const ckpt_value *v)
{
    return is_seq(v) && v->u.seq.len == 2;
}

static bool same(const char *a, const char *b)
{
    return strcmp(a, b) == 0;
}

/* dict(), OrderedDict(), defaultdict(), Counter() from a mapping or a list of pairs. */
static int make_dict(pk *p, const char *cls, ckpt_value **a, size_t na, ckpt_value **out)
{
    const ckpt_value *src = na == 1 ? a[0] : NULL;
    if (na > 1 || (src && src->type != CKPT_T_DICT && !is_seq(src)))
        return CKPT_OK;
    if (src && is_seq(src))
        for (size_t k = 0; k < src->u.seq.len; k++)
            if (!is_pair(src->u.seq.items[k]))
                return CKPT_OK;
    ckpt_value *d;
    int rc = new_value(p, CKPT_T_DICT, &d);
    if (rc)
        return rc;
    d->class_name = cls;
    if (src && src->type == CKPT_T_DICT) {
        for (size_t k = 0; k < src->u.dict.len; k++)
            if ((rc = dict_add(p, d, src->u.dict.keys[k], src->u.dict.vals[k])))
                return rc;
    } else if (src) {
        for (size_t k = 0; k < src->u.seq.len; k++) {
            ckpt_value *pair = src->u.seq.items[k];
            if ((rc = dict_add(p, d, pair->u.seq.items[0], pair->u.seq.items[1])))
                return rc;
        }
    }
    *out = d;
    return CKPT_OK;
}

/* set(iterable), frozenset(iterable). Items are kept as pickled (no deduplication). */
static int make_set(pk *p, bool frozen, ckpt_value **a, size_t na, ckpt_value **out)
{
    const ckpt_value *src = na == 1 ? a[0] : NULL;
    if (na > 1 || (src && !is_seq(src) && src->type != CKPT_T_SET))
        return CKPT_OK;
    int rc = make_seq(p, CKPT_T_SET, src ? src->u.seq.items : NULL, src ? src->u.seq.len : 0, out);
    if (!rc && frozen)
        (*out)->flags |= CKPT_VF_FROZEN;
    return rc;
}

static bool as_double(const ckpt_value *v, double *out)
{
    switch (v->type) {
    case CKPT_T_BOOL: *out = v->u.b; return true;
    case CKPT_T_INT: *out = (double)v->u.i; return true;
    case CKPT_T_FLOAT: *out = v->u.f; return true;
    default: return false;
    }
}

static int make_complex(pk *p, ckpt_value **a, size_t na, ckpt_value **out)
{
    double re = 0, im = 0;
    if (na > 2 || (na >= 1 && !as_double(a[0], &re)) || (na == 2 && !as_double(a[1], &im)))
        return CKPT_OK;
    int rc = new_value(p, CKPT_T_COMPLEX, out);
    if (!rc) {
        (*out)->u.c.re = re;
        (*out)->u.c.im = im;
    }
    return rc;
}

static bool encoding_is(const ckpt_value *enc, const char *const *names)
{
    for (; *names; names++) {
        size_t n = strlen(*names), k;
        if (enc->u.str.len != n)
            continue;
        for (k = 0; k < n && (enc->u.str.data[k] | 0x20) == (*names)[k]; k++)
            ;
        if (k == n)
            return true;
    }
    return false;
}

/* _codecs.encode(str[, encoding]) for the encodings bytes are pickled with. */
static int codecs_encode(pk *p, const char *cls, ckpt_value **a, size_t na, ckpt_value **out)
{
    static const char *const latin1[] = {"latin1", "latin-1", "latin_1", "iso-8859-1",
                                         "iso8859-1", "l1", NULL};
    static const char *const utf8[] = {"utf-8", "utf8", "utf_8", NULL};
    if (na < 1 || na > 2 || a[0]->type != CKPT_T_STR || (na == 2 && a[1]->type != CKPT_T_STR))
        return CKPT_OK;
    if (na == 2 && encoding_is(a[1], latin1))
        return str_latin1(p, a[0], cls, out);
    if (na == 1 || encoding_is(a[1], utf8)) {
        *out = ckpt__value_str(p->ar, CKPT_T_BYTES, a[0]->u.str.data, a[0]->u.str.len);
        if (!*out)
            return PK_OOM(p);
        (*out)->class_name = cls;
    }
    return CKPT_OK;
}

/* bytes(), bytes(b), bytes([ints]), bytes(str, encoding); bytearray likewise. */
static int make_bytes(pk *p, const char *cls, ckpt_value **a, size_t na, ckpt_value **out)
{
    if (na == 2)
        return codecs_encode(p, cls, a, na, out);
    if (na > 1)
        return CKPT_OK;
    const ckpt_value *src = na ? a[0] : NULL;
    size_t n = 0;
    if (src && src->type == CKPT_T_BYTES) {
        n = src->u.str.len;
    } else if (src && is_seq(src)) {
        n = src->u.seq.len;
        for (size_t k = 0; k < n; k++) {
            const ckpt_value *b = src->u.seq.items[k];
            if (b->type != CKPT_T_INT || b->u.i < 0 || b->u.i > 255)
                return CKPT_OK;
        }
    } else if (src) {
        return CKPT_OK;
    }
    char *d = alloc_text(p, n, 1);
    if (!d)
        return PK_OOM(p);
    if (src && src->type == CKPT_T_BYTES)
        memcpy(d, src->u.str.data, n);
    else
        for (size_t k = 0; k < n; k++)
            d[k] = (char)src->u.seq.items[k]->u.i;
    int rc = new_value(p, CKPT_T_BYTES, out);
    if (!rc) {
        (*out)->u.str.data = d;
        (*out)->u.str.len = n;
        (*out)->class_name = cls;
    }
    return rc;
}

/* torch.Size((dims...)) -> a tuple of ints named torch.Size. */
static int torch_size(pk *p, ckpt_value **a, size_t na, ckpt_value **out)
{
    const ckpt_value *src = na == 1 ? a[0] : NULL;
    if (na > 1 || (src && !is_seq(src)))
        return CKPT_OK;
    for (size_t k = 0; src && k < src->u.seq.len; k++)
        if (src->u.seq.items[k]->type != CKPT_T_INT)
            return CKPT_OK;
    int rc = make_seq(p, CKPT_T_TUPLE, src ? src->u.seq.items : NULL, src ? src->u.seq.len : 0,
                      out);
    if (!rc)
        (*out)->class_name = "torch.Size";
    return rc;
}

static int tensor_int(pk *p, const char *fn, const ckpt_value *v, const char *what,
                      int64_t *out)
{
    if (v->type != CKPT_T_INT || v->u.i < 0)
        return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has a %s that is not an int >= 0",
                            fn, p->at, what);
    *out = v->u.i;
    return CKPT_OK;
}

/* _rebuild_tensor(storage, offset, size, stride)                               version 1
 * _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])   2
 * _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata]) 3
 * A view of the storage, checked to lie inside it (docs/FORMAT.md §4.1, §5). */
static int rebuild_tensor(pk *p, const char *fn, ckpt_value **a, size_t na, int version,
                          ckpt_value **out)
{
    size_t lo = version == 1 ? 4 : version == 2 ? 6 : 7, hi = version == 1 ? 4 : lo + 1;
    if (na < lo || na > hi)
        return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has %zu arguments, not %zu%s",
                            fn, p->at, na, lo, hi > lo ? " or one more" : "");
    if (a[0]->type != CKPT_T_STORAGE)
        return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has a %s where the storage goes",
                            fn, p->at, type_name(a[0]));
    ckpt_storage *st = a[0]->u.storage;
    ckpt_dtype dt = st->dtype;
    if (version == 3) {
        const ckpt_value *g = a[6];
        if (g->type != CKPT_T_GLOBAL || !same(g->u.global.module, "torch"))
            return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has a %s where the dtype goes",
                                fn, p->at, type_name(g));
        int d = ckpt_dtype_from_name(g->u.global.name);
        if (d < 0 || d == CKPT_DT_UNTYPED)
            return CKPT_FAIL(p->err, CKPT_EUNSUPPORTED,
                             "pickle: tensor dtype 'torch.%s' at offset %zu is not supported",
                             g->u.global.name, p->at);
        dt = (ckpt_dtype)d;
    } else if (dt == CKPT_DT_UNTYPED) {
        return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has an untyped storage, which "
                                    "only '_rebuild_tensor_v3' takes", fn, p->at);
    }
    bool requires_grad = false;
    if (version > 1) {
        if (a[4]->type != CKPT_T_BOOL)
            return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has a %s for requires_grad",
                                fn, p->at, type_name(a[4]));
        requires_grad = a[4]->u.b;
    }
    const ckpt_value *size = a[2], *stride = a[3];
    if (!is_seq(size) || !is_seq(stride))
        return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has a size or stride that is not "
                                    "a tuple", fn, p->at);
    size_t nd = size->u.seq.len;
    if (nd != stride->u.seq.len)
        return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has %zu sizes but %zu strides", fn,
                            p->at, nd, stride->u.seq.len);
    if (nd > CKPT_MAX_DIMS)
        return CKPT_FAIL(p->err, CKPT_ELIMIT,
                         "pickle: tensor at offset %zu has %zu dimensions, more than %d", p->at,
                         nd, CKPT_MAX_DIMS);
    int64_t offset = 0;
    int rc = tensor_int(p, fn, a[1], "storage offset", &offset);
    if (rc)
        return rc;
    int64_t *dims = ckpt__arena_alloc(p->ar, 2 * (nd ? nd : 1) * sizeof *dims);
    ckpt_tensor *t = dims ? ckpt__arena_alloc(p->ar, sizeof *t) : NULL;
    if (!t)
        return PK_OOM(p);
    int64_t numel = 1;
    for (size_t k = 0; k < nd; k++) {
        if ((rc = tensor_int(p, fn, size->u.seq.items[k], "size", &dims[k])) ||
            (rc = tensor_int(p, fn, stride->u.seq.items[k], "stride", &dims[nd + k])))
            return rc;
        if (ckpt__mul_overflow(numel, dims[k], &numel))
            return CKPT_CORRUPT(p->err, "pickle: tensor at offset %zu has more than 2^63 elements",
                                p->at);
    }
    /* Elements span [offset, offset + sum (size_i - 1) * stride_i]; all of it in the storage. */
    size_t elsize = ckpt_dtype_size(dt);
    if (numel > 0) {
        uint64_t last = (uint64_t)offset, step, nbytes;
        bool over = false;
        for (size_t k = 0; k < nd && !over; k++)
            over = ckpt__mul_overflow((uint64_t)(dims[k] - 1), (uint64_t)dims[nd + k], &step) ||
                   ckpt__add_overflow(last, step, &last);
        if (over || ckpt__add_overflow(last, (uint64_t)1, &last) ||
            ckpt__mul_overflow(last, (uint64_t)elsize, &nbytes) || nbytes > st->nbytes)
            return CKPT_CORRUPT(p->err, "pickle: tensor at offset %zu reaches past the end of "
                                        "storage '%s' (%llu bytes)", p->at,
                                st->key ? st->key : "?", (unsigned long long)st->nbytes);
    }
    t->dtype = dt;
    t->ndim = (int)nd;
    t->shape = dims;
    t->stride = dims + nd;
    t->offset = offset;
    t->numel = numel;
    t->storage = st;
    t->requires_grad = requires_grad;
    if ((rc = new_value(p, CKPT_T_TENSOR, out)))
        return rc;
    (*out)->u.tensor = t;
    return CKPT_OK;
}

/* A new tensor value with its own ckpt_tensor, so that a shared inner one stays as it was. */
static int tensor_copy(pk *p, const ckpt_value *src, ckpt_value **out)
{
    ckpt_tensor *t = ckpt__arena_alloc(p->ar, sizeof *t);
    if (!t)
        return PK_OOM(p);
    *t = *src->u.tensor;
    int rc = new_value(p, CKPT_T_TENSOR, out);
    if (!rc) {
        (*out)->u.tensor = t;
        (*out)->class_name = src->class_name;
        (*out)->flags = src->flags;
    }
    return rc;
}

/* _rebuild_parameter(data, requires_grad, hooks) and _with_state(..., state). */
static int rebuild_parameter(pk *p, const char *fn, ckpt_value **a, size_t na, size_t want,
                             ckpt_value **out)
{
    if (na != want)
        return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has %zu arguments, not %zu", fn,
                            p->at, na, want);
    if (a[0]->type != CKPT_T_TENSOR)
        return CKPT_OK; /* a tensor subclass we did not understand */
    if (a[1]->type != CKPT_T_BOOL)
        return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has a %s for requires_grad", fn,
                            p->at, type_name(a[1]));
    int rc = tensor_copy(p, a[0], out);
    if (!rc) {
        (*out)->u.tensor->is_parameter = true;
        (*out)->u.tensor->requires_grad = a[1]->u.b;
    }
    return rc;
}

static int call(pk *p, ckpt_value *fn, ckpt_value *args, bool newobj, int nesting,
                ckpt_value **out);

/* torch._tensor._rebuild_from_type_v2(func, cls, args, state): func(*args) as cls. */
static int rebuild_from_type(pk *p, ckpt_value **a, size_t na, int nesting, ckpt_value **out)
{
    if (na != 4 || a[2]->type != CKPT_T_TUPLE)
        return CKPT_OK;
    if (nesting >= PK_MAX_REBUILD_NESTING)
        return CKPT_FAIL(p->err, CKPT_ELIMIT,
                         "pickle: '_rebuild_from_type_v2' at offset %zu is nested more than %d "
                         "deep", p->at, PK_MAX_REBUILD_NESTING);
    ckpt_value *inner;
    int rc = call(p, a[0], a[2], false, nesting + 1, &inner);
    if (rc || inner->type != CKPT_T_TENSOR)
        return rc;
    const ckpt_value *cls = a[1];
    if (cls->type == CKPT_T_GLOBAL && !ckpt__global_is(cls, "torch", "Tensor")) {
        if ((rc = tensor_copy(p, inner, &inner)))
            return rc;
        if (ckpt__global_is(cls, "torch.nn.parameter", "Parameter"))
            inner->u.tensor->is_parameter = true;
        else if (!(inner->class_name = ckpt__arena_printf(p->ar, "%s.%s", cls->u.global.module,
                                                          cls->u.global.name)))
            return PK_OOM(p);
    }
    *out = inner; /* the state holds Python attributes, which have no place in a tensor */
    return CKPT_OK;
}

/* numpy's dtype codes (dtype.str without the byte order) and what ckpt makes of them. */
static const struct {
    const char *code;
    ckpt_type type;       /* of a scalar */
    unsigned size;
    bool is_signed;
    const char *cls;
    ckpt_dtype dtype;     /* of an array */
} numpy_types[] = {
    {"f8", CKPT_T_FLOAT, 8, true, "numpy.float64", CKPT_DT_FLOAT64},
    {"f4", CKPT_T_FLOAT, 4, true, "numpy.float32", CKPT_DT_FLOAT32},
    {"f2", CKPT_T_FLOAT, 2, true, "numpy.float16", CKPT_DT_FLOAT16},
    {"i8", CKPT_T_INT, 8, true, "numpy.int64", CKPT_DT_INT64},
    {"i4", CKPT_T_INT, 4, true, "numpy.int32", CKPT_DT_INT32},
    {"i2", CKPT_T_INT, 2, true, "numpy.int16", CKPT_DT_INT16},
    {"i1", CKPT_T_INT, 1, true, "numpy.int8", CKPT_DT_INT8},
    {"u8", CKPT_T_INT, 8, false, "numpy.uint64", CKPT_DT_UINT64},
    {"u4", CKPT_T_INT, 4, false, "numpy.uint32", CKPT_DT_UINT32},
    {"u2", CKPT_T_INT, 2, false, "numpy.uint16", CKPT_DT_UINT16},
    {"u1", CKPT_T_INT, 1, false, "numpy.uint8", CKPT_DT_UINT8},
    {"b1", CKPT_T_BOOL, 1, false, "numpy.bool_", CKPT_DT_BOOL},
    {"c8", CKPT_T_COMPLEX, 8, true, "numpy.complex64", CKPT_DT_COMPLEX64},
    {"c16", CKPT_T_COMPLEX, 16, true, "numpy.complex128", CKPT_DT_COMPLEX128},
};

/* The row of numpy_types a pickled numpy.dtype('f8', False, True) with BUILD state
 * (3, '<', ...) names, and its byte order ('<', '>', '=' or '|'); false for anything else
 * ('=' is the writer's native order: little-endian everywhere torch runs). */
static bool numpy_dtype(const ckpt_value *dt, size_t *row, char *order)
{
    if (dt->type != CKPT_T_OBJECT || !ckpt__global_is(dt->u.obj.callable, "numpy", "dtype") ||
        !dt->u.obj.args || dt->u.obj.args->u.seq.len < 1 || !dt->u.obj.state ||
        dt->u.obj.state->type != CKPT_T_TUPLE || dt->u.obj.state->u.seq.len < 2)
        return false;
    const ckpt_value *code = dt->u.obj.args->u.seq.items[0];
    const ckpt_value *bo = dt->u.obj.state->u.seq.items[1];
    if ((code->type != CKPT_T_STR && code->type != CKPT_T_BYTES) || bo->type != CKPT_T_STR ||
        bo->u.str.len != 1)
        return false;
    size_t ti = 0, nt = sizeof numpy_types / sizeof numpy_types[0];
    while (ti < nt && !(strlen(numpy_types[ti].code) == code->u.str.len &&
                        memcmp(numpy_types[ti].code, code->u.str.data, code->u.str.len) == 0))
        ti++;
    char c = bo->u.str.data[0];
    if (ti == nt || !(c == '<' || c == '=' || c == '>' || (c == '|' && numpy_types[ti].size == 1)))
        return false;
    *row = ti;
    *order = c;
    return true;
}

/* numpy.core.multiarray.scalar(dtype, bytes): the value itself (docs/FORMAT.md §4.3). The
 * dtype is the OBJECT numpy.dtype('f8', False, True) with BUILD state (3, '<', ...). */
static int numpy_scalar(pk *p, ckpt_value **a, size_t na, ckpt_value **out)
{
    if (na != 2)
        return CKPT_OK;
    const ckpt_value *raw = a[1];
    size_t ti;
    char bo;
    if (!numpy_dtype(a[0], &ti, &bo))
        return CKPT_OK;
    if (raw->type == CKPT_T_STR) { /* protocol 0/1 of Python 2: a latin-1 str */
        ckpt_value *b;
        int rc = str_latin1(p, raw, NULL, &b);
        if (rc)
            return rc;
        raw = b;
    }
    if (raw->type != CKPT_T_BYTES)
        return CKPT_OK;
    unsigned size = numpy_types[ti].size;
    unsigned part = numpy_types[ti].type == CKPT_T_COMPLEX ? size / 2 : size;
    if (raw->u.str.len != size)
        return CKPT_CORRUPT(p->err, "pickle: numpy scalar at offset %zu has %zu bytes for dtype "
                                    "'%s'", p->at, raw->u.str.len, numpy_types[ti].code);
    uint64_t u[2] = {0, 0};
    const uint8_t *b = (const uint8_t *)raw->u.str.data;
    for (unsigned h = 0; h < size / part; h++)
        for (unsigned k = 0; k < part; k++)
            u[h] |= (uint64_t)b[h * part + (bo == '>' ? part - 1 - k : k)] << (8 * k);
    ckpt_value *v;
    int rc = CKPT_OK;
    double d[2];
    for (unsigned h = 0; h < 2; h++) {
        if (part == 8) {
            memcpy(&d[h], &u[h], 8);
        } else if (part == 4) {
            uint32_t w = (uint32_t)u[h];
            float f;
            memcpy(&f, &w, 4);
            d[h] = f;
        } else {
            d[h] = ckpt__f32_from_bits(ckpt__f16_to_f32((uint16_t)u[h]));
        }
    }
    switch (numpy_types[ti].type) {
    case CKPT_T_FLOAT:
        if (!(rc = new_value(p, CKPT_T_FLOAT, &v)))
            v->u.f = d[0];
        break;
    case CKPT_T_COMPLEX:
        if (!(rc = new_value(p, CKPT_T_COMPLEX, &v))) {
            v->u.c.re = d[0];
            v->u.c.im = d[1];
        }
        break;
    case CKPT_T_BOOL:
        if (!(rc = new_value(p, CKPT_T_BOOL, &v)))
            v->u.b = u[0] != 0;
        break;
    default: {
        uint8_t le[9] = {0};
        for (unsigned k = 0; k < 8; k++)
            le[k] = (uint8_t)(u[0] >> (8 * k));
        if (numpy_types[ti].is_signed && (u[0] >> (8 * size - 1) & 1))
            memset(le + size, 0xff, 9 - size);
        rc = int_from_le(p, le, 9, &v);
    }
    }
    if (rc)
        return rc;
    v->flags |= CKPT_VF_NUMPY;
    v->class_name = numpy_types[ti].cls;
    *out = v;
    return CKPT_OK;
}

/* A numpy array as a tensor: numel elements of numpy_types[ti] in byte order bo, from raw
 * (bytes, or a Python 2 str read as latin-1), copied little-endian into an aligned block of the
 * arena behind a storage of its own (no file: its bytes are the pickle's). shape is the tuple
 * of sizes; fortran: column-major, as numpy's is_fortran flag says. v becomes the tensor: BUILD
 * turns the memoized _reconstruct object itself into it, so every reference sees the array. */
static int numpy_tensor(pk *p, size_t ti, char bo, const ckpt_value *shape, bool fortran,
                        const ckpt_value *raw, ckpt_value *v)
{
    if (!is_seq(shape))
        return CKPT_CORRUPT(p->err, "pickle: numpy array at offset %zu has a %s for its shape",
                            p->at, type_name(shape));
    size_t nd = shape->u.seq.len;
    if (nd > CKPT_MAX_DIMS)
        return CKPT_FAIL(p->err, CKPT_ELIMIT,
                         "pickle: numpy array at offset %zu has %zu dimensions, more than %d",
                         p->at, nd, CKPT_MAX_DIMS);
    int64_t *dims = ckpt__arena_alloc(p->ar, 2 * (nd ? nd : 1) * sizeof *dims);
    ckpt_tensor *t = dims ? ckpt__arena_alloc(p->ar, sizeof *t) : NULL;
    ckpt_storage *st = t ? ckpt__arena_alloc(p->ar, sizeof *st) : NULL;
    if (!st)
        return PK_OOM(p);
    int64_t numel = 1;
    int rc;
    for (size_t k = 0; k < nd; k++) {
        if ((rc = tensor_int(p, "numpy.ndarray", shape->u.seq.items[k], "size", &dims[k])))
            return rc;
        if (ckpt__mul_overflow(numel, dims[k], &numel))
            return CKPT_CORRUPT(p->err, "pickle: numpy array at offset %zu has more than 2^63 "
                                        "elements", p->at);
    }
    /* strides in elements: the last dimension varies fastest in C order, the first in Fortran */
    int64_t step = 1;
    for (size_t j = 0; j < nd; j++) {
        size_t k = fortran ? j : nd - 1 - j;
        dims[nd + k] = step;
        step *= dims[k] ? dims[k] : 1; /* <= numel: no overflow */
    }
    ckpt_value *b = NULL;
    if (raw->type == CKPT_T_STR) { /* a Python 2 str, or protocol 0/1's latin-1 text */
        if ((rc = str_latin1(p, raw, NULL, &b)))
            return rc;
        raw = b;
    }
    if (raw->type != CKPT_T_BYTES)
        return CKPT_CORRUPT(p->err, "pickle: numpy array at offset %zu has a %s for its data",
                            p->at, type_name(raw));
    unsigned size = numpy_types[ti].size;
    unsigned part = numpy_types[ti].type == CKPT_T_COMPLEX ? size / 2 : size;
    uint64_t nbytes;
    if (ckpt__mul_overflow((uint64_t)numel, (uint64_t)size, &nbytes) ||
        nbytes != raw->u.str.len)
        return CKPT_CORRUPT(p->err, "pickle: numpy array at offset %zu has %zu bytes of data "
                                    "for %lld elements of dtype '%s'", p->at, raw->u.str.len,
                            (long long)numel, numpy_types[ti].code);
    uint8_t *data = ckpt__arena_alloc(p->ar, (size_t)nbytes);
    if (!data)
        return PK_OOM(p);
    const uint8_t *src = (const uint8_t *)raw->u.str.data;
    if (bo == '>' && part > 1)
        for (size_t e = 0; e < (size_t)nbytes; e += part)
            for (unsigned k = 0; k < part; k++)
                data[e + k] = src[e + part - 1 - k];
    else if (nbytes)
        memcpy(data, src, (size_t)nbytes);
    memset(st, 0, sizeof *st);
    st->key = "numpy";
    st->dtype = numpy_types[ti].dtype;
    st->nbytes = nbytes;
    st->data = data;
    memset(t, 0, sizeof *t);
    t->dtype = numpy_types[ti].dtype;
    t->ndim = (int)nd;
    t->shape = dims;
    t->stride = dims + nd;
    t->numel = numel;
    t->storage = st;
    v->type = CKPT_T_TENSOR;
    v->u.tensor = t;
    v->class_name = "numpy.ndarray";
    v->flags |= CKPT_VF_NUMPY;
    return CKPT_OK;
}

/* BUILD on numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b'): the state is
 * (1, shape, dtype, is_fortran, data), ndarray.__reduce__'s. Returns CKPT_OK with *done false
 * for any other object or state, which stays an object. */
static int numpy_build(pk *p, ckpt_value *inst, const ckpt_value *state, bool *done)
{
    *done = false;
    const ckpt_value *fn = inst->u.obj.callable, *args = inst->u.obj.args;
    if (!(ckpt__global_is(fn, "numpy.core.multiarray", "_reconstruct") ||
          ckpt__global_is(fn, "numpy._core.multiarray", "_reconstruct")) ||
        !args || !is_seq(args) || args->u.seq.len < 1 ||
        !ckpt__global_is(args->u.seq.items[0], "numpy", "ndarray") ||
        state->type != CKPT_T_TUPLE || state->u.seq.len != 5)
        return CKPT_OK;
    ckpt_value *const *s = state->u.seq.items;
    size_t ti;
    char bo;
    if (s[0]->type != CKPT_T_INT || s[0]->u.i != 1 || !numpy_dtype(s[2], &ti, &bo) ||
        (s[3]->type != CKPT_T_BOOL && s[3]->type != CKPT_T_INT))
        return CKPT_OK;
    bool fortran = s[3]->type == CKPT_T_BOOL ? s[3]->u.b : s[3]->u.i != 0;
    *done = true;
    return numpy_tensor(p, ti, bo, s[1], fortran, s[4], inst);
}

/* numpy.core.numeric._frombuffer(buffer, dtype, shape, order): protocol 5's in-band array. */
static int numpy_frombuffer(pk *p, ckpt_value **a, size_t na, ckpt_value **out)
{
    size_t ti;
    char bo;
    if (na != 4 || !numpy_dtype(a[1], &ti, &bo) || a[3]->type != CKPT_T_STR ||
        a[3]->u.str.len != 1 || (a[3]->u.str.data[0] != 'C' && a[3]->u.str.data[0] != 'F'))
        return CKPT_OK;
    int rc = new_value(p, CKPT_T_NONE, out);
    if (!rc)
        rc = numpy_tensor(p, ti, bo, a[2], a[3]->u.str.data[0] == 'F', a[0], *out);
    return rc;
}

/* The containers whose __new__ makes an empty one that SETITEMS/APPENDS/BUILD then fill. */
static const char *dict_class(const char *m, const char *n, bool *is_dict)
{
    *is_dict = true;
    if (same(m, "builtins") && same(n, "dict"))
        return NULL;
    if (same(m, "collections")) {
        if (same(n, "OrderedDict"))
            return "collections.OrderedDict";
        if (same(n, "defaultdict"))
            return "collections.defaultdict";
        if (same(n, "Counter"))
            return "collections.Counter";
    }
    *is_dict = false;
    return NULL;
}

static int call_global(pk *p, const ckpt_value *g, ckpt_value *args, bool newobj, int nesting,
                       ckpt_value **out)
{
    static ckpt_value *no_args[1];
    const char *m = g->u.global.module, *n = g->u.global.name;
    ckpt_value **a = args->u.seq.items ? args->u.seq.items : no_args; /* () has no array */
    size_t na = args->u.seq.len;
    bool is_dict;
    const char *dcls = dict_class(m, n, &is_dict);
    if (newobj) { /* cls.__new__(cls, *args) */
        if (is_dict)
            return make_dict(p, dcls, NULL, 0, out);
        if (same(m, "builtins") && (same(n, "list") || same(n, "set")))
            return new_value(p, n[0] == 'l' ? CKPT_T_LIST : CKPT_T_SET, out);
        return CKPT_OK;
    }
    if (is_dict) {
        if (same(n, "defaultdict")) /* defaultdict(factory[, mapping]): the factory is dropped */
            return make_dict(p, dcls, a + (na > 0), na - (na > 0), out);
        if (same(n, "Counter") && na == 1 && a[0]->type != CKPT_T_DICT)
            return CKPT_OK; /* Counter(iterable) counts; it is never pickled so */
        return make_dict(p, dcls, a, na, out);
    }
    if (same(m, "torch._utils")) {
        if (same(n, "_rebuild_tensor_v2"))
            return rebuild_tensor(p, n, a, na, 2, out);
        if (same(n, "_rebuild_tensor"))
            return rebuild_tensor(p, n, a, na, 1, out);
        if (same(n, "_rebuild_tensor_v3"))
            return rebuild_tensor(p, n, a, na, 3, out);
        if (same(n, "_rebuild_parameter"))
            return rebuild_parameter(p, n, a, na, 3, out);
        if (same(n, "_rebuild_parameter_with_state"))
            return rebuild_parameter(p, n, a, na, 4, out);
    } else if (same(m, "torch._tensor")) {
        if (same(n, "_rebuild_from_type_v2"))
            return rebuild_from_type(p, a, na, nesting, out);
    } else if (same(m, "torch")) {
        if (same(n, "Size"))
            return torch_size(p, a, na, out);
    } else if (same(m, "builtins")) {
        if (same(n, "set") || same(n, "frozenset"))
            return make_set(p, n[0] == 'f', a, na, out);
        if (same(n, "complex"))
            return make_complex(p, a, na, out);
        if (same(n, "bytes"))
            return make_bytes(p, NULL, a, na, out);
        if (same(n, "bytearray"))
            return make_bytes(p, "builtins.bytearray", a, na, out);
    } else if (same(m, "_codecs") || same(m, "codecs")) {
        if (same(n, "encode"))
            return codecs_encode(p, NULL, a, na, out);
    } else if (same(m, "numpy.core.multiarray") || same(m, "numpy._core.multiarray")) {
        if (same(n, "scalar"))
            return numpy_scalar(p, a, na, out);
    } else if (same(m, "numpy.core.numeric") || same(m, "numpy._core.numeric")) {
        if (same(n, "_frombuffer"))
            return numpy_frombuffer(p, a, na, out);
    }
    return CKPT_OK;
}

/* What fn(*args) (or fn.__new__(fn, *args)) would have built, or an OBJECT recording it. */
static int call(pk *p, ckpt_value *fn, ckpt_value *args, bool newobj, int nesting,
                ckpt_value **out)
{
    *out = NULL;
    int rc;
    if (fn->type == CKPT_T_GLOBAL && (rc = call_global(p, fn, args, newobj, nesting, out)))
        return rc;
    if (*out)
        return CKPT_OK;
    ckpt_value *o;
    if ((rc = new_value(p, CKPT_T_OBJECT, &o)))
        return rc;
    o->u.obj.callable = fn;
    o->u.obj.args = args;
    o->u.obj.newobj = newobj;
    if (fn->type == CKPT_T_GLOBAL) {
        if (p->named_fn != fn) {
            const char *name = ckpt__arena_printf(p->ar, "%s.%s", fn->u.global.module,
                                                  fn->u.global.name);
            if (!name)
                return PK_OOM(p);
            p->named_fn = fn;
            p->fn_name = name;
        }
        o->class_name = p->fn_name;
    }
    if ((rc = nest(p, o, fn)) || (rc = nest(p, o, args)))
        return rc;
    *out = o;
    return CKPT_OK;
}

static int not_tuple(pk *p, const ckpt_value *v, const char *what)
{
    return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has %s that are a %s, not a tuple",
                        op_name(p->op), p->at, what, type_name(v));
}

/* REDUCE, NEWOBJ, NEWOBJ_EX: pop the arguments (and class), push the result. */
static int op_call(pk *p, bool newobj, bool kw)
{
    ckpt_value *kwargs = NULL, *args = NULL, *fn = NULL, *v = NULL;
    int rc;
    if ((kw && (rc = pop(p, &kwargs))) || (rc = pop(p, &args)) || (rc = pop(p, &fn)))
        return rc;
    if (args->type != CKPT_T_TUPLE)
        return not_tuple(p, args, "arguments");
    if (kwargs && kwargs->type != CKPT_T_DICT)
        return CKPT_CORRUPT(p->err, "pickle: 'NEWOBJ_EX' at offset %zu has keyword arguments "
                                    "that are a %s, not a dict", p->at, type_name(kwargs));
    if (kwargs && kwargs->u.dict.len) {
        /* ckpt_value has no place for keyword arguments: they become one more argument. */
        ckpt_value *ext;
        if ((rc = make_seq(p, CKPT_T_TUPLE, args->u.seq.items, args->u.seq.len, &ext)) ||
            (rc = seq_add(p, ext, kwargs)))
            return rc;
        args = ext;
    }
    if ((rc = call(p, fn, args, newobj, 0, &v)))
        return rc;
    return push(p, v);
}

static int op_build(pk *p)
{
    ckpt_value *state = NULL, *inst = NULL;
    int rc;
    if ((rc = pop(p, &state)) || (rc = peek(p, &inst)))
        return rc;
    if (state->type == CKPT_T_NONE) /* Python's default BUILD ignores a None state */
        return CKPT_OK;
    switch (inst->type) {
    case CKPT_T_DICT: return dict_attrs(p, inst, state);
    case CKPT_T_OBJECT: {
        bool done;
        if ((rc = numpy_build(p, inst, state, &done)) || done)
            return rc;
        inst->u.obj.state = state;
        return nest(p, inst, state);
    }
    case CKPT_T_TENSOR: return CKPT_OK; /* old tensors' set_() state: the rebuild has it all */
    default:
        return CKPT_CORRUPT(p->err, "pickle: 'BUILD' on a %s at offset %zu", type_name(inst),
                            p->at);
    }
}

static int op_persistent(pk *p, ckpt_value *pid)
{
    if (!p->ctx->persistent_load)
        return CKPT_CORRUPT(p->err, "pickle: persistent id at offset %zu outside a torch file",
                            p->at);
    ckpt_value *v = NULL;
    int rc = p->ctx->persistent_load(p->ctx->persistent_ud, pid, &v, p->err);
    if (rc)
        return rc;
    if (!v)
        return CKPT_CORRUPT(p->err, "pickle: persistent id at offset %zu resolves to nothing",
                            p->at);
    return push(p, v);
}

/* ---- the loop ------------------------------------------------------------------------------- */

static int step(pk *p)
{
    const char *s = NULL;
    size_t n = 0;
    const uint8_t *b = NULL;
    uint64_t u = 0;
    int64_t i = 0;
    double f = 0;
    ckpt_value *v = NULL, *w = NULL, **items = NULL;
    int rc;

    switch (p->op) {
    case OP_PROTO:
        if ((rc = read_uint(p, 1, &u)))
            return rc;
        if (u > PK_HIGHEST_PROTOCOL)
            return CKPT_FAIL(p->err, CKPT_EUNSUPPORTED,
                             "pickle: protocol %u at offset %zu is newer than %d", (unsigned)u,
                             p->at, PK_HIGHEST_PROTOCOL);
        if (p->ctx->globals && !p->ctx->globals->side && u > p->ctx->globals->max_proto)
            p->ctx->globals->max_proto = (unsigned)u; /* 1.13's weights_only stops at 3 */
        return CKPT_OK;
    case OP_FRAME: /* frames only group opcodes for buffered reading: the data is inline */
        return read_uint(p, 8, &u);
    case OP_MARK: return push_mark(p);
    case OP_POP:
        /* As CPython's _pickle.c: at the top mark, POP discards the mark. */
        if (p->n_marks && p->marks[p->n_marks - 1] == p->sp) {
            p->n_marks--;
            return CKPT_OK;
        }
        return pop(p, &v);
    case OP_POP_MARK: return pop_mark(p, &items, &n);
    case OP_DUP: return (rc = peek(p, &v)) ? rc : push(p, v);

    case OP_NONE: return push_const(p, &p->none, CKPT_T_NONE, false);
    case OP_NEWTRUE: return push_const(p, &p->yes, CKPT_T_BOOL, true);
    case OP_NEWFALSE: return push_const(p, &p->no, CKPT_T_BOOL, false);
    case OP_BININT: return (rc = read_i32(p, &i)) ? rc : push_int(p, i);
    case OP_BININT1: return (rc = read_uint(p, 1, &u)) ? rc : push_int(p, (int64_t)u);
    case OP_BININT2: return (rc = read_uint(p, 2, &u)) ? rc : push_int(p, (int64_t)u);
    case OP_INT:
        if ((rc = read_line(p, &s, &n)) || (rc = text_int(p, s, n, &v)))
            return rc;
        /* Protocol 0 writes booleans as INT "00" and "01". */
        if (n == 2 && v->type == CKPT_T_INT && (v->u.i == 0 || v->u.i == 1))
            return push_const(p, v->u.i ? &p->yes : &p->no, CKPT_T_BOOL, v->u.i == 1);
        return push(p, v);
    case OP_LONG:
        if ((rc = read_line(p, &s, &n)))
            return rc;
        if (n && s[n - 1] == 'L')
            n--;
        return (rc = text_int(p, s, n, &v)) ? rc : push(p, v);
    case OP_LONG1:
    case OP_LONG4:
        if (p->op == OP_LONG1 ? (rc = read_uint(p, 1, &u)) : (rc = read_i32(p, &i)))
            return rc;
        if (p->op == OP_LONG4) {
            if (i < 0)
                return CKPT_CORRUPT(p->err, "pickle: 'LONG4' at offset %zu has a negative length",
                                    p->at);
            if (i > PK_MAX_LONG_BYTES)
                return CKPT_FAIL(p->err, CKPT_ELIMIT,
                                 "pickle: 'LONG4' at offset %zu is an int of %lld bytes, more "
                                 "than %u", p->at, (long long)i, PK_MAX_LONG_BYTES);
            u = (uint64_t)i;
        }
        if ((rc = read_bytes(p, u, &b)) || (rc = int_from_le(p, b, (size_t)u, &v)))
            return rc;
        return push(p, v);
    case OP_FLOAT: {
        if ((rc = read_line(p, &s, &n)) || (rc = text_float(p, s, n, &f)))
            return rc;
        return push_float(p, f);
    }
    case OP_BINFLOAT: {
        if ((rc = read_bytes(p, 8, &b)))
            return rc;
        u = 0;
        for (int k = 0; k < 8; k++)
            u = u << 8 | b[k];
        memcpy(&f, &u, sizeof f);
        return push_float(p, f);
    }

    case OP_STRING:
        if ((rc = read_line(p, &s, &n)) || (rc = quoted_str(p, s, n, &v)))
            return rc;
        return push(p, v);
    case OP_BINSTRING:
    case OP_SHORT_BINSTRING:
        if (p->op == OP_SHORT_BINSTRING ? (rc = read_uint(p, 1, &u)) : (rc = read_i32(p, &i)))
            return rc;
        if (p->op == OP_BINSTRING) {
            if (i < 0)
                return CKPT_CORRUPT(p->err, "pickle: 'BINSTRING' at offset %zu has a negative "
                                            "length", p->at);
            u = (uint64_t)i;
        }
        if ((rc = read_bytes(p, u, &b)) || (rc = latin1_str(p, b, (size_t)u, &v)))
            return rc;
        return push(p, v);
    case OP_UNICODE:
        if ((rc = read_line(p, &s, &n)) || (rc = raw_unicode_str(p, s, n, &v)))
            return rc;
        return push(p, v);
    case OP_SHORT_BINUNICODE:
    case OP_BINUNICODE:
    case OP_BINUNICODE8:
        if ((rc = read_uint(p, p->op == OP_SHORT_BINUNICODE ? 1 : p->op == OP_BINUNICODE ? 4 : 8,
                            &u)) ||
            (rc = read_bytes(p, u, &b)) || (rc = utf8_str(p, b, (size_t)u, &v)))
            return rc;
        return push(p, v);
    case OP_SHORT_BINBYTES: return push_bytes(p, 1, NULL);
    case OP_BINBYTES: return push_bytes(p, 4, NULL);
    case OP_BINBYTES8: return push_bytes(p, 8, NULL);
    case OP_BYTEARRAY8: return push_bytes(p, 8, "builtins.bytearray");

    case OP_EMPTY_TUPLE: return push_const(p, &p->empty_tuple, CKPT_T_TUPLE, false);
    case OP_EMPTY_LIST: return (rc = new_value(p, CKPT_T_LIST, &v)) ? rc : push(p, v);
    case OP_EMPTY_DICT: return (rc = new_value(p, CKPT_T_DICT, &v)) ? rc : push(p, v);
    case OP_EMPTY_SET: return (rc = new_value(p, CKPT_T_SET, &v)) ? rc : push(p, v);
    case OP_TUPLE1:
    case OP_TUPLE2:
    case OP_TUPLE3:
        n = p->op - OP_TUPLE1 + 1;
        if (p->sp - fence(p) < n)
            return underflow(p);
        p->sp -= n;
        if ((rc = make_seq(p, CKPT_T_TUPLE, p->stack + p->sp, n, &v)))
            return rc;
        return push(p, v);
    case OP_TUPLE:
    case OP_LIST:
    case OP_FROZENSET:
        if ((rc = pop_mark(p, &items, &n)) ||
            (rc = make_seq(p, p->op == OP_TUPLE ? CKPT_T_TUPLE : p->op == OP_LIST ? CKPT_T_LIST
                                                                                    : CKPT_T_SET,
                           items, n, &v)))
            return rc;
        if (p->op == OP_FROZENSET)
            v->flags |= CKPT_VF_FROZEN;
        return push(p, v);
    case OP_DICT:
        if ((rc = pop_mark(p, &items, &n)))
            return rc;
        if (n % 2)
            return CKPT_CORRUPT(p->err, "pickle: 'DICT' at offset %zu has an odd number of items",
                                p->at);
        if ((rc = new_value(p, CKPT_T_DICT, &v)))
            return rc;
        for (size_t k = 0; k < n; k += 2)
            if ((rc = dict_add(p, v, items[k], items[k + 1])))
                return rc;
        return push(p, v);
    case OP_APPEND:
        if ((rc = pop(p, &w)) || (rc = peek(p, &v)))
            return rc;
        return add_items(p, v, &w, 1, CKPT_T_LIST);
    case OP_APPENDS:
    case OP_ADDITEMS:
        if ((rc = pop_mark(p, &items, &n)) || (rc = peek(p, &v)))
            return rc;
        return add_items(p, v, items, n, p->op == OP_APPENDS ? CKPT_T_LIST : CKPT_T_SET);
    case OP_SETITEM: {
        ckpt_value *kv[2];
        if ((rc = pop(p, &kv[1])) || (rc = pop(p, &kv[0])) || (rc = peek(p, &v)))
            return rc;
        return set_items(p, v, kv, 2);
    }
    case OP_SETITEMS:
        if ((rc = pop_mark(p, &items, &n)) || (rc = peek(p, &v)))
            return rc;
        if (n % 2)
            return CKPT_CORRUPT(p->err, "pickle: 'SETITEMS' at offset %zu has an odd number of "
                                        "items", p->at);
        return set_items(p, v, items, n);

    case OP_GLOBAL:
    case OP_INST: {
        const char *module, *name;
        if ((rc = global_part(p, &module)) || (rc = global_part(p, &name)) ||
            (rc = push_global(p, module, name)))
            return rc;
        if (p->op == OP_GLOBAL)
            return CKPT_OK;
        /* INST: klass(*args since the mark), with the class pushed just above them. */
        ckpt_value *cls = p->stack[--p->sp];
        if ((rc = pop_mark(p, &items, &n)) || (rc = make_seq(p, CKPT_T_TUPLE, items, n, &w)) ||
            (rc = call(p, cls, w, n == 0, 0, &v)))
            return rc;
        return push(p, v);
    }
    case OP_STACK_GLOBAL: {
        ckpt_value *mod = NULL, *name = NULL; /* set by pop, or rc says why not */
        if ((rc = pop(p, &name)) || (rc = pop(p, &mod)))
            return rc;
        if (mod->type != CKPT_T_STR || name->type != CKPT_T_STR)
            return CKPT_CORRUPT(p->err, "pickle: 'STACK_GLOBAL' at offset %zu needs two str, not "
                                        "a %s and a %s", p->at, type_name(mod), type_name(name));
        if (strlen(mod->u.str.data) != mod->u.str.len ||
            strlen(name->u.str.data) != name->u.str.len)
            return CKPT_CORRUPT(p->err, "pickle: 'STACK_GLOBAL' at offset %zu names a module or "
                                        "class with a NUL in it", p->at);
        return push_global(p, mod->u.str.data, name->u.str.data);
    }
    case OP_OBJ: /* INST and OBJ without arguments are cls.__new__(cls), as in CPython */
        if ((rc = pop_mark(p, &items, &n)))
            return rc;
        if (n == 0)
            return CKPT_CORRUPT(p->err, "pickle: 'OBJ' at offset %zu has no class", p->at);
        if ((rc = make_seq(p, CKPT_T_TUPLE, items + 1, n - 1, &w)) ||
            (rc = call(p, items[0], w, n == 1, 0, &v)))
            return rc;
        return push(p, v);
    case OP_REDUCE: return op_call(p, false, false);
    case OP_NEWOBJ: return op_call(p, true, false);
    case OP_NEWOBJ_EX: return op_call(p, true, true);
    case OP_BUILD: return op_build(p);

    case OP_PUT:
    case OP_GET:
        if ((rc = read_line(p, &s, &n)) || (rc = text_int(p, s, n, &v)))
            return rc;
        if (v->type != CKPT_T_INT || v->u.i < 0)
            return CKPT_CORRUPT(p->err, "pickle: '%s' at offset %zu has a bad memo key",
                                op_name(p->op), p->at);
        return p->op == OP_PUT ? memo_top(p, (uint64_t)v->u.i) : push_memo(p, (uint64_t)v->u.i);
    case OP_BINPUT: return (rc = read_uint(p, 1, &u)) ? rc : memo_top(p, u);
    case OP_LONG_BINPUT: return (rc = read_uint(p, 4, &u)) ? rc : memo_top(p, u);
    case OP_MEMOIZE: return memo_top(p, p->memo_count);
    case OP_BINGET: return (rc = read_uint(p, 1, &u)) ? rc : push_memo(p, u);
    case OP_LONG_BINGET: return (rc = read_uint(p, 4, &u)) ? rc : push_memo(p, u);

    case OP_PERSID:
        if ((rc = read_line(p, &s, &n)))
            return rc;
        for (size_t k = 0; k < n; k++)
            if ((uint8_t)s[k] >= 0x80)
                return CKPT_CORRUPT(p->err, "pickle: 'PERSID' at offset %zu is not ASCII", p->at);
        if ((rc = utf8_str(p, (const uint8_t *)s, n, &v)))
            return rc;
        return op_persistent(p, v);
    case OP_BINPERSID: return (rc = pop(p, &v)) ? rc : op_persistent(p, v);

    case OP_EXT1:
    case OP_EXT2:
    case OP_EXT4:
        return CKPT_FAIL(p->err, CKPT_EUNSUPPORTED,
                         "pickle: '%s' at offset %zu: pickle uses the extension registry",
                         op_name(p->op), p->at);
    case OP_NEXT_BUFFER:
    case OP_READONLY_BUFFER:
        return CKPT_FAIL(p->err, CKPT_EUNSUPPORTED,
                         "pickle: '%s' at offset %zu: pickle uses out-of-band buffers",
                         op_name(p->op), p->at);
    default:
        return CKPT_CORRUPT(p->err, "pickle: unknown opcode 0x%02x at offset %zu", p->op, p->at);
    }
}

int ckpt__pickle_load(ckpt__pickle_ctx *ctx, const uint8_t *buf, size_t len, ckpt_value **out,
                      size_t *consumed, ckpt_error *err)
{
    *out = NULL;
    *consumed = 0;
    pk p = {
        .ctx = ctx,
        .ar = ctx->arena,
        .err = err,
        .buf = buf,
        .len = buf ? len : 0,
        .max_depth = ctx->max_depth ? ctx->max_depth : CKPT_DEFAULT_MAX_DEPTH,
        .max_memo = ctx->max_memo ? ctx->max_memo : CKPT_DEFAULT_MAX_MEMO,
    };
    /* Allocated now, so that `stack + mark` is never arithmetic on NULL. */
    p.stack = ckpt__arena_alloc(p.ar, PK_STACK_INIT * sizeof *p.stack);
    if (!p.stack)
        return PK_OOM(&p);
    p.stack_cap = PK_STACK_INIT;
    while (p.pos < p.len) {
        p.at = p.pos;
        p.op = p.buf[p.pos++];
        if (p.op == OP_STOP) {
            /* As CPython: the top of the stack above the innermost MARK is the result;
             * whatever lies below it, and MARKs left open, are ignored. */
            if (p.sp <= fence(&p)) {
                *consumed = p.at;
                return CKPT_CORRUPT(err, "pickle: 'STOP' at offset %zu with an empty stack",
                                    p.at);
            }
            *out = p.stack[p.sp - 1];
            *consumed = p.pos;
            return CKPT_OK;
        }
        int rc = step(&p);
        if (rc) {
            *consumed = p.at;
            return rc;
        }
    }
    *consumed = p.len;
    return CKPT_CORRUPT(err, "pickle: no STOP before the end of the data (%zu bytes)", p.len);
}
