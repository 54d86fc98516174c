"""Model files whose layer attributes would make a forward pass allocate without bound are refused at load.

Each hostile file is a real checkpoint or ``.tt`` whose architecture was doctored (checksums
and digest recomputed), so only the load-time bounds of ``tinytamer.codec.limits`` stand
between it and a huge allocation; legitimate zoo models, pruned, low-rank and quantized,
still load through both save/load paths.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save_file
from torch import fx, nn

from tinytamer import codec, zoo
from tinytamer.checkpoint import ARCH_KEY, DIGEST_KEY, digest, load_checkpoint, save_checkpoint
from tinytamer.codec import arch, format, limits
from tinytamer.compress import int8
from tinytamer.compress.channel import prune_channels
from tinytamer.compress.lowrank import spatial_pair
from tinytamer.errors import CodecError
from tinytamer.qgraph import QuantizedGraph
from tinytamer.zoo.cifar_resnet import ZeroPadShortcut
from tinytamer.zoo.registry import model_info

torch.set_num_threads(1)
BOUND = 64 << 20  # no hostile file here may make the loader allocate more than this at once


def layers() -> nn.ModuleDict:
    """One layer of every kind the bounds cover, in a container the loader may import."""
    return nn.ModuleDict(
        {
            "conv": nn.Conv2d(3, 4, 3, padding=1),
            "reflect": nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
            "up_conv": nn.ConvTranspose2d(4, 4, 2, stride=2),
            "pool": nn.MaxPool2d(2),
            "avg": nn.AvgPool2d(3, stride=1, padding=1),
            "adaptive": nn.AdaptiveAvgPool2d(2),
            "up": nn.Upsample(scale_factor=2.0),
            "up2": nn.Upsample(scale_factor=2.0),
            "pad": nn.ZeroPad2d(1),
            "pad2": nn.ZeroPad2d(1),
            "bn": nn.BatchNorm2d(4),
            "shortcut": ZeroPadShortcut(4, 8, 2),
            "fc": nn.Linear(16, 5),
        }
    ).eval()


class Functional(nn.Module):
    """Sizes given to F.pad, F.interpolate and an adaptive pool in the forward pass itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1))
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        y = F.interpolate(x, size=(8, 8), mode="nearest")
        return F.adaptive_avg_pool2d(y, 2)


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test on any forward pass, and on any torch allocation above BOUND."""

    def no_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{type(self).__name__} ran a forward pass while loading")

    monkeypatch.setattr(nn.Module, "__call__", no_forward)
    for fn in ("empty", "zeros"):
        real = getattr(torch, fn)

        def checked(*size: Any, _real: Callable[..., torch.Tensor] = real, **kw: Any) -> torch.Tensor:
            dims = size[0] if len(size) == 1 and isinstance(size[0], (list, tuple, torch.Size)) else size
            n = 1
            for d in dims:
                n *= int(d) if isinstance(d, int) else 1
            assert n * (kw.get("dtype") or torch.float32).itemsize <= BOUND, f"torch.{_real.__name__} of {n}"
            return _real(*size, **kw)

        monkeypatch.setattr(torch, fn, checked)


# -- doctoring files ------------------------------------------------------------------------------


def _module(desc: dict[str, Any], path: str) -> dict[str, Any]:
    node = desc["root"]
    for part in path.split(".") if path else []:
        node = node["children"][part]
    return node


def _encode(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, float) and value != value:
        return {"__float__": "nan"}
    return value


def doctor_checkpoint(src: Path, dst: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + n])["__metadata__"]
    tensors = st_load(data)
    desc = json.loads(meta[ARCH_KEY])
    change(desc)
    meta[ARCH_KEY] = json.dumps(desc)
    meta[DIGEST_KEY] = digest(meta, tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def doctor_tt(src: Path, dst: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    data = src.read_bytes()
    _, version, body_len, _ = struct.unpack_from("<8sHII", data)
    manifest = json.loads(zlib.decompress(data[18 : 18 + body_len]))
    change(manifest["architecture"])
    body = zlib.compress(json.dumps(manifest).encode())
    dst.write_bytes(
        struct.pack("<8sHII", format.MAGIC, version, len(body), zlib.crc32(body)) + body + data[18 + body_len :]
    )
    return dst


def set_attr(path: str, **attrs: Any) -> Callable[[dict[str, Any]], None]:
    def change(desc: dict[str, Any]) -> None:
        _module(desc, path)["attrs"].update({k: _encode(v) for k, v in attrs.items()})

    return change


def _records(desc: dict[str, Any]) -> list[dict[str, Any]]:
    return arch._decode(desc["root"]["attrs"]["nodes"], "nodes")


def set_node(index: int, *, args: tuple = (), **kwargs: Any) -> Callable[[dict[str, Any]], None]:
    def change(desc: dict[str, Any]) -> None:
        records = _records(desc)
        rec = records[index]
        if args:
            rec["args"] = (rec["args"][0], *args)
        rec["kwargs"].update(kwargs)
        desc["root"]["attrs"]["nodes"] = arch._encode(records, "nodes")

    return change


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    graph = QuantizedGraph(fx.symbolic_trace(Functional()))
    out = {"ckpt": root / "layers.safetensors", "tt": root / "layers.tt", "graph": root / "graph.safetensors"}
    save_checkpoint(layers(), out["ckpt"])
    codec.save(layers(), out["tt"], allow=["dense"])
    save_checkpoint(graph, out["graph"])
    return out


# (layer, attributes to set, what the message must say)
LAYER_CASES = {
    "conv padding": ("conv", {"padding": (10**6, 10**6), "_reversed_padding_repeated_twice": (10**6,) * 4}, "padding"),
    "conv padding not mirrored": ("reflect", {"_reversed_padding_repeated_twice": (9000,) * 4}, "_reversed_padding"),
    "conv dilation": ("conv", {"dilation": (4000, 4000)}, "dilation"),
    "conv stride 0": ("conv", {"stride": (0, 0)}, "stride"),
    "conv groups": ("conv", {"groups": 2}, "groups"),
    "conv channels": ("conv", {"in_channels": 3000}, "in_channels"),
    "conv kernel": ("conv", {"kernel_size": (9, 9)}, "kernel_size"),
    "conv padding mode": ("conv", {"padding_mode": "sideways"}, "padding_mode"),
    "transposed stride": ("up_conv", {"stride": (1000, 1000)}, "upscal"),
    "transposed output padding": ("up_conv", {"output_padding": (500, 500)}, "output_padding"),
    "pool padding": ("pool", {"padding": 10**6}, "padding"),
    "pool kernel": ("pool", {"kernel_size": 10**6}, "kernel_size"),
    "avg pool padding": ("avg", {"padding": 5}, "padding"),
    "adaptive output": ("adaptive", {"output_size": (10**6, 10**6)}, "output_size"),
    "upsample scale": ("up", {"scale_factor": 1e6}, "scale_factor"),
    "upsample nan": ("up", {"scale_factor": float("nan")}, "scale_factor"),
    "upsample size": ("up", {"size": (10**5, 10**5), "scale_factor": None}, "size"),
    "upsamplings in sequence": ("up2", {"scale_factor": 30.0}, "total upscaling"),
    "pad layer": ("pad", {"padding": (0, 0, 0, 5000)}, "padding"),
    # alone within the limit (255), with the first pad layer's 2 over it
    "pad layers in sequence": ("pad2", {"padding": (0, 0, 128, 127)}, "to a side"),
    "linear shape": ("fc", {"in_features": 10**6}, "in_features"),
    "norm features": ("bn", {"num_features": 7}, "num_features"),
    "custom int": ("shortcut", {"extra": 10**9}, "extra"),
    # within MAX_INT, but padded as zero channels at run time: bounded by MAX_SIDE
    "zero-pad shortcut channels": ("shortcut", {"extra": 60000}, "'extra'"),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
@pytest.mark.parametrize("kind", ["ckpt", "tt"])
def test_hostile_layer_attribute_is_refused_naming_file_layer_and_attribute(
    case: str, kind: str, files: dict[str, Path], tmp_path: Path, guard: None
) -> None:
    layer, attrs, said = LAYER_CASES[case]
    doctor = doctor_checkpoint if kind == "ckpt" else doctor_tt
    path = doctor(files[kind], tmp_path / files[kind].name, set_attr(layer, **attrs))
    with pytest.raises(CodecError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and f"module '{layer}'" in message and said in message, message
    assert "\n" not in message


def _node_index(path: Path, target: str, nth: int = 0) -> int:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    desc = json.loads(json.loads(data[8 : 8 + n])["__metadata__"][ARCH_KEY])
    return [i for i, rec in enumerate(_records(desc)) if rec["target"] == target][nth]


# (op, which of its calls, new arguments after the input, new keyword arguments, what the message must say)
NODE_CASES = {
    "F.pad": ("F.pad", 0, ((0, 0, 10**6, 10**6),), {}, "'pad'"),
    "F.pad computed": ("F.pad", 0, (({"node": "x"},),), {}, "computed at run time"),
    "interpolate scale": ("F.interpolate", 0, (), {"scale_factor": 1e6}, "scale_factor"),
    "interpolate size": ("F.interpolate", 1, (), {"size": (10**6, 10**6)}, "'size'"),
    "interpolate computed size": ("F.interpolate", 1, (), {"size": [{"node": "x"}, {"node": "x"}]}, "run time"),
    "adaptive output": ("F.adaptive_avg_pool2d", 0, (10**6,), {}, "output_size"),
}


@pytest.mark.parametrize("case", sorted(NODE_CASES))
def test_hostile_quantized_graph_sizes_are_refused(
    case: str, files: dict[str, Path], tmp_path: Path, guard: None
) -> None:
    target, nth, args, kwargs, said = NODE_CASES[case]
    index = _node_index(files["graph"], target, nth)
    path = doctor_checkpoint(files["graph"], tmp_path / "graph.safetensors", set_node(index, args=args, **kwargs))
    with pytest.raises(CodecError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and f"node {index}" in message and said in message, message


def test_limits_hold_for_an_untouched_file(files: dict[str, Path]) -> None:
    for kind in ("ckpt", "tt", "graph"):
        load_checkpoint(files[kind])


def test_upscaling_and_growth_are_summed_over_the_model() -> None:
    growth = limits.Growth()
    growth.add(limits.MAX_UPSCALE / 2)
    with pytest.raises(CodecError, match="total upscaling"):
        growth.add(4.0)
    growth = limits.Growth()
    growth.add(added=limits.MAX_GROWTH)
    with pytest.raises(CodecError, match="to a side"):
        growth.add(added=1)


# -- legitimate models still load -------------------------------------------------------------------


def _zoo(name: str) -> nn.Module:
    info = model_info(name)
    torch.manual_seed(0)
    return zoo.create(
        name, num_classes=info.num_classes, in_channels=info.input_shape[0], input_size=info.input_shape[-1]
    ).eval()


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_zoo_architecture_passes_the_bounds(name: str) -> None:
    model = _zoo(name)
    specs = {k: (t.shape, t.dtype) for k, t in model.state_dict().items()}
    rebuilt = arch.build(arch.describe(model), tensors=specs)
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in model.modules()]


SMALL = ["democnn", "dscnn", "lenet5", "resnet8", "vit"]


@pytest.mark.parametrize("name", SMALL)
def test_small_zoo_models_round_trip_through_both_files(name: str, tmp_path: Path) -> None:
    model = _zoo(name)
    x = torch.randn(2, *model_info(name).input_shape, generator=torch.Generator().manual_seed(1))
    save_checkpoint(model, tmp_path / "m.safetensors")
    codec.save(model, tmp_path / "m.tt")
    for path in (tmp_path / "m.safetensors", tmp_path / "m.tt"):
        assert torch.equal(load_checkpoint(path)(x), model(x)), path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(zoo.list_models()) - set(SMALL)))
def test_large_zoo_models_round_trip_through_both_files(name: str, tmp_path: Path) -> None:
    model = _zoo(name)
    save_checkpoint(model, tmp_path / "m.safetensors")
    codec.save(model, tmp_path / "m.tt", allow=["dense"])
    for path in (tmp_path / "m.safetensors", tmp_path / "m.tt"):
        loaded = load_checkpoint(path)
        assert all(
            torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
        )


def test_pruned_and_low_rank_models_load(tmp_path: Path) -> None:
    model = _zoo("resnet8")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pruned = prune_channels(model, x, ratio=0.5).eval()
    low_rank = nn.Sequential(spatial_pair(nn.Conv2d(3, 8, 3, padding=1), rank=2), nn.ReLU()).eval()
    for i, (m, inp) in enumerate([(pruned, x), (low_rank, x)]):
        codec.save(m, tmp_path / f"{i}.tt")
        save_checkpoint(m, tmp_path / f"{i}.safetensors")
        for path in (tmp_path / f"{i}.tt", tmp_path / f"{i}.safetensors"):
            assert torch.equal(load_checkpoint(path)(inp), m(inp)), path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet8", "dscnn", "yolofastest"])
def test_quantized_models_load(name: str, tmp_path: Path) -> None:
    model = _zoo(name)
    shape = model_info(name).input_shape
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *shape, generator=g)
    q = QuantizedGraph(int8.quantize(model, [x])).eval()
    codec.save(q, tmp_path / "q.tt")
    save_checkpoint(q, tmp_path / "q.safetensors")
    for path in (tmp_path / "q.tt", tmp_path / "q.safetensors"):
        out, ref = load_checkpoint(path)(x), q(x)
        for a, b in zip(
            out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,), strict=True
        ):
            assert torch.equal(a, b), path
