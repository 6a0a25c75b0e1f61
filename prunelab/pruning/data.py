"""The data pruning may look at: :class:`PruneData`, the one interface through which criteria
(seeded training mini-batches) and measuring scopes (validation accuracy) see data."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from ..names import IGNORE
from .errors import PruningError, check_positive

TRAIN = "train"  # the calibration source that is the dataset's own training split


class PruneData:
    """The data a criterion or a scope may look at: seeded mini-batches of the training split
    (criteria) and accuracy on a bounded subset of the validation split (the sensitivity scan).

    ``train`` and ``val`` are ``(x, y)`` pairs or anything with ``.x`` and ``.y``; ``sources``:
    calibration sources besides the training split, by name (``(samples, seed) -> inputs``)."""

    def __init__(
        self,
        train,
        val=None,
        batch_size: int = 128,
        seed: int = 0,
        sources: Mapping[str, Callable[[int, int], torch.Tensor]] | None = None,
    ):
        self.train = _pair(train)
        self.val = _pair(val) if val is not None else None
        self.batch_size, self.seed = batch_size, seed
        self.sources = dict(sources or {})
        self.drawn: dict[str, int] = {}  # what pruning looked at: source -> the most inputs drawn at once

    def _drew(self, source: str, inputs: int) -> None:
        self.drawn[source] = max(inputs, self.drawn.get(source, 0))

    def calibration(self, samples: int, seed: int, source: str = TRAIN) -> torch.Tensor:
        """``samples`` inputs drawn by ``seed`` from ``source``: the training split's (for text:
        ``samples`` windows of it), or a named source's, on the training split's device."""
        check_positive(samples, "method.samples")
        x = self.train[0]
        if source == TRAIN:
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]
            self._drew(TRAIN, len(order))
            return x[order.to(x.device)]
        if source not in self.sources:
            offered = ", ".join([TRAIN, *self.sources])
            raise PruningError(f"method.calibration={source}: this dataset offers {offered}")
        drawn = self.sources[source](samples, seed).to(x.device)
        self._drew(source, len(drawn))
        return drawn

    def batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` mini-batches of one seeded shuffle of the training split."""
        x, y = self.train
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed)).to(x.device)
        self._drew(TRAIN, min(n * self.batch_size, len(y)))
        for start in range(0, min(n * self.batch_size, len(y)), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield x[idx], y[idx]

    def chunks(self, samples: int | None = None, size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``samples`` validation examples (all: None), ``size`` at a time."""
        if self.val is None:
            raise PruningError("this needs validation data: pass data=PruneData(train, val)")
        x, y = self.val
        x, y = (x[:samples], y[:samples]) if samples else (x, y)
        for i in range(0, len(y), size):
            yield x[i : i + size], y[i : i + size]

    @torch.no_grad()
    def accuracy(self, model: nn.Module, samples: int | None = None) -> float:
        """Accuracy of ``model`` (eval mode) on the first ``samples`` validation examples."""
        was_training = model.training
        model.eval()
        correct = total = 0
        try:
            for x, y in self.chunks(samples):
                correct += int((model(x).argmax(1) == y).sum())
                total += int((y != IGNORE).sum())
        finally:
            model.train(was_training)
        return correct / max(total, 1)


def _pair(split) -> tuple[torch.Tensor, torch.Tensor]:
    return (split.x, split.y) if hasattr(split, "x") else tuple(split)
