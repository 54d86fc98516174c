"""What every device op owns, in one place (TVM's convert map, TinyEngine's per-op classes).

A :class:`DeviceOp` is one row of the op table (:data:`tinytamer.micro.ops.OPS`): the
integer-graph record it produces (``ir``), the fx patterns it lowers from
(``lowers_from``: module types for ``call_module``, functions for ``call_function``,
method names for ``call_method``, each mapped to the converter method that handles it),
its numpy reference, its schedule knobs, the C it generates, the arena scratch its
kernel needs and its multiply-accumulate count.  The generic modules (lower, reference,
codegen, planner, schedule, tuning) look an op up here instead of testing its type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from torch import fx, nn

from tinytamer.errors import ModelError
from tinytamer.micro.fixedpoint import requantize
from tinytamer.micro.ir import Graph, Op

if TYPE_CHECKING:
    from tinytamer.micro.lower import Lowerer


@dataclass
class Pending:
    """A float result waiting for its FakeQuantAct (and maybe a fused ReLU): ``op`` builds
    the integer op once the output's quantization is known (None: the model input)."""

    op: DeviceOp | None
    node: fx.Node
    inputs: list[str]
    module: nn.Module | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    relu: str | None = None


@dataclass(frozen=True)
class Quant:
    """The output quantization a FakeQuantAct gives a pending op."""

    scale: float
    zero_point: int
    qrange: tuple[int, int]


@dataclass(frozen=True)
class CallSite:
    """Where op ``i`` runs in the generated C: its buffers and the adds fused into it."""

    g: Graph
    i: int
    dsp: bool
    args: list[str]  # C expressions of the input buffers
    out: str  # C expression of the output buffer
    scratch: str  # C expression of the scratch buffer, or "0"
    fused_add: int | None  # index of the residual add run inside this op


def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def node_shape(node: fx.Node) -> tuple[int, ...]:
    """The shape fx's ShapeProp recorded for a node's one tensor."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise ModelError(f"micro lowering: node '{node.name}' does not produce one tensor")
    return tuple(meta.shape)


def ir_shape(shape: tuple[int, ...], node: fx.Node) -> tuple[int, ...]:
    """A PyTorch N x C x H x W / N x F shape as the device graph's H x W x C / F."""
    if shape[0] != 1:
        raise ModelError(
            f"micro lowering: node '{node.name}' has batch {shape[0]}; the device graph is lowered at batch 1"
        )
    if len(shape) == 4:
        return (shape[2], shape[3], shape[1])
    if len(shape) == 2:
        return (shape[1],)
    raise ModelError(
        f"micro lowering: node '{node.name}' has a {len(shape)}-D tensor {shape}; "
        "only N x C x H x W maps and N x F vectors are supported"
    )


def call_args(node: fx.Node, names: tuple[str, ...], **defaults) -> dict[str, Any]:
    """A call's arguments by parameter name (positional, then keyword, then ``defaults``):
    the signature declared once instead of indexing ``node.args`` by hand."""
    bound = dict(defaults)
    bound.update({n: a for n, a in zip(names, node.args, strict=False) if a is not None})
    bound.update({k: v for k, v in node.kwargs.items() if v is not None})
    return bound


def requant_clamp(acc: np.ndarray, mult, shift, zp: int, lo: int, hi: int) -> np.ndarray:
    """The reference's requantization of an int64 accumulator to clamped int8."""
    out = requantize(acc, mult, shift) + zp
    return np.clip(out, lo, hi).astype(np.int8)


def windows(x: np.ndarray, kernel, stride, padding, pad_value: int) -> np.ndarray:
    """(OH, OW, C, KH, KW) windows of an HWC map padded with ``pad_value``."""
    ph, pw = padding
    xp = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    win = sliding_window_view(xp, tuple(kernel), axis=(0, 1))
    return win[:: stride[0], :: stride[1]]


def round4(n: int) -> int:
    return (n + 3) // 4 * 4


def c_array(name: str, ctype: str, values: np.ndarray) -> str:
    flat = np.asarray(values).reshape(-1).tolist()
    rows = [", ".join(str(int(v)) for v in flat[i : i + 24]) for i in range(0, len(flat), 24)]
    body = ",\n    ".join(rows) if rows else "0"
    return f"static const {ctype} {name}[{max(len(flat), 1)}] = {{\n    {body}\n}};\n"


def c_requant(i: int, op: Op) -> list[str]:
    """The per-channel bias, multiplier and shift arrays b/m/s<i> of a conv or dense op."""
    return [
        c_array(f"b{i}", "int32_t", op.bias),
        c_array(f"m{i}", "int32_t", op.multiplier),
        c_array(f"s{i}", "int32_t", op.shift),
    ]


def c_weights(i: int, wa: np.ndarray) -> str:
    """The weight array w<i>, int8 or (pre-expanded pairs) int32."""
    return c_array(f"w{i}", "int32_t" if wa.dtype == np.int32 else "int8_t", wa)


def c_struct(ctype: str, name: str, fields: dict[str, int | str]) -> str:
    inits = ", ".join(f".{k} = {v if isinstance(v, str) else int(v)}" for k, v in fields.items())
    return f"static const {ctype} {name} = {{{inits}}};\n"


class DeviceOp:
    """Base of a table row; the defaults describe an op with no knobs, scratch or MACs."""

    ir: ClassVar[type[Op]]
    kernel_files: ClassVar[tuple[str, ...]]  # runtime/<file>.c: its C kernels
    lowers_from: ClassVar[dict[Any, str]] = {}
    fuses_relu: ClassVar[bool] = True  # a following ReLU/ReLU6 becomes its clamp
    aliases_input: ClassVar[bool] = False  # the output is the input's buffer (no code)
    in_place: ClassVar[bool] = False  # may write over an input that dies at it
    residual: ClassVar[bool] = False  # a residual add a convolution can run fused

    # ------------------------------------------------------------------ lowering
    def lower(self, lw: Lowerer, node: fx.Node, pattern: Any):
        """Convert ``node`` (matched by ``pattern``): an int8 tensor name or a Pending."""
        return getattr(self, self.lowers_from[pattern])(lw, node, pattern)

    def finish(self, lw: Lowerer, p: Pending, q: Quant) -> str:
        """Build the integer op of a pending result; returns its output tensor."""
        raise NotImplementedError(f"{type(self).__name__} has no pending form")

    # ------------------------------------------------------------------ semantics
    def reference(self, g: Graph, op: Op, args: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def cost(self, g: Graph, op: Op) -> int:
        """Multiply-accumulates of one inference."""
        return 0

    def fuses_following_add(self, op: Op) -> bool:
        """Whether a residual add right after ``op`` can run inside ``op``'s kernel."""
        return False

    def layer_key(self, op: Op) -> str:
        """The parameters (beyond tensor shapes) the kernel's run time depends on."""
        return ""

    # ------------------------------------------------------------------ schedules and C
    def space(self, op: Op, dsp: bool) -> dict[str, list]:
        """The knob values legal for ``op`` on a build with or without DSP kernels."""
        return {}

    def resolve(self, op: Op, dsp: bool) -> dict:
        """The op's schedule with defaults filled in (the first value of every knob)."""
        knobs = self.space(op, dsp)
        chosen = {k: v[0] for k, v in knobs.items()}
        for k, v in getattr(op, "schedule", {}).items():
            if k in knobs and v in knobs[k]:
                chosen[k] = v
        return chosen

    def scratch_bytes(self, g: Graph, op: Op, dsp: bool) -> int:
        """Arena bytes the op's kernel variant needs for the duration of the op."""
        return 0

    def emit_c(self, op: Op, site: CallSite) -> tuple[list[str], str]:
        """The op's constants (C definitions) and the call statement that runs it."""
        raise NotImplementedError
