"""The figures of a study (matplotlib), drawn from the frames of ``loading.py``: accuracy or
perplexity against sparsity, weights remaining, MACs, CPU latency and tokens per second. Each
``plot_*`` takes the runs of :func:`~prunelab.analysis.loading.load_runs` and returns its figure:
the notebooks display it; the report writes the figures its runs make (:func:`study_figures`)
with :func:`save_figure`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, not windows; notebooks still display the returned figures

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from ..names import Metric, Role
from .loading import aggregate_seeds, curve_name, deployment_points, speed_points


def _plot_curves(df: pd.DataFrame, x: str, xlabel: str, ax=None, y: str = Metric.TEST_ACCURACY):
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    points = aggregate_seeds(df, y)
    x_col = x if x in points.columns else None
    for key, curve in points.groupby(["method", "scope", "criterion", "variant"], dropna=False):
        if x_col is None or curve[x_col].isna().all():
            continue
        curve = curve.sort_values(x_col)
        mean, std = curve[y], curve[f"{y}_std"].fillna(0)
        (line,) = ax.plot(curve[x_col], mean, marker="o", label=curve_name(key).replace("-", " / "))
        if (curve[f"{y}_count"] > 1).any():
            ax.fill_between(curve[x_col], mean - std, mean + std, color=line.get_color(), alpha=0.2)
    dense = df[(df["role"] == Role.DENSE) & (df["status"] == "FINISHED")]
    if len(dense):
        ax.axhline(dense[y].mean(), color="black", linestyle="--", label="dense")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(y.replace("_", " "))
    ax.grid(alpha=0.3)
    _legend(ax)
    return ax.figure


def _legend(ax) -> None:
    """The legend in the axes, or below them where its labels are long (a study's variants)."""
    if max((len(t) for t in ax.get_legend_handles_labels()[1]), default=0) > 40:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(0, -0.15))
    else:
        ax.legend(fontsize="small")


def plot_accuracy_vs_sparsity(df: pd.DataFrame, ax=None):
    """Test accuracy vs achieved sparsity of the prunable weights, one line per
    method x scope x criterion, mean +- std band over seeds, dense accuracy as reference."""
    return _plot_curves(df, Metric.SPARSITY_PRUNABLE, "sparsity of prunable weights", ax)


def plot_perplexity_vs_sparsity(df: pd.DataFrame, ax=None):
    """Test perplexity (log scale) vs sparsity of the prunable weights, for language models: one
    line per method x scope x criterion (x variant), mean +- std band over seeds, dense as reference."""
    fig = _plot_curves(df, Metric.SPARSITY_PRUNABLE, "sparsity of prunable weights", ax, y=Metric.TEST_PERPLEXITY)
    ax = fig.axes[0]
    ax.set_yscale("log")
    # plain numbers (7, 10, 20), not 7x10^0: perplexities span a decade or two at most
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    return fig


def plot_accuracy_vs_remaining(df: pd.DataFrame, ax=None):
    """Test accuracy vs the fraction of prunable weights remaining, log scale from 100% down
    (the lottery-ticket figure of Frankle & Carbin 2019), mean +- std band over seeds."""
    fig = _plot_curves(df, "remaining", "prunable weights remaining (log scale)", ax)
    ax = fig.axes[0]
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:g}%"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return fig


def plot_accuracy_vs_macs(df: pd.DataFrame, ax=None):
    """Test accuracy vs remaining MACs (fraction of dense; nonzero MACs for unstructured)."""
    fig = _plot_curves(df, "macs_fraction", "MACs (fraction of dense)", ax)
    fig.axes[0].invert_xaxis()
    return fig


def plot_accuracy_vs_latency(df: pd.DataFrame, ax=None):
    """Test accuracy vs batch-64 CPU latency as a fraction of the dense fp32 model, one line per
    curve and deployed form (pruned in PyTorch fp32, in ONNX Runtime fp32, and int8)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    points = deployment_points(df)
    for key, curve in points.groupby(["method", "scope", "criterion", "variant", "form"], dropna=False):
        curve = curve.sort_values("ratio")
        ax.plot(curve["latency"], curve["accuracy"], marker="o", label=curve_name(key).replace("-", " / "))
        for _, row in curve.iterrows():
            ax.annotate(
                f"{row['ratio']:g}",
                (row["latency"], row["accuracy"]),
                fontsize="x-small",
                textcoords="offset points",
                xytext=(3, 3),
            )
    dense = df[(df["role"] == Role.DENSE) & (df["status"] == "FINISHED")]
    if len(dense):
        ax.plot(
            [1.0],
            [dense[Metric.TEST_ACCURACY].mean()],
            marker="*",
            markersize=12,
            color="black",
            linestyle="none",
            label="dense, PyTorch fp32",
        )
    ax.set_xscale("log")
    ax.set_xlabel("CPU latency, batch 64 (fraction of dense fp32; log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return ax.figure


def plot_perplexity_vs_tokens_per_s(df: pd.DataFrame, ax=None):
    """Test perplexity (log scale) vs tokens per second as a multiple of the dense model's, one
    line per curve, each point labelled with its ratio; the dense model at 1x."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    points = speed_points(df)
    for key, curve in points.groupby(["method", "scope", "criterion", "variant"], dropna=False):
        curve = curve.sort_values("tokens_per_s")
        label = curve_name(key).replace("-", " / ")
        (line,) = ax.plot(curve["tokens_per_s"], curve["perplexity"], marker="o", label=label)
        if (curve["seeds"] > 1).any():
            ax.errorbar(
                curve["tokens_per_s"], curve["perplexity"], yerr=curve["perplexity_std"].fillna(0), fmt="none",
                color=line.get_color(),
            )  # fmt: skip
        for _, row in curve.iterrows():
            ax.annotate(
                f"{row['ratio']:g}", (row["tokens_per_s"], row["perplexity"]), fontsize="x-small",
                textcoords="offset points", xytext=(3, 3),
            )  # fmt: skip
    dense = df[(df["role"] == Role.DENSE) & (df["status"] == "FINISHED")]
    if len(dense) and Metric.TEST_PERPLEXITY in dense.columns:
        ax.plot(
            [1.0], [dense[Metric.TEST_PERPLEXITY].mean()], marker="*", markersize=12, color="black",
            linestyle="none", label="dense",
        )  # fmt: skip
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    ax.set_xlabel("tokens per second (multiple of dense; cost ledger, one CPU thread)")
    ax.set_ylabel("test perplexity (log scale)")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    return ax.figure


def study_figures(df: pd.DataFrame) -> dict[str, Callable[[pd.DataFrame], Figure]]:
    """The figures the runs in ``df`` make, by name (the report's file, less ``.png``), in the order
    the report writes them: accuracy vs sparsity always, each other where the runs hold what it plots."""
    figures: dict[str, Callable[[pd.DataFrame], Figure]] = {"accuracy_vs_sparsity": plot_accuracy_vs_sparsity}
    if "macs_fraction" in df.columns and df["macs_fraction"].notna().any():
        figures["accuracy_vs_macs"] = plot_accuracy_vs_macs
    if "level" in df.columns and df["level"].notna().any():
        figures["accuracy_vs_remaining"] = plot_accuracy_vs_remaining
    if Metric.TEST_PERPLEXITY in df.columns and df[Metric.TEST_PERPLEXITY].notna().any():
        figures["perplexity_vs_sparsity"] = plot_perplexity_vs_sparsity
    if not speed_points(df).empty:
        figures["perplexity_vs_tokens_per_s"] = plot_perplexity_vs_tokens_per_s
    if not deployment_points(df).empty:
        figures["accuracy_vs_latency"] = plot_accuracy_vs_latency
    return figures


def save_figure(fig: Figure, path: Path) -> None:
    """``fig`` as a PNG at ``path`` (120 dpi, trimmed to its contents); then every open figure is
    closed, so that a report of many figures holds none of them in memory."""
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close("all")
