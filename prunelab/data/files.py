"""Data files: where they are cached, how they are checked (SHA-256) and downloaded (atomically)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import UserError
from ..paths import cache_dir


class DataError(UserError, RuntimeError):
    """A dataset cannot be found or read; the message says what to do."""


def file_sha256(path: Path, opener=open) -> str:
    """SHA-256 of a file's bytes (as ``opener`` reads them: ``gzip.open`` for the payload)."""
    digest = hashlib.sha256()
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def _cached_sha256(path: str, _size: int, _mtime_ns: int) -> str:
    """The file's SHA-256; ``_size`` and ``_mtime_ns`` are the cache's key only (a changed file is
    read again)."""
    return file_sha256(Path(path))


def file_digest(path: Path) -> str:
    """A file's SHA-256, read once per process while its size and modification time stay the same."""
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def folder_digest(folder: Path) -> str:
    """One SHA-256 over a folder's files (their relative names and contents), e.g. a model
    checkpoint's: the same files anywhere give the same digest. Each file is read once per process
    while its size and modification time stay the same."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        digest.update(_cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns).encode())
    return digest.hexdigest()


def listing_digest(folder: Path) -> str:
    """One SHA-256 over a folder's file names and sizes, not their contents: what a folder too large
    to read through (ImageNet's 150 GB) is known by. Files renamed, added, removed or resized change
    it; pixels edited in place at the same size do not."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
    return digest.hexdigest()


def data_dirs(subdir: str) -> list[Path]:
    """Where a dataset's files are looked for when ``dataset.root`` is unset:
    ``$PRUNELAB_DATA/<subdir>``, then the user cache (where downloads go)."""
    dirs = [Path(os.environ["PRUNELAB_DATA"]) / subdir] if os.environ.get("PRUNELAB_DATA") else []
    return [*dirs, cache_dir() / subdir]


_LOCATED: dict[str, None] = {}  # the data files this process has located, in order


def locate(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first of ``dirs`` (or a folder one level inside it) that holds every file of ``names``
    (noted: :func:`located`)."""
    for d in dirs:
        for sub in (d, *sorted(p for p in d.glob("*") if p.is_dir())) if d.is_dir() else ():
            if all((sub / n).is_file() for n in names):
                _LOCATED.update(dict.fromkeys(str((sub / n).resolve()) for n in names))
                return sub
    return None


def located() -> dict[str, str]:
    """The data files this process's loaders have located, by path, with their SHA-256: where a
    run read its data from, and what it held (a run records it; a reproduction compares it)."""
    return {path: file_digest(Path(path)) for path in _LOCATED if Path(path).is_file()}


def verify(path: Path, sha256: str | None) -> None:
    """Check a data file: against ``sha256`` when one is published, else against the digest taken
    the first time it was read (kept beside it as ``<file>.sha256``; a folder that cannot be
    written to is not checked)."""
    stat = path.stat()
    actual = _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    record = path.with_name(path.name + ".sha256")
    expected = sha256 or (record.read_text().split()[0] if record.is_file() else None)
    if expected is None:
        with contextlib.suppress(OSError):
            record.write_text(f"{actual}  {path.name}\n")
    elif actual != expected:
        raise DataError(
            f"{path} does not match its SHA-256 ({'published' if sha256 else 'taken when it was first read'}): "
            "it is damaged or was changed; delete it to download it again"
        )


def download(url: str, dest: Path, sha256: str | None, opener: Callable = open) -> None:
    """Fetch ``url`` to ``dest`` atomically, verifying the SHA-256 of its bytes as ``opener``
    reads them (``gzip.open``: the uncompressed payload)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        if sha256 is not None and file_sha256(Path(tmp), opener) != sha256:
            raise DataError(f"checksum mismatch for {url}: the download is corrupted, try again")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
