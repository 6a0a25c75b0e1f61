"""The ``augment`` config group: how training batches are varied (never validation or test ones).

A plug-in offers the two forms a dataset may need (the contract, :class:`~prunelab.contracts.Augmentation`):

* ``check(in_shape)``: raises a one-line error for inputs it cannot augment (before any run opens).
* ``batch(x, generator, mean, std)``: a whole standardised in-memory batch, on its device, random
  numbers from the epoch's ``generator`` (the one that shuffles it: seeded, reproducible). The
  fastest CIFAR trainers augment this way, on the GPU, instead of per image in workers.
* ``sample(image, size, resize)``: one decoded uint8 CHW image of a streamed dataset, in a
  ``DataLoader`` worker (torch's RNG, seeded per worker from the epoch's generator), to a float
  ``size`` x ``size`` image in [0, 1]; without augmentation the dataset's evaluation view
  (:func:`~prunelab.data.transforms.eval_view`) is used instead.

Written with torch ops (``transforms.py``): torchvision's wheels do not import against every
PyTorch build.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from typing_extensions import override

from ..contracts import Augmentation
from .files import DataError
from .splits import PerChannel, per_channel
from .transforms import eval_view, hflip, pad_crop_flip, random_resized_crop


def check_images(name: str, in_shape: tuple[int, ...]) -> None:
    if len(in_shape) != 3:
        shape = "x".join(map(str, in_shape))
        raise DataError(
            f"augment={name} augments images (C x H x W); this dataset's inputs are {shape}: use augment=none"
        )


@dataclass(frozen=True)
class CropFlip(Augmentation):
    """The CIFAR standard: a random ``size``-sized crop of the image padded by ``padding`` pixels of
    ``fill`` (raw pixel value in [0, 1]: 0 is black, as torchvision's ``RandomCrop(32, padding=4)``),
    then a horizontal flip with probability 1/2 (``flip``)."""

    padding: int = 4
    flip: bool = True
    fill: float = 0.0

    def __post_init__(self):
        if self.padding < 0:
            raise DataError(f"augment.padding={self.padding} must be >= 0")
        if not 0 <= self.fill <= 1:
            raise DataError(f"augment.fill={self.fill}: a raw pixel value, expected 0 <= fill <= 1")

    def check(self, in_shape: tuple[int, ...]) -> None:
        check_images("crop_flip", in_shape)

    def batch(self, x: torch.Tensor, generator: torch.Generator, mean: PerChannel, std: PerChannel) -> torch.Tensor:
        if isinstance(mean, (int, float)) and isinstance(std, (int, float)):  # the fill, standardised
            return pad_crop_flip(x, self.padding, generator, fill=(self.fill - mean) / std, flip=self.flip)
        m, s = per_channel(mean, x), per_channel(std, x)  # per channel: padded as raw pixels
        return (pad_crop_flip(x * s + m, self.padding, generator, fill=self.fill, flip=self.flip) - m) / s

    def sample(self, image: torch.Tensor, size: int, resize: int) -> torch.Tensor:
        view = eval_view(image, size, resize)
        return pad_crop_flip(view[None], self.padding, None, fill=self.fill, flip=self.flip)[0]


@dataclass(frozen=True)
class ImageNet(Augmentation):
    """The ImageNet standard: a random-resized crop (area fraction uniform in ``scale``, aspect
    log-uniform in ``ratio``) to the dataset's size, then a horizontal flip with probability 1/2.
    Evaluation keeps the dataset's view (resize 256, centre crop 224)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __post_init__(self):
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise DataError(f"augment.scale={list(self.scale)}: expected 0 < low <= high <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise DataError(f"augment.ratio={list(self.ratio)}: expected 0 < low <= high")

    def check(self, in_shape: tuple[int, ...]) -> None:
        check_images("imagenet", in_shape)

    @override
    def sample(self, image: torch.Tensor, size: int, resize: int) -> torch.Tensor:
        crop = random_resized_crop(image, size, tuple(self.scale), tuple(self.ratio))  # type: ignore[arg-type]
        return hflip(crop) if self.flip and torch.rand(()) < 0.5 else crop

    @override
    def batch(self, x: torch.Tensor, generator: torch.Generator, mean: PerChannel, std: PerChannel) -> torch.Tensor:
        """In-memory images: each sample cropped and flipped (a loop: in-memory data are small)."""
        size = x.shape[-1]
        out = []
        for image in x:
            crop = random_resized_crop(image, size, tuple(self.scale), tuple(self.ratio), generator)  # type: ignore[arg-type]
            flip = self.flip and bool(torch.randint(0, 2, (), generator=generator))
            out.append(hflip(crop) if flip else crop)
        return torch.stack(out)
