"""Schedules: every one composes with every method and scope, reaches its target, never revives a
pruned entry, and leaves its trajectory in the run's metric history."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import nbclient
import nbformat
import pytest
import torch
from conftest import cli_env, runs, tiny_overrides
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from torch import nn

from prunelab import analysis
from prunelab.experiment import runner
from prunelab.experiment.runner import run
from prunelab.experiment.session import RunSession
from prunelab.experiment.train import steps_per_epoch
from prunelab.names import Artifact, Metric
from prunelab.pruning import Mask, PruningError
from prunelab.pruning.allocation import erk_ratios
from prunelab.pruning.schedules import Gradual, Lottery, regrow

SCHEDULES = {
    "iterative": ["schedule=iterative", "schedule.rounds=3", "finetune.epochs=2"],
    "gradual": ["schedule=gradual", "schedule.every=1", "finetune.epochs=1"],
    "lottery": ["schedule=lottery", "schedule.fraction=0.5"],
}
DYNAMIC = ["schedule=dynamic", "schedule.every=2", "finetune.epochs=2"]
RATIO = 0.7


def reshuffled(weight: torch.Tensor) -> torch.Tensor:
    """A criterion that scores every weight afresh at random on every call."""
    return torch.rand(weight.shape)


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("method", ["unstructured", "structured"])
@pytest.mark.parametrize("scope", ["global", "local", "lamp"])
def test_every_schedule_method_and_scope_reach_the_target(make_cfg, schedule, method, scope):
    m = run(make_cfg(*SCHEDULES[schedule], f"method={method}", f"scope={scope}", f"ratio={RATIO}"))
    if method == "unstructured":
        assert abs(m[Metric.SPARSITY_PRUNABLE] - RATIO) < 1e-3
    else:
        assert abs(m[Metric.SPARSITY_CHANNELS] - RATIO) < 1e-2  # whole channels of 226
        assert _history(m["run_id"], Metric.SCHEDULE_CHANNELS)[-1][1] == m[Metric.SPARSITY_CHANNELS]
    sparsity = [v for _, v in _history(m["run_id"], Metric.SCHEDULE_SPARSITY)]
    assert len(sparsity) > 1
    assert sparsity == sorted(sparsity)
    assert sparsity[-1] == pytest.approx(m[Metric.SPARSITY_PRUNABLE])


SCOPED = [
    ("unstructured", "sensitivity"),
    ("structured", "sensitivity"),
    ("unstructured", "erk"),
    ("unstructured", "plan"),
    ("structured", "plan"),
]


@pytest.mark.parametrize(
    ("schedule", "method", "scope"),
    # dynamic sparse training moves single weights: it refuses channels (tested below)
    [
        (sch, m, sc)
        for sch in [*SCHEDULES, "dynamic"]
        for m, sc in SCOPED
        if not (sch == "dynamic" and m == "structured")
    ],
)
def test_every_schedule_takes_the_measuring_the_erk_and_the_planned_scopes(make_cfg, schedule, method, scope):
    extra = {"sensitivity": ["scope.samples=32", "scope.grid=[0.5,0.9,0.95]"], "erk": ["criterion=random"], "plan": []}[
        scope
    ]
    if scope == "plan":  # a plan saved by a oneshot run of the same method and ratio
        saved = run(make_cfg(f"method={method}", f"ratio={RATIO}"))
        extra = [f"plan=runs:/{saved['run_id']}/plan.json"]
    args = DYNAMIC if schedule == "dynamic" else SCHEDULES[schedule]
    m = run(make_cfg(*args, f"method={method}", f"scope={scope}", *extra, f"ratio={RATIO}"))
    if method == "unstructured":
        assert abs(m[Metric.SPARSITY_PRUNABLE] - RATIO) < 1e-3
    else:
        assert abs(m[Metric.SPARSITY_CHANNELS] - RATIO) < 1e-2


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_a_schedule_never_revives_a_pruned_weight(make_cfg, schedule, method):
    # fresh scores at every call: pruning afresh each time would pick other weights
    m = run(
        make_cfg(
            *SCHEDULES[schedule],
            f"method={method}",
            f"ratio={RATIO}",
            "criterion=random",
            "criterion._target_=test_schedules.reshuffled",
            "criterion._partial_=true",
        )
    )
    sparsity = _history(m["run_id"], Metric.SCHEDULE_SPARSITY)
    changed = _history(m["run_id"], Metric.SCHEDULE_CHANGED)
    # every flipped entry is a newly pruned one: the flips are exactly the rise in pruned weights
    for (_, before), (_, after), (_, flipped) in zip(sparsity, sparsity[1:], changed[1:]):
        assert flipped == round((after - before) * m[Metric.PARAMS_PRUNABLE])


def test_iterative_with_one_round_is_oneshot_exactly(make_cfg):
    oneshot = run(make_cfg("ratio=0.6"))
    one_round = run(make_cfg("ratio=0.6", "schedule=iterative", "schedule.rounds=1"))
    same = {
        k: v for k, v in oneshot.items() if k != "run_id" and isinstance(v, float) and not k.startswith("time.")
    }  # wall times differ
    assert same == {k: one_round[k] for k in same}


def test_iterative_removes_the_same_fraction_of_what_is_left_each_round(make_cfg):
    m = run(make_cfg("schedule=iterative", "schedule.rounds=3", "ratio=0.875", "finetune.epochs=3"))
    steps, sparsity = zip(*_history(m["run_id"], Metric.SCHEDULE_SPARSITY))
    assert steps == (1, 2, 3)
    assert sparsity == pytest.approx([0.5, 0.75, 0.875], abs=1e-3)  # keep 1/2 of what is left, each round
    # one fine-tuning epoch per round, numbered on across the rounds
    assert [s for s, _ in _history(m["run_id"], Metric.FINETUNE_LOSS)] == [1, 2, 3]


def test_gradual_sparsity_follows_the_cubic_formula_at_every_update(make_cfg):
    cfg = make_cfg("schedule=gradual", "schedule.every=1", "schedule.end=1.0", "ratio=0.8", "finetune.epochs=2")
    m = run(cfg)
    target = dict(_history(m["run_id"], Metric.SCHEDULE_TARGET))
    sparsity = dict(_history(m["run_id"], Metric.SCHEDULE_SPARSITY))
    steps = 2 * steps_per_epoch(len(instantiate(cfg.dataset)(seed=0).train), 64)
    expected = Gradual(every=1, end=1.0).updates(0.8, steps)
    assert list(expected) == list(range(steps))  # an update after every step, the last one included
    assert target.keys() == expected.keys() == sparsity.keys()
    for t, s_t in expected.items():
        t0, n = 0, steps - 1
        assert s_t == pytest.approx(0.8 + (0.0 - 0.8) * (1 - (t - t0) / n) ** 3)  # Zhu & Gupta (2017), eq. 1
        assert target[t] == pytest.approx(s_t)
        assert abs(sparsity[t] - s_t) < 1e-3


@pytest.mark.parametrize("schedule", ["iterative", "gradual", "lottery"])
def test_a_schedule_that_nm_cannot_step_through_fails_before_dense_training(make_cfg, schedule):
    cfg = make_cfg(f"schedule={schedule}", "method=nm", "ratio=0.5")  # N:M prunes 1 - n/m = 0.5 or nothing
    with pytest.raises(PruningError, match="ratio"):
        run(cfg)
    assert not [p for p in Path(cfg.cache_dir).rglob("*") if p.is_file()]  # no dense model was trained


# --- lottery tickets --------------------------------------------------------------------------


def test_lottery_levels_prune_a_fraction_of_what_is_left_down_to_the_ratio():
    targets = Lottery(fraction=0.2).targets(0.964)
    assert len(targets) == 15
    assert targets[-1] == 0.964
    assert targets[:3] == pytest.approx([0.2, 0.36, 0.488])


@pytest.mark.parametrize(("rewind", "control"), [(0, "ticket"), (1, "reinit")])
def test_every_level_restarts_the_survivors_from_the_rewind_point_and_holds_the_pruned_at_zero(
    make_cfg, monkeypatch, rewind, control
):
    seen = {"levels": 0}

    class Watched(RunSession):
        """The runner's session, checking what every lottery level trains from."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if rewind == 0:
                seen["rewind"] = self.init

        def train(self, net, mask, seed, epochs=None, desc=""):
            if mask is None:  # the rewind point: dense training's first epoch(s), again
                super().train(net, mask, seed, epochs, desc)
                seen["rewind"] = {k: v.clone() for k, v in net.state_dict().items()}
                return
            start = seen["rewind"] if net is self.model else self.fresh(seed)  # the control: a fresh init
            for name, p in net.named_parameters():
                m = mask.masks.get(name)
                expected = start[name] * m if m is not None else start[name]
                assert torch.equal(p.detach(), expected), name  # exactly the rewound survivors
            super().train(net, mask, seed, epochs, desc)
            for name in mask.prunable:
                assert not bool(dict(net.named_parameters())[name][~mask.masks[name]].any())  # pruned stay zero
            seen["levels"] += net is self.model

    monkeypatch.setattr(runner, "RunSession", Watched)
    m = run(
        make_cfg(
            "schedule=lottery",
            f"schedule.rewind={rewind}",
            f"schedule.control={control}",
            "ratio=0.75",
            "schedule.fraction=0.5",
            "train.epochs=2",
        )
    )
    assert seen["levels"] == 2
    remaining = _history(m["run_id"], Metric.LEVEL_REMAINING)
    assert [s for s, _ in remaining] == [0, 1, 2]
    assert [v for _, v in remaining] == pytest.approx([1, 0.5, 0.25], abs=1e-3)
    if control == "reinit":
        assert [s for s, _ in _history(m["run_id"], Metric.REINIT_TEST_ACCURACY)] == [1, 2]
        assert m[Metric.TEST_ACCURACY] == _history(m["run_id"], Metric.REINIT_TEST_ACCURACY)[-1][1]  # the control ships


def test_the_output_layer_can_be_pruned_at_its_own_rate_per_level(make_cfg):
    m = run(
        make_cfg(
            "schedule=lottery",
            "schedule.fraction=0.5",
            "schedule.output_fraction=0.25",
            "ratio=0.75",
            "model=lenet300_100",
        )
    )
    sets = mlflow.artifacts.load_dict(f"runs:/{m['run_id']}/plan.json")["sets"]
    *rest, output = sets  # in layer order: the output layer last
    assert sets[output]["ratio"] == pytest.approx(1 - 0.75**2, abs=1 / sets[output]["units"])  # 2 levels of 25%
    kept, units = (sum(sets[n][k] for n in rest) for k in ("kept", "units"))
    assert 1 - kept / units == pytest.approx(0.75, abs=1e-3)  # the others by the scope, to the ratio
    remaining = _history(m["run_id"], Metric.LEVEL_REMAINING)[-1][1]  # of all the weights, the output layer's too
    assert remaining == pytest.approx((kept + sets[output]["kept"]) / (units + sets[output]["units"]))


def test_an_output_layer_pruned_apart_and_ignored_at_once_is_refused_in_one_line(cli):
    result = cli("schedule=lottery", "schedule.output_fraction=0.1", "model=lenet300_100", "method.ignore=[classifier]")
    assert result.returncode != 0
    assert "method.ignore leaves it dense" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_lottery_killed_after_a_level_resumes_at_the_next_and_ends_with_the_uninterrupted_mask(
    cli, workdir, tmp_path
):
    args = [
        "schedule=lottery",
        "schedule.fraction=0.5",
        "ratio=0.9",
        "train.epochs=10",
        "dataset.train_size=2048",
    ]  # 4 levels: 0.5, 0.75, 0.875, 0.9
    folder = workdir / "cache" / "schedules"
    child = subprocess.Popen(
        [sys.executable, "-m", "prunelab", *tiny_overrides(workdir), *args],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    level, deadline = 0, time.time() + 300
    while level < 2 and child.poll() is None and time.time() < deadline:
        for path in folder.glob("*/schedule.pt"):
            level = torch.load(path, weights_only=True)["level"]
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert level >= 2, "the run ended before a second level was checkpointed"

    (killed,) = runs(workdir, "pruned")
    assert killed.info.status == "RUNNING"  # SIGKILL: nothing could end it

    assert cli(*args).returncode == 0  # rerun: ends the dead run KILLED, then resumes
    statuses = {r.info.run_id: r.info.status for r in runs(workdir)}
    assert statuses[killed.info.run_id] == "KILLED"
    assert "RUNNING" not in statuses.values()
    (resumed,) = [r for r in runs(workdir, "pruned") if r.info.status == "FINISHED"]
    assert resumed.data.metrics[Metric.SCHEDULE_RESUMED_AFTER] == level
    assert not list(folder.glob("*/schedule.pt"))  # a finished run leaves no checkpoint
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    frame = analysis.load_runs([resumed.info.experiment_id])
    levels = frame[frame["run_id"] == resumed.info.run_id]["level"]
    assert sorted(levels) == [1, 2, 3, 4]  # the levels done before the kill are points of the resumed run too

    fresh = tmp_path / "uninterrupted"
    fresh.mkdir()
    shutil.copy(workdir / "mlflow.db", fresh / "mlflow.db")
    done = subprocess.run(
        [sys.executable, "-m", "prunelab", *tiny_overrides(fresh), *args, "force=true"],
        cwd=fresh,
        env=cli_env(fresh),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (whole,) = [
        r for r in runs(fresh, "pruned") if r.info.status == "FINISHED" and r.info.run_id != resumed.info.run_id
    ]

    def final_mask(run_id, uri):
        path = MlflowClient(uri).download_artifacts(run_id, Artifact.MASKED_WEIGHTS, str(tmp_path / run_id))
        return torch.load(path, weights_only=True)["mask"]["masks"]

    a = final_mask(resumed.info.run_id, f"sqlite:///{workdir / 'mlflow.db'}")
    b = final_mask(whole.info.run_id, f"sqlite:///{fresh / 'mlflow.db'}")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert Metric.SCHEDULE_RESUMED_AFTER not in whole.data.metrics


def test_the_analysis_reads_every_lottery_level_as_a_point_and_the_notebook_draws_the_figure(cli, workdir):
    done = cli(
        "-m",
        "schedule=lottery",
        "schedule.fraction=0.5",
        "ratio=0.75",
        "seed=0,1",
        "schedule.control=ticket,reinit",
        "tracking.experiment=lt",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    frame = analysis.load_runs(["lt"])
    levels = frame[frame["level"].notna()]
    assert len(levels) == 4 * 2
    assert set(levels["ratio"]) == {0.5, 0.75}
    for _, row in levels.iterrows():  # a control run's points are its control's
        control = row["variant"] == "schedule.control=reinit"
        logged = dict(_history(row["run_id"], Metric.REINIT_TEST_ACCURACY if control else Metric.LEVEL_TEST_ACCURACY))
        assert row[Metric.TEST_ACCURACY] == logged[row["level"]]
    points = analysis.aggregate_seeds(frame)
    assert sorted(points["variant"]) == ["schedule.control=reinit"] * 2 + ["schedule.control=ticket"] * 2
    assert list(points["test_accuracy_count"]) == [2, 2, 2, 2]  # only seeds of one level are averaged

    os.environ.update(PRUNELAB_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}", PRUNELAB_EXPERIMENT="lt")
    try:
        nb = nbformat.read(Path(__file__).resolve().parents[1] / "analysis" / "lottery.ipynb", as_version=4)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs not stripped"
        nbclient.NotebookClient(nb, timeout=180, resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for key in ("PRUNELAB_TRACKING_URI", "PRUNELAB_EXPERIMENT"):
            os.environ.pop(key, None)
    assert "image/png" in nb.cells[-1].outputs[0]["data"]


# --- dynamic sparse training -------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "criterion"), [("global", "l2"), ("local", "l2"), ("lamp", "l2"), ("erk", "random")])
def test_dynamic_training_holds_the_sparsity_to_the_weight_while_its_mask_moves(make_cfg, scope, criterion):
    m = run(make_cfg(*DYNAMIC, f"scope={scope}", f"criterion={criterion}", f"ratio={RATIO}"))
    sparsity, changed = _history(m["run_id"], Metric.SCHEDULE_SPARSITY), _history(m["run_id"], Metric.SCHEDULE_CHANGED)
    moved = dict(_history(m["run_id"], Metric.SCHEDULE_FRACTION))
    assert len(sparsity) >= 3
    pruned = round(sparsity[0][1] * m[Metric.PARAMS_PRUNABLE])
    assert abs(pruned / m[Metric.PARAMS_PRUNABLE] - RATIO) < 1e-3
    assert all(round(v * m[Metric.PARAMS_PRUNABLE]) == pruned for _, v in sparsity)  # the same count, every update
    assert all(flipped > 0 for _, flipped in changed)  # the mask moves at every update
    steps = [t for t, _ in changed]
    assert [moved[t] for t in steps] == sorted((moved[t] for t in steps), reverse=True)  # the fraction decays


def test_the_static_control_keeps_its_first_mask(make_cfg):
    m = run(make_cfg(*DYNAMIC, "schedule.static=true", f"ratio={RATIO}"))
    assert not _history(m["run_id"], Metric.SCHEDULE_CHANGED)
    assert abs(m[Metric.SPARSITY_PRUNABLE] - RATIO) < 1e-3


def test_dynamic_training_refuses_channels_before_dense_training(make_cfg):
    cfg = make_cfg(*DYNAMIC, "method=structured")
    with pytest.raises(PruningError, match="use method=unstructured"):
        run(cfg)
    assert not [p for p in Path(cfg.cache_dir).rglob("*") if p.is_file()]


def test_regrow_drops_the_smallest_survivors_and_grows_the_largest_gradients():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.1, 0.0, 0.3]]))
    layer.weight.grad = torch.tensor([[0.0, 0.0, -0.9, 0.1]])
    mask = Mask({"weight": torch.tensor([[True, True, False, True]])}, ("weight",))
    moved = regrow(mask, dict(layer.named_parameters()), 1 / 3)  # one of three survivors moves
    assert moved.masks["weight"].tolist() == [[True, False, True, True]]  # -0.1 out, the -0.9 gradient in


def test_erk_densities_follow_the_formula_on_hand_made_shapes():
    ratios = erk_ratios({"a": (10, 100), "b": (10, 10)}, 0.9)  # keep 110 of 1,100
    scale = 110 / (0.11 * 1000 + 0.2 * 100)  # density = scale * (n_in + n_out) / (n_in * n_out)
    assert ratios == pytest.approx({"a": 1 - 0.11 * scale, "b": 1 - 0.2 * scale})
    assert erk_ratios({"small": (2, 2), "big": (100, 100)}, 0.5)["small"] == 0.0  # full: left dense


def test_the_rewind_point_is_dense_trainings_own_state_after_that_epoch(make_cfg):
    from prunelab.experiment.settings import Settings
    from prunelab.experiment.train import seed_everything, train
    from prunelab.models import build

    s = Settings.from_config(make_cfg("train.epochs=3"))
    seed_everything(s.seed)
    data = s.dataset(seed=s.seed)
    model = build(s.model, data.in_shape, data.num_classes)
    again = copy.deepcopy(model)
    after = {}
    train(model, data, s.train, s.seed, on_epoch=lambda e: after.setdefault(e.epoch, copy.deepcopy(model.state_dict())))
    train(again, data, s.train, s.seed, epochs=1)  # what a lottery with rewind=1 recomputes
    assert all(torch.equal(after[1][k], v) for k, v in again.state_dict().items())
    assert not all(torch.equal(after[3][k], v) for k, v in again.state_dict().items())
