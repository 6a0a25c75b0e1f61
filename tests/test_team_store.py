"""The team set-up: a real MLflow tracking server backed by PostgreSQL, both started here on
127.0.0.1, with a single run and a sweep logging to it over HTTP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import psutil
import pytest
from mlflow.tracking import MlflowClient

from prunelab.names import Tag
from prunelab.tracking.team_server import postgres_bin, team_server

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def postgresql_installed():
    # A skip here fails CI (PRUNELAB_NO_SKIPS=1, tests/conftest.py): .ci/run installs PostgreSQL.
    if postgres_bin() is None:
        pytest.skip("PostgreSQL's server programs are not installed (Debian: postgresql)")
    pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with team_server(tmp_path_factory.mktemp("team")) as team:
        yield team.uri


def test_runs_and_sweeps_log_to_a_server_on_postgresql(cli, mlflow_server):
    single = cli("method=structured", "ratio=0.5", f"tracking.uri={mlflow_server}", "tracking.experiment=team")
    assert single.returncode == 0, single.stderr[-3000:]
    sweep = cli("-m", "ratio=0.3,0.7", f"tracking.uri={mlflow_server}", "tracking.experiment=team")
    assert sweep.returncode == 0, sweep.stderr[-3000:]

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("team")
    found = client.search_runs([exp.experiment_id])
    roles = sorted(r.data.tags[Tag.ROLE] for r in found)
    assert roles == ["dense", "pruned", "pruned", "pruned", "sweep"]
    assert all(r.info.status == "FINISHED" for r in found)
    parent = next(r for r in found if r.data.tags[Tag.ROLE] == "sweep")
    # artifacts went through the server to its artifact store
    assert "accuracy_vs_sparsity.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_the_team_server_helper_prints_the_uri_and_stops_both_servers(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunelab.tracking.team_server", "--dir", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the server answers
        uri = re.search(r"(http://127\.0\.0\.1:\d+)", line).group(1)
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
            assert r.status == 200
        assert MlflowClient(uri).search_experiments()  # a working store behind it
        started = psutil.Process(proc.pid).children(recursive=True)  # PostgreSQL, the MLflow server, ...
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "postgres" in names
        assert "mlflow" in names
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{uri}/health", timeout=5)
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # nothing left
