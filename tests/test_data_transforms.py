"""Transforms: crop padding, flip, normalize values, resize shapes, determinism."""

from __future__ import annotations

import pytest
import torch

from tinytamer.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
)


def test_random_crop_pads_with_zeros_and_covers_all_offsets():
    x = torch.ones(2, 4, 4)
    crop = RandomCrop(4, padding=2)
    torch.manual_seed(0)
    seen = set()
    for _ in range(400):
        y = crop(x)
        assert y.shape == (2, 4, 4)
        assert set(y.unique().tolist()) <= {0.0, 1.0}
        rows = y[0].sum(1) > 0
        cols = y[0].sum(0) > 0
        # The ones form one rectangle: the image shifted by the crop offset, zeros around it.
        assert torch.equal(y[0], rows[:, None].float() * cols[None, :].float())
        assert torch.equal(y[0], y[1])
        top, left = int(rows.float().argmax()), int(cols.float().argmax())
        seen.add(((top, int(rows.sum())), (left, int(cols.sum()))))
    # The image sits at rows 2..5 of the padded 8x8; each crop offset 0..4 shows a different
    # (first visible row, visible rows) pair, and every offset occurs in both directions.
    offsets = {(2, 2), (1, 3), (0, 4), (0, 3), (0, 2)}
    assert {r for r, _ in seen} == offsets and {c for _, c in seen} == offsets


def test_random_crop_is_repeatable_given_the_torch_seed():
    x = torch.rand(3, 8, 8)
    crop = RandomCrop((6, 5), padding=1)
    torch.manual_seed(3)
    a = [crop(x) for _ in range(5)]
    torch.manual_seed(3)
    b = [crop(x) for _ in range(5)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert a[0].shape == (3, 6, 5)
    # Without padding a crop is a window of the image itself.
    y = RandomCrop(3)(x)
    assert any(torch.equal(y, x[:, i : i + 3, j : j + 3]) for i in range(6) for j in range(6))
    with pytest.raises(ValueError, match="larger"):
        RandomCrop(9)(x)


def test_horizontal_flip():
    x = torch.arange(6.0).view(1, 2, 3)
    assert torch.equal(RandomHorizontalFlip(1.0)(x), torch.tensor([[[2.0, 1, 0], [5, 4, 3]]]))
    assert torch.equal(RandomHorizontalFlip(0.0)(x), x)
    torch.manual_seed(0)
    flips = sum(not torch.equal(RandomHorizontalFlip(0.5)(x), x) for _ in range(200))
    assert 60 < flips < 140


def test_normalize_values():
    x = torch.stack([torch.full((2, 2), 0.5), torch.full((2, 2), 1.0)])
    y = Normalize((0.5, 0.25), (0.1, 0.5))(x)
    assert torch.allclose(y[0], torch.zeros(2, 2), atol=1e-6)
    assert torch.allclose(y[1], torch.full((2, 2), 1.5), atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        Normalize((0.5,), (0.2,))(x)
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.5,), (0.0,))


def test_resize_shape_and_values():
    x = torch.full((3, 8, 8), 0.25)
    assert Resize(16)(x).shape == (3, 16, 16)
    assert Resize((4, 6))(x).shape == (3, 4, 6)
    assert torch.allclose(Resize(5)(x), torch.full((3, 5, 5), 0.25), atol=1e-6)  # constants stay
    ramp = torch.linspace(0, 1, 8).repeat(1, 8, 1)
    up = Resize(16)(ramp)
    assert torch.all(up[0, 0, 1:] >= up[0, 0, :-1])  # bilinear keeps a ramp monotonic
    assert Resize(8)(x) is x


def test_compose_applies_in_order():
    x = torch.ones(1, 2, 2)
    tf = Compose([Normalize((1.0,), (0.5,)), Resize(4)])
    assert tf(x).shape == (1, 4, 4)
    assert torch.allclose(tf(x), torch.zeros(1, 4, 4), atol=1e-6)
    assert "Normalize" in repr(tf)
