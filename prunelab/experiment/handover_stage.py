"""The hand-over stage and its one policy: when the files that ship are made.

- off (``handover=false``): no files, the run's own files logged at the end;
- now: made and checked in this process before the ledger, which costs an unstructured model by
  the compact file it made;
- later: in a sweep of one process, a worker makes, checks and logs them while the next point
  trains (:mod:`prunelab.experiment.deferred`), and ends the run; a run that quantizes hands over
  now (its ledger times the quantized model), and so does a run of several processes (nothing
  waits on a worker there). A run that times its model starts the worker only after the timings,
  which must not share the machine with a hand-over.

Every file is written to disk as it is made, in a folder of the run's own under the cache folder
(``<cache>/files/``; not the system's temporary folder, which may be memory), logged from there,
and removed once logged (by the worker, for a later hand-over; at the latest when the run's stage
object goes, for a run that failed).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from ..data.splits import Splits, in_memory
from ..deploy.handover import HandedOver, HandoverJob, formats, hand_over
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
        self.dense_file_bytes = 0.0
        self._folder: Path | None = None
        self._remove: weakref.finalize | None = None

    def files(self) -> Path:
        """The folder the run's own files are written into (``run/``; the hand-over's go to
        ``handover/`` beside it), made on first use and removed once they are logged."""
        if self._folder is None:
            where = self.s.cache / "files"
            where.mkdir(parents=True, exist_ok=True)
            self._folder = Path(tempfile.mkdtemp(prefix="run-", dir=where))
            self._remove = weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
            (self._folder / "run").mkdir()
        return self._folder / "run"

    def begin(self, active: Any, outcome: Outcome, data: Splits, dense_file_bytes: float) -> None:
        """What the hand-over needs, as values (``dense_file_bytes``: the dense model's state dict's
        size, what a compact file is costed against); a worker starts at once, beside the
        evaluation, unless the ledger times the model."""
        self.active, self.dense_file_bytes = active, dense_file_bytes
        self.job = job(self.s, outcome, data, copy_net=self.later) if self.s.handover else None
        if self.later and not self.s.measure_latency:
            self._defer()

    def made(self) -> HandedOver | None:
        """The hand-over made now (None when it is off or later); then nothing else runs beside the
        ledger's timings."""
        handed = None
        if self.job is not None and not self.later:
            handed = hand_over(self.job, self.files().parent / "handover")
            self.job = None  # (it holds the model)
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
            self.active.log_folder(self.files())
            if handed is not None:
                self.active.log_folder(handed.folder)
            assert self._remove is not None
            self._remove()
        return figures

    def _defer(self) -> None:
        """Hand the run's hand-over, files and the compact file's cost to the worker; the run stays
        open until it ends it."""
        assert self.job is not None
        active = self.active
        active.keep_open()
        folder = self.files().parent
        work = deferred.Deferred(self.job, folder, self.dense_file_bytes if _compact(self.job) else None)
        assert self._remove is not None
        self._remove.detach()  # the worker removes the folder once it has logged it
        deferred.defer(
            work,
            store.absolute(self.s.tracking.uri),
            active.id,
            lambda figures: log.info("run %s: %s", active.id, handover_line(figures)),
        )


def _compact(job: HandoverJob | None) -> bool:
    """Whether the hand-over makes a compact file (unstructured, with a codebook): the file the
    ledger costs an unstructured model by."""
    return (
        job is not None
        and not job.structured
        and job.codebook is not None
        and "compact" in formats(job.net, job.formats)
    )


def job(s: Settings, outcome: Outcome, data: Splits, copy_net: bool = False) -> HandoverJob:
    """What the hand-over needs, as values: the network that ships itself where it is on the CPU
    (its weights held once), else, or when the job goes to a worker while the caller goes on
    (``copy_net``), a CPU copy."""
    shipped = outcome.shipped
    on_cpu = all(t.device.type == "cpu" for t in (*shipped.parameters(), *shipped.buffers()))
    net = copy.deepcopy(shipped).cpu() if copy_net or not on_cpu else shipped
    # A dataset built without make_splits has no raw inputs: its standardisation is the identity.
    test = in_memory(data.test)  # a streamed split: a sample of it
    raw_test = data.test_raw if data.test_raw is not None else data.raw(test.x)
    return HandoverJob(
        net,
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
        s.handover_formats,
    )
