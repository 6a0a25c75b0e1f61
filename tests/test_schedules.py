"""Schedules: every one composes with every method and scope, reaches its target, never revives a
pruned entry, and leaves its trajectory in the run's metric history."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from prunelab.pruning import PruningError
from prunelab.runner import run
from prunelab.schedules import Gradual
from prunelab.train import steps_per_epoch

SCHEDULES = {"iterative": ["schedule=iterative", "schedule.rounds=3", "finetune.epochs=2"],
             "gradual": ["schedule=gradual", "schedule.every=1", "finetune.epochs=1"]}
RATIO = 0.7


def reshuffled(weight: torch.Tensor) -> torch.Tensor:
    """A criterion that scores every weight afresh at random on every call."""
    return torch.rand(weight.shape)


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("method", ["unstructured", "structured"])
@pytest.mark.parametrize("scope", ["global", "local", "lamp"])
def test_every_schedule_method_and_scope_reach_the_target(make_cfg, schedule, method, scope):
    m = run(make_cfg(*SCHEDULES[schedule], f"method={method}", f"scope={scope}", f"ratio={RATIO}",
                     "handover=false"))
    if method == "unstructured":
        assert abs(m["sparsity.prunable"] - RATIO) < 1e-3
    else:
        assert abs(m["sparsity.channels"] - RATIO) < 1e-2  # whole channels of 226
        assert _history(m["run_id"], "schedule.channels")[-1][1] == m["sparsity.channels"]
    sparsity = [v for _, v in _history(m["run_id"], "schedule.sparsity")]
    assert len(sparsity) > 1 and sparsity == sorted(sparsity) and sparsity[-1] == pytest.approx(m["sparsity.prunable"])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_a_schedule_never_revives_a_pruned_weight(make_cfg, schedule, method):
    # fresh scores at every call: pruning afresh each time would pick other weights
    m = run(make_cfg(*SCHEDULES[schedule], f"method={method}", f"ratio={RATIO}", "handover=false",
                     "criterion=random", "criterion._target_=test_schedules.reshuffled", "+criterion._partial_=true"))
    sparsity = _history(m["run_id"], "schedule.sparsity")
    changed = _history(m["run_id"], "schedule.changed")
    # every flipped entry is a newly pruned one: the flips are exactly the rise in pruned weights
    for (_, before), (_, after), (_, flipped) in zip(sparsity, sparsity[1:], changed[1:]):
        assert flipped == round((after - before) * m["params.prunable"])


def test_iterative_with_one_round_is_oneshot_exactly(make_cfg):
    oneshot = run(make_cfg("ratio=0.6", "handover=false"))
    one_round = run(make_cfg("ratio=0.6", "schedule=iterative", "schedule.rounds=1", "handover=false"))
    same = {k: v for k, v in oneshot.items() if k != "run_id" and isinstance(v, float)}
    assert same == {k: one_round[k] for k in same}


def test_iterative_removes_the_same_fraction_of_what_is_left_each_round(make_cfg):
    m = run(make_cfg("schedule=iterative", "schedule.rounds=3", "ratio=0.875", "finetune.epochs=3", "handover=false"))
    steps, sparsity = zip(*_history(m["run_id"], "schedule.sparsity"))
    assert steps == (1, 2, 3)
    assert sparsity == pytest.approx([0.5, 0.75, 0.875], abs=1e-3)  # keep 1/2 of what is left, each round
    # one fine-tuning epoch per round, numbered on across the rounds
    assert [s for s, _ in _history(m["run_id"], "finetune.loss")] == [1, 2, 3]


def test_gradual_sparsity_follows_the_cubic_formula_at_every_update(make_cfg):
    cfg = make_cfg("schedule=gradual", "schedule.every=1", "schedule.end=1.0", "ratio=0.8", "finetune.epochs=2",
                   "handover=false")
    m = run(cfg)
    target = dict(_history(m["run_id"], "schedule.target"))
    sparsity = dict(_history(m["run_id"], "schedule.sparsity"))
    steps = 2 * steps_per_epoch(len(instantiate(cfg.dataset)(seed=0).train), 64)
    expected = Gradual(every=1, end=1.0).updates(0.8, steps)
    assert list(expected) == list(range(steps))  # an update after every step, the last one included
    assert target.keys() == expected.keys() == sparsity.keys()
    for t, s_t in expected.items():
        t0, n = 0, steps - 1
        assert s_t == pytest.approx(0.8 + (0.0 - 0.8) * (1 - (t - t0) / n) ** 3)  # Zhu & Gupta (2017), eq. 1
        assert target[t] == pytest.approx(s_t) and abs(sparsity[t] - s_t) < 1e-3


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_schedule_that_nm_cannot_step_through_fails_before_dense_training(make_cfg, schedule):
    cfg = make_cfg(*SCHEDULES[schedule], "method=nm", "ratio=0.5")
    with pytest.raises(PruningError, match="ratio"):
        run(cfg)
    assert not [p for p in Path(cfg.cache_dir).rglob("*") if p.is_file()]  # no dense model was trained
