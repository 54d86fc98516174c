"""A compiled micro program: integer graph + generated C + a build for one device.

``build_program(gm, example_input, device, workdir)`` lowers a converted int8
GraphModule, generates the C sources and builds them for ``device``
("cortex-m4", "cortex-m7" or "host").  The program quantizes float N x C x H x W
inputs exactly as the model's input FakeQuantAct does (float32 divide, round
half to even, clamp), runs them through the reference, the host build, QEMU or
a unicorn :class:`~tinytamer.micro.session.Session`, and dequantizes the outputs
back to the PyTorch layout.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import fx

from tinytamer.errors import ModelError
from tinytamer.micro import codegen, reference, toolchain, weights
from tinytamer.micro.codegen import CModel
from tinytamer.micro.ir import Graph
from tinytamer.micro.lower import lower
from tinytamer.micro.session import DeviceTensor, Session
from tinytamer.qgraph import QuantWeight

DEVICES = ("cortex-m4", "cortex-m7", "host")


@dataclass
class MicroProgram:
    graph: Graph
    cmodel: CModel
    device: str
    workdir: Path
    arm: toolchain.ArmBuild | None = None
    host_exe: Path | None = None
    info: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ data layout
    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float [N, C, H, W] or [N, F] -> int8 [N, input_size] in the device layout."""
        t = self.graph.tensors[self.graph.input]
        x = np.asarray(x, dtype=np.float32)
        q = np.round(x / np.float32(t.scale)) + t.zero_point
        q = np.clip(q, -128, 127).astype(np.int8)
        if q.ndim == 4:
            q = q.transpose(0, 2, 3, 1)
        expect = (len(q), *t.shape)
        if q.shape != expect:
            raise ModelError(f"micro program: input of shape {x.shape} does not match the model's {t.shape} (HWC)")
        return np.ascontiguousarray(q.reshape(len(q), -1))

    def dequantize_output(self, q: np.ndarray) -> np.ndarray:
        """int8 [N, output_size] -> float in PyTorch's layout (maps back to C x H x W)."""
        t = self.graph.tensors[self.graph.output]
        y = (q.astype(np.float32) - t.zero_point) * np.float32(t.scale)
        y = y.reshape(len(q), *t.shape)
        return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y

    # ------------------------------------------------------------------ runners
    def run_reference(self, q: np.ndarray) -> np.ndarray:
        shape = self.graph.tensors[self.graph.input].shape
        return np.stack([reference.run(self.graph, r.reshape(shape)).reshape(-1) for r in q])

    def run_device(self, q: np.ndarray) -> np.ndarray:
        """Run int8 inputs on the built program (host executable or QEMU is not used here:
        Cortex-M programs run in an uncounted unicorn session, one call per input)."""
        if self.device == "host":
            return toolchain.host_run(self.host_exe, q, self.cmodel.output_size)
        with self.session(count=False) as sess:
            return self.run_in_session(sess, q)

    def session(self, *, count: bool = True, lazy: bool = False) -> Session:
        return Session(self.device, elf=self._elf(), count=count, lazy=lazy)

    def _elf(self) -> Path:
        if self.arm is None:
            raise ModelError(f"micro program for '{self.device}' has no Cortex-M build")
        return self.arm.elf

    def input_buffer(self, sess: Session) -> DeviceTensor:
        """Where an inference's input is written: its place in the arena
        (``tt_model_input()``, passed as ``in``: nothing is copied), or a session buffer for a
        program whose input is the caller's."""
        n, off = self.cmodel.input_size, self.cmodel.input_offset
        if off is None:
            return sess.alloc(n)
        return DeviceTensor(sess.symbols["tt_arena"] + off, n, np.dtype(np.int8), (n,))

    def run_in_session(self, sess: Session, q: np.ndarray) -> np.ndarray:
        t_in = self.input_buffer(sess)
        t_out = sess.alloc(self.cmodel.output_size)
        outs = []
        for row in q:
            sess.write(t_in, row)
            sess.call("tt_model_run", t_in, t_out)
            outs.append(sess.read(t_out))
        return np.stack(outs) if outs else np.zeros((0, self.cmodel.output_size), np.int8)

    def run_qemu(self, q: np.ndarray) -> np.ndarray:
        """Whole-program run on the QEMU board (inputs embedded in a fresh build)."""
        build = toolchain.arm_build(self.cmodel, self.workdir / "qemu", self.device, inputs=q)
        return toolchain.qemu_run(build, self.cmodel.output_size)

    def profile(self, q_row: np.ndarray, *, per_layer: bool = True, memory_profile: str = "ideal") -> dict:
        """Exact instructions and estimated cycles (under ``memory_profile``) per inference
        and per layer, the flash traffic behind them, and the inference's measured stack
        depth.  Layers run after the whole inference, so their caches start warm."""
        with Session(self.device, elf=self._elf(), count=True, profile=memory_profile) as sess:
            t_in = self.input_buffer(sess)
            t_out = sess.alloc(self.cmodel.output_size)
            sess.write(t_in, q_row)
            total = sess.call("tt_model_run", t_in, t_out)
            layers = []
            for fn, name in self.cmodel.layers if per_layer else []:
                r = sess.call(fn, t_in, t_out)
                layers.append({"layer": name, "instructions": r.instructions, "est_cycles": r.est_cycles})
        return {
            "instructions": total.instructions,
            "est_cycles": total.est_cycles,
            "memory_profile": total.memory_profile,
            "core_cycles": total.core_cycles,
            "memory_cycles": total.memory_cycles,
            "flash_reads": total.flash_reads,
            "fetch_misses": total.fetch_misses,
            "data_misses": total.data_misses,
            "stack_bytes": total.stack_bytes,
            "layers": layers,
        }


SCHEDULES = ("default", "portable", "tuned")
KERNELS = ("tinytamer", "cmsis-nn")


def build_program(
    gm: fx.GraphModule,
    example_input: torch.Tensor,
    device: str,
    workdir: str | Path,
    *,
    graph: Graph | None = None,
    schedules: str = "default",
    tuning_log: str | Path | None = None,
    kernels: str = "tinytamer",
    cmsis_nn_root: str | Path | None = None,
    memory_profile: str = "ideal",
    flash_budget: int | None = None,
) -> MicroProgram:
    """Lower (unless ``graph`` is given), schedule, generate C and build it for ``device``.

    ``schedules``: "default" (the DSP kernels where the device has them), "portable" (the
    portable C kernels everywhere: the untuned baseline) or "tuned" (measured per layer on
    the emulated device under ``memory_profile``, within ``flash_budget`` bytes of flash,
    :mod:`tinytamer.micro.tuning`, reusing ``tuning_log``).
    ``kernels`` "cmsis-nn" runs the ops CMSIS-NN can run bit-exactly with CMSIS-NN's kernels,
    built from the tree at ``cmsis_nn_root`` or ``$CMSIS_NN_ROOT`` (:mod:`tinytamer.micro.cmsis`).
    """
    if device not in DEVICES:
        raise ModelError(f"micro: unknown device '{device}'; choose one of {DEVICES}")
    if schedules not in SCHEDULES:
        raise ModelError(f"micro: schedules must be one of {SCHEDULES}, got '{schedules}'")
    if kernels not in KERNELS:
        raise ModelError(f"micro: kernels must be one of {KERNELS}, got '{kernels}'")
    backend = None
    if kernels == "cmsis-nn":
        from tinytamer.micro import cmsis

        backend = cmsis.backend(cmsis_nn_root, dsp=device != "host")  # the tree is checked first
    g = graph if graph is not None else lower(gm, example_input)
    d = Path(workdir)
    # Forms a caller set on its own graph stay as they are; lowering's choice is checked.
    reverted = {} if graph is not None or device == "host" else _codebooks_that_pay(g, gm, device, d, backend)
    tuning_report = None
    if schedules == "portable":
        for op in g.ops:
            op.schedule = {"kernel": "direct"}
    elif schedules == "tuned" and device != "host":
        from tinytamer.micro.tuning import tune

        tuning_report = tune(g, device, log=tuning_log, profile=memory_profile, flash_budget=flash_budget)
    cm = codegen.generate(g, dsp=device != "host", backend=backend)
    cm.write(d / "src")
    prog = MicroProgram(g, cm, device, d)
    if device == "host":
        prog.host_exe = toolchain.host_build(cm, d / "host")
    else:
        prog.arm = toolchain.arm_build(cm, d / device, device)
    prog.info["memory_plan"] = cm.plan.report(g)
    prog.info["schedules"] = schedules
    prog.info["kernels"] = kernels
    if cm.fallbacks:  # layers the backend left to tinytamer's kernels, and why
        prog.info["kernel_fallbacks"] = cm.fallbacks
    if tuning_report is not None:
        prog.info["tuning"] = tuning_report
    if reverted:
        prog.info["codebook_forms_reverted"] = reverted
    return prog


def _codebooks_that_pay(g: Graph, gm: fx.GraphModule, device: str, workdir: Path, backend: object) -> dict:
    """Keep each family of layers in a codebook form (the form and the kind of op: what
    decides the kernels they link) only where the linked image is smaller with it than with
    the family's layers in their plain forms: a codebook saves weight bytes but links kernels
    of its own (the shared convolution's are about 6 KB), which a small layer's saving may
    not pay for.  Measured by linking each variant (one build, plus one per family);
    returns the layers put back in their plain forms, by family."""
    families: dict[str, list] = {}
    for op in g.ops:
        if getattr(op, "weight_form", None) in weights.CODEBOOK_FORMS:
            kind = type(op).__name__ if getattr(op, "groups", 1) == 1 else f"grouped {type(op).__name__}"
            families.setdefault(f"{op.weight_form} {kind}", []).append(op)
    if not families:
        return {}
    w_bits = {name: m.w_bits for name, m in gm.named_modules() if isinstance(m, QuantWeight)}
    workdir.mkdir(parents=True, exist_ok=True)
    # A fresh folder of its own, so that removing the trial builds removes nothing else.
    builds = Path(tempfile.mkdtemp(prefix="codebook-forms-", dir=workdir))

    def flash(tag: str) -> int:
        cm = codegen.generate(g, dsp=True, backend=backend)
        return toolchain.arm_build(cm, builds / tag, device).flash_bytes

    best, reverted = flash("chosen"), {}
    for i, (family, ops) in enumerate(families.items()):
        chosen = [op.weight_form for op in ops]
        for op in ops:
            sparse = getattr(op, "groups", 1) == 1
            op.weight_form = weights.choose(op.weight, w_bits.get(op.name), sparse=sparse, codebooks=False)
        size = flash(f"plain-{i}")
        if size < best:
            best, reverted[family] = size, [op.name for op in ops]
        else:
            for op, form in zip(ops, chosen, strict=True):
                op.weight_form = form
    shutil.rmtree(builds, ignore_errors=True)  # the trial builds, inside this build's folder
    return reverted
