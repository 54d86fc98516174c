"""The lower bound on SRAM that every architecture of a space needs (``tensor_floor``),
checked by hand and against the micro planner's own plan of sampled architectures."""

from __future__ import annotations

import random

import torch

from tinytamer.search.budget import tensor_floor
from tinytamer.search.cost import _planned_sram, _quantized
from tinytamer.search.spaces import mbconv_space, shufflenet_space

torch.set_num_threads(1)


def test_the_floor_is_the_first_expansion_at_full_resolution_counted_by_hand():
    # Stem 8 channels at 16x16; the first searchable block expands 8 -> 24 channels (e3, the
    # smallest) before its strided depthwise: 8 x 256 in + 24 x 256 out = 8,192 int8 bytes.
    net = mbconv_space((3, 16, 16), 10, stem=8, stages=((8, 1, 2), (16, 1, 2)), feat=16)
    assert tensor_floor(net, torch.zeros(1, 3, 16, 16)) == (
        8192,
        "layer 'blocks.1.0' holds 8,192 B of int8 tensors in every architecture",
    )
    # A strided stem runs that block on a quarter of the pixels.
    net2 = mbconv_space((3, 16, 16), 10, stem=8, stages=((8, 1, 2), (16, 1, 2)), feat=16, stem_stride=2)
    assert tensor_floor(net2, torch.zeros(1, 3, 16, 16))[0] == 2048


def test_no_architecture_plans_below_the_floor():
    shape = (3, 16, 16)
    example = torch.zeros(1, *shape)
    from tinytamer.micro.lower import lower

    spaces = [
        mbconv_space(shape, 10, stem=8, stages=((8, 2, 1), (16, 1, 2)), feat=16),
        shufflenet_space(shape, 10, stem=8, stages=((8, 1, 2), (16, 1, 2)), feat=16, width_ratios=(0.5, 1.0)),
    ]
    for net in spaces:
        floor, _ = tensor_floor(net, example)
        planned = []
        rng = random.Random(0)
        for arch in [tuple(0 for _ in net.sizes()), *(net.sample(rng) for _ in range(4))]:
            gm = _quantized(net.derive(arch).eval(), example, None)
            planned.append(_planned_sram(lower(gm, example)))
        assert floor <= min(planned), (floor, planned)
        # A bound, and a useful one: within 2x of the smallest plan seen.
        assert floor * 2 >= min(planned), (floor, planned)
