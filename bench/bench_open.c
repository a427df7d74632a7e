/* bench_open.c - in-process time of ckpt_open + walking every tensor's metadata, the part of
 * `ckpt inspect` that depends on the file (no tensor data is read).
 * Usage: bench_open FILE [REPEATS]; prints the median and minimum in milliseconds. */
#include "ckpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static size_t count_tensors(const ckpt_value *v, int depth)
{
    if (!v || depth > 64)
        return 0;
    size_t n = 0;
    switch (v->type) {
    case CKPT_T_TENSOR: return 1;
    case CKPT_T_TUPLE: case CKPT_T_LIST: case CKPT_T_SET:
        for (size_t i = 0; i < v->u.seq.len; i++)
            n += count_tensors(v->u.seq.items[i], depth + 1);
        return n;
    case CKPT_T_DICT:
        for (size_t i = 0; i < v->u.dict.len; i++)
            n += count_tensors(v->u.dict.vals[i], depth + 1);
        return n;
    default: return 0;
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_open FILE [REPEATS]\n");
        return 2;
    }
    int reps = argc > 2 ? atoi(argv[2]) : 50;
    if (reps < 1)
        reps = 1;
    double *t = malloc(sizeof *t * (size_t)reps);
    size_t tensors = 0;
    for (int i = 0; i < reps; i++) {
        double t0 = now_ms();
        ckpt_file *f;
        ckpt_error err;
        if (ckpt_open(argv[1], NULL, &f, &err) != CKPT_OK) {
            fprintf(stderr, "bench_open: %s: %s\n", argv[1], err.message);
            return 2;
        }
        tensors = count_tensors(ckpt_root(f), 0);
        ckpt_close(f);
        t[i] = now_ms() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp);
    printf("{\"median_ms\": %.4f, \"min_ms\": %.4f, \"tensors\": %zu, \"repeats\": %d}\n",
           t[reps / 2], t[0], tensors, reps);
    free(t);
    return 0;
}
