"""Canonical Huffman coding of integer symbol streams (Deep Compression's last stage).

Han, Mao & Dally 2016, "Deep Compression", Sec. 4: the cluster indices and the
sparse relative positions of a pruned, shared layer are far from uniform, so a
Huffman code (Huffman 1952) saves a further 20-30%.  We build the code with a
heap, limit code lengths to :data:`MAX_LEN` bits (halving the counts until the
tree is shallow enough, which keeps the prefix property and costs almost
nothing), and make it *canonical* (codes assigned in order of length, then
symbol) so a stream stores only the code length of each symbol.

Stream layout (all little endian)::

    uint32 count | uint16 alphabet | alphabet x 4-bit code lengths | code bits, MSB first

Encoding and decoding are vectorized with numpy.  Decoding looks up a
``2**max_len`` table at *every* bit offset of the stream and then follows the
chain "next symbol starts at offset + code length" from offset 0 by pointer
doubling (O(bits * log count) numpy work, no per-symbol Python loop).
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

from tinytamer.codec import bits as bitpack
from tinytamer.errors import CodecError

MAX_LEN = 15  # code lengths fit in 4 bits, as in DEFLATE
_HEADER = struct.Struct("<IH")
_CHUNK = 1 << 16


def code_lengths(freqs: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code length of each symbol (0 for symbols that never occur), at most ``max_len``."""
    freqs = np.asarray(freqs, dtype=np.int64)
    while True:
        lengths = _unlimited_lengths(freqs)
        if lengths.max(initial=0) <= max_len:
            return lengths
        # Halving (rounding up) flattens the distribution; at worst all counts reach 1 and
        # the tree is balanced, of depth ceil(log2(alphabet)) <= max_len.
        freqs = np.where(freqs > 0, (freqs + 1) // 2, 0)


def _unlimited_lengths(freqs: np.ndarray) -> np.ndarray:
    lengths = np.zeros(len(freqs), dtype=np.int64)
    present = np.flatnonzero(freqs)
    if len(present) == 1:
        lengths[present[0]] = 1  # a lone symbol still needs one bit per occurrence
        return lengths
    # Heap of (weight, tie-breaker, symbols under this node); merging two nodes
    # pushes all their symbols one level deeper.
    heap = [(int(freqs[s]), int(s), [int(s)]) for s in present]
    heapq.heapify(heap)
    tie = len(freqs)
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        lengths[s1] += 1
        lengths[s2] += 1
        heapq.heappush(heap, (w1 + w2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of each symbol: shorter codes first, ties broken by symbol value."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code = 0
    prev = 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s] = code
        code += 1
        prev = int(lengths[s])
    return codes


def encoded_size(freqs: np.ndarray) -> int:
    """Bytes :func:`encode` writes for a stream with these symbol counts (without encoding it)."""
    freqs = np.asarray(freqs, dtype=np.int64)
    lengths = code_lengths(freqs)
    return _HEADER.size + bitpack.packed_size(len(freqs), 4) + (int(freqs @ lengths) + 7) // 8


def encode(symbols: np.ndarray, alphabet: int) -> bytes:
    """Huffman-code ``symbols`` (integers in ``[0, alphabet)``) into a self-describing stream."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if not 0 < alphabet < 2**16:
        raise ValueError(f"alphabet size must be in [1, 65535], got {alphabet}")
    if symbols.size >= 2**32:
        raise ValueError(f"too many symbols for one stream: {symbols.size}")
    freqs = np.bincount(symbols, minlength=alphabet)
    if len(freqs) > alphabet:
        raise ValueError(f"symbol {int(symbols.max())} is outside the alphabet of {alphabet}")
    lengths = code_lengths(freqs)
    codes = canonical_codes(lengths)
    header = _HEADER.pack(symbols.size, alphabet) + bitpack.pack(lengths, 4)
    if symbols.size == 0:
        return header
    width = int(lengths.max())
    sym_len = lengths[symbols]
    # Left-align every code in a `width`-bit row; the first sym_len bits of each row,
    # read row by row, are the bit stream.
    aligned = (codes[symbols] << (width - sym_len)).astype(np.uint64)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    columns = np.arange(width)[None, :]
    pieces = []
    for lo in range(0, symbols.size, _CHUNK):  # bounds the (symbols x width) matrix
        bitmat = ((aligned[lo : lo + _CHUNK, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        pieces.append(bitmat[columns < sym_len[lo : lo + _CHUNK, None]])
    return header + np.packbits(np.concatenate(pieces)).tobytes()


def decode(data: bytes | memoryview, max_count: int | None = None) -> np.ndarray:
    """Decode a stream written by :func:`encode` into its symbols (int64).

    A stream that says it holds more than ``max_count`` symbols, or more than it has bits,
    is refused before any work: decoding takes memory in proportion to the stream's length.
    """
    data = memoryview(data)
    if len(data) < _HEADER.size:
        raise CodecError(f"Huffman stream of {len(data)} bytes is shorter than its header")
    count, alphabet = _HEADER.unpack_from(data)
    start = _HEADER.size + bitpack.packed_size(alphabet, 4)
    if len(data) < start:
        raise CodecError("Huffman stream ends inside its code-length table")
    if max_count is not None and count > max_count:
        raise CodecError(f"Huffman stream holds {count} symbols; at most {max_count} expected")
    if count > 8 * (len(data) - start):  # every symbol takes at least one bit
        raise CodecError(f"Huffman stream is corrupt: {count} symbols cannot fit in {8 * (len(data) - start)} bits")
    lengths = bitpack.unpack(data[_HEADER.size : start], 4, alphabet).astype(np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if (np.exp2(-lengths[lengths > 0].astype(np.float64))).sum() > 1.0 or not lengths.any():
        raise CodecError("Huffman code-length table is not a valid prefix code")
    width = int(lengths.max())
    codes = canonical_codes(lengths)
    # Table over all `width`-bit windows: the symbol whose code prefixes it and that code's length.
    table_sym = np.zeros(2**width, dtype=np.int64)
    table_len = np.zeros(2**width, dtype=np.int64)  # 0 marks a window no code prefixes
    for s in np.flatnonzero(lengths):
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = (int(codes[s]) + 1) << (width - int(lengths[s]))
        table_sym[lo:hi] = s
        table_len[lo:hi] = lengths[s]

    stream = np.unpackbits(np.frombuffer(data[start:], dtype=np.uint8))
    nbits = stream.size
    padded = np.concatenate([stream, np.zeros(width, dtype=np.uint8)]).astype(np.int64)
    window = np.zeros(nbits, dtype=np.int64)
    for j in range(width):
        window = (window << 1) | padded[j : j + nbits]
    step = table_len[window]
    # next[p]: where the symbol after the one starting at bit p starts; invalid or
    # out-of-stream positions go to the sentinel `nbits`.
    nxt = np.where(step > 0, np.arange(nbits) + step, nbits)
    nxt = np.append(np.minimum(nxt, nbits), nbits)
    starts = np.zeros(1, dtype=np.int64)
    jump = nxt
    while starts.size < count:
        starts = np.concatenate([starts, jump[starts]])
        jump = jump[jump]
    starts = starts[:count]
    if starts[-1] >= nbits or step[starts[-1]] == 0 or starts[-1] + step[starts[-1]] > nbits:
        raise CodecError(f"Huffman stream is corrupt: {count} symbols do not fit in {nbits} bits")
    return table_sym[window[starts]]
