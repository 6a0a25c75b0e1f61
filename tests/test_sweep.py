"""Sweeps as studies: one parent run per sweep with its summary, a child per point, resumable
without duplicates, failures recorded without stopping the sweep, parallel workers on SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nbclient
import nbformat
import pytest
from conftest import cli_env, runs, tiny_overrides
from mlflow.tracking import MlflowClient

from prunelab.names import Artifact, Metric, Tag

ROOT = Path(__file__).resolve().parents[1]


def sweep_parts(workdir):
    all_runs = runs(workdir)
    by_role = lambda role: [r for r in all_runs if r.data.tags.get(Tag.ROLE) == role]
    return by_role("sweep"), by_role("pruned"), by_role("dense")


def curve_histories(client, run_id) -> dict[str, list[tuple[int, float]]]:
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("accuracy_vs_")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def test_a_sweep_is_one_parent_with_a_child_per_point(cli, workdir):
    result = cli("-m", "ratio=0.3,0.6", "method=unstructured,structured")
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,), children, (dense,) = sweep_parts(workdir)
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags[Tag.PARENT] for c in children} == {parent.info.run_id}
    assert all(Metric.TEST_ACCURACY in c.data.metrics for c in children)
    assert any(c.data.tags[Tag.OVERRIDES].endswith("ratio=0.3 method=structured") for c in children)
    assert parent.data.metrics[Metric.SWEEP_FINISHED] == 4
    artifacts = {a.path for a in MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").list_artifacts(parent.info.run_id)}
    assert {Artifact.POINTS, "accuracy_vs_sparsity.png", Artifact.SUMMARY} <= artifacts
    # the dense model was trained once for all four points, and every point is its child too
    assert (
        len(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_metric_history(dense.info.run_id, Metric.TRAIN_LOSS))
        == 1
    )
    assert dense.data.tags[Tag.in_sweep(parent.info.run_id)] == "true"

    # the curves are the parent's own metrics, one series per method x scope x criterion, each
    # starting at the dense model: step = sparsity in per mille, value = test accuracy
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    curves = curve_histories(client, parent.info.run_id)
    for method, criterion in (("unstructured", "l2"), ("structured", "l2")):
        points = sorted(
            (round(c.data.metrics[Metric.SPARSITY_PRUNABLE] * 1000), c.data.metrics[Metric.TEST_ACCURACY])
            for c in children
            if c.data.params["method"] == method
        )
        assert curves[f"accuracy_vs_sparsity/{method}-global-{criterion}"] == [
            (0, dense.data.metrics[Metric.TEST_ACCURACY]),
            *points,
        ]
        assert f"accuracy_vs_macs/{method}-global-{criterion}" in curves
    dense_accuracy = dense.data.metrics[Metric.TEST_ACCURACY]
    assert curves["accuracy_vs_sparsity/dense"] == [(0, dense_accuracy), (1000, dense_accuracy)]
    # the summary table is the parent's note: its overview page in the UI shows it
    note = parent.data.tags[Tag.NOTE]
    assert "| unstructured | global | l2 | 0.3000 |" in note
    assert "| structured | global | l2 | 0.6000 |" in note

    again = cli("-m", "ratio=0.3,0.6", "method=unstructured,structured")
    assert again.returncode == 0
    # no new runs: the same parent, every point skipped (its run reused, its metrics as they were)
    assert sorted(r.info.run_id for r in runs(workdir)) == sorted(r.info.run_id for r in (parent, dense, *children))
    assert {c.info.run_id: c.data.metrics for c in sweep_parts(workdir)[1]} == {
        c.info.run_id: c.data.metrics for c in children
    }
    assert curve_histories(client, parent.info.run_id) == curves  # logged again, not doubled


def test_a_failing_point_is_a_failed_child_and_the_sweep_goes_on(cli, workdir):
    # Structured pruning with nothing ignored would remove output classes: that point fails.
    result = cli("-m", "method=structured", "method.ignore=[classifier],[]")
    assert result.returncode != 0
    (parent,), children, _ = sweep_parts(workdir)
    statuses = Counter(c.info.status for c in children)
    assert statuses == {"FINISHED": 1, "FAILED": 1}
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "output classes" in failed.data.tags[Tag.ERROR]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics[Metric.SWEEP_FAILED] == 1


def test_each_points_hand_over_is_made_while_the_next_point_trains_and_logged_before_the_summary(cli, workdir):
    result = cli("-m", "ratio=0.3,0.6,0.9", "handover=true")
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,), children, _ = sweep_parts(workdir)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    children = sorted(children, key=lambda c: c.info.start_time)
    for child in children:
        assert child.info.status == "FINISHED"
        # the files and their own accuracies, logged when collected
        assert child.data.metrics[Metric.HANDOVER_ONNX_ACCURACY] == child.data.metrics[Metric.TEST_ACCURACY]
        assert Metric.COMPACT_ACCURACY in child.data.metrics
        files = {a.path: a.file_size for a in client.list_artifacts(child.info.run_id, "model")}
        assert {"model/model.onnx", "model/program.pt2", "model/weights.compact", Artifact.MASKED_WEIGHTS} <= set(files)
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {
            Artifact.CONFIG,
            Artifact.LAYERS,
            Artifact.PLAN,
        }
        # the ledger costs an unstructured model by its compact file, made by the deferred hand-over
        assert child.data.metrics[Metric.cost(Metric.PRUNED, Metric.FILE_BYTES)] == files["model/weights.compact"]
        assert child.data.metrics[Metric.cost_ratio(Metric.FILE_BYTES)] == pytest.approx(
            files["model/weights.compact"] / child.data.metrics[Metric.cost(Metric.DENSE, Metric.FILE_BYTES)]
        )
    # made beside the next point: a point's run ended after the next one started
    assert all(a.info.end_time > b.info.start_time for a, b in zip(children, children[1:]))
    assert parent.data.metrics[Metric.SWEEP_FINISHED] == 3  # the summary saw them all FINISHED


def test_a_deferred_hand_over_that_fails_ends_its_run_failed_and_the_sweep_non_zero(cli, workdir):
    result = cli("-m", "model._target_=exploding.StaysHome", "ratio=0.3,0.6", "handover=true")
    assert result.returncode != 0
    (parent,), children, _ = sweep_parts(workdir)
    assert [c.info.status for c in children] == ["FAILED", "FAILED"]
    assert all("cannot be rebuilt in another process" in c.data.tags[Tag.ERROR] for c in children)
    assert parent.data.metrics[Metric.SWEEP_FAILED] == 2


def test_an_interrupted_sweep_resumes_to_one_finished_run_per_point(workdir):
    args = [
        sys.executable,
        "-m",
        "prunelab",
        "-m",
        *tiny_overrides(workdir),
        "ratio=0.1,0.2,0.3,0.4,0.5,0.6",
        "finetune.epochs=3",
    ]
    proc = subprocess.Popen(
        args,
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if workdir.joinpath("mlflow.db").exists() and any(
                r.info.status == "FINISHED" for r in sweep_parts(workdir)[1]
            ):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
        proc.wait()
    done_before = [r for r in sweep_parts(workdir)[1] if r.info.status == "FINISHED"]
    assert 1 <= len(done_before) < 6

    rerun = subprocess.run(args, cwd=workdir, env=cli_env(workdir), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    (parent,), children, _ = sweep_parts(workdir)
    finished = Counter(c.data.tags[Tag.RUN_KEY] for c in children if c.info.status == "FINISHED")
    assert len(finished) == 6
    assert set(finished.values()) == {1}
    assert not any(c.info.status == "RUNNING" for c in children)
    assert parent.info.status == "FINISHED"


def test_joblib_workers_share_a_fresh_sqlite_store(cli, workdir):
    (workdir / "mlflow.db").unlink()  # a brand-new store, created by the launcher only
    result = cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "ratio=0.2,0.4,0.6,0.8",
        "tracking.experiment=parallel",
        process=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    names = {e.name for e in client.search_experiments()}
    assert "parallel" in names
    default = client.get_experiment_by_name("Default")
    if default is not None:
        assert client.search_runs([default.experiment_id]) == []
    (parent,), children, dense = sweep_parts(workdir)
    assert len(children) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    assert len(dense) == 1
    exp = client.get_experiment_by_name("parallel").experiment_id
    assert {r.info.experiment_id for r in [parent, *children, *dense]} == {exp}


def worker_pids(launcher_pid: int) -> list[int]:
    """The joblib (loky) worker processes below the launching process."""
    found = subprocess.run(["pgrep", "-f", "-P", str(launcher_pid), "LokyProcess"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


@pytest.mark.slow
def test_a_dead_sweep_worker_loses_only_its_points_and_a_rerun_completes_them(workdir):
    args = [
        sys.executable,
        "-m",
        "prunelab",
        "-m",
        *tiny_overrides(workdir),
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "ratio=0.2,0.4,0.6,0.8,0.9",
        "finetune.epochs=30",
    ]
    proc = subprocess.Popen(
        args,
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline, killed = time.time() + 240, None
        while time.time() < deadline and proc.poll() is None and killed is None:
            running = (
                [c for c in sweep_parts(workdir)[1] if c.info.status == "RUNNING"]
                if workdir.joinpath("mlflow.db").exists()
                else []
            )
            workers = worker_pids(proc.pid)
            if running and workers:
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)  # the OOM killer's way: no clean-up at all
            time.sleep(0.3)
        assert killed is not None, "no point was running to interrupt"
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-3000:]  # the sweep ends, summarised, and says a point failed
    (parent,), children, _ = sweep_parts(workdir)
    statuses = Counter(c.info.status for c in children)
    assert statuses["RUNNING"] == 0
    assert statuses["KILLED"] >= 1
    assert statuses["FINISHED"] + statuses["KILLED"] == 5  # every other point finished
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics[Metric.SWEEP_FAILED] == statuses["KILLED"]

    rerun = subprocess.run(args, cwd=workdir, env=cli_env(workdir), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    (parent,), children, _ = sweep_parts(workdir)
    finished = Counter(c.data.tags[Tag.RUN_KEY] for c in children if c.info.status == "FINISHED")
    assert len(finished) == 5
    assert set(finished.values()) == {1}
    assert parent.data.metrics[Metric.SWEEP_FAILED] == 0


def test_the_notebook_executes_on_a_generated_store(cli, workdir):
    assert cli("-m", "ratio=0.3,0.6", "tracking.experiment=nb").returncode == 0
    os.environ.update(PRUNELAB_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}", PRUNELAB_EXPERIMENT="nb")
    try:
        nb = nbformat.read(ROOT / "analysis" / "accuracy_vs_sparsity.ipynb", as_version=4)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs not stripped"
        nbclient.NotebookClient(nb, timeout=180, resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for key in ("PRUNELAB_TRACKING_URI", "PRUNELAB_EXPERIMENT"):
            os.environ.pop(key, None)
    table = nb.cells[4].outputs[0]["data"]["text/plain"]
    assert "0.3" in table
    assert "0.6" in table
    links = nb.cells[-1].outputs[0]["data"]["text/html"]  # every point links to its UI page
    children = runs(workdir, role="pruned")
    assert all(f"/runs/{c.info.run_id}?workflowType=machine_learning" in links for c in children)


def test_analysis_cli_writes_figures_and_a_table(cli, workdir):
    assert cli("-m", "ratio=0.5", "method=unstructured,structured", "tracking.experiment=cli").returncode == 0
    out = workdir / "report"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prunelab.analysis",
            "cli",
            "--out",
            str(out),
            "--uri",
            f"sqlite:///{workdir / 'mlflow.db'}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "accuracy_vs_sparsity.png").stat().st_size > 1000
    summary = (out / Artifact.SUMMARY).read_text()
    assert "| structured |" in summary
    assert "| unstructured |" in summary


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_points(cli, workdir):
    result = cli(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "ratio=0.3,0.6",
        process=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,), children, _ = sweep_parts(workdir)
    assert len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)


@pytest.mark.slow
def test_the_digits_smoke_study_runs_end_to_end_with_its_curves(cli, workdir):
    """The quick named study as a user runs it: real digits, configured epochs, latency timing on."""
    result = cli("-m", "+experiment=digits_smoke", tiny=False, timeout=600)
    broken = [(r.info.status, r.data.tags.get(Tag.ERROR)) for r in runs(workdir) if r.info.status != "FINISHED"]
    assert result.returncode == 0, f"{result.stderr[-3000:]} {broken} {result.stdout[-6000:]}"
    (parent,), children, (dense,) = sweep_parts(workdir)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics[Metric.SWEEP_FINISHED] == 12
    assert len(children) == 12
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.params["method"] for c in children} == {"unstructured", "structured"}
    assert {c.data.params["scope"] for c in children} == {"global", "local"}
    assert dense.data.metrics[Metric.TEST_ACCURACY] > 0.9  # real digits, learned (chance is 0.1)
    assert all(c.data.metrics[Metric.TEST_ACCURACY] > 0.5 for c in children)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    artifacts = {a.path: a.file_size for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts[Artifact.POINTS] > 0
    assert artifacts["accuracy_vs_sparsity.png"] > 1000
