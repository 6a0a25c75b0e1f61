"""Bad input, as a new user types it: one readable line, exit 2, no traceback, no run left
RUNNING, nothing written that a later run would trust, and no credential anywhere. One table:
adding a case is one line (and, where the case needs a broken file first, a small setup)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import runs
from mlflow.tracking import MlflowClient

from prunelab.names import Tag

SECRET = "hunter2"
FASHION_FILES = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")


def garbage_store(workdir: Path) -> list[str]:
    (workdir / "mlflow.db").write_bytes(b"this was a notes file, not a database\n" * 100)
    return []


def truncated_store(workdir: Path) -> list[str]:
    with open(workdir / "mlflow.db", "r+b") as f:
        f.truncate(20_000)
    return []


def foreign_store(workdir: Path) -> list[str]:
    import sqlite3

    (workdir / "mlflow.db").unlink()
    with sqlite3.connect(workdir / "mlflow.db") as db:
        db.execute("create table notes (text)")
    return []


def broken_fashion_files(workdir: Path) -> list[str]:
    root = workdir / "broken"
    root.mkdir()
    for name in FASHION_FILES:
        (root / f"{name}-ubyte.gz").write_bytes(b"not a gzip file")
    return [f"dataset.root={root}"]


def offline_without_cifar(_workdir: Path) -> list[str]:
    """No CIFAR-10 anywhere, and its download goes to a port nothing listens on (offline)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [f"dataset.url=http://127.0.0.1:{port}/cifar-10-python.tar.gz"]


def folder_without_classes(workdir: Path) -> list[str]:
    for part in ("train", "val"):
        (workdir / "images" / part).mkdir(parents=True)
        (workdir / "images" / part / "img0.png").write_bytes(b"an image lying loose, not in a class folder")
    return [f"dataset.root={workdir / 'images'}"]


def checkpoint_of_another_model(workdir: Path) -> list[str]:
    import torch

    from prunelab.models import lenet300_100

    torch.save(lenet300_100(in_shape=(1, 8, 8)).state_dict(), workdir / "other.pt")
    return [f"dense.checkpoint={workdir / 'other.pt'}"]


def full_artifact_disk(workdir: Path) -> list[str]:
    (workdir / "mlruns").mkdir()
    return []  # the mount happens in the command's own mount namespace (see DISK_FULL below)


def foreign_plan(workdir: Path) -> list[str]:
    """A plan saved from another model: layer names the default model lacks."""
    sets = {"nothere.weight": {"units": 4, "kept": 2, "shape": [2, 2], "ratio": 0.5}}
    (workdir / "plan.json").write_text(json.dumps({"format": 1, "unit": "weights", "sets": sets}))
    return [f"plan={workdir / 'plan.json'}"]


DISK_FULL = "disk-full"

CASES = [  # id, arguments, words the one line must hold, setup
    ("ratio-high", ["ratio=1.5"], ["ratio=1.5", "0 <= ratio < 1"], None),
    ("ratio-negative", ["ratio=-0.1"], ["ratio=-0.1", "0 <= ratio < 1"], None),
    ("ratio-text", ["ratio=abc"], ["ratio=abc", "'abc'", "could not be converted to Float"], None),
    ("ratio-in-sweep", ["ratio=0.1,2"], ["ratio=2", "0 <= ratio < 1"], None),
    ("model-option", ["model=nope"], ["model='nope'", "lenet5", "resnet20"], None),
    ("method-option", ["method=pruneall"], ["method='pruneall'", "structured", "unstructured"], None),
    ("scope-option", ["scope=everywhere"], ["scope='everywhere'", "global", "local"], None),
    ("criterion", ["criterion=foo"], ["criterion='foo'", "l1", "l2", "random", "taylor"], None),
    ("method-field", ["method.normalize=max"], ["method=unstructured takes no option 'normalize'"], None),
    ("method-option-typo", ["method=structured", "method.normalise=none"], ["'normalise'", "normalize"], None),
    ("nm-ratio", ["method=nm", "ratio=0.7"], ["ratio must be 0.5"], None),
    (
        "criterion-not-taken",
        ["method=sparsegpt", "criterion=l1", "scope=local"],
        ["method=sparsegpt takes no criterion (criterion=l1)", "it takes a scope, calibration data"],
        None,
    ),
    (
        "criterion-not-among-those-taken",
        ["method=wanda", "criterion=l1", "scope=local"],
        ["method=wanda takes criterion=ria in place of its own score, not criterion=l1; drop criterion=l1"],
        None,
    ),
    (
        "scope-not-taken-in-sweep",
        ["model=tiny_gpt", "dataset=fortunes", "method=blocks", "scope=global,local"],
        ["method=blocks takes no scope (scope=global)"],
        None,
    ),
    ("plan-missing", ["scope=plan"], ["scope=plan needs the plan"], None),
    (
        "plan-misfit",
        ["scope=plan"],
        ["the plan does not fit", "not cover: classifier.weight", "nothere.weight"],
        foreign_plan,
    ),
    ("int8-without-handover", ["quantize=int8", "handover=false"], ["quantize=int8", "needs handover=true"], None),
    ("handover-format", ["handover_formats=[pdf]"], ["handover_formats: pdf is not a format", "hf, weights"], None),
    (
        "handover-hf-vision",
        ["handover=true", "handover_formats=[hf]"],
        ["hf is the Hugging Face folder", "drop hf"],
        None,
    ),
    ("schedule-rounds", ["schedule=iterative", "schedule.rounds=0"], ["schedule.rounds=0 must be >= 1"], None),
    ("schedule-window", ["schedule=gradual", "schedule.end=0"], ["schedule.start=0.0, schedule.end=0.0"], None),
    (
        "schedule-budget",
        ["schedule=gradual", "budget.macs=0.5"],
        ["budget.macs works with schedule=oneshot only"],
        None,
    ),
    ("device", ["device=tpu"], ["device='tpu'", "auto"], None),
    ("finetune-epochs", ["finetune.epochs=-1"], ["finetune.epochs=-1"], None),
    ("uri-unreachable", ["tracking.uri=http://127.0.0.1:9"], ["cannot reach", "http://127.0.0.1:9"], None),
    ("uri-credentials", [f"tracking.uri=http://bob:{SECRET}@127.0.0.1:9"], ["http://***@127.0.0.1:9"], None),
    ("uri-scheme", ["tracking.uri=htp://mlflow:5000"], ["unknown scheme 'htp'"], None),
    ("uri-no-host", ["tracking.uri=http://"], ["names no host"], None),
    ("store-garbage", [], ["mlflow.db is not an SQLite database"], garbage_store),
    ("store-truncated", [], ["mlflow.db is a damaged SQLite database"], truncated_store),
    ("store-foreign", [], ["mlflow.db is an SQLite database but not an MLflow store"], foreign_store),
    ("target-missing", ["model._target_=nopkg.net"], ["model._target_=nopkg.net cannot be imported"], None),
    ("target-typo", ["train.optimizer._target_=torch.optim.SDG"], ["torch.optim.SDG cannot be imported"], None),
    (
        "data-root-missing",
        ["dataset=fashion_mnist", "dataset.root=/nonexistent/dir"],
        ["dataset.root=/nonexistent/dir is not a folder"],
        None,
    ),
    (
        "data-corrupt",
        ["dataset=fashion_mnist", "dataset.url=null"],
        ["train-images-idx3-ubyte.gz", "fetch it again"],
        broken_fashion_files,
    ),
    ("val-size-zero", ["dataset=digits", "dataset.val_size=0"], ["dataset.val_size=0 must be in [1, "], None),
    (
        "cifar-offline",
        ["dataset=cifar10"],
        ["CIFAR-10 not found in", "download from http://127.0.0.1", "dataset.root=FOLDER"],
        offline_without_cifar,
    ),
    ("imagefolder-no-classes", ["dataset=imagefolder"], ["expected one folder per class"], folder_without_classes),
    (
        "checkpoint-mismatch",
        [],
        ["does not fit the model", "shapes differ, e.g. head.0.weight is (300, 64) in the checkpoint", "and 2 more"],
        checkpoint_of_another_model,
    ),
    ("no-prunable-layer", ["model._target_=exploding.RawWeights"], ["no prunable (Conv/Linear) layer"], None),
    (
        "structured-classifier-only",
        ["model._target_=exploding.logistic_regression", "method=structured"],
        ["would remove output classes"],
        None,
    ),
    (DISK_FULL, [], ["cannot write the run's artifacts", "No space left on device"], full_artifact_disk),
]


def in_small_tmpfs(mountpoint: Path) -> list[str]:
    """A command prefix that runs the rest in a private mount namespace with a 64 KiB tmpfs on
    ``mountpoint``: a full disk for the artifacts only, gone when the command ends."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private tmpfs")
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--mount"]
    return [*namespace, "sh", "-c", f'mount -t tmpfs -o size=64k tmpfs "{mountpoint}" && exec "$@"', "sh"]


@pytest.mark.parametrize(("case_id", "args", "words", "setup"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_trusted(cli, workdir, case_id, args, words, setup):
    store = workdir / "mlflow.db"
    extra = setup(workdir) if setup else []
    before = store.read_bytes() if store.exists() else None
    prefix = in_small_tmpfs(workdir / "mlruns") if case_id == DISK_FULL else []

    started = time.monotonic()
    result = cli(*args, *extra, prefix=prefix)
    elapsed = time.monotonic() - started

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("prunelab: error:"), result.stderr[-3000:]
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in output
    assert SECRET not in output
    if case_id.startswith("uri-"):
        assert elapsed <= 10, f"{elapsed:.1f} s to give up on an unusable tracking URI"
    if case_id.startswith("store-"):
        assert store.read_bytes() == before  # refused before MLflow wrote anything into it
        return
    found = runs(workdir) if store.exists() else []
    assert all(r.info.status != "RUNNING" for r in found)
    assert not [r for r in found if r.data.tags.get(Tag.ROLE) == "pruned" and r.info.status == "FINISHED"]
    if case_id in ("structured-classifier-only", "plan-misfit"):  # refused before any dense training
        assert not list((workdir / "cache").glob("*.pt"))
        assert not runs(workdir, "dense")
    if case_id == DISK_FULL:  # the run ended FAILED, and the store still reads
        (pruned,) = runs(workdir, "pruned")
        assert pruned.info.status == "FAILED"
        assert "No space left" in pruned.data.tags[Tag.ERROR]
        assert MlflowClient(f"sqlite:///{store}").search_experiments()


def test_credentials_in_the_tracking_uri_reach_no_param_tag_artifact_or_log_line(cli, workdir, tmp_path):
    """A server that asks for no password still gets one in the URI: everything prunelab writes
    about the runs (params, tags, artifacts, output) shows it masked."""
    from prunelab.tracking import ui

    with ui.serve(f"sqlite:///{workdir / 'mlflow.db'}", artifacts=workdir / "mlartifacts") as base:
        uri = base.replace("http://", f"http://bob:{SECRET}@")
        single = cli(f"tracking.uri={uri}", "ratio=0.5", "tracking.experiment=secret")
        sweep = cli("-m", f"tracking.uri={uri}", "ratio=0.3,0.6", "tracking.experiment=secret")
        assert single.returncode == sweep.returncode == 0, (single.stderr + sweep.stderr)[-3000:]
        for result in (single, sweep):
            assert SECRET not in result.stdout + result.stderr
            assert "http://***@127.0.0.1" in result.stdout + result.stderr
        client = MlflowClient(base)
        found = runs(workdir)
        assert len(found) >= 5  # a run, a sweep parent, its two points, the dense model
        for run in found:
            assert SECRET not in repr(run.data.params) + repr(run.data.tags)
            for artifact in client.list_artifacts(run.info.run_id):
                if artifact.path.endswith((".yaml", ".md", ".csv")):
                    local = client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))
                    assert SECRET not in Path(local).read_text()


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://bob:hunter2@team:5000", "http://***@team:5000"),
        (
            "tracking.uri=http\\://bob\\:hunter2@team\\:5000 ratio=0.3",
            "tracking.uri=http\\://***@team\\:5000 ratio=0.3",
        ),
        ("postgresql+psycopg://mlflow:pw@db/mlflow", "postgresql+psycopg://***@db/mlflow"),
        ("sqlite:///mlflow.db and mail@example.org", "sqlite:///mlflow.db and mail@example.org"),
    ],
)
def test_redaction_masks_user_information_in_any_address(text, masked):
    from prunelab.redact import redact

    assert redact(text) == masked
