"""The real command line, end to end, on tiny settings: every group option composes and runs,
and every run lands FINISHED in MLflow with its metrics; bad input gives one line and exit 2."""

from __future__ import annotations

import pytest

from conftest import runs

METRICS = ("dense.test_accuracy", "pruned.test_accuracy", "finetuned.test_accuracy",
           "sparsity.prunable", "sparsity.all", "params.total", "params.nonzero")


@pytest.mark.parametrize("option", [
    "model=lenet300_100", "model=lenet5", "model=vgg_small model.width=4", "model=resnet20 model.width=4",
    "dataset=digits", "method=structured", "method=unstructured scope=local",
    "method=structured scope=local method.criterion=l1", "method.criterion=random",
    "method=structured method.criterion=random", "method.criterion=l2",
])
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
    assert pruned.data.tags["prunelab.run_key"] and pruned.data.tags["prunelab.criterion"]
    assert "fine-tuned" in result.stdout + result.stderr  # the summary was printed


def test_second_run_reuses_the_dense_model(cli, workdir):
    first = cli("ratio=0.3")
    second = cli("ratio=0.7", "method=structured")
    assert first.returncode == second.returncode == 0, second.stderr[-2000:]
    assert "dense epoch" in first.stdout + first.stderr
    assert "dense epoch" not in second.stdout + second.stderr
    assert "from cache" in second.stdout + second.stderr
    assert len(runs(workdir, "dense")) == 1
    assert len(runs(workdir, "pruned")) == 2


def test_rerunning_the_same_config_is_skipped_unless_forced(cli, workdir):
    assert cli("ratio=0.4").returncode == 0
    again = cli("ratio=0.4")
    assert again.returncode == 0 and "skipped" in again.stdout + again.stderr
    assert len(runs(workdir, "pruned")) == 1
    assert cli("ratio=0.4", "force=true").returncode == 0
    assert len(runs(workdir, "pruned")) == 2


@pytest.mark.parametrize("args, words", [
    (["ratio=1.5"], ["ratio=1.5", "0 <= ratio < 1"]),
    (["ratio=-0.1"], ["ratio=-0.1", "0 <= ratio < 1"]),
    (["ratio=abc"], ["'abc'", "not a number"]),
    (["ratio=0.1,2"], ["ratio=2", "0 <= ratio < 1"]),
    (["model=nope"], ["model='nope'", "lenet5", "resnet20"]),
    (["method=pruneall"], ["method='pruneall'", "structured", "unstructured"]),
    (["scope=everywhere"], ["scope='everywhere'", "global", "local"]),
    (["method.criterion=foo"], ["method.criterion='foo'", "l1", "l2", "random"]),
    (["device=tpu"], ["device='tpu'", "auto"]),
    (["finetune.epochs=-1"], ["finetune.epochs=-1"]),
])
def test_bad_input_is_one_readable_line(cli, workdir, args, words):
    result = cli(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prunelab: error:"), result.stderr
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert runs(workdir) == []


def test_corrupted_data_is_one_line_and_leaves_no_run_running(cli, workdir):
    # dataset.root is searched first, so these files are used (and rejected) even where the
    # real Fashion-MNIST is installed.
    root = workdir / "broken"
    root.mkdir()
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (root / f"{name}-ubyte.gz").write_bytes(b"not a gzip file")
    result = cli("dataset=fashion_mnist", f"dataset.root={root}", "dataset.url=null")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prunelab: error:"), result.stderr
    assert "train-images-idx3-ubyte.gz" in lines[0] and "fetch it again" in lines[0]
    assert all(r.info.status == "FAILED" for r in runs(workdir))  # recorded, never RUNNING


def test_a_crash_inside_a_run_leaves_it_failed_not_running(cli, workdir):
    result = cli("+model.explode_after=3", "model._target_=exploding.Exploding", "ratio=0.5")
    assert result.returncode != 0
    statuses = {r.data.tags["prunelab.role"]: r.info.status for r in runs(workdir)}
    assert statuses["pruned"] == "FAILED"
    assert "RUNNING" not in statuses.values()


@pytest.mark.parametrize("stage", ["train", "finetune"])
def test_a_diverged_training_is_one_line_a_failed_run_and_no_cached_model(cli, workdir, stage):
    result = cli(f"{stage}.lr=1e12", "ratio=0.5")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prunelab: error:") and "diverged" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    statuses = {r.data.tags["prunelab.role"]: r.info.status for r in runs(workdir)}
    assert statuses["pruned"] == "FAILED" and "RUNNING" not in statuses.values()
    cached = list((workdir / "cache").glob("*.pt"))
    if stage == "train":
        assert cached == [] and "dense" not in statuses  # a diverged dense model is never kept
    else:
        assert len(cached) == 1 and statuses["dense"] == "FINISHED"
