"""The sensitivity scan's trials replay what the forward pass finishes before the pruned set, and
get exactly the accuracies that recomputing everything gets."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch
from torch import nn

from prunelab.pruning import PruneData, Sensitivity, probe, prune

RUNS: dict[str, int] = {}


class Counted(nn.Module):
    """Counts how often its layer really computes (a replayed module's hooks still fire)."""

    def __init__(self, name: str, layer: nn.Module):
        super().__init__()
        self.name, self.layer = name, layer

    def forward(self, x):
        RUNS[self.name] = RUNS.get(self.name, 0) + 1
        return self.layer(x)


class Net(nn.Module):
    """In-place ops downstream of replayed outputs, a module called twice, a residual add, and
    enough inputs for two validation chunks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            Counted("stem.0", nn.Conv2d(1, 8, 3, padding=1)), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.act = nn.ReLU(inplace=True)
        self.block = Counted("block", nn.Conv2d(8, 8, 3, padding=1))
        self.head = Counted("head", nn.Linear(8 * 6 * 6, 10))

    def forward(self, x):
        h = self.act(self.stem(x).add_(0.5))  # in place, and not idempotent
        h = self.act(self.block(h)) + h
        return self.head(h.flatten(1))


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1500, 1, 6, 6)
    with torch.no_grad():
        y = net(x).argmax(1)  # the unpruned net is right on every example: every pruning costs
    return net, PruneData((x[:64], y[:64]), (x, y))


def _scan(net, data, method, replay, monkeypatch):
    monkeypatch.setattr(probe, "REPLAY", replay)
    scope = Sensitivity(grid=[0.3, 0.6, 0.9], samples=1500)
    ignore = ["head.layer"] if method == "structured" else None  # the output classes stay
    pruned = prune(net, method, scope, 0.5, example_inputs=data.val[0][:1], data=data, ignore=ignore)
    return pd.read_csv(io.StringIO(pruned.report["sensitivity.csv"]))  # the scan, as the run logs it


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_replayed_trials_get_the_accuracies_of_recomputed_ones(net_and_data, method, monkeypatch):
    net, data = net_and_data
    replayed = _scan(net, data, method, True, monkeypatch)
    recomputed = _scan(net, data, method, False, monkeypatch)
    assert replayed["accuracy"].nunique() > 5  # the trials differ, so equal tables mean something
    assert replayed.equals(recomputed)


def test_a_trial_runs_only_what_follows_the_pruned_set(net_and_data, monkeypatch):
    net, data = net_and_data
    RUNS.clear()
    _scan(net, data, "unstructured", True, monkeypatch)
    chunks, trials = 2, 3  # per set: the grid's three ratios
    # sets in forward order: stem.0, stem.2, block, head. A layer computes in the base trial and in
    # every trial of its own set and of the sets before it; of a later set's trials only in the
    # first, which stores that set's prefix
    assert {
        "stem.0": chunks * (1 + trials + 3),
        "block": chunks * (1 + 3 * trials + 1),
        "head": chunks * (1 + 4 * trials),
    } == RUNS
