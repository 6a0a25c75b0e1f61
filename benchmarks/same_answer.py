"""4. Same answer as PyTorch: prunelab's global unstructured L1 masks vs
``torch.nn.utils.prune.global_unstructured(L1Unstructured)``, and its local structured L2 channel
choices vs ``torch.nn.utils.prune.ln_structured(n=2, dim=0)``, layer by layer.

On random weights and on a LeNet-5 trained for a fraction of an epoch. The same checks run in
``make test`` (tests/test_pruning.py::test_same_global_l1_mask_as_torch_global_unstructured and
::test_same_local_l2_structured_choice_as_torch_ln_structured).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunelab import models
from prunelab.data import Split
from prunelab.experiment.train import fit
from prunelab.pruning import prunable_layers, prune

from .common import Section, Verdict, fashion_mnist, table


def global_l1(model: nn.Module, ratio: float) -> list:
    ours = prune(model, "unstructured", "global", ratio).mask.masks
    ref = copy.deepcopy(model)
    layers = prunable_layers(ref)
    torch_prune.global_unstructured(
        [(m, "weight") for m in layers.values()], pruning_method=torch_prune.L1Unstructured, amount=ratio
    )
    differ = sum(int((ours[f"{n}.weight"] != m.weight_mask.bool()).sum()) for n, m in layers.items())
    # prunelab never empties a layer (its largest weight stays): PyTorch's threshold may
    rescued = sum(1 for n, m in layers.items() if not m.weight_mask.any() and int(ours[f"{n}.weight"].sum()) == 1)
    scores = torch.cat([m.weight.detach().abs().flatten() for m in prunable_layers(model).values()])
    theta = scores.kthvalue(round(ratio * scores.numel())).values
    return [differ - rescued, scores.numel(), int((scores == theta).sum()) - 1, rescued]


def local_l2_structured(model: nn.Module, ratio: float, in_shape) -> list:
    mask = prune(model, "structured", "local", ratio, criterion="l2", example_inputs=torch.zeros(1, *in_shape)).mask
    same = 0
    layers = prunable_layers(model, ignore=["classifier"])
    for name, module in layers.items():
        ref = torch_prune.ln_structured(copy.deepcopy(module), "weight", amount=ratio, n=2, dim=0)
        same += bool(torch.equal(ref.weight_mask.flatten(1).any(1), mask.channels[name]))
    return [same, len(layers)]


def run(quick: bool = False) -> Section:
    data = fashion_mnist()
    in_shape = data.in_shape
    torch.manual_seed(0)
    trained = models.lenet5(in_shape=in_shape)
    n = 2_560 if quick else 12_800
    fit(
        trained,
        Split(data.train.x[:n], data.train.y[:n]),
        Split(data.val.x[:0], data.val.y[:0]),
        torch.optim.Adam(trained.parameters(), lr=2e-3),
        1,
        128,
        seed=0,
        desc="same-answer",
    )
    cases = {
        f"LeNet-5, trained on {n:,} Fashion-MNIST images": trained,
        "LeNet-5, random": _seeded(lambda: models.lenet5(in_shape=in_shape)),
        "LeNet-300-100, random": _seeded(lambda: models.lenet300_100(in_shape=in_shape)),
        "VGG-small (width 32), random": _seeded(lambda: models.vgg_small(in_shape=in_shape)),
    }
    rows, all_same = [], True
    for label, model in cases.items():
        for ratio in (0.5, 0.9):
            differ, total, ties, rescued = global_l1(model, ratio)
            same, layers = local_l2_structured(model, ratio, in_shape)
            all_same &= differ == 0 and same == layers
            rows.append([label, ratio, f"{differ} of {total:,}", ties, rescued, f"{same} of {layers}"])
    body = (
        'prunelab `prune(model, "unstructured", "global", ratio)` vs '
        '`global_unstructured([(m, "weight") ...], L1Unstructured, amount=ratio)`, and prunelab '
        '`prune(model, "structured", "local", ratio, criterion="l2")` vs '
        '`ln_structured(layer, "weight", amount=ratio, n=2, dim=0)` per layer (the classifier, '
        "which structured pruning never cuts, left out). Exact ties at the threshold could "
        "legitimately differ (prunelab keeps none of a tied score, PyTorch's topk keeps some); "
        "the table counts the magnitudes tied with the k-th smallest. Where the threshold would "
        "empty a layer, PyTorch empties it and prunelab keeps its largest weight (no layer is ever "
        "emptied): counted apart, as layers kept alive.\n\n"
        + table(
            [
                "weights",
                "ratio",
                "global L1 mask entries that differ",
                "ties at the threshold",
                "layers kept alive (1 weight)",
                "layers with the same L2 channel choice",
            ],
            rows,
        )
        + "\n\nThe same two comparisons are tests in `make test`: tests/test_pruning.py::"
        "test_same_global_l1_mask_as_torch_global_unstructured and "
        "::test_same_local_l2_structured_choice_as_torch_ln_structured."
    )
    verdicts = [
        Verdict(
            "4. same masks as torch.nn.utils.prune",
            "identical (ties aside)",
            "identical" if all_same else "differ (see section 4)",
            all_same,
        )
    ]
    return Section("4. Same answer as PyTorch", body, verdicts)


def _seeded(factory):
    torch.manual_seed(1)
    return factory()


def main() -> str:
    return run().markdown()
