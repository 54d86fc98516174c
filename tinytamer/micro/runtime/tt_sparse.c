/* Sparse fully connected (pruned weights): only the non-zero weights are stored and
 * multiplied.  Each non-zero is one word, column index in the low half and the int8 weight
 * sign-extended in the high half, rows one after another; `counts` holds each row's number
 * of non-zeros.  The input minus its zero point is unpacked once to int16 in `scratch`, so a
 * non-zero costs one word load, the index extraction, one halfword load and one
 * multiply-accumulate (SMLABT on the Cortex-M4/M7: bottom of x times top of the word).  The
 * arithmetic equals tt_dense_s8's: the skipped products are zero. */
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

void tt_dense_s8_sparse(const tt_dense_params *p, const int8_t *in, const int32_t *nz,
                        const uint16_t *counts, const int32_t *bias, const int32_t *mult,
                        const int32_t *shift, int8_t *out, int16_t *scratch)
{
    int32_t i = 0;
#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
    /* Four inputs per step: SXTAB16 gives [v0|v2] and [v1|v3] minus the zero point, the
     * halfword packs put them back in column order. */
    const uint32_t nzp = (uint32_t)(-p->in_zp);
    const int32_t off = (int32_t)((nzp & 0xFFFFu) | (nzp << 16));
    for (; i + 3 < p->in_n; i += 4) {
        int32_t v, even, odd;
        memcpy(&v, in + i, 4);
        even = __sxtab16(off, v);
        __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(odd) : "r"(off), "r"(v));
        const int32_t w[2] = {(int32_t)(((uint32_t)even & 0xFFFFu) | ((uint32_t)odd << 16)),
                              (int32_t)(((uint32_t)odd & 0xFFFF0000u) | ((uint32_t)even >> 16))};
        memcpy(scratch + i, w, 8);
    }
#endif
    for (; i < p->in_n; ++i) {
        scratch[i] = (int16_t)((int32_t)in[i] - p->in_zp);
    }
    for (int32_t o = 0; o < p->out_n; ++o) {
        const int32_t *end = nz + counts[o];
        int32_t acc = tt_nz4(bias[o], &nz, end, scratch);
        /* The last 0-3 non-zeros without a loop test. */
        switch (end - nz) {
        case 3:
            acc = TT_NZ(acc, scratch, nz[2]);
            /* fall through */
        case 2:
            acc = TT_NZ(acc, scratch, nz[1]);
            /* fall through */
        case 1:
            acc = TT_NZ(acc, scratch, nz[0]);
            /* fall through */
        default:
            nz = end;
        }
        out[o] = tt_clamp(tt_requant_inline(acc, mult[o], shift[o]) + p->out_zp, p->act_min,
                          p->act_max);
    }
}
