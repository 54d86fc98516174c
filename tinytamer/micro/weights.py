"""Weight forms: how a conv / depthwise / dense layer's integer weights are stored in flash.

The integer graph always holds a layer's weights as plain int8 (the reference computes with
them); the *form* says how the generated C stores them and which kernel reads them, with the
int8 integer math, bit-exact with the reference.  The weights are rows, one per output
channel (conv OHWI, depthwise [C][KH*KW], dense [OUT][IN]); the packed forms start each row
on a byte (the kernels unpack 8 or 16 int4 / int2 weights per word load in registers on a
Cortex-M with the DSP extension, and a row at a time into int8 elsewhere); the sparse forms
run over the rows in order.

Forms (:data:`FORMS`, the one table; :func:`choose` picks one per layer):

- ``int8``: one byte per weight, read by the op's own int8 kernels (the default);
- ``int4`` / ``int2``: two / four two's-complement values per byte (low bits first), chosen
  from the layer's ``w_bits`` (a QuantConv2d / QuantLinear with ``w_bits`` <= 4 / <= 2);
- ``shared``: k-means weight sharing - ``b``-bit indices (``b`` = 1..8, packed low bits
  first) into int8 codebooks of ``2^b`` entries.  The int8 quantizer's per-channel scales
  map one float centroid to a different integer in each channel, but a channel's scale
  follows its largest centroid, so channels fall into a few classes with one integer
  codebook each (:func:`group_codebooks`): one codebook for the layer, or a few and one
  byte per row naming its codebook, ``b`` chosen per layer for the fewest bytes;
- ``sparse``: pruned weights, only the non-zeros stored, one int32 word each (int8 weight
  << 16 | column) and a uint16 count per row, read by the "sparse" kernels
  (runtime/tt_sparse.c), which skip the zeros; chosen at a density of at most
  :data:`SPARSE_MAX_DENSITY`, where it is no larger than int8 (faster for fully connected
  layers; slower for convolutions, whose per-row overhead dominates: see below);
- ``sparse_shared``: pruned and shared (Deep Compression, Han et al. 2016, Sec. 2-3: relative
  indices with filler zeros, then codebook indices): per stored entry one field of
  ``gap_bits`` (the zeros since the previous entry over the flattened rows, so no per-row
  counts; the largest gap value is a filler entry that only skips) and ``idx_bits`` (an
  index into the codebook of the row it lands in, codebooks as ``shared``), packed low bits
  first in one stream; both widths chosen per layer for the fewest bytes; chosen for a
  sparse layer when it saves at least :data:`MIN_SAVING` of the smaller of the other forms.
  The same "sparse" kernels read it, decoding each field as they go.

Every form's :attr:`flash_bytes` counts all it stores (values, indices, codebooks, row
counts or codebook numbers, padding); the biases and requantization constants are the same
in every form and are not weights.

Adding a form: one :class:`WeightForm` subclass here (``fits``, ``pack``), an entry in
:data:`FORMS`, and its legality in :func:`choose`; :class:`Packed` is what every packed
form produces and what the packed kernels read (``tt_wpack`` in runtime/tt_kernels.h, the
unpacker in runtime/tt_wpack.c); :class:`Sparse` is what the sparse forms produce and the
sparse kernels read (``tt_sparse`` in runtime/tt_kernels.h).
"""

from __future__ import annotations

import functools
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
    codebook: np.ndarray | None  # int8 [codebooks, 2^bits]: the values the indices select
    groups: np.ndarray | None = None  # uint8 [rows]: each row's codebook (None: one codebook)

    @property
    def row_bytes(self) -> int:
        return (self.k * self.bits + 7) // 8

    @property
    def cb_stride(self) -> int:
        """Codebook entries between codebooks: 0 (one codebook per layer) or 2^bits."""
        return 0 if self.codebook is None or len(self.codebook) == 1 else 1 << self.bits

    @property
    def flash_bytes(self) -> int:
        return int(sum(a.size for a in (self.data, self.codebook, self.groups) if a is not None))

    def unpack(self) -> np.ndarray:
        """The int8 rows [rows, k] (the kernels' unpacking, in numpy)."""
        fields = unpack_fields(self.data.reshape(self.rows, self.row_bytes), self.bits, self.k)
        if self.codebook is None:
            half = 1 << (self.bits - 1)
            return (fields.astype(np.int16) - ((fields >= half) << self.bits)).astype(np.int8)
        return self.codebook[_row_books(self.groups, self.rows)[:, None], fields].astype(np.int8)


@dataclass(frozen=True)
class Sparse:
    """A layer's weights in a sparse form: only the non-zeros (and filler entries); what the
    generated C stores and the sparse kernels read (``tt_sparse``).

    ``sparse``: row by row, ``counts[r]`` int32 words (weight << 16 | column) in row ``r``.
    ``sparse_shared``: one bit stream for the whole layer, rows in order with no per-row
    counts (Deep Compression's relative indices over the flattened matrix): per entry a
    ``gap_bits`` gap (the zeros since the previous entry, across row ends) and an
    ``idx_bits`` index into the codebook of the row it lands in."""

    form: str
    rows: int
    k: int  # weights per row
    counts: np.ndarray | None  # uint16 [rows] ("sparse"): entries per row
    words: np.ndarray | None  # int32 [entries] ("sparse"): weight << 16 | column
    stream: np.ndarray | None  # uint8 ("sparse_shared"): the fields, then STREAM_PAD zero bytes
    codebook: np.ndarray | None  # int8 [codebooks, 2^idx_bits] ("sparse_shared")
    gap_bits: int = 0
    idx_bits: int = 0
    groups: np.ndarray | None = None  # uint8 [rows]: each row's codebook (None: one codebook)
    entries: int = 0  # stream fields, fillers included ("sparse_shared")

    @property
    def cb_stride(self) -> int:
        """Codebook entries between codebooks: 0 (one codebook per layer) or 2^idx_bits."""
        return 0 if self.codebook is None or len(self.codebook) == 1 else 1 << self.idx_bits

    @property
    def flash_bytes(self) -> int:
        arrays = (self.counts, self.words, self.stream, self.codebook, self.groups)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def unpack(self) -> np.ndarray:
        """The int8 rows [rows, k] (the kernels' decoding, in numpy)."""
        out = np.zeros((self.rows, self.k), np.int8)
        if self.words is not None:
            row = np.repeat(np.arange(self.rows), self.counts.astype(np.int64))
            out[row, self.words & 0xFFFF] = self.words >> 16
            return out
        gmax = (1 << self.gap_bits) - 1
        fields = stream_fields(self.stream, self.gap_bits + self.idx_bits, self.entries)
        gap, idx = fields & gmax, fields >> self.gap_bits
        real = gap != gmax  # a filler only skips gmax zeros
        pos = (np.cumsum(gap + real) - 1)[real]  # a real entry also moves past its own place
        row = pos // max(self.k, 1)
        out.reshape(-1)[pos] = self.codebook[_row_books(self.groups, self.rows)[row], idx[real]]
        return out


# Zero bytes after a sparse_shared stream: the kernel reads a field as one 32-bit word from
# its first byte.
STREAM_PAD = 3


def _row_books(groups: np.ndarray | None, rows: int) -> np.ndarray:
    """Each row's codebook number."""
    return np.zeros(rows, np.int64) if groups is None else groups.astype(np.int64)


def group_codebooks(sets: list[np.ndarray], bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Codebooks of at most ``2^bits`` values such that each row's values (``sets[r]``)
    lie in one of them: (codebooks int8 [n, 2^bits], each sorted then zero padded; the
    values in each; each row's codebook uint8 [rows]), or None when more than 256
    codebooks would be needed.

    The int8 quantizer's per-channel scales map a layer's k-means centroids to different
    integers in each channel, but a channel's scale follows its largest centroid, so the
    channels fall into a few classes that share one integer codebook.  Greedy: rows with
    the most values first, each into the codebook it grows least (a new one if none holds
    it within ``2^bits``)."""
    cap = 1 << bits
    books: list[set[int]] = []
    row_book = np.zeros(len(sets), np.int64)
    for r in sorted(range(len(sets)), key=lambda r: -len(sets[r])):
        s = set(sets[r].tolist())
        best, growth = -1, cap + 1
        for j, b in enumerate(books):
            g = len(s - b)
            if len(b) + g <= cap and g < growth:
                best, growth = j, g
                if g == 0:
                    break
        if best < 0:
            if len(books) == 256:
                return None
            books.append(set())
            best = len(books) - 1
        books[best] |= s
        row_book[r] = best
    table = np.zeros((max(len(books), 1), cap), np.int8)
    for j, b in enumerate(books):
        table[j, : len(b)] = sorted(b)
    return table, np.array([len(b) for b in books] or [0]), row_book.astype(np.uint8)


def _index(table: np.ndarray, sizes: np.ndarray, books: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's place in its codebook (``books``: the codebook of each value)."""
    out = np.empty(len(values), np.int64)
    for j in np.unique(books):
        sel = books == j
        out[sel] = np.searchsorted(table[j, : sizes[j]], values[sel])
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
        p = pack(rows, self.name)
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
        if rows.size == 0:
            return True
        # The DSP kernels sum products scaled by 2^(8 - bits) in int32 (runtime/tt_dsp_unpack.h)
        # against inputs minus their zero point, at most 255 in magnitude.
        bound = int(np.abs(rows.astype(np.int64)).sum(1).max()) * 255 << (8 - self.bits)
        return bool(rows.min() >= lo and rows.max() <= hi and bound < 1 << 31)

    def pack(self, rows: np.ndarray) -> Packed:
        if not self.fits(rows):
            raise ModelError(f"weights outside the {self.name} range cannot be packed as {self.name}")
        fields = (rows.astype(np.int16) & ((1 << self.bits) - 1)).astype(np.uint8)
        return Packed(
            self.name, self.bits, rows.shape[0], rows.shape[1], pack_fields(fields, self.bits).reshape(-1), None
        )


class SharedForm(WeightForm):
    """``b``-bit indices into int8 codebooks (:func:`group_codebooks`: one per layer, or a
    few shared by the rows, each row naming its own)."""

    name = "shared"

    @staticmethod
    def _layout(rows: np.ndarray) -> tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(index bits, codebooks) of the smallest layout."""
        sets = [np.unique(r) for r in rows]
        best: tuple[int, int, tuple] | None = None
        for b in range(_index_bits(max(len(s) for s in sets)), 9):
            books = group_codebooks(sets, b)
            if books is None:
                continue
            size = _books_bytes(books) + rows.shape[0] * ((rows.shape[1] * b + 7) // 8)
            if best is None or size < best[0]:
                best = (size, b, books)
        assert best is not None  # at 8 bits one codebook holds every int8 value
        return best[1], best[2]

    def fits(self, rows: np.ndarray) -> bool:
        return rows.size > 0

    def pack(self, rows: np.ndarray) -> Packed:
        bits, (table, sizes, books) = self._layout(rows)
        r, _ = np.indices(rows.shape)
        fields = _index(table, sizes, books.astype(np.int64)[r.reshape(-1)], rows.reshape(-1)).reshape(rows.shape)
        return Packed(
            self.name,
            bits,
            rows.shape[0],
            rows.shape[1],
            pack_fields(fields, bits).reshape(-1),
            table,
            books if len(table) > 1 else None,
        )


def _books_bytes(books: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
    """Flash of codebooks and, where there are several, each row's codebook number."""
    table, _, row_book = books
    return int(table.size) + (len(row_book) if len(table) > 1 else 0)


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


class SparseSharedForm(WeightForm):
    """Deep Compression's layout: per entry a relative index (gap) and a codebook index, one
    bit stream over the flattened layer; field widths chosen per layer."""

    name = "sparse_shared"

    @staticmethod
    def _layout(rows: np.ndarray) -> tuple[int, int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(gap bits, index bits, codebooks) of the smallest layout."""
        r, c = np.nonzero(rows)
        gaps = _flat_gaps(r, c, rows.shape[1])
        sets = [np.unique(row[row != 0]) for row in rows]
        best: tuple[int, int, int, tuple] | None = None
        for b in range(_index_bits(max(len(s) for s in sets)), 9):
            books = group_codebooks(sets, b)
            if books is None:
                continue
            for d in range(1, 9):
                entries = int((gaps // ((1 << d) - 1) + 1).sum())
                size = _books_bytes(books) + (entries * (d + b) + 7) // 8 + STREAM_PAD
                if best is None or size < best[0]:
                    best = (size, d, b, books)
        assert best is not None
        return best[1], best[2], best[3]

    def fits(self, rows: np.ndarray) -> bool:
        return rows.size > 0 and density(rows) <= SPARSE_MAX_DENSITY

    def pack(self, rows: np.ndarray) -> Sparse:
        d, b, (table, sizes, books) = self._layout(rows)
        r, c = np.nonzero(rows)
        gaps = _flat_gaps(r, c, rows.shape[1])
        idx = _index(table, sizes, books.astype(np.int64)[r], rows[r, c].astype(np.int64))
        gmax = (1 << d) - 1
        # A gap of gmax or more is first skipped by fillers of gmax zeros each.
        n_entries = gaps // gmax + 1
        fields = np.full(int(n_entries.sum()), gmax, np.int64)
        fields[np.cumsum(n_entries) - 1] = gaps % gmax | idx << d
        stream = pack_fields(fields[None, :], d + b).reshape(-1)
        return Sparse(
            self.name,
            rows.shape[0],
            rows.shape[1],
            None,
            None,
            np.concatenate([stream, np.zeros(STREAM_PAD, np.uint8)]),
            table,
            d,
            b,
            books if len(table) > 1 else None,
            len(fields),
        )


def _flat_gaps(r: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """The zeros before each non-zero since the previous one, over the flattened rows."""
    pos = r.astype(np.int64) * k + c
    return pos - np.r_[-1, pos[:-1]] - 1


FORMS: dict[str, WeightForm] = {
    f.name: f for f in (Int8Form(), IntNForm(4), IntNForm(2), SharedForm(), SparseForm(), SparseSharedForm())
}

# The forms the "sparse" kernels read; the others, except int8, the "packed" kernels.
SPARSE_FORMS = ("sparse", "sparse_shared")
# The forms with an index codebook, which choose() takes for the flash of the weights alone.
CODEBOOK_FORMS = ("shared", "sparse_shared")


def choose(weight: np.ndarray, w_bits: int | None, sparse: bool = True, codebooks: bool = True) -> str:
    """The form of a layer's int8 weights (``sparse``: whether its op has sparse kernels).

    The plain form its ``w_bits`` allows (int2, int4, else int8); ``sparse`` where the layer
    is that sparse (smaller and faster, :data:`SPARSE_MAX_DENSITY`); then, unless
    ``codebooks`` is False, ``shared`` (where its values are shared) or, for a sparse layer,
    ``sparse_shared`` (its relative indices alone are smaller than the words), each taken
    only when it saves at least :data:`MIN_SAVING` of the form chosen so far: flash first,
    at some cost in cycles.  Whether a codebook form also pays for the kernel code it links
    is a whole-image question (``program.build_program`` measures it)."""
    rows = as_rows(weight)
    plain = "int8"
    for name in ("int2", "int4"):
        if w_bits is not None and w_bits <= FORMS[name].bits and FORMS[name].fits(rows):
            plain = name
            break
    form, best = plain, FORMS[plain].flash_bytes(rows)
    if sparse and FORMS["sparse"].fits(rows) and (size := FORMS["sparse"].flash_bytes(rows)) <= best:
        form, best = "sparse", size
    for name in (("shared", "sparse_shared") if sparse else ("shared",)) if codebooks else ():
        if not FORMS[name].fits(rows):
            continue
        if (size := FORMS[name].flash_bytes(rows)) <= (1 - MIN_SAVING) * best:
            form, best = name, size
    return form


def pack(weight: np.ndarray, form: str) -> Packed | Sparse | None:
    """A layer's weights in ``form`` (None for int8, which the op's int8 kernels read)."""
    if form not in FORMS:
        raise ModelError(f"micro: unknown weight form '{form}'; forms: {sorted(FORMS)}")
    rows = as_rows(weight)
    return _pack_cached(form, rows.shape, rows.tobytes())


@functools.lru_cache(maxsize=32)
def _pack_cached(form: str, shape: tuple[int, int], data: bytes) -> Packed | Sparse | None:
    # Generation asks for a layer's packing several times (choice, layout, C, flash); the
    # codebook grouping is worth doing once.
    return FORMS[form].pack(np.frombuffer(data, np.int8).reshape(shape))


def c_packed(i: int, p: Packed) -> list[str]:
    """The C constants of op ``i``'s packed weights: the bytes wd<i>, the codebooks wc<i>
    and each row's codebook wg<i>, and the tt_wpack pw<i> that the packed kernels read."""
    # Imported here: the op modules import this one while the op table is being built.
    from tinytamer.micro.ops.base import c_array, c_struct

    data = [c_array(f"wd{i}", "uint8_t", p.data)]
    ref = dict(data=f"wd{i}", codebook="0", groups="0")
    if p.codebook is not None:
        data.append(c_array(f"wc{i}", "int8_t", p.codebook))
        ref["codebook"] = f"wc{i}"
    if p.groups is not None:
        data.append(c_array(f"wg{i}", "uint8_t", p.groups))
        ref["groups"] = f"wg{i}"
    fields = dict(bits=p.bits, k=p.k, row_bytes=p.row_bytes, cb_stride=p.cb_stride)
    data.append(c_struct("tt_wpack", f"pw{i}", {**ref, **fields}))
    return data


def c_sparse(i: int, s: Sparse) -> list[str]:
    """The C constants of op ``i``'s sparse weights: the row counts wz<i> and words wd<i>
    ("sparse"), or the stream ws<i>, its codebooks wc<i> and each row's codebook wg<i>
    ("sparse_shared"), and the tt_sparse sw<i> the kernels read."""
    from tinytamer.micro.ops.base import c_array, c_struct

    data = []
    ref = dict(nz="0", stream="0", codebook="0", counts="0", groups="0")
    if s.words is not None:
        data += [c_array(f"wz{i}", "uint16_t", s.counts), c_array(f"wd{i}", "int32_t", s.words)]
        ref.update(nz=f"wd{i}", counts=f"wz{i}")
    else:
        data += [c_array(f"ws{i}", "uint8_t", s.stream), c_array(f"wc{i}", "int8_t", s.codebook)]
        ref.update(stream=f"ws{i}", codebook=f"wc{i}")
        if s.groups is not None:
            data.append(c_array(f"wg{i}", "uint8_t", s.groups))
            ref["groups"] = f"wg{i}"
    fields = dict(gap_bits=s.gap_bits, idx_bits=s.idx_bits, cb_stride=s.cb_stride, entries=s.entries)
    data.append(c_struct("tt_sparse", f"sw{i}", {**ref, **fields}))
    return data
