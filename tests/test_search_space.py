"""Search spaces (tinytamer.search.space, .spaces): declaring choices, sampling, and derive()
giving a plain module whose outputs equal the supernet's on the same path."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch import nn

from tinytamer.codec import arch
from tinytamer.errors import ModelError
from tinytamer.search.space import Chain, Choice, OpChoice, Residual, Supernet, Unit, WidthChoice, Zero
from tinytamer.search.spaces import MBCONV_OPS, SHUFFLE_OPS, make_space, mbconv_space, shufflenet_space

torch.set_num_threads(1)

SMALL = {"stem": 8, "stages": ((8, 2, 2), (16, 2, 2)), "feat": 16}


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms, so slicing mistakes show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _no_search_machinery(model: nn.Module) -> None:
    for m in model.modules():
        assert not isinstance(m, Choice | Chain | Zero), type(m).__name__


SPACES = [
    ("shufflenet", (3, 32, 32), {}),
    ("shufflenet", (1, 49, 10), {"width_ratios": (0.5, 1.0, 1.5)}),
    ("mbconv", (3, 32, 32), {}),
    ("mbconv", (1, 49, 10), {}),
]


@pytest.mark.parametrize(("name", "shape", "kw"), SPACES, ids=lambda v: str(v))
def test_derived_network_is_plain_and_matches_the_supernet(name, shape, kw):
    net = make_space(name, shape, 12, **SMALL, **kw).eval()
    _randomize_bn(net)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    for seed in range(3):
        a = net.sample(random.Random(seed))
        net.activate(a)
        with torch.no_grad():
            want = net(x)
        plain = net.derive(a).eval()
        _no_search_machinery(plain)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), want, rtol=1e-5, atol=1e-5)
        assert want.shape == (2, 12)


def test_derived_network_saves_as_architecture_data():
    net = shufflenet_space((3, 16, 16), 4, **SMALL).eval()
    plain = net.derive(net.sample(random.Random(0)))
    rebuilt = arch.build(arch.describe(plain))
    rebuilt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(rebuilt.eval()(x), plain.eval()(x))


def test_sampling_is_uniform_and_seeded():
    net = mbconv_space((3, 32, 32), 10, **SMALL)
    assert net.sample(random.Random(5)) == net.sample(random.Random(5))
    rng = random.Random(0)
    counts = Counter(net.sample(rng)[1] for _ in range(1400))
    assert set(counts) == set(range(len(MBCONV_OPS) + 1))  # six MBConv ops + zero
    assert max(counts.values()) - min(counts.values()) < 100


def test_the_spaces_have_the_papers_candidates():
    s = shufflenet_space((3, 32, 32), 10, **SMALL)
    assert all(c.options == SHUFFLE_OPS for _, c in s.choices())
    m = mbconv_space((3, 32, 32), 10, **SMALL)
    opts = [c.options for _, c in m.choices()]
    # zero only on blocks that keep their shape: the first block of each stage downsamples.
    assert opts == [MBCONV_OPS, (*MBCONV_OPS, "zero")] * 2


def test_a_zero_block_derives_to_identity_and_removes_its_add():
    net = mbconv_space((3, 16, 16), 4, **SMALL).eval()
    a = [0] * len(net.choices())
    a[1] = net.choices()[1][1].options.index("zero")
    plain = net.derive(a)
    assert isinstance(plain.blocks[2], nn.Identity)
    assert isinstance(plain.blocks[1], nn.Sequential) and isinstance(plain.blocks[0], Residual)


def test_width_choice_slices_layers():
    width = WidthChoice([2, 4, 6])
    chain = Chain([Unit(3, 6, 1, slim=True), Unit(6, 6, 3, depthwise=True, act=None), Unit(6, 5, 1)], width)
    net = Supernet(chain).eval()
    _randomize_bn(net)
    x = torch.randn(2, 3, 5, 5)
    for i, w in enumerate((2, 4, 6)):
        net.activate([i])
        plain = net.derive([i]).eval()
        convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs] == [w, w, 5] and convs[1].groups == w
        torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_custom_space_declares_choices_and_shares_a_choice_once():
    shared = WidthChoice([4, 8])

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.op = OpChoice(
                {
                    "a": Chain([Unit(8, 8, 1, slim=True), Unit(8, 8, 1)], shared),
                    "b": Chain([Unit(8, 8, 3, slim=True), Unit(8, 8, 1)], shared),
                }
            )

        def forward(self, x):
            return self.op(x)

    net = Supernet(nn.Sequential(Block(), Block()))
    assert net.sizes() == (2, 2, 2)  # two op choices and the one shared width
    assert net.describe((1, 0, 1)) == {"0.op": "b", "0.op.candidates.0.width": 4, "1.op": "b"}


@pytest.mark.parametrize(
    ("arch_", "match"),
    [((0, 0), "2 choices for a space of 4"), ((9, 0, 0, 0), "option 9 is outside 0..3"), ((-1, 0, 0, 0), "-1")],
)
def test_bad_architectures_are_refused(arch_, match):
    net = shufflenet_space((3, 16, 16), 4, stem=8, stages=((8, 2, 2), (16, 2, 2)), feat=16)
    with pytest.raises(ModelError, match=match):
        net.derive(arch_)


def test_bad_spaces_are_refused():
    with pytest.raises(ModelError, match="declares no search choice"):
        Supernet(nn.Conv2d(1, 1, 1))
    with pytest.raises(ModelError, match="must be even"):
        shufflenet_space((3, 32, 32), 10, stages=((9, 1, 2),))
    with pytest.raises(ModelError, match="shape"):
        mbconv_space((32, 32), 10)
    with pytest.raises(ModelError, match="has no option widths"):
        make_space("mbconv", (3, 32, 32), 10, widths=(1, 2))
    with pytest.raises(ModelError, match="unknown search space"):
        make_space("nasnet", (3, 32, 32), 10)
    with pytest.raises(ModelError, match="needs a WidthChoice"):
        Chain([Unit(3, 4, 1, slim=True)])


def test_a_strided_stem_halves_the_map_before_the_first_block():
    for name in ("shufflenet", "mbconv"):
        net = make_space(name, (3, 32, 32), 10, **SMALL, stem_stride=2).eval()
        plain = net.derive(net.sample(random.Random(0))).eval()
        assert plain.stem.conv.stride == (2, 2)
        with torch.no_grad():
            assert plain.stem(torch.zeros(1, 3, 32, 32)).shape[-2:] == (16, 16)
            assert plain(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        with pytest.raises(ModelError, match="stem_stride is 1 or 2, got 3"):
            make_space(name, (3, 32, 32), 10, **SMALL, stem_stride=3)
