"""Criteria x scopes x methods compose: every combination runs, hits its target, starts from the
current mask without reviving it; Taylor, LAMP and N:M match their definitions; plans are
reproduced; a user's own criterion works through ``_target_``."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab import models
from prunelab.data import synthetic
from prunelab.errors import UserError
from prunelab.names import Artifact, Metric, Tag
from prunelab.plugins import options, resolve
from prunelab.pruning import (
    NM,
    Coupled,
    FromPlan,
    GlobalFloor,
    Lamp,
    Lottery,
    PruneData,
    PruningError,
    Sensitivity,
    Structured,
    Taylor,
    Units,
    Wanda,
    prune,
)
from prunelab.pruning.allocation import lamp_scores
from prunelab.pruning.macs import mac_counts
from prunelab.pruning.sensitivity import choose

CRITERIA, SCOPES, METHODS = options("criterion"), options("scope"), options("method")
# Post-training methods prune nn.Linear layers row by row (scope=local): refused on LeNet-5 here,
# one line each; their own compositions are in tests/test_lm.py.
LAYERWISE = ("magnitude", "wanda", "sparsegpt")
# Depth and width pruning remove a transformer's repeated blocks, or their heads and MLP channels,
# which LeNet-5 has none of: refused here in one line; their own tests are in tests/test_depth.py
# and tests/test_width.py.
DEPTH = ("blocks", "width")
GLOBAL_METHODS = [m for m in METHODS if m not in LAYERWISE + DEPTH]
RATIO = 0.75  # nm at 1:4


@pytest.fixture(scope="module")
def data():
    return synthetic(in_shape=(1, 8, 8), num_classes=10, train_size=256, seed=0)


@pytest.fixture(scope="module")
def net(data):
    torch.manual_seed(0)
    return models.lenet5(in_shape=data.in_shape, num_classes=data.num_classes)


def _prune(net, data, method, criterion, scope, ratio=RATIO, **kw):
    prune_data = PruneData(data.train, data.val, batch_size=64)
    if scope == "plan":  # a plan of the same method, saved by a global pruning
        kw["scope"] = FromPlan(_prune(net, data, method, "l2", "global", ratio).plan)
    options = {"n": 1, "m": 4} if method == "nm" else {}
    return prune(
        net,
        method,
        kw.pop("scope", scope),
        ratio,
        criterion,
        example_inputs=data.train.x[:1],
        data=prune_data,
        **options,
        **kw,
    )


def _cannot(method: str, criterion: str, scope: str = "global") -> str | None:
    """What the one-line refusal says, where the combination cannot work: first a choice the
    method does not take (its ``takes``), then what the method itself refuses."""
    if scope == "plan" and _cannot(method, "l2", "global"):  # the plan is made by a global pruning first
        return _cannot(method, "l2", "global")
    kind = type(resolve("method", method))
    for group, chosen, default in (("criterion", criterion, "l2"), ("scope", scope, "global")):
        if group not in kind.takes and chosen != default:
            return f"method={method} takes no {group} \\({group}="
    if kind.criteria is not None and criterion not in (*kind.criteria, "l2"):  # Wanda: RIA's, or its own
        return f"method={method} takes criterion=ria in place of its own score"
    if method in LAYERWISE:
        return "use scope=local" if scope not in ("local", "owl") else "prunes nn.Linear layers"
    if criterion == "ria":  # RIA scores with calibration activations: method=wanda's
        return "criterion=ria scores weights with their calibration activations"
    if method in DEPTH:
        return f"method={method}: the model has no repeated blocks"
    if scope == "erk" and method == "structured":
        return "erk.*unstructured"  # ERK sets densities of single weights
    if scope == "owl":  # OWL allocates from calibration data, block by block: the layer-by-layer methods
        return "scope=owl sets each block's own sparsity; 1:4" if method == "nm" else "scope=owl sets each block's"
    if criterion == "fpgm" and method != "structured":
        return "fpgm.*structured"  # FPGM compares whole filters
    return None


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scope_and_method_compose(net, data, method, criterion, scope):
    if _cannot(method, criterion, scope):
        with pytest.raises(PruningError, match=_cannot(method, criterion, scope)):
            _prune(net, data, method, criterion, scope)
        return
    mask = _prune(net, data, method, criterion, scope).mask
    mask.validate(net)
    if method == "structured":
        assert abs(mask.channel_sparsity - RATIO) < 0.05  # channels come in whole counts per layer
    else:
        assert abs(mask.sparsity - RATIO) < 1e-3
    for name in mask.prunable:  # no layer is emptied
        assert mask.masks[name].any(), name


@pytest.mark.parametrize("scope", ["global", "local", "lamp", "sensitivity"])
@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.98])
def test_unstructured_sparsity_is_the_ratio_in_every_scope(net, data, scope, ratio):
    mask = _prune(net, data, "unstructured", "l2", scope, ratio).mask
    assert abs(mask.sparsity - ratio) < 1e-3


@pytest.mark.parametrize(
    ("method", "criterion"), [(m, c) for m in GLOBAL_METHODS for c in CRITERIA if not _cannot(m, c)]
)
def test_pruning_again_from_the_current_mask_never_revives_an_entry(net, data, method, criterion):
    first = _prune(net, data, method, criterion, "global", 0.5 if method != "nm" else RATIO).mask
    masked = first.apply(copy.deepcopy(net))
    for ratio in (0.3, 0.8) if method != "nm" else (RATIO,):
        again = _prune(masked, data, method, criterion, "global", ratio, mask=first).mask
        for name, keep in first.masks.items():  # every entry the first mask pruned, biases included
            assert not (again.masks[name] & ~keep).any(), f"{name} revived at ratio {ratio}"
        if method == "unstructured":  # the ratio is the overall target, not a share of what is left
            assert abs(again.sparsity - max(ratio, first.sparsity)) < 1e-3


@pytest.mark.parametrize(("first_method", "then"), [(a, b) for a in GLOBAL_METHODS for b in GLOBAL_METHODS if a != b])
def test_a_mask_made_by_one_method_survives_another_method_on_top(net, data, first_method, then):
    first = _prune(net, data, first_method, "random", "global", RATIO if first_method == "nm" else 0.5).mask
    again = _prune(
        first.apply(copy.deepcopy(net)), data, then, "random", "global", RATIO if then == "nm" else 0.8, mask=first
    ).mask
    for name, keep in first.masks.items():
        assert not (again.masks[name] & ~keep).any(), f"{first_method} then {then}: {name} revived"


# --- options ----------------------------------------------------------------------------------------


def test_an_option_a_method_does_not_take_is_one_line_naming_the_ones_it_does(net, data):
    with pytest.raises(UserError) as error:
        prune(net, method="structured", normalise="none", example_inputs=data.train.x[:1])
    assert str(error.value) == "method=structured takes no option 'normalise': its options are ignore, normalize"
    # the same for an object, and for the other plug-in kinds
    with pytest.raises(UserError, match="takes no option 'normalise'"):
        prune(net, method=Structured(), normalise="none", example_inputs=data.train.x[:1])
    with pytest.raises(UserError, match="scope=sensitivity takes no option 'sample'.*samples"):
        resolve("scope", "sensitivity", sample=10)
    # a good one is used: normalize=none changes which channels the global scope keeps here
    kept = {
        normalize: prune(
            net, method="structured", normalize=normalize, ratio=0.5, example_inputs=data.train.x[:1]
        ).mask.channels
        for normalize in ("mean", "none")
    }
    assert any(not torch.equal(kept["mean"][n], kept["none"][n]) for n in kept["mean"])


def test_a_plug_ins_own_check_runs_when_it_is_made_from_python_as_from_the_config():
    for make, words in (
        (lambda: NM(n=4, m=4), "0 < n < m"),
        (lambda: Wanda(samples=0), "method.samples=0"),
        (lambda: Lottery(fraction=1.5), "schedule.fraction=1.5"),
        (lambda: Sensitivity(cost="flops"), "scope.cost='flops'"),
    ):
        with pytest.raises(PruningError, match=re.escape(words)):
            make()


# --- N:M ------------------------------------------------------------------------------------------


def test_nm_keeps_exactly_n_of_every_m_and_names_the_layers_it_cannot_group(caplog):
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.Flatten(),
        nn.Linear(8 * 16, 6),
        nn.ReLU(),
        nn.Linear(6, 10),
    )
    with caplog.at_level(logging.WARNING, "prunelab"):
        mask = prune(net, "nm", ratio=0.5, n=2, m=4).mask
    assert "0, 6 left dense" in caplog.text  # 1 input channel, 6 inputs: not divisible by 4
    assert mask.masks["0.weight"].all()
    assert mask.masks["6.weight"].all()
    assert set(mask.prunable) == {"2.weight", "4.weight"}
    conv = mask.masks["2.weight"].movedim(1, -1).reshape(-1, 4)  # groups along the input channels
    linear = mask.masks["4.weight"].reshape(-1, 4)
    for groups in (conv, linear):
        assert (groups.sum(1) == 2).all()
    with pytest.raises(PruningError, match="ratio must be 0.5"):
        prune(net, "nm", ratio=0.7, n=2, m=4)


def test_nm_keeps_the_n_largest_of_each_group():
    layer = nn.Linear(8, 1, bias=False)
    layer.weight.data = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 0.0, -2.0, 1.0]])
    mask = prune(nn.Sequential(layer), "nm", ratio=0.5, n=2, m=4).mask
    assert mask.masks["0.weight"].tolist() == [[False, True, True, False, True, False, True, False]]


# --- Taylor -----------------------------------------------------------------------------------------


def test_taylor_scores_are_w_times_the_gradient_summed_over_batches():
    """A two-layer linear net: the cross-entropy gradients by hand, batch by batch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 2, (12,))
    data = PruneData((x, y), batch_size=4, seed=0)
    scorer = Taylor(batches=3).prepare(net, data, seed=0)
    w1, w2 = net[0].weight.detach(), net[1].weight.detach()
    expected = {"0.weight": torch.zeros_like(w1), "1.weight": torch.zeros_like(w2)}
    for xb, yb in data.batches(3):
        hidden = xb @ w1.T
        dlogits = (torch.softmax(hidden @ w2.T, 1) - F.one_hot(yb, 2)) / len(yb)  # mean CE
        expected["1.weight"] += (w2 * (dlogits.T @ hidden)).abs()
        expected["0.weight"] += (w1 * ((dlogits @ w2).T @ xb)).abs()
    for name, w in (("0.weight", w1), ("1.weight", w2)):
        assert torch.allclose(scorer.weights(name, w), expected[name], rtol=1e-12, atol=0)
    # Structured: a channel's score is the sum of its weights' scores.
    rows = [Coupled("0.weight", w1, lambda t: t.reshape(t.shape[0], -1))]
    assert torch.allclose(scorer.channels("0", rows, 3).double(), expected["0.weight"].sum(1), rtol=1e-6)


def test_structured_taylor_removes_the_channels_with_the_smallest_summed_scores(net, data):
    prune_data = PruneData(data.train, batch_size=64)
    mask = prune(net, "structured", "local", 0.5, "taylor", example_inputs=data.train.x[:1], data=prune_data).mask
    per_weight = Taylor().prepare(net, prune_data, 0).weights("features.0.weight", net.features[0].weight)
    sums = per_weight.reshape(per_weight.shape[0], -1).double().sum(1)
    kept = mask.channels["features.0"]
    assert sums[kept].min() > sums[~kept].max()


# --- a floor under the global threshold ---------------------------------------------------------


def test_a_floored_global_threshold_keeps_every_layers_floor_and_still_meets_the_ratio(net, data):
    x = data.train.x[:1]
    plain = prune(net, "structured", "global", 0.95, example_inputs=x)
    floored = prune(net, "structured", GlobalFloor(floor=0.04), 0.95, example_inputs=x)
    units = {name: entry["units"] for name, entry in plain.plan["sets"].items()}
    kept = {name: entry["kept"] for name, entry in floored.plan["sets"].items()}
    assert any(plain.plan["sets"][n]["kept"] < math.ceil(0.04 * u) for n, u in units.items())  # global collapses one
    assert all(kept[n] >= math.ceil(0.04 * u) for n, u in units.items())  # the floor holds everywhere
    total = sum(units.values())
    assert sum(kept.values()) == total - round(0.95 * total)  # and the overall ratio is met exactly
    with pytest.raises(PruningError, match="lower scope.floor"):
        prune(net, "structured", GlobalFloor(floor=0.5), 0.95, example_inputs=x)


def test_above_the_floors_the_floored_threshold_is_the_global_one():
    units = Units(
        {"a": 4, "b": 4}, {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([0.1, 0.2, 5.0, 6.0])}.get
    )
    assert {n: k.tolist() for n, k in GlobalFloor(floor=0.25)(units, 0.5).items()} == {
        "a": [False, False, True, True],
        "b": [False, False, True, True],
    }  # the floors do not bind
    assert {n: k.tolist() for n, k in GlobalFloor(floor=0.5)(units, 0.5).items()} == {
        "a": [False, False, True, True],
        "b": [False, False, True, True],
    }
    assert GlobalFloor(floor=0.25)(units, 0.75)["a"].tolist() == [False, False, False, True]  # a keeps its best
    assert GlobalFloor(floor=0.0)(units, 0.75)["a"].tolist() == [False, False, False, False]  # as global does


# --- LAMP -------------------------------------------------------------------------------------------


def test_lamp_scores_follow_the_paper_on_a_hand_made_layer():
    # w^2 = 1, 2, 3, 4 (any order): score(u) = w_u^2 / sum of w_v^2 over v >= u in sorted order
    scores = torch.tensor([3.0, 1.0, 4.0, 2.0]).sqrt()  # what the magnitude criterion gives: |w|
    assert torch.allclose(lamp_scores(scores), torch.tensor([3 / 7, 1 / 10, 4 / 4, 2 / 9]))
    pruned = torch.tensor([3.0, -float("inf"), 4.0, 2.0]).sqrt()  # a pruned entry counts as zero
    assert torch.allclose(lamp_scores(pruned)[[0, 2, 3]], torch.tensor([3 / 7, 1.0, 2 / 9]))


def test_lamp_cuts_one_global_threshold_through_the_lamp_scores():
    a = nn.Linear(4, 1, bias=False)
    b = nn.Linear(2, 1, bias=False)
    a.weight.data = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).sqrt()
    b.weight.data = torch.tensor([[0.1, 0.2]]).sqrt()
    net = nn.ModuleDict({"a": a, "b": b})
    mask = prune(net, "unstructured", Lamp(), ratio=0.5).mask  # 3 of 6 go
    # LAMP: a = 1/10, 2/9, 3/7, 1; b = 0.1/0.3, 1 -> the three lowest: a1 (0.1), a2 (0.22), b1 (0.33)
    assert mask.masks["a.weight"].tolist() == [[False, False, True, True]]
    assert mask.masks["b.weight"].tolist() == [[False, True]]


# --- plans, sensitivity, budgets ------------------------------------------------------------------


def test_a_plan_reproduces_every_layers_count_and_a_misfit_is_one_line_naming_the_layers(net, data):
    saved = _prune(net, data, "unstructured", "l2", "lamp", 0.9).plan
    plan = json.loads(json.dumps(saved))  # what plan.json holds
    torch.manual_seed(5)
    other = models.lenet5(in_shape=data.in_shape, num_classes=10)  # another seed
    again = prune(other, "unstructured", FromPlan(plan), 0.0, "random").mask
    for name, entry in plan["sets"].items():
        assert int(again.masks[name].sum()) == entry["kept"]
    smaller = models.lenet300_100(in_shape=data.in_shape, num_classes=10)
    with pytest.raises(PruningError) as error:
        prune(smaller, "unstructured", FromPlan(plan), 0.0)
    message = str(error.value)
    assert "\n" not in message
    assert "features.0.weight" in message
    assert "features.3.weight" in message


def test_sensitivity_chooses_more_where_the_loss_is_small():
    table = []
    for r in (0.0, 0.5, 0.9):
        table += [{"set": "robust", "ratio": r, "loss": 0.01 * r}, {"set": "fragile", "ratio": r, "loss": 0.5 * r}]
    import pandas as pd

    ratios = choose(pd.DataFrame(table), {"robust": 100, "fragile": 100}, 0.5)
    assert ratios["robust"] > ratios["fragile"]
    assert abs(ratios["robust"] + ratios["fragile"] - 1.0) < 1e-9


def test_the_sensitivity_scan_is_reported_and_its_choice_is_the_plan(net, data):
    scope = Sensitivity(grid=[0.5, 0.9], samples=64)
    pruned = _prune(net, data, "unstructured", "l2", scope, 0.8)
    mask, table = pruned.mask, pruned.report["sensitivity.csv"]
    assert table.count("\n") == 1 + len(mask.prunable) * 3  # header + ratio 0 and the grid, per layer
    assert pruned.report["sensitivity.png"]().startswith(b"\x89PNG")
    assert abs(mask.sparsity - 0.8) < 1e-3
    assert {n: e["kept"] for n, e in pruned.plan["sets"].items()} == {
        n: int(mask.masks[n].sum()) for n in mask.prunable
    }


@pytest.mark.parametrize("scope", ["global", "local", "sensitivity"])
def test_a_macs_budget_is_met_by_every_scope(net, data, scope):
    x = data.train.x[:1]
    mask = _prune(net, data, "structured", "l2", scope, 0.5, budget_macs=0.4).mask
    dense = mac_counts(net, x)[0]
    kept = mac_counts(mask.apply(copy.deepcopy(net)), x)[1] / dense
    assert 0.3 < kept <= 0.4


def test_fpgm_drops_the_filter_nearest_to_the_others():
    conv = nn.Conv2d(1, 5, 1, bias=False)
    conv.weight.data = torch.tensor([0.0, 1.0, 2.0, 6.0, 10.0]).view(5, 1, 1, 1)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 2))
    mask = prune(net, "structured", "local", 0.2, "fpgm", ignore=["3"], example_inputs=torch.zeros(1, 1, 4, 4)).mask
    # summed distances to the others: 19, 16, 15, 23, 35: the filter at 2.0 is the geometric median
    assert mask.channels["0"].tolist() == [True, True, False, True, True]


def largest_last(weight, name):  # noqa: ARG001 (a criterion function's signature)
    """A user's own criterion (used through criterion._target_ in test_runner_*)."""
    return -weight.abs()


def test_a_users_own_criterion_plugs_in_by_target_end_to_end(make_cfg):
    import mlflow

    from prunelab.experiment.runner import run

    metrics = run(
        make_cfg(
            "criterion=random",
            "criterion._target_=test_composable.largest_last",
            "criterion._partial_=true",
            "ratio=0.5",
        )
    )
    plan = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=metrics["run_id"], artifact_path=Artifact.PLAN)).read_text()
    )
    assert abs(metrics[Metric.SPARSITY_PRUNABLE] - 0.5) < 1e-3
    assert plan["computed_on"]["criterion"] == "largest_last"  # named by what ran, not the option it replaced
    run_tags = mlflow.get_run(metrics["run_id"]).data.tags
    assert run_tags[Tag.group(Tag.CRITERION)] == "largest_last"


def test_a_run_with_the_sensitivity_scope_at_a_macs_budget_logs_its_scan_and_plan(make_cfg):
    import mlflow

    from prunelab.experiment.runner import run

    metrics = run(make_cfg("method=structured", "scope=sensitivity", "scope.samples=128", "budget.macs=0.5"))
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(metrics["run_id"])}
    assert {"sensitivity.csv", "sensitivity.png", Artifact.PLAN, Artifact.LAYERS} <= files
    assert metrics[Metric.cost_ratio(Metric.MACS)] <= 0.5
    assert 0 < metrics[Metric.BUDGET_RATIO] < 1
    assert mlflow.get_run(metrics["run_id"]).data.params["ratio"] == "budget"


def test_a_run_with_the_nm_pattern_ships_exactly_n_of_m(make_cfg):
    from prunelab.experiment.runner import run

    metrics = run(make_cfg("method=nm", "method.n=1", "ratio=0.75", "model=lenet300_100"))
    assert abs(metrics[Metric.SPARSITY_PRUNABLE] - 0.75) < 1e-9  # every layer of it groups by 4


def test_under_a_macs_budget_the_sensitivity_choice_spends_its_loss_on_macs():
    """Two layers with the same predicted loss per channel; one channel of the first costs 10x
    the MACs: to remove MACs, the choice cuts the first; to remove channels, either."""
    import pandas as pd

    table = pd.DataFrame(
        [{"set": s, "ratio": r, "loss": 0.1 * r} for s in ("costly", "cheap") for r in (0.0, 0.5, 0.9)]
    )
    by_macs = choose(table, {"costly": 10, "cheap": 10}, 0.45, weights={"costly": 10.0, "cheap": 1.0})
    assert by_macs["costly"] > 0.45
    assert by_macs["cheap"] < 0.1
