"""A new SQLite store: MLflow's own schema, copied from a blank store MLflow built once."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import mlflow
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient

from prunelab.tracking import store


def schema(db: Path) -> tuple[dict, list]:
    """Every table and index with its definition's lines (MLflow's migrations write a table's
    constraints in no fixed order), and the migration the store is at."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        rows = c.execute("select type, name, sql from sqlite_master where name not like 'sqlite_%'")
        definitions = {(kind, name): sorted(line.strip(" ,") for line in sql.splitlines()) for kind, name, sql in rows}
        return definitions, c.execute("select version_num from alembic_version").fetchall()


def experiments(uri: str) -> dict[str, tuple[str, str]]:
    return {e.name: (e.experiment_id, e.artifact_location) for e in MlflowClient(uri).search_experiments()}


def test_a_new_sqlite_store_is_the_store_mlflow_makes_built_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    for name in ("own", "first", "second"):
        (tmp_path / name).mkdir()
    own = tmp_path / "own" / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{own}", "./mlruns").engine.dispose()  # MLflow's own new store

    store.connect(f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}", "exp")
    blank = tmp_path / "cache" / "prunelab" / "mlflow" / f"blank-store-{mlflow.__version__}.db"
    built = blank.stat().st_mtime_ns
    second = tmp_path / "second" / "mlflow.db"
    store.connect(f"sqlite:///{second}", "exp")

    assert blank.stat().st_mtime_ns == built  # built once, then copied
    assert schema(second) == schema(own)
    # MLflow's Default experiment is made by MLflow for this store, where it would put it
    assert experiments(f"sqlite:///{second}")["Default"] == experiments(f"sqlite:///{own}")["Default"]
    assert experiments(f"sqlite:///{second}")["exp"][0] == "1"


def test_an_existing_store_is_opened_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = store.connect(uri, "exp")
    MlflowClient(uri).create_run(first, run_name="kept")
    assert store.connect(uri, "exp") == first
    assert [r.info.run_name for r in MlflowClient(uri).search_runs([first])] == ["kept"]


def test_a_relative_store_is_the_working_directorys_each_time_in_one_process(make_cfg, workdir, monkeypatch):
    """MLflow keeps a store per URI for the process's life: sqlite:///mlflow.db run from a second
    folder must still land in that folder's file (a notebook, a test session)."""
    import shutil

    from prunelab.experiment.runner import run

    for name in ("first", "second"):
        folder = workdir / name
        folder.mkdir()
        shutil.copy(workdir / "mlflow.db", folder / "mlflow.db")
        monkeypatch.chdir(folder)
        run(make_cfg("tracking.uri=sqlite:///mlflow.db", f"tracking.experiment={name}"))
    for name in ("first", "second"):
        client = MlflowClient(f"sqlite:///{workdir / name / 'mlflow.db'}")
        assert [e.name for e in client.search_experiments() if e.name != "Default"] == [name]
