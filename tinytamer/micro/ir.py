"""The integer graph: what the device runs, op by op, in the device's layout.

Activations are int8 with a per-tensor (scale, zero point); feature maps are
laid out HWC (channels innermost, as CMSIS-NN and TFLite Micro do, so a
convolution's inner product walks contiguous memory); vectors are 1-D.  Weights
are int8 in the kernels' layout (convolution OHWI, depthwise HWC, dense
[out, in] with its columns already permuted for an HWC flatten), biases int32
in units of ``in_scale * w_scale[c]``, and every rescale is a (Q31 multiplier,
shift) pair from :mod:`tinytamer.micro.fixedpoint`.  A fused ReLU/ReLU6 is the
``act_min``/``act_max`` clamp of its producer.

The graph is batch 1; the same graph feeds the numpy reference
(:mod:`tinytamer.micro.reference`) and the C generator
(:mod:`tinytamer.micro.codegen`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinytamer.errors import ModelError


@dataclass
class TensorInfo:
    """An int8 activation: ``shape`` is (H, W, C) for feature maps or (N,) for vectors."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Op:
    """Base of every op: a name (the source layer) and tensor names in and out."""

    name: str
    inputs: list[str]
    output: str


@dataclass
class Conv2D(Op):
    """Convolution (groups == 1, grouped, or depthwise when groups == in == out channels)."""

    weight: np.ndarray  # int8 [OC, KH, KW, IC/groups]
    bias: np.ndarray  # int32 [OC]
    multiplier: np.ndarray  # int32 [OC]
    shift: np.ndarray  # int32 [OC]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    act_min: int
    act_max: int
    schedule: dict = field(default_factory=dict)  # kernel knobs chosen by the tuner

    @property
    def depthwise(self) -> bool:
        oc, _, _, icg = self.weight.shape
        return self.groups > 1 and icg == 1 and oc == self.groups


@dataclass
class Dense(Op):
    weight: np.ndarray  # int8 [OUT, IN] (IN in the HWC order of the input buffer)
    bias: np.ndarray  # int32 [OUT]
    multiplier: np.ndarray  # int32 [OUT]
    shift: np.ndarray  # int32 [OUT]
    act_min: int
    act_max: int
    schedule: dict = field(default_factory=dict)


@dataclass
class MaxPool(Op):
    """Max pool; the output keeps the input's scale and zero point."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class AvgPool(Op):
    """Average pool without padding (global when the kernel is the whole map), requantized."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    multiplier: int
    shift: int
    act_min: int
    act_max: int


@dataclass
class Add(Op):
    """Residual add with both inputs rescaled to a common scale (TFLite's int8 ADD)."""

    left_shift: int
    in1_multiplier: int
    in1_shift: int
    in2_multiplier: int
    in2_shift: int
    out_multiplier: int
    out_shift: int
    act_min: int
    act_max: int


@dataclass
class Softmax(Op):
    """Softmax over a vector, TensorFlow Lite's int8 lookup-table form (its optimized
    ``SoftmaxInt8LUT``): ``table[d]`` = round(2^30 exp(-in_scale d)) is exp of the difference
    d = max - x in input steps, computed once when the graph is built; the output
    round(table[d] * multiplier / (sum * 2^16)) + zero point uses ``multiplier`` =
    round(2^16 / out_scale).  Integer arithmetic only on the device."""

    table: np.ndarray  # int64 [256]
    multiplier: int
    act_min: int
    act_max: int


@dataclass
class Reshape(Op):
    """Flatten/reshape: the output aliases the input's buffer (no code, no copy)."""


@dataclass
class Graph:
    """Ops in execution order over named int8 tensors; one input, one output."""

    tensors: dict[str, TensorInfo]
    ops: list[Op]
    input: str
    output: str
    meta: dict = field(default_factory=dict)

    def consumers(self, tensor: str) -> list[Op]:
        return [op for op in self.ops if tensor in op.inputs]

    def validate(self) -> None:
        """Check that every op reads tensors that exist and were produced before it."""
        ready = {self.input}
        for op in self.ops:
            for t in op.inputs:
                if t not in ready:
                    raise ModelError(f"integer graph: op '{op.name}' reads '{t}' before it exists")
            if op.output not in self.tensors:
                raise ModelError(f"integer graph: op '{op.name}' writes unknown tensor '{op.output}'")
            if op.output in ready:
                raise ModelError(f"integer graph: tensor '{op.output}' is written twice")
            ready.add(op.output)
        if self.output not in ready:
            raise ModelError(f"integer graph: output '{self.output}' is never produced")

    def conv_out_hw(self, op: Conv2D | MaxPool | AvgPool) -> tuple[int, int]:
        h, w, _ = self.tensors[op.inputs[0]].shape
        if isinstance(op, Conv2D):
            kh, kw = op.weight.shape[1:3]
            ph, pw = op.padding
        else:
            kh, kw = op.kernel
            ph, pw = op.padding if isinstance(op, MaxPool) else (0, 0)
        sh, sw = op.stride
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def macs(self) -> int:
        total = 0
        for op in self.ops:
            if isinstance(op, Conv2D):
                oh, ow = self.conv_out_hw(op)
                total += oh * ow * int(np.prod(op.weight.shape))
            elif isinstance(op, Dense):
                total += int(op.weight.size)
        return total
