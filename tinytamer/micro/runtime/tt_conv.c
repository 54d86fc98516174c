/* Convolution (groups 1 or grouped): the portable tt_conv2d_s8 and, on Cortex-M with the
 * DSP extension, tt_conv2d_s8_dsp (im2col + compiler-scheduled SMLAD) and tt_conv2d_s8_mm.
 *
 * tt_conv2d_s8_mm (the default convolution where its requantization is provably exact) is
 * the CMSIS-NN arm_nn_mat_mult_kernel_s8_s16 idea - 2 output channels x 2 pixels per pass,
 * each unpacked value used twice - with the inner loop scheduled by hand for the Cortex-M4
 * TRM's timings (consecutive loads pipeline), optionally int16 weights pre-expanded in
 * flash, and SRDHM + RoundingDivideByPOT folded into one SMMULR and three ALU operations.
 * Both DSP variants share one im2col, so they stay in this one file. */
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

static inline int32_t *tt_zero_run(int32_t n, int32_t *col)
{
    for (int32_t i = 0; i < n; ++i) {
        col[0] = 0;
        col[1] = 0;
        col += 4;
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
            col = tt_zero_run(row, col);
            continue;
        }
        col = tt_zero_run(before, col);
        col = tt_unpack_run(ip, run, off, col);
        col = tt_zero_run(after, col);
    }
}

/* The "flat" packing for the mm kernel: the receptive field in (ky, kx, c) order as int16
 * in natural order, zero padded to 4 * k4 values in `tmp`, then copied two words per group
 * into the column buffer (groups `step` words apart).  The generator orders the weights to
 * match ([w0 w2 w1 w3] bytes per int8 word, so SXTB16 gives [w0|w1] and ROR 8 [w2|w3]). */
static void tt_im2col_flat_nat(const tt_conv_params *p, const int8_t *in, int32_t oy,
                               int32_t ox, int32_t k4, int16_t *tmp, int32_t *col, int32_t step)
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
        col[1] = src[1];
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


/* Requantize, clamp and store the 2 x 2 block of outputs of channels r[0], r[1].  `mode`
 * (fixed per layer by tt_mm_mode): 0 the clamp is the whole int8 range (one SSAT); 1 a
 * narrower activation range; 2 a fused residual add whose sum is requantized in
 * single-multiply form too, both clamps the whole int8 range; 3 the same with narrower
 * clamps; 4 a fused add in the general form.  Each channel's constants are loaded once
 * for its two pixels. */
static inline __attribute__((always_inline)) void
tt_mm_out4(int32_t mode, const tt_conv_params *p, const tt_rq *r, int8_t *o0, int8_t *o1,
           int32_t a00, int32_t a01, int32_t a10, int32_t a11)
{
    const int32_t m0 = r[0].mult, e0 = r[0].rshift, f0 = r[0].offset;
    const int32_t m1 = r[1].mult, e1 = r[1].rshift, f1 = r[1].offset;
    int32_t t;
    /* A channel in the general form (rare: see tt_rq_chan) leaves the straight-line path. */
    if (__builtin_expect(e0 == TT_RQ_GENERAL, 0)) {
        a00 = tt_rq_general(a00, r);
        a01 = tt_rq_general(a01, r);
    } else {
        t = tt_smmulr((int32_t)((uint32_t)a00 << 1), m0);
        a00 = (t + f0 + (t >> 31)) >> e0;
        t = tt_smmulr((int32_t)((uint32_t)a01 << 1), m0);
        a01 = (t + f0 + (t >> 31)) >> e0;
    }
    if (__builtin_expect(e1 == TT_RQ_GENERAL, 0)) {
        a10 = tt_rq_general(a10, r + 1);
        a11 = tt_rq_general(a11, r + 1);
    } else {
        t = tt_smmulr((int32_t)((uint32_t)a10 << 1), m1);
        a10 = (t + f1 + (t >> 31)) >> e1;
        t = tt_smmulr((int32_t)((uint32_t)a11 << 1), m1);
        a11 = (t + f1 + (t >> 31)) >> e1;
    }
    if (mode == 0 || mode == 2) {
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
        o0[0] = tt_fuse(res, o0[0], (int8_t)a00);
        o1[0] = tt_fuse(res, o1[0], (int8_t)a01);
        o0[1] = tt_fuse(res, o0[1], (int8_t)a10);
        o1[1] = tt_fuse(res, o1[1], (int8_t)a11);
        return;
    }
    const tt_rq *q = res->rq;
    const int32_t *tc = res->t_conv + 128, *to = res->t_other + 128;
    a00 = tt_rq_apply(tc[a00] + to[o0[0]], q);
    a01 = tt_rq_apply(tc[a01] + to[o1[0]], q);
    a10 = tt_rq_apply(tc[a10] + to[o0[1]], q);
    a11 = tt_rq_apply(tc[a11] + to[o1[1]], q);
    if (mode == 2) {
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

static int32_t tt_mm_mode(const tt_conv_params *p)
{
    const int32_t full = p->act_min == -128 && p->act_max == 127;
    const tt_residual *res = p->res;
    if (res == 0) {
        return full ? 0 : 1;
    }
    if (res->rq == 0) {
        return 4;
    }
    return full && res->add->act_min == -128 && res->add->act_max == 127 ? 2 : 3;
}

/* One output through the same modes (the odd channel and odd pixel paths). */
static void tt_mm_out1(int32_t mode, const tt_conv_params *p, const tt_rq *r, int8_t *o,
                       int32_t acc)
{
    const int8_t v = tt_rq_out(acc, r, p->act_min, p->act_max);
    const tt_residual *res = p->res;
    if (mode < 2) {
        *o = v;
    } else if (mode < 4) {
        *o = tt_rq_out(res->t_conv[v + 128] + res->t_other[*o + 128], res->rq,
                       res->add->act_min, res->add->act_max);
    } else {
        *o = tt_fuse(res, *o, v);
    }
}

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
            tt_im2col_flat_nat(p, in, oy, ox, k4, tmp, col, 4);
            tt_im2col_flat_nat(p, in, oy1, ox1, k4, tmp, col + 2, 4);
        } else if ((p->in_c & 3) == 0) {
            tt_im2col_rows(p, in, oy, ox, col);
            tt_im2col_rows(p, in, oy1, ox1, col + 2);
        } else {
            tt_im2col(p, in, pix, icp, col, 4);
            tt_im2col(p, in, pix + 1, icp, col + 2, 4);
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
            tt_im2col_flat_nat(p, in, oy, ox, k4, tmp, col, 2);
        } else {
            tt_im2col(p, in, pix, icp, col, 2);
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

#endif
