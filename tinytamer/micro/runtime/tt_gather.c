/* Channel gather: split, concatenation and channel shuffle of HWC maps (ops/gather.py). */
#include "tt_kernels.h"

void tt_gather_s8(const tt_gather_params *p, const int8_t *const *in, int8_t *out)
{
    /* The output never aliases an input (the memory plan gives it its own buffer). */
    for (int32_t px = 0; px < p->pixels; ++px) {
        int8_t *y = out + px * p->out_c;
        for (int32_t r = 0; r < p->n_runs; ++r) {
            const int32_t *run = p->runs + 6 * r;
            const int32_t k = run[0], in_step = run[2], out_step = run[4], n = run[5];
            const int8_t *x = in[k] + px * p->in_c[k] + run[1];
            int8_t *o = y + run[3];
            const int8_t *table = p->tables[k];
            if (table) {
                for (int32_t j = 0; j < n; ++j)
                    o[j * out_step] = table[x[j * in_step] + 128];
            } else {
                for (int32_t j = 0; j < n; ++j)
                    o[j * out_step] = x[j * in_step];
            }
        }
    }
}
