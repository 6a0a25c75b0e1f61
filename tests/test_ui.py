"""The MLflow UI as the comparison surface: the links prunelab prints, and a real `mlflow ui` over a
sweep's store, loaded in headless Chromium, showing the curves as charts, the points as named
child runs, and the summary note, in "Model training" mode."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request

import mlflow
import pandas as pd
import pytest

from prunelab import analysis
from prunelab.names import Metric
from prunelab.tracking import servers, ui


def test_links_open_the_runs_in_model_training_mode():
    assert (
        ui.run_url("http://h:5000", "3", "abc")
        == "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert ui.experiments_url("http://h:5000") == "http://h:5000/#/experiments?workflowType=machine_learning"
    assert "compareRunsMode=CHART" in ui.experiment_url("http://h:5000", "3", "chart")


@pytest.mark.parametrize(
    ("tracking_uri", "configured", "expected"),
    [
        ("sqlite:///mlflow.db", None, "http://127.0.0.1:5000"),  # where `make ui` serves
        ("http://user:secret@team:5000/", None, "http://team:5000"),  # the server is its own UI
        ("https://team.example/mlflow", None, "https://team.example/mlflow"),
        ("sqlite:///mlflow.db", "http://ui.example:8080/", "http://ui.example:8080"),
    ],
)
def test_the_ui_address_follows_the_store_without_credentials(tracking_uri, configured, expected):
    assert ui.base_url(tracking_uri, configured) == expected


def point(method, scope, ratio, sparsity, accuracy, seed=0, macs=None):
    return {
        "run_id": f"{method}{scope}{ratio}{seed}",
        "experiment_id": "1",
        "status": "FINISHED",
        "role": "pruned",
        "model": "m",
        "dataset": "d",
        "method": method,
        "scope": scope,
        "criterion": "l1",
        "ratio": ratio,
        "seed": seed,
        Metric.SPARSITY_PRUNABLE: sparsity,
        Metric.TEST_ACCURACY: accuracy,
        "macs_fraction": macs if macs is not None else 1 - sparsity,
    }


def test_curve_series_average_seeds_and_start_at_the_dense_model():
    dense = {**point("dense", "none", 0.0, 0.0, 0.9), "role": "dense", "criterion": "none"}
    df = pd.DataFrame(
        [
            dense,
            point("unstructured", "global", 0.5, 0.5, 0.8),
            point("unstructured", "global", 0.5, 0.5, 0.7, seed=1),
            point("unstructured", "global", 0.9, 0.9004, 0.6),
            point("structured", "local", 0.5, 0.75, 0.5, macs=0.3),
        ]
    )
    series = analysis.curve_series(df)
    assert series["accuracy_vs_sparsity/unstructured-global-l1"] == [(0, 0.9), (500, pytest.approx(0.75)), (900, 0.6)]
    assert series["accuracy_vs_sparsity/structured-local-l1"] == [(0, 0.9), (750, 0.5)]
    assert series["accuracy_vs_macs/structured-local-l1"] == [(300, 0.5), (1000, 0.9)]
    assert series["accuracy_vs_sparsity/dense"] == [(0, 0.9), (1000, 0.9)]
    # a second model in the same study names its curves apart (by what varies: the model)
    other = pd.DataFrame([{**point("unstructured", "global", 0.5, 0.5, 0.4), "model": "n"}])
    names = set(analysis.curve_series(pd.concat([df, other])))
    assert {"accuracy_vs_sparsity/m-unstructured-global-l1", "accuracy_vs_sparsity/n-unstructured-global-l1"} <= names


def test_zero_shot_accuracy_is_a_curve_that_starts_at_the_dense_models():
    dense = {**point("dense", "none", 0.0, 0.0, 0.9), "role": "dense", "criterion": "none", "dense_key": "k"}
    task = Metric.zeroshot("piqa")

    def scored(ratio, acc, seed=0):
        return {
            **point("wanda", "local", ratio, ratio, 0.5, seed),
            task: acc,
            Metric.at(Metric.DENSE, task): 0.7,
            "dense_key": "k",
        }

    df = pd.DataFrame([dense, scored(0.5, 0.6), scored(0.5, 0.5, seed=1), scored(0.7, 0.4)])
    series = {k: [(step, round(v, 9)) for step, v in points] for k, points in analysis.curve_series(df).items()}
    assert series[f"{task}_vs_sparsity/wanda-local-l1"] == [(0, 0.7), (500, 0.55), (700, 0.4)]
    assert series[f"{task}_vs_sparsity/dense"] == [(0, 0.7), (1000, 0.7)]


def test_analysis_links_each_run_to_its_ui_page():
    mlflow.set_tracking_uri("http://team:5000")
    try:
        links = analysis.ui_links(pd.DataFrame([point("structured", "global", 0.5, 0.5, 0.8)]))
    finally:
        mlflow.set_tracking_uri(None)
    assert list(links) == ["http://team:5000/#/experiments/1/runs/structuredglobal0.50?workflowType=machine_learning"]


def test_make_ui_serves_the_store_prints_its_link_and_stops_with_its_server(workdir):
    port = servers.free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prunelab.tracking.ui",
            "--store",
            f"sqlite:///{workdir / 'mlflow.db'}",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the server answers
        assert f"http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert r.status == 200
    finally:
        proc.terminate()  # SIGTERM, as `kill` sends it
        assert proc.wait(30) == 0
    with pytest.raises(urllib.error.URLError):  # the mlflow server (its own process group) stopped with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


# ---- the real UI in a real browser ----------------------------------------------------------------


def printed_link(output: str) -> str:
    found = re.findall(r"sweep results in the MLflow UI: (\S+)", output)
    assert found, output[-2000:]
    return found[-1]


def nav_mode(page) -> str:
    """Which of MLflow 3's two workflows the side bar shows (GenAI has "Observability")."""
    return "genai" if page.get_by_text("Observability", exact=True).count() else "machine_learning"


@pytest.mark.slow
def test_a_sweep_reads_in_the_mlflow_ui_in_a_real_browser(cli, workdir, tmp_path):
    if ui.chromium() is None:
        pytest.skip("Chromium is not installed (Debian: chromium); CI installs it")
    pytest.importorskip("playwright")
    result = cli(
        "-m", "method=unstructured,structured", "scope=global,local", "ratio=0.3,0.6", "tracking.experiment=ui"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    link = printed_link(result.stdout + result.stderr)
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    experiment = mlflow.MlflowClient(store).get_experiment_by_name("ui").experiment_id
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with ui.serve(store) as base, ui.browser_page() as page:
        # Without the workflow in the address, MLflow 3 opens the GenAI side (what the check below
        # tells apart)...
        page.goto(link.replace(ui.base_url(store), base).split("?")[0])
        page.get_by_text("Accuracy vs sparsity").first.wait_for(timeout=60_000)
        assert nav_mode(page) == "genai"
        page.evaluate("localStorage.clear()")

        # ...the printed link (made for `make ui`'s address) opens the parent in "Model training" mode,
        # on its overview with the summary note.
        page.goto(link.replace(ui.base_url(store), base))
        page.get_by_text("Accuracy vs sparsity").first.wait_for(timeout=60_000)
        page.screenshot(path=shots / "parent.png")
        assert nav_mode(page) == "machine_learning"
        body = page.inner_text("body")
        assert re.search(r"unstructured\s+global\s+l2\s+0\.3000", body)  # a row of the note's table
        assert "accuracy_vs_sparsity/structured-local-l2" in body  # a curve among its metrics

        # The experiment's chart view: a section per curve axis, a chart per (method, scope) series.
        page.goto(ui.experiment_url(base, experiment, "chart"))
        page.get_by_text("accuracy_vs_sparsity", exact=False).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=shots / "charts.png", full_page=True)
        charts = page.inner_text("body")
        for series in (
            "unstructured-global-l2",
            "unstructured-local-l2",
            "structured-global-l2",
            "structured-local-l2",
            "dense",
        ):
            assert series in charts
        assert "accuracy_vs_macs" in charts

        # The runs table: the parent expands into children named as their points.
        page.goto(ui.experiment_url(base, experiment, "table"))
        expand = page.locator("button[data-component-id*='runnamecellrenderer']").first
        expand.wait_for(timeout=60_000)
        expand.click()
        page.get_by_text("structured-local-0.6", exact=True).wait_for(timeout=30_000)
        page.screenshot(path=shots / "children.png")
        names = page.inner_text("body")
        for method in ("unstructured", "structured"):
            for scope in ("global", "local"):
                for ratio in ("0.3", "0.6"):
                    assert f"{method}-{scope}-{ratio}" in names

    assert all((shots / f).stat().st_size > 10_000 for f in ("parent.png", "charts.png", "children.png"))
