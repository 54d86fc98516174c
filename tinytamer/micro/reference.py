"""The numpy integer reference: the oracle the generated C must match bit for bit.

Every op is computed in int64 numpy from the integer graph
(:mod:`tinytamer.micro.ir`) with the requantization of
:mod:`tinytamer.micro.fixedpoint`; no floating point touches a value.  Each op's
arithmetic is its ``reference`` in the op table (:mod:`tinytamer.micro.ops`).
"""

from __future__ import annotations

import numpy as np

from tinytamer.errors import ModelError
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops import op_def


def run_op(g: Graph, op: Op, args: list[np.ndarray]) -> np.ndarray:
    """One op's output from its int8 inputs (the op's own reference, from the op table)."""
    return op_def(op).reference(g, op, args)


def run(g: Graph, x: np.ndarray, *, keep_all: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """Run the graph on one int8 input in the graph's layout (HWC or a vector).

    Returns the output, or with ``keep_all`` every tensor by name (for per-layer parity).
    """
    x = np.asarray(x)
    shape = g.tensors[g.input].shape
    if x.dtype != np.int8 or x.shape != shape:
        raise ModelError(f"integer reference: input must be int8 of shape {shape}, got {x.dtype} {x.shape}")
    values = {g.input: x}
    for op in g.ops:
        out = run_op(g, op, [values[n] for n in op.inputs])
        expect = g.tensors[op.output].shape
        if out.shape != expect:
            raise ModelError(f"integer reference: op '{op.name}' produced shape {out.shape}, the graph says {expect}")
        values[op.output] = out
    return values if keep_all else values[g.output]
