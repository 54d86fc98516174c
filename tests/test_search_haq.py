"""HAQ (tinytamer.search.haq): observation, action mapping, the budget wall, DDPG, a short run."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tinytamer.errors import CompressError
from tinytamer.micro import toolchain
from tinytamer.search import haq
from tinytamer.search.executor import make_executor
from tinytamer.search.haq_agent import BATCH, DDPG, MEMORY_PER_LAYER, Actor, Critic
from tinytamer.zoo.registry import create


@pytest.fixture
def democnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("democnn", in_channels=1, input_size=16).eval()


@pytest.fixture
def layers(democnn) -> list[haq.LayerInfo]:
    return haq.layer_infos(democnn, torch.zeros(1, 1, 16, 16))


def test_observation_is_ten_normalized_dims_two_steps_per_layer(layers) -> None:
    assert [L.name for L in layers] == ["features.0", "features.3", "classifier.1"]
    assert layers[0].fmap == 16 and layers[1].fmap == 8 and layers[2].params == 2560
    obs = haq.observations(layers)
    assert obs.shape == (2 * len(layers), haq.N_FEATURES) == (6, 10)
    assert obs.min() >= 0.0 and obs.max() <= 1.0
    assert obs[:, 8].tolist() == [1, 0, 1, 0, 1, 0]  # weight step, then activation step
    assert obs[:, 0].tolist() == [0, 0, 0.5, 0.5, 1, 1]  # layer index over [0, L-1]
    assert (obs[:, 9] == 0).all()  # the previous action is filled in as the episode runs
    assert haq.observations(layers, with_acts=False).shape == (3, 10)


def test_action_mapping_at_the_edges() -> None:
    assert haq.action_to_bits(0.0) == 2 and haq.action_to_bits(1.0) == 8
    assert haq.action_to_bits(-0.3) == 2 and haq.action_to_bits(1.7) == 8
    grid = [haq.action_to_bits(a) for a in np.linspace(0, 1, 701)]
    assert grid == sorted(grid) and set(grid) == set(range(2, 9))
    # Each of the 7 widths gets an equal share of [0, 1] (the -0.5 centres the rounding).
    counts = np.bincount(grid, minlength=9)[2:]
    assert counts.max() - counts.min() <= 2


def test_action_wall_always_meets_the_budget(democnn, layers) -> None:
    rng = np.random.default_rng(0)
    flash = haq.weight_flash(democnn, layers)
    lo = flash([haq.LayerBits(2, 2)] * 3)
    hi = flash([haq.LayerBits(8, 8)] * 3)
    for _ in range(200):
        bits = [haq.LayerBits(*(haq.action_to_bits(a) for a in rng.random(2))) for _ in layers]
        target = rng.uniform(lo, hi)
        out = haq.action_wall(bits, flash, target)
        assert flash(out) <= target
        # Only ever lowered, weights only (flash does not depend on activation bits).
        assert all(o.w <= b.w and o.a == b.a for o, b in zip(out, bits, strict=True))
    with pytest.raises(CompressError, match="cannot be met"):
        haq.action_wall([haq.LayerBits(8, 8)] * 3, flash, lo - 1)


def test_action_wall_lowers_activations_when_the_resource_reads_them() -> None:
    res = haq.Resource("toy", "units", lambda bits: sum(b.w + b.a for b in bits), "toy", uses_act_bits=True)
    out = haq.action_wall([haq.LayerBits(8, 8)] * 2, res, 29)
    # From the last layer backwards, activation before weight, one bit at a time: 32 -> 29.
    assert out == [haq.LayerBits(8, 7), haq.LayerBits(7, 7)]


def test_ddpg_shapes_and_one_update_changes_the_weights() -> None:
    actor, critic = Actor(10), Critic(10)
    s, a = torch.rand(BATCH, 10), torch.rand(BATCH, 1)
    assert actor(s).shape == (BATCH, 1) and ((actor(s) >= 0) & (actor(s) <= 1)).all()
    assert critic(s, a).shape == (BATCH, 1)
    hidden = [m.out_features for m in actor.net if isinstance(m, torch.nn.Linear)]
    assert hidden == [300, 300, 1]

    agent = DDPG(10, n_layers=3, seed=0, warmup=0)
    assert agent.memory.size == MEMORY_PER_LAYER * 3
    assert agent.update() is None  # less than a batch in memory
    rng = np.random.default_rng(1)
    for _ in range(BATCH):
        agent.observe(
            rng.random(10, dtype=np.float32),
            float(rng.random()),
            float(rng.random()),
            rng.random(10, dtype=np.float32),
            bool(rng.random() < 0.2),
        )
    before = [p.detach().clone() for p in [*agent.actor.parameters(), *agent.critic.parameters()]]
    target_before = [p.detach().clone() for p in agent.actor_target.parameters()]
    stats = agent.update()
    assert stats is not None and np.isfinite(stats.critic_loss)
    after = [*agent.actor.parameters(), *agent.critic.parameters()]
    assert all(not torch.equal(b, p) for b, p in zip(before, after, strict=True))
    assert any(not torch.equal(b, p) for b, p in zip(target_before, agent.actor_target.parameters(), strict=True))
    # Exploration: uniform in warm-up, then truncated normal inside [0, 1].
    assert all(0 <= agent.act(np.zeros(10, np.float32), 5) <= 1 for _ in range(50))
    assert agent.sigma(0) == 0.5 and agent.sigma(10) == pytest.approx(0.5 * 0.99**10)


def test_two_episodes_on_digits_meet_the_budget_every_episode(digits_data, democnn, layers) -> None:
    from tinytamer.train import evaluate

    x, y = digits_data
    x = torch.nn.functional.interpolate(x, size=16)
    train = list(zip(x[:256].split(32), y[:256].split(32), strict=True))
    val = list(zip(x[256:384].split(64), y[256:384].split(64), strict=True))
    flash = haq.weight_flash(democnn, layers)
    target = 0.5 * flash([haq.LayerBits(8, 8)] * 3)
    seen = []
    search = functools.partial(
        haq.search,
        democnn,
        layers,
        flash,
        target,
        evaluate=lambda m: evaluate(m, val)["accuracy"],
        calib=[x[:32]],
        train_loader=train,
        warmup=1,
        seed=0,
    )
    # Candidates go through the search executor (in process here).
    with make_executor("local", progress=False) as ex:
        result = search(episodes=2, finetune_iters=2, executor=ex, on_episode=seen.append)
    assert len(result.history) == len(seen) == 2
    assert all(e.resource <= target for e in result.history)
    assert result.resource <= target and set(result.policy()) == {L.name for L in layers}
    assert result.reward == pytest.approx(0.1 * (result.accuracy - result.fp_accuracy))
    assert all(2 <= b.w <= 8 for b in result.bits)
    # Flash does not price activation bits: they stay at 8 unless asked for.
    assert all(b.a == 8 for e in result.history for b in e.bits)
    assert any(b.a < 8 for b in search(episodes=1, search_acts=True).bits)
    with pytest.raises(CompressError, match="search_acts needs the linear quantizer"):
        search(episodes=1, quantizer="kmeans", search_acts=True)


def test_kmeans_centroids_move_by_their_clusters_mean_gradient() -> None:
    from tinytamer.compress import share

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    dense = torch.nn.Linear(64, 32)
    model = torch.nn.Sequential(layer)
    share.kmeans(model, bits=2)
    dense.weight.data = layer.weight.detach().clone()  # the shared weights, as plain parameters
    dense.bias.data = layer.bias.detach().clone()
    haq.mean_cluster_gradients(model)
    x = torch.randn(8, 64)
    model(x).square().sum().backward()
    dense(x).square().sum().backward()
    index = layer.parametrizations.weight[0].index
    sizes = share.cluster_sizes(layer)
    assert int(sizes.sum()) == layer.weight.numel() and len(sizes) == 4
    expected = torch.stack([dense.weight.grad[index == k].mean() for k in range(4)])
    torch.testing.assert_close(share.codebook(layer).grad, expected)


def test_haq_kmeans_fine_tune_steps_each_centroid_by_its_mean_gradient() -> None:
    # The summed gradient (Deep Compression's eq. 3) is 160x larger here: a LeNet-5 at 2 bits
    # diverged on it within three steps of lr 1e-3.
    import copy

    from tinytamer.compress import share

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    layers = haq.layer_infos(model, torch.zeros(1, 1, 8, 8))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    ref = share.kmeans(copy.deepcopy(model), bits=2)
    centroids = share.codebook(ref[1]).detach().clone()
    index = ref[1].parametrizations.weight[0].index
    dense = copy.deepcopy(model)
    dense[1].weight.data = ref[1].weight.detach().clone()
    torch.nn.functional.cross_entropy(dense(x), y).backward()
    mean = torch.stack([dense[1].weight.grad[index == k].mean() for k in range(4)])
    q = haq.quantize_policy(
        model,
        None,
        layers,
        [haq.LayerBits(2, 8)],
        quantizer="kmeans",
        train_loader=[(x, y)],
        finetune_iters=1,
        finetune_lr=0.1,
    )
    torch.testing.assert_close(q[1].weight.detach(), (centroids - 0.1 * mean)[index])


def test_haq_stage_writes_its_record(digits_recipe, run_stages) -> None:
    recs, rundir = run_stages(
        digits_recipe(
            "haq-test",
            [
                {"train": {"base_lr": 0.05, "max_iter": 40, "display": 0}},
                {
                    "haq": {
                        "resource": "weight_flash",
                        "episodes": 2,
                        "warmup": 1,
                        "finetune_iters": 2,
                        "final_iters": 2,
                        "calib_batches": 2,
                        "val_batches": 1,
                    }
                },
            ],
            limit=300,
        )
    )
    h = recs["haq"]
    assert h["resource_cost"] <= h["budget"] == pytest.approx(0.5 * h["resource_cost_8bit"])
    assert set(h["policy"]) == {"features.0", "features.3", "classifier.1"}
    for key in ("history", "reward_plot", "policy_plot"):
        assert (rundir.path / h[key]).is_file()


def test_demo_search_recipe_is_a_short_haq_run_ending_in_a_cortex_m4_deploy() -> None:
    from importlib.resources import files

    from typer.testing import CliRunner

    from tinytamer.cli import app
    from tinytamer.recipe import parse_recipe

    recipe = parse_recipe(files("tinytamer").joinpath("recipes/demo_search.yaml").read_text(), source="demo")
    assert [name for name, _ in recipe.stages] == ["train", "evaluate", "haq", "save_compressed", "deploy"]
    haq_params, deploy = recipe.stages[2][1], recipe.stages[-1][1]
    assert haq_params.resource == "weight_flash" and haq_params.episodes <= 10
    assert deploy.target == "cortex-m4" and recipe.data.val_fraction > 0
    result = CliRunner().invoke(app, ["demo", "--audio", "--search"])
    assert result.exit_code == 2 and "choose one" in result.output


@pytest.mark.slow
@pytest.mark.skipif(
    not (toolchain.arm_available() and toolchain.qemu_available()), reason="ARM toolchain or QEMU missing"
)
def test_micro_flash_builds_once_per_weight_form_combination(democnn, layers, monkeypatch) -> None:
    from tinytamer.micro.program import build_program

    calib = [torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))]
    builds = []
    real = haq._build
    monkeypatch.setattr(haq, "_build", lambda *a: builds.append(a[3]) or real(*a))
    flash = haq.micro_flash(democnn, calib, layers)
    b = haq.LayerBits
    full = flash([b(8, 8)] * 3)
    # Here 7-8 bits are all stored as int8: one build serves them; activations change nothing.
    assert flash([b(7, 3), b(8, 8), b(7, 2)]) == full and len(builds) == 1
    mixed = [b(8, 8), b(4, 8), b(8, 8)]
    got = flash(mixed)
    # The int4 kernel's code outweighs the 576 bytes the packed weights save: flash grows.
    assert len(builds) == 2 and got != full
    with tempfile.TemporaryDirectory() as tmp:
        gm = haq.quantize_policy(democnn, calib, layers, [b(7, 8), b(4, 8), b(8, 8)])
        assert build_program(gm, calib[0][:1], "cortex-m4", Path(tmp)).arm.flash_bytes == got


def test_a_diverging_kmeans_fine_tune_is_an_error_not_a_one_class_model(democnn, layers) -> None:
    """A NaN fine-tune used to come back as a model scoring one class (chance accuracy)."""
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, 1, 16, 16, generator=g) * 1e3, torch.randint(0, 10, (8,), generator=g))] * 4
    bits = [haq.LayerBits(5, 8)] * len(layers)
    with pytest.raises(CompressError, match="haq fine-tune: the loss is .* at step"):
        haq.quantize_policy(
            democnn, None, layers, bits, quantizer="kmeans", train_loader=loader, finetune_iters=4, finetune_lr=1e38
        )
