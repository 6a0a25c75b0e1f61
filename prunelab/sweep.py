"""Sweeps as studies: one MLflow parent run per ``python -m prunelab -m ...``, every point a child.

:class:`SweepCallback` (a Hydra callback, configured in conf/config.yaml) runs in the launching
process:

* ``on_multirun_start``: creates the store and the experiment(s) once, before any worker starts
  (several processes creating a SQLite schema or an experiment at once crash or misfile runs),
  then opens the parent run. A rerun of the same sweep command reuses its parent, marks children
  left RUNNING by a killed process as KILLED, and (through the run keys) redoes only what is
  missing. The parent's id is written to ``<sweep dir>/parent_run_id`` where every job, on any
  launcher, finds it (:func:`parent_run_id`).
* ``on_multirun_end``: collects the points and logs to the parent what a user compares them by:
  the curves as metric series (``accuracy_vs_sparsity/<method>-<scope>-<criterion>``, step =
  per mille, drawn by MLflow's chart view), the summary table as the run's note (its overview
  page), a tidy CSV and the figures as artifacts; ends the parent, prints its UI link, and exits
  non-zero if any point failed.

An interrupted launcher process (Ctrl-C, SIGTERM) ends the parent KILLED rather than RUNNING.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from .errors import fail
from .experiment import deferred
from .experiment.keys import choice
from .names import Metric, Role, Tag
from .redact import redact
from .tracking import record, store
from .tracking.ui import run_link

log = logging.getLogger(__name__)

PARENT_FILE = "parent_run_id"


def parent_run_id() -> str | None:
    """The parent run of the current Hydra multirun job, or None outside a sweep."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode is None or hc.mode.name != "MULTIRUN":
        return None
    path = Path(hc.sweep.dir) / PARENT_FILE
    return path.read_text().strip() if path.is_file() else None


def in_process() -> bool:
    """Whether the sweep's points run one after another in the launching process (Hydra's basic
    launcher), where the sweep's end can collect what they deferred."""
    return HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("hydra/launcher") == "basic"


def job_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def point_tags(parent: str) -> dict[str, str]:
    """The tags that file the current job's run (and a reused earlier one) under its sweep."""
    return {Tag.SWEEP_ID: parent, Tag.in_sweep(parent): "true", Tag.OVERRIDES: redact(" ".join(job_overrides()))}


def _sweep_definition(config: DictConfig) -> list[str]:
    """The sweep as the user asked for it: command-line overrides plus hydra.sweeper.params."""
    task = [str(o) for o in config.hydra.overrides.task]
    node = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(node, resolve=False) if node is not None else {}
    assert isinstance(params, dict)  # hydra.sweeper.params is a mapping of override -> values
    return sorted(task + [f"{k!s}={v}" for k, v in params.items()])


def _experiment_names(config: DictConfig, definition: list[str]) -> list[str]:
    """Every experiment the sweep's points will log to (model and dataset may be swept)."""
    if config.tracking.experiment:
        return [config.tracking.experiment]
    # The options' names, as every run of the sweep names its experiment (prunelab.experiment.keys).
    choices = {"model": [choice(config, "model")], "dataset": [choice(config, "dataset")]}
    for o in OverridesParser.create().parse_overrides(definition):
        if o.key_or_group in choices:
            values = o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
            choices[o.key_or_group] = list(values)
    return [f"{m}-{d}" for m in choices["model"] for d in choices["dataset"]]


def kill_open_points(config: DictConfig, jobs: dict[str, int]) -> list[int]:
    """After the launcher lost its workers: end this sweep's RUNNING runs KILLED (their processes
    are gone) and return the jobs (``{overrides as tagged: job index}``) whose point run was open."""
    path = Path(config.hydra.sweep.dir) / PARENT_FILE
    if not path.is_file():
        return []
    parent = path.read_text().strip()
    names = _experiment_names(config, _sweep_definition(config))
    client = MlflowClient()
    ids = [e.experiment_id for e in (client.get_experiment_by_name(n) for n in names) if e is not None]
    stale = client.search_runs(ids, f"tags.`{Tag.in_sweep(parent)}` = 'true' and attributes.status = 'RUNNING'")
    killed = []
    for run in stale:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        client.set_tag(run.info.run_id, Tag.ERROR, "its worker process died")
        if run.data.tags.get(Tag.ROLE) == Role.PRUNED and run.data.tags.get(Tag.OVERRIDES) in jobs:
            killed.append(jobs[run.data.tags[Tag.OVERRIDES]])
    return sorted(killed)


def summarise(client: MlflowClient, parent: str, experiment_ids: list[str]) -> int:
    """Log the points of sweep ``parent`` (filed in ``experiment_ids``) to the parent: their
    counts, the curves as metric series, the summary table as its note, the figures; return the
    number of points that failed."""
    # Imported here, not at the top: Hydra makes the callback for every run, and the analysis
    # (pandas, matplotlib) is only needed at a sweep's end.
    from .analysis import curve_series, figures_dir, load_runs, summary_note, write_report

    points = load_runs(experiment_ids, sweep_id=parent)
    pruned = points[points["role"] == Role.PRUNED]
    # A point counts once: its FINISHED run if it has one (a rerun after a failure), else its failure.
    finished = pruned[pruned["status"] == "FINISHED"]
    failed = pruned[pruned["status"].isin(["FAILED", "KILLED"]) & ~pruned["run_key"].isin(finished["run_key"])]
    client.log_metric(parent, Metric.SWEEP_FINISHED, len(finished))
    client.log_metric(parent, Metric.SWEEP_FAILED, len(failed))
    if len(finished):
        done = points[points["status"] == "FINISHED"]
        _log_curves(client, parent, curve_series(done))
        client.set_tag(parent, Tag.NOTE, f"{summary_note(done)}\n\n{record.note(parent, client.tracking_uri)}")
        with figures_dir() as out:
            write_report(done, out)
            client.log_artifacts(parent, str(out))
    log.info("sweep %s: %d points finished, %d failed", parent, len(finished), len(failed))
    for _, row in failed.iterrows():
        log.error("failed point [%s]: %s", row.get("overrides", ""), row.get("error", ""))
    return len(failed)


def _log_curves(client: MlflowClient, parent: str, series: dict[str, list[tuple[int, float]]]) -> None:
    # One timestamp for every point: a resumed sweep that logs the same curve again adds
    # nothing (the store drops exact duplicates of key, step, value and timestamp).
    stamp = client.get_run(parent).info.start_time
    metrics = [MlflowMetric(key, value, stamp, step) for key, points in series.items() for step, value in points]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(parent, metrics=metrics[i : i + 1000])


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.parent_id: str | None = None
        self.experiment_ids: list[str] = []
        self.tracking_uri: str | None = None  # the store the parent is in (the one _abort ends it in)

    @override
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and sweeps on; without a parent the
        # points would be orphans, so stop here with one readable line instead.
        try:
            self._open_parent(config)
        except Exception as e:
            fail(f"cannot start the sweep: {e}")

    def _open_parent(self, config: DictConfig) -> None:
        definition = _sweep_definition(config)
        names = _experiment_names(config, definition)
        self.experiment_ids = [store.connect(config.tracking.uri, n) for n in names]
        key = hashlib.sha256(json.dumps(definition).encode()).hexdigest()[:16]
        client = MlflowClient()
        self.tracking_uri = client.tracking_uri
        found = client.search_runs(
            self.experiment_ids[:1],
            f"tags.`{Tag.SWEEP_KEY}` = '{key}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if found:
            self.parent_id = found[0].info.run_id
            client.update_run(self.parent_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self._kill_stale_children(client, self.parent_id)
            log.info("resuming sweep %s (parent run %s)", key, self.parent_id)
        else:
            run = client.create_run(
                self.experiment_ids[0],
                run_name=f"sweep-{key[:8]}",
                tags={
                    Tag.SWEEP_KEY: key,
                    Tag.ROLE: Role.SWEEP,
                    Tag.SWEEP_ID: "",
                    Tag.SWEEP_DEFINITION: redact(" ".join(definition)),
                    **record.tags(),
                },
            )
            self.parent_id = run.info.run_id
            client.set_tag(self.parent_id, Tag.SWEEP_ID, self.parent_id)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(self.parent_id)
        atexit.register(self._abort)

    def _kill_stale_children(self, client: MlflowClient, parent: str) -> None:
        # This sweep is not running anywhere else (we are its launcher): RUNNING children are
        # leftovers of a killed process.
        stale = client.search_runs(
            self.experiment_ids, f"tags.`{Tag.in_sweep(parent)}` = 'true' and attributes.status = 'RUNNING'"
        )
        for run in stale:
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))

    @override
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if deferred.pending():
            # The summary's pandas and matplotlib, imported while the last point's hand-over is
            # made on the other core.
            from .analysis import write_report  # noqa: F401
        deferred.collect()  # the points' hand-overs still being made: their runs end now
        if self.parent_id is None:
            return
        client = MlflowClient()
        status = RunStatus.FAILED
        try:
            failed = summarise(client, self.parent_id, self.experiment_ids)
            status = RunStatus.FINISHED
        finally:
            # Whatever happened while summarising, the parent is never left RUNNING.
            client.set_terminated(self.parent_id, RunStatus.to_string(status))
            atexit.unregister(self._abort)  # ended: nothing is left to end at exit
        log.info(
            "sweep results in the MLflow UI: %s",
            run_link(config.tracking.uri, config.tracking.ui, self.experiment_ids[0], self.parent_id),
        )
        if failed:
            raise SystemExit(1)

    def _abort(self) -> None:
        """At interpreter exit: a parent still RUNNING means the launcher was interrupted; its
        workers are gone with it, so their open runs end KILLED too."""
        try:
            client = MlflowClient(self.tracking_uri)  # not whatever store the process points at by then
            if self.parent_id and client.get_run(self.parent_id).info.status == "RUNNING":
                self._kill_stale_children(client, self.parent_id)
                client.set_terminated(self.parent_id, RunStatus.to_string(RunStatus.KILLED))
        except Exception:  # best effort at exit; never mask the real error
            pass
