"""Where a run is recorded, as an object the stages are given: MLflow (:class:`Recorder`), or
nothing (:class:`Silent`, a torchrun rank other than 0, which runs the same stages as rank 0).

The recorder owns the run's identity in the store: it ends the runs of its key that a dead
process left RUNNING, finds a finished run of the same config, records a point that broke before
its run opened, and opens the dense run and the pruned run.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

from torch import nn

from ..data.files import located
from ..data.splits import Splits
from ..names import Artifact, Metric, Tag
from ..tracking import record, store
from ..tracking.ui import run_link
from .dense import DenseResult, DenseRun
from .keys import run_tags
from .report import report
from .settings import Settings
from .train import EpochResult, Recipe, train

log = logging.getLogger(__name__)


class Recorder:
    """The run in MLflow: in ``s.experiment`` of ``s.tracking.uri``, nested under ``parent_run_id``
    in a sweep, ``sweep_tags`` marking it (and a reused earlier run of the same config, and its
    dense model) as one of the sweep's points."""

    records = True

    def __init__(self, s: Settings, parent_run_id: str | None = None, sweep_tags: dict[str, str] | None = None):
        self.s, self.parent_run_id, self.sweep_tags = s, parent_run_id, dict(sweep_tags or {})
        self.experiment_id = store.connect(s.tracking.uri, s.experiment)
        self.tags = {**run_tags(s.key, s.names), **self.sweep_tags}

    def finished(self) -> dict[str, Any] | None:
        """End the runs of this key that a dead process left RUNNING; return the metrics of the run
        that already holds this config, if there is one (and it is not forced)."""
        s = self.s
        for key in (s.key.run, s.key.dense):
            store.end_dead_runs(self.experiment_id, {Tag.RUN_KEY: key})
        if s.force:
            return None
        done = store.reuse_finished(self.experiment_id, s.key.run, self.sweep_tags)
        if done is None:
            return None
        log.info(
            "skipped: run %s already holds this exact config (key %s); force=true reruns it\n  MLflow UI: %s",
            done.info.run_id,
            s.key.run,
            run_link(s.tracking.uri, s.tracking.ui, self.experiment_id, done.info.run_id),
        )
        return {**done.data.metrics, "run_id": done.info.run_id, "skipped": True}

    @contextlib.contextmanager
    def point(self) -> Iterator[None]:
        """The stages before the run opens: a point that breaks (or is stopped) there is recorded
        FAILED (KILLED), so a sweep shows every point that did not finish."""
        try:
            yield
        except (Exception, KeyboardInterrupt) as e:
            store.record_failure(self.experiment_id, self.s.run_name, self.tags, self.parent_run_id, e)
            raise

    def dense_run(self) -> DenseRun:
        """The dense model's run (the ratio-0 point of every curve)."""
        s = self.s
        return DenseRun(self.experiment_id, s.key, s.dense_params, self.parent_run_id, self.sweep_tags)

    @contextlib.contextmanager
    def run(self) -> Iterator[store.Run]:
        """The pruned run, with what re-executes it logged as it opens (a run that fails later
        keeps it): its params, its resolved config, the environment it runs in, and on its page
        the command that reproduces it. Under a MACs budget the ratio is searched (metric
        budget.ratio; it differs by seed, so a point is the budget, not a ratio)."""
        s = self.s
        tags = {**self.tags, **record.tags()}
        with store.run(self.experiment_id, s.run_name, tags, self.parent_run_id) as active:
            active.set_tags({Tag.NOTE: record.note(active.id, s.tracking.uri)})
            active.log_params({**s.params, **({"ratio": "budget"} if s.budget_macs is not None else {})})
            active.log_files({Artifact.CONFIG: s.config_yaml, **record.files(s.device, s.key.contents, located())})
            yield active

    def report(self, metrics: dict[str, Any], dense: DenseResult) -> None:
        """The run's summary in the log, with its MLflow page."""
        s = self.s
        origin = (
            "from cache" if dense.from_cache else ("trained" if s.dense_recipe.epochs else "evaluated, not trained")
        )
        report(s.names, s.ratio, s.budget_macs, metrics, origin, s.tracking.uri, s.tracking.ui, self.experiment_id)


class Unrecorded:
    """A run that records nothing."""

    id = ""
    records = False

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: dict[str, str]) -> None:
        pass

    def log_files(self, files: Any) -> None:
        pass

    def log_folder(self, folder: Any, under: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


class _SilentDense:
    """The dense stage of a process that records nothing: it trains along, and logs nothing."""

    def train(
        self, model: nn.Module, data: Splits, recipe: Recipe, seed: int, ranks: Any = None
    ) -> tuple[list[EpochResult], dict[str, float]]:
        history = train(model, data, recipe, seed, desc="dense", ranks=ranks)
        return history, {Metric.VAL_ACCURACY: math.nan, Metric.TEST_ACCURACY: math.nan}

    def log_cached(self, dense: DenseResult, model: nn.Module, data: Splits, lock_dir: Any) -> None:
        pass


class Silent:
    """The recorder of a process that records nothing (a rank other than 0): it finds no finished
    run, records no failure, opens runs that log nothing and reports nothing."""

    records = False

    def __init__(self, s: Settings):
        self.s = s

    def finished(self) -> dict[str, Any] | None:
        return None

    def point(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def dense_run(self) -> _SilentDense:
        return _SilentDense()

    @contextlib.contextmanager
    def run(self) -> Iterator[Unrecorded]:
        yield Unrecorded()

    def report(self, metrics: dict[str, Any], dense: DenseResult) -> None:
        pass
