/* The kernels' common part (see tt_kernels.h): the out-of-line requantization.  Each op's
 * kernels live in their own file (tt_conv.c, tt_depthwise.c, tt_dense.c, tt_pool.c,
 * tt_add.c, tt_softmax.c); the helpers they share are tt_fixedpoint.h (portable) and
 * tt_dsp.h (Cortex-M DSP).  The arithmetic is the oracle's:
 * tinytamer/micro/fixedpoint.py and reference.py compute the same values in numpy. */
#include "tt_kernels.h"
#include "tt_fixedpoint.h"

int32_t tt_requant(int32_t acc, int32_t multiplier, int32_t shift)
{
    /* The general form, any multiplier (the kernels use tt_requant_inline). */
    int32_t left = shift > 0 ? shift : 0;
    int64_t x = (int64_t)acc * ((int64_t)1 << left);
    acc = x > INT32_MAX ? INT32_MAX : (x < INT32_MIN ? INT32_MIN : (int32_t)x);
    return tt_rdbpot(tt_srdhm(acc, multiplier), shift > 0 ? 0 : -shift);
}
