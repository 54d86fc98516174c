/* Cortex-M4/M7 int8 kernels with the DSP extension (SXTB16, SXTAB16, SMLAD, SMLABB/SMLATT),
 * through GCC's arm_acle.h.  The arithmetic equals the portable kernels': int32
 * accumulators, (x - zero point) * w products, the same inlined requantization.
 *
 * Lane order: SXTB16 of the int8 word [v0 v1 v2 v3] gives the int16 pair [v0|v2] and of
 * the word rotated by 8 [v1|v3].  Activations (minus their zero point, by SXTAB16) and
 * weights are both unpacked that way, so SMLAD([x0|x2],[w0|w2]) + SMLAD([x1|x3],[w1|w3])
 * is the 4-term dot product with no re-ordering.  Channels are rounded up to a multiple
 * of 4 with zeros (the generator pads the weights the same way). */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>
#include <string.h>

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

static inline int32_t tt_pack_offset(int32_t zp)
{
    return (int32_t)(((uint32_t)(-zp) & 0xFFFFu) | ((uint32_t)(-zp) << 16));
}

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

/* One output pixel's receptive field as kh * kw * icp int16 values (zeros for padding),
 * two words per group of 4 channels; consecutive groups are `step` words apart, so two
 * pixels can share one buffer interleaved (step 4) and be read with one LDM. */
static void tt_im2col(const tt_conv_params *p, const int8_t *in, int32_t pix, int32_t icp,
                      int32_t *col, int32_t step)
{
    const int32_t oy = pix / p->out_w, ox = pix - oy * p->out_w;
    const int32_t off = tt_pack_offset(p->in_zp);
    for (int32_t ky = 0; ky < p->k_h; ++ky) {
        const int32_t iy = oy * p->stride_h - p->pad_h + ky;
        for (int32_t kx = 0; kx < p->k_w; ++kx) {
            const int32_t ix = ox * p->stride_w - p->pad_w + kx;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                for (int32_t c = 0; c < icp; c += 4) {
                    col[0] = 0;
                    col[1] = 0;
                    col += step;
                }
                continue;
            }
            const int8_t *ip = in + (iy * p->in_w + ix) * p->in_c;
            int32_t c = 0;
            for (; c + 4 <= p->in_c; c += 4) {
                const int32_t v = tt_word(ip + c);
                col[0] = __sxtab16(off, v);
                col[1] = tt_sxtab16_ror8(off, v);
                col += step;
            }
            if (c < icp) { /* channels rounded up to 4: the missing ones are zeros */
                int32_t v[4];
                for (int32_t j = 0; j < 4; ++j) {
                    v[j] = c + j < p->in_c ? (int32_t)ip[c + j] - p->in_zp : 0;
                }
                col[0] = (int32_t)(((uint32_t)v[0] & 0xFFFFu) | ((uint32_t)v[2] << 16));
                col[1] = (int32_t)(((uint32_t)v[1] & 0xFFFFu) | ((uint32_t)v[3] << 16));
                col += step;
            }
        }
    }
}

/* The "flat" packing for few input channels: the receptive field's kh * kw * in_c values
 * in (ky, kx, c) order, padded with zeros only at the end to a multiple of 4 (channel
 * packing would pad every position: 4x the work for a 1-channel input). */
static void tt_im2col_flat(const tt_conv_params *p, const int8_t *in, int32_t pix,
                           int32_t *col, int32_t step)
{
    const int32_t oy = pix / p->out_w, ox = pix - oy * p->out_w;
    int32_t v[4];
    int32_t n = 0;
    for (int32_t ky = 0; ky < p->k_h; ++ky) {
        const int32_t iy = oy * p->stride_h - p->pad_h + ky;
        for (int32_t kx = 0; kx < p->k_w; ++kx) {
            const int32_t ix = ox * p->stride_w - p->pad_w + kx;
            const int32_t inside = iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
            const int8_t *ip = in + (iy * p->in_w + ix) * p->in_c;
            for (int32_t c = 0; c < p->in_c; ++c) {
                v[n++] = inside ? (int32_t)ip[c] - p->in_zp : 0;
                if (n == 4) {
                    col[0] = (int32_t)(((uint32_t)v[0] & 0xFFFFu) | ((uint32_t)v[2] << 16));
                    col[1] = (int32_t)(((uint32_t)v[1] & 0xFFFFu) | ((uint32_t)v[3] << 16));
                    col += step;
                    n = 0;
                }
            }
        }
    }
    if (n > 0) {
        for (; n < 4; ++n) {
            v[n] = 0;
        }
        col[0] = (int32_t)(((uint32_t)v[0] & 0xFFFFu) | ((uint32_t)v[2] << 16));
        col[1] = (int32_t)(((uint32_t)v[1] & 0xFFFFu) | ((uint32_t)v[3] << 16));
    }
}

static inline int8_t tt_out(int32_t acc, const int32_t *mult, const int32_t *shift, int32_t oc,
                            const tt_conv_params *p)
{
    return tt_clamp(tt_requant_inline(acc, mult[oc], shift[oc]) + p->out_zp, p->act_min,
                    p->act_max);
}

/* One step of the 2 x 2 (channels x pixels) inner product: 16 MACs.  The empty asm with a
 * memory clobber keeps the second pixel's loads after the first pixel's MACs, so the live
 * values (4 accumulators, 4 unpacked weights, 2 activations, 3 pointers) fit the 14
 * registers without spilling. */
#define TT_STEP_2X2(c, wp)                                                              \
    do {                                                                                \
        const int32_t va = (wp)[0], vb = (wp)[1];                                       \
        const int32_t ae = __sxtb16(va), ao = tt_sxtb16_ror8(va);                       \
        const int32_t be = __sxtb16(vb), bo = tt_sxtb16_ror8(vb);                       \
        int32_t x0 = (c)[0], x1 = (c)[1];                                               \
        a00 = __smlad(x0, ae, a00);                                                     \
        a00 = __smlad(x1, ao, a00);                                                     \
        a10 = __smlad(x0, be, a10);                                                     \
        a10 = __smlad(x1, bo, a10);                                                     \
        __asm__ volatile("" ::: "memory");                                              \
        x0 = (c)[2];                                                                    \
        x1 = (c)[3];                                                                    \
        a01 = __smlad(x0, ae, a01);                                                     \
        a01 = __smlad(x1, ao, a01);                                                     \
        a11 = __smlad(x0, be, a11);                                                     \
        a11 = __smlad(x1, bo, a11);                                                     \
        (c) += 4;                                                                       \
        (wp) += 2;                                                                      \
    } while (0)

void tt_conv2d_s8_dsp(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                      const int32_t *bias, const int32_t *mult, const int32_t *shift,
                      int8_t *out, int16_t *scratch, int32_t cols, int32_t flat)
{
    /* w: int8 weights packed in words, [k_h][k_w][icp] per output channel (flat: the
     * kh * kw * in_c values padded at the end to a multiple of 4); channel pairs
     * (oc, oc + 1) interleaved word by word so one LDRD fetches both (an odd last channel
     * follows plain).  With cols == 2 two output pixels share the im2col buffer. */
    const int32_t icp = (p->in_c + 3) & ~3;
    const int32_t k4 = flat ? (p->k_h * p->k_w * p->in_c + 3) / 4 : p->k_h * p->k_w * icp / 4;
    const int32_t n_pix = p->out_h * p->out_w;
    int32_t *col = (int32_t *)(void *)scratch;
    const int32_t *const col_end = col + (cols == 2 ? 4 : 2) * k4;
    int32_t pix = 0;
    for (; cols == 2 && pix + 1 < n_pix; pix += 2) {
        if (flat) {
            tt_im2col_flat(p, in, pix, col, 4);
            tt_im2col_flat(p, in, pix + 1, col + 2, 4);
        } else {
            tt_im2col(p, in, pix, icp, col, 4);
            tt_im2col(p, in, pix + 1, icp, col + 2, 4);
        }
        int8_t *o0 = out + pix * p->out_c;
        int8_t *o1 = o0 + p->out_c;
        int32_t oc = 0;
        for (; oc + 1 < p->out_c; oc += 2) {
            const int32_t *wp = w + oc * k4;
            int32_t a00 = bias[oc], a01 = bias[oc], a10 = bias[oc + 1], a11 = bias[oc + 1];
            const int32_t *c = col;
            if (k4 & 1) {
                TT_STEP_2X2(c, wp);
            }
            while (c < col_end) { /* unrolled twice: the loop overhead is paid per 32 MACs */
                TT_STEP_2X2(c, wp);
                TT_STEP_2X2(c, wp);
            }
            o0[oc] = tt_fuse(p->res, o0[oc], tt_out(a00, mult, shift, oc, p));
            o1[oc] = tt_fuse(p->res, o1[oc], tt_out(a01, mult, shift, oc, p));
            o0[oc + 1] = tt_fuse(p->res, o0[oc + 1], tt_out(a10, mult, shift, oc + 1, p));
            o1[oc + 1] = tt_fuse(p->res, o1[oc + 1], tt_out(a11, mult, shift, oc + 1, p));
        }
        if (oc < p->out_c) {
            const int32_t *wp = w + oc * k4;
            int32_t a0 = bias[oc], a1 = bias[oc];
            for (const int32_t *c = col; c < col_end; c += 4) {
                const int32_t v = *wp++;
                const int32_t we = __sxtb16(v), wo = tt_sxtb16_ror8(v);
                a0 = __smlad(c[1], wo, __smlad(c[0], we, a0));
                a1 = __smlad(c[3], wo, __smlad(c[2], we, a1));
            }
            o0[oc] = tt_fuse(p->res, o0[oc], tt_out(a0, mult, shift, oc, p));
            o1[oc] = tt_fuse(p->res, o1[oc], tt_out(a1, mult, shift, oc, p));
        }
    }
    for (; pix < n_pix; ++pix) {
        if (flat) {
            tt_im2col_flat(p, in, pix, col, 2);
        } else {
            tt_im2col(p, in, pix, icp, col, 2);
        }
        const int32_t *const end = col + 2 * k4;
        int8_t *o0 = out + pix * p->out_c;
        int32_t oc = 0;
        for (; oc + 1 < p->out_c; oc += 2) {
            const int32_t *wp = w + oc * k4;
            int32_t a0 = bias[oc], a1 = bias[oc + 1];
            for (const int32_t *c = col; c < end; c += 2) {
                const int32_t va = wp[0], vb = wp[1];
                const int32_t x0 = c[0], x1 = c[1];
                a0 = __smlad(x1, tt_sxtb16_ror8(va), __smlad(x0, __sxtb16(va), a0));
                a1 = __smlad(x1, tt_sxtb16_ror8(vb), __smlad(x0, __sxtb16(vb), a1));
                wp += 2;
            }
            o0[oc] = tt_fuse(p->res, o0[oc], tt_out(a0, mult, shift, oc, p));
            o0[oc + 1] = tt_fuse(p->res, o0[oc + 1], tt_out(a1, mult, shift, oc + 1, p));
        }
        if (oc < p->out_c) {
            const int32_t *wp = w + oc * k4;
            int32_t a0 = bias[oc];
            for (const int32_t *c = col; c < end; c += 2) {
                const int32_t v = *wp++;
                a0 = __smlad(c[1], tt_sxtb16_ror8(v), __smlad(c[0], __sxtb16(v), a0));
            }
            o0[oc] = tt_fuse(p->res, o0[oc], tt_out(a0, mult, shift, oc, p));
        }
    }
}

void tt_depthwise_s8_dsp(const tt_conv_params *p, const int8_t *in, const int8_t *w,
                         const int32_t *bias, const int32_t *mult, const int32_t *shift,
                         int8_t *out)
{
    /* w is [k_h][k_w][C]; C is a multiple of 4; four channels accumulate in registers. */
    const int32_t c_n = p->in_c;
    const int32_t off = tt_pack_offset(p->in_zp);
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        const int32_t y0 = oy * p->stride_h - p->pad_h;
        const int32_t ky0 = y0 < 0 ? -y0 : 0;
        const int32_t ky1 = y0 + p->k_h > p->in_h ? p->in_h - y0 : p->k_h;
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            const int32_t x0 = ox * p->stride_w - p->pad_w;
            const int32_t kx0 = x0 < 0 ? -x0 : 0;
            const int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
            int8_t *o = out + (oy * p->out_w + ox) * c_n;
            /* The clipped window, walked with pointer steps (no index arithmetic inside). */
            const int8_t *win_in = in + ((y0 + ky0) * p->in_w + x0 + kx0) * c_n;
            const int8_t *win_w = w + (ky0 * p->k_w + kx0) * c_n;
            const int32_t row_in = p->in_w * c_n, row_w = p->k_w * c_n;
            const int32_t nky = ky1 - ky0, nkx = kx1 - kx0;
            for (int32_t c = 0; c < c_n; c += 4) {
                int32_t a0 = bias[c], a1 = bias[c + 1], a2 = bias[c + 2], a3 = bias[c + 3];
                const int8_t *ip_row = win_in + c;
                const int8_t *wp_row = win_w + c;
                for (int32_t ky = 0; ky < nky; ++ky) {
                    const int8_t *ip = ip_row;
                    const int8_t *wp = wp_row;
                    for (int32_t kx = 0; kx < nkx; ++kx) {
                        const int32_t x = tt_word(ip);
                        const int32_t v = tt_word(wp);
                        const int32_t xe = __sxtab16(off, x), xo = tt_sxtab16_ror8(off, x);
                        const int32_t we = __sxtb16(v), wo = tt_sxtb16_ror8(v);
                        a0 = __smlabb(xe, we, a0);
                        a2 = __smlatt(xe, we, a2);
                        a1 = __smlabb(xo, wo, a1);
                        a3 = __smlatt(xo, wo, a3);
                        ip += c_n;
                        wp += c_n;
                    }
                    ip_row += row_in;
                    wp_row += row_w;
                }
                o[c] = tt_out(a0, mult, shift, c, p);
                o[c + 1] = tt_out(a1, mult, shift, c + 1, p);
                o[c + 2] = tt_out(a2, mult, shift, c + 2, p);
                o[c + 3] = tt_out(a3, mult, shift, c + 3, p);
            }
        }
    }
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
