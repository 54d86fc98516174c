"""Kernel schedules: which kernel variant runs an op, with which knobs.

An op's ``schedule`` dict picks a kernel from runtime/ (an empty dict means the
default for the build: the DSP variant where the device has one, else the
portable kernel).  The knobs, and the values :mod:`tinytamer.micro.tuning`
searches over:

- conv (groups 1): ``kernel`` "mm" (tt_conv2d_s8_mm: im2col to int16, then a 2 x 2
  output-channel x pixel micro-kernel in hand-scheduled SMLAD assembly, with
  single-multiply requantization; offered where :func:`fast_requant` proves it exact),
  "im2col" (tt_conv2d_s8_dsp: the same im2col with compiler-scheduled C and the
  general requantization) or "direct" (tt_conv2d_s8, portable loops, no scratch);
  ``unroll`` 2 or 4 (mm: groups of 4 inputs per inner-loop pass), ``weights`` "int8"
  (mm: int8 in flash, unpacked by SXTB16 in the loop) or "int16" (pre-expanded to the
  int16 pairs SMLAD reads: twice the flash, no unpacking), ``cols`` 1 or 2
  (im2col: output pixels per im2col batch), ``pack`` "channel" (input channels
  rounded up to 4 at every kernel position; vector unpacking) or "flat" (the whole
  receptive field rounded up to 4 once; scalar unpacking - less padding for 1- or
  3-channel inputs);
- depthwise: ``kernel`` "direct" or "simd" (tt_depthwise_s8_dsp: 4 channels per
  SXTB16/SMLABB step; needs a multiple of 4 channels; single-multiply requantization
  where :func:`fast_requant` allows);
- dense: ``kernel`` "direct" or "simd" (tt_dense_s8_dsp: input unpacked once, 2 rows
  per SMLAD pass);
- residual add: ``kernel`` "lut" (each input's rescaling read from a 256-entry table in
  flash) or "direct" (computed per element).

The DSP variants read weights padded to a multiple of 4 input channels
(:func:`weight_array`); their scratch memory comes from the arena.
"""

from __future__ import annotations

import numpy as np

from tinytamer.micro.ir import Add, AvgPool, Conv2D, Dense, Graph, MaxPool, Op, Softmax


def _round4(n: int) -> int:
    return (n + 3) // 4 * 4


# Knobs that a conv kernel reads; the others do not change what runs.
_CONV_KNOBS = {"mm": ("kernel", "unroll", "weights", "pack"), "im2col": ("kernel", "cols", "pack"),
               "direct": ("kernel",)}
# The "mm" requantization needs e = -shift in [1, RQ_MAX_RSHIFT] (so offset fits in int32).
RQ_MAX_RSHIFT = 22


def fast_requant(op: Conv2D | Dense, out_zp: int = 0) -> np.ndarray | None:
    """Per output channel (bias, mult, rshift, offset) for tt_rq_apply, or None when that
    form is not provably equal to the reference's requantization.

    tt_rq_apply computes SRDHM(acc, m) as SMMULR(2 acc, m), exact while 2 acc fits in int32:
    checked through the worst case |bias| + 255 * sum|w| of each channel (|x - zp| <= 255).
    RoundingDivideByPOT by e becomes (t + 2^(e-1) - [t < 0]) >> e, which needs e >= 1 (a real
    multiplier below 0.5, as in every convolution we have met); a left shift is not handled.
    """
    w = op.weight.reshape(op.weight.shape[0], -1).astype(np.int64)
    bound = np.abs(op.bias.astype(np.int64)) + 255 * np.abs(w).sum(axis=1)
    if np.any(bound >= 1 << 30):
        return None
    mult = op.multiplier.astype(np.int64)
    e = np.where(mult == 0, 1, -op.shift.astype(np.int64))
    if np.any((e < 1) | (e > RQ_MAX_RSHIFT)):
        return None
    offset = (np.int64(1) << (e - 1)) + (np.int64(out_zp) << e)
    return np.stack([op.bias.astype(np.int64), mult, e, offset], axis=1).astype(np.int32)


def add_fast_requant(op: Add, g: Graph) -> np.ndarray | None:
    """The (0, mult, rshift, offset) record of :func:`fast_requant` for a residual add's
    final requantization (the sum of its two table values), or None where it is not exact."""
    ta, tb = add_tables(op, g)
    if int(np.abs(ta.astype(np.int64)).max()) + int(np.abs(tb.astype(np.int64)).max()) >= 1 << 30:
        return None
    e = 1 if op.out_multiplier == 0 else -op.out_shift
    if not 1 <= e <= RQ_MAX_RSHIFT:
        return None
    offset = (1 << (e - 1)) + (g.tensors[op.output].zero_point << e)
    return np.array([0, op.out_multiplier, e, offset], dtype=np.int32)


def space(op: Op, dsp: bool) -> dict[str, list]:
    """The knob values legal for ``op`` on a build with (``dsp``) or without DSP kernels."""
    if isinstance(op, Conv2D) and op.depthwise:
        simd = dsp and op.weight.shape[0] % 4 == 0
        return {"kernel": ["simd", "direct"] if simd else ["direct"]}
    if isinstance(op, Conv2D):
        if dsp and op.groups == 1:
            flat_first = op.weight.shape[3] % 4 != 0
            kernels = ["mm", "im2col", "direct"] if fast_requant(op) is not None \
                else ["im2col", "direct"]
            return {"kernel": kernels, "unroll": [2, 4], "weights": ["int8", "int16"],
                    "cols": [2, 1],
                    "pack": ["flat", "channel"] if flat_first else ["channel", "flat"]}
        return {"kernel": ["direct"]}
    if isinstance(op, Dense):
        return {"kernel": ["simd", "direct"] if dsp else ["direct"]}
    if isinstance(op, Add):
        return {"kernel": ["lut", "direct"]}
    return {}


def resolve(op: Op, dsp: bool) -> dict:
    """The op's schedule with defaults filled in (the first value of every knob)."""
    knobs = space(op, dsp)
    chosen = {k: v[0] for k, v in knobs.items()}
    for k, v in getattr(op, "schedule", {}).items():
        if k in knobs and v in knobs[k]:
            chosen[k] = v
    if isinstance(op, Conv2D) and not op.depthwise and op.groups == 1:
        chosen = {k: v for k, v in chosen.items() if k in _CONV_KNOBS[chosen["kernel"]]}
    return chosen


def weight_array(op: Conv2D | Dense, dsp: bool) -> np.ndarray:
    """The weights in the layout the chosen kernel reads."""
    s = resolve(op, dsp)
    if isinstance(op, Conv2D) and s["kernel"] in ("im2col", "mm"):
        # int8 packed in little-endian words, channel pairs interleaved word by word.
        oc, kh, kw, ic = op.weight.shape
        if s["pack"] == "flat":
            flat = op.weight.reshape(oc, -1)
            padded = np.pad(flat, ((0, 0), (0, _round4(flat.shape[1]) - flat.shape[1])))
        else:
            padded = np.pad(op.weight, ((0, 0), (0, 0), (0, 0), (0, _round4(ic) - ic)))
        groups = np.ascontiguousarray(padded).reshape(oc, -1, 4)
        # The column lanes per group of 4 inputs: [v0|v2][v1|v3] (SXTAB16 unpacking) or, for
        # the mm kernel's flat packing, [v0|v1][v2|v3] (natural int16 order).
        natural = s["kernel"] == "mm" and s["pack"] == "flat"
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
    if isinstance(op, Conv2D) and s["kernel"] == "simd":
        return np.ascontiguousarray(op.weight[..., 0].transpose(1, 2, 0))  # [KH][KW][C]
    if isinstance(op, Dense) and s["kernel"] == "simd":
        n = op.weight.shape[1]
        return np.pad(op.weight, ((0, 0), (0, _round4(n) - n)))
    return op.weight


def add_tables(op: Add, g: Graph) -> tuple[np.ndarray, np.ndarray]:
    """For the "lut" add: each input's rescaled value for all 256 int8 codes (computed by
    the reference's own fixed-point functions, so the kernel stays bit-exact)."""
    from tinytamer.micro.fixedpoint import requantize

    codes = np.arange(-128, 128, dtype=np.int64)
    za, zb = (g.tensors[t].zero_point for t in op.inputs)
    ta = requantize((codes - za) << op.left_shift, op.in1_multiplier, op.in1_shift)
    tb = requantize((codes - zb) << op.left_shift, op.in2_multiplier, op.in2_shift)
    return ta.astype(np.int32), tb.astype(np.int32)


def scratch_bytes(g: Graph, op: Op, dsp: bool) -> int:
    """Arena bytes the op's kernel variant needs for the duration of the op."""
    s = resolve(op, dsp)
    if isinstance(op, Conv2D) and s.get("kernel") in ("im2col", "mm"):
        _, kh, kw, ic = op.weight.shape
        k = _round4(kh * kw * ic) if s["pack"] == "flat" else kh * kw * _round4(ic)
        # int16 columns for 1 or 2 pixels; mm's flat packing also gathers one field in order.
        natural = s["kernel"] == "mm" and s["pack"] == "flat"
        return 2 * s.get("cols", 2) * k + (2 * k if natural else 0)
    if isinstance(op, Dense) and s.get("kernel") == "simd":
        return 2 * _round4(op.weight.shape[1])
    return 0


def kernel_call(op: Op, i: int, args: list[str], out: str, scratch: str, dsp: bool) -> str:
    """The C call statement running op ``i`` with its generated constants p/w/b/m/s<i>."""
    s = resolve(op, dsp)
    consts = f"w{i}, b{i}, m{i}, s{i}"
    if isinstance(op, Conv2D):
        if s["kernel"] == "mm":
            return (f"tt_conv2d_s8_mm(&p{i}, {args[0]}, w{i}, (const tt_rq *)(const void *)q{i}, "
                    f"{out}, (int16_t *)(void *){scratch}, {int(s['pack'] == 'flat')}, "
                    f"{s['unroll']}, {int(s['weights'] == 'int16')})")
        if s["kernel"] == "im2col":
            return (f"tt_conv2d_s8_dsp(&p{i}, {args[0]}, {consts}, {out}, "
                    f"(int16_t *)(void *){scratch}, {s['cols']}, {int(s['pack'] == 'flat')})")
        if s["kernel"] == "simd":
            rq = f"(const tt_rq *)(const void *)q{i}" if fast_requant(op) is not None else "0"
            return f"tt_depthwise_s8_dsp(&p{i}, {args[0]}, {consts}, {out}, {rq})"
        kernel = "tt_depthwise_s8" if op.depthwise else "tt_conv2d_s8"
        return f"{kernel}(&p{i}, {args[0]}, {consts}, {out})"
    if isinstance(op, Dense):
        if s["kernel"] == "simd":
            return (f"tt_dense_s8_dsp(&p{i}, {args[0]}, {consts}, {out}, "
                    f"(int16_t *)(void *){scratch})")
        return f"tt_dense_s8(&p{i}, {args[0]}, {consts}, {out})"
    if isinstance(op, MaxPool):
        return f"tt_maxpool_s8(&p{i}, {args[0]}, {out})"
    if isinstance(op, AvgPool):
        return f"tt_avgpool_s8(&p{i}, {args[0]}, {out})"
    if isinstance(op, Softmax):
        return f"tt_softmax_s8(&p{i}, {args[0]}, {out}, sm{i})"
    if isinstance(op, Add):
        if s["kernel"] == "lut":
            return f"tt_add_s8_lut(&p{i}, {args[0]}, {args[1]}, {out}, ta{i}, tb{i})"
        return f"tt_add_s8(&p{i}, {args[0]}, {args[1]}, {out})"
    raise AssertionError(f"no kernel for {type(op).__name__}")
