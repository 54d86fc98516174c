/* Convolution (groups 1 or grouped) over packed weights (int4, int2, shared): per output
 * channel, its row is unpacked once into the arena, then every output pixel of that channel
 * is computed with tt_conv2d_s8's integer arithmetic. */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

void tt_conv2d_s8_packed(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                         const int32_t *bias, const int32_t *mult, const int32_t *shift,
                         int8_t *out, int8_t *scratch)
{
    const int32_t icg = p->in_c / p->groups;
    const int32_t ocg = p->out_c / p->groups;
    for (int32_t oc = 0; oc < p->out_c; ++oc) {
        const int32_t g = oc / ocg;
        tt_wpack_row(w, oc, scratch);
        for (int32_t oy = 0; oy < p->out_h; ++oy) {
            for (int32_t ox = 0; ox < p->out_w; ++ox) {
                int32_t acc = bias[oc];
                for (int32_t ky = 0; ky < p->k_h; ++ky) {
                    const int32_t iy = oy * p->stride_h - p->pad_h + ky;
                    if (iy < 0 || iy >= p->in_h) {
                        continue; /* padding holds the zero point: contributes 0 */
                    }
                    for (int32_t kx = 0; kx < p->k_w; ++kx) {
                        const int32_t ix = ox * p->stride_w - p->pad_w + kx;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        const int8_t *ip = in + (iy * p->in_w + ix) * p->in_c + g * icg;
                        const int8_t *wk = scratch + (ky * p->k_w + kx) * icg;
                        for (int32_t ic = 0; ic < icg; ++ic) {
                            acc += ((int32_t)ip[ic] - p->in_zp) * (int32_t)wk[ic];
                        }
                    }
                }
                acc = tt_requant_inline(acc, mult[oc], shift[oc]) + p->out_zp;
                int8_t *o = out + (oy * p->out_w + ox) * p->out_c + oc;
                *o = tt_fuse(p->res, *o, tt_clamp(acc, p->act_min, p->act_max));
            }
        }
    }
}
