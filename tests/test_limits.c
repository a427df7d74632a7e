/* test_limits.c - the keyed hash and its index (hash.c), dict keys through them (value.c), and
 * the size strings limit errors print (arena.c). The hostile files themselves are made and
 * run in test_hostile.py. */
#include "check.h"
#include "internal.h"

static ckpt__alloc std_alloc;

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Streaming in any pieces gives the one-shot hash (the zip index feeds bytes one by one). */
static void test_hasher_pieces(void)
{
    uint8_t buf[100];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)rng();
    for (size_t n = 0; n <= sizeof buf; n++) {
        uint64_t whole = ckpt__hash(buf, n, 7);
        ckpt__hasher h;
        ckpt__hasher_init(&h, 7);
        for (size_t i = 0; i < n; i++)
            ckpt__hasher_byte(&h, buf[i]);
        CHECK(ckpt__hasher_end(&h) == whole);
        for (size_t cut = 0; cut <= n; cut += 3) {
            ckpt__hasher_init(&h, 7);
            ckpt__hasher_add(&h, buf, cut);
            ckpt__hasher_add(&h, buf + cut, n - cut);
            CHECK(ckpt__hasher_end(&h) == whole);
        }
    }
    /* seeds and lengths separate: "1" under two seeds, "" and "\0" */
    CHECK(ckpt__hash("1", 1, 1) != ckpt__hash("1", 1, 2));
    CHECK(ckpt__hash("", 0, 1) != ckpt__hash("\0", 1, 1));
    uint8_t le[8] = {42, 0, 0, 0, 0, 0, 0, 0};
    CHECK(ckpt__hash_u64(42, 3) == ckpt__hash(le, 8, 3));
}

/* Items found by hash and key, absent keys not found, across growth; and correct (if slow)
 * when every item has the same hash. */
static void test_index(void)
{
    ckpt__arena *ar = ckpt__arena_new(&std_alloc, 0);
    enum { N = 200000 };
    uint64_t *keys = malloc(N * sizeof *keys);
    ckpt__hindex ix = {0};
    size_t pos;
    CHECK_EQ_INT(ckpt__hindex_first(&ix, 1, &pos), 0); /* empty */
    for (size_t i = 0; i < N; i++) {
        keys[i] = rng();
        CHECK_EQ_INT(ckpt__hindex_add(ar, &ix, ckpt__hash_u64(keys[i], 0), i), 0);
    }
    CHECK_EQ_INT(ix.len, N);
    CHECK(ix.mask + 1 >= 2 * N);
    size_t found = 0, false_hits = 0;
    for (size_t i = 0; i < N; i++) {
        uint64_t h = ckpt__hash_u64(keys[i], 0);
        for (size_t it = ckpt__hindex_first(&ix, h, &pos); it; it = ckpt__hindex_next(&ix, h, &pos))
            if (keys[it - 1] == keys[i])
                found += it - 1 == i;
            else
                false_hits++;
        uint64_t absent = keys[i] ^ 0x8000000000000001ull;
        h = ckpt__hash_u64(absent, 0);
        for (size_t it = ckpt__hindex_first(&ix, h, &pos); it; it = ckpt__hindex_next(&ix, h, &pos))
            CHECK(keys[it - 1] != absent);
    }
    CHECK_EQ_INT(found, N);
    CHECK(false_hits < N / 100); /* 32 stored hash bits: almost no key compares wasted */

    ckpt__hindex same = {0};
    for (size_t i = 0; i < 1000; i++)
        CHECK_EQ_INT(ckpt__hindex_add(ar, &same, 12345, i), 0);
    size_t seen = 0;
    for (size_t it = ckpt__hindex_first(&same, 12345, &pos); it;
         it = ckpt__hindex_next(&same, 12345, &pos))
        seen++;
    CHECK_EQ_INT(seen, 1000);
    CHECK_EQ_INT(ckpt__hindex_first(&same, 12346, &pos), 0);
    free(keys);
    ckpt__arena_free(ar);
}

/* Python's dict semantics survive the keyed hash: 1 == 1.0 == True, "1" != b"1", equal tuples
 * are one key -- also past the size where the index is built. */
static void test_dict_keys(void)
{
    ckpt__arena *ar = ckpt__arena_new(&std_alloc, 0);
    ckpt_error err;
    ckpt_value *d = ckpt__value_new(ar, CKPT_T_DICT);
    for (int64_t i = 0; i < 100; i++)
        CHECK_OK(ckpt__dict_set(ar, d, ckpt__value_int(ar, i * 1000003), ckpt__value_int(ar, i),
                                &err), err);
    ckpt_value *one_f = ckpt__value_new(ar, CKPT_T_FLOAT);
    one_f->u.f = 1000003.0;
    ckpt_value *yes = ckpt__value_new(ar, CKPT_T_BOOL);
    yes->u.b = true;
    ckpt_value *got = ckpt__dict_lookup(d, one_f);
    CHECK(got && got->u.i == 1);
    CHECK_OK(ckpt__dict_set(ar, d, yes, ckpt__value_int(ar, -1), &err), err); /* True is new */
    CHECK_EQ_INT(d->u.dict.len, 101);
    ckpt_value *one = ckpt__value_int(ar, 1);
    got = ckpt__dict_lookup(d, one);
    CHECK(got && got->u.i == -1);
    ckpt_value *s = ckpt__value_str(ar, CKPT_T_STR, "1", 1);
    ckpt_value *b = ckpt__value_str(ar, CKPT_T_BYTES, "1", 1);
    CHECK_OK(ckpt__dict_set(ar, d, s, ckpt__value_int(ar, 7), &err), err);
    CHECK(ckpt__dict_lookup(d, b) == NULL);
    ckpt_value *t1 = ckpt__value_new(ar, CKPT_T_TUPLE), *t2 = ckpt__value_new(ar, CKPT_T_TUPLE);
    CHECK_OK(ckpt__seq_push(ar, t1, ckpt__value_int(ar, 5), &err), err);
    CHECK_OK(ckpt__seq_push(ar, t1, ckpt__value_str(ar, CKPT_T_STR, "a", 1), &err), err);
    CHECK_OK(ckpt__seq_push(ar, t2, ckpt__value_int(ar, 5), &err), err);
    CHECK_OK(ckpt__seq_push(ar, t2, ckpt__value_str(ar, CKPT_T_STR, "a", 1), &err), err);
    CHECK_OK(ckpt__dict_set(ar, d, t1, ckpt__value_int(ar, 8), &err), err);
    got = ckpt__dict_lookup(d, t2);
    CHECK(got && got->u.i == 8);
    CHECK_EQ_INT(d->u.dict.len, 103);
    CHECK(ckpt_dict_get(d, "1") && ckpt_dict_get(d, "1")->u.i == 7);
    ckpt__arena_free(ar);
}

static void test_size_str(void)
{
    char b[32];
    CHECK_EQ_STR(ckpt__size_str(b, 1ull << 30), "1 GiB");
    CHECK_EQ_STR(ckpt__size_str(b, 8ull << 20), "8 MiB");
    CHECK_EQ_STR(ckpt__size_str(b, (1ull << 30) + (128ull << 20)), "1152 MiB");
    CHECK_EQ_STR(ckpt__size_str(b, 1000), "1000 bytes");
    CHECK_EQ_STR(ckpt__size_str(b, (1ull << 20) + 1), "1048577 bytes");
    CHECK_EQ_STR(ckpt__size_str(b, 0), "0 bytes");
}

int main(void)
{
    ckpt__alloc_init(&std_alloc, NULL);
    test_hasher_pieces();
    test_index();
    test_dict_keys();
    test_size_str();
    return check_exit();
}
