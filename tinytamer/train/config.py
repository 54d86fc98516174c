"""Solver configuration with Caffe's names, and a reader for Caffe ``solver.prototxt`` files.

Field names follow Caffe's ``SolverParameter`` so a Caffe solver file reads
one-to-one; the defaults are ours (Caffe's ``momentum`` defaults to 0, ours to 0.9).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field

from tinytamer.errors import RecipeError

log = logging.getLogger(__name__)


class SolverConfig(pydantic.BaseModel, extra="forbid"):
    """How to train: learning-rate policy, optimizer, schedule of tests and snapshots."""

    base_lr: float = Field(0.01, gt=0, description="learning rate at iteration 0")
    lr_policy: Literal["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"] = Field(
        "fixed", description="Caffe learning-rate policy, see tinytamer.train.lr"
    )
    gamma: float = Field(0.1, description="decay factor of step/exp/inv/multistep/sigmoid")
    power: float = Field(1.0, description="exponent of inv and poly")
    stepsize: int = Field(1000, ge=1, description="period of step; centre of sigmoid")
    stepvalue: list[int] = Field(default_factory=list, description="iterations where multistep multiplies by gamma")
    max_iter: int | None = Field(None, ge=1, description="number of updates (or give epochs)")
    epochs: float | None = Field(
        None, gt=0, description="passes over the train loader: ceil(epochs*len/iter_size) updates"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum; beta1 of Adam/RAdam")
    momentum2: float = Field(0.999, ge=0, lt=1, description="beta2 of Adam/RAdam")
    delta: float = Field(1e-8, gt=0, description="epsilon of Adam/RAdam")
    weight_decay: float = Field(0.0, ge=0, description="regularisation strength")
    regularization_type: Literal["L2", "L1"] = Field(
        "L2", description="L2 adds weight_decay*w to the gradient, L1 adds weight_decay*sign(w)"
    )
    iter_size: int = Field(1, ge=1, description="mini-batches accumulated into one update")
    test_interval: int = Field(0, ge=0, description="test every N updates (0: only at the end)")
    test_iter: int | None = Field(None, ge=1, description="batches per test (None: whole loader)")
    display: int = Field(20, ge=0, description="log a train record every N updates (0: never)")
    snapshot: int = Field(0, ge=0, description="snapshot every N updates (0: only the final one)")
    optimizer: Literal["sgd", "adam", "radam", "ranger", "yellowfin"] = Field(
        "sgd", description="update rule; ranger = RAdam + Lookahead"
    )
    lookahead_k: int = Field(6, ge=1, description="Lookahead: fast steps per slow update")
    lookahead_alpha: float = Field(0.5, gt=0, le=1, description="Lookahead: slow step size")
    swa: bool = Field(False, description="stochastic weight averaging over the last iterations")
    swa_start: int | None = Field(None, ge=0, description="first averaged iteration (None: 75% of max_iter)")
    swa_freq: int = Field(1, ge=1, description="average every N updates; SWALR anneals over N")
    swa_lr: float | None = Field(None, gt=0, description="constant lr during SWA (None: the policy's lr at swa_start)")
    clip_gradients: float | None = Field(
        None, gt=0, description="scale gradients down to this global L2 norm when above it"
    )
    seed: int = Field(0, description="seeds dropout/global RNGs and the loader's shuffle order")
    memory_format: Literal["contiguous", "channels_last"] = Field(
        "contiguous",
        description="layout of 4-d weights while training: channels_last runs oneDNN's CPU convolutions "
        "faster (ResNet-8 1.22x at 2 threads), but PyTorch's channels_last BatchNorm gathers batch statistics "
        "less exactly; the model is handed back contiguous",
    )

    @pydantic.model_validator(mode="after")
    def _check(self) -> SolverConfig:
        if (self.max_iter is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_iter and epochs")
        if self.lr_policy == "multistep" and any(
            b <= a for a, b in zip(self.stepvalue, self.stepvalue[1:], strict=False)
        ):
            raise ValueError(f"stepvalue must be strictly increasing, got {self.stepvalue}")
        if self.swa and self.optimizer == "yellowfin":
            raise ValueError("swa sets the learning rate, yellowfin tunes its own: pick one")
        return self

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "solver config") -> SolverConfig:
        """Validate ``data``; a mistake raises RecipeError naming ``source`` and the key."""
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(config)'}: {err['msg']}" for err in e.errors()
            )
            raise RecipeError(f"{source}: {problems}") from None

    def resolved(self, batches_per_epoch: int | None) -> SolverConfig:
        """A copy with ``max_iter`` set (from ``epochs`` when given) and ``swa_start`` filled."""
        max_iter = self.max_iter
        if max_iter is None:
            if not batches_per_epoch:
                raise RecipeError("solver config: epochs needs a train loader with a length; give max_iter")
            # rounded first so that 0.1 epoch x 30 batches is 3 updates, not 4
            max_iter = max(1, math.ceil(round(self.epochs * batches_per_epoch / self.iter_size, 9)))
        swa_start = self.swa_start if self.swa_start is not None else (3 * max_iter) // 4
        return self.model_copy(update={"max_iter": max_iter, "epochs": None, "swa_start": swa_start})


# Caffe keys naming nets, files or hardware: meaningless here (the model and data come
# from tinytamer), so they are read and dropped with a note.
_IGNORED = {
    "net",
    "net_param",
    "train_net",
    "train_net_param",
    "test_net",
    "test_net_param",
    "train_state",
    "test_state",
    "snapshot_prefix",
    "snapshot_format",
    "snapshot_diff",
    "snapshot_after_train",
    "solver_mode",
    "device_id",
    "test_compute_loss",
    "test_initialization",
    "debug_info",
    "average_loss",
    "layer_wise_reduce",
    "weights",
}
_NOTE = "%s:%d: '%s' ignored (the net and data come from tinytamer)"
_CAFFE_TYPES = {"SGD": "sgd", "ADAM": "adam", "RADAM": "radam"}
_REPEATED = {"stepvalue"}
_TOKEN = re.compile(
    r'\s*(?:(?P<comment>#[^\n]*)|(?P<string>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')'
    r"|(?P<punct>[:{}])|(?P<word>[^\s:{}#\"']+))"
)


def _tokens(text: str, path: Path) -> list[tuple[str, str, int]]:
    """(kind, text, line) for each token; comments dropped."""
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            line = text.count("\n", 0, pos) + 1
            raise RecipeError(f"{path}:{line}: cannot read {text[pos : pos + 20]!r}")
        line = text.count("\n", 0, m.start(m.lastgroup)) + 1 if m.lastgroup else 0
        if m.lastgroup and m.lastgroup != "comment":
            out.append((m.lastgroup, m.group(m.lastgroup), line))
        pos = m.end()
    return out


def _value(kind: str, text: str) -> Any:
    if kind == "string":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text  # an enum name such as SGD


def read_prototxt(path: str | Path) -> SolverConfig:
    """Read a Caffe ``solver.prototxt`` (protobuf text format) into a SolverConfig.

    Besides Caffe's keys, every SolverConfig field name is accepted (``epochs``,
    ``swa`` ...).  Caffe's ``type``/``solver_type`` pick the optimizer and
    ``random_seed`` the seed.  Net, file and hardware keys are ignored with a
    logged note; any other key raises RecipeError naming it and its line.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RecipeError(f"cannot read solver file {path}: {e.strerror}") from None
    toks = _tokens(text, path)
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    i = 0
    while i < len(toks):
        kind, key, line = toks[i]
        if kind != "word":
            raise RecipeError(f"{path}:{line}: expected a key, found {key!r}")
        i += 1
        if i < len(toks) and toks[i][1] == ":":
            i += 1
        if i >= len(toks):
            raise RecipeError(f"{path}:{line}: key '{key}' has no value")
        if toks[i][1] == "{":  # a nested message: only the ignored net/state blocks have one
            depth, i = 1, i + 1
            while i < len(toks) and depth:
                depth += {"{": 1, "}": -1}.get(toks[i][1], 0) if toks[i][0] == "punct" else 0
                i += 1
            if depth:
                raise RecipeError(f"{path}:{line}: block '{key}' is not closed")
            if key not in _IGNORED:
                raise RecipeError(f"{path}:{line}: unknown block '{key}'")
            log.warning(_NOTE, path, line, key)
            continue
        vkind, vtext, _ = toks[i]
        if vkind == "punct":
            raise RecipeError(f"{path}:{line}: key '{key}' has no value")
        value = _value(vkind, vtext)
        i += 1
        if key in _IGNORED:
            log.warning(_NOTE, path, line, key)
            continue
        if key in ("type", "solver_type"):
            name = str(value).upper()
            if name not in _CAFFE_TYPES:
                raise RecipeError(
                    f"{path}:{line}: solver {key} '{value}' is not supported "
                    f"(supported: {', '.join(_CAFFE_TYPES)}; or set optimizer: ranger/yellowfin)"
                )
            key, value = "optimizer", _CAFFE_TYPES[name]
        elif key == "random_seed":
            key = "seed"
        if key not in SolverConfig.model_fields:
            raise RecipeError(f"{path}:{line}: unknown solver key '{key}'")
        if key in _REPEATED:
            data.setdefault(key, []).append(value)
        elif key in data:
            raise RecipeError(f"{path}:{line}: key '{key}' given twice (first on line {lines[key]})")
        else:
            data[key] = value
        lines[key] = line
    # Caffe's random_seed -1 means "pick one"; ours is always deterministic.
    if data.get("seed", 0) < 0:
        data.pop("seed")
    try:
        return SolverConfig.model_validate(data)
    except pydantic.ValidationError as e:
        problems = []
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            where = f"{path}:{lines[key]}" if key in lines else str(path)
            problems.append(f"{where}: {key or 'solver'}: {err['msg']}")
        raise RecipeError("; ".join(problems)) from None
