"""Text as tokens: bytes (a vocabulary of 256, no tokenizer) or a model's own Hugging Face
tokenizer, and the windows a split is cut into.

:func:`tokens_for` gives the one :class:`Tokens` a dataset uses for every split (and for its
calibration sources): ``encode`` text once (a tokenizer's output cached on disk by the tokenizer and
the text), ``cut`` the ids into windows. Bytes are cut as prunelab's byte-level models were always
trained (:func:`windows`: ``y`` is ``x`` shifted by one); a model's tokens as the pruning papers cut
them (:func:`token_windows`: non-overlapping windows, each predicting its own next tokens, the last
position unlabelled).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import one_line
from ..names import IGNORE
from ..paths import pretrained_source
from .files import DataError, cache_dir, folder_digest
from .splits import Split

VOCAB = 256  # bytes
BYTE_SEQ_LEN = 128  # a byte window when dataset.seq_len is unset


def windows(text: bytes, seq_len: int) -> Split:
    """``text`` as (x, y) windows of ``seq_len`` bytes, ``y`` shifted by one (the tail that does
    not fill a window is dropped)."""
    return shifted_windows(torch.frombuffer(bytearray(text), dtype=torch.uint8).long(), seq_len)


def shifted_windows(tokens: torch.Tensor, seq_len: int) -> Split:
    """:func:`windows` of ids already read."""
    if seq_len < 1:
        raise DataError(f"dataset.seq_len={seq_len} must be >= 1")
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise DataError(f"a split of {len(tokens)} bytes is shorter than one window of seq_len={seq_len} + 1")
    x = tokens[: n * seq_len].view(n, seq_len)
    y = tokens[1 : n * seq_len + 1].view(n, seq_len)
    return Split(x, y)


def load_tokenizer(name: str) -> Any:
    """The Hugging Face tokenizer of ``name`` (a hub name or a folder, e.g. a model's)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise DataError(f"dataset.tokenizer={name} needs transformers: pip install 'prunelab[llm]'") from e
    source = pretrained_source(name)
    if source is None:
        raise DataError(f"dataset.tokenizer={name}: no such folder")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"no tokenizer found at dataset.tokenizer={name} ({one_line(e)})") from None


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
    return cached("tokens", key, lambda: torch.as_tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long))


def cached(kind: str, key: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor the user cache holds under ``kind``/``key``, else ``make()``'s, saved there
    (atomically: a sweep's processes may write it at once; a damaged file is made again)."""
    path = cache_dir() / kind / f"{key[:32]}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, ValueError):
            path.unlink(missing_ok=True)
    tensor = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return tensor


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


def context_length(name: str) -> int | None:
    """The context, in tokens, of the model whose tokenizer is ``name`` (its config's
    ``max_position_embeddings`` / ``n_positions``), else the tokenizer's ``model_max_length`` when
    it states a real one; None when neither says."""
    from transformers import AutoConfig, AutoTokenizer

    source = pretrained_source(name) or name
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError):
        config = None
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(AutoTokenizer.from_pretrained(source), "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None


@dataclass(frozen=True)
class Tokens:
    """How a dataset turns text into model inputs: bytes (``tokenizer`` None) or the tokens of the
    Hugging Face tokenizer named ``tokenizer``."""

    tokenizer: str | None = None

    @property
    def hf(self) -> Any:
        return _tokenizer(self.tokenizer) if self.tokenizer is not None else None

    @property
    def digest(self) -> str:
        """What identifies the ids ``encode`` gives."""
        return "bytes" if self.tokenizer is None else tokenizer_digest(self.hf)

    @property
    def vocab(self) -> int:
        return VOCAB if self.tokenizer is None else vocabulary(self.hf)

    def encode(self, text: str | bytes, cache: bool = True) -> torch.Tensor:
        """The ids of ``text`` (bytes: its UTF-8 bytes; a tokenizer's: one call, as the papers
        tokenize a split, cached on disk unless ``cache`` is false)."""
        if self.tokenizer is None:
            data = text.encode() if isinstance(text, str) else text
            return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        if not cache:
            return torch.as_tensor(self.hf(text, verbose=False)["input_ids"], dtype=torch.long)
        return encode(self.hf, text)

    def cut(self, ids: torch.Tensor, seq_len: int, limit: int | None = None) -> Split:
        """``ids`` as a split of windows of ``seq_len`` (the first ``limit`` of them, if given)."""
        if self.tokenizer is None:
            return shifted_windows(ids if limit is None else ids[: limit * seq_len + 1], seq_len)
        return token_windows(ids if limit is None else ids[: limit * seq_len], seq_len)

    def seq_len(self, seq_len: int | None, max_seq_len: int | None = None) -> int:
        """The window: ``seq_len`` if set, else the model's context (bytes: 128), capped at
        ``max_seq_len``."""
        if seq_len is None:
            if self.tokenizer is None:
                seq_len = BYTE_SEQ_LEN
            else:
                found = context_length(self.tokenizer)
                if found is None:
                    raise DataError(
                        f"the context length of {self.tokenizer} is not stated in its config or tokenizer: "
                        "set dataset.seq_len"
                    )
                seq_len = found
        return min(seq_len, max_seq_len) if max_seq_len else seq_len


_LOADED: dict[str, Any] = {}


def _tokenizer(name: str) -> Any:
    """:func:`load_tokenizer`, once per process and name (a folder's: and files)."""
    path = Path(name).expanduser()
    key = f"{name}\0{folder_digest(path)}" if path.is_dir() else name
    if key not in _LOADED:
        _LOADED[key] = load_tokenizer(name)
    return _LOADED[key]


def tokens_for(tokenizer: str | None) -> Tokens:
    """The :class:`Tokens` of ``dataset.tokenizer`` (None: bytes), checked now: a missing
    tokenizer is one line."""
    tokens = Tokens(tokenizer)
    if tokenizer is not None:
        _tokenizer(tokenizer)
    return tokens


__all__ = [
    "BYTE_SEQ_LEN",
    "VOCAB",
    "Tokens",
    "context_length",
    "encode",
    "load_tokenizer",
    "token_windows",
    "tokens_for",
    "windows",
]
