"""Local servers prunelab starts (``mlflow server`` / ``mlflow ui``, PostgreSQL): each in its own
process group, so stopping it stops everything it started; its output in a log file (a pipe
nobody reads fills up and stalls a long-lived server); waited for until it answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server exited or did not answer in time (the message names its log)."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server(subprocess.Popen[bytes]):
    """A server's process, and the file its output goes to (an error names it)."""

    log: Path


def start(argv: list[str], log: Path, **kwargs) -> Server:
    with open(log, "ab") as out:
        proc = Server(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    proc.log = log
    return proc


def stop(proc: subprocess.Popen | None, grace: float = 30) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_until(check: Callable[[], bool], proc: Server, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = proc.log.read_text(errors="replace").strip().splitlines()
            raise ServerError(
                f"{what} exited ({proc.returncode}): {lines[-1] if lines else 'no output'} (log: {proc.log})"
            )
        if check():
            return
        time.sleep(0.3)
    raise ServerError(f"{what} did not answer within {timeout:.0f} s (log: {proc.log})")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(
    store_uri: str,
    port: int | None = None,
    host: str = HOST,
    artifacts: str | os.PathLike | None = None,
    log: Path | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float = 120,
) -> Iterator[str]:
    """``mlflow server`` over ``store_uri`` (its UI included) with job execution and telemetry
    off; yields its base URL once ``/health`` answers, stops it at exit. ``artifacts``: where
    artifacts logged through it go (MLflow's default: ./mlartifacts of ``cwd``)."""
    port = port or free_port(host)
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts is not None:
        argv += ["--artifacts-destination", str(artifacts)]
    if log is None:
        fd, name = tempfile.mkstemp(prefix="prunelab-mlflow-", suffix=".log")
        os.close(fd)
        log = Path(name)
    proc = start(argv, log, env=env, cwd=cwd)
    base = f"http://{host}:{port}"
    try:
        wait_until(lambda: answers(f"{base}/health"), proc, timeout, f"the MLflow server for {store_uri}")
        yield base
    finally:
        stop(proc, grace=10)
