"""The real command line, end to end, on tiny settings: every group option composes and runs,
and every run lands FINISHED in MLflow with its metrics (bad input: tests/test_bad_input.py).
The entry point runs in this process (Hydra and all); one run shows it as a real process."""

from __future__ import annotations

import re

import pytest
from conftest import runs
from mlflow.tracking import MlflowClient

from prunelab.names import Metric, Tag

METRICS = (
    Metric.at(Metric.DENSE, Metric.TEST_ACCURACY),
    Metric.at(Metric.PRUNED, Metric.TEST_ACCURACY),
    Metric.at(Metric.FINETUNED, Metric.TEST_ACCURACY),
    Metric.SPARSITY_PRUNABLE,
    Metric.SPARSITY_ALL,
    Metric.PARAMS_TOTAL,
    Metric.PARAMS_NONZERO,
)


@pytest.mark.parametrize(
    "option",
    [
        # each model also through its hand-over (export, ONNX, compact file), which tiny runs skip
        "model=lenet300_100 handover=true",
        "model=lenet5 handover=true",
        "model=vgg_small model.width=4 handover=true",
        "model=resnet20 model.width=4 handover=true",
        "dataset=digits",
        "method=structured",
        "method=unstructured scope=local",
        "method=structured scope=local criterion=l1",
        "criterion=random",
        "method=structured criterion=random",
        "criterion=taylor",
        "method=structured criterion=fpgm",
        "method=nm",
        "scope=lamp",
        "method=structured scope=sensitivity scope.samples=128",
        "method=structured scope=global_floor scope.floor=0.1",
    ],
)
def test_every_option_runs_end_to_end(cli, workdir, option):
    result = cli(*option.split(), "ratio=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    (pruned,) = runs(workdir, "pruned")
    (dense,) = runs(workdir, "dense")
    assert pruned.info.status == dense.info.status == "FINISHED"
    assert set(METRICS) <= set(pruned.data.metrics)
    assert pruned.data.params["ratio"] == "0.5"
    assert dense.data.params["ratio"] == "0.0"
    assert pruned.data.params["method"] in option or "method=" not in option
    assert pruned.data.tags[Tag.RUN_KEY]
    assert pruned.data.tags[Tag.group(Tag.CRITERION)]
    for group in Tag.GROUPS:  # the chosen option names the run
        chosen = next((o.split("=")[1] for o in option.split() if o.startswith(f"{group}=")), None)
        assert chosen is None or pruned.data.params[group] == pruned.data.tags[Tag.group(group)] == chosen


def test_a_real_process_runs_prints_the_stored_figures_and_exits_0(cli, workdir):
    result = cli("ratio=0.5", process=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (pruned,) = runs(workdir, "pruned")
    printed = re.search(
        r"test accuracy: dense ([\d.]+) \| pruned ([\d.]+) \| fine-tuned ([\d.]+)", result.stdout + result.stderr
    )
    stored = pruned.data.metrics
    assert [float(v) for v in printed.groups()] == [
        round(stored[Metric.at(stage, Metric.TEST_ACCURACY)], 4) for stage in Metric.STAGES
    ]
    assert pruned.info.run_id in result.stdout + result.stderr  # where it is filed


def test_second_run_reuses_the_dense_model(cli, workdir):
    first = cli("ratio=0.3")
    second = cli("ratio=0.7", "method=structured")
    assert first.returncode == second.returncode == 0, second.stderr[-2000:]
    (dense,) = runs(workdir, "dense")  # trained once, its epochs logged once
    assert (
        len(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_metric_history(dense.info.run_id, Metric.TRAIN_LOSS))
        == 1
    )
    pruned = runs(workdir, "pruned")
    assert len(pruned) == 2
    assert {r.data.tags[Tag.DENSE_KEY] for r in pruned} == {dense.data.tags[Tag.DENSE_KEY]}
    assert len(list((workdir / "cache").glob("*.pt"))) == 1


def test_rerunning_the_same_config_is_skipped_unless_forced(cli, workdir):
    assert cli("ratio=0.4").returncode == 0
    (first,) = runs(workdir, "pruned")
    assert cli("ratio=0.4").returncode == 0
    assert [r.info.run_id for r in runs(workdir, "pruned")] == [first.info.run_id]  # skipped: nothing new
    assert cli("ratio=0.4", "force=true").returncode == 0
    assert len(runs(workdir, "pruned")) == 2


def test_a_crash_inside_a_run_leaves_it_failed_not_running(cli, workdir):
    result = cli("+model.explode_after=3", "model._target_=exploding.Exploding", "ratio=0.5")
    assert result.returncode != 0
    statuses = {r.data.tags[Tag.ROLE]: r.info.status for r in runs(workdir)}
    assert statuses["pruned"] == "FAILED"
    assert "RUNNING" not in statuses.values()


@pytest.mark.parametrize("stage", ["train", "finetune"])
def test_a_diverged_training_is_one_line_a_failed_run_and_no_cached_model(cli, workdir, stage):
    result = cli(f"{stage}.lr=1e12", "ratio=0.5")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prunelab: error:"), result.stderr
    assert "diverged" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    statuses = {r.data.tags[Tag.ROLE]: r.info.status for r in runs(workdir)}
    assert statuses["pruned"] == "FAILED"
    assert "RUNNING" not in statuses.values()
    cached = list((workdir / "cache").glob("*.pt"))
    if stage == "train":
        # a diverged dense model is never kept; its run (open while it trained) ends FAILED
        assert cached == []
        assert statuses["dense"] == "FAILED"
    else:
        assert len(cached) == 1
        assert statuses["dense"] == "FINISHED"


@pytest.mark.parametrize("sweep", ["quantize=none,int8", "quantize=glob(*)"])
def test_a_glob_sweep_is_checked_like_the_list_it_stands_for(cli, workdir, sweep):
    """A glob over a group's options is expanded as Hydra's sweeper expands it: a point that
    cannot run (int8 without the hand-over) is refused in one line before any run opens."""
    result = cli("-m", sweep, "handover=false")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("prunelab: error: quantize=int8")
    assert "needs handover=true" in lines[0]
    assert runs(workdir) == []
