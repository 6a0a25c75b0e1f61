"""RIA (criterion=ria with method=wanda) and its channel reallocation before N:M
(method.permute), equal to biomedical-cybernetics/Relative-importance-and-activation-pruning at
7bc55b06 (lib/prune.py, ``prune_ria``; written out here from it: ``scaler_row`` as
``WrappedGPT`` keeps it, a running mean over the calibration windows)."""

from __future__ import annotations

import pytest
import torch
from conftest import runs
from test_owl import llama_on_wikitext  # noqa: F401 (a fixture)

from prunelab import prune
from prunelab.names import Metric
from prunelab.pruning import PruningError, Ria, Wanda
from prunelab.pruning.layerwise import reallocated, ria_mask, ria_scores

A = 0.5


def layer_and_inputs(rows: int = 16, cols: int = 32, windows: int = 6, tokens: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    x = torch.randn(windows, tokens, cols, generator=g) * torch.rand(cols, generator=g) * 3  # uneven channels
    return weight, x


def reference_metric(weight: torch.Tensor, x: torch.Tensor, a: float) -> torch.Tensor:
    """``prune_ria``'s W_metric, its scaler_row accumulated window by window as WrappedGPT does."""
    scaler_row = torch.zeros(weight.shape[1])
    for seen, window in enumerate(x):
        inp = window.t().float()
        scaler_row *= seen / (seen + 1)
        scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / (seen + 1)
    w = torch.abs(weight)
    activations = torch.sqrt(scaler_row.reshape(1, -1)) ** a
    return (w / torch.sum(w, dim=0) + w / torch.sum(w, dim=1).reshape(-1, 1)) * activations


def gram_of(x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1]).double()
    return rows.T @ rows


def reference_nm(metric: torch.Tensor, prune_n: int, prune_m: int) -> torch.Tensor:
    """The reference's N:M loop: ``prune_n`` pruned (True) of every ``prune_m`` columns."""
    mask = torch.zeros_like(metric) == 1
    for ii in range(metric.shape[1]):
        if ii % prune_m == 0:
            tmp = metric[:, ii : (ii + prune_m)].float()
            mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    return mask


def reference_reallocation(metric: torch.Tensor, prune_n: int, prune_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``--reallocation`` with ``--importance_score sum``: (index, mask in the original order)."""
    sorted_idx = torch.sort(torch.sum(metric, dim=0))[1]
    index = torch.zeros_like(sorted_idx)
    cols = metric.shape[1]
    for ii in range(1, prune_m + 1):
        part = sorted_idx[int(cols * (ii - 1) / prune_m) : int(cols * ii / prune_m)]
        index[ii - 1 :: prune_m] = part if ii % 2 == 1 else part.flip(0)
    mask_permute = reference_nm(metric[:, index].clone(), prune_n, prune_m)
    mask = torch.zeros_like(metric) == 1
    mask[:, index] = mask_permute
    return index, mask


def test_the_score_orders_the_weights_as_the_references_metric():
    weight, x = layer_and_inputs()
    ours, theirs = ria_scores(weight, gram_of(x), A), reference_metric(weight, x, A).double()
    ratio = ours / theirs  # the reference's mean over windows vs the sum here: one factor per layer
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-5)


def test_unstructured_prunes_the_references_weights_but_its_threshold_itself():
    weight, x = layer_and_inputs()
    metric, ratio = reference_metric(weight, x, A), 0.5
    thresh = torch.sort(metric.flatten())[0][int(weight.numel() * ratio)]
    theirs = metric <= thresh  # pruned: int(numel * ratio) + 1 (the threshold's own weight too)
    pruned = ~ria_mask(weight, gram_of(x), ratio, A)
    assert int(pruned.sum()) == int(weight.numel() * ratio)
    assert torch.equal(pruned | (metric == thresh), theirs)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_nm_prunes_the_references_weights(n, m):
    weight, x = layer_and_inputs()
    theirs = reference_nm(reference_metric(weight, x, A), m - n, m)  # the reference's prune_n: pruned
    assert torch.equal(~ria_mask(weight, gram_of(x), (m - n) / m, A, n, m), theirs)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_channel_reallocation_is_the_references_order_and_mask(n, m):
    weight, x = layer_and_inputs(cols=64)
    metric = reference_metric(weight, x, A)
    index, theirs = reference_reallocation(metric, m - n, m)
    assert torch.equal(reallocated(ria_scores(weight, gram_of(x), A), m), index)
    pruned = ~ria_mask(weight, gram_of(x), (m - n) / m, A, n, m, permute=True)
    assert torch.equal(pruned, theirs)
    # N:M in the reallocated order, every group of m keeps n
    assert torch.all((~pruned[:, index]).reshape(weight.shape[0], -1, m).sum(-1) == n)


def test_ria_and_permute_outside_their_methods_are_one_line():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(PruningError, match=r"^criterion=ria scores weights with their calibration activations"):
        prune(net, "unstructured", "local", 0.5, Ria())
    with pytest.raises(PruningError, match=r"^method.permute reorders the input channels before N:M"):
        Wanda(permute=True)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["ratio=0.5"], id="unstructured"),
        pytest.param(["method.n=2", "method.m=4", "ratio=0.5"], id="2:4"),
        pytest.param(["method.n=2", "method.m=4", "method.permute=true", "ratio=0.5"], id="2:4-permuted"),
    ],
)
def test_ria_composes_with_wanda_through_the_command_line(cli, workdir, llama_on_wikitext, options):  # noqa: F811
    result = cli(
        *llama_on_wikitext,
        "train.epochs=0",
        "method=wanda",
        "method.samples=8",
        "scope=local",
        "criterion=ria",
        *options,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    assert run.data.params["criterion.a"] == "0.5"
    assert run.data.metrics[Metric.SPARSITY_PRUNABLE] == pytest.approx(0.5, abs=0.01)
    assert Metric.TEST_PERPLEXITY in run.data.metrics
