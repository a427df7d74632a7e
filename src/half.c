/* half.c - the library's one copy of the float16 and bfloat16 conversions, on bit patterns,
 * as PyTorch 1.13's CPU kernels do them (every decoder and encoder goes through these, so
 * ckpt_tensor_read, ckpt_convert, the checks' NaN counts and the pickle's numpy scalars agree):
 *     float16 -> float32    exact; a NaN keeps its payload and gets the quiet bit (F16C and
 *                           c10's scalar code agree: 0x7D01 -> 0x7FE02000).
 *     bfloat16 -> float32   the 16 bits on top, NaN payload untouched (0x7F81 -> 0x7F810000).
 *     float32 -> float16    round to nearest even; NaN -> sign | 0x7E00.
 *     float32 -> bfloat16   round to nearest even; NaN -> the caller's pattern (which of
 *                           torch's kernels ran: see convert.c).
 * The rounding works on the bits, so no FPU mode matters. */
#include "internal.h"

uint16_t ckpt__f32_to_f16(uint32_t x)
{
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u)
        return sign | 0x7E00u;
    if (ax >= 0x477FF000u) /* 65520 and up round to infinity (65504 is odd: ties go up) */
        return sign | 0x7C00u;
    if (ax >= 0x38800000u) { /* a normal half: rebias the exponent, round the low 13 bits */
        ax += 0xC8000FFFu + ((ax >> 13) & 1u);
        return sign | (uint16_t)(ax >> 13);
    }
    if (ax <= 0x33000000u) /* at most 2^-25, half the smallest subnormal: ties to even 0 */
        return sign;
    uint32_t e = ax >> 23, m = (ax & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14 .. 24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return sign | (uint16_t)q;
}

uint32_t ckpt__f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0x1F)
        return sign | 0x7F800000u | (man ? 0x400000u | (man << 13) : 0);
    if (exp)
        return sign | ((exp + 112) << 23) | (man << 13);
    if (!man)
        return sign;
    uint32_t e = 113; /* normalise a subnormal */
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return sign | (e << 23) | ((man & 0x3FFu) << 13);
}

uint16_t ckpt__f32_to_bf16(uint32_t x, uint16_t nan)
{
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)
        return nan;
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}


uint32_t ckpt__bf16_to_f32(uint16_t b)
{
    return (uint32_t)b << 16;
}

float ckpt__f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
