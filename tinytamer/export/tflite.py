"""A converted int8 model -> an int8 TensorFlow Lite flatbuffer (``.tflite``), written by us.

The file is what TFLite Micro, STM32Cube.AI and most MCU vendors' tools take.  It is
written from the integer graph that the micro path lowers the model to
(:mod:`tinytamer.micro.lower`), so it holds the very integers our generated C runs:

- activations are int8 NHWC tensors with their per-tensor scale and zero point; the
  model's input and output are int8 (quantize with the input tensor's parameters);
- convolutions (OHWI), depthwise convolutions (1 x H x W x C) and fully connected layers
  ([out, in], columns already in the NHWC flatten order) hold int8 weights quantized per
  output channel (zero point 0) and int32 biases in ``in_scale * w_scale[c]`` units;
- a ReLU / ReLU6 is the producer's fused activation;
- an explicit padding that TFLite's SAME padding does not reproduce (PyTorch pads both
  sides alike, SAME puts the odd pixel after) becomes a PAD (PADV2 with -128 before a max
  pool) and a VALID op;
- a channel gather (split, concatenation, shuffle: :mod:`tinytamer.micro.ops.gather`) is a
  CONCATENATION of its inputs then a GATHER of the output channels; an input at another
  quantization is first mapped through the op's own 256-entry table of output codes
  (CAST to int32, ADD 128, GATHER from the table), so it is bit-exact with our kernel;
- an average pool is a depthwise convolution with weights 1 and weight scale
  ``1 / (kh * kw)``: TFLite's int8 AVERAGE_POOL_2D cannot rescale, and pooling then
  requantizing (QUANTIZE) rounds twice where our kernel rounds once (measured: up to two
  steps apart after a global pool).  The ones cost ``kh * kw * C`` bytes; where no float32
  scale reproduces our multiplier, AVERAGE_POOL_2D + QUANTIZE is written and noted.

TFLite kernels recompute each requantization multiplier from the file's float32 scales
(``in_scale * w_scale / out_scale`` in double, rounded half away from zero to Q31).  The
integer graph keeps only the (multiplier, shift) pairs, so each weight scale is recovered
as the float32 that gives back exactly our pair under TFLite's rule; a pair that no
float32 reproduces is refused, never approximated.

Written with the ``flatbuffers`` package (which onnxruntime already installs) and the
field numbers of TFLite's ``schema.fbs`` (stable: the schema only appends fields); no
converter, TensorFlow or LiteRT is needed to export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinytamer.errors import BackendMissing
from tinytamer.export.onnx import ExportError
from tinytamer.fileio import write_atomic

# schema.fbs constants (BuiltinOperator, BuiltinOptions, TensorType, Padding,
# ActivationFunctionType).
_OPS = {
    "ADD": 0,
    "AVERAGE_POOL_2D": 1,
    "CONCATENATION": 2,
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 4,
    "FULLY_CONNECTED": 9,
    "MAX_POOL_2D": 17,
    "RESHAPE": 22,
    "SOFTMAX": 25,
    "PAD": 34,
    "GATHER": 36,
    "CAST": 53,
    "PADV2": 60,
    "QUANTIZE": 114,
}
# The version of each builtin for int8 tensors (TFLite's op_version.cc); runtimes pick a
# kernel by (op, version).  FULLY_CONNECTED 12 is per-channel quantized weights.
_VERSIONS = {
    "ADD": 2,
    "AVERAGE_POOL_2D": 2,
    "CONCATENATION": 2,
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 12,
    "MAX_POOL_2D": 2,
    "RESHAPE": 1,
    "SOFTMAX": 2,
    "PAD": 2,
    "GATHER": 2,
    "CAST": 1,
    "PADV2": 2,
    "QUANTIZE": 2,
}
_OPTIONS = {
    "Conv2DOptions": 1,
    "DepthwiseConv2DOptions": 2,
    "Pool2DOptions": 5,
    "FullyConnectedOptions": 8,
    "ConcatenationOptions": 10,
    "SoftmaxOptions": 9,
    "AddOptions": 11,
    "ReshapeOptions": 17,
    "PadOptions": 22,
    "GatherOptions": 23,
    "CastOptions": 37,
    "PadV2Options": 43,
    "QuantizeOptions": 89,
}
_INT8, _INT32 = 9, 2
_SAME, _VALID = 0, 1
_ACT = {"NONE": 0, "RELU": 1, "RELU6": 3}
SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"


# ----------------------------------------------------------------------------- arithmetic


def tflite_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: (Q31 multiplier, shift), rounding half away from zero."""
    if real == 0.0:
        return 0, 0
    frac, shift = math.frexp(real)
    q = math.floor(abs(frac) * (1 << 31) + 0.5)
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return int(q), int(shift)


def _weight_scale(mult: int, shift: int, in_scale: float, out_scale: float) -> np.float32:
    """The float32 weight scale for which TFLite derives exactly (mult, shift)."""
    if mult == 0:
        # Below 2^-31 the output is the zero point; any scale that small says so.
        target = np.float32(2.0**-40 * out_scale / in_scale)
        candidates = [target]
    else:
        estimate = np.float32(mult * 2.0 ** (shift - 31) * out_scale / in_scale)
        # Our pair came from a float32 scale within an ulp or two of the estimate.
        candidates = [estimate]
        up = down = estimate
        for _ in range(8):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
            candidates += [up, down]
    for w in candidates:
        if w > 0 and tflite_multiplier(float(in_scale) * float(w) / float(out_scale)) == (mult, shift):
            return w
    raise ExportError(
        f"no float32 weight scale reproduces the requantization multiplier "
        f"({mult}, shift {shift}) under TFLite's rounding; this layer cannot be "
        "written as a .tflite that computes what the device computes"
    )


def _fused_activation(act_min: int, act_max: int, scale: float, zp: int, where: str) -> int:
    """The fused activation whose int8 clamp (TFLite's CalculateActivationRangeQuantized)
    is exactly ``[act_min, act_max]``."""
    relu_lo = max(-128, zp)
    relu6_hi = min(127, zp + math.floor(float(np.float32(6.0) / np.float32(scale)) + 0.5))
    for name, lo, hi in (("NONE", -128, 127), ("RELU", relu_lo, 127), ("RELU6", relu_lo, relu6_hi)):
        if (act_min, act_max) == (lo, hi):
            return _ACT[name]
    raise ExportError(
        f"{where}: its output clamp [{act_min}, {act_max}] is none of TFLite's "
        "fused activations (none, ReLU, ReLU6 at the output's scale); activations "
        "of fewer than 8 bits cannot be written as .tflite"
    )


def _padding(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int]
) -> int | None:
    """VALID or SAME when either reproduces PyTorch's symmetric ``pad``; None otherwise."""
    if pad == (0, 0):
        return _VALID
    for n, k, s, p in zip(size, kernel, stride, pad, strict=True):
        out = (n + 2 * p - k) // s + 1
        same_out = -(-n // s)
        before = max((same_out - 1) * s + k - n, 0) // 2
        if out != same_out or before != p:
            return None
    return _SAME


# ----------------------------------------------------------------------------- the model


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int
    buffer: int = 0
    scale: Sequence[float] | None = None
    zero_point: Sequence[int] | None = None
    axis: int = 0


@dataclass
class _Operator:
    code: str
    inputs: list[int]
    outputs: list[int]
    options: tuple[str, dict[str, Any]] | None = None


@dataclass
class TFLiteModel:
    """A one-subgraph TFLite model as plain data; :meth:`to_bytes` serializes it."""

    tensors: list[_Tensor] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])  # buffer 0: the empty one
    operators: list[_Operator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    description: str = "tinytamer int8"

    def tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: int = _INT8,
        scale: Sequence[float] | float | None = None,
        zero_point: Sequence[int] | int | None = None,
        axis: int = 0,
        data: np.ndarray | None = None,
    ) -> int:
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes())
            buffer = len(self.buffers) - 1
        if scale is not None and np.ndim(scale) == 0:
            scale, zero_point = [float(scale)], [int(zero_point or 0)]
        self.tensors.append(
            _Tensor(
                name,
                tuple(int(s) for s in shape),
                dtype,
                buffer,
                None if scale is None else [float(s) for s in scale],
                None if zero_point is None else [int(z) for z in zero_point],
                axis,
            )
        )
        return len(self.tensors) - 1

    def op(
        self, code: str, inputs: list[int], outputs: list[int], options: tuple[str, dict[str, Any]] | None = None
    ) -> None:
        self.operators.append(_Operator(code, inputs, outputs, options))

    def to_bytes(self) -> bytes:
        return _serialize(self)


def _serialize(m: TFLiteModel) -> bytes:
    try:
        import flatbuffers
    except ImportError:  # installed with onnxruntime, a core dependency; said plainly if not
        raise BackendMissing("tflite export", "pip install flatbuffers") from None

    b = flatbuffers.Builder(1024)

    def vector(kind: str, values: Sequence[Any]) -> int:
        width = {"i32": 4, "i64": 8, "f32": 4, "off": 4}[kind]
        b.StartVector(width, len(values), width)
        for v in reversed(values):
            {"i32": b.PrependInt32, "i64": b.PrependInt64, "f32": b.PrependFloat32, "off": b.PrependUOffsetTRelative}[
                kind
            ](v)
        return b.EndVector()

    def table(fields: list[tuple[int, str, Any]]) -> int:
        """A table from (slot, kind, value); offsets must be created before."""
        b.StartObject(1 + max((s for s, _, _ in fields), default=-1))
        for slot, kind, value in fields:
            if kind == "off":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "i8":
                b.PrependInt8Slot(slot, value, -1)  # a non-default so a zero is written
            elif kind == "u8":
                b.PrependUint8Slot(slot, value, 0)
            elif kind == "i32":
                b.PrependInt32Slot(slot, value, -1)
            elif kind == "u32":
                b.PrependUint32Slot(slot, value, 0xFFFFFFFF)
            elif kind == "f32":
                b.PrependFloat32Slot(slot, value, math.nan)
            elif kind == "bool":
                b.PrependBoolSlot(slot, value, not value)
        return b.EndObject()

    # Buffers: raw bytes aligned to 16 (TFLite Micro reads weights in place).
    buffers = []
    for data in m.buffers:
        if data:
            b.StartVector(1, len(data), 16)
            b.head -= len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            buffers.append(table([(0, "off", b.EndVector())]))
        else:
            buffers.append(table([]))

    codes = list(dict.fromkeys(op.code for op in m.operators))
    code_tables = [table([(0, "i8", min(_OPS[c], 127)), (2, "i32", _VERSIONS[c]), (3, "i32", _OPS[c])]) for c in codes]

    tensors = []
    for t in m.tensors:
        quant = None
        if t.scale is not None:
            scale = vector("f32", t.scale)
            zp = vector("i64", t.zero_point or [0] * len(t.scale))
            quant = table([(2, "off", scale), (3, "off", zp), (6, "i32", t.axis)])
        shape = vector("i32", list(t.shape))
        name = b.CreateString(t.name)
        fields = [(0, "off", shape), (1, "i8", t.dtype), (2, "u32", t.buffer), (3, "off", name)]
        if quant is not None:
            fields.append((4, "off", quant))
        tensors.append(table(fields))

    operators = []
    for op in m.operators:
        opts_type, opts = 0, None
        if op.options is not None:
            kind, values = op.options
            opts_type = _OPTIONS[kind]
            opts = _options_table(b, table, vector, kind, values)
        fields = [
            (0, "u32", codes.index(op.code)),
            (1, "off", vector("i32", op.inputs)),
            (2, "off", vector("i32", op.outputs)),
        ]
        if opts is not None:
            fields += [(3, "u8", opts_type), (4, "off", opts)]
        operators.append(table(fields))

    subgraph = table(
        [
            (0, "off", vector("off", tensors)),
            (1, "off", vector("i32", m.inputs)),
            (2, "off", vector("i32", m.outputs)),
            (3, "off", vector("off", operators)),
            (4, "off", b.CreateString("main")),
        ]
    )
    model = table(
        [
            (0, "u32", SCHEMA_VERSION),
            (1, "off", vector("off", code_tables)),
            (2, "off", vector("off", [subgraph])),
            (3, "off", b.CreateString(m.description)),
            (4, "off", vector("off", buffers)),
        ]
    )
    b.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


# Per options table: field name -> (slot, kind), from schema.fbs.
_OPTION_FIELDS: dict[str, dict[str, tuple[int, str]]] = {
    "Conv2DOptions": {
        "padding": (0, "i8"),
        "stride_w": (1, "i32"),
        "stride_h": (2, "i32"),
        "activation": (3, "i8"),
        "dilation_w": (4, "i32"),
        "dilation_h": (5, "i32"),
    },
    "DepthwiseConv2DOptions": {
        "padding": (0, "i8"),
        "stride_w": (1, "i32"),
        "stride_h": (2, "i32"),
        "depth_multiplier": (3, "i32"),
        "activation": (4, "i8"),
        "dilation_w": (5, "i32"),
        "dilation_h": (6, "i32"),
    },
    "Pool2DOptions": {
        "padding": (0, "i8"),
        "stride_w": (1, "i32"),
        "stride_h": (2, "i32"),
        "filter_w": (3, "i32"),
        "filter_h": (4, "i32"),
        "activation": (5, "i8"),
    },
    "FullyConnectedOptions": {"activation": (0, "i8"), "keep_num_dims": (2, "bool")},
    "SoftmaxOptions": {"beta": (0, "f32")},
    "AddOptions": {"activation": (0, "i8")},
    "ReshapeOptions": {"new_shape": (0, "i32s")},
    "ConcatenationOptions": {"axis": (0, "i32"), "activation": (1, "i8")},
    "GatherOptions": {"axis": (0, "i32"), "batch_dims": (1, "i32")},
    "CastOptions": {"in_data_type": (0, "i8"), "out_data_type": (1, "i8")},
    "PadOptions": {},
    "PadV2Options": {},
    "QuantizeOptions": {},
}


def _options_table(b: Any, table: Any, vector: Any, kind: str, values: dict[str, Any]) -> int:
    slots = _OPTION_FIELDS[kind]
    fields = []
    for key, value in values.items():
        slot, typ = slots[key]
        if typ == "i32s":
            fields.append((slot, "off", vector("i32", list(value))))
        else:
            fields.append((slot, typ, value))
    return table(fields)


# ----------------------------------------------------------------------------- integer graph


def _shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape)


class _Exporter:
    def __init__(self, g: Any) -> None:
        self.g = g
        self.m = TFLiteModel()
        self.ids: dict[str, int] = {}
        self.notes: list[str] = []

    def act(
        self, name: str, shape: tuple[int, ...] | None = None, scale: float | None = None, zp: int | None = None
    ) -> int:
        """The TFLite tensor of an activation of the integer graph (or a new intermediate)."""
        if name in self.ids:
            return self.ids[name]
        t = self.g.tensors.get(name)
        if t is not None:
            shape, scale, zp = t.shape, t.scale, t.zero_point
        self.ids[name] = self.m.tensor(name, _shape(shape), _INT8, scale, zp)
        return self.ids[name]

    def run(self) -> TFLiteModel:
        from tinytamer.micro.ir import Graph

        g: Graph = self.g
        handlers = {
            "Conv2D": self.conv,
            "Dense": self.dense,
            "MaxPool": self.maxpool,
            "AvgPool": self.avgpool,
            "Add": self.add,
            "Reshape": self.reshape,
            "Softmax": self.softmax,
            "Gather": self.gather,
        }
        self.m.inputs = [self.act(g.input)]
        for op in g.ops:
            kind = type(op).__name__
            if kind not in handlers:
                raise ExportError(
                    f".tflite export: op '{op.name}' ({kind}) has no TFLite form; exported ops: {', '.join(handlers)}"
                )
            handlers[kind](op)
        self.m.outputs = [self.act(g.output)]
        return self.m

    def _pad(self, op: Any, x: str, pad: tuple[int, int], value: int | None) -> int:
        """A PAD (value None: the zero point) or PADV2 of ``x`` by ``pad`` on each side."""
        t = self.g.tensors[x]
        h, w, c = t.shape
        pads = self.m.tensor(
            f"{op.name}/paddings",
            (4, 2),
            _INT32,
            data=np.array([[0, 0], [pad[0], pad[0]], [pad[1], pad[1]], [0, 0]], dtype=np.int32),
        )
        out = self.act(f"{op.name}/padded", (h + 2 * pad[0], w + 2 * pad[1], c), t.scale, t.zero_point)
        inputs = [self.act(x), pads]
        if value is None:
            self.m.op("PAD", inputs, [out], ("PadOptions", {}))
        else:
            inputs.append(
                self.m.tensor(
                    f"{op.name}/pad_value", (), _INT8, t.scale, t.zero_point, data=np.array(value, dtype=np.int8)
                )
            )
            self.m.op("PADV2", inputs, [out], ("PadV2Options", {}))
        return out

    def conv(self, op: Any) -> None:
        t_in, t_out = self.g.tensors[op.inputs[0]], self.g.tensors[op.output]
        oc, kh, kw, icg = op.weight.shape
        # groups == input channels is TFLite's depthwise convolution with a depth multiplier
        # (output channel g * M + m reads input channel g, as in PyTorch).
        depthwise = op.groups > 1 and icg == 1 and op.groups == t_in.shape[2]
        if op.groups > 1 and not depthwise:
            raise ExportError(
                f".tflite export: convolution '{op.name}' has {op.groups} groups of "
                f"{icg} channels; TFLite runs groups 1 or depthwise only"
            )
        kernel, stride, pad = (kh, kw), tuple(op.stride), tuple(op.padding)
        padding = _padding(t_in.shape[:2], kernel, stride, pad)
        x = self.act(op.inputs[0])
        if padding is None:
            x, padding = self._pad(op, op.inputs[0], pad, None), _VALID
        w_scale = np.array(
            [
                _weight_scale(int(m), int(s), t_in.scale, t_out.scale)
                for m, s in zip(op.multiplier, op.shift, strict=True)
            ],
            np.float32,
        )
        act = _fused_activation(op.act_min, op.act_max, t_out.scale, t_out.zero_point, f"convolution '{op.name}'")
        weight = np.transpose(op.weight, (3, 1, 2, 0)) if depthwise else op.weight
        axis = 3 if depthwise else 0
        w = self.m.tensor(
            f"{op.name}/weight", weight.shape, _INT8, w_scale, [0] * oc, axis, data=weight.astype(np.int8)
        )
        bias_scale = (np.float64(t_in.scale) * w_scale).astype(np.float32)
        bias = self.m.tensor(f"{op.name}/bias", (oc,), _INT32, bias_scale, [0] * oc, 0, data=op.bias.astype(np.int32))
        opts = {
            "padding": padding,
            "stride_w": stride[1],
            "stride_h": stride[0],
            "activation": act,
            "dilation_w": 1,
            "dilation_h": 1,
        }
        if depthwise:
            self.m.op(
                "DEPTHWISE_CONV_2D",
                [x, w, bias],
                [self.act(op.output)],
                ("DepthwiseConv2DOptions", {**opts, "depth_multiplier": oc // op.groups}),
            )
        else:
            self.m.op("CONV_2D", [x, w, bias], [self.act(op.output)], ("Conv2DOptions", opts))

    def dense(self, op: Any) -> None:
        t_in, t_out = self.g.tensors[op.inputs[0]], self.g.tensors[op.output]
        n_out = op.weight.shape[0]
        w_scale = np.array(
            [
                _weight_scale(int(m), int(s), t_in.scale, t_out.scale)
                for m, s in zip(op.multiplier, op.shift, strict=True)
            ],
            np.float32,
        )
        act = _fused_activation(
            op.act_min, op.act_max, t_out.scale, t_out.zero_point, f"fully connected layer '{op.name}'"
        )
        w = self.m.tensor(
            f"{op.name}/weight", op.weight.shape, _INT8, w_scale, [0] * n_out, 0, data=op.weight.astype(np.int8)
        )
        bias = self.m.tensor(
            f"{op.name}/bias",
            (n_out,),
            _INT32,
            (np.float64(t_in.scale) * w_scale).astype(np.float32),
            [0] * n_out,
            0,
            data=op.bias.astype(np.int32),
        )
        self.m.op(
            "FULLY_CONNECTED",
            [self.act(op.inputs[0]), w, bias],
            [self.act(op.output)],
            ("FullyConnectedOptions", {"activation": act, "keep_num_dims": False}),
        )

    def maxpool(self, op: Any) -> None:
        t_in = self.g.tensors[op.inputs[0]]
        kernel, stride, pad = tuple(op.kernel), tuple(op.stride), tuple(op.padding)
        padding = _padding(t_in.shape[:2], kernel, stride, pad)
        x = self.act(op.inputs[0])
        if padding is None:
            # -128 never wins a max over a window that holds a real value: PyTorch's -inf.
            x, padding = self._pad(op, op.inputs[0], pad, -128), _VALID
        self.m.op(
            "MAX_POOL_2D",
            [x],
            [self.act(op.output)],
            (
                "Pool2DOptions",
                {
                    "padding": padding,
                    "stride_w": stride[1],
                    "stride_h": stride[0],
                    "filter_w": kernel[1],
                    "filter_h": kernel[0],
                    "activation": _ACT["NONE"],
                },
            ),
        )

    def avgpool(self, op: Any) -> None:
        t_in, t_out = self.g.tensors[op.inputs[0]], self.g.tensors[op.output]
        c = t_in.shape[2]
        act = _fused_activation(op.act_min, op.act_max, t_out.scale, t_out.zero_point, f"average pool '{op.name}'")
        opts = {"padding": _VALID, "stride_w": op.stride[1], "stride_h": op.stride[0], "activation": act}
        try:
            # Our kernel requantizes the window sum once by in / (out * kh * kw): a depthwise
            # convolution with weights 1 and that weight scale computes exactly that.
            w_scale = _weight_scale(int(op.multiplier), int(op.shift), t_in.scale, t_out.scale)
        except ExportError:
            w_scale = None
        if w_scale is not None:
            kernel = np.ones((1, *op.kernel, c), dtype=np.int8)
            w = self.m.tensor(f"{op.name}/weight", kernel.shape, _INT8, [w_scale] * c, [0] * c, 3, data=kernel)
            bias = self.m.tensor(
                f"{op.name}/bias",
                (c,),
                _INT32,
                [float(np.float32(np.float64(t_in.scale) * w_scale))] * c,
                [0] * c,
                0,
                data=np.zeros(c, dtype=np.int32),
            )
            self.m.op(
                "DEPTHWISE_CONV_2D",
                [self.act(op.inputs[0]), w, bias],
                [self.act(op.output)],
                ("DepthwiseConv2DOptions", {**opts, "depth_multiplier": 1, "dilation_w": 1, "dilation_h": 1}),
            )
            self.notes.append(
                f"average pool '{op.name}': a depthwise convolution with weights 1 "
                f"({kernel.size} bytes), exact where AVERAGE_POOL_2D + QUANTIZE "
                "would round twice"
            )
            return
        # TFLite's int8 average pool cannot rescale: pool at the input's quantization, then
        # requantize (two roundings: the result may differ from ours).
        mid = self.act(f"{op.name}/pooled", t_out.shape, t_in.scale, t_in.zero_point)
        self.m.op(
            "AVERAGE_POOL_2D",
            [self.act(op.inputs[0])],
            [mid],
            ("Pool2DOptions", {**opts, "filter_w": op.kernel[1], "filter_h": op.kernel[0]}),
        )
        self.m.op("QUANTIZE", [mid], [self.act(op.output)], ("QuantizeOptions", {}))
        self.notes.append(
            f"average pool '{op.name}': AVERAGE_POOL_2D then QUANTIZE (no float32 "
            "scale reproduces our multiplier; two roundings, outputs may differ)"
        )

    def add(self, op: Any) -> None:
        t_out = self.g.tensors[op.output]
        act = _fused_activation(op.act_min, op.act_max, t_out.scale, t_out.zero_point, f"add '{op.name}'")
        self.m.op(
            "ADD",
            [self.act(op.inputs[0]), self.act(op.inputs[1])],
            [self.act(op.output)],
            ("AddOptions", {"activation": act}),
        )

    def reshape(self, op: Any) -> None:
        new_shape = _shape(self.g.tensors[op.output].shape)
        shape = self.m.tensor(f"{op.name}/shape", (len(new_shape),), _INT32, data=np.array(new_shape, dtype=np.int32))
        self.m.op(
            "RESHAPE",
            [self.act(op.inputs[0]), shape],
            [self.act(op.output)],
            ("ReshapeOptions", {"new_shape": new_shape}),
        )

    def gather(self, op: Any) -> None:
        """A channel split / concatenation / shuffle: each input requantized to the output's
        quantization (:meth:`_lookup`; copied where it already has it), the inputs
        concatenated along the channels, and the output channels picked by a GATHER."""
        t_out = self.g.tensors[op.output]
        axis = len(t_out.shape)  # the channels: last axis of the batch-1 TFLite shape
        in_c = [self.g.tensors[name].shape[-1] for name in op.inputs]
        offset = np.cumsum([0, *in_c[:-1]])
        index = np.empty(t_out.shape[-1], np.int32)
        for k, i0, istep, o0, ostep, n in op.runs.tolist():
            index[o0 + ostep * np.arange(n)] = offset[k] + i0 + istep * np.arange(n)
        identity = len(index) == sum(in_c) and bool((index == np.arange(len(index))).all())
        out = self.act(op.output)
        last = identity and (len(op.inputs) > 1 or op.tables[0] is not None)
        parts = [
            self.act(name)
            if table is None
            else self._lookup(op, k, table, out if last and len(op.inputs) == 1 else None)
            for k, (name, table) in enumerate(zip(op.inputs, op.tables, strict=True))
        ]
        if len(parts) == 1:
            src = parts[0]
        else:
            src = (
                out
                if identity
                else self.act(f"{op.name}/concat", (*t_out.shape[:-1], sum(in_c)), t_out.scale, t_out.zero_point)
            )
            self.m.op("CONCATENATION", parts, [src], ("ConcatenationOptions", {"axis": axis, "activation": 0}))
        if last:
            return
        idx = self.m.tensor(f"{op.name}/channels", (len(index),), _INT32, data=index)
        self.m.op("GATHER", [src, idx], [out], ("GatherOptions", {"axis": axis, "batch_dims": 0}))

    def _lookup(self, op: Any, k: int, table: np.ndarray, out: int | None) -> int:
        """Input ``k`` through its 256-entry table of output codes, exactly as our kernel:
        CAST to int32, ADD 128, GATHER from the table (TFLite has no int8 lookup op, and its
        int8 QUANTIZE rounds by its own multiplier)."""
        t_in, t_out = self.g.tensors[op.inputs[k]], self.g.tensors[op.output]
        shape = _shape(t_in.shape)
        wide = self.m.tensor(f"{op.name}/in{k}/int32", shape, _INT32)
        self.m.op(
            "CAST", [self.act(op.inputs[k])], [wide], ("CastOptions", {"in_data_type": _INT8, "out_data_type": _INT32})
        )
        bias = self.m.tensor(f"{op.name}/in{k}/128", (), _INT32, data=np.array(128, np.int32))
        codes = self.m.tensor(f"{op.name}/in{k}/codes", shape, _INT32)
        self.m.op("ADD", [wide, bias], [codes], ("AddOptions", {"activation": 0}))
        lut = self.m.tensor(
            f"{op.name}/in{k}/table", (256,), _INT8, t_out.scale, t_out.zero_point, data=np.asarray(table, np.int8)
        )
        if out is None:
            out = self.act(f"{op.name}/in{k}", t_in.shape, t_out.scale, t_out.zero_point)
        self.m.op("GATHER", [lut, codes], [out], ("GatherOptions", {"axis": 0, "batch_dims": 0}))
        return out

    def softmax(self, op: Any) -> None:
        t_out = self.g.tensors[op.output]
        if (float(np.float32(t_out.scale)), t_out.zero_point) != (1.0 / 256, -128):
            raise ExportError(
                f".tflite export: softmax '{op.name}' has output scale "
                f"{t_out.scale:.6g} and zero point {t_out.zero_point}; TFLite's "
                "int8 softmax needs 1/256 and -128 (export the logits instead)"
            )
        self.m.op("SOFTMAX", [self.act(op.inputs[0])], [self.act(op.output)], ("SoftmaxOptions", {"beta": 1.0}))
        self.notes.append(f"softmax '{op.name}': TFLite's fixed-point exp; may differ from ours by a step")


def graph_to_tflite(g: Any) -> tuple[bytes, list[str]]:
    """A micro integer graph (:class:`tinytamer.micro.ir.Graph`) as .tflite bytes, and notes
    on every op whose TFLite form may round differently from our kernels."""
    ex = _Exporter(g)
    return ex.run().to_bytes(), ex.notes


def export_tflite(model: Any, example_input: Any, path: str | Path) -> dict[str, Any]:
    """Write a converted int8 model (GraphModule or QuantizedGraph of
    ``tinytamer.compress.int8``, or an integer graph) as an int8 .tflite file, atomically.

    ``example_input`` is one input batch (its first sample fixes the shapes).  Returns what
    was written: path, bytes, input/output quantization, the ops, and notes.
    """
    from tinytamer.micro.ir import Graph

    if isinstance(model, Graph):
        g = model
    else:
        from tinytamer.micro.lower import lower
        from tinytamer.qgraph import as_graph_module

        g = lower(as_graph_module(model), example_input[:1])
    data, notes = graph_to_tflite(g)
    path = Path(path)
    write_atomic(path, data)
    t_in, t_out = g.tensors[g.input], g.tensors[g.output]
    return {
        "path": str(path),
        "bytes": len(data),
        "graph": g,
        "input": {"shape": [1, *t_in.shape], "scale": t_in.scale, "zero_point": t_in.zero_point},
        "output": {"shape": [1, *t_out.shape], "scale": t_out.scale, "zero_point": t_out.zero_point},
        "ops": [type(op).__name__ for op in g.ops],
        "notes": notes,
    }
