/*
 * kern: what every CPU kernel shares: the implementation selector used by the per-op dispatch
 * functions, the element types a dense weight can have, and scalar conversions between fp32 and
 * the 16- and 8-bit float formats.
 *
 * Dispatch contract (STYLE 3.5): every op `foo` has `foo_ref()` (plain loops, the spec),
 * `foo_cpu()` (the fast CPU version the engine uses) and one dispatch function `foo(impl, ...)`
 * that the engine and the tests both call. KERN_IMPL_CUDA is reserved for the CUDA files in
 * kernels/: until a backend is linked in, dispatch returns -ENOSYS for it. Kernels never allocate
 * per call except through par_scratch() (kernels/par.h) and never print.
 */
#ifndef EXAQ_KERN_H
#define EXAQ_KERN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum kern_impl {
    KERN_IMPL_REF = 0,  /* plain loops, single thread: the specification */
    KERN_IMPL_CPU = 1,  /* blocked, vectorised, multi-threaded through kernels/par.h */
    KERN_IMPL_CUDA = 2, /* reserved for the CUDA kernels */
};

#define KERN_IMPL_DEFAULT KERN_IMPL_CPU

/* Element type of a dense weight matrix. */
enum kern_dtype {
    KERN_F32 = 0,
    KERN_BF16 = 1,
    KERN_F16 = 2,
};

/* Bytes per element of a kern_dtype. */
static inline size_t kern_dtype_size(enum kern_dtype dt)
{
    return dt == KERN_F32 ? 4 : 2;
}

static inline float kern_bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t kern_f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float kern_bf16_to_f32(uint16_t h)
{
    return kern_bits_to_f32((uint32_t)h << 16);
}

/* Round to nearest even, as torch's float -> bfloat16 cast does; NaN stays a quiet NaN. */
static inline uint16_t kern_f32_to_bf16(float f)
{
    uint32_t u = kern_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Rounds an fp32 value to the nearest bf16 value and returns it as fp32. */
static inline float kern_round_bf16(float f)
{
    return kern_bf16_to_f32(kern_f32_to_bf16(f));
}

/* IEEE binary16 -> fp32, exact (subnormals, inf and NaN included). */
static inline float kern_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        /* Zero or subnormal: mant * 2^-24, exact in fp32. */
        float v = (float)mant * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (exp == 31)
        return kern_bits_to_f32(sign | 0x7f800000u | (mant << 13));
    return kern_bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* fp32 -> IEEE binary16, round to nearest even, overflow to inf. */
static inline uint16_t kern_f32_to_f16(float f)
{
    uint32_t u = kern_f32_to_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {
        /* Result is subnormal or zero: scale by 2^24 and round to an integer (even). */
        float v = kern_bits_to_f32(a) * 16777216.0f;
        uint32_t m = (uint32_t)v;
        float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1u)))
            m++;
        return (uint16_t)(sign | m);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
    return (uint16_t)(sign | (r >> 13));
}

/* float8 e4m3fn (torch.float8_e4m3fn): bias 7, no infinities, 0x7f/0xff are NaN. */
static inline float kern_f8e4m3_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t exp = (b >> 3) & 0xfu;
    uint32_t mant = b & 7u;
    if (exp == 15 && mant == 7)
        return kern_bits_to_f32(sign | 0x7fc00000u);
    if (exp == 0) {
        float v = (float)mant * (1.0f / 512.0f);
        return sign ? -v : v;
    }
    return kern_bits_to_f32(sign | ((exp + 120u) << 23) | (mant << 20));
}

/* float8 e5m2: the top byte of an IEEE binary16. */
static inline float kern_f8e5m2_to_f32(uint8_t b)
{
    return kern_f16_to_f32((uint16_t)((uint16_t)b << 8));
}

/* Converts n elements of a dense weight row to fp32. */
static inline void kern_row_to_f32(enum kern_dtype dt, const void *src, float *dst, size_t n)
{
    size_t i;
    switch (dt) {
    case KERN_F32:
        memcpy(dst, src, n * 4);
        break;
    case KERN_BF16:
        for (i = 0; i < n; i++)
            dst[i] = kern_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case KERN_F16:
        for (i = 0; i < n; i++)
            dst[i] = kern_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    }
}

#endif
