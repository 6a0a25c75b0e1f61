"""The protocol a language model's perplexity was measured under, recorded with its run.

Perplexities are comparable only under one protocol: the window length, the split evaluated and
how many of its windows, and what the pruning calibrated on (source, windows, seed). The papers'
numbers differ between 2,048- and 4,096-token windows (locuslab/wanda issue #47). What the run
drew is read from its :class:`~prunelab.pruning.data.PruneData` after the prune, not assumed from
the options: a method that looked at no data says ``none``.
"""

from __future__ import annotations

from ..data.splits import Splits
from ..names import Protocol
from ..pruning.data import PruneData
from .train import per_position


def protocol(data: Splits, drawn: PruneData | None, calibration_seed: int) -> dict[str, str]:
    """The :class:`~prunelab.names.Protocol` params of a run on ``data`` whose pruning drew from
    ``drawn``; none for a model that is not a language model (no label per position)."""
    if not per_position(data.test):
        return {}
    sources = drawn.drawn if drawn is not None else {}
    return {
        Protocol.SEQ_LEN: str(data.test.x.shape[1]),
        Protocol.EVAL_SPLIT: "test",
        Protocol.EVAL_WINDOWS: str(len(data.test)),
        Protocol.CALIBRATION: ",".join(sorted(sources)) or "none",
        Protocol.CALIBRATION_WINDOWS: str(max(sources.values(), default=0)),
        Protocol.CALIBRATION_SEED: str(calibration_seed),
    }


__all__ = ["protocol"]
