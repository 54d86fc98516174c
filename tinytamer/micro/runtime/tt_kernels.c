/* Portable C99 int8 kernels (see tt_kernels.h).  The arithmetic is the oracle's:
 * tinytamer/micro/fixedpoint.py and reference.py compute the same values in numpy. */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

int32_t tt_requant(int32_t acc, int32_t multiplier, int32_t shift)
{
    /* The general form, any multiplier (the kernels use tt_requant_inline). */
    int32_t left = shift > 0 ? shift : 0;
    int64_t x = (int64_t)acc * ((int64_t)1 << left);
    acc = x > INT32_MAX ? INT32_MAX : (x < INT32_MIN ? INT32_MIN : (int32_t)x);
    return tt_rdbpot(tt_srdhm(acc, multiplier), shift > 0 ? 0 : -shift);
}

void tt_conv2d_s8(const tt_conv_params *p, const int8_t *in, const int8_t *w,
                  const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out)
{
    const int32_t icg = p->in_c / p->groups;
    const int32_t ocg = p->out_c / p->groups;
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            for (int32_t oc = 0; oc < p->out_c; ++oc) {
                const int32_t g = oc / ocg;
                const int8_t *wo = w + oc * p->k_h * p->k_w * icg;
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
                        const int8_t *wk = wo + (ky * p->k_w + kx) * icg;
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

void tt_depthwise_s8(const tt_conv_params *p, const int8_t *in, const int8_t *w,
                     const int32_t *bias, const int32_t *mult, const int32_t *shift,
                     int8_t *out)
{
    const int32_t c_n = p->in_c;
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            for (int32_t c = 0; c < c_n; ++c) {
                const int8_t *wc = w + c * p->k_h * p->k_w;
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
                               * (int32_t)wc[ky * p->k_w + kx];
                    }
                }
                acc = tt_requant_inline(acc, mult[c], shift[c]) + p->out_zp;
                out[(oy * p->out_w + ox) * c_n + c] = tt_clamp(acc, p->act_min, p->act_max);
            }
        }
    }
}

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

void tt_add_s8(const tt_add_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    /* Element i is read before it is written, so `out` may alias `a` or `b`. */
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t sa = tt_requant_inline(((int32_t)a[i] - p->in1_zp) * (1 << p->left_shift),
                                      p->in1_multiplier, p->in1_shift);
        const int32_t sb = tt_requant_inline(((int32_t)b[i] - p->in2_zp) * (1 << p->left_shift),
                                      p->in2_multiplier, p->in2_shift);
        const int32_t v = tt_requant_inline(sa + sb, p->out_multiplier, p->out_shift) + p->out_zp;
        out[i] = tt_clamp(v, p->act_min, p->act_max);
    }
}

void tt_add_s8_lut(const tt_add_params *p, const int8_t *a, const int8_t *b, int8_t *out,
                   const int32_t *ta, const int32_t *tb)
{
    /* ta/tb[v + 128] hold each input's rescaled value (tt_add_s8's sa, sb) for code v. */
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t v = tt_requant_inline(ta[a[i] + 128] + tb[b[i] + 128], p->out_multiplier,
                                            p->out_shift) + p->out_zp;
        out[i] = tt_clamp(v, p->act_min, p->act_max);
    }
}

void tt_softmax_s8(const tt_softmax_params *p, const int8_t *in, int8_t *out,
                   const int32_t *table)
{
    /* table[d] = round(2^30 exp(-in_scale d)) for d = max - x: the probabilities are
     * table[d] / sum; times multiplier / 2^16 = 1 / out_scale, rounded half up. */
    int32_t mx = -128;
    for (int32_t i = 0; i < p->n; ++i) {
        mx = in[i] > mx ? in[i] : mx;
    }
    uint64_t sum = 0;
    for (int32_t i = 0; i < p->n; ++i) {
        sum += (uint32_t)table[mx - in[i]];
    }
    const uint64_t den = sum << 16;
    for (int32_t i = 0; i < p->n; ++i) {
        const uint64_t num = (uint64_t)(uint32_t)table[mx - in[i]] * (uint32_t)p->multiplier;
        const int32_t q = (int32_t)((num + (den >> 1)) / den) + p->out_zp;
        out[i] = tt_clamp(q, p->act_min, p->act_max);
    }
}
