"""A dataset as prunelab uses it: in-memory train / validation / test tensors.

Every dataset here is small enough to live in memory, so batches are taken by indexing with a
permutation (``prunelab.experiment.train.batches``) instead of a per-sample Python ``Dataset``.
Each loader returns :class:`Splits`: train / validation (for choices) / test (for reported
numbers), already standardised with statistics of the training split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..names import IGNORE
from .files import DataError


def labelled(y: torch.Tensor) -> int:
    """How many labels of ``y`` count (all but :data:`IGNORE`)."""
    return int((y != IGNORE).sum())


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Splits:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    # The standardisation applied to every split: x = (raw - mean) / std, raw being the inputs
    # scaled to [0, 1] (pixels / 255); the hand-over files take raw inputs and apply it themselves.
    mean: float = 0.0
    std: float = 1.0
    # The test inputs as the hand-over files take them (raw, before standardisation), on the CPU.
    test_raw: torch.Tensor | None = None
    # Calibration sources besides the training split (``method.calibration``): a name's
    # ``(samples, seed) -> inputs`` (CPU), e.g. a text dataset's ``c4`` windows in its own tokens.
    calibration: Mapping[str, Callable[[int, int], torch.Tensor]] = dataclasses.field(default_factory=dict)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs ``x`` of a split as the hand-over files take them, on the CPU: the
        standardisation undone; token ids (integers) as they are."""
        x = x.cpu()
        return x * self.std + self.mean if x.is_floating_point() else x

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
