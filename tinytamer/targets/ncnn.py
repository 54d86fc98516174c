"""The ``ncnn`` target: PyTorch -> pnnx -> ncnn param/bin, run by the ncnn Python binding.

pnnx traces the model, writes its side files next to the traced file (so it runs in
a scratch folder), and emits ``model.ncnn.param`` / ``model.ncnn.bin``.  fp16 stores
the weights in half precision and turns on ncnn's fp16 storage/arithmetic where the
CPU has it.  ncnn runs one sample per extractor (tensors are C x H x W), so a batch
of N is N extractions; outputs are restacked to PyTorch's shapes.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinytamer.errors import TamerError
from tinytamer.fileio import atomic_path
from tinytamer.targets.base import Backend, Deployed, register_target

if TYPE_CHECKING:
    import torch
    from torch import nn

INSTALL = "pip install 'tinytamer[ncnn]'"
BACKEND = Backend("ncnn", ("ncnn", "pnnx"), INSTALL)


def _make_net(param: str, weights: str, threads: int, fp16: bool) -> Any:
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_fp16_storage = fp16
    net.opt.use_fp16_packed = fp16
    net.opt.use_fp16_arithmetic = fp16
    net.load_param(param)
    net.load_model(weights)
    return net


def load_runtime(threads: int, param: str, weights: str, fp16: bool, output_shapes: list[list[int]]) -> Any:
    """Build the ncnn runner for a fresh process (memory probe) or this one."""
    import ncnn

    net = _make_net(param, weights, threads, fp16)
    in_names, out_names = net.input_names(), net.output_names()

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        outs: list[list[np.ndarray]] = [[] for _ in out_names]
        for i in range(arrays[0].shape[0]):
            ex = net.create_extractor()
            for name, a in zip(in_names, arrays, strict=True):
                ex.input(name, ncnn.Mat(np.ascontiguousarray(a[i])))
            for k, name in enumerate(out_names):
                ret, mat = ex.extract(name)
                if ret != 0:
                    raise TamerError(f"target 'ncnn': extracting output '{name}' failed (ncnn error {ret})")
                outs[k].append(np.array(mat).reshape(output_shapes[k]))
        return [np.stack(o) for o in outs]

    return run


class NcnnDeployed(Deployed):
    def __init__(self, param: Path, weights: Path, output_shapes: list[list[int]], **kw: Any) -> None:
        super().__init__(artifacts=[param, weights], **kw)
        self.args = {
            "param": str(param),
            "weights": str(weights),
            "fp16": self.precision == "fp16",
            "output_shapes": output_shapes,
        }
        self._run = load_runtime(self.threads, **self.args)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self._run(arrays)

    def probe_spec(self) -> dict[str, Any]:
        return {"loader": "tinytamer.targets.ncnn:load_runtime", "args": self.args}

    def _timed_here(self, inputs: list[np.ndarray], threads: int, repeats: int, warmup: int) -> list[float]:
        from tinytamer.targets.base import time_calls

        run = self._run if threads == self.threads else load_runtime(threads, **self.args)
        return time_calls(lambda: run(inputs), repeats, warmup)


def _pnnx_convert(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], workdir: Path, fp16: bool
) -> tuple[Path, Path]:
    import pnnx
    import torch

    param, weights = workdir / "model.ncnn.param", workdir / "model.ncnn.bin"
    with tempfile.TemporaryDirectory(prefix="pnnx-", dir=workdir) as scratch:
        traced = Path(scratch) / "model.pt"
        try:
            torch.jit.trace(model, tuple(example_inputs), check_trace=False).save(str(traced))
        except Exception as exc:  # noqa: BLE001 - any tracing failure is described
            raise TamerError(
                f"target 'ncnn': the model could not be traced for pnnx: {type(exc).__name__}: {str(exc).strip()[:500]}"
            ) from exc
        # A second input shape (batch 2) tells pnnx the batch dimension is dynamic.
        shapes = ",".join(f"[{','.join(map(str, x.shape))}]f32" for x in example_inputs)
        shapes2 = ",".join(f"[{','.join(map(str, (2, *x.shape[1:])))}]f32" for x in example_inputs)
        cmd = [
            pnnx.EXEC_PATH,
            str(traced),
            f"inputshape={shapes}",
            f"inputshape2={shapes2}",
            "device=cpu",
            f"fp16={int(fp16)}",
        ]
        proc = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True)
        made_param, made_bin = Path(scratch) / "model.ncnn.param", Path(scratch) / "model.ncnn.bin"
        if not made_param.exists() or not made_bin.exists():
            raise TamerError(
                f"target 'ncnn': pnnx produced no ncnn model (exit "
                f"{proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}"
            )
        unsupported = [
            line.split()[0]
            for line in made_param.read_text().splitlines()[2:]
            if line.split() and line.split()[0].startswith(("pnnx.", "F.", "torch.", "Tensor."))
        ]
        if unsupported:
            raise TamerError(f"target 'ncnn': ops without an ncnn layer: {', '.join(sorted(set(unsupported)))}")
        with atomic_path(param) as tmp_param, atomic_path(weights) as tmp_weights:
            shutil.copyfile(made_param, tmp_param)
            shutil.copyfile(made_bin, tmp_weights)
    return param, weights


class NcnnTarget:
    name = "ncnn"
    precisions = ("fp32", "fp16")
    install_hint = INSTALL

    def available(self) -> bool:
        return BACKEND.problem() is None

    def problem(self) -> TamerError | None:
        return BACKEND.problem()

    def compile(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor],
        workdir: str | Path,
        *,
        precision: str = "fp32",
        calib: Sequence[Any] | None = None,
        qparams: Any = None,
        threads: int = 2,
    ) -> NcnnDeployed:
        from tinytamer.targets._torchutil import parity_inputs, torch_outputs, verify

        BACKEND.require()
        if precision not in self.precisions:
            raise TamerError(
                f"target 'ncnn' does not support precision '{precision}' (supported: {', '.join(self.precisions)})"
            )
        # pnnx runs in a scratch folder: every path handed to it must be absolute.
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(model).eval()
        param, weights = _pnnx_convert(model, example_inputs, workdir, precision == "fp16")
        out_shapes = [list(o.shape[1:]) for o in torch_outputs(model, example_inputs)]
        deployed = NcnnDeployed(
            param,
            weights,
            out_shapes,
            target=self.name,
            precision=precision,
            input_shapes=[tuple(x.shape[1:]) for x in example_inputs],
            input_dtypes=[str(x.detach().numpy().dtype) for x in example_inputs],
            threads=threads,
        )
        verify(deployed, model, parity_inputs(example_inputs, calib), f"target 'ncnn' ({precision}, {param.name})")
        return deployed


register_target(NcnnTarget())
