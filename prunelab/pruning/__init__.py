"""Pruning: criteria (importance), scopes (allocation), methods (patterns), schedules, masks, and
removal. The four plug-in kinds and what they hand each other: ``contracts.py``.

The one-call API mirrors the command line; each of ``method``, ``criterion`` and ``scope`` is a
name (the option of ``conf/<group>/``) or an object::

    pruned = prunelab.prune(model, method="structured", scope="lamp", ratio=0.5,
                            criterion="taylor", data=(x, y), example_inputs=x[:1])
    pruned.apply(model)             # zero the pruned entries in place (and a method's biases)
    small = prunelab.shrink(model, pruned.mask, x[:1])   # structured: remove them for real

``mask=`` continues from an earlier mask (never reviving what it pruned); ``budget_macs=`` finds
the ratio that keeps that fraction of the MACs; ``pruned.plan`` says how much of each layer was
kept, ``pruned.report`` holds what the scope measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..plugins import resolve
from .allocation import Erk, Global, GlobalFloor, Lamp, Local, allocate
from .contracts import Coupled, Criterion, Method, Pruned, Schedule, Scope, Scorer, Session, Units, refuse_untaken
from .criteria import FPGM, Activation, Magnitude, Random, Ria, Taylor
from .data import PruneData
from .depth import Blocks
from .errors import PruningError, check_ratio
from .layerwise import LayerMagnitude, SparseGPT, Wanda
from .mask import Mask, MaskError
from .methods import NM, Structured, Unstructured
from .owl import Owl
from .plan import FromPlan, load_plan
from .pruner import Pruner
from .schedules import Dynamic, Gradual, Iterative, Lottery, Oneshot
from .sensitivity import Sensitivity
from .shrink import shrink, unshrink
from .tracing import prunable_layers
from .width import Width


def prune(
    model: nn.Module,
    method: Any = "unstructured",
    scope: Any = "global",
    ratio: float = 0.5,
    criterion: Any = "l2",
    ignore: Sequence[str] | None = None,
    seed: int = 0,
    example_inputs: torch.Tensor | None = None,
    data: Any = None,
    mask: Mask | None = None,
    budget_macs: float | None = None,
    **method_options: Any,
) -> Pruned:
    """Prune ``ratio`` of ``model`` (the model is not modified; SparseGPT and Wanda, which prune
    layer by layer through the calibration data, say so): the :class:`Pruned` mask, plan and report.

    ``data``: ``(x, y)`` training batches, or a :class:`PruneData` (with a validation split for
    ``scope="sensitivity"``). ``ignore`` and ``method_options`` are the method's options
    (``n=2, m=4`` for ``nm``, ``normalize`` for structured): an option the method does not take is
    an error naming the ones it does."""
    if ignore is not None:
        method_options["ignore"] = list(ignore)
    chosen = resolve("method", method, **method_options)
    refuse_untaken(
        chosen,
        f"method={method if isinstance(method, str) else type(method).__name__}",
        {g: str(v) for g, v, default in (("criterion", criterion, "l2"), ("scope", scope, "global")) if v != default},
    )
    pruner = Pruner(
        chosen,
        resolve("criterion", criterion),
        resolve("scope", scope),
        seed=seed,
        data=data,
        example_inputs=example_inputs,
        budget_macs=budget_macs,
    )
    return pruner(model, ratio, mask)


__all__ = [
    "FPGM",
    "Activation",
    "Blocks",
    "NM",
    "Coupled",
    "Criterion",
    "Dynamic",
    "Erk",
    "FromPlan",
    "Global",
    "GlobalFloor",
    "Gradual",
    "Iterative",
    "Lamp",
    "Local",
    "Lottery",
    "Magnitude",
    "Mask",
    "MaskError",
    "Method",
    "Oneshot",
    "PruneData",
    "Pruned",
    "Pruner",
    "PruningError",
    "Random",
    "Schedule",
    "Scope",
    "Scorer",
    "Sensitivity",
    "Session",
    "SparseGPT",
    "Structured",
    "Taylor",
    "Units",
    "Unstructured",
    "Wanda",
    "LayerMagnitude",
    "Owl",
    "Ria",
    "Width",
    "allocate",
    "check_ratio",
    "load_plan",
    "prunable_layers",
    "prune",
    "shrink",
    "unshrink",
]
