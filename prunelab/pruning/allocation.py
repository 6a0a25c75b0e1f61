"""Allocation (the scope): how many units to cut where, given their importance scores.

A method hands its scope :class:`~.contracts.Units`: named sets of scored units (a layer's
weights, a channel group's channels), scores recomputable by name, entries pruned earlier scored
``-inf`` (so they stay pruned and count towards the ratio). A scope (``conf/scope/``, the contract
:class:`~.contracts.Scope`) returns ``{name: bool tensor}`` (True = kept) at an overall ``ratio``
of all units. :func:`allocate` calls it and then makes sure no set is emptied.

* :class:`Global`: one threshold theta over all scores at once; keep entries with score > theta.
* :class:`Local`: the same ratio in every set: theta is found per set.
* :class:`Lamp`: layer-adaptive magnitude scores (Lee et al. 2021), then one global threshold.
* :class:`Erk`: Erdős–Rényi-Kernel layer densities (RigL, Evci et al. 2020), the best-scored kept.
* ``Sensitivity`` (``sensitivity.py``) and ``FromPlan`` (``plan.py``): a ratio per set.

Thresholds are as the exact k-th smallest score (k = round(ratio * n)), never by sorting every
score or gathering them in a Python list: see :func:`kth_smallest`. The global pass does not even
gather them in one buffer: a network's weight scores are streamed layer by layer (for ResNet-50's
25M weights, merely allocating and first touching a 100 MB buffer cost ~90 ms on the benchmark
machine, and the buffer doubled the memory the call needs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .contracts import Scope, Units
from .errors import PruningError
from .mask import count

# Below this many scores a plain sort is cheapest; above it, the k-th smallest is bracketed from a
# sample first. Sort rather than np.partition: NumPy's partition slows down 30x and more on many
# equal values (the zeros of an already pruned model); its sort does not.
_SORT_BELOW = 1 << 18
_SAMPLE = 1 << 16
_CHUNK = 1 << 18  # scores per counting step: the step's temporaries stay in cache
_MARGIN_SIGMAS = 6.0  # the bracket misses with probability ~1e-9; a miss costs one full sort
# Up to this many scores (structured: one per channel) are computed once and kept; more (one per
# weight) are recomputed on each pass, so the memory peak stays at about one layer's scores.
_KEEP_SCORES_BELOW = 1 << 20


def _flat(values: torch.Tensor) -> np.ndarray:
    return values.detach().cpu().float().numpy().reshape(-1)


def kth_smallest(values: torch.Tensor, k: int) -> float:
    """The exact k-th smallest (1-based) of a float tensor; ``values`` is not modified."""
    return _kth_smallest_streamed(lambda: [_flat(values)], values.numel(), k)


def _kth_smallest_streamed(parts: Callable[[], Iterable[np.ndarray]], n: int, k: int) -> float:
    """The exact k-th smallest of ``n`` values that ``parts()`` yields as 1-D arrays, in the same
    order on every call (each call may recompute them: at most three calls are made).

    Few values are sorted. Otherwise a random sample of the values gives two bounds ``lo <= hi``
    that bracket the k-th smallest with overwhelming probability; one more pass counts the values
    below ``lo``, equal to ``lo`` and equal to ``hi``, and copies the few strictly between, which
    are then sorted. Values tied with a bound are counted, never copied, so a score repeated
    millions of times (zeros) costs nothing extra. If the sample missed (or there are NaNs), a full
    sort answers: the result is exact either way."""
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is out of range for {n} values")
    if n < _SORT_BELOW:
        values = np.concatenate(list(parts()))
        if values.size != n:
            raise ValueError(f"the parts hold {values.size} values, expected {n}")
        return float(np.sort(values)[k - 1])
    # Pass 1: a uniform sample (with replacement) of all n values, part by part.
    where = np.sort(np.random.default_rng(0).integers(0, n, _SAMPLE))
    picked: list[np.ndarray] = []
    offset = 0
    for part in parts():
        lo_i, hi_i = np.searchsorted(where, (offset, offset + part.size))
        picked.append(part[where[lo_i:hi_i] - offset])
        offset += part.size
    if offset != n:
        raise ValueError(f"the parts hold {offset} values, expected {n}")
    sample = np.sort(np.concatenate(picked))
    q = k / n
    margin = _MARGIN_SIGMAS * math.sqrt(q * (1 - q) / _SAMPLE) + 2 / _SAMPLE
    i_lo = min(math.floor((q - margin) * _SAMPLE), _SAMPLE - 1)
    i_hi = max(math.ceil((q + margin) * _SAMPLE), i_lo, 0)  # lo <= hi, or values count twice
    lo = sample[i_lo] if i_lo >= 0 else np.float32(-np.inf)
    hi = sample[i_hi] if i_hi < _SAMPLE else np.float32(np.inf)
    # Pass 2: count below and at the bounds, copy what lies strictly between.
    below = at_lo = at_hi = 0
    strictly_between: list[np.ndarray] = []
    for part in parts():
        for start in range(0, part.size, _CHUNK):
            chunk = part[start : start + _CHUNK]
            below += int(np.count_nonzero(chunk < lo))
            at_lo += int(np.count_nonzero(chunk == lo))
            if hi != lo:
                at_hi += int(np.count_nonzero(chunk == hi))
                between = chunk > lo
                between &= chunk < hi
                strictly_between.append(chunk[between])
    rank = k - below  # the answer's rank among the values >= lo
    if 0 < rank <= at_lo:
        return float(lo)
    rank -= at_lo
    inside = np.sort(np.concatenate(strictly_between)) if strictly_between else np.empty(0, np.float32)
    if 0 < rank <= inside.size:
        return float(inside[rank - 1])
    if 0 < rank - inside.size <= at_hi:
        return float(hi)
    return float(np.sort(np.concatenate(list(parts())))[k - 1])  # the sample missed: rare


def _threshold(parts: Callable[[], Iterable[np.ndarray]], n: int, ratio: float) -> float:
    k = round(ratio * n)
    return -float("inf") if k == 0 else _kth_smallest_streamed(parts, n, k)


def as_scope(scope) -> Scope:
    """``scope`` itself, or a plain function ``fn(units, ratio) -> keeps`` as a
    :class:`~.contracts.Scope`."""
    if isinstance(scope, Scope):
        return scope
    if not callable(scope):
        raise PruningError(f"scope {scope!r} is neither a Scope nor a function of (units, ratio)")
    return FunctionScope(scope)


@dataclass(frozen=True)
class FunctionScope(Scope):
    """A plain function ``fn(units, ratio) -> {name: bool tensor}``."""

    fn: Callable[[Units, float], dict[str, torch.Tensor]]

    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        return self.fn(units, ratio)


def allocate(units: Units, ratio: float, scope: Scope, min_keep: int = 1) -> dict[str, torch.Tensor]:
    """``scope``'s decision (``name -> bool tensor`` shaped like the scores, True = kept), with at
    least ``min_keep`` units kept in every set (its highest-scored ones): no layer is emptied."""
    keep = scope(units, ratio)
    missing = set(units.sizes) - set(keep)
    if missing:
        raise ValueError(f"scope {type(scope).__name__} decided nothing for {', '.join(sorted(missing))}")
    for name, k in keep.items():
        if min_keep and count(k) < min_keep:  # count: torch's bool sum would copy the mask to int64
            s = units.score(name).flatten()
            # argmax for one: topk over a large layer allocates several copies of its scores
            best = s.argmax() if min_keep == 1 else s.topk(min(min_keep, s.numel())).indices
            k.view(-1)[best] = True
    return keep


@dataclass(frozen=True)
class Global(Scope):
    """One threshold over every score: the ``ratio`` lowest-scored units of the whole model go.

    The scores stream name by name through the selection (three passes) and once more to build
    the masks, so the global pass never holds every score at once."""

    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        return threshold_all(units.sizes, units.score, ratio)


@dataclass(frozen=True)
class GlobalFloor(Scope):
    """One threshold over every score, as :class:`Global`, but every set keeps at least ``floor``
    of its units (its best-scored ones): no layer collapses to a single unit, the bottleneck
    found under the global scope at high structured ratios (experiments/README.md, criteria
    study). The overall ratio is still met: the rest is cut by one threshold over the units
    beyond each set's floor."""

    floor: float = 0.05  # the fraction of each set always kept

    def __post_init__(self):
        if not 0 <= self.floor < 1:
            raise PruningError(f"scope.floor={self.floor} is out of range: expected 0 <= floor < 1")

    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        reserved = {name: math.ceil(self.floor * size) for name, size in units.sizes.items()}
        total = sum(units.sizes.values())
        if total - round(ratio * total) < sum(reserved.values()):
            raise PruningError(
                f"scope=global_floor keeps floor={self.floor:g} of every set ({sum(reserved.values())} of {total} "
                f"units), more than ratio={ratio:g} leaves: lower scope.floor or the ratio"
            )

        def floored(name: str) -> torch.Tensor:  # a set's best units can never fall below the threshold
            s = units.score(name).detach().flatten().cpu().float().clone()
            if reserved[name]:
                s[s.topk(reserved[name]).indices] = float("inf")
            return s.view(units.score(name).shape)

        return threshold_all(units.sizes, floored, ratio)


def threshold_all(sizes: dict[str, int], score: Callable[[str], torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    total = sum(sizes.values())
    if total < _KEEP_SCORES_BELOW:
        # Few scores (channels): compute once; recomputing means re-reading whole filters.
        scores = {name: score(name) for name in sizes}
        theta = _threshold(lambda: (_flat(scores[name]) for name in sizes), total, ratio)
        return {name: s > theta for name, s in scores.items()}
    theta = _threshold(lambda: (_flat(score(name)) for name in sizes), total, ratio)
    return {name: score(name) > theta for name in sizes}


def keep_ratio(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep all but the ``ratio`` lowest of one set's scores."""
    return scores > _threshold(lambda: [_flat(scores)], scores.numel(), ratio)


def keep_count(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Keep exactly the ``kept`` highest of one set's scores (ties broken by position)."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    if kept > 0:
        keep[scores.flatten().cpu().float().topk(kept, sorted=False).indices] = True
    return keep.view(scores.shape)


@dataclass(frozen=True)
class Local(Scope):
    """The same ratio in every set."""

    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        return {name: keep_ratio(units.score(name), ratio) for name in units.sizes}


@dataclass(frozen=True)
class Lamp(Scope):
    """Layer-adaptive magnitude-based pruning (Lee et al. 2021), then one global threshold.

    In each set, with the squared scores sorted ascending (s_1 <= ... <= s_n), unit u scores
    ``s_u / sum_{v >= u} s_v``: its share of what is at least as large in its own layer. With a
    magnitude criterion (score |w|, so s = w^2) this is the paper's formula. Every set's largest
    unit scores 1, so a set is emptied only if all of the model's remaining units go. Pruned
    units (``-inf``) keep their score and count as zero in the sums."""

    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        scores = {name: lamp_scores(units.score(name)) for name in units.sizes}
        return threshold_all(units.sizes, scores.__getitem__, ratio)


def lamp_scores(scores: torch.Tensor) -> torch.Tensor:
    s = scores.detach().flatten().cpu().double()
    alive = torch.isfinite(s)
    if bool((s[alive] < 0).any()):
        raise PruningError("scope=lamp needs scores >= 0 (a magnitude): this criterion gave negative ones")
    values = torch.where(alive, s, torch.zeros_like(s)).square()  # float64: no ties made by squaring
    order = values.argsort(stable=True)
    sorted_ = values[order]
    tail = sorted_.flip(0).cumsum(0).flip(0)  # sum_{v >= u} s_v
    out = torch.empty_like(s)
    out[order] = sorted_ / tail.clamp_min(torch.finfo(torch.float64).tiny)
    out[~alive] = -math.inf
    return out.float().view(scores.shape)


@dataclass(frozen=True)
class Erk(Scope):
    """Erdős–Rényi-Kernel densities (Evci et al. 2020): a layer keeps in proportion to the sum of
    its weight's dimensions over their product ((n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w)
    for a convolution), scaled so that the model keeps ``1 - ratio`` of its weights; a layer the
    scale would fill is left dense and the others rescaled. Within a layer the highest-scored
    weights stay: with ``criterion=random``, RigL's random ERK initialisation."""

    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        if units.kind != "weights":
            raise PruningError("scope=erk sets layer densities of single weights: use method=unstructured")
        scores = {name: units.score(name) for name in units.sizes}
        return {
            name: keep_count(scores[name], kept)
            for name, kept in counts(
                erk_ratios({n: tuple(s.shape) for n, s in scores.items()}, ratio), units.sizes, ratio
            ).items()
        }


def erk_ratios(shapes: dict[str, tuple[int, ...]], ratio: float) -> dict[str, float]:
    """Per layer, the ratio pruned under ERK densities that keep ``1 - ratio`` of all weights."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    keep_total = (1 - ratio) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in sizes if n not in dense]
        if not rest:  # ratio 0: everything stays
            break
        scale = (keep_total - sum(sizes[n] for n in dense)) / sum(raw[n] * sizes[n] for n in rest)
        full = {n for n in rest if scale * raw[n] >= 1}
        if not full:
            break
        dense |= full
    return {n: 0.0 if n in dense else 1 - scale * raw[n] for n in sizes}


def counts(
    ratios: dict[str, float], sizes: dict[str, int], ratio: float | None, done: dict[str, int] | None = None
) -> dict[str, int]:
    """Units kept per set: each set's ratio rounded, then (``ratio`` given) the total matched to
    round(ratio * all) one unit at a time on the sets with the largest rounding error; never
    fewer pruned than ``done`` (pruned before)."""
    done = done or {}
    pruned = {n: max(min(round(ratios[n] * sizes[n]), sizes[n] - 1), done.get(n, 0)) for n in sizes}
    if ratio is None:
        return {n: sizes[n] - pruned[n] for n in sizes}
    short = round(ratio * sum(sizes.values())) - sum(pruned.values())
    order = sorted(sizes, key=lambda n: (ratios[n] * sizes[n] - pruned[n]) * (1 if short > 0 else -1), reverse=True)
    i = 0
    while short and i < 10 * len(order) + abs(short):
        n = order[i % len(order)]
        step = 1 if short > 0 else -1
        if done.get(n, 0) <= pruned[n] + step <= sizes[n] - 1:
            pruned[n] += step
            short -= step
        i += 1
    return {n: sizes[n] - pruned[n] for n in sizes}
