"""Data files: where they are cached, how they are checked (SHA-256) and downloaded (atomically)."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError


class DataError(UserError, RuntimeError):
    """A dataset cannot be found or read; the message says what to do."""


def cache_dir() -> Path:
    """The user cache (``$XDG_CACHE_HOME/prunelab`` or ``~/.cache/prunelab``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunelab"


def file_sha256(path: Path, opener=open) -> str:
    """SHA-256 of a file's bytes (as ``opener`` reads them: ``gzip.open`` for the payload)."""
    digest = hashlib.sha256()
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


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
