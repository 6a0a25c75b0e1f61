"""MLflow: the store, the experiment, and what a run records.

Runs are always opened with ``with`` (a crash ends them FAILED, Ctrl-C / SIGTERM KILLED, never
RUNNING), artifacts are written to a temporary folder and then logged, never to the working
directory. A process killed outright (SIGKILL, the OOM killer) cannot end its run: every run
carries its process (host, pid, start time), and the next run of the same key ends such a run
KILLED once its process is gone (:func:`end_dead_runs`); a run whose process lives is never
touched.

Everything here takes values (a URI, names, tags, metrics), never the config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.entities import Metric as MlflowMetric
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from ..errors import UserError
from ..names import Role, Tag
from ..paths import cache_dir
from ..redact import redact

log = logging.getLogger(__name__)


class TrackingError(UserError, RuntimeError):
    """The MLflow store cannot be used: unreachable, malformed, or not a store."""


SQLITE_HEADER = b"SQLite format 3\x00"
PROBE_TIMEOUT_S = 5.0
# What MLflow's tracking stores accept ("" is a plain folder path).
STORE_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check_store(uri: str) -> None:
    """Fail fast, in one sentence, on a store MLflow would retry for minutes or half-write:
    a server that does not answer, a SQLite path that is not a database, a scheme MLflow lacks."""
    parts = urlsplit(uri)
    if parts.scheme.split("+")[0] not in STORE_SCHEMES:  # postgresql+psycopg: a driver after "+"
        raise TrackingError(
            f"tracking.uri={redact(uri)}: unknown scheme {parts.scheme!r} (expected "
            "sqlite:///FILE, http(s)://HOST:PORT, a database URI or a folder)"
        )
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise TrackingError(f"tracking.uri={redact(uri)} names no host")
        # The health endpoint needs no credentials; urllib refuses user:password@ in a URL.
        port = f":{parts.port}" if parts.port else ""
        probe = urlunsplit((parts.scheme, f"{parts.hostname}{port}", parts.path.rstrip("/") + "/health", "", ""))
        try:
            urllib.request.urlopen(probe, timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # something answered: MLflow's own errors say more than a guess here
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"cannot reach the MLflow server at {redact(uri)}: {reason}") from None
    elif parts.scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if path is not None and path.is_file() and path.stat().st_size > 0:
            _check_sqlite_store(path, uri)


def _check_sqlite_store(path: Path, uri: str) -> None:
    """An existing file must be an MLflow SQLite store; looked at read-only, so a damaged or
    foreign database is refused before MLflow writes a byte into it."""
    advice = "move it away or point tracking.uri at another file"
    with open(path, "rb") as f:
        if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise TrackingError(f"{path} is not an SQLite database (tracking.uri={redact(uri)}): {advice}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise TrackingError(f"{path} is a damaged SQLite database ({e}): {advice}") from None
    if tables and "experiments" not in tables:
        raise TrackingError(f"{path} is an SQLite database but not an MLflow store: {advice}")


def connect(uri: str, experiment: str) -> str:
    """Point MLflow at ``uri`` and return the id of ``experiment``, creating it if needed
    (tolerating another process creating it at the same moment). Raises :class:`TrackingError`
    in one sentence when the store cannot be used."""
    for noisy in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    check_store(uri)
    _start_sqlite_store(uri)
    # Absolute: MLflow keeps one store per URI for the life of the process, so a relative
    # sqlite:///mlflow.db would stay the first working directory's file in a process that runs
    # again from another (a notebook, a test session).
    mlflow.set_tracking_uri(absolute(uri))
    try:
        return _experiment_id(MlflowClient(), experiment)
    except MlflowException as e:
        raise TrackingError(f"MLflow store {redact(uri)}: {_first_line(e)}") from None
    except SQLAlchemyError as e:
        raise TrackingError(
            f"MLflow store {redact(uri)} is damaged or unreadable: {_first_line(getattr(e, 'orig', None) or e)}"
        ) from None


def _start_sqlite_store(uri: str) -> None:
    """A new SQLite store starts as a copy of a blank one. MLflow builds a store's schema by
    replaying every migration it ever shipped, about 1.2 s a new store (a sweep, a study folder, a
    test); the blank is built that way once per MLflow version, in the user cache, with no
    experiment: MLflow adds its Default experiment on opening the copy, with this store's artifact
    location. Anything unusual (a URI with options, a missing folder, a file system without hard
    links) is left to MLflow."""
    path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") and "?" not in uri else None
    if path is None or path.exists() or not path.parent.is_dir():
        return
    blank = cache_dir() / "mlflow" / f"blank-store-{mlflow.__version__}.db"
    try:
        if not blank.is_file():
            _make_blank_store(blank)
        copy = path.with_name(f".{path.name}.{os.getpid()}.new")
        shutil.copyfile(blank, copy)
        try:
            os.link(copy, path)  # never over a store another process started meanwhile
        except FileExistsError:
            pass
        finally:
            copy.unlink()
    except OSError as e:
        log.debug("new store %s left to MLflow: %s", path, e)


def _make_blank_store(blank: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    blank.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=blank.parent) as tmp:
        db = Path(tmp) / "blank.db"
        SqlAlchemyStore(f"sqlite:///{db}", (Path(tmp) / "artifacts").as_uri()).engine.dispose()
        with contextlib.closing(sqlite3.connect(db)) as made:
            made.execute("delete from experiments")  # MLflow's Default: remade per store
            made.commit()
        os.replace(db, blank)


def absolute(uri: str) -> str:
    """``uri`` with a relative SQLite or folder path made absolute: the same store from another
    process, whatever its working directory (a deferred hand-over's worker)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    scheme = urlsplit(uri).scheme
    if scheme == "" or (scheme == "file" and not uri.startswith("file:///")):
        return str(Path(uri.removeprefix("file:")).resolve())
    return uri


def use(uri: str) -> None:
    """Point this process's MLflow at ``uri`` (a store :func:`connect` has checked already)."""
    mlflow.set_tracking_uri(absolute(uri))


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(getattr(error, "message", None) or error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _experiment_id(client: MlflowClient, experiment: str) -> str:
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


def _where(tags: dict[str, str], status: str) -> str:
    return " and ".join([*(f"tags.`{k}` = '{v}'" for k, v in tags.items()), f"attributes.status = '{status}'"])


def finished_run(experiment_id: str, tags: dict[str, str]):
    """The newest FINISHED run carrying all ``tags``."""
    runs = MlflowClient().search_runs(
        [experiment_id], _where(tags, "FINISHED"), max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None


def add_tags(run_id: str, tags: dict[str, str]) -> None:
    """Tag an existing run (e.g. an earlier run a sweep reuses as one of its points), in one call."""
    if tags:
        MlflowClient().log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


# --- runs whose process died --------------------------------------------------------------------


def _started(pid: int) -> str | None:
    """When process ``pid`` started (a stamp that tells it from a later process with the same
    pid), or None if there is no such process."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def process_tags() -> dict[str, str]:
    """The tags naming this process: its host, pid and start time."""
    return {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid()), Tag.PID_STARTED: _started(os.getpid()) or ""}


def _dead(run) -> bool:
    """Whether a RUNNING run's process is gone: known only on its own host, from its tags."""
    tags = run.data.tags
    if tags.get(Tag.HOST) != socket.gethostname() or not tags.get(Tag.PID, "").isdigit():
        return False  # another machine's run, or one from before these tags: not ours to judge
    return _started(int(tags[Tag.PID])) != tags.get(Tag.PID_STARTED)


def end_dead_runs(experiment_id: str, tags: dict[str, str]) -> list[str]:
    """End KILLED every RUNNING run carrying ``tags`` whose process is gone (SIGKILL, the OOM
    killer, a power cut: nothing could end it); returns their ids. A run whose process is alive
    (another process running the same key right now) is left alone."""
    client, ended = MlflowClient(), []
    for run in client.search_runs([experiment_id], _where(tags, "RUNNING"), max_results=1000):
        if _dead(run):
            client.set_tag(run.info.run_id, Tag.ERROR, "its process died (killed outright: SIGKILL or out of memory)")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            ended.append(run.info.run_id)
            log.warning("run %s of this key was left RUNNING by a process that died: ended KILLED", run.info.run_id)
    return ended


class Run:
    """One MLflow run, logged to by its id: the stages are handed the run they record into (there
    is no global "active run"), so a run can also be finished later, from elsewhere (a deferred
    hand-over, ``prunelab.experiment.deferred``)."""

    records = True  # a run that records (a torchrun rank other than 0 is given one that does not)

    def __init__(self, run_id: str, client: MlflowClient | None = None):
        self.id, self.client = run_id, client or MlflowClient()
        self.open = False  # kept open past its ``with`` block: whoever keeps it ends it

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        stamp = int(time.time() * 1000)
        values = [MlflowMetric(k, float(v), stamp, step or 0) for k, v in metrics.items()]
        for i in range(0, len(values), 1000):  # MLflow's batch limit
            self.client.log_batch(self.id, metrics=values[i : i + 1000])

    def log_params(self, params: dict[str, str]) -> None:
        values = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(values), 100):  # MLflow's batch limit
            self.client.log_batch(self.id, params=values[i : i + 100])

    def log_files(self, files: Mapping[str, bytes | str]) -> None:
        """Log ``{relative path: content}`` as artifacts, via a temporary folder."""
        with tempfile.TemporaryDirectory(prefix="prunelab-") as tmp:
            for rel, content in files.items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content.encode() if isinstance(content, str) else content)
            self.log_folder(Path(tmp))

    def log_folder(self, folder: Path, under: str | None = None) -> None:
        """Log the files in ``folder`` as artifacts (under the artifact path ``under``), copied from
        disk, never read into memory. A full disk (or any other write error) is a
        :class:`TrackingError` naming where it wrote."""
        try:
            self.client.log_artifacts(self.id, str(folder), under)
        except OSError as e:
            where = redact(self.client.get_run(self.id).info.artifact_uri or "")
            raise TrackingError(f"cannot write the run's artifacts to {where}: {e.strerror or e}") from None

    def set_tags(self, tags: dict[str, str]) -> None:
        add_tags(self.id, tags)

    def status(self) -> str:
        return self.client.get_run(self.id).info.status

    def keep_open(self) -> None:
        """Leave the run RUNNING when its ``with`` block ends: the caller ends it (:meth:`end`)."""
        self.open = True

    def end(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """End the run ``status`` (FINISHED, FAILED, KILLED), ``error`` its reason."""
        if error is not None:
            self.set_tags({Tag.ERROR: describe(error)})
        self.client.set_terminated(self.id, status)


@contextlib.contextmanager
def run(experiment_id: str, name: str, tags: dict[str, str], parent_run_id: str | None = None) -> Iterator[Run]:
    """A new run, tagged with this process, that ends FINISHED (unless :meth:`Run.keep_open` was
    called), FAILED (an exception, with the error as a tag) or KILLED (Ctrl-C / SIGTERM)."""
    client = MlflowClient()
    tags = {**tags, **process_tags(), **({Tag.PARENT: parent_run_id} if parent_run_id else {})}
    active = Run(client.create_run(experiment_id, run_name=name, tags=tags).info.run_id, client)
    try:
        yield active
    except KeyboardInterrupt:
        active.end(RunStatus.to_string(RunStatus.KILLED))
        raise
    except Exception as e:
        active.end(RunStatus.to_string(RunStatus.FAILED), e)
        raise
    if not active.open:
        active.end(RunStatus.to_string(RunStatus.FINISHED))


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:4000]


def record_failure(
    experiment_id: str, name: str, tags: dict[str, str], parent_run_id: str | None, error: BaseException
) -> None:
    """A FAILED run (KILLED for Ctrl-C / SIGTERM) for a point that broke before its own run was
    opened (data, dense training), so a sweep shows every point that did not finish."""
    client = MlflowClient()
    killed = isinstance(error, KeyboardInterrupt)
    tags = {**tags, Tag.ERROR: "interrupted" if killed else describe(error)}
    if parent_run_id:
        tags[Tag.PARENT] = parent_run_id
    created = client.create_run(experiment_id, run_name=name, tags=tags)
    client.set_terminated(created.info.run_id, RunStatus.to_string(RunStatus.KILLED if killed else RunStatus.FAILED))


def reuse_finished(experiment_id: str, key: str, extra_tags: dict[str, str]):
    """The FINISHED run holding this run key, tagged as one of the current sweep's points; None
    if there is none (the skip policy: a finished point is never run twice unless forced)."""
    done = finished_run(experiment_id, {Tag.ROLE: Role.PRUNED, Tag.RUN_KEY: key})
    if done is not None:
        add_tags(done.info.run_id, extra_tags)
    return done


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow prints a server's run URL as it is, credentials included; prunelab prints its own link
# (masked, opening the runs in "Model training" mode).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
