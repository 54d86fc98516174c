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

static inline void tt_store_word(int8_t *p, int32_t v)
{
    memcpy(p, &v, 4); /* one STR, as tt_word */
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

/* SaturatingRoundingDoublingHighMul, RoundingDivideByPOT and the zero point of a record in
 * the single-multiply form (m, e, f) in four instructions.  SMMULR(2 acc, m) = floor((2 acc
 * m + 2^31) / 2^32) = floor((acc m + 2^30) / 2^31), SRDHM's value t, when 2 acc fits in
 * int32 (the generator bounds |acc| < 2^30); (t + 2^(e-1) - [t < 0]) >> e rounds half away
 * from zero for e >= 1 (the generator requires e >= 1); adding out_zp * 2^e before the
 * shift adds out_zp after it.  SMMLAR adds that offset f to the product in the same
 * instruction, and the sign term comes from the sum instead of t: they differ only where t
 * rounds to 0 from a negative sum, and there (f - 1) >> e = f >> e (f = 2^(e-1) + zp 2^e,
 * or a constant channel's 2v + 1 with e = 1). */
static inline int32_t tt_smmulr(int32_t a, int32_t b)
{
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

static inline int32_t tt_rq_fast(int32_t acc, int32_t m, int32_t e, int32_t f)
{
    const int32_t a2 = (int32_t)((uint32_t)acc << 1);
    int32_t t;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(t) : "r"(a2), "r"(m), "r"(f));
    return (t + (a2 >> 31)) >> e;
}

static inline int32_t tt_rq_apply(int32_t acc, const tt_rq *r)
{
    return tt_rq_fast(acc, r->mult, r->rshift, r->offset);
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

/* The output stage of the "mm" kernels (tt_conv.c) and of tt_winograd.c: requantization,
 * clamps and a fused residual add, by the layer's mode (tt_mm_mode). */

/* Mode 4's fused add: both sides by table or affine form (tt_res_side), the sum in the
 * single-multiply form where the generator proved it exact, else the general one. */
static inline int8_t tt_fuse_mm(const tt_residual *res, int8_t other, int8_t conv)
{
    if (res->rq == 0) {
        return tt_fuse(res, other, conv);
    }
    return tt_rq_out(tt_res_side(res->t_conv, res->c_mul, res->c_add, conv)
                         + tt_res_side(res->t_other, res->o_mul, res->o_add, other),
                     res->rq, res->add->act_min, res->add->act_max);
}

/* Requantize, clamp and store the 2 x 2 block of outputs of channels r[0], r[1].  `mode`
 * (fixed per layer by tt_mm_mode): 0 the clamp is the whole int8 range (one SSAT); 1 a
 * narrower activation range; 2 a fused residual add whose sum is requantized in
 * single-multiply form too, the conv's side rescaled by its affine form and the other by
 * its table, both clamps the whole int8 range; 3 the same with narrower clamps; 5 and 6
 * as 2 and 3 with the sides mirrored (the conv's side by its table, the other's affine);
 * 4 a fused add in any other form (tt_fuse).  Each channel's constants are loaded once
 * for its two pixels. */
static inline __attribute__((always_inline)) void
tt_mm_out4(int32_t mode, const tt_conv_params *p, const tt_rq *r, int8_t *o0, int8_t *o1,
           int32_t a00, int32_t a01, int32_t a10, int32_t a11)
{
    const int32_t m0 = r[0].mult, e0 = r[0].rshift, f0 = r[0].offset;
    const int32_t m1 = r[1].mult, e1 = r[1].rshift, f1 = r[1].offset;
    /* A channel in the general form (rare: see tt_rq_chan) leaves the straight-line path. */
    if (__builtin_expect(e0 == TT_RQ_GENERAL, 0)) {
        a00 = tt_rq_general(a00, r);
        a01 = tt_rq_general(a01, r);
    } else {
        a00 = tt_rq_fast(a00, m0, e0, f0);
        a01 = tt_rq_fast(a01, m0, e0, f0);
    }
    if (__builtin_expect(e1 == TT_RQ_GENERAL, 0)) {
        a10 = tt_rq_general(a10, r + 1);
        a11 = tt_rq_general(a11, r + 1);
    } else {
        a10 = tt_rq_fast(a10, m1, e1, f1);
        a11 = tt_rq_fast(a11, m1, e1, f1);
    }
    if (mode == 0 || mode == 2 || mode == 5) {
        a00 = __ssat(a00, 8);
        a01 = __ssat(a01, 8);
        a10 = __ssat(a10, 8);
        a11 = __ssat(a11, 8);
    } else {
        const int32_t lo = p->act_min, hi = p->act_max;
        a00 = tt_clamp(a00, lo, hi);
        a01 = tt_clamp(a01, lo, hi);
        a10 = tt_clamp(a10, lo, hi);
        a11 = tt_clamp(a11, lo, hi);
    }
    if (mode < 2) {
        o0[0] = (int8_t)a00;
        o1[0] = (int8_t)a01;
        o0[1] = (int8_t)a10;
        o1[1] = (int8_t)a11;
        return;
    }
    const tt_residual *res = p->res;
    if (mode == 4) {
        o0[0] = tt_fuse_mm(res, o0[0], (int8_t)a00);
        o1[0] = tt_fuse_mm(res, o1[0], (int8_t)a01);
        o0[1] = tt_fuse_mm(res, o0[1], (int8_t)a10);
        o1[1] = tt_fuse_mm(res, o1[1], (int8_t)a11);
        return;
    }
    const tt_rq *q = res->rq;
    if (mode >= 5) {
        const uint32_t om = (uint32_t)res->o_mul, oa = (uint32_t)res->o_add;
        const int32_t *tc = res->t_conv + 128;
        a00 = tt_rq_apply(tc[a00] + (int32_t)((uint32_t)o0[0] * om + oa), q);
        a01 = tt_rq_apply(tc[a01] + (int32_t)((uint32_t)o1[0] * om + oa), q);
        a10 = tt_rq_apply(tc[a10] + (int32_t)((uint32_t)o0[1] * om + oa), q);
        a11 = tt_rq_apply(tc[a11] + (int32_t)((uint32_t)o1[1] * om + oa), q);
    } else {
        const uint32_t cm = (uint32_t)res->c_mul, ca = (uint32_t)res->c_add;
        const int32_t *to = res->t_other + 128;
        a00 = tt_rq_apply((int32_t)((uint32_t)a00 * cm + ca) + to[o0[0]], q);
        a01 = tt_rq_apply((int32_t)((uint32_t)a01 * cm + ca) + to[o1[0]], q);
        a10 = tt_rq_apply((int32_t)((uint32_t)a10 * cm + ca) + to[o0[1]], q);
        a11 = tt_rq_apply((int32_t)((uint32_t)a11 * cm + ca) + to[o1[1]], q);
    }
    if (mode == 2 || mode == 5) {
        o0[0] = (int8_t)__ssat(a00, 8);
        o1[0] = (int8_t)__ssat(a01, 8);
        o0[1] = (int8_t)__ssat(a10, 8);
        o1[1] = (int8_t)__ssat(a11, 8);
    } else {
        const int32_t lo = res->add->act_min, hi = res->add->act_max;
        o0[0] = tt_clamp(a00, lo, hi);
        o1[0] = tt_clamp(a01, lo, hi);
        o0[1] = tt_clamp(a10, lo, hi);
        o1[1] = tt_clamp(a11, lo, hi);
    }
}

static inline int32_t tt_mm_mode(const tt_conv_params *p)
{
    const int32_t full = p->act_min == -128 && p->act_max == 127;
    const tt_residual *res = p->res;
    if (res == 0) {
        return full ? 0 : 1;
    }
    if (res->rq == 0 || (res->t_conv == 0) == (res->t_other == 0)) {
        return 4; /* the fast modes take one side affine and the other from its table */
    }
    const int32_t both = full && res->add->act_min == -128 && res->add->act_max == 127;
    if (res->t_conv != 0) {
        return both ? 5 : 6;
    }
    return both ? 2 : 3;
}

/* One output through the same modes (the odd channel and odd pixel paths).  Out of line:
 * inlined at each of a kernel's edge paths it nearly doubled the quads blocks' code. */
static __attribute__((noinline, unused)) void
tt_mm_out1(int32_t mode, const tt_conv_params *p, const tt_rq *r, int8_t *o,
                       int32_t acc)
{
    const int8_t v = tt_rq_out(acc, r, p->act_min, p->act_max);
    const tt_residual *res = p->res;
    if (mode < 2) {
        *o = v;
    } else {
        *o = tt_fuse_mm(res, *o, v);
    }
}

#endif
