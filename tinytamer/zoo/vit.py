"""A small Vision Transformer for 32x32 images.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale" (ViT), Section 3.1, written with plain torch modules:

- Eq. 1: the image cut into P x P patches, each linearly projected (a conv with kernel
  and stride P), a learned class token prepended, learned position embeddings added;
- Eq. 2-3: L pre-norm encoder blocks, ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``, the MLP
  two linear layers with a GELU between;
- Eq. 4: the class token's final state, layer-normed, into a linear head.

The attention is written out (``softmax(q k^T / sqrt(d)) v`` as two matrix products)
rather than through ``nn.MultiheadAttention``, so that every multiply is an ordinary op
that the MAC count, ``torch.export`` and ONNX see.  The defaults (patch 4, width 64,
depth 4, 4 heads, MLP ratio 2) size it for CIFAR-like 32x32 inputs: 65 tokens,
about 0.14 M parameters and 11 M MACs, small enough to fine-tune on a CPU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tinytamer.errors import ModelError
from tinytamer.zoo.registry import register_model


class Attention(nn.Module):
    """Multi-head self-attention (ViT Eq. 5-8): one qkv projection, per-head scaled
    dot-product attention as two matrix products, an output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (b, heads, n, d / heads)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class Block(nn.Module):
    """One pre-norm encoder block (ViT Eq. 2-3)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, class token, position embeddings, encoder blocks, head (module doc)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        _check(input_size, patch_size, dim, depth, heads, mlp_ratio)
        tokens = (input_size // patch_size) ** 2 + 1
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init()

    def _init(self) -> None:
        # The reference implementation's: truncated normal (std 0.02) for the learned
        # embeddings, Xavier-uniform linear layers with zero bias.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        """The class token's final state (layer-normed): what the head classifies."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (b, patches, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _check(input_size: int, patch_size: int, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
    if patch_size < 1 or input_size < patch_size or input_size % patch_size:
        raise ModelError(f"vit: input_size {input_size} is not a positive multiple of patch_size {patch_size}")
    if depth < 1 or heads < 1 or dim < 1 or dim % heads:
        raise ModelError(f"vit: dim {dim} must be a positive multiple of heads {heads}, depth {depth} >= 1")
    if int(dim * mlp_ratio) < 1:
        raise ModelError(f"vit: mlp_ratio {mlp_ratio} leaves the MLP no hidden units at dim {dim}")


@register_model("vit", input_shape=(3, 32, 32))
def vit(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    patch_size: int = 4,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
) -> nn.Module:
    """A small ViT (patch 4, width 64, depth 4, 4 heads) for 32x32 images."""
    return ViT(num_classes, in_channels, input_size, patch_size, dim, depth, heads, mlp_ratio)
