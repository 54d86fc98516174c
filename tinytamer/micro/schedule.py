"""Kernel schedules: which kernel variant runs an op, with which knobs.

An op's ``schedule`` dict picks a kernel from runtime/ (an empty dict means the
default for the build: the DSP variant where the device has one, else the
portable kernel).  The knobs, and the values :mod:`tinytamer.micro.tuning`
searches over:

- conv (groups 1): ``kernel`` "direct" (tt_conv2d_s8, portable loops, no scratch) or
  "im2col" (tt_conv2d_s8_dsp: im2col to int16 + SMLAD, 2 output channels at a
  time), ``cols`` 1 or 2 (output pixels per im2col batch), ``pack`` "channel"
  (input channels rounded up to 4 at every kernel position; vector unpacking) or
  "flat" (the whole receptive field rounded up to 4 once; scalar unpacking - less
  padding for 1- or 3-channel inputs);
- depthwise: ``kernel`` "direct" or "simd" (tt_depthwise_s8_dsp: 4 channels per
  SXTB16/SMLABB step; needs a multiple of 4 channels);
- dense: ``kernel`` "direct" or "simd" (tt_dense_s8_dsp: input unpacked once, 2 rows
  per SMLAD pass);
- residual add: ``kernel`` "lut" (each input's rescaling read from a 256-entry table in
  flash) or "direct" (computed per element).

The DSP variants read weights padded to a multiple of 4 input channels
(:func:`weight_array`); their scratch memory comes from the arena.
"""

from __future__ import annotations

import numpy as np

from tinytamer.micro.ir import Add, AvgPool, Conv2D, Dense, Graph, MaxPool, Op


def _round4(n: int) -> int:
    return (n + 3) // 4 * 4


def space(op: Op, dsp: bool) -> dict[str, list]:
    """The knob values legal for ``op`` on a build with (``dsp``) or without DSP kernels."""
    if isinstance(op, Conv2D) and op.depthwise:
        simd = dsp and op.weight.shape[0] % 4 == 0
        return {"kernel": ["simd", "direct"] if simd else ["direct"]}
    if isinstance(op, Conv2D):
        if dsp and op.groups == 1:
            flat_first = op.weight.shape[3] % 4 != 0
            return {"kernel": ["im2col", "direct"], "cols": [2, 1],
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
    return chosen


def weight_array(op: Conv2D | Dense, dsp: bool) -> np.ndarray:
    """The weights in the layout the chosen kernel reads."""
    s = resolve(op, dsp)
    if isinstance(op, Conv2D) and s["kernel"] == "im2col":
        # int8 packed in little-endian words, channel pairs interleaved word by word.
        oc, kh, kw, ic = op.weight.shape
        if s["pack"] == "flat":
            flat = op.weight.reshape(oc, -1)
            padded = np.pad(flat, ((0, 0), (0, _round4(flat.shape[1]) - flat.shape[1])))
        else:
            padded = np.pad(op.weight, ((0, 0), (0, 0), (0, 0), (0, _round4(ic) - ic)))
        words = np.ascontiguousarray(padded).reshape(oc, -1).view("<i4")
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
    if isinstance(op, Conv2D) and s.get("kernel") == "im2col":
        _, kh, kw, ic = op.weight.shape
        k = _round4(kh * kw * ic) if s["pack"] == "flat" else kh * kw * _round4(ic)
        return 2 * s["cols"] * k
    if isinstance(op, Dense) and s.get("kernel") == "simd":
        return 2 * _round4(op.weight.shape[1])
    return 0


def kernel_call(op: Op, i: int, args: list[str], out: str, scratch: str, dsp: bool) -> str:
    """The C call statement running op ``i`` with its generated constants p/w/b/m/s<i>."""
    s = resolve(op, dsp)
    consts = f"w{i}, b{i}, m{i}, s{i}"
    if isinstance(op, Conv2D):
        if s["kernel"] == "im2col":
            return (f"tt_conv2d_s8_dsp(&p{i}, {args[0]}, {consts}, {out}, "
                    f"(int16_t *)(void *){scratch}, {s['cols']}, {int(s['pack'] == 'flat')})")
        if s["kernel"] == "simd":
            return f"tt_depthwise_s8_dsp(&p{i}, {args[0]}, {consts}, {out})"
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
    if isinstance(op, Add):
        if s["kernel"] == "lut":
            return f"tt_add_s8_lut(&p{i}, {args[0]}, {args[1]}, {out}, ta{i}, tb{i})"
        return f"tt_add_s8(&p{i}, {args[0]}, {args[1]}, {out})"
    raise AssertionError(f"no kernel for {type(op).__name__}")
