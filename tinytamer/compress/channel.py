"""Structured channel pruning that physically removes channels.

Channels (conv filters, linear output features) are ranked by importance and
removed from the layer that produces them and from everything that consumes
them.  Which tensors are coupled (a residual ``+``, a depthwise conv, a BN, a
concat) comes from Torch-Pruning's dependency graph: Fang et al., "DepGraph:
Towards Any Structural Pruning", CVPR 2023 (the ``torch_pruning`` package), so
coupled channels go together and the model stays consistent.

Importance criteria:
- ``l1`` / ``l2``: the norm of each channel's weights over its whole coupled
  group; ``l1`` is the filter criterion of Li et al., "Pruning Filters for
  Efficient ConvNets", ICLR 2017 (Sec. 3.1).
- ``bn_scale``: |gamma| of the BatchNorm after the conv, the channel score of
  Liu et al., "Learning Efficient Convolutional Networks through Network
  Slimming", ICCV 2017 (groups without a BN are then left whole).

Ratios are per layer (each layer loses its own fraction) or global (one
fraction over the model, ranked across layers, Liu et al. Sec. 3); kept
channel counts are multiples of ``round_to`` so vectorised kernels stay fast.
The result is a plain ``nn.Module`` with smaller layers; fine-tune it afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn

from tinytamer.compress.selector import Selector, layer_params
from tinytamer.compress.selector import parse as parse_selector
from tinytamer.compress.selector import select as select_layers
from tinytamer.errors import CompressError, ModelError

Importance = Literal["l1", "l2", "bn_scale"]
_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def _importance(name: str) -> tp.importance.Importance:
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise CompressError(f"channel_prune: unknown importance '{name}' (l1, l2 or bn_scale)")


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def kept_channels(channels: int, ratio: float, round_to: int | None) -> int:
    """Channels left after removing ``ratio`` of ``channels``, rounded down to a multiple.

    Never below one multiple (or below one channel): a layer is thinned, not cut.
    A layer with no more than ``round_to`` channels is left as it is.
    """
    keep = max(1, channels - int(channels * ratio))
    if round_to and round_to > 1:
        keep = min(channels, max(round_to, keep - keep % round_to))
    return keep


def output_layer(model: nn.Module, example_inputs: Tensor | tuple[Tensor, ...]) -> str:
    """Name of the last conv/linear layer run by ``forward``: the classifier, by default kept whole."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, n=name: order.append(n))
        for name, m in model.named_modules()
        if isinstance(m, _PRUNABLE)
    ]
    try:
        with torch.no_grad():
            model(*_as_tuple(example_inputs))
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ModelError("channel_prune: the model runs no Conv or Linear layer")
    return order[-1]


def _as_tuple(x: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def channel_counts(model: nn.Module, select: Selector | dict | None = None) -> dict[str, int]:
    """Output channels (or features) of each selected layer."""
    return {name: _out_channels(m) for name, m in select_layers(model, select) if isinstance(m, _PRUNABLE)}


def prune_channels(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    ratio: float | Mapping[str, float] = 0.5,
    global_pruning: bool = False,
    round_to: int | None = 8,
    importance: Importance = "l1",
    select: Selector | dict | None = None,
    ignore: Sequence[str] | None = None,
    max_ratio: float = 0.9,
) -> nn.Module:
    """Return a copy of ``model`` with ``ratio`` of the selected layers' output channels removed.

    The copy's layers are smaller ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d``
    modules; ``model`` itself is left as it was.  ``ratio`` is a float for every selected layer, a dict
    ``{layer: ratio}`` (layers not named keep all channels), or set per layer
    through ``select.overrides`` (``{"layer3.*": {"ratio": 0.3}}``).  With
    ``global_pruning`` the float ``ratio`` is the fraction of all selected
    channels removed, ranked across layers, no layer losing more than
    ``max_ratio``.  Layers named in ``ignore`` keep their output channels; by
    default that is the last layer run (the classifier), so the output shape
    never changes.  Channels coupled to an unselected or ignored layer (e.g.
    through a residual add) are kept.
    """
    if not isinstance(ratio, Mapping) and not 0.0 <= ratio < 1.0:
        raise CompressError(f"channel_prune: ratio must be in [0, 1), got {ratio}")
    if round_to is not None and round_to < 1:
        raise CompressError(f"channel_prune: round_to must be >= 1, got {round_to}")
    example_inputs = _as_tuple(example_inputs)
    was_training = model.training
    # Torch-Pruning edits modules in place: work on a copy so a failure leaves the
    # caller's model whole.
    model = copy.deepcopy(model).eval()  # eval: batch-1 inputs trace with running BN stats
    try:
        with torch.no_grad():
            reference = model(*example_inputs)
        modules = dict(model.named_modules())
        ignore = [output_layer(model, example_inputs)] if ignore is None else list(ignore)
        for name in ignore:
            if name not in modules:
                raise ModelError(f"channel_prune: ignore names '{name}', not a layer of the model")
        selected = {n: m for n, m in select_layers(model, select) if isinstance(m, _PRUNABLE) and n not in ignore}
        if not selected:
            raise ModelError("channel_prune: no conv/linear layer left to prune after 'ignore'")
        _refuse_fixed_width(model, selected)
        ignored = [
            m for m in model.modules() if isinstance(m, _PRUNABLE) and all(m is not s for s in selected.values())
        ]
        try:
            pruner = _pruner(
                model,
                example_inputs,
                selected,
                ignored,
                ratio=ratio,
                global_pruning=global_pruning,
                round_to=round_to,
                importance=importance,
                select=select,
                max_ratio=max_ratio,
            )
            pruner.step()
        except (CompressError, ModelError):
            raise
        except Exception as exc:  # the tracer fails in many untyped ways
            raise ModelError(
                "channel_prune: Torch-Pruning cannot follow this model's channel dependencies "
                f"({type(exc).__name__}: {exc}); restrict select to layers whose channels "
                "feed only plain ops (e.g. regex: ['conv1$'])"
            ) from exc
        _check(model, example_inputs, reference)
    finally:
        model.train(was_training)
    return model


def _pruner(
    model: nn.Module,
    example_inputs: tuple[Tensor, ...],
    selected: dict[str, nn.Module],
    ignored: list[nn.Module],
    *,
    ratio: float | Mapping[str, float],
    global_pruning: bool,
    round_to: int | None,
    importance: Importance,
    select: Selector | dict | None,
    max_ratio: float,
) -> tp.pruner.MetaPruner:
    common = {"importance": _importance(importance), "ignored_layers": ignored, "example_inputs": example_inputs}
    if global_pruning:
        if isinstance(ratio, Mapping) or any("ratio" in v for v in _overrides(select)):
            raise CompressError("channel_prune: global pruning takes one float ratio, not per-layer ratios")
        return tp.pruner.MetaPruner(
            model, global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=max_ratio, round_to=round_to, **common
        )
    if isinstance(ratio, Mapping):
        unknown = sorted(set(ratio) - set(selected))
        if unknown:
            raise ModelError(
                f"channel_prune: ratio names layer(s) {', '.join(unknown)} that are "
                f"not selected for pruning; selected: {', '.join(selected)}"
            )
    per_layer = {}
    for name, module in selected.items():
        default = ratio.get(name, 0.0) if isinstance(ratio, Mapping) else ratio
        r = float(layer_params(select, name, {"ratio": default})["ratio"])
        if not 0.0 <= r < 1.0:
            raise CompressError(f"channel_prune: ratio of layer '{name}' must be in [0, 1), got {r}")
        n = _out_channels(module)
        keep = kept_channels(n, r, round_to)
        if keep == n:
            continue
        # Torch-Pruning keeps int(n * (1 - ratio)) channels; aiming half a channel above
        # `keep` makes that exactly `keep` despite float rounding.
        per_layer[module] = 1.0 - (keep + 0.5) / n
    return tp.pruner.MetaPruner(model, pruning_ratio=0.0, pruning_ratio_dict=per_layer, **common)


def _refuse_fixed_width(model: nn.Module, selected: Mapping[str, nn.Module]) -> None:
    """Refuse a selected layer that a module of the model declares fixed in width
    (``fixed_width_layers()``: relative name -> why), e.g. a ShuffleNetV2 unit's outputs,
    which a channel split by index, a concat and a channel shuffle couple in ways the
    dependency graph does not follow."""
    for prefix, module in model.named_modules():
        fixed = getattr(module, "fixed_width_layers", None)
        if not callable(fixed):
            continue
        for rel, why in fixed().items():
            name = f"{prefix}.{rel}" if prefix else rel
            if name in selected:
                raise ModelError(f"channel_prune: layer '{name}' cannot be pruned: {why}; leave it out of select")


def _overrides(select: Selector | dict | None) -> list[dict]:
    return list(parse_selector(select).overrides.values())


def _check(model: nn.Module, example_inputs: tuple[Tensor, ...], reference: object) -> None:
    """The pruned model must still run and give outputs of the same shapes."""
    try:
        with torch.no_grad():
            out = model(*example_inputs)
    except RuntimeError as exc:
        raise ModelError(
            "channel_prune: the pruned model no longer runs; an operation the dependency graph "
            f"does not understand couples channels (leave its layers out with select.exclude): "
            f"{exc}"
        ) from None
    shapes = [t.shape for t in tp.utils.flatten_as_list(out)]
    expected = [t.shape for t in tp.utils.flatten_as_list(reference)]
    if shapes != expected:
        raise ModelError(
            f"channel_prune: output shapes changed from {expected} to {shapes}; "
            "leave the output layer out of the selection (ignore=...)"
        )
