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

**A model's own tokens** (``dataset.tokenizer``: a Hugging Face tokenizer's name or folder, by
default the model's ``model.pretrained``): WikiText-2 as the pruning papers cut it (SparseGPT's and
Wanda's ``get_wikitext2``): the file's lines as the Hugging Face ``wikitext-2-raw-v1`` rows hold
them (a line with its newline, a blank line empty), the test rows joined with ``"\n\n"`` and the
training rows with ``" "``, each split tokenized once (cached by tokenizer and text), cut into
non-overlapping windows of ``seq_len`` tokens; a window predicts its own next tokens, its last
position nothing (label :data:`~prunelab.names.IGNORE`), so the perplexity is the exp of the mean
loss over every predicted token, as the papers' evaluation loop computes it.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..names import IGNORE
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
    root=None,
    seq_len: int = 128,
    url: str | None = WIKITEXT2_URL,
    sha256: str | None = WIKITEXT2_SHA256,
    seed: int = 0,
    tokenizer: str | None = None,
) -> Splits:
    """WikiText-2 (raw), its published train / validation / test files, as bytes, or in the tokens
    of ``tokenizer`` as the papers cut it (the module docstring). Fixed splits: ``seed`` changes
    nothing."""
    folder = find_wikitext2(root, url, sha256)
    if tokenizer is None:
        train_b, val_b, test_b = ((folder / n).read_bytes() for n in WIKITEXT2_FILES)
        return corpus_splits("wikitext2", train_b, val_b, test_b, seq_len)
    tok = load_tokenizer(tokenizer)
    rows = [hf_rows((folder / n).read_text(encoding="utf-8")) for n in WIKITEXT2_FILES]
    texts = (" ".join(rows[0]), "\n\n".join(rows[1]), "\n\n".join(rows[2]))
    train, val, test = (token_windows(encode(tok, t), seq_len) for t in texts)
    return Splits("wikitext2", train, val, test, vocabulary(tok))


# --- a model's own tokens ---------------------------------------------------------------------


def hf_rows(text: str) -> list[str]:
    """The rows the Hugging Face ``wikitext`` loader makes of a file: each line with its newline,
    a blank line as ``""``."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line + "\n" if line.strip() else "" for line in lines]


def load_tokenizer(name: str) -> Any:
    """The Hugging Face tokenizer of ``name`` (a hub name or a folder, e.g. a model's)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise DataError(f"dataset.tokenizer={name} needs transformers: pip install 'prunelab[llm]'") from e
    path = Path(name).expanduser()
    if (path.is_absolute() or name.startswith((".", "~"))) and not path.is_dir():
        raise DataError(f"dataset.tokenizer={name}: no such folder")
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name)
    except (OSError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"no tokenizer found at dataset.tokenizer={name} ({first})") from None


def vocabulary(tokenizer: Any) -> int:
    """The number of token ids ``tokenizer`` can produce (added tokens included)."""
    return len(tokenizer)


def tokenizer_digest(tokenizer: Any) -> str:
    """What identifies a tokenizer's output: its class, its full serialisation where it has one
    (a fast tokenizer's), else its vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = repr((type(tokenizer).__name__, tokenizer.all_special_tokens, getattr(tokenizer, "add_bos_token", None)))
    return hashlib.sha256((body + extra).encode()).hexdigest()


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """``text``'s token ids (one call, as the papers tokenize a split), cached on disk by the
    tokenizer and the text."""
    key = hashlib.sha256((tokenizer_digest(tokenizer) + hashlib.sha256(text.encode()).hexdigest()).encode()).hexdigest()
    path = cache_dir() / "tokens" / f"{key[:32]}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, ValueError):
            path.unlink(missing_ok=True)  # damaged: encode again
    ids = torch.as_tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(ids, buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return ids


def token_windows(tokens: torch.Tensor, seq_len: int) -> Split:
    """Non-overlapping windows of ``seq_len`` tokens (the tail that does not fill one is dropped);
    ``y``: each position's next token within the window, the last position :data:`IGNORE`."""
    if seq_len < 2:
        raise DataError(f"dataset.seq_len={seq_len} must be >= 2")
    n = len(tokens) // seq_len
    if n < 1:
        raise DataError(f"a split of {len(tokens)} tokens is shorter than one window of seq_len={seq_len}")
    x = tokens[: n * seq_len].view(n, seq_len)
    y = torch.full_like(x, IGNORE)
    y[:, :-1] = x[:, 1:]
    return Split(x, y)


def unigram_perplexity(splits: Splits) -> float:
    """The perplexity of the training split's byte frequencies on the test split: the baseline a
    language model must beat (add-one smoothed)."""
    counts = torch.bincount(splits.train.y.flatten(), minlength=VOCAB).double() + 1
    logp = (counts / counts.sum()).log()
    return float(torch.exp(-logp[splits.test.y.flatten()].mean()))


__all__ = [
    "VOCAB",
    "encode",
    "fortunes",
    "load_tokenizer",
    "token_windows",
    "unigram_perplexity",
    "wikitext2",
    "windows",
]
