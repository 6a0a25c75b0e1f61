"""Text corpora for language models, as byte tokens.

A token is one byte of the UTF-8 text (a vocabulary of 256): no tokenizer to train, download or
version, and a perplexity that any byte-level model can be compared on. A split is cut into
windows of ``seq_len + 1`` bytes that overlap by one: ``x`` is a window's first ``seq_len`` bytes,
``y`` the same shifted by one (the next byte at every position), so a language model is a
classifier whose class dimension is 1 (``logits: (batch, 256, seq_len)``) and ``train.fit`` /
``train.evaluate`` count every position.

* ``fortunes``: Debian's ``fortunes`` package (``apt-get install fortunes``; 2.6 MB of English
  quotes, jokes and definitions under ``/usr/share/games/fortunes``). Chosen because it is natural
  English prose like WikiText, installs offline from the distribution's mirror with a fixed
  version, and is small enough to train a byte-level LM on two CPU cores. Its fixed splits: of the
  fortunes (``%``-separated records, files in name order) every 20th goes to test, the next to
  validation, the rest to training.
* ``wikitext2``: WikiText-2 (raw) for users with internet, downloaded once and verified by SHA-256
  (``wiki.train.raw`` / ``wiki.valid.raw`` / ``wiki.test.raw``, the published splits).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from .files import DataError, cache_dir, download, file_sha256
from .splits import Split, Splits

VOCAB = 256
FORTUNES_DIR = Path("/usr/share/games/fortunes")
WIKITEXT2_URL = "https://huggingface.co/datasets/ggml-org/ci/resolve/main/wikitext-2-raw-v1.zip"
# The SHA-256 of that zip (4,721,645 bytes) as published beside llama.cpp's perplexity scripts.
WIKITEXT2_SHA256 = "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11"
WIKITEXT2_FILES = ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw")


def windows(text: bytes, seq_len: int) -> Split:
    """``text`` as (x, y) windows of ``seq_len`` bytes, ``y`` shifted by one (the tail that does
    not fill a window is dropped)."""
    if seq_len < 1:
        raise DataError(f"dataset.seq_len={seq_len} must be >= 1")
    tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise DataError(f"a split of {len(tokens)} bytes is shorter than one window of seq_len={seq_len} + 1")
    x = tokens[: n * seq_len].view(n, seq_len)
    y = tokens[1 : n * seq_len + 1].view(n, seq_len)
    return Split(x, y)


def corpus_splits(name: str, train: bytes, val: bytes, test: bytes, seq_len: int) -> Splits:
    return Splits(name, windows(train, seq_len), windows(val, seq_len), windows(test, seq_len), VOCAB)


def fortunes(root=None, seq_len: int = 128, seed: int = 0) -> Splits:
    """Debian's fortunes (``root``: the folder of the fortune files, default the package's). The
    splits are fixed: ``seed`` (the run's) changes nothing here."""
    folder = Path(root).expanduser() if root else FORTUNES_DIR
    files = (
        sorted(p for p in folder.glob("*") if p.is_file() and not p.is_symlink() and p.suffix != ".dat")
        if folder.is_dir()
        else []
    )
    if not files:
        raise DataError(
            f"no fortune files in {folder}: install Debian's fortunes package "
            "(apt-get install fortunes), or pass dataset.root=FOLDER"
        )
    records = [r.strip() for p in files for r in p.read_bytes().split(b"\n%\n") if r.strip(b"%\n ")]
    parts: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])  # train, val, test
    for i, record in enumerate(records):
        parts[{0: 2, 1: 1}.get(i % 20, 0)].append(record)
    train, val, test = (b"\n\n".join(p) + b"\n" for p in parts)
    return corpus_splits("fortunes", train, val, test, seq_len)


def find_wikitext2(root=None, url: str | None = WIKITEXT2_URL, sha256: str | None = WIKITEXT2_SHA256) -> Path:
    """The folder holding the three ``wiki.*.raw`` files: ``root``, ``$PRUNELAB_DATA/wikitext-2``,
    or the user cache, downloading and unpacking the zip there (verified) when none has them."""
    if root:
        dirs = [Path(root).expanduser()]
    else:
        dirs = [Path(os.environ["PRUNELAB_DATA"]) / "wikitext-2"] if os.environ.get("PRUNELAB_DATA") else []
        dirs.append(cache_dir() / "wikitext-2")
    for d in dirs:
        for sub in (d, d / "wikitext-2-raw"):
            if all((sub / n).is_file() for n in WIKITEXT2_FILES):
                return sub
    target = dirs[-1] if not root else dirs[0]
    if not url:
        raise DataError(
            f"WikiText-2 not found in {', '.join(map(str, dirs))} and downloading is disabled "
            "(dataset.url=null): put wiki.train.raw, wiki.valid.raw and wiki.test.raw there"
        )
    archive = target / "wikitext-2-raw-v1.zip"
    try:
        if not archive.is_file():
            download(url, archive, None)
        if sha256 is not None and file_sha256(archive) != sha256:
            archive.unlink()
            raise DataError(f"checksum mismatch for {url}: the download is corrupted, try again")
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if Path(info.filename).name in WIKITEXT2_FILES:
                    (target / Path(info.filename).name).write_bytes(z.read(info))
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(
            f"WikiText-2 download from {url} failed ({e}): put the three wiki.*.raw files "
            f"in {target}, or pass dataset.root=FOLDER"
        ) from e
    missing = [n for n in WIKITEXT2_FILES if not (target / n).is_file()]
    if missing:
        raise DataError(f"the WikiText-2 archive from {url} lacks {', '.join(missing)}")
    return target


def wikitext2(
    root=None, seq_len: int = 128, url: str | None = WIKITEXT2_URL, sha256: str | None = WIKITEXT2_SHA256, seed: int = 0
) -> Splits:
    """WikiText-2 (raw), its published train / validation / test files, as bytes (fixed splits:
    ``seed`` changes nothing)."""
    folder = find_wikitext2(root, url, sha256)
    train, val, test = ((folder / n).read_bytes() for n in WIKITEXT2_FILES)
    return corpus_splits("wikitext2", train, val, test, seq_len)


def unigram_perplexity(splits: Splits) -> float:
    """The perplexity of the training split's byte frequencies on the test split: the baseline a
    language model must beat (add-one smoothed)."""
    counts = torch.bincount(splits.train.y.flatten(), minlength=VOCAB).double() + 1
    logp = (counts / counts.sum()).log()
    return float(torch.exp(-logp[splits.test.y.flatten()].mean()))


__all__ = ["fortunes", "wikitext2", "windows", "unigram_perplexity", "VOCAB"]
