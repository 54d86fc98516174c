"""The MLPerf Tiny keyword-spotting MFCC frontend (float), as the reference defines it.

mlcommons/tiny, ``benchmark/training/keyword_spotting``: ``kws_util.py`` sets the defaults
``sample_rate=16000``, ``clip_duration_ms=1000``, ``window_size_ms=30.0``,
``window_stride_ms=20.0``, ``feature_type="mfcc"``, ``dct_coefficient_count=10``;
``get_dataset.py`` (``get_preprocess_audio_func``) computes

1. ``tf.signal.stft(frame_length=480, frame_step=320, fft_length=None -> 512,
   window_fn=hann_window)`` (periodic Hann, no end padding: 1 + (16000 - 480) // 320 = 49 frames);
2. ``tf.abs`` (magnitude, 257 bins);
3. ``linear_to_mel_weight_matrix(40, 257, 16000, 20.0, 4000.0)`` (HTK mel, DC bin zeroed);
4. ``log(mel + 1e-6)``;
5. ``mfccs_from_log_mel_spectrograms`` (DCT-II, ``2 sum_n x_n cos(pi k (2n + 1) / 2N)``, scaled by
   ``1 / sqrt(2N)``), first 10 coefficients: 49 x 10 from one second of audio in [-1, 1].
"""

from __future__ import annotations

import numpy as np

from tinytamer.audio.mel import magnitude_spectrogram, mel_matrix

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000
WINDOW = 480  # 30 ms
HOP = 320  # 20 ms
FFT_LENGTH = 512
MEL_BANDS = 40
MEL_MIN_HZ = 20.0
MEL_MAX_HZ = 4000.0
LOG_OFFSET = 1e-6
COEFFICIENTS = 10
FRAMES = 1 + (CLIP_SAMPLES - WINDOW) // HOP  # 49

MEL = mel_matrix(MEL_BANDS, FFT_LENGTH // 2 + 1, SAMPLE_RATE, MEL_MIN_HZ, MEL_MAX_HZ)


def dct_matrix(bands: int, coefficients: int) -> np.ndarray:
    """(bands x coefficients) DCT-II as ``tf.signal.mfccs_from_log_mel_spectrograms`` applies it."""
    n = np.arange(bands)[:, None]
    k = np.arange(coefficients)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * bands)) / np.sqrt(2.0 * bands)


DCT = dct_matrix(MEL_BANDS, COEFFICIENTS)


def mfcc(wave: np.ndarray) -> np.ndarray:
    """49 x 10 float32 MFCCs of a 16 kHz mono waveform in [-1, 1] (one second; longer input gives more frames)."""
    spec = magnitude_spectrogram(wave, WINDOW, HOP, FFT_LENGTH)
    return (np.log(spec @ MEL + LOG_OFFSET) @ DCT).astype(np.float32)
