"""The hand-over stage and its one policy: when the files that ship are made.

- off (``handover=false``): no files, the run's own files logged at the end;
- now: made and checked in this process before the ledger, which costs an unstructured model by
  the compact file it made;
- later: in a sweep of one process, a worker makes, checks and logs them while the next point
  trains (:mod:`prunelab.experiment.deferred`), and ends the run; a run that quantizes hands over
  now (its ledger times the quantized model), and so does a run of several processes (nothing
  waits on a worker there). A run that times its model starts the worker only after the timings,
  which must not share the machine with a hand-over.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from ..data.splits import Splits, in_memory
from ..deploy.handover import HandedOver, HandoverJob, hand_over
from ..tracking import store
from . import deferred
from .report import handover_line
from .session import Outcome
from .settings import Settings

log = logging.getLogger(__name__)


class HandoverStage:
    """The hand-over of one run, made ``now``, ``later`` (by the worker) or not at all."""

    def __init__(self, s: Settings, defer: bool):
        self.s = s
        self.later = defer and s.handover and s.quantize is None
        if self.later:
            deferred.start()  # the worker imports while this point trains
        self.job: HandoverJob | None = None
        self.active: Any = None
        self.files: dict[str, bytes | str] = {}
        self.dense_file_bytes = 0.0

    def begin(
        self, active: Any, outcome: Outcome, data: Splits, files: dict[str, bytes | str], dense_file_bytes: float
    ) -> None:
        """What the hand-over needs, as values (``dense_file_bytes``: the dense model's state dict's
        size, what a compact file is costed against); a worker starts at once, beside the
        evaluation, unless the ledger times the model."""
        self.active, self.files, self.dense_file_bytes = active, files, dense_file_bytes
        self.job = job(self.s, outcome, data) if self.s.handover else None
        if self.later and not self.s.measure_latency:
            self._defer()

    def made(self) -> HandedOver | None:
        """The hand-over made now (None when it is off or later); then nothing else runs beside the
        ledger's timings."""
        handed = hand_over(self.job) if self.job is not None and not self.later else None
        if self.s.measure_latency:
            deferred.collect()
        return handed

    def end(self, costs: dict[str, float], handed: HandedOver | None) -> dict[str, float]:
        """Log the ledger's ``costs`` and the hand-over's accuracies, and the files (or leave them
        to the worker, which logs the compact file's cost and ends the run); returns what was logged."""
        if self.later:
            for key in deferred.COMPACT_COSTS if _compact(self.job) else ():
                costs.pop(key)
            if self.s.measure_latency:
                self._defer()
        figures = {**costs, **(handed.accuracies if handed else {})}
        self.active.log_metrics(figures)
        if not self.later:
            self.active.log_files({**self.files, **(handed.files if handed else {})})
        return figures

    def _defer(self) -> None:
        """Hand the run's hand-over, files and the compact file's cost to the worker; the run stays
        open until it ends it."""
        assert self.job is not None
        active = self.active
        active.keep_open()
        work = deferred.Deferred(self.job, self.files, self.dense_file_bytes if _compact(self.job) else None)
        deferred.defer(
            work,
            store.absolute(self.s.tracking.uri),
            active.id,
            lambda figures: log.info("run %s: %s", active.id, handover_line(figures)),
        )


def _compact(job: HandoverJob | None) -> bool:
    """Whether the hand-over makes a compact file (unstructured, with a codebook): the file the
    ledger costs an unstructured model by."""
    return job is not None and not job.structured and job.codebook is not None


def job(s: Settings, outcome: Outcome, data: Splits) -> HandoverJob:
    """What the hand-over needs, as values."""
    # A dataset built without make_splits has no raw inputs: its standardisation is the identity.
    test = in_memory(data.test)  # a streamed split: a sample of it
    raw_test = data.test_raw if data.test_raw is not None else data.raw(test.x)
    return HandoverJob(
        copy.deepcopy(outcome.shipped).cpu(),
        data.mean,
        data.std,
        data.train.example().cpu(),
        outcome.mask,
        outcome.structured,
        (raw_test, test.y.cpu()),
        s.codebook,
        s.quantize,
        data.raw(in_memory(data.val).x) if s.quantize is not None else None,
        s.tokenizer,
    )
