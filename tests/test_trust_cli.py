"""The CLI prints user and file text as text, refuses recipe bombs fast, and exits 2 on user errors."""

import subprocess
import sys

import yaml
from typer.testing import CliRunner

from tinytamer.cli import app
from tinytamer.errors import BackendMissing
from tinytamer.recipe import StageParams, register_stage

runner = CliRunner()


class _RaiseParams(StageParams):
    what: str = "backend"


@register_stage("test_raise", _RaiseParams, help="raises what it is told to (tests only)")
def _raise(model, ctx, p):
    if p.what == "backend":
        raise BackendMissing("ncnn", "pip install 'tinytamer[ncnn]'")
    raise KeyboardInterrupt


def _recipe(tmp_path, what: str):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "r",
                "data": {"name": "digits", "size": 8, "limit": 20},
                "stages": [{"test_raise": {"what": what}}],
            }
        )
    )
    return path


def test_install_hint_keeps_its_brackets(tmp_path):
    out = runner.invoke(app, ["run", str(_recipe(tmp_path, "backend")), "--runs", str(tmp_path / "runs"), "--quiet"])
    assert out.exit_code == 2, out.output
    assert "error: backend 'ncnn' is not installed: pip install 'tinytamer[ncnn]'" in out.output


def test_interrupt_says_how_to_resume(tmp_path):
    out = runner.invoke(app, ["run", str(_recipe(tmp_path, "interrupt")), "--runs", str(tmp_path / "runs"), "--quiet"])
    assert out.exit_code == 130
    assert "interrupted: resume with `tamer run --resume runs/<name>`" in out.output


def test_a_path_that_looks_like_markup_is_printed_as_is(tmp_path):
    folder = tmp_path / "a[/x]" / "[bold]b"
    out = runner.invoke(app, ["run", str(folder / "r.yaml")])
    assert out.exit_code == 2, out.output
    assert f"error: recipe file not found: {folder / 'r.yaml'}" in out.output
    assert isinstance(out.exception, SystemExit)  # the handler itself did not crash
    out = runner.invoke(app, ["compress", "--method", "[red]x[/red]", "--runs", str(tmp_path)])
    assert out.exit_code == 2 and "unknown stage '[red]x[/red]'" in out.output


def test_summary_prints_a_run_folder_with_brackets(tmp_path):
    runs = tmp_path / "[/runs]"
    out = runner.invoke(
        app,
        [
            "train",
            "--size",
            "8",
            "--max-iter",
            "1",
            "--set",
            "data.limit=30",
            "--runs",
            str(runs),
            "--name",
            "t",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    assert f"run folder: {runs / 't'}" in out.output


def test_recipe_bomb_through_the_cli(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nname: bomb\nstages:\n  - train: {max_iter: *a9}\n")
    out = runner.invoke(app, ["run", str(bomb), "--runs", str(tmp_path)])
    assert out.exit_code == 2
    assert "aliases expand to more than 100,000 values" in out.output
    # the same bomb in one --set value
    levels = ["&a0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    out = runner.invoke(
        app, ["compress", "--method", "prune", "--set", f"sparsity=[{', '.join(levels)}]", "--runs", str(tmp_path)]
    )
    assert out.exit_code == 2 and "--set sparsity: its aliases expand to more than" in out.output
    out = runner.invoke(app, ["compress", "--method", "prune", "--set", "sparsity=[unclosed", "--runs", str(tmp_path)])
    assert out.exit_code == 2 and "--set sparsity is not valid YAML" in out.output


def test_set_keys_must_be_well_formed(tmp_path):
    for bad in ("=1", "a..b=1", ".a=1", "noequals"):
        out = runner.invoke(app, ["compress", "--method", "prune", "--set", bad, "--runs", str(tmp_path)])
        assert out.exit_code == 2 and "--set expects KEY=VALUE" in out.output, bad


def test_entry_point_exits_2_with_one_line(tmp_path):
    (tmp_path / "a[").mkdir()
    bad = tmp_path / "a[" / "x]r.yaml"  # the path reads .../a[/x]r.yaml
    bad.write_text("name: x\nstages:\n  - prune: {finetune: {lr: 1, max_iter: 2}}\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from tinytamer.cli import main; main()", "run", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "stages[0].prune.finetune.lr: unknown key (allowed: base_lr," in proc.stdout
    assert "[/x]" in str(bad) and str(bad) in proc.stdout
