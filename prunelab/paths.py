"""Where prunelab's own files are: conf/ and experiments/ from a checkout or an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """``<checkout>/<name>`` when running from a source tree (editable install), else the copy
    the wheel carries inside the package (``prunelab/<name>``, see pyproject.toml)."""
    for candidate in (_PACKAGE.parent / name, _PACKAGE / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"prunelab's {name}/ folder is missing from {_PACKAGE.parent} and {_PACKAGE}")


def conf_dir() -> Path:
    return resource_dir("conf")


def experiments_dir() -> Path:
    return resource_dir("experiments")


def pretrained_source(name: str) -> str | None:
    """What a Hugging Face ``from_pretrained`` is given for ``name`` (a model's or tokenizer's):
    its folder, or a hub name as it is; None when ``name`` is written as a path (absolute, ``./``,
    ``~``) that is no folder."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    return None if path.is_absolute() or name.startswith((".", "~")) else name


def cache_dir() -> Path:
    """The user cache (``$XDG_CACHE_HOME/prunelab`` or ``~/.cache/prunelab``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunelab"
