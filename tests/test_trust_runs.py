"""Runs touch only their own folder; appends and saves survive kills; divergence stops.

Hostile run names and symlinks must leave a decoy folder outside runs/ and a sibling run
untouched; torn JSON lines (a kill mid-append) and killed saves must not break the next run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from tinytamer import codec, fileio
from tinytamer.checkpoint import load_checkpoint, save_checkpoint
from tinytamer.cli import app
from tinytamer.errors import CorruptFileError, RecipeError, TamerError, TrainError
from tinytamer.micro.tuning import TuningLog
from tinytamer.recipe import parse_recipe, run
from tinytamer.rundir import RunDir, run_name_problem
from tinytamer.train import Solver, SolverConfig


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- fileio -------------------------------------------------------------------------------------


def test_write_atomic_writes_text_and_bytes_and_leaves_no_temp(tmp_path):
    fileio.write_atomic(tmp_path / "a" / "t.json", "héllo")
    fileio.write_atomic(tmp_path / "a" / "b.bin", b"\x00\xff")
    assert (tmp_path / "a" / "t.json").read_text() == "héllo"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin", "t.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "state.json"
    fileio.write_atomic(path, "old")
    with pytest.raises(RuntimeError), fileio.atomic_open(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_clean_stale_temps_removes_only_dead_writers_temps_of_that_name(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".model.tt.{dead}.tmp"
    keep = {
        f".model.tt.{alive}.tmp": b"a live writer's",
        f".model.tt.{os.getpid()}.tmp": b"this process's",
        f".other.tt.{dead}.tmp": b"another file's",
        ".model.tt.tmp": b"no pid",
        f".model.tt.{dead}.tmp.bak": b"not a temp",
        f"model.tt.{dead}.tmp": b"not hidden",
        f".model.tt.0{dead}.tmp": b"not a pid as we write it",
        ".model.tt.0.tmp": b"pid 0 is the process group",
        f".modelXtt.{dead}.tmp": b"regex dot must not match any char",
        "model.tt": b"the file itself",
    }
    for name, data in keep.items():
        (tmp_path / name).write_bytes(data)
    stale.write_bytes(b"stale")
    (tmp_path / f".model.tt.{dead + 1}.tmp").mkdir()  # a folder is never removed
    outside = tmp_path / "elsewhere"
    outside.write_bytes(b"link target")
    (tmp_path / f".model.tt.{dead + 2}.tmp").symlink_to(outside)

    assert fileio.clean_stale_temps(tmp_path, "model.tt") == [stale]
    assert not stale.exists()
    for name, data in keep.items():
        assert (tmp_path / name).read_bytes() == data
    assert (tmp_path / f".model.tt.{dead + 1}.tmp").is_dir()
    assert outside.read_bytes() == b"link target"


def test_fileio_imports_no_torch():
    code = (
        "import sys, tinytamer.fileio; bad = [m for m in ('torch', 'numpy') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_read_jsonl_skips_a_torn_last_line_with_a_warning(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_bytes(b'{"a": 1}\n\n{"b": 2}\n{"c": ')
    with pytest.warns(RuntimeWarning, match=re.escape(f"{log}: skipped a torn last line (line 4")):
        assert fileio.read_jsonl(log) == [{"a": 1}, {"b": 2}]
    assert fileio.read_jsonl(tmp_path / "absent.jsonl") == []


@pytest.mark.parametrize("bad", [b'{"c": \n', b"\x00\x00\x00\n", b"\xff\xfe\n", b"[" * 100_000 + b"\n"])
def test_read_jsonl_names_the_file_and_line_of_a_bad_line_elsewhere(tmp_path, bad):
    log = tmp_path / "m.jsonl"
    log.write_bytes(b'{"a": 1}\n' + bad + b'{"b": 2}\n')
    with pytest.raises(CorruptFileError, match=re.escape(f"{log}, line 2: not a JSON record")):
        fileio.read_jsonl(log)


def test_append_after_a_torn_line_keeps_the_next_record_whole(tmp_path):
    log = tmp_path / "m.jsonl"
    fileio.append_jsonl(log, {"a": 1})
    with open(log, "ab") as f:
        f.write(b'{"kind": "train", "it')  # killed mid-append
    with pytest.warns(RuntimeWarning, match="dropped a torn last line"):
        fileio.append_jsonl(log, {"b": 2})
    assert log.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    with open(log, "ab") as f:
        f.write(b'{"c": 3}')  # killed after the record, before its newline: kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fileio.append_jsonl(log, {"d": 4})
        assert fileio.read_jsonl(log) == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}]


def _append_many(path: str, who: int) -> None:
    for i in range(25):
        fileio.append_jsonl(path, {"who": who, "i": i, "pad": "x" * (who * 500)})


def test_concurrent_appenders_interleave_whole_lines(tmp_path):
    log = tmp_path / "shared.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(log), who)) for who in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = fileio.read_jsonl(log)
    assert sorted((r["who"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(25)]


@pytest.mark.parametrize("content", [b'{"completed": [', b"", b"\xff", b"[" * 100_000])
def test_read_json_names_the_file_and_what_it_is(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=re.escape(f"run state file {path} is not valid JSON")):
        fileio.read_json(path, "run state")
    with pytest.raises(CorruptFileError, match=re.escape(f"run state file {tmp_path / 'no.json'} does not exist")):
        fileio.read_json(tmp_path / "no.json", "run state")


# -- kills during saves ---------------------------------------------------------------------------

_SAVE_AND_HANG = """
import sys, time
from torch import nn
from tinytamer import fileio

def hang(fd):  # the temp file is written; die before it is renamed into place
    print("writing", flush=True)
    time.sleep(600)

fileio.os.fsync = hang
torch_model = nn.Linear(4, 2)
if sys.argv[1] == "codec":
    from tinytamer import codec
    codec.save(torch_model, sys.argv[2])
else:
    from tinytamer.checkpoint import save_checkpoint
    save_checkpoint(torch_model, sys.argv[2])
"""


@pytest.mark.parametrize("kind", ["codec", "checkpoint"])
def test_a_save_after_a_sigkilled_save_leaves_no_temp_behind(tmp_path, kind):
    path = tmp_path / ("model.tt" if kind == "codec" else "model.safetensors")
    child = subprocess.Popen([sys.executable, "-c", _SAVE_AND_HANG, kind, str(path)], stdout=subprocess.PIPE, text=True)
    guard = threading.Timer(120, child.kill)  # never hang the suite on a stuck child
    guard.start()
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        guard.cancel()
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    temp = tmp_path / f".{path.name}.{child.pid}.tmp"
    assert temp.is_file() and not path.exists()  # what the kill left

    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    if kind == "codec":
        codec.save(model, path)
        back = codec.load(path)
    else:
        save_checkpoint(model, path)
        back = load_checkpoint(path)
    assert torch.equal(back.weight, model.weight)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# -- run names and --overwrite ---------------------------------------------------------------------

HOSTILE_NAMES = [
    "../decoy",
    "../../decoy",
    "..",
    ".",
    "",
    "keep/..",
    "a/b",
    "/tmp/x",
    "x\n",
    "x y",
    "run\x00",
    "é",
    "x" * 101,
    "./keep",
    "keep/",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_run_name_is_one_plain_folder_name(name):
    assert run_name_problem(name) is not None
    with pytest.raises(RecipeError, match=r"recipe: name: .*run name"):
        parse_recipe({"name": name})


@pytest.mark.parametrize("name", ["a", "lenet5-mnist_v1.2", "...", ".hidden", "x" * 100])
def test_plain_run_names_are_accepted(name):
    assert run_name_problem(name) is None
    assert parse_recipe({"name": name}).name == name


def _recipe(name: str) -> dict:
    return {"name": name, "data": {"name": "digits", "limit": 40}, "model": {"name": "democnn"}, "stages": []}


@pytest.fixture
def world(tmp_path):
    """runs/ with one finished run ``keep``, and outside it a decoy that even looks like a run."""
    runs = tmp_path / "runs"
    run(parse_recipe(_recipe("keep")), runs / "keep", progress=False, echo=lambda _: None)
    decoy = tmp_path / "decoy"
    (decoy / "sub").mkdir(parents=True)
    (decoy / "state.json").write_text('{"completed": []}')
    (decoy / "sub" / "precious.txt").write_text("do not delete")
    return tmp_path, runs, _tree(tmp_path)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_with_overwrite_delete_nothing(world, name):
    tmp_path, runs, before = world
    raw = _recipe(name)
    with pytest.raises(RecipeError, match="name"):
        run(parse_recipe(raw), runs / name, overwrite=True, progress=False)
    assert _tree(tmp_path) == before


def test_a_hostile_name_through_the_cli_is_one_clear_error_and_deletes_nothing(world):
    tmp_path, runs, before = world
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(yaml.safe_dump(_recipe("..")))
    out = CliRunner().invoke(app, ["run", str(recipe), "--runs", str(runs), "--overwrite", "--quiet"])
    assert out.exit_code == 2, out.output
    assert "name: " in out.output and "a run name cannot be '.' or '..'" in out.output
    recipe.unlink()
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("name", ["..", "keep/..", ".", "keep/../.."])
def test_run_folders_that_are_not_one_name_inside_runs_are_refused(world, name):
    tmp_path, runs, before = world
    with pytest.raises(TamerError):
        RunDir.create(runs / name, "name: x\n", overwrite=True)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("target", ["decoy", "runs/keep", "decoy/sub"])
@pytest.mark.parametrize("overwrite", [True, False])
def test_a_symlinked_run_folder_is_refused(world, target, overwrite):
    tmp_path, runs, before = world
    (runs / "evil").symlink_to(tmp_path / target, target_is_directory=True)
    with pytest.raises(TamerError, match="symbolic link"):
        run(parse_recipe(_recipe("evil")), runs / "evil", overwrite=overwrite, progress=False)
    with pytest.raises(TamerError, match="symbolic link"):
        RunDir.create(runs / "evil", "name: evil\n", overwrite=overwrite)
    assert (runs / "evil").is_symlink()
    (runs / "evil").unlink()
    assert _tree(tmp_path) == before


def test_overwrite_removes_only_a_tinytamer_run(world):
    tmp_path, runs, before = world
    stranger = runs / "notarun"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("years of work")
    with pytest.raises(TamerError, match=r"not a tinytamer run \(no state.json\).*left alone"):
        run(parse_recipe(_recipe("notarun")), stranger, overwrite=True, progress=False)
    assert (stranger / "thesis.tex").read_text() == "years of work"
    (runs / "afile").write_text("x")
    with pytest.raises(TamerError, match="not a folder"):
        RunDir.create(runs / "afile", "name: afile\n", overwrite=True)
    # a genuine run is replaced; nothing else changes
    decoy = _tree(tmp_path / "decoy")
    (runs / "keep" / "stages").mkdir()
    (runs / "keep" / "stages" / "old.txt").write_text("from the old run")
    run(parse_recipe(_recipe("keep")), runs / "keep", overwrite=True, progress=False, echo=lambda _: None)
    assert not (runs / "keep" / "stages" / "old.txt").exists()
    assert (runs / "keep" / "state.json").is_file()
    assert _tree(tmp_path / "decoy") == decoy
    assert (stranger / "thesis.tex").read_text() == "years of work"


# -- torn run files ------------------------------------------------------------------------------


def test_a_torn_metrics_line_does_not_swallow_the_next_record(tmp_path):
    r = RunDir.create(tmp_path / "r", "name: r\n")
    r.log({"kind": "train", "iter": 1})
    with open(r.metrics_path, "ab") as f:
        f.write(b'{"time": 1.0, "kind": "train", "it')  # killed mid-append
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert [x["iter"] for x in r.records()] == [1]
    with pytest.warns(RuntimeWarning, match="torn last line"):
        r.log({"kind": "stage", "iter": 2})  # the resumed run's next record
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [x["iter"] for x in r.records()] == [1, 2]


def test_a_damaged_metrics_log_names_the_file_and_line(tmp_path):
    r = RunDir.create(tmp_path / "r", "name: r\n")
    r.metrics_path.write_bytes(b'{"iter": 1}\n{"iter"\n{"iter": 3}\n')
    with pytest.raises(CorruptFileError, match=re.escape(f"{r.metrics_path}, line 2")):
        r.records()
    r.metrics_path.write_bytes(b'{"iter": 1}\n[1, 2]\n')
    with pytest.raises(CorruptFileError, match=re.escape(f"{r.metrics_path}: record 2 is a list")):
        r.records()


@pytest.mark.parametrize(
    "state",
    [
        b'{"completed": [{"index": 0, "stage": "tra',  # truncated
        b"",
        b"[]",
        b'{"completed": {}}',
        b'{"completed": [{"index": "0", "stage": "train", "checkpoint": "c"}]}',
        b'{"completed": [{"index": 0, "stage": "train"}]}',
    ],
)
def test_a_damaged_state_json_names_the_file(tmp_path, state):
    r = RunDir.create(tmp_path / "r", "name: r\n")
    r.state_path.write_bytes(state)
    with pytest.raises(CorruptFileError, match=re.escape(f"run state file {r.state_path}")):
        RunDir.open(r.path).last_model()


def test_a_state_json_pointing_outside_the_run_is_refused(tmp_path):
    outside = save_checkpoint(nn.Linear(2, 2), tmp_path / "outside.safetensors")
    r = RunDir.create(tmp_path / "r", "name: r\n")
    r.state_path.write_text(
        json.dumps({"completed": [{"index": 0, "stage": "train", "checkpoint": str(Path("..") / outside.name)}]})
    )
    with pytest.raises(CorruptFileError, match="outside the run folder"):
        r.last_model()


def test_resume_with_a_truncated_state_json_is_one_clear_error(world):
    tmp_path, runs, _ = world
    state = runs / "keep" / "state.json"
    state.write_bytes(state.read_bytes()[:10])
    out = CliRunner().invoke(app, ["run", str(runs / "keep"), "--resume", "--quiet"])
    assert out.exit_code == 2, out.output
    assert f"run state file {state} is not valid JSON" in out.output
    assert "Traceback" not in out.output


# -- the micro tuning log ---------------------------------------------------------------------------

_REC = {"key": "k1", "schedule": {"unroll": 2}, "est_cycles": 10, "instructions": 7}


def test_a_torn_tuning_log_line_is_skipped_and_the_next_append_is_whole(tmp_path):
    path = tmp_path / "micro_tuning.jsonl"
    path.write_text(json.dumps(_REC) + "\n" + '{"key": "k2", "sched')
    with pytest.warns(RuntimeWarning, match="torn last line"):
        log = TuningLog(path)
    assert log.get("k1", {"unroll": 2})["est_cycles"] == 10
    with pytest.warns(RuntimeWarning, match="dropped a torn last line"):
        log.add("k2", {"unroll": 4}, 20, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = TuningLog(path)
    assert again.get("k2", {"unroll": 4})["est_cycles"] == 20
    assert again.get("k1", {"unroll": 2})["instructions"] == 7


@pytest.mark.parametrize(
    "bad, match",
    [
        ('{"key": "k2", "sched\n', r"micro_tuning.jsonl, line 2: not a JSON record"),
        ('{"key": "k2"}\n', r"record 2 is not a \{key, schedule, est_cycles, instructions\} object"),
        ('{"key": 1, "schedule": {}, "est_cycles": 1, "instructions": 1}\n', "record 2"),
        ('{"key": "k", "schedule": {}, "est_cycles": "1", "instructions": 1}\n', "record 2"),
        ("[]\n", "record 2"),
    ],
)
def test_a_damaged_tuning_log_names_the_file(tmp_path, bad, match):
    path = tmp_path / "micro_tuning.jsonl"
    path.write_text(json.dumps(_REC) + "\n" + bad + json.dumps(_REC) + "\n")
    with pytest.raises(CorruptFileError, match=match):
        TuningLog(path)


# -- diverging training -----------------------------------------------------------------------------


def _classification(n=48, d=6, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    return TensorDataset(x, (x @ torch.randn(d, classes, generator=g)).argmax(1))


def test_a_non_finite_loss_stops_training_naming_the_iteration_and_lr():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    solver = Solver(
        model,
        SolverConfig(max_iter=50, base_lr=1e6, momentum=0),
        DataLoader(TensorDataset(x, 3 * x), batch_size=32),
        progress=False,
        loss_fn=nn.functional.mse_loss,
    )
    with (
        pytest.warns(RuntimeWarning, match="diverging"),
        pytest.raises(TrainError, match=r"loss is (inf|nan) at iteration \d+ \(learning rate 1e\+06\)"),
    ):
        solver.solve()
    assert torch.isfinite(model.weight).all()  # stopped before the update that would break it
    assert solver.iter < 50


def test_a_loss_grown_by_orders_of_magnitude_warns_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    cfg = SolverConfig(max_iter=20, base_lr=1e6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Solver(model, cfg, DataLoader(_classification(), batch_size=16), progress=False).solve()
    diverging = [w for w in caught if "diverging" in str(w.message)]
    assert len(diverging) == 1
    assert "learning rate 1e+06" in str(diverging[0].message)


def test_a_healthy_run_does_not_warn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Solver(
            model, SolverConfig(max_iter=20, base_lr=0.1), DataLoader(_classification(), batch_size=16), progress=False
        ).solve()
