"""One ResNet-20 epoch on CIFAR-shaped data with ``augment=crop_flip``: prunelab's ``fit`` against
a plain PyTorch loop that augments the same way.

The data are in memory (random 3x32x32 images standardised, 10 classes) as CIFAR is in prunelab.
The plain loop shuffles with the same seeded permutation and calls the same batch augmentation
(``pad_crop_flip``: pad 4, random crop, flip) with the same generator, so both take the same steps
and must end with the same weights; the ratio is then the framework's cost per epoch, augmentation
included. A third column, the plain loop without augmentation, shows what augmenting costs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch
import torch.nn.functional as F

from prunelab.data.augment import CropFlip
from prunelab.data.splits import Split
from prunelab.data.transforms import pad_crop_flip
from prunelab.experiment.train import fit
from prunelab.models import resnet_cifar

from .common import Section, Verdict, alternate, ratios, report, spread, table

TARGET = 1.05
BATCH = 128


def plain_epoch(model, optimizer, train: Split, seed: int, augment: bool) -> None:
    """The minimal epoch: seeded shuffle, (pad-crop-flip), step."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train.y), generator=generator)
    model.train()
    for start in range(0, len(order), BATCH):
        idx = order[start : start + BATCH]
        x = train.x[idx]
        if augment:
            x = pad_crop_flip(x, 4, generator, fill=0.0)
        loss = F.cross_entropy(model(x), train.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def measure(images: int, repeats: int):
    torch.manual_seed(0)
    x, y = torch.randn(images, 3, 32, 32), torch.randint(0, 10, (images,))
    val = Split(x[:0], y[:0])
    augment = CropFlip()
    augmented = Split(x, y, lambda b, g: augment.batch(b, g, 0.0, 1.0))  # fill (0 - 0) / 1 = 0, as plain
    template = resnet_cifar(depth=20)
    state: dict = {}

    def fresh(name):
        model = copy.deepcopy(template)
        state[name] = (model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))

    variants = {
        "plain, no augmentation": lambda: plain_epoch(*state["plain, no augmentation"], Split(x, y), 0, False),
        "plain + crop_flip": lambda: plain_epoch(*state["plain + crop_flip"], Split(x, y), 0, True),
        "prunelab fit, augment=crop_flip": lambda: fit(
            *state["prunelab fit, augment=crop_flip"][:1], augmented, val,
            state["prunelab fit, augment=crop_flip"][1], 1, BATCH, 0,
        ),
    }  # fmt: skip
    times = alternate(variants, repeats, warmup=1, before=fresh)
    a = dict(state["plain + crop_flip"][0].named_parameters())
    b = dict(state["prunelab fit, augment=crop_flip"][0].named_parameters())
    diff = max(float((a[n] - b[n]).detach().abs().max()) for n in a)
    return times, diff


def run(quick: bool = False, images: int = 5000, repeats: int = 3) -> Section:
    if quick:
        images, repeats = 512, 1
    times, diff = measure(images, repeats)
    fit_name, plain = "prunelab fit, augment=crop_flip", "plain + crop_flip"
    r = ratios(times.wall, fit_name, plain)
    r_cpu = ratios(times.cpu, fit_name, plain)
    cost = ratios(times.wall, plain, "plain, no augmentation")
    rows = [[name, spread(times.wall[name])] for name in times.wall]
    body = (
        f"One epoch of ResNet-20 (model=resnet_cifar model.depth=20) on {images:,} CIFAR-shaped images "
        f"in memory, batch {BATCH}, SGD 0.1 momentum 0.9, one thread, {repeats} round(s) alternating the "
        "three loops after a warm-up round, each from the same weights.\n\n"
        + table(["loop", "seconds per epoch"], rows)
        + f"\n\nprunelab fit / plain loop with the same augmentation: {spread(r, 'x')} wall, "
        f"{spread(r_cpu, 'x')} CPU time; target ≤ {TARGET}×. Same weights after the epoch: "
        f"{'yes' if diff == 0 else f'max abs diff {diff:.1e}'}. What augmenting costs the plain loop: "
        f"{spread(cost, 'x')}."
    )
    med = statistics.median(r)
    verdict = Verdict("ResNet-20 epoch with crop_flip vs a plain loop", f"≤ {TARGET}×", spread(r, "x"), med <= TARGET)
    return Section("An augmented CIFAR epoch against a plain loop", body, [verdict])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 512 images, one round")
    p.add_argument("--images", type=int, default=5000, help="images per epoch (default 5000)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads (default 1)")
    p.add_argument("--out", action="store_true", help="also write the section into benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    section = run(args.quick, args.images, args.repeats)
    return report(section, "augment_epoch" if args.out else None)


if __name__ == "__main__":
    sys.exit(main())
