"""Kernel schedules: which kernel variant runs an op, with which knobs.

An op's ``schedule`` dict picks a kernel from runtime/ (an empty dict means the
default for the build: the DSP variant where the device has one, else the
portable kernel).  Each op declares its knobs, and the values
:mod:`tinytamer.micro.tuning` searches over, in its module of the op table
(:mod:`tinytamer.micro.ops`: convolution in ops/conv.py, dense in ops/dense.py,
the residual add in ops/add.py); this module is the table's schedule view.

The DSP variants read weights padded to a multiple of 4 input channels
(:func:`weight_array`); their scratch memory comes from the arena.
"""

from __future__ import annotations

import numpy as np

from tinytamer.micro.fixedpoint import RQ_MAX_RSHIFT
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops import op_def
from tinytamer.micro.ops.add import add_fast_requant, add_tables
from tinytamer.micro.ops.conv import fast_requant, packed_groups, requant_plan

__all__ = [
    "RQ_MAX_RSHIFT",
    "add_fast_requant",
    "add_tables",
    "fast_requant",
    "requant_fallback",
    "requant_plan",
    "resolve",
    "scratch_bytes",
    "space",
    "weight_array",
]


def space(op: Op, dsp: bool) -> dict[str, list]:
    """The knob values legal for ``op`` on a build with (``dsp``) or without DSP kernels."""
    return op_def(op).space(op, dsp)


def resolve(op: Op, dsp: bool) -> dict:
    """The op's schedule with defaults filled in (the first value of every knob)."""
    return op_def(op).resolve(op, dsp)


def weight_array(op: Op, dsp: bool) -> np.ndarray:
    """The weights of a conv or dense op in the layout the chosen kernel reads."""
    return op_def(op).weight_array(op, dsp)


def scratch_bytes(g: Graph, op: Op, dsp: bool) -> int:
    """Arena bytes the op's kernel variant needs for the duration of the op."""
    return op_def(op).scratch_bytes(g, op, dsp)


def requant_fallback(g: Graph, dsp: bool) -> dict[str, int]:
    """{layer: channels} of the layers whose fast kernel ("mm", "simd", "blocks", and the
    packed depthwise kernel's SIMD groups) requantizes some channels in the general form (a
    multiplier of 0.5 or more, or too small for the single-multiply form and not constant):
    the per-channel fallback, which costs cycles and is reported, never silent."""
    out = {}
    for op in g.ops:
        if getattr(op, "weight", None) is None:
            continue
        kernel = op_def(op).resolve(op, dsp).get("kernel")
        if kernel not in ("mm", "simd", "blocks") and not (kernel == "packed" and packed_groups(op, dsp)):
            continue
        n = requant_plan(op, g.tensors[op.output].zero_point).general
        if n:
            out[op.name] = n
    return out
