/*
 * util.h - the small tools of util.c, shared by the state-dict modules. Internal.
 */
#ifndef CKPT_UTIL_H
#define CKPT_UTIL_H

#include "internal.h"

/* A string map (key -> index) in an arena, over the library's keyed hash index (hash.c), so a
 * file's author cannot choose keys that collide. Lookups may give the key as two pieces, so
 * "prefix" + "name" needs no concatenation. Sized at init for every key it will hold. */
typedef struct ckpt__strmap {
    ckpt__arena *ar;
    const char **keys; /* in insertion order */
    size_t *vals;
    size_t len, cap;
    ckpt__hindex index; /* over keys */
} ckpt__strmap;

/* The one growable buffer (text or bytes) of the library and the CLI: on the C heap, kept
 * NUL-terminated, copied into an arena when done or freed. On allocation failure it stops
 * growing and remembers it (the CLI's sb_* wrappers exit instead). Zero-initialised is empty. */
typedef struct ckpt__strbuf {
    char *buf; /* NUL-terminated when non-NULL */
    size_t len, cap;
    bool failed;
} ckpt__strbuf;

/* A pointer array that grows in an arena. */
typedef struct ckpt__vec {
    void **items;
    size_t len, cap;
} ckpt__vec;

ckpt__arena *ckpt__sd_arena(void);
bool ckpt__starts_with(const char *s, const char *p);
const char *ckpt__leaf_name(const char *key);
bool ckpt__strmap_init(ckpt__arena *ar, ckpt__strmap *m, size_t n);
size_t ckpt__strmap_add(ckpt__strmap *m, const char *key, size_t v);
size_t ckpt__strmap_get2(const ckpt__strmap *m, const char *a, size_t na, const char *b, size_t nb);
size_t ckpt__strmap_get(const ckpt__strmap *m, const char *key);
void ckpt__sb_addn(ckpt__strbuf *b, const void *s, size_t n);
void ckpt__sb_free(ckpt__strbuf *b);
void ckpt__sb_add(ckpt__strbuf *b, const char *s);
void ckpt__sb_printf(ckpt__strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ckpt__sb_vprintf(ckpt__strbuf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
char *ckpt__sb_finish(ckpt__strbuf *b, ckpt__arena *ar);
void ckpt__sb_shape(ckpt__strbuf *b, int ndim, const int64_t *shape);
void ckpt__sb_dims(ckpt__strbuf *b, int ndim, const int64_t *shape);
void ckpt__sb_pystr(ckpt__strbuf *b, const char *s);
bool ckpt__vec_push(ckpt__arena *ar, ckpt__vec *v, void *item);
bool ckpt__same_shape(int na, const int64_t *a, int nb, const int64_t *b);
int64_t ckpt__sd_numel(const ckpt_sd_entry *e);
bool ckpt__is_bn_buffer(const char *key);
double ckpt__half_to_double(uint16_t h);
int ckpt__dtype_components(ckpt_dtype dt, ckpt_dtype *part);
double ckpt__elem_double(ckpt_dtype dt, const uint8_t *p);
bool ckpt__dtype_is_floating(ckpt_dtype dt);
uint8_t *ckpt__tensor_copy(const ckpt_tensor *t, size_t *nbytes, ckpt_error *err);
void ckpt__count_nonfinite(ckpt_dtype dt, const uint8_t *p, size_t n, int64_t *nan, int64_t *inf);

#endif /* CKPT_UTIL_H */
