import subprocess
import sys

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tinytamer.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_help_lists_commands():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for cmd in ("demo", "run", "train", "compress", "deploy", "report"):
        assert cmd in out.output


def test_train_command_writes_a_run(tmp_path):
    out = runner.invoke(app, ["train", "--model", "democnn", "--data", "digits", "--size", "16",
                              "--max-iter", "10", "--runs", str(tmp_path), "--name", "t", "--quiet"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "t" / "report.html").is_file()
    assert "accuracy" in out.output


def test_user_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "stages": [{"train": {"lr": 1}}]}))
    proc = subprocess.run([sys.executable, "-c", "from tinytamer.cli import main; main()", "run", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "stages[0].train.lr: unknown key" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_list_models_and_stages():
    assert "resnet8" in runner.invoke(app, ["list", "models"]).output
    assert "train" in runner.invoke(app, ["list", "stages"]).output


def test_compress_command_writes_a_compressed_file(tmp_path):
    out = runner.invoke(app, ["compress", "--method", "prune", "--model", "democnn", "--data", "digits",
                              "--size", "16", "--set", "sparsity=0.5", "--runs", str(tmp_path),
                              "--name", "c", "--quiet"])
    assert out.exit_code == 0, out.output
    files = list((tmp_path / "c").glob("stages/*_save_compressed/model.tt"))
    assert len(files) == 1
    inspected = runner.invoke(app, ["inspect", str(files[0])])
    assert inspected.exit_code == 0 and "encoding" in inspected.output


def test_unknown_method_names_the_known_stages(tmp_path):
    out = runner.invoke(app, ["compress", "--method", "kmeans", "--runs", str(tmp_path), "--quiet"])
    assert out.exit_code != 0
    assert "unknown stage 'kmeans'" in str(out.exception)
