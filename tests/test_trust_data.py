"""Data readers are bounded: gzip bombs in idx files fail fast; long first decodes say so."""

from __future__ import annotations

import gzip
import re
import struct
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytamer.data import get_dataset
from tinytamer.data.idx import IMAGES_MAGIC, LABELS_MAGIC, MAX_GZIP_RATIO, read_idx
from tinytamer.errors import DataError

MIB = 1 << 20


def _gzip_member(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    return c.compress(data) + c.flush()


def write_bomb(path: Path, header: bytes, gib: int) -> Path:
    """A .gz of ``header`` then ``gib`` GiB of zeros, a few MB on disk.

    Built from identical gzip members (a .gz may hold several; readers concatenate them), so
    the test writes it in milliseconds instead of deflating GiBs.
    """
    zeros = _gzip_member(bytes(MIB))
    assert len(zlib.decompress(zeros, 31)) == MIB
    with open(path, "wb") as f:
        f.write(_gzip_member(header + bytes(MIB - len(header))))
        for _ in range(gib * 1024 - 1):
            f.write(zeros)
    return path


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            fn()
        return tracemalloc.get_traced_memory()[1] / MIB, str(e.value)
    finally:
        tracemalloc.stop()


def test_a_bomb_behind_a_plausible_header_stops_at_the_declared_size(tmp_path):
    bomb = write_bomb(tmp_path / "train-images-idx3-ubyte.gz", struct.pack(">4i", IMAGES_MAGIC, 100, 28, 28), 4)
    assert bomb.stat().st_size < 8 * MIB
    peak, msg = _peak_mib(lambda: read_idx(bomb, IMAGES_MAGIC))
    assert str(bomb) in msg and "oversized idx file" in msg and "reading stopped" in msg
    assert peak < 16  # 78 KB declared: nowhere near the 4 GiB the file expands to


@pytest.mark.parametrize("magic, dims", [(IMAGES_MAGIC, (5_000_000, 28, 28)), (LABELS_MAGIC, (2**31 - 1,))])
def test_a_header_declaring_more_than_the_gzip_could_hold_is_refused_unread(tmp_path, magic, dims):
    header = struct.pack(f">{1 + len(dims)}i", magic, *dims)
    bomb = write_bomb(tmp_path / "bomb.gz", header, 4)  # 4 GiB of zeros: "matches" the first header
    peak, msg = _peak_mib(lambda: read_idx(bomb, magic))
    assert str(bomb) in msg and "gzip bomb" in msg and f"{MAX_GZIP_RATIO}x" in msg
    assert peak < 4


def test_a_raw_idx_header_is_checked_against_the_file_size_before_reading(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">4i", IMAGES_MAGIC, 2**31 - 1, 2**31 - 1, 2**31 - 1) + bytes(100))
    peak, msg = _peak_mib(lambda: read_idx(path, IMAGES_MAGIC))
    assert "truncated idx file" in msg and f"found {16 + 100}" in msg
    assert peak < 4


@pytest.mark.parametrize("stem", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_get_dataset_with_a_bomb_in_place_fails_with_a_clear_error(tmp_path, stem):
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 6)):
        for kind, magic, arr in (
            ("images", IMAGES_MAGIC, rng.integers(0, 256, (n, 28, 28), np.uint8)),
            ("labels", LABELS_MAGIC, rng.integers(0, 10, n, np.uint8)),
        ):
            name = f"{split}-{kind}-idx{arr.ndim}-ubyte.gz"
            header = struct.pack(f">{1 + arr.ndim}i", magic, *arr.shape)
            (tmp_path / name).write_bytes(gzip.compress(header + arr.tobytes()))
    magic = IMAGES_MAGIC if "images" in stem else LABELS_MAGIC
    dims = (20, 28, 28) if stem.startswith("train") else (6,)
    write_bomb(tmp_path / f"{stem}.gz", struct.pack(f">{1 + len(dims)}i", magic, *dims), 1)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / stem}.gz: oversized idx file")):
        get_dataset("mnist", tmp_path)


def test_an_honest_gzip_idx_still_loads(tmp_path):
    arr = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(struct.pack(">4i", IMAGES_MAGIC, 3, 28, 28) + arr.tobytes()))
    assert np.array_equal(read_idx(path, IMAGES_MAGIC), arr)


# -- a first decode says so ------------------------------------------------------------------------


def _image_tree(root: Path, per_class: int = 2) -> int:
    rng = np.random.default_rng(0)
    n = 0
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(folder / f"{i}.png")
                n += 1
    return n


def test_a_first_folder_decode_says_how_many_images_once(tmp_path, capsys):
    n = _image_tree(tmp_path / "tree")
    get_dataset("imagefolder", tmp_path / "tree", cache_dir=tmp_path / "cache")
    err = capsys.readouterr().err
    assert f"decoding {n} images from {tmp_path / 'tree'} (first time; cached after)" in err
    assert len(err.strip().splitlines()) == 1  # not a terminal: the line, no bar frames
    get_dataset("imagefolder", tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert capsys.readouterr().err == ""


def test_a_first_archive_decode_of_cifar_images_says_so(tmp_path, capsys):
    _image_tree(tmp_path / "cifar")
    archive = tmp_path / "cifar-images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar", arcname="cifar")
    get_dataset("cifar10", archive, cache_dir=tmp_path / "cache", size=8)
    err = capsys.readouterr().err
    assert f"decoding the images in {archive} (" in err and "first time; cached after)" in err
    get_dataset("cifar10", archive, cache_dir=tmp_path / "cache", size=8)
    assert capsys.readouterr().err == ""


def test_on_a_terminal_the_first_decode_draws_a_progress_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich then treats stderr as a terminal
    _image_tree(tmp_path / "tree")
    get_dataset("imagefolder", tmp_path / "tree", cache_dir=tmp_path / "cache")
    err = capsys.readouterr().err
    assert "first time; cached after" in err and "100%" in err
