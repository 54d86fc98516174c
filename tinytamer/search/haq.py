"""HAQ: mixed-precision quantization searched by reinforcement learning with the hardware in the
loop (Wang et al., CVPR 2019, "HAQ: Hardware-Aware Automated Quantization with Mixed
Precision"; the agent is :mod:`tinytamer.search.haq_agent`).

The steps of the paper this module implements:

1. **Observation** (Sec. 3.1): per quantizable layer, a 10-dimensional state - layer index,
   input channels, output channels, kernel size, stride, input feature-map size, parameter
   count, depthwise flag, weight/activation flag, the previous action - each column normalized
   to [0, 1] over the model's layers.  One step decides a layer's weight bits, the next its
   activation bits (here: the bits of the activation the layer produces, which is how
   :func:`tinytamer.compress.int8.quantize` keys per-layer ``act_bits``).
2. **Action** (Sec. 3.2): a continuous ``a`` in [0, 1] becomes
   ``round(a * (max - min + 1) + min - 0.5)`` bits, in [2, 8].
3. **Hardware feedback and the budget** (Sec. 3.3): a :class:`Resource` says what a policy
   costs on the target; after the episode, while the policy costs more than the budget, bits
   are decreased one at a time from the last layer backwards (activation, then weight, as the
   released code's ``_final_action_wall``), so every episode meets the budget.
4. **Reward** (Sec. 3.4): ``0.1 x (accuracy after a short fine-tune - full-precision
   accuracy)``, on the validation split (never the test split), given to every step of the
   episode.

Resources (measured or predicted; each says which in ``Resource.source``):

- :func:`micro_flash`: Cortex-M flash bytes of the whole program, measured: a policy is
  quantized, lowered, generated and linked (a few seconds), and the linked image read, once
  per combination of the layers' weight forms; within a combination only the weights' bytes
  move, exactly.  The int8 and the packed int4 / int2 / codebook kernels are linked only
  where a layer uses them, so code size moves with the policy and no sum of per-layer
  figures predicts it.
- :func:`weight_flash`: the weights' share of that flash, exact per layer (each layer
  quantized as ``compress.int8`` does and stored in the form the micro path chooses,
  :func:`tinytamer.micro.weights.choose`); predicted (no build), code excluded.
- :func:`micro_cycles`: estimated Cortex-M cycles: one emulator run per uniform bit width
  2..8 gives each layer's cycles at that width (a lookup table measured on the target); a
  policy costs the overhead plus its layers' entries.  Predicted from measurements.  The
  packed kernels unpack each row before the int8 math, so on the Cortex-M4 fewer bits cost
  *more* cycles: a cycle budget below the int8 model's cannot be met, and is refused.
- :func:`compressed_bytes`: the size of the compressed model file after k-means weight
  sharing with the policy's bits per layer (the paper's model-size experiments), or after
  linear quantization with them (the file stores b-bit weights as b-bit integers), written
  by :func:`tinytamer.codec.save`.  Measured (the real file's size).

ONNX Runtime latency is not offered: its int8 kernels run every layer at 8 bits, so its
latency does not respond to a bit policy.

Activation bits change no flash or file size (the micro kernels keep int8 activations), so
the budget wall lowers weight bits only, and :func:`search` holds activations at 8 bits
unless asked to search them (``search_acts``) or the resource prices them.  They move
cycles a little: below 8 bits a convolution clamps its output on a slower path (about 8%
more instructions on a 3x3 convolution), which :func:`micro_cycles`, measured at 8-bit
activations, does not count (an under-estimate for policies that search them).
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from tinytamer.compress.int8 import MAX_BITS, MIN_BITS
from tinytamer.compress.selector import Selector, parse, select_plain
from tinytamer.errors import CompressError
from tinytamer.search.haq_agent import DDPG, WARMUP

N_FEATURES = 10
Quantizer = Literal["linear", "kmeans"]


class LayerBits(NamedTuple):
    w: int
    a: int


@dataclass(frozen=True)
class LayerInfo:
    """What the observation says of one quantizable layer."""

    name: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    fmap: int  # input feature-map side (1 for a linear layer)
    params: int
    depthwise: bool


def layer_infos(model: nn.Module, example: torch.Tensor, select: Selector | dict | None = None) -> list[LayerInfo]:
    """The plain conv / linear layers the selector picks, in model order, with their shapes."""
    layers = select_plain(model, select, "haq")
    sides: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(
            lambda _m, inp, _out, n=n: sides.__setitem__(n, int(inp[0].shape[-1]) if inp[0].dim() == 4 else 1)
        )
        for n, m in layers
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = []
    for name, m in layers:
        if isinstance(m, nn.Conv2d):
            out.append(
                LayerInfo(
                    name,
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size[0],
                    m.stride[0],
                    sides.get(name, 1),
                    m.weight.numel(),
                    m.groups > 1 and m.groups == m.in_channels,
                )
            )
        else:
            out.append(LayerInfo(name, m.in_features, m.out_features, 1, 0, 1, m.weight.numel(), False))
    return out


def observations(layers: Sequence[LayerInfo], with_acts: bool = True) -> np.ndarray:
    """The states of one episode, [steps, 10], each column min-max normalized to [0, 1];
    the last column (the previous action) is 0 here and filled in as the episode runs."""
    rows = []
    for i, L in enumerate(layers):
        for is_weight in (1.0, 0.0) if with_acts else (1.0,):
            rows.append([i, L.c_in, L.c_out, L.kernel, L.stride, L.fmap, L.params, float(L.depthwise), is_weight, 0.0])
    obs = np.asarray(rows, np.float64)
    lo, hi = obs.min(0), obs.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return ((obs - lo) / span).astype(np.float32)


def action_to_bits(a: float, lo: int = MIN_BITS, hi: int = MAX_BITS) -> int:
    """The paper's mapping of a continuous action in [0, 1] to a bit width in [lo, hi]."""
    a = min(max(float(a), 0.0), 1.0)
    return int(min(max(round(a * (hi - lo + 1) + lo - 0.5), lo), hi))


@dataclass
class Resource:
    """What a bit policy costs on the target: ``fn(bits) -> float`` in ``unit``."""

    name: str
    unit: str
    fn: Callable[[Sequence[LayerBits]], float]
    source: str  # how the figure is obtained: measured, or predicted from what
    uses_act_bits: bool = False

    def __call__(self, bits: Sequence[LayerBits]) -> float:
        return float(self.fn(bits))


def action_wall(bits: Sequence[LayerBits], resource: Resource, target: float, lo: int = MIN_BITS) -> list[LayerBits]:
    """Lower bits from the last layer backwards (activation, then weight) until ``resource``
    is within ``target``; CompressError when even the lowest bits do not fit."""
    out = list(bits)
    while resource(out) > target:
        moved = False
        for i in reversed(range(len(out))):
            for part in ("a", "w") if resource.uses_act_bits else ("w",):
                if getattr(out[i], part) > lo:
                    out[i] = out[i]._replace(**{part: getattr(out[i], part) - 1})
                    moved = True
                    if resource(out) <= target:
                        return out
        if not moved:
            raise CompressError(
                f"haq: the {resource.name} budget of {target:g} {resource.unit} "
                f"cannot be met: {resource(out):g} at {lo} bits everywhere"
            )
    return out


# ----------------------------------------------------------------------------- quantizing a policy


def policy_selector(select: Selector | dict | None, layers: Sequence[LayerInfo], bits: Sequence[LayerBits]) -> Selector:
    """``select`` with one override per layer, anchored so that no name matches another's."""
    overrides = {f"^{re.escape(L.name)}$": {"bits": b.w, "act_bits": b.a} for L, b in zip(layers, bits, strict=True)}
    return parse(select).model_copy(update={"overrides": overrides})


def _train_steps(model: nn.Module, loader: Iterable[Any], iters: int, lr: float) -> None:
    """A short fine-tune: ``iters`` SGD steps (momentum 0.9), cycling over ``loader``."""
    if iters <= 0:
        return
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    model.train()
    done = 0
    while done < iters:
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            if not torch.isfinite(loss):  # a silent NaN model scores as one class, not as an error
                raise CompressError(
                    f"haq fine-tune: the loss is {float(loss.detach())} at step {done + 1} of {iters} (lr {lr:g}); "
                    "lower the fine-tune learning rate"
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= iters:
                break
    model.eval()


def quantize_policy(
    model: nn.Module,
    calib: Any,
    layers: Sequence[LayerInfo],
    bits: Sequence[LayerBits],
    *,
    quantizer: Quantizer = "linear",
    select: Selector | dict | None = None,
    train_loader: Iterable[Any] = (),
    finetune_iters: int = 0,
    finetune_lr: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """``model`` quantized with the policy and fine-tuned (the input model is untouched):
    linear quantization (``compress.int8``, weights and activations, a converted GraphModule)
    or k-means weight sharing (``compress.share``, weights only, centroids fine-tuned with
    their cluster's mean gradient as HAQ's code does: :func:`mean_cluster_gradients`, finalized)."""
    from tinytamer.compress import int8, share

    torch.manual_seed(seed)
    sel = policy_selector(select, layers, bits)
    if quantizer == "linear":
        return int8.quantize(
            model, calib, select=sel, train=lambda gm: _train_steps(gm, train_loader, finetune_iters, finetune_lr)
        )
    shared = copy.deepcopy(model)
    kmeans_sel = sel.model_copy(update={"overrides": {k: {"bits": v["bits"]} for k, v in sel.overrides.items()}})
    share.kmeans(shared, select=kmeans_sel, seed=seed)
    mean_cluster_gradients(shared)
    _train_steps(shared, train_loader, finetune_iters, finetune_lr)
    final = share.finalize(shared).eval()
    bad = [n for n, t in final.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CompressError(f"haq: k-means sharing left non-finite values in {', '.join(bad)}")
    return final


def mean_cluster_gradients(model: nn.Module) -> None:
    """Make each k-means centroid of ``model`` move by its cluster's *mean* weight gradient.

    HAQ's released code fine-tunes a shared layer by an SGD step on every weight followed by
    each cluster's mean (``kmeans_update_model``); with momentum and weight decay both linear,
    that is SGD on the centroid with the cluster's mean gradient.  Deep Compression's eq. 3
    (:mod:`tinytamer.compress.share`) sums the gradients instead: at 2 bits a LeNet-5 cluster
    holds about 10^5 weights, and a step of 1e-3 on their sum diverges within a few steps.
    """
    from tinytamer.compress import share

    for module in share.shared_layers(model).values():
        sizes = share.cluster_sizes(module).clamp(min=1).to(share.codebook(module).dtype)
        share.codebook(module).register_hook(lambda grad, sizes=sizes: grad / sizes)


# ----------------------------------------------------------------------------- resources


def _int_weights(model: nn.Module, layers: Sequence[LayerInfo], bits: int) -> dict[str, np.ndarray]:
    """Each layer's integer weights at ``bits`` (BN folded), as compress.int8 makes them."""
    from tinytamer.compress.int8 import QuantConv2d, QuantLinear, fuse_bn

    gm = fuse_bn(model)
    out = {}
    for L in layers:
        layer = gm.get_submodule(L.name)
        qcls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        out[L.name] = qcls.from_float(layer, bits).int_weight().numpy()
    return out


def weight_flash_table(model: nn.Module, layers: Sequence[LayerInfo]) -> tuple[np.ndarray, list[list[str]]]:
    """[layers, bits 0..8] flash bytes of each layer's weights in the form the micro path
    stores them at each bit width, and that form's name (``""`` below 2 bits)."""
    from tinytamer.micro import weights

    size = np.zeros((len(layers), MAX_BITS + 1), np.int64)
    forms = [[""] * (MAX_BITS + 1) for _ in layers]
    for b in range(MIN_BITS, MAX_BITS + 1):
        for i, w in enumerate(_int_weights(model, layers, b).values()):
            rows = weights.as_rows(w)
            forms[i][b] = weights.choose(rows, b)
            size[i, b] = weights.FORMS[forms[i][b]].flash_bytes(rows)
    return size, forms


def _uniform(layers: Sequence[LayerInfo], w: int) -> list[LayerBits]:
    return [LayerBits(w, MAX_BITS)] * len(layers)


def _build(
    model: nn.Module,
    calib: Any,
    layers: Sequence[LayerInfo],
    bits: Sequence[LayerBits],
    device: str,
    workdir: Path,
    select: Selector | dict | None,
) -> Any:
    from tinytamer.calib import as_calibration
    from tinytamer.micro.program import build_program

    calib = as_calibration(calib, what="haq calibration")
    gm = quantize_policy(model, calib, layers, bits, select=select)
    return build_program(gm, next(calib.batches(1))[:1], device, workdir)


def weight_flash(model: nn.Module, layers: Sequence[LayerInfo]) -> Resource:
    """Flash bytes of the weights alone, exact per layer as the micro path stores them
    (code, biases and other constants excluded): cheap enough for every step of a search."""
    size, _ = weight_flash_table(model, layers)
    idx = np.arange(len(layers))

    def flash(bits: Sequence[LayerBits]) -> float:
        return float(size[idx, [b.w for b in bits]].sum())

    return Resource(
        "weight flash",
        "bytes",
        flash,
        "predicted: each layer's weights stored "
        "as the micro path packs them (int8, int4, int2 or codebook), code excluded",
    )


def micro_flash(
    model: nn.Module,
    calib: Any,
    layers: Sequence[LayerInfo],
    *,
    device: str = "cortex-m4",
    workdir: str | Path | None = None,
    select: Selector | dict | None = None,
) -> Resource:
    """Flash bytes of the whole program on ``device``: the linked image of a build (a few
    seconds), one per combination of the layers' weight forms.

    The int8 and the packed kernels are linked only where a layer uses them, so the code
    changes with the forms, and no sum of per-layer figures predicts it: it is measured, once
    per combination of forms (int8; int4, int2 or codebook at their bits).  Policies of one
    combination store the same number of bytes per layer (int8 keeps 5-8 bits in a byte),
    so one build measures them all, and the budget wall's one-bit steps rarely need one."""
    _, forms = weight_flash_table(model, layers)
    cache: dict[tuple[str, ...], float] = {}
    root = Path(tempfile.mkdtemp(prefix="haq-flash-", dir=workdir))

    def flash(bits: Sequence[LayerBits]) -> float:
        # int8 stores 5-8 bits alike; a packed form is keyed by its bits as well.
        key = tuple(forms[i][b.w] + ("" if forms[i][b.w] == "int8" else str(b.w)) for i, b in enumerate(bits))
        if key not in cache:
            # Activations do not change flash (the kernels keep int8 activations).
            policy = [LayerBits(b.w, MAX_BITS) for b in bits]
            prog = _build(model, calib, layers, policy, device, root / f"b{len(cache)}", select)
            cache[key] = float(prog.arm.flash_bytes)
        return cache[key]

    return Resource(
        f"{device} flash",
        "bytes",
        flash,
        f"measured: the linked image of a {device} build, one per combination of weight forms",
    )


def micro_cycles(
    model: nn.Module,
    calib: Any,
    layers: Sequence[LayerInfo],
    *,
    device: str = "cortex-m4",
    workdir: str | Path | None = None,
    select: Selector | dict | None = None,
) -> Resource:
    """Estimated cycles of one inference on ``device`` (under the board's memory profile):
    a per-layer table measured on the emulated device at every uniform bit width."""
    from tinytamer.micro.profiles import BOARD

    profile = BOARD.get(device, "ideal")
    table = np.zeros((len(layers), MAX_BITS + 1), np.float64)
    overhead = 0.0
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for b in range(MIN_BITS, MAX_BITS + 1):
            prog = _build(model, calib, layers, _uniform(layers, b), device, Path(tmp) / f"c{b}", select)
            prof = prog.profile(_example_row(prog, calib), memory_profile=profile)
            per = {r["layer"]: r["est_cycles"] for r in prof["layers"]}
            table[:, b] = [per[L.name] for L in layers]
            if b == MAX_BITS:
                overhead = prof["est_cycles"] - table[:, b].sum()
    idx = np.arange(len(layers))

    def cycles(bits: Sequence[LayerBits]) -> float:
        return float(overhead + table[idx, [b.w for b in bits]].sum())

    return Resource(
        f"{device} cycles",
        "cycles",
        cycles,
        "predicted from per-layer "
        f"estimated cycles measured on the emulated {device} ({profile} memory "
        "profile) at uniform 2..8 bits",
    )


def _example_row(prog: Any, calib: Any) -> np.ndarray:
    from tinytamer.calib import as_calibration

    x = next(as_calibration(calib, what="haq calibration").batches(1))[:1]
    return prog.quantize_input(x.numpy())[0]


def compressed_bytes(
    model: nn.Module,
    layers: Sequence[LayerInfo],
    *,
    seed: int = 0,
    select: Selector | dict | None = None,
    quantizer: Quantizer = "kmeans",
    calib: Any = None,
) -> Resource:
    """Bytes of the compressed model file of the policy: after k-means sharing at its bits (the
    paper's model-size experiments), or, with ``quantizer="linear"``, of the model
    ``compress.int8`` quantizes with it (calibrated on ``calib``), whose b-bit weights the file
    stores as b-bit integers."""
    from tinytamer import codec
    from tinytamer.qgraph import QuantizedGraph

    if quantizer == "linear" and calib is None:
        raise CompressError("compressed_bytes: the linear quantizer needs calibration data (calib)")
    cache: dict[tuple[Any, ...], float] = {}

    def file_bytes(bits: Sequence[LayerBits]) -> float:
        # Activation bits are recorded in a linear model's file (its quantizers' settings).
        key = tuple(bits) if quantizer == "linear" else tuple(b.w for b in bits)
        if key not in cache:
            quantized = quantize_policy(model, calib, layers, bits, quantizer=quantizer, select=select, seed=seed)
            if quantizer == "linear":
                quantized = QuantizedGraph(quantized)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.tt"
                codec.save(quantized, path)
                cache[key] = float(path.stat().st_size)
        return cache[key]

    how = "k-means sharing" if quantizer == "kmeans" else "linear quantization"
    return Resource(
        "compressed file", "bytes", file_bytes, f"measured: the size of the file tinytamer.codec writes ({how})"
    )


# ----------------------------------------------------------------------------- the search


@dataclass
class Episode:
    episode: int
    bits: list[LayerBits]
    resource: float
    accuracy: float
    reward: float


@dataclass
class HaqResult:
    layers: list[LayerInfo]
    bits: list[LayerBits]  # the best policy found
    accuracy: float  # its validation accuracy after the short fine-tune
    reward: float
    fp_accuracy: float
    resource: float
    target: float
    resource_name: str
    resource_unit: str
    resource_source: str
    history: list[Episode] = field(default_factory=list)

    def policy(self) -> dict[str, dict[str, int]]:
        return {L.name: {"w_bits": b.w, "a_bits": b.a} for L, b in zip(self.layers, self.bits, strict=True)}


def search(
    model: nn.Module,
    layers: Sequence[LayerInfo],
    resource: Resource,
    target: float,
    *,
    evaluate: Callable[[nn.Module], float],
    calib: Any,
    train_loader: Iterable[Any],
    episodes: int = 300,
    warmup: int = WARMUP,
    quantizer: Quantizer = "linear",
    finetune_iters: int = 0,
    finetune_lr: float = 1e-3,
    select: Selector | dict | None = None,
    seed: int = 0,
    executor: Any = None,
    on_episode: Callable[[Episode], None] | None = None,
    search_acts: bool | None = None,
) -> HaqResult:
    """Search per-layer bits under ``resource(bits) <= target`` for the best ``evaluate``
    (validation accuracy) after a short fine-tune.  Activation bits are searched when
    ``search_acts`` says so; by default only where the resource prices them
    (``resource.uses_act_bits``), else they stay at 8 bits, as in the paper's model-size
    experiments, which quantize weights alone: bits that buy nothing on the budget can only
    cost accuracy.  K-means sharing quantizes weights only.  ``executor`` (a
    :mod:`tinytamer.search.executor` executor) runs the candidate evaluations; None runs
    them here.  DDPG learns from one episode before the next, so candidates run one at a
    time either way."""
    layers = list(layers)
    lowest = [LayerBits(MIN_BITS, MIN_BITS)] * len(layers)
    if resource(lowest) > target:
        raise CompressError(
            f"haq: the {resource.name} budget of {target:g} {resource.unit} "
            f"cannot be met: {resource(lowest):g} at {MIN_BITS} bits everywhere"
        )
    if search_acts and quantizer != "linear":
        raise CompressError("haq: search_acts needs the linear quantizer (k-means sharing quantizes weights only)")
    with_acts = quantizer == "linear" and (resource.uses_act_bits if search_acts is None else search_acts)
    obs = observations(layers, with_acts)
    agent = DDPG(N_FEATURES, len(layers), seed, warmup=warmup)
    fp_accuracy = evaluate(model)

    def score(bits: list[LayerBits]) -> float:
        q = quantize_policy(
            model,
            calib,
            layers,
            bits,
            quantizer=quantizer,
            select=select,
            train_loader=train_loader,
            finetune_iters=finetune_iters,
            finetune_lr=finetune_lr,
            seed=seed,
        )
        return evaluate(q)

    best: Episode | None = None
    history: list[Episode] = []
    for ep in range(episodes):
        states, actions, prev = [], [], 0.0
        for t in range(len(obs)):
            s = obs[t].copy()
            s[-1] = prev
            a = agent.act(s, ep)
            states.append(s)
            actions.append(a)
            prev = a
        step = 2 if with_acts else 1
        bits = [
            LayerBits(
                action_to_bits(actions[i * step]), action_to_bits(actions[i * step + 1]) if with_acts else MAX_BITS
            )
            for i in range(len(layers))
        ]
        bits = action_wall(bits, resource, target)
        accuracy = score(bits) if executor is None else _one(executor, score, bits, seed + ep)
        reward = 0.1 * (accuracy - fp_accuracy)
        record = Episode(ep, bits, resource(bits), accuracy, reward)
        history.append(record)
        if best is None or reward > best.reward:
            best = record
        for t in range(len(states)):
            done = t == len(states) - 1
            agent.observe(states[t], actions[t], reward, states[t if done else t + 1], done)
            if ep >= warmup:
                agent.update()
        if on_episode is not None:
            on_episode(record)
    if best is None:
        raise CompressError("haq: episodes must be at least 1")
    return HaqResult(
        layers,
        best.bits,
        best.accuracy,
        best.reward,
        fp_accuracy,
        best.resource,
        target,
        resource.name,
        resource.unit,
        resource.source,
        history,
    )


def _one(executor: Any, score: Callable[[list[LayerBits]], float], bits: list[LayerBits], seed: int) -> float:
    """One candidate through a ``tinytamer.search.executor`` executor (a crash is retried
    there once); a candidate that still fails scores 0, the worst accuracy, not a crash."""
    result = executor.map(lambda b, _seed: score(b), [bits], seed=seed, desc="haq candidate")[0]
    return float(result.value) if result.ok else 0.0


# ----------------------------------------------------------------------------- plots


def plot_rewards(result: HaqResult, path: str | Path) -> Path:
    """The reward of every episode and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = [e.reward for e in result.history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(r, ".", ms=3, label="episode")
    ax.plot(np.maximum.accumulate(r), "-", label="best so far")
    ax.set(xlabel="episode", ylabel="reward (0.1 x accuracy change)", title="HAQ reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_policy(result: HaqResult, path: str | Path) -> Path:
    """Bits per layer (weights and activations) beside each layer's parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(result.layers))
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(x) + 2), 3.8))
    ax.bar(x - 0.2, [b.w for b in result.bits], 0.4, label="weight bits")
    ax.bar(x + 0.2, [b.a for b in result.bits], 0.4, label="activation bits")
    ax.set(ylabel="bits", ylim=(0, MAX_BITS + 0.5), title="HAQ policy")
    ax.set_xticks(x, [L.name for L in result.layers], rotation=60, ha="right", fontsize=7)
    ax2 = ax.twinx()
    ax2.plot(x, [math.log10(max(L.params, 1)) for L in result.layers], "k.--", label="log10 parameters")
    ax2.set_ylabel("log10 parameters")
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
