"""The MLPerf Tiny MFCC in fixed point: the integer arithmetic the device runs, in numpy.

The same steps as :mod:`tinytamer.audio.mfcc` (480-sample frames every 320 samples,
periodic Hann, 512-point FFT, magnitude, 40 HTK mel bands 20-4000 Hz, log, DCT-II, 10
coefficients), in the form of CMSIS-DSP's ``arm_mfcc_q15`` (normalize, window, FFT with
scaling, magnitude, mel, log, DCT), each step exact integer arithmetic that the C kernel
``tt_mfcc.c`` repeats bit for bit:

1. window: ``xw = (x * hann_q15 + 2^14) >> 15`` on int16 audio (Q15 window);
2. block normalization: ``xn = xw << s`` (``xw >> -s`` for loud frames) with ``s`` in -2..14
   the largest shift keeping every ``|xn| < 2^14`` (headroom for the butterflies);
3. the 512-point real FFT as a 256-point complex one (even samples real, odd imaginary):
   radix-2 decimation in time on Q15 twiddles, each stage rounding the twiddle product
   (``(p + 2^14) >> 15``) and halving (``>> 1``); then the split
   ``X[k] = (E + W^k O) >> 2`` with ``E = Z[k] + conj(Z[256 - k])``,
   ``O = (Z[k] - conj(Z[256 - k])) / i``, ``W = e^(-2 pi i / 512)`` in Q15: ``X = FFT(xn) / 512``;
4. magnitude: ``floor(sqrt(Xr^2 + Xi^2))`` for bins 0..256;
5. mel: ``E_j = sum_k |X_k| * w_jk`` with Q15 weights (sparse: each band's first bin and run);
6. log: ``L = log2(max(E, 1))`` in Q16 from the leading bit and a 257-entry Q16 table of
   ``log2(1 + i/256)`` with linear interpolation on the next 8 bits, minus ``(21 + s) * 2^16``
   (undoing 1/32768 on input, 1/512 in the FFT, 2^s, Q15 weights), floored at
   ``log2(1e-6)`` (the reference's ``log(mel + 1e-6)``);
7. DCT: ``c = (sum_j L_j * D_jk + 2^19) >> 20`` with ``D`` the reference's DCT-II times ln 2
   in Q20: MFCCs in Q16 (int32);
8. int8 output: gemmlowp requantization ``requantize(c, m, shift) + zp`` with ``m, shift``
   from ``1 / (scale * 2^16)`` (the network input's quantization).

``mfcc_q16`` returns step 7 (``/ 2^16`` is the float MFCC a model trains on, the ``mfcc-q``
frontend); ``mfcc_int8`` adds step 8 (what the device hands the network).
"""

from __future__ import annotations

import numpy as np

from tinytamer.audio import mfcc as ref
from tinytamer.audio.mel import periodic_hann

FFT = ref.FFT_LENGTH
HALF = FFT // 2  # the complex FFT's length
STAGES = 9  # halvings: 8 in the complex FFT, the split's >> 2 less its doubling
BINS = FFT // 2 + 1
HEADROOM_BITS = 14
LOG_FRAC_BITS = 16
LUT_BITS = 8
DCT_BITS = 20
# mel_true = E * 2^-(15 + 15 - 9 + s): int16 input is x * 2^15, weights are Q15, the FFT halved 9 times
SCALE = 15 + 15 - STAGES
LOG_FLOOR = int(np.floor(np.log2(ref.LOG_OFFSET) * (1 << LOG_FRAC_BITS)))


def _q(x: np.ndarray, bits: int) -> np.ndarray:
    return np.rint(np.asarray(x, dtype=np.float64) * (1 << bits)).astype(np.int64)


# ------------------------------------------------------------------------------ tables
WINDOW_Q15 = _q(periodic_hann(ref.WINDOW), 15).clip(0, 32767).astype(np.int16)
_K = np.arange(HALF + 1)  # W^k for k = 0..256: the complex FFT's twiddles are the even ones
TWIDDLE_RE = _q(np.cos(2 * np.pi * _K / FFT), 15).clip(-32768, 32767).astype(np.int16)
TWIDDLE_IM = _q(-np.sin(2 * np.pi * _K / FFT), 15).clip(-32768, 32767).astype(np.int16)
BIT_REVERSE = np.array([int(f"{i:08b}"[::-1], 2) for i in range(HALF)], dtype=np.int16)
LOG2_LUT = _q(np.log2(1.0 + np.arange((1 << LUT_BITS) + 1) / (1 << LUT_BITS)), LOG_FRAC_BITS).astype(np.int32)
DCT_Q20 = _q(ref.DCT * np.log(2.0), DCT_BITS).astype(np.int32)  # (40, 10): log2 -> ln folded in


def _sparse_mel() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each band's first bin, its run length, and the run's Q15 weights, concatenated."""
    w = _q(ref.MEL, 15)
    start = np.zeros(ref.MEL_BANDS, dtype=np.int16)
    length = np.zeros(ref.MEL_BANDS, dtype=np.int16)
    weights = []
    for j in range(ref.MEL_BANDS):
        nz = np.flatnonzero(w[:, j])
        start[j], length[j] = nz[0], nz[-1] - nz[0] + 1
        weights.append(w[nz[0] : nz[-1] + 1, j])
    return start, length, np.concatenate(weights).astype(np.uint16)


MEL_START, MEL_LENGTH, MEL_WEIGHTS = _sparse_mel()
# The dense matrix the sparse tables describe (the reference applies this).
MEL_Q15 = np.zeros((BINS, ref.MEL_BANDS), dtype=np.int64)
_offset = 0
for _j in range(ref.MEL_BANDS):
    MEL_Q15[MEL_START[_j] : MEL_START[_j] + MEL_LENGTH[_j], _j] = MEL_WEIGHTS[_offset : _offset + MEL_LENGTH[_j]]
    _offset += int(MEL_LENGTH[_j])
_MEL_F64 = MEL_Q15.astype(np.float64)
_DCT_F64 = DCT_Q20.astype(np.float64)


# ------------------------------------------------------------------------------ steps
def _fft(re: np.ndarray, im: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 256-point complex FFT of step 3 on each row (int64 holding int32 values)."""
    re = np.ascontiguousarray(re[:, BIT_REVERSE])
    im = np.ascontiguousarray(im[:, BIT_REVERSE])
    half = 1
    while half < HALF:
        idx = np.arange(half) * (FFT // (2 * half))
        wr, wi = TWIDDLE_RE[idx].astype(np.int64), TWIDDLE_IM[idx].astype(np.int64)
        r = re.reshape(len(re), -1, 2, half)  # views: the butterflies write in place
        i = im.reshape(len(im), -1, 2, half)
        br, bi = r[:, :, 1], i[:, :, 1]
        tr = (br * wr - bi * wi + (1 << 14)) >> 15
        ti = (br * wi + bi * wr + (1 << 14)) >> 15
        ar, ai = r[:, :, 0].copy(), i[:, :, 0].copy()
        r[:, :, 0], i[:, :, 0] = (ar + tr) >> 1, (ai + ti) >> 1
        r[:, :, 1], i[:, :, 1] = (ar - tr) >> 1, (ai - ti) >> 1
        half *= 2
    return re, im


def _rfft(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: bins 0..256 of each row of 512 real samples (split of the half-length FFT)."""
    zr, zi = _fft(x[:, 0::2], x[:, 1::2])
    k = np.arange(HALF + 1)
    a, b = k % HALF, (HALF - k) % HALF
    er, ei = zr[:, a] + zr[:, b], zi[:, a] - zi[:, b]
    odd_r, odd_i = zi[:, a] + zi[:, b], zr[:, b] - zr[:, a]
    wr, wi = TWIDDLE_RE.astype(np.int64), TWIDDLE_IM.astype(np.int64)
    tr = (odd_r * wr - odd_i * wi + (1 << 14)) >> 15
    ti = (odd_r * wi + odd_i * wr + (1 << 14)) >> 15
    return (er + tr) >> 2, (ei + ti) >> 2


def isqrt(n: np.ndarray) -> np.ndarray:
    """``floor(sqrt(n))`` of non-negative int64 (exact: float estimate, then corrected)."""
    r = np.floor(np.sqrt(n.astype(np.float64))).astype(np.int64)
    r -= (r * r > n).astype(np.int64)
    r += ((r + 1) * (r + 1) <= n).astype(np.int64)
    return r


def log2_q16(e: np.ndarray) -> np.ndarray:
    """Step 6's ``log2(max(e, 1))`` in Q16 for e < 2^63 (leading bit + interpolated table)."""
    e = np.maximum(e, 1).astype(np.int64)
    msb = np.floor(np.log2(e.astype(np.float64))).astype(np.int64)
    # float log2 can round up just below a power of two: correct the leading bit exactly
    msb -= ((np.int64(1) << msb) > e).astype(np.int64)
    msb += ((np.int64(1) << (msb + 1)) <= e).astype(np.int64)
    # the 16 bits below the leading one: top 8 index the table, low 8 interpolate
    frac = np.where(msb >= 16, e >> np.maximum(msb - 16, 0), e << np.maximum(16 - msb, 0)) & 0xFFFF
    idx, rem = frac >> LUT_BITS, frac & ((1 << LUT_BITS) - 1)
    lut = LOG2_LUT.astype(np.int64)
    return (msb << LOG_FRAC_BITS) + lut[idx] + (((lut[idx + 1] - lut[idx]) * rem) >> LUT_BITS)


def frames_of(audio: np.ndarray) -> np.ndarray:
    """int16 audio -> (frames, 480) int64 frames (no padding, as the reference)."""
    a = np.asarray(audio)
    if a.dtype != np.int16 or a.ndim != 1:
        raise ValueError(f"fixed-point MFCC takes 1-D int16 audio, got {a.dtype} {a.shape}")
    count = 1 + (len(a) - ref.WINDOW) // ref.HOP
    return np.lib.stride_tricks.sliding_window_view(a, ref.WINDOW)[:: ref.HOP][:count].astype(np.int64)


def mfcc_q16(audio: np.ndarray) -> np.ndarray:
    """Steps 1-7: (frames, 10) int32 MFCCs in Q16 of int16 audio at 16 kHz."""
    xw = (frames_of(audio) * WINDOW_Q15.astype(np.int64) + (1 << 14)) >> 15
    peak = np.abs(xw).max(axis=1)
    bits = np.where(peak > 0, np.floor(np.log2(np.maximum(peak, 1))).astype(np.int64) + 1, 0)
    shift = np.minimum(HEADROOM_BITS - bits, HEADROOM_BITS)  # -2..14: loud frames shift right
    x = np.zeros((len(xw), FFT), dtype=np.int64)
    x[:, : ref.WINDOW] = np.where(
        shift[:, None] >= 0, xw << np.maximum(shift, 0)[:, None], xw >> np.maximum(-shift, 0)[:, None]
    )
    re, im = _rfft(x)
    mag = isqrt(re**2 + im**2)
    # float64 matmuls are exact here (every partial sum < 2^53) and run on BLAS
    energy = (mag.astype(np.float64) @ _MEL_F64).astype(np.int64)
    logs = log2_q16(energy) - ((SCALE + shift[:, None]) << LOG_FRAC_BITS)
    logs = np.maximum(logs, LOG_FLOOR)
    acc = (logs.astype(np.float64) @ _DCT_F64).astype(np.int64)
    return ((acc + (1 << (DCT_BITS - 1))) >> DCT_BITS).astype(np.int32)


def mfcc_float(wave: np.ndarray) -> np.ndarray:
    """The ``mfcc-q`` frontend: float audio -> int16 -> :func:`mfcc_q16` / 2^16 (float32)."""
    audio = np.clip(np.rint(np.asarray(wave, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    return (mfcc_q16(audio) / float(1 << LOG_FRAC_BITS)).astype(np.float32)
