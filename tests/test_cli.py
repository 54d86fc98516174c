import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from tinytamer.cli import app

runner = CliRunner()


def test_help_lists_commands():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for cmd in ("demo", "run", "train", "compress", "deploy", "report"):
        assert cmd in out.output


def test_train_command_writes_a_run(tmp_path):
    out = runner.invoke(
        app,
        [
            "train",
            "--model",
            "democnn",
            "--data",
            "digits",
            "--size",
            "16",
            "--max-iter",
            "10",
            "--runs",
            str(tmp_path),
            "--name",
            "t",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "t" / "report.html").is_file()
    assert "accuracy" in out.output


def test_user_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "stages": [{"train": {"lr": 1}}]}))
    proc = subprocess.run(
        [sys.executable, "-c", "from tinytamer.cli import main; main()", "run", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "stages[0].train.lr: unknown key" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_list_models_and_stages():
    assert "resnet8" in runner.invoke(app, ["list", "models"]).output
    assert "train" in runner.invoke(app, ["list", "stages"]).output


def test_compress_command_writes_a_compressed_file(tmp_path):
    out = runner.invoke(
        app,
        [
            "compress",
            "--method",
            "prune",
            "--model",
            "democnn",
            "--data",
            "digits",
            "--size",
            "16",
            "--set",
            "sparsity=0.5",
            "--runs",
            str(tmp_path),
            "--name",
            "c",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    files = list((tmp_path / "c").glob("stages/*_save_compressed/model.tt"))
    assert len(files) == 1
    inspected = runner.invoke(app, ["inspect", str(files[0])])
    assert inspected.exit_code == 0 and "encoding" in inspected.output


def test_unknown_method_names_the_known_stages(tmp_path):
    out = runner.invoke(app, ["compress", "--method", "kmeans", "--runs", str(tmp_path), "--quiet"])
    assert out.exit_code == 2
    assert "unknown stage 'kmeans'" in out.output and "kmeans_share" in out.output


# -- --set reaches the recipe's data and model ----------------------------------------------------


def test_set_data_and_model_options(tmp_path):
    out = runner.invoke(
        app,
        [
            "train",
            "--size",
            "16",
            "--max-iter",
            "2",
            "--set",
            "data.augment=true",
            "--set",
            "data.limit=40",
            "--set",
            "data.batch_size=8",
            "--set",
            "model.name=lenet5",
            "--set",
            "model.kwargs.num_classes=10",
            "--set",
            "display=0",
            "--runs",
            str(tmp_path),
            "--name",
            "s",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    recipe = yaml.safe_load((tmp_path / "s" / "recipe.yaml").read_text())
    assert recipe["data"]["augment"] is True and recipe["data"]["limit"] == 40
    assert recipe["data"]["batch_size"] == 8 and recipe["data"]["size"] == 16
    assert recipe["model"]["name"] == "lenet5" and recipe["model"]["kwargs"] == {"num_classes": 10}
    assert recipe["stages"][0]["train"]["display"] == 0


def test_set_unknown_data_key_lists_the_data_keys(tmp_path):
    out = runner.invoke(
        app, ["train", "--max-iter", "1", "--set", "data.augmnt=true", "--runs", str(tmp_path), "--quiet"]
    )
    assert out.exit_code == 2
    assert "data.augmnt: unknown key (allowed: name, root, size, augment" in out.output
    assert "did you mean 'augment'" in out.output
    out = runner.invoke(app, ["train", "--set", "data=mnist", "--runs", str(tmp_path), "--quiet"])
    assert out.exit_code == 2 and "--set data.KEY=VALUE" in out.output


# -- help and listings say what exists --------------------------------------------------------


def _help_text(*args: str) -> str:
    """A command's help as one line of words (rich draws it in wrapped boxes)."""
    import re

    out = runner.invoke(app, [*args, "--help"])
    assert out.exit_code == 0, out.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", out.output).split())


def test_help_names_only_commands_that_exist():
    import re

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"compress", "deploy", "evaluate", "list"} <= commands
    for cmd in sorted(commands):
        for named in re.findall(r"`tamer (\w+)", _help_text(cmd)):
            assert named in commands, (cmd, named)
    assert "`tamer list stages` and `tamer list stages NAME`" in _help_text("compress")
    assert "`tamer list targets` and `tamer list targets NAME`" in _help_text("deploy")
    # bracketed help text is not swallowed as rich markup
    train = _help_text("train")
    assert "(default: digits; with --run: the run's)" in _help_text("compress")
    assert "data.KEY=VALUE and model.KEY=VALUE" in train


def test_list_stage_prints_each_key_with_type_default_and_meaning():
    out = runner.invoke(app, ["list", "stages", "prune"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("prune: magnitude pruning")
    assert "  sparsity: float | dict[str, float] | 'sensitivity' = 0.8" in lines
    assert "  batch_size: int | None (> 0) = null" in lines
    i = lines.index("  select: Selector | None = null")
    assert "default: every conv / linear but the first" in lines[i + 1]
    # nested parameter groups: the selector, each schedule, the Solver
    assert "  select (Selector): Which layers a method applies to, and per-layer parameter overrides." in lines
    assert "    exclude_first: bool = false" in lines
    assert "    end: int (>= 0) = required" in lines
    assert "    base_lr: float (> 0) = 0.01" in lines


def test_list_stages_verbose_covers_every_stage_once():
    from tinytamer.recipe import stages

    out = runner.invoke(app, ["list", "stages", "-v"])
    assert out.exit_code == 0, out.output
    for name in stages():
        assert any(line.startswith(f"{name}: ") for line in out.output.splitlines()), name
    # the Solver's keys are printed once, then referred to
    assert out.output.count("    base_lr: float (> 0) = 0.01") == 1
    assert "finetune (SolverConfig): keys listed above" in out.output
    short = runner.invoke(app, ["list", "stages"]).output
    assert "tamer list stages NAME" in short and "base_lr" not in short


def test_list_target_shows_the_keys_for_that_target():
    ort = runner.invoke(app, ["list", "targets", "onnxruntime"])
    assert ort.exit_code == 0, ort.output
    assert "precisions: fp32, int8" in ort.output
    assert "stage deploy" in ort.output and "calib_method: 'minmax' | 'percentile' | 'entropy'" in ort.output
    assert "trials" not in ort.output  # a TVM key
    tvm = runner.invoke(app, ["list", "targets", "tvm"]).output
    assert "trials: int (>= 0)" in tvm and "calib_method" not in tvm
    micro = runner.invoke(app, ["list", "targets", "cortex-m4"]).output
    assert "stage deploy" in micro and "sram_budget: int | None = null" in micro
    assert "schedules: 'default' | 'portable' | 'tuned'" in micro
    assert (
        "schedules" not in ort.output
        and "options of torch: none" in runner.invoke(app, ["list", "targets", "torch"]).output
    )
    assert "onnxruntime" in runner.invoke(app, ["list", "targets"]).output


def test_list_errors_name_what_exists():
    out = runner.invoke(app, ["list", "stages", "prunee"])
    assert out.exit_code == 2 and "unknown stage 'prunee'" in out.output and "prune," in out.output
    out = runner.invoke(app, ["list", "targets", "gpu"])
    assert out.exit_code == 2 and "unknown target 'gpu'" in out.output
    out = runner.invoke(app, ["list", "models", "x"])
    assert out.exit_code == 2
    recipe = runner.invoke(app, ["list", "recipe"]).output
    assert "data (DataSpec)" in recipe and "    augment: bool = false" in recipe


# -- evaluate, deploy and bench say what runs where -------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    out = runner.invoke(
        app,
        [
            "train",
            "--size",
            "16",
            "--max-iter",
            "40",
            "--lr",
            "0.05",
            "--set",
            "display=0",
            "--runs",
            str(runs),
            "--name",
            "t",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    return runs / "t"


def test_evaluate_a_run_or_a_checkpoint_on_a_dataset(trained, tmp_path):
    out = runner.invoke(
        app, ["evaluate", "--run", str(trained), "--limit", "50", "--runs", str(tmp_path), "--name", "e1", "--quiet"]
    )
    assert out.exit_code == 0, out.output
    assert "0:evaluate" in out.output and "(50 samples, PyTorch)" in out.output
    ckpt = trained / "checkpoints" / "01_evaluate.safetensors"
    out = runner.invoke(
        app,
        [
            "evaluate",
            "--weights",
            str(ckpt),
            "--data",
            "digits",
            "--size",
            "16",
            "--set",
            "split=val",
            "--runs",
            str(tmp_path),
            "--name",
            "e2",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    rec = [r for r in (tmp_path / "e2" / "metrics.jsonl").read_text().splitlines() if '"stage"' in r]
    assert '"split": "val"' in rec[-1]
    # scored through a deployed runtime: target, precision, parity and the sample count
    out = runner.invoke(
        app,
        [
            "evaluate",
            "--run",
            str(trained),
            "--limit",
            "30",
            "--target",
            "torch",
            "--runs",
            str(tmp_path),
            "--name",
            "e3",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "torch fp32  parity ok (max |d| 0)" in out.output and "(30 samples, torch)" in out.output


def test_evaluate_refuses_unclear_requests(trained, tmp_path):
    for args in (
        [],
        ["--run", str(trained), "--weights", "x.safetensors"],
        ["--run", str(trained), "--precision", "int8"],
    ):
        out = runner.invoke(app, ["evaluate", *args, "--runs", str(tmp_path), "--quiet"])
        assert out.exit_code == 2, (args, out.output)
        assert "error:" in out.output


def test_deploy_and_bench_say_what_they_start(trained, tmp_path):
    out = runner.invoke(
        app,
        [
            "deploy",
            "--target",
            "torch",
            "--run",
            str(trained),
            "--set",
            "repeats=2",
            "--set",
            "isolate=false",
            "--runs",
            str(tmp_path),
            "--name",
            "d",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    first = out.output.splitlines()[0]
    assert first.startswith(f"tamer deploy: weights {trained}")
    assert "target torch fp32" in first and str(tmp_path / "d") in first
    assert "0:deploy" in out.output and "torch fp32  parity ok" in out.output
    out = runner.invoke(
        app,
        [
            "bench",
            "--target",
            "torch",
            "--run",
            str(trained),
            "--set",
            "repeats=1",
            "--set",
            "isolate=false",
            "--runs",
            str(tmp_path),
            "--name",
            "b",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0].startswith("tamer bench: ") and "targets torch" in out.output


def test_summary_names_target_precision_and_parity():
    from tinytamer.cli import _record_line
    from tinytamer.records import stage_record

    def out(err, agree=None):
        return {"max_abs_err": err, "max_rel_err": err, "mean_abs_err": err, "n": 32, "top1_agree": agree}

    parity = {"ok": True, "precision": "int8", "tolerance": {"max_rel_err": 0.5}}
    deploy = stage_record(
        {
            "index": 5,
            "stage": "deploy",
            "target": "onnxruntime",
            "precision": "int8",
            "parity": {**parity, "outputs": [out(0.0, 1.0), out(0.25, 0.96875)]},
            "accuracy": 0.975,
            "accuracy_runtime": "onnxruntime",
            "eval_samples": 360,
            "artifacts": [],
        }
    )
    line = _record_line(deploy)
    assert "5:deploy" in line
    assert "onnxruntime int8  parity ok (max |d| 0.25; top-1 agreement 96.9%)" in line
    assert "accuracy 97.50% (360 samples, onnxruntime)" in line
    micro = stage_record(
        {
            "index": 6,
            "stage": "deploy",
            "target": "cortex-m4",
            "precision": "int8",
            "parity": {**parity, "outputs": [out(0.0)]},
            "bit_exact_inputs": 8,
            "accuracy": 0.96,
            "accuracy_runtime": "cortex-m4",
            "eval_samples": 100,
            "eval_total": 360,
            "options": {"schedules": "default"},
            "artifacts": [],
            "arena_bytes": 1024,
            "memory_plan": "arena 1024 B",
            "est_cycles": 5000,
        }
    )
    line = _record_line(micro)
    assert "cortex-m4 int8  parity ok (max |d| 0; bit-exact vs the C reference on 8 inputs)" in line
    assert "accuracy 96.00% (100 of 360 samples, cortex-m4)" in line
    assert "est_cycles 5,000" in line
    assert "parity" not in _record_line(stage_record({"index": 0, "stage": "train", "accuracy": 0.5}))


def test_deploy_set_takes_the_target_options(trained, tmp_path):
    """`--set` reaches the target's own options (`tamer list targets NAME`), validated."""
    from tinytamer.micro import toolchain

    bad = runner.invoke(
        app,
        [
            "deploy",
            "--target",
            "cortex-m4",
            "--run",
            str(trained),
            "--set",
            "schedule=tuned",
            "--runs",
            str(tmp_path),
            "--name",
            "x",
            "--quiet",
        ],
    )
    assert bad.exit_code == 2, bad.output
    assert "unknown key 'schedule' - did you mean 'schedules'?" in bad.output
    assert "options of target 'cortex-m4': calib_method, schedules" in bad.output
    bad = runner.invoke(
        app,
        [
            "deploy",
            "--target",
            "cortex-m4",
            "--run",
            str(trained),
            "--set",
            "schedules=fast",
            "--runs",
            str(tmp_path),
            "--name",
            "x",
            "--quiet",
        ],
    )
    assert bad.exit_code == 2 and "target 'cortex-m4' option schedules" in bad.output
    assert not (tmp_path / "x").exists()
    if not (toolchain.arm_available() and toolchain.qemu_available()):
        pytest.skip("ARM toolchain or QEMU missing: run scripts/install-micro-toolchain.sh")
    out = runner.invoke(
        app,
        [
            "deploy",
            "--target",
            "cortex-m4",
            "--run",
            str(trained),
            "--set",
            "schedules=portable",
            "--set",
            "eval_limit=20",
            "--set",
            "calib_batches=2",
            "--runs",
            str(tmp_path),
            "--name",
            "m",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "target cortex-m4 int8" in out.output.splitlines()[0]
    assert "0:deploy" in out.output and "cortex-m4 int8  parity ok" in out.output
    assert "(20 of " in out.output and "cortex-m4)" in out.output and "est_cycles" in out.output
    from tinytamer.records import DeployRecord, read_records
    from tinytamer.rundir import RunDir

    rec = read_records(RunDir.open(tmp_path / "m"), DeployRecord)[0]
    assert rec.options["schedules"] == "portable" and rec.instructions > 0 and rec.flash_bytes > 0


def test_evaluate_on_data_of_another_shape_is_one_clear_error(trained, tmp_path):
    out = runner.invoke(
        app,
        [
            "evaluate",
            "--run",
            str(trained),
            "--data",
            "digits",
            "--size",
            "12",
            "--runs",
            str(tmp_path),
            "--name",
            "x",
            "--quiet",
        ],
    )
    assert out.exit_code == 2, out.output
    assert "does not take this data's input of shape (1, 12, 12)" in out.output
    assert str(trained) in out.output
    assert not (tmp_path / "x").exists()
