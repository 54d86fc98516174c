"""PyTorch -> ONNX: one self-contained file with a dynamic batch dimension, simplified.

The graph is captured with ``torch.export`` (non-strict), translated by the
``torch.onnx`` exporter and simplified with onnxslim.  Capture failures (data-dependent
control flow, unsupported ops) become an ``ExportError`` that names the op, where it
occurs in the model, and which targets can still run the model.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from tinytamer.errors import ModelError
from tinytamer.fileio import atomic_path

# Targets that run the eager module and so do not need a graph export.
EAGER_TARGETS = ("torch",)


class ExportError(ModelError):
    """The model cannot be captured as a graph for a graph-based target."""


def input_names(n: int) -> list[str]:
    return [f"input{i}" for i in range(n)]


def _user_frame(message: str) -> tuple[str, int, str] | None:
    """(file, line, code) of the user's call that raised, as torch.export reports it."""
    m = re.search(r'File "([^"]+)", line (\d+), in \w+\n\s*(.*)', message)
    if m is None:
        return None
    return m.group(1), int(m.group(2)), m.group(3).strip()


def _module_at(model: nn.Module, file: str, line: int) -> str | None:
    """The path of the submodule whose ``forward`` contains ``file:line``, if any."""
    for name, mod in model.named_modules():
        fwd = type(mod).forward
        try:
            src_file = inspect.getsourcefile(fwd)
            lines, start = inspect.getsourcelines(fwd)
        except (OSError, TypeError):
            continue
        if src_file and os.path.samefile(src_file, file) and start <= line < start + len(lines):
            return name or "<root>"
    return None


def _describe_failure(model: nn.Module, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    ops = sorted(set(re.findall(r"\b(aten\.\w+(?:\.\w+)?|torch\.ops\.\w+\.\w+)", text)))
    if "data-dependent" in text or "GuardOnDataDependent" in text:
        what = "data-dependent control flow (a Python branch or shape that depends on tensor values)"
    elif ops:
        what = f"unsupported op {', '.join(ops[:5])}"
    else:
        first = str(exc).strip().splitlines()
        what = f"{type(exc).__name__}: {first[0] if first else ''}"
    frame = _user_frame(text)
    where = ""
    if frame is not None:
        file, line, code = frame
        module = _module_at(model, file, line)
        where = (f" in module '{module}'" if module else "") + f" at {Path(file).name}:{line} (`{code}`)"
    return f"{what}{where}"


def capture(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], *, dynamic_batch: bool = True
) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` the model (eval mode) with a dynamic batch dimension if it allows.

    Returns the program and whether the batch dimension is dynamic (a model that
    fixes its batch size, e.g. ``x.view(1, -1)``, is exported with a static one).
    """
    model = model.eval()
    inputs = tuple(example_inputs)
    if dynamic_batch:
        # torch.export specialises a dimension of size 1, so trace with batch >= 2.
        batched = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in inputs)
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        try:
            ep = torch.export.export(model, batched, dynamic_shapes=tuple({0: batch} for _ in inputs), strict=False)
            return ep, True
        except Exception as exc:  # noqa: BLE001 - retried statically, then described
            if "Constraints violated" not in str(exc) and "specialized" not in str(exc):
                raise ExportError(
                    f"model does not export to a graph: "
                    f"{_describe_failure(model, exc)}. Targets that can still "
                    f"run it: {', '.join(EAGER_TARGETS)}"
                ) from exc
    try:
        return torch.export.export(model, inputs, strict=False), False
    except Exception as exc:  # noqa: BLE001 - any capture failure is described to the user
        raise ExportError(
            f"model does not export to a graph: {_describe_failure(model, exc)}"
            f". Targets that can still run it: {', '.join(EAGER_TARGETS)}"
        ) from exc


def export_onnx(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    simplify: bool = True,
    opset: int = 18,
) -> dict[str, object]:
    """Write ``model`` as one self-contained ONNX file at ``path`` (atomically).

    Returns ``{"path", "dynamic_batch", "simplified", "opset"}``.
    """
    path = Path(path)
    ep, dynamic = capture(model, example_inputs, dynamic_batch=dynamic_batch)
    names = input_names(len(example_inputs))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The exporter logs every step at INFO/WARNING; the result is checked below.
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                ep, dynamo=True, external_data=False, verbose=False, input_names=names, opset_version=opset
            )
    except Exception as exc:  # noqa: BLE001 - translation failures are described to the user
        raise ExportError(
            f"model does not translate to ONNX: {_describe_failure(model, exc)}"
            f". Targets that can still run it: {', '.join(EAGER_TARGETS)}"
        ) from exc
    proto = program.model_proto
    simplified = False
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
        simplified = True
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return {"path": str(path), "dynamic_batch": dynamic, "simplified": simplified, "opset": opset}
