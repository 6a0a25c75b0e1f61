"""A dataset as prunelab uses it: train / validation (for choices) / test (for reported numbers)
splits, already standardised with statistics of the training split.

A dataset that fits in memory is a :class:`Split` of tensors, batched by indexing with a seeded
permutation (on a GPU, on the device) instead of a per-sample Python ``Dataset``; one that does
not (a folder of ImageNet images, ``folder.py``) streams through ``DataLoader`` workers. Both
offer the same few methods: ``batches`` (shuffled or in order, augmented or not, a rank's part of
each global batch), ``example``, ``head``, ``shape``, ``device``, ``to``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..names import IGNORE
from .files import DataError


def labelled(y: torch.Tensor) -> int:
    """How many labels of ``y`` count (all but :data:`IGNORE`)."""
    return int((y != IGNORE).sum())


# The standardisation's mean or std: one number, or one per channel (ImageNet's (0.485, 0.456, 0.406)).
PerChannel = float | tuple[float, ...]


def per_channel(value: PerChannel, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor that broadcasts over ``like`` (N x C x ...): a scalar, or (C, 1, ...)."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 2))) if t.dim() == 1 and like.dim() >= 2 else t


# A training batch's augmentation: (standardised inputs, the batch's generator) -> inputs.
BatchAugment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Split:
    """Inputs and labels in memory; ``augment`` transforms every shuffled (training) batch."""

    x: torch.Tensor
    y: torch.Tensor
    augment: BatchAugment | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device) -> Split:
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device))

    def example(self) -> torch.Tensor:
        """One input, as the model takes it (tracing, shapes)."""
        return self.x[:1]

    def head(self, n: int) -> Split:
        """The first ``n`` samples, unaugmented."""
        return Split(self.x[:n], self.y[:n])

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches: shuffled by ``generator`` and augmented (training), or in order. With
        ``shard=(rank, world)`` each global batch of ``batch_size`` yields only the rank's part of it,
        so ``world`` processes together take the steps one process would."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        order = order.to(self.x.device)
        rank, world = shard
        augment = self.augment if generator is not None else None
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            # in order on one process: a slice (a view), not a gathered copy
            x = self.x[start : start + batch_size] if generator is None and world == 1 else self.x[idx]
            if augment is not None:  # the whole global batch: every rank draws the same numbers
                x = augment(x, generator)  # type: ignore[arg-type]
            if world > 1:
                x, idx = x.tensor_split(world)[rank], idx.tensor_split(world)[rank]
            yield x, self.y[idx]


@dataclass(frozen=True)
class Splits:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    # The standardisation applied to every split: x = (raw - mean) / std, raw being the inputs
    # scaled to [0, 1] (pixels / 255); the hand-over files take raw inputs and apply it themselves.
    mean: PerChannel = 0.0
    std: PerChannel = 1.0
    # The test inputs as the hand-over files take them (raw, before standardisation), on the CPU.
    test_raw: torch.Tensor | None = None
    # Calibration sources besides the training split (``method.calibration``): a name's
    # ``(samples, seed) -> inputs`` (CPU), e.g. a text dataset's ``c4`` windows in its own tokens.
    calibration: Mapping[str, Callable[[int, int], torch.Tensor]] = dataclasses.field(default_factory=dict)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.train.shape

    @property
    def device(self) -> torch.device:
        return self.train.device

    def augmented(self, augment: Any) -> Splits:
        """These splits with ``augment`` (an ``augment`` plug-in, ``prunelab.data.augment``; None:
        none) applied to every training batch: in memory to the standardised batch, streamed to
        each image as a worker decodes it."""
        if augment is None:
            return self
        if isinstance(self.train, Split):
            mean, std = self.mean, self.std
            return dataclasses.replace(
                self, train=dataclasses.replace(self.train, augment=lambda x, g: augment.batch(x, g, mean, std))
            )
        return dataclasses.replace(self, train=dataclasses.replace(self.train, augment=augment))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``x`` of a split as the hand-over files take them, on the CPU: the
        standardisation undone; token ids (integers) as they are."""
        x = x.cpu()
        return x * per_channel(self.std, x) + per_channel(self.mean, x) if x.is_floating_point() else x

    def to(self, device) -> Splits:
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


def make_splits(name, x_train, y_train, x_test, y_test, num_classes, val_size, seed, scale: float = 1.0) -> Splits:
    """Hold out ``val_size`` training samples (chosen by ``seed``) and standardise all splits with
    the mean/std of what remains for training, so no test statistic leaks into the inputs.

    Inputs are first divided by ``scale`` (255 for 8-bit pixels): the raw inputs a deployed model
    takes are then [0, 1] pixels, and ``(raw - mean) / std`` in float32 gives bit for bit what the
    model was trained and evaluated on."""
    if not 1 <= val_size < len(y_train):  # validation accuracy is measured every epoch
        raise DataError(f"dataset.val_size={val_size} must be in [1, {len(y_train)})")
    perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    x_train, x_test = x_train.float() / scale, x_test.float() / scale
    mean, std = x_train[train_idx].mean(), x_train[train_idx].std().clamp_min(1e-8)

    def norm(x):
        return (x - mean) / std

    return Splits(
        name=name,
        train=Split(norm(x_train[train_idx]), y_train[train_idx].long()),
        val=Split(norm(x_train[val_idx]), y_train[val_idx].long()),
        test=Split(norm(x_test), y_test.long()),
        num_classes=num_classes,
        mean=mean.item(),
        std=std.item(),
        test_raw=x_test,
    )


# The most samples of a streamed split held in memory at once (1,000 ImageNet images: 0.6 GB), for
# the hand-over's checks, a quantizer's calibration and what pruning looks at.
IN_MEMORY = 1000


def in_memory(split: Any, limit: int = IN_MEMORY, seed: int = 0) -> Split:
    """``split`` itself when it is in memory; else ``limit`` of its samples drawn by ``seed``, loaded."""
    if isinstance(split, Split):
        return split
    return split.subset(limit, seed).head(limit) if len(split) > limit else split.head(limit)
