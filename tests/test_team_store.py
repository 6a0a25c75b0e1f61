"""The team set-up: a real MLflow tracking server backed by PostgreSQL, both started here on
127.0.0.1, with a single run and a sweep logging to it over HTTP."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None) if Path("/usr/lib/postgresql").is_dir() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries are not installed (Debian: postgresql)")
    pytest.importorskip("psycopg")
    base = tmp_path_factory.mktemp("team")
    # pytest's temporary folders are private to root; the postgres user needs its own.
    pgdata = Path(tempfile.mkdtemp(prefix="prunelab-pgdata-"))
    if os.geteuid() == 0:
        shutil.chown(pgdata, "postgres", "postgres")
    subprocess.run(as_postgres([str(PG_BIN / "initdb"), "-D", str(pgdata), "-U", "mlflow",
                                "--auth=trust"]), check=True, capture_output=True)
    pg_port = free_port()
    postgres = subprocess.Popen(as_postgres([str(PG_BIN / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1",
                                             "-p", str(pg_port), "-k", str(pgdata)]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        wait_for(lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(pg_port)],
                                        capture_output=True).returncode == 0, 60, "PostgreSQL")
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "mlflow",
                        "mlflow"], check=True)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"postgresql+psycopg://mlflow@127.0.0.1:{pg_port}/mlflow",
             "--artifacts-destination", str(base / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base)
        url = f"http://127.0.0.1:{port}"

        def healthy():
            try:
                return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(healthy, 120, "the MLflow server")
        yield url
    finally:
        for proc in (server, postgres):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(pgdata, ignore_errors=True)


def test_runs_and_sweeps_log_to_a_server_on_postgresql(cli, mlflow_server):
    single = cli("method=structured", "ratio=0.5", f"tracking.uri={mlflow_server}", "tracking.experiment=team")
    assert single.returncode == 0, single.stderr[-3000:]
    sweep = cli("-m", "ratio=0.3,0.7", f"tracking.uri={mlflow_server}", "tracking.experiment=team")
    assert sweep.returncode == 0, sweep.stderr[-3000:]

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("team")
    found = client.search_runs([exp.experiment_id])
    roles = sorted(r.data.tags["prunelab.role"] for r in found)
    assert roles == ["dense", "pruned", "pruned", "pruned", "sweep"]
    assert all(r.info.status == "FINISHED" for r in found)
    parent = next(r for r in found if r.data.tags["prunelab.role"] == "sweep")
    # artifacts went through the server to its artifact store
    assert "accuracy_vs_sparsity.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
