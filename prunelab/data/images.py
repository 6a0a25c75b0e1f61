"""Image datasets: Fashion-MNIST (IDX files, found, or downloaded and verified), scikit-learn's
digits, and synthetic class prototypes for tests."""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import struct
from pathlib import Path

import numpy as np
import torch

from .files import DataError, cache_dir, download, file_sha256
from .splits import Splits, make_splits

log = logging.getLogger(__name__)


# --- IDX files (the MNIST family's format) ---------------------------------------------------

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike, sha256: str | None = None) -> torch.Tensor:
    """Read an IDX file (optionally gzip-compressed) into a tensor, checking its header and, if
    given, the SHA-256 of its uncompressed bytes."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DataError(f"{path} is not a readable IDX file ({e}); delete it and fetch it again") from e
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(
            f"{path} does not match its checksum: delete it and fetch it again "
            "(or pass dataset.verify=false for a modified copy)"
        )
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); delete it and fetch it again")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (header); delete it and fetch it again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path} holds {len(data) - header} data bytes, its header promises {expected}; "
            "the file is truncated or corrupted: delete it and fetch it again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


# --- Fashion-MNIST ----------------------------------------------------------------------------

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *uncompressed* files: distributions recompress the .gz (Debian's differ
# byte-wise from the official archives) but the IDX payload is the same.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def payload_sha256(path: Path) -> str:
    return file_sha256(path, gzip.open)


def candidate_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Where the files are looked for: only ``root`` when one is given (a user who names a folder
    must never silently train on another copy); else ``$PRUNELAB_DATA``, the user cache, then
    Debian/Ubuntu's ``dataset-fashion-mnist`` package, in that order."""
    if root:
        dirs = [Path(root).expanduser()]
    else:
        dirs = [Path(os.environ["PRUNELAB_DATA"]).expanduser()] if os.environ.get("PRUNELAB_DATA") else []
        dirs += [cache_dir() / "fashion-mnist", SYSTEM_DIR]
    # Accept both `<dir>/*.gz` and `<dir>/fashion-mnist/*.gz`.
    return [p for d in dirs for p in (d, d / "fashion-mnist")]


def find_fashion_mnist(root=None, url: str | None = FASHION_MNIST_URL, checksums: dict[str, str] | None = None) -> Path:
    """Return a directory holding the four Fashion-MNIST files, downloading them if needed (into
    ``root`` when given, else the user cache)."""
    checksums = FASHION_MNIST_SHA256 if checksums is None else checksums
    names = list(checksums)
    if root and not Path(root).expanduser().is_dir():
        raise DataError(
            f"dataset.root={root} is not a folder: create it, fix the path, or leave "
            "dataset.root unset to use the installed or cached copy"
        )
    for d in candidate_dirs(root):
        if all((d / n).is_file() for n in names):
            log.debug("Fashion-MNIST found in %s", d)
            return d
    target = Path(root).expanduser() if root else cache_dir() / "fashion-mnist"
    if url:
        try:
            for n in names:
                if not (target / n).is_file():
                    log.info("downloading %s%s", url, n)
                    download(url + n, target / n, checksums.get(n), gzip.open)
            return target
        except (OSError, ValueError) as e:
            reason = f"download from {url} failed ({e})"
        except DataError as e:
            reason = str(e)
    else:
        reason = "downloading is disabled (dataset.url=null)"
    if root:
        missing = [n for n in names if not (target / n).is_file()]
        raise DataError(
            f"dataset.root={root} lacks {', '.join(missing)} and {reason}: put the four "
            "*-ubyte.gz files there, or leave dataset.root unset"
        )
    searched = ", ".join(str(d) for d in candidate_dirs()[::2])
    raise DataError(
        f"Fashion-MNIST not found in {searched} and {reason}: install Debian's "
        "dataset-fashion-mnist package, or put the four *-ubyte.gz files in a folder and pass "
        "dataset.root=FOLDER (or set PRUNELAB_DATA)"
    )


def fashion_mnist(
    root=None, val_size: int = 5000, seed: int = 0, url: str | None = FASHION_MNIST_URL, verify: bool = True
) -> Splits:
    """Fashion-MNIST (60k train / 10k test, 1x28x28, 10 classes) from IDX ``.gz`` files.

    A sweep runs its points in one process: the files are read, checked and standardised once per
    process (and again whenever one of them changes on disk), not once per point. Up to four
    (``val_size``, ``seed``) variants are kept, ~220 MB each, so a sweep over three seeds, whose
    points alternate between them, still loads each once."""
    folder = find_fashion_mnist(root, url)
    stamp = tuple(
        (st.st_ino, st.st_size, st.st_mtime_ns) for st in (os.stat(folder / name) for name in FASHION_MNIST_SHA256)
    )
    return _fashion_mnist_splits(folder.resolve(), stamp, val_size, seed, verify)


@functools.lru_cache(maxsize=4)
def _fashion_mnist_splits(folder: Path, _version: tuple, val_size: int, seed: int, verify: bool) -> Splits:
    """The splits of the files in ``folder`` as they were at ``_version`` (their stamps: the memo's key only)."""

    def load(kind):
        name = f"{kind}-ubyte.gz"
        return read_idx(folder / name, FASHION_MNIST_SHA256[name] if verify else None)

    x_train, y_train = load("train-images-idx3"), load("train-labels-idx1")
    x_test, y_test = load("t10k-images-idx3"), load("t10k-labels-idx1")
    return make_splits(
        "fashion_mnist", x_train.unsqueeze(1), y_train, x_test.unsqueeze(1), y_test, 10, val_size, seed, scale=255.0
    )


# --- scikit-learn's digits and synthetic data -------------------------------------------------


def digits(val_size: int = 180, test_size: int = 360, seed: int = 0) -> Splits:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): real data, seconds to train.

    The test split is fixed (the last ``test_size`` images after a seed-0 shuffle), so reported
    numbers are comparable across seeds; the validation split follows ``seed``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return make_splits(
        "digits", x[:-test_size], y[:-test_size], x[-test_size:], y[-test_size:], 10, val_size, seed, scale=16.0
    )


def synthetic(
    in_shape=(1, 8, 8),
    num_classes: int = 10,
    train_size: int = 512,
    test_size: int = 256,
    val_size: int = 64,
    noise: float = 1.0,
    seed: int = 0,
) -> Splits:
    """Gaussian class prototypes plus noise: learnable in one epoch, for tests and smoke runs.

    The prototypes are fixed (seed 0) so that train and test share a task whatever ``seed`` is."""
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(num_classes, *in_shape, generator=g)

    def sample(n, gen):
        y = torch.randint(num_classes, (n,), generator=gen)
        return prototypes[y] + noise * torch.randn(n, *in_shape, generator=gen), y

    x_tr, y_tr = sample(train_size + val_size, torch.Generator().manual_seed(1 + seed))
    x_te, y_te = sample(test_size, torch.Generator().manual_seed(10_000))
    return make_splits("synthetic", x_tr, y_tr, x_te, y_te, num_classes, val_size, seed)
