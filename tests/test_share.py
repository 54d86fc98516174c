"""k-means weight sharing (Deep Compression, Sec. 3) and its recipe stages."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from tinytamer import codec
from tinytamer.compress import share


def small_net(prune_fraction: float = 0.6) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 40), nn.ReLU(), nn.Linear(40, 10)
    )
    with torch.no_grad():
        for layer in (model[0], model[3], model[5]):
            w = layer.weight
            w[w.abs() < w.abs().flatten().quantile(prune_fraction)] = 0
    return model


def test_linear_init_spans_min_to_max() -> None:
    values = np.array([-0.5, -0.1, 0.2, 0.9, 1.5])
    assert np.allclose(share.init_centroids(values, 5, "linear"), np.linspace(-0.5, 1.5, 5))
    dens = share.init_centroids(np.random.default_rng(0).normal(size=1000), 8, "density")
    assert np.all(np.diff(dens) > 0) and np.diff(dens)[3] < np.diff(dens)[0]  # denser mid-range
    rand = share.init_centroids(values, 3, "random")
    assert set(rand) <= set(values) and len(set(rand)) == 3


def test_lloyd_matches_sklearn_kmeans() -> None:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    values = np.random.default_rng(3).uniform(-1, 1, size=3000)
    init = share.init_centroids(values, 16, "linear")
    centroids, labels = share.lloyd_1d(values, init)
    with threadpool_limits(1):  # OpenMP threads only slow this small fit on a shared machine
        ref = KMeans(16, init=init[:, None], n_init=1, tol=0.0, max_iter=300).fit(values[:, None])
    order = np.argsort(ref.cluster_centers_[:, 0])
    assert np.allclose(centroids, ref.cluster_centers_[order, 0], atol=1e-12)
    assert np.array_equal(np.argsort(order)[ref.labels_], labels)
    assert np.allclose(centroids[labels], values, atol=0.07)  # every value near its centroid


def test_kmeans_default_bits_and_pruned_zeros() -> None:
    model = small_net()
    zeros = {i: model[i].weight == 0 for i in (0, 3, 5)}
    x = torch.randn(4, 1, 8, 8)
    share.kmeans(model)
    assert set(share.shared_layers(model)) == {"0", "3", "5"}
    assert share.codebook(model[0]).numel() == 6 * 9 - int(zeros[0].sum())  # < 256 distinct weights
    # 5 bits for fully connected: 31 non-zero centroids + the pruned zero = 2**5 codes
    assert share.codebook(model[3]).numel() == 31
    for i, z in zeros.items():
        w = model[i].weight
        assert torch.equal(w == 0, z)  # pruned stay zero, nothing else becomes zero
        assert set(w[w != 0].tolist()) <= set(share.codebook(model[i]).tolist())
    assert model(x).shape == (4, 10)


def test_overrides_and_explicit_bits() -> None:
    model = small_net()
    share.kmeans(model, bits=3, select={"types": ["Linear"], "overrides": {"^5$": {"bits": 2}}})
    assert set(share.shared_layers(model)) == {"3", "5"}
    assert share.codebook(model[3]).numel() == 7  # pruned layers: zero is the 8th value
    assert share.codebook(model[5]).numel() == 3


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
@pytest.mark.parametrize("prune_fraction", [0.0, 0.3, 0.9])
def test_a_b_bit_layer_is_stored_with_b_bit_indices(tmp_path, bits: int, prune_fraction: float) -> None:
    # Han et al. 2016 store a b-bit layer with b-bit indices; zero (pruned positions and
    # the sparse format's fillers) must be one of the 2**b codebook values, not a 2**b + 1st.
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Linear(300, 100))
    with torch.no_grad():  # uniform on one interval, also once pruned: no k-means cluster empties
        w = model[0].weight
        w.uniform_(0.01, 1.0)
        w[w < w.flatten().quantile(prune_fraction)] = 0
    zeros = model[0].weight == 0
    share.kmeans(model, bits=bits)
    share.finalize(model)
    assert torch.equal(model[0].weight == 0, zeros)
    assert model[0].weight.unique().numel() == 2**bits  # every code used, zero included or not
    for allow in (["codebook"], ["dense", "sparse", "codebook"]):
        path = codec.save(model, tmp_path / "m.tt", allow=allow).path
        stored = {t["name"]: t for t in codec.info(path)["tensors"]}["0.weight"]
        assert stored["encoding"] == "codebook"
        assert (stored["params"]["k"], stored["params"]["bits"]) == (2**bits, bits)
        assert torch.equal(codec.load(path)[0].weight, model[0].weight)


def test_centroid_gradient_is_the_sum_over_its_cluster() -> None:
    model = small_net()
    share.kmeans(model, bits=4, select={"types": ["Linear"]})
    layer = model[3]
    book = share.codebook(layer)
    before = book.detach().clone()
    index = layer.parametrizations.weight[0].index
    mask = layer.parametrizations.weight[0].mask
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    # Reference: the gradient w.r.t. the dense weight, summed per cluster (eq. 3).
    dense = copy.deepcopy(model)
    share.finalize(dense)
    nn.functional.cross_entropy(dense(x), y).backward()
    grad_w = dense[3].weight.grad
    expected = torch.zeros_like(before).index_add_(0, index[mask], grad_w[mask])

    lr = 0.1
    opt = torch.optim.SGD([p for p in model.parameters()], lr=lr)
    nn.functional.cross_entropy(model(x), y).backward()
    assert torch.allclose(book.grad, expected, atol=1e-6)
    opt.step()
    assert torch.allclose(book.detach() - before, -lr * expected, atol=1e-6)
    assert (book.detach() != before).any()


def test_finetuning_trains_only_centroids_and_keeps_zeros() -> None:
    model = small_net()
    share.kmeans(model)
    zeros = {i: model[i].weight == 0 for i in (0, 3, 5)}
    books = {i: share.codebook(model[i]).numel() for i in (0, 3, 5)}
    weight_params = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    assert weight_params == []  # the weights are no longer parameters; the codebooks are
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    torch.manual_seed(1)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for i in (0, 3, 5):
        w = model[i].weight
        assert torch.equal(w == 0, zeros[i])
        assert w[w != 0].unique().numel() <= books[i]


def test_finalize_gives_plain_exportable_layers_and_compact_file(tmp_path) -> None:
    model = small_net().eval()
    dense_file = codec.save(model, tmp_path / "pruned.tt")
    share.kmeans(model)
    twin = copy.deepcopy(model)  # a copy of a shared model must survive finalizing the original
    x = torch.randn(2, 1, 8, 8)
    y = model(x)
    shared_file = codec.save(model, tmp_path / "shared.tt")  # saving bakes a copy
    assert share.shared_layers(model)
    share.finalize(model)
    assert share.shared_layers(model) == {}
    assert type(model[3]) is nn.Linear and isinstance(model[3].weight, nn.Parameter)
    assert torch.equal(model(x), y) and torch.equal(twin(x), y)
    exported = torch.export.export(model, (x,))
    assert torch.equal(exported.module()(x), y)
    assert shared_file.file_bytes < dense_file.file_bytes
    assert {t.name: t.encoding for t in shared_file.tensors}["3.weight"] in ("codebook", "huffman")
    assert torch.equal(codec.load(tmp_path / "shared.tt")(x), y)


def test_kmeans_folds_a_pruning_mask_in() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.7)
    zeros = model[0].weight == 0
    share.kmeans(model, bits=2)
    assert not torch_prune.is_pruned(model)
    assert torch.equal(model[0].weight == 0, zeros)


def test_kmeans_errors() -> None:
    from tinytamer.errors import ModelError, RecipeError

    model = small_net()
    share.kmeans(model, select={"types": ["Conv2d"]})
    with pytest.raises(ModelError, match="layer '0' already has a parametrized weight"):
        share.kmeans(model, select={"types": ["Conv2d"]})
    empty = nn.Sequential(nn.Linear(3, 3))
    nn.init.zeros_(empty[0].weight)
    with pytest.raises(ModelError, match="no non-zero weight"):
        share.kmeans(empty)
    with pytest.raises(ModelError, match="bits must be in"):
        share.kmeans(small_net(), bits=0)
    with pytest.raises(RecipeError, match="override for layer '3' has unknown key"):
        share.kmeans(small_net(), select={"overrides": {"^3$": {"bitz": 2}}})
