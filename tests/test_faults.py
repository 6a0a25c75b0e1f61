"""Faults: a damaged dense cache is never loaded, a writer killed mid-write leaves nothing a later
run would trust, Ctrl-C / SIGTERM end runs KILLED with what they measured, and the same command
then completes the work."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env, runs, tiny_overrides
from torch import nn

from prunelab.experiment.dense import dense_model
from prunelab.names import Metric, Tag


def trainer(calls: list):
    """A stand-in for dense training: sets every weight to 0.5 and counts the calls."""

    def train(model):
        calls.append(1)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.5)
        return [], {Metric.VAL_ACCURACY: 0.9, Metric.TEST_ACCURACY: 0.8}

    return train


def fresh() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def cached(cache: Path, key: str = "k") -> tuple[Path, Path]:
    calls = []
    dense_model(fresh(), key, cache, trainer(calls))
    assert calls == [1]
    return cache / f"{key}.pt", cache / f"{key}.json"


def flip_bytes(weights, _meta, _cache):
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


def truncate(weights, _meta, _cache):
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def foreign_files(weights, meta, cache):
    """Another dense model's (valid) files under this key's names."""
    other_weights, other_meta = cached(cache, key="other")
    torch.save({"weight": torch.full((2, 4), 7.0), "bias": torch.full((2,), 7.0)}, other_weights)
    info = json.loads(other_meta.read_text())
    info["sha256"] = hashlib.sha256(other_weights.read_bytes()).hexdigest()
    other_meta.write_text(json.dumps(info))
    other_weights.replace(weights)
    other_meta.replace(meta)


def swapped_weights(weights, _meta, _cache):
    """Loadable weights of the right shapes that are not the ones the checksum was taken of."""
    torch.save({"weight": torch.full((2, 4), 7.0), "bias": torch.full((2,), 7.0)}, weights)


def missing_metadata(_weights, meta, _cache):
    meta.unlink()


@pytest.mark.parametrize("damage", [flip_bytes, truncate, foreign_files, swapped_weights, missing_metadata])
def test_a_damaged_dense_cache_is_never_loaded_but_retrained(tmp_path, damage):
    weights, meta = cached(tmp_path)
    damage(weights, meta, tmp_path)
    calls, model = [], fresh()
    result = dense_model(model, "k", tmp_path, trainer(calls))
    assert calls == [1]
    assert not result.from_cache
    assert torch.equal(model.weight, torch.full((2, 4), 0.5))  # ... and nothing of the bad file kept
    again = dense_model(fresh(), "k", tmp_path, trainer(calls))  # the new files verify
    assert again.from_cache
    assert calls == [1]


KILLED_WRITER = r"""
import sys, time, torch
from pathlib import Path
from torch import nn
from prunelab.experiment.dense import dense_model
cache, marker = Path(sys.argv[1]), Path(sys.argv[2])
def slow_save(obj, path):  # half a file, then hang: the test kills us here
    with open(path, "wb") as f:
        f.write(b"PK" + bytes(1000))
        f.flush()
    marker.write_text("writing")
    time.sleep(120)
torch.save = slow_save
dense_model(nn.Linear(4, 2), "k", cache, lambda m: ([], {"val_accuracy": 0.9, "test_accuracy": 0.8}))
"""


def test_a_writer_killed_mid_write_leaves_no_cache_file_and_the_next_run_trains(tmp_path):
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "cache"), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the writer never started writing"
    finally:
        proc.kill()
        proc.wait()
    cache = tmp_path / "cache"
    assert not (cache / "k.pt").exists()
    assert not (cache / "k.json").exists()
    assert list(cache.glob(".k.pt.*.tmp"))  # the half-written file never got the real name
    calls = []
    assert not dense_model(fresh(), "k", cache, trainer(calls)).from_cache
    assert calls == [1]
    assert not list(cache.glob("*.tmp"))  # and the leftover is gone


SLOW = [
    "dataset.in_shape=[1,28,28]",
    "dataset.train_size=6000",
    "train.epochs=6",
    "finetune.epochs=6",
    "ratio=0.5",
]  # about a second an epoch: time to stop it in the middle of a stage


def logged_steps(workdir: Path, role: str, metric: str) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    found = [r for r in runs(workdir, role) if r.info.status == "RUNNING"]
    return max((len(client.get_metric_history(r.info.run_id, metric)) for r in found), default=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "role", "metric"),
    [("dense", "dense", Metric.TRAIN_LOSS), ("fine-tuning", "pruned", Metric.FINETUNE_LOSS)],
)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_ends_killed_with_its_epochs_and_the_same_command_finishes_it(workdir, stage, role, metric, sig):
    argv = [sys.executable, "-m", "prunelab", *tiny_overrides(workdir), *SLOW]
    proc = subprocess.Popen(
        argv,
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as at a terminal: a shell's background job (CI's, say) starts with Ctrl-C ignored, and
        # Python keeps an ignored SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if (workdir / "mlflow.db").exists() and logged_steps(workdir, role, metric) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before its {stage} could be stopped"
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("prunelab: error: interrupted")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    stopped = runs(workdir, role)
    assert [r.info.status for r in stopped] == ["KILLED"]
    assert 1 <= len(client.get_metric_history(stopped[0].info.run_id, metric)) < 6  # the epochs done so far
    assert all(r.info.status != "RUNNING" for r in runs(workdir))
    cache = workdir / "cache"
    if stage == "dense":  # nothing half-written, nothing cached from a stopped training
        assert not list(cache.glob("*.pt"))
        assert not list(cache.glob("*.tmp"))
        assert runs(workdir, "pruned")[0].info.status == "KILLED"  # the point is recorded as stopped

    again = subprocess.run(argv, cwd=workdir, env=cli_env(workdir), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    finished = [r for r in runs(workdir, role) if r.info.status == "FINISHED"]
    assert len(finished) == 1
    assert len(client.get_metric_history(finished[0].info.run_id, metric)) == 6
    assert len([r for r in runs(workdir, "pruned") if r.info.status == "FINISHED"]) == 1


# --- a process killed outright (SIGKILL, the OOM killer) -------------------------------------------


def start_slow_run(workdir: Path, *extra: str, threads: int | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "prunelab", *tiny_overrides(workdir), *SLOW, *extra]
    env = {**cli_env(workdir), **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.Popen(
        argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def wait_for_fine_tuning(proc: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if (workdir / "mlflow.db").exists() and logged_steps(workdir, "pruned", Metric.FINETUNE_LOSS) >= 1:
            return
        time.sleep(0.2)
    raise AssertionError("the run ended (or never started fine-tuning) before it could be caught in it")


@pytest.mark.slow
def test_a_run_killed_outright_is_ended_killed_by_the_next_run_of_its_key_which_finishes_the_point(workdir, make_cfg):
    from prunelab.experiment.runner import run

    proc = start_slow_run(workdir)
    try:
        wait_for_fine_tuning(proc, workdir)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (dead,) = runs(workdir, "pruned")
    assert dead.info.status == "RUNNING"  # nothing could end it

    again = run(make_cfg(*SLOW))  # the same command, in another process
    after = {r.info.run_id: r for r in runs(workdir)}
    assert after[dead.info.run_id].info.status == "KILLED"
    assert after[again["run_id"]].info.status == "FINISHED"
    assert "process died" in after[dead.info.run_id].data.tags[Tag.ERROR]
    assert all(r.info.status != "RUNNING" for r in after.values())


@pytest.mark.slow
def test_two_processes_started_on_one_key_at_once_leave_each_other_running(workdir):
    both = ("train.epochs=1", "finetune.epochs=8")  # long enough a fine-tuning for the two to overlap
    first = start_slow_run(workdir, *both, threads=1)  # a core each
    second = None
    try:
        wait_for_fine_tuning(first, workdir)
        second = start_slow_run(workdir, *both, threads=1)  # the same command: the same run key
        deadline = time.monotonic() + 240
        while len(runs(workdir, "pruned")) < 2 and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # until the second has looked for dead runs of its key and opened its own
        assert [r.info.status for r in runs(workdir, "pruned")] == ["RUNNING", "RUNNING"]
        assert first.wait(timeout=240) == 0
        assert second.wait(timeout=240) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    pruned = runs(workdir, "pruned")
    assert [r.info.status for r in pruned] == ["FINISHED", "FINISHED"]
    assert len({r.data.tags[Tag.RUN_KEY] for r in pruned}) == 1


def test_only_a_dead_process_on_this_host_loses_its_running_run(workdir):
    """What the next run of a key looks at: the host, pid and start time each run is tagged with."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from prunelab.names import Tag
    from prunelab.tracking import store

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = store.connect(f"sqlite:///{workdir / 'mlflow.db'}", "dead-runs")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here, client = store.process_tags(), MlflowClient()
    cases = {
        "alive": here,
        "dead": {**here, Tag.PID: finished.stdout.strip()},
        "pid reused": {**here, Tag.PID_STARTED: "12.34"},  # this pid, but not the process that ran it
        "elsewhere": {**here, Tag.HOST: "another-machine", Tag.PID: finished.stdout.strip()},
        "untagged": {},  # from before these tags: not ours to judge
    }
    ids = {
        name: client.create_run(experiment, tags={Tag.RUN_KEY: "k", **tags}).info.run_id for name, tags in cases.items()
    }
    ended = store.end_dead_runs(experiment, {Tag.RUN_KEY: "k"})
    assert sorted(ended) == sorted([ids["dead"], ids["pid reused"]])
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "alive": "RUNNING",
        "dead": "KILLED",
        "pid reused": "KILLED",
        "elsewhere": "RUNNING",
        "untagged": "RUNNING",
    }
