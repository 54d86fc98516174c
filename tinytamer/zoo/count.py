"""Parameter and MAC counting, in total and per layer.

MACs are the multiply-accumulates of convolutions, linear layers and matrix
products, the convention of the papers (ResNet-18: 1.82 G at 224x224); BN,
activations, pooling and additions are not counted.  The arithmetic is left
to ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per
MAC for exactly those ops (grouped and depthwise convs included); forward
hooks read its running total around each module to split it per layer.
Attention is counted however it is written: as matrix products, through
``F.scaled_dot_product_attention`` (whose CPU kernel torch's table lacks) or
through ``nn.MultiheadAttention``'s fused inference path (projections included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from tinytamer.errors import ModelError


@dataclass
class Counts:
    """Totals for one forward pass at batch 1, and the per-layer breakdown.

    ``per_layer`` holds one dict per layer in call order, with keys
    ``name`` (as in ``named_modules``; ``""`` is the model itself, listed
    only when its own forward does counted work), ``type``, ``params`` (the
    layer's own), ``macs`` and ``output_shape`` (batch 1 included).
    """

    params: int
    nonzero_params: int
    macs: int
    per_layer: list[dict[str, Any]] = field(default_factory=list)


def count(model: nn.Module, input_shape: tuple[int, ...]) -> Counts:
    """Count parameters, non-zero parameters and MACs of ``model`` on one (C, H, W) input."""
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ModelError(f"count: input_shape must be positive ints like (C, H, W), got {shape}")
    macs, per_layer = _count_macs(model, shape)
    return Counts(
        params=sum(p.numel() for p in model.parameters()),
        nonzero_params=_nonzero_params(model),
        macs=macs,
        per_layer=per_layer,
    )


def _nonzero_params(model: nn.Module) -> int:
    """Non-zero entries; for ``torch.nn.utils.prune`` layers, of the masked weight in use."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            effective = getattr(module, name[: -len("_orig")], None) if name.endswith("_orig") else None
            tensor = effective if isinstance(effective, Tensor) else p
            total += int(torch.count_nonzero(tensor.detach()))
    return total


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *_args: Any, out_shape: Any = None, **_kw: Any) -> int:
    """The CPU kernel of ``scaled_dot_product_attention``: q k^T and the weighted sum of v."""
    return sdpa_flop_count(query, key, value)


def _native_mha_flops(query: Any, key: Any, value: Any, embed_dim: int, *_args: Any, **_kw: Any) -> int:
    """``nn.MultiheadAttention`` in inference: q, k, v and output projections plus attention."""
    b, lq, e = query[0], query[-2], embed_dim
    lk = key[-2]
    macs = b * (lq * e * e + 2 * lk * e * e + 2 * lq * lk * e + lq * e * e)
    return 2 * macs


_EXTRA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, list | tuple):
        for item in out:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(out, dict):
        return _first_tensor(list(out.values()))
    return None


def _count_macs(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, list[dict[str, Any]]]:
    first = next(model.parameters(), None)
    x = torch.zeros(
        1,
        *shape,
        dtype=first.dtype if first is not None and first.is_floating_point() else torch.float32,
        device=first.device if first is not None else "cpu",
    )
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS)
    start: dict[str, list[int]] = {}  # a stack per module: it may be called re-entrantly
    inclusive: dict[str, int] = {}
    children_flops: dict[str, int] = {}
    out_shape: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    parent_stack: list[str] = []

    def pre_hook(module: nn.Module, _args: Any) -> None:
        name = names[id(module)]
        start.setdefault(name, []).append(counter.get_total_flops())
        parent_stack.append(name)

    def post_hook(module: nn.Module, _args: Any, output: Any) -> None:
        name = names[id(module)]
        parent_stack.pop()
        flops = counter.get_total_flops() - start[name].pop()
        if name not in inclusive:
            order.append(name)
            inclusive[name] = 0
        inclusive[name] += flops
        if parent_stack:
            parent = parent_stack[-1]
            children_flops[parent] = children_flops.get(parent, 0) + flops
        tensor = _first_tensor(output)
        if tensor is not None:
            out_shape[name] = tuple(tensor.shape)

    handles = []
    for module in modules.values():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(x)
    except RuntimeError as exc:
        raise ModelError(f"count: {type(model).__name__} failed on an input of shape {(1, *shape)}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    per_layer = []
    for name in order:
        module = modules[name]
        own_params = sum(p.numel() for p in module.parameters(recurse=False))
        # Flops done by the module itself, not by a child (e.g. a matmul in forward).
        own_flops = inclusive[name] - children_flops.get(name, 0)
        is_leaf = next(module.children(), None) is None
        if is_leaf or own_params or own_flops:
            per_layer.append(
                {
                    "name": name,
                    "type": type(module).__name__,
                    "params": own_params,
                    "macs": own_flops // 2,
                    "output_shape": out_shape.get(name),
                }
            )
    return counter.get_total_flops() // 2, per_layer
