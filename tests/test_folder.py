"""The ImageNet-layout folder, streamed: classes and labels from train's sorted folders, val/ as
the test split, batches decoded in worker processes that are standardised, ordered, reproducible
with a seed (augmentation included) and cut into DistributedDataParallel shards of the same global
batches; each malformed folder refused in one line that says what to do.

Every folder is a few small PNG and JPEG files generated here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunelab.data import DataError, FolderSplit, Split, imagefolder
from prunelab.data.transforms import eval_view, hflip, random_resized_crop
from prunelab.names import Metric

CLASSES = ("n01", "n02", "n03")
COLOURS = np.array([(220, 30, 30), (30, 220, 30), (30, 30, 220)], dtype=np.int16)
SIZE, RESIZE = 16, 20


def picture(label: int, k: int) -> Image.Image:
    """40x48 pixels: the class's colour, textured (so crops and flips change the pixels)."""
    noise = np.random.default_rng(100 * label + k).integers(-30, 31, (40, 48, 3))
    return Image.fromarray(np.clip(COLOURS[label] + noise, 0, 255).astype(np.uint8))


def write_folder(root: Path, train: int = 6, val: int = 2) -> Path:
    for part, count in (("train", train), ("val", val)):
        for label, name in enumerate(CLASSES):
            folder = root / part / name
            folder.mkdir(parents=True)
            for k in range(count):
                ext = (".png", ".jpg", ".JPEG")[k % 3] if part == "train" else ".png"
                picture(label, k).save(folder / f"img{k}{ext}")
            (folder / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("imagefolder"))


def load(root: Path, **kw):
    return imagefolder(root, **{"val_size": 3, "workers": 0, "size": SIZE, "resize": RESIZE, **kw})


class FlipCrop:
    """An augmentation plug-in as a test needs one: torchvision's RandomResizedCrop, then a coin flip."""

    def sample(self, image: torch.Tensor, size: int, _resize: int) -> torch.Tensor:
        out = random_resized_crop(image, size)
        return hflip(out) if torch.rand(1).item() < 0.5 else out


def collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def test_classes_labels_and_lengths(root):
    data = load(root)
    assert (data.name, data.num_classes, data.test_raw) == ("imagefolder", 3, None)
    assert isinstance(data.train, FolderSplit)
    assert data.train.shape == (3, SIZE, SIZE)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 3, 6)  # 18 train images, 3 held out
    assert data.test.y.tolist() == [0, 0, 1, 1, 2, 2]  # val/ as the test split, in sorted order
    both = torch.cat([data.train.y, data.val.y])
    assert both.dtype == torch.int64
    assert torch.bincount(both).tolist() == [6, 6, 6]
    held = {bytes(f) for f in data.val.files}
    assert held.isdisjoint(bytes(f) for f in data.train.files)
    assert {bytes(f) for f in load(root, seed=1).val.files} != held  # the held-out images follow the seed
    assert all(bytes(f).startswith(b"val/") for f in data.test.files)
    for split in (data.train, data.val, data.test):  # the colour says the class
        x, y = collect(split.batches(4))
        assert torch.equal(x.mean(dim=(2, 3)).argmax(1), y)


def test_eval_batches_are_standardised_ordered_and_deterministic(root):
    data = load(root, workers=2, mean=0.5, std=0.25)
    shapes = [tuple(x.shape) for x, _ in data.train.batches(4)]
    assert shapes == [(4, 3, SIZE, SIZE)] * 3 + [(3, 3, SIZE, SIZE)]
    x, y = collect(data.test.batches(4))
    assert x.dtype == torch.float32
    assert x.device.type == "cpu"
    assert torch.equal(y, data.test.y)  # in order
    for k, name in enumerate(data.test.files):  # PNG: the same pixels as decoded here
        with Image.open(root / bytes(name).decode()) as img:
            pixels = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        torch.testing.assert_close(x[k], (eval_view(pixels, SIZE, RESIZE) - 0.5) / 0.25)
    again, _ = collect(data.test.batches(5))
    assert torch.equal(x, again)


def test_training_batches_are_reproducible_for_a_seed(root):
    data = load(root, workers=2)

    def epoch(seed, split=data.train):
        return collect(split.batches(4, torch.Generator().manual_seed(seed), augment=FlipCrop()))

    a = epoch(0)
    assert torch.equal(a[0], epoch(0)[0])
    assert torch.equal(a[1], epoch(0)[1])
    assert not torch.equal(a[0], epoch(1)[0])
    assert sorted(a[1].tolist()) == sorted(data.train.y.tolist())  # each image once
    plain, _ = collect(data.train.batches(4))
    assert not torch.equal(a[0].sort(0).values, plain.sort(0).values)  # augmented, not the eval view
    b = epoch(0, FolderSplit(**{**vars(data.train), "workers": 0}))
    assert torch.equal(a[0], b[0])  # seeded per sample: any worker count gives the same views
    torch.manual_seed(0)
    state = torch.get_rng_state()
    epoch(0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


@pytest.mark.parametrize("train", [False, True])
def test_shards_cut_the_same_global_batches(root, train):
    data = load(root, workers=2)

    def run(shard):
        g = torch.Generator().manual_seed(3) if train else None
        return list(data.train.batches(4, g, augment=FlipCrop() if train else None, shard=shard))

    whole, first, second = run((0, 1)), run((0, 2)), run((1, 2))
    assert len(whole) == len(first) == len(second) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(whole, first, second):
        assert len(y0) == (len(y) + 1) // 2  # tensor_split's cut
        assert torch.equal(torch.cat([x0, x1]), x)
        assert torch.equal(torch.cat([y0, y1]), y)
    tiny = list(data.train.batches(15, shard=(3, 4)))  # 15 = 4 + 4 + 4 + 3: the last rank's part
    assert [len(y) for _, y in tiny] == [3]
    empty = list(data.val.batches(2, shard=(3, 4)))  # 3 images: 1 + 1 + 1 + 0, 0 + ... as tensor_split
    assert [tuple(x.shape) for x, _ in empty] == [(0, 3, SIZE, SIZE), (0, 3, SIZE, SIZE)]


def test_head_example_and_to(root):
    data = load(root, workers=2).to("cpu")
    head = data.train.head(5)
    assert isinstance(head, Split)
    assert head.x.shape == (5, 3, SIZE, SIZE)
    x, y = collect(data.train.batches(4))
    assert torch.equal(head.x, x[:5])
    assert torch.equal(head.y, y[:5])
    assert data.train.head(100).x.shape[0] == 15
    example = data.train.example()
    assert example.shape == (1, 3, SIZE, SIZE)
    assert torch.equal(example, x[:1])
    moved = data.test.to("meta")
    assert isinstance(moved, FolderSplit)
    assert moved.device == torch.device("meta")
    assert len(moved) == 6
    assert data.test.device == torch.device("cpu")  # frozen: a new split


def refused(root, **kw) -> str:
    with pytest.raises(DataError) as error:
        imagefolder(root, **{"val_size": 1, "workers": 0, **kw})
    message = str(error.value)
    assert message
    assert "\n" not in message
    return message


def test_bad_folders_are_refused_in_one_line(tmp_path):
    assert "needs dataset.root=FOLDER" in refused(None)
    assert "is not a folder" in refused(tmp_path / "missing")
    (tmp_path / "a" / "val").mkdir(parents=True)
    assert "has no train/ folder" in refused(tmp_path / "a")
    (tmp_path / "b" / "train").mkdir(parents=True)
    assert "has no val/ folder" in refused(tmp_path / "b")
    (tmp_path / "c" / "train").mkdir(parents=True)
    (tmp_path / "c" / "val").mkdir()
    picture(0, 0).save(tmp_path / "c" / "train" / "loose.png")
    assert "expected one folder per class, e.g. train/n01440764/*.JPEG" in refused(tmp_path / "c")

    good = write_folder(tmp_path / "d", train=2, val=1)
    (good / "train" / "n02" / "img0.png").unlink()
    (good / "train" / "n02" / "img1.jpg").unlink()
    assert "n02 holds no images (.jpg .jpeg .png .bmp .webp)" in refused(good)

    extra = write_folder(tmp_path / "e", train=2, val=1)
    (extra / "val" / "n09").mkdir()
    picture(0, 0).save(extra / "val" / "n09" / "a.png")
    assert "classes that train/ lacks (n09)" in refused(extra)

    flat = write_folder(tmp_path / "f", train=2, val=1)
    for name in CLASSES:
        (flat / "val" / name / "img0.png").rename(flat / "val" / f"{name}.png")
        (flat / "val" / name / "notes.txt").unlink()
        (flat / "val" / name).rmdir()
    assert "holds images but no class folders" in refused(flat)

    fine = write_folder(tmp_path / "g", train=2, val=1)
    assert "dataset.val_size=0 must be in [1, 6)" in refused(fine, val_size=0)
    assert "dataset.val_size=6 must be in [1, 6)" in refused(fine, val_size=6)


def test_an_unreadable_image_is_named(tmp_path):
    root = write_folder(tmp_path, train=2, val=1)
    (root / "val" / "n01" / "img0.png").write_bytes(b"not a png")
    data = imagefolder(root, val_size=1, workers=0, size=SIZE, resize=RESIZE)
    for read in (data.test.example, lambda: list(data.test.batches(2)), lambda: data.test.to("cpu").head(3)):
        with pytest.raises(DataError) as error:
            read()
        message = str(error.value)
        assert "img0.png is not a readable image" in message
        assert message.endswith(": replace or delete it")
    workers = FolderSplit(**{**vars(data.test), "workers": 2})  # from a worker process: the same line
    with pytest.raises(DataError, match=r"^\S*img0.png is not a readable image .*: replace or delete it$"):
        list(workers.batches(1))


def test_a_run_on_a_streamed_folder_trains_prunes_hands_over_and_records(tmp_path, make_cfg):
    folder = write_folder(tmp_path / "images", train=10, val=4)
    cfg = make_cfg(
        "dataset=imagefolder",
        f"dataset.root={folder}",
        "dataset.val_size=6",
        "dataset.workers=2",
        f"dataset.size={SIZE}",
        f"dataset.resize={RESIZE}",
        "augment=imagenet",
        "model=resnet_cifar",
        "model.depth=20",
        "method=structured",
        "train.batch_size=8",
        "handover=true",
    )
    from mlflow.tracking import MlflowClient

    from prunelab.experiment.runner import run

    metrics = run(cfg)
    client = MlflowClient(cfg.tracking.uri)
    stored = client.get_run(metrics["run_id"])
    assert stored.info.status == "FINISHED"
    assert stored.data.params["dataset"] == "imagefolder"
    assert 0 <= stored.data.metrics[Metric.TEST_ACCURACY] <= 1
    assert stored.data.metrics[Metric.SPARSITY_CHANNELS] > 0.3
    # the hand-over's files were checked on the test images, loaded (12 of them: fewer than the cap)
    assert stored.data.metrics[Metric.HANDOVER_ONNX_ACCURACY] == pytest.approx(
        stored.data.metrics[Metric.TEST_ACCURACY]
    )


def test_per_channel_standardisation_reaches_the_batches_the_raw_view_and_the_hand_over(root):
    from prunelab.deploy.onnx import deployed

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    data = load(root, mean=list(mean), std=list(std))
    x, _ = collect(data.test.batches(4))
    plain, _ = collect(load(root, mean=0.0, std=1.0).test.batches(4))  # [0, 1] pixels
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, (plain - m) / s, atol=1e-6)
    assert torch.allclose(data.raw(x), plain, atol=1e-6)
    seen = []
    net = torch.nn.Identity()
    net.register_forward_hook(lambda _mod, _inp, out: seen.append(out))
    deployed(net, data.mean, data.std)(plain)  # the shipped model takes raw pixels and standardises them
    assert torch.allclose(seen[0], x, atol=1e-6)
    with pytest.raises(DataError, match=r"dataset.mean=\[0.5, 0.4\]: expected one number or three"):
        load(root, mean=[0.5, 0.4])


def test_a_folder_is_keyed_by_its_listing_not_its_contents_nor_its_workers(tmp_path, make_cfg):
    from prunelab.experiment.keys import identity

    folder = write_folder(tmp_path / "images")

    def key(*more):
        return identity(make_cfg("dataset=imagefolder", f"dataset.root={folder}", *more), "cpu")

    first = key("dataset.workers=2")
    assert key("dataset.workers=8") == first  # any number of workers gives the same batches
    picture(0, 99).save(folder / "train" / CLASSES[0] / "extra.png")
    assert key("dataset.workers=2").dense != first.dense  # a file more: other data
