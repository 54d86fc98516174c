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

Results are appended to a JSON-lines log keyed by device, op kind, shape and
schedule, so a second run (or another model with the same layer shapes) reuses
them without measuring.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinytamer.errors import CorruptFileError
from tinytamer.fileio import append_jsonl, read_jsonl
from tinytamer.micro import codegen, reference, schedule
from tinytamer.micro.ir import Graph, Op
from tinytamer.micro.ops import op_def
from tinytamer.micro.session import Session

EXHAUSTIVE_LIMIT = 8


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


def layer_key(g: Graph, op: Op, cpu: str) -> str:
    """Kernel version + device + op kind + every shape and parameter the cost depends on."""
    shapes = [g.tensors[t].shape for t in op.inputs] + [g.tensors[op.output].shape]
    return f"{runtime_version()}|{cpu}|{type(op).__name__}|{shapes}|{op_def(op).layer_key(op)}"


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
            if not (isinstance(r, dict) and isinstance(r.get("key"), str) and isinstance(r.get("schedule"), dict)
                    and all(isinstance(r.get(k), int) for k in ("est_cycles", "instructions"))):
                raise CorruptFileError(f"micro tuning log {self.path}: record {i + 1} is not a "
                                       "{key, schedule, est_cycles, instructions} object; the log is "
                                       "damaged: delete it to measure again")
            self.records[(r["key"], _sched_id(r["schedule"]))] = r

    def get(self, key: str, sched: dict) -> dict | None:
        return self.records.get((key, _sched_id(sched)))

    def add(self, key: str, sched: dict, est_cycles: int, instructions: int) -> None:
        rec = {"key": key, "schedule": sched, "est_cycles": est_cycles,
               "instructions": instructions}
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


def coordinate_descent(knobs: dict[str, list], cost: Callable[[dict], float],
                       start: dict | None = None, max_sweeps: int = 4,
                       prepare: Callable[[list[dict]], None] | None = None) -> tuple[dict, int]:
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


def _measure(g: Graph, op: Op, cpu: str, scheds: list[dict], workdir: Path,
             seed: int = 0) -> list[tuple[int, int]]:
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
    cm = codegen.generate(bench, dsp=True)
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, g.tensors[x_name].shape).astype(np.int8)
    want = [reference.run_op(bench, o, [x] * len(o.inputs)).reshape(-1) for o in ops]
    results = []
    with Session(cpu, cm, workdir=workdir) as sess:
        t_in, t_out = sess.alloc(x.size), sess.alloc(cm.output_size)
        sess.write(t_in, x.reshape(-1))
        for j, (fn, _) in enumerate(cm.layers):
            r = sess.call(fn, t_in, t_out)
            sess.flush()
            got = _read_candidate(sess, cm, bench, j, t_out)
            if not np.array_equal(got, want[j]):
                raise AssertionError(f"tuning: schedule {scheds[j]} of '{op.name}' is not "
                                     "bit-exact with the integer reference")
            results.append((r.est_cycles, r.instructions))
    return results


def _read_candidate(sess: Session, cm, bench: Graph, j: int, t_out) -> np.ndarray:
    kind, off = cm.plan.location[f"cand{j}"]
    if kind == "out":
        return sess.read(t_out)
    size = bench.tensors[f"cand{j}"].size
    return np.frombuffer(sess.read_bytes(sess.symbols["tt_arena"] + off, size), dtype=np.int8)


def tune(g: Graph, cpu: str = "cortex-m4", *, log: TuningLog | str | Path | None = None,
         workdir: str | Path | None = None) -> dict[str, dict]:
    """Choose each tunable op's schedule by measurement; sets ``op.schedule`` in place and
    returns {op name: {"schedule", "est_cycles", "default_est_cycles", "measured"}}."""
    tlog = log if isinstance(log, TuningLog) else TuningLog(log)
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tamer-tune-") as tmp:
        base = Path(workdir) if workdir is not None else Path(tmp)
        for i, op in enumerate(g.ops):
            knobs = schedule.space(op, True)
            if not any(len(v) > 1 for v in knobs.values()):
                continue
            key = layer_key(g, op, cpu)
            cands = _distinct(op, True, knobs)
            measured = 0
            missing = [s for s in cands if tlog.get(key, s) is None]
            grid = int(np.prod([len(v) for v in knobs.values()]))
            if missing and grid > EXHAUSTIVE_LIMIT:
                def canon(t, _op=op):
                    return _distinct(_op, True, {k: [v] for k, v in t.items()})[0]

                def prepare(trials, _op=op, _i=i, _key=key):
                    todo = []
                    for s in map(canon, trials):
                        if tlog.get(_key, s) is None and s not in todo:
                            todo.append(s)
                    if todo:
                        for s, (c, n) in zip(todo, _measure(g, _op, cpu, todo, base / f"l{_i}"),
                                             strict=True):
                            tlog.add(_key, s, c, n)

                def cost(t, _key=key):
                    s = canon(t)
                    prepare([s])
                    return tlog.get(_key, s)["est_cycles"]

                coordinate_descent(knobs, cost, prepare=prepare)
                measured = sum(1 for s in missing if tlog.get(key, s) is not None)
            elif missing:
                for s, (c, n) in zip(missing, _measure(g, op, cpu, missing, base / f"l{i}"),
                                     strict=True):
                    tlog.add(key, s, c, n)
                measured = len(missing)
            known = [(tlog.get(key, s)["est_cycles"], s) for s in cands if tlog.get(key, s)]
            best_cycles, best = min(known, key=lambda t: t[0])
            default = tlog.get(key, _distinct(op, True, {k: v[:1] for k, v in knobs.items()})[0])
            op.schedule = dict(best)
            report[op.name] = {"schedule": best, "est_cycles": best_cycles,
                               "default_est_cycles": default["est_cycles"] if default else None,
                               "measured": measured}
    return report
