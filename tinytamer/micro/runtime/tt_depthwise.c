/* Depthwise convolution: the portable tt_depthwise_s8 and, on Cortex-M with the DSP
 * extension, tt_depthwise_s8_dsp (4 channels per SXTB16/SMLABB step, channel groups outermost,
 * each group run by tt_depthwise_s8_group, which the packed-weight kernel also calls). */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

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

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#include "tt_dsp.h"

/* One kernel tap for 4 channels (then on to the next tap): 2 loads (the weights' with a
 * post-increment: a group's taps are contiguous), SXTAB16 / SXTB16 unpacking, 4 MACs;
 * 12 cycles by the Cortex-M4 TRM. */
#define TT_DW_TAP                                       \
    "ldr %[x], [%[ip]]\n\t"                             \
    "ldr %[v], [%[wp]], #4\n\t"                         \
    "add %[ip], %[ip], %[cn]\n\t"                       \
    "sxtab16 %[xe], %[off], %[x]\n\t"                   \
    "sxtab16 %[x], %[off], %[x], ror #8\n\t"            \
    "sxtb16 %[we], %[v]\n\t"                            \
    "sxtb16 %[v], %[v], ror #8\n\t"                     \
    "smlabb %[a0], %[xe], %[we], %[a0]\n\t"             \
    "smlatt %[a2], %[xe], %[we], %[a2]\n\t"             \
    "smlabb %[a1], %[x], %[v], %[a1]\n\t"               \
    "smlatt %[a3], %[x], %[v], %[a3]\n\t"

#define TT_DW_OPERANDS                                                                     \
    [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [ip] "+r"(ip), [wp] "+r"(wp), \
        [x] "=&r"(x), [v] "=&r"(v), [xe] "=&r"(xe), [we] "=&r"(we)                         \
        : [cn] "r"(c_n), [off] "r"(off)                                                    \
        : "memory"

/* A channel in the general form (rare: see tt_rq_chan), out of line: inlined, its 64-bit
 * arithmetic would repeat at each of the stores below, in flash. */
static __attribute__((noinline, cold)) int32_t tt_dw_general(int32_t a, const tt_rq *r)
{
    return tt_rq_general(a, r);
}

static inline __attribute__((always_inline)) int32_t tt_dw_rq(int32_t a, const tt_rq *r)
{
    if (__builtin_expect(r->rshift == TT_RQ_GENERAL, 0)) {
        return tt_dw_general(a, r);
    }
    return tt_rq_apply(a, r);
}

/* Requantize, clamp and store one pixel's 4 channels (their records rq[0..3]). */
static inline __attribute__((always_inline)) void
tt_dw_store(const tt_conv_params *p, const tt_rq *rq, int32_t full, int8_t *o, int32_t a0,
            int32_t a1, int32_t a2, int32_t a3)
{
    if (full) {
        o[0] = (int8_t)__ssat(tt_dw_rq(a0, rq), 8);
        o[1] = (int8_t)__ssat(tt_dw_rq(a1, rq + 1), 8);
        o[2] = (int8_t)__ssat(tt_dw_rq(a2, rq + 2), 8);
        o[3] = (int8_t)__ssat(tt_dw_rq(a3, rq + 3), 8);
    } else {
        o[0] = tt_clamp(tt_dw_rq(a0, rq), p->act_min, p->act_max);
        o[1] = tt_clamp(tt_dw_rq(a1, rq + 1), p->act_min, p->act_max);
        o[2] = tt_clamp(tt_dw_rq(a2, rq + 2), p->act_min, p->act_max);
        o[3] = tt_clamp(tt_dw_rq(a3, rq + 3), p->act_min, p->act_max);
    }
}

/* Channels c..c+3 over every output pixel; w_c holds their taps, [k_h][k_w][4]. */
void tt_depthwise_s8_group(const tt_conv_params *p, const int8_t *in, const int8_t *w_c,
                           int32_t c, int8_t *out, const tt_rq *rq)
{
    /* rq: every channel's bias and requantization record (tt_rq_chan); with the whole
     * int8 range as the clamp, one SSAT clamps. */
    const int32_t full = p->act_min == -128 && p->act_max == 127;
    const int32_t c_n = p->in_c;
    const int32_t off = tt_pack_offset(p->in_zp);
    const int32_t row_in = p->in_w * c_n, row_w = p->k_w * 4;
#if defined(__OPTIMIZE__)
    /* The output columns whose 3 x 3 window lies wholly inside the map's width: [lo, hi). */
    const int32_t lo = (p->pad_w + p->stride_w - 1) / p->stride_w;
    const int32_t hi = (p->in_w - 3 + p->pad_w) / p->stride_w + 1;
    const int32_t step = p->stride_w * c_n;
#endif
    {
        const tt_rq *const r = rq + c;
        const int32_t b0 = r[0].bias, b1 = r[1].bias, b2 = r[2].bias, b3 = r[3].bias;
        for (int32_t oy = 0; oy < p->out_h; ++oy) {
            const int32_t y0 = oy * p->stride_h - p->pad_h;
            const int32_t ky0 = y0 < 0 ? -y0 : 0;
            const int32_t ky1 = y0 + p->k_h > p->in_h ? p->in_h - y0 : p->k_h;
            int8_t *o = out + oy * p->out_w * c_n + c;
            /* A row of whole 3 x 3 windows: its inside pixels skip the clipping below and run
             * their nine taps as one straight-line block.  Not in unoptimized builds: their
             * frame pointer leaves too few registers for the block's operands. */
#if defined(__OPTIMIZE__)
            const int32_t rows3 = p->k_h == 3 && p->k_w == 3 && ky0 == 0 && ky1 == 3;
            const int32_t ip_y = y0 * row_in + c - p->pad_w * c_n; /* + ox * step: in the map */
#endif
            for (int32_t ox = 0; ox < p->out_w; ++ox, o += c_n) {
                int32_t a0 = b0, a1 = b1, a2 = b2, a3 = b3;
#if defined(__OPTIMIZE__)
                if (rows3 && ox >= lo && ox < hi) { /* a whole window: one nine-tap block */
                    const int8_t *ip = in + ip_y + ox * step;
                    const int8_t *wp = w_c;
                    const int32_t rowd = row_in - 3 * c_n;
                    int32_t x, v, xe, we;
                    __asm__ volatile(TT_DW_TAP TT_DW_TAP TT_DW_TAP
                                     "add %[ip], %[ip], %[rowd]\n\t"
                                     TT_DW_TAP TT_DW_TAP TT_DW_TAP
                                     "add %[ip], %[ip], %[rowd]\n\t"
                                     TT_DW_TAP TT_DW_TAP TT_DW_TAP
                                     : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3),
                                       [ip] "+r"(ip), [wp] "+r"(wp), [x] "=&r"(x), [v] "=&r"(v),
                                       [xe] "=&r"(xe), [we] "=&r"(we)
                                     : [cn] "r"(c_n), [off] "r"(off), [rowd] "r"(rowd)
                                     : "memory");
                    tt_dw_store(p, r, full, o, a0, a1, a2, a3);
                    continue;
                }
#endif
                /* The clipped window, walked with pointer steps (no index arithmetic inside). */
                const int32_t x0 = ox * p->stride_w - p->pad_w;
                const int32_t kx0 = x0 < 0 ? -x0 : 0;
                const int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
                const int8_t *ip_row = in + ((y0 + ky0) * p->in_w + x0 + kx0) * c_n + c;
                const int8_t *wp_row = w_c + (ky0 * p->k_w + kx0) * 4;
                const int32_t nkx = kx1 - kx0;
#if defined(__OPTIMIZE__)
                const int32_t taps = nkx == 3 ? 3 : (nkx == 2 ? 2 : 0);
#else
                const int32_t taps = 0;
#endif
                for (int32_t ky = ky0; ky < ky1; ++ky) {
                    const int8_t *ip = ip_row;
                    const int8_t *wp = wp_row;
                    int32_t kx = taps;
#if defined(__OPTIMIZE__)
                    if (taps) { /* rows of two or three taps in one block each */
                        int32_t x, v, xe, we;
                        if (taps == 3) {
                            __asm__ volatile(TT_DW_TAP TT_DW_TAP TT_DW_TAP : TT_DW_OPERANDS);
                        } else {
                            __asm__ volatile(TT_DW_TAP TT_DW_TAP : TT_DW_OPERANDS);
                        }
                    }
#endif
                    for (; kx < nkx; ++kx) {
                        const int32_t x = tt_word(ip);
                        const int32_t v = tt_word(wp);
                        const int32_t xe = __sxtab16(off, x), xo = tt_sxtab16_ror8(off, x);
                        const int32_t we = __sxtb16(v), wo = tt_sxtb16_ror8(v);
                        a0 = __smlabb(xe, we, a0);
                        a2 = __smlatt(xe, we, a2);
                        a1 = __smlabb(xo, wo, a1);
                        a3 = __smlatt(xo, wo, a3);
                        ip += c_n;
                        wp += 4;
                    }
                    ip_row += row_in;
                    wp_row += row_w;
                }
                tt_dw_store(p, r, full, o, a0, a1, a2, a3);
            }
        }
    }
}

void tt_depthwise_s8_dsp(const tt_conv_params *p, const int8_t *in, const int8_t *w,
                         int8_t *out, const tt_rq *rq)
{
    /* w is [C/4][k_h][k_w][4]: a group of 4 channels' taps are contiguous.  C is a multiple
     * of 4.  Groups of 4 channels are the outer loop: one group's weights, biases and
     * requantization records (a few dozen bytes) stay in a small flash data cache over
     * every output pixel, where a pixel-major walk over all channels' (hundreds of bytes)
     * would miss on each. */
    const int32_t taps_n = p->k_h * p->k_w;
    for (int32_t c = 0; c < p->in_c; c += 4) {
        tt_depthwise_s8_group(p, in, w + c * taps_n, c, out, rq);
    }
}

#endif
