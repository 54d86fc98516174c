"""The ``onnxruntime`` target: ONNX export + onnxslim, run by ONNX Runtime on the CPU.

fp32 runs the simplified export.  int8 is ONNX Runtime static quantization in QDQ
format with symmetric per-channel int8 weights and activations calibrated on real
samples of the task (``calib``).  With ``qparams`` (a converted
``tinytamer.compress.int8`` model) the QDQ file carries our own scales and zero points
instead (``tinytamer.export.qdq``), so the int8 model deployed is the one evaluated.

On x86 CPUs without VNNI, ORT's u8 x s8 kernels can saturate 16-bit intermediate
sums with full-range 8-bit weights (measured on a trained ResNet-8: top-1 agreement
with the float model fell from 0.99 to 0.91 dense and 0.80 pruned).  So ORT's own
calibration path quantizes weights to 7 bits (ORT's ``reduce_range``) on such CPUs,
and every int8 compile checks ORT's fused int8 kernels against the QDQ model they
implement (the same file run unoptimised, as dequantize -> float op -> quantize):
a disagreement stops the deployment and names the cause.  With our qparams,
``exact_int8`` stores the weights as uint8 (zero point 128), which cannot saturate.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinytamer.errors import TamerError
from tinytamer.fileio import atomic_path
from tinytamer.scoring import top1_agreement
from tinytamer.targets.base import Backend, Deployed, register_target

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tinytamer.targets.options import OrtOptions

# ORT calibration methods by our names (the int8 contract's vocabulary).
CALIB_METHODS = ("minmax", "percentile", "entropy")


BACKEND = Backend(
    "onnxruntime", ("onnxruntime", "onnxslim", "onnxscript"), "pip install onnxruntime onnxslim onnxscript"
)

# Fused int8 kernels must agree with the QDQ graph they implement on this many top-1s...
MIN_KERNEL_TOP1_AGREE = 0.98
# ...unless (7-bit weights) their outputs are within this share of its output range: then a
# flip is rounding between near-tied outputs (see judge_int8_kernels).
NEAR_TIE_REL_ERR = 0.02


def host_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX-512 VNNI or AVX-VNNI): u8 x s8 cannot saturate."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def default_reduce_range() -> bool:
    """7-bit weights where ORT's x86 u8 x s8 kernels saturate: x86 without VNNI."""
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i686") and not host_has_vnni()


def make_session(path: str | Path, threads: int, optimize: bool = True) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Unoptimised, a QDQ file runs as dequantize -> float op -> quantize: the reference
    # semantics that ORT's fused int8 kernels must reproduce.
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def load_runtime(threads: int, path: str) -> Any:
    """Open the ONNX file in a fresh process (memory probe)."""
    session = make_session(path, threads)
    names = [i.name for i in session.get_inputs()]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays, strict=True)))

    return run


class OrtDeployed(Deployed):
    def __init__(self, path: Path, **kw: Any) -> None:
        super().__init__(artifacts=[path], **kw)
        self.path = path
        self.session = make_session(path, self.threads)
        self.names = [i.name for i in self.session.get_inputs()]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.names, arrays, strict=True)))

    def probe_spec(self) -> dict[str, Any]:
        return {"loader": "tinytamer.targets.onnxrt:load_runtime", "args": {"path": str(self.path)}}

    def _timed_here(self, inputs: list[np.ndarray], threads: int, repeats: int, warmup: int) -> list[float]:
        from tinytamer.targets.base import time_calls

        session = self.session if threads == self.threads else make_session(self.path, threads)
        feed = dict(zip(self.names, inputs, strict=True))
        return time_calls(lambda: session.run(None, feed), repeats, warmup)


class _CalibReader:
    """ONNX Runtime's CalibrationDataReader protocol over our calibration batches."""

    def __init__(self, names: list[str], batches: Sequence[Any]) -> None:
        from tinytamer.targets._torchutil import as_inputs

        self._feeds = [dict(zip(names, [x.detach().numpy() for x in as_inputs(b)], strict=True)) for b in batches]
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calib: Sequence[Any],
    *,
    method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool = False,
) -> Path:
    """ORT static quantization (QDQ, per-channel symmetric int8 weights) of an ONNX file.

    ``reduce_range`` quantizes weights to 7 bits, which ORT's u8 x s8 kernels need on
    x86 CPUs without VNNI (see the module docstring).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise TamerError(
            f"unknown int8 calibration method '{method}' for target "
            f"'onnxruntime' (choose from {', '.join(CALIB_METHODS)})"
        )
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    # Shape inference + graph cleanup first, as ORT's quantization tool recommends.
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    names = [i.name for i in make_session(pre, 1).get_inputs()]
    with atomic_path(out_path) as tmp:
        quantize_static(
            str(pre),
            str(tmp),
            _CalibReader(names, calib),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            # u8 activations x s8 weights is ORT's fast path on x86 (AVX2/VNNI).
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            reduce_range=reduce_range,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    pre.unlink(missing_ok=True)
    return out_path


def check_int8_kernels(deployed: OrtDeployed, inputs: Sequence[torch.Tensor], where: str) -> dict[str, Any]:
    """ORT's fused int8 kernels against the QDQ model they implement; raise on disagreement.

    The unoptimised session computes what the QDQ file specifies; the optimised one is
    what is deployed.  They differ only by rounding unless a kernel saturates, which the
    float-model parity gate alone may let through on an easy input set.
    """
    arrays = [x.detach().numpy() for x in inputs]
    names = deployed.names
    ref = make_session(deployed.path, 1, optimize=False).run(None, dict(zip(names, arrays, strict=True)))
    return judge_int8_kernels(ref, deployed(*arrays), deployed.info.get("weight_bits"), where)


def judge_int8_kernels(
    ref: Sequence[np.ndarray], out: Sequence[np.ndarray], weight_bits: int | None, where: str
) -> dict[str, Any]:
    """The kernel check on outputs: ``out`` of the fused kernels against ``ref`` of the QDQ model.

    Both gates apply (top-1 agreement, relative error) except where the error itself rules
    out a kernel fault: 7-bit weights cannot saturate, and outputs within
    ``NEAR_TIE_REL_ERR`` of the QDQ model's can flip top-1 only where two outputs are that
    close (a pruned model before fine-tuning has many such inputs).  Then the flips are
    counted in the result (``top1_flips_near_ties``) instead of refusing the artifact."""
    from tinytamer.targets.base import ParityError, check_parity

    max_rel_err = 0.1
    rel = max(
        float(np.abs(np.asarray(o, np.float64) - r).max(initial=0.0)) / max(float(np.abs(r).max(initial=0.0)), 1e-12)
        for r, o in zip(ref, out, strict=True)
    )
    near_ties = weight_bits == 7 and rel <= NEAR_TIE_REL_ERR
    top1 = 0.0 if near_ties else MIN_KERNEL_TOP1_AGREE
    try:
        result = check_parity(
            ref,
            out,
            precision="int8",
            where=where,
            tolerances={"min_top1_agree": top1, "max_rel_err": max_rel_err},
            against="the unoptimised QDQ model",
        )
    except ParityError as exc:
        if weight_bits == 8:
            advice = (
                "on x86 CPUs without VNNI, u8 x s8 kernels saturate with 8-bit weights: "
                "compile with reduce_range=True (7-bit weights), or deploy our own int8 "
                "parameters with exact_int8=True."
            )
        elif weight_bits == 7:
            advice = (
                f"the weights are 7-bit, which rules out saturation, yet the error (relative "
                f"{rel:.3g}) is above the {NEAR_TIE_REL_ERR:g} that rounding between near-tied "
                "outputs explains: an ONNX Runtime kernel problem. Deploy our own int8 "
                "parameters with exact_int8=True, or fp32."
            )
        else:
            advice = f"relative error {rel:.3g}. Deploy our own int8 parameters with exact_int8=True, or fp32."
        raise ParityError(
            f"{exc} ONNX Runtime's fused int8 kernels disagree with the QDQ model they run; {advice}"
        ) from None
    if near_ties:
        result["top1_flips_near_ties"] = sum(
            int(round((1 - o["top1_agree"]) * o["n"])) for o in result["outputs"] if "top1_agree" in o
        )
    return result


class OrtTarget:
    name = "onnxruntime"
    precisions = ("fp32", "int8")
    install_hint = BACKEND.install

    def available(self) -> bool:
        return BACKEND.problem() is None

    def problem(self) -> TamerError | None:
        return BACKEND.problem()

    @property
    def Options(self) -> type[OrtOptions]:
        # Imported here: the memory probe child imports this module and must not pay for pydantic.
        from tinytamer.targets.options import OrtOptions

        return OrtOptions

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
        calib_method: str = "minmax",
        exact_int8: bool = True,
        reduce_range: bool | None = None,
        use_qparams: bool = True,
    ) -> OrtDeployed:
        """``use_qparams``: int8 of a model from the quantize stage (a quantized graph) keeps
        its scales / zero points, as if it were given as ``qparams``."""
        from tinytamer.export.onnx import export_onnx
        from tinytamer.qgraph import QuantizedGraph
        from tinytamer.targets._torchutil import as_inputs, parity_inputs, require_calib, verify

        BACKEND.require()
        if precision not in self.precisions:
            raise TamerError(
                f"target 'onnxruntime' does not support precision '{precision}' "
                f"(supported: {', '.join(self.precisions)})"
            )
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(model).eval()
        info: dict[str, Any] = {}
        if qparams is None and use_qparams and precision == "int8" and isinstance(model, QuantizedGraph):
            qparams = model
        if qparams is not None:
            if precision != "int8":
                raise TamerError(
                    f"target 'onnxruntime': qparams (our int8 parameters) need precision 'int8', not '{precision}'"
                )
            return self._compile_ours(model, qparams, example_inputs, workdir, calib, threads, exact_int8)
        if precision == "int8":
            calib = require_calib("onnxruntime", calib)
        path = workdir / "model.onnx"
        info["export"] = export_onnx(model, example_inputs, path)
        if precision == "int8":
            if reduce_range is None:
                reduce_range = default_reduce_range()
            path = quantize_int8(
                path, workdir / "model.int8.onnx", calib, method=calib_method, reduce_range=reduce_range
            )
            info["int8_params"] = f"onnxruntime static calibration ({calib_method})"
            info["calib_samples"] = sum(as_inputs(b)[0].shape[0] for b in calib)
            info["weight_bits"] = 7 if reduce_range else 8
        deployed = OrtDeployed(
            path,
            target=self.name,
            precision=precision,
            input_shapes=[tuple(x.shape[1:]) for x in example_inputs],
            input_dtypes=[str(x.detach().numpy().dtype) for x in example_inputs],
            threads=threads,
        )
        deployed.info.update(info)
        inputs = parity_inputs(example_inputs, calib)
        kernels = (
            check_int8_kernels(deployed, inputs, f"target 'onnxruntime' (int8, {path.name})")
            if precision == "int8"
            else None
        )
        verify(deployed, model, inputs, f"target 'onnxruntime' ({precision}, {path.name})")
        if kernels is not None:
            deployed.parity["kernels_vs_qdq"] = kernels
        return deployed

    def _compile_ours(
        self,
        model: nn.Module,
        qparams: Any,
        example_inputs: Sequence[torch.Tensor],
        workdir: Path,
        calib: Sequence[Any] | None,
        threads: int,
        exact: bool,
    ) -> OrtDeployed:
        """int8 with the scales / zero points of a converted tinytamer.compress.int8 model.

        Parity is checked against that fake-quantized model (the one that was
        evaluated); agreement with the float model is stated beside it.  ``exact``
        stores the weights as uint8 (zero point 128), which ORT runs with kernels that
        cannot saturate, so the outputs match ours on any x86 CPU; without it the
        (faster without VNNI) u8 x s8 kernels may not.
        """
        from tinytamer.export.qdq import export_qdq
        from tinytamer.targets._torchutil import parity_inputs, torch_outputs, verify

        path = workdir / "model.int8.onnx"
        info = {
            "export": export_qdq(qparams, example_inputs, path, unsigned_weights=exact),
            "int8_params": "ours (tinytamer.compress.int8)",
        }
        deployed = OrtDeployed(
            path,
            target=self.name,
            precision="int8",
            input_shapes=[tuple(x.shape[1:]) for x in example_inputs],
            input_dtypes=[str(x.detach().numpy().dtype) for x in example_inputs],
            threads=threads,
        )
        deployed.info.update(info)
        inputs = parity_inputs(example_inputs, calib)
        kernels = check_int8_kernels(deployed, inputs, f"target 'onnxruntime' (int8, our qparams, {path.name})")
        verify(deployed, qparams, inputs, f"target 'onnxruntime' (int8, our qparams, {path.name})")
        deployed.parity["kernels_vs_qdq"] = kernels
        if model is qparams:  # deployed straight from the quantized model: no float one
            return deployed
        ref = torch_outputs(model, inputs)[0]
        out = deployed(*[x.detach().numpy() for x in inputs])[0]
        if ref.ndim == 2 and ref.shape[1] > 1:
            deployed.parity["float_top1_agree"] = top1_agreement(ref, out)
        return deployed


register_target(OrtTarget())
