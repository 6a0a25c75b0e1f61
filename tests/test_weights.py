"""A run holds the model's weights once: a second copy exists only while something needs it (a
teacher for ``finetune.distill``, a lottery's rewind point, the ledger's dense model when it is
timed beside the pruned one)."""

from __future__ import annotations

import gc

import pytest
import torch

from prunelab.experiment.runner import run
from prunelab.pruning import Unstructured


def copies_while_pruning(monkeypatch, cfg) -> int:
    """How many other tensors shaped like the first layer's weight are alive while the method prunes
    (a copy of the model holds one; its rewind point too, with other values)."""
    seen: list[int] = []
    prune = Unstructured.__call__

    def counting(self, model, ratio, **kwargs):
        weight = next(p for p in model.parameters() if p.dim() > 1)
        gc.collect()
        seen.append(
            sum(
                1
                for o in gc.get_objects()
                if isinstance(o, torch.Tensor)
                and o is not weight
                and o.shape == weight.shape
                and o.dtype == weight.dtype
            )
        )
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
