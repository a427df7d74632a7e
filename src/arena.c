/* arena.c - the allocator hook and the per-file arena.
 *
 * Every value, name and shape parsed from one file lives in one arena: a list of chunks freed
 * together by ckpt_close (ggml's context, git's mem-pool). A byte limit makes a hostile file
 * fail with CKPT_ELIMIT instead of exhausting memory. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

static void *default_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, nsize);
}

void ckpt__alloc_init(ckpt__alloc *a, const ckpt_options *opt)
{
    a->fn = (opt && opt->alloc) ? opt->alloc : default_alloc;
    a->ud = (opt && opt->alloc) ? opt->alloc_ud : NULL;
}

void *ckpt__malloc(const ckpt__alloc *a, size_t n)
{
    return n ? a->fn(a->ud, NULL, 0, n) : NULL;
}

void *ckpt__realloc(const ckpt__alloc *a, void *p, size_t osize, size_t nsize)
{
    return a->fn(a->ud, p, osize, nsize);
}

void ckpt__free(const ckpt__alloc *a, void *p, size_t size)
{
    if (p)
        a->fn(a->ud, p, size, 0);
}

#define ARENA_ALIGN 16
#define ARENA_CHUNK (64u * 1024u)

typedef struct chunk {
    struct chunk *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    _Alignas(16) unsigned char data[];
} chunk;

struct ckpt__arena {
    ckpt__alloc alloc;
    chunk *head;
    uint64_t used;  /* bytes handed out plus chunk overhead */
    uint64_t limit;
    bool over_limit;
};

ckpt__arena *ckpt__arena_new(const ckpt__alloc *a, uint64_t limit)
{
    ckpt__arena *ar = ckpt__malloc(a, sizeof *ar);
    if (!ar)
        return NULL;
    memset(ar, 0, sizeof *ar);
    ar->alloc = *a;
    ar->limit = limit ? limit : CKPT_DEFAULT_MAX_ALLOC;
    return ar;
}

void ckpt__arena_free(ckpt__arena *ar)
{
    if (!ar)
        return;
    ckpt__alloc a = ar->alloc;
    for (chunk *c = ar->head, *next; c; c = next) {
        next = c->next;
        ckpt__free(&a, c, sizeof *c + c->size);
    }
    ckpt__free(&a, ar, sizeof *ar);
}

void *ckpt__arena_alloc(ckpt__arena *ar, size_t n)
{
    if (n == 0)
        n = 1;
    if (n > SIZE_MAX - ARENA_ALIGN - sizeof(chunk))
        return NULL;
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    chunk *c = ar->head;
    if (!c || c->size - c->used < n) {
        size_t size = n > ARENA_CHUNK / 2 ? n : ARENA_CHUNK;
        if (ar->used + sizeof *c + size > ar->limit) {
            ar->over_limit = true;
            return NULL;
        }
        chunk *nc = ckpt__malloc(&ar->alloc, sizeof *nc + size);
        if (!nc) {
            ar->over_limit = false;
            return NULL;
        }
        nc->size = size;
        nc->used = 0;
        ar->used += sizeof *nc + size;
        if (c && size != ARENA_CHUNK) {
            /* A large block gets its own chunk behind the current one, so the current
             * chunk's free space stays usable. */
            nc->next = c->next;
            c->next = nc;
        } else {
            nc->next = c;
            ar->head = nc;
        }
        c = nc;
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

void *ckpt__arena_grow(ckpt__arena *ar, void *p, size_t osize, size_t nsize)
{
    if (nsize <= osize)
        return p;
    void *q = ckpt__arena_alloc(ar, nsize);
    if (q && p && osize)
        memcpy(q, p, osize);
    return q;
}

char *ckpt__arena_strndup(ckpt__arena *ar, const char *s, size_t n)
{
    if (n == SIZE_MAX)
        return NULL;
    char *p = ckpt__arena_alloc(ar, n + 1);
    if (p && n)
        memcpy(p, s, n);
    return p;
}

char *ckpt__arena_strdup(ckpt__arena *ar, const char *s)
{
    return ckpt__arena_strndup(ar, s, strlen(s));
}

char *ckpt__arena_printf(ckpt__arena *ar, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = n < 0 ? NULL : ckpt__arena_alloc(ar, (size_t)n + 1);
    if (p)
        vsnprintf(p, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return p;
}

uint64_t ckpt__arena_used(const ckpt__arena *ar)
{
    return ar->used;
}

bool ckpt__arena_over_limit(const ckpt__arena *ar)
{
    return ar->over_limit;
}

int ckpt__arena_error(const ckpt__arena *ar, ckpt_error *err)
{
    char lim[32];
    if (ar->over_limit)
        return CKPT_FAIL(err, CKPT_ELIMIT,
                         "parsed data exceeds the limit of %s (raise ckpt_options.max_alloc)",
                         ckpt__size_str(lim, ar->limit));
    return CKPT_NOMEM(err);
}

const char *ckpt__size_str(char buf[32], uint64_t n)
{
    static const char *const unit[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    int u = 0;
    uint64_t v = n;
    while (u < 6 && v >= 1024 && v % 1024 == 0)
        v /= 1024, u++;
    if (u == 0 && n >= 1024 * 1024) /* not a round number: say roughly how much, exactly too */
        snprintf(buf, 32, "%llu bytes", (unsigned long long)n);
    else
        snprintf(buf, 32, "%llu %s", (unsigned long long)v, unit[u]);
    return buf;
}
