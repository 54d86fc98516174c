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
pairs (it changes the cycles; ``-`` where the op has no knobs), plus the code paths the
layer's constants select inside its kernel (:func:`_paths`): ``clamp:narrow`` for a
convolution whose output range is less than the whole int8 range, ``lshift:<n>`` for ``n``
channels requantized with a left shift, ``general:<n>`` for ``n`` channels the fast kernels
requantize in the general form, ``add:<c><o><q>`` for a fused add's forms.  Activations are
stored in int8 on the micro path whatever their bits, so their bits key nothing but these
paths: below 8 bits a convolution clamps on a slower path (measured 8% more instructions on
a 3x3 convolution), and a layer after coarse activations (2-3 bits) rescales by more than
1, a left shift on every output (measured 12 instructions an output on a packed grouped
convolution, 3.4% of the model): a layer's key depends on its input's scale too, not only
on its own bits.  With those in the key a layer's instructions are exactly its entry's.

**Per-run overhead of a single-op model (host targets).** Every ``session.run`` pays a
fixed cost (feeding the input, allocating the output, the run's setup) that a single-op model
pays once *per layer* but a whole model pays once: summed raw, the entries count it once per
layer (measured on a 2-core x86 host: 7.5 us each, against 14-17 us for small conv layers,
so a five-layer model was predicted at 2.4x its latency).  So a host table first times the
smallest model there is (a ReLU on a one-element input, :func:`measure_run_overhead`),
keeps it as ``per_run_overhead``, and stores each layer's single-op time *minus* it (never
below 0; the raw time stays beside it as ``latency_ms_single``).

**Layout reorders (ONNX Runtime).** On x86, ONNX Runtime runs a convolution whose channels
are a multiple of its block (8 with AVX2, 16 with AVX-512; pooling too) in a blocked layout
(NCHWc), and puts a reorder node where a tensor enters that layout (``ReorderInput``) and
where it leaves it (``ReorderOutput``).  A convolution alone pays both (a stem with fewer
input channels than the block reads the plain input and pays only the second); a chain of
blocked layers pays one of each, at its ends.  So a single-op time does not add up: the
optimized graph of each single-op model (as ONNX Runtime saves it) is read, the reorders at
its edges are each timed alone as a one-node model at the layer's own input / output shape,
kept in the entry as ``reorder_in_ms`` / ``reorder_out_ms`` (net of the run's fixed cost)
and subtracted from its ``latency_ms`` (:func:`_layout_edges`).  A model is charged the
reorders at its layout changes (:func:`_boundary_ms`): walking its layers in execution
order, a layer's ``reorder_in_ms`` where the tensor before it is plain, and a layer's
``reorder_out_ms`` where the next layer (or the model's output) takes plain tensors.  Each
is priced by one layer's entry, so entries stay reusable across models.  Assumed: a layer
is fed by the one before it (a residual's skip path stays blocked, as ONNX Runtime fuses
the add into the blocked convolution); a reorder costs in a model what it costs alone (a
memory-bound copy); reorders inside a single-op graph (no edge) are paid in every context
and stay in the entry.  Other host targets have no layout edges.

What a whole model costs beyond its layers and those reorders (the run's fixed cost, paid
once; functional ops such as ``x + y`` and ``flatten`` that are no layer) is the rest of its
per-model overhead, added once to a prediction: with three or more measured models, by a
line fitted over them (whole - reorders = a + b x the sum of its layers; b is 1 where the
entries add up in context, and is fitted rather than assumed), else their median.

**Per-model overhead.** What a whole inference costs beyond its layers (the calls of
``tt_model_run``; on ONNX Runtime the run's fixed cost, see above) is measured per model: the
whole-model figure minus the sum of its layers, kept per model in the table and applied to
new models per layer (cycles, instructions) or once (latency on host targets).  SRAM is a
peak, not a sum: it is planned exactly from the lowered graph (arena + input and output) plus
the stack measured in the table's models; each entry's ``sram_bytes`` is the layer's own
working set, for reading.

**Flash by the call graph.** Kernel code is shared by the layers that use it, so it is no
layer's cost.  Each measured image is split into its input sections (the linker map: a
function or a constant each, its footprint up to the next one, alignment fill included) and
their references (``arm-none-eabi-objdump -d``: branch targets, literal-pool addresses,
function pointers; the vector table's and the runtime constants' words).  A layer owns its
``tt_layer_<i>`` function and its constants (weights, biases, multipliers, codebooks, index
streams, a fused add's tables: every constant of the generated model must belong to a layer,
else the measurement fails); its entry lists the code pieces its function reaches; the
runtime is what start-up reaches (``tt_model_run``, the C library, the embedded inputs).  A
prediction charges the union of its layers' pieces and the runtime's, each once: exact, as
every section the image holds is 4-byte aligned (a section aligned wider would move its
neighbours' fill by a few bytes).  ``tt_model_run`` grows with the layers: it comes from the
measured model with the nearest layer count.

**Cache state.** Under a board profile a layer's cycles depend on the flash caches it
inherits.  Layers are measured right after a whole inference, each after the layer that
precedes it in the model (:meth:`MicroProgram.profile`), so a layer meets the caches the
model leaves it; the whole-model figure of a deployment is a first, cold inference, and the
difference (the cold misses) lands in the model's overhead.  The caches of the boards we
model hold 1 KB of code and 256 bytes of data: a layer's inheritance from a different
predecessor, and the code addresses that move with the linked set, shift its cycles by a few
cache refills (measured on a small CNN: up to 0.7% of a layer, 0.2% of the model, against
the 2.5% a mis-keyed requantization path cost).
"""

from __future__ import annotations

import bisect
import copy
import functools
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
# 2: host entries net of the per-run overhead; 3: micro keys name the requantization paths,
# micro entries list the flash pieces their code reaches (older micro tables are refused);
# 4: host entries net of the layout reorders at their edges (older host tables are refused).
VERSION = 4
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
        if version not in (1, 2, 3, VERSION):
            raise CorruptFileError(f"cost table {path} has version {version!r}; this tinytamer reads version {VERSION}")
        name = data.get("target")
        if not isinstance(name, str) or (name not in MICRO_TARGETS and name not in HOST_TARGETS):
            raise CorruptFileError(f"cost table {path}: unknown target {name!r}")
        if version == 1 and name in HOST_TARGETS:
            # Version 1 host entries include the per-run overhead once per layer.
            raise CostTableError(
                f"cost table {path} (version 1) counts the '{name}' run overhead per layer: rebuild it with `tamer lut`"
            )
        if version < 3 and name in MICRO_TARGETS:
            # Their keys miss the requantization paths and their entries the code they reach.
            raise CostTableError(
                f"cost table {path} (version {version}) keys '{name}' layers without their requantization "
                "paths and cannot attribute flash exactly: rebuild it with `tamer lut`"
            )
        if 1 < version < 4 and name in HOST_TARGETS:
            # Their entries include ONNX Runtime's layout reorders, paid once per layer.
            raise CostTableError(
                f"cost table {path} (version {version}) counts the '{name}' layout reorders in every layer: "
                "rebuild it with `tamer lut`"
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
                if self.target in MICRO_TARGETS:
                    self.entries[layer.key]["code"] = layer.code
                new.append(layer.key)
        cost = [la.metrics or self.entries[la.key] for la in m.layers]
        rec = {
            "model": name,
            "layers": len(m.layers),
            "kernels": m.kernels,
            "code": m.code,
            "runtime": m.runtime,
            **{k: m.total[k] - sum(c[k] for c in cost) for k in self.metrics},
        }
        if "sram_bytes" in m.total:  # the part of the peak no plan can tell: the stack
            rec["sram_bytes"] = m.stack_bytes
        if "latency_ms" in m.total:  # the x of the overhead line and the reorders it leaves out
            rec["layers_latency_ms"] = sum(c["latency_ms"] for c in cost)
            rec["boundary_ms"] = _boundary_ms(cost)
        self.overheads = [r for r in self.overheads if r.get("model") != name] + [rec]
        return new


# ---------------------------------------------------------------------------- layers
@dataclass
class Layer:
    """One layer of a model as the table sees it: its name, key and (once measured) cost."""

    name: str
    key: str
    metrics: dict[str, float] = field(default_factory=dict)
    code: list[str] = field(default_factory=list)  # micro: the flash pieces its code reaches


@dataclass
class Measured:
    """A whole model measured on a target: the whole-model figures and its layers'."""

    total: dict[str, float]
    layers: list[Layer]
    kernels: list[str]
    code: dict[str, int] = field(default_factory=dict)  # flash pieces no layer owns -> bytes
    stack_bytes: int = 0
    runtime: list[str] = field(default_factory=list)  # the pieces every inference needs


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

    fused = find_fusions(g, dsp)
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
        sched = {**op_def(op).resolve(op, dsp), **_paths(g, i, add)}
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


def _paths(g: Any, i: int, add: int | None) -> dict[str, str]:
    """The code paths that op ``i``'s constants select inside its kernel (schedule knobs in
    its key: a layer's instructions are its key's only where the key fixes its paths).

    - ``clamp:narrow``: a convolution clamps to less than the whole int8 range
      (:func:`_narrow_clamp`);
    - ``lshift:<n>``: ``n`` output channels (a pooling's one rescale, an add's three) requantize with a
      left shift (shift > 0: a rescale of 1 or more, e.g. a coarse input scale into a fine
      output scale), a longer path of ``tt_requant_inline``;
    - ``general:<n>``: ``n`` channels the fast kernels requantize in the general form
      (:func:`tinytamer.micro.fixedpoint.fast_records`: the per-channel fallback);
    - ``add:<c><o><q>``: a fused residual add: its conv side and other side each by table
      (``t``) or affine form (``a``), its sum requantized in single-multiply form (``f``) or
      the general one (``g``), plus ``addshift:1`` where that requantization shifts left.

    These depend on the scales around the layer (its input's activation bits among them),
    not on its own bits alone.
    """
    from tinytamer.micro.ops.add import add_fast_requant
    from tinytamer.micro.ops.conv import _residual_tables, requant_plan

    op = g.ops[i]
    out: dict[str, str] = {}
    if type(op).__name__ == "Conv2D" and _narrow_clamp(op, g.ops[add] if add is not None else None):
        out["clamp"] = "narrow"
    shift = getattr(op, "shift", None)
    if shift is None and hasattr(op, "out_shift"):  # an add on its own: its three rescales
        shift = [op.in1_shift, op.in2_shift, op.out_shift]
    if shift is not None and np.any(np.asarray(getattr(op, "multiplier", 1)) != 0):
        if left := int(np.count_nonzero(np.asarray(shift) > 0)):
            out["lshift"] = str(left)
        if hasattr(op, "weight") and hasattr(op, "bias") and np.ndim(shift) == 1:
            if general := requant_plan(op, g.tensors[op.output].zero_point).general:
                out["general"] = str(general)
    if add is not None:
        conv_t, other_t = _residual_tables(g, op, add)
        fast = add_fast_requant(g.ops[add], g) is not None
        out["add"] = ("a" if conv_t is None else "t") + ("a" if other_t is None else "t") + ("f" if fast else "g")
        if g.ops[add].out_shift > 0:
            out["addshift"] = "1"
    return out


def _narrow_clamp(op: Any, add: Any) -> bool:
    """Whether a convolution clamps its output (or its fused add's) to less than the whole
    int8 range (activations below 8 bits, for one).  The convolution
    kernels pick a slower requantization path for it (``tt_mm_mode``), so it keys a layer."""
    return any((o.act_min, o.act_max) != (-128, 127) for o in (op, add) if o is not None)


# ---- flash: the linked image's call graph -------------------------------------------
# The output sections that the image keeps in flash (.data: its initial values).
FLASH_SECTIONS = (".text", ".ARM.exidx", ".data")
_MAP_HEAD = re.compile(r"^(\.\S+)(?:\s+0x([0-9a-f]+)\s+0x([0-9a-f]+))?")
_MAP_IN = re.compile(r"^ (\.\S+|\*fill\*)(?:\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)(?:\s+(\S.*?))?)?\s*$")
_MAP_NEXT = re.compile(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)(?:\s+(\S.*?))?\s*$")
_REF = re.compile(r"\b([0-9a-f]+) <")


@dataclass(frozen=True)
class _Piece:
    """One input section of the linked flash image: a name that is the same in every build
    (``section@object``, the object by its link position or its archive member), its
    address, its footprint (its bytes up to the next piece: the alignment fill after it
    included) and whether it holds code."""

    name: str
    start: int
    size: int
    code: bool


def _link_pieces(map_path: Path) -> list[_Piece]:
    """The flash image's input sections, from the linker map, in address order; bytes of an
    output section before its first input section are a piece of their own."""
    lines = map_path.read_text().splitlines()
    tags: dict[str, str] = {}
    for line in lines:
        if line.startswith("LOAD ") and "(" not in line:
            tags.setdefault(line[5:].strip(), f"#{len(tags)}")
    outs: list[tuple[str, int, int, list[tuple[str, int, str]]]] = []
    i = 0
    while i < len(lines):
        line, nxt = lines[i], _MAP_NEXT.match(lines[i + 1]) if i + 1 < len(lines) else None
        if head := _MAP_HEAD.match(line):  # an output section (its address may be on the next line)
            addr, size = head.group(2, 3) if head.group(2) else (nxt.group(1, 2) if nxt else (None, None))
            if head.group(1) in FLASH_SECTIONS and addr is not None:
                outs.append((head.group(1), int(addr, 16), int(addr, 16) + int(size, 16), []))
            elif outs and outs[-1][0] != "":
                outs.append(("", 0, 0, []))  # not a flash section: its inputs are not read
        elif outs and outs[-1][0] and (m := _MAP_IN.match(line)) and m.group(1) != "*fill*":
            name, addr, size, obj = m.groups()
            if addr is None and nxt is not None:
                (addr, size, obj), i = nxt.groups(), i + 1
            if addr is not None and int(size, 16) > 0:
                outs[-1][3].append((name, int(addr, 16), obj or ""))
        i += 1
    pieces = []
    for out, start, end, inputs in outs:
        if inputs and inputs[0][1] > start:
            inputs.insert(0, (f"{out}:head", start, ""))
        for j, (name, addr, obj) in enumerate(inputs):
            stop = inputs[j + 1][1] if j + 1 < len(inputs) else end
            member = re.search(r"\(([^)]+)\)$", obj)
            tag = member.group(1) if member else tags.get(obj, Path(obj).name)
            pieces.append(_Piece(f"{name}@{tag}", addr, stop - addr, name.startswith(".text")))
    return sorted(pieces, key=lambda p: p.start)


def _flash_words(elf: Path) -> Callable[[int, int], list[int]]:
    """A reader of the image's little-endian words ``(address, bytes) -> words``."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        ef = ELFFile(f)
        secs = [
            (s["sh_addr"], s.data()) for s in ef.iter_sections() if s["sh_flags"] & 2 and s["sh_type"] == "SHT_PROGBITS"
        ]

    def words(addr: int, n: int) -> list[int]:
        for base, data in secs:
            if base <= addr and addr + n <= base + len(data):
                off = addr - base
                return [int.from_bytes(data[k : k + 4], "little") for k in range(off + (-off) % 4, off + n - 3, 4)]
        return []

    return words


def _references(elf: Path, pieces: list[_Piece], scan: set[str]) -> dict[str, set[str]]:
    """Which pieces each piece refers to, from the linked image.

    Code: every branch and PC-relative target (``bl``, ``b.w``, ``cbz``, a literal load) and
    every literal-pool word that is a function's address (odd: Thumb) or falls inside a data
    piece, from ``arm-none-eabi-objdump -d``.  Data pieces named in ``scan`` (the vector
    table, the runtime's constants): each aligned word equal to a data piece's start or a
    function's address.  The generated model's constants are not scanned: they hold data
    and pointers to their own layer's constants only.
    """
    objdump = shutil.which("arm-none-eabi-objdump")
    if objdump is None:
        from tinytamer.micro import toolchain

        objdump = toolchain.require("arm-none-eabi-objdump")
    starts = [p.start for p in pieces]

    def at(addr: int) -> _Piece | None:
        j = bisect.bisect_right(starts, addr) - 1
        return pieces[j] if j >= 0 and addr < pieces[j].start + pieces[j].size else None

    def word_target(v: int, exact: bool) -> _Piece | None:
        p = at(v & ~1)
        if p is None or (p.code and (not v & 1 or p.start != v - 1)):
            return None  # a code pointer is a function's address with the Thumb bit
        return None if (exact and not p.code and p.start != v) else p

    refs: dict[str, set[str]] = {p.name: set() for p in pieces}
    proc = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(elf)], capture_output=True, text=True, check=True)
    for line in proc.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].endswith(":"):
            continue
        try:
            src = at(int(parts[0][:-1], 16))
        except ValueError:
            continue
        if src is None or not src.code:
            continue
        if parts[1] == ".word" and len(parts) == 3:
            dst = word_target(int(parts[2].split()[0], 0), exact=False)
        else:
            m = _REF.search(parts[2]) if len(parts) == 3 else None
            dst = at(int(m.group(1), 16)) if m else None
        if dst is not None and dst is not src:
            refs[src.name].add(dst.name)
    words = _flash_words(elf)
    for p in pieces:
        if p.name in scan and not p.code:
            for v in words(p.start, p.size):
                dst = word_target(v, exact=True)
                if dst is not None and dst is not p:
                    refs[p.name].add(dst.name)
    return refs


def _reach(roots: Sequence[str], refs: dict[str, set[str]], stop: set[str]) -> set[str]:
    """The pieces reachable from ``roots`` without passing through ``stop``."""
    seen, todo = set(roots), list(roots)
    while todo:
        for d in refs[todo.pop()]:
            if d not in seen and d not in stop:
                seen.add(d)
                todo.append(d)
    return seen


@dataclass
class _FlashMap:
    """The flash image attributed: each layer's own pieces (its function and constants), the
    code each layer reaches, the runtime's (what start-up and ``tt_model_run`` reach),
    every piece's footprint, and the model's total."""

    own: dict[int, int]
    reach: dict[int, list[str]]
    runtime: list[str]
    sizes: dict[str, int]
    total: int


def _attribute_flash(elf: Path, owner: dict[int, int]) -> _FlashMap:
    """Attribute the image at ``elf`` (its linker map beside it) to the layers whose
    generated functions are ``tt_layer_<i>`` (``owner``: op index -> the layer that owns
    its constants, a fused add's to its convolution)."""
    pieces = _link_pieces(elf.parent / "model.map")
    by_name = {p.name: p for p in pieces}
    model_obj = next((p.name.split("@")[1] for p in pieces if p.name.startswith(".text.tt_model_run@")), None)
    if model_obj is None:
        raise TamerError(f"cost table: no tt_model_run in the linker map of {elf}")
    owned: dict[str, int] = {}
    for p in pieces:
        sec, obj = p.name.split("@")
        layer_fn = re.fullmatch(r"\.text\.tt_layer_(\d+)", sec)
        if obj != model_obj or (sec.startswith(".text.") and not layer_fn) or sec == ".rodata":
            # Code outside the layers (tt_model_run), and the compiler's unnamed constants
            # (literal tables a function refers to): the call graph places them.
            continue
        # A constant is named by its kind, its op's index and, for a Gather's per-input
        # tables, the input (``gt<i>_<k>``).
        m = layer_fn or re.fullmatch(r"\.rodata\.([a-z]+)(\d+)(?:_\d+)?", sec)
        index = int(m.group(m.lastindex)) if m else None
        if index is None or index not in owner:
            raise TamerError(f"cost table: the generated model's section '{sec}' belongs to no layer")
        owned[p.name] = owner[index]
    entry = [p.name for p in pieces if p.name.startswith((".vectors@", ".text.tt_reset_handler@"))]
    # The embedded test inputs are data only: their words are not read as addresses.
    scan = {p.name for p in pieces if not p.code and p.name not in owned and ".tt_inputs@" not in p.name}
    refs = _references(elf, pieces, scan)
    stop = set(owned)
    runtime = _reach(entry, refs, stop)
    reach = {}
    for i in sorted(set(owner.values())):
        roots = [n for n, o in owned.items() if o == i and n.startswith(".text.")]
        reach[i] = sorted(_reach(roots, refs, stop) - stop)
    # Anything linked that the graph cannot explain is charged to every model (the runtime).
    runtime |= set(by_name) - stop - runtime - set().union(*map(set, reach.values()))
    own = {i: sum(by_name[n].size for n, o in owned.items() if o == i) for i in reach}
    return _FlashMap(
        own,
        reach,
        sorted(runtime),
        {p.name: p.size for p in pieces if p.name not in owned},
        sum(p.size for p in pieces),
    )


def measure_micro(
    gm: fx.GraphModule, example: torch.Tensor, device: str, workdir: str | Path, memory_profile: str
) -> Measured:
    """Build ``gm`` for ``device`` and measure it: whole model and every layer.

    The whole-model figures are those :meth:`MicroDeployed.measure` reports (a first
    inference; flash from the linked image; arena + I/O + measured stack).  The layers are
    built in the forms lowering chooses, as :func:`predict` keys them: a deploy may then put
    a codebook form back where its kernels cost more flash than its weights save
    (``build_program``), which a table measuring each form as lowered does not do.
    """
    from tinytamer.micro import schedule
    from tinytamer.micro.lower import lower
    from tinytamer.micro.planner import find_fusions
    from tinytamer.micro.program import build_program

    prog = build_program(gm, example[:1], device, workdir, graph=lower(gm, example[:1]))
    q = prog.quantize_input(example[:1].detach().numpy().astype(np.float32))
    prof = prog.profile(q[0], memory_profile=memory_profile)
    g, cm = prog.graph, prog.cmodel
    keyed = micro_layers(g, dsp=True)
    if [f"tt_layer_{i}" for i, _, _ in keyed] != [fn for fn, _ in cm.layers]:
        raise TamerError(
            "cost table: the generated layers differ from the keyed ones (micro_layers no longer mirrors codegen)"
        )
    owner = {i: i for i, _, _ in keyed}
    owner.update({a: c for c, a in find_fusions(g, dsp=True).items()})
    fm = _attribute_flash(prog.arm.elf, owner)
    if fm.total != prog.arm.flash_bytes:
        raise TamerError(
            f"cost table: the linker map of {prog.arm.elf} accounts for {fm.total} flash bytes, "
            f"the image has {prog.arm.flash_bytes}"
        )
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
                    "flash_bytes": fm.own[i],
                    "sram_bytes": work,
                },
                fm.reach[i],
            )
        )
    total = {
        "instructions": prof["instructions"],
        "est_cycles": prof["est_cycles"],
        "flash_bytes": prog.arm.flash_bytes,
        "sram_bytes": cm.sram_bytes(prof["stack_bytes"]),
    }
    kernels = sorted({_kernel_id(key) for _, _, key in keyed})
    return Measured(total, layers, kernels, fm.sizes, prof["stack_bytes"], fm.runtime)


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
    """The fastest of ``repeats`` runs (ms) of ``module`` alone on ``target`` (compiled in
    ``workdir``: ONNX Runtime's file is ``model.onnx`` there, :func:`_layout_edges` reads it)."""
    dep = target.compile(module, [x], workdir, precision="fp32", calib=[x], threads=1)
    cost = dep.measure(batch=1, threads=1, repeats=repeats, warmup=max(3, repeats // 10), isolate=False)
    # The fastest run: the least disturbed by other processes on a shared machine.
    return float(cost.latency_ms_min)


NCHWC = "com.microsoft.nchwc"  # ONNX Runtime's blocked-layout domain (ReorderInput / ReorderOutput)


def _layout_edges(workdir: Path, repeats: int) -> dict[str, float]:
    """The NCHWc reorders at the edges of the single-op model compiled in ``workdir`` (its
    graph as ONNX Runtime optimizes it), each timed alone as a one-node model (fastest run,
    ms, the run's fixed cost included): ``reorder_in_ms`` where a graph input enters the
    blocked layout, ``reorder_out_ms`` where a graph output leaves it.  Reorders inside the
    graph are no edge: every context pays them."""
    import onnx
    import onnxruntime as ort

    from tinytamer.targets.base import time_calls
    from tinytamer.targets.onnxrt import make_session

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    opts.optimized_model_filepath = str(workdir / "optimized.onnx")
    ort.InferenceSession(str(workdir / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    opt = onnx.load(workdir / "optimized.onnx")
    dims = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim] for v in opt.graph.input}
    outs = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim] for v in opt.graph.output}
    found: dict[str, float] = {}
    for node in opt.graph.node:
        if node.domain != NCHWC:
            continue
        if node.op_type == "ReorderInput" and node.input[0] in dims:
            name, shape = "reorder_in_ms", dims[node.input[0]]
        elif node.op_type == "ReorderOutput" and node.output[0] in outs:
            # Its input is the blocked tensor: the channels padded to the block.
            c, block = outs[node.output[0]][1], _nchwc_block()
            name, shape = "reorder_out_ms", [1, -(-c // block) * block, *outs[node.output[0]][2:]]
        else:
            continue
        sess = make_session(_one_node(node, shape, workdir / f"{name}.onnx"), 1, optimize=False)
        feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        # A reorder is a copy of tens of microseconds: cheap to time ten times as often,
        # which its fastest run needs on a loaded machine (it prices every layer of its shape).
        runs = time_calls(lambda s=sess, f=feed: s.run(None, f), 10 * repeats, 5)
        found[name] = found.get(name, 0.0) + 1e3 * min(runs)
    return found


def _one_node(node: Any, shape: Sequence[int], path: Path) -> Path:
    """An ONNX file of ``node`` alone (its attributes kept) on a float input of ``shape``."""
    import onnx
    from onnx import TensorProto, helper

    one = onnx.NodeProto()
    one.CopyFrom(node)
    one.ClearField("input")
    one.ClearField("output")
    one.input.append("x")
    one.output.append("y")
    graph = helper.make_graph(
        [one],
        "edge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(NCHWC, 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


@functools.cache
def _nchwc_block() -> int:
    """ONNX Runtime's NCHWc block on this CPU (8 with AVX2, 16 with AVX-512): the channels
    ReorderInput pads a four-channel input to (it takes multiples of 4)."""
    import onnxruntime as ort
    from onnx import helper

    with tempfile.TemporaryDirectory(prefix="tamer-lut-") as tmp:
        node = helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC)
        path = _one_node(node, [1, 4, 1, 1], Path(tmp) / "block.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return int(sess.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0].shape[1])


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
    repeats: int = 200,
    progress: Callable[[str], None] | None = None,
    per_run: float = 0.0,
) -> Measured:
    """Time the whole model and each layer as a single-op model (only keys in ``only``; the
    others are left with empty metrics).  A layer's ``latency_ms`` is its single-op time
    minus ``per_run`` (the fixed cost of a run, :func:`measure_run_overhead`) and minus the
    layout reorders at its edges (``reorder_in_ms`` / ``reorder_out_ms``, kept in its entry,
    each net of ``per_run``: :func:`_layout_edges`), never below 0."""
    workdir = Path(workdir)
    layers = []
    for j, (name, mod, x, key) in enumerate(host_layers(model, example)):
        metrics = {}
        if only is None or key in only:
            lat = _time_host(target, mod, x, workdir / f"layer{j}", repeats)
            blocked = getattr(target, "name", "") == "onnxruntime"  # the one host target with NCHWc
            found = _layout_edges(workdir / f"layer{j}", repeats) if blocked else {}
            edges = {k: max(v - per_run, 0.0) for k, v in found.items()}
            metrics = {"latency_ms": max(lat - per_run - sum(edges.values()), 0.0), "latency_ms_single": lat, **edges}
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
    table: CostTable, n_layers: int, keys: list[str], layers_sum: float = 0.0
) -> tuple[dict[str, float], str]:
    if not table.overheads:
        raise CostTableError(
            f"the {table.target} cost table has no measured model yet: build it with `tamer lut` first"
        )
    recs = table.overheads
    out: dict[str, float] = {}
    if "latency_ms" in table.metrics:
        # The layout reorders this model pays between its layers, from its layers' entries;
        # the rest (the run's fixed cost, functional ops) from the measured models.
        bound = _boundary_ms([table.entries[k] for k in keys])
        fit = _overhead_line(recs)
        if fit is None:
            # A run's fixed cost is paid once per model: the median measured, not scaled.
            out["latency_ms"] = bound + statistics.median(r["latency_ms"] - r.get("boundary_ms", 0.0) for r in recs)
            how = f"layout reorders {bound:.4g} ms + median rest of {len(recs)} measured model(s), once"
        else:
            a, b = fit
            out["latency_ms"] = bound + a + (b - 1.0) * layers_sum
            how = (
                f"layout reorders {bound:.4g} ms + rest, whole = reorders + {a:.4g} ms + {b:.3g} x layers "
                f"fitted on {len(recs)} measured models"
            )
    else:
        # Calls and cold misses grow with the layers: the median per-layer overhead, scaled.
        for m in ("instructions", "est_cycles"):
            out[m] = statistics.median(r[m] / max(r["layers"], 1) for r in recs) * n_layers
        how = f"median per-layer overhead of {len(recs)} measured model(s)"
    if "sram_bytes" in table.metrics:
        out["sram_bytes"] = max(r["sram_bytes"] for r in recs)  # the deepest stack measured
    if "flash_bytes" in table.metrics:
        out["flash_bytes"], note = _code_bytes(table, keys, n_layers)
        how += f"; flash: {note}"
    return out, how


def _overhead_line(recs: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Host tables: the least-squares line ``whole - reorders = a + b x (sum of the layers'
    entries)`` over the measured models, or None with fewer than MIN_FIT_MODELS models (or no
    spread).  ``a`` is the run's fixed cost and the functional ops; ``b`` is 1 where the
    entries add up in context (what :func:`_layout_edges` is for), and the fit measures it
    rather than assuming it (warm caches inside a model could pull it below 1)."""
    pts = [
        (r["layers_latency_ms"], r["layers_latency_ms"] + r["latency_ms"] - r.get("boundary_ms", 0.0))
        for r in recs
        if "layers_latency_ms" in r
    ]
    if len(pts) < MIN_FIT_MODELS or len({x for x, _ in pts}) < 2:
        return None
    b, a = np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)
    return (float(a), float(b)) if b > 0 else None  # a falling line is noise, not a cost


def _boundary_ms(entries: Sequence[dict[str, Any]]) -> float:
    """The layout reorders a model of these layers (in execution order) pays between them.

    An entry with ``reorder_in_ms`` takes ONNX Runtime's blocked (NCHWc) layout, one with
    ``reorder_out_ms`` gives it.  A model pays a layer's input reorder where the tensor
    before it is plain (the model's input, or a plain layer's output) and a layer's output
    reorder where the next layer (or the model's output) takes plain tensors: a chain of
    blocked layers pays one of each, where each of its layers alone paid both.  Layers are
    taken as fed by the one before them (a residual's skip path is assumed in the same
    layout as its main path, as ONNX Runtime fuses the add into the blocked convolution)."""
    total, blocked = 0.0, None  # blocked: the layer before, if its output is NCHWc
    for e in entries:
        if "reorder_in_ms" in e:
            total += e["reorder_in_ms"] if blocked is None else 0.0
        elif blocked is not None:
            total += blocked["reorder_out_ms"]
        blocked = e if "reorder_out_ms" in e else None
    return total + (blocked["reorder_out_ms"] if blocked is not None else 0.0)


def _code_bytes(table: CostTable, keys: list[str], n_layers: int) -> tuple[int, str]:
    """Flash of the code no layer owns, for a model of the layers ``keys``: exactly the
    pieces of the linked image its layers' code reaches (each entry lists them, from the
    call graph of the image it was measured in) and those the runtime reaches (start-up,
    ``tt_model_run``, the embedded inputs), each at its footprint.

    The runtime's pieces come from the measured model with the nearest number of layers
    (``tt_model_run`` grows with them: a few bytes a layer away from exact otherwise)."""
    recs = [r for r in table.overheads if "runtime" in r]
    rec = min(reversed(recs), key=lambda r: abs(r["layers"] - n_layers))
    need = set(rec["runtime"]).union(*(table.entries[k]["code"] for k in keys))
    sizes: dict[str, int] = {}
    for r in recs:
        sizes.update(r["code"])
    note = "the runtime's and its layers' code, from the linked images' call graphs"
    if rec["layers"] != n_layers:
        note += f" (runtime of '{rec['model']}', {rec['layers']} layers: tt_model_run differs by bytes a layer)"
    return sum(sizes[p] for p in need), note


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
            missing = {k for _, _, k in keyed if k not in table.entries}
            if missing:
                _require(measure_missing, missing, target)
                table.add(measure_micro(gm, example, MICRO_TARGETS[target], work, table.memory_profile), name)
        else:
            sram = None
            host = host_layers(model, example)
            layers = [Layer(n, k) for n, _, _, k in host]
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
    keys = [la.key for la in layers]
    overhead, how = _overhead(table, len(layers), keys, sum(la.metrics.get("latency_ms", 0.0) for la in layers))
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
    """Arena (the input included) + output bytes of the generated program (codegen's own plan)."""
    from tinytamer.micro import codegen

    cm = codegen.generate(g, dsp=True)
    return cm.sram_bytes(0)


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
BITS = range(8, 1, -1)  # the weight and activation widths of the "bits" space


def space_configs(
    model: nn.Module, space: str, example: torch.Tensor, calib: Sequence[torch.Tensor] | None = None
) -> list[tuple[str, Callable[[], nn.Module]]]:
    """The configurations of ``model`` a table is built over: ``(name, make)`` pairs.

    ``model``: the model as given.  ``bits``: every weight bit width 2-8 applied to all
    layers (int8 quantization with per-layer bits), with 8-bit activations and again with
    4-bit ones (``w<b>``, ``w<b>a4``), then the mixed configurations that hold the keys those
    miss (``mix<w>-<a>-<a'>``: weights at ``w`` bits, activations alternating ``a`` and
    ``a'`` along the convolution and linear layers).  A layer's key depends on its weight
    bits, on whether its clamp is narrow and on the requantization paths its scales select
    (:func:`_paths`), which its input's activation bits move too: every (weights,
    input activations, output activations) triple of a chain of layers occurs in one of the
    7 x 7 x 7 alternating configurations, and those that add a key are built (chosen
    greedily, keys computed without building), so the table holds every layer of every
    mixed-bit configuration of a chain.  A layer fed from further back (a residual's other
    side) may still meet a key the table lacks: :func:`predict` measures it then.
    """
    if space == "model":
        return [("model", lambda: model)]
    if space != "bits":
        raise CostTableError(f"unknown space '{space}'; choose one of {', '.join(SPACES)}")
    from tinytamer.compress.int8 import quantize_ptq
    from tinytamer.micro.lower import lower

    batches = list(calib or _random_calib(example))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    def make(w: int, acts: tuple[int, int]) -> Callable[[], nn.Module]:
        over = {n: {"bits": w, "act_bits": acts[j % 2]} for j, n in enumerate(names)}
        return lambda: quantize_ptq(copy.deepcopy(model).eval(), batches, select={"overrides": over})

    def keys(w: int, acts: tuple[int, int]) -> set[str]:
        return {k for *_, k in micro_layers(lower(make(w, acts)(), example[:1]), dsp=True)}

    uniform = [((b, (8, 8)), f"w{b}") for b in BITS] + [((b, (4, 4)), f"w{b}a4") for b in BITS]
    have = set().union(*(keys(*c) for c, _ in uniform))
    mixed = {(w, (a, b)): keys(w, (a, b)) - have for w in BITS for a in BITS for b in BITS if a != b}
    chosen = []
    while left := set().union(*mixed.values()) - have:
        best = max(mixed, key=lambda c: len(mixed[c] & left))
        chosen.append(((best[0], best[1]), f"mix{best[0]}-{best[1][0]}-{best[1][1]}"))
        have |= mixed.pop(best)
    return [(name, make(*c)) for c, name in uniform + chosen]
