"""Screenshots of the MLflow UI for the README, from a real sweep: ``python scripts/ui_screenshots.py``.

Runs the digits study (LeNet-300-100 on scikit-learn's digits, unstructured/structured x
global/local x 5 ratios, both cores) into a fresh store, serves it with ``mlflow ui`` and saves,
from headless Chromium:

* ``docs/mlflow-chart-view.png``: the experiment's chart view: the charts MLflow draws by itself,
  one per series, in a section per curve axis, and first one chart holding every
  ``accuracy_vs_sparsity/*`` series. A user makes that one with "Add chart -> Line chart" and the
  metrics picked; here it is added to the saved layout the UI keeps in the browser.
* ``docs/mlflow-curves.png``: that chart opened full screen.
* ``docs/mlflow-parent-overview.png``: the sweep's parent run, its summary note on top.
* ``docs/mlflow-children.png``: the runs table with the parent expanded into its points and the
  columns a user compares (picked with "Columns", saved the same way).

About two minutes on 2 CPU cores. ``--out DIR`` writes elsewhere, ``--store URI`` reuses a store.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunelab.tracking import ui  # noqa: E402

EXPERIMENT = "digits_smoke"
COLUMNS = [
    "params.`ratio`",
    "metrics.`sparsity.prunable`",
    "metrics.`test_accuracy`",
    "metrics.`cost.ratio.macs`",
    "metrics.`cost.ratio.latency_b1`",
]


def run_sweep(workdir: Path) -> str:
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "prunelab",
            "-m",
            "+experiment=digits_smoke",
            "hydra.sweeper.params.ratio='0.3,0.5,0.7,0.8,0.9'",
            "hydra/launcher=joblib",
            f"tracking.uri={store}",
            f"cache_dir={workdir / 'cache'}",
        ],
        cwd=workdir,
        check=True,
    )
    return store


def layout_key(experiment_id: str) -> str:
    """Where MLflow 3.x keeps an experiment page's saved layout in the browser's localStorage."""
    return f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'


def with_combined_chart(state: dict) -> dict:
    """The saved layout plus one line chart of every accuracy-vs-sparsity series, that section first."""
    charts = state["compareRunCharts"]
    series = [c for c in charts if c.get("metricKey", "").startswith("accuracy_vs_sparsity/")]
    if not series:
        raise SystemExit("the chart view shows no accuracy_vs_sparsity/* chart: is this a prunelab sweep?")
    combined = {
        **series[0],
        "uuid": "prunelab-accuracy-vs-sparsity",
        "isGenerated": False,
        "displayName": "accuracy vs sparsity (per mille), all curves",
        "selectedMetricKeys": sorted(c["metricKey"] for c in series),
    }
    state["compareRunCharts"] = [combined, *charts]
    first = lambda section: section["name"] != "accuracy_vs_sparsity"
    state["compareRunSections"] = sorted(state["compareRunSections"], key=first)
    state["isAccordionReordered"] = True
    return state


class Layout:
    """An experiment page's saved layout in the browser, read and written as MLflow keeps it."""

    def __init__(self, page, experiment_id: str):
        self.page, self.key = page, json.dumps(layout_key(experiment_id))

    def get(self) -> dict:
        return json.loads(self.page.evaluate(f"localStorage.getItem({self.key})"))

    def set(self, state: dict) -> None:
        self.page.evaluate(f"localStorage.setItem({self.key}, {json.dumps(json.dumps(state))})")


def screenshots(store: str, out: Path) -> list[Path]:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parent = client.search_runs(
        [experiment], "tags.`prunelab.role` = 'sweep'", max_results=1, order_by=["attributes.start_time DESC"]
    )[0].info.run_id
    out.mkdir(parents=True, exist_ok=True)
    shots = [out / f"mlflow-{name}.png" for name in ("chart-view", "parent-overview", "children", "curves")]
    with ui.serve(store) as base, ui.browser_page(width=1500, height=1100) as page:
        page.goto(ui.experiment_url(base, experiment, "chart"))  # MLflow writes its default layout
        page.get_by_text("accuracy_vs_sparsity").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        layout = Layout(page, experiment)
        layout.set(with_combined_chart(layout.get()))
        page.reload()
        page.get_by_text("accuracy_vs_sparsity").first.wait_for(timeout=60_000)
        page.wait_for_timeout(3000)
        page.screenshot(path=shots[0])
        page.locator("button[data-component-id='fullscreen_button_chartcard']").first.click()  # the combined chart
        page.wait_for_timeout(3000)
        page.screenshot(path=shots[3])
        page.keyboard.press("Escape")

        page.goto(ui.run_url(base, experiment, parent))
        page.get_by_text("Accuracy vs sparsity").first.wait_for(timeout=60_000)
        page.get_by_text("Show more", exact=True).first.click()  # the whole note
        page.wait_for_timeout(2000)
        page.screenshot(path=shots[1])

        layout.set({**layout.get(), "runsExpanded": {parent: True}, "selectedColumns": COLUMNS})
        page.goto(ui.experiment_url(base, experiment, "table"))
        page.get_by_text("structured-global-0.5", exact=True).first.wait_for(timeout=60_000)
        # Widen "Run Name" by dragging its header's right edge, as a user would: point names in full.
        header = page.locator(".ag-header-cell[col-id='attributes.`Run Name`']").bounding_box()
        edge_x, mid_y = header["x"] + header["width"] - 2, header["y"] + header["height"] / 2
        page.mouse.move(edge_x, mid_y)
        page.mouse.down()
        page.mouse.move(edge_x + 80, mid_y, steps=10)
        page.mouse.up()
        page.mouse.move(5, 5)  # no hover tooltip in the picture
        page.wait_for_timeout(2000)
        page.screenshot(path=shots[2])
    return shots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--store", help="an existing store with a digits_smoke sweep (default: run one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="prunelab-ui-") as tmp:
        store = args.store or run_sweep(Path(tmp))
        for path in screenshots(store, args.out):
            print(path)


if __name__ == "__main__":
    main()
