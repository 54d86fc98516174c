"""VGGish's log-mel frontend, exactly as released with the model.

Hershey et al. 2017, "CNN Architectures for Large-Scale Audio Classification"; the
released ``vggish_input.waveform_to_examples`` / ``mel_features.log_mel_spectrogram``:

1. mono at 16 kHz (the caller resamples; see ``tinytamer.data.audio.resample``);
2. 25 ms frames (400 samples) every 10 ms (160), periodic Hann window;
3. FFT length 512 (the next power of two above 400), magnitude spectrum (257 bins);
4. 64 mel bands from 125 to 7500 Hz on the HTK scale, built in the mel domain, DC bin zeroed;
5. ``log(mel + 0.01)``;
6. non-overlapping examples of 96 frames (0.96 s) x 64 bands; a partial tail is dropped.
"""

from __future__ import annotations

import numpy as np

from tinytamer.audio.mel import magnitude_spectrogram, mel_matrix
from tinytamer.errors import DataError

SAMPLE_RATE = 16000
WINDOW = 400  # 0.025 s
HOP = 160  # 0.010 s
FFT_LENGTH = 512
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EXAMPLE_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # the shortest input giving one example

_MEL = mel_matrix(MEL_BANDS, FFT_LENGTH // 2 + 1, SAMPLE_RATE, MEL_MIN_HZ, MEL_MAX_HZ)


def log_mel(wave: np.ndarray) -> np.ndarray:
    """Frames x 64 log-mel of a 16 kHz mono waveform in [-1, 1] (steps 2-5)."""
    spec = magnitude_spectrogram(wave, WINDOW, HOP, FFT_LENGTH)
    return np.log(spec @ _MEL + LOG_OFFSET)


def examples(wave: np.ndarray) -> np.ndarray:
    """N x 96 x 64 float32 examples of a 16 kHz mono waveform in [-1, 1] (steps 2-6)."""
    if len(wave) < EXAMPLE_SAMPLES:
        raise DataError(
            f"VGGish frontend: {len(wave)} samples is shorter than one 0.96 s example ({EXAMPLE_SAMPLES} at 16 kHz)"
        )
    mel = log_mel(wave)
    count = len(mel) // EXAMPLE_FRAMES
    return mel[: count * EXAMPLE_FRAMES].reshape(count, EXAMPLE_FRAMES, MEL_BANDS).astype(np.float32)
