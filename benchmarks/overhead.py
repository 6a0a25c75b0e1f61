"""1. Framework overhead: one epoch through ``prunelab.train.fit`` vs a minimal hand-written loop.

Both loops see the same tensors (prunelab's Fashion-MNIST splits), the same batch order (the same
seeded permutation), batch size, optimizer and threads, and both end the epoch with a validation
pass (fit always reports validation accuracy), so they compute the same weights and differ only in
the framework's per-step bookkeeping (train loss and accuracy, the mask hold as a callback).
Fine-tuning starts from a 90%-sparse global L1 mask; fit holds it with ``after_step=mask.hold``,
the hand-written loop with its own ``p.mul_(mask)`` after each step.
"""

from __future__ import annotations

import copy
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from prunelab import models
from prunelab.data import Split
from prunelab.experiment.train import fit
from prunelab.pruning import prune

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


def hand_epoch(
    model: nn.Module,
    optimizer,
    train: Split,
    val: Split,
    batch_size: int,
    seed: int,
    masks: list[tuple[torch.Tensor, torch.Tensor]] = (),
) -> float:
    """The minimal PyTorch epoch: shuffled batches, step, (re-mask), then validation accuracy."""
    order = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(seed))
    model.train()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p, m in masks:
                p.mul_(m)
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(val.y), 1000):
            correct += int((model(val.x[start : start + 1000]).argmax(1) == val.y[start : start + 1000]).sum())
    model.train()
    return correct / max(len(val.y), 1)


def _subset(split: Split, n: int) -> Split:
    return Split(split.x[:n], split.y[:n])


def compare(name: str, mode: str, repeats: int, train: Split, val: Split) -> list:
    torch.manual_seed(0)
    template = getattr(models, name)(in_shape=tuple(train.x.shape[1:]))
    mask = None
    if mode == "fine-tune":
        mask = prune(template, "unstructured", "global", 0.9).mask
        mask.apply(template)
    state: dict[str, tuple] = {}

    def fresh(variant: str):
        model = copy.deepcopy(template)
        optimizer = configured_optimizer(model.parameters(), "train" if mode == "train" else "finetune")
        pairs = []
        if mask is not None:
            params = dict(model.named_parameters())
            pairs = [(params[n], m.to(params[n].dtype)) for n, m in mask.masks.items() if not m.all()]
        state[variant] = (model, optimizer, pairs)

    def run_fit(tr, va):
        model, optimizer, _ = state["prunelab fit"]
        hold = mask.hold(model) if mask is not None else None
        fit(model, tr, va, optimizer, 1, BATCH, seed=0, after_step=hold, desc=mode)

    def run_hand(tr, va):
        model, optimizer, pairs = state["hand-written"]
        hand_epoch(model, optimizer, tr, va, BATCH, seed=0, masks=pairs)

    small_tr, small_va = _subset(train, 20 * BATCH), _subset(val, 1000)
    times = alternate(
        {"hand-written": lambda: run_hand(train, val), "prunelab fit": lambda: run_fit(train, val)},
        repeats,
        warmup=1,
        before=fresh,
        warm={
            "hand-written": lambda: run_hand(small_tr, small_va),
            "prunelab fit": lambda: run_fit(small_tr, small_va),
        },
    )
    # Same batches, same operations: the last round's weights must agree.
    a, b = (dict(state[v][0].named_parameters()) for v in ("hand-written", "prunelab fit"))
    diff = max(float((a[n] - b[n]).detach().abs().max()) for n in a)
    r = ratios(times.wall, "prunelab fit", "hand-written")
    r_cpu = ratios(times.cpu, "prunelab fit", "hand-written")
    steps = -(-len(train) // BATCH)
    overhead = [(f - h) / steps for f, h in zip(times.cpu["prunelab fit"], times.cpu["hand-written"])]
    row = [
        name,
        mode,
        spread(times.wall["hand-written"]),
        spread(times.wall["prunelab fit"]),
        spread(r, "x"),
        spread(r_cpu, "x"),
        spread(overhead, "us", 2),
        "yes" if diff == 0 else f"max abs diff {diff:.1e}",
    ]
    return row, r, r_cpu


def run(quick: bool = False) -> Section:
    data = fashion_mnist()
    train, val = data.train, data.val
    if quick:
        train, val = _subset(train, 50 * BATCH), _subset(val, 1000)
    rows, verdicts = [], []
    plan = [("lenet5", 1 if quick else 5), ("lenet300_100", 1 if quick else 9)]
    for name, repeats in plan:
        for mode in ("train", "fine-tune"):
            row, r, r_cpu = compare(name, mode, repeats, train, val)
            rows.append(row)
            med, med_cpu = statistics.median(r), statistics.median(r_cpu)
            verdicts.append(
                Verdict(
                    f"1. overhead, {name} {mode} epoch",
                    f"≤ {TARGET} × hand-written",
                    f"{med:.3f}× wall ({med_cpu:.3f}× CPU time)",
                    med <= TARGET,
                )
            )
    header = [
        "model",
        "epoch",
        "hand-written loop",
        "prunelab fit",
        "ratio, wall",
        "ratio, CPU time",
        "overhead per step (CPU)",
        "same weights",
    ]
    body = (
        f"One epoch of Fashion-MNIST ({len(train):,} training images, batch {BATCH}, the configured "
        f"{optimizer_name()} at the configured learning rates, "
        f"{len(val):,} validation images at the end), {plan[0][1]} rounds for LeNet-5 and "
        f"{plan[1][1]} for LeNet-300-100, alternating the two loops after a short warm-up round; "
        "every round starts from the same weights. Fine-tuning holds a 90% global L1 mask. "
        "Times are wall-clock; ratios are fit / hand-written within a round, from wall-clock and from "
        "this process's CPU time (which time taken by other processes on this shared machine does "
        "not inflate); overhead per step = the CPU-time difference per batch.\n\n"
        + table(header, rows)
        + f'\n\nTarget: ratio ≤ {TARGET}. "same weights": both loops end the last round with '
        "bit-identical weights, so they did the same work."
    )
    return Section("1. Framework overhead: prunelab's training loop vs a hand-written one", body, verdicts)


def main() -> str:
    return run().markdown()
