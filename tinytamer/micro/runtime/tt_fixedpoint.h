/* gemmlowp / TFLite fixed-point requantization, inlined into every kernel.
 * tinytamer/micro/fixedpoint.py computes the same values in numpy. */
#ifndef TT_FIXEDPOINT_H
#define TT_FIXEDPOINT_H

#include <stdint.h>

#include "tt_kernels.h"

/* SaturatingRoundingDoublingHighMul. */
static inline int32_t tt_srdhm(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    /* gemmlowp adds a sign-dependent nudge (2^30 or 1 - 2^30) and truncates toward zero;
     * for every product that equals floor((ab + 2^30) / 2^31): one SMLAL and two shifts. */
    return (int32_t)(((int64_t)a * (int64_t)b + (1 << 30)) >> 31);
}

/* RoundingDivideByPOT: round half away from zero. */
static inline int32_t tt_rdbpot(int32_t x, int32_t exponent)
{
    int32_t mask = (int32_t)((UINT32_C(1) << exponent) - 1u);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier: acc * multiplier * 2^(shift - 31); the left shift saturates.
 * For the kernels: the generator's multipliers are >= 0, so SRDHM's one saturating case
 * (both operands INT32_MIN) cannot occur and is not tested for. */
static inline int32_t tt_requant_inline(int32_t acc, int32_t multiplier, int32_t shift)
{
    if (shift > 0) {
        int64_t x = (int64_t)acc * ((int64_t)1 << shift);
        acc = x > INT32_MAX ? INT32_MAX : (x < INT32_MIN ? INT32_MIN : (int32_t)x);
        return (int32_t)(((int64_t)acc * (int64_t)multiplier + (1 << 30)) >> 31);
    }
    return tt_rdbpot((int32_t)(((int64_t)acc * (int64_t)multiplier + (1 << 30)) >> 31), -shift);
}

static inline int8_t tt_clamp(int32_t v, int32_t lo, int32_t hi)
{
    /* Two independent selects: GCC makes them conditional moves, not branches. */
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    return (int8_t)v;
}

/* One side of a fused add: its table's entry, or mul * v + add (wrapping: the generator
 * checked the result against the table for every code). */
static inline int32_t tt_res_side(const int32_t *table, int32_t mul, int32_t add, int32_t v)
{
    return table != 0 ? table[v + 128] : (int32_t)((uint32_t)v * (uint32_t)mul + (uint32_t)add);
}

static inline int8_t tt_fuse(const tt_residual *r, int8_t other, int8_t conv)
{
    if (r == 0) {
        return conv;
    }
    const tt_add_params *a = r->add;
    const int32_t v = tt_requant_inline(tt_res_side(r->t_conv, r->c_mul, r->c_add, conv)
                                            + tt_res_side(r->t_other, r->o_mul, r->o_add, other),
                                        a->out_multiplier, a->out_shift) + a->out_zp;
    return tt_clamp(v, a->act_min, a->act_max);
}

#endif
