"""The ``torch`` target: eager PyTorch on the CPU, the baseline every ratio is against.

The artifact is a tinytamer checkpoint (``model.safetensors``: weights, with the
architecture as JSON in its metadata), from which a fresh process rebuilds the same
eager module to measure memory and latency in isolation.  A model whose architecture
cannot be recorded falls back to its ``torch.export`` program (``model.pt2``); one that
does not export either still deploys, and is then measured in this process.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from tinytamer.checkpoint import load_checkpoint, save_checkpoint
from tinytamer.errors import ModelError, TamerError
from tinytamer.export.onnx import ExportError, capture
from tinytamer.fileio import atomic_open, atomic_path
from tinytamer.targets._torchutil import Batch, parity_inputs, to_numpy, verify
from tinytamer.targets.base import Deployed, register_target, time_calls


class TorchDeployed(Deployed):
    def __init__(self, model: nn.Module, workdir: Path, **kw: Any) -> None:
        super().__init__(artifacts=[], **kw)
        self.model = model
        self.workdir = workdir
        self.loader_args: dict[str, Any] | None = None
        path = workdir / "model.safetensors"
        try:
            save_checkpoint(model, path)
            # Classes outside torch.nn / tinytamer (the user's) must be importable there too.
            allow = sorted({type(m).__module__.split(".")[0] + "." for m in model.modules()})
            self.loader_args = {"path": str(path), "allow": allow}
        except ModelError as exc:
            self.info["checkpoint_error"] = str(exc)
            # clone(): safetensors refuses tensors that share storage.
            with atomic_path(path) as tmp:
                save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        self.artifacts.append(path)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return to_numpy(self.model(*[torch.from_numpy(a) for a in arrays]))

    def _export_program(self) -> Path | None:
        """``model.pt2`` for a model whose architecture cannot be recorded (on demand)."""
        path = self.workdir / "model.pt2"
        if path.exists() or "export_error" in self.info:
            return path if path.exists() else None
        example = [
            torch.zeros((2, *s), dtype=getattr(torch, d))
            for s, d in zip(self.input_shapes, self.input_dtypes, strict=True)
        ]
        try:
            ep, self.info["dynamic_batch"] = capture(self.model, example)
        except ExportError as exc:
            self.info["export_error"] = str(exc)
            return None
        # A file object: torch.export.save warns about a file name not ending in .pt2.
        with atomic_open(path) as f:
            torch.export.save(ep, f)
        return path

    def probe_spec(self) -> dict[str, Any] | None:
        if self.loader_args is not None:
            return {"loader": "tinytamer.targets.pytorch:load_runtime", "args": self.loader_args}
        path = self._export_program()
        if path is None:
            return None
        return {"loader": "tinytamer.targets.pytorch:load_program", "args": {"path": str(path)}}

    def _timed_here(self, inputs: list[np.ndarray], threads: int, repeats: int, warmup: int) -> list[float]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return time_calls(lambda: self.run(inputs), repeats, warmup)
        finally:
            torch.set_num_threads(before)


def _runner(module: Any) -> Any:
    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return to_numpy(module(*[torch.from_numpy(a) for a in arrays]))

    return run


def load_runtime(threads: int, path: str, allow: list[str]) -> Any:
    """Rebuild the eager model from its checkpoint in a fresh process (memory probe)."""
    torch.set_num_threads(threads)
    return _runner(load_checkpoint(path, allow=allow))


def load_program(threads: int, path: str) -> Any:
    """Load ``model.pt2`` in a fresh process (models whose architecture is not recordable)."""
    torch.set_num_threads(threads)
    # Our own artifact, written by this target in the deployment folder.
    return _runner(torch.export.load(path).module())


class TorchTarget:
    name = "torch"
    precisions = ("fp32",)
    install_hint = "PyTorch is a core dependency"

    def available(self) -> bool:
        return True

    def compile(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor],
        workdir: str | Path,
        *,
        precision: str = "fp32",
        calib: Sequence[Batch] | None = None,
        qparams: Any = None,
        threads: int = 2,
    ) -> TorchDeployed:
        if precision not in self.precisions:
            raise TamerError(
                f"target 'torch' does not support precision '{precision}' (supported: {', '.join(self.precisions)})"
            )
        workdir = Path(workdir).resolve()  # the timing child loads the checkpoint by path
        workdir.mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(model).eval()
        deployed = TorchDeployed(
            model,
            workdir,
            target=self.name,
            precision=precision,
            input_shapes=[tuple(x.shape[1:]) for x in example_inputs],
            input_dtypes=[str(x.detach().numpy().dtype) for x in example_inputs],
            threads=threads,
        )
        verify(deployed, model, parity_inputs(example_inputs, calib), "target 'torch'")
        return deployed


register_target(TorchTarget())
