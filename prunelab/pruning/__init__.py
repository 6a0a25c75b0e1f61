"""Pruning: criteria (importance), scopes (allocation), methods (patterns), masks, and removal.

The one-call API mirrors the command line; each of ``method``, ``criterion`` and ``scope`` is a
name (the option of ``conf/<group>/``) or an object::

    mask = prunelab.prune(model, method="structured", scope="lamp", ratio=0.5,
                          criterion="taylor", data=(x, y), example_inputs=x[:1])
    mask.apply(model)        # zero the pruned entries in place
    small = prunelab.shrink(model, mask, x[:1])   # structured: remove them for real

``mask=`` continues from an earlier mask (never reviving what it pruned); ``budget_macs=`` finds
the ratio that keeps that fraction of the MACs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from .allocation import Erk, Global, Lamp, Local, Units, allocate
from .budget import to_macs_budget
from .criteria import FPGM, Magnitude, PruneData, Random, Taylor
from .errors import PruningError, check_ratio
from .mask import Mask, MaskError
from .layerwise import sparsegpt, wanda
from .methods import nm, prunable_layers, structured, unstructured
from .plan import FromPlan, load_plan
from .plugins import options, resolve
from .sensitivity import Sensitivity
from .shrink import shrink, unshrink


def prune(model: nn.Module, method="unstructured", scope="global", ratio: float = 0.5,
          criterion="l2", ignore: Sequence[str] | None = None, seed: int = 0,
          example_inputs: torch.Tensor | None = None, data=None, mask: Mask | None = None,
          budget_macs: float | None = None, **method_options) -> Mask:
    """Compute the mask for pruning ``ratio`` of ``model`` (the model is not modified).

    ``data``: ``(x, y)`` training batches, or a :class:`PruneData` (with a validation split for
    ``scope="sensitivity"``). ``ignore`` defaults to the method's own default (nothing for
    unstructured, the ``classifier`` layer for structured). ``method_options`` go to the method
    (``n=2, m=4`` for ``nm``, ``normalize`` for structured)."""
    fn = resolve("method", method)
    if ignore is not None:
        method_options["ignore"] = ignore
    if data is not None and not isinstance(data, PruneData):
        data = PruneData(data, seed=seed)
    criterion, scope = resolve("criterion", criterion), resolve("scope", scope)

    def at(r: float) -> Mask:
        out = fn(model, ratio=r, scope=scope, criterion=criterion, seed=seed, example_inputs=example_inputs,
                 data=data, mask=mask, **method_options)
        out.plan["ratio"] = r  # the overall ratio asked for (a budget search finds it)
        return out

    if budget_macs is None:
        return at(ratio)
    if getattr(scope, "cost", None) == "auto":  # a scope that can spend its choice on MACs does
        scope = dataclasses.replace(scope, cost="macs")
    if example_inputs is None:
        raise PruningError("budget_macs needs example_inputs to count MACs")
    return to_macs_budget(at, model, example_inputs, budget_macs)[0]


__all__ = ["Erk", "FPGM", "FromPlan", "Global", "Lamp", "Local", "Magnitude", "Mask", "MaskError", "PruneData",
           "PruningError", "Random", "Sensitivity", "Taylor", "Units", "allocate", "check_ratio", "load_plan",
           "nm", "options", "prunable_layers", "prune", "resolve", "shrink", "sparsegpt", "structured", "unshrink",
           "unstructured", "wanda"]
