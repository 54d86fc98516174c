/* Fully connected: the portable tt_dense_s8 and, on Cortex-M with the DSP extension,
 * tt_dense_s8_dsp (input unpacked once to int16, 2 rows per SMLAD pass). */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

void tt_dense_s8(const tt_dense_params *p, const int8_t *in, const int8_t *w,
                 const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out)
{
    for (int32_t o = 0; o < p->out_n; ++o) {
        const int8_t *wo = w + o * p->in_n;
        int32_t acc = bias[o];
        for (int32_t i = 0; i < p->in_n; ++i) {
            acc += ((int32_t)in[i] - p->in_zp) * (int32_t)wo[i];
        }
        acc = tt_requant_inline(acc, mult[o], shift[o]) + p->out_zp;
        out[o] = tt_clamp(acc, p->act_min, p->act_max);
    }
}

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#include "tt_dsp.h"

/* Unpack `n4` groups of 4 int8 (minus the zero point) into int16 pairs [v0|v2], [v1|v3]. */
static inline int32_t *tt_unpack(const int8_t *src, int32_t n4, int32_t off, int32_t *dst)
{
    for (int32_t i = 0; i < n4; ++i) {
        const int32_t v = tt_word(src + 4 * i);
        dst[0] = __sxtab16(off, v);
        dst[1] = tt_sxtab16_ror8(off, v);
        dst += 2;
    }
    return dst;
}

/* The same for a run of `n` (< 4 remaining or unaligned) values padded with zeros to `np`. */
static int32_t *tt_unpack_tail(const int8_t *src, int32_t n, int32_t np, int32_t zp,
                               int32_t *dst)
{
    for (int32_t c = 0; c < np; c += 4) {
        int32_t v[4];
        for (int32_t j = 0; j < 4; ++j) {
            v[j] = c + j < n ? (int32_t)src[c + j] - zp : 0;
        }
        dst[0] = (int32_t)(((uint32_t)v[0] & 0xFFFFu) | ((uint32_t)v[2] << 16));
        dst[1] = (int32_t)(((uint32_t)v[1] & 0xFFFFu) | ((uint32_t)v[3] << 16));
        dst += 2;
    }
    return dst;
}

void tt_dense_s8_dsp(const tt_dense_params *p, const int8_t *in, const int8_t *w,
                     const int32_t *bias, const int32_t *mult, const int32_t *shift,
                     int8_t *out, int16_t *scratch)
{
    /* w is [out_n][inp], rows padded with zeros to inp = in_n rounded up to 4. */
    const int32_t inp = (p->in_n + 3) & ~3;
    const int32_t k4 = inp / 4;
    int32_t *x = (int32_t *)(void *)scratch;
    const int32_t head = p->in_n & ~3;
    int32_t *end = tt_unpack(in, head / 4, tt_pack_offset(p->in_zp), x);
    tt_unpack_tail(in + head, p->in_n - head, inp - head, p->in_zp, end);
    int32_t o = 0;
    for (; o + 1 < p->out_n; o += 2) {
        const int8_t *wa = w + o * inp;
        const int8_t *wb = wa + inp;
        int32_t a0 = bias[o], a1 = bias[o + 1];
        for (int32_t k = 0; k < k4; ++k) {
            const int32_t xe = x[2 * k], xo = x[2 * k + 1];
            int32_t v = tt_word(wa + 4 * k);
            a0 = __smlad(xo, tt_sxtb16_ror8(v), __smlad(xe, __sxtb16(v), a0));
            v = tt_word(wb + 4 * k);
            a1 = __smlad(xo, tt_sxtb16_ror8(v), __smlad(xe, __sxtb16(v), a1));
        }
        out[o] = tt_clamp(tt_requant_inline(a0, mult[o], shift[o]) + p->out_zp, p->act_min,
                          p->act_max);
        out[o + 1] = tt_clamp(tt_requant_inline(a1, mult[o + 1], shift[o + 1]) + p->out_zp,
                              p->act_min, p->act_max);
    }
    for (; o < p->out_n; ++o) {
        const int8_t *wa = w + o * inp;
        int32_t a0 = bias[o];
        for (int32_t k = 0; k < k4; ++k) {
            const int32_t v = tt_word(wa + 4 * k);
            a0 = __smlad(x[2 * k + 1], tt_sxtb16_ror8(v), __smlad(x[2 * k], __sxtb16(v), a0));
        }
        out[o] = tt_clamp(tt_requant_inline(a0, mult[o], shift[o]) + p->out_zp, p->act_min,
                          p->act_max);
    }
}

#endif
