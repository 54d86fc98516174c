/* Pruned weights (the "sparse" and "sparse_shared" forms, tt_sparse in tt_kernels.h): only
 * the stored non-zeros are multiplied, fully connected and convolution (groups 1, over the
 * im2col patch of each output pixel: the rows index the patch as the dense rows index the
 * input vector).  The input minus its zero point is unpacked to int16 in `scratch` once per
 * vector (per pixel for a convolution).  In the "sparse" form a non-zero is one word, column
 * index in the low half and the int8 weight sign-extended in the high half, and costs one
 * word load, the index extraction, one halfword load and one multiply-accumulate (SMLATB on
 * the Cortex-M4/M7).  In the "sparse_shared" form it is a bit field decoded on the way: the
 * gap to its column and its codebook index.  The arithmetic equals tt_dense_s8's /
 * tt_conv2d_s8's: the skipped products are zero. */
#include <string.h>

#include "tt_kernels.h"
#include "tt_fixedpoint.h"

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>

/* acc + x[word & 0xFFFF] * (word >> 16): UXTH, LDRSH (register offset) and SMLATB. */
#define TT_NZ(acc, x, e) __smlatb((e), (x)[(uint16_t)(e)], (acc))

/* Non-zeros from *pp to end - 3 in groups of four, hand-scheduled: one LDM of four words,
 * the four index extractions, the four gathers back to back (pipelined loads) and the four
 * SMLATBs; GCC interleaves the loads with ALU work and loses the load pipelining. */
static inline int32_t tt_nz4(int32_t acc, const int32_t **pp, const int32_t *end,
                             const int16_t *x)
{
    const int32_t *p = *pp;
    if (p + 3 < end) {
        const int32_t *last = end - 3;
        /* LDM fills registers in ascending number order: pin the four words to ascending
         * registers (r7 is left alone: it is the Thumb frame pointer in debug builds). */
        register int32_t e0 __asm__("r4"), e1 __asm__("r5"), e2 __asm__("r6"),
            e3 __asm__("r8");
        int32_t t0, t1, t2, t3;
        __asm__ volatile(
            "1:\n\t"
            "ldmia %[p]!, {%[e0], %[e1], %[e2], %[e3]}\n\t"
            "uxth %[t0], %[e0]\n\t"
            "uxth %[t1], %[e1]\n\t"
            "uxth %[t2], %[e2]\n\t"
            "uxth %[t3], %[e3]\n\t"
            "ldrsh %[t0], [%[x], %[t0], lsl #1]\n\t"
            "ldrsh %[t1], [%[x], %[t1], lsl #1]\n\t"
            "ldrsh %[t2], [%[x], %[t2], lsl #1]\n\t"
            "ldrsh %[t3], [%[x], %[t3], lsl #1]\n\t"
            "smlatb %[acc], %[e0], %[t0], %[acc]\n\t"
            "smlatb %[acc], %[e1], %[t1], %[acc]\n\t"
            "smlatb %[acc], %[e2], %[t2], %[acc]\n\t"
            "smlatb %[acc], %[e3], %[t3], %[acc]\n\t"
            "cmp %[p], %[last]\n\t"
            "blo 1b\n\t"
            : [acc] "+r"(acc), [p] "+r"(p), [e0] "=&r"(e0), [e1] "=&r"(e1), [e2] "=&r"(e2),
              [e3] "=&r"(e3), [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3)
            : [x] "r"(x), [last] "r"(last)
            : "cc", "memory");
    }
    *pp = p;
    return acc;
}
#else
#define TT_NZ(acc, x, e) ((acc) + (int32_t)(x)[(e) & 0xFFFF] * ((e) >> 16))

static inline int32_t tt_nz4(int32_t acc, const int32_t **pp, const int32_t *end,
                             const int16_t *x)
{
    const int32_t *p = *pp;
    for (; p + 3 < end; p += 4) {
        acc = TT_NZ(acc, x, p[0]);
        acc = TT_NZ(acc, x, p[1]);
        acc = TT_NZ(acc, x, p[2]);
        acc = TT_NZ(acc, x, p[3]);
    }
    *pp = p;
    return acc;
}
#endif

/* The "sparse" form's row: its n words from *pp on, added to acc. */
static inline int32_t tt_sp_words(int32_t acc, const int32_t **pp, int32_t n, const int16_t *x)
{
    const int32_t *end = *pp + n;
    const int32_t *nz = *pp;
    acc = tt_nz4(acc, &nz, end, x);
    /* The last 0-3 non-zeros without a loop test. */
    switch (end - nz) {
    case 3:
        acc = TT_NZ(acc, x, nz[2]);
        /* fall through */
    case 2:
        acc = TT_NZ(acc, x, nz[1]);
        /* fall through */
    case 1:
        acc = TT_NZ(acc, x, nz[0]);
        /* fall through */
    default:
        break;
    }
    *pp = end;
    return acc;
}

/* Where a row's outputs go: requantization, clamp and (convolution) the fused add. */
typedef struct {
    const int32_t *bias, *mult, *shift;
    int32_t out_zp, act_min, act_max;
    const tt_residual *res;
} tt_sp_out;

static inline void tt_sp_put(const tt_sp_out *o, int32_t r, int32_t acc, int8_t *out)
{
    const int32_t v = tt_requant_inline(acc, o->mult[r], o->shift[r]) + o->out_zp;
    out[r] = tt_fuse(o->res, out[r], tt_clamp(v, o->act_min, o->act_max));
}

static inline const int8_t *tt_sp_book(const tt_sparse *w, int32_t r)
{
    return w->codebook + (w->groups != 0 ? w->groups[r] * w->cb_stride : 0);
}

/* The "sparse_shared" form: all `rows` rows of k weights over x, one stream of fields
 * across the rows.  A field spans at most 16 + 7 bits from its first byte: one unaligned
 * word load reads it (the stream ends with three zero bytes so the last load stays inside
 * it).  A row ends where an entry's column passes k; rows with no entries get their bias. */
static void tt_sp_stream(const tt_sparse *w, int32_t rows, int32_t k, const int16_t *x,
                         const tt_sp_out *o, int8_t *out)
{
    const uint32_t width = (uint32_t)(w->gap_bits + w->idx_bits);
    const uint32_t gmax = (1u << w->gap_bits) - 1u;
    const uint32_t imask = (1u << w->idx_bits) - 1u;
    const int32_t gb = w->gap_bits;
    uint32_t pos = 0;
    int32_t r = 0, col = 0;
    int32_t acc = o->bias[0];
    const int8_t *cb = tt_sp_book(w, 0);
    for (int32_t e = 0; e < w->entries; ++e) {
        uint32_t v;
        memcpy(&v, w->stream + (pos >> 3), 4);
        v >>= pos & 7u;
        const uint32_t gap = v & gmax;
        pos += width;
        col += (int32_t)gap;
        if (gap == gmax) {
            continue; /* a filler: gmax zeros skipped, no weight */
        }
        while (col >= k) {
            tt_sp_put(o, r, acc, out);
            col -= k;
            ++r;
            acc = o->bias[r];
            cb = tt_sp_book(w, r);
        }
        acc += (int32_t)x[col] * (int32_t)cb[(v >> gb) & imask];
        ++col;
    }
    for (;;) {
        tt_sp_put(o, r, acc, out);
        if (++r >= rows) {
            break;
        }
        acc = o->bias[r];
    }
}

/* Every row of a sparse layer over x (the words row by row, or the stream). */
static void tt_sp_rows(const tt_sparse *w, int32_t rows, int32_t k, const int16_t *x,
                       const tt_sp_out *o, int8_t *out)
{
    if (w->stream != 0) {
        tt_sp_stream(w, rows, k, x, o, out);
        return;
    }
    const int32_t *nz = w->nz;
    for (int32_t r = 0; r < rows; ++r) {
        tt_sp_put(o, r, tt_sp_words(o->bias[r], &nz, w->counts[r], x), out);
    }
}

/* dst[i] = src[i] - zp for n values. */
static void tt_sp_unpack(const int8_t *src, int32_t n, int32_t zp, int16_t *dst)
{
    int32_t i = 0;
#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
    /* Four inputs per step: SXTAB16 gives [v0|v2] and [v1|v3] minus the zero point, the
     * halfword packs put them back in column order. */
    const uint32_t nzp = (uint32_t)(-zp);
    const int32_t off = (int32_t)((nzp & 0xFFFFu) | (nzp << 16));
    for (; i + 3 < n; i += 4) {
        int32_t v, even, odd;
        memcpy(&v, src + i, 4);
        even = __sxtab16(off, v);
        __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(odd) : "r"(off), "r"(v));
        const int32_t q[2] = {(int32_t)(((uint32_t)even & 0xFFFFu) | ((uint32_t)odd << 16)),
                              (int32_t)(((uint32_t)odd & 0xFFFF0000u) | ((uint32_t)even >> 16))};
        memcpy(dst + i, q, 8);
    }
#endif
    for (; i < n; ++i) {
        dst[i] = (int16_t)((int32_t)src[i] - zp);
    }
}

void tt_dense_s8_sparse(const tt_dense_params *p, const int8_t *in, const tt_sparse *w,
                        const int32_t *bias, const int32_t *mult, const int32_t *shift,
                        int8_t *out, int16_t *scratch)
{
    const tt_sp_out o = {bias, mult, shift, p->out_zp, p->act_min, p->act_max, 0};
    tt_sp_unpack(in, p->in_n, p->in_zp, scratch);
    tt_sp_rows(w, p->out_n, p->in_n, scratch, &o, out);
}

void tt_conv2d_s8_sparse(const tt_conv_params *p, const int8_t *in, const tt_sparse *w,
                         const int32_t *bias, const int32_t *mult, const int32_t *shift,
                         int8_t *out, int16_t *scratch)
{
    const int32_t ic = p->in_c;
    const tt_sp_out o = {bias, mult, shift, p->out_zp, p->act_min, p->act_max, p->res};
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            /* The patch, in the rows' (ky, kx, ic) order; padding holds the zero point, 0
             * once it is subtracted. */
            int16_t *col = scratch;
            for (int32_t ky = 0; ky < p->k_h; ++ky) {
                const int32_t iy = oy * p->stride_h - p->pad_h + ky;
                for (int32_t kx = 0; kx < p->k_w; ++kx, col += ic) {
                    const int32_t ix = ox * p->stride_w - p->pad_w + kx;
                    if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                        memset(col, 0, (size_t)ic * sizeof(int16_t));
                    } else {
                        tt_sp_unpack(in + (iy * p->in_w + ix) * ic, ic, p->in_zp, col);
                    }
                }
            }
            tt_sp_rows(w, p->out_c, p->k_h * p->k_w * ic, scratch, &o,
                       out + (oy * p->out_w + ox) * p->out_c);
        }
    }
}
