"""Pruning: importance scoring, allocation (scope), masks, and physical removal.

The one-call API for notebooks::

    mask = prunelab.prune(model, method="structured", scope="global", ratio=0.5,
                          criterion="l2", example_inputs=x[:1])
    mask.apply(model)        # zero the pruned entries in place
    small = prunelab.shrink(model, mask, x[:1])   # structured: remove them for real
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .allocation import SCOPES, allocate
from .importance import CRITERIA
from .mask import Mask, MaskError
from .methods import PruningError, prunable_layers, structured, unstructured
from .shrink import shrink, unshrink

METHODS = {"unstructured": unstructured, "structured": structured}


def prune(model: nn.Module, method: str = "unstructured", scope: str = "global", ratio: float = 0.5,
          criterion: str | None = None, ignore: Sequence[str] | None = None, seed: int = 0,
          example_inputs: torch.Tensor | None = None) -> Mask:
    """Compute the mask for pruning ``ratio`` of ``model`` (the model is not modified).

    ``criterion`` defaults to l1 (unstructured) / l2 (structured); ``ignore`` to nothing
    (unstructured) / the ``classifier`` layer (structured)."""
    if method not in METHODS:
        raise PruningError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    kwargs = {"criterion": criterion, "ignore": ignore}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return METHODS[method](model, ratio, scope=scope, seed=seed, example_inputs=example_inputs, **kwargs)


__all__ = ["CRITERIA", "METHODS", "SCOPES", "Mask", "MaskError", "PruningError", "allocate", "prunable_layers",
           "prune", "shrink", "structured", "unshrink", "unstructured"]
