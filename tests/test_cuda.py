"""The device=cuda path: skipped where PyTorch sees no GPU (CI), run on a GPU machine with
``pytest tests/test_cuda.py``."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import runs

from prunelab import models
from prunelab.data import synthetic
from prunelab.experiment.train import fit
from prunelab.names import Metric
from prunelab.pruning import prune, shrink

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_run_on_cuda_ends_finished_with_its_metrics(cli, workdir):
    result = cli("device=cuda", "dataset=digits", "method=structured", "ratio=0.5", "train.epochs=8", "handover=true")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    assert run.info.status == "FINISHED"
    assert run.data.params["device"] == "cuda"
    assert run.data.metrics[Metric.at(Metric.DENSE, Metric.TEST_ACCURACY)] > 0.8  # it trained, on the GPU
    assert run.data.metrics[Metric.cost_ratio(Metric.MACS)] < 0.5  # and was shrunk for real
    # handed over on the CPU (a CUDA and a CPU forward may differ in the last bits: a test image or two)
    assert run.data.metrics[Metric.HANDOVER_ONNX_ACCURACY] == pytest.approx(
        run.data.metrics[Metric.TEST_ACCURACY], abs=0.01
    )


def test_auto_picks_the_gpu(cli, workdir):
    assert cli("dataset=synthetic", "ratio=0.3").returncode == 0
    (dense,) = runs(workdir, "dense")
    assert dense.data.params["device"] == "cuda"  # what device=auto resolved to


def test_the_mask_holds_on_the_gpu_and_shrinking_matches():
    data = synthetic().to("cuda")
    model = models.vgg_small(in_shape=data.in_shape, width=8).cuda()
    mask = prune(model, "structured", "global", 0.5, example_inputs=data.train.x[:1]).mask
    mask.apply(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    fit(model, data.train, data.val, opt, 1, 32, 0, after_step=mask.hold(model))
    params = dict(model.named_parameters())
    for name, keep in mask.masks.items():
        assert bool((params[name][~keep.cuda()] == 0).all()), name
    model.eval()
    small = shrink(model, mask, data.train.x[:1]).eval()
    x = data.test.x[:16]
    assert (small(x) - copy.deepcopy(model)(x)).abs().max() <= 1e-4


def test_only_the_block_being_pruned_is_on_the_gpu():
    from test_blocks import blocks_pruned_on

    blocks_pruned_on("cuda")
