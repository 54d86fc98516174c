/* Convolution (groups 1 or grouped): the portable tt_conv2d_s8 and, on Cortex-M with the
 * DSP extension, tt_conv2d_s8_dsp (im2col + compiler-scheduled SMLAD), tt_conv2d_s8_mm and
 * its two-channel-word successors tt_conv2d_s8_mx and tt_conv2d_s8_qx (the default; see
 * their sections below).
 *
 * tt_conv2d_s8_mm (used where its requantization is provably exact) is the CMSIS-NN arm_nn_mat_mult_kernel_s8_s16 idea - 2 output channels x 2 pixels per pass,
 * each unpacked value used twice - with the inner loop scheduled by hand for the Cortex-M4
 * TRM's timings (consecutive loads pipeline), optionally int16 weights pre-expanded in
 * flash, and SRDHM + RoundingDivideByPOT folded into one SMMULR and three ALU operations.
 * Both DSP variants share one im2col, so they stay in this one file. */
#include <stddef.h>

#include "tt_kernels.h"
#include "tt_fixedpoint.h"

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

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#include "tt_dsp.h"

/* One output pixel's receptive field as kh * kw * icp int16 values (zeros for padding),
 * two words per group of 4 channels, the second `odd` words after the first; consecutive
 * groups are `step` words apart, so two or three pixels can share one buffer interleaved. */
static void tt_im2col(const tt_conv_params *p, const int8_t *in, int32_t pix, int32_t icp,
                      int32_t *col, int32_t step, int32_t odd)
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
                    col[odd] = 0;
                    col += step;
                }
                continue;
            }
            const int8_t *ip = in + (iy * p->in_w + ix) * p->in_c;
            int32_t c = 0;
            for (; c + 4 <= p->in_c; c += 4) {
                const int32_t v = tt_word(ip + c);
                col[0] = __sxtab16(off, v);
                col[odd] = tt_sxtab16_ror8(off, v);
                col += step;
            }
            if (c < icp) { /* channels rounded up to 4: the missing ones are zeros */
                int32_t v[4];
                for (int32_t j = 0; j < 4; ++j) {
                    v[j] = c + j < p->in_c ? (int32_t)ip[c + j] - p->in_zp : 0;
                }
                col[0] = (int32_t)(((uint32_t)v[0] & 0xFFFFu) | ((uint32_t)v[2] << 16));
                col[odd] = (int32_t)(((uint32_t)v[1] & 0xFFFFu) | ((uint32_t)v[3] << 16));
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
            tt_im2col(p, in, pix, icp, col, 4, 1);
            tt_im2col(p, in, pix + 1, icp, col + 2, 4, 1);
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
            tt_im2col(p, in, pix, icp, col, 2, 1);
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

/* ------------------------------------------------------------------ the "mm" convolution
 * The same im2col layout and weight packing as tt_conv2d_s8_dsp; what differs is the inner
 * product (hand-scheduled below) and the requantization (tt_rq_apply). */

/* Unpack `n` words of int8 (minus the zero point) into the pixel-pair column layout (two
 * words per group, groups 4 words apart), four words per pass: the loads, the SXTAB16s and
 * the stores each run back to back (27 cycles per 4 words by the TRM). */
static inline int32_t *tt_unpack_run(const int8_t *ip, int32_t n, int32_t off, int32_t *col)
{
    const int8_t *const end4 = ip + 4 * (n & ~3);
    if (ip != end4) {
        int32_t v0, v1, v2, v3, e0, e1, e2, e3;
        __asm__ volatile("1:\n\t"
                         "ldr %[v0], [%[ip]], #4\n\t"
                         "ldr %[v1], [%[ip]], #4\n\t"
                         "ldr %[v2], [%[ip]], #4\n\t"
                         "ldr %[v3], [%[ip]], #4\n\t"
                         "sxtab16 %[e0], %[off], %[v0]\n\t"
                         "sxtab16 %[v0], %[off], %[v0], ror #8\n\t"
                         "sxtab16 %[e1], %[off], %[v1]\n\t"
                         "sxtab16 %[v1], %[off], %[v1], ror #8\n\t"
                         "sxtab16 %[e2], %[off], %[v2]\n\t"
                         "sxtab16 %[v2], %[off], %[v2], ror #8\n\t"
                         "sxtab16 %[e3], %[off], %[v3]\n\t"
                         "sxtab16 %[v3], %[off], %[v3], ror #8\n\t"
                         "str %[e0], [%[col]]\n\t"
                         "str %[v0], [%[col], #4]\n\t"
                         "str %[e1], [%[col], #16]\n\t"
                         "str %[v1], [%[col], #20]\n\t"
                         "str %[e2], [%[col], #32]\n\t"
                         "str %[v2], [%[col], #36]\n\t"
                         "str %[e3], [%[col], #48]\n\t"
                         "str %[v3], [%[col], #52]\n\t"
                         "add %[col], %[col], #64\n\t"
                         "cmp %[ip], %[end]\n\t"
                         "bne 1b\n\t"
                         : [ip] "+r"(ip), [col] "+r"(col), [v0] "=&r"(v0), [v1] "=&r"(v1),
                           [v2] "=&r"(v2), [v3] "=&r"(v3), [e0] "=&r"(e0), [e1] "=&r"(e1),
                           [e2] "=&r"(e2), [e3] "=&r"(e3)
                         : [off] "r"(off), [end] "r"(end4)
                         : "cc", "memory");
    }
    for (int32_t i = n & 3; i > 0; --i) {
        const int32_t v = tt_word(ip);
        ip += 4;
        col[0] = __sxtab16(off, v);
        col[1] = tt_sxtab16_ror8(off, v);
        col += 4;
    }
    return col;
}

/* `n` groups of zeros in a column layout (groups `step` words apart, words `odd` apart). */
static inline int32_t *tt_zero_run(int32_t n, int32_t *col, int32_t step, int32_t odd)
{
    for (int32_t i = 0; i < n; ++i) {
        col[0] = 0;
        col[odd] = 0;
        col += step;
    }
    return col;
}

/* tt_im2col for in_c a multiple of 4 and the pixel-pair layout: the in-range kx positions
 * of a kernel row are one contiguous run of HWC memory, unpacked without a bounds test per
 * position. */
static void tt_im2col_rows(const tt_conv_params *p, const int8_t *in, int32_t oy, int32_t ox,
                           int32_t *col)
{
    const int32_t off = tt_pack_offset(p->in_zp);
    const int32_t c4 = p->in_c >> 2;
    const int32_t x0 = ox * p->stride_w - p->pad_w;
    const int32_t kx0 = x0 < 0 ? -x0 : 0;
    int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
    kx1 = kx1 < kx0 ? kx0 : kx1;
    const int32_t before = kx0 * c4, run = (kx1 - kx0) * c4, row = p->k_w * c4;
    const int32_t after = row - before - run;
    const int32_t row_bytes = p->in_w * p->in_c;
    int32_t iy = oy * p->stride_h - p->pad_h;
    const int8_t *ip = in + (iy * p->in_w + x0 + kx0) * p->in_c;
    for (int32_t ky = 0; ky < p->k_h; ++ky, ++iy, ip += row_bytes) {
        if (iy < 0 || iy >= p->in_h) {
            col = tt_zero_run(row, col, 4, 1);
            continue;
        }
        col = tt_zero_run(before, col, 4, 1);
        col = tt_unpack_run(ip, run, off, col);
        col = tt_zero_run(after, col, 4, 1);
    }
}

/* The "flat" packing for the mm kernel: the receptive field in (ky, kx, c) order as int16
 * in natural order, zero padded to 4 * k4 values in `tmp`, then copied two words per group
 * into the column buffer (groups `step` words apart, the second word `odd` after the
 * first).  The generator orders the weights to match ([w0 w2 w1 w3] bytes per int8 word,
 * so SXTB16 gives [w0|w1] and ROR 8 [w2|w3]). */
static void tt_im2col_flat_nat(const tt_conv_params *p, const int8_t *in, int32_t oy,
                               int32_t ox, int32_t k4, int16_t *tmp, int32_t *col, int32_t step,
                               int32_t odd)
{
    const int32_t c_n = p->in_c, zp = p->in_zp;
    const int32_t x0 = ox * p->stride_w - p->pad_w;
    const int32_t kx0 = x0 < 0 ? -x0 : 0;
    int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
    kx1 = kx1 < kx0 ? kx0 : kx1;
    const int32_t before = kx0 * c_n, run = (kx1 - kx0) * c_n, row = p->k_w * c_n;
    const int32_t after = row - before - run;
    int16_t *t = tmp;
    int32_t iy = oy * p->stride_h - p->pad_h;
    for (int32_t ky = 0; ky < p->k_h; ++ky, ++iy) {
        if (iy < 0 || iy >= p->in_h) {
            for (int32_t i = 0; i < row; ++i) {
                *t++ = 0;
            }
            continue;
        }
        for (int32_t i = 0; i < before; ++i) {
            *t++ = 0;
        }
        const int8_t *ip = in + (iy * p->in_w + x0 + kx0) * c_n;
        for (int32_t i = 0; i < run; ++i) {
            *t++ = (int16_t)(ip[i] - zp);
        }
        for (int32_t i = 0; i < after; ++i) {
            *t++ = 0;
        }
    }
    while (t < tmp + 4 * k4) {
        *t++ = 0;
    }
    const int32_t *src = (const int32_t *)(const void *)tmp;
    for (int32_t g = 0; g < k4; ++g) {
        col[0] = src[0];
        col[odd] = src[1];
        src += 2;
        col += step;
    }
}

/* One group of 4 inputs for 2 channels x 2 pixels (16 MACs): the two weight words and the
 * first pixel's two column words are loaded back to back (the TRM pipelines consecutive
 * loads), each weight word is unpacked once and used for both pixels.  20 cycles by the
 * Cortex-M4 TRM, against 25 for the compiler's schedule of the same C. */
#define TT_MM_STEP                                  \
    "ldr %[va], [%[wp]], #4\n\t"                    \
    "ldr %[vb], [%[wp]], #4\n\t"                    \
    "ldr %[x0], [%[cp]], #4\n\t"                    \
    "ldr %[x1], [%[cp]], #4\n\t"                    \
    "sxtb16 %[ae], %[va]\n\t"                       \
    "sxtb16 %[va], %[va], ror #8\n\t"               \
    "sxtb16 %[be], %[vb]\n\t"                       \
    "sxtb16 %[vb], %[vb], ror #8\n\t"               \
    "smlad %[a00], %[x0], %[ae], %[a00]\n\t"        \
    "smlad %[a00], %[x1], %[va], %[a00]\n\t"        \
    "smlad %[a10], %[x0], %[be], %[a10]\n\t"        \
    "smlad %[a10], %[x1], %[vb], %[a10]\n\t"        \
    "ldr %[x0], [%[cp]], #4\n\t"                    \
    "ldr %[x1], [%[cp]], #4\n\t"                    \
    "smlad %[a01], %[x0], %[ae], %[a01]\n\t"        \
    "smlad %[a01], %[x1], %[va], %[a01]\n\t"        \
    "smlad %[a11], %[x0], %[be], %[a11]\n\t"        \
    "smlad %[a11], %[x1], %[vb], %[a11]\n\t"

/* The same with the weights pre-expanded to int16 pairs in flash ([A even | A odd | B even |
 * B odd] per group): no SXTB16, two more words in the first load run; 18 cycles. */
#define TT_MM_STEP_X                                \
    "ldr %[ae], [%[wp]], #4\n\t"                    \
    "ldr %[va], [%[wp]], #4\n\t"                    \
    "ldr %[be], [%[wp]], #4\n\t"                    \
    "ldr %[vb], [%[wp]], #4\n\t"                    \
    "ldr %[x0], [%[cp]], #4\n\t"                    \
    "ldr %[x1], [%[cp]], #4\n\t"                    \
    "smlad %[a00], %[x0], %[ae], %[a00]\n\t"        \
    "smlad %[a00], %[x1], %[va], %[a00]\n\t"        \
    "smlad %[a10], %[x0], %[be], %[a10]\n\t"        \
    "smlad %[a10], %[x1], %[vb], %[a10]\n\t"        \
    "ldr %[x0], [%[cp]], #4\n\t"                    \
    "ldr %[x1], [%[cp]], #4\n\t"                    \
    "smlad %[a01], %[x0], %[ae], %[a01]\n\t"        \
    "smlad %[a01], %[x1], %[va], %[a01]\n\t"        \
    "smlad %[a11], %[x0], %[be], %[a11]\n\t"        \
    "smlad %[a11], %[x1], %[vb], %[a11]\n\t"

#define TT_MM_OPERANDS                                                                    \
    [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [cp] "+r"(c),    \
    [wp] "+r"(wp), [va] "=&r"(va), [vb] "=&r"(vb), [ae] "=&r"(ae), [be] "=&r"(be),       \
    [x0] "=&r"(x0), [x1] "=&r"(x1)


/* All output channels of one pixel pair whose im2col columns are in `col`; `mode` as for
 * tt_mm_out4. */
static inline __attribute__((always_inline)) void
tt_mm_pair(const tt_conv_params *p, const int32_t *w, const tt_rq *rq, int8_t *o0,
           const int32_t *col, const int32_t *col_end, int32_t head, int32_t unroll,
           int32_t wexp, int32_t mode)
{
    const int32_t out_c = p->out_c;
    int8_t *o1 = o0 + out_c;
    const int32_t *wp = w;
    int32_t oc = 0;
    for (; oc + 1 < out_c; oc += 2) {
        const tt_rq *r0 = rq + oc;
        int32_t a00 = r0[0].bias, a01 = a00, a10 = r0[1].bias, a11 = a10;
        int32_t va, vb, ae, be, x0, x1;
        const int32_t *c = col;
        if (wexp) {
            for (int32_t h = 0; h < head; ++h) {
                __asm__ volatile(TT_MM_STEP_X : TT_MM_OPERANDS : : "memory");
            }
            if (c != col_end && unroll == 4) {
                __asm__ volatile("1:\n\t" TT_MM_STEP_X TT_MM_STEP_X TT_MM_STEP_X TT_MM_STEP_X
                                 "cmp %[cp], %[end]\n\t"
                                 "bne 1b\n\t"
                                 : TT_MM_OPERANDS : [end] "r"(col_end) : "cc", "memory");
            } else if (c != col_end) {
                __asm__ volatile("1:\n\t" TT_MM_STEP_X TT_MM_STEP_X
                                 "cmp %[cp], %[end]\n\t"
                                 "bne 1b\n\t"
                                 : TT_MM_OPERANDS : [end] "r"(col_end) : "cc", "memory");
            }
        } else {
            for (int32_t h = 0; h < head; ++h) {
                __asm__ volatile(TT_MM_STEP : TT_MM_OPERANDS : : "memory");
            }
            if (c != col_end && unroll == 4) {
                __asm__ volatile("1:\n\t" TT_MM_STEP TT_MM_STEP TT_MM_STEP TT_MM_STEP
                                 "cmp %[cp], %[end]\n\t"
                                 "bne 1b\n\t"
                                 : TT_MM_OPERANDS : [end] "r"(col_end) : "cc", "memory");
            } else if (c != col_end) {
                __asm__ volatile("1:\n\t" TT_MM_STEP TT_MM_STEP
                                 "cmp %[cp], %[end]\n\t"
                                 "bne 1b\n\t"
                                 : TT_MM_OPERANDS : [end] "r"(col_end) : "cc", "memory");
            }
        }
        tt_mm_out4(mode, p, r0, o0 + oc, o1 + oc, a00, a01, a10, a11);
    }
    if (oc < out_c) { /* an odd last channel: its weights follow plain */
        int32_t a0 = rq[oc].bias, a1 = a0;
        for (const int32_t *c = col; c < col_end; c += 4) {
            int32_t we, wo;
            if (wexp) {
                we = wp[0];
                wo = wp[1];
                wp += 2;
            } else {
                const int32_t v = *wp++;
                we = __sxtb16(v);
                wo = tt_sxtb16_ror8(v);
            }
            a0 = __smlad(c[1], wo, __smlad(c[0], we, a0));
            a1 = __smlad(c[3], wo, __smlad(c[2], we, a1));
        }
        tt_mm_out1(mode, p, rq + oc, o0 + oc, a0);
        tt_mm_out1(mode, p, rq + oc, o1 + oc, a1);
    }
}

void tt_conv2d_s8_mm(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                     const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                     int32_t unroll, int32_t wexp)
{
    const int32_t icp = (p->in_c + 3) & ~3;
    const int32_t k4 = flat ? (p->k_h * p->k_w * p->in_c + 3) / 4 : p->k_h * p->k_w * icp / 4;
    const int32_t head = unroll == 4 ? (k4 & 3) : (k4 & 1);
    const int32_t n_pix = p->out_h * p->out_w, out_c = p->out_c;
    int32_t *col = (int32_t *)(void *)scratch;
    const int32_t *const col_end = col + 4 * k4;
    int16_t *tmp = (int16_t *)(void *)(col + 4 * k4); /* flat: the natural-order field */
    const int32_t mode = tt_mm_mode(p);
    int32_t pix = 0, oy = 0, ox = 0; /* (oy, ox) of pixel `pix`, kept without division */
    for (; pix + 1 < n_pix; pix += 2) {
        int32_t oy1 = oy, ox1 = ox + 1;
        if (ox1 == p->out_w) {
            ox1 = 0;
            ++oy1;
        }
        if (flat) {
            tt_im2col_flat_nat(p, in, oy, ox, k4, tmp, col, 4, 1);
            tt_im2col_flat_nat(p, in, oy1, ox1, k4, tmp, col + 2, 4, 1);
        } else if ((p->in_c & 3) == 0) {
            tt_im2col_rows(p, in, oy, ox, col);
            tt_im2col_rows(p, in, oy1, ox1, col + 2);
        } else {
            tt_im2col(p, in, pix, icp, col, 4, 1);
            tt_im2col(p, in, pix + 1, icp, col + 2, 4, 1);
        }
        oy = oy1;
        ox = ox1 + 1;
        if (ox == p->out_w) {
            ox = 0;
            ++oy;
        }
        int8_t *o = out + pix * out_c;
        switch (mode) { /* one instance per mode: the output code has no tests in it */
        case 0:
            tt_mm_pair(p, w, rq, o, col, col_end, head, unroll, wexp, 0);
            break;
        case 1:
            tt_mm_pair(p, w, rq, o, col, col_end, head, unroll, wexp, 1);
            break;
        case 2:
            tt_mm_pair(p, w, rq, o, col, col_end, head, unroll, wexp, 2);
            break;
        case 3:
            tt_mm_pair(p, w, rq, o, col, col_end, head, unroll, wexp, 3);
            break;
        default:
            tt_mm_pair(p, w, rq, o, col, col_end, head, unroll, wexp, 4);
            break;
        }
    }
    if (pix < n_pix) { /* an odd last pixel */
        if (flat) {
            tt_im2col_flat_nat(p, in, oy, ox, k4, tmp, col, 2, 1);
        } else {
            tt_im2col(p, in, pix, icp, col, 2, 1);
        }
        const int32_t *const end = col + 2 * k4;
        int8_t *o0 = out + pix * out_c;
        const int32_t step = wexp ? 2 : 1; /* words per channel and group of 4 inputs */
        int32_t oc = 0;
        for (; oc < out_c; ++oc) {
            /* Weights of channel pair (oc & ~1) interleave per group; an odd last one is plain. */
            const int32_t pair = oc + 1 < out_c || (oc & 1);
            const int32_t *wc = w + (oc & ~1) * k4 * step + ((oc & 1) ? step : 0);
            const int32_t stride = pair ? 2 * step : step;
            int32_t a0 = rq[oc].bias;
            for (const int32_t *c = col; c < end; c += 2) {
                int32_t we, wo;
                if (wexp) {
                    we = wc[0];
                    wo = wc[1];
                } else {
                    we = __sxtb16(wc[0]);
                    wo = tt_sxtb16_ror8(wc[0]);
                }
                a0 = __smlad(c[1], wo, __smlad(c[0], we, a0));
                wc += stride;
            }
            tt_mm_out1(mode, p, rq + oc, o0 + oc, a0);
        }
    }
}

/* ------------------------------------------------------------- the "pairs" convolution
 * tt_conv2d_s8_mx: 2 output channels x 3 output pixels per pass, with both channels'
 * int8 weights in one word, so the inner loop unpacks nothing for one of them.
 *
 * Word j of a channel pair (A, B) holds the bytes [A_lo + 128, B_lo, A_hi + 128, B_hi] for
 * the two inputs (lo, hi) of column word j.  Read as two int16 lanes it is
 * [256 B_lo + A_lo + 128 | 256 B_hi + A_hi + 128] (the low byte counts unsigned), so
 *   S = sum SMLAD(x, word)                   = sum x A + 128 sum x + 256 sum x B
 *   T = sum SMLAD(x, SXTB16(word ROR 8))     = sum x B
 * and A's accumulator is S - 256 T - 128 sum x: exact in wrapping int32 arithmetic, since
 * the true value fits (the generator bounds it).  sum x is one figure per pixel, shared by
 * every channel pair.  Per 2 inputs x 2 channels x 3 pixels: 4 loads, 6 SMLADs and one
 * SXTB16, 12 cycles for 12 MACs by the Cortex-M4 TRM, and the weights take the int8
 * layout's flash. */

/* The unpacking pass of tt_mx_unpack for a column layout whose group's two words are ODD
 * words apart and groups STEP words apart (literal numbers: the store offsets are
 * immediates): four words per pass, the loads, SXTAB16s, stores and the sum's SADD16s
 * each back to back. */
#define TT_UNPACK_SUM(ODD, STEP)                                                           \
    __asm__ volatile("1:\n\t"                                                             \
                     "ldr %[v0], [%[ip]], #4\n\t"                                         \
                     "ldr %[v1], [%[ip]], #4\n\t"                                         \
                     "ldr %[v2], [%[ip]], #4\n\t"                                         \
                     "ldr %[v3], [%[ip]], #4\n\t"                                         \
                     "sxtab16 %[e0], %[off], %[v0]\n\t"                                   \
                     "sxtab16 %[v0], %[off], %[v0], ror #8\n\t"                           \
                     "sxtab16 %[e1], %[off], %[v1]\n\t"                                   \
                     "sxtab16 %[v1], %[off], %[v1], ror #8\n\t"                           \
                     "sxtab16 %[e2], %[off], %[v2]\n\t"                                   \
                     "sxtab16 %[v2], %[off], %[v2], ror #8\n\t"                           \
                     "sxtab16 %[e3], %[off], %[v3]\n\t"                                   \
                     "sxtab16 %[v3], %[off], %[v3], ror #8\n\t"                           \
                     "str %[e0], [%[col]]\n\t"                                            \
                     "str %[v0], [%[col], %[o0]]\n\t"                                     \
                     "str %[e1], [%[col], %[g1]]\n\t"                                     \
                     "str %[v1], [%[col], %[o1]]\n\t"                                     \
                     "str %[e2], [%[col], %[g2]]\n\t"                                     \
                     "str %[v2], [%[col], %[o2]]\n\t"                                     \
                     "str %[e3], [%[col], %[g3]]\n\t"                                     \
                     "str %[v3], [%[col], %[o3]]\n\t"                                     \
                     "sadd16 %[acc], %[acc], %[e0]\n\t"                                   \
                     "sadd16 %[acc], %[acc], %[v0]\n\t"                                   \
                     "sadd16 %[acc], %[acc], %[e1]\n\t"                                   \
                     "sadd16 %[acc], %[acc], %[v1]\n\t"                                   \
                     "sadd16 %[acc], %[acc], %[e2]\n\t"                                   \
                     "sadd16 %[acc], %[acc], %[v2]\n\t"                                   \
                     "sadd16 %[acc], %[acc], %[e3]\n\t"                                   \
                     "sadd16 %[acc], %[acc], %[v3]\n\t"                                   \
                     "add %[col], %[col], %[g4]\n\t"                                      \
                     "cmp %[ip], %[end]\n\t"                                              \
                     "bne 1b\n\t"                                                         \
                     : [ip] "+r"(ip), [col] "+r"(col), [acc] "+r"(acc), [v0] "=&r"(v0),   \
                       [v1] "=&r"(v1), [v2] "=&r"(v2), [v3] "=&r"(v3), [e0] "=&r"(e0),    \
                       [e1] "=&r"(e1), [e2] "=&r"(e2), [e3] "=&r"(e3)                     \
                     : [off] "r"(off), [end] "r"(end4), [o0] "i"(4 * (ODD)),              \
                       [g1] "i"(4 * (STEP)), [o1] "i"(4 * ((STEP) + (ODD))),              \
                       [g2] "i"(8 * (STEP)), [o2] "i"(4 * (2 * (STEP) + (ODD))),          \
                       [g3] "i"(12 * (STEP)), [o3] "i"(4 * (3 * (STEP) + (ODD))),         \
                       [g4] "i"(16 * (STEP))                                              \
                     : "cc", "memory")

/* Unpack `n` words of int8 (minus the zero point) into the pixel-triple layout (`triple`:
 * a group's two words 3 words apart, groups 6 apart) or the pixel-pair layout of
 * tt_conv2d_s8_qx (2 and 4 apart), and add their sum to *sum.  The sum gathers in two
 * int16 lanes, folded into *sum every 60 words at most (120 values of |x - zp| <= 255 per
 * lane fit). */
static inline int32_t *tt_mx_unpack(const int8_t *ip, int32_t n, int32_t off, int32_t *col,
                                    int32_t *sum, int32_t triple)
{
    while (n >= 4) {
        const int32_t m = (n & ~3) < 60 ? (n & ~3) : 60;
        const int8_t *const end4 = ip + 4 * m;
        int32_t v0, v1, v2, v3, e0, e1, e2, e3, acc = 0;
        if (triple) {
            TT_UNPACK_SUM(3, 6);
        } else {
            TT_UNPACK_SUM(2, 4);
        }
        *sum = __smlad(acc, 0x00010001, *sum);
        n -= m;
    }
    const int32_t odd = triple ? 3 : 2, step = triple ? 6 : 4;
    for (; n > 0; --n) {
        const int32_t v = tt_word(ip);
        ip += 4;
        col[0] = __sxtab16(off, v);
        col[odd] = tt_sxtab16_ror8(off, v);
        *sum = __smlad(col[odd], 0x00010001, __smlad(col[0], 0x00010001, *sum));
        col += step;
    }
    return col;
}

/* Half a pass of the pixel-pair builders' runs: input words 2H and 2H + 1 of the pass
 * unpacked (TT_UNPACK_HALF_LOAD), stored at D (byte offsets: the group of word j at 16 j, its
 * odd word 8 further), their sum added to ACC.  TT_UNPACK1_HALF: one pixel's lanes;
 * TT_UNPACK2_HALF: the shared run, each word stored in both pixels' lanes (d0 and d1). */
#define TT_UNPACK_HALF_LOAD                                                                \
    "ldr %[v0], [%[ip]], #4\n\t"                                                          \
    "ldr %[v1], [%[ip]], #4\n\t"                                                          \
    "sxtab16 %[e0], %[off], %[v0]\n\t"                                                    \
    "sxtab16 %[v0], %[off], %[v0], ror #8\n\t"                                            \
    "sxtab16 %[e1], %[off], %[v1]\n\t"                                                    \
    "sxtab16 %[v1], %[off], %[v1], ror #8\n\t"
#define TT_UNPACK_HALF_STORE(D, H)                                                         \
    "str %[e0], [%[" #D "], #32 * " #H "]\n\t"                                            \
    "str %[v0], [%[" #D "], #32 * " #H " + 8]\n\t"                                        \
    "str %[e1], [%[" #D "], #32 * " #H " + 16]\n\t"                                       \
    "str %[v1], [%[" #D "], #32 * " #H " + 24]\n\t"
#define TT_UNPACK_HALF_SUM(ACC)                                                            \
    "sadd16 %[" #ACC "], %[" #ACC "], %[e0]\n\t"                                          \
    "sadd16 %[" #ACC "], %[" #ACC "], %[v0]\n\t"                                          \
    "sadd16 %[" #ACC "], %[" #ACC "], %[e1]\n\t"                                          \
    "sadd16 %[" #ACC "], %[" #ACC "], %[v1]\n\t"
#define TT_UNPACK1_HALF(D, ACC, H) TT_UNPACK_HALF_LOAD TT_UNPACK_HALF_STORE(D, H) TT_UNPACK_HALF_SUM(ACC)
#define TT_UNPACK2_HALF(ACC, H)                                                            \
    TT_UNPACK_HALF_LOAD TT_UNPACK_HALF_STORE(d0, H) TT_UNPACK_HALF_STORE(d1, H) TT_UNPACK_HALF_SUM(ACC)

/* The pixel-pair builders' loops over whole passes (label L): pixel 0's own run, the shared
 * run, pixel 1's own run; and the operands their asm shares. */
#define TT_PAIR_RUN1(L, D, ACC)                                                            \
    #L ":\n\t" TT_UNPACK1_HALF(D, ACC, 0) TT_UNPACK1_HALF(D, ACC, 1)                      \
    "add %[" #D "], %[" #D "], #64\n\t"                                                   \
    "cmp %[ip], %[end]\n\t"                                                               \
    "bne " #L "b\n"
#define TT_PAIR_RUN2(L)                                                                    \
    #L ":\n\t" TT_UNPACK2_HALF(acc0, 0) TT_UNPACK2_HALF(acc0, 1)                           \
    "add %[d0], %[d0], #64\n\t"                                                           \
    "add %[d1], %[d1], #64\n\t"                                                           \
    "cmp %[ip], %[end]\n\t"                                                               \
    "bne " #L "b\n"
#define TT_PAIR_OPERANDS                                                                   \
    : [ip] "+r"(ip), [d0] "+r"(d0), [d1] "+r"(d1), [end] "+r"(end), [acc0] "+r"(acc0),     \
      [acc1] "=&r"(acc1), [v0] "=&r"(v0), [v1] "=&r"(v1), [e0] "=&r"(e0), [e1] "=&r"(e1)   \
    : [off] "r"(off), [es] "m"(end_shared), [er] "m"(end_row)                              \
    : "cc", "memory"

/* One input word of tt_qx_pair_edge's runs whose length is not a multiple of 16 bytes: into
 * the lanes at D (DUAL: and at d1 too), its sum added to ACC. */
#define TT_UNPACK_WORD(D, ACC, DUAL)                                                       \
    "ldr %[v0], [%[ip]], #4\n\t"                                                          \
    "sxtab16 %[e0], %[off], %[v0]\n\t"                                                    \
    "sxtab16 %[v0], %[off], %[v0], ror #8\n\t"                                            \
    "str %[e0], [%[" #D "]]\n\t"                                                          \
    "str %[v0], [%[" #D "], #8]\n\t" DUAL                                                 \
    "sadd16 %[" #ACC "], %[" #ACC "], %[e0]\n\t"                                          \
    "sadd16 %[" #ACC "], %[" #ACC "], %[v0]\n\t"                                          \
    "add %[" #D "], %[" #D "], #16\n\t"
#define TT_UNPACK_WORD_D1                                                                  \
    "str %[e0], [%[d1]]\n\t"                                                              \
    "str %[v0], [%[d1], #8]\n\t"                                                          \
    "add %[d1], %[d1], #16\n\t"
/* A run's words past a multiple of 16 bytes before the end, one by one (label L), then
 * on to label N. */
#define TT_RUN_HEAD(L, N, WORD)                                                            \
    #L ":\n\t"                                                                            \
    "sub %[v0], %[end], %[ip]\n\t"                                                        \
    "tst %[v0], #15\n\t"                                                                  \
    "beq " #N "f\n\t" WORD "b " #L "b\n"                                                  \
    #N ":\n\t"

#if defined(__OPTIMIZE__)
/* The columns of both pixels of a pair (tt_qx_run: adjacent pixels of one output row whose
 * windows overlap) whose windows lie inside the input, in a layer whose in_c is a multiple of
 * 16 and whose kernel row holds at most 60 words (a pixel's lane sums fit int16): per kernel
 * row one asm block of three runs, pixel 0's own pixels into its lanes, the shared ones into
 * both pixels' lanes (one unpacking and one sum for the two), pixel 1's own into its lanes.
 * A 3 x 3 stride-1 pair unpacks 4 input pixels per row instead of 6.  `ip`: the first row's
 * span.  The runs' ends are read from the stack: eleven registers.  Returns pixel 0's field
 * sum, pixel 1's in *s1. */
static __attribute__((noinline)) int32_t tt_qx_pair_in(const int8_t *ip, const tt_conv_params *p,
                                                       int32_t *col, int32_t *s1)
{
    int32_t *d0 = col, *d1 = col + 1, a = 0, b = 0, ky = p->k_h;
    /* a kernel row's two windows: each one's own stride_w pixels, the k_w - stride_w shared */
    const int32_t c = p->in_c, own = p->stride_w * c, shared = p->k_w * c - own;
    const int32_t skip = p->in_w * c - own - shared - own, off = tt_pack_offset(p->in_zp);
    const int8_t *end;
    int32_t v0, v1, e0, e1, acc0, acc1;
    /* Every kernel row in one asm block (label 9), each run's end from its length (ip is at
     * the run's start), the rows' lane sums folded into a and b after each row. */
    __asm__ volatile("9:\n\t"
                     "ldr %[end], %[own]\n\t"
                     "add %[end], %[ip], %[end]\n\t"
                     "mov %[acc0], #0\n"
                     TT_PAIR_RUN1(1, d0, acc0)
                     "mov %[acc1], %[acc0]\n\t" /* pixel 0's own sum, for now */
                     "ldr %[end], %[shared]\n\t"
                     "add %[end], %[ip], %[end]\n"
                     TT_PAIR_RUN2(2)
                     "ssub16 %[acc1], %[acc0], %[acc1]\n\t" /* the shared pixels' sum */
                     "ldr %[end], %[own]\n\t"
                     "add %[end], %[ip], %[end]\n"
                     TT_PAIR_RUN1(4, d1, acc1)
                     "mov %[v0], #0x10001\n\t"
                     "smlad %[a], %[acc0], %[v0], %[a]\n\t"
                     "smlad %[b], %[acc1], %[v0], %[b]\n\t"
                     "ldr %[v0], %[skip]\n\t"
                     "add %[ip], %[ip], %[v0]\n\t"
                     "ldr %[v0], %[ky]\n\t"
                     "subs %[v0], %[v0], #1\n\t"
                     "str %[v0], %[ky]\n\t"
                     "bne 9b\n\t"
                     : [ip] "+r"(ip), [d0] "+r"(d0), [d1] "+r"(d1), [end] "=&r"(end),
                       [acc0] "=&r"(acc0), [acc1] "=&r"(acc1), [v0] "=&r"(v0), [v1] "=&r"(v1),
                       [e0] "=&r"(e0), [e1] "=&r"(e1), [a] "+r"(a), [b] "+r"(b), [ky] "+m"(ky)
                     : [off] "r"(off), [own] "m"(own), [shared] "m"(shared), [skip] "m"(skip)
                     : "cc", "memory");
    *s1 = b;
    return a;
}

/* tt_qx_pair_in for a pair whose windows reach into the padding (windows at x0, x0 +
 * stride_w of input row y0), or for any pair of a layer whose in_c is a multiple of 4 but not
 * of 16: padding rows as zeros, and up to stride_w padding pixels at either end of a row's
 * span (pixel 0's own on the left, pixel 1's on the right; tt_qx_run sends wider padding
 * elsewhere) as zero lanes around the same three runs, either one-pixel run possibly empty;
 * each run's words past a multiple of 16 bytes one by one, then whole passes. */
static __attribute__((noinline)) int32_t tt_qx_pair_edge(const int8_t *in, const tt_conv_params *p,
                                                         int32_t x0, int32_t y0, int32_t *col,
                                                         int32_t *s1)
{
    const int32_t c = p->in_c, off = tt_pack_offset(p->in_zp), in_w = p->in_w;
    const int32_t own = p->stride_w * c, shared = p->k_w * c - own, span = p->k_w + p->stride_w;
    const int32_t row_words = p->k_w * c; /* a kernel row of both pixels' columns */
    const int32_t zl = x0 < 0 ? -x0 : 0, zr = x0 + span > in_w ? x0 + span - in_w : 0;
    const int32_t run_a = own - zl * c, run_c = own - zr * c;
    int32_t a = 0, b = 0;
    for (int32_t ky = 0, iy = y0; ky < p->k_h; ++ky, ++iy, col += row_words) {
        if ((uint32_t)iy >= (uint32_t)p->in_h) {
            for (int32_t i = 0; i < row_words; ++i) {
                col[i] = 0;
            }
            continue;
        }
        const int8_t *ip = in + (iy * in_w + x0 + zl) * c;
        int32_t *d0 = tt_zero_run(zl * c >> 2, col, 4, 2), *d1 = col + 1;
        const int8_t *const end_shared = ip + run_a + shared, *const end_row = end_shared + run_c;
        const int8_t *end = ip + run_a;
        int32_t v0, v1, e0, e1, acc0 = 0, acc1;
        __asm__ volatile(TT_RUN_HEAD(7, 8, TT_UNPACK_WORD(d0, acc0, ""))
                         "cmp %[ip], %[end]\n\t"
                         "beq 5f\n"
                         TT_PAIR_RUN1(1, d0, acc0)
                         "5:\n\t"
                         "mov %[acc1], %[acc0]\n\t"
                         "ldr %[end], %[es]\n\t"
                         TT_RUN_HEAD(9, 10, TT_UNPACK_WORD(d0, acc0, TT_UNPACK_WORD_D1))
                         "cmp %[ip], %[end]\n\t"
                         "beq 11f\n"
                         TT_PAIR_RUN2(2)
                         "11:\n\t"
                         "ssub16 %[acc1], %[acc0], %[acc1]\n\t"
                         "ldr %[end], %[er]\n\t"
                         TT_RUN_HEAD(12, 13, TT_UNPACK_WORD(d1, acc1, ""))
                         "cmp %[ip], %[end]\n\t"
                         "beq 6f\n"
                         TT_PAIR_RUN1(4, d1, acc1)
                         "6:\n\t"
                         TT_PAIR_OPERANDS);
        tt_zero_run(zr * c >> 2, d1, 4, 2);
        a = __smlad(acc0, 0x00010001, a);
        b = __smlad(acc1, 0x00010001, b);
    }
    *s1 = b;
    return a;
}

/* tt_conv_params.pairs: named in a layer's parameters only where the generator found its
 * pairs of pixels sharing input (ops/conv.py, quads_pairs), so that an image whose layers
 * have none links neither builder. */
struct tt_qx_pair_fns {
    int32_t (*inside)(const int8_t *ip, const tt_conv_params *p, int32_t *col, int32_t *s1);
    int32_t (*edge)(const int8_t *in, const tt_conv_params *p, int32_t x0, int32_t y0, int32_t *col,
                    int32_t *s1);
};
const struct tt_qx_pair_fns tt_qx_pairs = {tt_qx_pair_in, tt_qx_pair_edge};
#else
struct tt_qx_pair_fns {
    int32_t unused; /* unoptimised builds: no pair builders (their asm needs the registers) */
};
const struct tt_qx_pair_fns tt_qx_pairs = {0};
#endif

/* tt_im2col_rows into the pixel-triple layout of tt_conv2d_s8_mx (a group's words 3 apart,
 * groups 6 apart); returns the receptive field's sum.  Out of line: a small stack frame. */
static __attribute__((noinline)) int32_t tt_mx_rows3(const tt_conv_params *p, const int8_t *in,
                                                     int32_t oy, int32_t ox, int32_t *col)
{
    const int32_t odd = 3, step = 6;
    const int32_t off = tt_pack_offset(p->in_zp);
    const int32_t c4 = p->in_c >> 2;
    const int32_t x0 = ox * p->stride_w - p->pad_w;
    const int32_t kx0 = x0 < 0 ? -x0 : 0;
    int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
    kx1 = kx1 < kx0 ? kx0 : kx1;
    const int32_t before = kx0 * c4, run = (kx1 - kx0) * c4, row = p->k_w * c4;
    const int32_t after = row - before - run;
    const int32_t row_bytes = p->in_w * p->in_c;
    int32_t iy = oy * p->stride_h - p->pad_h;
    const int8_t *ip = in + (iy * p->in_w + x0 + kx0) * p->in_c;
    int32_t sum = 0;
    for (int32_t ky = 0; ky < p->k_h; ++ky, ++iy, ip += row_bytes) {
        if (iy < 0 || iy >= p->in_h) {
            col = tt_zero_run(row, col, step, odd);
            continue;
        }
        col = tt_zero_run(before, col, step, odd);
        col = tt_mx_unpack(ip, run, off, col, &sum, 1);
        col = tt_zero_run(after, col, step, odd);
    }
    return sum;
}


/* tt_im2col_flat_nat into a column layout (a group's words `odd` apart, groups `step`
 * apart); returns the receptive field's sum. */
static int32_t tt_mx_flat(const tt_conv_params *p, const int8_t *in, int32_t oy, int32_t ox,
                          int32_t k4, int16_t *tmp, int32_t *col, int32_t odd, int32_t step)
{
    const int32_t c_n = p->in_c, zp = p->in_zp;
    const int32_t x0 = ox * p->stride_w - p->pad_w;
    const int32_t kx0 = x0 < 0 ? -x0 : 0;
    int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
    kx1 = kx1 < kx0 ? kx0 : kx1;
    const int32_t before = kx0 * c_n, run = (kx1 - kx0) * c_n, row = p->k_w * c_n;
    const int32_t after = row - before - run;
    int16_t *t = tmp;
    int32_t sum = 0;
    int32_t iy = oy * p->stride_h - p->pad_h;
    for (int32_t ky = 0; ky < p->k_h; ++ky, ++iy) {
        if (iy < 0 || iy >= p->in_h) {
            for (int32_t i = 0; i < row; ++i) {
                *t++ = 0;
            }
            continue;
        }
        for (int32_t i = 0; i < before; ++i) {
            *t++ = 0;
        }
        const int8_t *ip = in + (iy * p->in_w + x0 + kx0) * c_n;
#pragma GCC unroll 4
        for (int32_t i = 0; i < run; ++i) {
            const int32_t v = ip[i] - zp;
            sum += v;
            *t++ = (int16_t)v;
        }
        for (int32_t i = 0; i < after; ++i) {
            *t++ = 0;
        }
    }
    while (t < tmp + 4 * k4) {
        *t++ = 0;
    }
    const int32_t *src = (const int32_t *)(const void *)tmp;
    for (int32_t g = 0; g < k4; ++g) {
        col[0] = src[0];
        col[odd] = src[1];
        src += 2;
        col += step;
    }
    return sum;
}

#define TT_MX_STEP                                  \
    "ldr %[v], [%[wp]], #4\n\t"                     \
    "ldr %[x0], [%[cp]], #4\n\t"                    \
    "ldr %[x1], [%[cp]], #4\n\t"                    \
    "ldr %[x2], [%[cp]], #4\n\t"                    \
    "smlad %[a0], %[x0], %[v], %[a0]\n\t"           \
    "smlad %[a1], %[x1], %[v], %[a1]\n\t"           \
    "smlad %[a2], %[x2], %[v], %[a2]\n\t"           \
    "sxtb16 %[v], %[v], ror #8\n\t"                 \
    "smlad %[b0], %[x0], %[v], %[b0]\n\t"           \
    "smlad %[b1], %[x1], %[v], %[b1]\n\t"           \
    "smlad %[b2], %[x2], %[v], %[b2]\n\t"

#define TT_MX_STEP4 TT_MX_STEP TT_MX_STEP TT_MX_STEP TT_MX_STEP

#define TT_MX_OPERANDS                                                                     \
    [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [b0] "+r"(b0), [b1] "+r"(b1),             \
    [b2] "+r"(b2), [cp] "+r"(c), [wp] "+r"(wp), [v] "+&r"(v), [x0] "=&r"(x0),              \
    [x1] "=&r"(x1), [x2] "=&r"(x2)

/* A channel in the general form (rare: see tt_rq_chan), out of line: inlined, its 64-bit
 * arithmetic would repeat at every output of every block instance, in flash. */
static __attribute__((noinline, cold)) int32_t tt_rq_general_cold(int32_t a, const tt_rq *r)
{
    return tt_rq_general(a, r);
}

/* One channel's requantization with its record's fields already in registers.  SMMULR and
 * the adds in C, not tt_rq_fast: with SMMLAR's third operand GCC -Os keeps one more value
 * live across the quads loop that inlines this, and the loop's 14 registers no longer fit. */
static inline __attribute__((always_inline)) int32_t
tt_mx_rq(int32_t a, int32_t m, int32_t e, int32_t f, const tt_rq *r)
{
    if (__builtin_expect(e == TT_RQ_GENERAL, 0)) {
        return tt_rq_general_cold(a, r);
    }
    const int32_t t = tt_smmulr((int32_t)((uint32_t)a << 1), m);
    return (t + f + (t >> 31)) >> e;
}

/* Clamp one requantized value and store it; in modes 2-6 (tt_mm_out4) the residual add
 * fused into the output, its table and constants passed in registers (tt_mx_add_setup). */
static inline __attribute__((always_inline)) void
tt_mx_store(int32_t mode, int8_t *o, int32_t v, int32_t lo, int32_t hi, const tt_residual *res,
            uint32_t cm, uint32_t ca, const int32_t *to, const tt_rq *q, int32_t lo2, int32_t hi2)
{
    if (mode < 2) {
        *o = (int8_t)(mode == 0 ? __ssat(v, 8) : tt_clamp(v, lo, hi));
        return;
    }
    v = (mode == 2 || mode == 5) ? __ssat(v, 8) : tt_clamp(v, lo, hi);
    if (mode == 4) {
        *o = tt_fuse_mm(res, *o, (int8_t)v);
    } else {
        /* One side's rescale is affine (one MLA), the other side's a table read: the conv's
         * side affine in modes 2-3, the other input's in 5-6. */
        const int32_t x = mode >= 5 ? *o : v, y = mode >= 5 ? v : *o;
        const int32_t s = tt_rq_apply((int32_t)((uint32_t)x * cm + ca) + to[y], q);
        *o = (mode == 2 || mode == 5) ? (int8_t)__ssat(s, 8) : tt_clamp(s, lo2, hi2);
    }
}

/* The fused add's constants for tt_mx_store (modes 2-6; untouched in the others): the
 * affine side's multiplier and offset, the other side's table, the sum's requantization
 * and clamp. */
static inline __attribute__((always_inline)) void
tt_mx_add_setup(int32_t mode, const tt_residual *res, uint32_t *cm, uint32_t *ca, const int32_t **to,
                const tt_rq **q, int32_t *lo2, int32_t *hi2)
{
    if (mode < 2) {
        return;
    }
    if (mode >= 5) {
        *cm = (uint32_t)res->o_mul;
        *ca = (uint32_t)res->o_add;
        *to = res->t_conv + 128;
    } else {
        *cm = (uint32_t)res->c_mul;
        *ca = (uint32_t)res->c_add;
        *to = res->t_other + 128;
    }
    *q = res->rq;
    *lo2 = res->add->act_min;
    *hi2 = res->add->act_max;
}

/* Every output channel of the `n` (1-3) pixels whose columns are in `col` (pixel k's
 * `128 sum x` in sx[k]); `mode` as for tt_mm_out4. */
static inline __attribute__((always_inline)) void
tt_mx_block(const tt_conv_params *p, const int32_t *w, const tt_rq *rq, int8_t *o0,
            const int32_t *col, const int32_t *col_end, int32_t skip, int32_t steps,
            const int32_t *sx, int32_t n, int32_t mode)
{
    const int32_t out_c = p->out_c;
    const int32_t lo = p->act_min, hi = p->act_max;
    const tt_residual *res = p->res;
    const int32_t *to = 0;
    uint32_t cm = 0, ca = 0;
    const tt_rq *q = 0;
    int32_t lo2 = 0, hi2 = 0;
    tt_mx_add_setup(mode, res, &cm, &ca, &to, &q, &lo2, &hi2);
    const int32_t s0 = sx[0], s1 = sx[1], s2 = sx[2];
    const int32_t *wp = w;
    for (int32_t oc = 0; oc < out_c; oc += 2) {
        const tt_rq *r = rq + oc;
        const int32_t two = oc + 1 < out_c; /* an odd last channel pairs with zeros */
        const uint32_t bb = two ? (uint32_t)r[1].bias : 0u;
        const uint32_t sa = (uint32_t)r[0].bias + (bb << 8);
        int32_t a0 = (int32_t)(sa - (uint32_t)s0), a1 = (int32_t)(sa - (uint32_t)s1);
        int32_t a2 = (int32_t)(sa - (uint32_t)s2);
        int32_t b0 = (int32_t)bb, b1 = b0, b2 = b0;
        /* The first pass enters the unrolled loop `skip` bytes in (44 per step), so it runs
         * the nw % steps steps left over; one asm statement keeps the
         * 13 operands allocatable. */
        const int32_t *c = col;
#if defined(__OPTIMIZE__)
        int32_t v = skip, x0, x1, x2;
        if (steps == 8) {
            __asm__ volatile("adr.w %[x0], 1f\n\t"
                             "add %[x0], %[x0], %[v]\n\t"
                             "mov pc, %[x0]\n\t"
                             ".p2align 2\n"
                             "1:\n\t" TT_MX_STEP4 TT_MX_STEP4
                             "cmp %[cp], %[end]\n\t"
                             "bne 1b\n\t"
                             : TT_MX_OPERANDS : [end] "r"(col_end) : "cc", "memory");
        } else {
            __asm__ volatile("adr.w %[x0], 1f\n\t"
                             "add %[x0], %[x0], %[v]\n\t"
                             "mov pc, %[x0]\n\t"
                             ".p2align 2\n"
                             "1:\n\t" TT_MX_STEP4
                             "cmp %[cp], %[end]\n\t"
                             "bne 1b\n\t"
                             : TT_MX_OPERANDS : [end] "r"(col_end) : "cc", "memory");
        }
#else /* unoptimized builds (a frame pointer: too few registers for the asm) */
        (void)skip;
        for (; c != col_end; c += 3) {
            const int32_t v = *wp++, vb = tt_sxtb16_ror8(v);
            a0 = __smlad(c[0], v, a0);
            a1 = __smlad(c[1], v, a1);
            a2 = __smlad(c[2], v, a2);
            b0 = __smlad(c[0], vb, b0);
            b1 = __smlad(c[1], vb, b1);
            b2 = __smlad(c[2], vb, b2);
        }
#endif
        a0 = (int32_t)((uint32_t)a0 - ((uint32_t)b0 << 8));
        a1 = (int32_t)((uint32_t)a1 - ((uint32_t)b1 << 8));
        a2 = (int32_t)((uint32_t)a2 - ((uint32_t)b2 << 8));
        int8_t *o = o0 + oc;
        if (__builtin_expect(n < 3 || !two, 0)) { /* the last pixels or channel: one by one */
            const int32_t acc[6] = {a0, a1, a2, b0, b1, b2};
            for (int32_t k = 0; k < n; ++k) {
                tt_mm_out1(mode, p, r, o + k * out_c, acc[k]);
                if (two) {
                    tt_mm_out1(mode, p, r + 1, o + k * out_c + 1, acc[3 + k]);
                }
            }
            continue;
        }
        const int32_t ma = r[0].mult, ea = r[0].rshift, fa = r[0].offset;
        const int32_t mb = r[1].mult, eb = r[1].rshift, fb = r[1].offset;
        a0 = tt_mx_rq(a0, ma, ea, fa, r);
        a1 = tt_mx_rq(a1, ma, ea, fa, r);
        a2 = tt_mx_rq(a2, ma, ea, fa, r);
        b0 = tt_mx_rq(b0, mb, eb, fb, r + 1);
        b1 = tt_mx_rq(b1, mb, eb, fb, r + 1);
        b2 = tt_mx_rq(b2, mb, eb, fb, r + 1);
        tt_mx_store(mode, o, a0, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + 1, b0, lo, hi, res, cm, ca, to, q, lo2, hi2);
        o += out_c;
        tt_mx_store(mode, o, a1, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + 1, b1, lo, hi, res, cm, ca, to, q, lo2, hi2);
        o += out_c;
        tt_mx_store(mode, o, a2, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + 1, b2, lo, hi, res, cm, ca, to, q, lo2, hi2);
    }
}

void tt_conv2d_s8_mx(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                     const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                     int32_t unroll)
{
    const int32_t icp = (p->in_c + 3) & ~3;
    const int32_t k4 = flat ? (p->k_h * p->k_w * p->in_c + 3) / 4 : p->k_h * p->k_w * icp / 4;
    const int32_t nw = 2 * k4; /* column words (pairs of inputs) per pixel */
    const int32_t steps = 2 * unroll; /* column words per pass of the unrolled loop */
    const int32_t skip = 44 * ((steps - (nw & (steps - 1))) & (steps - 1));
    const int32_t n_pix = p->out_h * p->out_w, out_c = p->out_c;
    int32_t *col = (int32_t *)(void *)scratch;
    const int32_t *const col_end = col + 3 * nw;
    int16_t *tmp = (int16_t *)(void *)(col + 3 * nw); /* flat: the natural-order field */
    const int32_t mode = tt_mm_mode(p);
    int32_t oy = 0, ox = 0; /* of pixel `pix`, kept without division */
    for (int32_t pix = 0; pix < n_pix; pix += 3) {
        const int32_t n = n_pix - pix < 3 ? n_pix - pix : 3;
        int32_t sx[3];
        for (int32_t k = 0; k < 3; ++k) {
            /* A missing last pixel repeats the one before (its outputs are not stored). */
            int32_t s = 0;
            if (flat) {
                s = tt_mx_flat(p, in, oy, ox, k4, tmp, col + k, 3, 6);
            } else if ((p->in_c & 3) == 0) {
                s = tt_mx_rows3(p, in, oy, ox, col + k);
            } else { /* channels padded to 4: the general im2col, then its sum */
                tt_im2col(p, in, oy * p->out_w + ox, icp, col + k, 6, 3);
                for (const int32_t *c = col + k; c < col_end; c += 3) {
                    s = __smlad(*c, 0x00010001, s);
                }
            }
            sx[k] = (int32_t)((uint32_t)s << 7);
            if (k < n - 1 && ++ox == p->out_w) {
                ox = 0;
                ++oy;
            }
        }
        if (++ox == p->out_w) {
            ox = 0;
            ++oy;
        }
        int8_t *o = out + pix * out_c;
        switch (mode) { /* one instance per mode: the output code has no tests in it */
        case 0:
            tt_mx_block(p, w, rq, o, col, col_end, skip, steps, sx, n, 0);
            break;
        case 1:
            tt_mx_block(p, w, rq, o, col, col_end, skip, steps, sx, n, 1);
            break;
        case 2:
            tt_mx_block(p, w, rq, o, col, col_end, skip, steps, sx, n, 2);
            break;
        case 3:
            tt_mx_block(p, w, rq, o, col, col_end, skip, steps, sx, n, 3);
            break;
        default:
            tt_mx_block(p, w, rq, o, col, col_end, skip, steps, sx, n, 4);
            break;
        }
    }
}

/* ------------------------------------------------------------- the "quads" convolution
 * tt_conv2d_s8_qx: 4 output channels x 2 output pixels per pass, with the same two-channel
 * words as tt_conv2d_s8_mx (the "pairs" trick above), two channel pairs' words interleaved
 * ("quads" layout, tinytamer/micro/ops/conv.py).  Per column word: 4 loads, 8 SMLADs and 2
 * SXTB16s, 15 cycles for 16 MACs by the Cortex-M4 TRM; the column buffer holds 2 pixels
 * (the 2 x 2 kernel's scratch), not 3.  Channels past the last whole quad (out_c % 4)
 * follow in the pairs layout and run 2 x 2 in C. */

/* A step's multiplies: the column words X0, X1 against the quads words VA, VC.  The
 * registers are arguments (the inline asm's operand names, or tt_qx_block02's registers):
 * one definition for both. */
#define TT_QX_MACS_R(A0, A1, B0, B1, C0, C1, D0, D1, VA, VC, X0, X1)                       \
    "smlad " A0 ", " X0 ", " VA ", " A0 "\n\t"                                            \
    "smlad " A1 ", " X1 ", " VA ", " A1 "\n\t"                                            \
    "sxtb16 " VA ", " VA ", ror #8\n\t"                                                   \
    "smlad " B0 ", " X0 ", " VA ", " B0 "\n\t"                                            \
    "smlad " B1 ", " X1 ", " VA ", " B1 "\n\t"                                            \
    "smlad " C0 ", " X0 ", " VC ", " C0 "\n\t"                                            \
    "smlad " C1 ", " X1 ", " VC ", " C1 "\n\t"                                            \
    "sxtb16 " VC ", " VC ", ror #8\n\t"                                                   \
    "smlad " D0 ", " X0 ", " VC ", " D0 "\n\t"                                            \
    "smlad " D1 ", " X1 ", " VC ", " D1 "\n\t"
/* A step: two quads words from WP, the two pixels' column words from CP, their multiplies. */
#define TT_QX_STEP_R(A0, A1, B0, B1, C0, C1, D0, D1, VA, VC, X0, X1, WP, CP)               \
    "ldr " VA ", [" WP "], #4\n\t"                                                        \
    "ldr " VC ", [" WP "], #4\n\t"                                                        \
    "ldr " X0 ", [" CP "], #4\n\t"                                                        \
    "ldr " X1 ", [" CP "], #4\n\t" TT_QX_MACS_R(A0, A1, B0, B1, C0, C1, D0, D1, VA, VC, X0, X1)
#define TT_QX_EXPAND(M, ...) M(__VA_ARGS__)
#define TT_QX_NAMES                                                                        \
    "%[a0]", "%[a1]", "%[b0]", "%[b1]", "%[c0]", "%[c1]", "%[d0]", "%[d1]", "%[va]", "%[vc]", "%[x0]", "%[x1]"
#define TT_QX_MACS TT_QX_EXPAND(TT_QX_MACS_R, TT_QX_NAMES)
#define TT_QX_STEP TT_QX_EXPAND(TT_QX_STEP_R, TT_QX_NAMES, "%[wp]", "%[cp]")

#define TT_QX_STEP4 TT_QX_STEP TT_QX_STEP TT_QX_STEP TT_QX_STEP

/* The "quads4" step (packed int4 weights, tt_conv2d_s4_qx*): one word holds a step's two
 * quads words at 4 bits, each byte's low nibble a byte of the first and its high nibble a
 * byte of the second, those bytes 16 times the int8 layout's (16 w + 128 for the low
 * channel of a pair, 16 w for the high one: nibbles w + 8 and w & 15).  Three ALU
 * instructions (every one 32-bit, so that a step stays 64 bytes for the computed entry)
 * replace a load: 17 cycles for 16 MACs, at half the flash; the sums come out 16 times
 * the int8 ones and are shifted back exactly after the loop. */
#define TT_QX4_STEP_R(A0, A1, B0, B1, C0, C1, D0, D1, VA, VC, X0, X1, WP, CP)              \
    "ldr " VC ", [" WP "], #4\n\t"                                                        \
    "ldr " X0 ", [" CP "], #4\n\t"                                                        \
    "ldr " X1 ", [" CP "], #4\n\t"                                                        \
    "lsl.w " VA ", " VC ", #4\n\t"                                                        \
    "and.w " VA ", " VA ", #0xF0F0F0F0\n\t"                                               \
    "and.w " VC ", " VC ", #0xF0F0F0F0\n\t" TT_QX_MACS_R(A0, A1, B0, B1, C0, C1, D0, D1, VA, VC, X0, X1)
#define TT_QX4_STEP TT_QX_EXPAND(TT_QX4_STEP_R, TT_QX_NAMES, "%[wp]", "%[cp]")
#define TT_QX4_STEP4 TT_QX4_STEP TT_QX4_STEP TT_QX4_STEP TT_QX4_STEP

/* Two steps of the "quads2" loop (packed int2 weights, tt_conv2d_s2_qx*): one word holds
 * two steps' four quads words at 2 bits, bits 2j and 2j + 1 of each byte the top bits of
 * that byte of the j-th word (laid out for weights 64 w: bytes 64 w + 128 and 64 w, fields
 * w + 2 and w & 3), got back with a shift and a mask each.  The word is loaded twice (no
 * register is free to keep it): 35 cycles for 32 MACs, at a quarter of the flash; 132
 * bytes per two steps (every instruction 32-bit). */
#define TT_QX2_STEP2_R(A0, A1, B0, B1, C0, C1, D0, D1, VA, VC, X0, X1, WP, CP)             \
    "ldr.w " VC ", [" WP "]\n\t"                                                          \
    "ldr " X0 ", [" CP "], #4\n\t"                                                        \
    "ldr " X1 ", [" CP "], #4\n\t"                                                        \
    "lsl.w " VA ", " VC ", #6\n\t"                                                        \
    "and.w " VA ", " VA ", #0xC0C0C0C0\n\t"                                               \
    "lsl.w " VC ", " VC ", #4\n\t"                                                        \
    "and.w " VC ", " VC ", #0xC0C0C0C0\n\t" TT_QX_MACS_R(A0, A1, B0, B1, C0, C1, D0, D1, VA, VC, X0, X1) \
    "ldr " VC ", [" WP "], #4\n\t"                                                        \
    "ldr " X0 ", [" CP "], #4\n\t"                                                        \
    "ldr " X1 ", [" CP "], #4\n\t"                                                        \
    "lsl.w " VA ", " VC ", #2\n\t"                                                        \
    "and.w " VA ", " VA ", #0xC0C0C0C0\n\t"                                               \
    "and.w " VC ", " VC ", #0xC0C0C0C0\n\t" TT_QX_MACS_R(A0, A1, B0, B1, C0, C1, D0, D1, VA, VC, X0, X1)
#define TT_QX2_STEP2 TT_QX_EXPAND(TT_QX2_STEP2_R, TT_QX_NAMES, "%[wp]", "%[cp]")

#define TT_QX2_STEP8 TT_QX2_STEP2 TT_QX2_STEP2 TT_QX2_STEP2 TT_QX2_STEP2

/* Fourteen registers: the loop's end is read from the stack once per pass (the `m`
 * operand), which costs less than the register it would take from the step. */
#define TT_QX_OPERANDS                                                                     \
    [a0] "+r"(a0), [a1] "+r"(a1), [b0] "+r"(b0), [b1] "+r"(b1), [c0] "+r"(c0),             \
    [c1] "+r"(c1), [d0] "+r"(d0), [d1] "+r"(d1), [cp] "+r"(c), [wp] "+r"(wp),              \
    [va] "+&r"(va), [vc] "=&r"(vc), [x0] "=&r"(x0), [x1] "=&r"(x1)

/* The unrolled loop over BODY (steps of TT_QX_STEP or TT_QX4_STEP), entered `va` bytes in. */
#define TT_QX_LOOP(BODY)                                                                   \
    __asm__ volatile("adr.w %[x0], 1f\n\t"                                                \
                     "add %[x0], %[x0], %[va]\n\t"                                        \
                     "mov pc, %[x0]\n\t"                                                  \
                     ".p2align 2\n"                                                       \
                     "1:\n\t" BODY "ldr %[x0], %[end]\n\t"                               \
                     "cmp %[cp], %[x0]\n\t"                                               \
                     "bne 1b\n\t"                                                         \
                     : TT_QX_OPERANDS : [end] "m"(end) : "cc", "memory")

/* TT_QX_LOOP for the int8 layout with the quad's set-up in the same asm: the four channels'
 * biases (sa = bias A + 256 bias B, sc likewise, b and d the high channels' own) less the
 * pixels' 128 sum x, the column pointer and the entry offset read from memory by nine loads
 * in a row (the compiled set-up loaded the pixel sums twice each, its registers all taken by
 * the loop's operands). */
#define TT_QX_LOOP_INIT(BODY)                                                              \
    __asm__ volatile("ldr %[x0], %[rq]\n\t"                                               \
                     "ldr %[a0], [%[x0]]\n\t"                                             \
                     "ldr %[b0], [%[x0], #16]\n\t"                                        \
                     "ldr %[c0], [%[x0], #32]\n\t"                                        \
                     "ldr %[d0], [%[x0], #48]\n\t"                                        \
                     "ldr %[va], %[s0]\n\t"                                               \
                     "ldr %[vc], %[s1]\n\t"                                               \
                     "ldr %[cp], %[col]\n\t"                                              \
                     "ldr %[x1], %[skip]\n\t"                                             \
                     "add %[a0], %[a0], %[b0], lsl #8\n\t"                                \
                     "add %[c0], %[c0], %[d0], lsl #8\n\t"                                \
                     "mov %[b1], %[b0]\n\t"                                               \
                     "mov %[d1], %[d0]\n\t"                                               \
                     "sub %[a1], %[a0], %[vc]\n\t"                                        \
                     "sub %[a0], %[a0], %[va]\n\t"                                        \
                     "sub %[c1], %[c0], %[vc]\n\t"                                        \
                     "sub %[c0], %[c0], %[va]\n\t"                                        \
                     "adr.w %[x0], 1f\n\t"                                                \
                     "add %[x0], %[x0], %[x1]\n\t"                                        \
                     "mov pc, %[x0]\n\t"                                                  \
                     ".p2align 2\n"                                                       \
                     "1:\n\t" BODY "ldr %[x0], %[end]\n\t"                               \
                     "cmp %[cp], %[x0]\n\t"                                               \
                     "bne 1b\n\t"                                                         \
                     : [a0] "=&r"(a0), [a1] "=&r"(a1), [b0] "=&r"(b0), [b1] "=&r"(b1),    \
                       [c0] "=&r"(c0), [c1] "=&r"(c1), [d0] "=&r"(d0), [d1] "=&r"(d1),    \
                       [cp] "=&r"(c), [wp] "+r"(wp), [va] "=&r"(va), [vc] "=&r"(vc),      \
                       [x0] "=&r"(x0), [x1] "=&r"(x1)                                     \
                     : [end] "m"(end), [rq] "m"(r), [s0] "m"(s0), [s1] "m"(s1),           \
                       [col] "m"(col), [skip] "m"(skip)                                   \
                     : "cc", "memory")

/* One channel's two sums (X0, X1) requantized in the single-multiply form of its record at
 * byte OFF of `r` (tt_mx_rq), saturated to int8.  SMMLAR adds the offset to SMMULR's
 * product in the same instruction; the rounding's sign term then comes from the doubled sum
 * instead of the product.  The two differ only where the product rounds to 0 from a
 * negative sum, and there (f - 1) >> e equals f >> e: the offset is 2^(e-1) + zp 2^e with
 * e >= 1 (fixedpoint.fast_records), a constant channel's 2v + 1 with e = 1. */
#define TT_QX_RQ2(X0, X1, OFF)                                                             \
    "ldr %[m], [%[r], #" #OFF " + 4]\n\t"                                                 \
    "ldr %[e], [%[r], #" #OFF " + 8]\n\t"                                                 \
    "ldr %[f], [%[r], #" #OFF " + 12]\n\t"                                                \
    "lsl %[" #X0 "], %[" #X0 "], #1\n\t"                                                  \
    "lsl %[" #X1 "], %[" #X1 "], #1\n\t"                                                  \
    "smmlar %[t], %[" #X0 "], %[m], %[f]\n\t"                                             \
    "add %[" #X0 "], %[t], %[" #X0 "], asr #31\n\t"                                       \
    "smmlar %[t], %[" #X1 "], %[m], %[f]\n\t"                                             \
    "add %[" #X1 "], %[t], %[" #X1 "], asr #31\n\t"                                       \
    "asr %[" #X0 "], %[" #X0 "], %[e]\n\t"                                                \
    "asr %[" #X1 "], %[" #X1 "], %[e]\n\t"                                                \
    "ssat %[" #X0 "], #8, %[" #X0 "]\n\t"                                                 \
    "ssat %[" #X1 "], #8, %[" #X1 "]\n\t"

/* Byte K of the word at `o` (the fused add's other input, int8) summed with byte K of `v`
 * (the convolution's output) as tt_mx_store does in mode 2, saturated, into byte K of Y. */
#define TT_QX_ADD1(K, ROR)                                                                 \
    "sxtb %[x], %[v]" ROR "\n\t"                                                          \
    "sxtb %[t], %[y]" ROR "\n\t"                                                          \
    "ldr %[t], [%[to], %[t], lsl #2]\n\t"                                                 \
    "mla %[x], %[x], %[cm], %[t]\n\t"                                                     \
    "lsl %[x], %[x], #1\n\t"                                                              \
    "smmlar %[t], %[x], %[qm], %[qf]\n\t"                                                 \
    "add %[t], %[t], %[x], asr #31\n\t"                                                   \
    "asr %[t], %[t], %[qe]\n\t"                                                           \
    "ssat %[t], #8, %[t]\n\t"                                                             \
    "bfi %[y], %[t], #" #K ", #8\n\t"

/* A quad's 8 outputs in the two usual modes (0: stored; 2: summed with the fused add's
 * other input in place, tt_mx_store), for the int8 quads instances, whose layers hold no
 * channel in the general form (ops/conv.py routes those to the any-mode entry): each
 * pixel's four values packed in one word, so that a word is read and written per pixel,
 * and the add's constants stay in registers. */
static inline __attribute__((always_inline)) void
tt_qx_out(int32_t mode, const tt_rq *r, int8_t *o, int32_t stride, const tt_residual *res, int32_t a0,
          int32_t a1, int32_t b0, int32_t b1, int32_t c0, int32_t c1, int32_t d0, int32_t d1)
{
    int32_t m, e, f, t;
    __asm__("" TT_QX_RQ2(a0, a1, 0) TT_QX_RQ2(b0, b1, 16) TT_QX_RQ2(c0, c1, 32) TT_QX_RQ2(d0, d1, 48)
            "bfi %[a0], %[b0], #8, #8\n\t"
            "bfi %[a1], %[b1], #8, #8\n\t"
            "bfi %[a0], %[c0], #16, #8\n\t"
            "bfi %[a1], %[c1], #16, #8\n\t"
            "bfi %[a0], %[d0], #24, #8\n\t"
            "bfi %[a1], %[d1], #24, #8\n\t"
            : [a0] "+r"(a0), [a1] "+r"(a1), [b0] "+r"(b0), [b1] "+r"(b1), [c0] "+r"(c0),
              [c1] "+r"(c1), [d0] "+r"(d0), [d1] "+r"(d1), [m] "=&r"(m), [e] "=&r"(e),
              [f] "=&r"(f), [t] "=&r"(t)
            : [r] "r"(r), "m"(*(const int32_t(*)[16])(const void *)r));
    if (mode == 2) {
        /* c_add is 0: the generator folds the convolution's constant term into the other
         * input's table (ops/conv.py, _residual_tables), so each value is one multiply-add */
        const uint32_t cm = (uint32_t)res->c_mul;
        const int32_t *const to = res->t_other + 128;
        const tt_rq *const q = res->rq;
        const int32_t qm = q->mult, qe = q->rshift, qf = q->offset;
        int8_t *op = o;
#pragma GCC unroll 2
        for (int32_t k = 0; k < 2; ++k, op += stride) {
            int32_t y = tt_word(op), x;
            const int32_t v = k == 0 ? a0 : a1;
            __asm__("" TT_QX_ADD1(0, "") TT_QX_ADD1(8, ", ror #8") TT_QX_ADD1(16, ", ror #16") TT_QX_ADD1(24, ", ror #24")
                    : [y] "+&r"(y), [x] "=&r"(x), [t] "=&r"(t)
                    : [v] "r"(v), [to] "r"(to), [cm] "r"(cm), [qm] "r"(qm),
                      [qe] "r"(qe), [qf] "r"(qf), "m"(*(const int32_t(*)[256])(const void *)(to - 128)));
            tt_store_word(op, y);
        }
    } else {
        tt_store_word(o, a0);
        tt_store_word(o + stride, a1);
    }
}

#if defined(__OPTIMIZE__)
/* One output of the int8 instance for modes 0 and 2 outside its quads (the last out_c % 4
 * channels): the record's single-multiply form (the instance takes no other), then in mode
 * 2 the fused add as tt_mx_store computes it (its conv side's offset is 0, ops/conv.py). */
static __attribute__((noinline)) void tt_qx_fast1(int32_t mode, const tt_rq *r, int8_t *o, int32_t a,
                                                  const tt_residual *res)
{
    int32_t v = __ssat(tt_rq_apply(a, r), 8);
    if (mode == 2) {
        v = __ssat(tt_rq_apply((int32_t)((uint32_t)v * (uint32_t)res->c_mul) + res->t_other[128 + *o], res->rq), 8);
    }
    *o = (int8_t)v;
}
#endif

/* The last out_c % 4 channels of a block (weights, records and outputs from the last whole
 * quad's on): pairs words, an odd last channel paired with zeros.  `fast`: tt_qx_block02's
 * layers (modes 0 and 2, single-multiply records only), whose outputs take tt_qx_fast1. */
static inline __attribute__((always_inline)) void
tt_qx_tail(const tt_conv_params *p, const int32_t *wp, const tt_rq *r, int8_t *o, const int32_t *col,
           const int32_t *col_end, int32_t s0, int32_t s1, int32_t n, int32_t mode, int32_t stride,
           int32_t fast)
{
    const int32_t out_c = p->out_c;
    for (int32_t oc = out_c & ~3; oc < out_c; oc += 2, r += 2, o += 2) {
        const int32_t two = oc + 1 < out_c;
        const int32_t bb = two ? r[1].bias : 0;
        const uint32_t sa = (uint32_t)r[0].bias + ((uint32_t)bb << 8);
        int32_t a0 = (int32_t)(sa - (uint32_t)s0), a1 = (int32_t)(sa - (uint32_t)s1);
        int32_t b0 = bb, b1 = bb;
        for (const int32_t *c = col; c != col_end; c += 2) {
            const int32_t v = *wp++, vb = tt_sxtb16_ror8(v);
            a0 = __smlad(c[0], v, a0);
            a1 = __smlad(c[1], v, a1);
            b0 = __smlad(c[0], vb, b0);
            b1 = __smlad(c[1], vb, b1);
        }
        a0 = (int32_t)((uint32_t)a0 - ((uint32_t)b0 << 8));
        a1 = (int32_t)((uint32_t)a1 - ((uint32_t)b1 << 8));
#if defined(__OPTIMIZE__)
        if (fast) { /* no tt_mm_out1 linked */
            const tt_residual *const res = p->res;
            tt_qx_fast1(mode, r, o, a0, res);
            if (n == 2) {
                tt_qx_fast1(mode, r, o + stride, a1, res);
            }
            if (two) {
                tt_qx_fast1(mode, r + 1, o + 1, b0, res);
                if (n == 2) {
                    tt_qx_fast1(mode, r + 1, o + stride + 1, b1, res);
                }
            }
            continue;
        }
#endif
        tt_mm_out1(mode, p, r, o, a0);
        if (n == 2) {
            tt_mm_out1(mode, p, r, o + stride, a1);
        }
        if (two) {
            tt_mm_out1(mode, p, r + 1, o + 1, b0);
            if (n == 2) {
                tt_mm_out1(mode, p, r + 1, o + stride + 1, b1);
            }
        }
    }
}

/* Every output channel of the `n` (1 or 2) pixels whose columns are in `col` (pixel k's
 * `128 sum x` in s0, s1; the second pixel's outputs `stride` bytes after the first's);
 * `mode` as for tt_mm_out4. */
static inline __attribute__((always_inline)) void
tt_qx_block(const tt_conv_params *p, const int32_t *w, const tt_rq *rq, int8_t *o0,
            const int32_t *col, const int32_t *col_end, int32_t skip, int32_t steps,
            int32_t s0, int32_t s1, int32_t n, int32_t mode, int32_t bits, int32_t stride,
            int32_t fast)
{
    const int32_t out_c = p->out_c;
    const int32_t lo = p->act_min, hi = p->act_max;
    const tt_residual *res = p->res;
    const int32_t *wp = w;
    const tt_rq *r = rq;
    int8_t *o = o0;
    int8_t *const quads_end = o0 + (out_c & ~3);
#if defined(__OPTIMIZE__)
    /* The loop's end, read from memory once per pass (no register is free); stored once. */
    const int32_t *volatile end = col_end;
#endif
    for (; o != quads_end; o += 4, r += 4) {
        /* quads4 / quads2 (`bits` 4 / 2): the sums run 16 / 64 times the int8 ones, biases
         * included; the pixel sums' term (128 sum x) is the same, the low channels' offset
         * being 128 in every layout. */
        const uint32_t sh = (uint32_t)(8 - bits) & 7u;
        const int32_t bb = (int32_t)((uint32_t)r[1].bias << sh), bd = (int32_t)((uint32_t)r[3].bias << sh);
        const uint32_t sa = ((uint32_t)r[0].bias << sh) + ((uint32_t)bb << 8);
        const uint32_t sc = ((uint32_t)r[2].bias << sh) + ((uint32_t)bd << 8);
        int32_t a0 = (int32_t)(sa - (uint32_t)s0), a1 = (int32_t)(sa - (uint32_t)s1);
        int32_t c0 = (int32_t)(sc - (uint32_t)s0), c1 = (int32_t)(sc - (uint32_t)s1);
        int32_t b0 = bb, b1 = bb, d0 = bd, d1 = bd;
        const int32_t *c = col;
#if defined(__OPTIMIZE__)
        /* The first pass enters the unrolled loop `skip` bytes in (56 per step), so it runs
         * the nw % steps steps left over.  Modes 0 and 2 (the plain convolutions and those
         * with a fused add, nearly all the cycles) always take 32 steps per pass in int8
         * and 16 in quads4 / quads2: fewer loop tests, and their one loop is all the flash
         * they need.  The other modes take 8 or 4 (`steps`, from the schedule's unroll). */
        int32_t va = skip, vc, x0, x1;
        if (bits == 2) {
            if (mode == 0 || mode == 2) {
                TT_QX_LOOP(TT_QX2_STEP8 TT_QX2_STEP8);
            } else if (steps == 8) {
                TT_QX_LOOP(TT_QX2_STEP8);
            } else {
                TT_QX_LOOP(TT_QX2_STEP2 TT_QX2_STEP2);
            }
        } else if (bits == 4) {
            if (mode == 0 || mode == 2) {
                TT_QX_LOOP(TT_QX4_STEP4 TT_QX4_STEP4 TT_QX4_STEP4 TT_QX4_STEP4);
            } else if (steps == 8) {
                TT_QX_LOOP(TT_QX4_STEP4 TT_QX4_STEP4);
            } else {
                TT_QX_LOOP(TT_QX4_STEP4);
            }
        } else if (mode == 0 || mode == 2) {
            TT_QX_LOOP_INIT(TT_QX_STEP4 TT_QX_STEP4 TT_QX_STEP4 TT_QX_STEP4 TT_QX_STEP4 TT_QX_STEP4
                                TT_QX_STEP4 TT_QX_STEP4);
        } else if (steps == 8) {
            TT_QX_LOOP(TT_QX_STEP4 TT_QX_STEP4);
        } else {
            TT_QX_LOOP(TT_QX_STEP4);
        }
#else /* unoptimized builds (a frame pointer: too few registers for the asm) */
        (void)skip;
        (void)steps;
        for (int32_t st = 0; c != col_end; c += 2, ++st) {
            /* quads4 / quads2: this step's two words out of the packed word (the asm's
             * shifts and masks); int8: two words. */
            const uint32_t wd = (uint32_t)wp[0];
            const int32_t hi = bits == 2 ? 2 * (st & 1) : 0; /* quads2: second step of a word */
            const uint32_t mask = bits == 2 ? 0xC0C0C0C0u : 0xF0F0F0F0u;
            const int32_t va = bits == 8 ? wp[0] : (int32_t)((wd << (bits == 2 ? 6 - 2 * hi : 4)) & mask);
            const int32_t vc = bits == 8 ? wp[1] : (int32_t)((wd << (bits == 2 ? 4 - 2 * hi : 0)) & mask);
            wp += bits == 8 ? 2 : bits == 4 ? 1 : (st & 1);
            a0 = __smlad(c[0], va, a0);
            a1 = __smlad(c[1], va, a1);
            b0 = __smlad(c[0], tt_sxtb16_ror8(va), b0);
            b1 = __smlad(c[1], tt_sxtb16_ror8(va), b1);
            c0 = __smlad(c[0], vc, c0);
            c1 = __smlad(c[1], vc, c1);
            d0 = __smlad(c[0], tt_sxtb16_ror8(vc), d0);
            d1 = __smlad(c[1], tt_sxtb16_ror8(vc), d1);
        }
#endif
        a0 = (int32_t)((uint32_t)a0 - ((uint32_t)b0 << 8));
        a1 = (int32_t)((uint32_t)a1 - ((uint32_t)b1 << 8));
        c0 = (int32_t)((uint32_t)c0 - ((uint32_t)d0 << 8));
        c1 = (int32_t)((uint32_t)c1 - ((uint32_t)d1 << 8));
        if (sh) { /* exact: every term was a multiple of 2^sh (the layout's bound keeps the
                   * scaled sum inside int32) */
            a0 >>= sh, a1 >>= sh, b0 >>= sh, b1 >>= sh, c0 >>= sh, c1 >>= sh, d0 >>= sh, d1 >>= sh;
        }
        if (__builtin_expect(n < 2, 0)) { /* the last pixel: one by one */
            tt_mm_out1(mode, p, r, o, a0);
            tt_mm_out1(mode, p, r + 1, o + 1, b0);
            tt_mm_out1(mode, p, r + 2, o + 2, c0);
            tt_mm_out1(mode, p, r + 3, o + 3, d0);
            continue;
        }
#if defined(__OPTIMIZE__)
        if (fast) {
            tt_qx_out(mode, r, o, stride, res, a0, a1, b0, b1, c0, c1, d0, d1);
            continue;
        }
#endif
        /* The fused add's constants, read here rather than kept across the loop: its asm
         * takes every register but two. */
        const int32_t *to = 0;
        uint32_t cm = 0, ca = 0;
        const tt_rq *q = 0;
        int32_t lo2 = 0, hi2 = 0;
        tt_mx_add_setup(mode, res, &cm, &ca, &to, &q, &lo2, &hi2);
        int32_t m = r[0].mult, e = r[0].rshift, f = r[0].offset;
        a0 = tt_mx_rq(a0, m, e, f, r);
        a1 = tt_mx_rq(a1, m, e, f, r);
        m = r[1].mult, e = r[1].rshift, f = r[1].offset;
        b0 = tt_mx_rq(b0, m, e, f, r + 1);
        b1 = tt_mx_rq(b1, m, e, f, r + 1);
        m = r[2].mult, e = r[2].rshift, f = r[2].offset;
        c0 = tt_mx_rq(c0, m, e, f, r + 2);
        c1 = tt_mx_rq(c1, m, e, f, r + 2);
        m = r[3].mult, e = r[3].rshift, f = r[3].offset;
        d0 = tt_mx_rq(d0, m, e, f, r + 3);
        d1 = tt_mx_rq(d1, m, e, f, r + 3);
        tt_mx_store(mode, o, a0, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + 1, b0, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + 2, c0, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + 3, d0, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + stride, a1, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + stride + 1, b1, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + stride + 2, c1, lo, hi, res, cm, ca, to, q, lo2, hi2);
        tt_mx_store(mode, o + stride + 3, d1, lo, hi, res, cm, ca, to, q, lo2, hi2);
    }
    tt_qx_tail(p, wp, r, o, col, col_end, s0, s1, n, mode, stride, 0);
}

/* The two usual modes (the whole int8 range, alone or with a fused add) share an instance
 * whose output code is one asm block per mode; the others share one.  Out of line, so the
 * block's spills and the im2col's do not add up on the stack; one signature, so that the
 * one pixel loop (tt_qx_run) calls whichever its entry point passes. */
/* `pass`: the block's loop and pixels in one argument, so that few go on the stack (the
 * pixel loop's frame, under every block's, holds the outgoing ones): steps skipped on
 * entering the first pass (bits 0-5), column words per pass (6-11), pixels (12), output
 * mode (13-15), bytes from one output pixel to the next (16-31: out_c, or the whole
 * layer's channels where a call computes a block of them, tt_conv2d_s8_qxb). */
#define TT_QX_PASS(skip, steps, n, mode) ((skip) | (steps) << 6 | ((n) - 1) << 12 | (mode) << 13)
/* Bytes of code per step of the loop of each layout (quads2: 132 per two steps, and the
 * steps skipped are even). */
#define TT_QX_STEP_BYTES(bits) ((bits) == 2 ? 66 : (bits) == 4 ? 64 : 56)
#define TT_QX_ARGS                                                                         \
    const tt_conv_params *p, const int32_t *w, const tt_rq *rq, int8_t *o, const int32_t *col, \
        const int32_t *col_end, int32_t s0, int32_t s1, int32_t pass
#define TT_QX_BLOCK(mode, bits, fast)                                                        \
    tt_qx_block(p, w, rq, o, col, col_end, (pass & 63) * TT_QX_STEP_BYTES(bits), (pass >> 6) & 63, \
                s0, s1, ((pass >> 12) & 1) + 1, (mode), (bits), (int32_t)((uint32_t)pass >> 16), (fast))
typedef void (*tt_qx_block_fn)(TT_QX_ARGS);
/* The two usual modes' instance of a layout (`bits` 8: int8 quads, 4: quads4, 2: quads2):
 * modes 0 and 2 (plain, fused add), whose output code is one asm block each (tt_qx_out)
 * and takes only layers with no channel in the general form; and the any-mode instance,
 * which takes every layer.  Mirrored adds reaching the any-mode instance take the general
 * form: it keeps no mirrored output code (its tests would cost every mode it runs). */
#define TT_QX_INSTANCE02(prefix, bits)                                                     \
    static __attribute__((noinline)) void prefix##_block02(TT_QX_ARGS)                     \
    {                                                                                      \
        const int32_t mode = (pass >> 13) & 7;                                             \
        if (mode != 0 && mode != 2) {                                                      \
            __builtin_unreachable(); /* the entry points pass no other */                  \
        }                                                                                  \
        TT_QX_BLOCK(mode, bits, 1);                                                        \
    }
#define TT_QX_INSTANCEN(prefix, bits)                                                      \
    static __attribute__((noinline)) void prefix##_blockn(TT_QX_ARGS)                      \
    {                                                                                      \
        const int32_t mode = (pass >> 13) & 7;                                             \
        TT_QX_BLOCK(mode >= 5 ? 4 : mode, bits, 0);                                        \
    }
TT_QX_INSTANCEN(tt_qx, 8)
TT_QX_INSTANCEN(tt_qx4, 4)
TT_QX_INSTANCEN(tt_qx2, 2)
#if defined(__OPTIMIZE__)
/* The int8 instance for modes 0 and 2 (nearly all the cycles of a default build), written
 * whole in asm: its call, its quads and their outputs.  Compiled from C, the block's entry
 * spent about 100 cycles a pixel pair copying its arguments into the frame the quads' asm
 * reads them from; here the quads read the arguments where the caller left them.  Each
 * quad: its biases and the pixels' sums (tt_qx_block), the unrolled loop entered `skip`
 * bytes in, the sums' requantization (TT_QX_RQ2), the four outputs of each pixel packed in
 * a word and stored, or summed with the fused add's other input in place (TT_QX_ADD1);
 * the second pixel's outputs not stored where it is missing.  The last out_c % 4 channels
 * are tt_qx_fast_tail's.  Registers: a0..d1 r0, r3-r9; va, vc r10, r11; x0, x1 r12, lr;
 * weights r1, columns r2.  Frame (bytes from sp): 0 records, 4 outputs, 8 their end, 12 the
 * loop's entry address, 16 the second pixel's offset (0: missing), 20 the fused add (or 0),
 * 24 p; the saved registers; 64 on the stack arguments (col, col_end, s0, s1, pass).
 * The loop's entry is computed once a call, and a plain quad's end is its own (no branch). */
#define Q_A0 "r0"
#define Q_A1 "r3"
#define Q_B0 "r4"
#define Q_B1 "r5"
#define Q_C0 "r6"
#define Q_C1 "r7"
#define Q_D0 "r8"
#define Q_D1 "r9"
#define Q_VA "r10"
#define Q_VC "r11"
#define Q_X0 "r12"
#define Q_X1 "lr"
#define Q_STEP TT_QX_STEP_R(Q_A0, Q_A1, Q_B0, Q_B1, Q_C0, Q_C1, Q_D0, Q_D1, Q_VA, Q_VC, Q_X0, Q_X1, "r1", "r2")
#define Q_STEP4 Q_STEP Q_STEP Q_STEP Q_STEP
/* One channel's two sums (X0, X1) requantized from its record at byte OFF of r2: multiplier
 * va, shift vc, offset x0, scratch x1 (as TT_QX_RQ2). */
#define Q_RQ2(X0, X1, OFF)                                                                 \
    "ldr " Q_VA ", [r2, #" #OFF " + 4]\n\t"                                               \
    "ldr " Q_VC ", [r2, #" #OFF " + 8]\n\t"                                               \
    "ldr " Q_X0 ", [r2, #" #OFF " + 12]\n\t"                                              \
    "lsl " X0 ", " X0 ", #1\n\t"                                                          \
    "lsl " X1 ", " X1 ", #1\n\t"                                                          \
    "smmlar " Q_X1 ", " X0 ", " Q_VA ", " Q_X0 "\n\t"                                     \
    "add " X0 ", " Q_X1 ", " X0 ", asr #31\n\t"                                           \
    "smmlar " Q_X1 ", " X1 ", " Q_VA ", " Q_X0 "\n\t"                                     \
    "add " X1 ", " Q_X1 ", " X1 ", asr #31\n\t"                                           \
    "asr " X0 ", " X0 ", " Q_VC "\n\t"                                                    \
    "asr " X1 ", " X1 ", " Q_VC "\n\t"                                                    \
    "ssat " X0 ", #8, " X0 "\n\t"                                                         \
    "ssat " X1 ", #8, " X1 "\n\t"
/* Byte K of the output word V summed with byte K of the other input's word (va), as
 * TT_QX_ADD1: multiplier b0, table b1, the sum's record c0 / c1 / d0, scratch d1 and vc. */
#define Q_ADD1(V, K, ROR)                                                                  \
    "sxtb " Q_D1 ", " V ROR "\n\t"                                                        \
    "sxtb " Q_VC ", " Q_VA ROR "\n\t"                                                     \
    "ldr " Q_VC ", [" Q_B1 ", " Q_VC ", lsl #2]\n\t"                                      \
    "mla " Q_D1 ", " Q_D1 ", " Q_B0 ", " Q_VC "\n\t"                                      \
    "lsl " Q_D1 ", " Q_D1 ", #1\n\t"                                                      \
    "smmlar " Q_VC ", " Q_D1 ", " Q_C0 ", " Q_D0 "\n\t"                                   \
    "add " Q_VC ", " Q_VC ", " Q_D1 ", asr #31\n\t"                                       \
    "asr " Q_VC ", " Q_VC ", " Q_C1 "\n\t"                                                \
    "ssat " Q_VC ", #8, " Q_VC "\n\t"                                                     \
    "bfi " Q_VA ", " Q_VC ", #" #K ", #8\n\t"
/* One pixel's fused add: the word at x0 read, its four bytes summed, written back. */
#define Q_ADD(V)                                                                           \
    "ldr " Q_VA ", [" Q_X0 "]\n\t" Q_ADD1(V, 0, "") Q_ADD1(V, 8, ", ror #8")               \
        Q_ADD1(V, 16, ", ror #16") Q_ADD1(V, 24, ", ror #24") "str " Q_VA ", [" Q_X0 "]\n\t"
_Static_assert(offsetof(tt_conv_params, out_c) == 20 && offsetof(tt_conv_params, res) == 68,
               "tt_qx_block02 reads these offsets");
_Static_assert(offsetof(tt_residual, t_other) == 8 && offsetof(tt_residual, rq) == 12
                   && offsetof(tt_residual, c_mul) == 16 && sizeof(tt_rq) == 16,
               "tt_qx_block02 reads these offsets");

/* tt_qx_block02's last out_c % 4 channels (its arguments: the weights, records and outputs
 * after the quads). */
static __attribute__((used, noinline)) void tt_qx_fast_tail(TT_QX_ARGS)
{
    tt_qx_tail(p, w, rq, o, col, col_end, s0, s1, ((pass >> 12) & 1) + 1, (pass >> 13) & 7,
               (int32_t)((uint32_t)pass >> 16), 1);
}

/* tt_qx_block02's and tt_qx4_block02's asm: ENTRY makes r6 (the steps skipped) the loop's
 * entry address (r7 free), SHIFT_IN scales a quad's biases as the layout scales its sums,
 * BODY is one pass of the unrolled loop, SHIFT_OUT scales the sums back (exact). */
#define TT_QX_FAST_ASM(ENTRY, SHIFT_IN, BODY, SHIFT_OUT) \
    "push {r4-r11, lr}\n\t" \
    "sub sp, sp, #28\n\t" \
    "str r0, [sp, #24]\n\t" \
    "str r2, [sp, #0]\n\t" \
    "str r3, [sp, #4]\n\t" \
    "ldr r4, [sp, #80]\n\t" /* pass */ \
    "ldr r5, [r0, #20]\n\t" /* out_c */ \
    "bic r5, r5, #3\n\t" \
    "add r5, r3, r5\n\t" \
    "str r5, [sp, #8]\n\t" \
    "and r6, r4, #63\n\t" /* steps skipped: the loop's entry */ \
    ENTRY \
    "str r6, [sp, #12]\n\t" \
    "lsr r7, r4, #16\n\t" \
    "tst r4, #4096\n\t" \
    "it eq\n\t" \
    "moveq r7, #0\n\t" \
    "str r7, [sp, #16]\n\t" \
    "ubfx r8, r4, #13, #3\n\t" \
    "ldr r9, [r0, #68]\n\t" \
    "cmp r8, #2\n\t" \
    "it ne\n\t" \
    "movne r9, #0\n\t" \
    "str r9, [sp, #20]\n\t" \
    "cmp r3, r5\n\t" \
    "beq 7f\n" \
    "0:\n\t" \
    "ldr r12, [sp, #0]\n\t" \
    "ldr " Q_A0 ", [r12]\n\t" \
    "ldr " Q_B0 ", [r12, #16]\n\t" \
    "ldr " Q_C0 ", [r12, #32]\n\t" \
    "ldr " Q_D0 ", [r12, #48]\n\t" \
    "ldr " Q_VA ", [sp, #72]\n\t" \
    "ldr " Q_VC ", [sp, #76]\n\t" \
    "ldr r2, [sp, #64]\n\t" \
    "ldr " Q_X0 ", [sp, #12]\n\t" SHIFT_IN \
    "add " Q_A0 ", " Q_A0 ", " Q_B0 ", lsl #8\n\t" \
    "add " Q_C0 ", " Q_C0 ", " Q_D0 ", lsl #8\n\t" \
    "mov " Q_B1 ", " Q_B0 "\n\t" \
    "mov " Q_D1 ", " Q_D0 "\n\t" \
    "sub " Q_A1 ", " Q_A0 ", " Q_VC "\n\t" \
    "sub " Q_A0 ", " Q_A0 ", " Q_VA "\n\t" \
    "sub " Q_C1 ", " Q_C0 ", " Q_VC "\n\t" \
    "sub " Q_C0 ", " Q_C0 ", " Q_VA "\n\t" \
    "mov pc, " Q_X0 "\n\t" \
    ".p2align 2\n" \
    "1:\n\t" BODY \
    "ldr " Q_X0 ", [sp, #68]\n\t" \
    "cmp r2, " Q_X0 "\n\t" \
    "bne 1b\n\t" \
    "sub " Q_A0 ", " Q_A0 ", " Q_B0 ", lsl #8\n\t" \
    "sub " Q_A1 ", " Q_A1 ", " Q_B1 ", lsl #8\n\t" \
    "sub " Q_C0 ", " Q_C0 ", " Q_D0 ", lsl #8\n\t" \
    "sub " Q_C1 ", " Q_C1 ", " Q_D1 ", lsl #8\n\t" SHIFT_OUT \
    "ldr r2, [sp, #0]\n\t" \
    Q_RQ2(Q_A0, Q_A1, 0) Q_RQ2(Q_B0, Q_B1, 16) Q_RQ2(Q_C0, Q_C1, 32) Q_RQ2(Q_D0, Q_D1, 48) \
    "bfi " Q_A0 ", " Q_B0 ", #8, #8\n\t" \
    "bfi " Q_A1 ", " Q_B1 ", #8, #8\n\t" \
    "bfi " Q_A0 ", " Q_C0 ", #16, #8\n\t" \
    "bfi " Q_A1 ", " Q_C1 ", #16, #8\n\t" \
    "bfi " Q_A0 ", " Q_D0 ", #24, #8\n\t" \
    "bfi " Q_A1 ", " Q_D1 ", #24, #8\n\t" \
    "add r2, r2, #64\n\t" \
    "str r2, [sp, #0]\n\t" \
    "ldr " Q_X0 ", [sp, #4]\n\t" \
    "ldr " Q_X1 ", [sp, #16]\n\t" \
    "ldr r2, [sp, #20]\n\t" \
    "cmp r2, #0\n\t" \
    "bne 5f\n\t" \
    "str " Q_A0 ", [" Q_X0 "]\n\t" \
    "cmp " Q_X1 ", #0\n\t" \
    "it ne\n\t" \
    "strne " Q_A1 ", [" Q_X0 ", " Q_X1 "]\n\t" \
    "add " Q_X0 ", " Q_X0 ", #4\n\t" /* the loop's end here too: no branch to it */ \
    "str " Q_X0 ", [sp, #4]\n\t" \
    "ldr " Q_X1 ", [sp, #8]\n\t" \
    "cmp " Q_X0 ", " Q_X1 "\n\t" \
    "bne 0b\n\t" \
    "b 7f\n" \
    "5:\n\t" \
    "ldr " Q_B0 ", [r2, #16]\n\t" /* c_mul */ \
    "ldr " Q_B1 ", [r2, #8]\n\t"  /* t_other */ \
    "ldr r2, [r2, #12]\n\t"       /* the sum's record */ \
    "add " Q_B1 ", " Q_B1 ", #512\n\t" \
    "ldr " Q_C0 ", [r2, #4]\n\t" \
    "ldr " Q_C1 ", [r2, #8]\n\t" \
    "ldr " Q_D0 ", [r2, #12]\n\t" \
    Q_ADD(Q_A0) \
    "cmp " Q_X1 ", #0\n\t" \
    "beq 6f\n\t" \
    "add " Q_X0 ", " Q_X0 ", " Q_X1 "\n\t" \
    Q_ADD(Q_A1) \
    "sub " Q_X0 ", " Q_X0 ", " Q_X1 "\n" \
    "6:\n\t" \
    "add " Q_X0 ", " Q_X0 ", #4\n\t" \
    "str " Q_X0 ", [sp, #4]\n\t" \
    "ldr " Q_X1 ", [sp, #8]\n\t" \
    "cmp " Q_X0 ", " Q_X1 "\n\t" \
    "bne 0b\n" \
    "7:\n\t" \
    "ldr r0, [sp, #24]\n\t" \
    "ldr r4, [r0, #20]\n\t" \
    "tst r4, #3\n\t" \
    "beq 8f\n\t" \
    "sub sp, sp, #24\n\t" /* the tail's stack arguments, sp kept 8-byte aligned */ \
    "add r12, sp, #88\n\t" \
    "ldm r12, {r4-r8}\n\t" \
    "stm sp, {r4-r8}\n\t" \
    "ldr r2, [sp, #24]\n\t" \
    "ldr r3, [sp, #28]\n\t" \
    "bl tt_qx_fast_tail\n\t" \
    "add sp, sp, #24\n" \
    "8:\n\t" \
    "add sp, sp, #28\n\t" \
    "pop {r4-r11, pc}\n\t"

static __attribute__((naked, noinline)) void tt_qx_block02(TT_QX_ARGS)
{
    __asm__(TT_QX_FAST_ASM("rsb r6, r6, r6, lsl #3\n\t" /* 56 bytes a step */
                           "adr.w r7, 1f\n\t"
                           "add r6, r7, r6, lsl #3\n\t",
                           "", Q_STEP4 Q_STEP4 Q_STEP4 Q_STEP4 Q_STEP4 Q_STEP4 Q_STEP4 Q_STEP4, ""));
}

/* The same for the quads4 and quads2 layouts (tt_conv2d_s4_qx_plain, _add and the s2 ones):
 * 16 steps a pass, 64 bytes a step (quads2: 132 a pair of steps, and the steps skipped are
 * even); the sums run 16 / 64 times the int8 ones, biases included (tt_qx_block). */
#define Q4_STEP TT_QX4_STEP_R(Q_A0, Q_A1, Q_B0, Q_B1, Q_C0, Q_C1, Q_D0, Q_D1, Q_VA, Q_VC, Q_X0, Q_X1, "r1", "r2")
#define Q4_STEP4 Q4_STEP Q4_STEP Q4_STEP Q4_STEP
#define Q2_STEP2 TT_QX2_STEP2_R(Q_A0, Q_A1, Q_B0, Q_B1, Q_C0, Q_C1, Q_D0, Q_D1, Q_VA, Q_VC, Q_X0, Q_X1, "r1", "r2")
#define Q2_STEP8 Q2_STEP2 Q2_STEP2 Q2_STEP2 Q2_STEP2
/* OP (lsl, asr) by N bits on four registers: a quad's biases on entry, its sums after. */
#define Q_SHIFT4(OP, N, R0, R1, R2, R3)                                                    \
    OP " " R0 ", " R0 ", #" N "\n\t" OP " " R1 ", " R1 ", #" N "\n\t" OP " " R2 ", " R2     \
       ", #" N "\n\t" OP " " R3 ", " R3 ", #" N "\n\t"
#define Q_SHIFT_IN(N) Q_SHIFT4("lsl", N, Q_A0, Q_B0, Q_C0, Q_D0)
#define Q_SHIFT_OUT(N) Q_SHIFT4("asr", N, Q_A0, Q_B0, Q_C0, Q_D0) Q_SHIFT4("asr", N, Q_A1, Q_B1, Q_C1, Q_D1)
static __attribute__((naked, noinline)) void tt_qx4_block02(TT_QX_ARGS)
{
    __asm__(TT_QX_FAST_ASM("adr.w r7, 1f\n\t"
                           "add r6, r7, r6, lsl #6\n\t",
                           Q_SHIFT_IN("4"), Q4_STEP4 Q4_STEP4 Q4_STEP4 Q4_STEP4, Q_SHIFT_OUT("4")));
}
static __attribute__((naked, noinline)) void tt_qx2_block02(TT_QX_ARGS)
{
    __asm__(TT_QX_FAST_ASM("lsl r7, r6, #6\n\t" /* 66 bytes a step */
                           "add r6, r7, r6, lsl #1\n\t"
                           "adr.w r7, 1f\n\t"
                           "add r6, r7, r6\n\t",
                           Q_SHIFT_IN("6"), Q2_STEP8 Q2_STEP8, Q_SHIFT_OUT("6")));
}
#else
TT_QX_INSTANCE02(tt_qx, 8)
TT_QX_INSTANCE02(tt_qx4, 4)
TT_QX_INSTANCE02(tt_qx2, 2)
#endif
/* The mirrored fused adds (modes 5, 6), for the int8 entry that links them. */
static __attribute__((noinline)) void tt_qx_block5(TT_QX_ARGS)
{
    TT_QX_BLOCK(5, 8, 0);
}
static __attribute__((noinline)) void tt_qx_block6(TT_QX_ARGS)
{
    TT_QX_BLOCK(6, 8, 0);
}

/* The "flat" field of one pixel for tt_conv2d_s8_qx: its kh * kw * in_c values gathered
 * as bytes in (ky, kx, c) order - the input zero point where the window leaves the input,
 * so x - zp is 0 there - and up to whole words (their weights are 0), then unpacked in
 * SXTAB16 lane order (the generator orders the weights to match); returns the field's
 * sum.  A kernel row inside the input is one run of HWC memory, copied a word at a time. */
static __attribute__((noinline)) int32_t
tt_qx_flat(const tt_conv_params *p, const int8_t *in, int32_t oy, int32_t ox,
                          int32_t k4, int8_t *tmp, int32_t *col)
{
    const int32_t c_n = p->in_c;
    const int8_t zp = (int8_t)p->in_zp;
    const int32_t x0 = ox * p->stride_w - p->pad_w;
    const int32_t kx0 = x0 < 0 ? -x0 : 0;
    int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
    kx1 = kx1 < kx0 ? kx0 : kx1;
    const int32_t before = kx0 * c_n, run = (kx1 - kx0) * c_n, row = p->k_w * c_n;
    int8_t *t = tmp;
    int32_t iy = oy * p->stride_h - p->pad_h;
    const int32_t inside = run == row && iy >= 0 && iy + p->k_h <= p->in_h;
    if (inside) { /* the window inside the input: whole rows of bytes, nothing to fill */
        const int8_t *ip = in + (iy * p->in_w + x0) * c_n;
        const int32_t row_bytes = p->in_w * c_n;
        for (int32_t ky = 0; ky < p->k_h; ++ky, ip += row_bytes, t += row) {
            int32_t i = 0;
            for (; i + 4 <= row; i += 4) {
                const int32_t v = tt_word(ip + i);
                memcpy(t + i, &v, 4);
            }
            for (; i < row; ++i) {
                t[i] = ip[i];
            }
        }
    }
    for (int32_t ky = inside ? p->k_h : 0; ky < p->k_h; ++ky, ++iy, t += row) {
        if (iy < 0 || iy >= p->in_h) {
            for (int32_t i = 0; i < row; ++i) {
                t[i] = zp;
            }
            continue;
        }
        for (int32_t i = 0; i < before; ++i) {
            t[i] = zp;
        }
        const int8_t *ip = in + (iy * p->in_w + x0 + kx0) * c_n;
        int8_t *d = t + before;
        int32_t i = 0;
        for (; i + 4 <= run; i += 4) {
            const int32_t v = tt_word(ip + i);
            memcpy(d + i, &v, 4); /* one STR: unaligned stores are allowed too */
        }
        for (; i < run; ++i) {
            d[i] = ip[i];
        }
        for (i = before + run; i < row; ++i) {
            t[i] = zp;
        }
    }
    while (t < tmp + 4 * k4) {
        *t++ = zp;
    }
    int32_t sum = 0;
    tt_mx_unpack(tmp, k4, tt_pack_offset(p->in_zp), col, &sum, 0);
    return sum;
}

/* The receptive field of a pixel whose window lies wholly inside the input (every
 * interior pixel), `n` words per kernel row a multiple of 4 up to 60: its rows unpacked
 * into the pixel-pair layout with no bounds or padding logic; returns the field's sum. */
static __attribute__((noinline)) int32_t
tt_qx_inside(const int8_t *ip, const tt_conv_params *p, int32_t n, int32_t *col)
{
    const int32_t row_skip = (p->in_w - p->k_w) * p->in_c, off = tt_pack_offset(p->in_zp);
    int32_t sum = 0;
    for (int32_t rows = p->k_h; rows > 0; --rows) {
        const int8_t *const end4 = ip + 4 * n;
        int32_t v0, v1, v2, v3, e0, e1, e2, e3, acc = 0;
        TT_UNPACK_SUM(2, 4);
        sum = __smlad(acc, 0x00010001, sum);
        ip += row_skip;
    }
    return sum;
}

/* Channels padded to 4 (tt_conv2d_s8_qx): the general im2col, then the field's sum. */
static __attribute__((noinline)) int32_t tt_qx_im2col(const tt_conv_params *p, const int8_t *in,
                                                      int32_t oy, int32_t ox, int32_t k4,
                                                      int32_t *col)
{
    tt_im2col(p, in, oy * p->out_w + ox, (p->in_c + 3) & ~3, col, 4, 2);
    int32_t s = 0;
    for (const int32_t *c = col; c < col + 4 * k4; c += 2) {
        s = __smlad(*c, 0x00010001, s);
    }
    return s;
}

/* One column word of tt_qx_rgb33: its two SXTAB16 lanes stored 2 words apart, their sum
 * added to the lanes of *acc. */
static inline __attribute__((always_inline)) void tt_qx_word(uint32_t v, int32_t off, int32_t *col,
                                                            int32_t *acc)
{
    const int32_t e = __sxtab16(off, (int32_t)v), o = tt_sxtab16_ror8(off, (int32_t)v);
    col[0] = e;
    col[2] = o;
    *acc = __sadd16(__sadd16(*acc, e), o);
}

/* The flat field of a 3 x 3 window of 3 channels (an RGB stem) wholly inside the input:
 * its 27 bytes (three rows of 9, `row_bytes` apart) and the zero point as a 28th, built as
 * the 7 words tt_qx_flat would gather, straight from unaligned loads, and unpacked; returns
 * the field's sum. */
static __attribute__((noinline)) int32_t tt_qx_rgb33(const int8_t *r0, int32_t row_bytes,
                                                     int32_t zp, int32_t *col)
{
    const int8_t *r1 = r0 + row_bytes, *r2 = r1 + row_bytes;
    const int32_t off = tt_pack_offset(zp);
    uint16_t h;
    memcpy(&h, r1 + 7, 2);
    int32_t acc = 0;
    tt_qx_word((uint32_t)tt_word(r0), off, col, &acc);
    tt_qx_word((uint32_t)tt_word(r0 + 4), off, col + 4, &acc);
    tt_qx_word((uint8_t)r0[8] | (uint32_t)tt_word(r1) << 8, off, col + 8, &acc);
    tt_qx_word((uint32_t)tt_word(r1 + 3), off, col + 12, &acc);
    tt_qx_word(h | (uint32_t)tt_word(r2) << 16, off, col + 16, &acc);
    tt_qx_word((uint32_t)tt_word(r2 + 2), off, col + 20, &acc);
    tt_qx_word((uint32_t)tt_word(r2 + 5) >> 8 | (uint32_t)zp << 24, off, col + 24, &acc);
    return __smlad(acc, 0x00010001, 0);
}

/* Pixel (oy, ox)'s column words into the pixel-pair layout at `col` (words 2 apart; flat:
 * through the byte field `tmp`); returns the receptive field's sum.  The interior pixels
 * tt_qx_inside and tt_qx_rgb33 take never come here (tt_qx_run calls them).  Out of line: the main loop
 * keeps little state, so its frame and the callees' stay small. */
static __attribute__((noinline)) int32_t
tt_qx_pixel(const tt_conv_params *p, const int8_t *in, int32_t oy, int32_t ox, int32_t k4,
            int32_t flat, int8_t *tmp, int32_t *col)
{
    /* Each branch ends in a call whose result is returned as is: tail calls, this frame
     * gone before the callee's. */
    if (flat) {
        return tt_qx_flat(p, in, oy, ox, k4, tmp, col);
    }
    /* Channels a multiple of 4 come here only in layers tt_qx_pair_* cannot take (odd
     * widths, wide padding): the general im2col serves them, and the image keeps no
     * separate unpacker for them. */
    return tt_qx_im2col(p, in, oy, ox, k4, col);
}

#if defined(__OPTIMIZE__)
/* The pixel-pair builders of an RGB 3 x 3 stem (flat fields, tt_qx_run's rows of pairs):
 * tt_qx_rgb33 for a window inside the input, tt_qx_flat for one that reaches into the
 * padding. */
static int32_t tt_qx_rgb_pair_in(const int8_t *ip, const tt_conv_params *p, int32_t *col, int32_t *s1)
{
    const int32_t row_bytes = 3 * p->in_w;
    *s1 = tt_qx_rgb33(ip + 3 * p->stride_w, row_bytes, p->in_zp, col + 1);
    return tt_qx_rgb33(ip, row_bytes, p->in_zp, col);
}

static int32_t tt_qx_rgb_pair_edge(const int8_t *in, const tt_conv_params *p, int32_t x0, int32_t y0,
                                   int32_t *col, int32_t *s1)
{
    const int32_t k4 = (p->k_h * p->k_w * 3 + 3) / 4, in_w = p->in_w;
    const int32_t ox = (x0 + p->pad_w) / p->stride_w, oy = (y0 + p->pad_h) / p->stride_h;
    const int32_t rows_in = (uint32_t)y0 <= (uint32_t)(p->in_h - 3);
    int8_t *const tmp = (int8_t *)(void *)(col + 4 * k4); /* after both columns, as tt_qx_run */
    int32_t s[2];
#pragma GCC unroll 1
    for (int32_t k = 0; k < 2; ++k) {
        const int32_t x = x0 + k * p->stride_w;
        s[k] = rows_in && (uint32_t)x <= (uint32_t)(in_w - 3)
                   ? tt_qx_rgb33(in + (y0 * in_w + x) * 3, 3 * in_w, p->in_zp, col + k)
                   : tt_qx_flat(p, in, oy, ox + k, k4, tmp, col + k);
    }
    *s1 = s[1];
    return s[0];
}

const struct tt_qx_pair_fns tt_qx_rgb_pairs = {tt_qx_rgb_pair_in, tt_qx_rgb_pair_edge};
#else
const struct tt_qx_pair_fns tt_qx_rgb_pairs = {0};
#endif

/* The pixel loop, one instance for every entry point: each pixel pair's columns, then
 * `block` for every output channel, `steps` column words per pass of its loop (16 for
 * modes 0 and 2, see tt_qx_block), `mode` as tt_mm_mode reads it, bits 12-13 1 for the
 * quads4 blocks, 2 for the quads2 blocks. */
#define TT_QX_HOW(flat, steps, mode) ((flat) | (steps) << 1 | (mode) << 8)
/* Column words per pass: in modes 0 and 2 those of tt_qx_block's loop for them (int8 32,
 * quads4 and quads2 16), else twice the schedule's unroll. */
#define TT_QX_STEPS(mode, unroll, big) ((mode) == 0 || (mode) == 2 ? (big) : 2 * (unroll))
/* The same for the quads4 blocks (64-byte steps) and the quads2 blocks (132 bytes per two). */
#define TT_QX4_HOW(flat, steps, mode) (TT_QX_HOW(flat, steps, mode) | 1 << 12)
#define TT_QX2_HOW(flat, steps, mode) (TT_QX_HOW(flat, steps, mode) | 2 << 12)
static __attribute__((noinline)) void
tt_qx_run(const tt_conv_params *p, const int8_t *in, const int32_t *w, const tt_rq *rq,
          int8_t *out, int16_t *scratch, tt_qx_block_fn block, int32_t how)
{
    /* `how`: flat | steps << 1 | mode << 8 | layout << 12 | pixel stride << 16, so that the
     * entry points, which take as many arguments, tail-call this function (no frame of
     * theirs on the stack). */
    const int32_t flat = how & 1, steps = (how >> 1) & 127, mode = (how >> 8) & 15;
    /* bits 16-31: bytes between output pixels where a call computes a block of channels */
    const int32_t stride = (how >> 16) != 0 ? (int32_t)((uint32_t)how >> 16) : p->out_c;
    /* quads, quads4, quads2 (whose steps come in pairs: the steps skipped are even) */
    const int32_t icp = (p->in_c + 3) & ~3;
    const int32_t k4 = flat ? (p->k_h * p->k_w * p->in_c + 3) / 4 : p->k_h * p->k_w * icp / 4;
    const int32_t nw = 2 * k4; /* column words (pairs of inputs) per pixel */
    const int32_t skip = (steps - (nw & (steps - 1))) & (steps - 1); /* steps, not bytes */
    /* the pixels' bit added per pass */
    const int32_t pass = TT_QX_PASS(skip, steps, 1, mode) | (int32_t)((uint32_t)stride << 16);
    const int32_t n_pix = p->out_h * p->out_w;
    int32_t *col = (int32_t *)(void *)scratch;
    const int32_t *const col_end = col + 2 * nw;
    int8_t *tmp = (int8_t *)(void *)(col + 2 * nw); /* flat: the field as bytes */
    /* Interior pixels of a layer tt_qx_inside takes (tt_qx_pixel's first case) go to it
     * straight from here: the dispatch costs as much as a quarter of the unpacking. */
    const int32_t row_words = p->k_w * p->in_c >> 2;
    const int32_t inside = !flat && (p->in_c & 3) == 0 && (row_words & 3) == 0 && row_words <= 60
                           && p->in_w >= p->k_w && p->in_h >= p->k_h;
    /* and interior pixels of an RGB 3 x 3 stem to tt_qx_rgb33 */
    const int32_t rgb = flat && p->in_c == 3 && p->k_h == 3 && p->k_w == 3;
#if defined(__OPTIMIZE__)
    /* Pairs of pixels whose windows overlap (tt_qx_pair_in inside the input, tt_qx_pair_edge
     * where they reach into the padding): both columns at once, each input pixel the two
     * windows share unpacked once.  Where out_w is even the pairs of a row stay in it. */
    const struct tt_qx_pair_fns *const pf = p->pairs;
    /* The generator names builders (p->pairs) only in layers whose pairs they can take
     * (ops/conv.py, pair_builders): &tt_qx_pairs where channels come in groups of 4, a
     * kernel row holds at most 240 bytes, windows overlap and no pair reaches more than
     * stride_w pixels into the padding on either side; &tt_qx_rgb_pairs in RGB 3 x 3 stems;
     * both only where out_w is even (the pairs of a row stay in it). */
    if (pf != 0) {
        const int32_t span = p->k_w + p->stride_w, x_last = (p->out_w - 2) * p->stride_w - p->pad_w;
        /* Row by row, a pair at a time: the pairs inside the input (tt_qx_pair_in: in_c a
         * multiple of 16; tt_qx_rgb_pair_in: 3 channels; the row's windows inside) lie
         * between two bounds of x0. */
        const int32_t in_w = p->in_w, c = p->in_c, x_step = 2 * p->stride_w, ip_step = x_step * c;
        const int32_t x_in = in_w - span; /* the last x0 inside */
        int8_t *o = out;
        for (int32_t y0 = -p->pad_h, oy = p->out_h; oy > 0; --oy, y0 += p->stride_h) {
            const int32_t row_in = ((c & 15) == 0 || c == 3) && (uint32_t)y0 <= (uint32_t)(p->in_h - p->k_h);
            const int8_t *ip = in + (y0 * in_w - p->pad_w) * c;
            for (int32_t x0 = -p->pad_w; x0 <= x_last; x0 += x_step, ip += ip_step, o += 2 * stride) {
                int32_t s1;
                const int32_t s0 = row_in && (uint32_t)x0 <= (uint32_t)x_in ? pf->inside(ip, p, col, &s1)
                                                                           : pf->edge(in, p, x0, y0, col, &s1);
                block(p, w, rq, o, col, col_end, (int32_t)((uint32_t)s0 << 7), (int32_t)((uint32_t)s1 << 7),
                      pass | 1 << 12);
            }
        }
        return;
    }
#endif
    int32_t oy = 0, ox = 0; /* of pixel `pix`, kept without division */
    for (int32_t pix = 0; pix < n_pix; pix += 2) {
        const int32_t n = n_pix - pix < 2 ? 1 : 2;
        int32_t s0 = 0, s1 = 0;
        /* One copy of the dispatch for both pixels (flash): not unrolled. */
#pragma GCC unroll 1
        for (int32_t k = 0; k < 2; ++k) {
            /* Read from p, not kept: the frame of this loop is on the stack under every
             * block's (unsigned compares: x0 >= 0 too). */
            const int32_t x0 = ox * p->stride_w - p->pad_w, y0 = oy * p->stride_h - p->pad_h;
            const int32_t in_window = (uint32_t)x0 <= (uint32_t)(p->in_w - p->k_w)
                                      && (uint32_t)y0 <= (uint32_t)(p->in_h - p->k_h);
            const int32_t f = inside && in_window
                                  ? tt_qx_inside(in + (y0 * p->in_w + x0) * p->in_c, p, p->k_w * p->in_c >> 2,
                                                 col + k)
                              : rgb && in_window
                                  ? tt_qx_rgb33(in + (y0 * p->in_w + x0) * 3, p->in_w * 3, p->in_zp, col + k)
                                  : tt_qx_pixel(p, in, oy, ox, k4, flat, tmp, col + k);
            s1 = (int32_t)((uint32_t)f << 7);
            if (k == 0) {
                s0 = s1;
            }
            /* A missing last pixel repeats the one before (its outputs are not stored). */
            if ((k == 1 || n == 2) && ++ox == p->out_w) {
                ox = 0;
                ++oy;
            }
        }
        block(p, w, rq, out + pix * stride, col, col_end, s0, s1, pass | (n - 1) << 12);
    }
}

/* The entry points: each passes the block instance of its output mode, so that a model's
 * image links only the output code its layers run. */
void tt_conv2d_s8_qx(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                     const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                     int32_t unroll)
{
    const int32_t mode = tt_mm_mode(p);
    tt_qx_run(p, in, w, rq, out, scratch, tt_qx_blockn, TT_QX_HOW(flat, TT_QX_STEPS(mode, unroll, 32), mode));
}

void tt_conv2d_s8_qx_plain(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                           const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                           int32_t unroll)
{
    (void)unroll;
    tt_qx_run(p, in, w, rq, out, scratch, tt_qx_block02, TT_QX_HOW(flat, 32, 0));
}

void tt_conv2d_s8_qx_mirror(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                            const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                            int32_t unroll)
{
    /* The generator takes this entry for modes 5 and 6 only. */
    const int32_t mode = tt_mm_mode(p);
    tt_qx_run(p, in, w, rq, out, scratch, mode == 5 ? tt_qx_block5 : tt_qx_block6, TT_QX_HOW(flat, 2 * unroll, mode));
}

void tt_conv2d_s8_qx_add(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                         const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                         int32_t unroll)
{
    (void)unroll;
    tt_qx_run(p, in, w, rq, out, scratch, tt_qx_block02, TT_QX_HOW(flat, 32, 2));
}

/* Channels c0..c0+nb-1 of a packed layer (shared, int4, int2) into the int8 quads layout
 * at `wb` (tinytamer/micro/ops/conv.py _quads: per quad of channels and column word j, the
 * pairs words AB_j, CD_j, each [A_lo + 128, B_lo, A_hi + 128, B_hi] with (lo, hi) the
 * SXTAB16 lanes of input group j / 2; the nb % 4 channels left as pairs words after, an odd
 * last one paired with zeros).  Each channel's row is unpacked once into `row` (kp bytes),
 * padded to kp: after its last input (flat) or after each kernel position's in_c (channel
 * packing, icp inputs a position). */
static void tt_qxb_pack(const tt_wpack *w, int32_t c0, int32_t nb, const tt_conv_params *p,
                        int32_t flat, int32_t kp, int8_t *row, uint8_t *wb)
{
    const int32_t ic = p->in_c, icp = (ic + 3) & ~3, taps = p->k_h * p->k_w, nw = kp >> 1;
    const int32_t quads = nb & ~3;
    for (int32_t t = 0; t < nb; ++t) {
        tt_wpack_row(w, c0 + t, row);
        if (flat) {
            for (int32_t e = taps * ic; e < kp; ++e) {
                row[e] = 0;
            }
        } else if (icp != ic) { /* spread the positions icp apart, from the last one down */
            for (int32_t pos = taps - 1; pos >= 0; --pos) {
                for (int32_t ci = icp - 1; ci >= 0; --ci) {
                    row[pos * icp + ci] = ci < ic ? row[pos * ic + ci] : 0;
                }
            }
        }
        /* Where channel t's bytes go: its quad's words (AB, CD of each column word), or
         * its tail pair's words; byte 0 / 2 for a pair's first channel (+ 128), 1 / 3 for
         * its second. */
        const int32_t first = (t & 1) == 0, add = first ? 128 : 0;
        uint8_t *d = t < quads ? wb + (t & ~3) * kp + 4 * ((t >> 1) & 1)
                               : wb + quads * kp + ((t - quads) >> 1) * 2 * kp;
        const int32_t step = t < quads ? 8 : 4;
        d += first ? 0 : 1;
        for (int32_t j = 0; j < nw; ++j, d += step) {
            const int32_t e = 4 * (j >> 1) + (j & 1);
            d[0] = (uint8_t)(row[e] + add);
            d[2] = (uint8_t)(row[e + 2] + add);
        }
        if (t == nb - 1 && t >= quads && first) { /* an odd last channel: a zero partner */
            uint8_t *z = wb + quads * kp + ((t - quads) >> 1) * 2 * kp + 1;
            for (int32_t j = 0; j < nw; ++j, z += 4) {
                z[0] = 0;
                z[2] = 0;
            }
        }
    }
}

/* Whether any of the n records is in the general form (the instance for modes 0 and 2
 * takes none). */
static int32_t tt_rq_any_general(const tt_rq *rq, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        if (rq[i].rshift == TT_RQ_GENERAL) {
            return 1;
        }
    }
    return 0;
}

/* A packed convolution (shared, int4, int2) on the quads kernel: the weights of `block`
 * channels at a time unpacked into the int8 quads layout in the arena (`scratch`: block *
 * kp bytes, then one row of kp, then the quads kernel's columns), then every output pixel
 * for those channels; the columns are rebuilt for each block, the weights unpacked once. */
void tt_conv2d_s8_qxb(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                      const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                      int32_t unroll, int32_t block)
{
    const int32_t oc_n = p->out_c, taps = p->k_h * p->k_w;
    const int32_t kp = flat ? (taps * p->in_c + 3) & ~3 : taps * ((p->in_c + 3) & ~3);
    uint8_t *const wb = (uint8_t *)(void *)scratch;
    int8_t *const row = (int8_t *)(wb + block * kp);
    int16_t *const col = (int16_t *)(void *)(row + kp);
    const int32_t mode = tt_mm_mode(p);
    const tt_qx_block_fn fn = (mode == 0 || mode == 2) && !tt_rq_any_general(rq, oc_n) ? tt_qx_block02 : tt_qx_blockn;
    const int32_t how = TT_QX_HOW(flat, TT_QX_STEPS(mode, unroll, 32), mode) | oc_n << 16;
    tt_conv_params q = *p;
    for (int32_t c0 = 0; c0 < oc_n; c0 += block) {
        q.out_c = oc_n - c0 < block ? oc_n - c0 : block;
        tt_qxb_pack(w, c0, q.out_c, p, flat, kp, row, wb);
        tt_qx_run(&q, in, (const int32_t *)(const void *)wb, rq + c0, out + c0, col, fn, how);
    }
}

/* The quads4 / quads2 entry points (packed int4 / int2 weights): as tt_conv2d_s8_qx_plain,
 * _add and tt_conv2d_s8_qx; mirrored fused adds take the general form. */
#define TT_QX_ENTRIES(bits, prefix, HOW)                                                    \
    void tt_conv2d_s##bits##_qx_plain(const tt_conv_params *p, const int8_t *in,             \
                                      const int32_t *w, const tt_rq *rq, int8_t *out,       \
                                      int16_t *scratch, int32_t flat, int32_t unroll)      \
    {                                                                                      \
        (void)unroll;                                                                      \
        tt_qx_run(p, in, w, rq, out, scratch, prefix##_block02, HOW(flat, 16, 0));        \
    }                                                                                      \
    void tt_conv2d_s##bits##_qx_add(const tt_conv_params *p, const int8_t *in,               \
                                    const int32_t *w, const tt_rq *rq, int8_t *out,         \
                                    int16_t *scratch, int32_t flat, int32_t unroll)        \
    {                                                                                      \
        (void)unroll;                                                                      \
        tt_qx_run(p, in, w, rq, out, scratch, prefix##_block02, HOW(flat, 16, 2));        \
    }                                                                                      \
    void tt_conv2d_s##bits##_qx(const tt_conv_params *p, const int8_t *in, const int32_t *w, \
                                const tt_rq *rq, int8_t *out, int16_t *scratch,             \
                                int32_t flat, int32_t unroll)                               \
    {                                                                                      \
        const int32_t mode = tt_mm_mode(p);                                                \
        tt_qx_run(p, in, w, rq, out, scratch, prefix##_blockn,                             \
                  HOW(flat, TT_QX_STEPS(mode, unroll, 16), mode));                         \
    }
TT_QX_ENTRIES(4, tt_qx4, TT_QX4_HOW)
TT_QX_ENTRIES(2, tt_qx2, TT_QX2_HOW)

#endif
