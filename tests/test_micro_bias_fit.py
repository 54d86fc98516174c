"""A bias that does not fit the int32 accumulator is never saturated silently: a pruned
(all-zero) channel gets a weight scale under which it fits, and its output is still the bias;
a channel with real weights is refused, naming the layer and channel."""

from __future__ import annotations

import numpy as np
import pytest

from tinytamer.errors import ModelError
from tinytamer.micro import reference
from tinytamer.micro.builder import BIAS_LIMIT, GraphBuilder


def test_pruned_channel_with_large_bias_keeps_its_value():
    rng = np.random.default_rng(0)
    b = GraphBuilder((4,), 0.05, 0)
    w = rng.integers(-127, 128, (3, 4))
    w[1] = 0  # pruned: only the bias is left, and 1e-9 weight scale leaves it 4e10 units
    out_scale = 0.1
    y = b.dense(b.input, w, np.array([0.01, 1e-9, 0.01]), np.array([0.2, 2.0, -0.3]), out_scale, 0, name="fc")
    g = b.graph(y)
    op = g.ops[0]
    assert np.abs(op.bias.astype(np.int64)).max() <= BIAS_LIMIT
    x = rng.integers(-128, 128, (4,)).astype(np.int8)
    out = reference.run(g, x)
    assert out[1] == round(2.0 / out_scale)  # the constant channel's output is its bias


def test_real_channel_whose_bias_cannot_fit_is_refused():
    b = GraphBuilder((4,), 0.05, 0)
    w = np.ones((2, 4), dtype=np.int64)
    with pytest.raises(ModelError, match=r"classifier: channel 1's bias"):
        b.dense(b.input, w, np.array([0.01, 1e-12]), np.array([0.2, 5.0]), 0.1, 0, name="classifier")
