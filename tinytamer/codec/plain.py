"""Make training-time weight forms permanent: parametrizations, pruning masks, fake-quantized weights."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from tinytamer.qgraph import QuantWeight


def unparametrize(module: nn.Module) -> None:
    """Replace every parametrized tensor of ``module`` by a plain one holding its current value.

    Unlike ``torch.nn.utils.parametrize.remove_parametrizations`` this leaves the
    generated ``Parametrized<Class>`` alone: torch shares that class between a
    module and its deep copies and deletes properties from it on removal, which
    would break every copy.  Here only this instance changes class.
    """
    if not parametrize.is_parametrized(module):
        return
    baked = []
    for name, plist in module.parametrizations.items():
        original = getattr(plist, "original", None)
        as_param = original is None or isinstance(original, nn.Parameter)
        grad = original.requires_grad if original is not None else True
        baked.append((name, getattr(module, name).detach().clone(), as_param, grad))
    module.__class__ = type(module).__bases__[0]  # the class before parametrization
    del module._modules["parametrizations"]
    for name, value, as_param, grad in baked:
        if as_param:
            module._parameters[name] = nn.Parameter(value, requires_grad=grad)
        else:
            module._buffers[name] = value


def _pruning_hooks(module: nn.Module) -> list[torch_prune.BasePruningMethod]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, torch_prune.BasePruningMethod)]


def bake_quant_weight(module: QuantWeight) -> None:
    """Set a quantized layer's weight to the values it computes with in eval mode.

    ``int_weight() * w_scale`` in float32 is ``fake_quant``'s eval-mode result (same integers,
    same float32 product) and what the ``qint`` decoder computes, so the file stores the
    integers exactly and the layer, which quantizes its weight again in forward, computes
    the same numbers (``round(q * s / s)`` is ``q``).
    """
    shape = (-1,) + (1,) * (module.weight.dim() - 1)
    with torch.no_grad():
        module.weight.copy_(module.int_weight().to(torch.float32) * module.w_scale.view(shape))


def quant_scales(model: nn.Module) -> dict[str, tuple[str, Tensor]]:
    """State-dict name of every quantized layer's weight -> the state-dict name and values of
    that layer's per-channel scales."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantWeight):
            prefix = f"{name}." if name else ""
            out[f"{prefix}weight"] = (f"{prefix}w_scale", m.w_scale.detach())
    return out


def has_training_forms(model: nn.Module) -> bool:
    """Whether any module carries a parametrization, a pruning mask or a fake-quantized weight."""
    return any(
        parametrize.is_parametrized(m) or _pruning_hooks(m) or isinstance(m, QuantWeight) for m in model.modules()
    )


def plain_copy(model: nn.Module) -> nn.Module:
    """``model`` itself if it is plain, else a copy with parametrizations baked, masks folded in
    and quantized layers' weights set to the values they compute with."""
    if not has_training_forms(model):
        return model
    # A masked layer's `weight` is a computed (non-leaf) tensor that deepcopy refuses;
    # lift it off for the copy (the pre-hook recomputes it from weight_orig * weight_mask).
    lifted = [(m, h._tensor_name, getattr(m, h._tensor_name)) for m in model.modules() for h in _pruning_hooks(m)]
    try:
        for module, name, _ in lifted:
            delattr(module, name)
        copied = copy.deepcopy(model)
    finally:
        for module, name, value in lifted:
            setattr(module, name, value)
    for module in copied.modules():
        unparametrize(module)
        for hook in _pruning_hooks(module):
            setattr(module, hook._tensor_name, hook.apply_mask(module))
            torch_prune.remove(module, hook._tensor_name)
        if isinstance(module, QuantWeight):
            bake_quant_weight(module)
    return copied
