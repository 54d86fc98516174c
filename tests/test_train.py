"""SolverConfig validation, the prototxt reader and Caffe's learning-rate policies."""

from __future__ import annotations

import logging
import math

import pytest

from tinytamer.errors import RecipeError
from tinytamer.train.config import SolverConfig, read_prototxt
from tinytamer.train.lr import learning_rate


def cfg(**kw) -> SolverConfig:
    kw.setdefault("max_iter", 100)
    return SolverConfig(**kw)


def test_fixed_step_exp_inv_sigmoid_match_hand_values():
    assert learning_rate(cfg(base_lr=0.1), 57) == 0.1
    step = cfg(base_lr=0.1, lr_policy="step", gamma=0.5, stepsize=10)
    assert [learning_rate(step, i) for i in (0, 9, 10, 19, 20, 35)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125], rel=1e-12
    )
    exp = cfg(base_lr=0.2, lr_policy="exp", gamma=0.9)
    assert learning_rate(exp, 0) == pytest.approx(0.2)
    assert learning_rate(exp, 3) == pytest.approx(0.2 * 0.729)
    inv = cfg(base_lr=0.01, lr_policy="inv", gamma=1e-4, power=0.75)
    assert learning_rate(inv, 0) == pytest.approx(0.01)
    assert learning_rate(inv, 10000) == pytest.approx(0.01 * 2**-0.75)
    sig = cfg(base_lr=1.0, lr_policy="sigmoid", gamma=-0.5, stepsize=20)
    assert learning_rate(sig, 20) == pytest.approx(0.5)
    assert learning_rate(sig, 22) == pytest.approx(1 / (1 + math.e))


def test_multistep_changes_exactly_at_stepvalues():
    c = cfg(base_lr=1.0, lr_policy="multistep", gamma=0.1, stepvalue=[5, 8])
    got = [learning_rate(c, i) for i in range(10)]
    want = [1.0] * 5 + [0.1] * 3 + [0.01] * 2
    assert got == pytest.approx(want, rel=1e-12)


def test_poly_at_boundaries():
    c = cfg(base_lr=0.5, lr_policy="poly", power=2.0, max_iter=10)
    assert learning_rate(c, 0) == 0.5
    assert learning_rate(c, 5) == pytest.approx(0.5 * 0.25)
    assert learning_rate(c, 9) == pytest.approx(0.5 * 0.01)
    assert learning_rate(c, 10) == 0.0
    lin = cfg(base_lr=0.5, lr_policy="poly", power=1.0, max_iter=4)
    assert [learning_rate(lin, i) for i in range(4)] == pytest.approx([0.5, 0.375, 0.25, 0.125])


def test_poly_without_max_iter_is_a_recipe_error():
    with pytest.raises(RecipeError, match="poly"):
        learning_rate(SolverConfig(epochs=1, lr_policy="poly"), 0)
    assert SolverConfig(epochs=1, lr_policy="poly").resolved(10).max_iter == 10


def test_epochs_resolve_through_loader_length_and_iter_size():
    c = SolverConfig(epochs=2.5, iter_size=2).resolved(batches_per_epoch=7)
    assert c.max_iter == 9  # ceil(2.5 * 7 / 2) = ceil(8.75)
    assert c.swa_start == 6
    assert SolverConfig(epochs=0.5).resolved(3).max_iter == 2
    assert SolverConfig(epochs=0.1).resolved(30).max_iter == 3
    with pytest.raises(RecipeError, match="epochs"):
        SolverConfig(epochs=1).resolved(None)


def test_config_needs_exactly_one_of_max_iter_and_epochs():
    with pytest.raises(RecipeError, match="exactly one of max_iter and epochs"):
        SolverConfig.parse({"max_iter": 10, "epochs": 1}, "recipe.yaml")
    with pytest.raises(RecipeError, match="exactly one"):
        SolverConfig.parse({}, "recipe.yaml")


def test_config_unknown_key_and_bad_values_are_named():
    with pytest.raises(RecipeError, match=r"recipe.yaml: base_rl: Extra inputs"):
        SolverConfig.parse({"max_iter": 10, "base_rl": 0.1}, "recipe.yaml")
    with pytest.raises(RecipeError, match="lr_policy"):
        SolverConfig.parse({"max_iter": 10, "lr_policy": "cosine"}, "recipe.yaml")
    with pytest.raises(RecipeError, match="iter_size"):
        SolverConfig.parse({"max_iter": 10, "iter_size": 0}, "recipe.yaml")
    with pytest.raises(RecipeError, match="strictly increasing"):
        SolverConfig.parse({"max_iter": 10, "lr_policy": "multistep", "stepvalue": [5, 3]})
    with pytest.raises(RecipeError, match="yellowfin"):
        SolverConfig.parse({"max_iter": 10, "swa": True, "optimizer": "yellowfin"})


SOLVER = """\
# a LeNet solver, as shipped with Caffe
net: "examples/mnist/lenet_train_test.prototxt"
test_iter: 100
test_interval: 500   # test every 500 iterations
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "multistep"
gamma: 0.1
stepvalue: 3000
stepvalue: 6000
display: 100
max_iter: 10000
snapshot: 5000
snapshot_prefix: 'examples/mnist/lenet'
solver_mode: CPU
type: "SGD"
random_seed: 7
train_state { level: 0 stage: "train" }
"""


def test_read_prototxt_reads_caffe_solver(tmp_path, caplog):
    p = tmp_path / "solver.prototxt"
    p.write_text(SOLVER)
    with caplog.at_level(logging.WARNING, logger="tinytamer.train.config"):
        c = read_prototxt(p)
    assert c.test_iter == 100 and c.test_interval == 500 and c.max_iter == 10000
    assert c.base_lr == 0.01 and c.momentum == 0.9 and c.weight_decay == 0.0005
    assert c.lr_policy == "multistep" and c.stepvalue == [3000, 6000]
    assert c.optimizer == "sgd" and c.seed == 7 and c.snapshot == 5000
    noted = caplog.text
    for key in ("net", "snapshot_prefix", "solver_mode", "train_state"):
        assert f"'{key}' ignored" in noted


def test_read_prototxt_accepts_tinytamer_fields_and_adam(tmp_path):
    p = tmp_path / "s.prototxt"
    p.write_text('type: "Adam"\nmomentum2: 0.99\ndelta: 1e-6\nepochs: 2.5\nswa: true\n')
    c = read_prototxt(p)
    assert (c.optimizer, c.momentum2, c.delta, c.epochs, c.swa) == ("adam", 0.99, 1e-6, 2.5, True)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("max_iter: 10\nbase_lr: 0.1\nrms_decay: 0.9\n", r"s.prototxt:3: unknown solver key 'rms_decay'"),
        ('max_iter: 10\ntype: "AdaDelta"\n', r"s.prototxt:2: solver type 'AdaDelta' is not supported"),
        ("max_iter: 10\nbase_lr: 0.1\nbase_lr: 0.2\n", r"s.prototxt:3: key 'base_lr' given twice"),
        ('max_iter: 10\nlr_policy: "cosine"\n', r"s.prototxt:2: lr_policy"),
        ("base_lr: 0.1\n", r"exactly one of max_iter and epochs"),
        ("max_iter: 10\nbase_lr:\n", r"s.prototxt:2: key 'base_lr' has no value"),
        ("max_iter: 10\nnet_param { layer {\n", r"s.prototxt:2: block 'net_param' is not closed"),
        ("max_iter: 10\nfoo { a: 1 }\n", r"s.prototxt:2: unknown block 'foo'"),
    ],
)
def test_read_prototxt_errors_name_key_and_line(tmp_path, text, match):
    p = tmp_path / "s.prototxt"
    p.write_text(text)
    with pytest.raises(RecipeError, match=match):
        read_prototxt(p)


def test_read_prototxt_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read solver file"):
        read_prototxt(tmp_path / "nope.prototxt")
