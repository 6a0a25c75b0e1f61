"""7. Fine-tuning after structured pruning: the physically shrunk network (what the runner trains
since ``finetune.shrink``) vs the masked full-size one (the mask re-applied after each step) vs
the dense network, the same slice of a Fashion-MNIST fine-tuning epoch each.

Each variant runs prunelab's own loop (``train.fit``: shuffled batches, the configured optimizer
at the fine-tuning learning rate, validation at the end) over the same first ``STEPS`` batches of
the training split and ``VAL`` validation images: an epoch's work in proportion (an epoch is 430
such batches and 5,000 validation images), so the ratio is the epoch's. VGG-small (width 32) is
pruned structured global L2 at 0.5 after one epoch of dense training, so that the channels kept
per layer are those of a trained network, not of a random one.
"""

from __future__ import annotations

import statistics

from prunelab.data import Split
from prunelab.experiment.train import fit

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
    vgg_small_pruned,
)

TARGET = 0.5
RATIO = 0.5
STEPS, VAL, ROUNDS = 40, 500, 3


def run(quick: bool = False) -> Section:
    data = fashion_mnist()
    steps, rounds = (4, 1) if quick else (STEPS, ROUNDS)
    batch = config().train.batch_size
    train = Split(data.train.x[: steps * batch], data.train.y[: steps * batch])
    val = Split(data.val.x[:VAL], data.val.y[:VAL])
    dense, masked, mask, shrunk = vgg_small_pruned(RATIO, trained=not quick)
    variants = {
        "dense": (dense, None),
        "masked (mask held)": (masked, mask.hold(masked)),
        "shrunk": (shrunk, None),
    }

    def epoch(name):
        model, hold = variants[name]
        optimizer = configured_optimizer(model.parameters(), "finetune")
        return lambda: fit(model, train, val, optimizer, 1, batch, 1, after_step=hold, desc=name)

    times = alternate({name: epoch(name) for name in variants}, rounds, warmup=1)
    params = {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in variants.items()}
    rows = []
    for name in variants:
        ref = name == "dense"
        rows.append(
            [
                name,
                f"{params[name]:,}",
                spread(times.wall[name]),
                "reference" if ref else spread(ratios(times.wall, name, "dense"), "x"),
                "reference" if ref else spread(ratios(times.cpu, name, "dense"), "x"),
            ]
        )
    r = statistics.median(ratios(times.wall, "shrunk", "dense"))
    rc = statistics.median(ratios(times.cpu, "shrunk", "dense"))
    kept = ", ".join(f"{int(k.sum())}/{k.numel()}" for k in mask.channels.values())
    body = (
        f"VGG-small (width 32) on Fashion-MNIST, structured global L2 at {RATIO} (channels kept per "
        f"pruned layer: {kept}). Each variant: `fit` over {steps} batches of {batch} and {VAL} "
        f"validation images with {optimizer_name()} at the fine-tuning learning rate; {rounds} "
        "round(s) alternating the variants after a warm-up round; ratios are per round.\n\n"
        + table(
            ["variant", "parameters", "time (slice of an epoch)", "ratio to dense, wall", "ratio to dense, CPU time"],
            rows,
        )
        + f"\n\nTarget: shrunk ≤ {TARGET} × the dense epoch."
    )
    verdict = Verdict(
        "7. fine-tuning epoch, shrunk vgg_small at 0.5",
        f"≤ {TARGET} × dense",
        f"{r:.3f}× wall ({rc:.3f}× CPU time)",
        r <= TARGET,
    )
    return Section("7. Fine-tuning the shrunk network (structured)", body, [verdict])


def main() -> str:
    return run().markdown()
