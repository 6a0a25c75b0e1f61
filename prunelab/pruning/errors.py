"""The pruning layer's one error type and its checks of shared values (a ratio, an N:M pattern),
each in one place: the methods and the config schema both call them."""

from __future__ import annotations

import math
from typing import Any

from ..errors import UserError


class PruningError(UserError, ValueError):
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


def check_nm(n: int | None, m: int | None, ratio: float | None = None, optional: bool = False) -> None:
    """An N:M pattern: ``0 < n < m``, both given (or, ``optional``, both unset: no pattern), and,
    with ``ratio``, the ratio it fixes: ``(m - n) / m``."""
    if n is None and m is None and optional:
        return
    if n is None or m is None:
        raise PruningError(f"method.n={n}, method.m={m}: give both (N:M)" + (", or neither" if optional else ""))
    if not 0 < n < m:
        raise PruningError(f"method.n={n}, method.m={m}: expected 0 < n < m")
    if ratio is not None and not math.isclose(check_ratio(ratio), (m - n) / m, abs_tol=1e-9):
        raise PruningError(f"{n}:{m} keeps {n} of every {m} weights: ratio must be {(m - n) / m:g}, got {ratio:g}")


def check_positive(value: Any, key: str) -> None:
    """``value`` >= 1 (a count: samples, rounds, steps)."""
    if value < 1:
        raise PruningError(f"{key}={value} must be >= 1")
