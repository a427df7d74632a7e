/* hash.c - keyed hashing, and the one hash index that every table keyed by file content uses
 * (dict keys, the pickle memo, globals, storage keys, zip entry names).
 *
 * A hash the file's author can compute lets a 1 MB pickle put 10^5 dict keys in one probe
 * chain (quadratic: tens of seconds). The hash is SipHash-1-3 under a 128-bit key drawn once
 * per process from getrandom(2) (failing that, from the clock and ASLR'd addresses, still
 * unknown when the file was made), as CPython and Rust do for their dicts.
 *
 * The index holds no keys: each slot is (low 32 bits of the hash, item index + 1), and the
 * items live in the caller's array, which keeps insertion order. Probing is linear, the table
 * at most half full; a lookup walks the candidates whose stored hash bits match and the caller
 * compares keys:
 *
 *     size_t pos;
 *     for (size_t it = ckpt__hindex_first(ix, h, &pos); it; it = ckpt__hindex_next(ix, h, &pos))
 *         if (equal(items[it - 1], key))
 *             return it - 1;
 */
#include "internal.h"

#include <pthread.h>
#include <time.h>
#if defined(__linux__)
#include <sys/random.h>
#endif

/* ---- the key ---------------------------------------------------------------------------- */

static uint64_t key0, key1;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void key_init(void)
{
#if defined(__linux__)
    uint64_t k[2];
    if (getrandom(k, sizeof k, GRND_NONBLOCK) == (ssize_t)sizeof k) {
        key0 = k[0], key1 = k[1];
        return;
    }
#endif
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    key0 = (uint64_t)(uintptr_t)&ts * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_nsec;
    key1 = (uint64_t)(uintptr_t)&key_init * 0xc2b2ae3d27d4eb4full ^ (uint64_t)ts.tv_sec;
}

/* ---- SipHash-1-3 -------------------------------------------------------------------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static void sipround(uint64_t v[4])
{
    v[0] += v[1], v[1] = ROTL(v[1], 13), v[1] ^= v[0], v[0] = ROTL(v[0], 32);
    v[2] += v[3], v[3] = ROTL(v[3], 16), v[3] ^= v[2];
    v[0] += v[3], v[3] = ROTL(v[3], 21), v[3] ^= v[0];
    v[2] += v[1], v[1] = ROTL(v[1], 17), v[1] ^= v[2], v[2] = ROTL(v[2], 32);
}

void ckpt__hasher_init(ckpt__hasher *h, uint64_t seed)
{
    pthread_once(&key_once, key_init);
    uint64_t k1 = key1 ^ seed; /* seed: which kind of key, so that "1" and 1 differ */
    h->v[0] = key0 ^ 0x736f6d6570736575ull;
    h->v[1] = k1 ^ 0x646f72616e646f6dull;
    h->v[2] = key0 ^ 0x6c7967656e657261ull;
    h->v[3] = k1 ^ 0x7465646279746573ull;
    h->m = 0;
    h->n = 0;
}

void ckpt__hasher_byte(ckpt__hasher *h, uint8_t b)
{
    h->m |= (uint64_t)b << (8 * (h->n & 7));
    if ((++h->n & 7) == 0) {
        h->v[3] ^= h->m, sipround(h->v), h->v[0] ^= h->m;
        h->m = 0;
    }
}

void ckpt__hasher_add(ckpt__hasher *h, const void *p, size_t n)
{
    const uint8_t *s = p;
    while (n && (h->n & 7)) /* finish the current word */
        ckpt__hasher_byte(h, *s++), n--;
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t m = 0;
        for (int i = 0; i < 8; i++)
            m |= (uint64_t)s[i] << (8 * i);
        h->v[3] ^= m, sipround(h->v), h->v[0] ^= m;
        h->n += 8;
    }
    while (n--)
        ckpt__hasher_byte(h, *s++);
}

void ckpt__hasher_u64(ckpt__hasher *h, uint64_t x)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(x >> (8 * i));
    ckpt__hasher_add(h, b, 8);
}

uint64_t ckpt__hasher_end(const ckpt__hasher *h0)
{
    ckpt__hasher h = *h0;
    uint64_t m = h.m | (uint64_t)(h.n & 0xff) << 56;
    h.v[3] ^= m, sipround(h.v), h.v[0] ^= m;
    h.v[2] ^= 0xff;
    sipround(h.v), sipround(h.v), sipround(h.v);
    return h.v[0] ^ h.v[1] ^ h.v[2] ^ h.v[3];
}

uint64_t ckpt__hash(const void *p, size_t n, uint64_t seed)
{
    ckpt__hasher h;
    ckpt__hasher_init(&h, seed);
    ckpt__hasher_add(&h, p, n);
    return ckpt__hasher_end(&h);
}

uint64_t ckpt__hash_u64(uint64_t x, uint64_t seed)
{
    ckpt__hasher h;
    ckpt__hasher_init(&h, seed);
    ckpt__hasher_u64(&h, x);
    return ckpt__hasher_end(&h);
}

/* ---- the index ---------------------------------------------------------------------------- */

#define HINDEX_MIN_SLOTS 16
#define HINDEX_MAX_SLOTS ((size_t)1 << 32) /* positions come from 32 stored hash bits */

/* The item at *pos or after it whose hash bits match h; *pos moves past it. */
size_t ckpt__hindex_next(const ckpt__hindex *ix, uint64_t h, size_t *pos)
{
    for (size_t j = *pos;; j = (j + 1) & ix->mask) {
        const ckpt__hslot *s = &ix->slots[j];
        if (!s->item)
            return 0;
        if (s->hash == (uint32_t)h) {
            *pos = (j + 1) & ix->mask;
            return s->item;
        }
    }
}

size_t ckpt__hindex_first(const ckpt__hindex *ix, uint64_t h, size_t *pos)
{
    if (!ix->slots)
        return 0;
    *pos = (size_t)(uint32_t)h & ix->mask;
    return ckpt__hindex_next(ix, h, pos);
}

static void place(ckpt__hslot *slots, size_t mask, uint32_t hash, uint32_t item)
{
    size_t j = hash & mask;
    while (slots[j].item)
        j = (j + 1) & mask;
    slots[j].hash = hash;
    slots[j].item = item;
}

/* Moves the items to a new table of ncap slots (a power of two). The old table stays in the
 * arena until it is freed. */
static int resize(ckpt__arena *ar, ckpt__hindex *ix, size_t ncap)
{
    size_t cap = ix->slots ? ix->mask + 1 : 0;
    if (ncap > HINDEX_MAX_SLOTS)
        return -1;
    ckpt__hslot *t = ckpt__arena_alloc(ar, ncap * sizeof *t); /* zeroed: all empty */
    if (!t)
        return -1;
    for (size_t k = 0; k < cap; k++)
        if (ix->slots[k].item)
            place(t, ncap - 1, ix->slots[k].hash, ix->slots[k].item);
    ix->slots = t;
    ix->mask = ncap - 1;
    return 0;
}

int ckpt__hindex_add(ckpt__arena *ar, ckpt__hindex *ix, uint64_t h, size_t item)
{
    if (item >= UINT32_MAX)
        return -1;
    size_t cap = ix->slots ? ix->mask + 1 : 0;
    if ((ix->len + 1) * 2 > cap && resize(ar, ix, cap ? cap * 2 : HINDEX_MIN_SLOTS) != 0)
        return -1;
    place(ix->slots, ix->mask, (uint32_t)h, (uint32_t)item + 1);
    ix->len++;
    return 0;
}

int ckpt__hindex_reserve(ckpt__arena *ar, ckpt__hindex *ix, size_t n)
{
    size_t cap = ix->slots ? ix->mask + 1 : 0, ncap = HINDEX_MIN_SLOTS;
    if (n * 2 <= cap)
        return 0;
    while (ncap < n * 2)
        if ((ncap *= 2) > HINDEX_MAX_SLOTS)
            return -1;
    return resize(ar, ix, ncap);
}
