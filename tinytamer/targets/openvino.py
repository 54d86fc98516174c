"""The ``openvino`` target: Intel's OpenVINO runtime on the CPU, fp32 and int8.

The artifact is OpenVINO's own format (``model.xml`` + ``model.bin``), written from the
ONNX export with its weights as they are (fp32 stays fp32: OpenVINO's ``save_model``
would halve float weights by default).  It is compiled for the CPU plugin with one
stream and ``threads`` inference threads, and with inference precision f32: on CPUs
with AMX or AVX-512 BF16 the plugin would otherwise run the float layers in bf16 (on Arm,
in fp16).  The
file keeps a dynamic batch; each batch size run is compiled once as a static shape
(the CPU plugin runs static shapes faster).

int8 comes from one of two quantizers (option ``int8_params``):

- ``ours``: tinytamer's own int8 model (a ``quantize`` stage's model, the ``qparams``
  given, or the caller's ``quantize=`` on ``calib``) written as QDQ ONNX by
  :mod:`tinytamer.export.qdq`, as the ``onnxruntime`` target deploys it.  OpenVINO turns
  each quantize / dequantize pair into a FakeQuantize and runs the convolutions and
  matrix products on its int8 kernels; parity is checked against that fake-quantized
  model (the one that was evaluated), with agreement with the float model stated beside.
- ``nncf``: OpenVINO's post-training quantization (NNCF ``quantize``, its default
  "performance" preset, with its fast bias correction) of the fp32 model on ``calib``;
  parity against the float model.  Needs the ``nncf`` package.

``auto`` (the default) deploys a model that carries int8 parameters (a quantize stage's,
or ``qparams``) with ``ours``, so the int8 model deployed is the one evaluated and
fine-tuned, and quantizes a float model with ``nncf`` (``ours`` when nncf is not
installed).  Measured on one AMD EPYC (AVX2, no VNNI), both calibrated on the same 128-256
real images: on ResNet-8 the two compile to the same execution graph of int8 kernels, with
the same fastest run (0.37 ms, a loaded machine), and NNCF's agreed better with the float
model (top-1 agreement on 1,024 CIFAR-10 images: ResNet-8 0.995 vs 0.983, ResNet-18 0.928
vs 0.823, untrained weights with real BN statistics; trained LeNet-5 on 1,024 MNIST test
images: 0.9912 vs 0.9902, fp32 0.9922, one image apart).  ``info["int8_params"]``
says which one a deployment used.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinytamer.errors import TamerError
from tinytamer.scoring import top1_agreement
from tinytamer.targets.base import Backend, Deployed, Quantizer, register_target, time_calls

if TYPE_CHECKING:
    import torch
    from torch import nn

BACKEND = Backend("openvino", ("openvino",), "pip install 'tinytamer[openvino]'")
NNCF = Backend("openvino", ("nncf",), "pip install 'tinytamer[openvino]' (int8_params=nncf needs nncf)")
INT8_PARAMS = ("auto", "ours", "nncf")


def compile_config(threads: int) -> dict[str, Any]:
    """The CPU plugin's settings: ``threads`` threads, one stream, float layers in f32."""
    return {
        "INFERENCE_NUM_THREADS": int(threads),
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }


class OvRunner:
    """An OpenVINO IR compiled for the CPU once per input shape; ``run(arrays) -> arrays``."""

    def __init__(self, path: str | Path, threads: int) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self.threads = threads
        self._compiled: dict[tuple[tuple[int, ...], ...], Any] = {}

    def compiled(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        if shapes not in self._compiled:
            model = self.model.clone()
            model.reshape({model.input(i): list(s) for i, s in enumerate(shapes)})
            self._compiled[shapes] = self.core.compile_model(model, "CPU", compile_config(self.threads))
        return self._compiled[shapes]

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        model = self.compiled(tuple(tuple(a.shape) for a in arrays))
        result = model(arrays)  # outputs are copied out of the request's buffers
        return [np.asarray(result[out]) for out in model.outputs]


def load_runtime(threads: int, path: str) -> OvRunner:
    """Open the IR in a fresh process (memory probe)."""
    return OvRunner(path, threads)


class OvDeployed(Deployed):
    def __init__(self, path: Path, **kw: Any) -> None:
        super().__init__(artifacts=[path, path.with_suffix(".bin")], **kw)
        self.path = path
        self.runner = OvRunner(path, self.threads)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.runner(arrays)

    def probe_spec(self) -> dict[str, Any]:
        return {"loader": "tinytamer.targets.openvino:load_runtime", "args": {"path": str(self.path)}}

    def _timed_here(self, inputs: list[np.ndarray], threads: int, repeats: int, warmup: int) -> list[float]:
        runner = self.runner if threads == self.threads else OvRunner(self.path, threads)
        return time_calls(lambda: runner(inputs), repeats, warmup)


def _save_ir(model: Any, path: Path) -> Path:
    """Write an OpenVINO model as IR, weights as they are (no fp16 compression)."""
    import openvino as ov

    # OpenVINO writes model.xml and model.bin side by side; a rerun replaces both.
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def nncf_quantize(onnx_path: Path, calib: Sequence[Any], out: Path) -> Path:
    """NNCF post-training quantization of the fp32 ONNX model on ``calib``, saved as IR."""
    import nncf
    import openvino as ov

    from tinytamer.targets._torchutil import as_inputs

    feeds = [[x.detach().numpy() for x in as_inputs(b)] for b in calib]
    model = ov.Core().read_model(str(onnx_path))
    # subset_size counts dataset items, here batches: all of them.
    quantized = nncf.quantize(model, nncf.Dataset(feeds, lambda f: f[0] if len(f) == 1 else f), subset_size=len(feeds))
    return _save_ir(quantized, out)


@functools.cache
def _options_model() -> type:
    # Built on first use: the memory probe child imports this module and must not pay for
    # pydantic.
    from typing import Literal

    from pydantic import Field

    from tinytamer.targets.options import TargetOptions

    class OpenVinoOptions(TargetOptions):
        """Options of target ``openvino``."""

        int8_params: Literal["auto", "ours", "nncf"] = Field(
            "auto",
            description="where int8 parameters come from: ours (tinytamer's quantization, as QDQ), "
            "nncf (OpenVINO's post-training quantization of the float model), or auto: a model "
            "with int8 parameters keeps them, a float model is quantized by nncf (ours without it)",
        )
        calib_method: Literal["minmax", "percentile", "mse"] = Field(
            "minmax", description="int8 params 'ours': how the activation ranges are chosen"
        )
        use_qparams: bool = Field(
            True, description="int8 of a model from the quantize stage keeps its scales / zero points"
        )

    return OpenVinoOptions


class OpenVinoTarget:
    name = "openvino"
    precisions = ("fp32", "int8")
    install_hint = BACKEND.install
    takes_quantizer = True  # int8 'ours' of a float model uses the caller's quantizer

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
        precision: str = "fp32",
        calib: Sequence[Any] | None = None,
        qparams: Any = None,
        threads: int = 2,
        int8_params: str = "auto",
        calib_method: str = "minmax",
        use_qparams: bool = True,
        quantize: Quantizer | None = None,
    ) -> OvDeployed:
        """Export, convert to OpenVINO IR, check parity with PyTorch (see the module docstring)."""
        from tinytamer.export.onnx import export_onnx
        from tinytamer.qgraph import is_quantized
        from tinytamer.targets._torchutil import parity_inputs, require_calib, verify

        BACKEND.require()
        if precision not in self.precisions:
            raise TamerError(
                f"target 'openvino' does not support precision '{precision}' (supported: {', '.join(self.precisions)})"
            )
        if int8_params not in INT8_PARAMS:
            raise TamerError(
                f"target 'openvino': int8_params must be one of {', '.join(INT8_PARAMS)}, not '{int8_params}'"
            )
        if qparams is not None and precision != "int8":
            raise TamerError(
                f"target 'openvino': qparams (our int8 parameters) need precision 'int8', not '{precision}'"
            )
        workdir = Path(workdir).resolve()  # the timing child opens the IR by path
        workdir.mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(model).eval()
        info: dict[str, Any] = {}
        if precision == "int8" and qparams is None and use_qparams and is_quantized(model):
            qparams = model
        if int8_params == "auto":
            int8_params = "ours" if qparams is not None or NNCF.problem() is not None else "nncf"
        if precision == "int8" and (qparams is not None or int8_params == "ours"):
            return self._compile_ours(model, qparams, example_inputs, workdir, calib, threads, calib_method, quantize)
        onnx_path = workdir / "model.onnx"
        info["export"] = export_onnx(model, example_inputs, onnx_path)
        path = workdir / "model.xml"
        if precision == "int8":
            NNCF.require()
            calib = require_calib("openvino", calib)
            nncf_quantize(onnx_path, calib, path)
            info["int8_params"] = "nncf post-training quantization"
        else:
            import openvino as ov

            _save_ir(ov.Core().read_model(str(onnx_path)), path)
        onnx_path.unlink()  # the IR holds everything; the ONNX file was a step
        info["export"].pop("path")
        deployed = self._deployed(path, precision, example_inputs, threads, info)
        verify(deployed, model, parity_inputs(example_inputs, calib), f"target 'openvino' ({precision}, {path.name})")
        return deployed

    def _deployed(
        self,
        path: Path,
        precision: str,
        example_inputs: Sequence[torch.Tensor],
        threads: int,
        info: dict[str, Any],
    ) -> OvDeployed:
        deployed = OvDeployed(
            path,
            target=self.name,
            precision=precision,
            input_shapes=[tuple(x.shape[1:]) for x in example_inputs],
            input_dtypes=[str(x.detach().numpy().dtype) for x in example_inputs],
            threads=threads,
        )
        deployed.info.update(info)
        import openvino as ov

        deployed.info["openvino"] = ov.get_version()
        return deployed

    def _compile_ours(
        self,
        model: nn.Module,
        qparams: Any,
        example_inputs: Sequence[torch.Tensor],
        workdir: Path,
        calib: Sequence[Any] | None,
        threads: int,
        calib_method: str,
        quantize: Quantizer | None,
    ) -> OvDeployed:
        """int8 from tinytamer's quantized model, as QDQ ONNX read by OpenVINO."""
        import openvino as ov

        from tinytamer.errors import ModelError
        from tinytamer.export.qdq import export_qdq
        from tinytamer.qgraph import as_graph_module
        from tinytamer.targets._torchutil import as_inputs, parity_inputs, require_calib, torch_outputs, verify

        if qparams is not None:
            gm = as_graph_module(qparams)
        elif quantize is None:
            raise ModelError(
                "target 'openvino' int8 (int8_params=ours) was given a float model and no quantizer: "
                "pass quantize=tinytamer.deploy.int8_quantizer or qparams=, deploy through "
                "tinytamer.deploy / `tamer deploy` (which quantize it), or use int8_params='nncf'"
            )
        else:
            batches = [as_inputs(b)[0] for b in require_calib(self.name, calib)]
            gm = quantize(copy.deepcopy(model).eval(), batches, calib_method)
        onnx_path = workdir / "model.int8.onnx"
        info: dict[str, Any] = {
            "export": export_qdq(gm, example_inputs, onnx_path),
            "int8_params": "ours (tinytamer.compress.int8)",
        }
        path = _save_ir(ov.Core().read_model(str(onnx_path)), workdir / "model.xml")
        onnx_path.unlink()
        info["export"].pop("path")
        deployed = self._deployed(path, "int8", example_inputs, threads, info)
        inputs = parity_inputs(example_inputs, calib)
        verify(deployed, gm, inputs, f"target 'openvino' (int8, our qparams, {path.name})")
        if model is not qparams:  # a float model was given: say how far the int8 one is from it
            ref = torch_outputs(model, inputs)[0]
            out = deployed(*[x.detach().numpy() for x in inputs])[0]
            if ref.ndim == 2 and ref.shape[1] > 1:
                deployed.parity["float_top1_agree"] = top1_agreement(ref, out)
        return deployed


register_target(OpenVinoTarget())
