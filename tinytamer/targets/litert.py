"""The ``litert`` target: our int8 ``.tflite`` export, run by the LiteRT interpreter on the CPU.

``compile`` quantizes the model to int8 (or takes the converted model given as
``qparams`` / as the model itself, like the micro targets), writes it as an int8
TFLite flatbuffer (:mod:`tinytamer.export.tflite`, from the same integer graph the
generated C runs) and loads it in ``ai_edge_litert``'s interpreter.  Parity is checked
against the fake-quantized PyTorch model; how far LiteRT's int8 kernels land from our
numpy integer reference (in output steps) is stated beside it.  The model's input and
output tensors are int8: ``Deployed(*arrays)`` quantizes float N x C x H x W inputs with
the file's input scale and zero point, exactly as the micro targets do, and dequantizes
the outputs back to PyTorch's layout.

int8 only: the export is written from the integer graph, so there is no float .tflite.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinytamer.errors import ModelError, TamerError
from tinytamer.targets.base import Backend, Deployed, Quantizer, register_target

if TYPE_CHECKING:
    import torch
    from torch import nn

BACKEND = Backend("litert", ("ai_edge_litert.interpreter",), "pip install 'tinytamer[litert]'  (ai-edge-litert)")


class TFLiteRunner:
    """One LiteRT interpreter over a batch-1 int8 .tflite, taking and giving float arrays."""

    def __init__(self, path: str | Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interp = Interpreter(model_path=str(path), num_threads=threads)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"LiteRT cannot load '{path}' as a TFLite model: {' '.join(str(exc).split())[:300]}"
            ) from None
        (self.inp,), (self.out,) = self.interp.get_input_details(), self.interp.get_output_details()
        self.in_q, self.out_q = self.inp["quantization"], self.out["quantization"]

    def run_int8(self, q: np.ndarray) -> np.ndarray:
        """int8 [N, *input shape in NHWC] -> int8 [N, *output shape], one invoke per sample."""
        outs = []
        for row in q:
            self.interp.set_tensor(self.inp["index"], row[None])
            self.interp.invoke()
            outs.append(self.interp.get_tensor(self.out["index"])[0].copy())
        return np.stack(outs)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float [N, C, H, W] or [N, F] -> int8 NHWC, as the model's input FakeQuantAct does
        (float32 divide, round half to even, clamp)."""
        scale, zp = self.in_q
        q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zp
        q = np.clip(q, -128, 127).astype(np.int8)
        return q.transpose(0, 2, 3, 1) if q.ndim == 4 else q

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zp = self.out_q
        y = (q.astype(np.float32) - zp) * np.float32(scale)
        return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [self.dequantize(self.run_int8(self.quantize(arrays[0])))]


def load_runtime(threads: int, path: str) -> TFLiteRunner:
    """Open the .tflite file in a fresh process (memory probe)."""
    return TFLiteRunner(path, threads)


class LiteRTDeployed(Deployed):
    def __init__(self, path: Path, **kw: Any) -> None:
        super().__init__(artifacts=[path], **kw)
        self.path = path
        self.runner = TFLiteRunner(path, self.threads)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.runner(arrays)

    def probe_spec(self) -> dict[str, Any]:
        return {"loader": "tinytamer.targets.litert:load_runtime", "args": {"path": str(self.path)}}

    def _timed_here(self, inputs: list[np.ndarray], threads: int, repeats: int, warmup: int) -> list[float]:
        from tinytamer.targets.base import time_calls

        runner = self.runner if threads == self.threads else TFLiteRunner(self.path, threads)
        return time_calls(lambda: runner(inputs), repeats, warmup)


@functools.cache
def _options_model() -> type:
    # Built on first use: the memory probe child imports this module and must not pay for
    # pydantic.
    from typing import Literal

    from pydantic import Field

    from tinytamer.targets.options import TargetOptions

    class LiteRTOptions(TargetOptions):
        """Options of target ``litert``."""

        calib_method: Literal["minmax", "percentile", "mse"] = Field(
            "minmax",
            description="how the int8 activation ranges are chosen (a float model is "
            "quantized here; a model from the quantize stage keeps its own)",
        )

    return LiteRTOptions


class LiteRTTarget:
    name = "litert"
    precisions = ("int8",)
    install_hint = BACKEND.install
    takes_quantizer = True  # a float model is quantized with the caller's quantizer

    def available(self) -> bool:
        return BACKEND.problem() is None

    def problem(self) -> TamerError | None:
        return BACKEND.problem()

    @property
    def Options(self) -> type:
        return _options_model()

    def compile(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor],
        workdir: str | Path,
        *,
        precision: str = "int8",
        calib: Sequence[Any] | None = None,
        qparams: Any = None,
        threads: int = 2,
        calib_method: str = "minmax",
        quantize: Quantizer | None = None,
    ) -> LiteRTDeployed:
        from tinytamer.export.tflite import export_tflite
        from tinytamer.micro import reference
        from tinytamer.targets._torchutil import parity_inputs, verify
        from tinytamer.targets.micro import _quantized

        BACKEND.require()
        if precision not in self.precisions:
            raise TamerError(
                f"target 'litert' runs int8 only (asked for '{precision}'): the "
                ".tflite is written from the integer graph"
            )
        if len(example_inputs) != 1:
            raise TamerError(f"target 'litert' supports one model input, got {len(example_inputs)}")
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        gm = _quantized(self.name, copy.deepcopy(model).eval(), calib, qparams, calib_method, quantize)
        path = workdir / "model.tflite"
        export = export_tflite(gm, example_inputs[0][:1], path)
        graph = export.pop("graph")
        deployed = LiteRTDeployed(
            path,
            target=self.name,
            precision="int8",
            input_shapes=[tuple(example_inputs[0].shape[1:])],
            input_dtypes=["float32"],
            threads=threads,
        )
        deployed.info["export"] = export
        inputs = parity_inputs(example_inputs, calib)
        # LiteRT's int8 kernels against our integer reference, in output steps.
        q = deployed.runner.quantize(inputs[0].detach().numpy())
        got = deployed.runner.run_int8(q).reshape(len(q), -1).astype(np.int64)
        shape = graph.tensors[graph.input].shape
        want = np.stack([reference.run(graph, r.reshape(shape)).reshape(-1) for r in q])
        diff = np.abs(got - want)
        deployed.info["int8_vs_integer_reference"] = {
            "inputs": len(q),
            "max_step_diff": int(diff.max(initial=0)),
            "equal_fraction": float((diff == 0).mean()) if diff.size else 1.0,
        }
        verify(deployed, gm, inputs, f"target 'litert' (int8, {path.name})")
        return deployed


register_target(LiteRTTarget())
