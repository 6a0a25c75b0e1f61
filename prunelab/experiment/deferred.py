"""The hand-over off the critical path.

Making and checking a run's hand-over files (``torch.export``, the ONNX translation, ONNX
Runtime's and the compact file's test accuracy) and logging them takes about 2 s a LeNet-5 point,
a fifth of a short point, and needs nothing the next point needs. So when a sweep runs its points
one after another in this process, point k's hand-over is done by one worker process, on another
core, while point k+1 prunes and fine-tunes: the worker makes the files, logs them and their
accuracies to point k's run, and ends it FINISHED (FAILED, with the error, if the hand-over
fails); until then the run stays RUNNING. Whoever defers collects (:func:`collect`): before the
sweep's summary, before timing anything (the ledger's latency must not share the machine with a
hand-over), and at the end of the process.

The worker is spawned once (a fresh interpreter: no forked PyTorch thread pools), when the first
deferring run starts, and kept for the rest of the process. Tensors reach it through shared memory
(PyTorch's own pickling for multiprocessing), so the test split a sweep's points share is copied
once, not once a point. A job whose network does not pickle is done here instead.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import pickle
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

from ..deploy.handover import HandoverJob, hand_over
from ..names import Metric
from ..tracking import store

log = logging.getLogger(__name__)


# The ledger's figures of an unstructured model's file: the compact file's, made by the hand-over.
COMPACT_COSTS = (Metric.cost(Metric.PRUNED, Metric.FILE_BYTES), Metric.cost_ratio(Metric.FILE_BYTES))


@dataclass
class Deferred:
    """A run's deferred work: its hand-over ``job``, the ``folder`` of the run's files (its own in
    ``run/``, logged first, so they stay whatever the hand-over does; the hand-over's made into
    ``handover/``; removed once logged), and, for an unstructured model with a compact file to make,
    the dense model's file size: the ledger's ``cost.pruned.file_bytes`` and
    ``cost.ratio.file_bytes`` are the compact file's, logged once it is made."""

    job: HandoverJob
    folder: Path
    dense_file_bytes: float | None = None


@dataclass
class _Pending:
    future: Future
    run_id: str
    done: Callable[[dict[str, float]], None]


_worker: ProcessPoolExecutor | None = None
_pending: list[_Pending] = []


def _warm() -> None:
    """The worker's first task: its imports (PyTorch, the exporters) before any job waits on them,
    and a quick exit (the teardown's cyclic collections skipped, as ``python -m prunelab`` does)."""
    import gc

    import prunelab.deploy.handover  # noqa: F401

    atexit.register(gc.freeze)


def start() -> ProcessPoolExecutor:
    """The worker: spawned, if there is none, and let import what a hand-over needs."""
    global _worker
    if _worker is None:
        _worker = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        _worker.submit(_warm)
        atexit.register(collect)
    return _worker


def hand_over_and_log(payload: bytes | Deferred, uri: str, run_id: str) -> dict[str, float]:
    """The run's deferred work (``payload``: it, or it pickled for another process): the run's own
    files logged, then its hand-over made, checked and logged, and the run ended: FINISHED, or
    FAILED with the error. Returns the hand-over files' accuracies."""
    store.use(uri)
    run = store.Run(run_id)
    work = None
    try:
        work = payload if isinstance(payload, Deferred) else pickle.loads(payload)
        run.log_folder(work.folder / "run")
        handed = hand_over(work.job, work.folder / "handover")
        costs = {}
        if handed.compact is not None and work.dense_file_bytes:  # the ledger's size of this model
            size = len(handed.compact)
            costs = dict(zip(COMPACT_COSTS, (size, size / work.dense_file_bytes)))
        run.log_metrics({**handed.accuracies, **costs})
        run.log_folder(handed.folder)
    except Exception as e:
        if run.status() == "RUNNING":
            run.end("FAILED", e)
        raise
    finally:
        if work is not None:
            shutil.rmtree(work.folder, ignore_errors=True)
    if run.status() == "RUNNING":  # (the run's own process may have failed it meanwhile)
        run.end("FINISHED")
    return handed.accuracies


def defer(work: Deferred, uri: str, run_id: str, done: Callable[[dict[str, float]], None]) -> None:
    """Run ``run_id``'s deferred ``work`` (in the store at ``uri``), by the worker;
    ``done(accuracies)`` is called here when it is collected. Work whose network does not pickle is
    done at once, here."""
    global _worker
    try:
        # PyTorch's pickling for other processes: tensors go as shared-memory handles. Unpickled in
        # the worker's own task, so whatever fails there (a network that cannot be rebuilt in
        # another process) ends the run like any other failure of its hand-over.
        payload = bytes(ForkingPickler.dumps(work))
    except Exception as e:  # a user's network that does not pickle: not worth a failure
        log.debug("hand-over done in this process (the job does not pickle: %s)", e)
        future: Future = Future()
        try:
            future.set_result(hand_over_and_log(work, uri, run_id))
        except Exception as error:
            future.set_exception(error)
        _pending.append(_Pending(future, run_id, done))
        return
    try:
        submitted = start().submit(hand_over_and_log, payload, uri, run_id)
    except BrokenProcessPool:  # the worker died with an earlier job: a new one for this one
        _worker = None
        submitted = start().submit(hand_over_and_log, payload, uri, run_id)
    _pending.append(_Pending(submitted, run_id, done))


def pending() -> int:
    """Hand-overs not collected yet."""
    return len(_pending)


def collect() -> None:
    """Wait for every deferred hand-over, in the order they were deferred, and report it. A worker
    that died leaves its run to be ended here, FAILED."""
    while _pending:
        job = _pending.pop(0)
        try:
            accuracies = job.future.result()
        except Exception as e:
            log.error("run %s: the hand-over failed: %s", job.run_id, e)
            if store.Run(job.run_id).status() == "RUNNING":  # the worker died before it could say so
                store.Run(job.run_id).end("FAILED", e)
            continue
        job.done(accuracies)
