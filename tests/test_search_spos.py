"""SPOS (tinytamer.search.spos): uniform single-path supernet training, BN recalibration,
evolution under a budget (rejection before evaluation), resume, and the budget's parsing."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from tinytamer.errors import CorruptFileError
from tinytamer.search.budget import Budget, BudgetError, cover_archs
from tinytamer.search.executor import make_executor
from tinytamer.search.space import OpChoice, Supernet
from tinytamer.search.spaces import shufflenet_space
from tinytamer.search.spos import PathSampler, Scorer, SposError, evolve, random_search, recalibrate_bn, reinitialize
from tinytamer.train import Solver, SolverConfig

torch.set_num_threads(1)


def _toy(choices: int = 8, options: int = 4) -> Supernet:
    """A space of ``choices`` choices of ``options`` do-nothing candidates (scores are synthetic)."""
    return Supernet(
        nn.Sequential(*(OpChoice({f"o{i}": nn.Identity() for i in range(options)}) for _ in range(choices)))
    )


def _score(arch, seed=0) -> float:
    """Synthetic accuracy: higher options are better (so the budget is what limits)."""
    return sum(arch) / (3 * len(arch))


def _cost(arch) -> dict[str, float]:
    return {"est_cycles": 100.0 + 10 * sum(arch), "sram_bytes": 1000.0}


BUDGET = Budget.parse("cycles=250,sram=2000")  # sum(arch) <= 15 of at most 24


def test_budget_parses_aliases_and_refuses_nonsense():
    assert Budget.parse("cycles=2e6, sram=65536").limits == {"est_cycles": 2e6, "sram_bytes": 65536.0}
    assert Budget.parse({"flash": 1000}).limits == {"flash_bytes": 1000.0}
    for bad, match in [
        ("", "at least one"),
        ("cycles", "KEY=VALUE"),
        ("speed=3", "unknown resource"),
        ("sram=-1", "positive"),
        ("flash=lots", "number"),
        ("cycles=nan", "positive"),
    ]:
        with pytest.raises(BudgetError, match=match):
            Budget.parse(bad)
    with pytest.raises(BudgetError, match="not measured on onnxruntime"):
        Budget.parse("cycles=5").check(("latency_ms",), "onnxruntime")
    assert BUDGET.violations({"est_cycles": 300, "sram_bytes": 10}) == ["est_cycles 300 > 250"]


def test_candidates_outside_the_budget_are_never_evaluated():
    net = _toy()
    scored = []

    def score(arch, seed=0):
        scored.append(arch)
        return _score(arch)

    res = evolve(net, score, _cost, BUDGET, generations=3, population=20, top_k=5, mutations=10, crossovers=10)
    assert scored and all(BUDGET.fits(_cost(a)) for a in scored)
    assert len(scored) == len(set(scored))  # none evaluated twice
    assert res.rejected > 0
    assert all(BUDGET.fits(c.cost) for c in res.evaluated)
    assert BUDGET.fits(res.best.cost) and res.best.accuracy == max(c.accuracy for c in res.evaluated)
    assert len(res.history) == 3 and all(len(top) == 5 for top in res.history)
    # The search presses against the budget: its best uses most of it.
    assert sum(res.best.arch) >= 13


def test_evolution_beats_random_sampling_with_equal_evaluations():
    net = _toy(12, 4)

    def score(arch, seed=0):  # one best architecture, hidden from both searches
        return sum(a == i % 4 for i, a in enumerate(arch)) / len(arch)

    budget = Budget.parse("cycles=1000")
    res = evolve(net, score, _cost, budget, generations=5, population=20, top_k=5, mutations=10, crossovers=10, seed=1)
    rand = random_search(net, score, _cost, budget, len(res.evaluated), seed=1)
    assert len(rand) == len(res.evaluated)
    assert res.best.accuracy > rand[0].accuracy


def test_no_architecture_in_budget_is_a_clear_error():
    with pytest.raises(SposError, match="no architecture of the space meets the budget"):
        evolve(_toy(), _score, _cost, Budget.parse("cycles=50"), generations=1, population=4, top_k=2)


def test_an_interrupted_search_resumes_to_the_same_result(tmp_path):
    kw = dict(generations=4, population=12, top_k=4, mutations=6, crossovers=6, seed=3)
    whole = evolve(_toy(), _score, _cost, BUDGET, state_path=tmp_path / "a.json", **kw)

    class Stop(Exception):
        pass

    def stop_after_two(g, top):
        if g == 1:
            raise Stop

    with pytest.raises(Stop):
        evolve(_toy(), _score, _cost, BUDGET, state_path=tmp_path / "b.json", on_generation=stop_after_two, **kw)
    scored = []

    def score(arch, seed=0):
        scored.append(arch)
        return _score(arch)

    resumed = evolve(_toy(), score, _cost, BUDGET, state_path=tmp_path / "b.json", **kw)
    assert resumed.best == whole.best
    assert [c.arch for c in resumed.evaluated] == [c.arch for c in whole.evaluated]
    assert resumed.rejected == whole.rejected
    # Only generations 3 and 4 ran again.
    assert set(scored) == {c.arch for c in whole.evaluated if c.generation >= 2}


def test_a_state_file_of_another_search_is_refused(tmp_path):
    path = tmp_path / "s.json"
    evolve(_toy(), _score, _cost, BUDGET, generations=1, population=4, top_k=2, state_path=path)
    with pytest.raises(SposError, match="other budget"):
        evolve(_toy(), _score, _cost, Budget.parse("cycles=240"), generations=1, population=4, top_k=2, state_path=path)
    path.write_text('{"format": "tinytamer-spos-state", "sizes": [4, 4, 4, 4, 4, 4, 4, 4]}')
    with pytest.raises((CorruptFileError, SposError)):
        evolve(_toy(), _score, _cost, BUDGET, generations=1, population=4, top_k=2, state_path=path)


def test_bn_recalibration_recomputes_statistics_on_the_given_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    model[1].running_mean.fill_(5.0)
    batches = [torch.randn(4, 2, 3, 3) + 1 for _ in range(3)]
    w = model[0].weight.detach().clone()
    recalibrate_bn(model, batches)
    with torch.no_grad():
        acts = torch.cat([model[0](b) for b in batches])
    torch.testing.assert_close(model[1].running_mean, acts.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert not model.training and torch.equal(model[0].weight, w)
    assert model[1].momentum == 0.1


def _tiny_space() -> Supernet:
    return shufflenet_space((3, 8, 8), 3, stem=4, stages=((4, 1, 2), (8, 2, 2)), feat=8)


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def test_supernet_training_samples_one_uniform_path_per_step():
    net = _tiny_space()
    sampler = PathSampler(net, seed=0)
    seen = set()
    for it in range(1, 40):
        sampler.after_step(net, it)
        seen.add(tuple(c.active for _, c in net.choices()))
    assert len(seen) > 20  # of 64 paths, drawn anew each step (about 29 expected)
    sampler.draw(7)
    a = tuple(c.active for _, c in net.choices())
    PathSampler(net, seed=0).draw(7)
    assert tuple(c.active for _, c in net.choices()) == a  # seeded by the iteration

    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = SolverConfig(base_lr=0.05, max_iter=6, display=0)
    Solver(net, cfg, _data(3, 0), None, hooks=[PathSampler(net, 0)], progress=False).solve()
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert any(".candidates.0." in k for k in changed) and any(".candidates.3." in k for k in changed)


def test_scorer_runs_through_the_executor_and_matches_in_process():
    net = _tiny_space()
    scorer = Scorer(net, [x for x, _ in _data(2, 1)], _data(2, 2))
    archs = cover_archs(net)
    with make_executor("local", progress=False) as ex:
        got = [r.value for r in ex.map(scorer, archs, seed=0)]
    assert got == [scorer(a) for a in archs]
    assert all(0.0 <= v <= 1.0 for v in got)


def test_reinitialize_gives_fresh_weights():
    net = _tiny_space()
    plain = net.derive(net.sample(random.Random(0)))
    for p in plain.parameters():
        p.data.fill_(0.5)
    reinitialize(plain, 0)
    assert not all(torch.all(p == 0.5) for p in plain.parameters())


def test_search_records_round_trip(tmp_path):
    from tinytamer.records import ProxylessRecord, Record, SposRecord, log_record, read_records
    from tinytamer.rundir import RunDir

    common = dict(
        space="shufflenet",
        target="cortex-m4",
        memory_profile="stm32l4r5",
        budget={"est_cycles": 1e6},
        arch={"blocks.0": "k3"},
        arch_indices=[0],
        predicted={"est_cycles": 9e5},
        measured={"est_cycles": 9.1e5},
        within_budget=True,
        cost_table="lut.json",
        history="h.json",
    )
    recs = [
        SposRecord(stage="spos", index=0, **common, generations=2, evaluated=12, rejected=3, random_val_accuracy=0.4),
        ProxylessRecord(
            stage="proxylessnas",
            index=1,
            **common,
            loss="mul",
            metric="est_cycles",
            latency_target=1e6,
            expected_latency=9.5e5,
            gradient="binary",
        ),
    ]
    run = RunDir.create(tmp_path / "r", "name: r\n")
    for r in recs:
        log_record(run, r)
    back = read_records(run, Record)
    assert [type(r) for r in back] == [SposRecord, ProxylessRecord]
    assert back[0].model_dump(exclude={"time"}) == recs[0].model_dump(exclude={"time"})


def test_a_budget_the_target_cannot_measure_fails_when_the_recipe_is_read():
    from tinytamer.errors import RecipeError
    from tinytamer.recipe import parse_recipe

    for budget, match in [({"speed": 1}, "unknown resource"), ({"latency": 3}, "not measured on cortex-m4")]:
        with pytest.raises(RecipeError, match=match):
            parse_recipe({"name": "r", "stages": [{"spos": {"budget": budget}}]})


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("shutil").which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc is not installed"
)
def test_the_spos_stage_finds_retrains_and_measures_a_network_in_budget(tmp_path):
    from tinytamer.recipe import parse_recipe, run
    from tinytamer.records import SposRecord

    stage = {
        "budget": {"cycles": 3e6, "sram": 60000},
        "space_options": {"stem": 8, "stages": [[8, 1, 2], [16, 1, 2]], "feat": 16},
        "supernet": {"max_iter": 10},
        "retrain": {"max_iter": 10},
        "generations": 1,
        "population": 4,
        "top_k": 2,
        "mutations": 2,
        "crossovers": 2,
        "bn_batches": 1,
        "val_batches": 1,
        "random_baseline": True,
    }
    recipe = parse_recipe({"name": "s", "data": {"limit": 300}, "stages": [{"spos": stage}]})
    rundir = run(recipe, tmp_path / "s", progress=False, echo=lambda _: None)
    rec = read_records_of(rundir, SposRecord)
    assert rec.within_budget and rec.evaluated >= 4 and rec.random_val_accuracy is not None
    assert set(rec.predicted) == set(rec.measured) == {"instructions", "est_cycles", "flash_bytes", "sram_bytes"}
    # The table's prediction of the retrained network holds on the device within a few percent.
    assert abs(rec.measured["est_cycles"] / rec.predicted["est_cycles"] - 1) < 0.05
    assert (rundir.path / rec.history).is_file()
    # The supernet's training reports no held-out figure (its shared BN mixes every path, so its
    # plain forward scores near chance); the retrained network's does.
    from tinytamer.records import TrainRecord, read_records

    finals = [r for r in read_records(rundir, TrainRecord) if r.iter == 10]
    assert finals[0].test_acc is None and finals[-1].test_acc is not None


def read_records_of(rundir, kind):
    from tinytamer.records import read_records

    return read_records(rundir, kind)[-1]
