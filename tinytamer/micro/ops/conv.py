"""Convolution: groups == 1, grouped, or depthwise (groups == in == out channels).

Kernels and knobs (the op's ``schedule``; an empty one means the build's default):

- groups 1: ``kernel`` "mm" (tt_conv2d_s8_mm, runtime/tt_conv.c: im2col to int16, then a
  2 x 2 output-channel x pixel micro-kernel in hand-scheduled SMLAD assembly, with
  single-multiply requantization, per channel where :func:`fast_requant` proves it exact),
  "im2col" (tt_conv2d_s8_dsp, runtime/tt_conv.c: the same im2col with compiler-scheduled C
  and the general requantization) or "direct" (tt_conv2d_s8, portable loops, no scratch);
  ``unroll`` 4 or 2 (mm: groups of 4 inputs per inner-loop pass), ``weights`` "quads" (mm:
  tt_conv2d_s8_qx, 4 channels x 2 pixels per pass, the words of "pairs" with two channel
  pairs interleaved, see :func:`_quads`; the 2 x 2 kernel's scratch; layers whose outputs
  need no clamp (alone or with a fused add) always run 16 column words per pass, ``unroll``
  sets the others'), "quads4" / "quads2" (the same kernel over packed int4 / int2 weights,
  tt_conv2d_s4_qx* / tt_conv2d_s2_qx*, see :func:`_quads_packed`: offered first for a layer
  of the ``int4`` / ``int2`` form whose sums allow it, :func:`quads_packed_fits`; half / a
  quarter of the int8 flash), "pairs" (mm:
  tt_conv2d_s8_mx, 2 channels x 3 pixels per pass, both channels' int8 weights in one word,
  see :func:`_pairs`; the int8 layout's flash, a third more scratch), "int8" (2 x 2
  micro-kernel, int8 in flash, unpacked by SXTB16 in the loop) or "int16" (2 x 2,
  pre-expanded to the int16 pairs SMLAD reads: twice the flash, no unpacking), ``cols`` 1
  or 2 (im2col: output pixels
  per im2col batch), ``pack`` "channel" (input channels rounded up to 4 at every kernel
  position; vector unpacking) or "flat" (the whole receptive field rounded up to 4 once;
  scalar unpacking - less padding for 1- or 3-channel inputs), or "winograd"
  (tt_conv2d_s8_wino, runtime/tt_winograd.c: F(2x2, 3x3) for 3 x 3, stride-1 layers with a
  multiple of 4 input channels, :mod:`tinytamer.micro.winograd`; 2.25x fewer multiplies,
  int16 transformed weights: 3.6x the int8 flash; offered last, for the tuner to weigh);
- depthwise: ``kernel`` "direct" (tt_depthwise_s8) or "simd" (tt_depthwise_s8_dsp,
  runtime/tt_depthwise.c: 4 channels per SXTB16/SMLABB step, weights [C/4][KH][KW][4] and
  channel groups outermost, so one group's constants stay in a flash data cache; needs a
  multiple of 4 channels; single-multiply requantization per channel, as for "mm");
- a layer whose ``weight_form`` (:mod:`tinytamer.micro.weights`) is not int8 offers first
  ``kernel`` "packed" (tt_conv2d_s8_packed, runtime/tt_conv_packed.c, or
  tt_depthwise_s8_packed, runtime/tt_depthwise_packed.c): the weights stay packed in flash
  and each output channel's row is unpacked into the arena once per inference (depthwise,
  DSP, a multiple of 4 channels: each group of 4 channels' rows into the "simd" layout,
  then the "simd" kernel's group loop runs on them: int8's cycles at the packed flash);
- a convolution (groups 1, DSP) in the ``shared`` form offers first ``kernel`` "blocks"
  (tt_conv2d_s8_qxb, runtime/tt_conv.c): ``block`` (8, 4 or 16) output channels' rows at a
  time unpacked into the int8 "quads" layout in the arena, then the quads kernel over every
  pixel for them (``pack`` and ``unroll`` as for "mm"); the columns are rebuilt per block;
- a convolution (groups 1) whose ``weight_form`` is sparse or sparse_shared offers first
  ``kernel`` "sparse" (tt_conv2d_s8_sparse, runtime/tt_sparse.c): per output pixel its patch
  is unpacked once to int16 and each channel's stored non-zeros are multiplied, the zeros
  skipped (the fully connected sparse kernel's rows, over the im2col patch).

A convolution whose only consumer is the residual add after it can run with the add fused
into its output (:mod:`tinytamer.micro.planner`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import fx, nn

from tinytamer.micro import weights, winograd
from tinytamer.micro.fixedpoint import FastRequant, fast_records
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops.add import add_fast_requant, add_params, add_tables, affine_table
from tinytamer.micro.ops.base import (
    CallSite,
    DeviceOp,
    Pending,
    Quant,
    c_array,
    c_requant,
    c_struct,
    c_weights,
    pair,
    requant_clamp,
    round4,
    windows,
)
from tinytamer.qgraph import QuantWeight


@dataclass
class Conv2D(Op):
    """Convolution (groups == 1, grouped, or depthwise when groups == in == out channels)."""

    weight: np.ndarray  # int8 [OC, KH, KW, IC/groups]
    bias: np.ndarray  # int32 [OC]
    multiplier: np.ndarray  # int32 [OC]
    shift: np.ndarray  # int32 [OC]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    act_min: int
    act_max: int
    schedule: dict = field(default_factory=dict)  # kernel knobs chosen by the tuner
    weight_form: str = "int8"  # how flash stores the weights (tinytamer.micro.weights)

    @property
    def depthwise(self) -> bool:
        oc, _, _, icg = self.weight.shape
        return self.groups > 1 and icg == 1 and oc == self.groups


# Knobs that a conv kernel reads; the others do not change what runs.
_CONV_KNOBS = {
    "mm": ("kernel", "unroll", "weights", "pack"),
    "im2col": ("kernel", "cols", "pack"),
    "direct": ("kernel",),
    "packed": ("kernel",),
    "blocks": ("kernel", "unroll", "pack", "block"),
    "sparse": ("kernel",),
    "winograd": ("kernel",),
}


def fast_requant(op: Op, out_zp: int = 0) -> np.ndarray:
    """Per output channel (bias, mult, rshift, offset) records for tt_rq_chan, each exact
    against the reference's requantization (:func:`~tinytamer.micro.fixedpoint.fast_records`:
    the single-multiply form, a constant, or the general form for that channel alone)."""
    return requant_plan(op, out_zp).records


def requant_plan(op: Op, out_zp: int = 0) -> FastRequant:
    """The records and how many channels are constant or in the general form."""
    w = op.weight.reshape(op.weight.shape[0], -1).astype(np.int64)
    return fast_records(op.bias, op.multiplier, op.shift, np.abs(w).sum(axis=1), out_zp)


def _pairs(groups: np.ndarray, natural: bool) -> np.ndarray:
    """The "pairs" layout of tt_conv2d_s8_mx from the int8 weights in groups of 4 inputs
    ([OC, k4, 4]): per channel pair (A, B) and column word, the bytes [A_lo + 128, B_lo,
    A_hi + 128, B_hi], (lo, hi) the inputs the word's two int16 lanes hold ([v0|v1][v2|v3]
    in natural order, else the SXTAB16 order [v0|v2][v1|v3]).  An odd last channel pairs
    with a channel of zeros."""
    oc, k4, _ = groups.shape
    lanes = groups[:, :, [0, 1, 2, 3] if natural else [0, 2, 1, 3]].reshape(oc, 2 * k4, 2)
    if oc % 2:
        lanes = np.concatenate([lanes, np.zeros_like(lanes[:1])])
    a = (lanes[0::2].astype(np.int16) + 128).astype(np.uint8)
    b = lanes[1::2].astype(np.int8).view(np.uint8)
    words = np.stack([a[..., 0], b[..., 0], a[..., 1], b[..., 1]], axis=-1)
    return np.ascontiguousarray(words).reshape(-1).view("<i4").astype(np.int32)


def _quads(groups: np.ndarray, natural: bool) -> np.ndarray:
    """The "quads" layout of tt_conv2d_s8_qx: the "pairs" words, those of channel pairs
    (A, B) and (C, D) of every whole group of 4 channels interleaved word by word; the
    channels past the last whole group (``OC % 4``) follow in the pairs layout."""
    words = _pairs(groups, natural)
    quads, nw = groups.shape[0] // 4, 2 * groups.shape[1]
    head = words[: quads * 2 * nw].reshape(quads, 2, nw).transpose(0, 2, 1)
    return np.concatenate([head.reshape(-1), words[head.size :]])


def _quads_packed(groups: np.ndarray, natural: bool, bits: int) -> np.ndarray:
    """The "quads4" / "quads2" layouts of tt_conv2d_s4_qx* / tt_conv2d_s2_qx* from int4 /
    int2 weights in groups of 4 inputs: the quads layout's words laid out for weights
    ``2^(8 - bits) w`` (bytes ``2^(8 - bits) w + 128`` for the low channel of a pair,
    ``2^(8 - bits) w`` for the high one: fields ``w + 2^(bits - 1)`` and ``w`` modulo
    ``2^bits``, the top ``bits`` bits of those bytes), ``8 / bits`` consecutive words of a
    quad in one: the j-th word's field at bits ``bits * j`` of each byte, which the kernel
    gets back with a shift left by ``8 - bits * (j + 1)`` and a mask.  The channels past the
    last whole quad follow as int8 "pairs" words, as in :func:`_quads`."""
    oc, k4, _ = groups.shape
    quads, nw, per = oc // 4, 2 * k4, 8 // bits
    scaled = _pairs((groups[: 4 * quads].astype(np.int16) << (8 - bits)).astype(np.int8), natural)
    # [quad, column word, (AB, CD)] -> per quad the words in loop order: AB, CD of each step.
    order = np.ascontiguousarray(scaled.reshape(quads, 2, nw).transpose(0, 2, 1)).reshape(quads, 2 * nw)
    top = order.view(np.uint8).reshape(quads, nw * 2 // per, per, 4) >> (8 - bits)
    packed = np.zeros(top.shape[:2] + (4,), np.uint8)
    for k in range(per):
        packed |= (top[:, :, k] << (bits * k)).astype(np.uint8)
    tail = _pairs(groups[4 * quads :], natural) if oc % 4 else np.zeros(0, np.int32)
    return np.concatenate([packed.reshape(-1).view("<i4"), tail]).astype(np.int32)


def quads_packed_fits(op: Conv2D, bits: int) -> bool:
    """Whether tt_conv2d_s{bits}_qx* can run the layer: ``bits``-bit weights, and every
    channel's sum ``2^(8 - bits)`` times over (bias and products: inputs minus their zero
    point at most 255 in magnitude) inside int32, so that the kernel's shift back is exact."""
    w = op.weight.reshape(op.weight.shape[0], -1).astype(np.int64)
    half = 1 << (bits - 1)
    if w.size == 0 or w.min() < -half or w.max() >= half:
        return False
    bound = np.abs(op.bias.astype(np.int64)) + 255 * np.abs(w).sum(axis=1)
    return bool(int(bound.max()) << (8 - bits) < 1 << 31)


def packed_groups(op: Op, dsp: bool) -> bool:
    """Whether ``op`` is a depthwise convolution that tt_depthwise_s8_packed_groups runs in
    groups of 4 channels on the SIMD depthwise group kernel (DSP builds, a multiple of 4
    channels), which reads the records ``q`` and no bias / multiplier / shift arrays."""
    return dsp and isinstance(op, Conv2D) and op.depthwise and op.weight.shape[0] % 4 == 0


# The packed forms the quads kernel runs: form -> (its "weights" layout, bits).
_QUADS_PACKED = {"int4": ("quads4", 4), "int2": ("quads2", 2)}
_QUADS_LAYOUTS = ("quads", "quads4", "quads2")


_FULL = (-128, 127)


def pair_builders(op: Conv2D, s: dict, in_w: int, out_w: int) -> str | None:
    """The pixel-pair column builders the layer's quads kernel takes (``tt_conv_params.pairs``;
    tt_qx_run in runtime/tt_conv.c takes every pixel in pairs where a layer names them,
    trusting what this tests), or None.  Both need the quads layouts or the shared-weight
    blocks and an even output width (a pair stays in its row).  ``tt_qx_pairs``: channels
    gathered per pixel in groups of 4, a kernel row of at most 240 bytes (a pixel's lane sums
    fit int16), windows that overlap (k_w > stride_w), and no pair's span reaching more than
    stride_w pixels into the padding on either side (tt_qx_pair_edge's bound).
    ``tt_qx_rgb_pairs``: an RGB 3 x 3 stem's flat fields.  Only such layers name builders,
    so an image without them links none."""
    quads = (s["kernel"] == "mm" and s.get("weights") in _QUADS_LAYOUTS) or s["kernel"] == "blocks"
    _, kh, kw, ic = op.weight.shape
    if not quads or out_w % 2:
        return None
    if s.get("pack") == "flat":
        return "tt_qx_rgb_pairs" if (ic, kh, kw) == (3, 3, 3) else None
    sw, pw = op.stride[1], op.padding[1]
    right = (out_w - 2) * sw - pw + kw + sw  # the last pair's span ends here
    fits = ic % 4 == 0 and kw * ic <= 240 and kw > sw and pw <= sw and right <= in_w + sw
    return "tt_qx_pairs" if fits else None


def _quads_entry(op: Conv2D, site: CallSite, bits: int = 8) -> str:
    """The quads kernel's entry point for the layer's output mode (tt_mm_mode in
    runtime/tt_conv.c): one per common mode, so that the image links only the output code
    its layers run; the other modes share the entry that reads the mode at run time, and so
    does a layer with a channel in the general form (the common modes' output code has none).
    ``bits`` 4 / 2: the quads4 / quads2 entries (tt_conv2d_s4_qx*, tt_conv2d_s2_qx*), whose
    any-mode entry also takes the mirrored adds."""
    if bits != 8:
        entry = _quads_entry(op, site)
        return f"tt_conv2d_s{bits}_qx" if entry.endswith("_mirror") else entry.replace("_s8_", f"_s{bits}_")
    if requant_plan(op, site.g.tensors[op.output].zero_point).general:
        # The plain and fused-add entries' output code has no general form in it.
        return "tt_conv2d_s8_qx"
    full = (op.act_min, op.act_max) == _FULL
    if site.fused_add is None:
        return "tt_conv2d_s8_qx_plain" if full else "tt_conv2d_s8_qx"
    add = site.g.ops[site.fused_add]
    conv_table, other_table = _residual_tables(site.g, op, site.fused_add)
    if add_fast_requant(add, site.g) is None or (conv_table is None) == (other_table is None):
        return "tt_conv2d_s8_qx"
    if conv_table is not None:  # mirrored: modes 5 and 6
        return "tt_conv2d_s8_qx_mirror"
    return "tt_conv2d_s8_qx_add" if full and (add.act_min, add.act_max) == _FULL else "tt_conv2d_s8_qx"


def _residual_sides(
    g: Graph, conv: Conv2D, a: int
) -> tuple[tuple[np.ndarray | None, tuple[int, int] | None], tuple[np.ndarray | None, tuple[int, int] | None]]:
    """Each side of the add (op ``a``) fused into ``conv``, conv's side first: its rescale
    table, or None and the (mul, add) the kernel computes it with where the table is affine
    (:func:`affine_table`): one multiply-add, 1 KB less flash.  Where both are, the conv's side
    is computed and the other keeps its table (the form the fast kernel entry runs).  Where
    one side keeps a table, the other side's constant term is folded into it (that side's
    add is 0): every kernel sums the two sides, so the sum is the same, and the fast entry's
    output code saves an add per value."""
    add = g.ops[a]
    ta, tb = add_tables(add, g)
    conv_t, other_t = (ta, tb) if add.inputs[0] == conv.output else (tb, ta)
    conv_a = affine_table(conv_t)
    other_a = None if conv_a is not None else affine_table(other_t)
    if conv_a is not None:
        return (None, (conv_a[0], 0)), (_fold(other_t, conv_a[1]), None)
    if other_a is not None:
        return (_fold(conv_t, other_a[1]), None), (None, (other_a[0], 0))
    return (conv_t, None), (other_t, None)


def _residual_tables(g: Graph, conv: Conv2D, a: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The tables of :func:`_residual_sides`, conv's side first (None for an affine side)."""
    (conv_t, _), (other_t, _) = _residual_sides(g, conv, a)
    return conv_t, other_t


def _fold(table: np.ndarray, add: int) -> np.ndarray:
    """``table + add`` in wrapping int32 arithmetic, as the kernels sum them."""
    return ((table.astype(np.int64) + add + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


class ConvOp(DeviceOp):
    ir = Conv2D
    kernel_files = (
        "tt_conv.c",
        "tt_depthwise.c",
        "tt_conv_packed.c",
        "tt_depthwise_packed.c",
        "tt_wpack.c",
        "tt_sparse.c",
        "tt_winograd.c",
    )
    lowers_from = {nn.Conv2d: "from_module"}

    # ------------------------------------------------------------------ lowering
    def from_module(self, lw, node: fx.Node, _) -> Pending:
        m = lw.mod(node)
        if not isinstance(m, QuantWeight):
            raise lw.fail(node, f"a {type(m).__name__} left in float (not quantized)")
        x = lw.quant(node, node.args[0])
        if pair(m.dilation) != (1, 1):
            raise lw.fail(node, f"a dilated convolution (dilation {m.dilation})")
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise lw.fail(node, f"convolution padding '{m.padding}' / mode '{m.padding_mode}'")
        return Pending(self, node, [x], m)

    def finish(self, lw, p: Pending, q: Quant) -> str:
        m = p.module
        return lw.b.conv(
            p.inputs[0],
            m.int_weight().numpy(),
            m.w_scale.numpy(),
            None if m.bias is None else m.bias.detach().numpy(),
            q.scale,
            q.zero_point,
            stride=pair(m.stride),
            padding=pair(m.padding),
            groups=m.groups,
            relu=p.relu,
            qrange=q.qrange,
            name=str(p.node.target),
        )

    # ------------------------------------------------------------------ semantics
    def reference(self, g: Graph, op: Conv2D, args: list[np.ndarray]) -> np.ndarray:
        zin = g.tensors[op.inputs[0]].zero_point
        out_t = g.tensors[op.output]
        oc, kh, kw, icg = op.weight.shape
        # Padding holds the input zero point, i.e. 0 once the zero point is subtracted.
        win = windows(args[0].astype(np.int64) - zin, (kh, kw), op.stride, op.padding, 0)
        oh, ow, _ = win.shape[:3]
        cols = win.reshape(oh, ow, op.groups, icg, kh, kw)
        w = op.weight.astype(np.int64).reshape(op.groups, oc // op.groups, kh, kw, icg)
        acc = np.einsum("hwgcij,goijc->hwgo", cols, w).reshape(oh, ow, oc) + op.bias
        return requant_clamp(acc, op.multiplier, op.shift, out_t.zero_point, op.act_min, op.act_max)

    def cost(self, g: Graph, op: Conv2D) -> int:
        oh, ow, _ = g.tensors[op.output].shape
        return oh * ow * int(np.prod(op.weight.shape))

    def layer_key(self, op: Conv2D) -> str:
        form = "" if op.weight_form == "int8" else op.weight_form
        return f"w{op.weight.shape}s{op.stride}p{op.padding}g{op.groups}{form}"

    # ------------------------------------------------------------------ schedules
    def space(self, op: Conv2D, dsp: bool) -> dict[str, list]:
        knobs = self._int8_space(op, dsp)
        if op.weight_form != "int8":
            # The form's own kernel keeps its flash saving; the int8 kernels stay for a
            # tuner that trades flash for cycles.
            own = "sparse" if op.weight_form in weights.SPARSE_FORMS else "packed"
            if own == "packed" or op.groups == 1:  # the sparse kernel reads groups 1 only
                knobs["kernel"] = [own, *knobs["kernel"]]
            if op.weight_form == "shared" and "weights" in knobs:
                # Shared weights unpacked block by block into the int8 quads layout: the
                # quads kernel's cycles plus a column rebuild per block, for block x the
                # padded row in arena; first, ahead of the row-by-row packed kernel.
                knobs["kernel"] = ["blocks", *knobs["kernel"]]
                knobs["block"] = [8, 4, 16]
            layout, bits = _QUADS_PACKED.get(op.weight_form, (None, 0))
            if layout and "weights" in knobs and quads_packed_fits(op, bits):
                # The quads kernel over the packed words (half / a quarter of the int8
                # flash, 17 / 17.5 cycles for 16 MACs where int8 takes 15): first, ahead of
                # the row-unpacking packed kernel.
                knobs["kernel"] = ["mm", *(k for k in knobs["kernel"] if k != "mm")]
                knobs["weights"] = [layout, *knobs["weights"]]
        return knobs

    def _int8_space(self, op: Conv2D, dsp: bool) -> dict[str, list]:
        if op.depthwise:
            simd = dsp and op.weight.shape[0] % 4 == 0
            return {"kernel": ["simd", "direct"] if simd else ["direct"]}
        if dsp and op.groups == 1:
            flat_first = op.weight.shape[3] % 4 != 0
            wino = winograd.applies(op.weight.shape, op.stride, op.groups) and winograd.fits(op.weight, op.bias)
            return {
                "kernel": ["mm", "im2col", "direct", *(["winograd"] if wino else [])],
                "unroll": [4, 2],
                "weights": ["quads", "pairs", "int8", "int16"],
                "cols": [2, 1],
                "pack": ["flat", "channel"] if flat_first else ["channel", "flat"],
            }
        return {"kernel": ["direct"]}

    def resolve(self, op: Conv2D, dsp: bool) -> dict:
        chosen = super().resolve(op, dsp)
        if not op.depthwise and op.groups == 1:
            chosen = {k: v for k, v in chosen.items() if k in _CONV_KNOBS[chosen["kernel"]]}
        return chosen

    def weight_array(self, op: Conv2D, dsp: bool) -> np.ndarray:
        """The weights in the layout the chosen kernel reads."""
        s = self.resolve(op, dsp)
        if s["kernel"] in ("packed", "blocks"):
            return weights.pack(op.weight, op.weight_form).data
        if s["kernel"] == "sparse":
            sp = weights.pack(op.weight, op.weight_form)
            return sp.words if sp.words is not None else sp.stream
        if s["kernel"] == "simd":
            c, kh, kw, _ = op.weight.shape  # [C/4][KH][KW][4]: one group's taps contiguous
            return np.ascontiguousarray(op.weight[..., 0].reshape(c // 4, 4, kh, kw).transpose(0, 2, 3, 1))
        if s["kernel"] == "winograd":
            return winograd.weight_words(op.weight)
        if s["kernel"] not in ("im2col", "mm"):
            return op.weight
        # int8 packed in little-endian words, channel pairs interleaved word by word.
        oc, kh, kw, ic = op.weight.shape
        if s["pack"] == "flat":
            flat = op.weight.reshape(oc, -1)
            padded = np.pad(flat, ((0, 0), (0, round4(flat.shape[1]) - flat.shape[1])))
        else:
            padded = np.pad(op.weight, ((0, 0), (0, 0), (0, 0), (0, round4(ic) - ic)))
        groups = np.ascontiguousarray(padded).reshape(oc, -1, 4)
        # The column lanes per group of 4 inputs: [v0|v2][v1|v3] (SXTAB16 unpacking) or, for
        # the mm kernel's flat packing, [v0|v1][v2|v3] (natural int16 order; not for quads,
        # whose flat field is gathered as bytes and unpacked by SXTAB16).
        natural = s["kernel"] == "mm" and s["pack"] == "flat" and s["weights"] not in _QUADS_LAYOUTS
        if s.get("weights") == "pairs":
            return _pairs(groups, natural)
        if s.get("weights") in ("quads4", "quads2"):
            return _quads_packed(groups, natural, 4 if s["weights"] == "quads4" else 2)
        if s.get("weights") == "quads":
            return _quads(groups, natural)
        if s.get("weights") == "int16":
            # int16 words in the column's lane order; they interleave per channel pair below.
            b = groups.astype(np.int16)[:, :, [0, 1, 2, 3] if natural else [0, 2, 1, 3]]
            words = np.ascontiguousarray(b).view("<i4").reshape(oc, -1, 2)
            pairs = oc // 2 * 2
            inter = words[:pairs].reshape(pairs // 2, 2, -1, 2).transpose(0, 2, 1, 3).reshape(-1)
            return np.concatenate([inter, words[pairs:].reshape(-1)]).astype(np.int32)
        # int8 words whose SXTB16 / SXTB16 ROR 8 give the column's lanes.
        words = np.ascontiguousarray(groups[:, :, [0, 2, 1, 3]] if natural else groups)
        words = words.reshape(oc, -1).view("<i4")
        pairs = oc // 2 * 2
        inter = words[:pairs].reshape(pairs // 2, 2, -1).transpose(0, 2, 1).reshape(-1)
        return np.concatenate([inter, words[pairs:].reshape(-1)]).astype(np.int32)

    def scratch_bytes(self, g: Graph, op: Conv2D, dsp: bool) -> int:
        s = self.resolve(op, dsp)
        if s["kernel"] == "packed":
            k = int(np.prod(op.weight.shape[1:]))
            if packed_groups(op, dsp):
                return 5 * k  # one group of 4 channels' rows, [KH][KW][4], and one row
            # One unpacked row; DSP (not depthwise): two int16 receptive fields instead.
            return max(k, 4 * ((k + 15) // 16 * 16)) if dsp and not op.depthwise else k
        if s["kernel"] == "sparse":
            return 2 * int(np.prod(op.weight.shape[1:]))  # one int16 patch
        if s["kernel"] == "winograd":
            return winograd.scratch_bytes(op.weight.shape[3])
        if s.get("kernel") not in ("im2col", "mm", "blocks"):
            return 0
        _, kh, kw, ic = op.weight.shape
        k = round4(kh * kw * ic) if s["pack"] == "flat" else kh * kw * round4(ic)
        if s["kernel"] == "blocks":
            # `block` rows in the quads layout, one unpacked row, the quads kernel's columns.
            return (s["block"] + 1) * k + 4 * k + (k if s["pack"] == "flat" else 0)
        # int16 columns for 1 or 2 pixels (3 for the pairs kernel); mm's flat packing also
        # gathers one field in order: as int16, or as bytes for quads.
        gather = s["kernel"] == "mm" and s["pack"] == "flat"
        pixels = 3 if s.get("weights") == "pairs" else s.get("cols", 2)
        return 2 * pixels * k + (((1 if s["weights"] in _QUADS_LAYOUTS else 2) * k) if gather else 0)

    # ------------------------------------------------------------------ C
    def emit_c(self, op: Conv2D, site: CallSite) -> tuple[list[str], str]:
        g, i = site.g, site.i
        s = self.resolve(op, site.dsp)
        t_in, t_out = g.tensors[op.inputs[0]], g.tensors[op.output]
        if s["kernel"] == "packed":
            data = weights.c_packed(i, weights.pack(op.weight, op.weight_form))
            if packed_groups(op, site.dsp):
                # The SIMD depthwise group kernel reads only its tt_rq records.
                data.append(c_array(f"q{i}", "int32_t", fast_requant(op, t_out.zero_point)))
            else:
                data.extend(c_requant(i, op))
        elif s["kernel"] == "sparse":
            data = [*weights.c_sparse(i, weights.pack(op.weight, op.weight_form)), *c_requant(i, op)]
        elif s["kernel"] == "blocks":
            data = weights.c_packed(i, weights.pack(op.weight, op.weight_form))
            data.append(c_array(f"q{i}", "int32_t", fast_requant(op, t_out.zero_point)))
        elif s["kernel"] in ("mm", "winograd"):
            data = [c_weights(i, self.weight_array(op, site.dsp))]
            # tt_rq records: bias and the single-multiply requantization per channel.
            data.append(c_array(f"q{i}", "int32_t", fast_requant(op, t_out.zero_point)))
        elif s["kernel"] == "simd":
            # The depthwise SIMD kernel: biases and single-multiply requantization in records.
            data = [c_weights(i, self.weight_array(op, site.dsp))]
            data.append(c_array(f"q{i}", "int32_t", fast_requant(op, t_out.zero_point)))
        else:
            data = [c_weights(i, self.weight_array(op, site.dsp)), *c_requant(i, op)]
        (h, w, c), (oh, ow, oc) = t_in.shape, t_out.shape
        fields = dict(
            in_h=h,
            in_w=w,
            in_c=c,
            out_h=oh,
            out_w=ow,
            out_c=oc,
            k_h=op.weight.shape[1],
            k_w=op.weight.shape[2],
            stride_h=op.stride[0],
            stride_w=op.stride[1],
            pad_h=op.padding[0],
            pad_w=op.padding[1],
            groups=op.groups,
            in_zp=t_in.zero_point,
            out_zp=t_out.zero_point,
            act_min=op.act_min,
            act_max=op.act_max,
        )
        if site.fused_add is not None:
            data.append(self._residual(g, op, site.fused_add, s["kernel"] in ("mm", "winograd", "blocks")))
            fields["res"] = f"&r{site.fused_add}"
        builders = pair_builders(op, s, w, ow)
        if builders is not None:
            fields["pairs"] = f"&{builders}"
        data.append(c_struct("tt_conv_params", f"p{i}", fields))
        return data, self._call(op, s, site)

    @staticmethod
    def _residual(g: Graph, conv: Conv2D, a: int, mm: bool) -> str:
        """Tables and parameters of the add (op ``a``) fused into ``conv``."""
        add = g.ops[a]
        data, refs, lines = [], [], []
        for side, (table, affine) in zip(("c", "o"), _residual_sides(g, conv, a), strict=True):
            if table is None:
                mul, off = affine
                refs.append("0")
                lines += [f".{side}_mul = {mul}", f".{side}_add = {off}"]
            else:
                data.append(c_array(f"t{side}{a}", "int32_t", table))
                refs.append(f"t{side}{a}")
        rq = add_fast_requant(add, g) if mm else None
        if rq is not None:
            data.append(c_array(f"qa{a}", "int32_t", rq))
        rq_ref = "0" if rq is None else f"(const tt_rq *)(const void *)qa{a}"
        fields = ", ".join(
            [f".add = &p{a}", f".t_conv = {refs[0]}", f".t_other = {refs[1]}", f".rq = {rq_ref}", *lines]
        )
        return "".join(data) + add_params(g, add, a) + f"static const tt_residual r{a} = {{{fields}}};\n"

    @staticmethod
    def _call(op: Conv2D, s: dict, site: CallSite) -> str:
        i, x, out, scratch = site.i, site.args[0], site.out, site.scratch
        consts = f"w{i}, b{i}, m{i}, s{i}"
        if s["kernel"] == "packed":
            if packed_groups(op, site.dsp):
                return (
                    f"tt_depthwise_s8_packed_groups(&p{i}, {x}, &pw{i}, {out}, "
                    f"(int8_t *)(void *){scratch}, (const tt_rq *)(const void *)q{i})"
                )
            call = f"(&p{i}, {x}, &pw{i}, b{i}, m{i}, s{i}, {out}, (int8_t *)(void *){scratch})"
            return f"tt_conv2d_s8_packed{call}" if not op.depthwise else f"tt_depthwise_s8_packed{call}"
        if s["kernel"] == "blocks":
            return (
                f"tt_conv2d_s8_qxb(&p{i}, {x}, &pw{i}, (const tt_rq *)(const void *)q{i}, {out}, "
                f"(int16_t *)(void *){scratch}, {int(s['pack'] == 'flat')}, {s['unroll']}, {s['block']})"
            )
        if s["kernel"] == "sparse":
            return f"tt_conv2d_s8_sparse(&p{i}, {x}, &sw{i}, b{i}, m{i}, s{i}, {out}, (int16_t *)(void *){scratch})"
        if s["kernel"] == "winograd":
            return (
                f"tt_conv2d_s8_wino(&p{i}, {x}, w{i}, (const tt_rq *)(const void *)q{i}, "
                f"{out}, (int16_t *)(void *){scratch})"
            )
        if s["kernel"] == "mm" and s["weights"] in _QUADS_LAYOUTS:
            entry = _quads_entry(op, site, {"quads4": 4, "quads2": 2}.get(s["weights"], 8))
            return (
                f"{entry}(&p{i}, {x}, w{i}, (const tt_rq *)(const void *)q{i}, "
                f"{out}, (int16_t *)(void *){scratch}, {int(s['pack'] == 'flat')}, {s['unroll']})"
            )
        if s["kernel"] == "mm" and s["weights"] == "pairs":
            return (
                f"tt_conv2d_s8_mx(&p{i}, {x}, w{i}, (const tt_rq *)(const void *)q{i}, "
                f"{out}, (int16_t *)(void *){scratch}, {int(s['pack'] == 'flat')}, {s['unroll']})"
            )
        if s["kernel"] == "mm":
            return (
                f"tt_conv2d_s8_mm(&p{i}, {x}, w{i}, (const tt_rq *)(const void *)q{i}, "
                f"{out}, (int16_t *)(void *){scratch}, {int(s['pack'] == 'flat')}, "
                f"{s['unroll']}, {int(s['weights'] == 'int16')})"
            )
        if s["kernel"] == "im2col":
            return (
                f"tt_conv2d_s8_dsp(&p{i}, {x}, {consts}, {out}, "
                f"(int16_t *)(void *){scratch}, {s['cols']}, {int(s['pack'] == 'flat')})"
            )
        if s["kernel"] == "simd":
            return f"tt_depthwise_s8_dsp(&p{i}, {x}, w{i}, {out}, (const tt_rq *)(const void *)q{i})"
        kernel = "tt_depthwise_s8" if op.depthwise else "tt_conv2d_s8"
        return f"{kernel}(&p{i}, {x}, {consts}, {out})"

    def fuses_following_add(self, op: Conv2D) -> bool:
        """A non-depthwise convolution can run a residual add inside its output loop."""
        return not op.depthwise
