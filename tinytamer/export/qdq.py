"""A converted int8 model (a ``tinytamer.qgraph`` quantized graph) -> ONNX in QDQ form, with *our* qparams.

ONNX Runtime runs a QDQ model (QuantizeLinear/DequantizeLinear pairs around float ops)
with integer kernels.  Writing our own scales and zero points into those pairs, instead
of letting ORT calibrate, makes the deployed int8 model the one that was evaluated:

- every activation quantizer (a ``tinytamer.qgraph.ActQuant``) becomes QuantizeLinear ->
  DequantizeLinear with its scale and zero point (int8; a narrower bit width is first
  clamped to its range);
- every quantized conv / linear (a ``tinytamer.qgraph.QuantWeight``) gets its integer
  weights as an int8 initializer behind a per-channel DequantizeLinear (axis 0, zero
  point 0), and its bias as int32 with scale ``in_scale * w_scale[c]`` (the scale of the
  activation quantizer feeding it), as integer runtimes require.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers quantized_decomposed ops
from torch import fx, nn
from torch.nn import functional as F

from tinytamer.errors import ModelError
from tinytamer.export.onnx import ExportError, capture, input_names
from tinytamer.fileio import atomic_path
from tinytamer.qgraph import ActQuant, QuantWeight, as_graph_module

_qd = torch.ops.quantized_decomposed
_I32 = (-(2**31), 2**31 - 1)


class QDQAct(nn.Module):
    """Quantize -> dequantize with frozen per-tensor int8 parameters."""

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.scale, self.zero_point, self.qmin, self.qmax = scale, zero_point, qmin, qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qmin > -128 or self.qmax < 127:
            # QuantizeLinear saturates to the int8 range only: clamp narrower widths first.
            x = x.clamp((self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale)
        # uint8 with the zero point shifted by 128 is the same quantizer; ORT's x86 kernels
        # fuse u8 activations x s8 weights (its own quantizer's choice), not s8 x s8.
        zp = self.zero_point + 128
        q = _qd.quantize_per_tensor(x, self.scale, zp, 0, 255, torch.uint8)
        return _qd.dequantize_per_tensor(q, self.scale, zp, 0, 255, torch.uint8)


class QDQLayer(nn.Module):
    """A conv / linear whose int8 weights and int32 bias are dequantized in the graph."""

    def __init__(self, layer: nn.Module, in_scale: float | None, unsigned: bool = False) -> None:
        super().__init__()
        self.is_conv = isinstance(layer, nn.Conv2d)
        if self.is_conv:
            self.conv_args = (layer.stride, layer.padding, layer.dilation, layer.groups)
        n = len(layer.w_scale)
        w_int = layer.int_weight()
        qmax = 2 ** (layer.w_bits - 1) - 1
        self.register_buffer("w_scale", layer.w_scale.detach().float().clone())
        self.register_buffer("b_zp", torch.zeros(n, dtype=torch.int32))
        if unsigned:
            # The same integers shifted by 128 (zero point 128): ORT then runs u8 x u8
            # kernels, which do not saturate 16-bit sums on CPUs without VNNI.
            self.register_buffer("w_int", (w_int.to(torch.int32) + 128).to(torch.uint8))
            self.register_buffer("w_zp", torch.full((n,), 128, dtype=torch.int32))
            self.w_range = (128 - qmax, 128 + qmax, torch.uint8)
        else:
            self.register_buffer("w_int", w_int)
            self.register_buffer("w_zp", torch.zeros(n, dtype=torch.int32))
            self.w_range = (-qmax, qmax, torch.int8)
        self.has_int_bias = False
        if layer.bias is not None and in_scale is not None:
            b_scale = (in_scale * self.w_scale).clamp_min(1e-30)
            b_int = torch.round(layer.bias.detach() / b_scale).clamp(*_I32).to(torch.int32)
            self.register_buffer("b_int", b_int)
            self.register_buffer("b_scale", b_scale)
            self.has_int_bias = True
        elif layer.bias is not None:
            self.register_buffer("b_float", layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _qd.dequantize_per_channel(self.w_int, self.w_scale, self.w_zp, 0, *self.w_range)
        if self.has_int_bias:
            b = _qd.dequantize_per_channel(self.b_int, self.b_scale, self.b_zp, 0, *_I32, torch.int32)
        else:
            b = getattr(self, "b_float", None)
        if self.is_conv:
            return F.conv2d(x, w, b, *self.conv_args)
        return F.linear(x, w, b)


def _input_scale(gm: fx.GraphModule, node: fx.Node) -> float | None:
    """Scale of the activation quantizer feeding ``node`` (through scale-keeping ops)."""
    cur = node.args[0] if node.args else None
    for _ in range(16):
        if not isinstance(cur, fx.Node):
            return None
        mod = gm.get_submodule(cur.target) if cur.op == "call_module" else None
        if isinstance(mod, (ActQuant, QDQAct)):  # QDQAct: already replaced
            return float(mod.scale)
        if cur.op == "placeholder" or not cur.args:
            return None
        cur = cur.args[0]
    return None


def qdq_module(model: nn.Module, unsigned_weights: bool = False) -> fx.GraphModule:
    """A copy of the converted model (GraphModule or QuantizedGraph) with explicit Q/DQ ops."""
    out = copy.deepcopy(as_graph_module(model)).eval()
    acts = layers = 0
    for node in out.graph.nodes:
        if node.op != "call_module":
            continue
        mod = out.get_submodule(node.target)
        if isinstance(mod, ActQuant):
            if mod.mode != "quant":
                raise ModelError(
                    f"quantizer '{node.target}' is not converted: call tinytamer.compress.int8.convert first"
                )
            out.set_submodule(node.target, QDQAct(float(mod.scale), int(mod.zero_point), mod.qmin, mod.qmax))
            acts += 1
        elif isinstance(mod, QuantWeight):
            out.set_submodule(node.target, QDQLayer(mod, _input_scale(out, node), unsigned_weights))
            layers += 1
    if acts == 0:
        raise ModelError(
            "qparams model has no activation quantizers: pass a model converted "
            "by tinytamer.compress.int8 (quantize_ptq / convert)"
        )
    out.recompile()
    return out


def export_qdq(
    gm: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | Path,
    *,
    unsigned_weights: bool = False,
    opset: int = 18,
) -> dict[str, Any]:
    """Write the converted int8 model as a QDQ ONNX file (atomically) with our qparams.

    ``unsigned_weights`` stores the weights as uint8 with zero point 128 (same values).
    """
    path = Path(path)
    qdq = qdq_module(gm, unsigned_weights)
    ep, dynamic = capture(qdq, example_inputs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # No graph optimisation here: constant folding would turn the int8 weight
            # initializers behind DequantizeLinear back into float weights.
            program = torch.onnx.export(
                ep,
                dynamo=True,
                external_data=False,
                verbose=False,
                input_names=input_names(len(example_inputs)),
                opset_version=opset,
                optimize=False,
            )
    except Exception as exc:  # noqa: BLE001 - translation failures are described to the user
        raise ExportError(f"int8 model does not translate to ONNX QDQ: {exc}") from exc
    onnx.checker.check_model(program.model_proto)
    with atomic_path(path) as tmp:
        onnx.save_model(program.model_proto, str(tmp))
    kinds = [n.op_type for n in program.model_proto.graph.node]
    return {
        "path": str(path),
        "dynamic_batch": dynamic,
        "opset": opset,
        "weights": "uint8 (zero point 128)" if unsigned_weights else "int8",
        "quantize_linear": kinds.count("QuantizeLinear"),
        "dequantize_linear": kinds.count("DequantizeLinear"),
    }
