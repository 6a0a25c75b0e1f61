"""Recovery by knowledge distillation: the dense model teaches the pruned one while it fine-tunes.

The objective, per sample (per token for a language model: classes on dimension 1, positions
labelled ``IGNORE`` left out), is Hinton et al.'s (2015, "Distilling the Knowledge in a Neural
Network", section 2)::

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

the T^2 keeping the soft targets' gradients at the scale of the hard ones' whatever the temperature.
The teacher runs in eval mode without gradients; with ``alpha=0`` the objective is plain
fine-tuning's, bit for bit (the KL term enters multiplied by zero). Minitron (Sreenivas et al.
2024) recovers pruned LLMs this way, with the logits' KL, instead of retraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..names import IGNORE


class DistillationError(UserError, ValueError):
    """The teacher cannot teach this student (its outputs are not the student's shape)."""


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the classes (dimension 1),
    averaged over the samples, or over the labelled positions of a language model's windows."""
    log_student = F.log_softmax(student / temperature, dim=1)
    log_teacher = F.log_softmax(teacher / temperature, dim=1)
    per_sample = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(1)
    return temperature**2 * per_sample[labels != IGNORE].mean()


@dataclass(frozen=True)
class Distill:
    """``finetune.distill``'s values: the soft targets' weight ``alpha`` and the ``temperature``."""

    alpha: float
    temperature: float
    label_smoothing: float = 0.0  # the hard labels' cross-entropy, as train.label_smoothing sets it

    def teaching(self, teacher: nn.Module) -> Distillation:
        return Distillation(teacher, self.alpha, self.temperature, self.label_smoothing)


class Distillation:
    """The fine-tuning objective ``(logits, inputs, labels) -> loss`` with ``teacher``'s soft
    targets; keeps the KL term of every step for the epoch's ``finetune.kd_loss``."""

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float, label_smoothing: float = 0.0):
        self.teacher, self.alpha, self.temperature = teacher.eval(), alpha, temperature
        self.label_smoothing = label_smoothing
        self.teacher.requires_grad_(False)
        self._kd: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher(x)
        if target.shape != logits.shape:
            raise DistillationError(
                f"finetune.distill: the teacher's outputs have shape {tuple(target.shape)}, the pruned "
                f"model's {tuple(logits.shape)}: a teacher must predict the same classes"
            )
        kd = kd_loss(logits, target, y, self.temperature)
        self._kd.append(kd.detach())
        return self.alpha * kd + (1 - self.alpha) * F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def epoch_kd_loss(self) -> float:
        """The mean KL term of the steps since the last call."""
        mean = torch.stack(self._kd).mean().item() if self._kd else float("nan")
        self._kd.clear()
        return mean
