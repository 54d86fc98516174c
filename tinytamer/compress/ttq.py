"""Trained ternary quantization (Zhu et al. 2017).

Zhu, Han, Mao and Dally 2017, "Trained Ternary Quantization" (ICLR), Sec. 3:

- eq. 9: per layer, the threshold is ``Delta = t * max|w~|`` (``t = 0.05`` by
  default) on the latent full-precision weights ``w~``;
- eq. 6: the ternary weights are ``w_t = +Wp`` where ``w~ > Delta``, ``0`` where
  ``|w~| <= Delta`` and ``-Wn`` where ``w~ < -Delta``, with two learned
  positive scales ``Wp`` and ``Wn`` per layer;
- eq. 7: ``dL/dWp = sum over I_p of dL/dw_t`` and ``dL/dWn`` the same sum over
  ``I_n``; since ``w_t = -Wn`` there, the gradient that descends the loss is
  ``-sum over I_n of dL/dw_t`` (the sign the paper folds into ``-Wn``);
- eq. 8: the latent weights get ``Wp * dL/dw_t`` in ``I_p``, ``1 * dL/dw_t`` in
  the zero region and ``Wn * dL/dw_t`` in ``I_n``;
- the first and last layers stay in full precision, as in the paper's experiments.

As the paper does (Sec. 3, "we normalize the full-precision weights to the range
[-1, +1] by dividing each weight by the maximum weight"), the latent weights are
divided by ``max|w~|`` once, when a layer is ternarized.  The masks do not depend on
this (``Delta`` is relative to ``max|w~|``), nor do the ternary values, but the
training does: a step on the latent weights is then a fraction of the layer's range
whatever the layer's scale (with the same learning rate, the latent weights of a layer
with ``max|w~| = 0.1`` would otherwise move ten times further relative to the
threshold, so its zero / non-zero assignments would change faster), and weight decay
acts on the normalised values.  ``Wp`` / ``Wn`` start at the mean magnitude of the
weights above / below the threshold *before* the normalisation (the ternary weight
closest to the trained float layer, as in Li & Liu 2016, "Ternary Weight Networks"),
so the ternarized layer starts near the float one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinytamer.compress.selector import Selector, layer_params, parse, select_plain
from tinytamer.errors import RecipeError


class _Ternarize(torch.autograd.Function):
    """Eq. 6 forward; eqs. 7-8 backward."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, wp: Tensor, wn: Tensor, t: float) -> Tensor:
        pos, neg = ternary_masks(w, t)
        ctx.save_for_backward(pos, neg, wp, wn)
        return wp * pos - wn * neg

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        pos, neg, wp, wn = ctx.saved_tensors
        zero = 1.0 - pos - neg
        grad_w = grad * (wp * pos + zero + wn * neg)
        grad_wp = (grad * pos).sum().reshape(wp.shape)
        grad_wn = -(grad * neg).sum().reshape(wn.shape)
        return grad_w, grad_wp, grad_wn, None


def ternary_masks(w: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """Float masks of ``w > Delta`` and ``w < -Delta`` with ``Delta = t * max|w|`` (eq. 9)."""
    delta = t * w.detach().abs().max()
    return (w > delta).to(w.dtype), (w < -delta).to(w.dtype)


def ternarize_weight(w: Tensor, wp: Tensor, wn: Tensor, t: float) -> Tensor:
    """``{+Wp, 0, -Wn}`` weights with the TTQ gradients to ``w``, ``Wp`` and ``Wn``."""
    return _Ternarize.apply(w, wp, wn, t)


class _Ternary:
    """Shared by TernaryConv2d / TernaryLinear: latent weights, ``wp``, ``wn`` and ``t``."""

    weight: nn.Parameter
    wp: nn.Parameter
    wn: nn.Parameter
    t: float

    def _init_ternary(self, t: float) -> None:
        self.t = t
        pos, neg = ternary_masks(self.weight, t)
        w = self.weight.detach()
        wp = (w * pos).sum() / pos.sum().clamp_min(1)
        wn = -(w * neg).sum() / neg.sum().clamp_min(1)
        self.wp = nn.Parameter(wp.reshape(1).clone())
        self.wn = nn.Parameter(wn.reshape(1).clone())
        amax = w.abs().max()
        if amax > 0:  # latent weights in [-1, 1], as in the paper; the masks are unchanged
            with torch.no_grad():
                self.weight.div_(amax)

    def ternary_weight(self) -> Tensor:
        return ternarize_weight(self.weight, self.wp, self.wn, self.t)


class TernaryConv2d(_Ternary, nn.Conv2d):
    """Conv2d whose forward uses TTQ ternary weights ``{-Wn, 0, +Wp}``."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.ternary_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, t={self.t}"


class TernaryLinear(_Ternary, nn.Linear):
    """Linear whose forward uses TTQ ternary weights ``{-Wn, 0, +Wp}``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.ternary_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, t={self.t}"


def _swap(layer: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A new ``cls`` module with ``layer``'s hyper-parameters and tensors."""
    w = layer.weight
    kw: dict[str, Any] = {"device": w.device, "dtype": w.dtype}
    if isinstance(layer, nn.Conv2d):
        new = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            layer.bias is not None,
            layer.padding_mode,
            **kw,
        )
    else:
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, **kw)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new.train(layer.training)


def ternarize(model: nn.Module, t: float = 0.05, select: Selector | dict | None = None) -> nn.Module:
    """Replace the selected Conv2d / Linear layers with trainable ternary ones, in place.

    ``select=None`` picks every conv / linear except the first and the last.
    Per-layer ``{"t": x}`` through ``select.overrides``.  Train the model with
    the Solver (``wp`` / ``wn`` are parameters), then call :func:`finalize`.
    """
    sel = parse(select if select is not None else {"exclude_first": True, "exclude_last": True})
    chosen = select_plain(model, sel, "ttq", "with the default selector a model needs at least three such layers")
    for name, layer in chosen:
        lt = layer_params(sel, name, {"t": t})["t"]
        if not isinstance(lt, int | float) or not 0 <= lt < 1:
            raise RecipeError(f"layer '{name}': TTQ threshold factor t must be in [0, 1), got {lt!r}")
        cls = TernaryConv2d if isinstance(layer, nn.Conv2d) else TernaryLinear
        new = _swap(layer, cls)
        new._init_ternary(float(lt))  # type: ignore[attr-defined]
        model.set_submodule(name, new)
    return model


def finalize(model: nn.Module) -> nn.Module:
    """Bake every ternary layer into a plain Conv2d / Linear with weights in ``{-Wn, 0, +Wp}``."""
    for name, layer in list(model.named_modules()):
        if isinstance(layer, _Ternary):
            plain = _swap(layer, nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear)
            with torch.no_grad():
                plain.weight.copy_(layer.ternary_weight())
            model.set_submodule(name, plain)
    return model


def ternary_layers(model: nn.Module) -> dict[str, dict[str, float]]:
    """``{name: {"wp", "wn", "t", "sparsity"}}`` for every ternary layer (for reports)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _Ternary):
            pos, neg = ternary_masks(m.weight, m.t)
            out[name] = {
                "wp": float(m.wp.detach()),
                "wn": float(m.wn.detach()),
                "t": m.t,
                "sparsity": 1.0 - float((pos + neg).mean()),
            }
    return out
