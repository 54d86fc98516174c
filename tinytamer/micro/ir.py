"""The integer graph: what the device runs, op by op, in the device's layout.

Activations are int8 with a per-tensor (scale, zero point); feature maps are
laid out HWC (channels innermost, as CMSIS-NN and TFLite Micro do, so a
convolution's inner product walks contiguous memory); vectors are 1-D.  Weights
are int8 in the kernels' layout (convolution OHWI, depthwise HWC, dense
[out, in] with its columns already permuted for an HWC flatten), biases int32
in units of ``in_scale * w_scale[c]``, and every rescale is a (Q31 multiplier,
shift) pair from :mod:`tinytamer.micro.fixedpoint`.  A fused ReLU/ReLU6 is the
``act_min``/``act_max`` clamp of its producer.

Each op's record (Conv2D, Dense, ...) is defined with the rest of that op in
:mod:`tinytamer.micro.ops`, the device op table.  The graph is batch 1; the same
graph feeds the numpy reference (:mod:`tinytamer.micro.reference`) and the C
generator (:mod:`tinytamer.micro.codegen`).
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

    def macs(self) -> int:
        from tinytamer.micro.ops import op_def

        return sum(op_def(op).cost(self, op) for op in self.ops)


# The op records live with their ops (tinytamer.micro.ops); they stay importable from here.
_OP_RECORDS = ("Add", "AvgPool", "Conv2D", "Dense", "MaxPool", "Reshape", "Softmax")


def __getattr__(name: str):
    if name in _OP_RECORDS:
        from tinytamer.micro import ops

        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
