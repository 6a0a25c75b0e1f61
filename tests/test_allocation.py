"""The global threshold is the exact k-th smallest score, whatever the scores look like: large
inputs go through a sampled bracket, and neither ties, a missed bracket nor the way the scores are
split into layers may change the answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelab.pruning import allocation

N = 300_000  # above the plain-sort size, so the sampled bracket is what is tested


def _scores(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal(N)).astype(np.float32)
    if kind == "mostly zeros":  # an already pruned model: one score tied 90% of the time
        x[rng.random(N) < 0.9] = 0
    elif kind == "few values":
        x = rng.integers(0, 5, N).astype(np.float32)
    elif kind == "signed":
        x = rng.standard_normal(N).astype(np.float32)
    return x


KINDS = ["magnitudes", "mostly zeros", "few values", "signed"]
KS = [1, 2, N // 3, round(0.9 * N), N - 1, N]


@pytest.mark.parametrize("kind", KINDS)
def test_kth_smallest_is_exact_and_leaves_the_input_alone(kind):
    x = _scores(kind)
    values = torch.from_numpy(x.copy())
    expected = np.sort(x)
    for k in KS:
        assert allocation.kth_smallest(values, k) == expected[k - 1], k
    assert torch.equal(values, torch.from_numpy(x))


@pytest.mark.parametrize("kind", ["magnitudes", "mostly zeros"])
def test_a_missed_bracket_still_gives_the_exact_answer(kind, monkeypatch):
    x = _scores(kind)
    expected = np.sort(x)
    # A negative margin puts both bounds on one sampled value: the bracket misses almost always.
    monkeypatch.setattr(allocation, "_MARGIN_SIGMAS", -50.0)
    for k in KS:
        assert allocation.kth_smallest(torch.from_numpy(x), k) == expected[k - 1], k


def test_global_allocation_does_not_depend_on_how_scores_are_split():
    x = torch.from_numpy(_scores("mostly zeros"))
    cuts = [0, 7, 1000, N // 2, N]
    parts = {f"layer{i}": x[a:b] for i, (a, b) in enumerate(zip(cuts, cuts[1:]))}
    units = allocation.Units({n: p.numel() for n, p in parts.items()}, lambda n: parts[n])
    keep = allocation.allocate(units, 0.95, allocation.Global(), min_keep=0)
    theta = np.sort(x.numpy())[round(0.95 * N) - 1]
    for n, p in parts.items():
        assert torch.equal(keep[n], p > theta), n


def test_wrong_sizes_are_refused():
    scores = {"a": torch.rand(N)}
    with pytest.raises(ValueError, match="expected"):
        allocation.allocate(allocation.Units({"a": N + 1}, lambda n: scores[n]), 0.5, allocation.Global())
