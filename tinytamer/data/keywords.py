"""``keywords``: the MLPerf Tiny keyword-spotting classes, spoken by espeak-ng.

Twelve classes in the MLPerf Tiny (Speech Commands v2) order: the ten keywords ``yes no up
down left right on off stop go``, then ``_silence_`` (background noise only) and
``_unknown_`` (Speech Commands' other words).  Every utterance is synthesized with the
Debian package ``espeak-ng`` over accents x voice variants x speeds x pitches, placed at a
random point of a one-second clip with a random gain and background noise, and the whole
set is cached on disk (keyed by everything it was made from).

The split is by voice: the test set is spoken by voice variants never heard in training
(``test_variants``), in every accent.  Synthetic speech is not real speech: measure on
recordings (``fsdd``, ``audiofolder``) before trusting a keyword model.
"""

from __future__ import annotations

import itertools
import shutil
import struct
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from tinytamer.audio import get_frontend
from tinytamer.data.audio import AudioSplit, build_audio_bundle, fix_length, resample, synthetic_noise, to_int16
from tinytamer.data.cache import cache_root, digest, load_arrays, save_arrays
from tinytamer.data.registry import DatasetBundle, register_dataset
from tinytamer.errors import DataError

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
CLASS_NAMES = (*KEYWORDS, "_silence_", "_unknown_")
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
    "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
)  # fmt: skip
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3")
TEST_VARIANTS = ("m6", "m7", "f4", "f5")
SPEEDS = (130, 160, 190)  # words per minute (espeak-ng's default is 175)
PITCHES = (35, 50, 70)  # 0..99 (default 50)
CLIP = 16000
_MAX_UTTERANCE_BYTES = 1 << 20  # one word is ~50 kB at 22 kHz


def espeak() -> str:
    """The espeak-ng executable, or a DataError saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DataError(
            "keywords: espeak-ng is not installed (scripts/setup.sh installs it; or apt-get install espeak-ng)"
        )
    return exe


def synthesize(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One word spoken by espeak-ng, as float32 samples at 16 kHz."""
    cmd = [espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    try:
        raw = subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout
    except (subprocess.SubprocessError, OSError) as e:
        raise DataError(f"keywords: espeak-ng failed on '{word}' with voice {voice} ({e})") from e
    # --stdout streams a 44-byte PCM header whose sizes are placeholders; the rest is samples.
    if len(raw) < 46 or raw[:4] != b"RIFF" or len(raw) > _MAX_UTTERANCE_BYTES:
        raise DataError(f"keywords: espeak-ng gave no usable audio for '{word}' with voice {voice}")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", raw, 20)
    if (tag, channels, bits) != (1, 1, 16):
        raise DataError(
            f"keywords: espeak-ng wrote format {tag}, {channels} channels, {bits} bits; expected PCM mono 16"
        )
    samples = np.frombuffer(raw[44 : 44 + (len(raw) - 44) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    return resample(samples, rate)


def _trim(x: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """The word without espeak-ng's leading and trailing silence."""
    loud = np.flatnonzero(np.abs(x) > floor)
    return x[loud[0] : loud[-1] + 1] if len(loud) else x


def _place(word: np.ndarray, noise: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The word at a random offset and gain in a one-second clip over background noise."""
    word = _trim(word)
    if len(word) > CLIP:
        word = fix_length(word, CLIP, (len(word) - CLIP) // 2)
    clip = np.zeros(CLIP, dtype=np.float32)
    start = int(rng.integers(0, CLIP - len(word) + 1))
    clip[start : start + len(word)] = word / max(float(np.abs(word).max()), 1e-6) * rng.uniform(0.3, 0.9)
    return np.clip(clip + noise * rng.uniform(0.0, 0.05), -1.0, 1.0)


def _utterances(
    words: Sequence[str], extras: bool, variants: Sequence[str], accents: Sequence[str], speeds, pitches, seed: int
):
    """(label, word, voice, speed, pitch): each word in every voice setting; with ``extras``,
    as many unknown words (cycling the list) and silences, labelled ``len(words)`` + 1 and 0."""
    settings = list(itertools.product(accents, variants, speeds, pitches))
    out = [(c, w, f"{a}+{v}", s, p) for c, w in enumerate(words) for a, v, s, p in settings]
    if extras:
        rng = np.random.default_rng(seed)
        unknown = rng.permutation(np.resize(np.array(UNKNOWN_WORDS), len(settings)))
        out += [(len(words) + 1, str(w), f"{a}+{v}", s, p) for w, (a, v, s, p) in zip(unknown, settings, strict=True)]
        out += [(len(words), "", "", 0, 0)] * len(settings)
    return out


def generate(
    variants: Sequence[str],
    accents: Sequence[str],
    speeds: Sequence[int],
    pitches: Sequence[int],
    seed: int,
    words: Sequence[str] = KEYWORDS,
    extras: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize one split of ``words`` (labels 0..), with ``extras`` the silence and unknown
    classes after them: (int16 N x 16000 clips, labels), with a progress bar."""
    plan = _utterances(words, extras, variants, accents, speeds, pitches, seed)
    noise = synthetic_noise(12, CLIP, seed)
    rng = np.random.default_rng(seed + 1)
    picks = rng.integers(0, len(noise), len(plan))
    console = Console(stderr=True)
    columns = [TextColumn("synthesizing"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn()]
    speech = [u for u in plan if u[1]]
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar, ThreadPoolExecutor(2) as pool:
        task = bar.add_task("synth", total=len(speech))
        words = []
        for w in pool.map(lambda u: synthesize(u[1], u[2], u[3], u[4]), speech):
            words.append(w)
            bar.update(task, advance=1)
    it = iter(words)
    waves = np.empty((len(plan), CLIP), dtype=np.int16)
    for i, u in enumerate(plan):
        if not u[1]:  # silence: background noise only
            waves[i] = to_int16(noise[picks[i]] * rng.uniform(0.0, 0.3))
        else:
            waves[i] = to_int16(_place(next(it), noise[picks[i]], rng))
    return waves, np.array([u[0] for u in plan], dtype=np.int64)


def _version() -> str:
    return subprocess.run([espeak(), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()


@register_dataset("keywords")
def load_keywords(
    root: Path | None,
    *,
    size: int | None,
    augment: bool,
    val_fraction: float,
    seed: int,
    limit: int | None,
    cache_dir: str | Path | None,
    frontend: str = "mfcc",
    accents: Sequence[str] = ACCENTS,
    train_variants: Sequence[str] = TRAIN_VARIANTS,
    test_variants: Sequence[str] = TEST_VARIANTS,
    speeds: Sequence[int] = SPEEDS,
    pitches: Sequence[int] = PITCHES,
) -> DatasetBundle:
    """Synthesized keywords (see the module docstring), cached in ``cache_dir`` (or ``root``).

    Train: ``train_variants`` x ``accents`` x ``speeds`` x ``pitches`` per keyword; test: the
    same for ``test_variants`` (voices never heard in training); val is carved from train.
    """
    if set(train_variants) & set(test_variants):
        raise DataError(f"keywords: variants {sorted(set(train_variants) & set(test_variants))} are in train and test")
    if not (accents and train_variants and test_variants and speeds and pitches):
        raise DataError("keywords: accents, train_variants, test_variants, speeds and pitches must be non-empty")
    if get_frontend(frontend).samples != CLIP:
        raise DataError(f"keywords: frontend '{frontend}' does not take one-second clips")
    config = (tuple(accents), tuple(speeds), tuple(pitches), seed)
    key = digest("keywords", _version(), tuple(train_variants), tuple(test_variants), config)
    path = cache_root(cache_dir if cache_dir is not None else root) / f"keywords-{key}.npz"
    arrays = load_arrays(path)
    if arrays is None or not {"train_waves", "train_labels", "test_waves", "test_labels"} <= set(arrays):
        train = generate(train_variants, accents, speeds, pitches, seed)
        test = generate(test_variants, accents, speeds, pitches, seed + 1000)
        arrays = {"train_waves": train[0], "train_labels": train[1], "test_waves": test[0], "test_labels": test[1]}
        save_arrays(path, arrays)
    return build_audio_bundle(
        "keywords",
        train=AudioSplit(arrays["train_waves"], arrays["train_labels"], f"{path} (train voices)"),
        test=AudioSplit(
            arrays["test_waves"], arrays["test_labels"], f"{path} (test voices {', '.join(test_variants)})"
        ),
        class_names=CLASS_NAMES,
        frontend=frontend,
        augment=augment,
        noise=synthetic_noise(6, CLIP, seed + 7),
        val_fraction=val_fraction,
        seed=seed,
        limit=limit,
    )
