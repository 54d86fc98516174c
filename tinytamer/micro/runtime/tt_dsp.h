/* Helpers shared by the Cortex-M4/M7 DSP kernel variants (SXTB16, SXTAB16, SMLAD,
 * SMLABB/SMLATT through GCC's arm_acle.h).  The arithmetic equals the portable kernels':
 * int32 accumulators, (x - zero point) * w products, the same inlined requantization.
 *
 * Lane order: SXTB16 of the int8 word [v0 v1 v2 v3] gives the int16 pair [v0|v2] and of
 * the word rotated by 8 [v1|v3].  Activations (minus their zero point, by SXTAB16) and
 * weights are both unpacked that way, so SMLAD([x0|x2],[w0|w2]) + SMLAD([x1|x3],[w1|w3])
 * is the 4-term dot product with no re-ordering.  Channels are rounded up to a multiple
 * of 4 with zeros (the generator pads the weights the same way).
 *
 * Included only where __ARM_FEATURE_DSP and __ARM_FEATURE_SIMD32 are set. */
#ifndef TT_DSP_H
#define TT_DSP_H

#include <arm_acle.h>
#include <string.h>

#include "tt_kernels.h"
#include "tt_fixedpoint.h"

static inline int32_t tt_word(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4); /* one LDR: the Cortex-M4/M7 allow unaligned word loads */
    return v;
}

/* SXTB16 / SXTAB16 with the operand rotated by 8 (one instruction, as the ISA allows). */
static inline int32_t tt_sxtb16_ror8(int32_t x)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

static inline int32_t tt_sxtab16_ror8(int32_t a, int32_t x)
{
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}

static inline int32_t tt_smmulr(int32_t a, int32_t b)
{
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* SaturatingRoundingDoublingHighMul, RoundingDivideByPOT and the zero point in four
 * instructions.  SMMULR(2 acc, m) = floor((2 acc m + 2^31) / 2^32) = floor((acc m + 2^30) /
 * 2^31), SRDHM's value, when 2 acc fits in int32 (the generator bounds |acc| < 2^30);
 * (t + 2^(e-1) - [t < 0]) >> e rounds half away from zero for e >= 1 (the generator
 * requires e >= 1); adding out_zp * 2^e before the shift adds out_zp after it. */
static inline int32_t tt_rq_apply(int32_t acc, const tt_rq *r)
{
    const int32_t t = tt_smmulr((int32_t)((uint32_t)acc << 1), r->mult);
    return (t + r->offset + (t >> 31)) >> r->rshift;
}

/* A channel marked TT_RQ_GENERAL (a multiplier of 0.5 or more, or one too small for the
 * offset: tinytamer/micro/fixedpoint.py fast_records): the general form, its shift and zero
 * point packed in offset. */
static inline int32_t tt_rq_general(int32_t acc, const tt_rq *r)
{
    return tt_requant_inline(acc, r->mult, r->offset >> 8) + (int8_t)(uint8_t)r->offset;
}

/* One channel's requantization, whichever form its record holds. */
static inline int32_t tt_rq_chan(int32_t acc, const tt_rq *r)
{
    if (__builtin_expect(r->rshift == TT_RQ_GENERAL, 0)) {
        return tt_rq_general(acc, r);
    }
    return tt_rq_apply(acc, r);
}

static inline int8_t tt_rq_out(int32_t acc, const tt_rq *r, int32_t lo, int32_t hi)
{
    return tt_clamp(tt_rq_chan(acc, r), lo, hi);
}

static inline int32_t tt_pack_offset(int32_t zp)
{
    return (int32_t)(((uint32_t)(-zp) & 0xFFFFu) | ((uint32_t)(-zp) << 16));
}

static inline int8_t tt_out(int32_t acc, const int32_t *mult, const int32_t *shift, int32_t oc,
                            const tt_conv_params *p)
{
    return tt_clamp(tt_requant_inline(acc, mult[oc], shift[oc]) + p->out_zp, p->act_min,
                    p->act_max);
}

#endif
