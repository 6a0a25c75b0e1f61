"""Recovery by distillation: the objective equals Hinton et al.'s written out by hand, alpha=0 is
plain fine-tuning bit for bit, a run with ``finetune.distill=true`` logs its KL term per epoch."""

from __future__ import annotations

import copy
import math

import mlflow
import pytest
import torch
from torch import nn

from prunelab.data.splits import Split
from prunelab.experiment.distill import Distillation, DistillationError, kd_loss
from prunelab.experiment.keys import identity
from prunelab.experiment.runner import run
from prunelab.experiment.train import fit
from prunelab.names import IGNORE, Metric


def by_hand(student, teacher, labels, alpha, t):
    """The objective over explicit loops: sum_c p_t,c (log p_t,c - log p_s,c), times T^2, averaged
    over the labelled samples (positions), mixed with the cross-entropy."""
    kd, ce, n = 0.0, 0.0, 0
    for i, label in enumerate(labels.tolist()):
        if label == IGNORE:
            continue
        s, r = [float(v) / t for v in student[i]], [float(v) / t for v in teacher[i]]
        log_zs, log_zt = math.log(sum(math.exp(v) for v in s)), math.log(sum(math.exp(v) for v in r))
        kd += sum(math.exp(b - log_zt) * ((b - log_zt) - (a - log_zs)) for a, b in zip(s, r, strict=True))
        raw = [float(v) for v in student[i]]
        ce -= raw[label] - math.log(sum(math.exp(v) for v in raw))
        n += 1
    return alpha * t * t * kd / n + (1 - alpha) * ce / n, t * t * kd / n


def per_position(logits: torch.Tensor) -> torch.Tensor:
    """(batch, classes, positions) -> one row of class scores per position."""
    return logits.permute(0, 2, 1).reshape(-1, logits.shape[1])


class Fixed(nn.Module):
    """A teacher that answers with the given logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, _x):
        return self.logits


def test_the_objective_on_a_fixed_batch_equals_the_hand_computed_one():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g).double()
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    objective = Distillation(Fixed(teacher), alpha=0.3, temperature=4.0)
    loss = objective(student, torch.zeros(6, 1), labels)
    expected, kd = by_hand(student, teacher, labels, 0.3, 4.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert objective.epoch_kd_loss() == pytest.approx(kd, rel=1e-12)


def test_a_language_models_objective_is_per_labelled_token():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 7, 3, generator=g).double(), torch.randn(2, 7, 3, generator=g).double()
    labels = torch.tensor([[1, 6, IGNORE], [0, IGNORE, 5]])  # (batch, positions); classes on dim 1
    loss = Distillation(Fixed(teacher), alpha=0.5, temperature=2.0)(student, torch.zeros(2, 3), labels)
    expected, kd = by_hand(per_position(student), per_position(teacher), labels.reshape(-1), 0.5, 2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert kd_loss(student, teacher, labels, 2.0).item() == pytest.approx(kd, rel=1e-12)


def test_alpha_zero_is_plain_fine_tuning_to_the_bit():
    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    train, val = Split(x[:192], y[:192]), Split(x[192:], y[192:])
    dense = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    plain, taught = copy.deepcopy(dense), copy.deepcopy(dense)
    with torch.no_grad():  # the students start pruned: not the teacher's function
        for net in (plain, taught):
            net[0].weight[:, ::2] = 0
    for net, objective in ((plain, None), (taught, Distillation(copy.deepcopy(dense), 0.0, 2.0))):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        fit(net, train, val, optimizer, 2, 32, seed=0, objective=objective)
    for a, b in zip(plain.state_dict().values(), taught.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_teacher_of_other_outputs_is_refused_in_one_line():
    objective = Distillation(nn.Linear(4, 7), alpha=0.5, temperature=2.0)
    with pytest.raises(DistillationError) as error:
        objective(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    assert "(2, 7)" in str(error.value)
    assert "(2, 3)" in str(error.value)
    assert "\n" not in str(error.value)


def test_the_teacher_runs_in_eval_mode_without_gradients():
    teacher = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    Distillation(teacher, alpha=0.5, temperature=2.0)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_a_distilled_run_logs_its_kl_term_per_epoch_and_is_another_run(make_cfg):
    cfg = make_cfg("finetune.distill=true", "finetune.alpha=0.7", "finetune.epochs=2", "ratio=0.8")
    metrics = run(cfg)
    history = mlflow.MlflowClient().get_metric_history(metrics["run_id"], Metric.FINETUNE_KD_LOSS)
    assert [m.step for m in history] == [1, 2]
    assert all(m.value > 0 and math.isfinite(m.value) for m in history)
    variants = ([], ["finetune.distill=true"], ["finetune.distill=true", "finetune.alpha=0.9"])
    assert len({identity(make_cfg(*o), "cpu").run for o in variants}) == 3
    plain = run(make_cfg("finetune.epochs=2", "ratio=0.8"))
    assert not mlflow.MlflowClient().get_metric_history(plain["run_id"], Metric.FINETUNE_KD_LOSS)
