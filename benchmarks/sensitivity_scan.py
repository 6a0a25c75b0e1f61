"""10. What ``scope=sensitivity`` costs: the scan (each layer pruned alone at every grid ratio,
evaluated on the configured validation subset) and the choice, as a run pays them inside one
``prune`` call, next to one fine-tuning epoch of the same model, alternated in one run.

The fine-tuning epoch is prunelab's own loop (``train.fit``) over the whole Fashion-MNIST training
split (55,000 images) and validation split (5,000), at the configured batch size and fine-tuning
learning rate, on the masked network (the mask re-applied after every step, as unstructured runs
and ``finetune.shrink=false`` train). Both models had one epoch of dense training first, so the
scan sees a trained network's accuracy.
"""

from __future__ import annotations

import copy
import statistics

import torch

from prunelab import models
from prunelab.data import Split
from prunelab.experiment.train import fit
from prunelab.pruning import PruneData, Sensitivity, prune

from .common import (
    Section,
    Verdict,
    alternate,
    config,
    configured_optimizer,
    fashion_mnist,
    ratios,
    spread,
    table,
    vgg_small_one_epoch,
)

TARGETS = {"lenet5": 0.5, "vgg_small": 2.0}
RATIO = 0.9  # unstructured; structured prunes 0.5 of the channels


def _lenet5_one_epoch():
    data = fashion_mnist()
    torch.manual_seed(0)
    model = models.lenet5(in_shape=data.in_shape)
    fit(
        model,
        data.train,
        Split(data.val.x[:0], data.val.y[:0]),
        configured_optimizer(model.parameters()),
        1,
        config().train.batch_size,
        0,
        desc="lenet5, 1 dense epoch (benchmarks)",
    )
    return model.eval()


def run(quick: bool = False) -> Section:
    data = fashion_mnist()
    cfg = config()
    batch = cfg.train.batch_size
    samples = Sensitivity().samples
    train = data.train if not quick else Split(data.train.x[: 2 * batch], data.train.y[: 2 * batch])
    val = data.val if not quick else Split(data.val.x[:200], data.val.y[:200])
    prune_data = PruneData(data.train, data.val, batch, 0)
    x1 = data.train.x[:1]
    rows, verdicts = [], []
    trained = {"lenet5": _lenet5_one_epoch, "vgg_small": vgg_small_one_epoch}
    for name, make in trained.items():
        if quick:
            torch.manual_seed(0)
            dense = getattr(models, name)(in_shape=data.in_shape).eval()
        else:
            dense = copy.deepcopy(make())
        for method, ratio in (("unstructured", RATIO), ("structured", 0.5)):
            model = copy.deepcopy(dense)
            mask = prune(model, method, "global", ratio, example_inputs=x1).mask
            mask.apply(model)
            hold = mask.hold(model)

            def scan(model=model, method=method, ratio=ratio):
                prune(model, method, Sensitivity(), ratio, example_inputs=x1, data=prune_data)

            def epoch(model=model, hold=hold, name=name):
                optimizer = configured_optimizer(model.parameters(), "finetune")
                fit(model, train, val, optimizer, 1, batch, 1, after_step=hold, desc=f"{name} fine-tune epoch")

            rounds = 1 if quick or name == "vgg_small" else 3
            times = alternate({"scan": scan, "epoch": epoch}, rounds, warmup=0)
            r = statistics.median(ratios(times.wall, "scan", "epoch"))
            sets = len(mask.channels) if method == "structured" else len(mask.prunable)
            rows.append(
                [
                    name,
                    method,
                    sets,
                    spread(times.wall["scan"]),
                    spread(times.wall["epoch"]),
                    spread(ratios(times.wall, "scan", "epoch"), "x"),
                ]
            )
            verdicts.append(
                Verdict(
                    f"10. sensitivity scan, {name} {method}",
                    f"≤ {TARGETS[name]} × an epoch",
                    f"{r:.3f}×",
                    r <= TARGETS[name],
                )
            )
    grid = ", ".join(f"{g:g}" for g in Sensitivity().grid)
    body = (
        f"Scan: every prunable layer (unstructured) or channel group (structured) pruned alone at each of "
        f"the grid's ratios ({grid}), each evaluated on the first {samples} validation images (replaying the "
        f"outputs of what runs before the pruned set: `prunelab/pruning/probe.py`), then the per-layer choice; timed as the whole `prune(..., scope=Sensitivity())` call (unstructured at "
        f"{RATIO}, structured at 0.5). Epoch: `fit` over {len(train):,} training and {len(val):,} validation "
        f"images, batch {batch}, the mask held. Scan and epoch alternated, 3 rounds (LeNet-5) or 1 (VGG-small).\n\n"
        + table(["model", "method", "sets scanned", "scan", "fine-tuning epoch", "scan / epoch"], rows)
        + "\n\nTargets: the scan ≤ 0.5 × an epoch on LeNet-5 and ≤ 2 × on VGG-small."
    )
    return Section("10. Sensitivity scan cost", body, verdicts)


def main() -> str:
    return run().markdown()
