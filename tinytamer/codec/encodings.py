"""The coded forms a tensor can take in a compressed model file, each exact.

Every encoding turns a tensor into a few byte *parts* plus JSON-able
parameters, and back.  The file keeps shape and dtype; an encoding that does
not apply to a tensor raises :class:`NotApplicable` with the reason.

- ``dense``: the raw little-endian bytes.
- ``sparse``: non-zero positions as relative indices with fillers
  (:mod:`tinytamer.codec.sparse`) in the narrowest-total ``index_bits``, plus
  the raw values at those slots.
- ``codebook``: the distinct values once (Deep Compression's shared weights:
  Han et al. 2016, Sec. 3) and a fixed-width index per element - or, when the
  tensor is pruned and it is smaller, per sparse slot plus relative positions.
- ``huffman``: ``codebook`` with both the index and the position streams
  Huffman coded (Han et al. 2016, Sec. 4; :mod:`tinytamer.codec.huffman`).
- ``ternary``: trained ternary weights {-Wn, 0, +Wp} as 2-bit codes plus the two scales.
- ``fixedpoint``: values that are all ``k * 2**-fl`` for integers ``k`` of
  ``bits`` bits (dynamic fixed point), stored as those integers.
- ``qint``: a linear-quantized layer's weight, ``q * s_c`` with integers ``q`` and
  one scale ``s_c`` per output channel (``tinytamer.compress.int8``'s per-channel
  symmetric weights): the float32 scales, then the integers as ``bits``-bit two's
  complement (``bits`` the narrowest of 2..8 that holds them), densely or - when
  it is smaller - at the non-zero slots only, with relative positions as ``sparse``.
  The decoder computes ``float32(q) * s_c`` in float32, the layer's own arithmetic.
  It applies only where the caller passes the layer's scales (``codec.save`` does
  for every quantized conv / linear); :func:`qint_scales` reads the scales alone (the
  file stores the layer's ``w_scale`` buffer as a reference to them).

Zeros are stored as zeros: a ``-0.0`` in a sparse or shared tensor comes back
as ``+0.0`` (equal under ``torch.equal``, and in every product and sum).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tinytamer.codec import bits as bitpack
from tinytamer.codec import huffman, sparse
from tinytamer.errors import CodecError

DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
}
MAX_CODEBOOK = 4096  # beyond this many distinct values an index costs 13+ bits: use fixedpoint
MAX_INDEX_BITS = 12  # widest relative index tried
_PREFIX = 1 << 16


class NotApplicable(Exception):
    """This encoding cannot represent this tensor exactly (the message says why)."""


@dataclass
class Encoded:
    """A tensor in coded form: its encoding's name, parameters and byte parts."""

    encoding: str
    params: dict[str, Any] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.parts)


def dtype_name(dtype: torch.dtype) -> str:
    """The file's name for a torch dtype."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise CodecError(f"tensors of dtype {name} cannot be stored (supported: {', '.join(DTYPES)})")
    return name


# -- helpers -----------------------------------------------------------------------------------


def _raw(t: Tensor) -> bytes:
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().tobytes()


def _from_raw(data: bytes | memoryview, dtype: torch.dtype, count: int) -> Tensor:
    store = torch.uint8 if dtype == torch.bool else dtype
    itemsize = torch.empty(0, dtype=store).element_size()
    if len(data) != count * itemsize:
        raise CodecError(f"raw part holds {len(data)} bytes; {count} values need {count * itemsize}")
    if count == 0:
        return torch.empty(0, dtype=dtype)
    out = torch.frombuffer(bytearray(data), dtype=store)
    return out.to(torch.bool) if dtype == torch.bool else out


def _floats(t: Tensor) -> np.ndarray:
    if not t.is_floating_point():
        raise NotApplicable(f"it holds {dtype_name(t.dtype)} values, not floating point")
    # + 0.0 turns -0.0 into +0.0, so a zero is one codebook entry and one sparse "gap".
    return t.detach().reshape(-1).to(torch.float64).numpy() + 0.0


def _int(params: dict, key: str, lo: int, hi: int) -> int:
    """A parameter read from a file: an integer (not a bool, float or string) in ``[lo, hi]``."""
    value = params.get(key)
    if type(value) is not int or not lo <= value <= hi:
        raise CodecError(f"parameter '{key}' is {str(value)[:40]}; an integer in [{lo}, {hi}] expected")
    return value


def _parts(parts: list[memoryview], n: int) -> list[memoryview]:
    if len(parts) != n:
        raise CodecError(f"expected {n} parts, found {len(parts)}")
    return parts


def _best_index_bits(positions: np.ndarray, value_bits: int) -> tuple[int, int]:
    """The relative-index width minimizing ``entries * (index_bits + value_bits)``, and that cost."""
    counts = sparse.entry_counts(positions, MAX_INDEX_BITS)
    costs = counts * (np.arange(1, MAX_INDEX_BITS + 1) + value_bits)
    best = int(np.argmin(costs))
    return best + 1, int(costs[best])


# -- dense -------------------------------------------------------------------------------------


def _dense_encode(t: Tensor, limit: int | None = None, scales: Tensor | None = None) -> Encoded:
    return Encoded("dense", {}, [_raw(t)])


def _dense_decode(params: dict, parts: list[memoryview], shape: list[int], dtype: torch.dtype) -> Tensor:
    return _from_raw(_parts(parts, 1)[0], dtype, math.prod(shape))


# -- sparse ------------------------------------------------------------------------------------


def _nonzero_positions(t: Tensor) -> np.ndarray:
    if t.dtype == torch.bool:
        raise NotApplicable("it is a bool tensor")
    return torch.nonzero(t.detach().reshape(-1)).reshape(-1).numpy()


def _sparse_encode(t: Tensor, limit: int | None = None, scales: Tensor | None = None) -> Encoded:
    positions = _nonzero_positions(t)
    item = t.element_size() * 8
    if limit is not None and positions.size * t.element_size() >= limit:
        raise NotApplicable(f"its {positions.size} non-zero values alone take {limit}+ bytes")
    index_bits, _ = _best_index_bits(positions, item)
    codes, slots = sparse.encode(positions, index_bits)
    values = t.detach().reshape(-1)[torch.from_numpy(slots)]
    return Encoded(
        "sparse",
        {"index_bits": index_bits, "entries": int(codes.size)},
        [bitpack.pack(codes, index_bits), _raw(values)],
    )


def _sparse_decode(params: dict, parts: list[memoryview], shape: list[int], dtype: torch.dtype) -> Tensor:
    numel = math.prod(shape)
    pos_part, val_part = _parts(parts, 2)
    # Each entry is a distinct slot of the tensor: no more entries than elements.
    entries = _int(params, "entries", 0, numel)
    slots = sparse.decode(bitpack.unpack(pos_part, _int(params, "index_bits", 1, MAX_INDEX_BITS), entries))
    sparse.check_slots(slots, numel, "sparse tensor")
    out = torch.zeros(numel, dtype=dtype)
    out[torch.from_numpy(slots)] = _from_raw(val_part, dtype, entries)
    return out


# -- codebook / huffman --------------------------------------------------------------------------


def _codebook(t: Tensor) -> tuple[np.ndarray, np.ndarray]:
    if t.numel() > _PREFIX and np.unique(_floats(t.reshape(-1)[:_PREFIX])).size > MAX_CODEBOOK:
        # A prefix with too many distinct values settles it without sorting the whole tensor.
        raise NotApplicable(f"it has more than {MAX_CODEBOOK} distinct values")
    values = _floats(t)
    if not values.size:
        raise NotApplicable("it is empty")
    if not np.isfinite(values).all():
        raise NotApplicable("it holds inf or NaN")
    book, index = np.unique(values, return_inverse=True)
    if book.size > MAX_CODEBOOK:
        raise NotApplicable(f"it has {book.size} distinct values (a codebook holds at most {MAX_CODEBOOK})")
    return book, index.reshape(-1)


def _book_bytes(book: np.ndarray, dtype: torch.dtype) -> bytes:
    return _raw(torch.from_numpy(book).to(dtype))


def _codebook_encode(t: Tensor, limit: int | None = None, scales: Tensor | None = None) -> Encoded:
    book, index = _codebook(t)
    bits = max(1, math.ceil(math.log2(book.size)))
    positions = np.flatnonzero(index != np.searchsorted(book, 0.0)) if 0.0 in book else None
    params: dict[str, Any] = {"k": int(book.size), "bits": bits, "index_bits": 0}
    dense_bits = index.size * bits
    if positions is not None:
        index_bits, sparse_bits = _best_index_bits(positions, bits)
        if sparse_bits < dense_bits:
            codes, slots = sparse.encode(positions, index_bits)
            params.update(index_bits=index_bits, entries=int(codes.size))
            return Encoded(
                "codebook",
                params,
                [_book_bytes(book, t.dtype), bitpack.pack(codes, index_bits), bitpack.pack(index[slots], bits)],
            )
    return Encoded("codebook", params, [_book_bytes(book, t.dtype), b"", bitpack.pack(index, bits)])


def _huffman_encode(t: Tensor, limit: int | None = None, scales: Tensor | None = None) -> Encoded:
    book, index = _codebook(t)
    k = int(book.size)
    best_bits = huffman.encoded_size(np.bincount(index, minlength=k))
    best_index_bits = 0
    if 0.0 in book:
        zero = int(np.searchsorted(book, 0.0))
        positions = np.flatnonzero(index != zero)
        for b in range(1, MAX_INDEX_BITS + 1):
            codes, slots = sparse.encode(positions, b)
            size = huffman.encoded_size(np.bincount(codes, minlength=1 << b)) + huffman.encoded_size(
                np.bincount(index[slots], minlength=k)
            )
            if size < best_bits:
                best_bits, best_index_bits = size, b
    params: dict[str, Any] = {"k": k, "index_bits": best_index_bits}
    if best_index_bits:
        codes, slots = sparse.encode(positions, best_index_bits)
        return Encoded(
            "huffman",
            params,
            [_book_bytes(book, t.dtype), huffman.encode(codes, 1 << best_index_bits), huffman.encode(index[slots], k)],
        )
    return Encoded("huffman", params, [_book_bytes(book, t.dtype), b"", huffman.encode(index, k)])


def _book_decode(book: Tensor, slots: np.ndarray | None, index: np.ndarray, numel: int) -> Tensor:
    if index.size and int(index.max()) >= book.numel():
        raise CodecError(f"an index ({int(index.max())}) points past the {book.numel()}-entry codebook")
    values = book[torch.from_numpy(index.astype(np.int64))]
    if slots is None:
        if values.numel() != numel:
            raise CodecError(f"{values.numel()} indices for {numel} elements")
        return values
    sparse.check_slots(slots, numel, "shared tensor")
    out = torch.zeros(numel, dtype=book.dtype)
    out[torch.from_numpy(slots)] = values
    return out


def _codebook_decode(params: dict, parts: list[memoryview], shape: list[int], dtype: torch.dtype) -> Tensor:
    numel = math.prod(shape)
    book_part, pos_part, idx_part = _parts(parts, 3)
    book = _from_raw(book_part, dtype, _int(params, "k", 1, MAX_CODEBOOK))
    bits = _int(params, "bits", 1, math.ceil(math.log2(MAX_CODEBOOK)))
    index_bits = _int(params, "index_bits", 0, MAX_INDEX_BITS)
    if not index_bits:
        return _book_decode(book, None, bitpack.unpack(idx_part, bits, numel), numel)
    entries = _int(params, "entries", 0, numel)
    slots = sparse.decode(bitpack.unpack(pos_part, index_bits, entries))
    return _book_decode(book, slots, bitpack.unpack(idx_part, bits, entries), numel)


def _huffman_decode(params: dict, parts: list[memoryview], shape: list[int], dtype: torch.dtype) -> Tensor:
    numel = math.prod(shape)
    book_part, pos_part, idx_part = _parts(parts, 3)
    book = _from_raw(book_part, dtype, _int(params, "k", 1, MAX_CODEBOOK))
    index_bits = _int(params, "index_bits", 0, MAX_INDEX_BITS)
    # A stream's symbol count is held to the tensor's size before anything is decoded.
    index = huffman.decode(idx_part, max_count=numel)
    if not index_bits:
        return _book_decode(book, None, index, numel)
    slots = sparse.decode(huffman.decode(pos_part, max_count=numel))
    if slots.size != index.size:
        raise CodecError(f"{slots.size} positions but {index.size} indices")
    return _book_decode(book, slots, index, numel)


# -- ternary -----------------------------------------------------------------------------------


def _ternary_encode(t: Tensor, limit: int | None = None, scales: Tensor | None = None) -> Encoded:
    book, index = _codebook(t)
    pos, neg = book[book > 0], book[book < 0]
    if book.size > 3 or pos.size > 1 or neg.size > 1:
        raise NotApplicable(f"its values are not in {{-Wn, 0, +Wp}} ({book.size} distinct values)")
    scales = torch.from_numpy(np.array([pos[0] if pos.size else 0.0, neg[0] if neg.size else 0.0]))
    codes = np.zeros(index.size, dtype=np.int64)  # 0: zero, 1: +Wp, 2: -Wn
    values = book[index]
    codes[values > 0] = 1
    codes[values < 0] = 2
    return Encoded("ternary", {}, [_raw(scales.to(t.dtype)), bitpack.pack(codes, 2)])


def _ternary_decode(params: dict, parts: list[memoryview], shape: list[int], dtype: torch.dtype) -> Tensor:
    numel = math.prod(shape)
    scale_part, code_part = _parts(parts, 2)
    pos, neg = _from_raw(scale_part, dtype, 2)
    codes = bitpack.unpack(code_part, 2, numel)
    if codes.size and codes.max() > 2:
        raise CodecError("ternary codes hold the unused code 3")
    book = torch.stack([torch.zeros((), dtype=dtype), pos, neg])
    return book[torch.from_numpy(codes.astype(np.int64))]


# -- fixed point -------------------------------------------------------------------------------

MAX_FIXED_BITS = 32


def _fixed_format(values: np.ndarray) -> tuple[int, int]:
    """Smallest (fractional length, integer bits) that hold every value exactly (bits may exceed 32)."""
    nz = values[values != 0]
    fl = 0
    if nz.size:
        # Every float is m * 2**e with an integer m (53 bits for float64); the lowest set bit
        # of m says how many fractional bits that value needs.
        mant, exp = np.frexp(nz)
        m = np.abs(np.ldexp(mant, 53)).astype(np.int64)
        lowest = np.log2((m & -m).astype(np.float64)).astype(np.int64) + exp.astype(np.int64) - 53
        fl = int(-lowest.min())
    ints = np.ldexp(values, fl)
    lo, hi = (float(ints.min()), float(ints.max())) if ints.size else (0.0, 0.0)
    bits = 1
    while bits <= MAX_FIXED_BITS and not (-(2.0 ** (bits - 1)) <= lo and hi <= 2.0 ** (bits - 1) - 1):
        bits += 1
    return fl, bits


def _fixedpoint_encode(t: Tensor, limit: int | None = None, scales: Tensor | None = None) -> Encoded:
    flat = t.reshape(-1)
    # A prefix needs at most the fractional length and range of the whole: its bits are a
    # lower bound that often settles the question cheaply.
    for part in ([flat[:_PREFIX]] if flat.numel() > _PREFIX else []) + [flat]:
        values = _floats(part)
        if not np.isfinite(values).all():
            raise NotApplicable("it holds inf or NaN")
        fl, bits = _fixed_format(values)
        if bits > MAX_FIXED_BITS:
            raise NotApplicable(f"its values need more than {MAX_FIXED_BITS}-bit integers at {fl} fractional bits")
        if limit is not None and bitpack.packed_size(flat.numel(), bits) >= limit:
            raise NotApplicable(f"{bits}-bit integers take {limit}+ bytes")
    stored = (np.ldexp(values, fl).astype(np.int64) + (1 << (bits - 1))).astype(np.uint64)
    return Encoded("fixedpoint", {"bits": bits, "fl": fl}, [bitpack.pack(stored, bits)])


def _fixedpoint_decode(params: dict, parts: list[memoryview], shape: list[int], dtype: torch.dtype) -> Tensor:
    numel = math.prod(shape)
    # Exact float64 values need fractional lengths in [-971, 1074]: 2000 is a generous bound.
    bits, fl = _int(params, "bits", 1, MAX_FIXED_BITS), _int(params, "fl", -2000, 2000)
    stored = bitpack.unpack(_parts(parts, 1)[0], bits, numel).astype(np.int64) - (1 << (bits - 1))
    return torch.from_numpy(np.ldexp(stored.astype(np.float64), -fl)).to(dtype)


# -- linear-quantized integers ------------------------------------------------------------------

QINT_BITS = (2, 8)  # the widths compress.int8 quantizes weights to


def _qint_encode(t: Tensor, limit: int | None = None, scales: Tensor | None = None) -> Encoded:
    if scales is None:
        raise NotApplicable("no per-channel scales are known for it (it is not a quantized layer's weight)")
    if t.dtype != torch.float32 or t.dim() < 1 or not t.numel():
        raise NotApplicable("it is not a non-empty float32 tensor with output channels")
    channels = t.shape[0]
    scales = scales.detach().cpu().reshape(-1)
    if scales.dtype != torch.float32 or scales.numel() != channels:
        raise NotApplicable(f"{scales.numel()} {dtype_name(scales.dtype)} scales for {channels} output channels")
    rows = t.reshape(channels, -1)
    q = torch.round(rows / scales[:, None])
    lo, hi = (-(1 << (QINT_BITS[1] - 1)), (1 << (QINT_BITS[1] - 1)) - 1)
    # The decoder's arithmetic (float32 integer x float32 scale) must give every value back.
    if not (torch.isfinite(q).all() and q.min() >= lo and q.max() <= hi and torch.equal(q * scales[:, None], rows)):
        raise NotApplicable(f"its values are not {QINT_BITS[1]}-bit integers times its channels' scales")
    ints = q.to(torch.int64).reshape(-1).numpy()
    bits = next(
        b for b in range(QINT_BITS[0], QINT_BITS[1] + 1) if -(1 << (b - 1)) <= ints.min() and ints.max() < 1 << (b - 1)
    )
    stored = (ints % (1 << bits)).astype(np.uint64)  # two's complement in `bits` bits
    params: dict[str, Any] = {"bits": bits, "channels": channels, "index_bits": 0}
    positions = np.flatnonzero(ints)
    if positions.size < ints.size:
        index_bits, sparse_bits = _best_index_bits(positions, bits)
        if sparse_bits < ints.size * bits:
            codes, slots = sparse.encode(positions, index_bits)
            params.update(index_bits=index_bits, entries=int(codes.size))
            return Encoded(
                "qint", params, [_raw(scales), bitpack.pack(codes, index_bits), bitpack.pack(stored[slots], bits)]
            )
    return Encoded("qint", params, [_raw(scales), b"", bitpack.pack(stored, bits)])


def _qint_channels(params: dict, scale_part: memoryview, shape: list[int], dtype: torch.dtype) -> int:
    if dtype != torch.float32 or not shape:
        raise CodecError(f"'qint' holds float32 tensors with output channels, not {dtype_name(dtype)} of shape {shape}")
    channels = shape[0]
    if params.get("channels") != channels or len(scale_part) != 4 * channels:
        raise CodecError(
            f"it declares {str(params.get('channels'))[:40]} channels and holds {len(scale_part) // 4} scales "
            f"for the {channels} output channels of shape {shape}"
        )
    return channels


def qint_scales(params: dict[str, Any], parts: list[memoryview], shape: list[int]) -> Tensor:
    """The float32 per-channel scales a ``qint`` tensor of ``shape`` holds; malformed data raises CodecError."""
    scale_part = _parts(parts, 3)[0]
    return _from_raw(scale_part, torch.float32, _qint_channels(params, scale_part, shape, torch.float32))


def _qint_decode(params: dict, parts: list[memoryview], shape: list[int], dtype: torch.dtype) -> Tensor:
    scale_part, pos_part, int_part = _parts(parts, 3)
    channels = _qint_channels(params, scale_part, shape, dtype)
    numel = math.prod(shape)
    bits = _int(params, "bits", *QINT_BITS)
    index_bits = _int(params, "index_bits", 0, MAX_INDEX_BITS)
    if not index_bits and len(pos_part):
        raise CodecError(f"a dense 'qint' tensor holds {len(pos_part)} bytes of positions")
    count = _int(params, "entries", 0, numel) if index_bits else numel
    # unpack checks each stream's length against the declared count before it allocates
    stored = bitpack.unpack(int_part, bits, count).astype(np.int64)
    values = torch.from_numpy(np.where(stored >= 1 << (bits - 1), stored - (1 << bits), stored)).to(torch.float32)
    if index_bits:
        slots = sparse.decode(bitpack.unpack(pos_part, index_bits, count))
        sparse.check_slots(slots, numel, "quantized tensor")
        values = torch.zeros(numel, dtype=torch.float32).index_put_((torch.from_numpy(slots),), values)
    scales = _from_raw(scale_part, torch.float32, channels)
    return (values.reshape(channels, -1) * scales[:, None]).reshape(-1)


# limit: a size in bytes the caller already has; an encoder that sees early that it
# cannot beat it may give up (NotApplicable) instead of finishing the work.  scales: the
# per-output-channel scales the tensor's layer computes with, where the caller knows them
# (a linear-quantized layer's weight); only "qint" uses them.
Encoder = Callable[[Tensor, int | None, Tensor | None], Encoded]
Decoder = Callable[[dict, list[memoryview], list[int], torch.dtype], Tensor]

ENCODINGS: dict[str, tuple[Encoder, Decoder]] = {
    "dense": (_dense_encode, _dense_decode),
    "sparse": (_sparse_encode, _sparse_decode),
    "codebook": (_codebook_encode, _codebook_decode),
    "huffman": (_huffman_encode, _huffman_decode),
    "ternary": (_ternary_encode, _ternary_decode),
    "fixedpoint": (_fixedpoint_encode, _fixedpoint_decode),
    "qint": (_qint_encode, _qint_decode),
}


def encode(t: Tensor, encoding: str, limit: int | None = None, scales: Tensor | None = None) -> Encoded:
    """Encode ``t`` with ``encoding``; :class:`NotApplicable` when it cannot be exact.

    With ``limit`` (bytes), an encoding that will clearly not be smaller may also
    raise :class:`NotApplicable` early.  ``scales``: the per-output-channel scales of
    a linear-quantized layer whose weight ``t`` is (what ``qint`` stores).
    """
    if encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding '{encoding}' (known: {', '.join(ENCODINGS)})")
    return ENCODINGS[encoding][0](t.detach().cpu(), limit, scales)


def decode(
    encoding: str, params: dict[str, Any], parts: list[memoryview], shape: list[int], dtype: torch.dtype
) -> Tensor:
    """Rebuild a tensor from its coded parts; malformed input raises :class:`CodecError`."""
    if encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding '{encoding}' (known: {', '.join(ENCODINGS)})")
    if not all(type(s) is int and s >= 0 for s in shape):
        raise CodecError(f"shape {shape} is not a list of non-negative integers")
    if not isinstance(params, dict):
        raise CodecError(f"parameters of '{encoding}' are a {type(params).__name__}, not an object")
    numel = math.prod(shape)
    try:
        flat = ENCODINGS[encoding][1](params, parts, shape, dtype)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError, MemoryError) as exc:
        raise CodecError(f"malformed '{encoding}' data: {type(exc).__name__}: {exc}") from None
    if flat.numel() != numel:
        raise CodecError(f"decoded {flat.numel()} values for shape {shape}")
    return flat.reshape(shape)
