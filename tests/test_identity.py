"""One definition of "which run is this": the run key decides skipping, the chosen options name
experiments in runs and sweeps alike, and only seeds of one point are averaged."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
from conftest import runs
from mlflow.tracking import MlflowClient

from prunelab import analysis
from prunelab.experiment.runner import run


def test_a_rerun_that_asks_for_latency_is_not_skipped_after_one_without(make_cfg):
    first = run(make_cfg("measure_latency=false"))
    assert "cost.pruned.latency_b1_ms" not in first
    again = run(make_cfg("measure_latency=false"))
    assert again["skipped"] and again["run_id"] == first["run_id"]
    timed = run(make_cfg("measure_latency=true"))
    assert not timed.get("skipped") and timed["run_id"] != first["run_id"]
    assert timed["cost.pruned.latency_b1_ms"] > 0


def test_a_run_without_the_handover_logs_no_files_and_a_rerun_asking_for_them_is_not_skipped(make_cfg):
    bare = run(make_cfg("handover=false"))
    assert not any(k.startswith(("handover.", "compact.")) for k in bare)
    # the masked weights are the run's own record, not a hand-over file
    assert [a.path for a in MlflowClient().list_artifacts(bare["run_id"], "model")] == ["model/masked_weights.pt"]
    handed = run(make_cfg("handover=true"))
    assert not handed.get("skipped") and handed["run_id"] != bare["run_id"]
    assert handed["handover.onnx.test_accuracy"] == handed["test_accuracy"]
    assert {a.path for a in MlflowClient().list_artifacts(handed["run_id"], "model")} >= {
        "model/model.onnx",
        "model/program.pt2",
    }


def test_runs_differing_only_in_width_are_never_averaged_as_seeds(make_cfg, workdir):
    for width in (4, 8):
        for seed in (0, 1):
            run(make_cfg("model=vgg_small", f"model.width={width}", f"seed={seed}", "ratio=0.5"))
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    points = analysis.aggregate_seeds(analysis.load_runs(["vgg_small-synthetic"]))
    assert sorted(points["variant"]) == ["model.width=4", "model.width=8"]
    assert list(points["test_accuracy_count"]) == [2, 2]
    # The point key alone keeps them apart, whatever the variant label says.
    df = analysis.load_runs(["vgg_small-synthetic"]).assign(variant="")
    assert list(analysis.aggregate_seeds(df)["test_accuracy_count"]) == [2, 2]


def test_a_saved_plan_applied_to_another_seed_reproduces_every_layers_sparsity(make_cfg, workdir):
    source = run(make_cfg("scope=lamp", "ratio=0.9", "seed=0"))
    applied = run(make_cfg("scope=plan", f"plan=runs:/{source['run_id']}/plan.json", "seed=1", "criterion=random"))

    def layers(run_id):
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="layers.csv")
        table = pd.read_csv(path)
        return table[table["prunable"]].set_index("parameter")["nonzero"].to_dict()

    assert layers(applied["run_id"]) == layers(source["run_id"])
    plan = json.load(open(mlflow.artifacts.download_artifacts(run_id=applied["run_id"], artifact_path="plan.json")))
    assert plan["computed_on"]["scope"] == "plan" and plan["computed_on"]["seed"] == 1


def test_a_sweep_over_models_named_unlike_their_functions_files_every_point_where_its_parent_looks(
    cli, workdir, tmp_path
):
    folder = tmp_path / "my_configs"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "net_a.yaml").write_text("_target_: prunelab.models.lenet300_100\n_partial_: true\n")
    (folder / "model" / "net_b.yaml").write_text("_target_: prunelab.models.lenet5\n_partial_: true\n")
    result = cli("-m", f"hydra.searchpath=[file://{folder}]", "model=net_a,net_b", "ratio=0.5")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    pruned = runs(workdir, "pruned")
    assert len(pruned) == 2
    names = {client.get_experiment(r.info.experiment_id).name: r.data.params["model"] for r in pruned}
    assert names == {"net_a-synthetic": "net_a", "net_b-synthetic": "net_b"}
    (parent,) = runs(workdir, "sweep")
    assert parent.data.metrics["sweep.points_finished"] == 2
