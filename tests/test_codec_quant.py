"""Quantized models in the compressed file: b-bit weights stored as b-bit integers ("qint")."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tinytamer import codec, zoo
from tinytamer.cli import app
from tinytamer.codec import encodings
from tinytamer.compress import int8
from tinytamer.errors import CodecError, CompressError
from tinytamer.qgraph import QuantizedGraph, QuantWeight
from tinytamer.search import haq

torch.set_num_threads(1)


class Small(nn.Module):
    """A conv, a depthwise conv and a linear layer: every kind of quantized layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))


def batches(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 8, 8, generator=g) for _ in range(n)]


def quantized(bits: int, method: str = "ptq") -> QuantizedGraph:
    torch.manual_seed(0)
    model = Small().eval()

    def train(gm: nn.Module) -> None:  # a few QAT steps: the master weights move off the grid
        opt = torch.optim.SGD(gm.parameters(), lr=0.05)
        gm.train()
        for x in batches(3):
            opt.zero_grad()
            gm(x).square().mean().backward()
            opt.step()

    gm = int8.quantize(model, batches(), method=method, weight_bits=bits, train=train if method == "qat" else None)
    return QuantizedGraph(gm).eval()


def weights(model: nn.Module) -> dict[str, QuantWeight]:
    return {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, QuantWeight)}


@pytest.mark.parametrize(("bits", "method"), [(8, "ptq"), (4, "ptq"), (3, "ptq"), (2, "ptq"), (4, "qat"), (8, "qat")])
def test_quantized_model_round_trips_bit_identical_as_integers(tmp_path: Path, bits: int, method: str) -> None:
    model = quantized(bits, method)
    masters = {n: m.weight.detach().clone() for n, m in weights(model).items()}
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    report = codec.save(model, tmp_path / "q.tt")
    chosen = {t.name: t for t in report.tensors}
    loaded = codec.load(tmp_path / "q.tt").eval()
    assert torch.equal(loaded(x), model(x))
    for name, m in weights(model).items():
        assert chosen[name].encoding == "qint", name
        # b-bit integers take b bits (plus one float32 scale per channel)
        assert chosen[name].coded_bytes <= (m.weight.numel() * bits + 7) // 8 + 4 * m.weight.shape[0], name
        back = weights(loaded)[name]
        assert torch.equal(back.int_weight(), m.int_weight()), name
        shape = (-1,) + (1,) * (m.weight.dim() - 1)
        assert torch.equal(back.weight, m.int_weight().float() * m.w_scale.view(shape)), name
        assert torch.equal(m.weight, masters[name]), f"saving changed the model's own {name}"
    assert "qint" in report.by_encoding()
    # Saving the loaded model again gives the same file.
    assert codec.save(loaded, tmp_path / "again.tt").file_bytes == report.file_bytes


def test_lenet5_file_shrinks_with_the_weight_bits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.create("lenet5", num_classes=10, in_channels=1, input_size=28).eval()
    x = [torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))]
    float_bytes = codec.save(model, tmp_path / "float.tt").file_bytes
    sizes = {}
    for bits in (8, 4, 2):
        q = QuantizedGraph(int8.quantize(model, x, weight_bits=bits)).eval()
        sizes[bits] = codec.save(q, tmp_path / f"int{bits}.tt").file_bytes
        assert torch.equal(codec.load(tmp_path / f"int{bits}.tt").eval()(x[0]), q(x[0]))
    # Measured: 1,722,826 B float; 434,567 (0.252x), 219,317 (0.127x), 111,694 (0.065x).
    assert sizes[8] <= 0.26 * float_bytes
    assert sizes[4] <= 0.135 * float_bytes
    assert sizes[2] <= 0.07 * float_bytes
    summary = codec.info(tmp_path / "int4.tt")
    assert summary["by_encoding"]["qint"]["tensors"] == 4
    assert {t["name"]: t["params"]["bits"] for t in summary["tensors"] if t["encoding"] == "qint"} == {
        name: 4 for name in ("features.0.weight", "features.2.weight", "classifier.1.weight", "classifier.3.weight")
    }
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path / "int4.tt")])
    assert shown.exit_code == 0 and "qint 4 tensors" in shown.output


def _linear(bits: int, zeros: float = 0.0) -> nn.Sequential:
    torch.manual_seed(3)
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < zeros] = 0
    return nn.Sequential(int8.QuantLinear.from_float(layer, bits)).eval()


def test_pruned_quantized_weight_stores_only_its_nonzero_integers(tmp_path: Path) -> None:
    dense = {t.name: t for t in codec.save(_linear(8), tmp_path / "d.tt").tensors}["0.weight"]
    model = _linear(8, zeros=0.9)
    report = {t.name: t for t in codec.save(model, tmp_path / "p.tt").tensors}["0.weight"]
    entry = next(t for t in codec.info(tmp_path / "p.tt")["tensors"] if t["name"] == "0.weight")
    assert report.encoding == entry["encoding"] == "qint" and entry["params"]["index_bits"] > 0
    assert report.coded_bytes < dense.coded_bytes / 3
    x = torch.randn(5, 64)
    assert torch.equal(codec.load(tmp_path / "p.tt")(x), model(x))


def test_qint_applies_only_to_integers_times_the_given_scales() -> None:
    m = _linear(4)[0]
    master, scales = m.weight.detach(), m.w_scale
    baked = m.int_weight().float() * scales[:, None]
    with pytest.raises(encodings.NotApplicable, match="no per-channel scales"):
        encodings.encode(baked, "qint")
    with pytest.raises(encodings.NotApplicable, match="not 8-bit integers times"):
        encodings.encode(master, "qint", scales=scales)  # the float master weight is not on the grid
    with pytest.raises(encodings.NotApplicable, match="not 8-bit integers times"):
        encodings.encode(baked * 100, "qint", scales=scales)  # integers past 8 bits
    with pytest.raises(encodings.NotApplicable, match="31 float32 scales for 32"):
        encodings.encode(baked, "qint", scales=scales[:-1])
    coded = encodings.encode(baked, "qint", scales=scales)
    assert coded.params["bits"] == 4
    back = encodings.decode("qint", coded.params, [memoryview(p) for p in coded.parts], [32, 64], torch.float32)
    assert torch.equal(back, baked)


# -- hostile files ------------------------------------------------------------------------------


def _manifest(data: bytes) -> tuple[int, dict]:
    _, _, n, _ = struct.unpack_from("<8sHII", data)
    return n, json.loads(zlib.decompress(data[18 : 18 + n]))


def _rewrite(path: Path, data: bytes, manifest: dict) -> None:
    n, _ = _manifest(data)
    version = struct.unpack_from("<8sH", data)[1]  # the file's own: later versions add entry kinds
    body = zlib.compress(json.dumps(manifest).encode())
    header = struct.pack("<8sHII", b"\x89TTM\r\n\x1a\n", version, len(body), zlib.crc32(body))
    path.write_bytes(header + body + data[18 + n :])


def _recrc(entry: dict, payload: bytes) -> None:
    """Checksum the entry's (changed) byte range, so the lie reaches the decoder."""
    entry["crc32"] = zlib.crc32(payload[entry["offset"] : entry["offset"] + sum(entry["parts"])])


def _shorten(entry: dict, payload: bytes) -> None:
    entry["parts"][2] -= 1
    _recrc(entry, payload)


def _scales_eat_integers(entry: dict, payload: bytes) -> None:
    entry["parts"][0] += 4
    entry["parts"][2] -= 4


def _positions_in_dense(entry: dict, payload: bytes) -> None:
    entry["parts"][1] += 1
    entry["parts"][2] -= 1


HOSTILE = {
    "bits 9": (lambda e, p: e["params"].update(bits=9), "parameter 'bits' is 9"),
    "bits 1": (lambda e, p: e["params"].update(bits=1), "parameter 'bits' is 1"),
    "bits text": (lambda e, p: e["params"].update(bits="4"), "parameter 'bits' is 4"),
    "bits true": (lambda e, p: e["params"].update(bits=True), "parameter 'bits' is True"),
    "bits wider": (lambda e, p: e["params"].update(bits=8), "bit stream holds"),
    "channels": (lambda e, p: e["params"].update(channels=33), "declares 33 channels"),
    "no channels": (lambda e, p: e["params"].pop("channels"), "declares None channels"),
    "scale count": (_scales_eat_integers, "holds 33 scales for the 32 output channels"),
    "truncated": (_shorten, "bit stream holds"),
    "positions": (_positions_in_dense, "dense 'qint' tensor holds 1 bytes of positions"),
    "entries": (lambda e, p: e["params"].update(index_bits=4, entries=10**9), "parameter 'entries'"),
    "index bits": (lambda e, p: e["params"].update(index_bits=40), "parameter 'index_bits'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_qint_headers_are_refused_naming_the_tensor(tmp_path: Path, case: str) -> None:
    path = tmp_path / "q.tt"
    codec.save(_linear(4), path)
    data = path.read_bytes()
    n, manifest = _manifest(data)
    entry = next(e for e in manifest["tensors"] if e["name"] == "0.weight")
    assert entry["encoding"] == "qint" and entry["params"]["bits"] == 4
    change, message = HOSTILE[case]
    change(entry, data[18 + n :])
    _rewrite(path, data, manifest)
    with pytest.raises(CodecError, match=r"tensor '0\.weight' in .*q\.tt: .*" + message):
        codec.load(path)


def test_qint_decoder_refuses_tensors_without_channels_or_float32() -> None:
    coded = encodings.encode(_linear(4)[0].weight.detach() * 0, "qint", scales=torch.ones(32))
    parts = [memoryview(p) for p in coded.parts]
    with pytest.raises(CodecError, match="float32 tensors with output channels"):
        encodings.decode("qint", coded.params, parts, [32, 64], torch.float16)
    with pytest.raises(CodecError, match="float32 tensors with output channels"):
        encodings.decode("qint", coded.params, parts, [], torch.float32)


# -- HAQ's file-size resource --------------------------------------------------------------------


def test_haq_file_bytes_with_the_linear_quantizer_is_the_real_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.create("democnn", in_channels=1, input_size=16).eval()
    layers = haq.layer_infos(model, torch.zeros(1, 1, 16, 16))
    calib = [torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))]
    res = haq.compressed_bytes(model, layers, quantizer="linear", calib=calib)
    b = haq.LayerBits
    sizes = {w: res([b(w, 8)] * len(layers)) for w in (8, 4, 2)}
    assert sizes[8] > sizes[4] > sizes[2]
    mixed = [b(8, 8), b(3, 8), b(5, 8)][: len(layers)] + [b(4, 8)] * (len(layers) - 3)
    gm = haq.quantize_policy(model, calib, layers, mixed, quantizer="linear")
    assert res(mixed) == codec.save(QuantizedGraph(gm), tmp_path / "m.tt").file_bytes
    assert "linear quantization" in res.source
    assert "k-means" in haq.compressed_bytes(model, layers).source
    with pytest.raises(CompressError, match="needs calibration data"):
        haq.compressed_bytes(model, layers, quantizer="linear")
