/* Nearest-neighbour upsampling of an HWC map by whole factors (ops/upsample.py). */
#include "tt_kernels.h"

void tt_upsample_s8(const tt_upsample_params *p, const int8_t *in, int8_t *out)
{
    const int32_t out_w = p->in_w * p->f_w;
    for (int32_t y = 0; y < p->in_h; ++y) {
        int8_t *row = out + y * p->f_h * out_w * p->c;
        /* First output row of the group: each input pixel written f_w times. */
        for (int32_t x = 0; x < p->in_w; ++x) {
            const int8_t *src = in + (y * p->in_w + x) * p->c;
            for (int32_t r = 0; r < p->f_w; ++r) {
                int8_t *dst = row + (x * p->f_w + r) * p->c;
                if (p->table) {
                    for (int32_t ch = 0; ch < p->c; ++ch)
                        dst[ch] = p->table[src[ch] + 128];
                } else {
                    for (int32_t ch = 0; ch < p->c; ++ch)
                        dst[ch] = src[ch];
                }
            }
        }
        /* The other f_h - 1 rows repeat it. */
        for (int32_t r = 1; r < p->f_h; ++r) {
            int8_t *dst = row + r * out_w * p->c;
            for (int32_t k = 0; k < out_w * p->c; ++k)
                dst[k] = row[k];
        }
    }
}
