"""C4 (``allenai/c4``, English) as the pruning papers use it: calibration windows drawn from the
first training shard, perplexity on the start of the first validation shard.

Read against IST-DASLab/sparsegpt ``datautils.py`` (``get_c4``) at
147d2159dc4f3e9f73e47b32c04d7b3708f44436, which Wanda's ``lib/data.py`` repeats:

* **calibration** (:func:`c4_calibration`): Python's ``random`` seeded by the calibration seed; for
  each window a random document of ``c4-train.00000-of-01024.json.gz`` is drawn until one is longer
  than ``seq_len`` tokens (tokenized alone), then a random crop of ``seq_len`` tokens of it. The
  same seed, shard and tokenizer give the reference code's windows.
* **evaluation** (:func:`c4`'s test split): the first 1100 documents of
  ``c4-validation.00000-of-00008.json.gz`` joined with ``" "``, tokenized once, the first
  ``256 * seq_len`` tokens as 256 windows.

The shards are JSON lines (``{"text", "timestamp", "url"}``), gzip-compressed, as published at the
pinned revision :data:`C4_REVISION`. No SHA-256 of them is published where this was written:
``dataset.sha256`` checks one when you have it, else the digest taken at download is checked on
every later read (``files.verify``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import torch

from .files import DataError, data_dirs, download, locate, verify
from .tokens import Tokens, cached

C4_REVISION = "607bd4c8450a42878aa9ddc051a65a055450ef87"
C4_URL = "https://huggingface.co/datasets/allenai/c4/resolve/{revision}/en/{file}"
C4_TRAIN = "c4-train.00000-of-01024.json.gz"
C4_VALIDATION = "c4-validation.00000-of-00008.json.gz"
EVAL_DOCUMENTS = 1100  # the validation documents the papers join
EVAL_WINDOWS = 256  # and the windows they keep


def find_c4(
    name: str, root=None, url: str | None = C4_URL, sha256: str | None = None, hint: str = "pass dataset.root=FOLDER"
) -> Path:
    """The path of the C4 shard ``name``: in ``root`` (or its ``en/``), ``$PRUNELAB_DATA/c4`` or
    the user cache, downloaded there when none has it, and checked (``files.verify``)."""
    dirs = [Path(root).expanduser()] if root else data_dirs("c4")
    found = locate(dirs, [name])
    target = dirs[-1] / name
    if found is None:
        if not url:
            raise DataError(
                f"C4's {name} is not in {', '.join(map(str, dirs))} and downloading is disabled: "
                f"put it there, or {hint}"
            )
        source = url.format(revision=C4_REVISION, file=name)
        try:
            download(source, target, None)
        except OSError as e:
            raise DataError(
                f"C4's {name} is not in {', '.join(map(str, dirs))} and its download failed ({e}): "
                f"put it there, or {hint}"
            ) from None
        found = target.parent
    path = found / name
    verify(path, sha256)
    return path


def documents(path: Path, limit: int | None = None) -> list[bytes]:
    """The JSON lines of a shard (the first ``limit``), not yet parsed: parsing is left to the
    documents drawn."""
    out: list[bytes] = []
    try:
        with gzip.open(path, "rb") as f:
            for line in f:
                if line.strip():
                    out.append(line)
                    if limit is not None and len(out) >= limit:
                        break
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable gzip file ({e}): delete it to download it again") from None
    return out


def text_of(line: bytes) -> str:
    return json.loads(line)["text"]


def c4_calibration(
    tokens: Tokens, seq_len: int, samples: int, seed: int, root=None, url: str | None = C4_URL
) -> torch.Tensor:
    """``samples`` windows of ``seq_len`` tokens from C4's first training shard, drawn as the papers
    draw them (the module docstring); cached on disk by tokenizer, shard, length, count and seed."""
    path = find_c4(C4_TRAIN, root, url, hint="set PRUNELAB_DATA to a folder whose c4/ holds it (method.calibration=c4)")
    stat = path.stat()
    key = hashlib.sha256(
        repr((tokens.digest, str(path.resolve()), stat.st_size, stat.st_mtime_ns, seq_len, samples, seed)).encode()
    ).hexdigest()
    return cached("calibration", key, lambda: _draw(tokens, path, seq_len, samples, seed))


def _draw(tokens: Tokens, path: Path, seq_len: int, samples: int, seed: int) -> torch.Tensor:
    lines = documents(path)
    draw = random.Random(seed)
    out = []
    for _ in range(samples):
        for _attempt in range(100_000):
            ids = tokens.encode(text_of(lines[draw.randint(0, len(lines) - 1)]), cache=False)
            if len(ids) > seq_len:
                break
        else:
            raise DataError(f"no document of {path} is longer than {seq_len} tokens")
        start = draw.randint(0, len(ids) - seq_len - 1)
        out.append(ids[start : start + seq_len])
    return torch.stack(out)


__all__ = ["C4_REVISION", "C4_TRAIN", "C4_URL", "C4_VALIDATION", "c4_calibration", "documents", "find_c4", "text_of"]
