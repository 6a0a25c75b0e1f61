"""A run holds the model's weights once: a second copy exists only while something needs it (a
teacher for ``finetune.distill``, a lottery's rewind point, the ledger's dense model when it is
timed beside the pruned one)."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from prunelab.experiment.runner import run
from prunelab.pruning import Unstructured


def tensors_like(weight: torch.Tensor, counts=lambda _: True) -> int:
    """How many other tensors of ``weight``'s shape and dtype are alive that ``counts`` accepts."""
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, torch.Tensor)
        and o is not weight
        and o.shape == weight.shape
        and o.dtype == weight.dtype
        and counts(o)
    )


def copies_while_pruning(monkeypatch, cfg) -> int:
    """How many other tensors shaped like the first layer's weight are alive while the method prunes
    (a copy of the model holds one; its rewind point too, with other values)."""
    seen: list[int] = []
    prune = Unstructured.__call__
    gc.collect()  # what other tests left alive is not the run's
    before = {id(o): weakref.ref(o) for o in gc.get_objects() if isinstance(o, torch.Tensor)}

    def new(o) -> bool:
        earlier = before.get(id(o))
        return earlier is None or earlier() is not o

    def counting(self, model, ratio, **kwargs):
        seen.append(tensors_like(next(p for p in model.parameters() if p.dim() > 1), new))
        return prune(self, model, ratio, **kwargs)

    monkeypatch.setattr(Unstructured, "__call__", counting)
    run(cfg)
    return seen[-1]  # the run's own prune (the first is the check on an untrained copy)


def test_a_run_that_needs_no_teacher_rewind_or_timing_holds_the_weights_once(make_cfg, monkeypatch):
    assert copies_while_pruning(monkeypatch, make_cfg("measure_latency=false")) == 0


@pytest.mark.parametrize(
    ("needs", "overrides"),
    [
        ("a teacher", ["finetune.distill=true"]),
        ("the ledger's timed baseline", ["measure_latency=true"]),
        ("a rewind point", ["schedule=lottery", "schedule.fraction=0.5"]),
    ],
)
def test_a_second_copy_only_for_what_needs_it(make_cfg, monkeypatch, needs, overrides):
    assert copies_while_pruning(monkeypatch, make_cfg(*overrides)) == 1, needs


def test_the_ledger_costs_models_as_they_stand(monkeypatch):
    """No copy of a model (a large model's weights held once); each model is left in the mode it
    was in, its weights untouched."""
    from prunelab import models
    from prunelab.deploy import ledger
    from prunelab.names import Metric

    dense, pruned = models.lenet5(), models.lenet5()
    with torch.no_grad():
        pruned.classifier.weight[:, ::2] = 0
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    dense.train(), pruned.train()
    monkeypatch.setattr(copy, "deepcopy", lambda *_: pytest.fail("the ledger copied a model"))
    costs = ledger.cost_ledger(dense, pruned, torch.zeros(1, 1, 28, 28), latency=True)
    assert costs[Metric.cost_ratio(Metric.NONZERO_PARAMS)] < 1
    assert costs[Metric.cost(Metric.PRUNED, Metric.latency_ms(64))] > 0
    assert dense.training
    assert pruned.training
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())


def test_a_checkpoints_ledger_baseline_is_read_back_from_it_not_held(make_cfg, monkeypatch, workdir):
    """The dense model of a run that starts from a checkpoint is on disk: the ledger reads it back
    when it times it, so no copy is held while the method prunes."""
    run(make_cfg("ratio=0.3"))  # a trained dense model, cached: the checkpoint
    (trained,) = (workdir / "cache").glob("*.pt")
    cfg = make_cfg("measure_latency=true", f"dense.checkpoint={trained}")
    assert copies_while_pruning(monkeypatch, cfg) == 0
