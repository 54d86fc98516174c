/* tinytamer micro runtime: int8 kernels for the generated model code.
 *
 * Activations are int8, HWC; weights int8 OHWI (dense: [out][in]); biases and
 * accumulators int32; requantization by a Q31 multiplier and shift with
 * round-to-nearest and saturation, as gemmlowp / TensorFlow Lite do it.  No
 * floating point, no allocation.  One file per op (tt_conv.c, tt_depthwise.c,
 * tt_dense.c, tt_pool.c, tt_add.c, tt_softmax.c), each with its portable C99 kernels and,
 * where the op has them, its Cortex-M4/M7 variants (SMLAD / SXTB16) beside them.
 */
#ifndef TT_KERNELS_H
#define TT_KERNELS_H

#include <stdint.h>

typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w, stride_h, stride_w, pad_h, pad_w, groups;
    int32_t in_zp, out_zp, act_min, act_max;
    const struct tt_residual *res; /* a residual add fused into the output, or 0 */
    /* the quads kernels' pixel-pair column builders (&tt_qx_pairs, tt_conv.c) where the
     * layer's pairs of pixels share input (the generator decides), or 0: an image links
     * them only where a layer names them */
    const struct tt_qx_pair_fns *pairs;
} tt_conv_params;

typedef struct {
    int32_t in_h, in_w, c;
    int32_t out_h, out_w;
    int32_t k_h, k_w, stride_h, stride_w, pad_h, pad_w;
    int32_t in_zp, out_zp, multiplier, shift, act_min, act_max;
} tt_pool_params;

typedef struct {
    int32_t size, left_shift;
    int32_t in1_zp, in1_multiplier, in1_shift;
    int32_t in2_zp, in2_multiplier, in2_shift;
    int32_t out_zp, out_multiplier, out_shift, act_min, act_max;
} tt_add_params;

typedef struct {
    int32_t in_n, out_n, in_zp, out_zp, act_min, act_max;
} tt_dense_params;

typedef struct {
    int32_t n, out_zp, multiplier, act_min, act_max;
} tt_softmax_params;

/* One output channel's constants for the "mm" kernels: the int32 bias and the
 * requantization in single-multiply form (valid when the generator's bounds hold, see
 * tinytamer/micro/schedule.py fast_requant): v = (t + offset + (t >> 31)) >> rshift with
 * t = SMMULR(2 * acc, mult), where offset = 2^(rshift - 1) + out_zp * 2^rshift.  A channel
 * whose multiplier that form cannot take exactly has rshift TT_RQ_GENERAL and offset
 * shift << 8 | (uint8_t)out_zp: the general form runs for it alone (tt_rq_chan). */
typedef struct {
    int32_t bias, mult, rshift, offset;
} tt_rq;

#define TT_RQ_GENERAL 0

/* A residual add fused into a convolution: the conv's int8 result and the other input
 * (read from the output buffer, which the add overwrites in place) are rescaled and summed
 * exactly as tt_add_s8_lut does.  Each side's rescale is a 256-entry table, or where the
 * generator proved it affine over all 256 codes (the input of the larger scale always is:
 * its multiplier is one half), no table (0) and mul * v + add.  `rq`, where the generator
 * proved the single-multiply form exact for the sum's requantization, is that form (the
 * "mm" kernels use it), else 0. */
typedef struct tt_residual {
    const tt_add_params *add;
    const int32_t *t_conv;
    const int32_t *t_other;
    const tt_rq *rq;
    int32_t c_mul, c_add, o_mul, o_add;
} tt_residual;

/* A layer's weights in a packed form (tinytamer/micro/weights.py): one row per output
 * channel, each row_bytes long, holding k fields of `bits` bits, low bits first.  With no
 * codebook a field is a two's-complement value (int4, int2); else it indexes the row's
 * codebook: codebook + groups[row] * cb_stride, or the one codebook where groups is 0. */
typedef struct {
    const uint8_t *data;
    const int8_t *codebook;
    int32_t bits, k, row_bytes, cb_stride;
    const uint8_t *groups;
} tt_wpack;

/* Row `row` of a packed layer as k int8 values (runtime/tt_wpack.c). */
void tt_wpack_row(const tt_wpack *w, int32_t row, int8_t *dst);

/* MultiplyByQuantizedMultiplier: acc * multiplier * 2^(shift - 31), rounded. */
int32_t tt_requant(int32_t acc, int32_t multiplier, int32_t shift);

/* Portable kernels. */
void tt_conv2d_s8(const tt_conv_params *p, const int8_t *in, const int8_t *w,
                  const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out);
void tt_depthwise_s8(const tt_conv_params *p, const int8_t *in, const int8_t *w,
                     const int32_t *bias, const int32_t *mult, const int32_t *shift,
                     int8_t *out);
void tt_dense_s8(const tt_dense_params *p, const int8_t *in, const int8_t *w,
                 const int32_t *bias, const int32_t *mult, const int32_t *shift, int8_t *out);
void tt_maxpool_s8(const tt_pool_params *p, const int8_t *in, int8_t *out);
void tt_avgpool_s8(const tt_pool_params *p, const int8_t *in, int8_t *out);
void tt_add_s8(const tt_add_params *p, const int8_t *a, const int8_t *b, int8_t *out);
/* Softmax over n values with the exp table of the difference to the max (TFLite's int8
 * lookup-table softmax); 64-bit integer division, no floating point. */
void tt_softmax_s8(const tt_softmax_params *p, const int8_t *in, int8_t *out,
                   const int32_t *table);
void tt_add_s8_lut(const tt_add_params *p, const int8_t *a, const int8_t *b, int8_t *out,
                   const int32_t *ta, const int32_t *tb);
/* A layer's weights in a sparse form (tinytamer/micro/weights.py), rows in order.  Form
 * "sparse": counts[r] entries in row r, nz holds each non-zero as (int8 weight << 16 |
 * column).  Form "sparse_shared": stream holds `entries` (gap_bits + idx_bits)-bit fields
 * over the flattened rows, low bits first: the gap (zeros since the previous entry, across
 * row ends; the largest gap value is a filler that only skips), then an index into the
 * codebook of the row the entry lands in: codebook + groups[row] * cb_stride, or the one
 * codebook where groups is 0. */
typedef struct {
    const int32_t *nz;
    const uint8_t *stream;
    const int8_t *codebook;
    const uint16_t *counts;
    int32_t gap_bits, idx_bits, cb_stride;
    const uint8_t *groups;
    int32_t entries;
} tt_sparse;

/* Pruned fully connected and convolution (groups 1) kernels (tt_sparse.c): only the stored
 * non-zeros are multiplied.  `scratch` holds in_n (dense) or k_h * k_w * in_c (conv)
 * int16. */
void tt_dense_s8_sparse(const tt_dense_params *p, const int8_t *in, const tt_sparse *w,
                        const int32_t *bias, const int32_t *mult, const int32_t *shift,
                        int8_t *out, int16_t *scratch);
void tt_conv2d_s8_sparse(const tt_conv_params *p, const int8_t *in, const tt_sparse *w,
                         const int32_t *bias, const int32_t *mult, const int32_t *shift,
                         int8_t *out, int16_t *scratch);

/* Packed-weight kernels: the portable kernels' arithmetic on one output channel's row at a
 * time, unpacked into `scratch` (k bytes of arena) by tt_wpack_row.  With the DSP extension
 * the dense and convolution kernels read int4 / int2 rows a word at a time in registers
 * (tt_dsp_unpack.h); their scratch then holds the input (dense: 2 * round16(in_n) bytes) or
 * two receptive fields (convolution: 4 * round16(k_h * k_w * in_c / groups) bytes) as int16;
 * the depthwise kernel's DSP entry (tt_depthwise_s8_packed_groups, a multiple of 4
 * channels) unpacks one group of 4 channels' rows at a time into the [k_h][k_w][4] layout
 * (5 * k_h * k_w bytes of scratch: the group and one row) and runs tt_depthwise_s8_group on
 * it with the records `rq`. */
void tt_conv2d_s8_packed(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                         const int32_t *bias, const int32_t *mult, const int32_t *shift,
                         int8_t *out, int8_t *scratch);
void tt_depthwise_s8_packed(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                            const int32_t *bias, const int32_t *mult, const int32_t *shift,
                            int8_t *out, int8_t *scratch);
void tt_depthwise_s8_packed_groups(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                                   int8_t *out, int8_t *scratch, const tt_rq *rq);
void tt_dense_s8_packed(const tt_dense_params *p, const int8_t *in, const tt_wpack *w,
                        const int32_t *bias, const int32_t *mult, const int32_t *shift,
                        int8_t *out, int8_t *scratch);

/* Cortex-M4/M7 DSP variants (built only where __ARM_FEATURE_DSP is set).
 * Weights are padded to a multiple of 4 input channels; `scratch` is arena memory. */
void tt_conv2d_s8_dsp(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                      const int32_t *bias, const int32_t *mult, const int32_t *shift,
                      int8_t *out, int16_t *scratch, int32_t cols, int32_t flat);
/* im2col + a 2 x 2 (output channels x pixels) SMLAD micro-kernel in inline assembly with
 * the input dimension unrolled `unroll` (2 or 4) times; requantization from `rq`; `wexp`:
 * the weights are stored pre-expanded to int16 pairs (tinytamer/micro/schedule.py). */
void tt_conv2d_s8_mm(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                     const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                     int32_t unroll, int32_t wexp);
/* The same im2col, 2 output channels x 3 pixels per pass, both channels' int8 weights in
 * one word ("pairs" layout, tinytamer/micro/ops/conv.py); `unroll` 2 or 4 groups of 4 inputs
 * per inner-loop pass. */
void tt_conv2d_s8_mx(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                     const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                     int32_t unroll);
/* The pixel-pair column builders of the quads kernels (tt_conv_params.pairs): channels in
 * groups of 4, and RGB 3 x 3 stems (flat fields). */
extern const struct tt_qx_pair_fns tt_qx_pairs;
extern const struct tt_qx_pair_fns tt_qx_rgb_pairs;
/* The same words, 4 output channels x 2 pixels per pass, two channel pairs' words
 * interleaved ("quads" layout, tinytamer/micro/ops/conv.py): the 2 x 2 kernel's scratch. */
void tt_conv2d_s8_qx(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                     const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                     int32_t unroll);
/* The same for one output mode each (tt_mm_mode in tt_conv.c): _plain the whole int8
 * range and no fused add, _add a fused add in single-multiply form with whole-range clamps,
 * _mirror a fused add in single-multiply form whose conv side takes the table and the
 * other side the affine rescale (any clamps).  A model links only the modes it runs. */
void tt_conv2d_s8_qx_plain(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                           const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                           int32_t unroll);
void tt_conv2d_s8_qx_add(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                         const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                         int32_t unroll);
/* A packed convolution (shared, int4, int2) on the quads kernel, `block` output channels'
 * weights at a time unpacked into its int8 layout in `scratch` (tt_conv.c). */
void tt_conv2d_s8_qxb(const tt_conv_params *p, const int8_t *in, const tt_wpack *w,
                      const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                      int32_t unroll, int32_t block);
void tt_conv2d_s8_qx_mirror(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                            const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                            int32_t unroll);
/* The quads kernel over packed int4 weights ("quads4" layout, tinytamer/micro/ops/conv.py:
 * one word per column word of a quad, nibbles scaled by 16 in registers), per output mode
 * as above; mirrored fused adds go to tt_conv2d_s4_qx, which runs any mode. */
void tt_conv2d_s4_qx(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                     const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                     int32_t unroll);
void tt_conv2d_s4_qx_plain(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                           const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                           int32_t unroll);
void tt_conv2d_s4_qx_add(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                         const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                         int32_t unroll);
/* The same over packed int2 weights ("quads2": one word per two column words of a quad). */
void tt_conv2d_s2_qx(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                     const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                     int32_t unroll);
void tt_conv2d_s2_qx_plain(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                           const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                           int32_t unroll);
void tt_conv2d_s2_qx_add(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                         const tt_rq *rq, int8_t *out, int16_t *scratch, int32_t flat,
                         int32_t unroll);
/* Winograd F(2x2, 3x3) for 3 x 3, stride-1 layers with a multiple of 4 input channels
 * (tt_winograd.c): weights transformed and stored as int16 pairs, `scratch` two tiles'
 * transformed inputs (2 x 16 x in_c int16); the same output stage as the "mm" kernels. */
void tt_conv2d_s8_wino(const tt_conv_params *p, const int8_t *in, const int32_t *w,
                       const tt_rq *rq, int8_t *out, int16_t *scratch);
/* Depthwise, 4 channels per step (tt_depthwise.c): weights [C/4][k_h][k_w][4], each
 * channel's bias and requantization in its tt_rq record. */
void tt_depthwise_s8_dsp(const tt_conv_params *p, const int8_t *in, const int8_t *w,
                         int8_t *out, const tt_rq *rq);
void tt_depthwise_s8_group(const tt_conv_params *p, const int8_t *in, const int8_t *w_c,
                           int32_t c, int8_t *out, const tt_rq *rq);
void tt_dense_s8_dsp(const tt_dense_params *p, const int8_t *in, const int8_t *w,
                     const int32_t *bias, const int32_t *mult, const int32_t *shift,
                     int8_t *out, int16_t *scratch);

/* Channel gather (tt_gather.c): split, concatenation, channel shuffle.  Each run is six
 * int32 (input, first input channel, input step, first output channel, output step,
 * length); tables[k] maps input k's codes (index code + 128) to output codes, or is 0
 * where input k is copied. */
typedef struct {
    int32_t pixels, out_c, n_runs;
    const int32_t *runs;
    const int32_t *in_c;
    const int8_t *const *tables;
} tt_gather_params;
void tt_gather_s8(const tt_gather_params *p, const int8_t *const *in, int8_t *out);

/* Nearest upsampling (tt_upsample.c) by whole factors f_h x f_w; table maps input codes
 * (index code + 128) to output codes, or is 0 for a copy. */
typedef struct {
    int32_t in_h, in_w, c, f_h, f_w;
    const int8_t *table;
} tt_upsample_params;
void tt_upsample_s8(const tt_upsample_params *p, const int8_t *in, int8_t *out);

#endif
