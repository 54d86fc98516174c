/* Unpacking one row of a packed weight layer (int4, int2, k-means shared: see tt_wpack in
 * tt_kernels.h and tinytamer/micro/weights.py, which packs them and unpacks them in numpy).
 * Shared by the packed conv, depthwise and dense kernels. */
#include "tt_kernels.h"

/* A two's-complement field of `bits` bits as a value (arithmetic only: no shift into the
 * sign bit). */
static inline int8_t tt_sext(uint32_t f, int32_t bits)
{
    return (int8_t)((int32_t)f - (int32_t)((f >> (bits - 1)) << bits));
}

/* k fields of `bits` bits from src, low bits first, through a bit buffer refilled a byte at
 * a time (no byte past the row is read); looked up in cb, or sign-extended where cb is 0. */
static void tt_fields(const uint8_t *src, int32_t bits, int32_t k, const int8_t *cb,
                      int8_t *dst)
{
    const uint32_t mask = (1u << bits) - 1u;
    uint32_t buf = 0;
    int32_t have = 0;
    if (cb != 0) {
        for (int32_t j = 0; j < k; ++j) {
            if (have < bits) {
                buf |= (uint32_t)*src++ << have;
                have += 8;
            }
            dst[j] = cb[buf & mask];
            buf >>= bits;
            have -= bits;
        }
        return;
    }
    for (int32_t j = 0; j < k; ++j) {
        if (have < bits) {
            buf |= (uint32_t)*src++ << have;
            have += 8;
        }
        dst[j] = tt_sext(buf & mask, bits);
        buf >>= bits;
        have -= bits;
    }
}

void tt_wpack_row(const tt_wpack *w, int32_t row, int8_t *dst)
{
    const uint8_t *src = w->data + row * w->row_bytes;
    const int8_t *cb = w->codebook == 0 ? 0
                       : w->codebook + (w->groups != 0 ? w->groups[row] * w->cb_stride : 0);
    const int32_t k = w->k;
    if (w->bits == 4 && cb != 0) {
        /* Two fields per byte: one load, two lookups (CMSIS-NN's s4 order, low nibble first). */
        int32_t j = 0;
        for (; j + 1 < k; j += 2) {
            const uint32_t b = *src++;
            dst[j] = cb[b & 15u];
            dst[j + 1] = cb[b >> 4];
        }
        if (j < k) {
            dst[j] = cb[*src & 15u];
        }
        return;
    }
    if (w->bits == 8) {
        for (int32_t j = 0; j < k; ++j) {
            dst[j] = cb != 0 ? cb[src[j]] : (int8_t)src[j];
        }
        return;
    }
    tt_fields(src, w->bits, k, cb, dst);
}
