"""Read pruning studies back from MLflow as tidy pandas DataFrames, aggregate seeds, find the
Pareto front, and plot. Used by the sweep callback, by the notebooks in ``analysis/`` and by
``python -m prunelab.analysis EXPERIMENT --out DIR``.

Data flows one way, through three modules: ``loading.py`` (runs from the store into frames, and
the points derived from them) feeds ``plots.py`` (the figures), and both feed ``report.py`` (the
curves as MLflow series, the Markdown summary, the report's folder). Their public names are
re-exported here: ``from prunelab.analysis import load_runs``.
"""

from __future__ import annotations

from .loading import (
    CURVE,
    DEPLOYED_FORMS,
    POINT,
    TOKENS_RATIO,
    aggregate_seeds,
    curve_name,
    deployment_points,
    expand_levels,
    experiment_ids,
    load_runs,
    metric_history,
    pareto_front,
    speed_points,
    ui_links,
    variant_of,
)
from .plots import (
    plot_accuracy_vs_latency,
    plot_accuracy_vs_macs,
    plot_accuracy_vs_remaining,
    plot_accuracy_vs_sparsity,
    plot_perplexity_vs_sparsity,
    plot_perplexity_vs_tokens_per_s,
)
from .report import CURVE_AXES, curve_series, figures_dir, markdown_table, per_mille, summary_note, write_report

__all__ = [
    "CURVE",
    "CURVE_AXES",
    "DEPLOYED_FORMS",
    "POINT",
    "TOKENS_RATIO",
    "aggregate_seeds",
    "curve_name",
    "curve_series",
    "deployment_points",
    "expand_levels",
    "experiment_ids",
    "figures_dir",
    "load_runs",
    "markdown_table",
    "metric_history",
    "pareto_front",
    "per_mille",
    "plot_accuracy_vs_latency",
    "plot_accuracy_vs_macs",
    "plot_accuracy_vs_remaining",
    "plot_accuracy_vs_sparsity",
    "plot_perplexity_vs_sparsity",
    "plot_perplexity_vs_tokens_per_s",
    "speed_points",
    "summary_note",
    "ui_links",
    "variant_of",
    "write_report",
]
