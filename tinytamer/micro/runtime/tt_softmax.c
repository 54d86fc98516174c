/* Softmax over a vector, TFLite's int8 lookup-table form (portable C99). */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

void tt_softmax_s8(const tt_softmax_params *p, const int8_t *in, int8_t *out,
                   const int32_t *table)
{
    /* table[d] = round(2^30 exp(-in_scale d)) for d = max - x: the probabilities are
     * table[d] / sum; times multiplier / 2^16 = 1 / out_scale, rounded half up. */
    int32_t mx = -128;
    for (int32_t i = 0; i < p->n; ++i) {
        mx = in[i] > mx ? in[i] : mx;
    }
    uint64_t sum = 0;
    for (int32_t i = 0; i < p->n; ++i) {
        sum += (uint32_t)table[mx - in[i]];
    }
    const uint64_t den = sum << 16;
    for (int32_t i = 0; i < p->n; ++i) {
        const uint64_t num = (uint64_t)(uint32_t)table[mx - in[i]] * (uint32_t)p->multiplier;
        const int32_t q = (int32_t)((num + (den >> 1)) / den) + p->out_zp;
        out[i] = tt_clamp(q, p->act_min, p->act_max);
    }
}
