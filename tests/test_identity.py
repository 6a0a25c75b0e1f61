"""One definition of "which run is this": the run key decides skipping, the chosen options name
experiments in runs and sweeps alike, and only seeds of one point are averaged."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from conftest import runs
from mlflow.tracking import MlflowClient

from prunelab import analysis
from prunelab.config import ConfigError, compose
from prunelab.experiment.keys import identity
from prunelab.experiment.runner import run
from prunelab.names import Artifact, Metric


def test_a_rerun_that_asks_for_latency_is_not_skipped_after_one_without(make_cfg):
    first = run(make_cfg("measure_latency=false"))
    assert Metric.cost(Metric.PRUNED, Metric.latency_ms(1)) not in first
    again = run(make_cfg("measure_latency=false"))
    assert again["skipped"]
    assert again["run_id"] == first["run_id"]
    timed = run(make_cfg("measure_latency=true"))
    assert not timed.get("skipped")
    assert timed["run_id"] != first["run_id"]
    assert timed[Metric.cost(Metric.PRUNED, Metric.latency_ms(1))] > 0


def test_a_run_without_the_handover_logs_no_files_and_a_rerun_asking_for_them_is_not_skipped(make_cfg):
    bare = run(make_cfg("handover=false"))
    assert not {Metric.HANDOVER_ONNX_ACCURACY, Metric.INT8_ACCURACY, Metric.COMPACT_ACCURACY} & set(bare)
    # the masked weights are the run's own record, not a hand-over file
    assert [a.path for a in MlflowClient().list_artifacts(bare["run_id"], "model")] == [Artifact.MASKED_WEIGHTS]
    handed = run(make_cfg("handover=true"))
    assert not handed.get("skipped")
    assert handed["run_id"] != bare["run_id"]
    assert handed[Metric.HANDOVER_ONNX_ACCURACY] == handed[Metric.TEST_ACCURACY]
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


def test_a_saved_plan_applied_to_another_seed_reproduces_every_layers_sparsity(make_cfg):
    source = run(make_cfg("scope=lamp", "ratio=0.9", "seed=0"))
    applied = run(
        make_cfg("scope=plan", f"plan=runs:/{source['run_id']}/{Artifact.PLAN}", "seed=1", "criterion=random")
    )

    def layers(run_id):
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=Artifact.LAYERS)
        table = pd.read_csv(path)
        return table[table["prunable"]].set_index("parameter")["nonzero"].to_dict()

    assert layers(applied["run_id"]) == layers(source["run_id"])
    plan = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=applied["run_id"], artifact_path=Artifact.PLAN)).read_text()
    )
    assert plan["computed_on"]["scope"] == "plan"
    assert plan["computed_on"]["seed"] == 1


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
    assert parent.data.metrics[Metric.SWEEP_FINISHED] == 2


# Run keys as they were before methods declared what they take (commit 8d83b9e): the default
# options, each post-training and structured method with its usual choices, and the base config of
# every published study (HOME=/nonexistent/home, no XDG_CACHE_HOME). A method that takes no
# criterion still hashes the default one it ignores, so its runs, cached and finished, stay the
# runs they were.
RECORDED_KEYS = [
    ("", "8d25fa9d8cecc3be"),
    ("method=wanda scope=local", "dc39910fd9892b6f"),
    ("method=sparsegpt scope=local", "4c394bc504531e65"),
    ("method=nm", "908a9742ba7372fa"),
    ("model=tiny_gpt dataset=fortunes method=blocks", "fc45b8dfb8d5d219"),
    ("model=tiny_gpt dataset=fortunes method=width criterion=activation scope=local", "1681cb3c7f84035c"),
    ("method=structured criterion=taylor scope=lamp", "414af03262b5dd10"),
    ("+experiment=cifar10_resnet56_structured", "d7ff0de60a26d6e6"),
    ("+experiment=cifar10_resnet56_structured_smoke", "9e71de3f32fa3e30"),
    ("+experiment=cifar10_vgg16_structured", "76407e6a076ef8ec"),
    ("+experiment=digits_smoke", "5c6ba0eecca56018"),
    ("+experiment=distill_lenet5", "bd96a73554ca9c36"),
    ("+experiment=distill_vgg_small", "cc5c1cb69bc95845"),
    ("+experiment=fmnist_lenet5_allocation", "1d797c9ff42f5bda"),
    ("+experiment=fmnist_lenet5_allocation_macs", "4a93fbeabb4b8aad"),
    ("+experiment=fmnist_lenet5_criteria", "1d797c9ff42f5bda"),
    ("+experiment=fmnist_lenet5_criteria_macs", "d84b7b5723aaed82"),
    ("+experiment=fmnist_lenet5_criteria_raw", "d3a0eff12b9d3ef8"),
    ("+experiment=fmnist_lenet5_curves", "8d25fa9d8cecc3be"),
    ("+experiment=fmnist_lenet5_schedules", "4697d2d3f3eb1188"),
    ("+experiment=fmnist_lenet5_schedules_static", "c36875cb1e431fbe"),
    ("+experiment=fmnist_vgg_deploy", "3001c1a6c9992c1d"),
    ("+experiment=fmnist_vgg_shrunk", "3001c1a6c9992c1d"),
    ("+experiment=lm_posttrain", "9250ca8775bb2f3c"),
    ("+experiment=lm_posttrain_2of4", "9250ca8775bb2f3c"),
    ("+experiment=lm_posttrain_4of8", "9250ca8775bb2f3c"),
    ("+experiment=lm_posttrain_magnitude", "9250ca8775bb2f3c"),
    ("+experiment=lm_pretrained_posttrain", "16cb9aef17c252f9"),
    ("+experiment=lm_pretrained_posttrain_2of4", "16cb9aef17c252f9"),
    ("+experiment=lm_pretrained_posttrain_4of8", "16cb9aef17c252f9"),
    ("+experiment=lm_pretrained_posttrain_magnitude", "16cb9aef17c252f9"),
    ("+experiment=lm_structured", "4273dbabee0fb69c"),
    ("+experiment=lm_structured_hf", "f863a5c85e29ad0b"),
    ("+experiment=lottery_lenet300", "efe125486033c192"),
    ("+experiment=lottery_lenet300_rewind", "3da301d0cb06c31f"),
]


@pytest.mark.parametrize(("overrides", "key"), RECORDED_KEYS)
def test_run_keys_of_the_published_studies_are_unchanged(overrides, key, monkeypatch):
    # the pretrained studies name their checkpoint under the user cache: recorded for this home
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent/home")
    assert identity(compose(*overrides.split()), "cpu").run == key


def test_a_criterion_chosen_for_a_method_that_takes_none_is_one_line():
    with pytest.raises(
        ConfigError, match=r"^method=sparsegpt takes no criterion \(criterion=l1\): it takes a scope, calibration data"
    ):
        compose("method=sparsegpt", "criterion=l1", "scope=local")
    with pytest.raises(
        ConfigError, match=r"^method=wanda takes criterion=ria in place of its own score, not criterion=l1"
    ):
        compose("method=wanda", "criterion=l1", "scope=local")
    with pytest.raises(ConfigError, match=r"^method=blocks takes no scope \(scope=local\)"):
        compose("model=tiny_gpt", "dataset=fortunes", "method=blocks", "scope=local")


def test_a_default_the_method_ignores_is_not_refused_and_an_experiments_choice_neither():
    compose("method=wanda", "scope=local")  # the default criterion comes with the defaults
    compose("+experiment=lm_structured_hf", "method=blocks")  # its criterion and scope are width's


def test_the_python_api_refuses_a_criterion_a_method_does_not_take():
    from prunelab.pruning import PruningError, prune

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(PruningError, match="method=sparsegpt takes no criterion"):
        prune(net, "sparsegpt", scope="local", criterion="taylor", ratio=0.5)
    with pytest.raises(PruningError, match="method=wanda takes criterion=ria in place of its own score"):
        prune(net, "wanda", scope="local", criterion="taylor", ratio=0.5)
    assert prune(net, "nm", scope="local", ratio=0.5).mask.sparsity == 0.5  # N:M takes a scope (the local one)
