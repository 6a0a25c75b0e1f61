"""Read pruning studies back from MLflow as tidy pandas DataFrames, aggregate seeds, find the
Pareto front, and plot. Used by the sweep callback, by the notebooks in ``analysis/`` and by
``python -m prunelab.analysis EXPERIMENT --out DIR``.

MLflow returns params as strings and only the last value of each metric: :func:`load_runs` casts
the params, and :func:`metric_history` fetches whole curves where they are needed.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, not windows; notebooks still display the returned figures

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from matplotlib.ticker import LogFormatter
from mlflow.tracking import MlflowClient

from ..names import Artifact, Metric, Role, Tag
from ..tracking import ui as mlflow_ui

# A curve: one line of a study's figure; a point: one position on it (seeds aggregated). "variant"
# holds every other setting that differs between the loaded runs (see :func:`variant_of`).
CURVE = ["model", "dataset", "method", "scope", "criterion", "variant"]
POINT = [*CURVE, "ratio"]
# Params that are part of a point's identity through other columns, or that never change a result.
_NOT_VARIANT = {
    "seed",
    "calibration_seed",
    "ratio",
    "model",
    "dataset",
    "method",
    "scope",
    "criterion",
    "device",
    "recipe",
    "model._target_",
    "dataset._target_",
    "method._target_",
    "criterion._target_",
    "scope._target_",
    "schedule._target_",
}  # the schedule shows by its option (schedule=gradual)
_CASTS = {"ratio": float, "seed": int, "train.epochs": int, "finetune.epochs": int}


def experiment_ids(names_or_ids: Iterable[str], client: MlflowClient | None = None) -> list[str]:
    client = client or MlflowClient()
    ids = []
    for item in names_or_ids:
        found = client.get_experiment_by_name(item)
        if found is None and str(item).isdigit():
            found = client.get_experiment(str(item))
        if found is None:
            raise ValueError(f"no MLflow experiment named {item!r} in {mlflow.get_tracking_uri()}")
        ids.append(found.experiment_id)
    return ids


def load_runs(experiments: Iterable[str], sweep_id: str | None = None, include_sweeps: bool = False) -> pd.DataFrame:
    """Every run of ``experiments`` (names or ids) in the current tracking store
    (``mlflow.set_tracking_uri``), one row each, params cast, prefixes dropped.

    Columns: run_id, experiment_id, status, role (dense / pruned / sweep), the group names, ratio, seed, every
    metric by name (test_accuracy, sparsity.prunable, ...) and error / overrides where set.
    ``sweep_id`` keeps the points of one sweep (including earlier runs it reused)."""
    ids = experiment_ids(experiments)
    where = f"tags.`prunelab.in_sweep.{sweep_id}` = 'true'" if sweep_id else ""
    raw = mlflow.search_runs(experiment_ids=ids, filter_string=where, output_format="pandas")
    if raw.empty:
        return pd.DataFrame(columns=["run_id", "status", "role", *POINT, "seed", Metric.TEST_ACCURACY])
    df = pd.DataFrame(
        {
            "run_id": raw["run_id"],
            "experiment_id": raw["experiment_id"],
            "status": raw["status"],
            "start_time": raw["start_time"],
        }
    )
    for prefix in ("params.", "metrics."):
        for col in [c for c in raw.columns if c.startswith(prefix)]:
            df[col[len(prefix) :]] = raw[col]
    for col in [c[len("params.") :] for c in raw.columns if c.startswith("params.")]:
        df[col] = df[col].mask(df[col] == "None")  # MLflow logs an unset option as "None": unset here
    for tag, name in (
        (Tag.ROLE, "role"),
        (Tag.group("criterion"), "criterion"),
        (Tag.ERROR, "error"),
        (Tag.OVERRIDES, "overrides"),
        (Tag.RUN_KEY, "run_key"),
        (Tag.POINT_KEY, "point_key"),
        (Tag.DENSE_KEY, "dense_key"),
    ):
        if f"tags.{tag}" in raw.columns:
            df[name] = raw[f"tags.{tag}"]
    for col, cast in _CASTS.items():
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
            if cast is int:
                df[col] = df[col].astype("Int64")
    if not include_sweeps and "role" in df.columns:
        df = df[df["role"] != Role.SWEEP]
    if "criterion" in df.columns:
        df.loc[df["role"] == Role.DENSE, "criterion"] = "none"
    df["variant"] = variant_of(df, [c[len("params.") :] for c in raw.columns if c.startswith("params.")])
    for col in POINT:
        if col not in df.columns:
            df[col] = pd.NA
    if {Metric.cost("pruned", "nonzero_macs"), Metric.cost("dense", "macs")} <= set(df.columns):
        df["macs_fraction"] = df[Metric.cost("pruned", "nonzero_macs")] / df[Metric.cost("dense", "macs")]
        if Metric.cost_ratio("macs") in df.columns:
            df["macs_fraction"] = df["macs_fraction"].fillna(df[Metric.cost_ratio("macs")])
    elif Metric.cost_ratio("macs") in df.columns:
        df["macs_fraction"] = df[Metric.cost_ratio("macs")]
    return expand_levels(df.reset_index(drop=True))


def expand_levels(df: pd.DataFrame, client: MlflowClient | None = None) -> pd.DataFrame:
    """A schedule's points inside one run as rows of their own: a lottery run (``level.*``
    metrics, step = level) becomes one row per level >= 1, with ``level``, ``ratio`` (the level's
    target), ``sparsity.prunable`` and the level's test / validation accuracy (the control's,
    ``reinit.*``, in a ``schedule.control=reinit`` run: that run's result). Level 0 is the dense
    model, the curve's left end already. Costs are measured for the final level only."""
    if Metric.LEVEL_TEST_ACCURACY not in df.columns or df[Metric.LEVEL_TEST_ACCURACY].isna().all():
        return df
    client = client or MlflowClient()
    runs, rows = df[df[Metric.LEVEL_TEST_ACCURACY].notna()], []
    for _, run in runs.iterrows():
        series = {
            key: {m.step: m.value for m in client.get_metric_history(run["run_id"], key)}
            for key in (
                Metric.SCHEDULE_TARGET,
                Metric.LEVEL_REMAINING,
                Metric.LEVEL_TEST_ACCURACY,
                Metric.LEVEL_VAL_ACCURACY,
                Metric.REINIT_TEST_ACCURACY,
                Metric.REINIT_VAL_ACCURACY,
            )
        }
        # the control's levels are the run's result in a schedule.control=reinit run
        test, val = (
            (Metric.REINIT_TEST_ACCURACY, Metric.REINIT_VAL_ACCURACY)
            if series[Metric.REINIT_TEST_ACCURACY]
            else (Metric.LEVEL_TEST_ACCURACY, Metric.LEVEL_VAL_ACCURACY)
        )
        for level in sorted(series[test]):
            if level == 0 or level not in series[Metric.SCHEDULE_TARGET]:
                continue
            rows.append(
                {
                    **run.to_dict(),
                    "level": level,
                    "ratio": series[Metric.SCHEDULE_TARGET][level],
                    Metric.SPARSITY_PRUNABLE: 1 - series[Metric.LEVEL_REMAINING][level],
                    Metric.TEST_ACCURACY: series[test][level],
                    Metric.VAL_ACCURACY: series[val].get(level, float("nan")),
                    "macs_fraction": float("nan"),
                }
            )
    return pd.concat([df.drop(index=runs.index), pd.DataFrame(rows)], ignore_index=True)


def variant_of(df: pd.DataFrame, params: list[str]) -> pd.Series:
    """Per run, the settings that differ between the pruned runs of ``df`` other than seed, ratio
    and the curve's own columns, and other than what never changes a result (``prunelab.experiment.keys``):
    e.g. ``finetune.shrink=False`` or ``model.width=64``; a plug-in group is shown by its
    option (``quantize=int8``, ``quantize=none``). "" where nothing else varies. Runs that differ in
    width, epochs or quantization are then never averaged as if they were seeds."""
    from ..experiment.keys import LOCATION, RESULT_PARTS

    pruned = df[df["role"] == Role.PRUNED] if "role" in df.columns else df
    plugins = {p[: -len("._target_")] for p in params if p.endswith("._target_")}

    # Compared within runs of one model, dataset, method, scope and criterion: a structured run's
    # own method options (ignore, normalize) are not a variant of the unstructured curve.
    named = [c for c in CURVE if c != "variant" and c in pruned.columns]

    def differs(p: str) -> bool:
        if (
            p in _NOT_VARIANT
            or p.split(".")[0] not in RESULT_PARTS
            or any(p == i or p.startswith(f"{i}.") for i in LOCATION)
        ):
            return False
        node = next((n for n in plugins if p.startswith(f"{n}.")), None)
        frame = pruned[named].assign(value=pruned[p])
        if node is not None and p != f"{node}._target_":
            frame = frame.dropna(subset=["value"])  # a plug-in's argument: compared where the plug-in is set
        frame["value"] = frame["value"].map(lambda v: "<unset>" if pd.isna(v) else str(v))
        return bool((frame.groupby(named, dropna=False)["value"].nunique() > 1).any())

    varying = sorted(p for p in params if p in df.columns and differs(p))

    def label(row) -> str:
        parts = []
        for p in varying:
            if p.endswith("._target_"):
                option = "none" if pd.isna(row[p]) else str(row[p]).rsplit(".", 1)[-1]
                parts.append(f"{p[: -len('._target_')]}={option}")
            elif not pd.isna(row[p]):
                parts.append(f"{p}={row[p]}")
        return " ".join(parts)

    return pd.Series(
        [label(row) for _, row in df.iterrows()] if varying else [""] * len(df), index=df.index, dtype=object
    )


def curve_name(key) -> str:
    """A curve's name from its key values, empty parts (no variant) left out."""
    return "-".join(str(k) for k in key if not pd.isna(k) and str(k) != "")


def aggregate_seeds(df: pd.DataFrame, value: str = Metric.TEST_ACCURACY) -> pd.DataFrame:
    """Mean, std and count of ``value`` (and mean sparsity) per point across seeds, FINISHED
    pruned runs only. Only seeds of one point are averaged: runs that share the point key
    (``prunelab.keys.point_key``: everything in the run key but the seed)."""
    pruned = df[(df["role"] == Role.PRUNED) & (df["status"] == "FINISHED")]
    if "variant" not in pruned.columns:  # a frame made by hand rather than by load_runs
        pruned = pruned.assign(variant="")
    # Runs logged before the point key existed fall back to the point's columns alone.
    pruned = pruned.assign(point_key=pruned["point_key"].fillna("") if "point_key" in pruned.columns else "")
    cols = {value: ["mean", "std", "count"], Metric.SPARSITY_PRUNABLE: ["mean"]}
    if "macs_fraction" in pruned.columns:
        cols["macs_fraction"] = ["mean"]
    out = pruned.groupby([*POINT, "point_key"], dropna=False).agg(cols)
    out.columns = [a if b == "mean" else f"{a}_{b}" for a, b in out.columns]
    out["remaining"] = 1 - out[Metric.SPARSITY_PRUNABLE]
    return out.reset_index().sort_values(POINT).drop(columns="point_key")


def pareto_front(df: pd.DataFrame, x: str = Metric.SPARSITY_PRUNABLE, y: str = Metric.TEST_ACCURACY) -> pd.DataFrame:
    """Points not beaten on both axes (higher ``x`` and higher ``y`` are better)."""
    ranked = df.dropna(subset=[x, y]).sort_values([x, y], ascending=[False, False])
    best, keep = float("-inf"), []
    for idx, value in ranked[y].items():
        if value > best:
            keep.append(idx)
            best = value
    return ranked.loc[keep].sort_values(x)


def metric_history(run_ids: Iterable[str], key: str, client: MlflowClient | None = None) -> pd.DataFrame:
    """Whole curves (e.g. ``finetune.val_accuracy`` per epoch): run_id, step, value."""
    client = client or MlflowClient()
    rows = [{"run_id": r, "step": m.step, "value": m.value} for r in run_ids for m in client.get_metric_history(r, key)]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


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


# The forms a pruned model is timed in (cost ledger): label -> (accuracy column, latency ratio column).
DEPLOYED_FORMS = {
    "PyTorch fp32": (Metric.TEST_ACCURACY, Metric.cost_ratio("latency_b64")),
    "ONNX Runtime fp32": (Metric.HANDOVER_ONNX_ACCURACY, Metric.cost_ratio("latency_b64", "onnx")),
    "ONNX Runtime int8": (Metric.INT8_ACCURACY, Metric.cost_ratio("latency_b64", "int8")),
}


def deployment_points(df: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy vs batch-64 CPU latency (fraction of the dense PyTorch fp32 model) of every
    point in every form it was timed in, seeds averaged: curve columns, ratio, form, accuracy,
    latency. A ``quantize=int8`` run gives three forms, a ``quantize=none`` run one."""
    pruned = df[(df["role"] == Role.PRUNED) & (df["status"] == "FINISHED")]
    if "variant" not in pruned.columns:
        pruned = pruned.assign(variant="")
    # quantize is a form here, not a separate curve: none and int8 runs of a point share fp32 forms.
    pruned = pruned.assign(variant=pruned["variant"].str.replace(r"\s*quantize=\w+", "", regex=True).str.strip())
    frames = []
    for form, (acc, lat) in DEPLOYED_FORMS.items():
        if {acc, lat} <= set(pruned.columns):
            rows = pruned.dropna(subset=[acc, lat])
            frames.append(
                rows.groupby(POINT, dropna=False)
                .agg(accuracy=(acc, "mean"), latency=(lat, "mean"))
                .reset_index()
                .assign(form=form)
            )
    return pd.concat(frames).sort_values([*POINT, "form"]) if frames else pd.DataFrame()


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


TOKENS_RATIO = Metric.cost_ratio("tokens_per_s")


def speed_points(df: pd.DataFrame) -> pd.DataFrame:
    """A language model's points: test perplexity right after pruning and after fine-tuning, and
    tokens per second as a multiple of the dense model's (cost ledger), seeds averaged. Empty for
    other studies."""
    pruned = df[(df["role"] == Role.PRUNED) & (df["status"] == "FINISHED")]
    before = Metric.at(Metric.PRUNED, Metric.TEST_PERPLEXITY)
    if not {TOKENS_RATIO, Metric.TEST_PERPLEXITY} <= set(pruned.columns) or pruned[TOKENS_RATIO].isna().all():
        return pd.DataFrame()
    if "variant" not in pruned.columns:
        pruned = pruned.assign(variant="")
    if before not in pruned.columns:
        pruned = pruned.assign(**{before: float("nan")})
    return (
        pruned.groupby(POINT, dropna=False)
        .agg(
            perplexity_pruned=(before, "mean"),
            perplexity=(Metric.TEST_PERPLEXITY, "mean"),
            perplexity_std=(Metric.TEST_PERPLEXITY, "std"),
            seeds=(Metric.TEST_PERPLEXITY, "count"),
            tokens_per_s=(TOKENS_RATIO, "mean"),
        )
        .reset_index()
    )


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
    prefix = f"{Metric.DENSE}.{Metric.ZEROSHOT}."
    extra = [c for c in df.columns if c.startswith(prefix)]
    if not extra or dense.empty or "dense_key" not in df.columns:
        return dense
    pruned = df[df["role"] == Role.PRUNED]
    means = pruned.groupby("dense_key")[extra].mean()
    dense = dense.copy()
    for column in extra:
        figure = column[len(Metric.DENSE) + 1 :]
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


def ui_links(df: pd.DataFrame, ui: str | None = None) -> pd.Series:
    """The MLflow UI address of each run in ``df`` (from :func:`load_runs`), opened on the runs
    ("Model training"), for the current tracking store; ``ui`` overrides where the UI is served."""
    base = mlflow_ui.base_url(mlflow.get_tracking_uri(), ui)
    return pd.Series(
        [mlflow_ui.run_url(base, e, r) for e, r in zip(df["experiment_id"], df["run_id"])],
        index=df.index,
        name="mlflow_ui",
        dtype=object,
    )


def summary_note(df: pd.DataFrame) -> str:
    """The study's table in Markdown: one row per point, seeds aggregated; model and dataset go to
    the title when the runs share them. A sweep's parent shows it on its overview page in the UI
    (its note) and carries it as ``summary.md``."""
    table = aggregate_seeds(df).rename(columns={"test_accuracy_std": "± std", "test_accuracy_count": "seeds"})
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
            columns={"test_perplexity_std": "± std", "test_perplexity_count": "seeds"}
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
    written = [out / Artifact.POINTS, out / Artifact.SUMMARY, out / "accuracy_vs_sparsity.png"]
    df.to_csv(written[0], index=False)
    written[1].write_text(summary_note(df))
    plot_accuracy_vs_sparsity(df).savefig(written[2], dpi=120, bbox_inches="tight")
    plt.close("all")
    if "macs_fraction" in df.columns and df["macs_fraction"].notna().any():
        written.append(out / "accuracy_vs_macs.png")
        plot_accuracy_vs_macs(df).savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close("all")
    if "level" in df.columns and df["level"].notna().any():
        written.append(out / "accuracy_vs_remaining.png")
        plot_accuracy_vs_remaining(df).savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close("all")
    if Metric.TEST_PERPLEXITY in df.columns and df[Metric.TEST_PERPLEXITY].notna().any():
        written.append(out / "perplexity_vs_sparsity.png")
        plot_perplexity_vs_sparsity(df).savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close("all")
    if not speed_points(df).empty:
        written.append(out / "perplexity_vs_tokens_per_s.png")
        plot_perplexity_vs_tokens_per_s(df).savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close("all")
    if not deployment_points(df).empty:
        written.append(out / "accuracy_vs_latency.png")
        plot_accuracy_vs_latency(df).savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close("all")
    return written


@contextlib.contextmanager
def figures_dir() -> Iterator[Path]:
    """A temporary folder for report files that are then logged as artifacts."""
    with tempfile.TemporaryDirectory(prefix="prunelab-report-") as tmp:
        yield Path(tmp)
