"""The process layout of a run, as an object the stages are given: one process
(:class:`OneProcess`), or the ranks torchrun started (:class:`Spread`).

The stages run the same code on every rank; what differs is said here: who decides (rank 0, whose
decision every rank takes), what is sent to the others (weights after a training or a
reconstructing prune, the mask), and who records (rank 0: :meth:`OneProcess.recorder`). A rank
other than 0 runs the stages with a recorder that records nothing, so the runner has no branch of
its own for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..names import Metric
from ..pruning.mask import Mask
from . import distributed
from .dense import DenseResult
from .distributed import Ranks
from .recorder import Recorder, Silent
from .settings import Settings

T = TypeVar("T")


class OneProcess:
    """A run in this process alone: it decides, trains and records by itself."""

    ranks: Ranks | None = None  # what training needs to run data-parallel (none here)
    alone = True  # nothing waits on this process: its hand-over may be done by a worker, later

    def recorder(self, s: Settings, parent_run_id: str | None, sweep_tags: dict[str, str]) -> Recorder | Silent:
        """The run's recorder: MLflow."""
        return Recorder(s, parent_run_id, sweep_tags)

    def decide(self, value: T) -> T:
        """The decision every process takes: this one's."""
        return value

    def dense(
        self,
        model: nn.Module,
        look_up: Callable[[Callable[[nn.Module], Any]], DenseResult],
        train: Callable[[nn.Module], Any],
    ) -> DenseResult:
        """The dense model: ``look_up(train)`` finds it in the cache or trains it."""
        del model  # one process: look_up trains or loads it itself (Spread also trains it on the other ranks)
        return look_up(train)

    def keep(self, mask: Mask) -> tuple[Mask, dict[str, float]]:
        """The mask every process keeps, and the figures that say whether they agreed."""
        return mask, {}

    def share(self, model: nn.Module) -> None:
        """Every process's ``model`` made this one's (after a prune that changed the weights)."""

    def figures(self) -> dict[str, float]:
        """What the run records of its processes."""
        return {}

    def agreement(self, model: nn.Module) -> dict[str, float]:
        """Whether the processes ended with the same weights."""
        del model  # one process: nothing to compare it with
        return {}

    def resume(self, path: Path, device: torch.device) -> dict | None:
        """A schedule's checkpoint at ``path``, on ``device``, if there is one."""
        return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None

    @contextlib.contextmanager
    def running(self) -> Iterator[OneProcess]:
        """The run's processes joined for the ``with`` block."""
        yield self


class Spread(OneProcess):
    """One of the ranks torchrun started: rank 0 decides and records, every rank trains (each a part
    of every global batch) and ends with rank 0's weights; the others log only warnings."""

    alone = False

    def __init__(self, ranks: Ranks, device: torch.device):
        self.ranks: Ranks | None = ranks  # for training
        self.group, self.device = ranks, device

    def recorder(self, s: Settings, parent_run_id: str | None, sweep_tags: dict[str, str]) -> Recorder | Silent:
        """Rank 0 records into MLflow; the others into nothing."""
        return super().recorder(s, parent_run_id, sweep_tags) if self.group.main else Silent(s)

    def decide(self, value: T) -> T:
        return self.group.broadcast(value)

    def dense(self, model, look_up, train) -> DenseResult:
        """Rank 0 looks the dense model up and says whether it trains; the others train along when it
        does, and every rank ends with rank 0's weights."""
        ranks = self.group
        if ranks.main:
            said: list[str] = []

            def train_along(m: nn.Module) -> Any:
                said.append(ranks.broadcast("train"))
                return train(m)

            result = look_up(train_along)
            if not said:
                ranks.broadcast("loaded")
        else:
            if ranks.broadcast() == "train":
                train(model)
            nothing = {Metric.VAL_ACCURACY: math.nan, Metric.TEST_ACCURACY: math.nan}  # rank 0's figures count
            result = DenseResult("", [], nothing, from_cache=False)
        ranks.broadcast_state(model)
        return result

    def keep(self, mask: Mask) -> tuple[Mask, dict[str, float]]:
        """Every rank computed a mask; rank 0's is the one every rank keeps."""
        kept = Mask.from_state(self.group.broadcast(mask.to("cpu").to_state())).to(self.device)
        return kept, {Metric.RANKS_MASKS_IDENTICAL: float(self.group.all_agree(mask.digest()))}

    def share(self, model: nn.Module) -> None:
        self.group.broadcast_state(model)

    def figures(self) -> dict[str, float]:
        return {Metric.RANKS_WORLD: self.group.world}

    def agreement(self, model: nn.Module) -> dict[str, float]:
        return {Metric.RANKS_WEIGHTS_IDENTICAL: float(self.group.all_agree(weights_digest(model)))}

    def resume(self, path: Path, device: torch.device) -> dict | None:
        """Rank 0's checkpoint, whatever another rank would find; sent from the CPU, put on each
        rank's own device."""
        found = path.is_file() and self.group.main
        state = self.group.broadcast(torch.load(path, map_location="cpu", weights_only=True) if found else None)
        return _to(state, device)

    @contextlib.contextmanager
    def running(self) -> Iterator[Spread]:
        """The process group joined; a rank that died is one line (:meth:`Ranks.watching`)."""
        distributed.start(self.group, self.device)
        if not self.group.main:  # rank 0 reports the run
            logging.getLogger("prunelab").setLevel(logging.WARNING)
        try:
            with self.group.watching():
                yield self
        finally:
            distributed.stop()


def processes(s: Settings) -> OneProcess:
    """The run's process layout, from its settings."""
    return OneProcess() if s.ranks is None else Spread(s.ranks, s.device)


def weights_digest(model: nn.Module) -> str:
    """A SHA-256 of every weight and buffer: the ranks' models compared."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _to(obj: Any, device: torch.device) -> Any:
    """``obj`` (a checkpoint's nested dicts and lists) with every tensor on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj
