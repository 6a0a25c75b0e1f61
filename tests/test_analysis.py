"""Reading studies back: a point is everything that decides a result but the seed, so runs that
differ in anything else (width, fine-tuning, quantization) are never averaged as seeds."""

from __future__ import annotations

import mlflow

from prunelab import analysis
from prunelab.names import Metric, Tag


def log_point(seed: int, accuracy: float, **params) -> None:
    with mlflow.start_run():
        mlflow.set_tags({Tag.ROLE: "pruned", Tag.group(Tag.CRITERION): "l2"})
        mlflow.log_params(
            {
                "model": "vgg_small",
                "dataset": "fashion_mnist",
                "method": "structured",
                "scope": "global",
                "ratio": 0.5,
                "seed": seed,
                "model._target_": "prunelab.models.vgg_small",
                "tracking.uri": f"sqlite:///{seed}.db",
                **params,
            }
        )
        mlflow.log_metrics({Metric.TEST_ACCURACY: accuracy, Metric.SPARSITY_PRUNABLE: 0.75})


def test_runs_differing_in_width_shrink_or_quantization_are_separate_points(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("study")
    for seed in (0, 1):
        log_point(seed, 0.90 + seed / 100, **{"model.width": 32, "finetune.shrink": True})
        log_point(seed, 0.80 + seed / 100, **{"model.width": 64, "finetune.shrink": True})
        log_point(
            seed,
            0.70 + seed / 100,
            **{
                "model.width": 32,
                "finetune.shrink": False,
                "quantize._target_": "prunelab.deploy.int8",
                "quantize.per_channel": True,
            },
        )
    points = analysis.aggregate_seeds(analysis.load_runs(["study"]))
    got = {row.variant: (round(row.test_accuracy, 4), row.test_accuracy_count) for row in points.itertuples()}
    assert got == {
        "finetune.shrink=True model.width=32 quantize=none": (0.905, 2),
        "finetune.shrink=True model.width=64 quantize=none": (0.805, 2),
        "finetune.shrink=False model.width=32 quantize=int8": (0.705, 2),
    }  # tracking.uri differs too, but never changes a result: not part of the point


def test_a_study_where_only_the_seed_varies_has_no_variant(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("plain")
    for seed in (0, 1, 2):
        log_point(seed, 0.9, **{"model.width": 32})
    df = analysis.load_runs(["plain"])
    assert set(df["variant"]) == {""}
    assert list(analysis.aggregate_seeds(df)["test_accuracy_count"]) == [3]
    assert "variant" not in analysis.summary_note(df)


def test_a_method_sweep_is_not_split_by_each_methods_own_options(workdir):
    """Structured runs carry method.ignore / method.normalize that unstructured runs do not: that
    is the method column's difference, not a variant."""
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("methods")
    for seed in (0, 1):
        log_point(seed, 0.9, **{"method": "unstructured", "method.ignore": "[]"})
        log_point(seed, 0.8, **{"method": "structured", "method.ignore": "['classifier']", "method.normalize": "mean"})
    df = analysis.load_runs(["methods"])
    assert set(df["variant"]) == {""}
    assert sorted(analysis.aggregate_seeds(df)["test_accuracy_count"]) == [2, 2]


def test_a_method_option_left_unset_in_some_runs_of_that_method_names_the_others(workdir):
    """Wanda with and without DSnoT's refit (method.refit logged "None" or "dsnot") are two curves;
    N:M's runs, whose method has no such option, are not split by it."""
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("refit")
    wanda = {"method": "wanda", "method._target_": "prunelab.pruning.Wanda"}
    for seed in (0, 1):
        log_point(seed, 0.9, **wanda, **{"method.refit": "None"})
        log_point(seed, 0.8, **wanda, **{"method.refit": "dsnot"})
        log_point(seed, 0.7, **{"method": "nm", "method._target_": "prunelab.pruning.NM"})
    points = analysis.aggregate_seeds(analysis.load_runs(["refit"]))
    got = {
        (row.method, row.variant): (round(row.test_accuracy, 4), row.test_accuracy_count) for row in points.itertuples()
    }
    assert got == {("wanda", ""): (0.9, 2), ("wanda", "method.refit=dsnot"): (0.8, 2), ("nm", ""): (0.7, 2)}


def test_an_unset_method_option_is_no_part_of_the_variant_but_a_set_one_is(workdir):
    """SparseGPT runs, unstructured (method.n logged as "None") and 2:4: two curves, the
    unstructured one named by its method alone."""
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("nm")
    for seed in (0, 1):
        log_point(seed, 0.9, **{"method": "sparsegpt", "method.n": "None", "method.m": "None"})
        log_point(seed, 0.8, **{"method": "sparsegpt", "method.n": 2, "method.m": 4})
    runs = analysis.load_runs(["nm"])
    assert runs["method.n"].isna().sum() == 2
    assert set(runs["method.n"].dropna()) == {"2"}
    points = analysis.aggregate_seeds(runs)
    got = {row.variant: (round(row.test_accuracy, 4), row.test_accuracy_count) for row in points.itertuples()}
    assert got == {"": (0.9, 2), "method.m=4 method.n=2": (0.8, 2)}
