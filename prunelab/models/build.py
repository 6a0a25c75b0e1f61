"""A model from its factory: the ``model._target_`` plug-in, given the dataset's facts.

Any ``nn.Module`` factory (a function or a class) can be a model: :func:`build` passes it
``in_shape`` / ``num_classes`` only if its signature names them, and ``num_classes`` alone to one
that takes ``**kwargs`` (torchvision's and timm's factories take it that way, and no ``in_shape``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import nn

from ..errors import UserError


class ModelError(UserError, ValueError):
    """A model cannot be built for this dataset; the message says why."""


def build(factory: Callable[..., nn.Module], in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Call a model factory (or class), passing the dataset facts it accepts."""
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    facts = {"in_shape": tuple(in_shape), "num_classes": num_classes}
    model = factory(**{k: v for k, v in facts.items() if k in params or (takes_all and k == "num_classes")})
    if not isinstance(model, nn.Module):
        raise ModelError(f"model._target_ returned {type(model).__name__}, not a torch.nn.Module")
    return model
