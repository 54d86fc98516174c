"""Target-aware channel counts: candidates, the choice made from measured times (a fake
target whose table makes an unusual count win), the cached table, the stage option."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tinytamer.compress import channel_rounding as cr
from tinytamer.compress.channel import channel_counts, prune_channels
from tinytamer.errors import CompressError, CorruptFileError, TamerError
from tinytamer.targets.base import ParityError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def _table(tmp_path=None) -> cr.LatencyTable:
    return cr.LatencyTable("fake", "int8", 2, 1, host={"cpu": "test"})


class FakeTarget:
    """Times by output channels from a table (ms); records what it was asked to time."""

    def __init__(self, ms_by_channels: dict[int, float]) -> None:
        self.ms = ms_by_channels
        self.seen: list[tuple[int, int, tuple[int, ...]]] = []

    def __call__(self, module: nn.Module, x: torch.Tensor) -> float:
        conv = next(m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear))
        out = conv.out_channels if isinstance(conv, nn.Conv2d) else conv.out_features
        cin = conv.in_channels if isinstance(conv, nn.Conv2d) else conv.in_features
        self.seen.append((cin, out, tuple(x.shape)))
        return self.ms[out]


def test_candidates_are_at_or_below_the_requested_count():
    assert cr.candidates(26, 0.25) == [26, 24]
    assert cr.candidates(14, 0.25) == [14, 12]
    assert cr.candidates(30, 0.5) == [30, 28, 24, 16]
    assert cr.candidates(1, 0.5) == [1]
    assert all(c <= 53 for c in cr.candidates(53, 0.9))
    # headroom: also the round-ups, within (1 + headroom) x asked and the layer's channels.
    assert cr.candidates(12, 0.25, 0.34, 16) == [16, 12]
    assert cr.candidates(12, 0.34, 0.34, 16) == [16, 12, 8]
    assert cr.candidates(12, 0.25, 1.0, 14) == [12]  # 14 channels: no multiple above 12 fits
    assert cr.candidates(24, 0.25, 0.5, 32) == [32, 24]
    assert cr.candidates(26, 0.25, 0.1) == [28, 26, 24]


def test_with_headroom_a_count_above_the_request_wins_when_it_is_faster():
    """ratio 0.25 asks 24 of 32; with headroom the runtime's favourite 32 is timed, and wins."""
    timer = FakeTarget({32: 1.0, 24: 1.5})
    plan = cr.plan_channels(_net(), torch.randn(1, 3, 8, 8), timer, _table(), ratio=0.25, headroom=0.34)
    assert {c.chosen for c in plan.layers.values()} == {32} and {o for _c, o, _s in timer.seen} == {32, 24}
    plain = cr.plan_channels(_net(), torch.randn(1, 3, 8, 8), FakeTarget({24: 1.5}), _table(), ratio=0.25)
    assert {c.chosen for c in plain.layers.values()} == {24}  # no headroom: the request is a floor
    with pytest.raises(CompressError, match="headroom must be in"):
        cr.plan_channels(_net(), torch.randn(1, 3, 8, 8), timer, _table(), ratio=0.25, headroom=2)


@pytest.mark.parametrize("ms, chosen", [({26: 1.0, 24: 2.0}, 26), ({26: 2.0, 24: 1.0}, 24), ({26: 1.01, 24: 1.0}, 26)])
def test_the_chosen_count_is_the_measured_fastest(ms, chosen):
    model = _net()
    timer = FakeTarget(ms)
    # ratio 0.2 keeps 26 of 32: a rule (multiples of 8) would keep 24 whatever the target does.
    plan = cr.plan_channels(model, torch.randn(1, 3, 8, 8), timer, _table(), ratio=0.2)
    assert set(plan.layers) == {"0", "2"}  # the classifier keeps its outputs
    for choice in plan.layers.values():
        assert choice.requested == 26 and choice.latency_ms == {c: ms[c] for c in (26, 24)}
        assert choice.chosen == chosen
    # The first conv reads the image (3 channels, not thinned); the second the first's
    # output, thinned by the same ratio; each shape at the table's batch.
    assert {(cin, shape) for cin, _out, shape in timer.seen} == {(3, (1, 3, 8, 8)), (26, (1, 26, 8, 8))}
    pruned = prune_channels(model, torch.randn(1, 3, 8, 8), ratio=plan.ratios(), round_to=None)
    assert channel_counts(pruned) == {"0": chosen, "2": chosen, "6": 10}


class Residual(nn.Module):
    """conv0 and conv1 feed one add: their output channels are pruned together."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv0 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv1 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv0(x))
        y = torch.relu(self.conv1(y) + y)
        return self.fc(y.mean((2, 3)))


def test_coupled_layers_keep_one_count_the_fastest_summed():
    model = Residual().eval()

    def by_layer(module: nn.Module, x: torch.Tensor) -> float:
        conv = module[0]
        # Alone, conv0 would keep 26 and conv1 24; together 24 costs least (1.5 + 1 < 1.2 + 5).
        return {3: {26: 1.2, 24: 1.5}, 26: {26: 5.0, 24: 1.0}}[conv.in_channels][conv.out_channels]

    plan = cr.plan_channels(model, torch.randn(1, 3, 8, 8), by_layer, _table(), ratio=0.2)
    assert {n: (c.chosen, sorted(c.group)) for n, c in plan.layers.items()} == {
        "conv0": (24, ["conv0", "conv1"]),
        "conv1": (24, ["conv0", "conv1"]),
    }
    pruned = prune_channels(model, torch.randn(1, 3, 8, 8), ratio=plan.ratios(), round_to=None)
    assert channel_counts(pruned) == {"conv0": 24, "conv1": 24, "fc": 10}


def test_whole_models_overrule_single_layer_times():
    """Single layers favour 24 everywhere; the whole model runs fastest with the first conv at
    26 and the second at 24 (a layout change between them, say): one sweep finds that."""
    model, example = _net(), torch.randn(1, 3, 8, 8)
    plan = cr.plan_channels(model, example, FakeTarget({26: 2.0, 24: 1.0}), _table(), ratio=0.2)
    assert {c.chosen for c in plan.layers.values()} == {24}
    seen: list[dict[str, int]] = []

    def whole(module: nn.Module, x: torch.Tensor) -> float:
        counts = channel_counts(module)
        seen.append(counts)
        assert x.shape == (4, 3, 8, 8) and counts["6"] == 10  # a whole model, at the batch asked
        return {(26, 24): 1.0, (24, 24): 1.5, (26, 26): 1.6, (24, 26): 3.0}[counts["0"], counts["2"]]

    refined = cr.refine_whole_model(model, example, plan, whole, batch=4)
    assert {n: c.chosen for n, c in refined.layers.items()} == {"0": 26, "2": 24}
    assert [(s.layers, s.latency_ms, s.chosen) for s in refined.whole_model] == [
        (["0"], {26: 1.0, 24: 1.5}, 26),
        (["2"], {26: 1.6, 24: 1.0}, 24),
    ]
    assert len(seen) == 3  # (26, 24) is timed once, reused by the second step
    assert refined.to_dict()["whole_model"][0]["chosen"] == 26
    pruned = prune_channels(model, example, ratio=refined.ratios(), round_to=None)
    assert channel_counts(pruned) == {"0": 26, "2": 24, "6": 10}
    with pytest.raises(CompressError, match="gave -1.0 ms"):
        cr.refine_whole_model(model, example, plan, lambda m, x: -1.0)


def test_whole_models_are_pruned_as_the_stage_prunes_them():
    """A layer the stage ignores keeps its channels in every whole model timed."""
    model, example = _net(), torch.randn(1, 3, 8, 8)
    ignore = ["2", "6"]
    plan = cr.plan_channels(model, example, FakeTarget({26: 2.0, 24: 1.0}), _table(), ratio=0.2, ignore=ignore)
    assert set(plan.layers) == {"0"}

    def whole(module: nn.Module, x: torch.Tensor) -> float:
        counts = channel_counts(module)
        assert counts["2"] == 32 and counts["6"] == 10
        return float(counts["0"])

    refined = cr.refine_whole_model(model, example, plan, whole, ignore=ignore)
    assert refined.layers["0"].chosen == 24 and refined.whole_model[0].latency_ms == {26: 26.0, 24: 24.0}


def test_a_coupled_group_moves_as_one_on_whole_models():
    model, example = Residual().eval(), torch.randn(1, 3, 8, 8)
    plan = cr.plan_channels(model, example, FakeTarget({26: 2.0, 24: 1.0}), _table(), ratio=0.2)
    refined = cr.refine_whole_model(model, example, plan, lambda m, x: {26: 1.0, 24: 2.0}[channel_counts(m)["conv0"]])
    assert [(sorted(s.layers), s.chosen) for s in refined.whole_model] == [(["conv0", "conv1"], 26)]
    assert {c.chosen for c in refined.layers.values()} == {26}


def test_the_table_is_cached_and_reused(tmp_path):
    path = tmp_path / "t.json"
    table = cr.LatencyTable.open(path, "fake", "int8", 2, 1)
    first = cr.plan_channels(
        _net(), torch.randn(1, 3, 8, 8), FakeTarget({26: 2.0, 24: 1.0}), table, ratio=0.2, table_path=path
    )
    assert first.measured_now == 4 and len(json.loads(path.read_text())["entries"]) == 4

    def refuse(module, x):
        raise AssertionError("a cached shape was timed again")

    again = cr.LatencyTable.open(path, "fake", "int8", 2, 1)
    second = cr.plan_channels(_net(), torch.randn(1, 3, 8, 8), refuse, again, ratio=0.2, table_path=path)
    assert second.measured_now == 0 and {c.chosen for c in second.layers.values()} == {24}
    with pytest.raises(CompressError, match="measured for .*'threads': 2.*not .*'threads': 1"):
        cr.LatencyTable.open(path, "fake", "int8", 1, 1)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"format": "tinytamer-channel-latency", "version": 2, "target": "fake", '
        '"precision": "int8", "threads": 2, "batch": 1, "entries": {"k": -1}}',
    ],
)
def test_a_damaged_table_is_named(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(CorruptFileError, match="t.json"):
        cr.LatencyTable.open(path, "fake", "int8", 2, 1)


def test_bad_timings_and_ratios_are_refused():
    with pytest.raises(CompressError, match="gave nan ms"):
        cr.plan_channels(_net(), torch.randn(1, 3, 8, 8), lambda m, x: float("nan"), _table(), ratio=0.2)
    with pytest.raises(CompressError, match="ratio must be in"):
        cr.plan_channels(_net(), torch.randn(1, 3, 8, 8), FakeTarget({}), _table(), ratio=1.0)
    with pytest.raises(TamerError, match="unknown target 'no-such-target'"):
        cr.target_timer("no-such-target", "fp32", 1, 1)
    with pytest.raises(CompressError, match="runs fp32, not rounding precision 'int8'"):
        cr.target_timer("torch", "int8", 1, 1)


def test_a_real_target_times_single_layers():
    timer = cr.target_timer("onnxruntime", "int8", 1, 1, repeats=3)
    ms = timer(nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU()).eval(), torch.randn(1, 8, 8, 8))
    assert ms > 0


def test_channel_prune_stage_takes_a_rounding_target(digits_recipe, run_stages, tmp_path):
    table = tmp_path / "table.json"
    stage = {"channel_prune": {"ratio": 0.3, "rounding": {"target": "torch", "repeats": 3, "table": str(table)}}}
    recs, rundir = run_stages(digits_recipe("rounding", [stage], limit=200))
    rec = recs["channel_prune"]
    plan = json.loads(next(rundir.path.glob("stages/*_channel_prune/channel_rounding.json")).read_text())
    assert "measured on torch fp32" in rec["note"] and plan["layers"]
    assert "checked on whole models" in rec["note"] and plan["whole_model"]  # the default
    for name, choice in plan["layers"].items():
        assert choice["chosen"] <= choice["requested"] and str(choice["chosen"]) in choice["latency_ms"]
        if name in rec["channels"]:  # what the pruned model has: never more than the ratio keeps
            assert rec["channels"][name][1] <= choice["requested"]
    assert json.loads(table.read_text())["entries"]


def test_rounding_and_round_to_together_are_refused(digits_recipe, run_stages):
    from tinytamer.errors import RecipeError

    stage = {"channel_prune": {"ratio": 0.3, "round_to": 4, "rounding": {"target": "torch"}}}
    with pytest.raises(RecipeError, match="round_to or rounding"):
        run_stages(digits_recipe("rounding-both", [stage], limit=200))


def test_whole_models_are_timed_on_real_samples_when_given():
    # A trained model's logits on noise can be near-tied (here 100 +- 0.1): int8 loses the
    # difference and parity fails, so no time comes back; on real samples they separate.
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.01] * 16, [-0.01] * 16]))
        model[1].bias.fill_(100.0)
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ParityError, match="top-1 agreement"):
        cr.target_timer("onnxruntime", "int8", 1, 1, repeats=3)(model, x)
    real = [torch.cat([torch.full((8, 1, 4, 4), 50.0), torch.full((8, 1, 4, 4), -50.0)])]
    assert cr.target_timer("onnxruntime", "int8", 1, 1, repeats=3, calib=real)(model, x) > 0


def test_a_table_of_median_times_is_refused_by_version(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(
        '{"format": "tinytamer-channel-latency", "version": 1, "target": "fake", '
        '"precision": "int8", "threads": 2, "batch": 1, "entries": {"k": 1.0}}'
    )
    with pytest.raises(CompressError, match="old.json holds median times .*delete it"):
        cr.LatencyTable.open(path, "fake", "int8", 2, 1)
    assert cr.table_name("onnxruntime", "int8", 2, 1, "AMD EPYC").endswith(f"-v{cr.VERSION}.json")
