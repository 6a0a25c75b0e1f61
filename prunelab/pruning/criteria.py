"""Criteria (importance): how much each weight, or each output channel, matters.

A criterion only scores; how many entries to cut and where is the scope's job (``scopes.py``).
It is a ``criterion._target_`` plug-in (``conf/criterion/``) of one of two shapes:

* a plain function ``fn(weight) -> scores`` shaped like ``weight`` (it may also take ``name=`` and
  ``seed=``), e.g. ``criterion._target_=mypkg.my_score criterion._partial_=true``;
* an object with ``prepare(model, data, seed) -> scorer`` for criteria that look at the network
  or at data first (Taylor runs a few training batches). The scorer has
  ``weights(name, weight) -> scores`` and may have ``channels(name, rows) -> per-channel scores``.

Data reach a criterion through one interface only, :class:`PruneData`: ``data.batches(n)`` yields
``n`` seeded mini-batches ``(x, y)`` of the training split.

Structured methods score a channel from every layer whose output channel it is (a residual
addition couples several): ``rows`` lists one :class:`Coupled` per such layer, whose ``place(t)``
turns a tensor shaped like that layer's weight into rows indexed by the group's channels,
``(channels, -1)``. Without a ``channels`` method a channel's score is the sum of its weights'
scores (Taylor's "summed over the channel group").
"""

from __future__ import annotations

import inspect
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PruningError


class PruneData:
    """The data a criterion or a scope may look at: seeded mini-batches of the training split
    (criteria) and accuracy on a bounded subset of the validation split (the sensitivity scan).

    ``train`` and ``val`` are ``(x, y)`` pairs or anything with ``.x`` and ``.y``."""

    def __init__(self, train, val=None, batch_size: int = 128, seed: int = 0):
        self.train = _pair(train)
        self.val = _pair(val) if val is not None else None
        self.batch_size, self.seed = batch_size, seed

    def batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` mini-batches of one seeded shuffle of the training split."""
        x, y = self.train
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed)).to(x.device)
        for start in range(0, min(n * self.batch_size, len(y)), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield x[idx], y[idx]

    def chunks(self, samples: int | None = None, size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``samples`` validation examples (all: None), ``size`` at a time."""
        if self.val is None:
            raise PruningError("this needs validation data: pass data=PruneData(train, val)")
        x, y = self.val
        x, y = (x[:samples], y[:samples]) if samples else (x, y)
        for i in range(0, len(y), size):
            yield x[i:i + size], y[i:i + size]

    @torch.no_grad()
    def accuracy(self, model: nn.Module, samples: int | None = None) -> float:
        """Accuracy of ``model`` (eval mode) on the first ``samples`` validation examples."""
        was_training = model.training
        model.eval()
        correct = total = 0
        try:
            for x, y in self.chunks(samples):
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        finally:
            model.train(was_training)
        return correct / max(total, 1)


def _pair(split) -> tuple[torch.Tensor, torch.Tensor]:
    return (split.x, split.y) if hasattr(split, "x") else tuple(split)


class Scorer(Protocol):
    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor: ...


def prepare(criterion, model: nn.Module, data: PruneData | None, seed: int):
    """The scorer of ``criterion`` (either shape above) for ``model``."""
    if hasattr(criterion, "prepare"):
        return criterion.prepare(model, data, seed)
    if not callable(criterion):
        raise PruningError(f"criterion {criterion!r} is neither a function nor has prepare()")
    return _FunctionScorer(criterion, seed)


class _FunctionScorer:
    def __init__(self, fn: Callable, seed: int):
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self.fn, self.extra = fn, [k for k in ("name", "seed") if takes_all or k in params]
        self.seed = seed

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        given = {"name": name, "seed": self.seed}
        scores = self.fn(weight.detach(), **{k: given[k] for k in self.extra})
        if not isinstance(scores, torch.Tensor) or scores.shape != weight.shape:
            raise PruningError(f"criterion {getattr(self.fn, '__name__', self.fn)} returned "
                               f"{getattr(scores, 'shape', type(scores).__name__)} for {name}, "
                               f"expected a tensor shaped {tuple(weight.shape)}")
        return scores


@dataclass(frozen=True)
class Coupled:
    """One layer of a channel group: its weight's name, the weight, and ``place``."""
    name: str
    weight: torch.Tensor
    place: Callable[[torch.Tensor], torch.Tensor]


def channel_scores(scorer, name: str, rows: list[Coupled], n: int) -> torch.Tensor:
    """Per-channel scores of the channel group rooted at layer ``name`` (module docstring)."""
    if hasattr(scorer, "channels"):
        return scorer.channels(name, rows, n)
    total = torch.zeros(n, dtype=torch.float64)
    for c in rows:
        total += c.place(scorer.weights(c.name, c.weight).double()).sum(dim=1).cpu()
    return total.float()


# --- the built-in criteria -------------------------------------------------------------------

@dataclass
class Magnitude:
    """|w| per weight, for every p: |w|^p ranks weights alike, and squaring in float32 would tie
    weights that differ (l1 and l2 keep the same weights, exactly those of
    ``torch.nn.utils.prune``'s L1). ||W_i||_p per channel (l1: p=1, l2: p=2): there p matters."""
    p: float = 2

    def prepare(self, model, data, seed):
        return self

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().abs()

    def channels(self, name: str, rows, n: int) -> torch.Tensor:
        total = torch.zeros(n, dtype=torch.float64)
        for c in rows:
            total += c.place(c.weight.detach().double()).abs().pow(self.p).sum(dim=1).cpu()
        return total.pow(1.0 / self.p).float()


def _generator(name: str, seed: int) -> torch.Generator:
    # A per-layer stream: the random baseline does not depend on layer order.
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


@dataclass
class Random:
    """The baseline: the scope's allocation with a random choice (seeded, per layer)."""
    seed: int = 0  # set by prepare() from the run's seed

    def prepare(self, model, data, seed):
        return Random(seed)

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return torch.rand(weight.shape, generator=_generator(name, self.seed)).to(weight.device)

    def channels(self, name: str, rows, n: int) -> torch.Tensor:
        return torch.rand(n, generator=_generator(name, self.seed))


@dataclass
class Taylor:
    """First-order Taylor importance (Molchanov et al. 2019): |w * dL/dw| per weight, summed over
    ``batches`` training mini-batches (the loss is the mean cross-entropy of each batch, the model
    in eval mode so BatchNorm statistics are left alone); per channel, the sum over its weights."""
    batches: int = 8

    def prepare(self, model: nn.Module, data: PruneData | None, seed: int):
        if data is None:
            raise PruningError("criterion taylor needs training batches: pass data=(x, y) or PruneData")
        params = {n: p for n, p in model.named_parameters() if p.dim() > 1}
        scores = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        was_training, grads = model.training, [p.requires_grad for p in params.values()]
        model.eval()
        try:
            for p in params.values():
                p.requires_grad_(True)
            seen = 0
            for x, y in data.batches(self.batches):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                for n, p in params.items():
                    scores[n] += (p.detach().double() * p.grad.double()).abs()
                seen += 1
            if not seen:
                raise PruningError("criterion taylor got no training batch")
        finally:
            model.zero_grad(set_to_none=True)
            for p, g in zip(params.values(), grads):
                p.requires_grad_(g)
            model.train(was_training)
        return _TaylorScores(scores)


class _TaylorScores:
    def __init__(self, scores: dict[str, torch.Tensor]):
        self.scores = scores

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if name not in self.scores:
            raise PruningError(f"taylor: no gradient was taken for {name}")
        return self.scores[name].to(weight.device)


@dataclass
class FPGM:
    """Filter pruning via geometric median (He et al. 2019): a filter close to all the others
    (small summed Euclidean distance to them) is redundant. Filters only: structured methods."""

    def prepare(self, model, data, seed):
        return self

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        raise PruningError("criterion fpgm compares whole filters: use it with method=structured")

    def channels(self, name: str, rows, n: int) -> torch.Tensor:
        w = torch.cat([c.place(c.weight.detach().double()).cpu() for c in rows], dim=1)
        return torch.cdist(w, w).sum(dim=1).float()
