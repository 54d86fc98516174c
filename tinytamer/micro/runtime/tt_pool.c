/* Max and average pooling over HWC maps (portable C99; on Cortex-M with the DSP extension
 * the average pool sums 4 channels per SXTAB16 pair). */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

void tt_maxpool_s8(const tt_pool_params *p, const int8_t *in, int8_t *out)
{
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            for (int32_t c = 0; c < p->c; ++c) {
                int32_t best = -129; /* below every int8: padding never wins */
                for (int32_t ky = 0; ky < p->k_h; ++ky) {
                    const int32_t iy = oy * p->stride_h - p->pad_h + ky;
                    if (iy < 0 || iy >= p->in_h) {
                        continue;
                    }
                    for (int32_t kx = 0; kx < p->k_w; ++kx) {
                        const int32_t ix = ox * p->stride_w - p->pad_w + kx;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        const int32_t v = in[(iy * p->in_w + ix) * p->c + c];
                        best = v > best ? v : best;
                    }
                }
                out[(oy * p->out_w + ox) * p->c + c] = (int8_t)best;
            }
        }
    }
}

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#include "tt_dsp.h"

/* Average pool, 4 channels per SXTAB16 pair: the raw int8 window sums gather in int16
 * lanes (|sum| <= 255 * 128 fits for windows of up to 255 values), the zero point comes
 * off once per window; the same sums as the portable loop. */
static void tt_avgpool_s8_simd(const tt_pool_params *p, const int8_t *in, int8_t *out)
{
    const int32_t c_n = p->c, zsum = p->k_h * p->k_w * p->in_zp;
    const int32_t row = p->in_w * c_n;
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            const int8_t *base = in + (oy * p->stride_h * p->in_w + ox * p->stride_w) * c_n;
            int8_t *o = out + (oy * p->out_w + ox) * c_n;
            for (int32_t c = 0; c < c_n; c += 4) {
                int32_t e = 0, d = 0; /* lanes [c0|c2] and [c1|c3] */
                const int8_t *r = base + c;
                for (int32_t ky = 0; ky < p->k_h; ++ky, r += row) {
                    const int8_t *ip = r;
                    for (int32_t kx = 0; kx < p->k_w; ++kx, ip += c_n) {
                        const int32_t v = tt_word(ip);
                        e = __sxtab16(e, v);
                        d = tt_sxtab16_ror8(d, v);
                    }
                }
                const int32_t sum[4] = {(int16_t)e, (int16_t)d, e >> 16, d >> 16};
                for (int32_t j = 0; j < 4; ++j) {
                    const int32_t acc =
                        tt_requant_inline(sum[j] - zsum, p->multiplier, p->shift) + p->out_zp;
                    o[c + j] = tt_clamp(acc, p->act_min, p->act_max);
                }
            }
        }
    }
}
#endif

void tt_avgpool_s8(const tt_pool_params *p, const int8_t *in, int8_t *out)
{
#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
    if ((p->c & 3) == 0 && p->k_h * p->k_w <= 255) {
        tt_avgpool_s8_simd(p, in, out);
        return;
    }
#endif
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            for (int32_t c = 0; c < p->c; ++c) {
                int32_t acc = 0;
                for (int32_t ky = 0; ky < p->k_h; ++ky) {
                    const int32_t iy = oy * p->stride_h + ky;
                    for (int32_t kx = 0; kx < p->k_w; ++kx) {
                        const int32_t ix = ox * p->stride_w + kx;
                        acc += (int32_t)in[(iy * p->in_w + ix) * p->c + c] - p->in_zp;
                    }
                }
                acc = tt_requant_inline(acc, p->multiplier, p->shift) + p->out_zp;
                out[(oy * p->out_w + ox) * p->c + c] = tt_clamp(acc, p->act_min, p->act_max);
            }
        }
    }
}
