"""Weight masks: which entries of a layer's weight are pruned, held through retraining.

A mask is applied with ``torch.nn.utils.prune.custom_from_mask``: the layer keeps
its trainable tensor as ``weight_orig`` and a ``weight_mask`` buffer, and a
forward pre-hook recomputes ``weight = weight_orig * weight_mask`` before every
forward.  Gradients through the product are zero at masked entries, and
whatever the optimizer does to ``weight_orig`` there (momentum, weight decay)
never reaches the effective weight, so pruned connections stay pruned while
the network retrains.  :func:`remove_masks` folds the masks in: the weights
become plain parameters holding zeros (a "masked-dense" model: the zeros take
space until the codec stores the tensor sparse).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Mask (1 = keep) that zeroes the ``round(sparsity * numel)`` smallest-magnitude entries.

    Exact counts rather than a threshold, so ties at the threshold cannot
    over-prune; entries already zero sort first, so a mask grown from a masked
    weight always contains the old mask (pruning is monotone).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = weight.detach().abs().flatten()
    n_prune = round(sparsity * flat.numel())
    mask = torch.ones_like(flat)
    if n_prune:
        mask[torch.argsort(flat, stable=True)[:n_prune]] = 0.0
    return mask.view_as(weight)


def threshold_mask(weight: Tensor, threshold: float) -> Tensor:
    """Mask that zeroes every entry whose magnitude is at most ``threshold``."""
    return (weight.detach().abs() > threshold).to(weight.dtype)


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` currently carries a pruning mask."""
    return hasattr(module, f"{name}_mask") and hasattr(module, f"{name}_orig")


def effective_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """The weight the layer computes with (original times mask when masked)."""
    if is_masked(module, name):
        return getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")
    return getattr(module, name)


def set_mask(module: nn.Module, mask: Tensor, name: str = "weight") -> None:
    """Apply ``mask`` to ``module.<name>`` on top of any mask it already has.

    Entries pruned before stay pruned: their ``<name>_orig`` values are stale, and
    letting them back would resurrect weights that never retrained.  The first
    call re-registers the same Parameter object as ``<name>_orig``, so an
    optimizer built before pruning keeps updating it; later calls update the
    mask buffer in place (what gradual schedules do during training).
    """
    if is_masked(module, name):
        with torch.no_grad():
            getattr(module, f"{name}_mask").mul_(mask)
            # The pre-hook refreshes the attribute on the next forward; refresh it now so
            # code reading the weight before that sees the new zeros.
            setattr(module, name, effective_weight(module, name))
    else:
        torch_prune.custom_from_mask(module, name, mask)


def remove_masks(model: nn.Module) -> list[str]:
    """Make every mask permanent (zeros in plain weights); return the layers it touched."""
    touched = []
    for qualified, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
                touched.append(qualified)
    return touched
