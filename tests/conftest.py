"""Shared fixtures: the real config composed and shrunk (synthetic data, 1 epoch, everything
written under tmp_path), and a runner for the real command line: in this process through its
own entry point (``prunelab.cli.main``, Hydra and all), or, where only a process shows it (signals,
a killed worker, the exit of the interpreter), in a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from prunelab.config import compose
from prunelab.names import Tag

TESTS = Path(__file__).resolve().parent

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs a worker per core: a thread each, and for its children
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def tiny_overrides(tmp: Path) -> list[str]:
    """Make any experiment run in seconds and write only below ``tmp``."""
    return [
        "dataset=synthetic",
        "train.epochs=1",
        "finetune.epochs=1",
        "train.batch_size=64",
        "measure_latency=false",  # timing is covered by test_compression; it costs seconds a run
        "handover=false",  # export, ONNX and the compact file: about 6 s a run; the tests of it ask for it
        f"cache_dir={tmp / 'cache'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
    ]


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created once (creating one takes seconds)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{path}")
    MlflowClient().search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path, empty_store) -> Path:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def make_cfg(workdir):
    """``make_cfg("method=structured", ...)`` -> the composed, shrunk config."""

    def make(*overrides: str):
        return compose(*tiny_overrides(workdir), *overrides)

    return make


def cli_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    pythonpath = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    env.update(XDG_CACHE_HOME=str(workdir / "xdg-cache"), PYTHONPATH=pythonpath, HYDRA_FULL_ERROR="0")
    env.pop("PRUNELAB_DATA", None)
    return env


def in_process(argv: list[str], workdir: Path, monkeypatch) -> subprocess.CompletedProcess:
    """``python -m prunelab ARGV`` run by its entry point in this process, from ``workdir``, with
    the environment :func:`cli_env` gives a subprocess: its exit status and output."""
    import logging
    import signal

    from hydra.core.global_hydra import GlobalHydra

    from prunelab.cli import main

    out, err, status = io.StringIO(), io.StringIO(), 0
    with monkeypatch.context() as m:
        m.chdir(workdir)
        m.setattr(sys, "argv", ["prunelab", *argv])
        for key, value in cli_env(workdir).items():
            if os.environ.get(key) != value:
                m.setenv(key, value)
        m.delenv("PRUNELAB_DATA", raising=False)
        handler, root, ours = signal.getsignal(signal.SIGTERM), logging.getLogger(), logging.getLogger("prunelab")
        handlers, level, our_level = root.handlers[:], root.level, ours.level  # Hydra configures logging for its run
        ours.setLevel(logging.NOTSET)  # as in a fresh process, whatever an earlier test set
        GlobalHydra.instance().clear()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main()
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            GlobalHydra.instance().clear()
            signal.signal(signal.SIGTERM, handler)
            for h in root.handlers[:]:
                h.close()
                root.removeHandler(h)
            for h in handlers:
                root.addHandler(h)
            root.setLevel(level)
            ours.setLevel(our_level)
    return subprocess.CompletedProcess(["prunelab", *argv], status, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(workdir, monkeypatch):
    """Run ``python -m prunelab ARGS`` (tiny overrides first) from ``workdir``: in this process
    through the entry point, or (``process=True``, or a ``prefix``) in a subprocess."""

    def run(
        *args: str, tiny: bool = True, timeout: float = 300, prefix: list[str] = (), process: bool = False
    ) -> subprocess.CompletedProcess:
        """``prefix``: a command that runs the rest (e.g. in a private mount namespace)."""
        flags = [a for a in args if a.startswith("-")]  # argparse wants -m before the overrides
        overrides = [a for a in args if not a.startswith("-")]
        argv = [*flags, *(tiny_overrides(workdir) if tiny else []), *overrides]
        if not (process or prefix):
            return in_process(argv, workdir, monkeypatch)
        return subprocess.run(
            [*prefix, sys.executable, "-m", "prunelab", *argv],
            cwd=workdir,
            env=cli_env(workdir),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def runs(workdir: Path, role: str | None = None):
    """All runs in the test store, as MLflow Run objects (newest first)."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(ids, max_results=1000)
    return [r for r in found if role is None or r.data.tags.get(Tag.ROLE) == role]


# CI proves every behaviour: there, a skipped test fails, except those that need a CUDA device.
ALLOWED_SKIPS_IN_CI = ("test_cuda.py",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item):
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("PRUNELAB_NO_SKIPS") == "1"
        and not item.nodeid.split("::")[0].endswith(ALLOWED_SKIPS_IN_CI)
    ):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped where PRUNELAB_NO_SKIPS=1 (CI): {reason}"
