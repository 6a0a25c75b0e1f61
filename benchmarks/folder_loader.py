"""The streamed image-folder loader (``prunelab.data.imagefolder``) against a plain PyTorch loop
over the same JPEG files: the framework's batching, seeding and sharding must cost nothing next to
decoding.

    python -m benchmarks.folder_loader            # 2,000 JPEGs of 256x320 in 10 classes; about 2 min
    python -m benchmarks.folder_loader --quick    # 300 images, one round: a smoke run

Both read the same files (prunelab's training split, one image held out for validation), decode
with Pillow, take the ImageNet evaluation view (``eval_view``: shorter side 256, centre 224) and
standardise, in batches of 256 with the same worker count: (a) ``train.batches(256, generator)``,
(b) a minimal ``Dataset`` whose ``__getitem__`` does that for one image, under
``DataLoader(batch_size=256, shuffle=True)``. Each round iterates one epoch of each (A B A B ...),
after a warm-up round; the ratio (a)/(b) of images per second is taken within a round.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from prunelab.data import imagefolder
from prunelab.data.transforms import eval_view

from .common import Section, Verdict, alternate, ratios, report, spread, table

TARGET = 0.95  # (a) / (b) images per second
SIZE, RESIZE, BATCH = 224, 256, 256


def write_jpegs(root: Path, images: int, classes: int = 10, shape: tuple[int, int] = (256, 320)) -> None:
    """``images`` JPEGs (quality 90) in ``root/train/<class>/``, one per class in ``root/val/``:
    smooth colour fields plus grain, so they compress and decode like photographs, not like noise."""
    rng = np.random.default_rng(0)
    h, w = shape
    for k in range(images + classes):
        part, label = ("train", k % classes) if k < images else ("val", k - images)
        folder = root / part / f"c{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{k:05d}.jpg", quality=90)


class PlainImages(Dataset):
    """The hand-written baseline: one image per call, decoded, viewed and standardised."""

    def __init__(self, paths: list[str], labels: list[int], mean: float, std: float) -> None:
        self.paths, self.labels, self.mean, self.std = paths, labels, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            pixels = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        return (eval_view(pixels, SIZE, RESIZE) - self.mean) / self.std, self.labels[i]


def measure(images: int, workers: int, repeats: int) -> tuple[dict[str, list[float]], int]:
    """Seconds per epoch of each variant over ``repeats`` rounds, and the images per epoch."""
    with tempfile.TemporaryDirectory(prefix="prunelab-folder-") as tmp:
        root = Path(tmp)
        write_jpegs(root, images)
        data = imagefolder(root, val_size=1, workers=workers, size=SIZE, resize=RESIZE)
        train = data.train
        paths = [os.path.join(train.root, os.fsdecode(f)) for f in train.files]
        plain = PlainImages(paths, train.y.tolist(), data.mean, data.std)
        counts: dict[str, int] = {}

        seeds = itertools.count(1)  # a new order each epoch, as training takes

        def prunelab_epoch():
            generator = torch.Generator().manual_seed(next(seeds))
            counts["a"] = sum(len(y) for _, y in train.batches(BATCH, generator))

        def plain_epoch():
            loader = DataLoader(plain, batch_size=BATCH, shuffle=True, num_workers=workers)
            counts["b"] = sum(len(y) for _, y in loader)

        timings = alternate({"a": prunelab_epoch, "b": plain_epoch}, repeats, warmup=1)
        assert counts["a"] == counts["b"] == len(train), counts
        return timings.wall, len(train)


def run(quick: bool = False, images: int = 2000, workers: int = 2, repeats: int = 5) -> Section:
    if quick:
        images, repeats = 300, 1
    wall, n = measure(images, workers, repeats)
    speed = {k: [n / t for t in v] for k, v in wall.items()}
    ratio = [1 / r for r in ratios(wall, "a", "b")]  # images/s (a) over (b): the inverse ratio of times
    rows = [
        [
            "(a) `imagefolder(...).train.batches(256, generator)`",
            spread(wall["a"]),
            f"{statistics.median(speed['a']):.0f}",
        ],
        ["(b) plain `Dataset` + `DataLoader(shuffle=True)`", spread(wall["b"]), f"{statistics.median(speed['b']):.0f}"],
    ]
    body = (
        f"{n:,} JPEGs of 256×320 in 10 class folders, evaluation view {RESIZE}/{SIZE}, batches of {BATCH}, "
        f"{workers} worker processes each, {len(wall['a'])} round(s) after a warm-up round.\n\n"
        + table(["loader", "seconds per epoch", "images/s (median)"], rows)
        + f"\n\n(a)/(b) images per second: {spread(ratio, 'x')} per round; best epoch over best epoch "
        f"{min(wall['b']) / min(wall['a']):.3f}×; target ≥ {TARGET}× (the median)."
    )
    met = statistics.median(ratio) >= TARGET
    verdict = Verdict("streamed image folder vs plain DataLoader", f"≥ {TARGET}× images/s", spread(ratio, "x"), met)
    return Section("Streamed image folder vs a plain PyTorch loader", body, [verdict])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 300 images, one round")
    p.add_argument("--images", type=int, default=2000, help="JPEGs to write and read (default 2000)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes per loader (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads here (default 1)")
    p.add_argument("--out", action="store_true", help="also write the section into benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    section = run(args.quick, args.images, args.workers, args.repeats)
    return report(section, "folder_loader" if args.out else None)


if __name__ == "__main__":
    sys.exit(main())
