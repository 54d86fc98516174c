"""The fake-quantization modules: quantized conv / linear layers and activation points.

Weights are symmetric per output channel with zero point 0 and the narrow range
[-(2^(b-1)-1), 2^(b-1)-1] (Krishnamoorthi 2018, per-channel weight quantization), or with
one scale for the whole layer where a selector override asks ``per_channel: false``;
activations asymmetric per tensor (Jacob et al. 2018, eq. 1), observed during
calibration, tracked by a moving min / max during QAT, frozen after ``convert``.
The straight-through estimator (gradient 1 inside the clamp range) is
``tinytamer.qgraph.fake_quant``'s.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinytamer.compress.int8.ranges import (
    SAMPLE_CAP,
    SAMPLE_PER_BATCH,
    CalibMethod,
    act_qparams,
    choose_range,
)
from tinytamer.errors import ModelError, RecipeError
from tinytamer.qgraph import ActQuant, QuantWeight, fake_quant

MIN_BITS, MAX_BITS = 2, 8
# Averaging constant of the moving min / max that QAT tracks (as in PyTorch's
# MovingAverageMinMaxObserver).
_EMA = 0.01


def check_bits(bits: Any, where: str) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise RecipeError(f"{where}: bit width must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def _copy_params(q: QuantWeight, layer: nn.Module) -> None:
    with torch.no_grad():
        q.weight.copy_(layer.weight)
        if layer.bias is not None:
            q.bias.copy_(layer.bias)  # type: ignore[attr-defined]
        q.refresh_scale()
    q.train(layer.training)  # type: ignore[attr-defined]


class QuantConv2d(QuantWeight, nn.Conv2d):
    """A Conv2d whose forward uses per-channel symmetric fake-quantized weights and a float bias."""

    def __init__(self, *args: Any, w_bits: int = 8, w_per_channel: bool = True, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_quant(w_bits, w_per_channel)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int, per_channel: bool = True) -> QuantConv2d:
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            w_bits=bits,
            w_per_channel=per_channel,
        )
        _copy_params(q, conv)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quant_weight(), self.bias)

    def extra_repr(self) -> str:
        grid = "" if self.w_per_channel else ", per-tensor scale"
        return f"{super().extra_repr()}, w_bits={self.w_bits}{grid}"


class QuantLinear(QuantWeight, nn.Linear):
    """A Linear whose forward uses per-channel symmetric fake-quantized weights and a float bias."""

    def __init__(self, *args: Any, w_bits: int = 8, w_per_channel: bool = True, **kwargs: Any) -> None:
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_quant(w_bits, w_per_channel)

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int, per_channel: bool = True) -> QuantLinear:
        q = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            w_bits=bits,
            w_per_channel=per_channel,
        )
        _copy_params(q, linear)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quant_weight(), self.bias)

    def extra_repr(self) -> str:
        grid = "" if self.w_per_channel else ", per-tensor scale"
        return f"{super().extra_repr()}, w_bits={self.w_bits}{grid}"


class FakeQuantAct(ActQuant):
    """Per-tensor asymmetric activation fake quantization point.

    Modes: ``observe`` records statistics and passes values through (PTQ
    calibration); ``qat`` fake-quantizes with a moving min / max that training
    batches update; ``quant`` fake-quantizes with frozen ``scale`` / ``zero_point``.
    """

    def __init__(self, bits: int = 8, mode: str = "observe") -> None:
        super().__init__()
        self.bits = check_bits(bits, "FakeQuantAct")
        self.qmin = -(2 ** (bits - 1))
        self.qmax = 2 ** (bits - 1) - 1
        self.mode = mode
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("running_min", torch.tensor(float("inf")))
        self.register_buffer("running_max", torch.tensor(float("-inf")))
        self._samples: list[Tensor] = []

    @property
    def initialized(self) -> bool:
        return bool(torch.isfinite(self.running_min))

    def _observe(self, x: Tensor) -> None:
        x = x.detach().float()
        self.running_min.fill_(min(float(self.running_min), float(x.min())))
        self.running_max.fill_(max(float(self.running_max), float(x.max())))
        flat = x.flatten().cpu()
        # Seeded per batch so that calibration is deterministic.
        gen = torch.Generator().manual_seed(len(self._samples))
        if flat.numel() > SAMPLE_PER_BATCH:
            flat = flat[torch.randint(flat.numel(), (SAMPLE_PER_BATCH,), generator=gen)]
        self._samples.append(flat)
        if sum(s.numel() for s in self._samples) > 2 * SAMPLE_CAP:
            pool = torch.cat(self._samples)
            self._samples = [pool[torch.randperm(pool.numel(), generator=gen)[:SAMPLE_CAP]]]

    def reset(self) -> None:
        """Forget the statistics seen so far."""
        self.running_min.fill_(float("inf"))
        self.running_max.fill_(float("-inf"))
        self._samples = []

    def compute_qparams(self, method: CalibMethod = "minmax", percentile: float = 99.99) -> None:
        """Set ``scale`` / ``zero_point`` from what calibration observed, by ``method``."""
        if not self.initialized:
            raise ModelError("a FakeQuantAct saw no data: calibrate with at least one batch")
        lo, hi = choose_range(
            float(self.running_min), float(self.running_max), self._samples, method, percentile, self.qmin, self.qmax
        )
        scale, zp = act_qparams(lo, hi, self.qmin, self.qmax)
        self.scale.fill_(scale)
        self.zero_point.fill_(zp)
        # QAT continues its moving range from the calibrated clip.
        self.running_min.fill_(min(lo, 0.0))
        self.running_max.fill_(max(hi, 0.0))
        self._samples = []

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "observe":
            self._observe(x)
            return x
        if self.mode == "qat" and self.training:
            with torch.no_grad():
                lo, hi = float(x.min()), float(x.max())
                if self.initialized:
                    lo = float(self.running_min) + _EMA * (lo - float(self.running_min))
                    hi = float(self.running_max) + _EMA * (hi - float(self.running_max))
                self.running_min.fill_(lo)
                self.running_max.fill_(hi)
                scale, zp = act_qparams(lo, hi, self.qmin, self.qmax)
                self.scale.fill_(scale)
                self.zero_point.fill_(zp)
        elif self.mode == "qat" and not self.initialized:
            raise ModelError("a QAT FakeQuantAct has no range yet: calibrate or train it first")
        return fake_quant(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}, scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}"


def fake_quant_acts(gm: nn.Module) -> list[tuple[str, FakeQuantAct]]:
    """Every activation quantization point of ``gm``, with its name, in module order."""
    return [(n, m) for n, m in gm.named_modules() if isinstance(m, FakeQuantAct)]
