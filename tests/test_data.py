"""Dataset loaders on small files written here: shapes, labels, meta, splits, cache, errors."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinytamer.data import ArrayDataset, get_dataset, list_datasets, make_loader
from tinytamer.data import imagefolder as imagefolder_mod
from tinytamer.data.arrays import interleave_by_class, split_indices
from tinytamer.errors import DataError

SHARED_DATA = Path(os.environ.get("TINYTAMER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


# ---------------------------------------------------------------- writers of small datasets


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> Path:
    payload = struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_idx_dataset(root: Path, gz: bool, n_train: int = 20, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte", images, 2051, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels, 2049, gz)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def write_cifar_batches(
    root: Path, per_batch: int = 4, protocol: int = 5, bytes_keys: bool = False
) -> dict[str, np.ndarray]:
    """The official layout: a dict with 'data' (N x 3072 uint8 planes) and 'labels' (list)."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        batch = {
            "batch_label": "batch",
            "data": data,
            "labels": labels,
            "filenames": [f"{i}.png" for i in range(per_batch)],
        }
        if bytes_keys:
            batch = {k.encode(): v for k, v in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        out[name] = data
        out[name + "_labels"] = np.array(labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return out


def make_image_tree(
    root: Path, classes: dict[str, int], splits=("train", "test"), size=32, mode="RGB", ext="png", seed=0
) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        for cname, n in classes.items():
            d = root / split / cname
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i:04d}.{ext}")
    return root


# ---------------------------------------------------------------- registry


def test_registry_lists_builtin_datasets_and_rejects_unknown_names():
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "imagefolder"} <= set(list_datasets())
    with pytest.raises(DataError, match="unknown dataset 'nope'.*digits.*mnist"):
        get_dataset("nope")


def test_bad_arguments_name_themselves():
    with pytest.raises(DataError, match="no option 'colour'"):
        get_dataset("digits", colour=True)
    with pytest.raises(DataError, match="val_fraction"):
        get_dataset("digits", val_fraction=1.0)
    with pytest.raises(DataError, match="limit"):
        get_dataset("digits", limit=0)


# ---------------------------------------------------------------- digits


def test_digits_splits_shapes_and_normalization():
    b = get_dataset("digits", seed=3)
    assert b.meta.name == "digits" and b.meta.task == "classification"
    assert b.meta.num_classes == 10 and b.meta.class_names == [str(i) for i in range(10)]
    assert b.meta.input_shape == (1, 8, 8)
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    assert len(b.test) == round(1797 * 0.2)
    assert len(b.val) == round((1797 - len(b.test)) * 0.1)
    x, y = b.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and isinstance(y, int)
    # Normalization is computed from train, so the normalized train set is ~N(0, 1).
    xs = torch.stack([b.train[i][0] for i in range(len(b.train))])
    assert abs(xs.mean().item()) < 1e-3 and abs(xs.std().item() - 1) < 1e-2
    assert b.train.images.max() == 255  # 16 scaled to 255
    assert set(np.unique(b.test.labels)) == set(range(10))  # stratified


def test_digits_deterministic_by_seed_and_resizable():
    a, b, c = (get_dataset("digits", seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.train.images, b.train.images)
    assert np.array_equal(a.val.labels, b.val.labels)
    assert not np.array_equal(a.test.images, c.test.images)
    big = get_dataset("digits", size=16, limit=5)
    assert big.meta.input_shape == (1, 16, 16)
    assert big.train[0][0].shape == (1, 16, 16)
    assert len(big.train) == len(big.val) == len(big.test) == 5


def test_split_indices_is_disjoint_complete_and_seeded():
    labels = np.repeat(np.arange(5), 20)
    keep, held = split_indices(labels, 0.2, seed=7)
    assert len(held) == 20 and len(np.intersect1d(keep, held)) == 0
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(100))
    assert np.bincount(labels[held]).tolist() == [4] * 5  # stratified
    keep2, held2 = split_indices(labels, 0.2, seed=7)
    assert np.array_equal(held, held2)
    assert not np.array_equal(held, split_indices(labels, 0.2, seed=8)[1])
    # A class with a single item cannot be stratified: still a valid split.
    keep3, held3 = split_indices(np.array([0, 1, 1, 1, 2, 2]), 0.5, seed=0)
    assert len(held3) == 3 and len(np.intersect1d(keep3, held3)) == 0


def test_interleave_by_class_covers_classes_first():
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert labels[interleave_by_class(labels)].tolist() == [0, 1, 2, 0, 1, 0]


# ---------------------------------------------------------------- MNIST idx


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_gz_and_raw(tmp_path, gz):
    arrays = make_idx_dataset(tmp_path, gz)
    b = get_dataset("mnist", tmp_path, val_fraction=0.0)
    assert b.meta.input_shape == (1, 28, 28) and b.meta.mean == (0.1307,)
    assert len(b.train) == 20 and len(b.val) == 0 and len(b.test) == 6
    assert np.array_equal(b.test.images[..., 0], arrays["t10k_images"])
    assert b.test.labels.tolist() == arrays["t10k_labels"].tolist()
    x, y = b.test[3]
    expected = (torch.from_numpy(arrays["t10k_images"][3]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[0], expected, atol=1e-6)
    assert y == 3


def test_fashion_mnist_val_split_and_class_names(tmp_path):
    make_idx_dataset(tmp_path, gz=True, n_train=40)
    b = get_dataset("fashion_mnist", tmp_path, val_fraction=0.25, seed=1, augment=True)
    assert b.meta.name == "fashion-mnist" and b.meta.class_names[0] == "T-shirt/top"
    assert len(b.train) == 30 and len(b.val) == 10
    again = get_dataset("fashion-mnist", tmp_path, val_fraction=0.25, seed=1)
    assert np.array_equal(b.val.images, again.val.images)
    # Val and train hold different items (random 28x28 images never repeat).
    train_rows = {img.tobytes() for img in b.train.images}
    assert not any(img.tobytes() in train_rows for img in b.val.images)
    assert b.train[0][0].shape == (1, 28, 28)


def test_idx_missing_root_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        get_dataset("mnist", tmp_path / "absent")
    with pytest.raises(DataError, match="needs root"):
        get_dataset("mnist")
    make_idx_dataset(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        DataError,
        match=r"missing t10k-labels-idx1-ubyte\[\.gz\].*"
        r"train-images-idx3-ubyte\[\.gz\]",
    ):
        get_dataset("mnist", tmp_path)


def test_idx_wrong_magic_names_file_and_both_numbers(tmp_path):
    make_idx_dataset(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, np.zeros(20, np.uint8), 2051, gz=False)
    with pytest.raises(DataError) as e:
        get_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert str(labels) in msg and "found 2051" in msg and "expected 2049" in msg


def test_idx_truncated_file(tmp_path):
    make_idx_dataset(tmp_path, gz=True)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    payload = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(payload[:-100]))
    with pytest.raises(DataError) as e:
        get_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert str(images) in msg and "truncated" in msg
    assert f"expected {len(payload)} bytes, found {len(payload) - 100}" in msg


def test_idx_label_count_mismatch_names_both_files(tmp_path):
    make_idx_dataset(tmp_path, gz=True)
    labels = write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8), 2049, True)
    with pytest.raises(DataError) as e:
        get_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert "5 labels" in msg and "6 images" in msg
    assert str(labels) in msg and str(tmp_path / "t10k-images-idx3-ubyte.gz") in msg


def test_idx_corrupt_gzip(tmp_path):
    make_idx_dataset(tmp_path, gz=True)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        get_dataset("mnist", tmp_path)


@pytest.mark.skipif(
    not (SHARED_DATA / "mnist").is_dir(), reason="real MNIST not found (../shared/data/mnist or $TINYTAMER_DATA)"
)
def test_real_mnist_loads_completely():
    b = get_dataset("mnist", SHARED_DATA / "mnist")
    assert (len(b.train) + len(b.val), len(b.test)) == (60000, 10000)
    assert abs(b.train.images.mean() / 255 - 0.1307) < 2e-3


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol,bytes_keys", [(5, False), (2, True)])
def test_cifar_pickle_batches(tmp_path, protocol, bytes_keys):
    raw = write_cifar_batches(tmp_path, protocol=protocol, bytes_keys=bytes_keys)
    b = get_dataset("cifar10", tmp_path, val_fraction=0.25, augment=True)
    assert b.meta.input_shape == (3, 32, 32) and b.meta.class_names[-1] == "truck"
    assert b.meta.mean == (0.4914, 0.4822, 0.4465)
    assert len(b.train) + len(b.val) == 20 and len(b.val) == 5 and len(b.test) == 4
    # Row layout is 1024 red, 1024 green, 1024 blue values, each row-major.
    data = raw["test_batch"]
    i, y, x, c = 2, 5, 17, 1
    assert b.test.images[i, y, x, c] == data[i, c * 1024 + y * 32 + x]
    assert b.test.labels.tolist() == raw["test_batch_labels"].tolist()
    torch.manual_seed(0)
    assert b.train[0][0].shape == (3, 32, 32)
    # Pointing at the batches folder itself works too, and so does the official .tar.gz.
    direct = get_dataset("cifar10", tmp_path / "cifar-10-batches-py", val_fraction=0.0)
    assert len(direct.train) == 20
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    packed = get_dataset("cifar10", archive, val_fraction=0.0, cache_dir=tmp_path / "cache")
    assert np.array_equal(packed.train.images, direct.train.images)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_cifar_pickle_refuses_code(tmp_path):
    write_cifar_batches(tmp_path)
    target = tmp_path / "pwned"
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps({"data": _Exploit(target), "labels": []}))
    with pytest.raises(DataError, match=f"{re.escape(str(bad))}.*refusing to load 'pathlib"):
        get_dataset("cifar10", tmp_path)
    assert not target.exists()


def test_cifar_missing_and_malformed_batches(tmp_path):
    write_cifar_batches(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch file.*data_batch_4"):
        get_dataset("cifar10", tmp_path)
    (folder / "data_batch_4").write_bytes(pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}))
    bad = re.escape(str(folder / "data_batch_4"))
    with pytest.raises(DataError, match=f"{bad}: 2 labels but 3 images"):
        get_dataset("cifar10", tmp_path)
    (folder / "data_batch_4").write_bytes(b"\x80\x05garbage")
    with pytest.raises(DataError, match=re.escape(str(folder / "data_batch_4"))):
        get_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="no CIFAR-10 data found"):
        get_dataset("cifar10", _empty(tmp_path / "empty"))


def _empty(p: Path) -> Path:
    p.mkdir()
    return p


def test_cifar_image_tree_and_tar_gz(tmp_path):
    classes = {"airplane": 3, "cat": 2}
    tree = make_image_tree(tmp_path / "cifar", classes, ext="png")
    b = get_dataset("cifar10", tree, val_fraction=0.0, cache_dir=tmp_path / "cache")
    assert b.meta.class_names == ["airplane", "cat"] and b.meta.num_classes == 2
    assert b.train.labels.tolist() == [0, 1, 0, 1, 0]  # interleaved by class
    expected = np.asarray(Image.open(tree / "train" / "cat" / "0001.png"))
    assert np.array_equal(b.train.images[3], expected)
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar-images")  # wrapped in one top folder
    c = get_dataset("cifar10", archive, val_fraction=0.0, cache_dir=tmp_path / "cache")
    assert np.array_equal(c.train.images, b.train.images)
    assert np.array_equal(c.test.labels, b.test.labels)
    # Decoded straight from the archive: nothing extracted, one .npz in the cache.
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".npz", ".npz"]
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tar archive")
    with pytest.raises(DataError, match=f"{re.escape(str(broken))}: cannot read the archive"):
        get_dataset("cifar10", broken, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- image folders


def test_imagefolder_with_val_split_grey_and_limit(tmp_path):
    tree = make_image_tree(
        tmp_path / "t", {"a": 3, "b": 3, "c": 2}, splits=("train", "val", "test"), size=12, mode="L", ext="png"
    )
    b = get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache", augment=True)
    assert b.meta.input_shape == (1, 12, 12) and b.meta.class_names == ["a", "b", "c"]
    assert (len(b.train), len(b.val), len(b.test)) == (8, 8, 8)  # val from its own folder
    lim = get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache", limit=3)
    assert lim.test.labels.tolist() == [0, 1, 2]
    assert (len(lim.train), len(lim.val), len(lim.test)) == (3, 3, 3)


def test_imagefolder_mixed_sizes_need_size(tmp_path):
    tree = make_image_tree(tmp_path / "t", {"a": 2, "b": 2}, size=10, ext="jpg")
    odd = tree / "train" / "b" / "0001.jpg"
    Image.new("RGB", (14, 9)).save(odd)
    with pytest.raises(DataError, match=f"{re.escape(str(odd))}: image is 14x9.*pass size="):
        get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache")
    b = get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache", size=8, val_fraction=0)
    assert b.meta.input_shape == (3, 8, 8) and b.train.images.shape == (4, 8, 8, 3)
    assert b.train[1][0].shape == (3, 8, 8)


def test_imagefolder_grey_and_colour_mix_becomes_rgb(tmp_path):
    tree = make_image_tree(tmp_path / "t", {"a": 2, "b": 2}, size=5, mode="L")
    Image.new("RGB", (5, 5), (255, 0, 0)).save(tree / "test" / "b" / "0001.png")
    b = get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache", val_fraction=0)
    assert b.meta.input_shape == (3, 5, 5)
    grey = np.asarray(Image.open(tree / "train" / "a" / "0000.png"))
    assert np.array_equal(b.train.images[0], np.repeat(grey[..., None], 3, axis=2))
    assert b.test.images[3].tolist() == [[[255, 0, 0]] * 5] * 5
    forced = get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache", channels=1)
    assert forced.meta.input_shape == (1, 5, 5)
    with pytest.raises(DataError, match="channels must be 1"):
        get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache", channels=2)


def test_imagefolder_cache_is_hit_the_second_time(tmp_path, monkeypatch):
    tree = make_image_tree(tmp_path / "t", {"a": 2, "b": 2}, size=8)
    cache = tmp_path / "cache"
    first = get_dataset("imagefolder", tree, cache_dir=cache)
    assert len(list(cache.glob("imagefolder-*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(imagefolder_mod, "decode_image", no_decoding)
    second = get_dataset("imagefolder", tree, cache_dir=cache)
    assert np.array_equal(first.train.images, second.train.images)
    assert np.array_equal(first.test.labels, second.test.labels)
    # A changed file changes the key: the tree is decoded again.
    Image.new("RGB", (8, 8), "red").save(tree / "test" / "a" / "0000.png")
    os.utime(tree / "test" / "a" / "0000.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        get_dataset("imagefolder", tree, cache_dir=cache)


def test_imagefolder_archive_cache_and_corrupt_member(tmp_path, monkeypatch):
    tree = make_image_tree(tmp_path / "t", {"a": 2, "b": 1}, size=6, ext="jpg")
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname=".")
    cache = tmp_path / "cache"
    first = get_dataset("imagefolder", archive, cache_dir=cache, val_fraction=0)
    assert first.meta.class_names == ["a", "b"] and first.train.labels.tolist() == [0, 1, 0]
    expected = np.asarray(Image.open(tree / "test" / "b" / "0000.jpg"))
    assert np.array_equal(first.test.images[1], expected)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(imagefolder_mod, "decode_image", no_decoding)
        second = get_dataset("imagefolder", archive, cache_dir=cache, val_fraction=0)
    assert np.array_equal(first.train.images, second.train.images)
    bad = tree / "train" / "b" / "0000.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    broken = tmp_path / "broken.tar.gz"
    with tarfile.open(broken, "w:gz") as tar:
        tar.add(tree, arcname="top")
    with pytest.raises(DataError, match=re.escape(f"{broken}:top/train/b/0000.jpg: unreadable")):
        get_dataset("imagefolder", broken, cache_dir=cache)


def test_imagefolder_cache_default_from_environment(tmp_path, monkeypatch):
    tree = make_image_tree(tmp_path / "t", {"a": 1, "b": 1}, size=4)
    monkeypatch.setenv("TINYTAMER_CACHE", str(tmp_path / "envcache"))
    get_dataset("imagefolder", tree)
    assert len(list((tmp_path / "envcache").glob("imagefolder-*.npz"))) == 1


def test_imagefolder_corrupt_image_names_the_file(tmp_path):
    tree = make_image_tree(tmp_path / "t", {"a": 2, "b": 2}, size=8, ext="jpg")
    bad = tree / "test" / "b" / "0000.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match=f"{re.escape(str(bad))}: unreadable or corrupt image"):
        get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache")


def test_imagefolder_empty_class_and_missing_layout(tmp_path):
    tree = make_image_tree(tmp_path / "t", {"a": 2, "b": 2}, size=8)
    (tree / "train" / "empty").mkdir()
    empty = re.escape(str(tree / "train" / "empty"))
    with pytest.raises(DataError, match=f"{empty}: empty class folder"):
        get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache")
    (tree / "train" / "empty").rmdir()
    (tree / "test" / "zebra").mkdir()
    with pytest.raises(DataError, match="class 'zebra' is not among the train classes"):
        get_dataset("imagefolder", tree, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="no image folder layout"):
        get_dataset("imagefolder", _empty(tmp_path / "nothing"))
    with pytest.raises(DataError, match="does not exist"):
        get_dataset("imagefolder", tmp_path / "absent")
    flat = tmp_path / "flat"
    (flat / "train" / "x").mkdir(parents=True)
    (flat / "test").mkdir()
    (flat / "train" / "x" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty class folder"):
        get_dataset("imagefolder", flat, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- loaders


def _labels_by_epoch(loader, epochs=2):
    return [torch.cat([y for _, y in loader]).tolist() for _ in range(epochs)]


def test_make_loader_order_depends_only_on_seed_and_epoch():
    ds = ArrayDataset(np.zeros((50, 2, 2, 1), np.uint8), np.arange(50))
    a = _labels_by_epoch(make_loader(ds, 8, shuffle=True, seed=5))
    torch.manual_seed(123)  # the global RNG must not matter
    b = _labels_by_epoch(make_loader(ds, 8, shuffle=True, seed=5))
    c = _labels_by_epoch(make_loader(ds, 8, shuffle=True, seed=6))
    assert a == b and a != c
    assert a[0] != a[1] and sorted(a[0]) == list(range(50))
    assert _labels_by_epoch(make_loader(ds, 8, shuffle=False), 1)[0] == list(range(50))
    dropped = make_loader(ds, 8, shuffle=True, drop_last=True)
    assert sum(len(y) for _, y in dropped) == 48


def test_make_loader_with_augmentation_repeats_given_torch_seed():
    b = get_dataset("digits", augment=True, limit=64)

    def batches():
        torch.manual_seed(0)
        return torch.cat([x for x, _ in make_loader(b.train, 16, shuffle=True, seed=1)])

    x1, x2 = batches(), batches()
    assert torch.equal(x1, x2)
    # In a worker process the transforms' RNG is seeded from the loader's seed alone.
    workers = [
        torch.cat([x for x, _ in make_loader(b.train, 16, shuffle=True, seed=1, num_workers=1)]) for _ in range(2)
    ]
    assert torch.equal(workers[0], workers[1])
    plain = torch.stack([b.val[i][0] for i in range(len(b.val))])
    assert plain.shape == (64, 1, 8, 8)
