"""Knowledge distillation (Hinton et al. 2015): the loss, the Solver with a teacher, the stage option."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinytamer.errors import ModelError, RecipeError
from tinytamer.recipe import parse_recipe
from tinytamer.train import Solver, SolverConfig
from tinytamer.train.distill import Distillation, DistillParams, soft_loss


def test_soft_loss_is_the_papers_objective() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    hard = torch.tensor(1.5)
    p = DistillParams(temperature=3.0, alpha=0.7)
    # sum over classes of q_t * (log q_t - log q_s), averaged over the batch, times T^2
    qt, qs = F.softmax(t / 3, dim=1), F.softmax(s / 3, dim=1)
    kl = (qt * (qt.log() - qs.log())).sum(1).mean()
    want = 0.3 * 1.5 + 0.7 * 9 * kl
    assert float(soft_loss(s, t, hard, p)) == pytest.approx(float(want), rel=1e-5)
    # alpha 0: the labels' loss alone; a student equal to its teacher adds nothing
    assert float(soft_loss(s, t, hard, DistillParams(alpha=0))) == pytest.approx(1.5)
    assert float(soft_loss(t, t, hard, DistillParams(alpha=1))) == pytest.approx(0.0, abs=1e-6)


def test_soft_gradient_scales_as_t_squared_times_one_over_t() -> None:
    # d/ds of T^2 KL = T (q_s - q_t): the T^2 factor keeps the soft term's weight as T grows
    s, t = torch.tensor([[0.2, -0.1, 0.4]], requires_grad=True), torch.tensor([[1.0, 0.0, -1.0]])
    soft_loss(s, t, torch.tensor(0.0), DistillParams(temperature=2.0, alpha=1.0)).backward()
    want = 2.0 * (F.softmax(s.detach() / 2, 1) - F.softmax(t / 2, 1))
    assert torch.allclose(s.grad, want, atol=1e-6)


def _data(n: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _kl_to(teacher: nn.Module, student: nn.Module, data) -> float:
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        return float(
            F.kl_div(F.log_softmax(student(x), 1), F.log_softmax(teacher(x), 1), reduction="batchmean", log_target=True)
        )


def test_solver_with_a_teacher_learns_the_teachers_outputs() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    data = _data()
    cfg = SolverConfig(base_lr=0.1, max_iter=60, display=0)

    def trained(distill: Distillation | None) -> nn.Module:
        torch.manual_seed(1)
        student = nn.Sequential(nn.Linear(8, 3))
        Solver(student, cfg, data, progress=False, distill=distill).solve()
        return student

    taught = trained(Distillation(teacher, DistillParams(temperature=2.0, alpha=1.0)))
    plain = trained(None)
    # alpha 1 ignores the labels: the student moves to the teacher, far closer than without it
    assert _kl_to(teacher, taught, data) < 0.5 * _kl_to(teacher, plain, data)
    # the teacher is a frozen private copy, never trained
    assert all(not p.requires_grad for p in Distillation(teacher).teacher.parameters())
    assert all(p.requires_grad for p in teacher.parameters())


def test_a_teacher_for_other_classes_is_refused() -> None:
    d = Distillation(nn.Linear(8, 5))
    with pytest.raises(ModelError, match=r"teacher outputs \(16, 5\) but the model outputs \(16, 3\)"):
        Solver(nn.Linear(8, 3), SolverConfig(max_iter=1, display=0), _data(), progress=False, distill=d).solve()


def test_distill_recipe_keys_are_checked(digits_recipe) -> None:
    with pytest.raises(RecipeError, match="give finetune too"):
        parse_recipe(digits_recipe("d", [{"channel_prune": {"ratio": 0.5, "distill": {}}}]))
    with pytest.raises(RecipeError, match="temperature"):
        parse_recipe(digits_recipe("d", [{"channel_prune": {"distill": {"temperature": -1}}}]))
    with pytest.raises(RecipeError, match="alhpa"):
        parse_recipe(digits_recipe("d", [{"channel_prune": {"distill": {"alhpa": 0.5}}}]))


def test_channel_prune_fine_tunes_with_the_unpruned_model_as_teacher(digits_recipe, run_stages) -> None:
    fine = {"base_lr": 0.01, "max_iter": 20, "display": 0}
    recs, _ = run_stages(
        digits_recipe(
            "d",
            [
                {"train": {"base_lr": 0.05, "max_iter": 40, "display": 0}},
                {"channel_prune": {"ratio": 0.5, "round_to": 4, "finetune": fine, "distill": {"alpha": 0.5}}},
            ],
        )
    )
    ch = recs["channel_prune"]
    assert "unpruned model as teacher (T 4, alpha 0.5)" in ch["note"]
    assert math.isfinite(ch["accuracy"]) and ch["channels"]["features.0"] == [8, 4]
