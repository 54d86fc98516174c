"""The bare-metal ``micro`` targets: generated C on an emulated Cortex-M4 / M7, or the host.

``compile`` quantizes the model to int8 (or takes the converted model given as
``qparams`` / as the model itself), lowers it to the integer graph, generates C
and builds it; it then checks that the device output equals the numpy integer
reference bit for bit (the host build for ``micro-host``; a unicorn session and
a whole-program QEMU run for Cortex-M) and that it agrees with PyTorch within
the int8 tolerance.  ``measure`` counts the exact instructions of one inference
(and of each layer), estimates cycles from the TRM-based table of
:mod:`tinytamer.micro.cost` under a memory profile (:mod:`tinytamer.micro.profiles`:
by default the board a user of that core most likely has, the ``ideal`` figure beside
it), and reads flash from the linked ELF.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import fx, nn

from tinytamer.errors import ModelError, TamerError
from tinytamer.fileio import write_atomic
from tinytamer.micro import schedule, toolchain
from tinytamer.micro.cost import CYCLE_TABLES
from tinytamer.micro.firmware import write_firmware
from tinytamer.micro.profiles import BOARD, PROFILES, get_profile
from tinytamer.micro.program import MicroProgram, build_program
from tinytamer.micro.tuning import default_flash_budget, tuning_table
from tinytamer.qgraph import as_graph_module, is_quantized, one_scale_layers
from tinytamer.targets._torchutil import Batch, as_inputs, parity_inputs, require_calib, verify
from tinytamer.targets.base import Cost, Deployed, ParityError, Quantizer, register_target
from tinytamer.targets.options import TargetOptions

# Test samples scored by default through an emulated device: about 24 ms each, so 1,000
# take half a minute where a whole 10,000-image test set took four minutes in silence.
EMULATED_EVAL_LIMIT = 1000
log = logging.getLogger(__name__)


class BudgetExceeded(TamerError):
    """The model does not fit the stated flash or SRAM budget."""


class MicroDeployed(Deployed):
    def __init__(
        self, program: MicroProgram, example: np.ndarray, *, memory_profile: str | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.program = program
        self.example = example  # the input measure() runs (costs barely depend on values)
        self.memory_profile = resolve_profile(program.device, memory_profile)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        q = self.program.quantize_input(arrays[0])
        return [self.program.dequantize_output(self.program.run_device(q))]

    def measure(
        self,
        batch: int = 1,
        threads: int | None = None,
        repeats: int = 1,
        warmup: int = 0,
        isolate: bool = False,
        timeout_s: float = 600.0,
    ) -> Cost:
        """Exact instruction count, estimated cycles and time (under ``memory_profile``),
        flash and peak SRAM of one inference."""
        p = self.program
        q = p.quantize_input(self.example)
        cost = Cost(
            target=self.target,
            precision="int8",
            batch=1,
            threads=1,
            repeats=repeats,
            artifact_bytes=self.artifact_bytes,
        )
        cost.extra["arena_bytes"] = p.cmodel.plan.arena_size
        cost.extra["memory_plan"] = p.cmodel.plan.report(p.graph)
        # Every arena buffer's place and lifetime (op indices), for the report's timeline.
        cost.extra["memory_buffers"] = [
            {"name": b.name, "offset": b.offset, "size": b.size, "first": b.first, "last": b.last}
            for b in p.cmodel.plan.buffers
        ]
        cost.extra["memory_ops"] = [op.name for op in p.graph.ops]
        cost.extra["macs"] = p.graph.macs()
        cost.extra["requant_fallback"] = self.info.get("requant_fallback", {})
        if p.device == "host":
            cost.sram_bytes = p.cmodel.plan.arena_size
            cost.extra["measured_in"] = "host build (no instruction counts)"
            return cost
        profile = get_profile(self.memory_profile, p.device)
        prof = p.profile(q[0], memory_profile=profile.name)
        cost.instructions = prof["instructions"]
        cost.est_cycles = prof["est_cycles"]
        cost.memory_profile = profile.name
        if profile.clock_hz is not None:  # the ideal profile is no part: it has no clock
            cost.est_time_ms = cost.est_cycles / profile.clock_hz * 1e3
        # Code + constants + .data's initial values, from the linked image (not the ELF
        # file, whose symbols and debug sections are no part of the model).
        cost.flash_bytes = p.arm.flash_bytes
        # The buffers one inference holds at its peak: the activation arena (the input
        # included), the output tensor and the stack depth measured in the run.
        cost.sram_bytes = p.cmodel.sram_bytes(prof["stack_bytes"])
        cost.extra.update(
            {
                "per_layer": prof["layers"],
                "sections": p.arm.sections,
                "cycle_table": CYCLE_TABLES[p.device].source,
                "memory_profile_source": profile.source,
                "est_cycles_ideal": prof["core_cycles"],
                "memory_cycles": prof["memory_cycles"],
                "flash_reads": prof["flash_reads"],
                "fetch_misses": prof["fetch_misses"],
                "data_misses": prof["data_misses"],
                "stack_bytes": prof["stack_bytes"],
                "io_bytes": p.cmodel.io_bytes,
                "input_in_arena": p.cmodel.input_offset is not None,
                "stack_reserved": p.arm.sections.get(".stack", 0),
                "sram_note": "activation arena (the input tensor included) + output tensor + measured peak stack",
                "measured_in": "unicorn emulator, block hooks + capstone (+ flash memory hooks)",
            }
        )
        return cost


class MicroOptions(TargetOptions):
    """Options of the micro targets (cortex-m4, cortex-m7, micro-host)."""

    calib_method: Literal["minmax", "percentile", "mse"] = Field(
        "minmax",
        description="how the int8 activation ranges are chosen (a float model is "
        "quantized here; a model from the quantize stage keeps its own)",
    )
    schedules: Literal["default", "portable", "tuned"] = Field(
        "default",
        description="kernels: default (DSP where the device has it), portable (plain "
        "C), tuned (measured per layer on the emulated device)",
    )
    flash_budget: int | None = Field(
        None,
        description="refuse a program larger than this "
        "many bytes of flash; schedules=tuned keeps within it "
        "(default there: the profile's part flash less 10%)",
    )
    sram_budget: int | None = Field(None, description="refuse a program needing more than this many bytes of SRAM")
    memory_profile: str | None = Field(
        None,
        description="memory profile the cycle estimates are made under: "
        f"{', '.join(PROFILES)} (default: the board of the core, "
        f"{', '.join(f'{k}: {v}' for k, v in BOARD.items())}; ideal: zero-wait flash)",
    )

    @field_validator("memory_profile")
    @classmethod
    def _known_profile(cls, v: str | None) -> str | None:
        if v is not None and v not in PROFILES:
            raise ValueError(f"unknown memory profile '{v}'; choose one of {sorted(PROFILES)}")
        return v

    kernels: Literal["tinytamer", "cmsis-nn"] = Field(
        "tinytamer",
        description="kernel backend: tinytamer's own, or Arm CMSIS-NN's s8 kernels "
        "(same graph and memory plan; ops CMSIS-NN would round differently keep ours) built "
        "from the tree at cmsis_nn_root",
    )
    cmsis_nn_root: str | None = Field(
        None,
        description="CMSIS-NN source tree for kernels: cmsis-nn (default: "
        "$CMSIS_NN_ROOT); never copied into the output",
    )


def resolve_profile(device: str, name: str | None) -> str:
    """The memory profile ``name`` checked against ``device``'s core, or by default the
    board a user of that core most likely has: a deploy reports that board's figure, not
    that of a flash without wait states."""
    if name is None:
        return BOARD.get(device, "ideal")
    return get_profile(name, None if device == "host" else device).name


class MicroTarget:
    """Generated C for one device: ``cortex-m4``, ``cortex-m7`` or ``micro-host``."""

    precisions = ("int8",)
    install_hint = toolchain.INSTALL_HINT
    takes_quantizer = True  # a float model is quantized with the caller's quantizer
    Options = MicroOptions

    def __init__(self, name: str, device: str) -> None:
        self.name = name
        self.device = device
        # Read by deploy/bench: the host build runs at native speed, the emulator does not.
        self.default_eval_limit = None if device == "host" else EMULATED_EVAL_LIMIT

    def available(self) -> bool:
        if self.device == "host":
            return shutil.which("gcc") is not None
        return toolchain.arm_available() and toolchain.qemu_available()

    def compile(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor],
        workdir: str | Path,
        *,
        precision: str = "int8",
        calib: Sequence[Batch] | None = None,
        qparams: Any = None,
        threads: int = 1,
        flash_budget: int | None = None,
        sram_budget: int | None = None,
        calib_method: str = "minmax",
        schedules: str = "default",
        tuning_log: str | Path | None = None,
        memory_profile: str | None = None,
        kernels: str = "tinytamer",
        cmsis_nn_root: str | None = None,
        quantize: Quantizer | None = None,
    ) -> MicroDeployed:
        if precision != "int8":
            raise TamerError(f"target '{self.name}' runs int8 only (asked for '{precision}')")
        if len(example_inputs) != 1:
            raise TamerError(f"target '{self.name}' supports one model input, got {len(example_inputs)}")
        if self.device != "host" and not self.available():
            toolchain.require("arm-none-eabi-gcc")
            toolchain.require("qemu-system-arm")
        # gcc, QEMU and the emulator get absolute paths: a relative one is read against
        # their working directory, and one starting with '-' would read as an option.
        workdir = Path(workdir).resolve()
        profile = resolve_profile(self.device, memory_profile)  # a wrong name fails first
        gm = _quantized(self.name, model, calib, qparams, calib_method, quantize)
        # The tuner keeps within the flash budget: the one given, else the part's flash less
        # a reserve for the user's firmware (tuning.FLASH_RESERVE).
        tune_budget = flash_budget
        if tune_budget is None and schedules == "tuned" and self.device != "host":
            tune_budget = default_flash_budget(self.device, profile)
        program = build_program(
            gm,
            example_inputs[0][:1],
            self.device,
            workdir,
            schedules=schedules,
            tuning_log=tuning_log,
            kernels=kernels,
            cmsis_nn_root=cmsis_nn_root,
            memory_profile=profile,
            flash_budget=tune_budget,
        )
        _check_budget(self.name, program, flash_budget, sram_budget)

        inputs = parity_inputs(example_inputs, calib)
        q = program.quantize_input(inputs[0].detach().numpy())
        want = program.run_reference(q)
        got = program.run_device(q)
        info: dict[str, Any] = {
            "bit_exact_inputs": len(q),
            "memory_plan": program.info,
            "requant_fallback": _requant_fallback(self.name, program),
            # Layers quantized with one weight scale (shared weights: one codebook each).
            "one_scale_layers": one_scale_layers(gm),
        }
        if not np.array_equal(want, got):
            raise ParityError(
                f"target '{self.name}': the device output differs from the integer reference (bit-exact check)"
            )
        if self.device != "host":
            few = q[:4]
            if not np.array_equal(program.run_qemu(few), want[:4]):
                raise ParityError(
                    f"target '{self.name}': the QEMU whole-program run differs from the integer reference"
                )
            info["qemu_bit_exact_inputs"] = len(few)
        # The folder a user's firmware takes (micro/firmware.py), once the program is verified.
        if program.info.get("kernels") == "cmsis-nn":
            # The folder carries tinytamer's kernel sources only: a CMSIS-NN build would not
            # compile on its own from it, so none is written, and the deploy says so.
            info["firmware"] = None
            info["firmware_note"] = (
                "not written: the firmware folder carries tinytamer's kernels only; deploy with "
                "kernels=tinytamer for a self-contained folder"
            )
            warnings.warn(f"target '{self.name}': kernels=cmsis-nn writes no firmware folder", stacklevel=2)
        else:
            info["firmware"] = str(write_firmware(program, workdir / "firmware", q[0]).folder)
        artifacts = [program.workdir / "src" / "model.c", program.workdir / "src" / "model.h"]
        if "tuning" in program.info:
            artifacts.append(_tuning_artifact(program, workdir, tune_budget))
        if program.arm is not None:
            artifacts.append(program.arm.elf)
        deployed = MicroDeployed(
            program,
            example_inputs[0][:1].detach().numpy().astype(np.float32),
            memory_profile=profile,
            target=self.name,
            precision="int8",
            artifacts=artifacts,
            input_shapes=[tuple(example_inputs[0].shape[1:])],
            input_dtypes=["float32"],
            threads=1,
        )
        deployed.info.update(info)
        verify(deployed, gm, inputs, f"target '{self.name}'")
        return deployed


def _quantized(
    name: str,
    model: nn.Module,
    calib: Sequence[Batch] | None,
    qparams: Any,
    method: str,
    quantize: Quantizer | None,
) -> fx.GraphModule:
    """The converted int8 GraphModule: given, the model itself, or ``quantize`` on ``calib``."""
    if isinstance(qparams, fx.GraphModule):
        return qparams
    if is_quantized(model):  # what a `quantize` stage leaves: deploy it as evaluated
        return as_graph_module(model)
    batches = [as_inputs(b)[0] for b in require_calib(name, calib)]
    if quantize is None:
        raise ModelError(
            f"target '{name}' runs an int8 model and was given a float one: quantize it first "
            "(tinytamer.compress.int8.quantize), pass quantize=tinytamer.deploy.int8_quantizer, "
            "or deploy through tinytamer.deploy.deploy / `tamer deploy`, which quantize it"
        )
    return quantize(copy.deepcopy(model).eval(), batches, method)


def _tuning_artifact(program: MicroProgram, workdir: Path, budget: int | None) -> Path:
    """tuning.json: each tuned layer's cycles-vs-flash choices and the one taken; the same
    as a short table in the log."""
    report = program.info["tuning"]
    path = workdir / "tuning.json"
    write_atomic(path, json.dumps({"flash_budget": budget, "layers": report}, indent=1))
    log.info(
        "micro tuning (est. cycles under %s, flash budget %s bytes):\n%s",
        next(iter(report.values()), {}).get("memory_profile", "ideal"),
        budget,
        tuning_table(report),
    )
    return path


def _requant_fallback(name: str, program: MicroProgram) -> dict[str, int]:
    """{layer: channels} requantized in the general form inside a fast kernel; each such
    layer is warned about (it costs cycles the layer's other channels do not)."""
    fallback = schedule.requant_fallback(program.graph, program.device != "host")
    for layer, n in fallback.items():
        warnings.warn(
            f"target '{name}': layer '{layer}' requantizes {n} channel(s) in the "
            "general form (multiplier >= 0.5 or too small for the single-multiply "
            "form); its other channels keep the fast form",
            stacklevel=3,
        )
    return fallback


def _check_budget(name: str, program: MicroProgram, flash: int | None, sram: int | None) -> None:
    if program.arm is None:
        used_flash, used_sram = None, program.cmodel.plan.arena_size
    else:
        used_flash, used_sram = program.arm.flash_bytes, program.arm.sram_bytes
    plan = program.cmodel.plan.report(program.graph)
    if flash is not None and used_flash is not None and used_flash > flash:
        raise BudgetExceeded(
            f"target '{name}': the model needs {used_flash} bytes of flash, over the budget of {flash}"
        )
    if sram is not None and used_sram > sram:
        raise BudgetExceeded(
            f"target '{name}': the model needs {used_sram} bytes of SRAM, over the budget of {sram} ({plan})"
        )


register_target(MicroTarget("cortex-m4", "cortex-m4"))
register_target(MicroTarget("cortex-m7", "cortex-m7"))
register_target(MicroTarget("micro-host", "host"))
