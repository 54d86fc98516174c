"""The compressed model file: exact round trips for every encoding, sizes, and corrupt files."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from tinytamer import codec
from tinytamer.codec import encodings, format
from tinytamer.errors import CodecError


class ResidualNet(nn.Module):
    """A small CNN with a residual add, BN, and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.head = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        h = h + self.proj(torch.relu(self.conv(h)))
        h = nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
        return self.head(torch.relu(self.fc(h)))


ALLOW = [ResidualNet.__module__]  # the test's own model class may be rebuilt


def make_model() -> nn.Module:
    """One tensor of each coded form the codec knows."""
    torch.manual_seed(0)
    model = ResidualNet()
    with torch.no_grad():
        # pruned (sparse): 90% zeros
        model.fc.weight[torch.rand_like(model.fc.weight) < 0.9] = 0
        # shared (codebook / huffman): 16 centroids, 60% pruned
        book = torch.randn(16) * 0.1
        idx = torch.randint(0, 16, model.conv.weight.shape)
        keep = torch.rand(model.conv.weight.shape) > 0.6
        model.conv.weight.copy_(torch.where(keep, book[idx], torch.zeros(())))
        # ternary {-Wn, 0, +Wp}
        r = torch.rand_like(model.proj.weight)
        model.proj.weight.copy_(torch.where(r < 0.3, -0.21, torch.where(r > 0.7, 0.37, 0.0)))
        # fixed point: 6-bit integers with 5 fractional bits
        model.head.weight.copy_(torch.randint(-32, 32, model.head.weight.shape) * 2.0**-5)
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_round_trip_is_exact_and_picks_the_compact_encodings(tmp_path: Path) -> None:
    model = make_model()
    x = torch.randn(4, 3, 8, 8)
    path = tmp_path / "model.tt"
    report = codec.save(model, path)
    chosen = {t.name: t.encoding for t in report.tensors}
    assert chosen["fc.weight"] == "sparse"
    assert chosen["conv.weight"] in ("codebook", "huffman")
    assert chosen["proj.weight"] in ("ternary", "codebook", "huffman")
    assert chosen["head.weight"] in ("fixedpoint", "codebook", "huffman")
    assert chosen["stem.weight"] in ("dense", "fixedpoint")
    assert report.file_bytes == path.stat().st_size
    assert report.ratio > 1.5
    loaded = codec.load(path, allow_modules=ALLOW)
    assert isinstance(loaded, ResidualNet)
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training


# "qint" needs a quantized layer's scales: tests/test_codec_quant.py covers it.
@pytest.mark.parametrize("encoding", [e for e in codec.ENCODINGS if e != "qint"])
def test_every_encoding_round_trips_bit_exact(tmp_path: Path, encoding: str) -> None:
    model = make_model()
    x = torch.randn(2, 3, 8, 8)
    targets = {
        "dense": "stem.weight",
        "sparse": "fc.weight",
        "codebook": "conv.weight",
        "huffman": "conv.weight",
        "ternary": "proj.weight",
        "fixedpoint": "head.weight",
    }
    name = targets[encoding]
    path = tmp_path / f"{encoding}.tt"
    report = codec.save(model, path, encodings={f"^{name}$": encoding}, allow=["dense"])
    assert {t.name: t.encoding for t in report.tensors}[name] == encoding
    loaded = codec.load(path, allow_modules=ALLOW)
    original = model.state_dict()[name]
    restored = loaded.state_dict()[name]
    assert restored.dtype == original.dtype
    # Bit-identical (no -0.0 in these tensors, so the bit patterns must match too).
    assert torch.equal(restored.view(torch.int32), original.view(torch.int32))
    assert torch.equal(loaded(x), model(x))
    assert (
        codec.info(path)["tensors"][[t["name"] for t in codec.info(path)["tensors"]].index(name)]["encoding"]
        == encoding
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.bool])
def test_other_dtypes_round_trip(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    t = (torch.randn(5, 7) * 4).to(dtype)
    for enc in codec.ENCODINGS:
        try:
            coded = encodings.encode(t, enc)
        except encodings.NotApplicable:
            continue
        back = encodings.decode(enc, coded.params, [memoryview(p) for p in coded.parts], [5, 7], dtype)
        assert back.dtype == dtype and torch.equal(back, t), enc


def test_forcing_an_inapplicable_encoding_names_the_tensor(tmp_path: Path) -> None:
    with pytest.raises(CodecError, match="'stem.weight' cannot be stored as ternary"):
        codec.save(make_model(), tmp_path / "m.tt", encodings={"stem.weight": "ternary"})
    with pytest.raises(CodecError, match="unknown encoding"):
        codec.save(make_model(), tmp_path / "m.tt", allow=["zip"])


def test_restricting_encodings_changes_the_size(tmp_path: Path) -> None:
    model = make_model()
    dense = codec.save(model, tmp_path / "dense.tt", allow=["dense"])
    sparse = codec.save(model, tmp_path / "sparse.tt", allow=["dense", "sparse"])
    best = codec.save(model, tmp_path / "best.tt")
    assert {t.encoding for t in dense.tensors} == {"dense"}
    assert best.file_bytes < sparse.file_bytes < dense.file_bytes
    for r in (dense, sparse, best):
        assert r.file_bytes == r.path.stat().st_size
        assert sum(v["coded_bytes"] for v in r.by_encoding().values()) < r.file_bytes


def test_masked_and_tied_models_save_plain(tmp_path: Path) -> None:
    from torch.nn.utils import prune as torch_prune

    model = make_model()
    torch_prune.l1_unstructured(model.stem, "weight", amount=0.5)
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    x = torch.randn(2, 3, 8, 8)
    report = codec.save(model, tmp_path / "masked.tt")
    assert {t.name: t.encoding for t in report.tensors}["stem.weight"] == "sparse"
    assert torch_prune.is_pruned(model)  # the caller's model is untouched
    assert torch.equal(codec.load(tmp_path / "masked.tt", allow_modules=ALLOW)(x), model(x))
    report = codec.save(tied, tmp_path / "tied.tt")
    assert [t.encoding for t in report.tensors][1] == "alias"
    assert report.tensors[1].coded_bytes == 0
    loaded = codec.load(tmp_path / "tied.tt")
    assert torch.equal(loaded[1].weight, tied[0].weight)


def test_info_and_format_info(tmp_path: Path) -> None:
    path = tmp_path / "m.tt"
    codec.save(make_model(), path, meta={"model": "residual"})
    summary = codec.info(path)
    assert summary["file_bytes"] == path.stat().st_size
    assert summary["meta"] == {"model": "residual"}
    assert summary["payload_bytes"] + summary["header_and_manifest_bytes"] == summary["file_bytes"]
    text = codec.format_info(summary)
    assert "fc.weight" in text and "sparse" in text and f"{summary['file_bytes']} bytes" in text


# -- corrupt files ------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "model.tt"
    codec.save(make_model(), path)
    return path, path.read_bytes()


def _manifest(data: bytes) -> tuple[int, dict]:
    _, _, n, _ = struct.unpack_from("<8sHII", data)
    return n, json.loads(zlib.decompress(data[18 : 18 + n]))


def _rewrite(path: Path, data: bytes, manifest: dict | bytes) -> None:
    n, _ = _manifest(data)
    body = manifest if isinstance(manifest, bytes) else zlib.compress(json.dumps(manifest).encode())
    header = struct.pack("<8sHII", format.MAGIC, format.VERSION, len(body), zlib.crc32(body))
    path.write_bytes(header + body + data[18 + n :])


def test_flipped_payload_byte_names_the_tensor(saved: tuple[Path, bytes]) -> None:
    path, data = saved
    n, manifest = _manifest(data)
    entry = next(e for e in manifest["tensors"] if e["name"] == "fc.weight")
    at = 18 + n + entry["offset"] + 3
    path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
    with pytest.raises(CodecError, match=r"tensor 'fc.weight' in .*model.tt: checksum mismatch"):
        codec.load(path, allow_modules=ALLOW)


def test_flipped_manifest_byte(saved: tuple[Path, bytes]) -> None:
    path, data = saved
    path.write_bytes(data[:25] + bytes([data[25] ^ 1]) + data[26:])
    with pytest.raises(CodecError, match="manifest of .*checksum mismatch"):
        codec.load(path, allow_modules=ALLOW)


@pytest.mark.parametrize("cut", [1, 5, 12, 30, -1, -100])
def test_truncated_file(saved: tuple[Path, bytes], cut: int) -> None:
    path, data = saved
    path.write_bytes(data[:cut])
    expected = len(data) if cut < 0 else None
    with pytest.raises(CodecError, match="is truncated: expected") as err:
        codec.load(path, allow_modules=ALLOW)
    if expected is not None:
        assert f"expected {expected} bytes, found {len(data) + cut}" in str(err.value)


def test_trailing_bytes(saved: tuple[Path, bytes]) -> None:
    path, data = saved
    path.write_bytes(data + b"\0")
    with pytest.raises(CodecError, match="unexpected bytes after its payload"):
        codec.load(path, allow_modules=ALLOW)


def test_wrong_magic_and_version(saved: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = saved
    path.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(CodecError, match="not a tinytamer compressed model file"):
        codec.load(path, allow_modules=ALLOW)
    path.write_bytes(data[:8] + struct.pack("<H", 7) + data[10:])
    with pytest.raises(CodecError, match=f"written by format version 7; this tinytamer reads version {format.VERSION}"):
        codec.load(path, allow_modules=ALLOW)
    with pytest.raises(CodecError, match="not found"):
        codec.load(tmp_path / "missing.tt")


def test_manifest_not_json(saved: tuple[Path, bytes]) -> None:
    path, data = saved
    _rewrite(path, data, zlib.compress(b"{not json"))
    with pytest.raises(CodecError, match="not valid JSON"):
        codec.load(path, allow_modules=ALLOW)
    _rewrite(path, data, b"not zlib at all")
    with pytest.raises(CodecError, match="cannot be decompressed"):
        codec.load(path, allow_modules=ALLOW)


def test_manifest_schema_errors(saved: tuple[Path, bytes]) -> None:
    path, data = saved
    _, manifest = _manifest(data)
    manifest["tensors"][0]["dtype"] = "object"
    _rewrite(path, data, manifest)
    with pytest.raises(CodecError, match="manifest of .* is malformed"):
        codec.load(path, allow_modules=ALLOW)


def test_malicious_class_is_refused(saved: tuple[Path, bytes]) -> None:
    path, data = saved
    _, manifest = _manifest(data)
    manifest["architecture"]["root"]["class"] = "os:system"
    _rewrite(path, data, manifest)
    with pytest.raises(CodecError, match="outside the allowed module prefixes"):
        codec.load(path, allow_modules=ALLOW)


def test_inconsistent_coded_data_is_an_error_not_a_crash(saved: tuple[Path, bytes]) -> None:
    path, data = saved
    _, manifest = _manifest(data)
    entry = next(e for e in manifest["tensors"] if e["name"] == "fc.weight")
    entry["params"]["entries"] += 5  # checksums still match: the lie is in the manifest
    _rewrite(path, data, manifest)
    with pytest.raises(CodecError, match="tensor 'fc.weight'"):
        codec.load(path, allow_modules=ALLOW)
    entry["params"]["entries"] -= 5
    entry["shape"] = [10, 8]  # wrong shape for the architecture
    _rewrite(path, data, manifest)
    with pytest.raises(CodecError):
        codec.load(path, allow_modules=ALLOW)


def test_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "m.tt"
    codec.save(make_model(), path)
    before = path.read_bytes()
    with pytest.raises(CodecError):
        codec.save(make_model(), path, encodings={"stem.weight": "ternary"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tt"]
