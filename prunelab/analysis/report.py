"""What a study reports, made from the runs (``loading.py``) and the figures (``plots.py``): the
curves as MLflow metric series (:func:`curve_series`, logged on a sweep's parent so the UI's chart
view draws them), the Markdown summary (:func:`summary_note`), and the folder of ``points.csv``,
``summary.md`` and figures that :func:`write_report` writes for the sweep callback and
``python -m prunelab.analysis``.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ..names import Artifact, Metric, Role
from .loading import POINT, aggregate_seeds, curve_name, deployment_points, speed_points
from .plots import save_figure, study_figures

# Curve axes logged as MLflow metric series: name -> (column, the dense model's position on it).
# Each axis plots a value: test accuracy, or test perplexity for language models.
CURVE_AXES = {
    "accuracy_vs_sparsity": (Metric.SPARSITY_PRUNABLE, 0.0, Metric.TEST_ACCURACY),
    "accuracy_vs_macs": ("macs_fraction", 1.0, Metric.TEST_ACCURACY),
    "perplexity_vs_sparsity": (Metric.SPARSITY_PRUNABLE, 0.0, Metric.TEST_PERPLEXITY),
}


def curve_series(df: pd.DataFrame) -> dict[str, list[tuple[int, float]]]:
    """The study's curves as MLflow metric series, so MLflow's own chart view draws them.

    One series per curve (method-scope-criterion, prefixed by model and dataset when the runs
    span several) and axis: ``accuracy_vs_sparsity/<curve>`` with step = sparsity of the prunable
    weights in per mille, ``accuracy_vs_macs/<curve>`` with step = MACs kept in per mille; value =
    mean test accuracy over seeds (``perplexity_vs_sparsity/<curve>``: mean test perplexity, for
    language models). Each curve starts at its dense model, and ``<axis>/dense`` draws the dense
    value flat across the axis. The "/" gives each axis its own section in the UI. Zero-shot tasks
    (``zeroshot.<task>.<figure>``) get ``<figure name>_vs_sparsity`` each; their dense value is the
    one the pruned runs measured (``dense.zeroshot...``), the dense run not measuring it."""
    dense = df[(df["role"] == Role.DENSE) & (df["status"] == "FINISHED")]
    dense = _with_dense_figures(df, dense)
    out: dict[str, list[tuple[int, float]]] = {}
    zeroshot = sorted(c for c in df.columns if c.startswith(f"{Metric.ZEROSHOT}."))
    axes = {**CURVE_AXES, **{f"{c}_vs_sparsity": (Metric.SPARSITY_PRUNABLE, 0.0, c) for c in zeroshot}}
    for axis, (x, dense_x, y) in axes.items():
        if y not in df.columns or df[y].isna().all():
            continue
        points = aggregate_seeds(df, y)
        if x not in points.columns:
            continue
        spans = [c for c in ("model", "dataset") if points[c].nunique(dropna=True) > 1]
        for key, curve in points.groupby([*spans, "method", "scope", "criterion", "variant"], dropna=False):
            curve = curve.dropna(subset=[x, y])
            if curve.empty:
                continue
            series = [(per_mille(v), float(a)) for v, a in zip(curve[x], curve[y])]
            own_dense = dense
            for col, value in zip(spans, key):
                own_dense = own_dense[own_dense[col] == value]
            if len(own_dense) and own_dense[y].notna().any():
                series.append((per_mille(dense_x), float(own_dense[y].mean())))
            # MLflow metric names allow letters, digits, _ - . space and /: "shrink=False" -> "shrink_False"
            out[f"{axis}/{_METRIC_UNSAFE.sub('_', curve_name(key))}"] = sorted(series)
        if len(dense) and dense[y].notna().any():
            value = float(dense[y].mean())
            out[f"{axis}/dense"] = [(0, value), (1000, value)]
    return out


_METRIC_UNSAFE = re.compile(r"[^\w\-. /]")


def _with_dense_figures(df: pd.DataFrame, dense: pd.DataFrame) -> pd.DataFrame:
    """The dense runs, with the figures only the pruned runs measured of their dense model
    (``dense.<figure>``, e.g. zero-shot accuracy) filled in, per dense model."""
    stage = Metric.at(Metric.DENSE, "")  # "dense.": what the pruned runs measured of their dense model
    prefix = f"{stage}{Metric.ZEROSHOT}."
    extra = [c for c in df.columns if c.startswith(prefix)]
    if not extra or dense.empty or "dense_key" not in df.columns:
        return dense
    pruned = df[df["role"] == Role.PRUNED]
    means = pruned.groupby("dense_key")[extra].mean()
    dense = dense.copy()
    for column in extra:
        figure = column[len(stage) :]
        measured = dense["dense_key"].map(means[column])
        dense[figure] = dense[figure].fillna(measured) if figure in dense.columns else measured
    return dense


def per_mille(fraction: float) -> int:
    """A point's step on a curve axis (MLflow steps are integers)."""
    return int(round(float(fraction) * 1000))


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    def fmt(v):
        if pd.isna(v):
            return "–"
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def summary_note(df: pd.DataFrame) -> str:
    """The study's table in Markdown: one row per point, seeds aggregated; model and dataset go to
    the title when the runs share them. A sweep's parent shows it on its overview page in the UI
    (its note) and carries it as ``summary.md``."""
    table = aggregate_seeds(df).rename(
        columns={f"{Metric.TEST_ACCURACY}_std": "± std", f"{Metric.TEST_ACCURACY}_count": "seeds"}
    )
    shared = [c for c in ("model", "dataset") if table[c].nunique(dropna=False) == 1]
    if (table["variant"].fillna("") == "").all():
        table = table.drop(columns="variant")
    title = " on ".join(str(table[c].iloc[0]) for c in shared) if len(table) else ""
    dense = df[(df["role"] == Role.DENSE) & (df["status"] == "FINISHED")][Metric.TEST_ACCURACY]
    reference = f"Dense model: test accuracy {dense.mean():.4f} ({len(dense)} run(s)).\n\n" if len(dense) else ""
    note = (
        f"## Accuracy vs sparsity{': ' + title if title else ''}\n\n{reference}"
        f"{markdown_table(table.drop(columns=shared))}\n\n"
        "Curves: metrics `accuracy_vs_sparsity/*` and `accuracy_vs_macs/*` (step = per mille); "
        "figures and `points.csv` in the artifacts.\n"
    )
    if Metric.TEST_PERPLEXITY in df.columns and df[Metric.TEST_PERPLEXITY].notna().any():
        ppl = aggregate_seeds(df, Metric.TEST_PERPLEXITY).rename(
            columns={f"{Metric.TEST_PERPLEXITY}_std": "± std", f"{Metric.TEST_PERPLEXITY}_count": "seeds"}
        )
        if (ppl["variant"].fillna("") == "").all():
            ppl = ppl.drop(columns="variant")
        dense_ppl = df[(df["role"] == Role.DENSE) & (df["status"] == "FINISHED")][Metric.TEST_PERPLEXITY]
        note += (
            f"\n## Perplexity vs sparsity\n\nDense model: test perplexity {dense_ppl.mean():.3f}.\n\n"
            f"{markdown_table(ppl.drop(columns=[c for c in shared if c in ppl.columns]), floatfmt='.3f')}\n"
        )
    speed = speed_points(df)
    if not speed.empty:
        speed = speed.drop(columns=[c for c in shared if c in speed.columns])
        if (speed["variant"].fillna("") == "").all():
            speed = speed.drop(columns="variant")
        speed = speed.rename(
            columns={
                "perplexity_pruned": "perplexity, pruned",
                "perplexity": "perplexity, fine-tuned",
                "perplexity_std": "± std",
                "tokens_per_s": "tokens/s (× dense)",
            }
        )
        note += (
            "\n## Perplexity vs tokens per second\n\nTest perplexity right after pruning and after fine-tuning; "
            "tokens per second of the model as handed over, a multiple of the dense model's (cost ledger: "
            "one CPU thread, batch 64 windows), seeds averaged.\n\n"
            f"{markdown_table(speed, floatfmt='.3f')}\n"
        )
    deployment = deployment_points(df)
    if not deployment.empty and deployment["form"].nunique() > 1:
        wide = deployment.pivot_table(
            index=[c for c in POINT if c not in shared], columns="form", values=["accuracy", "latency"], dropna=False
        )
        wide = wide.dropna(axis=1, how="all")
        wide.columns = [f"{'test accuracy' if v == 'accuracy' else 'latency b64'}, {form}" for v, form in wide.columns]
        wide = wide.reset_index()
        if (wide["variant"].fillna("") == "").all():
            wide = wide.drop(columns="variant")
        note += (
            "\n## Accuracy vs CPU latency\n\nBatch-64 latency as a fraction of the dense PyTorch fp32 "
            "model (cost ledger, timed in one alternation per run), seeds averaged.\n\n"
            f"{markdown_table(wide)}\n"
        )
    return note


def write_report(df: pd.DataFrame, out: Path) -> list[Path]:
    """points.csv, summary.md and the figures for the runs in ``df``, written into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / Artifact.POINTS, out / Artifact.SUMMARY]
    df.to_csv(written[0], index=False)
    written[1].write_text(summary_note(df))
    for name, plot in study_figures(df).items():
        written.append(out / f"{name}.png")
        save_figure(plot(df), written[-1])
    return written


@contextlib.contextmanager
def figures_dir() -> Iterator[Path]:
    """A temporary folder for report files that are then logged as artifacts."""
    with tempfile.TemporaryDirectory(prefix="prunelab-report-") as tmp:
        yield Path(tmp)
