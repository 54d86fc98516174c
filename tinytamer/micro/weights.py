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

Adding a form: one :class:`WeightForm` subclass here (``fits``, ``pack``), an entry in
:data:`FORMS`, and its legality in :func:`choose`; :class:`Packed` is what every packed
form produces and what the packed kernels read (``tt_wpack`` in runtime/tt_kernels.h, the
unpacker in runtime/tt_wpack.c).  A form whose data is not rows of ``bits``-bit fields
(sparse) adds its own fields to :class:`Packed` and its own case to ``tt_wpack_row``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytamer.errors import ModelError

# A form with an index codebook replaces the plain form only when it saves at least this
# share of the plain form's flash: a marginal saving is not worth a slower kernel.
MIN_SAVING = 1 / 8


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


def pack_fields(fields: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit fields [rows, k] -> bytes [rows, row_bytes], low bits first."""
    rows, k = fields.shape
    bit = (fields.astype(np.uint16)[..., None] >> np.arange(bits, dtype=np.uint16)) & 1
    stream = bit.reshape(rows, k * bits).astype(np.uint8)
    return np.packbits(stream, axis=1, bitorder="little")


def unpack_fields(data: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Bytes [rows, row_bytes] -> unsigned fields [rows, k] (inverse of :func:`pack_fields`)."""
    stream = np.unpackbits(data, axis=1, bitorder="little")[:, :k * bits]
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

    def pack(self, rows: np.ndarray) -> Packed | None:
        """The packed weights, or None for the int8 layout the op's own kernels read."""
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
        return Packed(self.name, self.bits, rows.shape[0], rows.shape[1],
                      pack_fields(fields, self.bits).reshape(-1), None)


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
            codebook[j, :len(values)] = values
            if per_layer:
                fields[:] = index.reshape(rows.shape)
            else:
                fields[j] = index.reshape(-1)
        return Packed(self.name, bits, rows.shape[0], rows.shape[1],
                      pack_fields(fields, bits).reshape(-1), codebook)


FORMS: dict[str, WeightForm] = {f.name: f for f in (
    Int8Form(), IntNForm(4), IntNForm(2), SharedForm())}


def choose(weight: np.ndarray, w_bits: int | None) -> str:
    """The form of a layer's int8 weights: the plain form its ``w_bits`` allows (int2, int4,
    else int8), replaced by ``shared`` when that saves at least :data:`MIN_SAVING` of it."""
    rows = as_rows(weight)
    plain = "int8"
    for name in ("int2", "int4"):
        if w_bits is not None and w_bits <= FORMS[name].bits and FORMS[name].fits(rows):
            plain = name
            break
    best = FORMS[plain].flash_bytes(rows)
    shared = FORMS["shared"]
    if shared.fits(rows) and shared.flash_bytes(rows) <= (1 - MIN_SAVING) * best:
        return "shared"
    return plain


def pack(weight: np.ndarray, form: str) -> Packed | None:
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
    data.append(c_struct("tt_wpack", f"pw{i}", dict(
        data=f"wd{i}", codebook=cb, bits=p.bits, k=p.k, row_bytes=p.row_bytes,
        cb_stride=p.cb_stride)))
    return data
