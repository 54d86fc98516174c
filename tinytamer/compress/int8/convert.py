"""Conversion: freeze a calibrated (or QAT-trained) model's quantization parameters.

The converted GraphModule is what ``tinytamer.qgraph.QuantizedGraph`` records and what
export, the targets and the micro path read; :func:`quant_params` summarises its
quantization points as JSON.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import fx, nn

from tinytamer.compress.int8.modules import FakeQuantAct, fake_quant_acts
from tinytamer.compress.int8.prepare import node_module
from tinytamer.errors import ModelError
from tinytamer.qgraph import QuantWeight


def convert(gm: fx.GraphModule) -> fx.GraphModule:
    """Freeze all quantization parameters; returns an eval-mode copy ready for export."""
    out = copy.deepcopy(gm)
    for name, fq in fake_quant_acts(out):
        if not fq.initialized:
            raise ModelError(
                f"convert: activation quantizer '{name}' has no range: calibrate (PTQ) or train (QAT) before converting"
            )
        if fq.mode == "observe":
            fq.compute_qparams("minmax")
        fq.mode = "quant"
    for m in out.modules():
        if isinstance(m, QuantWeight):
            m.refresh_scale()
    return out.eval()


def quant_params(gm: fx.GraphModule) -> dict[str, dict[str, Any]]:
    """JSON-able summary of every quantization point, keyed by graph node name, in graph order.

    Activations: ``{"kind": "act", "module", "input", "scale", "zero_point", "bits", "qmin",
    "qmax"}`` (``input`` is the node whose output it quantizes).  Layers: ``{"kind": "conv" |
    "linear", "module", "w_bits", "w_per_channel", "w_scale": [...], "has_bias"}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        mod = node_module(gm, node)
        if isinstance(mod, FakeQuantAct):
            src = node.args[0]
            out[node.name] = {
                "kind": "act",
                "module": node.target,
                "input": src.name if isinstance(src, fx.Node) else None,
                "scale": float(mod.scale),
                "zero_point": int(mod.zero_point),
                "bits": mod.bits,
                "qmin": mod.qmin,
                "qmax": mod.qmax,
            }
        elif isinstance(mod, QuantWeight):
            out[node.name] = {
                "kind": "conv" if isinstance(mod, nn.Conv2d) else "linear",
                "module": node.target,
                "w_bits": mod.w_bits,
                "w_per_channel": mod.w_per_channel,
                "w_scale": [float(s) for s in mod.w_scale],
                "has_bias": mod.bias is not None,
            }
    return out
