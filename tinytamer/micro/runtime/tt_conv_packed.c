/* Convolution (groups 1 or grouped) over packed weights (int4, int2, shared), tt_conv2d_s8's
 * integer arithmetic.  Portable (and shared weights): per output channel, its row is
 * unpacked once into the arena, then every output pixel of that channel is computed.
 * Cortex-M4/M7 (DSP), int4 / int2: the receptive fields of two output pixels are gathered
 * minus the zero point as int16 into the arena (im2col, per group), in the order the
 * weights' pairs come out (tt_dsp_unpack.h); each channel's row is then unpacked in
 * registers, 8 / 16 weights per word load, once for both pixels, into SMLAD. */
#include <string.h>

#include "tt_kernels.h"
#include "tt_fixedpoint.h"
#include "tt_dsp_unpack.h"

static void tt_conv_rows(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
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

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)

static inline int32_t tt_ld32c(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Where field j of a group of 32 / bits goes in the column pair (column 0; column 1 is 2
 * further): slot s (tt_unpack_slot) at int16 index 4 * (s / 2) + s % 2. */
static const uint8_t tt_pair4[8] = {0, 8, 4, 12, 1, 9, 5, 13};
static const uint8_t tt_pair2[16] = {0, 8, 16, 24, 4, 12, 20, 28, 1, 9, 17, 25, 5, 13, 21, 29};

/* Output pixel `pix`'s receptive field over group g's input channels, minus the zero point
 * (padding: 0), as column t of the pair (`col` = the pair + 2t), each field where its
 * weight's pair comes out; zero filled from k to the next whole word (kpad): the last,
 * partial weight word meets zeros. */
static void tt_im2col_pair(const tt_conv_params *p, const int8_t *in, int32_t pix, int32_t g,
                           int32_t bits, int32_t kpad, int16_t *col)
{
    const uint8_t *slot = bits == 4 ? tt_pair4 : tt_pair2;
    const int32_t per = 32 / bits, stride = 2 * per; /* fields per word, int16 per word */
    const int32_t icg = p->in_c / p->groups, zp = p->in_zp;
    const int32_t oy = pix / p->out_w, ox = pix % p->out_w;
    int16_t *base = col;
    int32_t m = 0, j = 0;
    for (int32_t ky = 0; ky < p->k_h; ++ky) {
        const int32_t iy = oy * p->stride_h - p->pad_h + ky;
        for (int32_t kx = 0; kx < p->k_w; ++kx) {
            const int32_t ix = ox * p->stride_w - p->pad_w + kx;
            const int inside = iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
            const int8_t *ip = in + (inside ? (iy * p->in_w + ix) * p->in_c + g * icg : 0);
            const int32_t keep = inside ? -1 : 0; /* padding: 0 */
            for (int32_t c = 0; c < icg; ++c) {
                base[slot[m]] = (int16_t)(((int32_t)ip[inside ? c : 0] - zp) & keep);
                if (++m == per) {
                    m = 0;
                    base += stride;
                }
            }
            j += icg;
        }
    }
    for (; j < kpad; ++j) {
        base[slot[m]] = 0;
        if (++m == per) {
            m = 0;
            base += stride;
        }
    }
}

/* The last, partial word of a row (1-3 bytes), zero filled: no byte past the row is read. */
static inline uint32_t tt_tail_word(const uint8_t *b, int32_t n)
{
    uint32_t v = 0;
    for (int32_t i = 0; i < n; ++i) {
        v |= (uint32_t)b[i] << (8 * i);
    }
    return v;
}

/* One weight pair word (w0: row 0, w1: row 1) times the two columns' words at x. */
#define TT_MAC4(w0, w1, x)                                                                \
    do {                                                                                  \
        const int32_t xa = tt_ld32c(x), xb = tt_ld32c((x) + 2);                           \
        a00 = __smlad((w0), xa, a00);                                                     \
        a01 = __smlad((w0), xb, a01);                                                     \
        a10 = __smlad((w1), xa, a10);                                                     \
        a11 = __smlad((w1), xb, a11);                                                     \
    } while (0)

/* 8 int4 weights of two rows (v0, v1) times the columns at c (16 int16). */
#define TT_WORD_S4(v0, v1, c)                                                             \
    do {                                                                                  \
        uint32_t l0 = ((v0) << 4) & 0xF0F0F0F0u, l1 = ((v1) << 4) & 0xF0F0F0F0u;          \
        TT_MAC4((int32_t)__sxtb16(l0), (int32_t)__sxtb16(l1), (c));                        \
        TT_MAC4((int32_t)tt_sxtb16_b13(l0), (int32_t)tt_sxtb16_b13(l1), (c) + 4);         \
        l0 = (v0) & 0xF0F0F0F0u;                                                          \
        l1 = (v1) & 0xF0F0F0F0u;                                                          \
        TT_MAC4((int32_t)__sxtb16(l0), (int32_t)__sxtb16(l1), (c) + 8);                    \
        TT_MAC4((int32_t)tt_sxtb16_b13(l0), (int32_t)tt_sxtb16_b13(l1), (c) + 12);        \
    } while (0)

/* 16 int2 weights of two rows times the columns at c (32 int16). */
#define TT_WORD_S2(v0, v1, c)                                                             \
    do {                                                                                  \
        for (int32_t q = 0; q < 4; ++q) {                                                 \
            const uint32_t t0 = ((v0) << (6 - 2 * q)) & 0xC0C0C0C0u;                      \
            const uint32_t t1 = ((v1) << (6 - 2 * q)) & 0xC0C0C0C0u;                      \
            TT_MAC4((int32_t)__sxtb16(t0), (int32_t)__sxtb16(t1), (c) + 8 * q);           \
            TT_MAC4((int32_t)tt_sxtb16_b13(t0), (int32_t)tt_sxtb16_b13(t1), (c) + 8 * q + 4);  \
        }                                                                                 \
    } while (0)

/* Rows r0, r1 (row_bytes each) over the column pair c: acc[row][col], times 2^(8 - bits). */
static __attribute__((noinline)) void tt_rows_s4(const uint8_t *r0, const uint8_t *r1,
                                                 int32_t row_bytes, const int16_t *c,
                                                 int32_t acc[4])
{
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
    const int32_t words = row_bytes / 4;
    for (int32_t j = 0; j < words; ++j, c += 16) {
        const uint32_t v0 = (uint32_t)tt_ld32c(r0 + 4 * j), v1 = (uint32_t)tt_ld32c(r1 + 4 * j);
        TT_WORD_S4(v0, v1, c);
    }
    if (row_bytes % 4 != 0) {
        const uint32_t v0 = tt_tail_word(r0 + 4 * words, row_bytes % 4);
        const uint32_t v1 = tt_tail_word(r1 + 4 * words, row_bytes % 4);
        TT_WORD_S4(v0, v1, c);
    }
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
}

static __attribute__((noinline)) void tt_rows_s2(const uint8_t *r0, const uint8_t *r1,
                                                 int32_t row_bytes, const int16_t *c,
                                                 int32_t acc[4])
{
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
    const int32_t words = row_bytes / 4;
    for (int32_t j = 0; j < words; ++j, c += 32) {
        const uint32_t v0 = (uint32_t)tt_ld32c(r0 + 4 * j), v1 = (uint32_t)tt_ld32c(r1 + 4 * j);
        TT_WORD_S2(v0, v1, c);
    }
    if (row_bytes % 4 != 0) {
        const uint32_t v0 = tt_tail_word(r0 + 4 * words, row_bytes % 4);
        const uint32_t v1 = tt_tail_word(r1 + 4 * words, row_bytes % 4);
        TT_WORD_S2(v0, v1, c);
    }
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
}

void tt_conv2d_s8_packed(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                         const int32_t *bias, const int32_t *mult, const int32_t *shift,
                         int8_t *out, int8_t *scratch)
{
    if (w->codebook != 0 || (w->bits != 4 && w->bits != 2)) {
        tt_conv_rows(p, in, w, bias, mult, shift, out, scratch);
        return;
    }
    const int32_t bits = w->bits, per_word = 32 / bits, scale = 8 - bits;
    const int32_t kpad = (w->k + per_word - 1) / per_word * per_word;
    const int32_t ocg = p->out_c / p->groups, npix = p->out_h * p->out_w;
    void (*rows)(const uint8_t *, const uint8_t *, int32_t, const int16_t *, int32_t *) =
        bits == 4 ? tt_rows_s4 : tt_rows_s2;
    int16_t *c = (int16_t *)(void *)scratch;
    for (int32_t pix = 0; pix < npix; pix += 2) {
        const int32_t two = pix + 1 < npix; /* an odd last pixel: computed twice, kept once */
        for (int32_t g = 0; g < p->groups; ++g) {
            tt_im2col_pair(p, in, pix, g, bits, kpad, c);
            tt_im2col_pair(p, in, pix + two, g, bits, kpad, c + 2);
            for (int32_t oc = g * ocg; oc < (g + 1) * ocg; oc += 2) {
                const int32_t pair = oc + 1 < (g + 1) * ocg; /* else the row twice */
                const uint8_t *r0 = w->data + oc * w->row_bytes;
                int32_t acc[4];
                rows(r0, r0 + (pair ? w->row_bytes : 0), w->row_bytes, c, acc);
                for (int32_t i = 0; i <= pair; ++i) {
                    for (int32_t t = 0; t <= two; ++t) {
                        /* Exact: every product is a multiple of 2^scale and the generator
                         * bounds the sum (weights.py, IntNForm.fits). */
                        const int32_t a = bias[oc + i] + (acc[2 * i + t] >> scale);
                        const int32_t v =
                            tt_requant_inline(a, mult[oc + i], shift[oc + i]) + p->out_zp;
                        int8_t *o = out + (pix + t) * p->out_c + oc + i;
                        *o = tt_fuse(p->res, *o, tt_clamp(v, p->act_min, p->act_max));
                    }
                }
            }
        }
    }
}

#else

void tt_conv2d_s8_packed(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                         const int32_t *bias, const int32_t *mult, const int32_t *shift,
                         int8_t *out, int8_t *scratch)
{
    tt_conv_rows(p, in, w, bias, mult, shift, out, scratch);
}

#endif
