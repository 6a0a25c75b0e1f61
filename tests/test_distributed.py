"""One run across processes, on this machine's CPU: ``torchrun --nproc_per_node=2 -m prunelab``
with the gloo backend takes the steps one process takes with the same global batch, keeps one mask
on every rank, records one run per point, and ends non-RUNNING when a rank dies."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
from conftest import cli_env, runs, tiny_overrides
from mlflow.tracking import MlflowClient

from prunelab.experiment.distributed import Ranks, from_environment, rendezvous
from prunelab.names import Artifact, Metric, Role, Tag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(workdir, *overrides: str, wait: bool = True, timeout: float = 240):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "prunelab",
        *tiny_overrides(workdir),
        *overrides,
    ]
    env = {**cli_env(workdir), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(
            command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def weights(workdir, run) -> dict:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return torch.load(client.download_artifacts(run.info.run_id, Artifact.MASKED_WEIGHTS), weights_only=True)


# The model has no BatchNorm (each rank's statistics would differ); the global batch is 64 either way;
# the training batches are augmented (every rank draws the global batch's numbers, then takes its part).
POINT = ("model=lenet5", "train.batch_size=64", "augment=crop_flip", "handover=true", "tracking.experiment=ddp")


def test_two_processes_train_and_fine_tune_to_the_weights_of_one(workdir, cli):
    alone = cli(*POINT, "tracking.experiment=alone", process=True)
    assert alone.returncode == 0, alone.stderr[-2000:]
    both = torchrun(workdir, *POINT)
    assert both.returncode == 0, both.stdout[-3000:] + both.stderr[-3000:]

    pruned = {r.info.experiment_id: r for r in runs(workdir, Role.PRUNED)}
    assert len(pruned) == 2
    assert len(runs(workdir, Role.DENSE)) == 2
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    ddp = pruned[client.get_experiment_by_name("ddp").experiment_id]
    one = pruned[client.get_experiment_by_name("alone").experiment_id]
    assert ddp.info.status == "FINISHED"
    assert ddp.data.metrics[Metric.RANKS_WORLD] == 2
    assert ddp.data.metrics[Metric.RANKS_MASKS_IDENTICAL] == 1.0  # both ranks computed the same mask
    assert ddp.data.metrics[Metric.RANKS_WEIGHTS_IDENTICAL] == 1.0
    assert ddp.data.tags[Tag.RUN_KEY] != one.data.tags[Tag.RUN_KEY]  # two processes: a run of its own

    a, b = weights(workdir, ddp), weights(workdir, one)
    for name, tensor in b["state_dict"].items():
        assert (a["state_dict"][name] - tensor).abs().max() <= 1e-5, name
    assert all(torch.equal(a["mask"]["masks"][n], m) for n, m in b["mask"]["masks"].items())
    assert ddp.data.metrics[Metric.TEST_ACCURACY] == pytest.approx(one.data.metrics[Metric.TEST_ACCURACY], abs=1e-3)


def test_ranks_end_with_one_model_batchnorm_statistics_included(workdir):
    """Each rank's BatchNorm statistics come from its own samples: rank 0's are every rank's at the
    end of each training, so the ranks hold one model (and shrink and hand over the same)."""
    both = torchrun(workdir, "model=vgg_small", "model.width=4", "method=structured", "schedule=iterative")
    assert both.returncode == 0, both.stdout[-3000:] + both.stderr[-3000:]
    (pruned,) = runs(workdir, Role.PRUNED)
    assert pruned.info.status == "FINISHED"
    assert pruned.data.metrics[Metric.RANKS_WEIGHTS_IDENTICAL] == 1.0
    assert pruned.data.metrics[Metric.RANKS_MASKS_IDENTICAL] == 1.0


def test_a_rank_that_dies_ends_the_run_failed_or_killed_never_running(workdir):
    # long enough to be killed in the middle of dense training (about a minute alone)
    process = torchrun(workdir, "train.epochs=200", "dataset.train_size=4096", wait=False)
    store = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(1)
            experiments = (
                [e.experiment_id for e in store.search_experiments()] if (workdir / "mlflow.db").exists() else []
            )
            dense = store.search_runs(experiments) if experiments else []
            if any(r.info.status == "RUNNING" and Metric.TRAIN_LOSS in r.data.metrics for r in dense):
                break
        else:
            pytest.fail("the dense run never started training")
        ranks = [p for p in psutil.Process(process.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        assert len(ranks) == 1
        ranks[0].send_signal(signal.SIGKILL)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    (dense,) = runs(workdir, Role.DENSE)
    assert dense.info.status in ("FAILED", "KILLED")
    if dense.info.status == "FAILED":
        assert "another process of this run stopped" in dense.data.tags[Tag.ERROR]
    assert not [r for r in runs(workdir) if r.info.status == "RUNNING"]


def test_torchrun_with_a_sweep_is_refused_in_one_line(cli, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("-m", "ratio=0.3,0.5", "hydra/launcher=parallel")
    assert result.returncode == 2
    assert "torchrun starts the processes of one run, and -m (hydra/launcher=parallel)" in result.stderr
    assert "cannot be combined" in result.stderr


def test_the_ranks_come_from_torchrun_or_slurm():
    assert from_environment({}) is None
    assert from_environment({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == Ranks(2, 4, 0)
    slurm = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456"}
    assert from_environment(slurm) == Ranks(5, 8, 1)
    # an sbatch script's lone process in an allocation of 8 tasks is not a rank of 8
    assert from_environment({"SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_JOB_ID": "1"}) is None
    assert Ranks(0, 2).main
    assert not Ranks(1, 2).main
    # where rank 0 listens: torchrun says; under SLURM, the launching node and a port of the job's own
    assert rendezvous({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}) == ("10.0.0.1", "1234")
    assert rendezvous({**slurm, "SLURM_NNODES": "1"}) == ("127.0.0.1", "23456")
    assert rendezvous({**slurm, "SLURM_NNODES": "2", "SLURM_LAUNCH_NODE_IPADDR": "10.1.2.3"}) == ("10.1.2.3", "23456")
    assert rendezvous({}) is None
