"""An ImageNet-layout image folder (``root/train/<class>/*.JPEG``, ``root/val/<class>/*.JPEG``),
streamed from disk: ImageNet does not fit in memory as the other datasets do, so its splits are
:class:`FolderSplit` objects that decode each batch with Pillow in ``DataLoader`` worker processes
while the model trains, behind the same interface as the in-memory :class:`Split` (``batches``,
``head``, ``example``, ``y``, ``to``).

``val/`` is the reported test split (published ImageNet accuracies are on it); the validation
split, for choices, is held out of ``train/`` by ``seed``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, default_collate

from .files import DataError
from .splits import PerChannel, Split, Splits, per_channel
from .transforms import eval_view

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class Augment(Protocol):
    """A training-time view of one image: ``sample(image, size, resize)`` takes uint8 CHW pixels
    and returns float CHW in [0, 1] of ``size`` x ``size``, drawing from torch's global RNG (seeded
    per sample by :meth:`FolderSplit.batches`, so a seed gives the same views)."""

    def sample(self, image: torch.Tensor, size: int, resize: int) -> torch.Tensor: ...


def decode(path: str) -> torch.Tensor:
    """The image at ``path`` as uint8 CHW RGB pixels."""
    try:
        with Image.open(path) as img:
            array = np.array(img.convert("RGB"))  # a copy: writable, as torch.from_numpy wants
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path} is not a readable image ({e}): replace or delete it") from e
    return torch.from_numpy(array).permute(2, 0, 1)


class _Images(Dataset):
    """What a loader's workers read: a batch of ``(index, seed)`` items -> standardised ``(x, y)``.

    Paths are one numpy byte array, not a list of str: workers forked from a process holding a
    million Python strings copy their pages as soon as they touch the refcounts."""

    def __init__(self, split: FolderSplit, augment: Augment | None) -> None:
        self.root, self.files, self.labels = split.root, split.files, split.y.numpy()
        self.size, self.resize, self.mean, self.std = split.size, split.resize, split.mean, split.std
        self.augment = augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _raised(self.__getitems__([item]))
        return x[0], y[0]

    def __getitems__(self, items: Sequence[tuple[int, int | None]]) -> tuple[torch.Tensor, torch.Tensor] | DataError:
        """The batch, or the DataError of an unreadable image, returned for the caller to raise: a
        worker's own raise reaches the caller as a traceback whose first line names no file."""
        views = []
        for i, seed in items:
            try:
                image = decode(os.path.join(self.root, os.fsdecode(self.files[i])))
            except DataError as e:
                return e
            if seed is None or self.augment is None:
                views.append(eval_view(image, self.size, self.resize))
            else:  # seeded per sample: the same views whatever the worker count or shard
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    views.append(self.augment.sample(image, self.size, self.resize))
        # default_collate stacks straight into shared memory in a worker: no copy to send the batch
        x = default_collate(views) if views else torch.empty(0, 3, self.size, self.size)
        x.sub_(per_channel(self.mean, x)).div_(per_channel(self.std, x))
        return x, torch.from_numpy(self.labels[[i for i, _ in items]])


def _as_is(batch):
    return batch


def _raised(batch: tuple[torch.Tensor, torch.Tensor] | DataError) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, DataError):
        raise batch
    return batch


@dataclass(frozen=True, eq=False)
class FolderSplit:
    """Images listed by path (relative to ``root``) with their labels ``y`` (CPU), decoded batch
    by batch; batches land on ``device``, standardised as ``(pixels - mean) / std``."""

    root: str
    files: np.ndarray  # relative paths, os.fsencode'd
    y: torch.Tensor
    size: int = 224
    resize: int = 256
    mean: PerChannel = (0.485, 0.456, 0.406)
    std: PerChannel = (0.229, 0.224, 0.225)
    workers: int = 4
    device: torch.device = torch.device("cpu")
    augment: Augment | None = None  # the training view (``Splits.augmented``); None: the evaluation view

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One sample's shape (what ``x.shape[1:]`` is for an in-memory split)."""
        return (3, self.size, self.size)

    def to(self, device) -> FolderSplit:
        return dataclasses.replace(self, device=torch.device(device))

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        augment: Augment | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches ``(x, y)`` on :attr:`device`: shuffled by ``generator`` and, when given,
        viewed through ``augment`` (training); else in order, in the evaluation view. The order is
        cut into global batches of ``batch_size``; ``shard=(rank, world)`` keeps rank's part of
        each (``tensor_split``; empty where a last batch has fewer samples than ranks), so the
        ranks of a DistributedDataParallel run take the same number of steps.

        Each training sample's augmentation is seeded by one number drawn from ``generator`` plus
        its place in the order, so a seed gives the same batches for any worker count or shard.
        ``augment`` defaults to the split's own."""
        augment = augment if augment is not None else self.augment
        n, (rank, world) = len(self), shard
        if generator is None:
            order, base = list(range(n)), None
        else:
            order = torch.randperm(n, generator=generator).tolist()
            base = int(torch.randint(0, 2**62, (1,), generator=generator))
        parts: list[list[tuple[int, int | None]]] = []
        for start in range(0, n, batch_size):
            # rank's part of positions start..stop, as tensor_split(world)[rank] cuts them
            q, r = divmod(min(batch_size, n - start), world)
            lo = start + rank * q + min(rank, r)
            hi = lo + q + (rank < r)
            parts.append([(order[p], None if base is None else base + p) for p in range(lo, hi)])
        yield from self._load(parts, augment if base is not None else None, 0 if base is None else base)

    def _load(
        self, parts: list[list[tuple[int, int | None]]], augment: Augment | None, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            _Images(self, augment),
            batch_sampler=parts,
            num_workers=min(self.workers, len(parts)),
            collate_fn=_as_is,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # Seeds the workers' RNGs (torch, numpy, random) and keeps the loader from drawing its
            # seed from the caller's global RNG.
            generator=torch.Generator().manual_seed(seed),
        )
        for batch in loader:
            x, y = _raised(batch)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def head(self, n: int) -> Split:
        """The first ``n`` samples in the evaluation view, in memory (hand-over checks, calibration)."""
        n = min(n, len(self))
        parts: list[list[tuple[int, int | None]]] = [
            [(i, None) for i in range(start, min(start + 256, n))] for start in range(0, n, 256)
        ]
        batches = list(self._load(parts, None, 0))
        if not batches:
            return Split(torch.empty(0, *self.shape, device=self.device), self.y[:0].to(self.device))
        return Split(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))

    def subset(self, n: int, seed: int) -> FolderSplit:
        """``n`` samples drawn by ``seed`` (in file order): a folder is sorted by class, so its first
        samples are a few classes, not a sample of the data."""
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return dataclasses.replace(self, files=self.files[keep.numpy()], y=self.y[keep])

    def example(self) -> torch.Tensor:
        """The first sample in the evaluation view, shape ``(1, 3, size, size)``, decoded here."""
        x, _ = _raised(_Images(self, None).__getitems__([(0, None)]))
        return x.to(self.device)


# --- the folder -------------------------------------------------------------------------------


def _per_channel(value, name: str) -> PerChannel:
    """``dataset.mean`` / ``dataset.std``: one number, or one per RGB channel."""
    if isinstance(value, (int, float)):
        return float(value)
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise DataError(f"dataset.{name}={list(values)}: expected one number or three (R, G, B)")
    return values


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _images(folder: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(folder) if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
    )


def _listing(root: Path, part: str, classes: list[str]) -> tuple[list[bytes], list[int]]:
    """The images of ``root/part`` (``part/<class>/<file>`` paths) and their class indices."""
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / part / name
        if not folder.is_dir():
            continue  # a class val/ does not have: allowed
        names = _images(folder)
        if not names:
            raise DataError(
                f"{folder} holds no images ({' '.join(IMAGE_EXTENSIONS)}): add the class's images or remove the folder"
            )
        files += [os.fsencode(f"{part}/{name}/{f}") for f in names]
        labels += [label] * len(names)
    return files, labels


def imagefolder(
    root: str | os.PathLike | None,
    seed: int = 0,
    val_size: int = 10000,
    workers: int = 4,
    size: int = 224,
    resize: int = 256,
    mean: float | Sequence[float] = (0.485, 0.456, 0.406),
    std: float | Sequence[float] = (0.229, 0.224, 0.225),
) -> Splits:
    """An ImageNet-layout folder as streamed :class:`FolderSplit` splits: ``train/`` less
    ``val_size`` images held out by ``seed`` (validation, for choices), ``val/`` as the test split.

    Classes are train's folder names, sorted (their position is the label); val/ must use them.
    ``mean``/``std`` are one value for all channels, applied to [0, 1] pixels: nothing is read to
    compute them (ImageNet's channel averages by default)."""
    layout = "expected root/train/<class>/*.JPEG and root/val/<class>/*.JPEG"
    if root is None:  # the YAML's default (a `???` there would fail the check of every shipped option)
        raise DataError(f"dataset=imagefolder needs dataset.root=FOLDER ({layout})")
    path = Path(root).expanduser().resolve()  # workers and later batches must not depend on the cwd
    if not path.is_dir():
        raise DataError(f"dataset.root={root} is not a folder: fix the path ({layout})")
    for part in ("train", "val"):
        if not (path / part).is_dir():
            raise DataError(f"dataset.root={root} has no {part}/ folder: {layout}")
    classes = _subfolders(path / "train")
    if not classes:
        raise DataError(
            f"{path / 'train'} holds no class folders: expected one folder per class, e.g. train/n01440764/*.JPEG"
        )
    val_classes = _subfolders(path / "val")
    if not val_classes:
        loose = "images but " if _images(path / "val") else ""
        raise DataError(
            f"{path / 'val'} holds {loose}no class folders: sort its images into one folder per class "
            "as in train/, e.g. val/n01440764/*.JPEG"
        )
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataError(f"{path / 'val'} has classes that train/ lacks ({shown}): val/ must use train's class folders")
    train_files, train_labels = _listing(path, "train", classes)
    test_files, test_labels = _listing(path, "val", classes)
    if not 1 <= val_size < len(train_files):  # validation accuracy is measured every epoch
        raise DataError(f"dataset.val_size={val_size} must be in [1, {len(train_files)})")
    perm = torch.randperm(len(train_files), generator=torch.Generator().manual_seed(seed)).numpy()
    files, labels = np.array(train_files), torch.tensor(train_labels, dtype=torch.int64)

    mean_, std_ = _per_channel(mean, "mean"), _per_channel(std, "std")

    def split(files: np.ndarray, labels: torch.Tensor) -> Split:
        folder = FolderSplit(str(path), files, labels, size, resize, mean_, std_, workers)
        return cast(Split, folder)  # it has Split's interface (batches, head, example, y, to)

    return Splits(
        name="imagefolder",
        train=split(files[perm[val_size:]], labels[perm[val_size:]]),
        val=split(files[perm[:val_size]], labels[perm[:val_size]]),
        test=split(np.array(test_files), torch.tensor(test_labels, dtype=torch.int64)),
        num_classes=len(classes),
        mean=mean_,
        std=std_,
        test_raw=None,
    )


# A run is keyed by this folder's file names and sizes, not its contents (prunelab/experiment/keys.py).
imagefolder.keyed_by_listing = True  # type: ignore[attr-defined]
