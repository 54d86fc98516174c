"""The Solver: iter_size, Caffe momentum, resume, SWA, logging, evaluate."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tinytamer.errors import DataError, RecipeError, TamerError
from tinytamer.train import Solver, SolverConfig, evaluate


def _data(n=48, d=6, classes=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(d, classes, generator=g, dtype=dtype)
    return TensorDataset(x, (x @ w).argmax(1))


def _mlp(seed=0, dtype=torch.float32, d=6, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, classes)).to(dtype)


def test_iter_size_equals_one_big_batch():
    ds = _data(dtype=torch.float64)
    cfg = dict(max_iter=8, base_lr=0.1, momentum=0.9, weight_decay=0.01, lr_policy="step", stepsize=3, gamma=0.5)
    small, big = _mlp(dtype=torch.float64), _mlp(dtype=torch.float64)
    Solver(small, SolverConfig(iter_size=3, **cfg), DataLoader(ds, batch_size=4), progress=False).solve()
    Solver(big, SolverConfig(iter_size=1, **cfg), DataLoader(ds, batch_size=12), progress=False).solve()
    for a, b in zip(small.parameters(), big.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert not torch.equal(small[0].weight, _mlp(dtype=torch.float64)[0].weight)


def test_iter_size_clips_the_summed_gradient_before_dividing_as_caffe():
    # Caffe's ApplyUpdate: ClipGradients on the accumulated sum, then Normalize by iter_size.
    ds = _data(n=12, dtype=torch.float64)
    clip, iter_size = 0.5, 3
    model, ref = _mlp(dtype=torch.float64), _mlp(dtype=torch.float64)
    cfg = SolverConfig(max_iter=1, base_lr=0.1, momentum=0.0, iter_size=iter_size, clip_gradients=clip)
    Solver(model, cfg, DataLoader(ds, batch_size=4), progress=False).solve()
    x, y = ds.tensors
    for xb, yb in zip(x.split(4), y.split(4), strict=True):
        nn.functional.cross_entropy(ref(xb), yb).backward()
    grads = [p.grad for p in ref.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > clip * iter_size  # the clip is active on the sum, so the order matters
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads, strict=True):
            p.sub_(0.1 * g * (clip / norm) / iter_size)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7, rtol=0)  # clip_grad_norm_ adds 1e-6 to the norm


@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_solver_applies_caffe_momentum_and_regularisation(reg):
    ds = _data(n=16, dtype=torch.float64)
    model = _mlp(dtype=torch.float64)
    ref = _mlp(dtype=torch.float64)
    cfg = SolverConfig(
        max_iter=4,
        base_lr=0.2,
        lr_policy="step",
        stepsize=1,
        gamma=0.5,
        momentum=0.9,
        weight_decay=0.05,
        regularization_type=reg,
    )
    Solver(model, cfg, DataLoader(ds, batch_size=16), progress=False).solve()
    x, y = ds.tensors
    hist = [torch.zeros_like(p) for p in ref.parameters()]
    for it in range(4):
        ref.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        with torch.no_grad():
            for p, v in zip(ref.parameters(), hist, strict=True):
                decay = p if reg == "L2" else torch.sign(p)
                v.mul_(0.9).add_(0.2 * 0.5**it * (p.grad + 0.05 * decay))
                p.sub_(v)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


class _Stop(Exception):
    pass


def _resumable_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


@pytest.mark.parametrize(
    "extra",
    [
        dict(optimizer="sgd", lr_policy="multistep", stepvalue=[4, 9]),
        dict(optimizer="ranger", lookahead_k=3, swa=True, swa_start=3, swa_freq=3, swa_lr=0.02),
        dict(optimizer="yellowfin", clip_gradients=1.0),
    ],
)
def test_interrupted_run_resumed_from_snapshot_matches_uninterrupted(tmp_path, extra):
    ds = _data(n=77)
    cfg = SolverConfig(max_iter=12, base_lr=0.05, iter_size=3, snapshot=5, weight_decay=1e-3, seed=11, **extra)

    def loader():  # shuffled; 10 batches, the last one short, so epochs end mid-iteration
        return DataLoader(ds, batch_size=8, shuffle=True)

    full = _resumable_model()
    Solver(full, cfg, loader(), snapshot_dir=tmp_path / "a", progress=False).solve()

    def interrupt(model, it):
        if it == 8:
            raise _Stop

    broken = _resumable_model()
    with pytest.raises(_Stop):
        Solver(broken, cfg, loader(), snapshot_dir=tmp_path / "b", progress=False, after_step=[interrupt]).solve()
    snap = tmp_path / "b" / "iter_5.pt"
    assert snap.is_file() and not (tmp_path / "b" / "iter_10.pt").exists()
    torch.manual_seed(999)  # a fresh process: other weights, other RNG state
    resumed = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    out = Solver(resumed, cfg, loader(), snapshot_dir=tmp_path / "b", progress=False).solve(resume=snap)
    assert out["iter"] == 12
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / "b" / "iter_12.pt").is_file()


def _convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _images(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 6, 6, generator=g)
    return TensorDataset(x, (x.mean((2, 3)) @ torch.randn(2, 3, generator=g)).argmax(1))


def test_a_convolutional_model_trains_channels_last_and_is_handed_back_contiguous():
    ds = _images()
    seen = []

    def watch(model, it):
        w = model[0].weight
        seen.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())

    cfg = dict(max_iter=6, base_lr=0.05, momentum=0.9, weight_decay=1e-3)
    fast, plain = _convnet(), _convnet()
    fast_cfg = SolverConfig(memory_format="channels_last", **cfg)
    Solver(fast, fast_cfg, DataLoader(ds, batch_size=8), progress=False, after_step=[watch]).solve()
    Solver(plain, SolverConfig(**cfg), DataLoader(ds, batch_size=8), progress=False).solve()
    assert seen == [True] * 6
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        assert a.is_contiguous(), name
        # the same training; only the convolutions' summation order differs
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name

    def stop(model, it):
        raise _Stop

    broken = _convnet()
    with pytest.raises(_Stop):
        Solver(broken, fast_cfg, DataLoader(ds, batch_size=8), progress=False, after_step=[stop]).solve()
    assert all(t.is_contiguous() for t in broken.state_dict().values())  # also when training fails


def test_a_channels_last_run_resumed_from_snapshot_matches_uninterrupted(tmp_path):
    ds = _images(n=40)
    cfg = SolverConfig(max_iter=8, base_lr=0.05, snapshot=4, weight_decay=1e-3, seed=5, memory_format="channels_last")

    def loader():
        return DataLoader(ds, batch_size=8, shuffle=True)

    def interrupt(model, it):
        if it == 6:
            raise _Stop

    full = _convnet()
    Solver(full, cfg, loader(), snapshot_dir=tmp_path / "a", progress=False).solve()
    with pytest.raises(_Stop):
        Solver(_convnet(), cfg, loader(), snapshot_dir=tmp_path / "b", progress=False, after_step=[interrupt]).solve()
    resumed = _convnet(seed=9)
    Solver(resumed, cfg, loader(), snapshot_dir=tmp_path / "b", progress=False).solve(
        resume=tmp_path / "b" / "iter_4.pt"
    )
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_swa_averages_weights_and_recomputes_bn_statistics():
    ds = _data(n=40, d=4)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    seen = []

    def record(m, it):
        if it > 4 and (it - 4) % 3 == 0:
            seen.append(m[0].weight.detach().clone())

    cfg = SolverConfig(max_iter=14, base_lr=0.1, swa=True, swa_start=4, swa_freq=3, swa_lr=0.05)
    loader = DataLoader(ds, batch_size=10)
    solver = Solver(model, cfg, loader, progress=False, after_step=[record])
    solver.solve()
    assert len(seen) == 3 == solver.swa_model.n_averaged.item()  # after iterations 7, 10, 13
    assert torch.allclose(model[0].weight, torch.stack(seen).mean(0), atol=1e-6)
    assert solver.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    # BN stats: cumulative average over the loader's batches of the averaged layer's outputs
    with torch.no_grad():
        feats = [model[0](x) for x, _ in loader]
    mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, atol=1e-5)


def test_end_to_end_training_reaches_low_loss_and_logs(tmp_path):
    ds = _data(n=128, d=6)
    records = []
    cfg = SolverConfig(epochs=15, base_lr=0.2, test_interval=30, display=10, snapshot=40)
    solver = Solver(
        _mlp(),
        cfg,
        DataLoader(ds, batch_size=16, shuffle=True),
        DataLoader(ds, batch_size=64),
        snapshot_dir=tmp_path,
        log=records.append,
        progress=True,
    )
    out = solver.solve()
    assert solver.cfg.max_iter == 120
    assert out["iter"] == 120 and out["epoch"] == pytest.approx(15.0)
    assert out["loss"] == out["test_loss"] < 0.15 and out["accuracy"] > 0.95
    assert out["snapshot"] == str(tmp_path / "iter_120.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_120.pt", "iter_40.pt", "iter_80.pt"]
    tests = [r for r in records if "test_loss" in r]
    assert [r["iter"] for r in tests] == [30, 60, 90, 120]
    keys = {"iter", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_s"}
    assert all(set(r) == keys for r in tests)
    displays = [r["iter"] for r in records if "test_loss" not in r]
    assert displays == [10, 20, 40, 50, 70, 80, 100, 110]
    assert tests[-1]["test_loss"] < tests[0]["test_loss"]


def test_evaluate_counts_and_restores_modes():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Dropout(0.5))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
    model.train()
    model[1].eval()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 1.5]])
    y = torch.tensor([0, 1, 1, 1, 0])
    r = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=2))
    assert r["n"] == 5 and r["accuracy"] == pytest.approx(3 / 5)
    assert r["loss"] == pytest.approx(nn.functional.cross_entropy(x, y).item())
    assert model.training and model[0].training and not model[1].training
    r2 = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=2), max_batches=1)
    assert r2["n"] == 2 and r2["accuracy"] == 1.0
    reg = evaluate(model, DataLoader(TensorDataset(x, x), batch_size=5), nn.functional.mse_loss)
    assert reg["accuracy"] is None and reg["loss"] == pytest.approx(0.0)


def test_user_errors_are_tamer_errors(tmp_path):
    ds = _data(n=16)
    with pytest.raises(RecipeError, match="swa_start"):
        Solver(_mlp(), SolverConfig(max_iter=5, swa=True, swa_start=5), DataLoader(ds), progress=False)
    with pytest.raises(TamerError, match="does not exist"):
        Solver(_mlp(), SolverConfig(max_iter=5), DataLoader(ds), progress=False).solve(resume=tmp_path / "iter_3.pt")
    bad = DataLoader(TensorDataset(ds.tensors[0]), batch_size=4)
    with pytest.raises(DataError, match=r"\(inputs, targets\)"):
        Solver(_mlp(), SolverConfig(max_iter=2), bad, progress=False).solve()
    (tmp_path / "junk.pt").write_bytes(b"not a snapshot")
    with pytest.raises(TamerError, match="cannot be read"):
        Solver(_mlp(), SolverConfig(max_iter=5), DataLoader(ds), progress=False).solve(resume=tmp_path / "junk.pt")
