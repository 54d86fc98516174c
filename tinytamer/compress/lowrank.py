"""Low-rank approximation of conv and fully connected layers (Zhang et al. 2015).

X. Zhang, J. Zou, X. Ming, K. He, J. Sun, "Efficient and Accurate Approximations of
Nonlinear Convolutional Networks", CVPR 2015 (arXiv:1411.4229).  A conv layer with
``d`` filters of size ``k x k x c`` is replaced by ``d'`` filters ``W' = Q^T W``
followed by a 1x1 conv ``P`` (``d' -> d``) with bias ``b``, so that ``y ~ P Q^T y + b``:
the cost per output position drops from ``d k^2 c`` to ``d' (k^2 c + d)``.  ``M = P Q^T``
is solved from the layer's *responses* ``y = W x`` on calibration data (sampled spatial
positions), not from the weights alone:

* Sec. 3.1, linear responses: ``min ||(y - ybar) - M (y - ybar)||^2, rank(M) <= d'``
  is solved by PCA of the responses: ``P = Q = U_d'`` (top eigenvectors of their
  covariance), ``b = ybar - P Q^T ybar``  (``method="linear"``).
* Sec. 3.2, nonlinear responses: ``min sum_i ||r(y_i) - r(M y_i + b)||^2`` with
  ``r = ReLU``, relaxed with auxiliary ``z_i`` and a penalty ``lambda ||z_i - (M y_i + b)||^2``
  and solved by alternating two sub-problems: (a) ``z`` fixed, ``M, b`` is a
  reduced-rank regression of ``z`` on ``y`` solved by the generalized SVD
  (``M = U U^T Z Y^T (Y Y^T)^-1``, ``U`` the top eigenvectors of
  ``Z Y^T (Y Y^T)^-1 Y Z^T``), (b) ``M, b`` fixed, each ``z_ij`` is the better of the
  two closed-form candidates ``min(0, y'_ij)`` and ``max(0, (lambda y'_ij + r(y_ij)) / (1 + lambda))``.
  It starts from the linear solution and ``lambda`` grows geometrically over the
  iterations (the paper also starts small and increases it); the iterate with the
  lowest true objective is kept  (``method="nonlinear"``).  After the first, exact,
  eigendecomposition, each M-step refines the previous eigenvectors by a few block
  power iterations (the matrix changes little between iterations; this is ours, to
  keep d = 512 layers cheap).
* Sec. 3.3, asymmetric reconstruction: layers are approximated in forward order and
  the regression uses the responses ``W x_hat`` of the inputs the *approximated*
  network gives, against the original ``r(W x)``:
  ``min ||r(W x) - r(M W x_hat + b)||^2``, which stops errors accumulating across
  layers  (``method="nonlinear-asymmetric"``, the default).
* Sec. 3.4, rank selection for a whole-model speed-up: maximize the product over
  layers of the retained PCA energy ``sum_{a<=d'} sigma_a`` (each layer normalized
  by its total) under a complexity budget, greedily: repeatedly drop the eigenvalue
  whose loss of (log) energy per MAC saved is smallest until the budget is met.  The
  cost of a decomposed layer is counted exactly, ``d' (k^2 c + d) H W``, and a layer
  is only decomposed below its break-even rank.

Where the ReLU is not applied directly to the layer's output (e.g. the second conv
of a residual block, whose output meets the shortcut before the ReLU), the response
is treated as linear: the asymmetric solution is then a single reduced-rank
regression of ``y`` on ``W x_hat``.  A conv followed only by a BatchNorm is
approximated on the BN's output: the BN (running statistics) is folded into the conv
first, so the nonlinearity sees the responses we fit.  The BN is then kept after the pair
(``keep_bn``, the default): the pair's last conv is divided by the BN's scale, so that
BN(pair(x)) is exactly the folded solution in eval mode, and fine-tuning still normalizes
(a ResNet whose BNs are folded away diverges under SGD at usual learning rates).  With
``keep_bn=False``, or where a BN channel has zero scale, the BN is replaced by ``nn.Identity``.

``method="svd"`` is the plain truncated SVD of the (BN-folded) weights, for comparison.
Fully connected layers always use the truncated SVD of their weight matrix, split into
two ``nn.Linear`` (``in -> d'`` without bias, ``d' -> out``).

Spatial decomposition (``scheme="spatial"``, for all layers or per layer through the
selector's overrides ``{"scheme": "spatial"}``): M. Jaderberg, A. Vedaldi, A. Zisserman,
"Speeding up Convolutional Neural Networks with Low Rank Expansions", BMVC 2014, scheme 2
(Sec. 2.2), the spatial part of the asymmetric decomposition of Zhang et al. 2015
("Accelerating Very Deep Convolutional Networks for Classification and Detection",
TPAMI, Sec. 4.2).  A ``k_h x k_w`` conv with ``c`` inputs and ``d`` filters becomes a
``k_h x 1`` conv with ``d'`` filters (the vertical stride and padding) followed by a
``1 x k_w`` conv with ``d`` filters (the horizontal ones, and the bias):
``W_n(c, y, x) ~ sum_k H_n^k(x) V_k^c(y)``, eq. 4.  The filters are fitted to the
(BN-folded) weights, Jaderberg's *filter reconstruction* objective (eq. 5), whose optimum
is the truncated SVD of ``W`` arranged as a ``(c k_h) x (d k_w)`` matrix; at the full
rank ``min(c k_h, d k_w)`` the pair is exact.  Its cost per output row is
``d' (c k_h W_in + d k_w W_out)``, and the rank selection of Sec. 3.4 ranks these layers
by the squared singular values of that matrix.  Jaderberg's data-reconstruction
optimisation (by SGD) is not done here: fine-tune the model after approximating it.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.utils.flop_counter import FlopCounterMode

from tinytamer.calib import Calibration, as_calibration
from tinytamer.compress.selector import Selector, layer_params
from tinytamer.compress.selector import select as select_layers
from tinytamer.errors import DataError, ModelError, RecipeError

Method = Literal["nonlinear-asymmetric", "nonlinear", "linear", "svd"]
METHODS: tuple[str, ...] = ("nonlinear-asymmetric", "nonlinear", "linear", "svd")
Scheme = Literal["channel", "spatial"]
SCHEMES: tuple[str, ...] = ("channel", "spatial")
_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu, F.relu_)


@dataclass
class LayerReport:
    """What happened to one selected layer."""

    name: str
    kind: str  # "conv" or "linear"
    full_rank: int  # output channels / features (d)
    break_even: int  # a rank at or above this saves no MACs
    macs_before: int
    macs_after: int
    rank: int | None = None  # None: left as it was (see ``skipped``)
    relu: bool = False  # the objective rectifies the responses (Sec. 3.2)
    bn_folded: str | None = None
    bn_kept: bool = False  # the BN stays after the pair (its scale divided out of the last conv)
    error: float | None = None  # relative response error on the calibration samples
    skipped: str | None = None
    scheme: str = "channel"  # or "spatial" (k x 1 then 1 x k)


@dataclass
class LowRankResult:
    """The approximated model and a per-layer account; MACs are for one sample."""

    model: nn.Module
    layers: list[LayerReport]
    macs_before: int
    macs_after: int
    method: str
    notes: list[str] = field(default_factory=list)

    @property
    def macs_speedup(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    @property
    def ranks(self) -> dict[str, int]:
        return {r.name: r.rank for r in self.layers if r.rank is not None}

    def summary(self) -> dict[str, Any]:
        """A JSON-able record (for metrics logs)."""
        return {
            "method": self.method,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_speedup": self.macs_speedup,
            "ranks": self.ranks,
            "layers": [asdict(r) for r in self.layers],
            "notes": list(self.notes),
        }


# -- response solvers (Sec. 3.1-3.3) ----------------------------------------------------------


@dataclass
class Factors:
    """``y ~ P (Qt y_hat) + b``: ``P`` is d x d', ``Qt`` is d' x d (float64)."""

    P: Tensor
    Qt: Tensor
    b: Tensor
    error: float  # relative (rectified where ``relu``) response error on the samples


def _top_eigvecs(sym: Tensor, rank: int) -> Tensor:
    _, vecs = torch.linalg.eigh(sym)  # ascending eigenvalues
    return vecs[:, -rank:].flip(1)


def _refine_eigvecs(sym: Tensor, start: Tensor, steps: int = 3) -> Tensor:
    """Top eigenvectors of ``sym`` by block power iteration from ``start``, then Rayleigh-Ritz.

    Between two M-steps the matrix changes little, so a few iterations from the previous
    eigenvectors replace a full eigendecomposition (which dominates the cost at d = 512).
    """
    basis = start
    for _ in range(steps):
        basis = torch.linalg.qr(sym @ basis).Q
    _, vecs = torch.linalg.eigh(basis.T @ sym @ basis)
    return basis @ vecs.flip(1)


def _objective(y: Tensor, y_hat: Tensor, f: tuple[Tensor, Tensor, Tensor], relu: bool) -> float:
    P, Qt, b = f
    pred = (y_hat @ Qt.T) @ P.T + b
    if relu:
        return float(((y.clamp_min(0) - pred.clamp_min(0)) ** 2).sum())
    return float(((y - pred) ** 2).sum())


def solve_responses(
    y: Tensor,
    y_hat: Tensor | None,
    rank: int,
    *,
    relu: bool,
    nonlinear: bool = True,
    iters: int = 10,
    lam: tuple[float, float] = (0.01, 1.0),
) -> Factors:
    """Solve ``M = P Q^T`` (rank ``rank``) and ``b`` from sampled responses (n x d each).

    ``y`` are the original responses, ``y_hat`` those of the approximated network's inputs
    through the original weights (Sec. 3.3; ``None``: the same as ``y``).  ``relu`` says
    the responses feed a ReLU; with ``nonlinear`` the ReLU-aware alternation of Sec. 3.2
    runs for ``iters`` iterations while the penalty grows geometrically over ``lam``.
    ``y_hat=None, nonlinear=False`` is the PCA solution of Sec. 3.1.
    """
    n, d = y.shape
    if not 1 <= rank <= d:
        raise RecipeError(f"low-rank: rank must be in 1..{d}, got {rank}")
    if n < 2:
        raise DataError(f"low-rank: {n} calibration sample(s) is too few to fit responses")
    y = y.double()
    target = y.clamp_min(0) if relu else y
    scale = float((target**2).sum()) or 1.0
    if y_hat is None and not nonlinear:
        mean = y.mean(0)
        U = _top_eigvecs((y - mean).T @ (y - mean) / n, rank)
        b = mean - U @ (U.T @ mean)
        return Factors(U, U.T.clone(), b, _objective(y, y, (U, U.T, b), relu) / scale)

    y_hat = y if y_hat is None else y_hat.double()
    mean_hat = y_hat.mean(0)
    centered = y_hat - mean_hat
    cov = centered.T @ centered / n
    # A small ridge keeps the regression defined when the responses are rank-deficient
    # (e.g. a stem conv with more filters than k*k*c inputs).
    cov += (1e-6 * float(cov.diagonal().mean()) + 1e-12) * torch.eye(d, dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov)

    def m_step(z: Tensor, warm: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        z_mean = z.mean(0)
        cross = (z - z_mean).T @ centered / n  # S_zy
        m_ols = torch.cholesky_solve(cross.T, chol).T  # S_zy S_yy^-1
        gram = m_ols @ cross.T  # S_zy S_yy^-1 S_yz
        U = _top_eigvecs(gram, rank) if warm is None else _refine_eigvecs(gram, warm)
        Qt = U.T @ m_ols
        return U, Qt, z_mean - U @ (Qt @ mean_hat)

    best = m_step(y)  # Sec. 3.3 linear: min ||y - M y_hat - b||
    best_obj = _objective(y, y_hat, best, relu)
    if relu and nonlinear and iters > 0:
        current = best
        for i in range(iters):
            lam_i = lam[0] * (lam[1] / lam[0]) ** (i / max(iters - 1, 1))
            P, Qt, b = current
            pred = (y_hat @ Qt.T) @ P.T + b
            z_neg = pred.clamp_max(0)
            cost_neg = target**2 + lam_i * (z_neg - pred) ** 2
            z_pos = ((target + lam_i * pred) / (1 + lam_i)).clamp_min(0)
            cost_pos = (target - z_pos) ** 2 + lam_i * (z_pos - pred) ** 2
            current = m_step(torch.where(cost_neg <= cost_pos, z_neg, z_pos), warm=P)
            obj = _objective(y, y_hat, current, relu)
            if obj < best_obj:
                best, best_obj = current, obj
    return Factors(*best, best_obj / scale)


# -- rank selection (Sec. 3.4) ----------------------------------------------------------------


@dataclass
class RankCandidate:
    """A layer the greedy selection may decompose."""

    name: str
    energy: Tensor  # the spectrum, descending (PCA eigenvalues or squared singular values)
    macs: int  # the layer as it is
    macs_per_rank: int  # cost of one unit of rank once decomposed

    @property
    def max_rank(self) -> int:
        """The largest rank that costs fewer MACs than the layer itself."""
        return math.ceil(self.macs / self.macs_per_rank) - 1


def select_ranks(candidates: list[RankCandidate], budget: float) -> dict[str, int]:
    """Greedy Sec. 3.4: ranks whose total MACs fit ``budget``, maximizing the retained energy.

    The objective is ``sum_l log E_l(d'_l)``, ``E_l`` the fraction of layer l's energy
    kept.  Each step lowers the rank of the layer whose loss of objective per MAC saved is
    smallest.  Because decomposing only pays below the break-even rank, the first step
    of a layer is a jump; every step may therefore go down several ranks at once, to the
    rank with the best average loss per MAC (the convex hull of the trade-off), so a
    layer is not passed over for its first, expensive step.  A layer missing from the
    result stays as it is.  Raises ``ModelError`` when even rank 1 everywhere does not fit.
    """
    log_energy: dict[str, Tensor] = {}
    for c in candidates:
        cum = torch.cumsum(c.energy.double().clamp_min(0), 0)
        log_energy[c.name] = torch.log((cum / (float(cum[-1]) or 1.0)).clamp_min(1e-300))
    by_name = {c.name: c for c in candidates}

    def state(name: str, rank: int | None) -> tuple[float, int]:
        c = by_name[name]
        return (0.0, c.macs) if rank is None else (float(log_energy[name][rank - 1]), rank * c.macs_per_rank)

    def step(name: str, rank: int | None) -> tuple[float, int, str, int] | None:
        c = by_name[name]
        top = min(c.max_rank, len(c.energy)) if rank is None else rank - 1
        if top < 1:
            return None
        obj, cost = state(name, rank)
        lower = torch.arange(1, top + 1, dtype=torch.float64)
        ratio = (obj - log_energy[name][:top]) / (cost - lower * c.macs_per_rank)
        # The smallest ratio; among equals the highest rank (the smallest step).
        best = int(top - 1 - torch.argmin(ratio.flip(0)))
        return float(ratio[best]), -(best + 1), name, best + 1

    ranks: dict[str, int | None] = {c.name: None for c in candidates}
    total = sum(c.macs for c in candidates)
    heap = [s for c in candidates if (s := step(c.name, None)) is not None]
    heapq.heapify(heap)
    while total > budget:
        if not heap:
            raise ModelError(
                f"low-rank: the selected layers cannot get below {total:,} MACs, "
                f"but the target needs {budget:,.0f}: ask for a smaller speed-up "
                "or select more layers"
            )
        _, _, name, nxt = heapq.heappop(heap)
        total += state(name, nxt)[1] - state(name, ranks[name])[1]
        ranks[name] = nxt
        if (s := step(name, nxt)) is not None:
            heapq.heappush(heap, s)
    return {n: r for n, r in ranks.items() if r is not None}


# -- model analysis ---------------------------------------------------------------------------


@dataclass
class _Layer:
    name: str
    module: nn.Module
    kind: str = ""
    calls: int = 0
    positions: int = 0  # output positions per sample (H*W for a conv)
    out_h: int = 0
    in_w: int = 0
    scheme: str = "channel"
    macs: int = 0
    per_rank: int = 0
    bn: str | None = None
    relu: bool = False
    skipped: str | None = None
    idx: list[Tensor] = field(default_factory=list)  # sampled positions, per batch
    y: list[Tensor] = field(default_factory=list)  # sampled responses, per batch


def _is_relu(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _graph_roles(model: nn.Module, layers: dict[str, _Layer], notes: list[str]) -> None:
    """Find the BN that only a conv feeds (to fold) and whether a ReLU takes the result."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # tracing fails on data-dependent control flow, among others
        notes.append(
            f"model could not be traced with torch.fx ({type(exc).__name__}); BatchNorms "
            "are not folded and every response is treated as linear"
        )
        return
    modules = dict(model.named_modules())
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        layer = layers.get(str(node.target)) if node.op == "call_module" else None
        if layer is None or layer.kind != "conv":
            continue
        out = node
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            bn = modules.get(str(users[0].target))
            if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and calls[str(users[0].target)] == 1:
                layer.bn, out = str(users[0].target), users[0]
        users = list(out.users)
        layer.relu = len(users) == 1 and _is_relu(users[0], modules)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``bn(u) = scale * u + shift`` per channel, in eval mode."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    return scale.detach(), shift.detach()


def _folded(layer: _Layer, model: nn.Module) -> tuple[Tensor, Tensor]:
    """The conv's weight and bias with its BatchNorm folded in (float64)."""
    conv = layer.module
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    if layer.bn is not None:
        scale, shift = (t.double() for t in _bn_affine(model.get_submodule(layer.bn)))
        w, b = w * scale.view(-1, 1, 1, 1), b * scale + shift
    return w, b


def _responses(out: Tensor, layer: _Layer, model: nn.Module) -> Tensor:
    """All positions of a conv's output as rows (N*H*W x d), after its folded BN."""
    y = out.detach().movedim(1, -1).reshape(-1, out.shape[1])
    if layer.bn is not None:
        scale, shift = _bn_affine(model.get_submodule(layer.bn))
        y = y * scale + shift
    return y


class _Stop(Exception):
    """Ends a calibration forward pass once the layer of interest has run."""


def _batches(calib: Calibration | Iterable[Any]) -> list[Tensor]:
    out = list(as_calibration(calib, what="low-rank").batches())
    for x in out:
        if not isinstance(x, Tensor):
            raise DataError(
                f"low-rank: calibration batches must be tensors or (input, label) pairs, got {type(x).__name__}"
            )
    return out


def _profile(
    model: nn.Module,
    layers: dict[str, _Layer],
    batches: list[Tensor],
    *,
    collect: bool,
    samples: int,
    gen: torch.Generator,
) -> list[str]:
    """One pass over the calibration data: shapes, call counts, sampled responses; call order."""
    order: list[str] = []

    def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
        layer = layers[names[id(module)]]
        layer.calls += 1
        if layer.name not in order:
            order.append(layer.name)
        if layer.kind == "conv":
            layer.positions = out.shape[2] * out.shape[3]
            layer.out_h, layer.in_w = out.shape[2], args[0].shape[3]
        else:
            layer.positions = out[0].numel() // out.shape[-1]
        if collect and layer.kind == "conv" and layer.skipped is None and layer.calls == 1:
            y = _responses(out, layer, model)
            idx = torch.randperm(y.shape[0], generator=gen)[:samples]
            layer.idx.append(idx)
            layer.y.append(y[idx].float())

    names = {id(layer.module): name for name, layer in layers.items()}
    handles = [layer.module.register_forward_hook(hook) for layer in layers.values()]
    try:
        with torch.no_grad():
            for i, x in enumerate(batches):
                for layer in layers.values():
                    layer.calls = 0
                model(x)
                if i == 0:
                    calls = {n: layer.calls for n, layer in layers.items()}
    finally:
        for h in handles:
            h.remove()
    for name, n in calls.items():
        if n > 1:
            layers[name].skipped = f"called {n} times per forward pass (shared weights)"
        elif n == 0:
            layers[name].skipped = "not called in the forward pass"
    return order


def _responses_at(model: nn.Module, layer: _Layer, batches: list[Tensor]) -> Tensor:
    """Responses of ``layer`` (still the original module inside ``model``) at the sampled positions."""
    module = model.get_submodule(layer.name)
    captured: list[Tensor] = []

    def hook(_m: nn.Module, _a: tuple, out: Tensor) -> None:
        captured.append(_responses(out, layer, model)[layer.idx[len(captured)]].float())
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x in batches:
                try:
                    model(x)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return torch.cat(captured)


def _total_macs(model: nn.Module, x: Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


# -- building the replacement layers ----------------------------------------------------------


def _conv_pair(conv: nn.Conv2d, first: Tensor, second: Tensor, bias: Tensor) -> nn.Sequential:
    """``Conv2d(c, d', k)`` (no bias) then ``Conv2d(d', d, 1)`` with the given weights."""
    r = first.shape[0]
    head = nn.Conv2d(
        conv.in_channels,
        r,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=False,
        padding_mode=conv.padding_mode,
    )
    tail = nn.Conv2d(r, conv.out_channels, 1)
    like = {"dtype": conv.weight.dtype, "device": conv.weight.device}
    # Nothing nonlinear sits between the two convs, so each rank component can move a factor
    # from one to the other.  The solvers leave them far apart (a BN-folded first factor,
    # a tiny second one), which makes SGD on the pair diverge: give both the same norm.
    balance = (second.norm(dim=0) / first.norm(dim=1).clamp_min(1e-30)).sqrt()
    balance = torch.where(balance > 0, balance, torch.ones_like(balance))
    first, second = first * balance[:, None], second / balance
    with torch.no_grad():
        head.weight.copy_(first.reshape(r, *conv.weight.shape[1:]).to(**like))
        tail.weight.copy_(second.reshape(conv.out_channels, r, 1, 1).to(**like))
        tail.bias.copy_(bias.to(**like))
    return nn.Sequential(head, tail).to(**like)


def _unfold_bn(last: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    """Divide the BN's eval-mode affine out of ``last`` (which holds the BN-folded solution), so
    that ``bn(last(u))`` equals the folded ``last(u)``; False (``last`` untouched) where a
    channel's scale is zero and no division exists."""
    scale, shift = _bn_affine(bn)
    if bool((scale == 0).any()) or last.bias is None:
        return False
    with torch.no_grad():
        last.weight.div_(scale.view(-1, 1, 1, 1))
        last.bias.copy_((last.bias - shift) / scale)
    return True


def _svd_split(w: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD ``w ~ A @ B`` (A: rows x rank, B: rank x cols), singular values split evenly."""
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vh[:rank]


def _linear_pair(linear: nn.Linear, rank: int) -> nn.Sequential:
    A, B = _svd_split(linear.weight.detach().double(), rank)
    head = nn.Linear(linear.in_features, rank, bias=False)
    tail = nn.Linear(rank, linear.out_features, bias=linear.bias is not None)
    like = {"dtype": linear.weight.dtype, "device": linear.weight.device}
    with torch.no_grad():
        head.weight.copy_(B.to(**like))
        tail.weight.copy_(A.to(**like))
        if linear.bias is not None:
            tail.bias.copy_(linear.bias.detach())
    return nn.Sequential(head, tail).to(**like)


def _spatial_matrix(w: Tensor) -> Tensor:
    """``W`` (d, c, k_h, k_w) as the (c k_h) x (d k_w) matrix whose rank-r factors are V and H."""
    d, c, kh, kw = w.shape
    return w.permute(1, 2, 0, 3).reshape(c * kh, d * kw)


def spatial_pair(conv: nn.Conv2d, rank: int, weight: Tensor | None = None, bias: Tensor | None = None) -> nn.Sequential:
    """Jaderberg's scheme 2: ``conv`` as a ``k_h x 1`` conv (``rank`` filters, no bias) then a
    ``1 x k_w`` conv, fitted to ``weight`` / ``bias`` (default: the conv's own) by the
    truncated SVD; exact at ``rank = min(c k_h, d k_w)``."""
    w = (conv.weight if weight is None else weight).detach().double()
    d, c, kh, kw = w.shape
    full = min(c * kh, d * kw)
    if not 1 <= rank <= full:
        raise RecipeError(f"low-rank: a spatial rank must be in 1..{full} for this {kh}x{kw} conv, got {rank}")
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ModelError("low-rank: spatial decomposition needs an ungrouped conv with numeric zero padding")
    A, B = _svd_split(_spatial_matrix(w), rank)  # A: (c kh) x r -> V;  B: r x (d kw) -> H
    if bias is None and conv.bias is not None:
        bias = conv.bias.detach()
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    vertical = nn.Conv2d(c, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
    horizontal = nn.Conv2d(rank, d, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias is not None)
    like = {"dtype": conv.weight.dtype, "device": conv.weight.device}
    with torch.no_grad():
        vertical.weight.copy_(A.T.reshape(rank, c, kh, 1).to(**like))
        horizontal.weight.copy_(B.reshape(rank, d, kw).permute(1, 0, 2).reshape(d, rank, 1, kw).to(**like))
        if bias is not None:
            horizontal.bias.copy_(bias.to(**like))
    return nn.Sequential(vertical, horizontal).to(**like)


# -- the method -------------------------------------------------------------------------------


def _analyze(model: nn.Module, select: Selector | dict | None, scheme: str) -> dict[str, _Layer]:
    layers: dict[str, _Layer] = {}
    for name, module in select_layers(model, select):
        layer = _Layer(name, module)
        if isinstance(module, nn.Conv2d):
            layer.kind = "conv"
            layer.scheme = layer_params(select, name, {"scheme": scheme})["scheme"]
            if layer.scheme not in SCHEMES:
                raise RecipeError(
                    f"low-rank: scheme of layer '{name}' must be one of {', '.join(SCHEMES)}, got {layer.scheme!r}"
                )
            if module.groups != 1:
                layer.skipped = f"grouped conv (groups={module.groups}): not decomposed"
            elif layer.scheme == "spatial" and (min(module.kernel_size) == 1 or module.padding_mode != "zeros"):
                layer.skipped = "spatial scheme: needs a k x k kernel (k > 1) with zero padding"
            elif layer.scheme == "spatial" and isinstance(module.padding, str):
                layer.skipped = f"spatial scheme: padding '{module.padding}' is not supported"
        elif isinstance(module, nn.Linear):
            layer.kind = "linear"
        else:
            layer.kind = "other"
            layer.skipped = f"{type(module).__name__} is not a Conv2d or Linear layer"
        layers[name] = layer
    return layers


def _layer_costs(layer: _Layer) -> None:
    m = layer.module
    if layer.kind == "conv":
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels
        layer.macs = m.out_channels * k * layer.positions
        layer.per_rank = (k + m.out_channels) * layer.positions
        if layer.scheme == "spatial":  # k_h x 1 over every input column, then 1 x k_w
            kh, kw = m.kernel_size
            layer.per_rank = m.in_channels * kh * layer.out_h * layer.in_w + m.out_channels * kw * layer.positions
    elif layer.kind == "linear":
        layer.macs = m.out_features * m.in_features * layer.positions
        layer.per_rank = (m.in_features + m.out_features) * layer.positions


def _requested_ranks(
    layers: dict[str, _Layer], ranks: Mapping[str, int] | None, select: Selector | dict | None
) -> dict[str, int]:
    ranks = dict(ranks or {})
    unknown = sorted(set(ranks) - set(layers))
    if unknown:
        raise ModelError(
            f"low-rank: ranks names {unknown}, which the layer selector did not pick (selected: {', '.join(layers)})"
        )
    out = {}
    for name in layers:
        rank = layer_params(select, name, {"rank": ranks.get(name)})["rank"]
        if rank is None:
            continue
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise RecipeError(f"low-rank: rank of layer '{name}' must be a positive integer, got {rank!r}")
        out[name] = rank
    return out


def _override_ranks(select: Selector | dict | None) -> bool:
    """Whether a selector's overrides fix a rank for some layer."""
    if select is None:
        return False
    overrides = select.overrides if isinstance(select, Selector) else select.get("overrides") or {}
    return any("rank" in v for v in overrides.values())


def approximate(
    model: nn.Module,
    calib_batches: Calibration | Iterable[Any],
    *,
    speedup: float | None = None,
    ranks: Mapping[str, int] | None = None,
    method: Method = "nonlinear-asymmetric",
    select: Selector | dict | None = None,
    samples_per_batch: int = 512,
    iters: int = 10,
    seed: int = 0,
    scheme: Scheme = "channel",
    keep_bn: bool = True,
) -> LowRankResult:
    """Replace the selected conv / linear layers of a copy of ``model`` by low-rank pairs.

    ``calib_batches``: a Calibration, or input tensors or ``(input, label)`` pairs (kept in memory; the
    data-driven methods pass over them once per layer).  ``speedup``: the whole-model MAC
    reduction the ranks are chosen for (Sec. 3.4; 2.0 when neither it nor a rank is
    given).  ``ranks`` (or a selector override ``{"rank": r}``) fixes a layer's rank; with
    no ``speedup`` only those layers change.  Layers whose rank would not save MACs are
    left as they are and reported as skipped.  ``scheme``: ``"channel"`` (Zhang et al.,
    solved with ``method``) or ``"spatial"`` (Jaderberg's k x 1 then 1 x k, fitted to the
    weights) for every conv; a selector override ``{"scheme": ...}`` picks it per layer.
    ``keep_bn``: keep a decomposed conv's BatchNorm after the pair (see the module docstring).
    The input model is not modified.
    """
    if method not in METHODS:
        raise RecipeError(f"low-rank: method must be one of {', '.join(METHODS)}, got '{method}'")
    if scheme not in SCHEMES:
        raise RecipeError(f"low-rank: scheme must be one of {', '.join(SCHEMES)}, got '{scheme}'")
    if speedup is None and not ranks and not _override_ranks(select):
        speedup = 2.0
    if speedup is not None and not speedup > 1:
        raise RecipeError(f"low-rank: speedup must be > 1, got {speedup}")
    if samples_per_batch < 1 or iters < 0:
        raise RecipeError(f"low-rank: samples_per_batch must be >= 1 and iters >= 0 (got {samples_per_batch}, {iters})")
    batches = _batches(calib_batches)
    was_training = model.training
    work = copy.deepcopy(model).eval()
    layers = _analyze(work, select, scheme)
    notes: list[str] = []
    _graph_roles(work, layers, notes)
    data_driven = method != "svd"
    gen = torch.Generator().manual_seed(seed)
    order = _profile(work, layers, batches, collect=data_driven, samples=samples_per_batch, gen=gen)
    macs_before = _total_macs(work, batches[0][:1])
    for layer in layers.values():
        _layer_costs(layer)

    fixed = _requested_ranks(layers, ranks, select)
    chosen: dict[str, int] = {}
    for name, rank in fixed.items():
        layer = layers[name]
        be = math.ceil(layer.macs / layer.per_rank) if layer.per_rank else 0
        if layer.skipped is None and rank >= be:
            layer.skipped = f"rank {rank} saves no MACs (break-even rank {be})"
        elif layer.skipped is None:
            chosen[name] = rank
    if speedup is not None:
        pool = [n for n in order if layers[n].skipped is None and n not in fixed]
        # MACs outside the pool: the rest of the model with the fixed ranks applied.
        others = macs_before - sum(layers[n].macs for n in pool)
        others -= sum(layers[n].macs - r * layers[n].per_rank for n, r in chosen.items())
        floor = others + sum(min(layers[n].macs, layers[n].per_rank) for n in pool)
        if floor > macs_before / speedup:
            raise ModelError(
                f"low-rank: speedup {speedup:g} is out of reach: at rank 1 in every selected "
                f"layer the model still needs {floor:,} of {macs_before:,} MACs (at most "
                f"{macs_before / floor:.2f}x); select more layers or ask for less"
            )
        candidates = [
            RankCandidate(n, _spectrum(layers[n], work, data_driven), layers[n].macs, layers[n].per_rank) for n in pool
        ]
        chosen.update(select_ranks(candidates, macs_before / speedup - others))

    reports: dict[str, LayerReport] = {}
    for name in [*order, *[n for n in layers if n not in order]]:
        layer = layers[name]
        be = math.ceil(layer.macs / layer.per_rank) if layer.per_rank else 0
        skipped = layer.skipped or (None if name in chosen else "not needed for the target speed-up")
        reports[name] = LayerReport(
            name,
            layer.kind,
            _full_rank(layer.module, layer.scheme),
            be,
            layer.macs,
            layer.macs,
            relu=layer.relu,
            bn_folded=layer.bn,
            skipped=skipped,
            scheme=layer.scheme,
        )

    for name in order:  # forward order: Sec. 3.3 needs the earlier layers approximated first
        if name not in chosen:
            continue
        layer, rank, rep = layers[name], chosen[name], reports[name]
        if layer.kind == "linear":
            work.set_submodule(name, _linear_pair(layer.module, rank))
        else:
            pair = _decompose_conv(work, layer, rank, method, batches, iters, rep)
            if layer.bn is not None:
                rep.bn_kept = keep_bn and _unfold_bn(pair[-1], work.get_submodule(layer.bn))
                if not rep.bn_kept:
                    work.set_submodule(layer.bn, nn.Identity())
            work.set_submodule(name, pair)
        rep.rank, rep.macs_after = rank, rank * layer.per_rank
        layer.y.clear()
    for rep in reports.values():
        if rep.rank is None:
            rep.bn_folded = None
    macs_after = _total_macs(work, batches[0][:1])
    return LowRankResult(work.train(was_training), list(reports.values()), macs_before, macs_after, method, notes)


def _full_rank(module: nn.Module, scheme: str = "channel") -> int:
    if isinstance(module, nn.Conv2d) and scheme == "spatial":
        return min(module.in_channels * module.kernel_size[0], module.out_channels * module.kernel_size[1])
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return module.out_features if isinstance(module, nn.Linear) else 0


def _spectrum(layer: _Layer, model: nn.Module, data_driven: bool) -> Tensor:
    """The energy the rank selection keeps: PCA eigenvalues of the responses, or sigma^2 of W
    (for the spatial scheme, of W arranged as Jaderberg's (c k_h) x (d k_w) matrix)."""
    if layer.kind == "conv" and layer.scheme == "spatial":
        return torch.linalg.svdvals(_spatial_matrix(_folded(layer, model)[0])) ** 2
    if layer.kind == "conv" and data_driven:
        y = torch.cat(layer.y).double()
        y = y - y.mean(0)
        return torch.linalg.eigvalsh(y.T @ y / y.shape[0]).flip(0)
    w = _folded(layer, model)[0] if layer.kind == "conv" else layer.module.weight.detach().double()
    return torch.linalg.svdvals(w.reshape(w.shape[0], -1)) ** 2


def _decompose_conv(
    model: nn.Module, layer: _Layer, rank: int, method: str, batches: list[Tensor], iters: int, rep: LayerReport
) -> nn.Sequential:
    w, b = _folded(layer, model)
    if layer.scheme == "spatial":
        return spatial_pair(layer.module, rank, w, b)
    flat = w.reshape(w.shape[0], -1)
    if method == "svd":
        A, B = _svd_split(flat, rank)
        return _conv_pair(layer.module, B, A, b)
    y = torch.cat(layer.y)
    y_hat = _responses_at(model, layer, batches) if method == "nonlinear-asymmetric" else None
    if method == "linear":
        f = solve_responses(y, None, rank, relu=layer.relu, nonlinear=False)
    else:
        f = solve_responses(y, y_hat, rank, relu=layer.relu, iters=iters)
    rep.error = f.error
    # y ~ P Qt (W x + b) + b_M: the first conv holds Qt W, the 1x1 conv P and the bias.
    return _conv_pair(layer.module, f.Qt @ flat, f.P, f.P @ (f.Qt @ b) + f.b)


def decompose(
    model: nn.Module,
    calib_batches: Calibration | Iterable[Any],
    *,
    speedup: float | None = None,
    ranks: Mapping[str, int] | None = None,
    method: Method = "nonlinear-asymmetric",
    select: Selector | dict | None = None,
    samples_per_batch: int = 512,
    iters: int = 10,
    seed: int = 0,
    scheme: Scheme = "channel",
    keep_bn: bool = True,
) -> nn.Module:
    """:func:`approximate`, returning only the new model."""
    return approximate(
        model,
        calib_batches,
        speedup=speedup,
        ranks=ranks,
        method=method,
        select=select,
        samples_per_batch=samples_per_batch,
        iters=iters,
        seed=seed,
        scheme=scheme,
        keep_bn=keep_bn,
    ).model
