"""Lowering: a converted int8 fx GraphModule (tinytamer.compress.int8) -> integer graph.

The converted model spells out every quantization point (the int8 contract):
QuantConv2d / QuantLinear layers with per-channel integer weights, and a
FakeQuantAct after the input, after every conv / linear / add (after its ReLU
or ReLU6 when one follows) and after every average pool.  Walking the graph in
order, a producer (conv, linear, add, average pool, mean, softmax over a vector)
stays *pending* until its FakeQuantAct gives the output's (scale, zero point); a
ReLU/ReLU6 between them becomes the producer's clamp.  Max pool, flatten/reshape/view, dropout and
identity keep their input's quantization.  Anything else - an op, a layer left
in float, a pattern such as a ReLU that follows nothing it can fuse into -
fails with an error that names the op and the graph node, never a silent wrong
answer.

Feature maps become HWC (see :mod:`tinytamer.micro.ir`); a flatten of a C x H x W
map keeps the HWC buffer and permutes the next linear layer's columns instead.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from tinytamer.errors import ModelError
from tinytamer.micro import weights
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Graph
from tinytamer.micro.ops import OPS, DeviceOp, op_def
from tinytamer.micro.ops.base import Pending, Quant, ir_shape, node_shape
from tinytamer.micro.planner import order_residual_branches
from tinytamer.qgraph import ActQuant, QuantWeight

# The convert map (TVM's create_convert_map): every pattern an op of the table lowers from
# (a module type, a function, or a method name) -> that op.
CONVERT: dict[object, DeviceOp] = {p: d for d in OPS.values() for p in d.lowers_from}
# Lowering plumbing that is no device op: ReLUs fuse into their producer, the rest keeps
# its input's quantization, and scalar queries produce no tensor.
_RELU = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    F.relu: "relu",
    torch.relu: "relu",
    torch.relu_: "relu",
    F.relu6: "relu6",
    "relu": "relu",
    "relu_": "relu",
}
_PASS = {nn.Dropout, nn.Dropout2d, nn.Identity, F.dropout, "contiguous"}
_SCALAR = {getattr, "size", "dim"}
SUPPORTED_OPS = (
    "conv2d (incl. depthwise/grouped), linear, max/avg pool, global average pool, "
    "residual add, ReLU/ReLU6 fused into its producer, flatten/reshape, softmax "
    "over the classes of a vector"
)


def _module_pattern(m: nn.Module, table) -> type | None:
    """The most specific module type of ``m`` that ``table`` has an entry for (a
    QuantConv2d lowers by the nn.Conv2d entry)."""
    return next((t for t in type(m).__mro__ if t in table), None)


class Lowerer:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.b: GraphBuilder | None = None
        self.env: dict[fx.Node, str | Pending | None] = {}
        # 1-D tensors flattened from an H x W x C buffer: their PyTorch (C, H, W) order.
        self.torch_order: dict[str, np.ndarray] = {}

    def layer(self, node: fx.Node) -> tuple[str, str] | None:
        """The layer (name, class) a node comes from: the module it calls, or the module
        whose forward() it was traced in (fx's ``nn_module_stack``)."""
        if node.op == "call_module":
            return str(node.target), type(self.mod(node)).__name__
        stack = node.meta.get("nn_module_stack")
        if not stack:
            return None
        path, cls = list(stack.values())[-1]
        # A class, or its qualified name (as torch.export records it).
        return str(path), cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]

    def fail(self, node: fx.Node, what: str) -> ModelError:
        src = node.meta.get("stack_trace") or ""
        layer = self.layer(node)
        where = f"node '{node.name}'" + (f" of layer '{layer[0]}' ({layer[1]})" if layer else "")
        return ModelError(
            f"micro lowering: {what} at {where}; supported: {SUPPORTED_OPS}" + (f"\n{src}" if src else "")
        )

    def check_layers(self) -> None:
        """Refuse a layer type the device has no rule for before lowering anything, so the
        error names it rather than the plumbing around it (a tuple unpack, a 3-D reshape)."""
        for node in self.gm.graph.nodes:
            if node.op != "call_module":
                continue
            m = self.mod(node)
            known = (
                isinstance(m, ActQuant)
                or _module_pattern(m, CONVERT) is not None
                or _module_pattern(m, _RELU) is not None
                or _module_pattern(m, _PASS) is not None
            )
            if not known:
                raise ModelError(
                    f"micro lowering: layer '{node.target}' ({type(m).__name__}) "
                    "is not supported by the micro path; supported ops: "
                    f"{SUPPORTED_OPS}"
                )

    def quant(self, node: fx.Node, arg, *, flattened_ok: bool = False) -> str:
        """The int8 tensor ``node`` reads as ``arg``; ``flattened_ok`` for the one reader
        (a linear layer) that can take a flattened C x H x W map in HWC order."""
        value = self.env.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(value, str):
            raise self.fail(
                node,
                f"input '{getattr(arg, 'name', arg)}' is not an int8 tensor "
                "(a layer left in float, or a value without a FakeQuantAct)",
            )
        if value in self.torch_order and not flattened_ok:
            raise self.fail(node, "a flattened C x H x W feature map may only feed a linear layer")
        return value

    def mod(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def run(self, example_input: torch.Tensor) -> Graph:
        self.check_layers()
        with torch.no_grad():
            ShapeProp(self.gm).propagate(example_input)
        out_name = None
        for node in self.gm.graph.nodes:
            if node.op == "output":
                arg = node.args[0]
                if isinstance(arg, (tuple, list)):
                    if len(arg) != 1:
                        raise self.fail(node, "a model with several outputs")
                    arg = arg[0]
                value = self.env.get(arg) if isinstance(arg, fx.Node) else None
                if not isinstance(value, str):
                    raise self.fail(node, "a model output that is not an int8 tensor")
                if value in self.torch_order:
                    raise self.fail(node, "a flattened C x H x W map as the model output")
                out_name = value
            else:
                self.env[node] = self.visit(node)
        if self.b is None or not isinstance(out_name, str):
            raise ModelError("micro lowering: the model output is not an int8 tensor")
        # Which fx node computes each integer tensor (for per-op agreement checks).
        fx_nodes: dict[str, str] = {}
        for node, value in self.env.items():
            if isinstance(value, str):
                fx_nodes.setdefault(value, node.name)
        return self.b.graph(out_name, source="torch.fx int8 GraphModule", fx_nodes=fx_nodes)

    # ------------------------------------------------------------------ dispatch
    def visit(self, node: fx.Node):
        if node.op == "placeholder":
            if self.b is not None:
                raise self.fail(node, "a second model input")
            return Pending(None, node, [])
        if node.op == "get_attr":
            raise self.fail(node, f"a constant tensor '{node.target}' used in the graph")
        if node.op == "call_module":
            m = self.mod(node)
            if isinstance(m, ActQuant):
                return self.finish(node, m)
            return self.convert(
                node,
                _module_pattern(m, CONVERT) or _module_pattern(m, _RELU) or _module_pattern(m, _PASS),
                f"a {type(m).__name__}",
            )
        if node.op == "call_function":
            f = node.target
            if f is F.hardtanh and tuple(node.args[1:3]) == (0.0, 6.0):
                return self.fuse_relu(node, "relu6")
            return self.convert(node, f, f"function '{getattr(f, '__name__', f)}'")
        if node.op == "call_method":
            return self.convert(node, node.target, f"method '.{node.target}()'")
        raise self.fail(node, f"graph op '{node.op}'")

    def convert(self, node: fx.Node, pattern, what: str):
        """Lower ``node`` by the table entry for ``pattern`` (or the plumbing's)."""
        if pattern in CONVERT:
            return CONVERT[pattern].lower(self, node, pattern)
        if pattern in _RELU:
            return self.fuse_relu(node, _RELU[pattern])
        if pattern in _PASS:
            return self.quant(node, node.args[0])
        if pattern in _SCALAR:
            return None
        raise self.fail(node, what)

    def fuse_relu(self, node: fx.Node, kind: str) -> Pending:
        src = self.env.get(node.args[0])
        if (
            not isinstance(src, Pending)
            or src.op is None
            or not src.op.fuses_relu
            or src.relu is not None
            or len(node.args[0].users) != 1
        ):
            raise self.fail(
                node, f"a {kind.upper()} that does not directly follow a conv, linear or add it can fuse into"
            )
        src.relu = kind
        return src

    def finish(self, node: fx.Node, fq: nn.Module) -> str:
        """A FakeQuantAct: the pending op before it becomes an integer op."""
        src = self.env.get(node.args[0])
        q = Quant(float(fq.scale), int(fq.zero_point), (int(fq.qmin), int(fq.qmax)))
        if q.qrange[0] < -128 or q.qrange[1] > 127:
            raise self.fail(node, f"an activation with {fq.bits} bits (at most 8)")
        if not isinstance(src, Pending):
            raise self.fail(node, "a FakeQuantAct after an op the device cannot run")
        if src.op is not None:
            return src.op.finish(self, src, q)
        if self.b is not None:
            raise self.fail(node, "a second input quantizer")
        self.b = GraphBuilder(ir_shape(node_shape(src.node), src.node), q.scale, q.zero_point, name="input")
        return "input"


def lower(gm: fx.GraphModule, example_input: torch.Tensor) -> Graph:
    """Lower a converted int8 GraphModule (batch-1 ``example_input``) to an integer graph."""
    if not isinstance(gm, fx.GraphModule):
        raise ModelError(
            "micro lowering needs the converted GraphModule of "
            "tinytamer.compress.int8 (quantize_ptq / convert), got "
            f"{type(gm).__name__}"
        )
    x = example_input[:1]
    g = Lowerer(gm.eval()).run(x)
    # Each weight layer's flash form, from its w_bits and the values it holds.
    w_bits = {name: m.w_bits for name, m in gm.named_modules() if isinstance(m, QuantWeight)}
    for op in g.ops:
        if hasattr(op, "weight_form") and op.name in w_bits:
            # Sparse kernels exist for fully connected and groups-1 convolution layers.
            op.weight_form = weights.choose(op.weight, w_bits[op.name], sparse=getattr(op, "groups", 1) == 1)
    order_residual_branches(g)
    g.validate()
    return g


def op_agreement(gm: fx.GraphModule, g: Graph, x: torch.Tensor) -> dict[str, int]:
    """Per op, the largest difference in output steps between the integer op and the
    fake-quantized PyTorch model, both fed the PyTorch model's own int8 inputs.

    The integer op requantizes with a fixed-point multiplier and rounds half away from
    zero where PyTorch computes in float32 and rounds half to even, so each op agrees
    within one step; differences can then add up along a deep graph.
    """
    values: dict[str, torch.Tensor] = {}
    wanted = set(g.meta["fx_nodes"].values())

    class _Keep(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                values[n.name] = out.detach()
            return out

    with torch.no_grad():
        _Keep(gm.eval()).run(x[:1])

    def as_int(tensor: str) -> np.ndarray:
        t = g.tensors[tensor]
        v = values[g.meta["fx_nodes"][tensor]][0].numpy().astype(np.float64)
        if v.ndim == 3:
            v = v.transpose(1, 2, 0)
        return (np.round(v / t.scale) + t.zero_point).astype(np.int64).reshape(t.shape)

    from tinytamer.micro import reference
    from tinytamer.micro.planner import base_of

    # A flattened map is in HWC order on the device: read it from the map it aliases.
    base = base_of(g)

    def device_input(tensor: str) -> np.ndarray:
        return as_int(base[tensor]).reshape(g.tensors[tensor].shape).astype(np.int8)

    result: dict[str, int] = {}
    for op in g.ops:
        if op_def(op).aliases_input or op.output not in g.meta["fx_nodes"]:
            continue
        got = reference.run_op(g, op, [device_input(t) for t in op.inputs])
        result[op.name] = int(np.abs(got.astype(np.int64) - as_int(op.output)).max())
    return result
