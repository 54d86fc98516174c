"""The firmware folder of a micro deploy: copied out of the run, it builds and
runs with the C toolchains alone (clean environment, no tinytamer, no Python path) and gives
the integer reference's output."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tinytamer.deploy import int8_quantizer
from tinytamer.errors import ModelError
from tinytamer.micro import toolchain
from tinytamer.micro.firmware import kernel_sources, write_firmware
from tinytamer.targets.base import get_target

torch.set_num_threads(1)
needs_gcc = pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("make") is None, reason="host gcc or make is not installed"
)
needs_arm = pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()),
    reason="ARM toolchain or QEMU missing: run scripts/install-micro-toolchain.sh",
)
# The kernels are warning-free under the flags the package builds with: so is the folder.
STRICT = "OPT=-O2 -Wall -Wextra -Werror -Wno-unused-parameter"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).eval()


def _deploy(target: str, workdir: Path):
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 1, 8, 8, generator=g)]
    dep = get_target(target).compile(_model(), [calib[0][:1]], workdir / "run", calib=calib, quantize=int8_quantizer)
    out = workdir / "copied"
    shutil.copytree(dep.info["firmware"], out)  # out of the run: nothing points back into it
    return dep, out


def _example_input(folder: Path) -> np.ndarray:
    """The input the folder's example runs, read from the folder itself."""
    text = (folder / "example" / "example_data.h").read_text()
    body = re.search(r"tt_example_input\[\d+\] = \{([^}]*)\}", text).group(1)
    return np.array([int(v) for v in body.replace("\n", " ").split(",")], np.int8)


def _clean_run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A command with only the system PATH: no virtualenv, no PYTHONPATH, no tinytamer."""
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(cwd)},
    )


def _printed_output(text: str, size: int) -> np.ndarray:
    lines = [ln.strip() for ln in text.splitlines()]
    assert "ok: equals the integer reference" in lines, text
    row = next(ln for ln in lines if re.fullmatch(f"[0-9a-f]{{{2 * size}}}", ln))
    return np.frombuffer(bytes.fromhex(row), np.int8)


def _check_folder(folder: Path, dep) -> None:
    g = dep.program.graph
    listed = (folder / "SOURCES").read_text().split()
    assert listed[0] == "model.c" and listed[1:] == kernel_sources(
        g,
        [
            (folder / "model.c").read_text(),
            *([(folder / "example/host/model.c").read_text()] if (folder / "example/host/model.c").exists() else []),
        ],
    )
    # Only the kernels the model calls: this model has no add, softmax or packed weights.
    present = {p.name for p in folder.glob("tt_*.c")}
    assert present == set(listed[1:]) and "tt_add.c" not in present
    assert "tt_softmax.c" not in present and not any("packed" in p for p in present)
    io = (folder / "tt_model_io.h").read_text()
    tin = g.tensors[g.input]
    assert f"#define TT_INPUT_ZERO_POINT {tin.zero_point}" in io
    assert "#define TT_INPUT_HEIGHT 8" in io and "#define TT_INPUT_CHANNELS 1" in io
    assert f"TT_ARENA_SIZE = {dep.program.cmodel.plan.arena_size} bytes" in io
    readme = (folder / "README.md").read_text()
    assert "-fno-strict-aliasing" in readme and "CMSIS-NN" in readme
    assert "tinytamer" not in (folder / "tinytamer.mk").read_text().split("TT_SRCS")[1]


@needs_arm
def test_cortex_m4_folder_builds_alone_and_runs_on_qemu(tmp_path):
    dep, folder = _deploy("cortex-m4", tmp_path)
    _check_folder(folder, dep)
    x = _example_input(folder)
    want = dep.program.run_reference(x[None])[0]

    proc = _clean_run(["make", "-s", "-C", "example", "example.elf", STRICT], folder)
    assert proc.returncode == 0, proc.stderr
    run = _clean_run(["make", "-s", "-C", "example", "run-qemu"], folder)
    assert run.returncode == 0, run.stdout + run.stderr
    # QEMU prints the semihosting console on stderr.
    np.testing.assert_array_equal(_printed_output(run.stderr, len(want)), want)

    # The same folder on the host: its portable twin of the model gives the same output.
    host = _clean_run(["make", "-s", "-C", "example", "run-host", STRICT], folder)
    assert host.returncode == 0, host.stdout + host.stderr
    np.testing.assert_array_equal(_printed_output(host.stdout, len(want)), want)


@needs_gcc
def test_portable_folder_builds_with_gcc_and_cmake(tmp_path):
    dep, folder = _deploy("micro-host", tmp_path)
    _check_folder(folder, dep)
    assert not (folder / "example" / "qemu").exists()
    want = dep.program.run_reference(_example_input(folder)[None])[0]
    host = _clean_run(["make", "-s", "-C", "example", "run-host", STRICT], folder)
    assert host.returncode == 0, host.stdout + host.stderr
    np.testing.assert_array_equal(_printed_output(host.stdout, len(want)), want)
    if shutil.which("cmake") is None:
        return
    # A firmware project's CMake build: add_subdirectory + link the library target.
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.13)\nproject(app C)\n"
        f"add_subdirectory({folder.as_posix()} tinytamer_model)\n"
        f"add_executable(app {folder.as_posix()}/example/main.c "
        f"{folder.as_posix()}/example/host/board.c)\n"
        f"target_include_directories(app PRIVATE {folder.as_posix()}/example)\n"
        "target_link_libraries(app PRIVATE tinytamer_model)\n"
    )
    for cmd in (["cmake", "-S", ".", "-B", "build"], ["cmake", "--build", "build"]):
        proc = _clean_run(cmd, app)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    run = _clean_run([str(app / "build" / "app")], app)
    np.testing.assert_array_equal(_printed_output(run.stdout, len(want)), want)


@needs_gcc
def test_folder_is_replaced_whole(tmp_path):
    """Writing again over a folder leaves no file of the earlier one, and no temporary."""
    dep, _ = _deploy("micro-host", tmp_path)
    folder = Path(dep.info["firmware"])
    (folder / "tt_stale.c").write_text("/* from an earlier model */\n")
    x = _example_input(folder)
    assert write_firmware(dep.program, folder, x).folder == folder
    assert not (folder / "tt_stale.c").exists() and (folder / "model.c").exists()
    assert not list(folder.parent.glob(".firmware.*"))
    with pytest.raises(ModelError, match="3 input values, the model takes 64"):
        write_firmware(dep.program, folder, x[:3])


def test_export_refuses_other_targets_and_a_full_folder(tmp_path):
    from typer.testing import CliRunner

    from tinytamer.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app, ["export", "--target", "onnxruntime", "--out", str(tmp_path / "o"), "--runs", str(tmp_path / "runs")]
    )
    assert res.exit_code == 2 and "micro targets" in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    res = runner.invoke(
        app, ["export", "--target", "micro-host", "--out", str(tmp_path / "full"), "--runs", str(tmp_path / "runs")]
    )
    assert res.exit_code == 2 and "not an empty folder" in res.output
    assert not (tmp_path / "runs").exists()  # refused before any work


@needs_gcc
@pytest.mark.slow
def test_export_command_writes_the_folder(tmp_path):
    from typer.testing import CliRunner

    from tinytamer.cli import app

    out = tmp_path / "fw"
    res = CliRunner().invoke(
        app,
        [
            "export",
            "--target",
            "micro-host",
            "--out",
            str(out),
            "--runs",
            str(tmp_path / "runs"),
            "--quiet",
            "--set",
            "data.limit=100",
            "--set",
            "repeats=0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"firmware:   {out}" in res.output
    host = _clean_run(["make", "-s", "-C", "example", "run-host"], out)
    assert host.returncode == 0 and "ok: equals the integer reference" in host.stdout
