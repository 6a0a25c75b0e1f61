"""The MLflow UI as the way into results: the links a run, a sweep and the analysis print, and
``python -m prunelab.tracking.ui`` (``make ui``), which serves a store and prints where to look.

MLflow 3 opens an experiment on its GenAI overview (traces, tokens) unless the address says
``workflowType=machine_learning``; every link built here says it, so a click lands on the runs,
their charts and the parent's notes.

For a tracking server the UI is the server itself (credentials in the address are dropped from
the printed link); a SQLite store has no UI of its own, so the link points where ``make ui``
serves it (``tracking.ui`` overrides both).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from urllib.parse import urlsplit, urlunsplit

from ..redact import redact
from .servers import HOST as DEFAULT_HOST
from .servers import mlflow_server as serve

DEFAULT_PORT = 5000
MACHINE_LEARNING = "workflowType=machine_learning"


def base_url(tracking_uri: str, ui: str | None = None) -> str:
    """Where the UI for ``tracking_uri`` is served: ``ui`` if given, the server for http(s)
    stores (without credentials), else the address ``make ui`` serves on."""
    if ui:
        return ui.rstrip("/")
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{MACHINE_LEARNING}"


def run_link(uri: str, ui: str | None, experiment_id: str, run_id: str) -> str:
    """The link printed for a run in the store at ``uri`` (``ui``: where its UI is served, if set)."""
    return run_url(base_url(uri, ui), experiment_id, run_id)


def experiment_url(base: str, experiment_id: str, view: str = "table") -> str:
    """An experiment's runs table (``view="table"``) or its chart view (``view="chart"``)."""
    return f"{base}/#/experiments/{experiment_id}/runs?{MACHINE_LEARNING}&compareRunsMode={view.upper()}"


def experiments_url(base: str) -> str:
    return f"{base}/#/experiments?{MACHINE_LEARNING}"


# Headless Chromium as this machine's network allows it: no background connections (they are
# refused here, many at a time), no GPU, no sandbox (CI runs as root).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# MLflow 3 opens its AI-assistant pane on a first visit; closed, the runs and charts get the width.
_ASSISTANT_CLOSED = """
localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
"""


def chromium() -> str | None:
    """Path of the Chromium binary (``PRUNELAB_CHROMIUM``, else Debian's), or None."""
    import shutil

    return os.environ.get("PRUNELAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def browser_page(width: int = 1600, height: int = 1000, local_storage: dict[str, str] | None = None):
    """A Playwright page in headless Chromium (Debian's binary; Playwright downloads none), with
    ``local_storage`` set before any page script runs (how a saved MLflow UI layout is given)."""
    import json

    from playwright.sync_api import sync_playwright

    path = chromium()
    if path is None:
        raise RuntimeError("no Chromium found (Debian: apt-get install chromium; or set PRUNELAB_CHROMIUM)")
    init = _ASSISTANT_CLOSED + "".join(
        f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});\n" for k, v in (local_storage or {}).items()
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            context.add_init_script(init)
            yield context.new_page()
        finally:
            browser.close()


def _stop(*_signal_args):
    # `kill` takes Ctrl-C's path, so the server's process group is stopped too; once: a second
    # SIGTERM must not interrupt that clean-up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m prunelab.tracking.ui", description="Serve an MLflow store's UI and print where to open it."
    )
    p.add_argument("--store", default="sqlite:///mlflow.db", help="backend store URI (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    # The stop may come at any moment after the server starts (even before the loop): serve's
    # clean-up runs, and the interrupt ends here.
    with contextlib.suppress(KeyboardInterrupt), serve(args.store, args.port) as base:
        print(f"MLflow UI for {redact(args.store)}: {experiments_url(base)}  (Ctrl-C stops it)", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
