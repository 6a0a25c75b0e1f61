"""CIFAR-10 and CIFAR-100 from the authors' "python version" archives, read straight out of the
``.tar.gz`` (or out of its extracted folder), found, or downloaded once and checked.

Checks: when ``verify`` is true the archive must match the MD5 its authors publish on
https://www.cs.toronto.edu/~kriz/cifar.html, and the SHA-256 Keras's and torchvision's dataset
loaders check for the same archives. An extracted folder has no published checksum of its own: its batch
files are checked against the per-file MD5s torchvision has long used for the same files. A
download is always checked against the archive's MD5 before it takes its name, so a damaged copy
never lands in the cache.

The batches are pickles, and a pickle can name any callable: only the expected member names are
unpickled, and only with numpy's array reconstruction allowed, so a crafted file (MD5 does not
stop one, nor does ``verify=false``) can run nothing.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import logging
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch

from .files import DataError, data_dirs, locate
from .splits import Splits, make_splits

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# The archives' MD5s as the dataset's authors publish them: what `verify` checks.
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# The archives' SHA-256s, as Keras (datasets/cifar10.py, cifar100.py) and torchvision's prototype
# datasets check them (not published by the authors; None would skip the check).
CIFAR10_SHA256: str | None = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR100_SHA256: str | None = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
# MD5s of the extracted batch files (torchvision's), checked when only the extracted folder is found.
MEMBER_MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}
PIXELS = 3 * 32 * 32  # a row of b"data": 1024 red, 1024 green, 1024 blue values, each plane row-major


@dataclass(frozen=True)
class Spec:
    """One of the two archives: its names and what its batches hold."""

    name: str  # the dataset's name here: data_dirs subfolder, Splits.name
    title: str  # as people write it, for messages
    archive: str  # the published file
    folder: str  # the folder inside it
    train: tuple[str, ...]  # members holding the training images, in order
    test: tuple[str, ...]
    labels: tuple[tuple[str, bytes, int], ...]  # (dataset.labels, key in the batch dict, classes)

    @property
    def members(self) -> tuple[str, ...]:
        return self.train + self.test


SPECS = {
    "cifar10": Spec(
        "cifar10",
        "CIFAR-10",
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        (("labels", b"labels", 10),),
    ),
    "cifar100": Spec(
        "cifar100",
        "CIFAR-100",
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        ("train",),
        ("test",),
        (("fine", b"fine_labels", 100), ("coarse", b"coarse_labels", 20)),
    ),
}


class CifarArrays(NamedTuple):
    """A parsed archive: uint8 images N x 3 x 32 x 32 and, per label kind, int64 labels."""

    x_train: torch.Tensor
    y_train: dict[str, torch.Tensor]
    x_test: torch.Tensor
    y_test: dict[str, torch.Tensor]


# --- checksums and downloading ------------------------------------------------------------------


@functools.cache
def _digests(path: str, _version: tuple) -> tuple[str, str]:
    """(MD5, SHA-256) of a file as it was at ``_version`` (its stamp: the memo's key only): read once
    per process while unchanged."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def check(path: Path, md5: str | None, sha256: str | None = None, what: str = "published") -> None:
    """Raise a DataError naming ``path`` unless its bytes match ``md5`` (and ``sha256``, if set)."""
    got_md5, got_sha256 = _digests(str(path.resolve()), _stamp(path))
    for kind, expected, got in (("MD5", md5, got_md5), ("SHA-256", sha256, got_sha256)):
        if expected is not None and got != expected:
            raise DataError(
                f"{path} does not match its {what} {kind} ({got}, expected {expected}): it is damaged or not the "
                "official file; delete it to download it again (or pass dataset.verify=false for a modified copy)"
            )


def fetch(url: str, dest: Path, md5: str | None, sha256: str | None = None) -> None:
    """Download ``url`` to ``dest`` atomically: into a ``.part`` file beside it, renamed only once
    its MD5 (and SHA-256, if set) match, so a broken download never takes the archive's name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        got_md5, got_sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                got_md5.update(chunk)
                got_sha256.update(chunk)
        for kind, expected, got in (("MD5", md5, got_md5), ("SHA-256", sha256, got_sha256)):
            if expected is not None and got.hexdigest() != expected:
                raise DataError(
                    f"the download from {url} does not match the published {kind} ({got.hexdigest()}, "
                    f"expected {expected}): it is corrupted, try again"
                )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- finding the files --------------------------------------------------------------------------


def find_cifar(name: str, root=None, url: str | None = None, md5: str | None = None, sha256: str | None = None) -> Path:
    """The archive (a file) or its extracted folder (a folder) of dataset ``name``.

    Looked for in ``root`` only when given (a user who names a folder must never silently train on
    another copy), else in ``$PRUNELAB_DATA/<name>`` then the user cache; in each, the archive
    before an extracted folder (only the archive has a published checksum), each either in the
    folder itself or one level down. When none has it, the archive is downloaded from ``url`` into
    ``root`` or the user cache and checked against ``md5``/``sha256`` (None: not checked)."""
    spec = SPECS[name]
    if root and not Path(root).expanduser().is_dir():
        raise DataError(
            f"dataset.root={root} is not a folder: create it, fix the path, or leave "
            "dataset.root unset to use the cached copy"
        )
    dirs = [Path(root).expanduser()] if root else data_dirs(name)
    for d in dirs:
        if (found := locate([d], [spec.archive])) is not None:
            log.debug("%s found in %s", spec.title, found)
            return found / spec.archive
        if (found := locate([d], spec.members)) is not None:
            log.debug("%s (extracted) found in %s", spec.title, found)
            return found
    target = dirs[-1] / spec.archive
    if url:
        try:
            log.info("downloading %s to %s", url, target)
            fetch(url, target, md5, sha256)
            return target
        except (OSError, ValueError) as e:  # URLError is an OSError; ValueError: not a URL
            reason = f"download from {url} failed ({e})"
        except DataError as e:
            reason = str(e)
    else:
        reason = "downloading is disabled (dataset.url=null)"
    if root:
        raise DataError(
            f"dataset.root={root} holds neither {spec.archive} nor {spec.folder}/ and {reason}: put "
            f"{spec.archive} there, or leave dataset.root unset"
        )
    raise DataError(
        f"{spec.title} not found in {', '.join(map(str, dirs))} and {reason}: put {spec.archive} in a folder "
        "and pass dataset.root=FOLDER (or set PRUNELAB_DATA)"
    )


# --- reading the batches ------------------------------------------------------------------------

_ARRAY = np.empty(0, np.uint8)
_RECONSTRUCT, _FROMBUFFER = _ARRAY.__reduce__()[0], _ARRAY.__reduce_ex__(5)[0]
# What a batch's pickle may name: numpy arrays as Python 2 (the published files), numpy 1 and
# numpy 2 pickle them, and the latin-1 bytes of protocol 2.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch does not") from None


def _parse(f: IO[bytes], where: str, spec: Spec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One batch: its images N x 3 x 32 x 32 and its labels per kind, checked."""
    try:
        batch = _BatchUnpickler(f, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
    ) as e:
        raise DataError(f"{where} is not a readable CIFAR batch ({e}); delete it and fetch it again") from e
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{where} holds b'data' of {got}, not N x {PIXELS} uint8: it is not a CIFAR batch; "
            "delete it and fetch it again"
        )
    if not len(data):
        raise DataError(f"{where} holds no images; delete it and fetch it again")
    labels = {}
    for kind, key, classes in spec.labels:
        y = np.asarray(batch.get(key, []))
        if y.shape != (len(data),) or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= classes:
            raise DataError(
                f"{where} does not hold {len(data)} labels in [0, {classes}) under {key!r}: it is not a "
                f"{spec.title} batch; delete it and fetch it again"
            )
        labels[kind] = y.astype(np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def _read_archive(path: Path, spec: Spec) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The expected members of the archive, read in one pass without extracting it."""
    wanted = {f"{spec.folder}/{m}": m for m in spec.members}
    batches: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or name in batches:
                    continue  # anything else is never unpickled
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    raise DataError(f"{path}: {member.name} is not a file; delete it and fetch it again")
                batches[name] = _parse(f, f"{path} ({member.name})", spec)
                if len(batches) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # truncated, not gzip, not tar
        raise DataError(f"{path} is not a readable {spec.title} archive ({e}); delete it and fetch it again") from e
    missing = [f"{spec.folder}/{m}" for m in spec.members if m not in batches]
    if missing:
        raise DataError(
            f"{path} lacks {', '.join(missing)}: it is not the {spec.title} python-version archive; "
            "delete it and fetch it again"
        )
    return batches


def _read_folder(folder: Path, spec: Spec) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    batches = {}
    for name in spec.members:
        try:
            with open(folder / name, "rb") as f:
                batches[name] = _parse(f, str(folder / name), spec)
        except OSError as e:
            raise DataError(f"{folder / name} cannot be read ({e})") from e
    return batches


def read_cifar(path: str | os.PathLike, name: str) -> CifarArrays:
    """The published train / test split of dataset ``name`` from its archive or extracted folder."""
    path, spec = Path(path), SPECS[name]
    batches = _read_folder(path, spec) if path.is_dir() else _read_archive(path, spec)

    def join(members):
        x = np.concatenate([batches[m][0] for m in members])
        y = {kind: torch.from_numpy(np.concatenate([batches[m][1][kind] for m in members])) for kind, *_ in spec.labels}
        return torch.from_numpy(x), y

    (x_train, y_train), (x_test, y_test) = join(spec.train), join(spec.test)
    return CifarArrays(x_train, y_train, x_test, y_test)


@functools.lru_cache(maxsize=2)
def _arrays(path: Path, _version: tuple, name: str) -> CifarArrays:
    """The parsed files at ``path`` as they were at ``_version`` (their stamps: the memo's key only).
    The uint8 arrays are kept (~180 MB), not the float splits (~740 MB per val_size/seed), so a sweep
    parses once."""
    return read_cifar(path, name)


def load(name: str, root, url: str | None, verify: bool) -> CifarArrays:
    """Find, check (when ``verify``) and parse dataset ``name``; parsed once per process while its
    files stay the same on disk."""
    md5, sha256 = (CIFAR10_MD5, CIFAR10_SHA256) if name == "cifar10" else (CIFAR100_MD5, CIFAR100_SHA256)
    path = find_cifar(name, root, url, md5, sha256)
    if path.is_dir():
        files = [path / m for m in SPECS[name].members]
        if verify:
            for f in files:
                check(f, MEMBER_MD5[name][f.name], what="expected (torchvision's)")
        stamp = tuple(_stamp(f) for f in files)
    else:
        if verify:
            check(path, md5, sha256)
        stamp = (_stamp(path),)
    return _arrays(path.resolve(), stamp, name)


# --- the datasets -------------------------------------------------------------------------------


def cifar10(
    root=None, val_size: int = 5000, seed: int = 0, url: str | None = CIFAR10_URL, verify: bool = True
) -> Splits:
    """CIFAR-10 (50k train / 10k test, 3x32x32, 10 classes): the published train / test split,
    ``val_size`` training images held out by ``seed``; standardised with training statistics.

    ``verify``: check the archive against its published MD5 (see the module docstring)."""
    a = load("cifar10", root, url, verify)
    return make_splits(
        "cifar10", a.x_train, a.y_train["labels"], a.x_test, a.y_test["labels"], 10, val_size, seed, scale=255.0
    )


def cifar100(
    root=None,
    val_size: int = 5000,
    seed: int = 0,
    url: str | None = CIFAR100_URL,
    verify: bool = True,
    labels: str = "fine",
) -> Splits:
    """CIFAR-100 (50k train / 10k test, 3x32x32) with its ``fine`` (100 classes) or ``coarse``
    (20 superclasses) labels; otherwise as :func:`cifar10`."""
    classes = {kind: n for kind, _, n in SPECS["cifar100"].labels}
    if labels not in classes:
        raise DataError(f"dataset.labels={labels!r} must be 'fine' (100 classes) or 'coarse' (20 classes)")
    a = load("cifar100", root, url, verify)
    return make_splits(
        "cifar100",
        a.x_train,
        a.y_train[labels],
        a.x_test,
        a.y_test[labels],
        classes[labels],
        val_size,
        seed,
        scale=255.0,
    )
