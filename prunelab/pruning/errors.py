"""The pruning layer's one error type and its one check of a ratio (the config schema uses it too)."""

from __future__ import annotations

from typing import Any


class PruningError(ValueError):
    """The requested pruning cannot be done on this model; the message says why."""


def check_ratio(value: Any, key: str = "ratio") -> float:
    """``value`` as a float in [0, 1), or :class:`PruningError` in one sentence."""
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise PruningError(f"{key}={value!r} is not a number: expected a float with 0 <= {key} < 1") from None
    if not 0.0 <= ratio < 1.0:
        raise PruningError(f"{key}={value} is out of range: expected 0 <= {key} < 1")
    return ratio
