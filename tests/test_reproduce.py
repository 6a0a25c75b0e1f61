"""Reproducing a run from its record: every run records what executes it again (its resolved
config, its environment, the changes of a dirty tree), ``python -m prunelab.reproduce RUN_ID``
executes it into its own experiment and compares metric by metric, and whatever stands in the way
(an unknown run, an unfinished one, another environment) is one line before anything runs."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from mlflow.tracking import MlflowClient

from prunelab.experiment.runner import run
from prunelab.names import Artifact, Metric, Role, Tag
from prunelab.reproduce import main
from prunelab.reproduction import override
from prunelab.tracking import record


@pytest.fixture(autouse=True)
def own_cache(workdir, monkeypatch):
    """The user cache (a language model's tokens, the blank store) under the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / "xdg-cache"))


def uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def reproduce(workdir: Path, *args: str, store: str | None = None) -> subprocess.CompletedProcess:
    """``python -m prunelab.reproduce ARGS`` against the test's store, run by its entry point here."""
    argv = [*args, "--tracking-uri", store or uri(workdir)]
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())


def client(workdir: Path) -> MlflowClient:
    return MlflowClient(uri(workdir))


def reproductions(workdir: Path, experiment: str) -> list:
    """The pruned runs filed in ``experiment``-reproduced."""
    found = client(workdir).get_experiment_by_name(f"{experiment}-reproduced")
    if found is None:
        return []
    return [
        r
        for r in client(workdir).search_runs([found.experiment_id])
        if r.data.tags.get(Tag.ROLE) == Role.PRUNED  # (the dense model is filed there too)
    ]


def text_of(workdir: Path, run_id: str, path: str) -> str:
    return Path(client(workdir).download_artifacts(run_id, path, str(workdir / "downloads" / run_id))).read_text()


def config_of(workdir: Path, run_id: str) -> dict:
    import yaml

    return yaml.safe_load(text_of(workdir, run_id, Artifact.CONFIG))


def computed(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not Metric.measured(k)}


def one_error_line(result: subprocess.CompletedProcess) -> str:
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("prunelab: error: ")
    return line


def test_a_lenet5_run_reproduces_identically_with_its_keys_and_config(make_cfg, workdir):
    recorded = run(make_cfg("method=unstructured", "ratio=0.7", "measure_latency=true"))
    before = client(workdir).get_run(recorded["run_id"])
    # the run's page says how to reproduce it
    assert record.reproduce_command(recorded["run_id"], uri(workdir)) in before.data.tags[Tag.NOTE]

    result = reproduce(workdir, recorded["run_id"])

    assert result.returncode == 0, result.stdout + result.stderr
    (again,) = reproductions(workdir, "lenet5-synthetic")
    assert again.info.status == "FINISHED"
    assert again.data.tags[Tag.RUN_KEY] == before.data.tags[Tag.RUN_KEY]
    assert again.data.tags[Tag.DENSE_KEY] == before.data.tags[Tag.DENSE_KEY]
    assert computed(again.data.metrics) == computed(before.data.metrics)
    assert Metric.cost(Metric.PRUNED, Metric.latency_ms(1)) in again.data.metrics  # timed, and not compared
    recorded_config, reproduced_config = config_of(workdir, before.info.run_id), config_of(workdir, again.info.run_id)
    assert reproduced_config["tracking"]["experiment"] == "lenet5-synthetic-reproduced"
    assert reproduced_config["force"] is True
    for config in (recorded_config, reproduced_config):
        del config["tracking"], config["force"]
    assert reproduced_config == recorded_config
    # the record is as it was
    after = client(workdir).get_run(before.info.run_id)
    assert (after.info.status, after.data.metrics) == (before.info.status, before.data.metrics)
    assert result.stdout.strip().splitlines()[-1].startswith("identical")


def test_a_run_records_its_environment(make_cfg, workdir):
    recorded = run(make_cfg("ratio=0.5"))
    environment = json.loads(text_of(workdir, recorded["run_id"], Artifact.ENVIRONMENT))
    assert environment["packages"]["torch"] == torch.__version__
    assert set(environment["packages"]) == set(record.versions())
    assert environment["device"]["type"] == "cpu"
    assert environment["device"]["name"] == record.cpu_name()
    assert environment["threads"] == torch.get_num_threads()
    assert environment["deterministic"]["algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert environment["git"]["commit"] == record.git_state().commit
    tags = client(workdir).get_run(recorded["run_id"]).data.tags
    assert tags[Tag.version("torch")] == torch.__version__


def test_a_sparsegpt_run_of_a_tiny_llama_folder_reproduces_identically(make_cfg, workdir, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from test_tokens import checkpoint_on_wikitext, llama_folder, write_wikitext

    folder = write_wikitext(tmp_path / "wikitext-2")
    model_folder = llama_folder(tmp_path, (folder / "wiki.train.raw").read_text())
    overrides = [*checkpoint_on_wikitext(model_folder, folder), "train.epochs=0", "method=sparsegpt"]
    recorded = run(make_cfg(*overrides, "method.samples=8", "scope=local", "ratio=0.5"))

    result = reproduce(workdir, recorded["run_id"])

    assert result.returncode == 0, result.stdout + result.stderr
    (again,) = reproductions(workdir, "hf_causal_lm-wikitext2")
    before = client(workdir).get_run(recorded["run_id"])
    assert again.data.tags[Tag.RUN_KEY] == before.data.tags[Tag.RUN_KEY]
    assert computed(again.data.metrics) == computed(before.data.metrics)
    assert Metric.TEST_PERPLEXITY in again.data.metrics

    # a changed data file and a changed checkpoint: one line each before anything runs
    with (folder / "wiki.test.raw").open("a") as f:
        f.write(" = Added =\n")
    (model_folder / "config.json").write_text((model_folder / "config.json").read_text() + "\n")
    changed = reproduce(workdir, recorded["run_id"])
    assert changed.returncode == 2, changed.stdout + changed.stderr
    differs = [line for line in changed.stdout.splitlines() if line.startswith("differs: ")]
    assert any(line.startswith(f"differs: data file {(folder / 'wiki.test.raw').resolve()}:") for line in differs)
    assert any(line.startswith("differs: model.pretrained: its files hold other contents") for line in differs)
    assert len(reproductions(workdir, "hf_causal_lm-wikitext2")) == 1  # nothing ran


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(["method=structured", "ratio=0.5", "handover=true"], id="structured-with-hand-over"),
        pytest.param(["schedule=lottery", "schedule.fraction=0.5", "ratio=0.6"], id="lottery"),
    ],
)
def test_a_structured_run_with_its_hand_over_and_a_lottery_run_reproduce_identically(make_cfg, workdir, overrides):
    recorded = run(make_cfg(*overrides))

    result = reproduce(workdir, recorded["run_id"])

    assert result.returncode == 0, result.stdout + result.stderr
    (again,) = reproductions(workdir, "lenet5-synthetic")
    before = client(workdir).get_run(recorded["run_id"])
    assert again.data.tags[Tag.RUN_KEY] == before.data.tags[Tag.RUN_KEY]
    assert again.data.tags[Tag.REPRODUCES] == recorded["run_id"]
    assert computed(again.data.metrics) == computed(before.data.metrics)
    if "handover=true" in overrides:  # the hand-over's files were made again and give the same figures
        assert Metric.HANDOVER_ONNX_ACCURACY in computed(again.data.metrics)


def test_a_run_recorded_in_one_folder_reproduces_from_another(make_cfg, workdir, tmp_path, monkeypatch):
    recorded = run(make_cfg("ratio=0.5"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    result = reproduce(workdir, recorded["run_id"])

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("identical")
    assert not any(elsewhere.iterdir())  # everything went where the record says


def test_a_run_reproduces_from_a_fresh_clone_at_its_commit(make_cfg, workdir, tmp_path):
    git = record.git_state()
    if git.commit is None:
        pytest.skip("prunelab is not run from a git checkout")
    top = Path(record.__file__).resolve().parents[2]
    recorded = run(make_cfg("ratio=0.5"))
    clone, elsewhere = tmp_path / "clone", tmp_path / "elsewhere"
    subprocess.run(["git", "clone", "-q", str(top), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", git.commit], check=True)
    elsewhere.mkdir()
    env = {**cli_env(workdir), "PYTHONPATH": str(clone)}  # the clone's prunelab, not this checkout's
    # a checkout with uncommitted changes differs from its clean clone by them: said, then allowed
    allow = ["--allow"] if git.diff else []

    result = subprocess.run(
        [sys.executable, "-m", "prunelab.reproduce", recorded["run_id"], "--tracking-uri", uri(workdir), *allow],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    differs = [line for line in result.stdout.splitlines() if line.startswith("differs: ")]
    assert differs == ([next(line for line in differs if "uncommitted changes" in line)] if git.diff else [])
    assert result.stdout.splitlines()[-1].startswith("identical")
    (again,) = reproductions(workdir, "lenet5-synthetic")
    environment = json.loads(text_of(workdir, again.info.run_id, Artifact.ENVIRONMENT))
    assert environment["git"] == {"commit": git.commit, "changes": None, "untracked": []}  # run from the clone


def test_a_tampered_metric_makes_the_verdict_different_and_names_it(make_cfg, workdir):
    recorded = run(make_cfg("ratio=0.5"))
    true_value = recorded[Metric.TEST_ACCURACY]
    client(workdir).log_metric(recorded["run_id"], Metric.TEST_ACCURACY, true_value + 0.25)

    result = reproduce(workdir, recorded["run_id"])

    assert result.returncode == 1, result.stdout + result.stderr
    (again,) = reproductions(workdir, "lenet5-synthetic")
    assert again.data.metrics[Metric.TEST_ACCURACY] == true_value
    flagged = [line.split()[0] for line in result.stdout.splitlines() if line.endswith("<- differs")]
    assert flagged == [Metric.TEST_ACCURACY]
    # ... and within a tolerance that covers the difference it agrees
    loose = reproduce(workdir, recorded["run_id"], "--tolerance", "0.9")
    assert loose.returncode == 0, loose.stdout + loose.stderr


def test_an_unknown_run_or_store_is_one_line(workdir, tmp_path):
    unknown = reproduce(workdir, "0123456789abcdef0123456789abcdef")
    assert unknown.returncode == 2
    assert "0123456789abcdef0123456789abcdef" in one_error_line(unknown)
    missing = reproduce(workdir, "0123", store=f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")
    assert missing.returncode == 2
    assert "no MLflow store" in one_error_line(missing)
    assert not (tmp_path / "nowhere").exists()  # read, never created
    (tmp_path / "notes.db").write_text("not a database\n" * 50)
    foreign = reproduce(workdir, "0123", store=f"sqlite:///{tmp_path / 'notes.db'}")
    assert foreign.returncode == 2
    one_error_line(foreign)


def test_a_failed_run_is_one_line_and_nothing_runs(make_cfg, workdir):
    recorded = run(make_cfg("ratio=0.5"))
    client(workdir).set_tag(recorded["run_id"], Tag.ERROR, "RuntimeError: the disk was full")
    client(workdir).set_terminated(recorded["run_id"], "FAILED")

    result = reproduce(workdir, recorded["run_id"])

    assert result.returncode == 2
    line = one_error_line(result)
    assert "FAILED" in line
    assert "--allow" in line
    assert reproductions(workdir, "lenet5-synthetic") == []


def test_another_recorded_package_version_stops_it_before_anything_runs_unless_allowed(make_cfg, workdir, tmp_path):
    recorded = run(make_cfg("ratio=0.5"))
    environment = json.loads(text_of(workdir, recorded["run_id"], Artifact.ENVIRONMENT))
    environment["packages"]["torch"] = "1.0.0"  # the record, edited
    edited = tmp_path / "edit" / Artifact.ENVIRONMENT
    edited.parent.mkdir()
    edited.write_text(json.dumps(environment))
    client(workdir).log_artifact(recorded["run_id"], str(edited))

    refused = reproduce(workdir, recorded["run_id"])

    assert refused.returncode == 2
    one_error_line(refused)
    assert [line for line in refused.stdout.splitlines() if line.startswith("differs:")] == [
        f"differs: torch: recorded 1.0.0, here {torch.__version__}"
    ]
    assert reproductions(workdir, "lenet5-synthetic") == []

    allowed = reproduce(workdir, recorded["run_id"], "--allow")

    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert len(reproductions(workdir, "lenet5-synthetic")) == 1


def test_a_dirty_tree_records_its_diff_and_a_clean_one_differs_from_it(make_cfg, workdir, monkeypatch):
    commit = "c0ffee" * 6 + "c0ff"
    diff = "diff --git a/prunelab/x.py b/prunelab/x.py\n+STORE = 'http://bob:hunter2@team:5000'\n"
    monkeypatch.setattr(record, "git_state", lambda: record.GitState(commit, diff, ("notes.txt",)))
    dirty = run(make_cfg("ratio=0.5"))
    assert text_of(workdir, dirty["run_id"], Artifact.GIT_DIFF) == diff.replace("bob:hunter2@", "***@")
    environment = json.loads(text_of(workdir, dirty["run_id"], Artifact.ENVIRONMENT))
    assert environment["git"] == {
        "commit": commit,
        "changes": record.GitState(commit, diff).digest,
        "untracked": ["notes.txt"],
    }

    monkeypatch.setattr(record, "git_state", lambda: record.GitState(commit))
    clean = run(make_cfg("ratio=0.6"))
    files = {a.path for a in client(workdir).list_artifacts(clean["run_id"])}
    assert Artifact.ENVIRONMENT in files
    assert Artifact.GIT_DIFF not in files
    refused = reproduce(workdir, dirty["run_id"])
    assert refused.returncode == 2
    assert [line.split(":")[1].strip() for line in refused.stdout.splitlines() if line.startswith("differs:")] == [
        "uncommitted changes (git.diff)"
    ]
    assert reproductions(workdir, "lenet5-synthetic") == []


def test_another_commit_is_one_line_before_anything_runs(make_cfg, workdir, monkeypatch):
    recorded_at, here = "c0ffee" * 6 + "c0ff", "bead" * 10
    monkeypatch.setattr(record, "git_state", lambda: record.GitState(recorded_at))
    recorded = run(make_cfg("ratio=0.5"))
    monkeypatch.setattr(record, "git_state", lambda: record.GitState(here))

    refused = reproduce(workdir, recorded["run_id"])

    assert refused.returncode == 2
    assert [line for line in refused.stdout.splitlines() if line.startswith("differs:")] == [
        f"differs: git commit: recorded {recorded_at}, here {here}"
    ]
    assert reproductions(workdir, "lenet5-synthetic") == []


def test_a_run_recorded_before_its_environment_says_so_and_allow_checks_its_tags(make_cfg, workdir, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(record, "files", lambda *_: {})  # as runs were recorded before environment.json
        older = run(make_cfg("ratio=0.5"))

    result = reproduce(workdir, older["run_id"])

    assert result.returncode == 2
    assert Artifact.ENVIRONMENT in one_error_line(result)
    assert reproductions(workdir, "lenet5-synthetic") == []
    allowed = reproduce(workdir, older["run_id"], "--allow")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_the_dry_run_prints_the_command_that_reproduces_the_run(make_cfg, workdir, cli):
    recorded = run(make_cfg("method=structured", "scope=local", "ratio=0.4", "finetune.lr=0.003"))

    result = reproduce(workdir, recorded["run_id"], "--dry-run")

    assert result.returncode == 0, result.stderr
    assert reproductions(workdir, "lenet5-synthetic") == []
    (line,) = result.stdout.strip().splitlines()
    program, module, *overrides = shlex.split(line)
    assert (program, module) == ("python", "-m")
    assert overrides[0] == "prunelab"
    assert {"method=structured", "scope=local", "ratio=0.4", "finetune.lr=0.003", "force=true"} <= set(overrides)
    by_hand = cli(*overrides[1:], tiny=False)
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    (again,) = reproductions(workdir, "lenet5-synthetic")
    assert again.data.tags[Tag.RUN_KEY] == client(workdir).get_run(recorded["run_id"]).data.tags[Tag.RUN_KEY]


@pytest.mark.parametrize(
    "value",
    ["/data/my folder", "it's", "C:\\data", "ends\\", "1.5", "true", "", "a,b", [1, "a b"], {"k": 1}, 1e-05, None],
)
def test_a_recorded_value_is_written_as_an_override_that_reads_back(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    line = override("dataset.root", value)
    assert OverridesParser.create().parse_override(line).value() == value


def test_only_what_is_measured_is_left_out_of_the_comparison():
    measured = [
        Metric.PRUNE_SECONDS,
        Metric.cost(Metric.PRUNED, Metric.latency_ms(1)),
        Metric.cost_ratio(Metric.latency(64), Metric.INT8),
        Metric.cost(Metric.DENSE, Metric.TOKENS_PER_S),
        Metric.LATENCY_THREADS,
    ]
    results = [
        Metric.TEST_ACCURACY,
        Metric.cost_ratio(Metric.MACS),
        Metric.cost(Metric.PRUNED, Metric.FILE_BYTES),
        Metric.LATENCY_SEQ_LEN,
        Metric.at(Metric.DENSE, Metric.TEST_PERPLEXITY),
    ]
    assert [Metric.measured(m) for m in measured + results] == [True] * len(measured) + [False] * len(results)


def sweep_children(workdir: Path, parent: str) -> list:
    """The pruned runs filed under sweep ``parent``."""
    c = client(workdir)
    ids = [e.experiment_id for e in c.search_experiments()]
    return [
        r for r in c.search_runs(ids, f"tags.`{Tag.in_sweep(parent)}` = 'true'") if r.data.tags[Tag.ROLE] == Role.PRUNED
    ]


def curves_of(workdir: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    c = client(workdir)
    keys = [k for k in c.get_run(run_id).data.metrics if k.startswith("accuracy_vs_")]
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k)) for k in keys}


def test_a_three_point_sweep_reproduces_its_points_its_dense_model_and_its_curves(cli, workdir):
    assert cli("-m", "ratio=0.3,0.5,0.7").returncode == 0
    (parent,) = [r for r in client(workdir).search_runs(["1"]) if r.data.tags[Tag.ROLE] == Role.SWEEP]
    recorded = {r.info.run_id: r for r in sweep_children(workdir, parent.info.run_id)}
    assert record.reproduce_command(parent.info.run_id, uri(workdir)) in parent.data.tags[Tag.NOTE]

    dry = reproduce(workdir, parent.info.run_id, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    commands = dry.stdout.splitlines()  # one per point (a ratio at its default is not named)
    assert len(set(commands)) == 3
    assert all(c.startswith("python -m prunelab ") for c in commands)

    result = reproduce(workdir, parent.info.run_id)

    assert result.returncode == 0, result.stdout + result.stderr
    (again,) = [
        r
        for r in client(workdir).search_runs(
            [client(workdir).get_experiment_by_name("lenet5-synthetic-reproduced").experiment_id]
        )
        if r.data.tags[Tag.ROLE] == Role.SWEEP
    ]
    assert (again.info.status, again.data.tags[Tag.REPRODUCES]) == ("FINISHED", parent.info.run_id)
    points = sweep_children(workdir, again.info.run_id)
    assert sorted(p.data.tags[Tag.REPRODUCES] for p in points) == sorted(recorded)
    for p in points:
        was = recorded[p.data.tags[Tag.REPRODUCES]]
        assert p.data.tags[Tag.RUN_KEY] == was.data.tags[Tag.RUN_KEY]
        assert computed(p.data.metrics) == computed(was.data.metrics)
    # the reproduction's curves, logged as a sweep logs them, are the recorded ones step by step
    recorded_curves = curves_of(workdir, parent.info.run_id)
    assert recorded_curves
    assert curves_of(workdir, again.info.run_id) == recorded_curves
    lines = result.stdout.splitlines()
    assert len([line for line in lines if line.startswith("point ") and ": identical" in line]) == 3
    assert len([line for line in lines if line.startswith("dense ") and ": identical" in line]) == 1
    curve_steps = [line.split()[0] for line in lines if line.startswith("accuracy_vs_sparsity/")]
    assert {step.rsplit("@", 1)[1] for step in curve_steps} == {"0", "300", "500", "700", "1000"}
    assert lines[-1].startswith("identical")

    # a tampered point: exit 1 naming it; --points draws a sample
    for run_id, r in recorded.items():
        client(workdir).log_metric(run_id, Metric.TEST_ACCURACY, r.data.metrics[Metric.TEST_ACCURACY] + 0.25)
    sample = reproduce(workdir, parent.info.run_id, "--points", "1", "--seed", "3")
    assert sample.returncode == 1, sample.stdout + sample.stderr
    (drawn,) = [line for line in sample.stdout.splitlines() if line.startswith("point ") and "different" in line]
    assert Metric.TEST_ACCURACY in drawn
    newest = max(
        (r for r in client(workdir).search_runs(["2"]) if r.data.tags[Tag.ROLE] == Role.SWEEP),
        key=lambda r: r.info.start_time,
    )
    assert len(sweep_children(workdir, newest.info.run_id)) == 1
