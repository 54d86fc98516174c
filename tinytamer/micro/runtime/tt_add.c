/* Residual add: per element (tt_add_s8) or through 256-entry tables (tt_add_s8_lut). */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

void tt_add_s8(const tt_add_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    /* Element i is read before it is written, so `out` may alias `a` or `b`. */
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t sa = tt_requant_inline(((int32_t)a[i] - p->in1_zp) * (1 << p->left_shift),
                                      p->in1_multiplier, p->in1_shift);
        const int32_t sb = tt_requant_inline(((int32_t)b[i] - p->in2_zp) * (1 << p->left_shift),
                                      p->in2_multiplier, p->in2_shift);
        const int32_t v = tt_requant_inline(sa + sb, p->out_multiplier, p->out_shift) + p->out_zp;
        out[i] = tt_clamp(v, p->act_min, p->act_max);
    }
}

void tt_add_s8_lut(const tt_add_params *p, const int8_t *a, const int8_t *b, int8_t *out,
                   const int32_t *ta, const int32_t *tb)
{
    /* ta/tb[v + 128] hold each input's rescaled value (tt_add_s8's sa, sb) for code v. */
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t v = tt_requant_inline(ta[a[i] + 128] + tb[b[i] + 128], p->out_multiplier,
                                            p->out_shift) + p->out_zp;
        out[i] = tt_clamp(v, p->act_min, p->act_max);
    }
}
