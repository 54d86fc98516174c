/* Packed int4 / int2 weights to the int16 pairs SMLAD reads, in registers (Cortex-M4/M7
 * DSP extension), for the packed kernels (tt_dense_packed.c, tt_conv_packed.c).
 *
 * One 32-bit word holds 8 int4 fields (low nibble first, CMSIS-NN's s4 order) or 16 int2
 * fields.  Masking the word so one field sits in the top bits of each byte and SXTB16 (its
 * ROR 8 form for bytes 1 and 3) sign-extends two fields at once, each scaled by 2^(8 -
 * bits): int4 gives the pairs (n0,n4) (n2,n6) (n1,n5) (n3,n7) times 16 from two ANDs (one
 * of the word shifted by 4) and four SXTB16; int2 the pairs (q, 8+q) (4+q, 12+q) for q =
 * 0..3 times 64.  The kernels store their int16 inputs in that order (tt_unpack_slot) so
 * each pair meets its inputs, and divide the exact sum by the scale once per output. */
#ifndef TT_DSP_UNPACK_H
#define TT_DSP_UNPACK_H

#include <stdint.h>

/* The input slot of field j (natural order -> the order the pairs come out in: slot s
 * holds the input the s-th lane multiplies). */
static inline int32_t tt_unpack_slot(int32_t bits, int32_t j)
{
    if (bits == 4) {
        /* slots: n0 n4 n2 n6 n1 n5 n3 n7 (the map is its own inverse). */
        static const uint8_t s4[8] = {0, 4, 2, 6, 1, 5, 3, 7};
        return (j & ~7) + s4[j & 7];
    }
    /* slots: 0 8 4 12 1 9 5 13 2 10 6 14 3 11 7 15; field j goes to slot s2[j]. */
    static const uint8_t s2[16] = {0, 4, 8, 12, 2, 6, 10, 14, 1, 5, 9, 13, 3, 7, 11, 15};
    return (j & ~15) + s2[j & 15];
}

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#include <arm_acle.h>

/* SXTB16 of bytes 1 and 3 (GCC 12's arm_acle.h has no __ror to fold into it). */
static inline uint32_t tt_sxtb16_b13(uint32_t v)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

#endif

#endif
