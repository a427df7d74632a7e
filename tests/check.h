/* check.h - the tiny assertion header of the C tests: prints both sides on failure, keeps going,
 * and check_exit() turns the count into the exit status (libuv's ASSERT_EQ, without aborting). */
#ifndef CKPT_TEST_CHECK_H
#define CKPT_TEST_CHECK_H

#include <inttypes.h>
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
