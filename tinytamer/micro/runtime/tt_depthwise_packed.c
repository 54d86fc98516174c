/* Depthwise convolution over packed weights (int4, int2, shared).  Portable: per channel,
 * its k_h x k_w row is unpacked once into the arena, then every output pixel of that
 * channel is computed with tt_depthwise_s8's integer arithmetic.  With the DSP extension
 * and a multiple of 4 channels (tt_depthwise_s8_packed_groups): per group of 4 channels,
 * their rows are unpacked once into the SIMD kernel's [k_h][k_w][4] layout and
 * tt_depthwise_s8_group runs the group with the layer's tt_rq records, so the packed weights
 * cost what int8 ones do, less a few cycles per group for the unpacking, and the layer
 * needs no bias / multiplier / shift arrays besides the records. */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
void tt_depthwise_s8_packed_groups(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                                   int8_t *out, int8_t *scratch, const tt_rq *rq)
{
    const int32_t taps = p->k_h * p->k_w;
    int8_t *const row = scratch + 4 * taps;
    for (int32_t c = 0; c < p->in_c; c += 4) {
        for (int32_t k = 0; k < 4; ++k) {
            tt_wpack_row(w, c + k, row);
            for (int32_t t = 0; t < taps; ++t) {
                scratch[4 * t + k] = row[t];
            }
        }
        tt_depthwise_s8_group(p, in, scratch, c, out, rq);
    }
}
#endif

void tt_depthwise_s8_packed(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                            const int32_t *bias, const int32_t *mult, const int32_t *shift,
                            int8_t *out, int8_t *scratch)
{
    const int32_t c_n = p->in_c;
    for (int32_t c = 0; c < c_n; ++c) {
        tt_wpack_row(w, c, scratch);
        for (int32_t oy = 0; oy < p->out_h; ++oy) {
            for (int32_t ox = 0; ox < p->out_w; ++ox) {
                int32_t acc = bias[c];
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
                        acc += ((int32_t)in[(iy * p->in_w + ix) * c_n + c] - p->in_zp)
                               * (int32_t)scratch[ky * p->k_w + kx];
                    }
                }
                acc = tt_requant_inline(acc, mult[c], shift[c]) + p->out_zp;
                out[(oy * p->out_w + ox) * c_n + c] = tt_clamp(acc, p->act_min, p->act_max);
            }
        }
    }
}
