"""The runs of a study, read from the MLflow store into tidy pandas DataFrames, and the points
derived from them: the one place that knows how a run's tags, params and metrics become columns,
so that the plots (``plots.py``) and the report (``report.py``) work on frames alone.

MLflow returns params as strings and only the last value of each metric: :func:`load_runs` casts
the params, and :func:`metric_history` fetches whole curves where they are needed. A point is a
curve's position with its seeds aggregated (:func:`aggregate_seeds`, :func:`deployment_points`,
:func:`speed_points`).
"""

from __future__ import annotations

from collections.abc import Iterable

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from ..names import Metric, Role, Tag
from ..plugins import locate
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
    where = f"tags.`{Tag.in_sweep(sweep_id)}` = 'true'" if sweep_id else ""
    raw = mlflow.search_runs(experiment_ids=ids, filter_string=where, output_format="pandas")
    if raw.empty:
        return pd.DataFrame(columns=["run_id", "status", "role", *POINT, "seed", Metric.TEST_ACCURACY])
    params = [c[len("params.") :] for c in raw.columns if c.startswith("params.")]
    df = _run_columns(raw, params)
    _tag_columns(df, raw)
    _cast(df)
    if not include_sweeps and "role" in df.columns:
        df = df[df["role"] != Role.SWEEP]
    if "criterion" in df.columns:
        df.loc[df["role"] == Role.DENSE, "criterion"] = "none"
    _untaken_left_out(df)
    df["variant"] = variant_of(df, params)
    for col in POINT:
        if col not in df.columns:
            df[col] = pd.NA
    _macs_fraction(df)
    return expand_levels(df.reset_index(drop=True))


def _run_columns(raw: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """The run's own columns, then its params and metrics under their names (MLflow's prefixes
    dropped): every column a study's frame starts from."""
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
    for col in params:
        df[col] = df[col].mask(df[col] == "None")  # MLflow logs an unset option as "None": unset here
    return df


def _tag_columns(df: pd.DataFrame, raw: pd.DataFrame) -> None:
    """The tags the analysis reads (role, criterion, error, overrides, keys) as columns, where any
    run has them."""
    for tag, name in (
        (Tag.ROLE, "role"),
        (Tag.group(Tag.CRITERION), "criterion"),
        (Tag.ERROR, "error"),
        (Tag.OVERRIDES, "overrides"),
        (Tag.RUN_KEY, "run_key"),
        (Tag.POINT_KEY, "point_key"),
        (Tag.DENSE_KEY, "dense_key"),
    ):
        if f"tags.{tag}" in raw.columns:
            df[name] = raw[f"tags.{tag}"]


def _cast(df: pd.DataFrame) -> None:
    """The params that are numbers (:data:`_CASTS`), as numbers: MLflow returns every param as a
    string. Integers nullable, so a run without the param stays without it."""
    for col, cast in _CASTS.items():
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
            if cast is int:
                df[col] = df[col].astype("Int64")


def _macs_fraction(df: pd.DataFrame) -> None:
    """``macs_fraction``, the MACs kept as a fraction of the dense model's (cost ledger): nonzero
    over dense MACs, else the MACs ratio (a run that logged only that)."""
    kept, dense = Metric.cost(Metric.PRUNED, Metric.NONZERO_MACS), Metric.cost(Metric.DENSE, Metric.MACS)
    macs_ratio = Metric.cost_ratio(Metric.MACS)
    if {kept, dense} <= set(df.columns):
        df["macs_fraction"] = df[kept] / df[dense]
        if macs_ratio in df.columns:
            df["macs_fraction"] = df["macs_fraction"].fillna(df[macs_ratio])
    elif macs_ratio in df.columns:
        df["macs_fraction"] = df[macs_ratio]


def _untaken_left_out(df: pd.DataFrame) -> None:
    """A criterion or scope the run's method does not take (``Method.takes``: SparseGPT's criterion,
    depth pruning's scope; a criterion outside ``Method.criteria``: Wanda's but RIA) is the default
    it ignored: left out of the curve's name ("")."""
    if "method._target_" not in df.columns:
        return
    for target in df["method._target_"].dropna().unique():
        try:
            takes = getattr(locate(str(target)), "takes", None)
        except ImportError:  # a plug-in of another installation: its runs keep their names
            continue
        for group in ("criterion", "scope"):
            if takes is not None and group not in takes and group in df.columns:
                df.loc[df["method._target_"] == target, group] = ""
        criteria = getattr(locate(str(target)), "criteria", None)  # (only these: another is the default ignored)
        if criteria is not None and "criterion" in df.columns:
            ignored = (df["method._target_"] == target) & ~df["criterion"].isin(criteria)
            df.loc[ignored, "criterion"] = ""


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
        if node is not None and p != f"{node}._target_":  # a plug-in's argument: compared among the
            # runs of plug-ins that take it (unset, None, counts there: Wanda with and without refit)
            target = pruned.get(f"{node}._target_")
            if target is None:
                frame = frame.dropna(subset=["value"])
            else:
                frame = frame[target.isin(set(target[pruned[p].notna()]))]
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


def metric_history(run_ids: Iterable[str], key: str, client: MlflowClient | None = None) -> pd.DataFrame:
    """Whole curves (e.g. ``finetune.val_accuracy`` per epoch): run_id, step, value."""
    client = client or MlflowClient()
    rows = [{"run_id": r, "step": m.step, "value": m.value} for r in run_ids for m in client.get_metric_history(r, key)]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


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


# The points of a study: a curve's positions, seeds aggregated.


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


# The forms a pruned model is timed in (cost ledger): label -> (accuracy column, latency ratio column).
DEPLOYED_FORMS = {
    "PyTorch fp32": (Metric.TEST_ACCURACY, Metric.cost_ratio(Metric.latency(64))),
    "ONNX Runtime fp32": (Metric.HANDOVER_ONNX_ACCURACY, Metric.cost_ratio(Metric.latency(64), Metric.ONNX)),
    "ONNX Runtime int8": (Metric.INT8_ACCURACY, Metric.cost_ratio(Metric.latency(64), Metric.INT8)),
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


TOKENS_RATIO = Metric.cost_ratio(Metric.TOKENS_PER_S)


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
