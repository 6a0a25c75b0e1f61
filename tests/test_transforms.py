"""Image transforms in torch alone: the batched CIFAR pad-crop-flip places every sample exactly as
the drawn offsets and flips say (checked against a per-sample reference and a marked pixel),
torchvision's RandomResizedCrop and evaluation view keep their geometry and rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunelab.data.transforms import (
    center_crop,
    eval_view,
    hflip,
    pad_crop_flip,
    random_resized_crop,
    resize_shorter,
)


def draws(n: int, padding: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The row offsets, column offsets and flips pad_crop_flip draws from a generator at ``seed``."""
    g = torch.Generator().manual_seed(seed)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    return dy, dx, torch.randint(0, 2, (n,), generator=g).bool()


def reference(batch: torch.Tensor, padding: int, seed: int, fill: float) -> torch.Tensor:
    """pad_crop_flip one sample at a time, the obvious way."""
    dy, dx, flips = draws(len(batch), padding, seed)
    h, w = batch.shape[-2:]
    out = []
    for x, y0, x0, f in zip(batch, dy.tolist(), dx.tolist(), flips.tolist()):
        crop = F.pad(x, (padding,) * 4, value=fill)[:, y0 : y0 + h, x0 : x0 + w]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


def test_pad_crop_flip_matches_the_per_sample_reference():
    batch = torch.rand(64, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    out = pad_crop_flip(batch, 4, torch.Generator().manual_seed(5), fill=-0.5)
    assert out.shape == batch.shape
    assert out.dtype == batch.dtype
    assert torch.equal(out, reference(batch, 4, 5, -0.5))


def test_pad_crop_flip_moves_a_marked_pixel_by_the_drawn_offset():
    n, p, h, w, (r, c) = 200, 2, 8, 8, (3, 5)
    batch = torch.zeros(n, 1, h, w)
    batch[:, 0, r, c] = 1.0
    out = pad_crop_flip(batch, p, torch.Generator().manual_seed(1))
    dy, dx, flips = draws(n, p, 1)
    seen = set()
    for k in range(n):
        row, col = r + p - int(dy[k]), c + p - int(dx[k])  # moved by padding - offset
        col = w - 1 - col if flips[k] else col
        expected = torch.zeros(h, w)
        if 0 <= row < h and 0 <= col < w:
            expected[row, col] = 1.0
        assert torch.equal(out[k, 0], expected), k
        placements = {
            (r + p - y, c + p - x if not f else w - 1 - (c + p - x))
            for y in range(2 * p + 1)
            for x in range(2 * p + 1)
            for f in (False, True)
        }
        found = tuple(int(i) for i in out[k, 0].nonzero().flatten()) or None
        assert found is None or found in placements
        seen.add(bool(flips[k]))
    assert seen == {True, False}  # both cases occur over the batch


def test_pad_crop_flip_is_seeded_and_fills_the_padding():
    batch = torch.ones(32, 3, 8, 8)
    a = pad_crop_flip(batch, 3, torch.Generator().manual_seed(7), fill=-2.0)
    assert torch.equal(a, pad_crop_flip(batch, 3, torch.Generator().manual_seed(7), fill=-2.0))
    assert not torch.equal(a, pad_crop_flip(batch, 3, torch.Generator().manual_seed(8), fill=-2.0))
    dy, dx, _ = draws(32, 3, 7)
    filled = (a == -2.0).sum(dim=(1, 2, 3))
    kept = (8 - (dy - 3).abs()) * (8 - (dx - 3).abs())  # pixels of the image that stay in view
    assert torch.equal(filled, 3 * (64 - kept))
    assert set(a.unique().tolist()) == {-2.0, 1.0}


def test_pad_crop_flip_without_flips_never_mirrors():
    batch = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(20, 1, 1, 1)
    out = pad_crop_flip(batch, 0, torch.Generator().manual_seed(0), flip=False)
    assert torch.equal(out, batch)  # no padding, no flip: unchanged


def test_random_resized_crop_shape_range_and_seed():
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = random_resized_crop(image, 32, generator=torch.Generator().manual_seed(3))
    assert a.shape == (3, 32, 32)
    assert a.dtype == torch.float32
    assert a.min() >= 0.0
    assert a.max() <= 1.0
    assert torch.equal(a, random_resized_crop(image, 32, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(a, random_resized_crop(image, 32, generator=torch.Generator().manual_seed(4)))
    torch.manual_seed(3)  # no generator: torch's global RNG, the same draws
    assert torch.equal(a, random_resized_crop(image, 32))


def test_random_resized_crop_of_the_whole_square_image_is_a_resize():
    image = torch.randint(0, 256, (3, 50, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = random_resized_crop(image, 20, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator())
    whole = F.interpolate(image.float()[None], size=(20, 20), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(out, whole[0] / 255)


def test_random_resized_crop_falls_back_to_the_centre_crop():
    # The whole area at ratio 1 fits no 40x64 image: after 10 tries, the centre 40x40.
    image = torch.randint(0, 256, (3, 40, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = random_resized_crop(image, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator())
    centre = image[:, :, 12:52].float()[None]
    expected = F.interpolate(centre, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)[0] / 255
    torch.testing.assert_close(out, expected)


def test_resize_shorter_keeps_the_aspect():
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert resize_shorter(image, 150).shape == (3, 150, 200)
    assert resize_shorter(image.transpose(1, 2), 150).shape == (3, 200, 150)
    assert resize_shorter(image, 256).shape == (3, 256, 341)  # the longer side truncated, as torchvision
    out = resize_shorter(image, 150)
    assert out.dtype == torch.float32
    assert out.min() >= 0
    assert out.max() <= 255
    assert out.max() > 1
    assert torch.equal(resize_shorter(image, 300), image.float())  # already that size


def test_center_crop_rounds_as_torchvision():
    image = torch.arange(11 * 10).reshape(1, 11, 10)
    crop = center_crop(image, 4)
    assert crop.shape == (1, 4, 4)
    assert crop[0, 0, 0] == image[0, 4, 3]  # top = round(3.5) = 4, left = round(3.0) = 3
    small = center_crop(torch.ones(1, 2, 3), 4)  # padded with zeros to 4x4 first
    assert small.shape == (1, 4, 4)
    assert small.sum() == 6


@pytest.mark.parametrize("shape", [(3, 300, 400), (3, 400, 300)])
def test_eval_view_is_resize_then_centre_crop(shape):
    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = eval_view(image, 224, 256)
    assert out.shape == (3, 224, 224)
    assert out.dtype == torch.float32
    h, w = (256, 341) if shape[1] < shape[2] else (341, 256)
    resized = F.interpolate(image.float()[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = round((h - 224) / 2), round((w - 224) / 2)
    assert torch.equal(out, resized[:, top : top + 224, left : left + 224] / 255)
    assert out.min() >= 0
    assert out.max() <= 1


def test_hflip_mirrors_the_last_dimension():
    image = torch.arange(6).reshape(1, 2, 3)
    assert hflip(image).tolist() == [[[2, 1, 0], [5, 4, 3]]]
