"""Credentials in addresses (``http://user:secret@host``) never leave the process: params, tags,
artifacts and log lines carry ``http://***@host`` instead.

MLflow reads ``user:secret@`` in a tracking URI (or ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, which are better: they are never part of the config), so prunelab
passes the real URI to MLflow and masks it everywhere it writes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

# scheme://user[:password]@  ->  scheme://***@  (also as Hydra logs an override: http\://u\:p@)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*\\?://)[^/@\s'\"]+@")


def redact(text: str) -> str:
    """``text`` with the user information of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", text) if "@" in text else text


def redact_tree(node):
    """A config tree (dicts, lists, strings) with every string redacted."""
    if isinstance(node, dict):
        return {k: redact_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [redact_tree(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def install_log_redaction() -> None:
    """Redact every log record of this process, whoever logs it (Hydra's launcher prints each
    job's overrides, MLflow its URIs) and wherever it goes: a record factory survives Hydra
    reconfiguring the handlers. Installing twice is harmless."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "prunelab_redacts", False):
        return
    logging.setLogRecordFactory(_RedactingFactory(previous))


class _RedactingFactory:
    """A log record factory that redacts what ``previous`` makes. ``prunelab_redacts`` marks it, so
    a second install (this module imported anew, say) does not wrap it again."""

    prunelab_redacts = True

    def __init__(self, previous: Callable[..., logging.LogRecord]):
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record stays as it is; logging reports it
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return record
