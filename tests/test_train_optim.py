"""Caffe's SGD update, Lookahead's slow weights, YellowFin's tuner."""

from __future__ import annotations

import math

import pytest
import torch

from tinytamer.train.config import SolverConfig
from tinytamer.train.lookahead import Lookahead
from tinytamer.train.optim import CaffeSGD, build_optimizer, regularize
from tinytamer.train.yellowfin import YellowFin, single_step_sqrt_mu


def _step(opt, p, grad):
    p.grad = torch.tensor(grad, dtype=torch.float64)
    opt.step()


def test_caffe_sgd_keeps_the_old_lr_in_its_history():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = CaffeSGD([p], lr=0.1, momentum=0.9)
    _step(opt, p, [2.0])  # v = 0.2, w = 0.8
    opt.param_groups[0]["lr"] = 0.01
    _step(opt, p, [1.0])  # v = 0.9*0.2 + 0.01*1 = 0.19, w = 0.61
    assert p.item() == pytest.approx(0.61, abs=1e-15)
    # torch's SGD would rescale the old momentum by the new lr: w = 0.8 - 0.01*(0.9*2+1)
    q = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    ref = torch.optim.SGD([q], lr=0.1, momentum=0.9)
    _step(ref, q, [2.0])
    ref.param_groups[0]["lr"] = 0.01
    _step(ref, q, [1.0])
    assert q.item() == pytest.approx(0.772, abs=1e-12)


def test_regularize_l2_and_l1_follow_caffe():
    p = torch.nn.Parameter(torch.tensor([2.0, -3.0, 0.0]))
    p.grad = torch.zeros(3)
    regularize([p], 0.1, "L2")
    assert p.grad.tolist() == pytest.approx([0.2, -0.3, 0.0])
    p.grad = torch.zeros(3)
    regularize([p], 0.1, "L1")
    assert p.grad.tolist() == pytest.approx([0.1, -0.1, 0.0])


def test_lookahead_slow_weights_match_hand_computation():
    target = torch.tensor([1.0, -2.0], dtype=torch.float64)
    p = torch.nn.Parameter(torch.tensor([0.0, 0.0], dtype=torch.float64))
    opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=3, alpha=0.5)
    phi = p.detach().clone()
    theta = phi.clone()
    for step in range(1, 8):
        opt.zero_grad()
        (0.5 * (p - target).pow(2).sum()).backward()
        opt.step()
        theta = theta - 0.1 * (theta - target)  # fast SGD step by hand
        if step % 3 == 0:
            phi = phi + 0.5 * (theta - phi)
            theta = phi.clone()
        assert torch.allclose(p.detach(), theta, atol=1e-15, rtol=0)
        assert torch.allclose(opt.slow[0], phi, atol=1e-15, rtol=0)
    state = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    other = Lookahead(torch.optim.SGD([q], lr=0.1), k=3, alpha=0.5)
    other.load_state_dict(state)
    assert other.fast_steps == 7 and torch.equal(other.slow[0], opt.slow[0])


def test_single_step_root_solves_the_cubic():
    for dist, var, h_min in [(0.6, 0.2, 2.0), (3.0, 0.01, 1.0), (0.01, 5.0, 0.5)]:
        x = single_step_sqrt_mu(dist, var, h_min)
        p = dist**2 * h_min**2 / (2 * var)
        assert 0.0 <= x <= 1.0
        assert p * x == pytest.approx((1 - x) ** 3, rel=1e-9, abs=1e-12)


def test_yellowfin_mu_and_lr_follow_the_formulas_by_hand():
    p = torch.nn.Parameter(torch.tensor([0.0], dtype=torch.float64))
    opt = YellowFin([p], lr=0.1, beta=0.5, window=20)
    _step(opt, p, [2.0])
    first = dict(opt.last)
    # t=1: one gradient, no variance yet: C is clamped, mu_t ~ 0, lr_t = 1/h = 1/4
    assert first["h_min"] == first["h_max"] == pytest.approx(4.0)
    assert first["lr_t"] == pytest.approx(0.25, rel=1e-6)
    lr1, mu1 = 0.5 * 0.1 + 0.5 * first["lr_t"], 0.5 * first["mu_t"]
    assert (opt.tuner["lr"], opt.tuner["mu"]) == pytest.approx((lr1, mu1))
    x1 = -lr1 * 2.0
    assert p.item() == pytest.approx(x1)
    _step(opt, p, [1.0])
    last = opt.last
    # t=2 by hand with beta=0.5 and debiasing by 1-0.25: window {4, 1}
    assert last["h_max"] == pytest.approx((0.5 * 2 + 0.5 * 4) / 0.75)  # 4
    assert last["h_min"] == pytest.approx((0.5 * 2 + 0.5 * 1) / 0.75)  # 2
    assert last["grad_var"] == pytest.approx(1.5 / 0.75 - (1.0 / 0.75) ** 2)  # 2/9
    dist = (0.5 * 0.25 + 0.5 * ((1.0 / 0.75) / (1.5 / 0.75))) / 0.75
    assert last["dist"] == pytest.approx(dist)
    x = last["sqrt_mu"]
    p_cubic = dist**2 * 2.0**2 / (2 * (2 / 9))
    assert p_cubic * x == pytest.approx((1 - x) ** 3, rel=1e-9)
    mu_t = max(x**2, ((math.sqrt(2) - 1) / (math.sqrt(2) + 1)) ** 2)
    assert last["mu_t"] == pytest.approx(mu_t)
    assert last["lr_t"] == pytest.approx((1 - math.sqrt(mu_t)) ** 2 / 2.0)
    mu2, lr2 = 0.5 * mu1 + 0.5 * mu_t, 0.5 * lr1 + 0.5 * last["lr_t"]
    assert (opt.tuner["mu"], opt.tuner["lr"]) == pytest.approx((mu2, lr2))
    # heavy ball: x2 = x1 - lr*g + mu*(x1 - x0)
    assert p.item() == pytest.approx(x1 - lr2 * 1.0 + mu2 * x1)


def test_yellowfin_decreases_a_quadratic_and_round_trips_state():
    h = torch.linspace(1.0, 10.0, 10, dtype=torch.float64)
    x = torch.nn.Parameter(torch.ones(10, dtype=torch.float64))
    opt = YellowFin([x], lr=0.05)

    def f():
        return 0.5 * (h * x * x).sum()

    start = f().item()
    for _ in range(300):
        opt.zero_grad()
        f().backward()
        opt.step()
    assert f().item() < 1e-3 * start
    clone = torch.nn.Parameter(x.detach().clone())
    other = YellowFin([clone], lr=0.05)
    other.load_state_dict(opt.state_dict())
    assert other.tuner == opt.tuner


def test_build_optimizer_maps_caffe_names():
    params = [torch.nn.Parameter(torch.zeros(2))]
    cfg = dict(max_iter=1, base_lr=0.3, momentum=0.8, momentum2=0.99, delta=1e-6)
    adam = build_optimizer(params, SolverConfig(optimizer="adam", **cfg))
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["betas"] == (0.8, 0.99) and adam.defaults["eps"] == 1e-6
    ranger = build_optimizer(params, SolverConfig(optimizer="ranger", lookahead_k=4, lookahead_alpha=0.3, **cfg))
    assert isinstance(ranger, Lookahead) and isinstance(ranger.base, torch.optim.RAdam)
    assert (ranger.k, ranger.alpha) == (4, 0.3)
    ranger.param_groups[0]["lr"] = 0.01  # one set of groups: the inner RAdam sees it
    assert ranger.base.param_groups[0]["lr"] == 0.01
    sgd = build_optimizer(params, SolverConfig(**cfg))
    assert isinstance(sgd, CaffeSGD) and sgd.defaults == {"lr": 0.3, "momentum": 0.8}
    assert isinstance(build_optimizer(params, SolverConfig(optimizer="yellowfin", **cfg)), YellowFin)
