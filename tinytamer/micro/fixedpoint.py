"""Fixed-point requantization exactly as integer runtimes do it.

The arithmetic of gemmlowp / TensorFlow Lite (Jacob et al. 2018, "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", Sec. 2.2, eq. 5-6): a real multiplier ``M`` in (0, 2^31) is stored
as a Q31 integer ``M0`` in [2^30, 2^31) and a power-of-two exponent, and an
int32 accumulator is scaled by ``SaturatingRoundingDoublingHighMul`` (the
rounded high half of the doubled 64-bit product) then ``RoundingDivideByPOT``
(arithmetic right shift, rounding half away from zero).  The numpy functions
here are the oracle the generated C (runtime/tt_kernels.c, ``tt_requant``)
must match bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Split a non-negative real multiplier into (Q31 multiplier, shift) like TFLite.

    ``real ~= multiplier * 2^(shift - 31)``; shift > 0 is a left shift.  Multipliers
    too small to represent (below 2^-31) become (0, 0): the output is then the zero point.
    """
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"requantization multiplier must be finite and >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    frac, shift = math.frexp(real)  # real = frac * 2^shift, frac in [0.5, 1)
    q = round(frac * (1 << 31))
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise ValueError(f"requantization multiplier {real} is too large for int32 arithmetic")
    return int(q), int(shift)


def saturate_int32(x: np.ndarray) -> np.ndarray:
    return np.clip(x, INT32_MIN, INT32_MAX)


def srdhm(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul on int32 values held in int64 arrays."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    s = ab + nudge
    # C integer division truncates toward zero; numpy's // floors, so divide magnitudes.
    q = np.sign(s) * (np.abs(s) >> 31)
    return np.where(overflow, INT32_MAX, q)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """RoundingDivideByPOT: x / 2^exponent rounded half away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def requantize(acc: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """MultiplyByQuantizedMultiplier: int32 accumulator times M0 * 2^(shift-31), int64 result.

    The left shift saturates to int32 (the C kernel does the same in 64 bits).
    """
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = saturate_int32(np.asarray(acc, dtype=np.int64) << left)
    return rounding_divide_by_pot(srdhm(x, multiplier), right)


# The single-multiply form needs e = -shift in [1, RQ_MAX_RSHIFT] (so its offset fits in
# int32) and |acc| < 2^30 (so SMMULR's doubled operand does).
RQ_MAX_RSHIFT = 22
# A record's rshift of 0 marks a channel the kernel requantizes in the general form.
RQ_GENERAL = 0


@dataclass(frozen=True)
class FastRequant:
    """Per output channel (bias, mult, rshift, offset) records for tt_rq_chan, and how many
    channels are not in the single-multiply form: ``constant`` ones (their output is one
    value over every accumulator the layer can produce) and ``general`` ones (requantized
    by the general form inside the fast kernel: the per-channel fallback)."""

    records: np.ndarray  # int32 [C, 4]
    constant: int
    general: int


def fast_records(
    bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, abs_weight_sum: np.ndarray, out_zp: int
) -> FastRequant:
    """The requantization records of a conv / dense layer's channels, each exact.

    A channel takes the first form that is provably equal to :func:`requantize` (+ zero
    point) over its accumulators, bounded by ``|bias| + 255 * sum|w|`` (|x - zp| <= 255):

    - single-multiply: SRDHM(acc, m) is SMMULR(2 acc, m) while 2 acc fits in int32, and
      RoundingDivideByPOT by e is (t + 2^(e-1) - [t < 0]) >> e for e >= 1; the zero point
      rides in the offset as out_zp * 2^e.  A multiplier of 0.5 or more (e <= 0: nothing to
      round after SRDHM) or below 2^-23 (the offset overflows) does not fit it;
    - constant: requantization is monotone in the accumulator, so equal results at both
      ends of the range make every result that value v: (0, 0, 1, 2v + 1) gives it (mult 0
      makes t 0, and (2v + 1) >> 1 = v).  This is a pruned all-zero channel, whatever its
      bias, and most channels with a tiny multiplier;
    - general: (bias, mult, RQ_GENERAL, shift << 8 | out_zp & 0xFF); the kernel runs
      tt_requant_inline on the channel, the rest of the layer keeps the fast form.
    """
    bias = np.asarray(bias, dtype=np.int64)
    mult = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    spread = 255 * np.asarray(abs_weight_sum, dtype=np.int64)
    if not -128 <= out_zp <= 127:
        raise ValueError(f"output zero point {out_zp} is not an int8 value")
    records = np.zeros((len(bias), 4), dtype=np.int64)
    constant = general = 0
    for c in range(len(bias)):
        e = 1 if mult[c] == 0 else -int(shift[c])
        if np.abs(bias[c]) + spread[c] < 1 << 30 and 1 <= e <= RQ_MAX_RSHIFT:
            records[c] = (bias[c], mult[c], e, (1 << (e - 1)) + (out_zp << e))
            continue
        # The kernel's int32 accumulator wraps as the general kernels' does; the range is
        # taken in int64 and saturated like it only where it cannot wrap.
        lo, hi = requantize(np.array([bias[c] - spread[c], bias[c] + spread[c]]), int(mult[c]), int(shift[c]))
        if lo == hi:
            # Clamped to int8 afterwards: any value beyond +-129 clamps alike.
            v = int(np.clip(lo + out_zp, -129, 128))
            records[c] = (0, 0, 1, 2 * v + 1)
            constant += 1
        else:
            records[c] = (bias[c], mult[c], RQ_GENERAL, (int(shift[c]) << 8) | (out_zp & 0xFF))
            general += 1
    return FastRequant(records.astype(np.int32), constant, general)


def apply_records(acc: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """tt_rq_chan in int64 numpy (the C runtime's arithmetic, for tests and checks): the
    requantized value plus the zero point, before the clamp."""
    _, m, e, off = (int(v) for v in rec)
    acc = np.asarray(acc, dtype=np.int64)
    if e == RQ_GENERAL:
        zp = ((off & 0xFF) ^ 0x80) - 0x80
        return requantize(acc, m, off >> 8) + zp
    t = (((2 * acc) & 0xFFFFFFFF ^ 0x80000000) - 0x80000000) * m + (1 << 31) >> 32
    return (t + off + (t >> 31)) >> e
