"""Allocation (the scope): how many entries to cut where, given importance scores.

* ``global``: one threshold theta over all scores at once; keep entries with score > theta.
* ``local``: the same ratio in every layer/group: theta is found per entry.

Both find theta as the k-th smallest score (k = round(ratio * n)) with a partial selection over one
buffer of float32 scores, never a sort or a Python list.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

SCOPES = ("global", "local")


def kth_smallest(values: torch.Tensor, k: int) -> float:
    """The k-th smallest (1-based) of a 1-D float tensor. Partitions ``values`` in place: pass a
    buffer you own."""
    array = values.detach().cpu().numpy()
    array.partition(k - 1)
    return float(array[k - 1])


def _threshold(buffer: torch.Tensor, ratio: float) -> float:
    k = round(ratio * buffer.numel())
    return -float("inf") if k == 0 else kth_smallest(buffer, k)


def allocate(
    sizes: dict[str, int],
    score: Callable[[str], torch.Tensor],
    ratio: float,
    scope: str,
    min_keep: int = 0,
) -> dict[str, torch.Tensor]:
    """Decide which scored entries survive.

    ``sizes`` gives each entry's number of scores and ``score(name)`` recomputes them (same values
    every call), so the global pass holds one float32 buffer, not every score twice. Returns
    ``name -> bool tensor`` shaped like the scores. ``min_keep`` entries per name always survive
    (the highest-scored ones): structured pruning never empties a layer."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if scope == "global":
        buffer = torch.empty(sum(sizes.values()), dtype=torch.float32)
        offset = 0
        for name, n in sizes.items():
            buffer[offset:offset + n] = score(name).flatten()
            offset += n
        theta = _threshold(buffer, ratio)
        del buffer
        keep = {name: score(name) > theta for name in sizes}
    else:
        keep = {}
        for name in sizes:
            s = score(name)
            keep[name] = s > _threshold(s.flatten().float().clone(), ratio)
    if min_keep:
        for name, k in keep.items():
            if int(k.sum()) < min_keep:
                s = score(name).flatten()
                k.view(-1)[s.topk(min(min_keep, s.numel())).indices] = True
    return keep
