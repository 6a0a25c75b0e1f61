"""Pruning invariants: how much is removed, what separates kept from pruned, what global and local
mean, what is never touched (masked == physically shrunk is in test_compression.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import randomised
from torch.nn.utils import prune as torch_prune

from prunelab import models
from prunelab.data import synthetic
from prunelab.experiment.train import fit
from prunelab.pruning import Mask, MaskError, PruningError, prunable_layers, prune


@pytest.fixture
def lenet5():
    torch.manual_seed(0)
    return models.lenet5()


def weights(model, mask):
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in mask.prunable}


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9, 0.98])
def test_unstructured_global_hits_the_ratio_and_one_threshold_separates(lenet5, ratio):
    mask = prune(lenet5, "unstructured", "global", ratio).mask
    assert abs(mask.sparsity - ratio) < 1e-3
    w = weights(lenet5, mask)
    # A layer the threshold would empty keeps its one largest weight (no layer is ever emptied).
    rescued = [n for n in w if int(mask.masks[n].sum()) == 1]
    kept = torch.cat([w[n][mask.masks[n]].abs() for n in w if n not in rescued])
    pruned = torch.cat([w[n][~mask.masks[n]].abs() for n in w])
    assert kept.min() > pruned.max()
    assert all(int(mask.masks[n].sum()) >= 1 for n in w)


def test_unstructured_local_prunes_every_layer_to_the_ratio(lenet5):
    mask = prune(lenet5, "unstructured", "local", 0.7).mask
    w = weights(lenet5, mask)
    for n, m in ((n, mask.masks[n]) for n in w):
        assert abs((~m).float().mean().item() - 0.7) < 1 / m.numel() + 1e-6
        assert w[n][m].abs().min() > w[n][~m].abs().max()  # a per-layer threshold


def test_global_and_local_allocate_differently(lenet5):
    glob = prune(lenet5, "unstructured", "global", 0.7).mask
    loc = prune(lenet5, "unstructured", "local", 0.7).mask
    per_layer = lambda m: [(~m.masks[n]).float().mean().item() for n in m.prunable]
    assert max(per_layer(glob)) - min(per_layer(glob)) > 0.1  # global: layers differ
    assert max(per_layer(loc)) - min(per_layer(loc)) < 0.01  # local: same ratio everywhere
    assert abs(glob.sparsity - loc.sparsity) < 0.01


def test_ignored_layers_are_untouched(lenet5):
    mask = prune(lenet5, "unstructured", "global", 0.9, ignore=["head.*"]).mask
    assert all(not n.startswith("head.") for n in mask.prunable)
    assert all(bool(m.all()) for n, m in mask.masks.items() if n.startswith("head."))
    smask = prune(lenet5, "structured", "global", 0.5, example_inputs=torch.zeros(1, 1, 28, 28)).mask
    assert bool(smask.masks["classifier.weight"].any(1).all())  # every class keeps its row
    assert bool(smask.masks["classifier.bias"].all())


def test_an_ignore_pattern_that_matches_no_layer_is_named_in_a_warning(lenet5):
    with pytest.warns(UserWarning, match=r"'head\.4' matches no prunable layer.*classifier"):
        mask = prune(lenet5, "unstructured", "global", 0.9, ignore=["head.4"]).mask
    assert "classifier.weight" in mask.prunable  # the misspelt layer was pruned: hence the warning


def test_random_criterion_keeps_the_allocation_but_not_the_choice(lenet5):
    mag = prune(lenet5, "unstructured", "local", 0.5).mask
    rnd = prune(lenet5, "unstructured", "local", 0.5, criterion="random").mask
    for n in mag.prunable:
        assert mag.masks[n].sum() == rnd.masks[n].sum()
    assert any(not torch.equal(mag.masks[n], rnd.masks[n]) for n in mag.prunable)
    again = prune(lenet5, "unstructured", "local", 0.5, criterion="random").mask
    assert all(torch.equal(rnd.masks[n], again.masks[n]) for n in rnd.prunable)  # seeded


def test_structured_local_removes_the_ratio_of_channels_in_every_layer():
    model = models.vgg_small(in_shape=(1, 16, 16), width=8)
    mask = prune(model, "structured", "local", 0.5, example_inputs=torch.zeros(1, 1, 16, 16)).mask
    for layer, keep in mask.channels.items():
        assert keep.sum() == keep.numel() - round(0.5 * keep.numel()), layer
    # the pruned filters have the smallest L2 norms of their layer
    w = model.features[0].weight.detach().flatten(1).norm(dim=1)
    keep = mask.channels["features.0"]
    assert w[keep].min() > w[~keep].max()


def test_structured_global_never_empties_a_layer():
    model = models.lenet300_100(in_shape=(1, 8, 8))
    with torch.no_grad():
        model.head[0].weight.mul_(1e-3)  # one layer far less important than the rest
    mask = prune(model, "structured", "global", 0.95, example_inputs=torch.zeros(1, 1, 8, 8)).mask
    assert all(int(keep.sum()) >= 1 for keep in mask.channels.values())
    assert abs(mask.channel_sparsity - 0.95) < 0.02


def test_structured_masks_bias_and_batchnorm_of_removed_filters():
    model = randomised(models.vgg_small(in_shape=(1, 8, 8), width=4))
    mask = prune(model, "structured", "local", 0.5, example_inputs=torch.zeros(1, 1, 8, 8)).mask
    removed = ~mask.channels["features.0"]
    assert not mask.masks["features.1.weight"][removed].any()  # BatchNorm after the conv
    assert not mask.masks["features.1.bias"][removed].any()
    assert not mask.masks["features.3.weight"][:, removed].any()  # inputs of the next conv


def test_structured_refuses_to_prune_the_logits():
    model = models.lenet5(in_shape=(1, 8, 8))
    with pytest.raises(PruningError, match="output classes"):
        prune(model, "structured", "global", 0.5, ignore=[], example_inputs=torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_ratio_out_of_range_is_refused(lenet5, ratio):
    with pytest.raises(PruningError, match="0 <= ratio < 1"):
        prune(lenet5, "unstructured", "global", ratio)


def test_fine_tuning_keeps_pruned_weights_exactly_zero():
    data = synthetic()
    model = models.lenet5(in_shape=data.in_shape)
    mask = prune(model, "unstructured", "global", 0.8).mask
    mask.apply(model)
    # Momentum and weight decay would revive pruned weights if the mask were not held.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    fit(model, data.train, data.val, opt, epochs=2, batch_size=32, seed=0, after_step=mask.hold(model))
    params = dict(model.named_parameters())
    for n in mask.prunable:
        assert bool((params[n][~mask.masks[n]] == 0).all())
        assert bool((params[n][mask.masks[n]] != 0).all())


def test_mask_is_checked_against_the_model(lenet5):
    mask = prune(lenet5, "unstructured", "global", 0.5).mask
    bad = Mask({**mask.masks, "features.0.weight": torch.ones(3, 3, dtype=torch.bool)}, mask.prunable)
    with pytest.raises(MaskError, match="shape"):
        bad.apply(lenet5)
    with pytest.raises(MaskError, match="does not have"):
        Mask({"nope.weight": torch.ones(1, dtype=torch.bool)}).apply(lenet5)


def test_a_mask_holds_its_entries_as_bits_and_reads_back_the_same(tmp_path):
    """A bool tensor takes a byte per entry (at a 1.3B model, 1.15 GiB: half its bfloat16
    weights): a mask holds eight entries to a byte and reads each back whole."""
    g = torch.Generator().manual_seed(0)
    entries = {"a.weight": torch.rand(300, 77, generator=g) < 0.3, "b.weight": torch.ones(5, dtype=torch.bool)}
    mask = Mask(dict(entries), ("a.weight", "b.weight"))
    held = mask.masks._held  # what it keeps in memory
    assert held["a.weight"][0].nbytes == math.ceil(300 * 77 / 8)
    for name, m in entries.items():
        assert torch.equal(mask.masks[name], m)
        assert mask.masks[name].dtype == torch.bool
    assert mask.density == pytest.approx((int(entries["a.weight"].sum()) + 5) / (300 * 77 + 5))
    torch.save(mask.to_state(), tmp_path / "mask.pt")  # saved as plain bool tensors
    again = Mask.from_state(torch.load(tmp_path / "mask.pt", weights_only=True))
    assert again.digest() == mask.digest() == Mask({k: v.clone() for k, v in entries.items()}).digest()
    torch.save(mask.to_state(packed=True), tmp_path / "bits.pt")  # a file of the mask alone: its bits
    packed = torch.load(tmp_path / "bits.pt", weights_only=True)
    assert "masks" not in packed
    assert packed["packed"]["a.weight"][0].nbytes == math.ceil(300 * 77 / 8)
    assert Mask.from_state(packed).digest() == mask.digest()
    on_meta = Mask({"a.weight": entries["a.weight"].to("meta")})  # another device: held as it is
    assert on_meta.masks["a.weight"].device.type == "meta"


def test_same_global_l1_mask_as_torch_global_unstructured(lenet5):
    mask = prune(lenet5, "unstructured", "global", 0.8).mask
    ref = copy.deepcopy(lenet5)
    ref_layers = prunable_layers(ref)
    torch_prune.global_unstructured(
        [(m, "weight") for m in ref_layers.values()], pruning_method=torch_prune.L1Unstructured, amount=0.8
    )
    for name, m in ref_layers.items():
        assert torch.equal(m.weight_mask.bool(), mask.masks[f"{name}.weight"]), name


def test_same_local_l2_structured_choice_as_torch_ln_structured():
    torch.manual_seed(1)
    model = models.vgg_small(in_shape=(1, 8, 8), width=8)
    mask = prune(model, "structured", "local", 0.5, criterion="l2", example_inputs=torch.zeros(1, 1, 8, 8)).mask
    for name, module in prunable_layers(model, ignore=["classifier"]).items():
        ref = torch_prune.ln_structured(copy.deepcopy(module), "weight", amount=0.5, n=2, dim=0)
        ref_keep = ref.weight_mask.flatten(1).any(1)
        assert torch.equal(ref_keep, mask.channels[name]), name
