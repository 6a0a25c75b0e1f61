"""A block-by-block prune's progress on disk (``method=sparsegpt`` / ``wanda``), so that a run killed
mid-way resumes from its last finished block when the same command runs again.

As each block is finished, its linear layers' weights and keep-masks are written to
``<folder>/block-<i>.pt``, then ``<folder>/progress.pt`` says how many blocks are finished; each
write is atomic (a temporary file renamed into place), so a kill leaves the old state or the new,
never half of one. The next block's inputs are not written: a resumed prune restores the finished
blocks and runs each once on the inputs captured at block 0, as the killed run did (forward passes
only, far cheaper than pruning), which gives the inputs the killed run had, bit for bit on the same
device, without writing the calibration activations (gigabytes for a large model) at every block.

The progress names the work it belongs to (:func:`work`: the method and its options, the ratio and
seed, the layers pruned, the calibration inputs, the starting mask and weights). Progress of other
work (another ratio: another level of an iterative schedule, or the output layer pruned apart) is
never resumed from; it is removed when other work starts. When the prune finishes, its files are
removed: they are only for resuming.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .mask import Mask

log = logging.getLogger(__name__)

PROGRESS = "progress.pt"


def work(
    options: str, ratio: float, seed: int, model: nn.Module, x: torch.Tensor, layers: list[str], mask: Mask | None
) -> dict[str, Any]:
    """What identifies one prune, as stored beside its progress: the method's options (its
    ``repr``), ``ratio``, ``seed``, the ``layers`` it prunes, digests of its calibration inputs
    ``x``, of the ``mask`` it starts from and of ``model``'s weights as it starts (each tensor's
    float64 sum: one read of the model, cheap beside pruning it)."""
    state = model.state_dict()
    sums = [t.detach().sum(dtype=torch.float64).cpu() for t in state.values()]
    weights = hashlib.sha256()
    for (name, t), total in zip(state.items(), torch.stack(sums).tolist() if sums else [], strict=True):
        weights.update(f"{name} {tuple(t.shape)} {t.dtype} {total!r}\n".encode())
    return {
        "method": options,
        "ratio": ratio,
        "seed": seed,
        "layers": list(layers),
        "calibration": hashlib.sha256(x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest(),
        "mask": mask.digest() if mask is not None else None,
        "weights": weights.hexdigest(),
    }


def _save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically: to a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class BlockProgress:
    """The progress of one block-by-block prune (``identity``: :func:`work`) in ``folder``, its own:
    ``keep`` is the prune's keep-masks by weight name, restored into and saved from."""

    def __init__(self, folder: Path, identity: dict[str, Any], keep: MutableMapping[str, torch.Tensor]):
        self.folder, self.identity, self.keep = folder, identity, keep
        self.resumed_at: int | None = None  # the first block pruned, when resumed

    def resume(self, blocks: str, total: int) -> int:
        """How many of the ``total`` blocks (at ``blocks``) this work finished before (0: none, or
        the progress found is of other work, which is removed)."""
        self.identity = {**self.identity, "blocks": f"{blocks}[{total}]"}
        path = self.folder / PROGRESS
        saved = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
        if saved is None:
            return 0
        if saved.get("work") != self.identity:
            log.info("the prune progress in %s is of other work: starting afresh", path)
            self.remove()
            return 0
        self.resumed_at = saved["done"]
        log.info("resuming the prune at block %d of %d from %s", saved["done"] + 1, total, path)
        return saved["done"]

    def _block(self, i: int) -> Path:
        return self.folder / f"block-{i:05d}.pt"

    @torch.no_grad()
    def restore(self, i: int, layers: dict[str, nn.Linear]) -> None:
        """Block ``i``'s ``layers`` (by their names in the model) as the earlier run left them."""
        state = torch.load(self._block(i), map_location="cpu", weights_only=True)
        for name, layer in layers.items():
            layer.weight.copy_(state["weights"][name])
            self.keep[f"{name}.weight"] = state["keep"][name]

    def finished(self, i: int, layers: dict[str, nn.Linear]) -> None:
        """Block ``i`` is pruned: its ``layers``' weights and keep-masks written, then the progress."""
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "weights": {name: layer.weight.detach().to("cpu", copy=True) for name, layer in layers.items()},
            "keep": {name: self.keep[f"{name}.weight"] for name in layers},
        }
        _save(state, self._block(i))
        _save({"work": self.identity, "done": i + 1}, self.folder / PROGRESS)

    def remove(self) -> None:
        """The progress and the blocks' files removed (the folder too, when nothing else is in it)."""
        for path in [self.folder / PROGRESS, *self.folder.glob("block-*.pt")]:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


__all__ = ["PROGRESS", "BlockProgress", "work"]
