"""DSnoT (method.refit=dsnot): the training-free swaps that refit a post-training mask, equal to
zyxxmu/DSnoT ``prune_DSnoT`` at 4c029dfa (its algorithm written out here row by row from it: the
two-pointer walks, ``return_reorder_indice``'s order, the running means of ``WrappedGPT``), after
Wanda and SparseGPT, unstructured and N:M, through the API and the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import runs
from test_blocks import gpt, tokens
from test_owl import llama_on_wikitext  # noqa: F401 (a fixture)

from prunelab.names import Metric
from prunelab.pruning import PruningError, SparseGPT, Wanda
from prunelab.pruning.dsnot import Dsnot, refit
from prunelab.pruning.seen import Seen

THRESHOLD = 0.1


def reference_row(dsn, wanda, var, pruned, cycles, threshold):
    """The unstructured branch for one row: grow from the ends of the pruned weights sorted by
    ``dsn / var``, prune from the ends of the kept ones in ``return_reorder_indice``'s order (the
    negative ``dsn`` by Wanda score ascending, then the positive ones by Wanda score descending),
    while ``|e| > threshold`` (the sign check is off: ``--without_same_sign`` is true)."""
    pruned = pruned.copy()
    e = dsn[pruned].sum()
    grow = np.argsort(np.where(pruned, dsn, 0.0) / var, kind="stable")
    kept = [j for j in np.argsort(np.where(pruned, np.inf, wanda), kind="stable") if not pruned[j]]
    cut = [j for j in kept if dsn[j] < 0] + [j for j in kept if dsn[j] > 0][::-1]
    ends = {"grow": [0, len(grow) - 1], "cut": [0, len(cut) - 1]}
    for _ in range(cycles):
        if abs(e) <= threshold:
            break
        up = int(e > 0)
        r = grow[ends["grow"][up]]
        ends["grow"][up] += -1 if up else 1
        down = int(e < 0)
        p = cut[ends["cut"][down]]
        ends["cut"][down] += -1 if down else 1
        e = e + dsn[p] - dsn[r]
        pruned[p], pruned[r] = True, False
    return pruned


def reference_nm_row(dsn, initial, var, pruned, m, cycles, threshold):
    """The N:M branch for one row: grow as above, prune the kept weight of lowest initial score in
    the grown one's group of ``m``, while ``|e| > threshold`` and the sign of ``e`` holds."""
    pruned = pruned.copy()
    e = dsn[pruned].sum()
    sign = np.sign(e)
    grow = np.argsort(np.where(pruned, dsn, 0.0) / var, kind="stable")
    initial = np.where(pruned, np.inf, initial)
    ends = [0, len(grow) - 1]
    for _ in range(cycles):
        up = int(e > 0)
        r = grow[ends[up]]
        ends[up] += -1 if up else 1
        start = r - r % m
        p = start + int(np.argmin(initial[start : start + m]))
        after = e + dsn[p] - dsn[r]
        if not (abs(e) > threshold and np.sign(after) == sign):
            break
        initial[p] = np.inf
        pruned[p], pruned[r] = True, False
        e = after
    return pruned


def layer_and_inputs(rows=24, cols=64, windows=6, tokens_per_window=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    x = torch.randn(windows, tokens_per_window, cols, generator=g, dtype=torch.float64) + 0.3
    return weight, x, Seen(moments=True).add(x[:4]).add(x[4:])


def wanda_pruned(weight, seen, ratio):
    score = weight.abs() * seen.gram.diagonal().sqrt()
    k = int(weight.shape[1] * ratio)
    pruned = torch.zeros_like(weight, dtype=torch.bool)
    pruned.scatter_(1, score.topk(k, dim=1, largest=False).indices, True)
    return pruned, score


def test_the_input_sums_are_the_references_running_means():
    _, x, seen = layer_and_inputs()
    # WrappedGPT.add_batch, one window per call: running means over windows of the token sum and
    # of the variance within the window (unbiased=False), and of the squared norm
    sum_row, var, norm = torch.zeros(x.shape[-1], dtype=torch.float64), None, 0
    for n, window in enumerate(x):
        inp = window.t()
        var = inp.var(dim=1, unbiased=False) if n == 0 else (var * n + inp.var(dim=1, unbiased=False)) / (n + 1)
        sum_row = sum_row * n / (n + 1) + inp.sum(dim=1) / (n + 1)
        norm = norm * n / (n + 1) + inp.norm(p=2, dim=1) ** 2 / (n + 1)

    assert torch.allclose(seen.mean, sum_row)
    assert torch.allclose(seen.var, var)
    assert torch.allclose(seen.gram.diagonal() / seen.windows, norm)


def test_the_unstructured_refit_is_the_references():
    weight, _, seen = layer_and_inputs()
    pruned, score = wanda_pruned(weight, seen, 0.5)
    options = Dsnot(cycles=8, threshold=THRESHOLD)

    refitted, swaps = refit(weight, pruned, seen, options)

    dsn, var = (weight * seen.mean).numpy(), seen.var.numpy()
    theirs = np.stack(
        [reference_row(dsn[i], score[i].numpy(), var, pruned[i].numpy(), 8, THRESHOLD) for i in range(len(weight))]
    )
    assert np.array_equal(refitted.numpy(), theirs)
    assert swaps == int((refitted & ~pruned).sum()) > len(weight)  # every row swapped, most more than once
    assert torch.equal(refitted.sum(dim=1), pruned.sum(dim=1))  # each row keeps its sparsity


def test_the_nm_refit_is_the_references_and_keeps_the_pattern():
    weight, _, seen = layer_and_inputs(seed=3)
    score = weight.abs() * seen.gram.diagonal().sqrt()
    groups = score.reshape(len(weight), -1, 4)
    pruned = torch.zeros_like(groups, dtype=torch.bool)
    pruned.scatter_(2, groups.topk(2, dim=2, largest=False).indices, True)
    pruned = pruned.reshape(weight.shape)

    refitted, swaps = refit(weight, pruned, seen, Dsnot(cycles=8, threshold=THRESHOLD), (2, 4), score)

    dsn, var = (weight * seen.mean).numpy(), seen.var.numpy()
    theirs = np.stack(
        [
            reference_nm_row(dsn[i], score[i].numpy(), var, pruned[i].numpy(), 4, 8, THRESHOLD)
            for i in range(len(weight))
        ]
    )
    assert np.array_equal(refitted.numpy(), theirs)
    assert swaps > 0
    assert torch.all(refitted.reshape(len(weight), -1, 4).sum(-1) == 2)


@pytest.mark.parametrize("pattern", [None, (2, 4)], ids=["unstructured", "2:4"])
def test_a_narrow_row_stops_where_its_candidates_end_at_its_sparsity(pattern):
    weight, _, seen = layer_and_inputs(rows=16, cols=8)
    pruned, score = wanda_pruned(weight, seen, 0.5)
    if pattern:
        groups = score.reshape(16, -1, 4)
        pruned = torch.zeros_like(groups, dtype=torch.bool).scatter_(
            2, groups.topk(2, dim=2, largest=False).indices, True
        )
        pruned = pruned.reshape(weight.shape)

    refitted, _ = refit(weight, pruned, seen, Dsnot(cycles=50, threshold=0.0), pattern, score)

    assert torch.equal(refitted.sum(dim=1), pruned.sum(dim=1))
    if pattern:
        assert torch.all(refitted.reshape(16, -1, 4).sum(-1) == 2)


def test_weights_pruned_before_are_never_grown_back():
    weight, _, seen = layer_and_inputs()
    pruned, _ = wanda_pruned(weight, seen, 0.5)
    fixed = pruned & (torch.rand(pruned.shape, generator=torch.Generator().manual_seed(0)) < 0.5)

    refitted, _ = refit(weight, pruned, seen, Dsnot(cycles=20, threshold=0.0), fixed=fixed)

    assert refitted[fixed].all()


@pytest.mark.parametrize("method", [Wanda, SparseGPT], ids=["wanda", "sparsegpt"])
def test_the_refit_keeps_each_layers_sparsity_and_reports_what_it_did(method):
    from prunelab import prune

    plain, refitted = gpt(), gpt()
    options = {"samples": 16}
    prune(plain, method(**options), "local", 0.6, data=tokens())
    result = prune(refitted, method(**options, refit="dsnot", refit_skip=[]), "local", 0.6, data=tokens())

    for (name, a), b in zip(plain.named_parameters(), refitted.parameters(), strict=True):
        if name.endswith("weight") and a.dim() == 2 and "blocks" in name:
            assert int((b == 0).sum()) == int((a == 0).sum()), name
    assert result.figures[Metric.REFIT_SWAPS] > 0
    assert 0 < result.figures[Metric.REFIT_ERROR_AFTER] < 1
    assert 0 < result.figures[Metric.REFIT_ERROR_BEFORE] < 1


def test_the_mlp_layers_keep_wandas_mask_by_default():
    from prunelab import prune

    plain, refitted = gpt(), gpt()
    prune(plain, Wanda(samples=16), "local", 0.6, data=tokens())
    prune(refitted, Wanda(samples=16, refit="dsnot"), "local", 0.6, data=tokens())

    same = {n: torch.equal(a, b) for (n, a), b in zip(plain.named_parameters(), refitted.parameters(), strict=True)}
    assert same["blocks.0.mlp.0.weight"]
    assert same["blocks.0.mlp.2.weight"]
    assert not same["blocks.0.attn.q.weight"]


def test_refit_options_outside_their_use_are_one_line():
    with pytest.raises(PruningError, match=r"^method.refit='sgd': one of dsnot"):
        Wanda(refit="sgd")
    with pytest.raises(PruningError, match=r"^method.refit_cycles: options of the refit; set method.refit=dsnot"):
        Wanda(refit_cycles=3)
    with pytest.raises(PruningError, match=r"^method.refit=dsnot swaps weights within N:M groups"):
        Wanda(n=2, m=4, permute=True, refit="dsnot")
    with pytest.raises(PruningError, match=r"^method.refit_cycles=0 must be"):
        SparseGPT(refit="dsnot", refit_cycles=0)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["method=wanda", "ratio=0.6"], id="wanda"),
        pytest.param(["method=sparsegpt", "ratio=0.6"], id="sparsegpt"),
        pytest.param(["method=wanda", "method.n=2", "method.m=4", "ratio=0.5"], id="wanda-2:4"),
    ],
)
def test_dsnot_refits_wanda_and_sparsegpt_through_the_command_line(cli, workdir, llama_on_wikitext, options):  # noqa: F811
    result = cli(
        *llama_on_wikitext, "train.epochs=0", "method.samples=8", "scope=local", "method.refit=dsnot", *options
    )

    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    assert run.data.params["method.refit"] == "dsnot"
    assert run.data.metrics[Metric.REFIT_SWAPS] > 0
    assert Metric.REFIT_ERROR_AFTER in run.data.metrics
    target = 0.5 if "method.n=2" in options else 0.6
    assert run.data.metrics[Metric.SPARSITY_PRUNABLE] == pytest.approx(target, abs=0.01)


def test_dsnot_after_a_structured_method_is_one_line(cli, workdir, llama_on_wikitext):  # noqa: F811
    result = cli(*llama_on_wikitext, "train.epochs=0", "method=width", "method.refit=dsnot", "ratio=0.5")

    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("prunelab: error: method=width takes no option 'refit'")
    assert not runs(workdir, "pruned")
