"""Two ready search spaces, for 32x32 images (CIFAR-10) and 49x10 MFCC keyword input.

- :func:`shufflenet_space` - the choice blocks of SPOS (Guo et al., ECCV 2020, Sec. 4 and
  Fig. 1 of its supplement): every unit is a ShuffleNetV2 unit (Ma et al., 2018, Fig. 3c/d)
  whose branch is one of ``k3``, ``k5``, ``k7`` (1x1 - depthwise kxk - 1x1) or ``xception``
  (three depthwise 3x3 - 1x1 pairs); the downsampling units choose the kernel of their
  projection branch with it.  ``width_ratios`` adds SPOS's channel search: a
  :class:`~tinytamer.search.space.WidthChoice` per unit over the branch's hidden channels.
- :func:`mbconv_space` - the ProxylessNAS candidates (Cai et al., ICLR 2019, Sec. 4): MBConv
  (1x1 expand - ReLU6 - depthwise kxk - ReLU6 - 1x1 project, MobileNetV2's inverted residual)
  with kernel 3 / 5 / 7 and expansion 3 / 6, plus ``zero`` (the block is skipped) on every
  block that keeps its shape.

Both take the input shape, so one definition serves (3, 32, 32) images and (1, 49, 10)
MFCC maps: a stride-1 stem, then stages that each start by halving the map (rounding up:
49x10 becomes 25x5, 13x3, 7x2).  ``stem_stride=2`` halves the map in the stem as well, as
the papers' ImageNet networks do: the first blocks then run on a quarter of the pixels,
which is what small SRAM budgets need (with a stride-1 stem, every architecture holds the
first block's full-resolution tensors; :meth:`~tinytamer.search.budget.ArchCost.floors`).
Every op a derived network holds - convolution, depthwise
convolution, ReLU / ReLU6, residual add, channel split (a slice ``x[:, a:b]``), concatenation
(``torch.cat``), channel shuffle (``nn.ChannelShuffle``), global average pool, linear -
deploys on the micro devices (int8) and on every host target but ``litert``, whose
``.tflite`` writer has no form for the micro path's channel gather yet.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.search.space import Chain, OpChoice, Residual, Supernet, Unit, WidthChoice, Zero

SHUFFLE_OPS = ("k3", "k5", "k7", "xception")
MBCONV_OPS = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")
Stages = Sequence[tuple[int, int, int]]  # (output channels, blocks, stride of the first)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit: with no ``proj``, the first ``keep`` channels pass and the rest
    go through ``branch``; with one (downsampling), both branches read the whole input;
    the two are concatenated and their channels shuffled (2 groups)."""

    def __init__(self, branch: nn.Module, proj: nn.Module | None, keep: int, channels: int) -> None:
        super().__init__()
        self.branch, self.proj = branch, proj
        # Plain ints: fx traces no shape arithmetic; slices (not torch.narrow) convert to ncnn too.
        self.keep, self.channels = keep, channels
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is None:
            out = torch.cat((x[:, : self.keep], self.branch(x[:, self.keep : self.channels])), 1)
        else:
            out = torch.cat((self.proj(x), self.branch(x)), 1)
        return self.shuffle(out)


class Head(nn.Module):
    """Stem and blocks, then 1x1 conv, global average pool and the classifier."""

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], cin: int, feat: int, num_classes: int, act):
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.conv = Unit(cin, feat, 1, act=act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(feat, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.conv(self.blocks(self.stem(x))))))


def _check(input_shape: Sequence[int], stages: Stages, num_classes: int, stem_stride: int) -> None:
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ModelError(f"a search space takes one sample's shape (C, H, W), got {tuple(input_shape)}")
    if num_classes < 2:
        raise ModelError(f"a search space needs at least 2 classes, got {num_classes}")
    if not stages or any(c < 1 or n < 1 or s not in (1, 2) for c, n, s in stages):
        raise ModelError(f"stages are (channels >= 1, blocks >= 1, stride 1 or 2), got {list(stages)}")
    if stem_stride not in (1, 2):
        raise ModelError(f"stem_stride is 1 or 2, got {stem_stride}")


def _shuffle_branch(cin: int, cout: int, mid: int, op: str, stride: int, width: WidthChoice | None) -> Chain:
    slim = width is not None
    if op == "xception":
        units = [
            Unit(cin, cin, 3, stride, depthwise=True, act=None),
            Unit(cin, mid, 1, slim=slim),
            Unit(mid, mid, 3, depthwise=True, act=None),
            Unit(mid, mid, 1, slim=slim),
            Unit(mid, mid, 3, depthwise=True, act=None),
            Unit(mid, cout, 1),
        ]
    else:
        k = int(op[1:])
        units = [Unit(cin, mid, 1, slim=slim), Unit(mid, mid, k, stride, depthwise=True, act=None), Unit(mid, cout, 1)]
    return Chain(units, width)


def shufflenet_space(
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    *,
    stem: int = 16,
    stages: Stages = ((48, 3, 2), (96, 3, 2), (192, 2, 2)),
    feat: int = 256,
    width_ratios: Sequence[float] | None = None,
    stem_stride: int = 1,
) -> Supernet:
    """The SPOS ShuffleNetV2 supernet: one :class:`OpChoice` of :data:`SHUFFLE_OPS` per unit
    (and a :class:`WidthChoice` per unit when ``width_ratios`` is given)."""
    _check(input_shape, stages, num_classes, stem_stride)
    if any(c % 2 for c, _, _ in stages):
        raise ModelError(
            f"ShuffleNetV2 units split their channels in halves: stage channels must be even, got {stages}"
        )
    blocks: list[nn.Module] = []
    cin = stem
    for cout, n, first_stride in stages:
        for j in range(n):
            stride = first_stride if j == 0 else 1
            down = stride > 1 or cin != cout
            half = cout // 2
            b_in = cin if down else half
            width = None
            if width_ratios:
                widths = sorted({max(1, round(r * half)) for r in width_ratios})
                width = WidthChoice(widths)
            mid = width.widest if width is not None else half
            cands = {}
            for op in SHUFFLE_OPS:
                branch = _shuffle_branch(b_in, cout - half, mid, op, stride, width)
                proj = None
                if down:
                    k = 3 if op == "xception" else int(op[1:])
                    proj = Chain([Unit(cin, cin, k, stride, depthwise=True, act=None), Unit(cin, half, 1)])
                cands[op] = ShuffleUnit(branch, proj, 0 if down else half, cin)
            blocks.append(OpChoice(cands))
            cin = cout
    stem_unit = Unit(input_shape[0], stem, 3, stem_stride)
    return Supernet(Head(stem_unit, blocks, cin, feat, num_classes, nn.ReLU))


def _mbconv(cin: int, cout: int, k: int, e: int, stride: int) -> Chain:
    hid = cin * e
    return Chain(
        [
            Unit(cin, hid, 1, act=nn.ReLU6),
            Unit(hid, hid, k, stride, depthwise=True, act=nn.ReLU6),
            Unit(hid, cout, 1, act=None),
        ]
    )


def mbconv_space(
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    *,
    stem: int = 16,
    stages: Stages = ((24, 3, 2), (40, 3, 2), (80, 3, 2)),
    feat: int = 160,
    stem_stride: int = 1,
) -> Supernet:
    """The ProxylessNAS MBConv supernet: one :class:`OpChoice` of :data:`MBCONV_OPS` per
    block, with ``zero`` (inside a :class:`Residual`) on every block that keeps its shape."""
    _check(input_shape, stages, num_classes, stem_stride)
    # The fixed first block of the paper's networks: depthwise 3x3 - 1x1 (expansion 1).
    first = Chain([Unit(stem, stem, 3, depthwise=True, act=nn.ReLU6), Unit(stem, stem, 1, act=None)])
    blocks: list[nn.Module] = [Residual(first)]
    cin = stem
    for cout, n, first_stride in stages:
        for j in range(n):
            stride = first_stride if j == 0 else 1
            cands: dict[str, nn.Module] = {
                name: _mbconv(cin, cout, int(name[1]), int(name[-1]), stride) for name in MBCONV_OPS
            }
            if stride == 1 and cin == cout:
                cands["zero"] = Zero()
                blocks.append(Residual(OpChoice(cands)))
            else:
                blocks.append(OpChoice(cands))
            cin = cout
    stem_unit = Unit(input_shape[0], stem, 3, stem_stride, act=nn.ReLU6)
    return Supernet(Head(stem_unit, blocks, cin, feat, num_classes, nn.ReLU6))


SPACES: dict[str, Callable[..., Supernet]] = {"shufflenet": shufflenet_space, "mbconv": mbconv_space}


def make_space(name: str, input_shape: Sequence[int], num_classes: int, **kw) -> Supernet:
    """A ready space by name (``shufflenet`` or ``mbconv``)."""
    if name not in SPACES:
        raise ModelError(f"unknown search space '{name}': choose one of {', '.join(SPACES)}")
    known = [k for k, v in inspect.signature(SPACES[name]).parameters.items() if v.kind is v.KEYWORD_ONLY]
    unknown = sorted(set(kw) - set(known))
    if unknown:
        raise ModelError(f"search space '{name}' has no option {', '.join(unknown)} (its options: {', '.join(known)})")
    return SPACES[name](tuple(input_shape), num_classes, **kw)
