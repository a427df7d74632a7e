/* check.h - the tiny assertion header of the C tests: prints both sides on failure, keeps going,
 * and check_exit() turns the count into the exit status (libuv's ASSERT_EQ, without aborting). */
#ifndef CKPT_TEST_CHECK_H
#define CKPT_TEST_CHECK_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        check_count++;                                                                         \
        if (!(cond)) {                                                                         \
            check_failures++;                                                                  \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);          \
        }                                                                                      \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                     \
    do {                                                                                       \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                        \
        check_count++;                                                                         \
        if (check_a_ != check_b_) {                                                            \
            check_failures++;                                                                  \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a,  \
                    #b, check_a_, check_b_);                                                   \
        }                                                                                      \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                     \
    do {                                                                                       \
        const char *check_a_ = (a), *check_b_ = (b);                                           \
        check_count++;                                                                         \
        if (!check_a_ || !check_b_ || strcmp(check_a_, check_b_) != 0) {                       \
            check_failures++;                                                                  \
            fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__,  \
                    #a, #b, check_a_ ? check_a_ : "(null)", check_b_ ? check_b_ : "(null)");   \
        }                                                                                      \
    } while (0)

/* status must be CKPT_OK; otherwise print the error record. */
#define CHECK_OK(status, err)                                                                  \
    do {                                                                                       \
        int check_s_ = (status);                                                               \
        check_count++;                                                                         \
        if (check_s_ != 0) {                                                                   \
            check_failures++;                                                                  \
            fprintf(stderr, "%s:%d: %s failed with %d: %s\n", __FILE__, __LINE__, #status,     \
                    check_s_, (err).message);                                                  \
        }                                                                                      \
    } while (0)

/* The file's bytes in a block of exactly its size (so ASan sees any read past the end), or
 * NULL; free it. */
static inline uint8_t *check_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)(n > 0 ? n : 0);
    return p;
}

/* tests/data (the vendored corpus and vectors, see tests/data/README.md): CKPT_TEST_DATA when
 * set, otherwise the folder of the source tree the test was built from. */
static inline const char *check_data_dir(void)
{
    const char *s = getenv("CKPT_TEST_DATA");
    return s && *s ? s : CKPT_TEST_DATA_DIR;
}

static inline int check_exit(void)
{
    if (check_count == 0) {
        fprintf(stderr, "no checks ran\n");
        return 1;
    }
    printf("%d checks, %d failed\n", check_count, check_failures);
    return check_failures ? 1 : 0;
}

#endif
