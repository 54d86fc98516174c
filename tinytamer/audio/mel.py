"""The pieces every spectral frontend shares: framing, the periodic Hann window, the
magnitude spectrum and the HTK mel filterbank.

The filterbank is built the way VGGish's ``mel_features.spectrogram_to_mel_matrix`` and
TensorFlow's ``tf.signal.linear_to_mel_weight_matrix`` build it: band edges equally spaced
on the HTK mel scale (``1127 ln(1 + f / 700)``), triangles drawn in the mel domain over the
FFT bins' mel positions, and the DC bin's row zeroed.
"""

from __future__ import annotations

import numpy as np

from tinytamer.errors import DataError


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale, ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def periodic_hann(n: int) -> np.ndarray:
    """The periodic Hann window (``0.5 - 0.5 cos(2 pi k / n)``), as ``tf.signal.hann_window``."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / n * np.arange(n))


def frame(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """Frames of ``length`` every ``hop`` along axis 0, without padding (a partial tail is dropped)."""
    if len(x) < length:
        raise DataError(f"audio frontend: {len(x)} samples is shorter than one frame of {length}")
    count = 1 + (len(x) - length) // hop
    return np.lib.stride_tricks.sliding_window_view(x, length, axis=0)[::hop][:count]


def magnitude_spectrogram(x: np.ndarray, length: int, hop: int, fft_length: int) -> np.ndarray:
    """``|rfft(frame * periodic_hann, fft_length)|``: frames x (fft_length // 2 + 1)."""
    frames = frame(np.asarray(x, dtype=np.float64), length, hop) * periodic_hann(length)
    return np.abs(np.fft.rfft(frames, n=fft_length, axis=-1))


def mel_matrix(num_bands: int, num_bins: int, rate: int, lower_hz: float, upper_hz: float) -> np.ndarray:
    """The (num_bins x num_bands) HTK mel filterbank described in the module docstring."""
    if not 0.0 <= lower_hz < upper_hz <= rate / 2:
        raise DataError(f"mel filterbank: need 0 <= lower < upper <= {rate / 2} Hz, got {lower_hz}..{upper_hz}")
    bins_mel = hertz_to_mel(np.linspace(0.0, rate / 2, num_bins))
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_bands + 2)
    lo, center, hi = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lo) / (center - lo)
    falling = (hi - bins_mel[:, None]) / (hi - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights
