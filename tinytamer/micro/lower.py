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

import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from tinytamer.errors import ModelError
from tinytamer.micro.builder import GraphBuilder
from tinytamer.micro.ir import Graph
from tinytamer.qgraph import ActQuant, QuantWeight

_ADD = {operator.add, operator.iadd, torch.add}
_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu6}
_PASS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)
_PASS_FUNCS = {F.dropout}
_PASS_METHODS = {"contiguous"}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape}
_SCALAR_METHODS = {"size", "dim"}
# Module types the device graph has a rule for (float Conv2d / Linear are refused as such
# when visited); any other module in the graph is refused up front, by its name.
_LAYER_MODULES = (nn.Conv2d, nn.Linear, nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d,
                  nn.AdaptiveAvgPool2d, nn.Flatten, nn.Softmax, *_PASS_MODULES)
SUPPORTED_OPS = ("conv2d (incl. depthwise/grouped), linear, max/avg pool, global average pool, "
                 "residual add, ReLU/ReLU6 fused into its producer, flatten/reshape, softmax "
                 "over the classes of a vector")


@dataclass
class _Pending:
    """A float result waiting for its FakeQuantAct (and maybe a fused ReLU)."""

    kind: str  # input | conv | linear | add | avgpool | softmax
    node: fx.Node
    inputs: list[str]
    module: nn.Module | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    relu: str | None = None


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise ModelError(f"micro lowering: node '{node.name}' does not produce one tensor")
    return tuple(meta.shape)


def _ir_shape(shape: tuple[int, ...], node: fx.Node) -> tuple[int, ...]:
    if shape[0] != 1:
        raise ModelError(f"micro lowering: node '{node.name}' has batch {shape[0]}; the device "
                         "graph is lowered at batch 1")
    if len(shape) == 4:
        return (shape[2], shape[3], shape[1])
    if len(shape) == 2:
        return (shape[1],)
    raise ModelError(f"micro lowering: node '{node.name}' has a {len(shape)}-D tensor {shape}; "
                     "only N x C x H x W maps and N x F vectors are supported")


def _is_fake_quant(m: nn.Module) -> bool:
    return isinstance(m, ActQuant)


def _is_quant_layer(m: nn.Module, base: type) -> bool:
    return isinstance(m, base) and isinstance(m, QuantWeight)


class _Lowerer:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.b: GraphBuilder | None = None
        self.env: dict[fx.Node, str | _Pending | None] = {}
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
        return ModelError(f"micro lowering: {what} at {where}; supported: {SUPPORTED_OPS}"
                          + (f"\n{src}" if src else ""))

    def check_layers(self) -> None:
        """Refuse a layer type the device has no rule for before lowering anything, so the
        error names it rather than the plumbing around it (a tuple unpack, a 3-D reshape)."""
        for node in self.gm.graph.nodes:
            if node.op != "call_module":
                continue
            m = self.mod(node)
            if not (_is_fake_quant(m) or isinstance(m, _LAYER_MODULES)):
                raise ModelError(f"micro lowering: layer '{node.target}' ({type(m).__name__}) "
                                 "is not supported by the micro path; supported ops: "
                                 f"{SUPPORTED_OPS}")

    def quant(self, node: fx.Node, arg) -> str:
        value = self.env.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(value, str):
            raise self.fail(node, f"input '{getattr(arg, 'name', arg)}' is not an int8 tensor "
                                  "(a layer left in float, or a value without a FakeQuantAct)")
        self._check_order_use(node, value)
        return value

    def _check_order_use(self, node: fx.Node, t: str) -> None:
        if t in self.torch_order and not self._is_linear(node):
            raise self.fail(node, "a flattened C x H x W feature map may only feed a linear layer")

    def _is_linear(self, node: fx.Node) -> bool:
        return node.op == "call_module" and _is_quant_layer(self.mod(node), nn.Linear)

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
            return _Pending("input", node, [])
        if node.op == "get_attr":
            raise self.fail(node, f"a constant tensor '{node.target}' used in the graph")
        if node.op == "call_module":
            return self.visit_module(node, self.mod(node))
        if node.op == "call_function":
            return self.visit_function(node)
        if node.op == "call_method":
            return self.visit_method(node)
        raise self.fail(node, f"graph op '{node.op}'")

    def visit_module(self, node: fx.Node, m: nn.Module):
        arg = node.args[0]
        if _is_fake_quant(m):
            return self.finish(node, m)
        if _is_quant_layer(m, nn.Conv2d):
            return self.conv_pending(node, m)
        if _is_quant_layer(m, nn.Linear):
            return _Pending("linear", node, [self.quant(node, arg)], m)
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            return self.fuse_relu(node, "relu6" if isinstance(m, nn.ReLU6) else "relu")
        if isinstance(m, nn.MaxPool2d):
            return self.maxpool(node, m.kernel_size, m.stride, m.padding, m.dilation,
                                m.ceil_mode)
        if isinstance(m, nn.AvgPool2d):
            if _pair(m.padding) != (0, 0) or m.ceil_mode:
                raise self.fail(node, "an average pool with padding or ceil_mode")
            return self.avgpool(node, _pair(m.kernel_size), _pair(m.stride or m.kernel_size))
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.adaptive(node, m.output_size)
        if isinstance(m, nn.Flatten):
            return self.reshape(node)
        if isinstance(m, nn.Softmax):
            return self.softmax(node, m.dim)
        if isinstance(m, _PASS_MODULES):
            return self.quant(node, arg)
        # check_layers() let only these through.
        raise self.fail(node, f"a {type(m).__name__} left in float (not quantized)")

    def visit_function(self, node: fx.Node):
        f = node.target
        if f in _ADD:
            a, b = node.args[:2]
            if len(node.args) > 2 or node.kwargs:
                raise self.fail(node, "an add with alpha or extra arguments")
            return _Pending("add", node, [self.quant(node, a), self.quant(node, b)])
        if f in _RELU_FUNCS:
            return self.fuse_relu(node, "relu6" if f is F.relu6 else "relu")
        if f is F.hardtanh and tuple(node.args[1:3]) == (0.0, 6.0):
            return self.fuse_relu(node, "relu6")
        if f in (F.max_pool2d,):
            a = list(node.args) + [None] * 6
            kw = node.kwargs
            k = kw.get("kernel_size", a[1])
            s = kw.get("stride", a[2]) or k
            return self.maxpool(node, k, s, kw.get("padding", a[3] or 0),
                                kw.get("dilation", a[4] or 1), kw.get("ceil_mode", a[5] or False))
        if f is F.avg_pool2d:
            a = list(node.args) + [None] * 6
            k = _pair(node.kwargs.get("kernel_size", a[1]))
            s = node.kwargs.get("stride", a[2]) or k
            if _pair(node.kwargs.get("padding", a[3] or 0)) != (0, 0):
                raise self.fail(node, "an average pool with padding")
            return self.avgpool(node, k, _pair(s))
        if f is F.adaptive_avg_pool2d:
            return self.adaptive(node, node.kwargs.get("output_size", node.args[1]))
        if f is torch.mean:
            return self.mean(node)
        if f in (F.softmax, torch.softmax):
            return self.softmax(node, node.kwargs.get("dim", node.args[1] if len(node.args) > 1
                                                      else None))
        if f in _RESHAPE_FUNCS:
            return self.reshape(node)
        if f in _PASS_FUNCS:
            return self.quant(node, node.args[0])
        if f is getattr:
            return None
        raise self.fail(node, f"function '{getattr(f, '__name__', f)}'")

    def visit_method(self, node: fx.Node):
        m = node.target
        if m in _SCALAR_METHODS:
            return None
        if m in ("add", "add_"):
            if len(node.args) != 2 or node.kwargs:
                raise self.fail(node, "an add with alpha or extra arguments")
            return _Pending("add", node, [self.quant(node, a) for a in node.args])
        if m in ("relu", "relu_"):
            return self.fuse_relu(node, "relu")
        if m == "mean":
            return self.mean(node)
        if m == "softmax":
            return self.softmax(node, node.kwargs.get("dim", node.args[1] if len(node.args) > 1
                                                      else None))
        if m in _RESHAPE_METHODS:
            return self.reshape(node)
        if m in _PASS_METHODS:
            return self.quant(node, node.args[0])
        raise self.fail(node, f"method '.{m}()'")

    # ------------------------------------------------------------------ ops
    def conv_pending(self, node: fx.Node, m: nn.Conv2d) -> _Pending:
        x = self.quant(node, node.args[0])
        if _pair(m.dilation) != (1, 1):
            raise self.fail(node, f"a dilated convolution (dilation {m.dilation})")
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise self.fail(node, f"convolution padding '{m.padding}' / mode '{m.padding_mode}'")
        return _Pending("conv", node, [x], m)

    def fuse_relu(self, node: fx.Node, kind: str) -> _Pending:
        src = self.env.get(node.args[0])
        if not isinstance(src, _Pending) or src.kind in ("input", "softmax") \
                or src.relu is not None or len(node.args[0].users) != 1:
            raise self.fail(node, f"a {kind.upper()} that does not directly follow a conv, "
                                  "linear or add it can fuse into")
        src.relu = kind
        return src

    def maxpool(self, node: fx.Node, k, s, p, dilation, ceil_mode) -> str:
        if _pair(dilation) != (1, 1) or ceil_mode:
            raise self.fail(node, "a max pool with dilation or ceil_mode")
        x = self.quant(node, node.args[0])
        return self.b.maxpool(x, _pair(k), _pair(s if s else k), _pair(p), name=node.name)

    def avgpool(self, node: fx.Node, k, s) -> _Pending:
        return _Pending("avgpool", node, [self.quant(node, node.args[0])], kernel=k, stride=s)

    def adaptive(self, node: fx.Node, output_size) -> _Pending:
        x = self.quant(node, node.args[0])
        h, w, _ = self.b.tensors[x].shape
        oh, ow = _pair(output_size) if output_size is not None else (h, w)
        oh, ow = oh or h, ow or w
        if h % oh or w % ow:
            raise self.fail(node, f"an adaptive average pool {h}x{w} -> {oh}x{ow} with "
                                  "uneven windows")
        return _Pending("avgpool", node, [x], kernel=(h // oh, w // ow),
                        stride=(h // oh, w // ow))

    def mean(self, node: fx.Node) -> _Pending:
        x = self.quant(node, node.args[0])
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = {int(d) % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims])} \
            if dims is not None else None
        if dims != {2, 3}:
            raise self.fail(node, f"a mean over dims {dims} (only the spatial dims 2, 3)")
        h, w, _ = self.b.tensors[x].shape
        return _Pending("avgpool", node, [x], kernel=(h, w), stride=(h, w))

    def softmax(self, node: fx.Node, dim) -> _Pending:
        x = self.quant(node, node.args[0])
        if len(self.b.tensors[x].shape) != 1 or dim not in (1, -1):
            raise self.fail(node, f"a softmax over dim {dim} of a {_shape(node)} tensor (only "
                                  "over the classes of an N x F vector)")
        if node.kwargs.get("dtype") is not None:
            raise self.fail(node, "a softmax with a dtype argument")
        return _Pending("softmax", node, [x])

    def reshape(self, node: fx.Node) -> str:
        x = self.quant(node, node.args[0])
        src = self.b.tensors[x].shape
        dst = _ir_shape(_shape(node), node)
        if dst == src:
            return x
        if len(dst) != 1:
            raise self.fail(node, f"a reshape {src} -> {dst} (only flatten to N x F)")
        out = self.b.reshape(x, dst, name=node.name)
        if len(src) == 3 and src[0] * src[1] > 1:
            h, w, c = src
            self.torch_order[out] = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
        return out

    def finish(self, node: fx.Node, fq: nn.Module) -> str:
        src = self.env.get(node.args[0])
        scale, zp = float(fq.scale), int(fq.zero_point)
        qrange = (int(fq.qmin), int(fq.qmax))
        if qrange[0] < -128 or qrange[1] > 127:
            raise self.fail(node, f"an activation with {fq.bits} bits (at most 8)")
        if not isinstance(src, _Pending):
            raise self.fail(node, "a FakeQuantAct after an op the device cannot run")
        b, name, relu = self.b, src.node.name, src.relu
        if src.kind == "input":
            if b is not None:
                raise self.fail(node, "a second input quantizer")
            shape = _ir_shape(_shape(src.node), src.node)
            self.b = GraphBuilder(shape, scale, zp, name="input")
            return "input"
        if src.kind == "conv":
            m = src.module
            return b.conv(src.inputs[0], m.int_weight().numpy(), m.w_scale.numpy(),
                          None if m.bias is None else m.bias.detach().numpy(), scale, zp,
                          stride=_pair(m.stride), padding=_pair(m.padding), groups=m.groups,
                          relu=relu, qrange=qrange, name=str(src.node.target))
        if src.kind == "linear":
            m = src.module
            x = src.inputs[0]
            return b.dense(x, m.int_weight().numpy(), m.w_scale.numpy(),
                           None if m.bias is None else m.bias.detach().numpy(), scale, zp,
                           relu=relu, qrange=qrange, column_order=self.torch_order.get(x),
                           name=str(src.node.target))
        if src.kind == "add":
            a, c = src.inputs
            if b.tensors[a].shape != b.tensors[c].shape:
                raise self.fail(src.node, f"an add of shapes {b.tensors[a].shape} and "
                                          f"{b.tensors[c].shape} (broadcasting)")
            return b.add(a, c, scale, zp, relu=relu, qrange=qrange, name=name)
        if src.kind == "softmax":
            return b.softmax(src.inputs[0], scale, zp, qrange=qrange, name=name)
        out = b.avgpool(src.inputs[0], src.kernel, src.stride, scale, zp, relu=relu,
                        qrange=qrange, name=name)
        want = _ir_shape(_shape(src.node), src.node)
        return out if want == b.tensors[out].shape else b.reshape(out, want, name=name + "_flat")


def lower(gm: fx.GraphModule, example_input: torch.Tensor) -> Graph:
    """Lower a converted int8 GraphModule (batch-1 ``example_input``) to an integer graph."""
    if not isinstance(gm, fx.GraphModule):
        raise ModelError("micro lowering needs the converted GraphModule of "
                         "tinytamer.compress.int8 (quantize_ptq / convert), got "
                         f"{type(gm).__name__}")
    x = example_input[:1]
    return _Lowerer(gm.eval()).run(x)


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
        if type(op).__name__ == "Reshape" or op.output not in g.meta["fx_nodes"]:
            continue
        got = reference.run_op(g, op, [device_input(t) for t in op.inputs])
        result[op.name] = int(np.abs(got.astype(np.int64) - as_int(op.output)).max())
    return result
