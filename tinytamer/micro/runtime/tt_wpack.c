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

void tt_wpack_row(const tt_wpack *w, int32_t row, int8_t *dst)
{
    const uint8_t *src = w->data + row * w->row_bytes;
    const int8_t *cb = w->codebook != 0 ? w->codebook + row * w->cb_stride : 0;
    const int32_t k = w->k;
    int32_t j = 0;
    if (w->bits == 4) {
        /* Two fields per byte: one load, two extracts (CMSIS-NN's s4 layout, low nibble
         * first). */
        for (; j + 1 < k; j += 2) {
            const uint32_t b = *src++;
            dst[j] = cb != 0 ? cb[b & 15u] : tt_sext(b & 15u, 4);
            dst[j + 1] = cb != 0 ? cb[b >> 4] : tt_sext(b >> 4, 4);
        }
    } else if (w->bits == 2) {
        for (; j + 3 < k; j += 4) {
            const uint32_t b = *src++;
            for (int32_t q = 0; q < 4; ++q) {
                const uint32_t f = (b >> (2 * q)) & 3u;
                dst[j + q] = cb != 0 ? cb[f] : tt_sext(f, 2);
            }
        }
    } else if (w->bits == 8) {
        for (; j < k; ++j) {
            dst[j] = cb != 0 ? cb[src[j]] : (int8_t)src[j];
        }
        return;
    }
    /* The tail of a 4- or 2-bit row, and every field of other widths (a field may straddle
     * two bytes; the second is read only when it does, so no byte past the row is read). */
    const uint8_t *base = w->data + row * w->row_bytes;
    const uint32_t mask = (1u << w->bits) - 1u;
    for (; j < k; ++j) {
        const uint32_t pos = (uint32_t)(j * w->bits);
        uint32_t v = base[pos >> 3];
        if ((pos & 7u) + (uint32_t)w->bits > 8u) {
            v |= (uint32_t)base[(pos >> 3) + 1] << 8;
        }
        const uint32_t f = (v >> (pos & 7u)) & mask;
        dst[j] = cb != 0 ? cb[f] : tt_sext(f, w->bits);
    }
}
