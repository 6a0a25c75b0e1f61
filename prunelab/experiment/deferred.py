"""The hand-over off the critical path.

Making and checking a run's hand-over files (``torch.export``, the ONNX translation, ONNX
Runtime's and the compact file's test accuracy: about 2 s a LeNet-5 point, a fifth of a short
point) needs nothing the next point needs. So when a sweep runs its points one after another in
this process, point k's files are made in one worker process, on another core, while point k+1
prunes and fine-tunes; point k's run stays RUNNING until its files and their accuracies are
logged, then ends FINISHED (FAILED, with the error, if the hand-over fails). Whoever defers
collects: :func:`collect` before the sweep's summary and before timing anything (the ledger's
latency must not share the machine with a hand-over), and at the end of the process.

The worker is spawned once (a fresh interpreter: no forked PyTorch thread pools), on the first
deferred job, and kept for the rest of the process. A job that cannot be sent to it (a network
that does not pickle) is done here instead.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import pickle
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from ..deploy.handover import HandedOver, HandoverJob, hand_over

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    future: Future
    done: Callable[[HandedOver], None]
    failed: Callable[[BaseException], None]


_worker: ProcessPoolExecutor | None = None
_pending: list[_Pending] = []


def _warm() -> None:
    """Run in the worker first: its imports (PyTorch, the exporters) before any job waits on them."""
    import prunelab.deploy.handover  # noqa: F401


def start() -> None:
    """Spawn the worker, if there is none, and let it import what a hand-over needs."""
    global _worker
    if _worker is None:
        _worker = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        _worker.submit(_warm)
        atexit.register(collect)


def defer(job: HandoverJob, done: Callable[[HandedOver], None], failed: Callable[[BaseException], None]) -> None:
    """Make ``job``'s files in the worker; ``done(result)`` or ``failed(error)`` is called here
    when they are collected. A job that does not pickle is done at once, here."""
    try:
        payload = pickle.dumps(job)
    except Exception as e:  # a user's network that does not pickle: not worth a failure
        log.debug("hand-over done in this process (the job does not pickle: %s)", e)
        _finish(_now(job), done, failed)
        return
    start()
    assert _worker is not None
    _pending.append(_Pending(_worker.submit(_from_bytes, payload), done, failed))


def _from_bytes(payload: bytes) -> HandedOver:
    return hand_over(pickle.loads(payload))


def _now(job: HandoverJob) -> Future:
    future: Future = Future()
    try:
        future.set_result(hand_over(job))
    except Exception as e:
        future.set_exception(e)
    return future


def _finish(future: Future, done: Callable[[HandedOver], None], failed: Callable[[BaseException], None]) -> None:
    try:
        result = future.result()
    except Exception as e:
        log.error("hand-over failed: %s", e)
        failed(e)
        return
    done(result)


def pending() -> int:
    """Hand-overs not collected yet."""
    return len(_pending)


def collect() -> None:
    """Wait for every deferred hand-over and finish its run, in the order they were deferred."""
    while _pending:
        job = _pending.pop(0)
        _finish(job.future, job.done, job.failed)
