"""Cost lookup tables measured on a target, and whole-model predictions from them.

A :class:`CostTable` holds the cost of single layers (fused ops at one shape, one kernel and
one weight precision) measured on one target, so that a search can price a candidate by a
sum instead of a deployment.  It is built by measuring, never by formulas:

- ``cortex-m4`` / ``cortex-m7``: the model is quantized, lowered and built for the emulated
  core (:mod:`tinytamer.micro.program`); one counted inference gives every layer's exact
  instructions and its cycles estimated under a memory profile (the board's by default,
  :data:`tinytamer.micro.profiles.BOARD`; a cycle figure always names its profile); the
  linked ELF gives each layer's flash (its constants and its ``tt_layer_<i>`` function);
  the memory plan gives its SRAM working set (input + output + kernel scratch).
- ``onnxruntime`` (any host target with latency): each layer is exported alone as a
  single-op model and timed (:func:`tinytamer.targets.base.time_calls`).

**Keys.** One layer's key is ``|``-joined ``name=value`` fields in a fixed order, the op
first (:func:`make_key`)::

    conv2d+add|in=16x16x8|out=16x16x8|k=3x3|s=1x1|p=1x1|g=1|bits=int8|sched=kernel:mm,pack:flat

``op`` is the fused op (``conv2d``, ``conv2d+add`` for a residual add run inside the
convolution, ``conv2d+bn+relu`` for ONNX Runtime's fusion, ``dense``, ``maxpool``, ...);
``in``/``out`` the shapes of one sample (HWC on the micro path, CHW on host targets); ``k``,
``s``, ``p``, ``g`` kernel, stride, padding and groups (``-`` where the op has none); ``bits``
the weight precision as the target stores it: on the micro path the weight form of
:mod:`tinytamer.micro.weights` (``int8``, ``int4``, ``int2``, ``shared<b>`` with its index
bits and ``/ch`` for a codebook per channel, ``sparse`` with its non-zero count), on host
targets the precision (``fp32``); ``sched`` the resolved kernel schedule, ``knob:value``
pairs (it changes the cycles; ``-`` where the op has no knobs), plus ``clamp:narrow`` for a
convolution whose output range is less than the whole int8 range.  Activations are stored
in int8 on the micro path whatever their bits, so their bits key nothing but that: below 8
bits (or any output range short of int8's) the convolution kernels take a slower requantization
path, measured 8% more instructions on a 3x3 convolution.

**Per-run overhead of a single-op model (host targets).** Every ``session.run`` pays a
fixed cost (feeding the input, allocating the output, the run's setup) that a single-op model
pays once *per layer* but a whole model pays once: summed raw, the entries count it once per
layer (measured on a 2-core x86 host: 7.5 us each, against 14-17 us for small conv layers,
so a five-layer model was predicted at 2.4x its latency).  So a host table first times the
smallest model there is (a ReLU on a one-element input, :func:`measure_run_overhead`),
keeps it as ``per_run_overhead``, and stores each layer's single-op time *minus* it (never
below 0; the raw time stays beside it as ``latency_ms_single``).  What a whole model costs
beyond its corrected layers (the run overhead, paid once, plus functional ops such as
``x + y`` that are no layer) is its per-model overhead, added once to a prediction: with
three or more measured models, by a line fitted over them (whole = a + b x the sum of its
layers: layers run faster inside a whole model than alone, with warm caches and ONNX
Runtime's layout reorders paid once: b = 0.7-0.85 measured on small CNNs), else their median.

**Per-model overhead.** What a whole inference costs beyond its layers (the calls of
``tt_model_run``; on ONNX Runtime the run's fixed cost, see above) is measured per model: the
whole-model figure minus the sum of its layers, kept per model in the table and applied to
new models per layer (cycles, instructions), once (latency on host targets), or by the set of kernels the program
links (flash: a kernel's code is shared by all its layers, so it is no layer's cost: each
measured model records the code it links, function by function, and a new model is charged
the functions that came with each of its kernels).  SRAM is a peak, not a sum: it is planned
exactly from the lowered graph (arena + input and output) plus the stack measured in the
table's models; each entry's ``sram_bytes`` is the layer's own working set, for reading.

**Cache state.** Under a board profile a layer's cycles depend on the flash caches it
inherits.  Layers are measured right after a whole inference, each after the layer that
precedes it in the model (:meth:`MicroProgram.profile`), so a layer meets the caches the
model leaves it; the whole-model figure of a deployment is a first, cold inference, and the
difference (the cold misses) lands in the model's overhead.  The caches of the boards we
model hold 1 KB of code and 256 bytes of data: a layer's inheritance from a different
predecessor moves its cycles by at most a few cache refills.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from tinytamer.errors import CorruptFileError, TamerError
from tinytamer.fileio import read_json, write_atomic

FORMAT = "tinytamer-cost-table"
VERSION = 2  # 2: host entries net of the per-run overhead
MICRO_TARGETS = {"cortex-m4": "cortex-m4", "cortex-m7": "cortex-m7"}
# Host targets priced by timing single-op models: the metric a table of them holds.
HOST_TARGETS = ("onnxruntime", "pytorch")
KEY_FIELDS = ("op", "in", "out", "k", "s", "p", "g", "bits", "sched")
MICRO_METRICS = ("instructions", "est_cycles", "flash_bytes", "sram_bytes")
HOST_METRICS = ("latency_ms",)


class CostTableError(TamerError):
    """A cost table that cannot be used: wrong file, another target, a damaged entry."""


# ---------------------------------------------------------------------------- keys
def _dims(v: Sequence[int] | None) -> str:
    return "-" if v is None else "x".join(str(int(x)) for x in v)


def make_key(
    op: str,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    *,
    kernel: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    padding: Sequence[int] | None = None,
    groups: int | None = None,
    bits: str = "-",
    schedule: dict[str, Any] | None = None,
) -> str:
    """The documented key of one layer (see the module docstring for its fields)."""
    sched = ",".join(f"{k}:{v}" for k, v in (schedule or {}).items()) or "-"
    values = (
        op,
        _dims(in_shape),
        _dims(out_shape),
        _dims(kernel),
        _dims(stride),
        _dims(padding),
        "-" if groups is None else str(groups),
        bits,
        sched,
    )
    return "|".join(v if name == "op" else f"{name}={v}" for name, v in zip(KEY_FIELDS, values, strict=True))


def parse_key(key: str) -> dict[str, str]:
    """The fields of a key; CostTableError when it is not one."""
    parts = key.split("|")
    if len(parts) != len(KEY_FIELDS) or not parts[0]:
        raise CostTableError(f"not a cost-table key: '{key[:200]}'")
    out = {"op": parts[0]}
    for name, part in zip(KEY_FIELDS[1:], parts[1:], strict=True):
        head, sep, value = part.partition("=")
        if head != name or not sep:
            raise CostTableError(f"cost-table key '{key[:200]}': expected field '{name}'")
        out[name] = value
    return out


# ---------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """The machine the table was measured on (host targets' figures are its figures)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------------------- the table
@dataclass
class CostTable:
    """Per-layer costs measured on one target, and the per-model overheads measured with them.

    ``entries``: key -> metrics (``instructions``, ``est_cycles``, ``flash_bytes``,
    ``sram_bytes`` on micro targets; ``latency_ms`` on host targets) plus ``model``, the
    model it was first measured in.  ``overheads``: one record per measured model (its name,
    layer count, kernels and the whole-model figure minus its layers, metric by metric).
    ``per_run_overhead``: host targets: the fixed cost of one run, already subtracted from
    every entry (see the module docstring); empty until measured.
    """

    target: str
    memory_profile: str | None = None
    machine: dict[str, Any] = field(default_factory=machine)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    overheads: list[dict[str, Any]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # configurations built (resume skips them)
    per_run_overhead: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> tuple[str, ...]:
        return MICRO_METRICS if self.target in MICRO_TARGETS else HOST_METRICS

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "target": self.target,
            "memory_profile": self.memory_profile,
            "machine": self.machine,
            "key_fields": list(KEY_FIELDS),
            "entries": self.entries,
            "overheads": self.overheads,
            "done": self.done,
            "per_run_overhead": self.per_run_overhead,
        }

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON, atomically (an interrupted write keeps the old file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, target: str | None = None) -> CostTable:
        """Read a table, checking its format, fields and (if given) that it is ``target``'s."""
        data = read_json(path, "cost table")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CorruptFileError(f"{path} is not a tinytamer cost table")
        version = data.get("version")
        if version not in (1, VERSION):
            raise CorruptFileError(f"cost table {path} has version {version!r}; this tinytamer reads version {VERSION}")
        name = data.get("target")
        if not isinstance(name, str) or (name not in MICRO_TARGETS and name not in HOST_TARGETS):
            raise CorruptFileError(f"cost table {path}: unknown target {name!r}")
        if version == 1 and name in HOST_TARGETS:
            # Version 1 host entries include the per-run overhead once per layer.
            raise CostTableError(
                f"cost table {path} (version 1) counts the '{name}' run overhead per layer: rebuild it with `tamer lut`"
            )
        if target is not None and name != target:
            raise CostTableError(f"cost table {path} was measured on '{name}', not '{target}'")
        table = cls(name, data.get("memory_profile"), data.get("machine") or {})
        entries, overheads = data.get("entries"), data.get("overheads")
        if not isinstance(entries, dict) or not isinstance(overheads, list):
            raise CorruptFileError(f"cost table {path}: 'entries' or 'overheads' missing")
        for key, entry in entries.items():
            parse_key(key)
            if not isinstance(entry, dict) or not all(isinstance(entry.get(m), int | float) for m in table.metrics):
                raise CorruptFileError(f"cost table {path}: entry '{key}' lacks {', '.join(table.metrics)}")
        for rec in overheads:
            if (
                not isinstance(rec, dict)
                or not isinstance(rec.get("layers"), int)
                or not all(isinstance(rec.get(m), int | float) for m in table.metrics)
            ):
                raise CorruptFileError(f"cost table {path}: a damaged overhead record")
        done = data.get("done", [])
        if not isinstance(done, list) or not all(isinstance(d, str) for d in done):
            raise CorruptFileError(f"cost table {path}: 'done' is not a list of names")
        per_run = data.get("per_run_overhead", {})
        if not isinstance(per_run, dict) or not all(
            k in table.metrics and isinstance(v, int | float) and v >= 0 for k, v in per_run.items()
        ):
            raise CorruptFileError(f"cost table {path}: a damaged 'per_run_overhead'")
        table.entries, table.overheads, table.done, table.per_run_overhead = entries, overheads, done, per_run
        return table

    @classmethod
    def open(cls, path: str | Path, target: str, memory_profile: str | None = None) -> CostTable:
        """The table at ``path`` if it exists (resuming a build), else a new one."""
        if Path(path).exists():
            table = cls.load(path, target)
            if memory_profile is not None and table.memory_profile != memory_profile:
                raise CostTableError(
                    f"cost table {path} holds cycles under memory profile "
                    f"'{table.memory_profile}', not '{memory_profile}'"
                )
            return table
        return cls(target, memory_profile if target in MICRO_TARGETS else None)

    def add(self, m: Measured, name: str) -> list[str]:
        """Add a measured model's layers (those not yet known) and its overhead; the new keys.

        A layer left unmeasured (empty ``metrics``: the table knew it) counts at its entry.
        """
        new = []
        for layer in m.layers:
            if layer.key not in self.entries:
                if not layer.metrics:
                    raise CostTableError(f"cost table: layer '{layer.name}' was not measured and is not in the table")
                self.entries[layer.key] = {**layer.metrics, "model": name}
                new.append(layer.key)
        cost = [la.metrics or self.entries[la.key] for la in m.layers]
        rec = {
            "model": name,
            "layers": len(m.layers),
            "kernels": m.kernels,
            "code": m.code,
            **{k: m.total[k] - sum(c[k] for c in cost) for k in self.metrics},
        }
        if "sram_bytes" in m.total:  # the part of the peak no plan can tell: the stack
            rec["sram_bytes"] = m.stack_bytes
        if "latency_ms" in m.total:  # the x of the overhead line (_overhead_line)
            rec["layers_latency_ms"] = sum(c["latency_ms"] for c in cost)
        self.overheads = [r for r in self.overheads if r.get("model") != name] + [rec]
        return new


# ---------------------------------------------------------------------------- layers
@dataclass
class Layer:
    """One layer of a model as the table sees it: its name, key and (once measured) cost."""

    name: str
    key: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Measured:
    """A whole model measured on a target: the whole-model figures and its layers'."""

    total: dict[str, float]
    layers: list[Layer]
    kernels: list[str]
    code: dict[str, int] = field(default_factory=dict)  # flash functions no layer owns
    stack_bytes: int = 0


# ---- micro ------------------------------------------------------------------------
def _quantized(model: nn.Module, example: torch.Tensor, calib: Sequence[torch.Tensor] | None) -> fx.GraphModule:
    from tinytamer.qgraph import as_graph_module, is_quantized

    if isinstance(model, fx.GraphModule) and is_quantized(model):
        return model
    if is_quantized(model):
        return as_graph_module(model)
    from tinytamer.compress.int8 import quantize_ptq

    return quantize_ptq(copy.deepcopy(model).eval(), list(calib or _random_calib(example)))


def _random_calib(example: torch.Tensor) -> list[torch.Tensor]:
    # Costs do not depend on the values, only (through the kernel choice) on the scales:
    # seeded inputs give the same table on every run.
    g = torch.Generator().manual_seed(0)
    return [torch.randn((8, *example.shape[1:]), generator=g) for _ in range(2)]


def _form(op: Any) -> str:
    from tinytamer.micro import weights

    form = getattr(op, "weight_form", "int8")
    if form == "int8" or form not in weights.FORMS:
        return form
    packed = weights.pack(op.weight, form)
    if form == "shared":
        return f"shared{packed.bits}" + ("/ch" if packed.cb_stride else "")
    return form


def micro_layers(g: Any, dsp: bool) -> list[tuple[int, str, str]]:
    """(op index, layer name, key) of every layer the generated C runs, in order.

    Mirrors :func:`tinytamer.micro.codegen.generate`: reshapes alias their input and a
    residual add fused into its convolution runs inside it (its op is ``conv2d+add``).
    """
    from tinytamer.micro.ops import op_def
    from tinytamer.micro.planner import find_fusions

    fused = find_fusions(g)
    skip = set(fused.values())
    out = []
    for i, op in enumerate(g.ops):
        if op_def(op).aliases_input or i in skip:
            continue
        kind = type(op).__name__.lower()
        add = fused.get(i)
        out_t = g.tensors[g.ops[add].output if add is not None else op.output]
        kw: dict[str, Any] = {}
        if hasattr(op, "weight") and kind == "conv2d":
            kw = {"kernel": op.weight.shape[1:3], "stride": op.stride, "padding": op.padding, "groups": op.groups}
        elif hasattr(op, "kernel"):
            kw = {"kernel": op.kernel, "stride": op.stride, "padding": getattr(op, "padding", None)}
        bits = _form(op) if hasattr(op, "weight") else "-"
        sched = dict(op_def(op).resolve(op, dsp))
        if kind == "conv2d" and _narrow_clamp(op, g.ops[add] if add is not None else None):
            sched["clamp"] = "narrow"
        if sched.get("kernel") == "sparse":
            bits = f"sparse{int(np.count_nonzero(op.weight))}"
        key = make_key(
            kind + ("+add" if add is not None else ""),
            g.tensors[op.inputs[0]].shape,
            out_t.shape,
            bits=bits,
            schedule=sched,
            **kw,
        )
        name = op.name if add is None else f"{op.name}+{g.ops[add].name}"
        out.append((i, name, key))
    return out


def _narrow_clamp(op: Any, add: Any) -> bool:
    """Whether a convolution clamps its output (or its fused add's) to less than the whole
    int8 range (activations below 8 bits, for one).  The convolution
    kernels pick a slower requantization path for it (``tt_mm_mode``), so it keys a layer."""
    return any((o.act_min, o.act_max) != (-128, 127) for o in (op, add) if o is not None)


def _flash_symbols(elf: Path) -> dict[str, int]:
    nm = shutil.which("arm-none-eabi-nm")
    if nm is None:
        from tinytamer.micro import toolchain

        toolchain.require("arm-none-eabi-nm")
    proc = subprocess.run([nm, "-S", str(elf)], capture_output=True, text=True, check=True)
    sizes = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "TtRr":  # code and constants: flash
            sizes[parts[3]] = int(parts[1], 16)
    return sizes


_CONST = re.compile(r"([a-z]+)(\d+)")


def measure_micro(
    gm: fx.GraphModule, example: torch.Tensor, device: str, workdir: str | Path, memory_profile: str
) -> Measured:
    """Build ``gm`` for ``device`` and measure it: whole model and every layer.

    The whole-model figures are those :meth:`MicroDeployed.measure` reports (a first
    inference; flash from the linked image; arena + I/O + measured stack).
    """
    from tinytamer.micro import schedule
    from tinytamer.micro.planner import find_fusions
    from tinytamer.micro.program import build_program

    prog = build_program(gm, example[:1], device, workdir)
    q = prog.quantize_input(example[:1].detach().numpy().astype(np.float32))
    prof = prog.profile(q[0], memory_profile=memory_profile)
    g, cm = prog.graph, prog.cmodel
    keyed = micro_layers(g, dsp=True)
    if [f"tt_layer_{i}" for i, _, _ in keyed] != [fn for fn, _ in cm.layers]:
        raise TamerError(
            "cost table: the generated layers differ from the keyed ones (micro_layers no longer mirrors codegen)"
        )
    sizes = _flash_symbols(prog.arm.elf)
    owner = {i: i for i, _, _ in keyed}
    owner.update({a: c for c, a in find_fusions(g).items()})
    flash = {i: 0 for i, _, _ in keyed}
    code = {}
    for sym, size in sizes.items():
        m = _CONST.fullmatch(sym) or re.fullmatch(r"(tt_layer_)(\d+)", sym)
        if m and int(m.group(2)) in owner:
            flash[owner[int(m.group(2))]] += size
        else:
            code[sym] = size
    layers = []
    for (i, name, key), rec in zip(keyed, prof["layers"], strict=True):
        op = g.ops[i]
        work = (
            sum(g.tensors[t].size for t in op.inputs)
            + g.tensors[op.output].size
            + (schedule.scratch_bytes(g, op, True) if i in cm.plan.scratch else 0)
        )
        layers.append(
            Layer(
                name,
                key,
                {
                    "instructions": rec["instructions"],
                    "est_cycles": rec["est_cycles"],
                    "flash_bytes": flash[i],
                    "sram_bytes": work,
                },
            )
        )
    io = cm.input_size + cm.output_size
    total = {
        "instructions": prof["instructions"],
        "est_cycles": prof["est_cycles"],
        "flash_bytes": prog.arm.flash_bytes,
        "sram_bytes": cm.plan.arena_size + io + prof["stack_bytes"],
    }
    kernels = sorted({_kernel_id(key) for _, _, key in keyed})
    return Measured(total, layers, kernels, code, prof["stack_bytes"])


def _kernel_id(key: str) -> str:
    f = parse_key(key)
    return f"{f['op']}:{f['sched']}"


# ---- host targets -------------------------------------------------------------------
def host_layers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor, str]]:
    """(name, single-op module, its input, key) of each layer, in execution order.

    A layer is a leaf module that computes (conv, linear, pool, norm, activation); a
    convolution followed by its batch norm and / or ReLU is one layer, as ONNX Runtime
    fuses them.  Functional ops (``x + y``, ``torch.flatten``) are no layer: their time
    lands in the per-model overhead.
    """
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = []
    names = {m: n for n, m in model.named_modules()}
    for m in model.modules():
        if not list(m.children()) and not isinstance(m, nn.Identity | nn.Dropout | nn.Flatten):
            hooks.append(m.register_forward_hook(lambda mod, inp, out: calls.append((names[mod], mod, inp[0], out))))
    try:
        with torch.inference_mode():
            model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    layers: list[tuple[str, list[nn.Module], torch.Tensor, torch.Tensor]] = []
    for name, mod, x, y in calls:
        prev = layers[-1] if layers else None
        fusable = isinstance(mod, nn.BatchNorm2d | nn.ReLU | nn.ReLU6)
        if (
            prev is not None
            and fusable
            and prev[3] is x
            and isinstance(prev[1][0], nn.Conv2d)
            and not any(isinstance(p, type(mod)) for p in prev[1][1:])
        ):
            layers[-1] = (f"{prev[0]}+{name}", [*prev[1], mod], prev[2], y)
        else:
            layers.append((name, [mod], x, y))
    out = []
    for name, mods, x, y in layers:
        head = mods[0]
        op = "+".join(_host_op(m) for m in mods)
        kw: dict[str, Any] = {}
        if isinstance(head, nn.Conv2d):
            kw = {"kernel": head.kernel_size, "stride": head.stride, "padding": head.padding, "groups": head.groups}
        elif isinstance(head, nn.MaxPool2d | nn.AvgPool2d):
            kw = {"kernel": _pair(head.kernel_size), "stride": _pair(head.stride), "padding": _pair(head.padding)}
        key = make_key(op, x.shape[1:], y.shape[1:], bits="fp32", **kw)
        out.append((name, nn.Sequential(*(copy.deepcopy(m) for m in mods)).eval(), x.detach().clone(), key))
    return out


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _host_op(m: nn.Module) -> str:
    return {"BatchNorm2d": "bn", "ReLU": "relu", "ReLU6": "relu6"}.get(type(m).__name__, type(m).__name__.lower())


def _time_host(target: Any, module: nn.Module, x: torch.Tensor, workdir: Path, repeats: int) -> float:
    dep = target.compile(module, [x], workdir, precision="fp32", calib=[x], threads=1)
    cost = dep.measure(batch=1, threads=1, repeats=repeats, warmup=max(3, repeats // 10), isolate=False)
    # The fastest run: the least disturbed by other processes on a shared machine.
    return float(cost.latency_ms_min)


def measure_run_overhead(target: Any, workdir: str | Path, repeats: int = 200) -> float:
    """The fixed cost (ms) of one run on a host target: the time of the smallest model there
    is, a ReLU on a one-element input (its op is a few nanoseconds of it)."""
    return _time_host(target, nn.ReLU(), torch.zeros(1, 1), Path(workdir) / "run_overhead", repeats)


def measure_host(
    model: nn.Module,
    example: torch.Tensor,
    target: Any,
    workdir: str | Path,
    only: set[str] | None = None,
    repeats: int = 50,
    progress: Callable[[str], None] | None = None,
    per_run: float = 0.0,
) -> Measured:
    """Time the whole model and each layer as a single-op model (only keys in ``only``; the
    others are left with empty metrics).  A layer's ``latency_ms`` is its single-op time
    minus ``per_run`` (the fixed cost of a run, :func:`measure_run_overhead`), never below 0."""
    workdir = Path(workdir)
    layers = []
    for j, (name, mod, x, key) in enumerate(host_layers(model, example)):
        metrics = {}
        if only is None or key in only:
            lat = _time_host(target, mod, x, workdir / f"layer{j}", repeats)
            metrics = {"latency_ms": max(lat - per_run, 0.0), "latency_ms_single": lat}
        layers.append(Layer(name, key, metrics))
        if progress is not None:
            progress(name)
    total = {"latency_ms": _time_host(target, model.eval(), example[:1], workdir / "model", repeats)}
    return Measured(total, layers, [])


# ---------------------------------------------------------------------------- predict
@dataclass
class Prediction:
    """A whole-model cost summed from a table: the totals, each layer's, and what was fresh.

    ``fresh``: the layers the table lacked, measured for this prediction (and added to the
    table).  ``overhead``: the per-model overhead added, and ``overhead_from`` how it was
    chosen.  ``memory_profile``: what the cycles were estimated under.
    """

    target: str
    total: dict[str, float]
    layers: list[Layer]
    fresh: list[str]
    overhead: dict[str, float]
    overhead_from: str
    memory_profile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "total": self.total,
            "fresh": self.fresh,
            "overhead": self.overhead,
            "overhead_from": self.overhead_from,
            "memory_profile": self.memory_profile,
            "layers": [{"name": la.name, "key": la.key, **la.metrics} for la in self.layers],
        }


MIN_FIT_MODELS = 3  # host tables: measured models needed to fit the overhead line


def _overhead(
    table: CostTable, n_layers: int, kernels: list[str], layers_sum: float = 0.0
) -> tuple[dict[str, float], str]:
    if not table.overheads:
        raise CostTableError(
            f"the {table.target} cost table has no measured model yet: build it with `tamer lut` first"
        )
    recs = table.overheads
    out: dict[str, float] = {}
    if "latency_ms" in table.metrics:
        fit = _overhead_line(recs)
        if fit is None:
            # A run's fixed cost is paid once per model: the median measured, not scaled.
            out["latency_ms"] = statistics.median(r["latency_ms"] for r in recs)
            how = f"median per-model overhead of {len(recs)} measured model(s), once"
        else:
            a, b = fit
            out["latency_ms"] = a + (b - 1.0) * layers_sum
            how = f"whole = {a:.4g} ms + {b:.3g} x layers, fitted on {len(recs)} measured models"
    else:
        # Calls and cold misses grow with the layers: the median per-layer overhead, scaled.
        for m in ("instructions", "est_cycles"):
            out[m] = statistics.median(r[m] / max(r["layers"], 1) for r in recs) * n_layers
        how = f"median per-layer overhead of {len(recs)} measured model(s)"
    if "sram_bytes" in table.metrics:
        out["sram_bytes"] = max(r["sram_bytes"] for r in recs)  # the deepest stack measured
    if "flash_bytes" in table.metrics:
        same = [r for r in recs if sorted(r.get("kernels", [])) == kernels]
        if same:
            out["flash_bytes"] = same[-1]["flash_bytes"]
            how += f"; flash: the code linked by '{same[-1]['model']}' (the same kernels)"
        else:
            out["flash_bytes"] = _code_bytes(recs, kernels)
            how += (
                "; flash: no measured model links the same kernels: the runtime's code + "
                "the code each kernel came with, an upper bound"
            )
    return out, how


def _overhead_line(recs: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Host tables: the least-squares line ``whole = a + b x (sum of the layers' entries)``
    over the measured models, or None with fewer than MIN_FIT_MODELS models (or no spread).

    Layers run faster inside a whole model than alone, net of the run's fixed cost (warm
    caches; ONNX Runtime's layout reorders paid once per model instead of once per layer),
    by a share that grows with the layers' size: a constant overhead cannot express it."""
    pts = [(r["layers_latency_ms"], r["layers_latency_ms"] + r["latency_ms"]) for r in recs if "layers_latency_ms" in r]
    if len(pts) < MIN_FIT_MODELS or len({x for x, _ in pts}) < 2:
        return None
    b, a = np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)
    return (float(a), float(b)) if b > 0 else None  # a falling line is noise, not a cost


def _code_bytes(recs: list[dict[str, Any]], kernels: list[str]) -> float:
    """Flash of the code no layer owns, for a model linking ``kernels``.

    The functions every measured model links are the runtime; a kernel brings the functions
    every model that used it linked (kernels that were always linked together are charged
    together: an upper bound).  Bytes outside any symbol (alignment, .data's initial
    values) are the median of the measured models'.
    """
    codes = [r.get("code", {}) for r in recs]
    need = set.intersection(*(set(c) for c in codes))
    for k in kernels:
        having = [set(c) for r, c in zip(recs, codes, strict=True) if k in r.get("kernels", [])]
        # A kernel never measured: charge what any model linked (an upper bound).
        need |= set.intersection(*having) if having else set().union(*map(set, codes))
    sizes: dict[str, int] = {}
    for c in codes:
        sizes.update(c)
    loose = statistics.median(r["flash_bytes"] - sum(c.values()) for r, c in zip(recs, codes, strict=True))
    return sum(sizes[f] for f in need) + loose


def predict(
    model: nn.Module,
    target: str,
    table: CostTable | str | Path,
    *,
    example: torch.Tensor,
    calib: Sequence[torch.Tensor] | None = None,
    workdir: str | Path | None = None,
    measure_missing: bool = True,
    save: bool = True,
    name: str = "model",
) -> Prediction:
    """The whole-model cost of ``model`` on ``target``: the table's layers plus the overhead.

    Layers the table lacks are measured on the target (the model is built once) and added to
    the table (saved back when ``table`` was given as a path and ``save``); they are listed
    in ``Prediction.fresh``.  With ``measure_missing=False`` a missing layer is an error.
    ``example``: one input batch (its first sample fixes the shapes); ``calib``: batches to
    quantize a float model with (default: seeded random inputs: costs do not depend on them).
    """
    path = None
    if not isinstance(table, CostTable):
        path = Path(table)
        table = CostTable.load(path, target)
    elif table.target != target:
        raise CostTableError(f"the cost table was measured on '{table.target}', not '{target}'")
    tgt = _check_target(target)
    with tempfile.TemporaryDirectory(prefix="tamer-lut-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        if target in MICRO_TARGETS:
            gm = _quantized(model, example, calib)
            from tinytamer.micro.lower import lower

            g = lower(gm, example[:1])
            keyed = micro_layers(g, dsp=True)
            sram = _planned_sram(g)
            layers = [Layer(n, k) for _, n, k in keyed]
            kernels = sorted({_kernel_id(k) for _, _, k in keyed})
            missing = {k for _, _, k in keyed if k not in table.entries}
            if missing:
                _require(measure_missing, missing, target)
                table.add(measure_micro(gm, example, MICRO_TARGETS[target], work, table.memory_profile), name)
        else:
            sram = None
            host = host_layers(model, example)
            layers = [Layer(n, k) for n, _, _, k in host]
            kernels = []
            missing = {k for _, _, _, k in host if k not in table.entries}
            if missing:
                _require(measure_missing, missing, target)
                per_run = _per_run(table, tgt, work)
                table.add(measure_host(model, example, tgt, work, only=missing, per_run=per_run), name)
    if missing and path is not None and save:
        table.save(path)
    for layer in layers:
        entry = table.entries[layer.key]
        layer.metrics = {m: entry[m] for m in table.metrics}
    overhead, how = _overhead(table, len(layers), kernels, sum(la.metrics.get("latency_ms", 0.0) for la in layers))
    total = {m: sum(la.metrics[m] for la in layers) + overhead[m] for m in table.metrics}
    if sram is not None:
        total["sram_bytes"] = sram + overhead["sram_bytes"]
    fresh = [la.name for la in layers if la.key in missing]
    return Prediction(target, total, layers, fresh, overhead, how, table.memory_profile)


def _per_run(table: CostTable, target: Any, workdir: str | Path) -> float:
    """The table's per-run overhead, measured now if it has none yet."""
    if "latency_ms" not in table.per_run_overhead:
        table.per_run_overhead["latency_ms"] = measure_run_overhead(target, workdir)
    return table.per_run_overhead["latency_ms"]


def _planned_sram(g: Any) -> int:
    """Arena + input + output bytes of the generated program (codegen's own plan)."""
    from tinytamer.micro import codegen

    cm = codegen.generate(g, dsp=True)
    return cm.plan.arena_size + cm.input_size + cm.output_size


def _require(measure_missing: bool, missing: set[str], target: str) -> None:
    if not measure_missing:
        raise CostTableError(
            f"the {target} cost table lacks {len(missing)} layer(s), e.g. "
            f"'{sorted(missing)[0]}'; build it with `tamer lut`"
        )


def _check_target(target: str) -> Any:
    if target in MICRO_TARGETS:
        from tinytamer.micro import toolchain

        toolchain.require("arm-none-eabi-gcc")
        return None
    if target not in HOST_TARGETS:
        raise CostTableError(
            f"no cost table for target '{target}': tables are measured on {', '.join([*MICRO_TARGETS, *HOST_TARGETS])}"
        )
    from tinytamer.targets.base import get_target, unavailable_reason

    tgt = get_target(target)
    why = unavailable_reason(tgt)
    if why is not None:
        raise CostTableError(f"target '{target}' cannot run here: {why}")
    return tgt


# ---------------------------------------------------------------------------- build
def build(
    configs: Sequence[tuple[str, Callable[[], nn.Module]]],
    target: str,
    path: str | Path,
    *,
    example: torch.Tensor,
    memory_profile: str | None = None,
    calib: Sequence[torch.Tensor] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CostTable:
    """Measure every ``(name, make_model)`` configuration on ``target`` into the table at
    ``path`` (``make_model()`` is called only for the configurations not measured yet).

    Resumable: the table is saved after each configuration, and a configuration already in
    its ``done`` list is skipped, so an interrupted build keeps what it measured and
    continues where it stopped.  ``progress(name, i, n)`` is called after each one.
    """
    tgt = _check_target(target)
    if target in MICRO_TARGETS:
        from tinytamer.micro.profiles import BOARD, get_profile

        memory_profile = get_profile(memory_profile or BOARD[target], target).name
    table = CostTable.open(path, target, memory_profile)
    for j, (name, make) in enumerate(configs):
        if name not in table.done:
            model = make()
            with tempfile.TemporaryDirectory(prefix="tamer-lut-") as tmp:
                if target in MICRO_TARGETS:
                    m = measure_micro(
                        _quantized(model, example, calib), example, MICRO_TARGETS[target], tmp, memory_profile
                    )
                else:
                    new = {k for _, _, _, k in host_layers(model, example) if k not in table.entries}
                    m = measure_host(model, example, tgt, tmp, only=new, per_run=_per_run(table, tgt, tmp))
            table.add(m, name)
            table.done.append(name)
            table.save(path)
        if progress is not None:
            progress(name, j + 1, len(configs))
    return table


SPACES = ("model", "bits")


def space_configs(
    model: nn.Module, space: str, example: torch.Tensor, calib: Sequence[torch.Tensor] | None = None
) -> list[tuple[str, Callable[[], nn.Module]]]:
    """The configurations of ``model`` a table is built over: ``(name, make)`` pairs.

    ``model``: the model as given.  ``bits``: every weight bit width 2-8 applied to all
    layers (int8 quantization with per-layer bits), with 8-bit activations and again with
    4-bit ones (a convolution's key marks only whether its clamp is narrower than int8): a
    layer's key depends only on its own bits, so these fourteen builds cover every
    mixed-bit configuration of the model.
    """
    if space == "model":
        return [("model", lambda: model)]
    if space != "bits":
        raise CostTableError(f"unknown space '{space}'; choose one of {', '.join(SPACES)}")
    from tinytamer.compress.int8 import quantize_ptq

    def make(bits: int, act_bits: int) -> Callable[[], nn.Module]:
        return lambda: quantize_ptq(
            copy.deepcopy(model).eval(),
            list(calib or _random_calib(example)),
            weight_bits=bits,
            act_bits=act_bits,
        )

    widths = range(8, 1, -1)
    return [(f"w{b}", make(b, 8)) for b in widths] + [(f"w{b}a4", make(b, 4)) for b in widths]
