/* Max and average pooling over HWC maps (portable C99). */
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

void tt_avgpool_s8(const tt_pool_params *p, const int8_t *in, int8_t *out)
{
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
