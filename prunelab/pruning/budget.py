"""Pruning to a cost budget: the ratio at which a method and scope reach ``budget.macs``.

``budget.macs=0.25`` asks for at most a quarter of the dense model's MACs (nonzero MACs: what is
left once every conv/linear layer skips its zero weights, which for a structured mask is what the
physically shrunk network computes). Any scope works: the overall ratio is bisected, so global,
local and sensitivity can be compared at equal cost.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .errors import PruningError
from .mask import Mask

MAX_RATIO = 0.995


def macs_fraction(model: nn.Module, mask: Mask, example_inputs: torch.Tensor, dense_macs: float) -> float:
    from ..ledger import mac_counts  # the ledger imports the pruning package: import on use

    pruned = mask.apply(copy.deepcopy(model))
    return mac_counts(pruned, example_inputs)[1] / dense_macs


def _top(prune_at: Callable[[float], Mask], model: nn.Module, x: torch.Tensor, budget: float):
    """(mask, ratio, dense MACs) at the highest ratio the scope reaches, checked to meet ``budget``."""
    from ..ledger import mac_counts

    if not 0 < budget <= 1:
        raise PruningError(f"budget.macs={budget} is out of range: expected 0 < budget.macs <= 1")
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
        raise PruningError(f"budget.macs={budget:g} cannot be reached: at ratio {hi} the model keeps "
                           f"{reached:.3f} of its MACs")
    return best, hi, dense


def check_reachable(prune_at: Callable[[float], Mask], model: nn.Module, example_inputs: torch.Tensor,
                    budget: float) -> None:
    """Raise :class:`PruningError` now if ``budget`` cannot be met (before any training)."""
    _top(prune_at, model, example_inputs[:1], budget)


def to_macs_budget(prune_at: Callable[[float], Mask], model: nn.Module, example_inputs: torch.Tensor,
                   budget: float, steps: int = 16) -> tuple[Mask, float]:
    """The mask of the smallest ratio (within 2^-steps) whose MACs fraction is <= ``budget``,
    and that ratio."""
    x = example_inputs[:1]
    best, hi, dense = _top(prune_at, model, x, budget)
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        mask = prune_at(mid)
        if macs_fraction(model, mask, x, dense) <= budget:
            hi, best = mid, mask
        else:
            lo = mid
    return best, hi
