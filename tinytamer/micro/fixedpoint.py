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
