"""Trained weight sharing by k-means clustering (Deep Compression, stage 2).

Han, Mao & Dally 2016, "Deep Compression: Compressing Deep Neural Networks with
Pruning, Trained Quantization and Huffman Coding", ICLR 2016, Sec. 3:

- Sec. 3.1 / eq. (1): the non-zero weights of each layer are partitioned into
  clusters minimizing the within-cluster sum of squares (pruned zeros stay
  zero and are not clustered).  A ``bits``-bit layer is stored with
  ``bits``-bit indices into ``2**bits`` shared values, so in a pruned layer
  zero is one of them and the non-zero weights get ``2**bits - 1`` clusters:
  the filler entries of the sparse format (Sec. 2, Fig. 3) store a zero
  through the codebook, as in the authors' released decoder, whose codebooks
  hold ``2**bits`` values with zero at code 0.  An unpruned layer gets all
  ``2**bits`` clusters.  The paper uses 8 bits for conv and 5 bits for fully
  connected layers (6 bits for LeNet-300-100, Table 2).
- Sec. 3.2 / Fig. 4: centroids are initialized *linearly* between the layer's
  smallest and largest weight (``init="linear"``, the paper's best); *density*
  (quantiles of the weight distribution) and *random* (Forgy) are the
  alternatives it compares.
- Sec. 3.3 / eq. (3): the centroids are fine-tuned.  A shared layer's weight is
  ``W = C[I]`` (masked by the pruning mask), computed from a ``codebook``
  parameter ``C`` and a fixed index buffer ``I``, so autograd sums the
  gradients of a cluster's weights into its centroid:
  ``dL/dC_k = sum_ij dL/dW_ij * 1(I_ij = k)``; any optimizer (the Solver)
  then updates only the centroids.

Clustering is Lloyd's algorithm, written for the 1-D case: with the values
sorted once, the assignment step is a ``searchsorted`` of the midpoints between
neighbouring centroids and the update step a difference of prefix sums, so an
iteration costs O(k log n) instead of scikit-learn's O(n k) distance matrix
(the same iterations as ``sklearn.cluster.KMeans`` from the same
initialization - a test checks it - except that scikit-learn moves an emptied
cluster to a far point, while here it keeps its place, as a fixed linear
initialization intends).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from tinytamer.codec.plain import unparametrize
from tinytamer.compress.masks import is_masked
from tinytamer.compress.selector import Selector, layer_params
from tinytamer.compress.selector import select as select_layers
from tinytamer.errors import ModelError, RecipeError

Init = Literal["linear", "density", "random"]


class SharedWeight(nn.Module):
    """Parametrization ``codebook -> where(mask, codebook[index], 0)`` for one layer's weight.

    Registered with the codebook as the parametrized tensor's *original*, so the
    codebook is the layer's only trainable weight tensor and receives the summed
    cluster gradients (eq. 3).
    """

    def __init__(self, index: Tensor, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.to(torch.int64))
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, codebook: Tensor) -> Tensor:
        # where (not multiply) keeps pruned entries +0.0 and outside the gradient sum.
        return torch.where(self.mask, codebook[self.index], codebook.new_zeros(()))


def init_centroids(values: np.ndarray, k: int, init: Init = "linear", seed: int = 0) -> np.ndarray:
    """Initial centroids for ``values`` (Han 2016, Sec. 3.2)."""
    if init == "linear":
        return np.linspace(values.min(), values.max(), k)
    if init == "density":
        return np.quantile(values, np.linspace(0.0, 1.0, k))
    if init == "random":
        return np.sort(np.random.default_rng(seed).choice(values, size=k, replace=False))
    raise ValueError(f"unknown centroid initialization '{init}' (use linear, density or random)")


def lloyd_1d(
    values: np.ndarray, centroids: np.ndarray, max_iter: int = 300, tol: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means from ``centroids``; returns (centroids, label of each value).

    A centroid whose cluster empties keeps its position (it stays in the
    codebook unused), as with a fixed linear initialization.
    """
    order = np.argsort(values, kind="stable")
    xs = values[order]
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    c = np.sort(np.asarray(centroids, dtype=np.float64))
    bounds = np.zeros(len(c) + 1, dtype=np.int64)
    for _ in range(max_iter):
        # Cluster j holds the sorted values in [bounds[j], bounds[j+1]); ties at a midpoint go up.
        bounds = np.concatenate([[0], np.searchsorted(xs, (c[:-1] + c[1:]) / 2), [xs.size]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        shift = np.abs(new - c).max()
        c = new
        if shift <= tol:
            break
    bounds = np.concatenate([[0], np.searchsorted(xs, (c[:-1] + c[1:]) / 2), [xs.size]])
    labels = np.empty(values.size, dtype=np.int64)
    labels[order] = np.repeat(np.arange(len(c)), np.diff(bounds))
    return c, labels


def _default_bits(module: nn.Module, conv_bits: int, linear_bits: int) -> int:
    return linear_bits if isinstance(module, nn.Linear) else conv_bits


def share_layer(module: nn.Module, bits: int, init: Init = "linear", seed: int = 0, name: str = "layer") -> None:
    """Replace ``module.weight`` by a k-means codebook (in place): ``2**bits`` values, zero included.

    A pruned layer gets ``2**bits - 1`` non-zero centroids, so that with its zero
    it is stored with ``bits``-bit indices; a dense layer gets ``2**bits``.
    """
    if parametrize.is_parametrized(module, "weight"):
        raise ModelError(f"layer '{name}' already has a parametrized weight (already shared?)")
    if is_masked(module):
        torch_prune.remove(module, "weight")  # sharing keeps the zeros the mask made
    weight = module.weight.detach()
    if not 1 <= bits <= 16:
        raise ModelError(f"layer '{name}': bits must be in [1, 16], got {bits}")
    mask = weight != 0
    values = weight[mask].cpu().to(torch.float64).numpy()
    if values.size == 0:
        raise ModelError(f"layer '{name}' has no non-zero weight to share")
    # Zero takes one of the 2**bits codes when the layer has pruned (zero) weights, so
    # the stored index stays ``bits`` wide (the codec's codebook holds zero as a value).
    clusters = 2**bits - 1 if values.size < weight.numel() else 2**bits
    k = min(clusters, int(np.unique(values).size))
    centroids, labels = lloyd_1d(values, init_centroids(values, k, init, seed))
    index = torch.zeros(weight.shape, dtype=torch.int64)
    index[mask.cpu()] = torch.from_numpy(labels)
    codebook = torch.from_numpy(centroids).to(weight.dtype).to(weight.device)
    # The codebook becomes the tensor the parametrization starts from ("original"), so it
    # is the parameter optimizers see; unsafe: its shape differs from the weight's.
    del module.weight
    module.weight = nn.Parameter(codebook)
    parametrize.register_parametrization(module, "weight", SharedWeight(index.to(weight.device), mask), unsafe=True)


def kmeans(
    model: nn.Module,
    *,
    bits: int | None = None,
    select: Selector | dict | None = None,
    init: Init = "linear",
    conv_bits: int = 8,
    linear_bits: int = 5,
    seed: int = 0,
) -> nn.Module:
    """Share the weights of the selected layers by per-layer k-means (in place; returns ``model``).

    ``bits`` sets every layer's codebook to ``2**bits`` values (zero counts as one in a
    pruned layer); ``None`` uses
    ``conv_bits`` for convolutions and ``linear_bits`` for ``nn.Linear`` (the
    paper's 8 and 5).  Per-layer ``bits`` / ``init`` come from the selector's
    ``overrides``.  Fine-tune afterwards to train the centroids, then
    :func:`finalize`.
    """
    for name, module in _select(model, select):
        defaults = {"bits": bits if bits is not None else _default_bits(module, conv_bits, linear_bits), "init": init}
        params = layer_params(select, name, defaults)
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise RecipeError(
                f"kmeans: the override for layer '{name}' has unknown key(s) {unknown} (allowed: bits, init)"
            )
        share_layer(module, int(params["bits"]), params["init"], seed, name)
    return model


def _select(model: nn.Module, selector: Selector | dict | None) -> list[tuple[str, nn.Module]]:
    chosen = select_layers(model, selector)
    for name, module in chosen:
        if not isinstance(getattr(module, "weight", None), Tensor) and not is_masked(module):
            raise ModelError(f"layer '{name}' ({type(module).__name__}) has no weight tensor to share")
    return chosen


def shared_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weight is currently a k-means codebook."""
    return {
        name: m
        for name, m in model.named_modules()
        if parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], SharedWeight)
    }


def codebook(module: nn.Module) -> nn.Parameter:
    """The trainable centroids of a shared layer."""
    return module.parametrizations.weight.original


def cluster_sizes(module: nn.Module) -> Tensor:
    """How many (unpruned) weights each centroid of a shared layer stands for."""
    shared = module.parametrizations.weight[0]
    return torch.bincount(shared.index[shared.mask], minlength=codebook(module).numel())


def finalize(model: nn.Module) -> nn.Module:
    """Bake shared weights into plain parameters holding the centroid values (in place).

    A shared layer's other parametrizations, if any, are baked too.  The result
    is an ordinary model (exportable, savable) whose weights take at most
    ``2**bits`` distinct values, zero included; the codec stores them as a codebook
    with ``bits``-bit indices.
    """
    for module in shared_layers(model).values():
        unparametrize(module)
    return model
