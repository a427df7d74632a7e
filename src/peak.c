/*
 * peak.c - the machine's arithmetic peak, measured: the ceiling `ckpt run --profile` shows each
 * layer against.
 *
 * Each thread runs twelve independent chains of fused multiply-adds on the widest vectors the
 * CPU has (AVX-512, else AVX2 with FMA; for bf16, AVX512_BF16's dot products, which do two
 * multiply-adds per fp32 lane). Twelve chains hide the FMA latency (4 cycles) on two pipes;
 * the empty asm statement after each round keeps the compiler from folding the chains away.
 * A convolution cannot beat this loop, except by doing fewer multiplies (Winograd), so a layer
 * above 100 % is a Winograd layer counted by its direct FLOPs.
 */
#include "net.h"

#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PEAK_ROUNDS 3         /* best of */
#define PEAK_ITERS (1L << 19) /* per thread and round: 2.4 GFLOP of AVX-512, ~10 ms a core */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define KEEP                                                                                   \
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5),        \
                     "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11))

/* loop_NAME(iters) on instruction set TARGET: twelve chains, declared by INIT_NAME(k) and
 * stepped by STEP_NAME(k) (acc = op(acc, b, c)), b and c of type ARG made by MAKE; returns
 * the FLOPs done, FLOPS_PER_STEP a step of one chain (a multiply-add is two). */
#define DEFINE_LOOP(NAME, TARGET, ARG, MAKE, FLOPS_PER_STEP)                                    \
    __attribute__((target(TARGET))) static double loop_##NAME(long iters)                      \
    {                                                                                          \
        CHAINS(INIT_##NAME)                                                                    \
        const ARG b = MAKE(0.999f), c = MAKE(1e-3f);                                           \
        for (long i = 0; i < iters; i++) {                                                     \
            CHAINS(STEP_##NAME)                                                                \
            KEEP;                                                                              \
        }                                                                                      \
        return (double)iters * 12 * (FLOPS_PER_STEP);                                          \
    }

#define INIT_avx512(k) __m512 a##k = _mm512_set1_ps(1.0f + (float)(k));
#define STEP_avx512(k) a##k = _mm512_fmadd_ps(a##k, b, c);
DEFINE_LOOP(avx512, "avx512f", __m512, _mm512_set1_ps, 16 * 2)

#define INIT_avx2(k) __m256 a##k = _mm256_set1_ps(1.0f + (float)(k));
#define STEP_avx2(k) a##k = _mm256_fmadd_ps(a##k, b, c);
DEFINE_LOOP(avx2, "avx2,fma", __m256, _mm256_set1_ps, 8 * 2)

#if (defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10)
#define HAVE_BF16_LOOP 1
/* bf16 pairs: 1.0 (0x3f80) and about 1e-3 (0x3a83) in every half of every lane */
#define BF16_PAIR(x) ((__m512bh)_mm512_set1_epi16((x) > 0.5f ? 0x3f80 : 0x3a83))
#define INIT_bf16(k) __m512 a##k = _mm512_set1_ps(1.0f + (float)(k));
#define STEP_bf16(k) a##k = _mm512_dpbf16_ps(a##k, b, c);
DEFINE_LOOP(bf16, "avx512f,avx512bf16", __m512bh, BF16_PAIR, 32 * 2)
#endif

typedef double (*loop_fn)(long);

static loop_fn pick(bool bf16)
{
    __builtin_cpu_init();
    if (bf16) {
#ifdef HAVE_BF16_LOOP
        if (ckpt__dnnl_bf16_supported() && __builtin_cpu_supports("avx512f"))
            return loop_bf16;
#endif
        return NULL;
    }
    if (__builtin_cpu_supports("avx512f"))
        return loop_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return loop_avx2;
    return NULL;
}
#else
typedef double (*loop_fn)(long);
static loop_fn pick(bool bf16)
{
    (void)bf16;
    return NULL;
}
#endif

double ckpt_peak_gflops(int threads, bool bf16)
{
    loop_fn loop = pick(bf16);
    if (!loop)
        return 0;
    if (threads <= 0)
        threads = ckpt__threads_default();
    if (threads > CKPT__NET_MAX_THREADS)
        threads = CKPT__NET_MAX_THREADS;
    double best = 0;
    for (int r = 0; r < PEAK_ROUNDS; r++) {
        double flops = 0, t0 = now_s();
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : flops)
#endif
        flops += loop(PEAK_ITERS);
        double dt = now_s() - t0;
        if (dt > 0 && flops / dt > best)
            best = flops / dt;
    }
    return best * 1e-9;
}
