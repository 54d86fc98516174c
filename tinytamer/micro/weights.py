"""Weight forms: how a conv / depthwise / dense layer's integer weights are stored in flash.

The integer graph always holds a layer's weights as plain int8 (the reference computes with
them); the *form* says how the generated C stores them and which kernel reads them.  Every
form stores the weights as rows - one per output channel (conv OHWI, depthwise [C][KH*KW],
dense [OUT][IN]), each row starting on a byte - so one kernel per op unpacks one row at a
time into int8 and runs the int8 integer math on it, bit-exact with the reference.

Forms (:data:`FORMS`, the one table; :func:`choose` picks one per layer):

- ``int8``: one byte per weight, read by the op's own int8 kernels (the default);
- ``int4`` / ``int2``: two / four two's-complement values per byte (low bits first), chosen
  from the layer's ``w_bits`` (a QuantConv2d / QuantLinear with ``w_bits`` <= 4 / <= 2);
- ``shared``: k-means weight sharing - ``b``-bit indices (``b`` = 1..8, packed low bits
  first) into an int8 codebook of ``2^b`` entries, chosen when the layer's integer weights
  take at most ``2^b`` distinct values with ``b`` below the plain form's bits.  The codebook
  is one per layer when the whole layer has few values, else one per output channel: the
  int8 quantizer's per-channel scales map one float centroid to a different integer in
  each channel, so a layer shared in float keeps its few values per channel only.

- ``sparse``: pruned weights, only the non-zeros stored, one int32 word each (int8 weight
  << 16 | column) and a uint16 count per row, read by the "sparse" kernels
  (runtime/tt_sparse.c), which skip the zeros; chosen at a density of at most
  :data:`SPARSE_MAX_DENSITY`, where it is no larger than int8 (faster for fully connected
  layers; slower for convolutions, whose per-row overhead dominates: see below);
- ``sparse_shared``: pruned and shared (Deep Compression): per non-zero one field of
  ``gap_bits`` (the zeros skipped since the last entry; the largest gap value is a filler
  entry that only skips) and ``idx_bits`` (an index into the codebook, per layer or per row
  as ``shared``), packed low bits first in one stream; chosen for a sparse layer whose values
  are shared, when it saves at least :data:`MIN_SAVING` of the smaller of the other forms.
  The same "sparse" kernels read it, decoding each field as they go.

Adding a form: one :class:`WeightForm` subclass here (``fits``, ``pack``), an entry in
:data:`FORMS`, and its legality in :func:`choose`; :class:`Packed` is what every packed
form produces and what the packed kernels read (``tt_wpack`` in runtime/tt_kernels.h, the
unpacker in runtime/tt_wpack.c); :class:`Sparse` is what the sparse forms produce and the
sparse kernels read (``tt_sparse`` in runtime/tt_kernels.h).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytamer.errors import ModelError

# A form with an index codebook replaces the plain form only when it saves at least this
# share of the plain form's flash: a marginal saving is not worth a slower kernel.
MIN_SAVING = 1 / 8

# The sparse form stores 4 bytes per non-zero (plus 2 per row) against the int8 layout's 1
# per weight: at or below a density of 1/4 it is no larger in flash, so it is then the form.
# Speed differs by layer kind (cortex-m4, ideal memory, 10% density): a fully connected layer
# runs in 0.33x of the int8 SIMD kernel's cycles, a 5x5 or pointwise convolution in 1.1-1.3x
# (about 150 cycles of per-row overhead dominate); the tuner may still pick the int8 kernel.
SPARSE_MAX_DENSITY = 0.25


@dataclass(frozen=True)
class Packed:
    """A layer's weights in a packed form: what the generated C stores and the kernel reads."""

    form: str
    bits: int  # bits per stored field (a value, or an index into the codebook)
    rows: int
    k: int  # weights per row
    data: np.ndarray  # uint8 [rows * row_bytes]
    codebook: np.ndarray | None  # int8 [1 or rows, 2^bits]: the values the indices select

    @property
    def row_bytes(self) -> int:
        return (self.k * self.bits + 7) // 8

    @property
    def cb_stride(self) -> int:
        """Codebook entries between rows: 0 (one codebook per layer) or 2^bits."""
        return 0 if self.codebook is None or len(self.codebook) == 1 else 1 << self.bits

    @property
    def flash_bytes(self) -> int:
        return int(self.data.size) + (0 if self.codebook is None else int(self.codebook.size))

    def unpack(self) -> np.ndarray:
        """The int8 rows [rows, k] (the kernels' unpacking, in numpy)."""
        fields = unpack_fields(self.data.reshape(self.rows, self.row_bytes), self.bits, self.k)
        if self.codebook is None:
            half = 1 << (self.bits - 1)
            return (fields.astype(np.int16) - ((fields >= half) << self.bits)).astype(np.int8)
        cb = np.broadcast_to(self.codebook, (self.rows, self.codebook.shape[1]))
        return np.take_along_axis(cb, fields.astype(np.int64), axis=1).astype(np.int8)


@dataclass(frozen=True)
class Sparse:
    """A layer's weights in a sparse form: only the non-zeros (and filler entries), row by
    row; what the generated C stores and the sparse kernels read (``tt_sparse``)."""

    form: str
    rows: int
    k: int  # weights per row
    counts: np.ndarray  # uint16 [rows]: entries per row, fillers included
    words: np.ndarray | None  # int32 [entries] ("sparse"): weight << 16 | column
    stream: np.ndarray | None  # uint8 ("sparse_shared"): the fields, then 2 zero bytes
    codebook: np.ndarray | None  # int8 [1 or rows, 2^idx_bits] ("sparse_shared")
    gap_bits: int = 0
    idx_bits: int = 0

    @property
    def cb_stride(self) -> int:
        """Codebook entries between rows: 0 (one codebook per layer) or 2^idx_bits."""
        return 0 if self.codebook is None or len(self.codebook) == 1 else 1 << self.idx_bits

    @property
    def flash_bytes(self) -> int:
        return int(sum(a.nbytes for a in (self.counts, self.words, self.stream, self.codebook) if a is not None))

    def unpack(self) -> np.ndarray:
        """The int8 rows [rows, k] (the kernels' decoding, in numpy)."""
        out = np.zeros((self.rows, self.k), np.int8)
        row = np.repeat(np.arange(self.rows), self.counts.astype(np.int64))
        if self.words is not None:
            out[row, self.words & 0xFFFF] = self.words >> 16
            return out
        gmax = (1 << self.gap_bits) - 1
        fields = stream_fields(self.stream, self.gap_bits + self.idx_bits, len(row))
        gap, idx = fields & gmax, fields >> self.gap_bits
        e = 0
        for r, n in enumerate(self.counts.astype(np.int64)):
            g, ix = gap[e : e + n], idx[e : e + n]
            real = g != gmax  # a filler only skips gmax zeros
            col = np.cumsum(g + real) - 1  # a real entry also moves past its own column
            out[r, col[real]] = self.codebook[r if self.cb_stride else 0][ix[real]]
            e += n
        return out


def stream_fields(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The first ``n`` unsigned ``bits``-bit fields of a byte stream, low bits first."""
    stream = np.unpackbits(data, bitorder="little")[: n * bits].reshape(n, bits)
    return (stream.astype(np.int64) << np.arange(bits)).sum(-1)


def pack_fields(fields: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit fields [rows, k] -> bytes [rows, row_bytes], low bits first."""
    rows, k = fields.shape
    bit = (fields.astype(np.uint16)[..., None] >> np.arange(bits, dtype=np.uint16)) & 1
    stream = bit.reshape(rows, k * bits).astype(np.uint8)
    return np.packbits(stream, axis=1, bitorder="little")


def unpack_fields(data: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Bytes [rows, row_bytes] -> unsigned fields [rows, k] (inverse of :func:`pack_fields`)."""
    stream = np.unpackbits(data, axis=1, bitorder="little")[:, : k * bits]
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (stream.reshape(len(data), k, bits).astype(np.uint16) * weights).sum(-1).astype(np.uint8)


def as_rows(weight: np.ndarray) -> np.ndarray:
    """A layer's int8 weights as one row per output channel (the kernels' order)."""
    return np.ascontiguousarray(weight).reshape(weight.shape[0], -1).astype(np.int8)


class WeightForm:
    """One way to store a layer's weights; ``bits`` is the plain form's bits per weight."""

    name: str
    bits: int = 8

    def fits(self, rows: np.ndarray) -> bool:
        raise NotImplementedError

    def pack(self, rows: np.ndarray) -> Packed | Sparse | None:
        """The stored weights, or None for the int8 layout the op's own kernels read."""
        raise NotImplementedError

    def flash_bytes(self, rows: np.ndarray) -> int:
        p = self.pack(rows)
        return int(rows.size) if p is None else p.flash_bytes


class Int8Form(WeightForm):
    name = "int8"

    def fits(self, rows: np.ndarray) -> bool:
        return True

    def pack(self, rows: np.ndarray) -> Packed | None:
        return None


class IntNForm(WeightForm):
    """Two's-complement ``bits``-bit values, ``8 / bits`` per byte."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = f"int{bits}"

    def fits(self, rows: np.ndarray) -> bool:
        lo, hi = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return bool(rows.size == 0 or (rows.min() >= lo and rows.max() <= hi))

    def pack(self, rows: np.ndarray) -> Packed:
        if not self.fits(rows):
            raise ModelError(f"weights outside the {self.name} range cannot be packed as {self.name}")
        fields = (rows.astype(np.int16) & ((1 << self.bits) - 1)).astype(np.uint8)
        return Packed(
            self.name, self.bits, rows.shape[0], rows.shape[1], pack_fields(fields, self.bits).reshape(-1), None
        )


class SharedForm(WeightForm):
    """``b``-bit indices into an int8 codebook (per layer, else per output channel)."""

    name = "shared"

    @staticmethod
    def _layout(rows: np.ndarray) -> tuple[int, bool]:
        """(index bits, one codebook per layer) of the smaller of the two layouts."""
        layer_n = len(np.unique(rows))
        row_n = max((len(np.unique(r)) for r in rows), default=1)
        b_layer, b_row = (max(1, int(np.ceil(np.log2(max(n, 1))))) for n in (layer_n, row_n))
        r, k = rows.shape
        per_layer = (1 << b_layer) + r * ((k * b_layer + 7) // 8)
        per_row = r * (1 << b_row) + r * ((k * b_row + 7) // 8)
        return (b_layer, True) if per_layer <= per_row else (b_row, False)

    def fits(self, rows: np.ndarray) -> bool:
        return rows.size > 0 and self._layout(rows)[0] <= 8

    def pack(self, rows: np.ndarray) -> Packed:
        bits, per_layer = self._layout(rows)
        groups = [rows] if per_layer else list(rows)
        codebook = np.zeros((len(groups), 1 << bits), np.int8)
        fields = np.empty(rows.shape, np.uint8)
        for j, grp in enumerate(groups):
            values, index = np.unique(grp, return_inverse=True)
            codebook[j, : len(values)] = values
            if per_layer:
                fields[:] = index.reshape(rows.shape)
            else:
                fields[j] = index.reshape(-1)
        return Packed(self.name, bits, rows.shape[0], rows.shape[1], pack_fields(fields, bits).reshape(-1), codebook)


def _index_bits(n: int) -> int:
    """Bits of an index into ``n`` codebook entries (at least 1)."""
    return max(1, int(np.ceil(np.log2(max(n, 1)))))


def density(rows: np.ndarray) -> float:
    """The share of non-zero weights."""
    return np.count_nonzero(rows) / max(rows.size, 1)


class SparseForm(WeightForm):
    """The non-zeros as int32 words (weight << 16 | column), rows in order, and row counts."""

    name = "sparse"

    def fits(self, rows: np.ndarray) -> bool:
        return rows.size > 0 and rows.shape[1] < 1 << 16 and density(rows) <= SPARSE_MAX_DENSITY

    def pack(self, rows: np.ndarray) -> Sparse:
        if rows.shape[1] >= 1 << 16:
            raise ModelError(f"micro: a sparse layer holds rows of at most 65,535 weights, not {rows.shape[1]:,}")
        r, c = np.nonzero(rows)
        words = (rows[r, c].astype(np.int64) << 16) | c
        return Sparse(
            self.name,
            rows.shape[0],
            rows.shape[1],
            np.count_nonzero(rows, axis=1).astype(np.uint16),
            words.astype(np.int32),
            None,
            None,
        )


def _gaps(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each non-zero's row, column and the zeros before it in its row since the last one."""
    r, c = np.nonzero(rows)
    first = np.r_[True, r[1:] != r[:-1]] if len(r) else np.zeros(0, bool)
    prev = np.where(first, -1, np.r_[-1, c[:-1]])
    return r, c, c - prev - 1


class SparseSharedForm(WeightForm):
    """Deep Compression's layout: per entry a gap and a codebook index, one bit stream."""

    name = "sparse_shared"

    @staticmethod
    def _layout(rows: np.ndarray) -> tuple[int, int, bool]:
        """(gap bits, index bits, one codebook per layer) of the smallest layout."""
        r, c, gaps = _gaps(rows)
        vals = rows[r, c].astype(np.int64)
        n_rows = len(rows)
        per_row = np.bincount(np.unique(r * 256 + vals + 128) // 256, minlength=n_rows)
        best: tuple[int, int, int, bool] | None = None
        for per_layer, b in (
            (True, _index_bits(len(np.unique(vals)))),
            (False, _index_bits(int(per_row.max(initial=0)))),
        ):
            cb = (1 << b) * (1 if per_layer else n_rows)
            for d in range(1, 9):
                fill = gaps // ((1 << d) - 1)
                counts = np.bincount(r, weights=fill + 1, minlength=n_rows)
                if counts.max(initial=0) >= 1 << 16:
                    continue
                size = cb + (int(counts.sum()) * (d + b) + 7) // 8
                if best is None or size < best[0]:
                    best = (size, d, b, per_layer)
        if best is None:
            raise ModelError("micro: a layer too large for the sparse shared form")
        return best[1:]

    def fits(self, rows: np.ndarray) -> bool:
        return rows.size > 0 and density(rows) <= SPARSE_MAX_DENSITY

    def pack(self, rows: np.ndarray) -> Sparse:
        d, b, per_layer = self._layout(rows)
        n_rows = len(rows)
        r, c, gaps = _gaps(rows)
        vals = rows[r, c].astype(np.int64)
        codebook = np.zeros((1 if per_layer else n_rows, 1 << b), np.int8)
        if per_layer:
            values, idx = np.unique(vals, return_inverse=True)
            codebook[0, : len(values)] = values
        else:
            keys, inv = np.unique(r * 256 + vals + 128, return_inverse=True)
            kr = keys // 256
            slot = np.arange(len(keys)) - np.searchsorted(kr, kr)  # place in its row's codebook
            codebook[kr, slot] = keys % 256 - 128
            idx = slot[inv]
        gmax = (1 << d) - 1
        # A gap of gmax or more is first skipped by fillers of gmax zeros each.
        n_entries = gaps // gmax + 1
        fields = np.full(int(n_entries.sum()), gmax, np.int64)
        fields[np.cumsum(n_entries) - 1] = gaps % gmax | idx.reshape(-1) << d
        stream = pack_fields(fields[None, :], d + b).reshape(-1)
        counts = np.bincount(r, weights=n_entries, minlength=n_rows).astype(np.uint16)
        # Two zero bytes after the fields: the kernel reads 3 bytes at a field's first byte.
        return Sparse(
            self.name,
            n_rows,
            rows.shape[1],
            counts,
            None,
            np.concatenate([stream, np.zeros(2, np.uint8)]),
            codebook,
            d,
            b,
        )


FORMS: dict[str, WeightForm] = {
    f.name: f for f in (Int8Form(), IntNForm(4), IntNForm(2), SharedForm(), SparseForm(), SparseSharedForm())
}

# The forms the "sparse" kernels read; the others, except int8, the "packed" kernels.
SPARSE_FORMS = ("sparse", "sparse_shared")


def choose(weight: np.ndarray, w_bits: int | None, sparse: bool = True) -> str:
    """The form of a layer's int8 weights (``sparse``: whether its op has sparse kernels).

    The plain form its ``w_bits`` allows (int2, int4, else int8); ``sparse`` where the layer
    is that sparse (smaller and faster, :data:`SPARSE_MAX_DENSITY`); then, where its values
    are shared (``shared`` saves at least :data:`MIN_SAVING` of the plain form), ``shared``
    or, for a sparse layer, ``sparse_shared``, each taken only when it saves at least
    :data:`MIN_SAVING` of the form chosen so far."""
    rows = as_rows(weight)
    plain = "int8"
    for name in ("int2", "int4"):
        if w_bits is not None and w_bits <= FORMS[name].bits and FORMS[name].fits(rows):
            plain = name
            break
    form, best = plain, FORMS[plain].flash_bytes(rows)
    if sparse and FORMS["sparse"].fits(rows) and FORMS["sparse"].flash_bytes(rows) <= best:
        form, best = "sparse", FORMS["sparse"].flash_bytes(rows)
    shared = FORMS["shared"]
    if not shared.fits(rows) or shared.flash_bytes(rows) > (1 - MIN_SAVING) * FORMS[plain].flash_bytes(rows):
        return form
    for name in ("shared", "sparse_shared") if sparse else ("shared",):
        f = FORMS[name]
        if f.fits(rows) and (size := f.flash_bytes(rows)) <= (1 - MIN_SAVING) * best:
            form, best = name, size
    return form


def pack(weight: np.ndarray, form: str) -> Packed | Sparse | None:
    """A layer's weights in ``form`` (None for int8, which the op's int8 kernels read)."""
    if form not in FORMS:
        raise ModelError(f"micro: unknown weight form '{form}'; forms: {sorted(FORMS)}")
    return FORMS[form].pack(as_rows(weight))


def c_packed(i: int, p: Packed) -> list[str]:
    """The C constants of op ``i``'s packed weights: the bytes wd<i>, the codebook wc<i> and
    the tt_wpack pw<i> that the packed kernels read."""
    # Imported here: the op modules import this one while the op table is being built.
    from tinytamer.micro.ops.base import c_array, c_struct

    data = [c_array(f"wd{i}", "uint8_t", p.data)]
    cb = "0"
    if p.codebook is not None:
        data.append(c_array(f"wc{i}", "int8_t", p.codebook))
        cb = f"wc{i}"
    data.append(
        c_struct(
            "tt_wpack",
            f"pw{i}",
            dict(data=f"wd{i}", codebook=cb, bits=p.bits, k=p.k, row_bytes=p.row_bytes, cb_stride=p.cb_stride),
        )
    )
    return data


def c_sparse(i: int, s: Sparse) -> list[str]:
    """The C constants of op ``i``'s sparse weights: the row counts wz<i>, the words wd<i> or
    the stream ws<i> and its codebook wc<i>, and the tt_sparse sw<i> the kernels read."""
    from tinytamer.micro.ops.base import c_array, c_struct

    data = [c_array(f"wz{i}", "uint16_t", s.counts)]
    ref = dict(nz="0", stream="0", codebook="0")
    if s.words is not None:
        data.append(c_array(f"wd{i}", "int32_t", s.words))
        ref["nz"] = f"wd{i}"
    else:
        data += [c_array(f"ws{i}", "uint8_t", s.stream), c_array(f"wc{i}", "int8_t", s.codebook)]
        ref.update(stream=f"ws{i}", codebook=f"wc{i}")
    data.append(
        c_struct(
            "tt_sparse",
            f"sw{i}",
            dict(**ref, counts=f"wz{i}", gap_bits=s.gap_bits, idx_bits=s.idx_bits, cb_stride=s.cb_stride),
        )
    )
    return data
