"""Audio datasets: WAV files -> fixed-length 16 kHz clips -> a frontend's feature map.

Reading: 16-bit PCM WAV, mono or stereo (averaged), any rate, resampled to 16 kHz with
scipy's polyphase resampler.  The RIFF chunks are walked and bounded by the file's size
before scipy decodes anything, so a header that claims more than the file holds fails
naming the file instead of allocating what it claims.

Clips are kept as int16 (N x samples); each item runs the augmentations (train split only:
time shift and background-noise mixing, as in the MLPerf Tiny keyword-spotting reference)
and then the named frontend (``tinytamer.audio.frontends``).

Datasets: ``fsdd`` (the Free Spoken Digit Dataset, split by speaker) and ``audiofolder``
(``<class>/<clip>.wav``, the layout of Google's Speech Commands); ``keywords`` lives in
:mod:`tinytamer.data.keywords`.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from scipy.io import wavfile
from torch.utils.data import Dataset

from tinytamer.audio import Frontend, get_frontend
from tinytamer.data.arrays import interleave_by_class, split_indices
from tinytamer.data.cache import cache_root, digest, load_arrays, save_arrays
from tinytamer.data.registry import DatasetBundle, DatasetMeta, register_dataset
from tinytamer.errors import DataError

SAMPLE_RATE = 16000
# 64 MiB is over half an hour of 16 kHz mono: a clip dataset never needs more per file.
MAX_WAV_BYTES = 64 << 20
_PCM, _EXTENSIBLE = 1, 0xFFFE
_MAX_CHUNKS = 64  # real WAV files have 2-5 chunks; a long run of tiny chunks is hostile


# ---------------------------------------------------------------------------------- reading
def _check_riff(path: Path, head: bytes, size: int) -> None:
    """Walk the RIFF chunks: 16-bit PCM ``fmt``, a ``data`` chunk inside the file."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise DataError(f"{path}: not a WAV file (no RIFF/WAVE header)")
    pos, fmt, data = 12, None, None
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > size:
            break
        cid, clen = struct.unpack_from("<4sI", head, pos)
        if pos + 8 + clen > size:
            raise DataError(f"{path}: the '{cid.decode('latin-1')}' chunk claims {clen} bytes but the file has {size}")
        if cid == b"fmt ":
            if clen < 16:
                raise DataError(f"{path}: the fmt chunk is {clen} bytes, shorter than 16")
            fmt = struct.unpack_from("<HHIIHH", head, pos + 8)
        elif cid == b"data":
            data = clen
        pos += 8 + clen + (clen & 1)
        if fmt is not None and data is not None:
            break
    if fmt is None or data is None:
        raise DataError(f"{path}: no {'fmt' if fmt is None else 'data'} chunk found")
    tag, channels, rate, _, _, bits = fmt
    if tag not in (_PCM, _EXTENSIBLE) or bits != 16:
        raise DataError(f"{path}: not 16-bit PCM (format tag {tag}, {bits} bits); convert it to 16-bit PCM WAV")
    if channels not in (1, 2) or rate < 1000:
        raise DataError(f"{path}: {channels} channels at {rate} Hz; expected mono or stereo at >= 1 kHz")
    if data == 0:
        raise DataError(f"{path}: the WAV file holds no samples")


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """``(float32 mono samples in [-1, 1], rate)`` of a 16-bit PCM WAV (stereo is averaged)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_WAV_BYTES:
            raise DataError(f"{path}: {size} bytes is over the {MAX_WAV_BYTES >> 20} MiB a clip may have")
        head = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the WAV file ({e.strerror or e})") from e
    _check_riff(path, head, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", wavfile.WavFileWarning)
            rate, samples = wavfile.read(io.BytesIO(head))
    except (ValueError, wavfile.WavFileWarning, OSError, EOFError) as e:
        raise DataError(f"{path}: corrupt WAV file ({e})") from e
    if samples.dtype != np.int16:
        raise DataError(f"{path}: decoded as {samples.dtype}, not 16-bit PCM")
    x = samples.astype(np.float32) / 32768.0
    if x.ndim == 2:
        x = x.mean(axis=1)
    if len(x) == 0:
        raise DataError(f"{path}: the WAV file holds no samples")
    return x, int(rate)


def write_wav(path: str | Path, wave: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write float samples in [-1, 1] as 16-bit PCM mono."""
    wavfile.write(path, rate, to_int16(wave))


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` at ``rate`` Hz resampled to ``target`` Hz (scipy's polyphase filter)."""
    if rate == target:
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly  # slow to import; only when a rate differs

    g = gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def fix_length(x: np.ndarray, samples: int, offset: int = 0) -> np.ndarray:
    """``samples`` samples of ``x`` from ``offset``: cropped, or zero-padded at the end."""
    out = np.zeros(samples, dtype=x.dtype)
    part = x[offset : offset + samples]
    out[: len(part)] = part
    return out


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as int16 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def load_clip(path: str | Path, samples: int = SAMPLE_RATE) -> np.ndarray:
    """One WAV file as an int16 clip of ``samples`` samples at 16 kHz (cropped or padded)."""
    x, rate = read_wav(path)
    return to_int16(fix_length(resample(x, rate), samples))


# ---------------------------------------------------------------------------------- augmenting
def time_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """``x`` moved by ``shift`` samples (positive: later), zero-filled, same length."""
    out = np.zeros_like(x)
    if shift >= 0:
        out[shift:] = x[: len(x) - shift]
    else:
        out[:shift] = x[-shift:]
    return out


def mix_noise(x: np.ndarray, noise: np.ndarray, volume: float) -> np.ndarray:
    """``x + volume * noise`` clipped to [-1, 1] (the reference's background mixing)."""
    return np.clip(x + volume * noise[: len(x)], -1.0, 1.0)


def synthetic_noise(count: int, samples: int, seed: int) -> np.ndarray:
    """``count`` background clips of unit-peak white, pink and brown noise (``count x samples``).

    Stands in for Speech Commands' ``_background_noise_`` where a dataset has none.
    """
    rng = np.random.default_rng(seed)
    freqs = np.fft.rfftfreq(samples, 1.0 / SAMPLE_RATE)
    freqs[0] = freqs[1]
    out = np.empty((count, samples), dtype=np.float32)
    for i in range(count):
        colour = i % 3  # 0 white, 1 pink (1/f power), 2 brown (1/f^2 power)
        spectrum = np.fft.rfft(rng.standard_normal(samples)) / freqs ** (colour / 2.0)
        wave = np.fft.irfft(spectrum, n=samples)
        out[i] = wave / np.abs(wave).max()
    return out


@dataclass(frozen=True)
class Augment:
    """The train split's augmentations, defaults from the MLPerf Tiny KWS reference
    (``time_shift_ms=100``, ``background_frequency=0.8``, ``background_volume=0.1``)."""

    noise: np.ndarray  # K x samples float32 background clips
    max_shift: int = SAMPLE_RATE // 10
    noise_probability: float = 0.8
    max_volume: float = 0.1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # Draws come from torch's generator, which the loader seeds: runs repeat exactly.
        shift, pick = (int(v) for v in torch.randint(-self.max_shift, self.max_shift + 1, (2,)))
        x = time_shift(x, shift)
        if len(self.noise) and float(torch.rand(())) < self.noise_probability:
            volume = float(torch.rand(())) * self.max_volume
            x = mix_noise(x, self.noise[pick % len(self.noise)], volume)
        return x


# ---------------------------------------------------------------------------------- datasets
class AudioDataset(Dataset):
    """Items are ``(float32 C x H x W frontend output, int label)`` of int16 clips.

    ``waves`` (N x samples int16) and ``labels`` stay public for bulk use; without
    augmentation an item's features are computed once and kept.
    """

    def __init__(
        self, waves: np.ndarray, labels: np.ndarray, frontend: Frontend, augment: Augment | None = None
    ) -> None:
        if waves.ndim != 2 or waves.dtype != np.int16 or len(waves) != len(labels):
            raise ValueError(f"waves must be int16 N x samples with one label each, got {waves.dtype} {waves.shape}")
        self.waves = waves
        self.labels = np.asarray(labels, dtype=np.int64)
        self.frontend = frontend
        self.augment = augment
        self._features: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.labels[index])
        if self.augment is None and index in self._features:
            return self._features[index], label
        x = self.waves[index].astype(np.float32) / 32768.0
        if self.augment is not None:
            x = self.augment(x)
        feats = torch.from_numpy(np.ascontiguousarray(self.frontend(x), dtype=np.float32)).reshape(self.frontend.shape)
        if self.augment is None:
            self._features[index] = feats
        return feats, label

    def subset(self, indices: np.ndarray) -> AudioDataset:
        """A new dataset of the given items, with the same frontend and augmentation."""
        return AudioDataset(self.waves[indices], self.labels[indices], self.frontend, self.augment)


@dataclass
class AudioSplit:
    """One split as int16 clips; ``source`` names where it came from, for errors."""

    waves: np.ndarray
    labels: np.ndarray
    source: str


def build_audio_bundle(
    name: str,
    *,
    train: AudioSplit,
    test: AudioSplit,
    val: AudioSplit | None = None,
    class_names: Sequence[str],
    frontend: str,
    augment: bool,
    noise: np.ndarray | None,
    val_fraction: float,
    seed: int,
    limit: int | None,
) -> DatasetBundle:
    """Assemble the bundle: val carved from train (stratified) unless given, ``limit``,
    augmentation on train only (``noise``: background clips; synthetic noise if None)."""
    fe = get_frontend(frontend)
    for split in (train, test, *([val] if val is not None else [])):
        if len(split.waves) == 0:
            raise DataError(f"{split.source}: the split has no clips")
        if split.waves.shape[1] != fe.samples:
            raise DataError(
                f"{split.source}: clips are {split.waves.shape[1]} samples, frontend '{frontend}' takes {fe.samples}"
            )
        if split.labels.min() < 0 or split.labels.max() >= len(class_names):
            raise DataError(f"{split.source}: labels outside 0..{len(class_names) - 1}")
    train_ds = AudioDataset(train.waves, train.labels, fe)
    if val is None:
        keep, held = split_indices(train_ds.labels, val_fraction, seed)
        train_ds, val_ds = train_ds.subset(keep), train_ds.subset(held)
    else:
        val_ds = AudioDataset(val.waves, val.labels, fe)
    test_ds = AudioDataset(test.waves, test.labels, fe)
    if limit is not None:
        train_ds, val_ds, test_ds = (
            ds.subset(interleave_by_class(ds.labels)[:limit]) for ds in (train_ds, val_ds, test_ds)
        )
    if augment:
        bank = noise if noise is not None and len(noise) else synthetic_noise(6, fe.samples, seed)
        train_ds.augment = Augment(bank.astype(np.float32))
    meta = DatasetMeta(
        name=name,
        task="classification",
        num_classes=len(class_names),
        class_names=list(class_names),
        input_shape=fe.shape,
        mean=(0.0,),  # features are fed as the frontend computes them (no normalization)
        std=(1.0,),
    )
    return DatasetBundle(train=train_ds, val=val_ds, test=test_ds, meta=meta)


def load_clips(paths: Sequence[Path], samples: int, intro: str) -> np.ndarray:
    """Decode ``paths`` to an int16 N x samples array, with a progress bar on a terminal."""
    out = np.zeros((len(paths), samples), dtype=np.int16)
    console = Console(stderr=True)
    columns = [TextColumn("decoding"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn()]
    if len(paths) > 500:
        console.print(intro, markup=False, highlight=False, soft_wrap=True)
    with Progress(*columns, console=console, disable=not console.is_terminal or len(paths) <= 500) as bar:
        task = bar.add_task("decode", total=len(paths))
        for i, p in enumerate(paths):
            out[i] = load_clip(p, samples)
            bar.update(task, advance=1)
    return out


def _cached_clips(paths: Sequence[Path], samples: int, cache_dir: str | Path | None, intro: str) -> np.ndarray:
    """:func:`load_clips`, kept in the data cache keyed by the files' names, sizes and times."""
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    path = cache_root(cache_dir) / f"audio-{digest('clips', samples, stats)}.npz"
    hit = load_arrays(path)
    if hit is not None and hit.get("waves", np.empty(0)).shape == (len(paths), samples):
        return hit["waves"]
    waves = load_clips(paths, samples, intro)
    save_arrays(path, {"waves": waves})
    return waves


# ---------------------------------------------------------------------------------- fsdd
FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
FSDD_TEST_SPEAKERS = ("theo", "yweweler")


def _fsdd_recordings(root: Path) -> Path:
    for candidate in (root / "recordings", root):
        if candidate.is_dir() and any(FSDD_NAME.match(p.name) for p in candidate.iterdir()):
            return candidate
    raise DataError(f"{root}: no FSDD recordings found (expected recordings/<digit>_<speaker>_<index>.wav)")


@register_dataset("fsdd")
def load_fsdd(
    root: Path | None,
    *,
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
    cache_dir: str | Path | None,
    frontend: str = "mfcc",
    test_speakers: Sequence[str] = FSDD_TEST_SPEAKERS,
) -> DatasetBundle:
    """The Free Spoken Digit Dataset (8 kHz recordings, resampled to 16 kHz, one-second clips).

    Split by speaker: ``test_speakers`` are never heard in training; val is carved from the
    training speakers' clips.  ``size`` is unused (the frontend fixes the shape).
    """
    if root is None:
        raise DataError("fsdd: pass root= the Free Spoken Digit Dataset folder (holding recordings/)")
    folder = _fsdd_recordings(root)
    files = sorted(p for p in folder.iterdir() if FSDD_NAME.match(p.name))
    meta = [FSDD_NAME.match(p.name).groups() for p in files]  # type: ignore[union-attr]
    speakers = sorted({m[1] for m in meta})
    unknown = sorted(set(test_speakers) - set(speakers))
    if unknown or not test_speakers:
        raise DataError(f"fsdd: test_speakers {list(test_speakers)} must name speakers of {folder}: {speakers}")
    if set(test_speakers) >= set(speakers):
        raise DataError(f"fsdd: test_speakers {list(test_speakers)} leave no speaker to train on")
    labels = np.array([int(m[0]) for m in meta], dtype=np.int64)
    is_test = np.array([m[1] in test_speakers for m in meta])
    samples = get_frontend(frontend).samples
    waves = _cached_clips(files, samples, cache_dir, f"decoding {len(files)} FSDD recordings from {folder} (once)")
    return build_audio_bundle(
        "fsdd",
        train=AudioSplit(waves[~is_test], labels[~is_test], f"{folder} (train speakers)"),
        test=AudioSplit(waves[is_test], labels[is_test], f"{folder} (test speakers {', '.join(test_speakers)})"),
        class_names=[str(d) for d in range(10)],
        frontend=frontend,
        augment=augment,
        noise=None,
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
    )


# ---------------------------------------------------------------------------------- audiofolder
_NOISE_FOLDER = "_background_noise_"


def _speech_commands_lists(root: Path) -> tuple[set[str], set[str]] | None:
    """Speech Commands' ``validation_list.txt`` / ``testing_list.txt`` (class/clip.wav lines)."""
    lists = [root / "validation_list.txt", root / "testing_list.txt"]
    if not all(p.is_file() for p in lists):
        return None
    return tuple({ln.strip() for ln in p.read_text().splitlines() if ln.strip()} for p in lists)  # type: ignore[return-value]


def _noise_bank(folder: Path, samples: int) -> np.ndarray | None:
    """Long background recordings cut into ``samples``-long clips."""
    if not folder.is_dir():
        return None
    pieces = []
    for p in sorted(folder.glob("*.wav")):
        x, rate = read_wav(p)
        x = resample(x, rate)
        pieces += [x[i : i + samples] for i in range(0, len(x) - samples + 1, samples)]
    return np.stack(pieces).astype(np.float32) if pieces else None


@register_dataset("audiofolder")
def load_audiofolder(
    root: Path | None,
    *,
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
    cache_dir: str | Path | None,
    frontend: str = "mfcc",
    test_fraction: float = 0.1,
) -> DatasetBundle:
    """Any ``root/<class>/<clip>.wav`` tree, such as Google's Speech Commands.

    Speech Commands' ``validation_list.txt`` and ``testing_list.txt`` give the val and test
    splits when present; otherwise ``test_fraction`` of each class is held out for test
    (stratified, by ``seed``).  ``_background_noise_/`` is the augmentation's noise bank.
    ``limit`` bounds each split before anything is decoded.
    """
    if root is None:
        raise DataError("audiofolder: pass root= a folder of <class>/<clip>.wav")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; audiofolder expects <class>/<clip>.wav inside")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != _NOISE_FOLDER and any(p.glob("*.wav")))
    if not classes:
        raise DataError(f"{root}: no <class>/<clip>.wav found")
    files = [p for c in classes for p in sorted((root / c).glob("*.wav"))]
    labels = np.array([classes.index(p.parent.name) for p in files], dtype=np.int64)
    rel = [f"{p.parent.name}/{p.name}" for p in files]
    lists = _speech_commands_lists(root)
    if lists is not None:
        split = np.array([2 if r in lists[1] else 1 if r in lists[0] else 0 for r in rel])
    else:
        if not 0.0 < test_fraction < 1.0:
            raise DataError(f"audiofolder: test_fraction must be in (0, 1), got {test_fraction}")
        split = np.zeros(len(files), dtype=np.int64)
        split[split_indices(labels, test_fraction, seed)[1]] = 2
    fe = get_frontend(frontend)

    def part(code: int, what: str) -> AudioSplit:
        idx = np.flatnonzero(split == code)
        idx = idx[interleave_by_class(labels[idx])][:limit] if limit is not None else idx
        paths = [files[i] for i in idx]
        waves = _cached_clips(paths, fe.samples, cache_dir, f"decoding {len(paths)} {what} clips from {root} (once)")
        return AudioSplit(waves, labels[idx], f"{root} ({what})")

    val = part(1, "val") if lists is not None else None
    return build_audio_bundle(
        "audiofolder",
        train=part(0, "train"),
        test=part(2, "test"),
        val=val,
        class_names=classes,
        frontend=frontend,
        augment=augment,
        noise=_noise_bank(root / _NOISE_FOLDER, fe.samples),
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
    )
