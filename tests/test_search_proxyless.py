"""ProxylessNAS (tinytamer.search.proxyless): the BinaryConnect gate gradient against finite
differences, the rescaling that keeps unsampled paths' probabilities, E[LAT] and both loss
forms, latency pressure moving the architecture, REINFORCE, and resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinytamer.errors import CorruptFileError
from tinytamer.search.proxyless import (
    Proxyless,
    ProxylessError,
    binary_alpha_grad,
    expected_latency,
    latency_loss,
    rescale,
    search,
)
from tinytamer.search.space import Chain, OpChoice, Supernet, Unit, WidthChoice
from tinytamer.search.spaces import mbconv_space

torch.set_num_threads(1)


def test_gate_gradient_matches_finite_differences():
    """With the gates at the probabilities (the relaxed edge sum_j p_j o_j), the BinaryConnect
    formula applied to autograd's dL/dg is the exact gradient of L in alpha."""
    torch.manual_seed(0)
    ops = [nn.Conv2d(3, 3, 3, padding=1, bias=False) for _ in range(3)]
    x, y = torch.randn(4, 3, 5, 5), torch.randint(0, 3, (4,))

    def loss_at(g: torch.Tensor) -> torch.Tensor:
        out = sum(gi * op(x) for gi, op in zip(g, ops, strict=True))
        return F.cross_entropy(out.mean((2, 3)), y)

    alpha = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    p = F.softmax(alpha, 0).float()
    g = p.clone().requires_grad_(True)
    loss_at(g).backward()
    # dL/dg itself, against central differences in each gate
    eps = 1e-3
    for j in range(3):
        e = torch.zeros(3)
        e[j] = eps
        with torch.no_grad():
            fd = (loss_at(p + e) - loss_at(p - e)) / (2 * eps)
        assert abs(float(fd) - float(g.grad[j])) < 1e-3
    got = binary_alpha_grad(g.grad.double(), p.double())
    for i in range(3):
        d = torch.zeros(3, dtype=torch.float64)
        d[i] = 1e-4
        with torch.no_grad():
            lp = loss_at(F.softmax(alpha + d, 0).float())
            lm = loss_at(F.softmax(alpha - d, 0).float())
        assert abs(float((lp - lm) / 2e-4) - float(got[i])) < 2e-3
    # The formula term by term: sum_j dL/dg_j p_j (delta_ij - p_i)
    want = [sum(float(g.grad[j]) * float(p[j]) * ((i == j) - float(p[i])) for j in range(3)) for i in range(3)]
    torch.testing.assert_close(got.float(), torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_rescaling_keeps_the_unsampled_paths_probabilities():
    alpha = torch.tensor([0.1, 0.7, -0.4, 0.2])
    before = F.softmax(alpha, 0)
    old = alpha[[0, 2]].clone()
    alpha[0] += 0.5
    alpha[2] -= 0.3
    rescale(alpha, [0, 2], old)
    after = F.softmax(alpha, 0)
    torch.testing.assert_close(after[[1, 3]], before[[1, 3]])
    assert after[0] > before[0] and after[2] < before[2]


def test_expected_latency_and_both_loss_forms():
    alphas = [torch.zeros(2), torch.tensor([math.log(3.0), 0.0])]
    lat = expected_latency(alphas, [[10.0, 30.0], [4.0, 8.0]], 100.0)
    assert float(lat) == pytest.approx(100 + 20 + 0.75 * 4 + 0.25 * 8)
    ce = torch.tensor(2.0)
    t = 100.0
    assert float(latency_loss(ce, lat, t, "mul")) == pytest.approx(2 * 0.2 * (math.log(125) / math.log(t)) ** 0.3)
    assert float(latency_loss(ce, lat, t, "add")) == pytest.approx(2 + 0.1 * 25 / 100)
    assert float(latency_loss(ce, lat, t, "hinge")) == pytest.approx(2 + 0.1 * 25 / 100)
    # Below the target the hinge charges nothing and gives latency no gradient.
    under = torch.tensor(80.0, requires_grad=True)
    loss = latency_loss(ce, under, t, "hinge")
    loss.backward()
    assert float(loss) == pytest.approx(2.0) and float(under.grad) == 0.0
    with pytest.raises(ProxylessError, match="unknown loss form"):
        latency_loss(ce, lat, t, "pow")


def _space() -> Supernet:
    return mbconv_space((3, 8, 8), 3, stem=4, stages=((4, 2, 1),), feat=8)


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _latency(net: Supernet) -> list[list[float]]:
    # k x e costs more with kernel and expansion; zero costs nothing
    return [[0.0 if o == "zero" else float(int(o[1]) * int(o[-1])) for o in c.options] for _, c in net.choices()]


@pytest.mark.parametrize("form", ["mul", "add"])
def test_latency_pressure_moves_the_architecture_to_cheap_ops(form):
    torch.manual_seed(0)
    net = _space()
    lat = _latency(net)
    st = Proxyless(net, lat, 10.0, 12.0, loss=form, arch_lr=0.05, seed=0)
    e0 = float(st.expected().detach())
    res = search(st, _data(4, 0), _data(2, 1), iters=60, arch_every=1)
    assert res.expected_latency < e0
    assert len(res.arch) == len(net.choices())
    assert all(abs(sum(p) - 1) < 1e-5 for p in res.probs)
    assert all(c.mix is None for c in st.edges)  # no gate left on the supernet


def test_reinforce_updates_the_alphas():
    torch.manual_seed(0)
    net = _space()
    st = Proxyless(net, _latency(net), 10.0, 12.0, gradient="reinforce", arch_lr=0.05, seed=0)
    search(st, _data(2, 0), _data(2, 1), iters=20)
    assert any(float(a.detach().abs().sum()) > 0 for a in st.alphas)
    assert st.baseline is not None


def test_an_interrupted_search_resumes_from_its_checkpoint(tmp_path):
    def run(iters, path):
        torch.manual_seed(0)
        net = _space()
        st = Proxyless(net, _latency(net), 10.0, 12.0, arch_lr=0.05, seed=0)
        return st, search(st, _data(3, 0), _data(2, 1), iters=iters, checkpoint=path, checkpoint_every=5)

    _, whole = run(20, tmp_path / "a.pt")
    run(10, tmp_path / "b.pt")  # stopped after 10 steps
    st, resumed = run(20, tmp_path / "b.pt")
    assert st.step == 20 and len(resumed.history) == 10
    for a, b in zip(resumed.alphas, whole.alphas, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="not a proxylessnas state"):
        run(20, tmp_path / "c.pt")


def test_spaces_and_settings_it_cannot_search_are_refused():
    net = _space()
    with pytest.raises(ProxylessError, match="does not match"):
        Proxyless(net, [[1.0]], 0.0, 10.0)
    with pytest.raises(ProxylessError, match="must be > 1"):
        Proxyless(net, _latency(net), 0.0, 1.0)
    slim = Supernet(Chain([Unit(3, 4, 1, slim=True)], WidthChoice([2, 4])))
    with pytest.raises(ProxylessError, match="op choices only"):
        Proxyless(slim, [[1.0, 2.0]], 0.0, 10.0)
    ok = Supernet(OpChoice({"a": nn.Identity(), "b": nn.Identity()}))
    with pytest.raises(ProxylessError, match="unknown gradient"):
        Proxyless(ok, [[1.0, 2.0]], 0.0, 10.0, gradient="evolution")


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("shutil").which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc is not installed"
)
def test_the_proxylessnas_stage_prices_ops_from_the_table_and_measures_its_network(tmp_path):
    import random

    from tinytamer.recipe import parse_recipe, run
    from tinytamer.records import ProxylessRecord, read_records
    from tinytamer.search.budget import ArchCost

    stage = {
        "budget": {"cycles": 6e5},
        "space_options": {"stem": 8, "stages": [[8, 2, 1]], "feat": 16},
        "iters": 8,
        "warmup": 2,
        "retrain": {"max_iter": 5},
    }
    recipe = parse_recipe({"name": "p", "data": {"limit": 300}, "stages": [{"proxylessnas": stage}]})
    rundir = run(recipe, tmp_path / "p", progress=False, echo=lambda _: None)
    rec = read_records(rundir, ProxylessRecord)[-1]
    assert rec.metric == "est_cycles" and rec.latency_target == 6e5
    assert abs(rec.measured["est_cycles"] / rec.predicted["est_cycles"] - 1) < 0.05
    # derived budget-aware: the predicted cost fits, the argmax path is recorded
    assert all(rec.predicted[m] <= v for m, v in rec.budget.items())
    assert rec.argmax_arch_indices is not None
    assert (rec.arch_indices == rec.argmax_arch_indices) == (not rec.argmax_violations)
    # E[LAT]'s F(op): each option's share from the table; with what every network pays,
    # they add up to the table's prediction of a whole architecture.
    net = mbconv_space((1, 8, 8), 10, stem=8, stages=((8, 2, 1),), feat=16)
    costs = ArchCost(
        net, "cortex-m4", rundir.path / "stages" / "00_proxylessnas" / "lut-cortex-m4.json", torch.randn(1, 1, 8, 8)
    )
    shares, fixed = costs.per_choice("est_cycles"), costs.fixed("est_cycles")
    arch = net.sample(random.Random(1))
    total = fixed + sum(shares[c][a] for c, a in enumerate(arch))
    assert total == pytest.approx(costs(arch)["est_cycles"], rel=0.02)
    # The floors: for a sum over layers, the cheapest choice per block is the cheapest
    # architecture, and none priced from the table goes below it.
    floors = costs.floors()
    cheapest = tuple(min(range(len(o)), key=o.__getitem__) for o in shares)
    assert floors["est_cycles"][0] == pytest.approx(costs(cheapest)["est_cycles"], rel=1e-9)
    for seed in range(4):
        got = costs(net.sample(random.Random(seed)))
        assert all(got[m] >= floors[m][0] - 1e-6 for m in floors)
    # A budget under a floor is refused before the supernet trains (no proxyless record),
    # naming the resource, its floor and the limit; the table is the first run's.
    from tinytamer.errors import RecipeError

    sram = floors["sram_bytes"][0]
    again = {**stage, "budget": {"cycles": 6e5, "sram": sram - 1}, "cost_table": str(costs.table)}
    recipe = parse_recipe({"name": "p2", "data": {"limit": 300}, "stages": [{"proxylessnas": again}]})
    with pytest.raises(RecipeError, match=rf"sram_bytes >= {sram:g} > limit {sram - 1:g} \(layer '"):
        run(recipe, tmp_path / "p2", progress=False, echo=lambda _: None)
