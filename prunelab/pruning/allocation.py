"""Allocation (the scope): how many entries to cut where, given importance scores.

* ``global``: one threshold theta over all scores at once; keep entries with score > theta.
* ``local``: the same ratio in every layer/group: theta is found per entry.

Both find theta as the exact k-th smallest score (k = round(ratio * n)), never by sorting every
score or gathering them in a Python list: see :func:`kth_smallest`. The global pass does not even
gather them in one buffer: a network's weight scores are streamed layer by layer (for ResNet-50's
25M weights, merely allocating and first touching a 100 MB buffer cost ~90 ms on the benchmark
machine, and the buffer doubled the memory the call needs).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch

SCOPES = ("global", "local")

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
    sample, offset = [], 0
    for part in parts():
        lo_i, hi_i = np.searchsorted(where, (offset, offset + part.size))
        sample.append(part[where[lo_i:hi_i] - offset])
        offset += part.size
    if offset != n:
        raise ValueError(f"the parts hold {offset} values, expected {n}")
    sample = np.sort(np.concatenate(sample))
    q = k / n
    margin = _MARGIN_SIGMAS * math.sqrt(q * (1 - q) / _SAMPLE) + 2 / _SAMPLE
    i_lo = min(math.floor((q - margin) * _SAMPLE), _SAMPLE - 1)
    i_hi = max(math.ceil((q + margin) * _SAMPLE), i_lo, 0)  # lo <= hi, or values count twice
    lo = sample[i_lo] if i_lo >= 0 else np.float32(-np.inf)
    hi = sample[i_hi] if i_hi < _SAMPLE else np.float32(np.inf)
    # Pass 2: count below and at the bounds, copy what lies strictly between.
    below = at_lo = at_hi = 0
    inside = []
    for part in parts():
        for start in range(0, part.size, _CHUNK):
            chunk = part[start:start + _CHUNK]
            below += np.count_nonzero(chunk < lo)
            at_lo += np.count_nonzero(chunk == lo)
            if hi != lo:
                at_hi += np.count_nonzero(chunk == hi)
                between = chunk > lo
                between &= chunk < hi
                inside.append(chunk[between])
    rank = k - below  # the answer's rank among the values >= lo
    if 0 < rank <= at_lo:
        return float(lo)
    rank -= at_lo
    inside = np.sort(np.concatenate(inside)) if inside else np.empty(0, np.float32)
    if 0 < rank <= inside.size:
        return float(inside[rank - 1])
    if 0 < rank - inside.size <= at_hi:
        return float(hi)
    return float(np.sort(np.concatenate(list(parts())))[k - 1])  # the sample missed: rare


def _threshold(parts: Callable[[], Iterable[np.ndarray]], n: int, ratio: float) -> float:
    k = round(ratio * n)
    return -float("inf") if k == 0 else _kth_smallest_streamed(parts, n, k)


def allocate(
    sizes: dict[str, int],
    score: Callable[[str], torch.Tensor],
    ratio: float,
    scope: str,
    min_keep: int = 0,
) -> dict[str, torch.Tensor]:
    """Decide which scored entries survive.

    ``sizes`` gives each entry's number of scores and ``score(name)`` recomputes them (same values
    every call), so the global pass never holds every score at once: it streams them, name by
    name, through the selection (three passes) and once more to build the masks. Returns
    ``name -> bool tensor`` shaped like the scores. ``min_keep`` entries per name always survive
    (the highest-scored ones): structured pruning never empties a layer."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if scope == "global":
        total = sum(sizes.values())
        if total < _KEEP_SCORES_BELOW:
            # Few scores (channels): compute once; recomputing means re-reading whole filters.
            scores = {name: score(name) for name in sizes}
            theta = _threshold(lambda: (_flat(scores[name]) for name in sizes), total, ratio)
            keep = {name: s > theta for name, s in scores.items()}
        else:
            theta = _threshold(lambda: (_flat(score(name)) for name in sizes), total, ratio)
            keep = {name: score(name) > theta for name in sizes}
    else:
        keep = {}
        for name in sizes:
            s = score(name)
            keep[name] = s > _threshold(lambda: [_flat(s)], s.numel(), ratio)
    if min_keep:
        for name, k in keep.items():
            if int(k.sum()) < min_keep:
                s = score(name).flatten()
                k.view(-1)[s.topk(min(min_keep, s.numel())).indices] = True
    return keep
