"""Search spaces: choices declared inside a model, the supernet they make, and the ordinary
network one choice of each derives.

A space is an ``nn.Module`` written as usual, with a :class:`Choice` wherever a decision is
left to the search:

- :class:`OpChoice` - a choice block: candidate ops (``{"k3": ..., "k5": ...}``) of the same
  input and output shape; the supernet runs the active one.  :class:`Zero` is the candidate
  "no op" (its output is zeros); a :class:`Residual` around a choice whose derived op is
  :class:`Zero` derives to ``nn.Identity``, so a skipped block leaves nothing behind.
- :class:`WidthChoice` - a channel width: the layers of a :class:`Chain` marked ``slim`` are
  built at the widest option, and option ``w`` keeps their first ``w`` channels (the
  weight sharing of single-path channel search).  In the supernet the channels beyond ``w``
  are zeroed; the derived network has the sliced layers.

::

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.op = OpChoice({"k3": conv_bn(c, 3), "k5": conv_bn(c, 5)})

        def forward(self, x):
            return self.op(x)

    net = Supernet(nn.Sequential(Block(16), Block(16)))
    arch = net.sample(random.Random(0))   # one option index per choice, e.g. (1, 0)
    net.activate(arch)                    # the supernet now computes that path
    plain = net.derive(arch)              # an ordinary nn.Module: no Choice left in it

``derive`` deep-copies the chosen modules and replaces every module that has a ``derived()``
method (the choices, :class:`Chain`, :class:`Residual`) by what that returns, so the result
holds only ``torch.nn`` layers and plain blocks: it saves, exports, prunes, quantizes and
deploys like a zoo model, and on the same path its outputs equal the supernet's.

An architecture is a tuple of option indices, one per choice, in the order of
:meth:`Supernet.choices` (module order; a choice shared by several blocks counts once).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tinytamer.errors import ModelError

Arch = tuple[int, ...]


class Choice(nn.Module):
    """One decision of a space: ``options`` (labels) and the index of the active one."""

    def __init__(self, options: Sequence[Any]) -> None:
        super().__init__()
        if not options:
            raise ModelError("a search choice needs at least one option")
        self.options = tuple(options)
        self.active = 0

    def select(self, index: int) -> None:
        if not 0 <= int(index) < len(self.options):
            raise ModelError(f"choice index {index} is outside 0..{len(self.options) - 1} ({self.options})")
        self.active = int(index)

    def derived(self) -> nn.Module:
        raise NotImplementedError


class Zero(nn.Module):
    """The "zero" candidate: its output is zeros (with a residual around it, the block is skipped)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mul(0.0)


class OpChoice(Choice):
    """A choice block: the active candidate computes the output.

    ``mix`` is for one-shot methods that train several paths at once (ProxylessNAS): a list
    of (candidate index, gate) pairs whose gated outputs are summed instead of the active op.
    """

    def __init__(self, candidates: Mapping[str, nn.Module]) -> None:
        super().__init__(list(candidates))
        self.candidates = nn.ModuleList(candidates.values())
        self.mix: list[tuple[int, Tensor]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.mix is None:
            return self.candidates[self.active](x)
        out = None
        for i, gate in self.mix:
            y = self.candidates[i](x) * gate
            out = y if out is None else out + y
        return out

    def derived(self) -> nn.Module:
        return derive_module(self.candidates[self.active])


class WidthChoice(Choice):
    """A channel width choice (``options`` are channel counts); read by the :class:`Chain` that holds it."""

    def __init__(self, widths: Sequence[int]) -> None:
        if any(int(w) < 1 for w in widths):
            raise ModelError(f"channel widths must be >= 1, got {tuple(widths)}")
        super().__init__([int(w) for w in widths])

    @property
    def width(self) -> int:
        return int(self.options[self.active])

    @property
    def widest(self) -> int:
        return max(self.options)

    def derived(self) -> nn.Module:
        raise ModelError("a WidthChoice has no layers of its own: it is derived with the Chain that holds it")


class Unit(nn.Module):
    """conv - BatchNorm - optional activation: one layer of a :class:`Chain`.

    ``depthwise``: groups = channels, so its channels follow its input's.  ``slim``: its
    output channels are the width choice's (it is built at the widest option).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int | tuple[int, int] = 1,
        *,
        depthwise: bool = False,
        act: type[nn.Module] | None = nn.ReLU,
        slim: bool = False,
    ) -> None:
        super().__init__()
        if depthwise and cin != cout:
            raise ModelError(f"a depthwise unit keeps its channels: {cin} in, {cout} out")
        self.depthwise, self.slim = depthwise, slim
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=cin if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Chain(nn.Module):
    """Units in sequence whose hidden width may be a :class:`WidthChoice`.

    Units marked ``slim`` produce the chosen width (built at the widest), depthwise units
    after them follow it; the supernet zeroes the channels beyond the width after each such
    unit, so the next full unit reads exactly what the sliced network feeds it.
    """

    def __init__(self, units: Sequence[Unit], width: WidthChoice | None = None) -> None:
        super().__init__()
        if any(u.slim for u in units) and width is None:
            raise ModelError("a Chain with slim units needs a WidthChoice")
        self.units = nn.ModuleList(units)
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        masked = False
        for u in self.units:
            x = u(x)
            masked = u.slim or (u.depthwise and masked)
            if masked and self.width is not None and self.width.width < x.shape[1]:
                keep = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
                keep[: self.width.width] = 1
                x = x * keep.view(1, -1, 1, 1)
        return x

    def derived(self) -> nn.Module:
        layers: list[nn.Module] = []
        keep_in: int | None = None  # the channels the previous unit kept (None: all)
        for u in self.units:
            keep_out = self.width.width if u.slim and self.width is not None else None
            if u.depthwise:
                keep_out = keep_in
            layers += [_slice_conv(u.conv, keep_in, keep_out), _slice_bn(u.bn, keep_out), copy.deepcopy(u.act)]
            keep_in = keep_out
        return nn.Sequential(*(m for m in layers if not isinstance(m, nn.Identity)))


def _slice_conv(conv: nn.Conv2d, keep_in: int | None, keep_out: int | None) -> nn.Conv2d:
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    cout = keep_out or conv.out_channels
    cin = cout if depthwise else keep_in or conv.in_channels
    new = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, groups=cout if depthwise else 1, bias=False)
    with torch.no_grad():
        w = conv.weight[:cout] if depthwise else conv.weight[:cout, :cin]
        new.weight.copy_(w)
    return new


def _slice_bn(bn: nn.BatchNorm2d, keep: int | None) -> nn.BatchNorm2d:
    n = keep or bn.num_features
    new = nn.BatchNorm2d(n, eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        new.weight.copy_(bn.weight[:n])
        new.bias.copy_(bn.bias[:n])
        new.running_mean.copy_(bn.running_mean[:n])
        new.running_var.copy_(bn.running_var[:n])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


class Residual(nn.Module):
    """``x + op(x)``; derived with a :class:`Zero` op it is ``nn.Identity`` (the block is skipped)."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        return x + self.op(x)

    def derived(self) -> nn.Module:
        op = derive_module(self.op)
        return nn.Identity() if isinstance(op, Zero) else Residual(op)


def derive_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every derivable part (a ``derived()`` method) replaced by its
    plain form for the active options; width choices are dropped (their Chains read them)."""
    if hasattr(module, "derived"):
        return module.derived()
    if not any(hasattr(m, "derived") for m in module.modules()):
        return copy.deepcopy(module)
    out = copy.copy(module)  # a new __dict__; the containers below are replaced, not shared
    out._parameters = {
        k: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
        for k, p in module._parameters.items()
    }
    out._buffers = {k: None if b is None else b.detach().clone() for k, b in module._buffers.items()}
    out._modules = {
        name: derive_module(child)
        for name, child in module._modules.items()
        if child is not None and not isinstance(child, WidthChoice)
    }
    return out


class Supernet(nn.Module):
    """The model with its choices: sample an architecture, make it active, derive it."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        if not self.choices():
            raise ModelError(f"{type(body).__name__} declares no search choice (OpChoice / WidthChoice)")

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def choices(self) -> list[tuple[str, Choice]]:
        """(name, choice) of every choice in module order; a shared choice once."""
        return [(n.removeprefix("body."), m) for n, m in self.named_modules() if isinstance(m, Choice)]

    def sizes(self) -> tuple[int, ...]:
        """The number of options of each choice."""
        return tuple(len(c.options) for _, c in self.choices())

    def check(self, arch: Sequence[int]) -> Arch:
        """``arch`` as a tuple, or ModelError naming what is wrong with it."""
        sizes = self.sizes()
        arch = tuple(int(a) for a in arch)
        if len(arch) != len(sizes):
            raise ModelError(f"an architecture of {len(arch)} choices for a space of {len(sizes)}")
        for (name, c), a in zip(self.choices(), arch, strict=True):
            if not 0 <= a < len(c.options):
                raise ModelError(f"choice '{name}': option {a} is outside 0..{len(c.options) - 1}")
        return arch

    def sample(self, rng: random.Random) -> Arch:
        """One option per choice, uniformly at random."""
        return tuple(rng.randrange(n) for n in self.sizes())

    def activate(self, arch: Sequence[int]) -> None:
        """Make ``arch`` the path the supernet computes."""
        for (_, c), a in zip(self.choices(), self.check(arch), strict=True):
            c.select(a)

    def describe(self, arch: Sequence[int]) -> dict[str, Any]:
        """choice name -> the chosen option's label."""
        return {n: c.options[a] for (n, c), a in zip(self.choices(), self.check(arch), strict=True)}

    def derive(self, arch: Sequence[int]) -> nn.Module:
        """The plain network of ``arch`` (its weights copied from the supernet)."""
        self.activate(arch)
        return derive_module(self.body).train(self.training)
