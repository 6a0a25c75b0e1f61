"""Image transforms written with torch alone (torchvision's wheel does not install against every
torch build): the ImageNet evaluation view, torchvision's RandomResizedCrop, and the CIFAR
pad-crop-flip applied to a whole batch at once (on the batch's device, no Python loop).

Per-sample ops take a CHW image (uint8 pixels or float); batch ops an NCHW float batch. Resizing
is bilinear with antialiasing, as torchvision's tensor ``Resize(antialias=True)`` and Pillow's
own bilinear filter do, so a model trained on torchvision's pipeline sees the same kind of pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``image`` (CHW) as float at ``height`` x ``width``, bilinear with antialias."""
    x = image if image.is_floating_point() else image.float()
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x.unsqueeze(0), size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def _unit(image: torch.Tensor, was_uint8: bool) -> torch.Tensor:
    """Pixels scaled to [0, 1] when they came in as 8-bit values."""
    return image / 255.0 if was_uint8 else image


def resize_shorter(image: torch.Tensor, size: int) -> torch.Tensor:
    """``image`` (CHW) resized so its shorter side is ``size``, aspect kept (the longer side
    truncated, as torchvision's ``Resize(int)``); float in the input's scale (0-255 for uint8)."""
    h, w = image.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    return _resize(image, new_h, new_w)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` of ``image`` (top = round((h - size) / 2), as torchvision);
    an image smaller than that is first padded with zeros on both sides, as torchvision does."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        image = F.pad(image, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        h, w = image.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[..., top : top + size, left : left + size]


def eval_view(image: torch.Tensor, size: int, resize: int) -> torch.Tensor:
    """The ImageNet evaluation transform: shorter side to ``resize``, then the centre ``size`` x
    ``size`` (256 / 224), as float in [0, 1] (uint8 input is divided by 255)."""
    return _unit(center_crop(resize_shorter(image, resize), size), not image.is_floating_point())


def random_resized_crop(
    image: torch.Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop(size)``: a crop of a random area fraction (uniform in
    ``scale``) and aspect ratio (log-uniform in ``ratio``), 10 tries, else the centre crop at the
    clamped ratio; resized to ``size`` x ``size``. Float in [0, 1] for uint8 input. Random numbers
    come from ``generator``, else torch's global RNG, drawn in torchvision's order."""
    height, width = image.shape[-2:]
    area = height * width
    low, high = torch.log(torch.tensor(ratio)).tolist()  # in float32, as torchvision computes it
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(low, high, generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            break
    else:  # the centre crop at the ratio clamped into `ratio`
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    crop = _resize(image[..., top : top + h, left : left + w], size, size)
    return _unit(crop, not image.is_floating_point())


def hflip(image: torch.Tensor) -> torch.Tensor:
    """``image`` mirrored left to right (the last dimension)."""
    return image.flip(-1)


def pad_crop_flip(
    batch: torch.Tensor, padding: int, generator: torch.Generator | None, fill: float = 0.0, flip: bool = True
) -> torch.Tensor:
    """The CIFAR augmentation on a whole NCHW batch: pad each side by ``padding`` with ``fill``,
    take a crop of the original size at a random offset per sample, and mirror each sample with
    probability 1/2. One gather on the batch's device, no loop over samples.

    Draws, in this order, from ``generator`` (on its own device, then moved to the batch's, so a
    CPU generator serves a CUDA batch): row offsets, column offsets (``randint(0, 2 * padding +
    1, (n,))`` each), then flips (``randint(0, 2, (n,))``, when ``flip``)."""
    n, _, h, w = batch.shape
    device = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device).to(batch.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device).to(batch.device)
    padded = F.pad(batch, (padding, padding, padding, padding), value=fill)
    rows = dy[:, None] + torch.arange(h, device=batch.device)  # (n, h) rows of `padded`
    cols = dx[:, None] + torch.arange(w, device=batch.device)  # (n, w)
    if flip:
        flipped = torch.randint(0, 2, (n,), generator=generator, device=device).to(batch.device).bool()
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    samples = torch.arange(n, device=batch.device)[:, None, None, None]
    channels = torch.arange(batch.shape[1], device=batch.device)[None, :, None, None]
    return padded[samples, channels, rows[:, None, :, None], cols[:, None, None, :]]
