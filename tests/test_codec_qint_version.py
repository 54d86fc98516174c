"""Format version 2 stores a quantized layer's scales once; version 1 files still load bit-identically."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tinytamer import codec
from tinytamer.codec import format
from tinytamer.codec.plain import plain_copy
from tinytamer.compress import int8
from tinytamer.errors import CodecError
from tinytamer.qgraph import QuantizedGraph

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data"
# Written by format version 1 (each w_scale stored as its own tensor too) from the model
# `quantized()` builds; the tensors it loaded to then are stored beside it.
V1_FILE = DATA / "qint_v1.tt"
V1_TENSORS = DATA / "qint_v1_tensors.safetensors"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def quantized() -> QuantizedGraph:
    torch.manual_seed(0)
    x = [torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))]
    return QuantizedGraph(int8.quantize(Tiny().eval(), x)).eval()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def read(path: Path) -> tuple[int, dict[str, Any], bytes]:
    data = path.read_bytes()
    _, version, body_len, _ = struct.unpack_from("<8sHII", data)
    return version, json.loads(zlib.decompress(data[18 : 18 + body_len])), data[18 + body_len :]


def write(path: Path, version: int, manifest: dict[str, Any], payload: bytes) -> Path:
    body = zlib.compress(json.dumps(manifest).encode())
    path.write_bytes(struct.pack("<8sHII", format.MAGIC, version, len(body), zlib.crc32(body)) + body + payload)
    return path


def test_scales_are_stored_once(tmp_path: Path) -> None:
    model = quantized()
    report = codec.save(model, tmp_path / "q.tt")
    by_name = {t.name: t for t in report.tensors}
    for layer in ("conv", "fc"):
        assert by_name[f"{layer}.weight"].encoding == "qint"
        assert by_name[f"{layer}.w_scale"].encoding == "scales" and by_name[f"{layer}.w_scale"].coded_bytes == 0
    version, manifest, _ = read(tmp_path / "q.tt")
    assert version == format.VERSION == 2
    assert {e["name"]: e.get("scales_of") for e in manifest["tensors"]}["fc.w_scale"] == "fc.weight"
    loaded = codec.load(tmp_path / "q.tt")
    for name, t in plain_copy(model).state_dict().items():  # weights as the layers compute with them
        back = loaded.state_dict()[name]
        assert back.dtype == t.dtype and torch.equal(bits(back), bits(t)), name
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded(x), model(x))
    assert codec.info(tmp_path / "q.tt")["format_version"] == 2


def test_a_version_1_file_still_loads_bit_identically(tmp_path: Path) -> None:
    version, manifest, _ = read(V1_FILE)
    assert version == 1 and not any(e.get("scales_of") for e in manifest["tensors"])
    expected = load_file(str(V1_TENSORS))
    loaded = codec.load(V1_FILE).state_dict()
    assert loaded.keys() == expected.keys()
    for name, t in expected.items():
        assert loaded[name].dtype == t.dtype and torch.equal(bits(loaded[name]), bits(t)), name
    assert codec.info(V1_FILE)["format_version"] == 1
    # and saved again it is a version 2 file of the same tensors, smaller by the scales
    model = codec.load(V1_FILE)
    report = codec.save(model, tmp_path / "again.tt")
    assert report.file_bytes < V1_FILE.stat().st_size
    again = codec.load(tmp_path / "again.tt").state_dict()
    assert all(torch.equal(bits(again[n]), bits(t)) for n, t in expected.items())


def test_the_v1_fixture_is_what_the_model_saves_to() -> None:
    """The fixture's tensors are this test's model's, so the two tests above speak of one model."""
    expected = load_file(str(V1_TENSORS))
    for name, t in plain_copy(quantized()).state_dict().items():
        assert torch.equal(bits(expected[name]), bits(t)), name


def _scales_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in manifest["tensors"] if e.get("scales_of"))


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("in a version 1 file", "format version 1 lacks"),
        ("names a missing tensor", "not a 'qint' tensor stored before it"),
        ("names a dense tensor", "not a 'qint' tensor stored before it"),
        ("has the wrong shape", "declares"),
        ("has parts", "declares"),
        ("unknown version", "reads version 2 \\(and 1\\)"),
    ],
)
def test_doctored_scale_references_are_refused(case: str, said: str, tmp_path: Path) -> None:
    codec.save(quantized(), tmp_path / "q.tt")
    version, manifest, payload = read(tmp_path / "q.tt")
    entry = _scales_entry(manifest)
    if case == "in a version 1 file":
        version = 1
    elif case == "names a missing tensor":
        entry["scales_of"] = "nowhere.weight"
    elif case == "names a dense tensor":
        entry["scales_of"] = "aq_x.scale"
    elif case == "has the wrong shape":
        entry["shape"] = [entry["shape"][0] + 1]
    elif case == "has parts":
        entry["parts"] = [0]
    else:
        version = 3
    path = write(tmp_path / "bad.tt", version, manifest, payload)
    with pytest.raises(CodecError, match=said) as err:
        codec.load(path)
    assert str(path) in str(err.value)


def test_scales_of_a_weight_not_stored_as_qint_are_stored_apart(tmp_path: Path) -> None:
    model = quantized()
    report = codec.save(model, tmp_path / "q.tt", encodings={"fc.weight": "dense"})
    encodings = {t.name: t.encoding for t in report.tensors}
    assert encodings["fc.w_scale"] != "scales" and encodings["conv.w_scale"] == "scales"
    assert torch.equal(codec.load(tmp_path / "q.tt").state_dict()["fc.w_scale"], model.state_dict()["fc.w_scale"])
