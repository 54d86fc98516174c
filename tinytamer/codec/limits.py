"""Bounds on what a loaded model may make a forward pass allocate.

A model file cannot run code, but the plain values in its architecture steer the
code of its module classes: a ``Conv2d`` whose ``padding`` is 10**6, an adaptive
pool asked for a 10**6 x 10**6 output or an upsampling by 10**6 would all
allocate without bound on the first forward pass.  :func:`check_module` holds
every module ``tinytamer.codec.arch.build`` rebuilds to the limits below (the
records of a quantized graph included) and :class:`Growth` sums what the layers
of one model may add to an activation's size; both raise :class:`CodecError`
naming the attribute, which ``build`` prefixes with the module's path (and its
callers with the file).

The limits, per spatial dimension:

- a convolution pads at most ``dilation x (kernel_size - 1)`` per side (a "full"
  convolution: more only adds zeros); stride at least 1; ``dilation x
  (kernel_size - 1)`` and strides at most :data:`MAX_SIDE`; ``groups`` divides
  both channel counts; channel counts, groups and kernel sizes match its weight;
  ``_reversed_padding_repeated_twice`` (what a non-zero ``padding_mode`` pads by)
  follows from ``padding``; a transposed convolution's ``output_padding`` is
  below its stride or dilation (torch's own rule);
- a pooling layer pads at most half its dilated kernel (torch's own rule);
- an adaptive pool's output size, an upsampling's ``size`` and a fold's
  ``output_size`` are at most :data:`MAX_SIDE`; a padding layer's (or ``F.pad``'s)
  padding at most :data:`MAX_SIDE` per side;
- a linear layer's, an embedding's and a normalization's declared sizes match
  their tensors;
- every integer attribute of every module is at most :data:`MAX_INT` in size
  (the classes outside ``torch.nn`` use theirs in code we cannot see); the zoo's
  zero-pad shortcut strides by at most, and adds at most, :data:`MAX_SIDE` (channels);
- over the whole model, the product of the upscaling factors (upsampling scale
  factors, transposed-convolution and pixel-shuffle strides) is at most
  :data:`MAX_UPSCALE`, and the sum of what the layers add to a side (padding
  beyond what their kernel takes back) at most :data:`MAX_GROWTH`.

Every layer of a covered kind maps a side ``n`` to at most ``a * n + b``, or to a
fixed size of at most :data:`MAX_SIDE`.  So whatever order a model applies them
in, for an input whose spatial sides are at most ``S`` no activation of those
layers has a side beyond ``MAX_UPSCALE x (max(S, MAX_SIDE) + MAX_GROWTH)``
(40,960 for ``S`` up to 1024) and, because channel counts are those of the
file's own weights, no more channels than the widest layer (plus what zero-pad shortcuts add).  Zoo models stay far
inside: upscaling 1 (2 for YOLO-Fastest), growth under 10.  What a module class
outside ``torch.nn`` does with its attributes in its own ``forward`` is bounded
only by :data:`MAX_INT`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn
from torch.nn.modules import conv, padding, pooling

from tinytamer.errors import CodecError
from tinytamer.qgraph import OPS, QuantizedGraph
from tinytamer.zoo.cifar_resnet import ZeroPadShortcut

MAX_SIDE = 1024
MAX_UPSCALE = 32
MAX_GROWTH = 256
MAX_INT = 1 << 16
_PADDING_MODES = frozenset({"zeros", "reflect", "replicate", "circular"})
_UPSAMPLE_MODES = frozenset({"nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear"})


class Growth:
    """What the layers of one model add to an activation's side, summed as they are checked."""

    def __init__(self) -> None:
        self.upscale = 1.0
        self.added = 0

    def add(self, upscale: float = 1.0, added: int = 0) -> None:
        """Count one layer's factor and additive growth; refuse the layer that takes a total past its limit."""
        self.upscale *= max(1.0, upscale)
        self.added += max(0, added)
        if self.upscale > MAX_UPSCALE:
            raise CodecError(
                f"upscales by x{upscale:g}, which takes the model's total upscaling to "
                f"x{self.upscale:g}, over the limit of x{MAX_UPSCALE}"
            )
        if self.added > MAX_GROWTH:
            raise CodecError(
                f"adds {added} to a side, which takes what the model's layers add to "
                f"{self.added}, over the limit of {MAX_GROWTH}"
            )


def _ints(module: nn.Module, name: str, n: int | None = None, lo: int = 0, hi: int = MAX_SIDE) -> tuple[int, ...]:
    """Attribute ``name`` as ``n`` integers in ``[lo, hi]`` (an int stands for all ``n``)."""
    value = module.__dict__.get(name)
    items = (value,) * (n or 1) if type(value) is int else value
    ok = (
        isinstance(items, (tuple, list))
        and len(items) > 0
        and (n is None or len(items) == n)
        and all(type(v) is int and lo <= v <= hi for v in items)
    )
    if not ok:
        size = f"{n} " if n else ""
        raise CodecError(f"{_kind(module)} '{name}' is {_short(value)}, not {size}integer(s) in [{lo}, {hi}]")
    return tuple(items)


def _kind(module: nn.Module) -> str:
    return "its" if isinstance(module, _Args) else type(module).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is(module: nn.Module, name: str, expected: Any) -> None:
    if module.__dict__.get(name) != expected or type(module.__dict__.get(name)) is not type(expected):
        raise CodecError(f"{_kind(module)} '{name}' is {_short(module.__dict__.get(name))}, its weights say {expected}")


def _tensor_shape(module: nn.Module, name: str) -> tuple[int, ...] | None:
    t = module._parameters.get(name)
    if t is None:
        t = module._buffers.get(name)
    return None if t is None else tuple(t.shape)


def _bias(module: nn.Module, size: int) -> None:
    shape = _tensor_shape(module, "bias")
    if shape is not None and shape != (size,):
        raise CodecError(f"{_kind(module)} has a bias of shape {list(shape)} for {size} outputs")


# ----------------------------------------------------------------------------- layer kinds


def _conv(module: conv._ConvNd, growth: Growth) -> None:
    weight = _tensor_shape(module, "weight")
    if weight is None or len(weight) < 3:
        raise CodecError(f"{_kind(module)} has no weight of shape [out, in, *kernel]")
    nd = len(weight) - 2
    transposed = isinstance(module, conv._ConvTransposeNd)
    _is(module, "transposed", transposed)
    groups = _ints(module, "groups", 1, 1, MAX_INT)[0]
    c_in, c_out = _ints(module, "in_channels", 1, 1, MAX_INT)[0], _ints(module, "out_channels", 1, 1, MAX_INT)[0]
    if c_in % groups or c_out % groups:
        raise CodecError(f"{_kind(module)} 'groups' {groups} does not divide its {c_in} in and {c_out} out channels")
    expected = (c_in, c_out // groups) if transposed else (c_out, c_in // groups)
    kernel = _ints(module, "kernel_size", nd, 1)
    if weight != expected + kernel:
        raise CodecError(
            f"{_kind(module)} declares in_channels {c_in}, out_channels {c_out}, groups {groups}, "
            f"kernel_size {list(kernel)}, but its weight is {list(weight)}"
        )
    _bias(module, c_out)
    stride = _ints(module, "stride", nd, 1)
    dilation = _ints(module, "dilation", nd, 1)
    reach = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    if max(reach) > MAX_SIDE:
        raise CodecError(f"{_kind(module)} 'dilation' {list(dilation)} spans {max(reach)}, more than {MAX_SIDE}")
    pad = module.__dict__.get("padding")
    if pad in ("same", "valid") and not transposed:
        if pad == "same" and max(stride) > 1:
            raise CodecError(f"{_kind(module)} 'padding' 'same' with stride {list(stride)} (torch requires 1)")
        # what Conv's own constructor derives: the total reach split, the extra on the right
        sides = [(r // 2, r - r // 2) if pad == "same" else (0, 0) for r in reach]
    else:
        pads = _ints(module, "padding", nd)
        for p, r in zip(pads, reach, strict=True):
            if p > r:
                raise CodecError(
                    f"{_kind(module)} 'padding' {list(pads)} is more than dilation x (kernel_size - 1) = "
                    f"{reach} per side"
                )
        sides = [(p, p) for p in pads]
    mode = module.__dict__.get("padding_mode")
    if not isinstance(mode, str) or mode not in _PADDING_MODES or (transposed and mode != "zeros"):
        raise CodecError(f"{_kind(module)} 'padding_mode' is {_short(mode)}")
    reversed_twice = [p for side in reversed(sides) for p in side]
    found = module.__dict__.get("_reversed_padding_repeated_twice")
    if not isinstance(found, (tuple, list)) or list(found) != reversed_twice:
        raise CodecError(
            f"{_kind(module)} '_reversed_padding_repeated_twice' is {_short(found)}, its padding says {reversed_twice}"
        )
    out_pad = _ints(module, "output_padding", nd)
    if any(o >= max(s, d) for o, s, d in zip(out_pad, stride, dilation, strict=True)) or (
        not transposed and any(out_pad)
    ):
        raise CodecError(
            f"{_kind(module)} 'output_padding' {list(out_pad)} is not below its stride or dilation"
            if transposed
            else f"{_kind(module)} 'output_padding' {list(out_pad)} on a convolution that is not transposed"
        )
    if transposed:  # (n - 1) s - 2p + reach + op + 1 = s n + (reach + op + 1 - s - 2p)
        extra = max(r + o + 1 - s - 2 * p[0] for r, o, s, p in zip(reach, out_pad, stride, sides, strict=True))
        growth.add(max(stride), extra)
    else:
        growth.add(added=max(a + b - r for (a, b), r in zip(sides, reach, strict=True)))


def _pool(module: nn.Module, growth: Growth) -> None:
    kernel = _ints(module, "kernel_size", lo=1)
    stride = module.__dict__.get("stride")
    if stride is not None and stride != [] and stride != ():
        _ints(module, "stride", lo=1)
    dilation = _ints(module, "dilation", lo=1) if "dilation" in module.__dict__ else (1,)
    pads = _ints(module, "padding") if "padding" in module.__dict__ else (0,)
    n = max(len(kernel), len(dilation), len(pads))
    kernel, dilation, pads = (v * n if len(v) == 1 else v for v in (kernel, dilation, pads))
    if not len(kernel) == len(dilation) == len(pads):
        raise CodecError(f"{_kind(module)} kernel_size, dilation and padding have different lengths")
    reach = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    if max(reach) > MAX_SIDE:
        raise CodecError(f"{_kind(module)} 'dilation' {list(dilation)} spans {max(reach)}, more than {MAX_SIDE}")
    if any(2 * p > r + 1 for p, r in zip(pads, reach, strict=True)):
        raise CodecError(f"{_kind(module)} 'padding' {list(pads)} is more than half its kernel {list(kernel)}")
    ceil = module.__dict__.get("ceil_mode", False)
    if not isinstance(ceil, bool):
        raise CodecError(f"{_kind(module)} 'ceil_mode' is {_short(ceil)}, not true or false")
    growth.add(added=max(2 * p - r for p, r in zip(pads, reach, strict=True)) + int(ceil))


def _sizes(module: nn.Module, name: str, value: Any, optional: bool) -> None:
    items = value if isinstance(value, (tuple, list)) else (value,)
    ok = len(items) > 0 and all((optional and v is None) or (type(v) is int and 1 <= v <= MAX_SIDE) for v in items)
    if not ok:
        raise CodecError(f"{_kind(module)} '{name}' is {_short(value)}, not size(s) in [1, {MAX_SIDE}]")


def _upsample(module: nn.Upsample, growth: Growth) -> None:
    size, scale = module.__dict__.get("size"), module.__dict__.get("scale_factor")
    if (size is None) == (scale is None):
        raise CodecError(f"{_kind(module)} needs exactly one of 'size' and 'scale_factor'")
    if not isinstance(module.__dict__.get("mode"), str) or module.__dict__["mode"] not in _UPSAMPLE_MODES:
        raise CodecError(f"{_kind(module)} 'mode' is {_short(module.__dict__.get('mode'))}")
    if size is not None:
        _sizes(module, "size", size, optional=False)
        return
    growth.add(_scale(scale, f"{_kind(module)} 'scale_factor'"))


def _scale(value: Any, what: str) -> float:
    """The largest of one or several upscaling factors, each a finite number in (0, MAX_UPSCALE]."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not (
        len(items) > 0 and all(type(v) in (int, float) and math.isfinite(v) and 0 < v <= MAX_UPSCALE for v in items)
    ):
        raise CodecError(f"{what} is {_short(value)}, not factor(s) in (0, {MAX_UPSCALE}]")
    return float(max(items))


def _pad(module: nn.Module, growth: Growth) -> None:
    pads = _ints(module, "padding", lo=-MAX_SIDE)
    growth.add(added=_pad_growth(pads))


def _pad_growth(pads: Sequence[int]) -> int:
    """The most ``F.pad``-style (left, right) pairs add to one dimension."""
    return max((max(0, a) + max(0, b) for a, b in zip(pads[::2], pads[1::2], strict=False)), default=0)


def _zero_pad_shortcut(module: nn.Module, growth: Growth) -> None:
    # Its forward pads `extra` zero channels: no weights of the file bound them.
    _ints(module, "stride", 1, 1)
    _ints(module, "extra", 1, 0)


def _linear(module: nn.Linear, growth: Growth) -> None:
    weight = _tensor_shape(module, "weight")
    if weight is None or len(weight) != 2:
        raise CodecError(f"{_kind(module)} has no 2-d weight")
    _is(module, "out_features", weight[0])
    _is(module, "in_features", weight[1])
    _bias(module, weight[0])


def _features(module: nn.Module, growth: Growth) -> None:
    """A normalization's channel count matches its affine weight and running statistics."""
    for name in ("weight", "running_mean"):
        shape = _tensor_shape(module, name)
        if shape is not None:
            _is(module, "num_features", shape[0] if len(shape) == 1 else -1)


def _embedding(module: nn.Embedding, growth: Growth) -> None:
    weight = _tensor_shape(module, "weight")
    if weight is None or len(weight) != 2:
        raise CodecError(f"{_kind(module)} has no 2-d weight")
    _is(module, "num_embeddings", weight[0])
    _is(module, "embedding_dim", weight[1])


def _pixel_shuffle(module: nn.PixelShuffle, growth: Growth) -> None:
    growth.add(_ints(module, "upscale_factor", 1, 1, MAX_UPSCALE)[0])


def _fold(module: nn.Fold, growth: Growth) -> None:
    _sizes(module, "output_size", module.__dict__.get("output_size"), optional=False)
    _unfold(module, growth)


def _unfold(module: nn.Module, growth: Growth) -> None:
    # an unfold copies each input value once per kernel position: the kernel is an upscaling
    kernel = _ints(module, "kernel_size", lo=1)
    _ints(module, "dilation", lo=1)
    _ints(module, "padding")
    stride = _ints(module, "stride", lo=1)
    growth.add(math.prod(kernel) / math.prod(stride))


_RULES: tuple[tuple[type, Any], ...] = (
    (conv._ConvNd, _conv),
    (pooling._MaxPoolNd, _pool),
    (pooling._AvgPoolNd, _pool),
    (pooling._LPPoolNd, _pool),
    (pooling._AdaptiveAvgPoolNd, lambda m, g: _sizes(m, "output_size", m.__dict__.get("output_size"), True)),
    (pooling._AdaptiveMaxPoolNd, lambda m, g: _sizes(m, "output_size", m.__dict__.get("output_size"), True)),
    (nn.Upsample, _upsample),
    (padding._ConstantPadNd, _pad),
    (padding._ReflectionPadNd, _pad),
    (padding._ReplicationPadNd, _pad),
    (padding._CircularPadNd, _pad),
    (nn.Linear, _linear),
    (nn.modules.batchnorm._NormBase, _features),
    (nn.Embedding, _embedding),
    (nn.PixelShuffle, _pixel_shuffle),
    (nn.Fold, _fold),
    (nn.Unfold, _unfold),
    (ZeroPadShortcut, _zero_pad_shortcut),
)


# ----------------------------------------------------------------------------- quantized graphs


def _arguments(rec: dict[str, Any]) -> dict[str, Any]:
    """A validated record's arguments by parameter name."""
    names = [p.lstrip("*") for p, _ in OPS[rec["target"]].params]
    return {**dict(zip(names, rec["args"], strict=False)), **rec["kwargs"]}


def _literal(value: Any, what: str) -> Any:
    """Sizes that decide an allocation must be written in the graph, not computed at run time."""
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, dict):
            raise CodecError(f"{what} is computed at run time ({_short(value)}); a loaded graph must state it")
    return value


class _Args(nn.Module):
    """A node's pooling arguments, held like a pooling layer's attributes for :func:`_pool`."""

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__()
        self.__dict__.update({k: _literal(v, f"argument '{k}'") for k, v in args.items() if k != "input"})


def _graph(module: QuantizedGraph, growth: Growth) -> None:
    for i, rec in enumerate(module.__dict__.get("nodes") or ()):
        if rec["op"] != "call_function" or not isinstance(rec["target"], str) or rec["target"] not in _NODE_RULES:
            continue
        try:
            _NODE_RULES[rec["target"]](_arguments(rec), growth)
        except CodecError as exc:
            raise CodecError(f"quantized graph node {i} ('{rec['name']}') calls '{rec['target']}': {exc}") from None


def _node_pad(args: dict[str, Any], growth: Growth) -> None:
    pads = _literal(args.get("pad"), "'pad'")
    pads = pads if isinstance(pads, (tuple, list)) else (pads,)
    if not all(type(p) is int and abs(p) <= MAX_SIDE for p in pads):
        raise CodecError(f"'pad' is {_short(pads)}, not integers of at most {MAX_SIDE}")
    growth.add(added=_pad_growth(pads))


def _node_interpolate(args: dict[str, Any], growth: Growth) -> None:
    size, scale = _literal(args.get("size"), "'size'"), _literal(args.get("scale_factor"), "'scale_factor'")
    if size is not None:
        items = size if isinstance(size, (tuple, list)) else (size,)
        if not all(type(v) is int and 1 <= v <= MAX_SIDE for v in items):
            raise CodecError(f"'size' is {_short(size)}, not size(s) in [1, {MAX_SIDE}]")
    if scale is not None:
        growth.add(_scale(scale, "'scale_factor'"))


def _node_adaptive(args: dict[str, Any], growth: Growth) -> None:
    size = _literal(args.get("output_size"), "'output_size'")
    items = size if isinstance(size, (tuple, list)) else (size,)
    if not all(v is None or (type(v) is int and 1 <= v <= MAX_SIDE) for v in items):
        raise CodecError(f"'output_size' is {_short(size)}, not size(s) in [1, {MAX_SIDE}]")


def _node_pool(args: dict[str, Any], growth: Growth) -> None:
    _pool(
        _Args({k: args[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode") if k in args}), growth
    )


_NODE_RULES = {
    "F.pad": _node_pad,
    "F.interpolate": _node_interpolate,
    "F.adaptive_avg_pool2d": _node_adaptive,
    "F.adaptive_max_pool2d": _node_adaptive,
    "F.max_pool2d": _node_pool,
    "F.avg_pool2d": _node_pool,
}


# ----------------------------------------------------------------------------- every module


def _all_ints(value: Any) -> Iterator[int]:
    if type(value) is int:
        yield value
    elif isinstance(value, (tuple, list, set, frozenset)):
        for v in value:
            yield from _all_ints(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _all_ints(v)


def check_module(module: nn.Module, growth: Growth) -> None:
    """Hold one rebuilt module (its own attributes and tensors, not its children's) to the limits.

    ``growth`` collects the model's total upscaling and additive growth.  Raises
    :class:`CodecError` naming the attribute that is out of bounds.
    """
    for name, value in module.__dict__.items():
        if name == "nodes" and isinstance(module, QuantizedGraph):
            continue  # its sizes are checked record by record below
        big = next((v for v in _all_ints(value) if abs(v) > MAX_INT), None)
        if big is not None:
            raise CodecError(f"{_kind(module)} attribute '{name}' holds {big}, more than the {MAX_INT} a file may set")
    for cls, rule in _RULES:
        if isinstance(module, cls):
            rule(module, growth)
    if isinstance(module, QuantizedGraph):
        _graph(module, growth)


__all__ = ["MAX_GROWTH", "MAX_INT", "MAX_SIDE", "MAX_UPSCALE", "Growth", "check_module"]
