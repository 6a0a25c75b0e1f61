"""Pruning to a cost budget: the ratio at which a method and scope reach ``budget.macs``.

``budget.macs=0.25`` asks for at most a quarter of the dense model's MACs (nonzero MACs: what is
left once every conv/linear layer skips its zero weights, which for a structured mask is what the
physically shrunk network computes). Any scope works: the overall ratio is bisected, so global,
local and sensitivity can be compared at equal cost.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from .contracts import Pruned
from .errors import PruningError
from .macs import mac_counts

MAX_RATIO = 0.995


def macs_fraction(model: nn.Module, pruned: Pruned, example_inputs: torch.Tensor, dense_macs: float) -> float:
    return mac_counts(pruned.apply(copy.deepcopy(model)), example_inputs)[1] / dense_macs


def check_budget(budget: float) -> float:
    """A MACs budget: a fraction in (0, 1]."""
    if not 0 < budget <= 1:
        raise PruningError(f"budget.macs={budget} is out of range: expected 0 < budget.macs <= 1")
    return budget


def _top(prune_at: Callable[[float], Pruned], model: nn.Module, x: torch.Tensor, budget: float):
    """(result, dense MACs) at the highest ratio the scope reaches, checked to meet ``budget``."""
    check_budget(budget)
    dense = mac_counts(model, x)[0]
    tops = (MAX_RATIO, 0.98, 0.95, 0.9, 0.8, 0.7, 0.5)
    for hi in tops:  # a scope may not reach the top (a scan's grid)
        try:
            best = prune_at(hi)
            break
        except PruningError:
            if hi == tops[-1]:
                raise
    reached = macs_fraction(model, best, x, dense)
    if reached > budget:
        raise PruningError(
            f"budget.macs={budget:g} cannot be reached: at ratio {best.ratio} the model keeps {reached:.3f} of its MACs"
        )
    return best, dense


def check_reachable(
    prune_at: Callable[[float], Pruned], model: nn.Module, example_inputs: torch.Tensor, budget: float
) -> None:
    """Raise :class:`PruningError` now if ``budget`` cannot be met (before any training)."""
    _top(prune_at, model, example_inputs[:1], budget)


def to_macs_budget(
    prune_at: Callable[[float], Pruned], model: nn.Module, example_inputs: torch.Tensor, budget: float, steps: int = 16
) -> Pruned:
    """The pruning at the smallest ratio (within 2^-steps) whose MACs fraction is <= ``budget``
    (its ``ratio`` says which)."""
    x = example_inputs[:1]
    best, dense = _top(prune_at, model, x, budget)
    lo, hi = 0.0, best.ratio
    for _ in range(steps):
        mid = (lo + hi) / 2
        pruned = prune_at(mid)
        if macs_fraction(model, pruned, x, dense) <= budget:
            hi, best = mid, pruned
        else:
            lo = mid
    return best
