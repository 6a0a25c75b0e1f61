"""MLflow: the store, the experiment, and what a run records.

Runs are always opened with ``with`` (a crash ends them FAILED, Ctrl-C / SIGTERM KILLED, never
RUNNING), artifacts are written to a temporary folder and then logged, never to the working
directory.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Tag names (the run key is what resume / skip logic searches for).
TAG_ROLE, TAG_RUN_KEY, TAG_DENSE_KEY = "prunelab.role", "prunelab.run_key", "prunelab.dense_key"
TAG_ERROR = "prunelab.error"
TAG_NOTE = "mlflow.note.content"  # Markdown shown on the run's overview page in the MLflow UI


def connect(uri: str, experiment: str) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment``, creating it if needed
    (tolerating another process creating it at the same moment)."""
    for noisy in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            return client.create_experiment(experiment)
        except MlflowException:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def finished_run(experiment_id: str, **tags: str):
    """The newest FINISHED run carrying all ``tags`` (``role="dense"`` means ``prunelab.role``)."""
    where = " and ".join(f"tags.`prunelab.{k}` = '{v}'" for k, v in tags.items())
    runs = MlflowClient().search_runs(
        [experiment_id], f"{where} and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as ``{"train.lr": "0.002", ...}`` (MLflow params are strings)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return {k: v for k, v in out.items() if not k.endswith("._partial_")}


def _git_commit() -> str | None:
    try:
        top = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_tags() -> dict[str, str]:
    """Library versions and the git commit, looked up once per process (every run carries them)."""
    return dict(_environment_tags())


@functools.cache
def _environment_tags() -> dict[str, str]:
    tags = {}
    for package in ("prunelab", "torch", "mlflow", "hydra-core", "torch-pruning", "numpy"):
        try:
            tags[f"prunelab.version.{package}"] = version(package)
        except PackageNotFoundError:
            pass
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


@contextlib.contextmanager
def run(experiment_id: str, name: str, tags: dict[str, str], parent_run_id: str | None = None
        ) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED, FAILED (exception, with the error as a tag) or KILLED
    (Ctrl-C / SIGTERM)."""
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags,
                          parent_run_id=parent_run_id) as active:
        try:
            yield active
        except KeyboardInterrupt:
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise
        except Exception as e:
            mlflow.set_tag(TAG_ERROR, describe(e))
            raise


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:4000]


def record_failure(experiment_id: str, name: str, tags: dict[str, str], parent_run_id: str | None,
                   error: BaseException) -> None:
    """A FAILED run for a point that broke before its own run was opened (data, dense training),
    so a sweep shows every point that did not finish."""
    client = MlflowClient()
    tags = {**tags, TAG_ERROR: describe(error)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    created = client.create_run(experiment_id, run_name=name, tags=tags)
    client.set_terminated(created.info.run_id, RunStatus.to_string(RunStatus.FAILED))


def log_artifact_files(files: dict[str, bytes | str]) -> None:
    """Log ``{relative path: content}`` as artifacts of the active run, via a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="prunelab-") as tmp:
        for rel, content in files.items():
            path = Path(tmp, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        mlflow.log_artifacts(tmp)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def default_experiment_name(cfg: DictConfig) -> str:
    return f"{target_name(cfg.model)}-{target_name(cfg.dataset)}"


def target_name(node) -> str:
    """``prunelab.models.lenet5`` -> ``lenet5``: the name a group option is logged under."""
    return str(node["_target_"]).rsplit(".", 1)[-1]


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
