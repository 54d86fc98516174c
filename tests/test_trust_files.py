"""Model files are validated data: architecture metadata, .tt manifests and coded streams,
checkpoint digests, `--weights` of either kind, and seeded structure-aware fuzzing.

Every hostile file here gets past the checksums (CRCs and digests are recomputed after the
mutation), so what is tested is the validation behind them: a file gives a model or one of
the product's own errors, and never allocates more than its declared, bounded size.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file
from torch import nn

from tinytamer import codec, zoo
from tinytamer.checkpoint import (
    ARCH_KEY,
    DIGEST_KEY,
    MAX_HEADER,
    digest,
    has_architecture,
    load_checkpoint,
    load_weights,
    read_metadata,
    save_checkpoint,
)
from tinytamer.codec import arch, format, huffman
from tinytamer.errors import CodecError, ModelError, TamerError
from tinytamer.recipe import ModelSpec, build_model

BOUND = 200 << 20  # no file here may make the loader allocate more than this at once


def democnn() -> nn.Module:
    torch.manual_seed(0)
    return zoo.create("democnn", num_classes=10, in_channels=1, input_size=28).eval()


def pruned_shared(variant: int) -> tuple[nn.Module, dict[str, str]]:
    """democnn pruned and shared so that every coded form appears in one of two files."""
    model = democnn()
    g = torch.Generator().manual_seed(variant)
    with torch.no_grad():
        for name, p in model.named_parameters():
            book = torch.randn(8, generator=g) * 0.1
            shared = book[torch.randint(0, 8, p.shape, generator=g)]
            pruned = torch.rand(p.shape, generator=g) < 0.7
            p.copy_(shared if name == "features.0.weight" else torch.where(pruned, 0.0, shared))
        model.features[3].bias.copy_(torch.tensor([-0.25, 0.0, 0.5, 0.0] * 4))  # ternary
        model.classifier[1].bias.copy_(torch.randint(-8, 8, (10,), generator=g) * 2.0**-3)
    if variant == 0:  # Huffman, plain sparse, ternary, fixed point
        forced = {
            "features.0.weight": "huffman",
            "features.3.weight": "huffman",
            "classifier.1.weight": "sparse",
            "features.3.bias": "ternary",
            "classifier.1.bias": "fixedpoint",
            "features.0.bias": "dense",
        }
    else:  # codebook with and without positions; the rest automatic (Huffman with positions)
        forced = {"classifier.1.weight": "codebook", "features.0.weight": "codebook"}
    return model, forced


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real files of small models: a dense and two coded .tt, and a checkpoint."""
    root = tmp_path_factory.mktemp("trust")
    out = {
        "dense.tt": root / "dense.tt",
        "coded0.tt": root / "coded0.tt",
        "coded1.tt": root / "coded1.tt",
        "ckpt": root / "democnn.safetensors",
    }
    codec.save(democnn(), out["dense.tt"], allow=["dense"])
    forms = set()
    for v in (0, 1):
        model, forced = pruned_shared(v)
        report = codec.save(model, out[f"coded{v}.tt"], encodings=forced)
        assert all(t.encoding == forced[t.name] for t in report.tensors if t.name in forced)
        entries = tt_read(out[f"coded{v}.tt"])[0]["tensors"]
        forms |= {(e["encoding"], bool(e["params"].get("index_bits"))) for e in entries}
    # every coded form, with relative positions (pruned) and without
    assert {
        ("huffman", True),
        ("huffman", False),
        ("codebook", True),
        ("codebook", False),
        ("sparse", True),
        ("ternary", False),
        ("fixedpoint", False),
    } <= forms, forms
    save_checkpoint(democnn(), out["ckpt"])
    return out


# -- rewriting files so that a mutation gets past their checksums -------------------------------


def tt_read(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    _, _, body_len, _ = struct.unpack_from("<8sHII", data)
    start = 18 + body_len
    return json.loads(zlib.decompress(data[18:start])), data[start:]


def tt_write(path: Path, manifest: dict[str, Any], payload: bytes) -> None:
    """Write a .tt whose checksums fit its (possibly doctored) manifest and payload."""
    entries = manifest.get("tensors") if isinstance(manifest, dict) else None
    for e in entries if isinstance(entries, list) else []:
        try:  # best effort: a mutated offset or length still gets a checksum of what it names
            at, n = e["offset"], sum(e["parts"])
            if isinstance(at, int) and 0 <= at and 0 <= n:
                e["crc32"] = zlib.crc32(payload[at : at + n])
        except (KeyError, TypeError):
            pass
    body = zlib.compress(json.dumps(manifest).encode(), 6)
    path.write_bytes(struct.pack("<8sHII", format.MAGIC, format.VERSION, len(body), zlib.crc32(body)) + body + payload)


def ckpt_read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])["__metadata__"], st_load(data)


def ckpt_write(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor], *, redigest: bool = True) -> None:
    meta = dict(meta)
    if redigest:
        meta[DIGEST_KEY] = digest(meta, tensors)
    save_file(tensors, str(path), metadata=meta)


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test (not the load) on any torch allocation above BOUND."""
    for fn in ("empty", "zeros"):
        real = getattr(torch, fn)

        def checked(*size: Any, _real: Callable[..., torch.Tensor] = real, **kw: Any) -> torch.Tensor:
            dims = size[0] if len(size) == 1 and isinstance(size[0], (list, tuple, torch.Size)) else size
            n = 1
            for d in dims:
                n *= int(d) if isinstance(d, int) else 1
            itemsize = (kw.get("dtype") or torch.float32).itemsize
            assert n * itemsize <= BOUND, f"torch.{_real.__name__} of {n * itemsize} bytes"
            return _real(*size, **kw)

        monkeypatch.setattr(torch, fn, checked)


def test_the_guard_catches_large_allocations(guard: None) -> None:
    with pytest.raises(AssertionError, match="torch.empty"):
        torch.empty([BOUND // 4 + 1])
    with pytest.raises(AssertionError, match="torch.zeros"):
        torch.zeros(BOUND + 1, dtype=torch.uint8)


# -- 1. architecture metadata ----------------------------------------------------------------


def _described() -> tuple[dict[str, Any], dict[str, Any]]:
    model = democnn()
    specs = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    return json.loads(json.dumps(arch.describe(model))), specs


def _node(desc: dict[str, Any], path: str) -> dict[str, Any]:
    node = desc["root"]
    for part in filter(None, path.split(".")):
        node = node["children"][part]
    return node


def _deep_modules(d: dict[str, Any]) -> None:
    node = _node(d, "features.1")
    for _ in range(80):
        node["children"]["x"] = {
            "class": "torch.nn.modules.activation:ReLU",
            "attrs": {"inplace": False},
            "params": {},
            "buffers": {},
            "children": {},
        }
        node = node["children"]["x"]


def _deep_value(d: dict[str, Any]) -> None:
    value: Any = 1
    for _ in range(200):
        value = [value]
    _node(d, "features.3")["attrs"]["stride"] = value


ARCH_CASES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "negative shape": (
        lambda d: _node(d, "features.3")["params"]["weight"].update(shape=[-1, -20]),
        "non-negative integers",
    ),
    "float shape": (
        lambda d: _node(d, "features.3")["params"]["weight"].update(shape=[16.0, 8, 3, 3]),
        "non-negative integers",
    ),
    "bool shape": (lambda d: _node(d, "features.3")["params"]["bias"].update(shape=[True]), "non-negative integers"),
    "huge shape": (
        lambda d: _node(d, "features.3")["params"]["bias"].update(shape=[1000000000]),
        "file holds float32 [16]",
    ),
    "too many dims": (lambda d: _node(d, "features.3")["params"]["bias"].update(shape=[1] * 40), "at most 32"),
    "shape not a list": (
        lambda d: _node(d, "features.3")["params"]["bias"].update(shape="16"),
        "non-negative integers",
    ),
    "unknown dtype": (lambda d: _node(d, "features.3")["params"]["bias"].update(dtype="__class__"), "unknown dtype"),
    "requires_grad not bool": (
        lambda d: _node(d, "features.3")["params"]["bias"].update(requires_grad="y"),
        "requires_grad",
    ),
    "spec not an object": (lambda d: _node(d, "features.3")["params"].update(bias=[16]), "spec must be"),
    "attrs as a list": (lambda d: _node(d, "features.3").update(attrs=[1, 2]), "'attrs' is of type list"),
    "params as a string": (lambda d: _node(d, "features.3").update(params="weight"), "'params' is of type str"),
    "class not a string": (lambda d: _node(d, "features.3").update({"class": 7}), "not a 'module:Class'"),
    "class with dunder hop": (
        lambda d: _node(d, "features.3").update({"class": "torch.nn:Module.__init__.__globals__"}),
        "not a 'package.module:Class'",
    ),
    "class not a module": (
        lambda d: _node(d, "features.3").update({"class": "torch.nn.functional:conv2d"}),
        "not an nn.Module class",
    ),
    "float that does not parse": (
        lambda d: _node(d, "features.3")["attrs"].update(stride={"__float__": "one"}),
        "not a number",
    ),
    "float not a string": (lambda d: _node(d, "features.3")["attrs"].update(stride={"__float__": 1}), "not a str"),
    "tuple not a list": (lambda d: _node(d, "features.3")["attrs"].update(stride={"__tuple__": 3}), "not a list"),
    "unknown tag": (
        lambda d: _node(d, "features.3")["attrs"].update(stride={"__reduce__": "os.system"}),
        "unknown value encoding",
    ),
    "two tags": (
        lambda d: _node(d, "features.3")["attrs"].update(stride={"__tuple__": [1], "__float__": "1"}),
        "unknown value encoding",
    ),
    "unhashable set member": (lambda d: _node(d, "features.3")["attrs"].update(tag={"__set__": [[1]]}), "__set__"),
    "deep value": (_deep_value, "deeper than 32"),
    "deep modules": (_deep_modules, "deeper than 64"),
    "missing key": (lambda d: _node(d, "features.3").pop("buffers"), "has keys"),
    "unknown key": (lambda d: _node(d, "features.3").update(code="print(1)"), "has keys"),
    "child not an object": (lambda d: _node(d, "features")["children"].update({"3": [1]}), "not an object"),
    "child name with a dot": (lambda d: _node(d, "features")["children"].update({"a.b": None}), "not a plain name"),
    "swapped class": (
        lambda d: _node(d, "features.3").update({"class": "torch.nn.modules.batchnorm:BatchNorm2d"}),
        "without its attributes",
    ),
    "a constant removed": (
        lambda d: _node(d, "classifier.1")["attrs"].pop("in_features"),
        "without its attributes ['in_features']",
    ),
    "declared tensor not in the file": (
        lambda d: _node(d, "features.3")["buffers"].update(
            extra={"shape": [3], "dtype": "float32", "requires_grad": False}
        ),
        "holds no such tensor",
    ),
    "dtype differs from the file": (
        lambda d: _node(d, "features.3")["params"]["bias"].update(dtype="float64"),
        "file holds float32",
    ),
    "values of a buffer it lacks": (
        lambda d: _node(d, "features.3").update(non_persistent={"nope": [1]}),
        "not among its buffers",
    ),
    "training not a bool": (lambda d: _node(d, "features.3")["attrs"].update(training="yes"), "not true or false"),
}


@pytest.mark.parametrize("case", sorted(ARCH_CASES))
def test_malformed_architecture_names_the_module(case: str) -> None:
    desc, specs = _described()
    mutate, message = ARCH_CASES[case]
    mutate(desc)
    with pytest.raises(CodecError, match="module '") as err:
        arch.build(desc, tensors=specs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "name",
    [
        "forward",
        "state_dict",
        "__class__",
        "__dict__",
        "__init__",
        "_parameters",
        "_modules",
        "not an identifier",
        "a.b",
        "9x",
        "",
    ],
)
def test_attributes_cannot_replace_behaviour(name: str) -> None:
    desc, specs = _described()
    _node(desc, "classifier.1")["attrs"][name] = 0
    with pytest.raises(CodecError, match="module 'classifier.1'"):
        arch.build(desc, tensors=specs)


class WithProperty(nn.Module):
    @property
    def scale(self) -> float:
        return 2.0


def test_attributes_cannot_replace_a_property() -> None:
    desc = json.loads(json.dumps(arch.describe(WithProperty())))
    desc["root"]["attrs"]["scale"] = 1000.0
    with pytest.raises(CodecError, match="would replace a method or property of WithProperty"):
        arch.build(desc, allow=[__name__], tensors={})


def test_huge_shape_without_file_tensors_is_capped(guard: None) -> None:
    desc, _ = _described()
    _node(desc, "features.3")["params"]["weight"]["shape"] = [1000000000, 4]
    with pytest.raises(CodecError, match=f"more than {arch.MAX_ELEMENTS} elements"):
        arch.build(desc)
    desc, _ = _described()
    assert isinstance(arch.build(desc), nn.Module)  # a real model fits the cap


def test_describe_refuses_what_build_would_refuse() -> None:
    deep: nn.Module = nn.ReLU()
    for _ in range(arch.MAX_DEPTH + 1):
        deep = nn.Sequential(deep)
    with pytest.raises(ModelError, match="deeper than 64"):
        arch.describe(deep)
    m = nn.ReLU()
    value: Any = 1
    for _ in range(arch.MAX_VALUE_DEPTH + 2):
        value = (value,)
    m.nested = value
    with pytest.raises(ModelError, match="deeper than 32"):
        arch.describe(m)


# -- 2. .tt manifests and coded streams ----------------------------------------------------------


def _entry(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in manifest["tensors"] if e["name"] == name)


def _set(tensor: str, **fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: _entry(m, tensor).update(fields)


def _params(tensor: str, **params: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: _entry(m, tensor)["params"].update(params)


TT_CASES: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    # file, mutation, what the error says
    "negative shape": ("dense.tt", _set("features.3.bias", shape=[-1, -20]), "greater than or equal to 0"),
    "bool shape": ("dense.tt", _set("features.3.bias", shape=[True]), "valid integer"),
    "float shape": ("dense.tt", _set("features.3.bias", shape=[16.0]), "valid integer"),
    "huge dense shape": ("dense.tt", _set("features.3.bias", shape=[1000000000]), "bytes of tensors"),
    "huge sparse shape": ("coded0.tt", _set("classifier.1.weight", shape=[1000000000]), "bytes of tensors"),
    "shape against the architecture": ("dense.tt", _set("features.3.bias", shape=[4, 4]), "declared float32 [16]"),
    "unknown dtype": ("dense.tt", _set("features.3.bias", dtype="complex128"), "dtype"),
    "dtype against the architecture": ("dense.tt", _set("features.3.bias", dtype="int32"), "file holds int32"),
    "unknown encoding": ("dense.tt", _set("features.3.bias", encoding="pickle"), "encoding"),
    "negative part length": ("dense.tt", _set("features.3.bias", parts=[-4]), "parts"),
    "negative offset": ("dense.tt", _set("features.3.bias", offset=-1), "offset"),
    "offset past the payload": ("dense.tt", _set("features.3.bias", offset=10**9), "past the payload"),
    "twice the same name": ("dense.tt", _set("features.3.bias", name="features.0.bias"), "twice"),
    "alias of a later tensor": (
        "dense.tt",
        _set("features.0.bias", alias="classifier.1.bias", parts=[]),
        "stored before it",
    ),
    "alias of another shape": (
        "dense.tt",
        _set("features.3.bias", alias="features.0.bias", parts=[]),
        "aliases 'features.0.bias' but declares",
    ),
    "sparse entries beyond the tensor": (
        "coded0.tt",
        _params("classifier.1.weight", entries=10**12),
        "parameter 'entries'",
    ),
    "sparse index bits out of range": (
        "coded0.tt",
        _params("classifier.1.weight", index_bits=64),
        "parameter 'index_bits'",
    ),
    "sparse entries a bool": ("coded0.tt", _params("classifier.1.weight", entries=True), "parameter 'entries'"),
    "codebook of no entries": ("coded1.tt", _params("classifier.1.weight", k=0), "parameter 'k'"),
    "codebook bits a string": ("coded1.tt", _params("features.0.weight", bits="3"), "parameter 'bits'"),
    "huffman index bits a float": ("coded0.tt", _params("features.3.weight", index_bits=2.0), "parameter 'index_bits'"),
    "fixed point bits out of range": ("coded0.tt", _params("classifier.1.bias", bits=99), "parameter 'bits'"),
    "fixed point fl out of range": ("coded0.tt", _params("classifier.1.bias", fl=10**6), "parameter 'fl'"),
    "params not an object": ("coded0.tt", _set("classifier.1.bias", params=[1]), "params"),
    "payload size a string": ("dense.tt", lambda m: m.update(payload_bytes="1"), "payload_bytes"),
}


@pytest.mark.parametrize("case", sorted(TT_CASES))
def test_doctored_manifest_gives_a_clear_error(case: str, files: dict[str, Path], tmp_path: Path, guard: None) -> None:
    name, mutate, message = TT_CASES[case]
    manifest, payload = tt_read(files[name])
    mutate(manifest)
    path = tmp_path / "doctored.tt"
    tt_write(path, manifest, payload)
    with pytest.raises(CodecError) as err:
        codec.load(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_expansion_is_bounded_by_the_file_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(1000, 1000, bias=False)
    nn.init.zeros_(model.weight)  # all zero: stored in 0 bytes by the sparse form
    path = tmp_path / "zeros.tt"
    assert codec.save(model, path).file_bytes < 2000
    monkeypatch.setattr(codec, "MIN_DECODED_BYTES", 1 << 20)
    with pytest.raises(CodecError, match="4000000 bytes of tensors.*max_bytes"):
        codec.load(path)
    assert torch.count_nonzero(codec.load(path, max_bytes=4_000_000).weight) == 0


def test_huffman_count_is_checked_before_decoding() -> None:
    stream = huffman.encode(torch.randint(0, 4, (100,)).numpy(), 4)
    bomb = struct.pack("<I", 2**32 - 1) + stream[4:]
    with pytest.raises(CodecError, match="cannot fit"):
        huffman.decode(bomb)
    with pytest.raises(CodecError, match="at most 50 expected"):
        huffman.decode(stream, max_count=50)


def test_deeply_nested_manifest_is_an_error(files: dict[str, Path], tmp_path: Path) -> None:
    manifest, payload = tt_read(files["dense.tt"])
    body = json.dumps(manifest).replace('"meta": {}', '"meta": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    path = tmp_path / "deep.tt"
    data = zlib.compress(body.encode())
    path.write_bytes(struct.pack("<8sHII", format.MAGIC, format.VERSION, len(data), zlib.crc32(data)) + data + payload)
    with pytest.raises(CodecError, match="not valid JSON"):
        codec.load(path)


# -- 3. checkpoint digests and headers -----------------------------------------------------------


def test_checkpoint_carries_a_digest_of_metadata_and_tensors(files: dict[str, Path]) -> None:
    meta, tensors = ckpt_read(files["ckpt"])
    assert meta[DIGEST_KEY] == digest(meta, tensors) == read_metadata(files["ckpt"])[DIGEST_KEY]
    model = democnn()
    loaded = load_checkpoint(files["ckpt"])
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("change", ["weight", "shape", "architecture", "extra key"])
def test_changed_checkpoint_fails_its_digest(change: str, files: dict[str, Path], tmp_path: Path) -> None:
    meta, tensors = ckpt_read(files["ckpt"])
    if change == "weight":
        tensors["classifier.1.bias"][3] += 1e-6
    elif change == "shape":
        tensors["classifier.1.weight"] = tensors["classifier.1.weight"].reshape(784, 10)
    elif change == "architecture":  # a different padding changes every output, not a weight
        meta[ARCH_KEY] = meta[ARCH_KEY].replace(
            '"padding": {"__tuple__": [1, 1]}', '"padding": {"__tuple__": [2, 2]}', 1
        )
        assert meta[ARCH_KEY] != ckpt_read(files["ckpt"])[0][ARCH_KEY]
    else:
        meta["note"] = "x"
    path = tmp_path / "changed.safetensors"
    ckpt_write(path, meta, tensors, redigest=False)
    with pytest.raises(CodecError, match=f"{path}.*digest"):
        load_checkpoint(path)


def test_checkpoint_without_digest_loads_with_a_warning(files: dict[str, Path], tmp_path: Path) -> None:
    """Older checkpoints have no digest: they load, unverified, and say so (README, Checkpoints)."""
    meta, tensors = ckpt_read(files["ckpt"])
    del meta[DIGEST_KEY]
    tensors["classifier.1.bias"][0] = 42.0
    path = tmp_path / "old.safetensors"
    ckpt_write(path, meta, tensors, redigest=False)
    with pytest.warns(UserWarning, match=f"{path} carries no digest.*unverified"):
        model = load_checkpoint(path)
    assert model.classifier[1].bias[0] == 42.0


def test_foreign_safetensors_weights_load_without_warning(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in democnn().state_dict().items()}, str(path))
    assert not has_architecture(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_weights(zoo.create("democnn", num_classes=10, in_channels=1, input_size=28), path)


@pytest.mark.parametrize("claim", ["past the end", "over the limit"])
def test_safetensors_header_is_checked_against_the_file_size(
    claim: str, files: dict[str, Path], tmp_path: Path
) -> None:
    data = bytearray(files["ckpt"].read_bytes())
    n = len(data) if claim == "past the end" else MAX_HEADER + 1
    data[:8] = n.to_bytes(8, "little")
    path = tmp_path / "header.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CodecError, match=f"{path}: its safetensors header claims {n} bytes"):
        load_checkpoint(path)
    with pytest.raises(CodecError, match="header claims"):
        read_metadata(path)


def test_json_that_python_cannot_parse_is_an_error(files: dict[str, Path], tmp_path: Path) -> None:
    meta, tensors = ckpt_read(files["ckpt"])
    path = tmp_path / "deep.safetensors"
    for bad in ["[" * 100_000 + "]" * 100_000, '{"format": ' + "1" * 5000 + "}"]:
        ckpt_write(path, {**meta, ARCH_KEY: bad}, tensors)
        with pytest.raises(CodecError, match="not valid JSON"):
            load_checkpoint(path)


# -- 4. --weights takes a .tt wherever a checkpoint is taken ----------------------------------------


def test_a_tt_is_accepted_wherever_a_checkpoint_is(files: dict[str, Path]) -> None:
    x = torch.randn(2, 1, 28, 28)
    expected = democnn()(x)
    tt = files["dense.tt"]
    assert has_architecture(tt)
    assert torch.equal(load_checkpoint(tt)(x), expected)
    model = build_model(ModelSpec(name="democnn", weights=str(tt)), meta=None)
    assert torch.equal(model.eval()(x), expected)


@pytest.mark.parametrize(
    "content", [b"", b"hello world\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 32, b"PK\x03\x04" + b"\0" * 40]
)
def test_other_files_name_the_accepted_formats(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"  # the extension does not decide: the bytes do
    path.write_bytes(content)
    for load in (load_checkpoint, lambda p: build_model(ModelSpec(name="democnn", weights=str(p)), None)):
        with pytest.raises(CodecError, match=f"{path} is neither .*safetensors.*nor .*\\.tt"):
            load(path)


def test_a_tt_named_safetensors_still_loads(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "misnamed.safetensors"
    path.write_bytes(files["dense.tt"].read_bytes())
    assert isinstance(load_checkpoint(path), nn.Module)


# -- 5. fuzzing: structure-aware mutations past the checksums, and raw bytes ---------------------


def _deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


HOSTILE: list[Any] = [
    -1,
    -20,
    0,
    1,
    3,
    2**31,
    10**9,
    2**64,
    10**30,
    1.5,
    -0.0,
    True,
    False,
    None,
    "",
    "x",
    "float32",
    "int8",
    "bool",
    "__class__",
    "forward",
    "os:system",
    "torch.nn.modules.linear:Linear",
    "torch.nn.modules.batchnorm:BatchNorm2d",
    "torch.nn.modules.container:Sequential",
    "tinytamer.zoo.lenet:LeNet5",
    "torch.nn:Module.__subclasses__",
    [],
    {},
    [-1, -20],
    [1000000000],
    [1] * 40,
    [[1], [2, 3]],
    {"__float__": "nope"},
    {"__float__": "inf"},
    {"__tuple__": 5},
    {"__dtype__": "__class__"},
    {"__dict__": {"__class__": 1}},
    {"__set__": [[1]]},
    {"__tuple__": [1, 1]},
    {"shape": [3], "dtype": "float32", "requires_grad": True},
    _deep(200),
]


def _nodes(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _nodes(v, (*path, i))


def _get(root: Any, path: tuple) -> Any:
    for p in path:
        root = root[p]
    return root


def mutate(doc: Any, rng: random.Random) -> Any:
    """One structure-aware mutation of a JSON document (a manifest or an architecture)."""
    doc = copy.deepcopy(doc)
    nodes = list(_nodes(doc))
    # Favour the fields that size and type things: shapes, dtypes, classes, params, offsets.
    hot = [
        (p, v)
        for p, v in nodes
        if p
        and p[-1]
        in {
            "shape",
            "dtype",
            "class",
            "params",
            "parts",
            "offset",
            "attrs",
            "encoding",
            "alias",
            "entries",
            "k",
            "bits",
            "index_bits",
            "children",
            "non_persistent",
        }
    ]
    path, value = rng.choice(hot if hot and rng.random() < 0.6 else nodes[1:] or nodes)
    parent, key = (_get(doc, path[:-1]), path[-1]) if path else (None, None)
    op = rng.randrange(7)
    if parent is None:
        return rng.choice(HOSTILE)
    if op <= 2:
        parent[key] = copy.deepcopy(rng.choice(HOSTILE))
    elif op == 3 and isinstance(parent, dict):
        del parent[key]
    elif op == 3:
        parent.pop(key)
    elif op == 4 and isinstance(value, list) and value:  # tweak one element (e.g. one dimension)
        value[rng.randrange(len(value))] = rng.choice([-1, 0, 2, 10**9, 1.0, True, "1"])
    elif op == 4 and isinstance(value, int) and not isinstance(value, bool):
        parent[key] = value + rng.choice([-1, 1, -value - 1, 10**9])
    elif op == 5 and isinstance(value, dict):
        value[rng.choice(["x", "__class__", "forward", "a.b", "weight", "0"])] = copy.deepcopy(rng.choice(HOSTILE))
    elif op == 5:
        parent[key] = [value]
    else:  # graft another node of the document here (a module, a spec, a value)
        parent[key] = copy.deepcopy(rng.choice(nodes)[1])
    return doc


def _load_or_fail(load: Callable[[Path], nn.Module], path: Path) -> nn.Module | None:
    """The model ``load`` rebuilds from ``path``, or None for one of the product's own errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a digest removed by a mutation is a warning
            return load(path)
    except TamerError:
        return None


def test_fuzz_tt_manifests(files: dict[str, Path], tmp_path: Path, guard: None) -> None:
    rng = random.Random(13)
    path = tmp_path / "fuzz.tt"
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(900):
        manifest, payload = tt_read(files[["dense.tt", "coded0.tt", "coded1.tt"][i % 3]])
        if i % 9 == 8:  # the coded streams themselves: garble a tensor's bytes, fix its checksum
            entry = rng.choice([e for e in manifest["tensors"] if sum(e["parts"])])
            at = entry["offset"] + rng.randrange(sum(entry["parts"]))
            payload = payload[:at] + bytes([rng.randrange(256)]) + payload[at + 1 :]
        elif i % 3 == 1:  # the architecture alone
            manifest["architecture"] = mutate(manifest["architecture"], rng)
        else:
            manifest = mutate(manifest, rng)
        tt_write(path, manifest, payload)
        loader = codec.load if i % 2 else load_checkpoint
        outcomes["loaded" if _load_or_fail(loader, path) is not None else "refused"] += 1
    assert outcomes["refused"] > 500 and outcomes["loaded"] > 50, outcomes


def test_fuzz_checkpoint_metadata(files: dict[str, Path], tmp_path: Path, guard: None) -> None:
    rng = random.Random(14)
    meta0, tensors0 = ckpt_read(files["ckpt"])
    desc0 = json.loads(meta0[ARCH_KEY])
    path = tmp_path / "fuzz.safetensors"
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(500):
        meta, tensors = dict(meta0), dict(tensors0)
        if i % 5 == 4:  # the tensors: reshape, retype, drop or rename one
            name = rng.choice(sorted(tensors))
            op = rng.randrange(4)
            if op == 0:
                tensors[name] = tensors[name].reshape(-1)
            elif op == 1:
                tensors[name] = tensors[name].to(rng.choice([torch.float64, torch.int8, torch.bool]))
            elif op == 2:
                del tensors[name]
            else:
                tensors[name + "x"] = tensors.pop(name)
        else:
            meta[ARCH_KEY] = json.dumps(mutate(desc0, rng))
        ckpt_write(path, meta, tensors)
        loaded = _load_or_fail(load_checkpoint, path)
        outcomes["loaded" if loaded is not None else "refused"] += 1
    assert outcomes["refused"] > 300 and outcomes["loaded"] > 20, outcomes


def test_raw_byte_mutations_of_a_checkpoint(files: dict[str, Path], tmp_path: Path, guard: None) -> None:
    """Each mutated file loads bit-identical weights or raises the product's error."""
    original = files["ckpt"].read_bytes()
    expected = load_checkpoint(files["ckpt"]).state_dict()
    n = int.from_bytes(original[:8], "little")
    rng = random.Random(15)
    path = tmp_path / "bytes.safetensors"
    outcomes = {"identical": 0, "refused": 0}
    for i in range(300):
        data = bytearray(original)
        # a third in the header (sizes, dtypes, offsets, metadata), the rest in the tensor bytes
        at = rng.randrange(8 + n) if i % 3 == 0 else rng.randrange(8 + n, len(data))
        data[at] = (data[at] + rng.randrange(1, 256)) % 256
        path.write_bytes(bytes(data))
        loaded = _load_or_fail(load_checkpoint, path)
        if loaded is None:
            outcomes["refused"] += 1
            continue
        got = loaded.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) and got[k].dtype == expected[k].dtype for k in got), at
        outcomes["identical"] += 1
    assert outcomes["refused"] > 250, outcomes
