"""Fixed-width bit packing of unsigned integers (MSB first), vectorized with numpy."""

from __future__ import annotations

import numpy as np

from tinytamer.errors import CodecError

_CHUNK = 1 << 16


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack integers in ``[0, 2**bits)`` into ``ceil(n * bits / 8)`` bytes, most significant bit first."""
    v = np.asarray(values).astype(np.uint64).reshape(-1)
    if not 0 <= bits <= 64:
        raise ValueError(f"bit width must be in [0, 64], got {bits}")
    if bits == 0 or v.size == 0:
        return b""
    if bits < 64 and v.max() >> np.uint64(bits):
        raise ValueError(f"a value does not fit in {bits} bits: {int(v.max())}")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    # Chunks of a multiple of 8 values end on a byte boundary; they bound the
    # (values x bits) bit matrix to a few MB.
    out = []
    for lo in range(0, v.size, _CHUNK):
        bitmat = ((v[lo : lo + _CHUNK, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        out.append(np.packbits(bitmat.reshape(-1)).tobytes())
    return b"".join(out)


def packed_size(count: int, bits: int) -> int:
    """Bytes :func:`pack` writes for ``count`` values of ``bits`` bits."""
    return (count * bits + 7) // 8


def unpack(data: bytes | memoryview, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``count`` unsigned integers (uint64) of ``bits`` bits each."""
    if bits == 0 or count == 0:
        return np.zeros(count, dtype=np.uint64)
    need = packed_size(count, bits)
    if len(data) != need:
        raise CodecError(f"bit stream holds {len(data)} bytes; {count} values of {bits} bits need {need}")
    raw = np.frombuffer(data, dtype=np.uint8)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    out = np.empty(count, dtype=np.uint64)
    for lo in range(0, count, _CHUNK):
        n = min(_CHUNK, count - lo)
        chunk = raw[lo * bits // 8 : (lo * bits + n * bits + 7) // 8]
        bitmat = np.unpackbits(chunk, count=n * bits).reshape(n, bits).astype(np.uint64)
        out[lo : lo + n] = (bitmat << shifts).sum(axis=1, dtype=np.uint64)
    return out
