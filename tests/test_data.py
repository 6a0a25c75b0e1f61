"""Datasets: IDX files read back exactly and refused with a clear message when damaged; Fashion-MNIST
found in the documented order, downloaded atomically and verified, split by seed and standardised with
training statistics only; digits and synthetic data shaped as promised.

Everything runs on small files generated here; the only download is from a server this module
starts on 127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import prunelab.data.images as data
from prunelab.data import DataError, digits, fashion_mnist, synthetic
from prunelab.data.images import find_fashion_mnist, read_idx

IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}
NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
REAL_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding: two zero bytes, a dtype code, the rank, big-endian sizes, big-endian data."""
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim])
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as IDX (gzip-compressed if the name ends in .gz); return the payload's SHA-256."""
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture(autouse=True)
def no_real_locations(tmp_path, monkeypatch):
    """Keep every lookup inside tmp_path: no $PRUNELAB_DATA, a fresh user cache, an empty system dir."""
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")


# --- read_idx ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_uint8_images_and_labels_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    write_idx(tmp_path / f"images{suffix}", images)
    write_idx(tmp_path / f"labels{suffix}", labels)

    got_images, got_labels = read_idx(tmp_path / f"images{suffix}"), read_idx(tmp_path / f"labels{suffix}")

    assert got_images.dtype == got_labels.dtype == torch.uint8
    assert got_images.shape == (5, 28, 28)
    assert got_labels.shape == (5,)
    assert torch.equal(got_images, torch.from_numpy(images))
    assert torch.equal(got_labels, torch.from_numpy(labels))


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"),
    [
        (">i4", torch.int32),
        (">i2", torch.int16),
        ("i1", torch.int8),
        (">f4", torch.float32),
        (">f8", torch.float64),
    ],
)
def test_big_endian_types_are_read_as_native_values(tmp_path, dtype, torch_dtype):
    values = np.array([[-70000, -1, 0], [1, 127, 70000]])
    if np.dtype(dtype).itemsize < 4:
        values = np.clip(values, np.iinfo(dtype).min, np.iinfo(dtype).max)
    write_idx(tmp_path / "values.gz", values.astype(dtype))

    got = read_idx(tmp_path / "values.gz")

    assert got.dtype == torch_dtype
    assert got.shape == (2, 3)
    assert got.tolist() == values.astype(dtype).tolist()


def test_a_matching_checksum_is_accepted(tmp_path):
    digest = write_idx(tmp_path / "labels.gz", np.arange(10, dtype=np.uint8))
    assert read_idx(tmp_path / "labels.gz", sha256=digest).tolist() == list(range(10))


def damaged(kind: str, tmp_path: Path) -> Path:
    payload = idx_bytes(np.arange(100, dtype=np.uint8).reshape(4, 5, 5))
    if kind == "truncated payload":
        path, content = tmp_path / "x.gz", gzip.compress(payload[:-7])
    elif kind == "truncated header":
        path, content = tmp_path / "x", payload[:9]
    elif kind == "bad magic number":
        path, content = tmp_path / "x.gz", gzip.compress(b"\x1f\x8b" + payload[2:])
    elif kind == "not gzip":
        path, content = tmp_path / "x.gz", payload
    elif kind == "gzip stream cut short":
        path, content = tmp_path / "x.gz", gzip.compress(payload)[:30]
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("truncated payload", ["truncated", "header promises 100"]),
        ("truncated header", ["truncated"]),
        ("bad magic number", ["magic number"]),
        ("not gzip", ["not a readable IDX file"]),
        ("gzip stream cut short", ["not a readable IDX file"]),
    ],
)
def test_a_damaged_file_is_refused_with_a_clear_message(tmp_path, kind, words):
    path = damaged(kind, tmp_path)
    with pytest.raises(DataError) as error:
        read_idx(path)
    message = str(error.value)
    assert str(path) in message
    assert "fetch it again" in message
    for word in words:
        assert word in message


def test_a_checksum_mismatch_is_refused(tmp_path):
    write_idx(tmp_path / "labels.gz", np.arange(10, dtype=np.uint8))
    with pytest.raises(DataError, match="does not match its checksum"):
        read_idx(tmp_path / "labels.gz", sha256=hashlib.sha256(b"something else").hexdigest())


# --- Fashion-MNIST from a folder --------------------------------------------------------------

TRAIN, TEST = 50, 20
# Every training image is a permutation of the same 784 pixel values, so the training statistics
# are the same whichever images the seed holds out; test images come from a brighter distribution,
# so standardising them with their own statistics would give something else.
PIXELS = np.random.default_rng(1).integers(0, 150, size=28 * 28).astype(np.uint8)


def fake_fashion_mnist(folder: Path) -> dict[str, np.ndarray]:
    """The four official files, small (50 train / 20 test 28x28 images); returns the arrays."""
    rng = np.random.default_rng(2)
    arrays = {
        NAMES[0]: np.stack([rng.permutation(PIXELS) for _ in range(TRAIN)]).reshape(TRAIN, 28, 28),
        NAMES[1]: rng.integers(0, 10, size=TRAIN, dtype=np.uint8),
        NAMES[2]: rng.integers(100, 256, size=(TEST, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, size=TEST, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return arrays


def test_fashion_mnist_splits_have_the_right_sizes_and_shapes(tmp_path):
    fake_fashion_mnist(tmp_path / "fm")
    splits = fashion_mnist(root=tmp_path / "fm", val_size=10, url=None, verify=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 20)
    assert splits.in_shape == (1, 28, 28)
    assert splits.num_classes == 10
    assert splits.train.x.dtype == torch.float32
    assert splits.train.y.dtype == torch.int64


def test_validation_images_are_held_out_of_training_and_chosen_by_seed(tmp_path):
    arrays = fake_fashion_mnist(tmp_path / "fm")

    def split(seed):
        return fashion_mnist(root=tmp_path / "fm", val_size=10, seed=seed, url=None, verify=False)

    first, again, other = split(0), split(0), split(1)
    assert torch.equal(first.val.x, again.val.x)
    assert torch.equal(first.train.x, again.train.x)
    assert not torch.equal(first.val.x, other.val.x)
    # Train and validation together are the 50 training images, each exactly once.
    pooled = torch.cat([first.train.y, first.val.y]).sort().values
    assert torch.equal(pooled, torch.from_numpy(arrays[NAMES[1]]).long().sort().values)
    train_rows = {tuple(row) for row in first.train.x.flatten(1).tolist()}
    assert not train_rows & {tuple(row) for row in first.val.x.flatten(1).tolist()}


def test_train_is_standardised_and_test_uses_the_training_statistics(tmp_path):
    arrays = fake_fashion_mnist(tmp_path / "fm")
    splits = fashion_mnist(root=tmp_path / "fm", val_size=10, url=None, verify=False)

    assert abs(splits.train.x.mean().item()) < 1e-5
    assert abs(splits.train.x.std().item() - 1) < 1e-5
    train_pixels = torch.from_numpy(np.tile(PIXELS, len(splits.train))).float()
    mean, std = train_pixels.mean(), train_pixels.std()
    raw_test = torch.from_numpy(arrays[NAMES[2]]).float().unsqueeze(1)
    torch.testing.assert_close(splits.test.x, (raw_test - mean) / std)
    assert splits.test.x.mean() > 1  # brighter than training: its own statistics were not used
    torch.testing.assert_close(splits.test.y, torch.from_numpy(arrays[NAMES[3]]).long())


def test_the_files_are_read_once_per_process_until_one_changes(tmp_path, monkeypatch):
    """Sweep points in one process share the loaded splits; a rewritten file is read again."""
    arrays = fake_fashion_mnist(tmp_path / "fm")
    reads = []
    monkeypatch.setattr(data, "read_idx", lambda path, sha256=None: reads.append(path) or read_idx(path, sha256))

    def load():
        return fashion_mnist(root=tmp_path / "fm", val_size=10, url=None, verify=False)

    first = load()
    assert load() is first
    assert len(reads) == 4
    write_idx(tmp_path / "fm" / NAMES[3], (arrays[NAMES[3]] + 1) % 10)
    changed = load()
    assert len(reads) == 8
    torch.testing.assert_close(changed.test.y, torch.from_numpy((arrays[NAMES[3]] + 1) % 10).long())


@pytest.mark.parametrize("val_size", [0, 50])
def test_val_size_must_leave_training_images_and_hold_some_out(tmp_path, val_size):
    fake_fashion_mnist(tmp_path / "fm")
    with pytest.raises(DataError, match=rf"val_size={val_size} must be in \[1, 50\)"):
        fashion_mnist(root=tmp_path / "fm", val_size=val_size, url=None, verify=False)


def test_verify_rejects_files_that_are_not_the_official_ones(tmp_path):
    fake_fashion_mnist(tmp_path / "fm")
    with pytest.raises(DataError, match="checksum"):
        fashion_mnist(root=tmp_path / "fm", url=None, verify=True)


# --- where the files are looked for -----------------------------------------------------------


def placeholders(folder: Path, names=NAMES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).touch()
    return folder


def test_lookup_order_is_env_then_user_cache_then_system(tmp_path, monkeypatch):
    env = placeholders(tmp_path / "env")
    cache = placeholders(tmp_path / "xdg-cache" / "prunelab" / "fashion-mnist")
    system = placeholders(tmp_path / "system")
    monkeypatch.setenv("PRUNELAB_DATA", str(env))

    found = []
    for folder in (env, cache, system):
        found.append(find_fashion_mnist(url=None))
        for name in NAMES:
            (folder / name).unlink()  # remove the winner: the next location must be used

    assert found == [env, cache, system]


def test_a_given_root_is_the_only_place_looked_at(tmp_path, monkeypatch):
    placeholders(tmp_path / "system")  # another complete copy that must not be used
    monkeypatch.setenv("PRUNELAB_DATA", str(placeholders(tmp_path / "env")))
    root = placeholders(tmp_path / "root")
    assert find_fashion_mnist(root, url=None) == root
    (root / NAMES[3]).unlink()
    with pytest.raises(DataError, match=f"dataset.root={root} lacks {NAMES[3]}"):
        find_fashion_mnist(root, url=None)
    with pytest.raises(DataError, match="dataset.root=/nonexistent/dir is not a folder"):
        find_fashion_mnist("/nonexistent/dir", url=None)


def test_a_fashion_mnist_subfolder_is_accepted(tmp_path):
    nested = placeholders(tmp_path / "datasets" / "fashion-mnist")
    assert find_fashion_mnist(tmp_path / "datasets", url=None) == nested


def test_a_folder_missing_one_file_is_passed_over(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_DATA", str(placeholders(tmp_path / "env", NAMES[:3])))
    system = placeholders(tmp_path / "system")
    assert find_fashion_mnist(url=None) == system


def test_nothing_found_and_no_url_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as error:
        find_fashion_mnist(url=None)
    message = str(error.value)
    for place in ("env", "xdg-cache/prunelab/fashion-mnist", "system"):
        assert str(tmp_path / place) in message
    for advice in ("dataset-fashion-mnist", "dataset.root", "PRUNELAB_DATA", "downloading is disabled"):
        assert advice in message


# --- downloading ------------------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server holding small Fashion-MNIST-like files: (url, arrays, checksums)."""
    folder = tmp_path / "mirror"
    arrays = fake_fashion_mnist(folder)
    checksums = {name: hashlib.sha256(idx_bytes(arrays[name])).hexdigest() for name in NAMES}
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", arrays, checksums
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_lands_verified_files_in_the_user_cache_atomically(tmp_path, mirror, monkeypatch):
    url, arrays, checksums = mirror
    cache = tmp_path / "xdg-cache" / "prunelab" / "fashion-mnist"
    replaced = []
    real_replace = os.replace

    def spy(src, dst):  # each file appears under its name in one rename, complete
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)

    assert find_fashion_mnist(url=url, checksums=checksums) == cache

    assert sorted(dst.name for _, dst in replaced) == sorted(NAMES)
    assert all(src.parent == dst.parent == cache and src.suffix == ".part" for src, dst in replaced)
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES)
    for name in NAMES:
        assert torch.equal(read_idx(cache / name, sha256=checksums[name]), torch.from_numpy(arrays[name]))
    splits = fashion_mnist(val_size=10, url=None, verify=False)  # now found in the cache
    assert len(splits.train) + len(splits.val) == TRAIN
    assert len(splits.test) == TEST


def test_a_wrong_checksum_leaves_no_file_behind(tmp_path, mirror):
    url, _, checksums = mirror
    cache = tmp_path / "xdg-cache" / "prunelab" / "fashion-mnist"
    bad = NAMES[1]
    with pytest.raises(DataError, match="checksum mismatch") as error:
        find_fashion_mnist(url=url, checksums={**checksums, bad: "0" * 64})
    assert url + bad in str(error.value)
    left = [p.name for p in cache.iterdir()]
    assert bad not in left
    assert not [n for n in left if n.endswith(".part")]


def test_a_missing_file_on_the_server_is_a_data_error(tmp_path, mirror):
    url, _, checksums = mirror
    (tmp_path / "mirror" / NAMES[3]).unlink()
    with pytest.raises(DataError, match=f"download from {url} failed"):
        find_fashion_mnist(url=url, checksums=checksums)
    assert not (tmp_path / "xdg-cache" / "prunelab" / "fashion-mnist" / NAMES[3]).exists()


# --- digits and synthetic ---------------------------------------------------------------------


def test_digits_are_real_8x8_images_with_a_fixed_test_split():
    first, other = digits(seed=0), digits(seed=1)

    assert (len(first.train), len(first.val), len(first.test)) == (1797 - 180 - 360, 180, 360)
    assert first.in_shape == (1, 8, 8)
    assert first.num_classes == 10
    assert set(first.train.y.unique().tolist()) == set(range(10))
    assert not torch.equal(first.val.y, other.val.y)
    # The same test images whatever the seed; only the (training-set) standardisation differs.
    assert torch.equal(first.test.y, other.test.y)

    def own_scale(x):
        return (x - x.mean()) / x.std()

    torch.testing.assert_close(own_scale(first.test.x), own_scale(other.test.x))


def test_digits_test_size_is_honoured():
    splits = digits(val_size=100, test_size=200)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1797 - 300, 100, 200)


def test_synthetic_shapes_follow_the_arguments():
    splits = synthetic(in_shape=(3, 4, 4), num_classes=5, train_size=30, test_size=12, val_size=6)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 6, 12)
    assert splits.in_shape == (3, 4, 4)
    assert splits.num_classes == 5
    assert splits.test.x.shape == (12, 3, 4, 4)
    assert splits.train.y.min() >= 0
    assert splits.train.y.max() < 5
    assert torch.equal(
        splits.test.y,
        synthetic(in_shape=(3, 4, 4), num_classes=5, train_size=30, test_size=12, val_size=6, seed=1).test.y,
    )


# --- the real Fashion-MNIST -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"Fashion-MNIST is not installed in {REAL_DIR}")
def test_the_installed_fashion_mnist_verifies_and_splits_55k_5k_10k():
    splits = fashion_mnist(root=REAL_DIR, url=None, verify=True)  # verify: raises on a checksum mismatch
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert splits.in_shape == (1, 28, 28)
    assert splits.test.y.bincount().tolist() == [1000] * 10
