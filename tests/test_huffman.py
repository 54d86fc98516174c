"""Canonical Huffman coding, bit packing and sparse relative indices (Deep Compression Sec. 2, 4)."""

from __future__ import annotations

import numpy as np
import pytest

from tinytamer.codec import bits, huffman, sparse
from tinytamer.errors import CodecError


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 13, 32, 64])
def test_pack_round_trip(width: int) -> None:
    rng = np.random.default_rng(width)
    values = rng.integers(0, 2 ** min(width, 63), size=70_001, dtype=np.uint64)
    data = bits.pack(values, width)
    assert len(data) == bits.packed_size(values.size, width)
    assert np.array_equal(bits.unpack(data, width, values.size), values)


def test_pack_rejects_values_too_wide() -> None:
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        bits.pack(np.array([8]), 3)


def test_huffman_round_trip_skewed_is_smaller_than_fixed_length() -> None:
    rng = np.random.default_rng(0)
    alphabet = 32
    symbols = np.minimum(rng.geometric(0.35, size=200_000) - 1, alphabet - 1)
    data = huffman.encode(symbols, alphabet)
    assert np.array_equal(huffman.decode(data), symbols)
    assert len(data) == huffman.encoded_size(np.bincount(symbols, minlength=alphabet))
    fixed = bits.packed_size(symbols.size, 5)
    assert len(data) < 0.7 * fixed
    # Close to the entropy bound: within 1 bit/symbol plus the table.
    p = np.bincount(symbols) / symbols.size
    entropy_bytes = -(p[p > 0] * np.log2(p[p > 0])).sum() * symbols.size / 8
    assert entropy_bytes <= len(data) <= entropy_bytes + symbols.size / 8 + 64


def test_huffman_round_trip_uniform_is_about_fixed_length() -> None:
    symbols = np.random.default_rng(1).integers(0, 256, size=50_000)
    data = huffman.encode(symbols, 256)
    assert np.array_equal(huffman.decode(data), symbols)
    assert len(data) <= bits.packed_size(symbols.size, 8) + 200


@pytest.mark.parametrize("symbols,alphabet", [([], 4), ([3], 4), ([2, 2, 2, 2], 3), ([0, 1], 2)])
def test_huffman_edge_cases(symbols: list[int], alphabet: int) -> None:
    s = np.array(symbols, dtype=np.int64)
    assert np.array_equal(huffman.decode(huffman.encode(s, alphabet)), s)


def test_huffman_code_lengths_are_limited_and_prefix_free() -> None:
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman.code_lengths(np.array(fib))
    assert lengths.max() <= huffman.MAX_LEN
    assert np.exp2(-lengths.astype(float)).sum() <= 1.0
    symbols = np.repeat(np.arange(40), [min(f, 3000) for f in fib])
    data = huffman.encode(symbols, 40)
    assert np.array_equal(huffman.decode(data), symbols)


def test_canonical_codes_follow_length_then_symbol() -> None:
    codes = huffman.canonical_codes(np.array([2, 1, 3, 3]))
    assert codes.tolist() == [0b10, 0b0, 0b110, 0b111]


def test_huffman_decode_rejects_garbage() -> None:
    data = bytearray(huffman.encode(np.arange(10) % 3, 3))
    with pytest.raises(CodecError):
        huffman.decode(bytes(data[:3]))
    data[0] = 200  # claims 200 symbols in a few bits
    with pytest.raises(CodecError, match="corrupt"):
        huffman.decode(bytes(data))


def test_relative_index_with_overflow_fillers() -> None:
    # Han 2016 Fig. 3 style: 3-bit relative indices, gaps beyond 8 need fillers.
    positions = np.array([1, 4, 5, 30, 31])
    codes, slots = sparse.encode(positions, 3)
    # gap 2 -> code 1; gap 3 -> 2; gap 1 -> 0; gap 25 -> fillers at +8, +8, +8, then code 0; gap 1 -> 0
    assert codes.tolist() == [1, 2, 0, 7, 7, 7, 0, 0]
    assert slots.tolist() == [1, 4, 5, 13, 21, 29, 30, 31]
    assert codes.max() < 2**3
    assert sparse.entry_count(positions, 3) == len(codes)
    assert np.array_equal(sparse.decode(codes), slots)
    assert set(positions) <= set(slots)


def test_relative_index_random_round_trip() -> None:
    rng = np.random.default_rng(2)
    mask = rng.random(100_000) < 0.05
    positions = np.flatnonzero(mask)
    for index_bits in (1, 4, 5, 8):
        codes, slots = sparse.encode(positions, index_bits)
        assert codes.max() < 2**index_bits
        filled = np.zeros(mask.size, dtype=bool)
        filled[sparse.decode(codes)] = True
        assert np.array_equal(filled & mask, mask)
        assert not mask[np.setdiff1d(slots, positions)].any()  # fillers sit on zeros
        assert len(slots) - len(positions) == ((np.diff(positions, prepend=-1) - 1) >> index_bits).sum()
