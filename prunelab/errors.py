"""Expected failures: what a user did or has (a value out of range, a missing file, an
unreachable store, a pruning the model cannot take) as opposed to a bug.

Each layer raises its own subclass of :class:`UserError` where the failure is found
(``ConfigError``, ``DataError``, ``PruningError``, ...); the command line prints any of them as
one line and exits 2 (:func:`fail`), a bug keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from .redact import redact


class UserError(Exception):
    """An expected failure; its message is one sentence that says what to change."""


def one_line(error: BaseException | str) -> str:
    """The line a user sees for ``error`` (credentials in addresses masked)."""
    text = str(error).strip()
    return redact(text.splitlines()[0] if text else type(error).__name__)


def fail(error: BaseException | str, status: int = 2) -> NoReturn:
    """Print ``prunelab: error: <one line>`` to stderr and exit with ``status``."""
    print(f"prunelab: error: {one_line(error) if not isinstance(error, str) else redact(error)}", file=sys.stderr)
    sys.exit(status)
