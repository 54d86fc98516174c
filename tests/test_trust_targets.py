"""Targets you can trust: relative work folders, broken backends, refused calibration and
evaluation options, unsupported micro layers named, scoring and bench that speak."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import pytest
import torch
from test_targets_helpers import calib_batches, residual_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tinytamer.compress.int8 import quantize_ptq
from tinytamer.deploy import (
    EVAL_CHUNK,
    accuracy_line,
    bench,
    deploy,
    eval_limit_for,
    int8_quantizer,
    runtime_accuracy,
)
from tinytamer.errors import BackendBroken, ModelError, RecipeError, TamerError
from tinytamer.micro.lower import lower
from tinytamer.targets import base, get_target, list_targets
from tinytamer.targets.base import unavailable_reason

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
needs_ncnn = pytest.mark.skipif(
    importlib.util.find_spec("ncnn") is None or importlib.util.find_spec("pnnx") is None,
    reason="ncnn / pnnx not installed (pip install 'tinytamer[ncnn]')",
)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    ).eval()


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 8, 8, generator=g) for _ in range(2)]


def _loader(n: int = 40) -> DataLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 1, 8, 8, generator=g)
    with torch.no_grad():  # labels = the model's own predictions: float accuracy is 1
        y = residual_model()(x).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=150)


# ---------------------------------------------------------------- 1. relative work folders


@needs_ncnn
def test_ncnn_compiles_into_a_relative_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = get_target("ncnn").compile(_small_cnn(), [torch.randn(1, 1, 8, 8)], "runs/x", calib=_calib())
    assert d.parity["ok"]
    assert (tmp_path / "runs/x/model.ncnn.param").is_file()
    assert (tmp_path / "runs/x/model.ncnn.bin").is_file()
    assert not list((tmp_path / "runs/x").glob("pnnx-*"))  # the scratch folder is gone


@needs_gcc
@pytest.mark.parametrize("workdir", ["runs/x", "-x"])
def test_micro_host_compiles_into_a_relative_workdir(tmp_path, monkeypatch, workdir):
    # "-x" is gcc's language option: handed over relative, the sources would read as it.
    monkeypatch.chdir(tmp_path)
    calib = _calib()
    d = get_target("micro-host").compile(_small_cnn(), [calib[0][:1]], workdir, calib=calib, quantize=int8_quantizer)
    assert d.parity["ok"] and d.info["bit_exact_inputs"] == 32
    assert (tmp_path / workdir / "host" / "model_host").is_file()
    assert d(calib[1][:3].numpy())[0].shape == (3, 5)


# ---------------------------------------------------------------- 2. a backend that fails to import


@pytest.fixture
def broken_module(tmp_path, monkeypatch):
    """Make ``import NAME`` find a package that raises, as a broken install does."""
    made = []

    def make(name: str, error: str) -> None:
        pkg = tmp_path / "broken" / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f"raise OSError({error!r})\n")
        made.append(name)
        monkeypatch.delitem(__import__("sys").modules, name, raising=False)

    monkeypatch.syspath_prepend(str(tmp_path / "broken"))
    base.import_failure.cache_clear()
    yield make
    base.import_failure.cache_clear()


def test_a_backend_that_fails_to_import_says_so_in_one_line(broken_module, tmp_path):
    broken_module("ncnn", "libncnn.so.1: cannot open shared object file:\nNo such file")
    target = get_target("ncnn")
    assert not target.available() and "ncnn" not in list_targets(available_only=True)
    with pytest.raises(BackendBroken) as err:
        target.compile(_small_cnn(), [torch.randn(1, 1, 8, 8)], tmp_path / "w")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "backend 'ncnn' is installed but fails to import (ncnn: OSError: "
        "libncnn.so.1: cannot open shared object file: No such file)"
    )
    assert msg.endswith("reinstall it: pip install 'tinytamer[ncnn]'")
    assert unavailable_reason(target) == msg
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_a_broken_backend_is_skipped_by_bench_with_its_reason(broken_module, tmp_path, monkeypatch):
    broken_module("tvm", "libtvm_runtime.so: undefined symbol: TVMFFIFoo")
    monkeypatch.setattr("tinytamer.deploy.list_targets", lambda: ["torch", "tvm"])
    lines: list[str] = []
    report = bench(
        residual_model(),
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        repeats=2,
        warmup=0,
        isolate=False,
        echo=lines.append,
    )
    assert [r.target for r in report.rows] == ["torch"]
    assert lines[0] == (
        "bench: skipping tvm: backend 'tvm' is installed but fails to import "
        "(tvm: OSError: libtvm_runtime.so: undefined symbol: TVMFFIFoo); "
        "reinstall it: pip install 'tinytamer[tvm]'"
    )


def test_the_import_check_is_cached(monkeypatch):
    base.import_failure.cache_clear()
    calls = []
    real = importlib.import_module
    monkeypatch.setattr(base.importlib, "import_module", lambda name: calls.append(name) or real(name))
    assert base.import_failure("json") is None and base.import_failure("json") is None
    assert calls == ["json"]
    base.import_failure.cache_clear()


# ---------------------------------------------------------------- 3. calibration / eval options


@pytest.mark.parametrize("target", ["micro-host", "cortex-m4", "cortex-m7", "onnxruntime"])
@pytest.mark.parametrize(
    "calib, what",
    [
        (None, "got none"),
        ([], "got an empty list"),
        ([torch.zeros(0, 1, 8, 8)], "calibration batch 0 holds no sample"),
        ([torch.randn(4, 1, 8, 8), "x"], "calibration batch 1 is a str"),
    ],
)
def test_int8_without_real_calibration_samples_is_refused(tmp_path, target, calib, what):
    t = get_target(target)
    if target.startswith("cortex") and not t.available():
        pytest.skip("ARM toolchain or QEMU missing")
    with pytest.raises(TamerError, match=rf"target '{target}'.*{what}") as err:
        t.compile(_small_cnn(), [torch.randn(1, 1, 8, 8)], tmp_path, precision="int8", calib=calib)
    assert "calib=" in str(err.value)


def _recipe(stage: dict) -> None:
    from tinytamer.recipe import parse_recipe

    parse_recipe({"name": "x", "data": {"name": "digits"}, "model": {"name": "democnn"}, "stages": [stage]})


@pytest.mark.parametrize(
    "stage, key",
    [
        ({"deploy": {"target": "cortex-m4", "eval_limit": -3}}, "deploy.eval_limit"),
        ({"deploy": {"target": "cortex-m4", "calib_batches": -1}}, "deploy.calib_batches"),
        ({"deploy": {"calib_batches": 0}}, "deploy.calib_batches"),
        ({"deploy": {"eval_limit": 0}}, "deploy.eval_limit"),
        ({"deploy": {"eval_limit": "some"}}, "deploy.eval_limit"),
        ({"bench": {"eval_limit": True}}, "bench.eval_limit"),
        ({"bench": {"eval_limit": 2.5}}, "bench.eval_limit"),
    ],
)
def test_bad_counts_are_refused_naming_the_option(stage, key):
    with pytest.raises(RecipeError, match=rf"stages\[0\]\.{key}:") as err:
        _recipe(stage)
    assert str(err.value).count("(got ") == 1  # one reason, not one per type of a union


def test_eval_limit_all_and_numbers_are_accepted():
    _recipe({"deploy": {"target": "cortex-m4", "eval_limit": "all"}})
    _recipe({"bench": {"eval_limit": 500}})


def test_eval_limit_defaults_to_1000_on_the_emulated_targets():
    assert eval_limit_for(get_target("cortex-m4"), None) == 1000
    assert eval_limit_for(get_target("cortex-m7"), None) == 1000
    assert eval_limit_for(get_target("micro-host"), None) is None
    assert eval_limit_for(get_target("onnxruntime"), None) is None
    assert eval_limit_for(get_target("cortex-m4"), "all") is None
    assert eval_limit_for(get_target("cortex-m4"), 7) == 7
    for bad in (0, -1, True, "7", 2.0):
        with pytest.raises(TamerError, match="eval_limit must be a whole number >= 1 or 'all'"):
            eval_limit_for(get_target("torch"), bad)


# ---------------------------------------------------------------- 4. unsupported micro layers


class _Lstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(64, 16, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.flatten(2))
        return self.fc(out[:, -1])


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.gru = nn.GRU(4 * 64, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.gru(y.reshape(y.shape[0], 1, -1))[0][:, 0]


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = _Encoder()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.enc(x))


@pytest.mark.parametrize("model, layer", [(_Lstm, "layer 'rnn' (LSTM)"), (_Nested, "layer 'enc.gru' (GRU)")])
def test_an_unsupported_layer_is_refused_by_name(model, layer):
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    gm = quantize_ptq(model().eval(), [x])
    # Before: "function 'getitem' at node 'getitem'" (the tuple unpack after the layer).
    with pytest.raises(
        ModelError,
        match=rf"micro lowering: {re.escape(layer)} is not supported "
        "by the micro path; supported ops: conv2d",
    ):
        lower(gm, x[:1])


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


def test_an_unsupported_function_names_the_layer_it_was_traced_in():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 1, 1), _Gated(), nn.Flatten(), nn.Linear(4 * 64, 3))
    x = torch.randn(4, 1, 8, 8)
    gm = quantize_ptq(model.eval(), [x])
    with pytest.raises(
        ModelError,
        match=r"function 'sigmoid' at node 'sigmoid' of layer '1' "
        r"\(_Gated\)",
    ):
        lower(gm, x[:1])


def test_the_micro_target_names_the_layer(tmp_path):
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ModelError, match=r"layer 'rnn' \(LSTM\) is not supported"):
        get_target("micro-host").compile(_Lstm().eval(), [x[:1]], tmp_path, calib=[x], quantize=int8_quantizer)


# ---------------------------------------------------------------- 5. scoring speaks


class _Counting:
    """A stand-in Deployed: PyTorch itself, counting the samples of each call."""

    target, precision = "fake", "int8"

    def __init__(self, model: nn.Module) -> None:
        self.model, self.calls = model, []

    def __call__(self, x):
        self.calls.append(len(x))
        with torch.no_grad():
            return [self.model(torch.from_numpy(x)).numpy()]


def test_scoring_moves_a_progress_bar_in_chunks(monkeypatch):
    import rich.progress

    advanced, totals = [], []
    real_add = rich.progress.Progress.add_task
    monkeypatch.setattr(
        rich.progress.Progress,
        "add_task",
        lambda self, desc, **kw: totals.append((desc, kw.get("total"))) or real_add(self, desc, **kw),
    )
    monkeypatch.setattr(rich.progress.Progress, "advance", lambda self, task, n: advanced.append(n))
    model = residual_model()
    dep = _Counting(model)
    loader = DataLoader(TensorDataset(torch.randn(300, 1, 8, 8), torch.zeros(300).long()), batch_size=250)
    acc = runtime_accuracy(dep, model, loader, limit=200, progress=True)
    assert acc["n"] == 200 and acc["total"] == 300
    assert max(dep.calls) <= EVAL_CHUNK and sum(dep.calls) == 200
    assert sum(advanced) == 200 and len(advanced) == len(dep.calls)
    assert totals == [("scoring on fake int8", 200)]


def test_accuracy_is_printed_with_its_sample_count():
    assert accuracy_line(0.981, 1000, 10000) == "accuracy 98.10% on 1000 of 10000 test samples"
    assert accuracy_line(0.5, 40, 40) == "accuracy 50.00% on 40 test samples"
    assert accuracy_line(0.5, 40, None) == "accuracy 50.00% on 40 test samples"


def test_deploy_applies_the_target_default_eval_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(get_target("torch"), "default_eval_limit", 7, raising=False)
    loader = _loader()
    _, rep = deploy(
        residual_model(), "torch", tmp_path / "a", example_input=torch.randn(1, 1, 8, 8), test_loader=loader, repeats=0
    )
    assert (rep.eval_samples, rep.eval_total) == (7, 40)
    _, rep = deploy(
        residual_model(),
        "torch",
        tmp_path / "b",
        example_input=torch.randn(1, 1, 8, 8),
        test_loader=loader,
        repeats=0,
        eval_limit="all",
    )
    assert (rep.eval_samples, rep.eval_total) == (40, 40)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["eval_total"] == 40
    with pytest.raises(TamerError, match="eval_limit"):  # before compiling anything
        deploy(
            residual_model(),
            "torch",
            tmp_path / "c",
            example_input=torch.randn(1, 1, 8, 8),
            test_loader=loader,
            eval_limit=0,
        )
    assert not (tmp_path / "c" / "model.safetensors").exists()


# ---------------------------------------------------------------- 6. bench speaks, keeps rows


def test_bench_says_each_target_and_writes_the_table_as_it_goes(tmp_path):
    lines: list[str] = []
    seen: list[dict] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.endswith("started") and (tmp_path / "bench.json").exists():
            seen.append(json.loads((tmp_path / "bench.json").read_text()))

    bench(
        residual_model(),
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        calib=calib_batches(2),
        test_loader=_loader(),
        targets=["onnxruntime"],
        precisions=["fp32"],
        repeats=2,
        warmup=0,
        isolate=False,
        echo=echo,
    )
    assert lines[0] == "bench [1/2] torch fp32: started"
    assert lines[1].startswith("bench [1/2] torch fp32: done in ")
    assert "ms at batch 1 (1.00x torch fp32), accuracy 100.00% on 40 test samples" in lines[1]
    assert lines[2] == "bench [2/2] onnxruntime fp32: started"
    assert lines[3].startswith("bench [2/2] onnxruntime fp32: done in ")
    # When the second target started, the first one's row was already on disk.
    assert [(r["target"], r["status"]) for r in seen[0]["rows"]] == [("torch", "ok")]
    assert seen[0]["pending"] == ["onnxruntime fp32"]
    final = json.loads((tmp_path / "bench.json").read_text())
    assert final["pending"] == [] and len(final["rows"]) == 2
    assert not (tmp_path / "bench.md").read_text().startswith("Partial")


def test_an_interrupted_bench_leaves_the_finished_rows(tmp_path, monkeypatch):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(get_target("onnxruntime"), "compile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench(
            residual_model(),
            tmp_path,
            example_input=torch.randn(1, 1, 8, 8),
            targets=["onnxruntime"],
            precisions=["fp32", "int8"],
            repeats=2,
            warmup=0,
            isolate=False,
        )
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [r["target"] for r in saved["rows"]] == ["torch"]
    assert saved["pending"] == ["onnxruntime fp32", "onnxruntime int8"]
    md = (tmp_path / "bench.md").read_text()
    assert md.startswith("Partial: 2 still to run (onnxruntime fp32, onnxruntime int8).")
    assert "| torch | fp32 | 1 |" in md


def test_bench_failures_are_timed_rows_and_limits_are_per_target(tmp_path, monkeypatch):
    def fails(*a, **kw):
        raise TamerError("target 'ncnn': pnnx produced no ncnn model")

    monkeypatch.setattr(get_target("onnxruntime"), "default_eval_limit", 9, raising=False)
    monkeypatch.setattr(get_target("ncnn"), "compile", fails)
    lines: list[str] = []
    report = bench(
        residual_model(),
        tmp_path,
        example_input=torch.randn(1, 1, 8, 8),
        calib=calib_batches(2),
        test_loader=_loader(),
        targets=["onnxruntime", "ncnn"],
        precisions=["fp32"],
        repeats=2,
        warmup=0,
        isolate=False,
        echo=lines.append,
    )
    rows = {r.target: r for r in report.rows}
    assert rows["torch"].eval_samples == 40 and rows["onnxruntime"].eval_samples == 9
    assert rows["onnxruntime"].acc_delta == 0.0  # against PyTorch on the same 9 samples
    assert "(n=9)" in report.table() and "(n=40)" not in report.table()
    assert rows["ncnn"].status == "failed: target 'ncnn': pnnx produced no ncnn model"
    assert rows["ncnn"].seconds is not None
    assert lines[-1].startswith("bench [3/3] ncnn fp32: failed after ")
    assert lines[-1].endswith(" s: target 'ncnn': pnnx produced no ncnn model")


@pytest.mark.parametrize("batches", [[], [0], [1, -2], [True]])
def test_bench_refuses_bad_batch_sizes_before_running_anything(tmp_path, batches):
    with pytest.raises(TamerError, match="bench: batches must list whole numbers >= 1"):
        bench(residual_model(), tmp_path / "b", example_input=torch.randn(1, 1, 8, 8), batches=batches)
    assert not (tmp_path / "b").exists()
