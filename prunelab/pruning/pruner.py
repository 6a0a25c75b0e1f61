"""The configured pruning as one call: method x criterion x scope, and a MACs budget.

``Pruner(method, criterion, scope, ...)(model, ratio, mask)`` is what the command line runs every
round of a schedule, and what :func:`prunelab.prune` runs once: one object for both.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from .allocation import Local, as_scope
from .budget import check_reachable, to_macs_budget
from .contracts import Criterion, Method, Pruned, Scope
from .criteria import as_criterion
from .data import PruneData
from .errors import PruningError
from .mask import Mask
from .tracing import prunable_layers


class Pruner:
    """``pruner(model, ratio, mask)`` -> :class:`~.contracts.Pruned`, starting from ``mask``.

    ``data``: the data the criterion and a measuring scope look at (``PruneData``, or ``(x, y)``
    training batches); ``example_inputs``: one batch, to trace structured models and count MACs;
    ``budget_macs``: prune to at most this fraction of the dense MACs instead (the ratio is
    searched); ``seed``: of the data drawn and of random choices."""

    def __init__(
        self,
        method: Method,
        criterion: Criterion,
        scope: Scope,
        *,
        seed: int = 0,
        data: PruneData | tuple | None = None,
        example_inputs: torch.Tensor | None = None,
        budget_macs: float | None = None,
    ):
        self.method, self.criterion, self.scope = method, as_criterion(criterion), as_scope(scope)
        self.seed, self.example, self.budget = seed, example_inputs, budget_macs
        self.data = data if data is None or isinstance(data, PruneData) else PruneData(data, seed=seed)
        if budget_macs is not None and example_inputs is None:
            raise PruningError("budget_macs needs example_inputs to count MACs")

    @property
    def ignore(self) -> list[str]:
        """The layers the method leaves dense."""
        return list(self.method.ignore)

    def __call__(
        self,
        model: nn.Module,
        ratio: float,
        mask: Mask | None = None,
        *,
        scope: Scope | None = None,
        budget: bool = True,
        last: float | None = None,
        progress: Path | None = None,
    ) -> Pruned:
        """``last``: the output layer (the last prunable one) is pruned on its own to this ratio of
        its weights, the other layers by the scope to ``ratio`` of theirs. ``scope`` stands in for
        the configured one; ``budget=False`` prunes to ``ratio`` even under a MACs budget.
        ``progress``: a folder a method that takes it (``Method.takes``: the block-by-block ones)
        keeps its progress in and resumes from (not the many trials of a MACs budget search)."""
        if last is not None:
            return self._apart(model, ratio, mask, scope or self.scope, budget, last, progress)
        return self._prune(model, ratio, mask, scope or self.scope, budget, progress=progress)

    def _inputs_for_budget(self) -> torch.Tensor:
        """The example inputs MACs are counted on (``__init__`` refuses a budget without them)."""
        if self.example is None:
            raise PruningError("budget_macs needs example_inputs to count MACs")
        return self.example

    def _prune(self, model, ratio, mask, scope, budget, ignore=None, progress=None) -> Pruned:
        method = self.method if ignore is None else _ignoring(self.method, ignore)
        target = self.budget if budget else None
        scope = scope.for_budget() if target is not None else scope
        keeps = progress is not None and target is None and "progress" in getattr(method, "takes", ())
        extra = {"progress": progress} if keeps else {}  # only a method that takes it is passed it

        def at(r: float) -> Pruned:
            return method(
                model,
                r,
                scope=scope,
                criterion=self.criterion,
                seed=self.seed,
                example_inputs=self.example,
                data=self.data,
                mask=mask,
                **extra,
            )

        return at(ratio) if target is None else to_macs_budget(at, model, self._inputs_for_budget(), target)

    def _apart(self, model, ratio, mask, scope, budget, last: float, progress: Path | None) -> Pruned:
        layers = list(prunable_layers(model))
        output, kept = layers[-1], list(prunable_layers(model, self.ignore))
        if output not in kept:
            raise PruningError(
                f"the output layer {output} is pruned on its own (schedule.output_fraction) "
                f"but method.ignore leaves it dense; drop one of the two"
            )
        if len(kept) < 2:
            raise PruningError(f"pruning the output layer {output} on its own needs another prunable layer")
        rest = self._prune(model, ratio, mask, scope, budget, ignore=[*self.ignore, output], progress=progress)
        alone = self._prune(
            model, last, rest.mask, Local(), False, ignore=[*self.ignore, *kept[:-1]], progress=progress
        )
        both = Mask(
            alone.mask.masks,
            prunable=(*rest.mask.prunable, *alone.mask.prunable),
            channels={**rest.mask.channels, **alone.mask.channels},
        )
        plan = {**rest.plan, "sets": {**rest.plan["sets"], **alone.plan["sets"]}}
        return Pruned(both, plan, rest.report, rest.ratio, {**rest.figures, **alone.figures})

    def check(self, model: nn.Module, ratios: list[float]) -> Pruned:
        """Prune an untrained copy of ``model`` to each of ``ratios`` in turn (a schedule's first
        target, then the run's ratio): a method, criterion, scope, plan or schedule this model
        cannot take fails now, not after dense training. A measuring scope is stood in for by the
        local one (its scan would cost a second time and say nothing on random weights). Returns
        the last result."""
        scope = Local() if self.scope.measures else None
        probe = copy.deepcopy(model)
        pruned = None
        for ratio in dict.fromkeys(ratios):
            pruned = self(probe, ratio, scope=scope, budget=False)
        if self.budget is not None:  # a budget this method cannot meet, or nm's fixed ratio
            check_reachable(
                lambda r: self(probe, r, scope=scope, budget=False), probe, self._inputs_for_budget(), self.budget
            )
        assert pruned is not None
        return pruned


def _ignoring(method: Method, ignore: list[str]) -> Method:
    """``method`` leaving ``ignore`` dense: a copy with that option (a method's options are its
    dataclass fields)."""
    if not dataclasses.is_dataclass(method):
        raise PruningError(f"method {type(method).__name__} is no dataclass: its ignore option cannot be set")
    return dataclasses.replace(method, ignore=list(ignore))
