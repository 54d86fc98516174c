"""The zoo's ViT: shapes, exact parameter and MAC counts (attention included), bad sizes;
count() sees attention however a model writes it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinytamer.checkpoint import load_checkpoint, save_checkpoint
from tinytamer.errors import ModelError
from tinytamer.zoo import count, create, model_info


def _block_macs(tokens: int, dim: int, hidden: int) -> int:
    qkv, proj, mlp = tokens * dim * 3 * dim, tokens * dim * dim, 2 * tokens * dim * hidden
    attention = 2 * tokens * tokens * dim  # q k^T and attn v, over all heads
    return qkv + proj + mlp + attention


def test_vit_counts_by_hand() -> None:
    model = create("vit")
    counts = count(model, model_info("vit").input_shape)
    dim, hidden, tokens, patches = 64, 128, 65, 64
    block_params = 4 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (2 * dim * hidden + hidden + dim)
    params = (3 * 16 * dim + dim) + dim + tokens * dim + 4 * block_params + 2 * dim + (dim * 10 + 10)
    assert counts.params == params == 142_026
    macs = patches * 3 * 16 * dim + 4 * _block_macs(tokens, dim, hidden) + dim * 10
    assert counts.macs == macs == 10_880_128
    attn = [layer for layer in counts.per_layer if layer["type"] == "Attention"]
    assert len(attn) == 4 and all(layer["macs"] == 2 * tokens * tokens * dim for layer in attn)


def test_vit_forward_and_options() -> None:
    torch.manual_seed(0)
    model = create("vit", num_classes=5, in_channels=1, input_size=28, patch_size=7, dim=32, depth=2, heads=2)
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    assert model.features(torch.randn(2, 1, 28, 28)).shape == (2, 32)


def test_vit_trains_a_little() -> None:
    torch.manual_seed(0)
    model = create("vit", num_classes=2, input_size=8, patch_size=4, dim=16, depth=1, heads=2)
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16) % 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = F.cross_entropy(model(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert F.cross_entropy(model(x), y).item() < 0.5 * first


def test_vit_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = create("vit", input_size=8, patch_size=4, dim=16, depth=1, heads=2).eval()
    back = load_checkpoint(save_checkpoint(model, tmp_path / "vit.safetensors"))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(back(x), model(x))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"input_size": 30}, "multiple of patch_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"dim": 30, "heads": 4}, "multiple of heads"),
        ({"depth": 0}, "depth"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ],
)
def test_vit_refuses_bad_sizes(kwargs: dict, words: str) -> None:
    with pytest.raises(ModelError, match=words):
        create("vit", **kwargs)


class _Wrap(nn.Module):
    """A 64-token, 64-wide self-attention written three ways."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.mha = nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(1, 64, 64)
        if self.how == "mha":
            return self.mha(x, x, x)[0]
        q = x.view(1, 4, 64, 16)
        if self.how == "sdpa":
            return F.scaled_dot_product_attention(q, q, q)
        return torch.softmax(q @ q.transpose(-1, -2), -1) @ q


@pytest.mark.parametrize(
    ("how", "macs"),
    [
        ("matmul", 2 * 64**3),
        ("sdpa", 2 * 64**3),  # torch's own table has no formula for the CPU kernel
        ("mha", 4 * 64**3 + 2 * 64**3),  # four projections plus attention
    ],
)
def test_count_sees_attention(how: str, macs: int) -> None:
    assert count(_Wrap(how), (64, 64)).macs == macs
