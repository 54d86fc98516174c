"""Knowledge distillation: Hinton, Vinyals and Dean, "Distilling the Knowledge in a
Neural Network" (NIPS 2014 Deep Learning Workshop, arXiv:1503.02531).

Implements section 2's objective: the student matches the teacher's class
probabilities softened at temperature T (softmax(z / T)), as a cross-entropy against
the soft targets, weighted with the usual loss on the hard labels.  The soft term's
gradients scale as 1 / T^2 (end of section 2), so it is multiplied by T^2 to keep the
two terms' relative weight when T changes:

    loss = (1 - alpha) * hard_loss + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

KL differs from the soft cross-entropy by the teacher's entropy, a constant for the
student, so the gradients are the paper's.  Pruning and compression use it to
fine-tune a smaller model with the original as teacher.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tinytamer.errors import ModelError


class DistillParams(BaseModel):
    """How a smaller model learns from the model it came from (Hinton et al. 2015)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(4.0, gt=0, description="softmax temperature T of the soft targets")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft term; 1 - alpha on the labels' loss")


class Distillation:
    """A frozen teacher and the loss that pulls a student's logits towards it."""

    def __init__(self, teacher: nn.Module, params: DistillParams | None = None) -> None:
        self.params = params or DistillParams()
        # A private frozen copy: the caller's model may be the one being trained.
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def to(self, device: torch.device) -> Distillation:
        self.teacher.to(device)
        return self

    def loss(self, x: torch.Tensor, student: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        """The distillation objective for input ``x`` whose student logits are ``student``
        and whose loss on the labels is ``hard``."""
        with torch.no_grad():
            teacher = self.teacher(x)
        if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
            raise ModelError(
                "distillation needs one logits tensor from the model and the teacher; got "
                f"{type(student).__name__} and {type(teacher).__name__}"
            )
        if teacher.shape != student.shape:
            raise ModelError(
                f"distillation: the teacher outputs {tuple(teacher.shape)} but the model outputs "
                f"{tuple(student.shape)}; they must score the same classes"
            )
        return soft_loss(student, teacher, hard, self.params)


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, hard: torch.Tensor, p: DistillParams) -> torch.Tensor:
    """(1 - alpha) * hard + alpha * T^2 * KL(teacher_T || student_T), averaged over the batch."""
    t = p.temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True
    )
    return (1 - p.alpha) * hard + p.alpha * t * t * soft
