"""Kernel tuning on the emulated device, with a persistent log (what AutoTVM did on device).

For every op with knobs (:func:`tinytamer.micro.schedule.space`), each candidate
schedule is compiled into one module per layer shape - the candidates side by
side, reading the same random input - and run in a counting
:class:`~tinytamer.micro.session.Session`; the schedule with the fewest
estimated cycles wins.  Every candidate's output is also checked bit for bit
against the integer reference.  Small spaces are searched exhaustively; large
ones by coordinate descent (start from the default, sweep one knob at a time
with the others fixed, repeat until no knob improves), which measures
``sum(len(values))`` points per sweep instead of their product.

Cycles are estimated under a memory profile (:mod:`tinytamer.micro.profiles`): under a
board's, a weight read from flash pays its wait states, so int16 weights (twice the flash
reads) may lose to int8 ones; the measurement decides.  Each candidate also has a flash
cost: the bytes of the constants it emits (weights in the layout it reads, requantization
records).  With a flash budget, the choice is a walk from the fastest schedule of every
layer towards the smallest: each step takes the move (one layer to a smaller candidate) that
costs the fewest extra cycles per byte saved, and the walk stops at the first point whose
linked image fits.  The walk does not depend on the budget, so a tighter budget stops at
the same point or a later one: never at more constant bytes.  Packed and sparse weight
forms are candidates like the others, so a tight budget keeps them.

Results are appended to a JSON-lines log keyed by device, memory profile, op kind, shape
and schedule, so a second run (or another model with the same layer shapes) reuses them
without measuring.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinytamer.errors import CorruptFileError, ModelError
from tinytamer.fileio import append_jsonl, read_jsonl
from tinytamer.micro import codegen, reference, schedule, toolchain
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops import op_def
from tinytamer.micro.ops.base import CallSite
from tinytamer.micro.profiles import BOARD, get_profile
from tinytamer.micro.session import Session

EXHAUSTIVE_LIMIT = 8
# The default flash budget keeps this share of the part's flash for the user's firmware
# (start-up code, drivers, the application around the model).
FLASH_RESERVE = 0.10


class FlashBudgetError(ModelError):
    """No schedule of the model fits the flash budget."""


def default_flash_budget(cpu: str, profile: str) -> int | None:
    """The part's flash less :data:`FLASH_RESERVE`; the ideal profile (no part) takes the
    flash of the core's usual board (:data:`~tinytamer.micro.profiles.BOARD`)."""
    p = get_profile(profile, cpu)
    if p.flash_bytes is None and cpu in BOARD:
        p = get_profile(BOARD[cpu], cpu)
    return None if p.flash_bytes is None else int(p.flash_bytes * (1 - FLASH_RESERVE))


def default_log() -> Path:
    root = Path(os.environ.get("TINYTAMER_CACHE", Path.home() / ".cache" / "tinytamer"))
    return root / "micro_tuning.jsonl"


@functools.cache
def runtime_version() -> str:
    """A hash of the kernel sources: measurements of older kernels are not reused."""
    h = hashlib.sha256()
    for f in sorted(codegen.RUNTIME_DIR.glob("tt_*.[ch]")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def layer_key(g: Graph, op: Op, cpu: str, profile: str = "ideal") -> str:
    """Kernel version + device + memory profile + op kind + every shape and parameter the
    cost depends on."""
    shapes = [g.tensors[t].shape for t in op.inputs] + [g.tensors[op.output].shape]
    return f"{runtime_version()}|{cpu}|{profile}|{type(op).__name__}|{shapes}|{op_def(op).layer_key(op)}"


_C_SIZES = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4, "uint32_t": 4}
_C_ARRAY = re.compile(r"static const (\w+) \w+\[(\d+)\]")


def const_bytes(g: Graph, i: int, sched: dict) -> int:
    """Flash bytes of the constant arrays op ``i`` emits under ``sched`` (its weights in the
    layout that schedule reads, requantization records, codebooks, indices).  The op's
    parameter struct is the same under every schedule and is left out."""
    op = copy.copy(g.ops[i])
    op.schedule = dict(sched)
    site = CallSite(g, i, True, args=["x"] * len(op.inputs), out="y", scratch="0", fused_add=None)
    data, _ = op_def(op).emit_c(op, site)
    return sum(_C_SIZES.get(t, 4) * int(n) for t, n in _C_ARRAY.findall("".join(data)))


def _sched_id(s: dict) -> str:
    return json.dumps(s, sort_keys=True)


class TuningLog:
    """Append-only JSON lines: {"key", "schedule", "est_cycles", "instructions"}."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_log()
        self.records: dict[tuple[str, str], dict] = {}
        # A torn last line (a tuner killed mid-append) is skipped with a warning; a bad line
        # elsewhere is an error naming the file and line.
        for i, r in enumerate(read_jsonl(self.path)):
            if not (
                isinstance(r, dict)
                and isinstance(r.get("key"), str)
                and isinstance(r.get("schedule"), dict)
                and all(isinstance(r.get(k), int) for k in ("est_cycles", "instructions"))
            ):
                raise CorruptFileError(
                    f"micro tuning log {self.path}: record {i + 1} is not a "
                    "{key, schedule, est_cycles, instructions} object; the log is "
                    "damaged: delete it to measure again"
                )
            self.records[(r["key"], _sched_id(r["schedule"]))] = r

    def get(self, key: str, sched: dict) -> dict | None:
        return self.records.get((key, _sched_id(sched)))

    def add(self, key: str, sched: dict, est_cycles: int, instructions: int) -> None:
        rec = {"key": key, "schedule": sched, "est_cycles": est_cycles, "instructions": instructions}
        self.records[(key, _sched_id(sched))] = rec
        # Locked, whole-line, fsynced appends: concurrent tuners interleave whole lines.
        append_jsonl(self.path, rec)


def _distinct(op: Op, dsp: bool, knobs: dict[str, list]) -> list[dict]:
    """Every knob combination, de-duplicated by the schedule it resolves to."""
    seen, out = set(), []
    for values in itertools.product(*knobs.values()):
        probe = copy.copy(op)
        probe.schedule = dict(zip(knobs, values, strict=True))
        s = schedule.resolve(probe, dsp)  # drops the knobs the chosen kernel does not read
        if _sched_id(s) not in seen:
            seen.add(_sched_id(s))
            out.append(s)
    return out


def coordinate_descent(
    knobs: dict[str, list],
    cost: Callable[[dict], float],
    start: dict | None = None,
    max_sweeps: int = 4,
    prepare: Callable[[list[dict]], None] | None = None,
) -> tuple[dict, int]:
    """Minimise ``cost`` over the knob grid one knob at a time; returns (best, evaluations).

    ``prepare``, if given, sees each sweep's trial points before they are costed (the tuner
    measures them together, in one device module)."""
    best = dict(start or {k: v[0] for k, v in knobs.items()})
    cache: dict[str, float] = {}

    def f(s: dict) -> float:
        k = _sched_id(s)
        if k not in cache:
            cache[k] = cost(s)
        return cache[k]

    best_cost = f(best)
    for _ in range(max_sweeps):
        improved = False
        for name, values in knobs.items():
            if prepare is not None:
                prepare([{**best, name: v} for v in values])
            for v in values:
                trial = {**best, name: v}
                c = f(trial)
                if c < best_cost:
                    best, best_cost, improved = trial, c, True
        if not improved:
            break
    return best, len(cache)


def _measure(
    g: Graph, op: Op, cpu: str, scheds: list[dict], workdir: Path, seed: int = 0, profile: str = "ideal"
) -> list[tuple[int, int]]:
    """Build the candidates side by side in one module; (est_cycles, instructions) each."""
    x_name = op.inputs[0]
    tensors = {x_name: g.tensors[x_name]}
    ops = []
    for j, s in enumerate(scheds):
        cand = copy.copy(op)
        cand.inputs = [x_name] * len(op.inputs)
        cand.output = f"cand{j}"
        cand.name = f"{op.name}#{j}"
        cand.schedule = dict(s)
        out = copy.copy(g.tensors[op.output])
        out.name = cand.output
        tensors[cand.output] = out
        ops.append(cand)
    bench = Graph(tensors, ops, x_name, ops[-1].output)
    cm = codegen.generate(bench, dsp=True, input_in_arena=False)  # every candidate reads t_in
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, g.tensors[x_name].shape).astype(np.int8)
    want = [reference.run_op(bench, o, [x] * len(o.inputs)).reshape(-1) for o in ops]
    results = []
    with Session(cpu, cm, workdir=workdir, profile=profile) as sess:
        t_in, t_out = sess.alloc(x.size), sess.alloc(cm.output_size)
        sess.write(t_in, x.reshape(-1))
        for j, (fn, _) in enumerate(cm.layers):
            r = sess.call(fn, t_in, t_out)
            sess.flush()
            got = _read_candidate(sess, cm, bench, j, t_out)
            if not np.array_equal(got, want[j]):
                raise AssertionError(
                    f"tuning: schedule {scheds[j]} of '{op.name}' is not bit-exact with the integer reference"
                )
            results.append((r.est_cycles, r.instructions))
    return results


def _read_candidate(sess: Session, cm, bench: Graph, j: int, t_out) -> np.ndarray:
    kind, off = cm.plan.location[f"cand{j}"]
    if kind == "out":
        return sess.read(t_out)
    size = bench.tensors[f"cand{j}"].size
    return np.frombuffer(sess.read_bytes(sess.symbols["tt_arena"] + off, size), dtype=np.int8)


def tune(
    g: Graph,
    cpu: str = "cortex-m4",
    *,
    log: TuningLog | str | Path | None = None,
    workdir: str | Path | None = None,
    profile: str = "ideal",
    flash_budget: int | None = None,
) -> dict[str, dict]:
    """Choose each tunable op's schedule by measurement under memory ``profile``, within
    ``flash_budget`` bytes of linked flash (None: no budget); sets ``op.schedule`` in place.

    Returns {op name: {"schedule", "est_cycles", "flash_bytes", "default_est_cycles",
    "measured", "choices"}} with ``choices`` the layer's measured (cycles, flash) trade-offs
    (the Pareto front, fastest first).  FlashBudgetError when even the smallest schedule of
    every layer does not fit."""
    profile = get_profile(profile, cpu).name
    tlog = log if isinstance(log, TuningLog) else TuningLog(log)
    report: dict[str, dict] = {}
    fronts: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="tamer-tune-") as tmp:
        base = Path(workdir) if workdir is not None else Path(tmp)
        for i, op in enumerate(g.ops):
            knobs = schedule.space(op, True)
            if not any(len(v) > 1 for v in knobs.values()):
                continue
            key = layer_key(g, op, cpu, profile)
            cands = _distinct(op, True, knobs)
            flash = {_sched_id(s): const_bytes(g, i, s) for s in cands}
            measured = _search(g, i, cpu, profile, key, knobs, cands, tlog, base)
            if flash_budget is not None:
                # The smallest schedule is always measured: the walk may have to end there.
                smallest = min(cands, key=lambda s: flash[_sched_id(s)])
                if tlog.get(key, smallest) is None:
                    ((c, n),) = _measure(g, op, cpu, [smallest], base / f"l{i}", profile=profile)
                    tlog.add(key, smallest, c, n)
                    measured += 1
            known = [
                {"schedule": s, "est_cycles": tlog.get(key, s)["est_cycles"], "flash_bytes": flash[_sched_id(s)]}
                for s in cands
                if tlog.get(key, s)
            ]
            fronts[i] = _pareto(known)
            default = tlog.get(key, _distinct(op, True, {k: v[:1] for k, v in knobs.items()})[0])
            report[op.name] = {
                "default_est_cycles": default["est_cycles"] if default else None,
                "measured": measured,
                "memory_profile": profile,
                "choices": fronts[i],
            }
        pick = {i: 0 for i in fronts}  # the fastest of every front
        if flash_budget is not None:
            pick = _fit(g, cpu, fronts, flash_budget, base / "link")
    for i, k in pick.items():
        op, best = g.ops[i], fronts[i][k]
        op.schedule = dict(best["schedule"])
        report[op.name].update(
            schedule=best["schedule"], est_cycles=best["est_cycles"], flash_bytes=best["flash_bytes"]
        )
    return report


def _search(
    g: Graph,
    i: int,
    cpu: str,
    profile: str,
    key: str,
    knobs: dict[str, list],
    cands: list[dict],
    tlog: TuningLog,
    base: Path,
) -> int:
    """Measure op ``i``'s candidates not yet in the log (all of them, or by coordinate
    descent for a large grid); returns how many were measured."""
    op = g.ops[i]
    missing = [s for s in cands if tlog.get(key, s) is None]
    grid = int(np.prod([len(v) for v in knobs.values()]))
    if missing and grid > EXHAUSTIVE_LIMIT:

        def canon(t):
            return _distinct(op, True, {k: [v] for k, v in t.items()})[0]

        def prepare(trials):
            todo = []
            for s in map(canon, trials):
                if tlog.get(key, s) is None and s not in todo:
                    todo.append(s)
            if todo:
                for s, (c, n) in zip(todo, _measure(g, op, cpu, todo, base / f"l{i}", profile=profile), strict=True):
                    tlog.add(key, s, c, n)

        def cost(t):
            s = canon(t)
            prepare([s])
            return tlog.get(key, s)["est_cycles"]

        coordinate_descent(knobs, cost, prepare=prepare)
        return sum(1 for s in missing if tlog.get(key, s) is not None)
    if missing:
        for s, (c, n) in zip(missing, _measure(g, op, cpu, missing, base / f"l{i}", profile=profile), strict=True):
            tlog.add(key, s, c, n)
    return len(missing)


def _pareto(known: list[dict]) -> list[dict]:
    """The candidates no other beats on both cycles and flash, fastest first."""
    front: list[dict] = []
    for c in sorted(known, key=lambda c: (c["est_cycles"], c["flash_bytes"])):
        if not front or c["flash_bytes"] < front[-1]["flash_bytes"]:
            front.append(c)
    return front


def flash_walk(fronts: dict[int, list[dict]]) -> list[dict[int, int]]:
    """The points of the walk from every layer's fastest choice to its smallest: at each
    step the move with the fewest extra cycles per byte saved (ties: the most bytes, then
    the first layer).  Independent of any budget; constant bytes fall at every step."""
    pick = {i: 0 for i in fronts}
    walk = [dict(pick)]
    while True:
        best = None
        for i, front in fronts.items():
            here = front[pick[i]]
            for k in range(pick[i] + 1, len(front)):
                saved = here["flash_bytes"] - front[k]["flash_bytes"]
                rate = (front[k]["est_cycles"] - here["est_cycles"]) / saved
                if best is None or (rate, -saved) < best[:2]:
                    best = (rate, -saved, i, k)
        if best is None:
            return walk
        pick[best[2]] = best[3]
        walk.append(dict(pick))


def _fit(g: Graph, cpu: str, fronts: dict[int, list[dict]], budget: int, workdir: Path) -> dict[int, int]:
    """The first point of :func:`flash_walk` whose linked image fits ``budget``.  Linked
    flash is estimated as (code and the other constants, from a link) + the tuned layers'
    constant bytes, and each chosen point is linked to check it; an estimate that proves
    short moves the walk on."""
    walk = flash_walk(fronts)

    def consts(pick):
        return sum(fronts[i][k]["flash_bytes"] for i, k in pick.items())

    def linked(pick) -> int:
        for i, k in pick.items():
            g.ops[i].schedule = dict(fronts[i][k]["schedule"])
        cm = codegen.generate(g, dsp=True)
        return toolchain.arm_build(cm, workdir, cpu).flash_bytes

    j = 0
    other = linked(walk[0]) - consts(walk[0])
    while True:
        j = next((n for n in range(j, len(walk)) if other + consts(walk[n]) <= budget), None)
        if j is None:
            raise FlashBudgetError(
                f"micro tuning: no schedule fits the flash budget of {budget} bytes: the "
                f"smallest needs about {other + consts(walk[-1])} (code and other constants "
                f"{other} + the tuned layers' weights {consts(walk[-1])}); raise flash_budget, "
                "or compress the weights (packed int4/int2, shared or sparse forms)"
            )
        size = linked(walk[j])
        if size <= budget:
            return walk[j]
        # Code the estimate left out (another kernel linked): charge it and walk on.
        other = size - consts(walk[j])
        j += 1  # every retry moves the walk on: the loop ends


def tuning_table(report: dict[str, dict]) -> str:
    """A short text table of :func:`tune`'s report: per layer the choice taken and its
    (cycles, flash) trade-offs."""
    rows = [f"{'layer':<16} {'kernel':<8} {'est. cycles':>12} {'flash B':>9}  choices (cycles/flash B)"]
    for name, r in report.items():
        if "schedule" not in r:
            continue
        opts = ", ".join(f"{c['est_cycles']}/{c['flash_bytes']}" for c in r["choices"])
        rows.append(
            f"{name[:16]:<16} {r['schedule'].get('kernel', '-'):<8} {r['est_cycles']:>12} {r['flash_bytes']:>9}  {opts}"
        )
    return "\n".join(rows)
