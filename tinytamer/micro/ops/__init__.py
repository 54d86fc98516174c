"""The device op table: one :class:`~tinytamer.micro.ops.base.DeviceOp` per integer op.

Adding an op: one module here (its IR record and its DeviceOp, registered in ``OPS``), one
kernel file in ``runtime/`` (with its prototypes in tt_kernels.h) and one test in
tests/test_micro_ops.py (its reference against its C kernel).
"""

from __future__ import annotations

from tinytamer.errors import ModelError
from tinytamer.micro.ir import Op
from tinytamer.micro.ops.add import Add, AddOp
from tinytamer.micro.ops.base import DeviceOp
from tinytamer.micro.ops.conv import Conv2D, ConvOp
from tinytamer.micro.ops.dense import Dense, DenseOp
from tinytamer.micro.ops.gather import Gather, GatherOp
from tinytamer.micro.ops.pool import AvgPool, AvgPoolOp, MaxPool, MaxPoolOp
from tinytamer.micro.ops.reshape import Reshape, ReshapeOp
from tinytamer.micro.ops.softmax import Softmax, SoftmaxOp
from tinytamer.micro.ops.upsample import Upsample, UpsampleOp

OPS: dict[type[Op], DeviceOp] = {
    d.ir: d
    for d in (
        ConvOp(),
        DenseOp(),
        MaxPoolOp(),
        AvgPoolOp(),
        AddOp(),
        SoftmaxOp(),
        ReshapeOp(),
        GatherOp(),
        UpsampleOp(),
    )
}


def op_def(op: Op) -> DeviceOp:
    """The table row of an integer-graph op."""
    d = OPS.get(type(op))
    if d is None:
        raise ModelError(
            f"micro: no device op '{type(op).__name__}' (layer '{op.name}'); "
            f"the table has {sorted(t.__name__ for t in OPS)}"
        )
    return d


def kernel_files() -> list[str]:
    """Every op's kernel sources, each once, in table order."""
    return list(dict.fromkeys(f for d in OPS.values() for f in d.kernel_files))


__all__ = [
    "OPS",
    "Add",
    "AvgPool",
    "Conv2D",
    "Dense",
    "DeviceOp",
    "Gather",
    "MaxPool",
    "Reshape",
    "Softmax",
    "Upsample",
    "kernel_files",
    "op_def",
]
