"""OWL (scope=owl): each block's sparsity from its share of outlier Wanda scores, equal to
luuyin/OWL's formula (lib/prune_all.py at dddb7a4b, written out here from it: the running-mean
``scaler_row`` of ``WrappedGPT``, ``check_outlier_mean``, the ``Lamda * 2`` spread), for the
magnitude, Wanda and SparseGPT methods, through the API and the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import runs
from test_blocks import gpt, tokens
from test_tokens import checkpoint_on_wikitext, llama_folder, write_wikitext

from prunelab import prune
from prunelab.names import Metric
from prunelab.pruning import LayerMagnitude, Local, Owl, PruningError, SparseGPT, Wanda
from prunelab.pruning.blocks import capture
from prunelab.pruning.owl import block_sparsities, outlier_ratio
from prunelab.pruning.tracing import prunable_layers


def reference_outlier_ratio(metrics: list[torch.Tensor], threshold: float) -> float:
    """``check_outlier_mean`` over the block's scores flattened and concatenated."""
    w = torch.cat([torch.flatten(x) for x in metrics])
    return float((w > torch.mean(w) * threshold).sum().item()) / w.numel() * 100


def reference_allocation(ratios: list[float], sparsity_ratio: float, lamda: float) -> np.ndarray:
    """``prune_wanda_outlier``'s adjustment: the blocks' sparsities (1 - its densities)."""
    r = np.array(ratios)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lamda * 2)
    r = r - np.mean(r) + (1 - sparsity_ratio)
    return 1 - r


def reference_block_outliers(model, data, hyper_m: float) -> list[float]:
    """Steps 1-2 as the reference runs them: block by block, one window at a time, each
    layer's ``scaler_row`` a running mean of ``‖x‖²`` over windows, the dense outputs passed on."""
    blocks = model.blocks
    h = torch.cat([one.args[0] for one in capture(model, blocks[0], data, batch_size=1)])  # block 0's inputs
    out = []
    for block in blocks:
        layers = prunable_layers(block, [])
        rows = {n: torch.zeros(layer.in_features) for n, layer in layers.items()}
        seen = {n: 0 for n in layers}

        def hook(name, rows=rows, seen=seen):
            def add_batch(_m, inp):
                x = inp[0].reshape(-1, inp[0].shape[-1]).t().float()
                rows[name] *= seen[name] / (seen[name] + 1)
                seen[name] += 1
                rows[name] += torch.norm(x, p=2, dim=1) ** 2 / seen[name]

            return add_batch

        handles = [layer.register_forward_pre_hook(hook(n)) for n, layer in layers.items()]
        with torch.no_grad():
            h = torch.cat([block(h[j : j + 1]) for j in range(len(h))])
        for handle in handles:
            handle.remove()
        metrics = [layers[n].weight.detach().abs() * torch.sqrt(rows[n].reshape(1, -1)) for n in layers]
        out.append(reference_outlier_ratio(metrics, hyper_m))
    return out


def test_the_outlier_ratio_is_the_references_check_outlier_mean():
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(32, 16, generator=g).abs() ** 3, torch.randn(64, 32, generator=g).abs() ** 2]
    for m in (1.0, 3.0, 5.0):
        assert outlier_ratio(scores, m) == pytest.approx(reference_outlier_ratio(scores, m), abs=1e-12)


@pytest.mark.parametrize(("ratio", "lmbda"), [(0.5, 0.08), (0.7, 0.08), (0.6, 0.2)])
def test_block_sparsities_are_the_references_allocation(ratio, lmbda):
    outliers = [2.1, 0.4, 5.3, 1.7, 3.3]
    ours = block_sparsities(outliers, ratio, lmbda)
    assert ours == pytest.approx(list(reference_allocation(outliers, ratio, lmbda)), abs=1e-12)
    assert float(np.mean(ours)) == pytest.approx(ratio)
    assert max(ours) - min(ours) == pytest.approx(2 * lmbda)
    assert ours.index(min(ours)) == outliers.index(max(outliers))  # the most outliers: the least pruned


def test_equal_outlier_ratios_give_every_block_the_ratio():
    assert block_sparsities([1.0, 1.0, 1.0], 0.5, 0.08) == pytest.approx([0.5, 0.5, 0.5])


def test_a_ratio_that_puts_a_block_outside_0_1_for_lambda_is_one_line():
    with pytest.raises(PruningError, match=r"^scope=owl: ratio=0.95 with lmbda=0.08 gives block 2 a sparsity of 1\.0"):
        block_sparsities([1.0, 2.0, 0.0], 0.95, 0.08)


@pytest.mark.parametrize("method", [LayerMagnitude, Wanda, SparseGPT])
def test_each_block_is_pruned_to_the_references_ratio(method):
    model, data = gpt(layers=4), tokens()
    x = data.train[0][:64]
    expected_outliers = reference_block_outliers(gpt(layers=4), x, 5.0)
    expected = reference_allocation(expected_outliers, 0.5, 0.08)

    pruned = method(samples=64)(model, 0.5, scope=Owl(m=5.0, lmbda=0.08), data=data)

    for i, (d, s) in enumerate(zip(expected_outliers, expected, strict=True)):
        assert pruned.figures[Metric.owl(i, Metric.OWL_OUTLIER_RATIO)] == pytest.approx(d, rel=1e-6)
        assert pruned.figures[Metric.owl(i, Metric.OWL_SPARSITY)] == pytest.approx(s, rel=1e-6)
        for name, layer in prunable_layers(model.blocks[i], []).items():
            kept = pruned.mask.masks[f"blocks.{i}.{name}.weight"]
            rows, cols = layer.weight.shape
            pruned_count = (~kept).sum().item()
            if method is Wanda:
                assert pruned_count == rows * int(cols * s)  # per row, as the paper's code
            else:  # one threshold per layer (SparseGPT: per lazy block of 128 columns, here the layer)
                assert pruned_count == int(rows * cols * s)
            assert torch.equal(layer.weight == 0, ~kept) or method is LayerMagnitude


def test_owl_refuses_nm_and_the_score_based_methods_in_one_line():
    with pytest.raises(PruningError, match=r"^scope=owl sets each block's own sparsity; 2:4"):
        Wanda(samples=8, n=2, m=4)(gpt(), 0.5, scope=Owl(), data=tokens())
    with pytest.raises(PruningError, match=r"^scope=owl sets each block's sparsity from calibration data"):
        prune(gpt(), "unstructured", Owl(), 0.5)


def test_local_magnitude_needs_no_calibration_data():
    model, before = gpt(), gpt()
    pruned = LayerMagnitude()(model, 0.5, scope=Local(), data=None)
    for name, kept in pruned.mask.masks.items():  # each layer's smallest half, by its own threshold
        weight = before.get_parameter(name).detach()
        assert (~kept).sum() == weight.numel() // 2
        assert weight[kept].abs().min() >= weight[~kept].abs().max()
        assert torch.all(model.get_parameter(name)[~kept] == 0)


@pytest.fixture
def llama_on_wikitext(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    folder = write_wikitext(tmp_path / "wikitext-2")
    return checkpoint_on_wikitext(llama_folder(tmp_path, (folder / "wiki.train.raw").read_text()), folder)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_owl_composes_with_each_post_training_method_through_the_command_line(cli, workdir, llama_on_wikitext, method):
    result = cli(*llama_on_wikitext, "train.epochs=0", f"method={method}", "method.samples=8", "scope=owl", "ratio=0.6")

    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    sparsities = [run.data.metrics[Metric.owl(i, Metric.OWL_SPARSITY)] for i in range(2)]
    assert float(np.mean(sparsities)) == pytest.approx(0.6)
    assert Metric.owl(0, Metric.OWL_OUTLIER_RATIO) in run.data.metrics
    assert run.data.metrics[Metric.SPARSITY_PRUNABLE] == pytest.approx(0.6, abs=0.02)
    assert run.data.params["scope.lmbda"] == "0.08"
