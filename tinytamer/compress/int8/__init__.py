"""Integer (int8 and mixed 2-8 bit) quantization: post-training and quantization-aware training.

Implements the affine quantization scheme of Jacob et al. 2018, "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference": ``r = S (q - Z)`` (their eq. 1), activations asymmetric per tensor,
batch-norm folded into the preceding conv (their Sec. 3.2, done once here on
the eval statistics, also before QAT), and quantization-aware training with
simulated ("fake") quantization in the forward pass (their Sec. 3.1).  Weights
are symmetric per output channel with zero point 0 and the narrow range
[-(2^(b-1)-1), 2^(b-1)-1], as recommended by Krishnamoorthi 2018, "Quantizing
deep convolutional networks for efficient inference: A whitepaper" (per-channel
weight quantization), which also gives the straight-through estimator used for
training: gradient 1 inside the clamp range, 0 outside.

Activation ranges come from calibration batches by min/max, by a percentile of
the values (both as in Wu et al. 2020, "Integer Quantization for Deep Learning
Inference: Principles and Empirical Evaluation", Sec. 4.1), or by the clipping
threshold that minimises the mean squared quantization error on the observed
values (searched over 100 thresholds; Banner et al. 2019, "Post training 4-bit
quantization of convolutional networks for rapid-deployment", minimise the
same error analytically).

One entry, :func:`quantize` (typed like ``nncf.quantize(model, dataset,
ignored_scope=...)``), over four parts, each in its own module:

- ``modules``: the fake-quantization modules (QuantConv2d / QuantLinear, FakeQuantAct);
- ``ranges`` and ``calibration``: the observers' arithmetic and :func:`calibrate`;
- ``prepare``: graph capture, BN folding, placing the quantization points;
- ``convert``: freezing the parameters (:func:`convert`, :func:`quant_params`).

The result is a ``torch.fx.GraphModule`` in float32 whose every quantization
point is explicit, so an integer runtime can read its parameters directly:

- every quantized conv / linear is a :class:`QuantConv2d` / :class:`QuantLinear`
  (a :class:`tinytamer.qgraph.QuantWeight`) with buffer ``w_scale`` (per output
  channel) and ``w_bits``; its weight is ``clamp(round(w / s), -(2^(b-1)-1),
  2^(b-1)-1) * s`` (narrow range);
- every activation quantization point is a :class:`FakeQuantAct` module (a
  :class:`tinytamer.qgraph.ActQuant`) with ``scale``, ``zero_point``, ``bits``,
  ``qmin``, ``qmax``; one follows the graph input, every conv / linear (after its
  ReLU / ReLU6 when one directly follows), every residual add (likewise), every average pool and every other
  op that makes new values; none follows the ops that keep their input's values
  (max-pool, flatten, reshape, view, contiguous, dropout, identity).

Per-layer bit widths come from the layer selector's overrides: ``{"bits": n}``
sets a layer's weight bits and ``{"act_bits": n}`` the bits of the activation
that the layer produces (the FakeQuantAct that follows it); ``{"per_channel": false}``
gives the layer one weight scale (:func:`one_scale_overrides` asks it for every layer whose
weights are shared: a k-means codebook then maps to one set of integers).  The activation
after a non-layer op (add, pool, ...) takes overrides keyed by its graph node
name (e.g. ``add_1``).

``tinytamer.qgraph.QuantizedGraph(convert(gm))`` holds a converted graph in the form
checkpoints and ``.tt`` files save: plain data over a closed table of operations
(the run directory's checkpoints cannot hold a GraphModule);
``tinytamer.qgraph.as_graph_module`` gives the GraphModule back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import fx, nn

from tinytamer.calib import Calibration, as_calibration
from tinytamer.compress.int8.calibration import calibrate
from tinytamer.compress.int8.convert import convert, quant_params
from tinytamer.compress.int8.modules import (
    MAX_BITS,
    MIN_BITS,
    FakeQuantAct,
    QuantConv2d,
    QuantLinear,
    fake_quant_acts,
)
from tinytamer.compress.int8.prepare import fuse_bn, prepare, prepare_qat
from tinytamer.compress.int8.ranges import CALIB_METHODS, CalibMethod, act_qparams
from tinytamer.compress.selector import Selector
from tinytamer.detect.decode import keep_head
from tinytamer.qgraph import fake_quant

__all__ = [
    "CALIB_METHODS",
    "MAX_BITS",
    "MIN_BITS",
    "CalibMethod",
    "FakeQuantAct",
    "Method",
    "QuantConv2d",
    "QuantLinear",
    "act_qparams",
    "calibrate",
    "convert",
    "fake_quant",
    "fake_quant_acts",
    "fuse_bn",
    "prepare",
    "prepare_qat",
    "one_scale_layers",
    "one_scale_overrides",
    "quant_params",
    "quantize",
    "quantize_ptq",
]

Method = Literal["ptq", "qat"]


def quantize(
    model: nn.Module,
    calib: Calibration | Iterable[Any],
    *,
    select: Selector | dict | None = None,
    method: Method = "ptq",
    calibration: CalibMethod = "minmax",
    percentile: float = 99.99,
    weight_bits: int = 8,
    act_bits: int = 8,
    train: Callable[[fx.GraphModule], Any] | None = None,
) -> fx.GraphModule:
    """Quantize ``model`` (int8, or 2-8 bits per layer); returns the converted GraphModule.

    ``calib``: the calibration data (a :class:`tinytamer.calib.Calibration`, or tensors
    or ``(x, y)`` batches); its first batch is also the example input the graph is
    traced with.  ``select``: the layers to quantize (default: every Conv2d / Linear)
    and per-layer ``{"bits": n, "act_bits": n}`` overrides.  ``method``: ``"ptq"``
    calibrates the activation ranges; ``"qat"`` calibrates them, then trains with
    straight-through fake quantization while the ranges follow a moving min / max.
    ``calibration``: how ranges are chosen (``"minmax"``, ``"percentile"`` at
    ``percentile``, ``"mse"``).  ``train(gm)`` trains the prepared model in place
    between calibration and conversion (QAT's training; with ``"ptq"``, fine-tuning
    with the ranges frozen); the input model is left untouched.
    """
    calib = as_calibration(calib, what="int8 calibration")
    example = next(calib.batches(1))[:1]
    kw: dict[str, Any] = {"select": select, "weight_bits": weight_bits, "act_bits": act_bits}
    gm = prepare_qat(model, example, **kw) if method == "qat" else prepare(model, example, **kw)
    # A detector's anchors are read by decoding, not by forward, so tracing drops them:
    # carried over for QAT's loss and for scoring the result.
    keep_head(model, gm)
    calibrate(gm, calib, calibration, percentile)
    if train is not None:
        train(gm)
    return keep_head(model, convert(gm))


def quantize_ptq(
    model: nn.Module,
    calib_batches: Calibration | Iterable[Any],
    *,
    method: CalibMethod = "minmax",
    percentile: float = 99.99,
    select: Selector | dict | None = None,
    weight_bits: int = 8,
    act_bits: int = 8,
    num_batches: int | None = None,
) -> fx.GraphModule:
    """Post-training quantization: :func:`quantize` with ``method="ptq"``, where ``method``
    names the calibration method and ``num_batches`` keeps the first batches."""
    return quantize(
        model,
        as_calibration(calib_batches, num_batches, what="int8 calibration"),
        select=select,
        calibration=method,
        percentile=percentile,
        weight_bits=weight_bits,
        act_bits=act_bits,
    )


# A layer whose weights take at most this many distinct values, each value on average in at
# least two channels (its channels draw from one common set, as k-means sharing or
# ternarization leave them; a shared conv with a BatchNorm folded in has a set per channel),
# is a shared one.
SHARED_VALUES = 256


def one_scale_layers(model: nn.Module) -> list[str]:
    """The conv / linear layers whose weights, after BN folding, are shared
    (:data:`SHARED_VALUES`): those to quantize with one weight scale.

    Per-channel scales map one shared value to a different integer in each class of channel
    scales (a channel's scale follows its largest value), so a layer with one codebook
    in float would need several in integers; with one scale for the layer it keeps one.
    The grid is fine beside the codebook's spacing (127 steps to the largest value)."""
    out = []
    for name, m in fuse_bn(model).named_modules():
        w = getattr(m, "weight", None)
        if not (isinstance(m, nn.Conv2d | nn.Linear) and isinstance(w, torch.Tensor)):
            continue
        rows = w.detach().flatten(1)
        values = torch.unique(rows).numel()
        if values <= SHARED_VALUES and 2 * values <= sum(torch.unique(r).numel() for r in rows):
            out.append(name)
    return out


def one_scale_overrides(model: nn.Module) -> dict[str, dict[str, bool]]:
    """Selector overrides ``{"per_channel": False}`` for :func:`one_scale_layers`."""
    return {f"^{re.escape(name)}$": {"per_channel": False} for name in one_scale_layers(model)}
