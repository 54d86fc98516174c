/* Fully connected over packed weights (int4, int2, shared), tt_dense_s8's integer
 * arithmetic.  Portable: each row is unpacked into the arena (each weight once, as the int8
 * kernel reads each once), then multiplied.  Cortex-M4/M7 (DSP): the input minus its zero
 * point is unpacked once to int16 in the arena, in the order the weights' pairs come out
 * (tt_dsp_unpack.h); int4 / int2 rows are unpacked in registers, 8 / 16 weights per word
 * load, two rows per pass sharing the input loads, into SMLAD; codebook rows are decoded
 * and looked up as they are read (4- and 2-bit indices in pairs into SMLAD). */
#include <string.h>

#include "tt_kernels.h"
#include "tt_fixedpoint.h"
#include "tt_dsp_unpack.h"

static inline int8_t tt_dense_out(const tt_dense_params *p, int32_t acc, int32_t mult,
                                  int32_t shift)
{
    return tt_clamp(tt_requant_inline(acc, mult, shift) + p->out_zp, p->act_min, p->act_max);
}

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)

/* Fields j >= from of a row (the tail no word holds whole), natural order, times x. */
static int32_t tt_tail(const tt_wpack *w, const uint8_t *row, int32_t from, const int16_t *x)
{
    int32_t acc = 0;
    const uint32_t mask = (1u << w->bits) - 1u;
    for (int32_t j = from; j < w->k; ++j) {
        const uint32_t pos = (uint32_t)(j * w->bits);
        const uint32_t f = ((uint32_t)row[pos >> 3] >> (pos & 7u)) & mask;
        acc += (int32_t)x[j] * ((int32_t)f - (int32_t)((f >> (w->bits - 1)) << w->bits));
    }
    return acc;
}

static inline int32_t tt_ld32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Rows r0 and r1 over the full words: the sums times 2^(8 - bits), straight-line per word
 * so the weights, the inputs and both sums stay in registers. */
static void tt_rows_s4(const uint8_t *r0, const uint8_t *r1, const int16_t *x, int32_t words,
                       int32_t acc[2])
{
    int32_t a0 = 0, a1 = 0;
    for (int32_t j = 0; j < words; ++j, x += 8) {
        const uint32_t v0 = (uint32_t)tt_ld32(r0 + 4 * j), v1 = (uint32_t)tt_ld32(r1 + 4 * j);
        const int32_t x0 = tt_ld32(x), x1 = tt_ld32(x + 2), x2 = tt_ld32(x + 4),
                      x3 = tt_ld32(x + 6);
        uint32_t lo = (v0 << 4) & 0xF0F0F0F0u, hi = v0 & 0xF0F0F0F0u;
        a0 = __smlad((int32_t)__sxtb16(lo), x0, a0);
        a0 = __smlad((int32_t)tt_sxtb16_b13(lo), x1, a0);
        a0 = __smlad((int32_t)__sxtb16(hi), x2, a0);
        a0 = __smlad((int32_t)tt_sxtb16_b13(hi), x3, a0);
        lo = (v1 << 4) & 0xF0F0F0F0u;
        hi = v1 & 0xF0F0F0F0u;
        a1 = __smlad((int32_t)__sxtb16(lo), x0, a1);
        a1 = __smlad((int32_t)tt_sxtb16_b13(lo), x1, a1);
        a1 = __smlad((int32_t)__sxtb16(hi), x2, a1);
        a1 = __smlad((int32_t)tt_sxtb16_b13(hi), x3, a1);
    }
    acc[0] = a0;
    acc[1] = a1;
}

#define TT_S2_QUARTER(q)                                                                  \
    do {                                                                                  \
        const int32_t xa = tt_ld32(x + 4 * (q)), xb = tt_ld32(x + 4 * (q) + 2);           \
        uint32_t t = (v0 << (6 - 2 * (q))) & 0xC0C0C0C0u;                                 \
        a0 = __smlad((int32_t)__sxtb16(t), xa, a0);                                       \
        a0 = __smlad((int32_t)tt_sxtb16_b13(t), xb, a0);                                 \
        t = (v1 << (6 - 2 * (q))) & 0xC0C0C0C0u;                                          \
        a1 = __smlad((int32_t)__sxtb16(t), xa, a1);                                       \
        a1 = __smlad((int32_t)tt_sxtb16_b13(t), xb, a1);                                 \
    } while (0)

static void tt_rows_s2(const uint8_t *r0, const uint8_t *r1, const int16_t *x, int32_t words,
                       int32_t acc[2])
{
    int32_t a0 = 0, a1 = 0;
    for (int32_t j = 0; j < words; ++j, x += 16) {
        const uint32_t v0 = (uint32_t)tt_ld32(r0 + 4 * j), v1 = (uint32_t)tt_ld32(r1 + 4 * j);
        TT_S2_QUARTER(0);
        TT_S2_QUARTER(1);
        TT_S2_QUARTER(2);
        TT_S2_QUARTER(3);
    }
    acc[0] = a0;
    acc[1] = a1;
}

static void tt_dense_intn(const tt_dense_params *p, const tt_wpack *w, const int32_t *bias,
                          const int32_t *mult, const int32_t *shift, int8_t *out,
                          const int16_t *x)
{
    const int32_t per_word = 32 / w->bits;
    const int32_t words = p->in_n / per_word;
    const int32_t scale = 8 - w->bits;
    for (int32_t o = 0; o < p->out_n; o += 2) {
        const int32_t two = o + 1 < p->out_n;
        int32_t acc[2];
        const uint8_t *r0 = w->data + o * w->row_bytes;
        const uint8_t *r1 = r0 + (two ? w->row_bytes : 0); /* an odd last row: itself twice */
        if (w->bits == 4) {
            tt_rows_s4(r0, r1, x, words, acc);
        } else {
            tt_rows_s2(r0, r1, x, words, acc);
        }
        for (int32_t t = 0; t <= two; ++t) {
            const uint8_t *row = w->data + (o + t) * w->row_bytes;
            /* Exact: every product is a multiple of 2^scale and the generator bounds the
             * sum (weights.py, IntNForm.fits). */
            const int32_t a = bias[o + t] + (acc[t] >> scale) + tt_tail(w, row, words * per_word, x);
            out[o + t] = tt_dense_out(p, a, mult[o + t], shift[o + t]);
        }
    }
}

/* Two looked-up weights as one int16 pair (PKHBT). */
static inline int32_t tt_pair(int32_t lo, int32_t hi)
{
    return (int32_t)(((uint32_t)lo & 0xFFFFu) | ((uint32_t)hi << 16));
}

/* A row of codebook indices over x (natural order): 4- and 2-bit fields a byte at a time,
 * looked up and paired into SMLAD; other widths (and the tail) through a bit buffer refilled
 * a byte at a time (no byte past the row is read). */
static int32_t tt_dot_cb(const uint8_t *row, int32_t bits, int32_t k, const int8_t *cb,
                         const int16_t *x)
{
    int32_t acc = 0, j = 0;
    if (bits == 4) {
        for (; j + 1 < k; j += 2) {
            const uint32_t b = row[j >> 1];
            acc = __smlad(tt_pair(cb[b & 15u], cb[b >> 4]), tt_ld32(x + j), acc);
        }
    } else if (bits == 2) {
        for (; j + 3 < k; j += 4) {
            const uint32_t b = row[j >> 2];
            acc = __smlad(tt_pair(cb[b & 3u], cb[(b >> 2) & 3u]), tt_ld32(x + j), acc);
            acc = __smlad(tt_pair(cb[(b >> 4) & 3u], cb[b >> 6]), tt_ld32(x + j + 2), acc);
        }
    }
    const uint32_t mask = (1u << bits) - 1u;
    const uint8_t *src = row + ((j * bits) >> 3); /* 4 / 2 bits: the tail starts on a byte */
    uint32_t buf = 0;
    int32_t have = 0;
    for (; j < k; ++j) {
        if (have < bits) {
            buf |= (uint32_t)*src++ << have;
            have += 8;
        }
        acc += (int32_t)x[j] * (int32_t)cb[buf & mask];
        buf >>= bits;
        have -= bits;
    }
    return acc;
}

static void tt_dense_shared(const tt_dense_params *p, const tt_wpack *w, const int32_t *bias,
                            const int32_t *mult, const int32_t *shift, int8_t *out,
                            const int16_t *x)
{
    for (int32_t o = 0; o < p->out_n; ++o) {
        const int8_t *cb = w->codebook + (w->groups != 0 ? w->groups[o] * w->cb_stride : 0);
        const int32_t acc =
            bias[o] + tt_dot_cb(w->data + o * w->row_bytes, w->bits, p->in_n, cb, x);
        out[o] = tt_dense_out(p, acc, mult[o], shift[o]);
    }
}

void tt_dense_s8_packed(const tt_dense_params *p, const int8_t *in, const tt_wpack *w,
                        const int32_t *bias, const int32_t *mult, const int32_t *shift,
                        int8_t *out, int8_t *scratch)
{
    /* int4 / int2 rows read x in slot order (groups of 32 / bits, the tail natural),
     * codebook rows in natural order. */
    int16_t *x = (int16_t *)(void *)scratch;
    const int32_t intn = w->codebook == 0;
    const int32_t group = intn ? 32 / w->bits : 1;
    const int32_t full = p->in_n / group * group;
    for (int32_t i = 0; i < p->in_n; ++i) {
        const int32_t s = intn && i < full ? tt_unpack_slot(w->bits, i) : i;
        x[s] = (int16_t)((int32_t)in[i] - p->in_zp);
    }
    if (intn) {
        tt_dense_intn(p, w, bias, mult, shift, out, x);
    } else {
        tt_dense_shared(p, w, bias, mult, shift, out, x);
    }
}

#else

void tt_dense_s8_packed(const tt_dense_params *p, const int8_t *in, const tt_wpack *w,
                        const int32_t *bias, const int32_t *mult, const int32_t *shift,
                        int8_t *out, int8_t *scratch)
{
    for (int32_t o = 0; o < p->out_n; ++o) {
        tt_wpack_row(w, o, scratch);
        int32_t acc = bias[o];
        for (int32_t i = 0; i < p->in_n; ++i) {
            acc += ((int32_t)in[i] - p->in_zp) * (int32_t)scratch[i];
        }
        out[o] = tt_dense_out(p, acc, mult[o], shift[o]);
    }
}

#endif
