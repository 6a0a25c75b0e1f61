"""Importance scores: how much each weight (unstructured) or channel (structured) matters.

Scoring only scores. How many entries to cut, and where, is the scope's job (``allocation.py``).
Scores are recomputable: the same (criterion, layer name, seed) gives the same tensor, so the global
threshold can be found in one pass and the masks built in a second without keeping every score.
"""

from __future__ import annotations

import zlib

import torch

CRITERIA = ("l1", "l2", "random")


def _generator(name: str, seed: int) -> torch.Generator:
    # A per-layer stream: the random baseline does not depend on layer order.
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def weight_scores(weight: torch.Tensor, criterion: str, name: str = "", seed: int = 0) -> torch.Tensor:
    """Per-weight importance. l1 and l2 rank weights identically (|w| vs w^2); random is the
    baseline with the same allocation but a random choice."""
    w = weight.detach()
    if criterion == "l1":
        return w.abs()
    if criterion == "l2":
        return w.square()
    if criterion == "random":
        return torch.rand(w.shape, generator=_generator(name, seed)).to(w.device)
    raise ValueError(f"unknown criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")


def channel_scores(rows: list[torch.Tensor], n: int, criterion: str, name: str = "",
                   seed: int = 0) -> torch.Tensor:
    """Per-channel importance ||W_i||_p over every filter/row that channel ``i`` owns.

    ``rows`` holds, for each layer coupled into this channel group, its weight reshaped to
    ``(n, -1)`` (row ``i`` = what output channel ``i`` computes). For a plain layer this is the
    reference ||W_i||_p; for channels tied together (e.g. by a residual addition) it is the p-norm
    of all their filters concatenated."""
    if criterion == "random":
        return torch.rand(n, generator=_generator(name, seed))
    p = {"l1": 1, "l2": 2}.get(criterion)
    if p is None:
        raise ValueError(f"unknown criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")
    total = torch.zeros(n, dtype=torch.float64)
    for r in rows:
        total += r.detach().double().abs().pow(p).sum(dim=1).cpu()
    return total.pow(1.0 / p).float()
