"""Audio frontends: VGGish's released log-mel constants and the MLPerf Tiny MFCC."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.fft import dct

from tinytamer.audio import get_frontend, list_frontends
from tinytamer.audio import mfcc as M
from tinytamer.audio import vggish_frontend as V
from tinytamer.audio.mel import hertz_to_mel, mel_matrix, periodic_hann
from tinytamer.errors import DataError


def tone(freq: float, samples: int, rate: int = 16000) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(samples) / rate)


def test_vggish_constants_are_the_released_ones() -> None:
    assert (V.SAMPLE_RATE, V.WINDOW, V.HOP, V.FFT_LENGTH) == (16000, 400, 160, 512)
    assert (V.MEL_BANDS, V.MEL_MIN_HZ, V.MEL_MAX_HZ, V.LOG_OFFSET, V.EXAMPLE_FRAMES) == (64, 125.0, 7500.0, 0.01, 96)
    np.testing.assert_allclose(hertz_to_mel(700.0), 1127.0 * np.log(2.0))
    # periodic (not symmetric) Hann: w[0] = 0, w[N/2] = 1, no second zero at the end
    w = periodic_hann(400)
    assert w[0] == 0.0 and w[200] == 1.0 and w[-1] > 0.0


@pytest.mark.parametrize(
    ("samples", "frames", "examples"), [(400, 1, 0), (16000, 98, 1), (15600, 96, 1), (31200, 193, 2)]
)
def test_vggish_frame_and_example_counts(samples: int, frames: int, examples: int) -> None:
    x = tone(1000.0, samples)
    assert V.log_mel(x).shape == (frames, 64)
    if examples:
        assert V.examples(x).shape == (examples, 96, 64)
    else:
        with pytest.raises(DataError, match="shorter than one 0.96 s example"):
            V.examples(x)


def test_vggish_filterbank_edges_centres_and_dc() -> None:
    m = V._MEL
    assert m.shape == (257, 64) and m.min() >= 0.0 and m.max() <= 1.0
    assert not m[0].any()  # DC bin zeroed
    hz = np.linspace(0, 8000, 257)
    assert not m[hz < 125.0].any() and not m[hz > 7500.0].any()
    edges = np.linspace(hertz_to_mel(125.0), hertz_to_mel(7500.0), 66)
    peaks = hertz_to_mel(hz[np.argmax(m, axis=0)])
    # each triangle peaks at the FFT bin nearest its centre on the mel scale
    assert np.all(np.abs(peaks - edges[1:-1]) <= np.diff(hertz_to_mel(hz)).max())
    # triangles are built in the mel domain: weights are linear in mel between edges
    band = 40
    inside = (hertz_to_mel(hz) > edges[band]) & (hertz_to_mel(hz) < edges[band + 1])
    np.testing.assert_allclose(
        m[inside, band], (hertz_to_mel(hz[inside]) - edges[band]) / (edges[band + 1] - edges[band])
    )


@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_a_pure_tone_lands_in_its_band(freq: float) -> None:
    mel = V.log_mel(tone(freq, 16000))
    edges = np.linspace(hertz_to_mel(125.0), hertz_to_mel(7500.0), 66)
    expected = int(np.argmin(np.abs(edges[1:-1] - hertz_to_mel(freq))))
    assert abs(int(np.argmax(mel.mean(axis=0))) - expected) <= 1
    assert mel.min() >= np.log(0.01) - 1e-9  # log(mel + 0.01): silence floors at log(0.01)


def test_silence_gives_the_log_floor() -> None:
    np.testing.assert_allclose(V.log_mel(np.zeros(16000)), np.log(0.01))


def test_mlperf_mfcc_shape_and_definition() -> None:
    assert (M.WINDOW, M.HOP, M.FFT_LENGTH, M.MEL_BANDS, M.MEL_MIN_HZ, M.MEL_MAX_HZ) == (480, 320, 512, 40, 20.0, 4000.0)
    x = tone(700.0, 16000) + 0.01 * np.random.default_rng(0).standard_normal(16000)
    out = M.mfcc(x)
    assert out.shape == (49, 10) and out.dtype == np.float32
    # tf.signal.mfccs_from_log_mel_spectrograms = unnormalized DCT-II / sqrt(2N)
    log_mel = np.log(
        np.abs(np.fft.rfft(x[:480] * periodic_hann(480), 512)) @ mel_matrix(40, 257, 16000, 20.0, 4000.0) + 1e-6
    )
    np.testing.assert_allclose(out[0], dct(log_mel, type=2)[:10] / np.sqrt(80.0), rtol=1e-5, atol=1e-4)


def test_frontends_registry() -> None:
    assert {"mfcc", "vggish"} <= set(list_frontends())
    assert get_frontend("mfcc").shape == (1, 49, 10) and get_frontend("vggish").shape == (1, 96, 64)
    with pytest.raises(DataError, match="unknown audio frontend 'mel'"):
        get_frontend("mel")
    with pytest.raises(DataError, match="lower < upper"):
        mel_matrix(8, 257, 16000, 5000.0, 100.0)
