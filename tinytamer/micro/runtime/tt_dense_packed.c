/* Fully connected over packed weights (int4, int2, shared): each row is unpacked into the
 * arena (each weight once, as the int8 kernel reads each once), then tt_dense_s8's
 * integer arithmetic. */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

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
        acc = tt_requant_inline(acc, mult[o], shift[o]) + p->out_zp;
        out[o] = tt_clamp(acc, p->act_min, p->act_max);
    }
}
