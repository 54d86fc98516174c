"""Audio data: WAV reading (edge cases and hostile files), resampling, augmentation, datasets."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from tinytamer.data import audio as A
from tinytamer.data import get_dataset
from tinytamer.data.audio import fix_length, load_clip, mix_noise, read_wav, resample, time_shift, write_wav
from tinytamer.errors import DataError

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def tone(freq: float, rate: int, seconds: float = 0.5) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def test_read_mono_and_stereo_is_averaged(tmp_path: Path) -> None:
    x = (np.arange(100, dtype=np.int16) * 100).astype(np.int16)
    wavfile.write(tmp_path / "m.wav", 8000, x)
    got, rate = read_wav(tmp_path / "m.wav")
    assert rate == 8000 and got.dtype == np.float32
    np.testing.assert_allclose(got, x / 32768.0)
    stereo = np.stack([x, np.zeros_like(x)], axis=1)
    wavfile.write(tmp_path / "s.wav", 8000, stereo)
    np.testing.assert_allclose(read_wav(tmp_path / "s.wav")[0], x / 32768.0 / 2)


def test_resample_keeps_the_frequency_and_doubles_the_length() -> None:
    y = resample(tone(440.0, 8000), 8000)
    assert len(y) == 8000
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 440.0) < 3.0
    np.testing.assert_array_equal(resample(y, 16000), y)


def test_fix_length_pads_and_crops_and_load_clip_makes_16k(tmp_path: Path) -> None:
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(x, 7), [0, 1, 2, 3, 4, 0, 0])
    np.testing.assert_array_equal(fix_length(x, 3, 1), [1, 2, 3])
    write_wav(tmp_path / "t.wav", tone(300.0, 8000, 0.25), 8000)
    clip = load_clip(tmp_path / "t.wav")
    assert clip.shape == (16000,) and clip.dtype == np.int16
    assert np.abs(clip[:3900]).max() > 10000 and np.abs(clip[4100:]).max() == 0


def test_time_shift_and_noise_mixing() -> None:
    x = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(time_shift(x, 2), [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(time_shift(x, -2), [3, 4, 5, 0, 0])
    mixed = mix_noise(np.full(4, 0.95, np.float32), np.ones(10, np.float32), 0.1)
    np.testing.assert_allclose(mixed, 1.0)  # clipped to [-1, 1]


def test_augment_is_seeded_by_torch() -> None:
    aug = A.Augment(A.synthetic_noise(3, 1600, 0), max_shift=100)
    x = np.linspace(-0.5, 0.5, 1600).astype(np.float32)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    np.testing.assert_array_equal(a, aug(x))
    assert not np.array_equal(a, x)


# ---------------------------------------------------------------------------------- hostile files
def _header(fmt_tag: int = 1, bits: int = 16, data_len: int = 4, channels: int = 1) -> bytes:
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, 16000, 32000 * channels, 2 * channels, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_len)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_len)
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a WAV file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a WAV file"),
        (_header(data_len=0x7FFFF000) + bytes(8), "claims 2147479552 bytes"),
        (_header(data_len=0), "holds no samples"),
        (_header(fmt_tag=3, bits=32) + bytes(4), "not 16-bit PCM"),
        (_header(bits=8) + bytes(4), "not 16-bit PCM"),
        (_header(channels=6) + bytes(4), "6 channels"),
        (b"RIFF\x00\x00\x00\x00WAVE" + b"LIST" + struct.pack("<I", 4) + b"abcd", "no fmt chunk"),
        (_header()[:-8] + bytes(2), "no data chunk"),
    ],
    ids=["empty", "png", "huge-data-claim", "no-samples", "float", "8-bit", "6-channels", "no-fmt", "no-data"],
)
def test_hostile_wav_fails_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_wav(path)
    assert str(path) in str(err.value)


def test_oversized_wav_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wavfile.write(tmp_path / "big.wav", 16000, np.zeros(4000, np.int16))
    monkeypatch.setattr(A, "MAX_WAV_BYTES", 1024)
    with pytest.raises(DataError, match="big.wav: .* over the"):
        read_wav(tmp_path / "big.wav")


def test_missing_wav_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.wav: cannot read"):
        read_wav(tmp_path / "nope.wav")


# ---------------------------------------------------------------------------------- datasets
def _folder(root: Path, classes: dict[str, float], n: int) -> None:
    for name, freq in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            write_wav(root / name / f"{i}.wav", tone(freq * (1 + 0.01 * i), 8000, 0.8), 8000)


def test_audiofolder_splits_limits_and_features(tmp_path: Path) -> None:
    _folder(tmp_path / "sc", {"high": 2000.0, "low": 300.0}, 10)
    b = get_dataset("audiofolder", tmp_path / "sc", cache_dir=tmp_path / "cache", augment=True, test_fraction=0.2)
    assert b.meta.class_names == ["high", "low"] and b.meta.input_shape == (1, 49, 10)
    assert (len(b.train), len(b.val), len(b.test)) == (14, 2, 4)
    assert b.train.augment is not None and b.test.augment is None
    x, y = b.test[0]
    assert x.shape == (1, 49, 10) and x.dtype == torch.float32 and y in (0, 1)
    small = get_dataset("audiofolder", tmp_path / "sc", cache_dir=tmp_path / "cache", limit=2, frontend="vggish")
    assert len(small.test) == 2 and set(small.test.labels) == {0, 1}
    assert small.test[0][0].shape == (1, 96, 64)


def test_audiofolder_reads_speech_commands_lists_and_noise(tmp_path: Path) -> None:
    root = tmp_path / "sc"
    _folder(root, {"yes": 500.0, "no": 900.0}, 4)
    (root / "validation_list.txt").write_text("yes/0.wav\nno/0.wav\n")
    (root / "testing_list.txt").write_text("yes/1.wav\nno/1.wav\n")
    (root / "_background_noise_").mkdir()
    write_wav(root / "_background_noise_" / "hum.wav", 0.1 * tone(50.0, 16000, 3.0), 16000)
    b = get_dataset("audiofolder", root, cache_dir=tmp_path / "cache", augment=True)
    assert b.meta.class_names == ["no", "yes"]
    assert (len(b.train), len(b.val), len(b.test)) == (4, 2, 2)
    assert b.train.augment.noise.shape == (3, 16000)


def test_audiofolder_names_a_corrupt_clip(tmp_path: Path) -> None:
    _folder(tmp_path / "sc", {"a": 400.0, "b": 800.0}, 3)
    (tmp_path / "sc" / "b" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(DataError, match="broken.wav"):
        get_dataset("audiofolder", tmp_path / "sc", cache_dir=tmp_path / "cache")


def test_audiofolder_and_fsdd_need_a_root() -> None:
    with pytest.raises(DataError, match="audiofolder: pass root="):
        get_dataset("audiofolder")
    with pytest.raises(DataError, match="fsdd: pass root="):
        get_dataset("fsdd")


@pytest.mark.skipif(not FSDD.is_dir(), reason="the FSDD copy (shared/data/fsdd) is not here")
def test_fsdd_test_speakers_are_never_in_training(tmp_path: Path) -> None:
    b = get_dataset("fsdd", FSDD, cache_dir=tmp_path, limit=40)
    assert b.meta.num_classes == 10 and len(b.test) == 40
    with pytest.raises(DataError, match="must name speakers"):
        get_dataset("fsdd", FSDD, cache_dir=tmp_path, test_speakers=["nobody"])
    train = A._fsdd_recordings(FSDD)
    names = [p.name for p in train.iterdir()]
    test_speakers = {n.split("_")[1] for n in names} & set(A.FSDD_TEST_SPEAKERS)
    assert test_speakers == set(A.FSDD_TEST_SPEAKERS)
    # clips of a held-out speaker never appear among the training waves
    held = load_clip(train / "3_theo_0.wav", 16000)
    full = get_dataset("fsdd", FSDD, cache_dir=tmp_path)
    assert not (full.train.waves == held).all(axis=1).any()
    assert (full.test.waves == held).all(axis=1).any()


@needs_espeak
def test_keywords_are_synthesized_split_by_voice_and_cached(tmp_path: Path) -> None:
    from tinytamer.data import keywords as K

    opts = dict(accents=["en-us"], speeds=[160], pitches=[50], train_variants=["m1", "f1"], test_variants=["m7"])
    b = get_dataset("keywords", cache_dir=tmp_path, val_fraction=0.0, **opts)
    assert b.meta.class_names == list(K.CLASS_NAMES) and b.meta.num_classes == 12
    assert np.bincount(b.train.labels).tolist() == [2] * 12 and np.bincount(b.test.labels).tolist() == [1] * 12
    speech = b.train.waves[b.train.labels == 0]
    assert np.abs(speech.astype(np.int32)).max() > 5000  # a spoken word, not silence
    assert len(list(tmp_path.glob("keywords-*.npz"))) == 1
    again = get_dataset("keywords", cache_dir=tmp_path, val_fraction=0.0, **opts)
    np.testing.assert_array_equal(again.test.waves, b.test.waves)
    with pytest.raises(DataError, match="in train and test"):
        get_dataset("keywords", cache_dir=tmp_path, **{**opts, "test_variants": ["m1"]})


def test_keywords_without_espeak_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from tinytamer.data import keywords as K

    monkeypatch.setattr(K.shutil, "which", lambda _: None)
    with pytest.raises(DataError, match="espeak-ng is not installed"):
        K.espeak()
