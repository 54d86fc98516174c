"""Sparse positions as relative indices with filler entries (Deep Compression, Fig. 3).

Han, Mao & Dally 2016, "Deep Compression", Sec. 2: a pruned layer stores only
its non-zero weights, each with the *difference* to the previous non-zero
position in ``index_bits`` bits (the paper uses 8 bits for conv and 5 for fc
layers).  When a gap exceeds what ``index_bits`` can say, a *filler* entry is
inserted ``2**index_bits`` positions further on; its value is zero.

Here a stored entry's code ``r`` means "this entry is ``r + 1`` positions after
the previous one" (the first after position -1), so codes span ``[0,
2**index_bits)`` and a filler is the code ``2**index_bits - 1``.  Filler
entries sit on positions where the tensor is zero, so the caller simply stores
the tensor's value at every returned slot - fillers carry a zero by
construction.
"""

from __future__ import annotations

import numpy as np

from tinytamer.errors import CodecError


def _gaps(positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    gaps = np.diff(positions, prepend=-1)
    if gaps.size and gaps.min() < 1:
        raise ValueError("positions must be strictly increasing and non-negative")
    return gaps


def entry_count(positions: np.ndarray, index_bits: int) -> int:
    """Entries (non-zeros plus fillers) :func:`encode` produces, without building them."""
    return int(entry_counts(positions, index_bits)[index_bits - 1])


def entry_counts(positions: np.ndarray, max_bits: int) -> np.ndarray:
    """:func:`entry_count` for every ``index_bits`` in ``1..max_bits`` (element ``b - 1``)."""
    gaps = _gaps(positions) - 1
    return np.array([gaps.size + int((gaps >> b).sum()) for b in range(1, max_bits + 1)])


def encode(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative codes and the slots they address (non-zero positions plus fillers).

    Returns ``(codes, slots)``: ``codes`` are integers in ``[0, 2**index_bits)``;
    ``slots`` are the flat positions of all entries in order, a superset of
    ``positions`` (the extra ones are the fillers).
    """
    if not 1 <= index_bits <= 32:
        raise ValueError(f"index_bits must be in [1, 32], got {index_bits}")
    span = 1 << index_bits
    gaps = _gaps(positions)
    per_gap = 1 + (gaps - 1) // span  # fillers needed + the entry itself
    codes = np.full(int(per_gap.sum()), span - 1, dtype=np.int64)
    last = np.cumsum(per_gap) - 1  # each gap's own entry comes after its fillers
    codes[last] = gaps - (per_gap - 1) * span - 1
    return codes, decode(codes)


def decode(codes: np.ndarray) -> np.ndarray:
    """Flat slot of every entry from the relative codes (inverse of :func:`encode`)."""
    return np.cumsum(np.asarray(codes, dtype=np.int64) + 1) - 1


def check_slots(slots: np.ndarray, numel: int, where: str) -> None:
    """Raise :class:`CodecError` when decoded slots run past the tensor."""
    if slots.size and slots[-1] >= numel:
        raise CodecError(f"{where}: sparse positions run to {int(slots[-1])}, past the {numel} elements")
