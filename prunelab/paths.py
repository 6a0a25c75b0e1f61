"""Where prunelab's own files are: conf/ and experiments/ from a checkout or an installed wheel."""

from __future__ import annotations

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
