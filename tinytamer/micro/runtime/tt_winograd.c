/* Winograd F(2x2, 3x3) convolution for 3 x 3, stride-1 layers (Lavin & Gray, "Fast
 * Algorithms for Convolutional Neural Networks", CVPR 2016, section 4.1): per 2 x 2 output
 * tile, the input transform V = B^T d B of each channel, 16 channel reductions
 * M = sum_c U' * V by SMLAD, and the output transform A^T M A, divided by 4 (the weights
 * are transformed with 2G: tinytamer/micro/winograd.py, which also proves the division
 * exact and the sums within int32).  The result is the direct convolution's accumulator bit
 * for bit; the output stage (requantization, clamps, a fused residual add) is the "mm"
 * kernels' (tt_mm_out4 in tt_dsp.h).
 *
 * The input transform runs on int16 channel pairs with SADD16 / SSUB16: a word of 4 int8
 * channels minus the zero point becomes [c0|c2] and [c1|c3] (SXTAB16, as in tt_dsp.h), the
 * lane order the weights are stored in.  Needs input channels a multiple of 4. */
#include "tt_kernels.h"

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#include "tt_dsp.h"

/* The transformed channels c..c+3 of a tile wholly inside the input into dst (v + c / 2),
 * its top-left pixel at `s` (channel c included), rows `row` bytes apart, pixels `in_c`.
 * Two passes, each word loaded once: down each column, the rows of B^T d (d0 - d2,
 * d1 + d2, d2 - d1, d1 - d3) for both lane sets ([c0|c2] and [c1|c3], minus the zero
 * point) into t; then along each row of t, the same combination of its columns (t B). */
static __attribute__((noinline)) void tt_wino_inside(const int8_t *s, int32_t row, int32_t in_c,
                                                     int32_t nzp, int32_t words, int32_t *dst)
{
    int32_t t[32]; /* t[8 r + 2 j + lane set] */
    const int8_t *r1 = s + row, *r2 = r1 + row, *r3 = r2 + row;
#pragma GCC unroll 4
    for (int32_t j = 0; j < 4; ++j, s += in_c, r1 += in_c, r2 += in_c, r3 += in_c) {
        const int32_t w0 = tt_word(s), w1 = tt_word(r1), w2 = tt_word(r2), w3 = tt_word(r3);
        int32_t a0 = __sxtab16(nzp, w0), a1 = __sxtab16(nzp, w1), a2 = __sxtab16(nzp, w2);
        int32_t a3 = __sxtab16(nzp, w3);
        t[2 * j] = __ssub16(a0, a2);
        t[8 + 2 * j] = __sadd16(a1, a2);
        t[16 + 2 * j] = __ssub16(a2, a1);
        t[24 + 2 * j] = __ssub16(a1, a3);
        a0 = tt_sxtab16_ror8(nzp, w0), a1 = tt_sxtab16_ror8(nzp, w1);
        a2 = tt_sxtab16_ror8(nzp, w2), a3 = tt_sxtab16_ror8(nzp, w3);
        t[2 * j + 1] = __ssub16(a0, a2);
        t[8 + 2 * j + 1] = __sadd16(a1, a2);
        t[16 + 2 * j + 1] = __ssub16(a2, a1);
        t[24 + 2 * j + 1] = __ssub16(a1, a3);
    }
#pragma GCC unroll 8
    for (int32_t k = 0; k < 8; ++k) { /* output row k / 2, lane set k % 2 */
        const int32_t *const u = t + 4 * k - 3 * (k & 1); /* t + 8 (k / 2) + k % 2 */
        int32_t *const d = dst + 4 * words * (k >> 1) + (k & 1);
        d[0] = __ssub16(u[0], u[4]);
        d[words] = __sadd16(u[2], u[4]);
        d[2 * words] = __ssub16(u[4], u[2]);
        d[3 * words] = __ssub16(u[2], u[6]);
    }
}

/* The transformed tile with top-left input (iy, ix) (padding included) into v: 16 rows of
 * in_c int16, channels in SXTB16 order within each group of 4. */
static void tt_wino_tile(const tt_conv_params *p, const int8_t *in, int32_t iy, int32_t ix,
                         int32_t *v)
{
    const int32_t in_c = p->in_c, words = in_c / 2;
    const int32_t nzp = (int32_t)(((uint32_t)(-p->in_zp) & 0xffffu) * 0x10001u);
    if (iy >= 0 && iy + 4 <= p->in_h && ix >= 0 && ix + 4 <= p->in_w) {
        const int8_t *const s = in + (iy * p->in_w + ix) * in_c;
        for (int32_t c = 0; c < in_c; c += 4) {
            tt_wino_inside(s + c, p->in_w * in_c, in_c, nzp, words, v + c / 2);
        }
        return;
    }
    /* An edge tile: each quad's 16 words gathered into a box, the zero point's word where
     * the pixel is padding (it transforms to 0), then transformed as an inside tile. */
    const int8_t *src[16];
    for (int32_t i = 0; i < 4; ++i) {
        const int32_t y = iy + i;
        for (int32_t j = 0; j < 4; ++j) {
            const int32_t x = ix + j;
            const int32_t inside = y >= 0 && y < p->in_h && x >= 0 && x < p->in_w;
            src[4 * i + j] = inside ? in + (y * p->in_w + x) * in_c : 0;
        }
    }
    const int32_t zw = (int32_t)((uint32_t)(uint8_t)p->in_zp * 0x01010101u);
    int32_t box[16];
    for (int32_t c = 0; c < in_c; c += 4) {
        for (int32_t k = 0; k < 16; ++k) {
            box[k] = src[k] ? tt_word(src[k] + c) : zw;
        }
        tt_wino_inside((const int8_t *)box, 16, 4, nzp, words, v + c / 2);
    }
}

/* A^T M A of one channel's 16 reductions, divided by 4, plus the bias: the tile's outputs
 * y[2 p + q].  Unsigned arithmetic: the partial sums may wrap; the result is exact modulo
 * 2^32 and fits (winograd.fits). */
static inline __attribute__((always_inline)) void tt_wino_out(const int32_t *m, int32_t bias,
                                                              int32_t *y)
{
    uint32_t r0[4], r1[4];
    for (int32_t j = 0; j < 4; ++j) {
        const uint32_t m1 = (uint32_t)m[4 + j], m2 = (uint32_t)m[8 + j];
        r0[j] = (uint32_t)m[j] + m1 + m2;
        r1[j] = m1 - m2 - (uint32_t)m[12 + j];
    }
    y[0] = ((int32_t)(r0[0] + r0[1] + r0[2]) >> 2) + bias;
    y[1] = ((int32_t)(r0[1] - r0[2] - r0[3]) >> 2) + bias;
    y[2] = ((int32_t)(r1[0] + r1[1] + r1[2]) >> 2) + bias;
    y[3] = ((int32_t)(r1[1] - r1[2] - r1[3]) >> 2) + bias;
}

/* One word of each of the two tiles times one word of each of the two channels: four
 * loads back to back (the Cortex-M4 pipelines them), then four SMLADs. */
#define TT_WINO_STEP                                                                      \
    "ldr %[x1], [%[va], %[off]]\n\t"                                                       \
    "ldr %[p1], [%[w0], %[off]]\n\t"                                                       \
    "ldr %[x0], [%[va]], #4\n\t"                                                           \
    "ldr %[p0], [%[w0]], #4\n\t"                                                           \
    "smlad %[a00], %[x0], %[p0], %[a00]\n\t"                                               \
    "smlad %[a01], %[x1], %[p0], %[a01]\n\t"                                               \
    "smlad %[a10], %[x0], %[p1], %[a10]\n\t"                                               \
    "smlad %[a11], %[x1], %[p1], %[a11]\n\t"

/* The 16 reductions of output channels u0 and u1 (their weight rows) over tiles va and vb:
 * 2 x 2 accumulators, each loaded word used twice (the "mm" kernels' blocking). */
static inline __attribute__((always_inline)) void
tt_wino_mac(const int32_t *va, const int32_t *w0, int32_t words, int32_t *m)
{
    /* Tile b's rows are `row` words after tile a's, and channel 1's weights after channel
     * 0's: one offset register reaches both.  The rows of the 16 positions follow each
     * other, so the pointers run on across them. */
    const int32_t off = 16 * words * 4;
    for (int32_t xi = 0; xi < 16; ++xi) {
        int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
        const int32_t *const end = va + words;
#if defined(__OPTIMIZE__)
        int32_t x0, x1, p0, p1;
        /* words is even: two steps per pass. */
        __asm__ volatile("1:\n\t" TT_WINO_STEP TT_WINO_STEP
                         "cmp %[va], %[end]\n\t"
                         "bne 1b\n\t"
                         : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11),
                           [va] "+r"(va), [w0] "+r"(w0), [x0] "=&r"(x0), [x1] "=&r"(x1),
                           [p0] "=&r"(p0), [p1] "=&r"(p1)
                         : [off] "r"(off), [end] "r"(end)
                         : "cc", "memory");
#else /* unoptimized builds (a frame pointer: too few registers for the asm) */
        const int32_t stride = off / 4;
        for (; va != end; ++va, ++w0) {
            a00 = __smlad(va[0], w0[0], a00);
            a01 = __smlad(va[stride], w0[0], a01);
            a10 = __smlad(va[0], w0[stride], a10);
            a11 = __smlad(va[stride], w0[stride], a11);
        }
#endif
        m[xi] = a00;
        m[16 + xi] = a01;
        m[32 + xi] = a10;
        m[48 + xi] = a11;
    }
}

/* One channel's outputs of a tile pair (ya, yb) one by one: the edges and an odd last
 * channel. */
static void tt_wino_store1(int32_t mode, const tt_conv_params *p, const tt_rq *r, int8_t *o,
                           int32_t rows, int32_t cols, const int32_t *ya, const int32_t *yb)
{
    for (int32_t i = 0; i < rows; ++i) {
        for (int32_t j = 0; j < cols; ++j) {
            const int32_t y = j < 2 ? ya[2 * i + j] : yb[2 * i + j - 2];
            tt_mm_out1(mode, p, r, o + (i * p->out_w + j) * p->out_c, y);
        }
    }
}

/* Every output channel of a tile pair (transformed inputs va, vb = va + row) whose top-left
 * output is o; `mode` as for tt_mm_out4, a constant where the caller can make it one. */
static inline __attribute__((always_inline)) void
tt_wino_channels(const tt_conv_params *p, const int32_t *va, const int32_t *w, const tt_rq *rq,
                 int8_t *o, int32_t rows, int32_t cols, int32_t mode)
{
    const int32_t out_c = p->out_c, words = p->in_c / 2, row = 16 * words;
    const int32_t line = p->out_w * out_c; /* one output row */
    for (int32_t oc = 0; oc < out_c; oc += 2) {
        /* An odd last channel is reduced with the zero row the generator pads the weights
         * with, and stored alone. */
        int32_t m[64], ya0[4], yb0[4], ya1[4], yb1[4];
        tt_wino_mac(va, w + oc * row, words, m);
        const int32_t b0 = rq[oc].bias;
        tt_wino_out(m, b0, ya0);
        tt_wino_out(m + 16, b0, yb0);
        if (oc + 1 == out_c) {
            tt_wino_store1(mode, p, rq + oc, o + oc, rows, cols, ya0, yb0);
            continue;
        }
        const int32_t b1 = rq[oc + 1].bias;
        tt_wino_out(m + 32, b1, ya1);
        tt_wino_out(m + 48, b1, yb1);
        if (rows == 2 && cols == 4) {
            int8_t *q = o + oc;
            tt_mm_out4(mode, p, rq + oc, q, q + out_c, ya0[0], ya0[1], ya1[0], ya1[1]);
            tt_mm_out4(mode, p, rq + oc, q + line, q + line + out_c, ya0[2], ya0[3], ya1[2],
                       ya1[3]);
            q += 2 * out_c;
            tt_mm_out4(mode, p, rq + oc, q, q + out_c, yb0[0], yb0[1], yb1[0], yb1[1]);
            tt_mm_out4(mode, p, rq + oc, q + line, q + line + out_c, yb0[2], yb0[3], yb1[2],
                       yb1[3]);
        } else {
            tt_wino_store1(mode, p, rq + oc, o + oc, rows, cols, ya0, yb0);
            tt_wino_store1(mode, p, rq + oc + 1, o + oc + 1, rows, cols, ya1, yb1);
        }
    }
}

void tt_conv2d_s8_wino(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                       const tt_rq *rq, int8_t *out, int16_t *scratch)
{
    const int32_t row = 16 * (p->in_c / 2);
    const int32_t mode = tt_mm_mode(p);
    int32_t *va = (int32_t *)(void *)scratch, *vb = va + row; /* adjacent: tt_wino_mac */
    /* Tiles in pairs along a row: (oy, ox) and (oy, ox + 2); the second may lie past the
     * right edge (computed, not stored). */
    for (int32_t oy = 0; oy < p->out_h; oy += 2) {
        const int32_t rows = oy + 1 < p->out_h ? 2 : 1;
        for (int32_t ox = 0; ox < p->out_w; ox += 4) {
            const int32_t cols = ox + 4 <= p->out_w ? 4 : p->out_w - ox;
            tt_wino_tile(p, in, oy - p->pad_h, ox - p->pad_w, va);
            if (cols > 2) {
                tt_wino_tile(p, in, oy - p->pad_h, ox + 2 - p->pad_w, vb);
            }
            int8_t *o = out + (oy * p->out_w + ox) * p->out_c;
            /* Each mode its own copy: its clamps and add known where they are inlined. */
            switch (mode) {
            case 0:
                tt_wino_channels(p, va, w, rq, o, rows, cols, 0);
                break;
            case 1:
                tt_wino_channels(p, va, w, rq, o, rows, cols, 1);
                break;
            case 2:
                tt_wino_channels(p, va, w, rq, o, rows, cols, 2);
                break;
            default:
                tt_wino_channels(p, va, w, rq, o, rows, cols, mode);
            }
        }
    }
}

#endif
