"""2. Mask enforcement: a fine-tuning step with a 90%-sparse mask held vs the dense step vs
``torch.nn.utils.prune`` (which re-multiplies the mask into the weight in a forward pre-hook).

Each variant has its own copy of the model and its own optimizer (the configured one, at the
fine-tuning learning rate); a round runs a few steps of each variant on the same Fashion-MNIST
batches, alternating dense, prunelab, torch.nn.utils.prune.
"""

from __future__ import annotations

import copy
import statistics

import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

from prunelab import models
from prunelab.pruning import prunable_layers, prune

from .common import (
    Section,
    Verdict,
    alternate,
    config,
    configured_optimizer,
    fashion_mnist,
    optimizer_name,
    ratios,
    spread,
    table,
)

BATCH = config().train.batch_size
TARGET = 1.03
# (model, steps per round, rounds): VGG-small's step is ~50x LeNet-5's.
PLAN = (("lenet5", 20, 9), ("vgg_small", 2, 5))


def _step(model, optimizer, x, y, after=None):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if after is not None:
        after()


def compare(name: str, steps: int, repeats: int, data) -> tuple[list, list[float], list[float]]:
    torch.manual_seed(0)
    template = getattr(models, name)(in_shape=data.in_shape)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    batches = [(data.train.x[i], data.train.y[i]) for i in order[: steps * BATCH].split(BATCH)]

    dense = copy.deepcopy(template)
    held = copy.deepcopy(template)
    mask = prune(held, "unstructured", "global", 0.9).mask
    mask.apply(held)
    hold = mask.hold(held)
    hooked = copy.deepcopy(template)
    # Listed before torch's pruning turns each weight into a computed attribute (weight_orig * mask).
    hooked_layers = list(prunable_layers(hooked).values())
    torch_prune.global_unstructured(
        [(m, "weight") for m in hooked_layers], pruning_method=torch_prune.L1Unstructured, amount=0.9
    )
    runs = {
        "dense": (dense, configured_optimizer(dense.parameters(), "finetune"), None),
        "prunelab mask held": (held, configured_optimizer(held.parameters(), "finetune"), hold),
        "torch.nn.utils.prune": (hooked, configured_optimizer(hooked.parameters(), "finetune"), None),
    }

    def variant(key):
        model, optimizer, after = runs[key]
        return lambda: [_step(model, optimizer, x, y, after) for x, y in batches]

    times = alternate({k: variant(k) for k in runs}, repeats, warmup=1)
    # Both sparse variants must still be 90% sparse after all those steps.
    sparsity = {
        "prunelab mask held": _zeros([dict(held.named_parameters())[n] for n in mask.prunable]),
        "torch.nn.utils.prune": _zeros([m.weight for m in hooked_layers]),
    }
    per_step = {k: [t / steps for t in v] for k, v in times.wall.items()}
    rows = []
    for k in runs:
        r = ratios(times.wall, k, "dense")
        rc = ratios(times.cpu, k, "dense")
        ref = k == "dense"
        rows.append(
            [
                name,
                k,
                spread(per_step[k], "ms"),
                "reference" if ref else spread(r, "x"),
                "reference" if ref else spread(rc, "x"),
                f"{sparsity[k]:.3f}" if k in sparsity else "0",
            ]
        )
    return (rows, ratios(times.wall, "prunelab mask held", "dense"), ratios(times.cpu, "prunelab mask held", "dense"))


def _zeros(weights) -> float:
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def run(quick: bool = False) -> Section:
    data = fashion_mnist()
    rows, verdicts = [], []
    plan = [(n, max(1, s // 4), 1) for n, s, _ in PLAN] if quick else PLAN
    for name, steps, repeats in plan:
        r_rows, r, rc = compare(name, steps, repeats, data)
        rows += r_rows
        med = statistics.median(r)
        verdicts.append(
            Verdict(
                f"2. mask held, {name} step",
                f"≤ {TARGET} × dense",
                f"{med:.3f}× wall ({statistics.median(rc):.3f}× CPU time)",
                med <= TARGET,
            )
        )
    header = [
        "model",
        "variant",
        "time per step",
        "ratio to dense, wall",
        "ratio to dense, CPU time",
        "sparsity of the pruned weights after the steps",
    ]
    body = (
        f"One fine-tuning step (forward, backward, {optimizer_name()} step, then whatever keeps the "
        "mask) on "
        f"Fashion-MNIST batches of {BATCH}. prunelab: `mask.hold(model)` called after each step "
        "(90% global L1 mask); torch.nn.utils.prune: `global_unstructured(L1Unstructured, 0.9)`, "
        "whose forward pre-hook recomputes weight = weight_orig * mask on every forward. "
        + "; ".join(f"{n}: {r} rounds of {s} steps per variant" for n, s, r in plan)
        + ", alternated after a warm-up round. Ratios are per round.\n\n"
        + table(header, rows)
        + f"\n\nTarget: prunelab ≤ {TARGET} × dense."
    )
    return Section("2. Mask enforcement during fine-tuning", body, verdicts)


def main() -> str:
    return run().markdown()
