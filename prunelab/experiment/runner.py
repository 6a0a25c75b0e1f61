"""One experiment, top to bottom. :func:`run` reads as its stages, each a function of the module
that owns its concern, taking and returning values:

1. settings       the config checked and resolved into values        experiment/settings.py
2. identity       the run's keys; a dead earlier run of its key      experiment/keys.py,
                  ended KILLED; a finished one reused                tracking/store.py
3. data, model    the splits and the network                         data/, models/
4. pruner         method x criterion x scope, tried on an untrained  pruning/pruner.py
                  copy first (a bad combination fails before training)
5. dense          trained, or loaded from the cache                  experiment/dense.py
6. prune schedule prune and fine-tune as the schedule says           experiment/session.py
7. evaluate       accuracy (and perplexity), what was removed        experiment/train.py, measure.py
8. hand-over      the files that ship, checked                       deploy/handover.py
9. ledger         what the pruned model costs next to the dense one  deploy/ledger.py
10. log           metrics and artifacts of the run                   tracking/store.py

``run(cfg)`` is pure of Hydra: the command line (``cli.py``), sweeps and tests call it with a
composed config.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import shutil
from typing import Any

import mlflow
import torch
from omegaconf import DictConfig

from ..deploy.handover import hand_over
from ..deploy.ledger import cost_ledger
from ..deploy.onnx import OnnxModel
from ..models.build import build
from ..names import Artifact, Metric, Tag
from ..pruning.data import PruneData
from ..pruning.pruner import Pruner
from ..tracking import store
from ..tracking.ui import run_link
from .dense import DenseRun, dense_model
from .keys import run_tags
from .measure import layer_table, sparsity_summary
from .report import report
from .session import RunSession, prune_schedule
from .settings import Settings
from .train import evaluate, perplexity, scores, seed_everything

log = logging.getLogger(__name__)


def run(cfg: DictConfig, parent_run_id: str | None = None, sweep_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one experiment and return its metrics (the sweeper can optimise any of them).

    In a sweep, ``parent_run_id`` nests the run under the sweep's parent and ``sweep_tags`` mark
    it (and a reused earlier run of the same config, and its dense model) as one of the sweep's
    points."""
    s = Settings.from_config(cfg)  # 1. settings
    sweep_tags = dict(sweep_tags or {})
    experiment_id = store.connect(s.tracking.uri, s.experiment)  # 2. identity
    tags = {**run_tags(s.key, s.names), **sweep_tags}
    for key in (s.key.run, s.key.dense):  # runs of this key left RUNNING by a process that died
        store.end_dead_runs(experiment_id, {Tag.RUN_KEY: key})
    if not s.force:
        done = store.reuse_finished(experiment_id, s.key.run, sweep_tags)
        if done is not None:
            log.info(
                "skipped: run %s already holds this exact config (key %s); force=true reruns it\n  MLflow UI: %s",
                done.info.run_id,
                s.key.run,
                run_link(s.tracking.uri, s.tracking.ui, experiment_id, done.info.run_id),
            )
            return {**done.data.metrics, "run_id": done.info.run_id, "skipped": True}

    try:
        seed_everything(s.seed)
        data = s.dataset(seed=s.seed).to(s.device)  # 3. data, model
        model = build(s.model, data.in_shape, data.num_classes).to(s.device)
        pruner = Pruner(
            s.method,
            s.criterion,
            s.scope,
            seed=s.calibration_seed,  # 4. pruner
            data=PruneData(data.train, data.val, s.train.batch_size, s.calibration_seed),
            example_inputs=data.train.x[:1],
            budget_macs=s.budget_macs,
        )
        s.schedule.check(pruner.check(model, [s.schedule.first(s.ratio), s.ratio]).mask)
        init = copy.deepcopy(model.state_dict())  # before dense training: a lottery rewinds to it
        dense_run = DenseRun(experiment_id, s.key, s.dense_params, parent_run_id, sweep_tags)  # 5. dense
        dense = dense_model(model, s.key.dense, s.cache, lambda m: dense_run.train(m, data, s.train, s.seed))
        dense_run.log_cached(dense, model, data, s.cache)
    except (Exception, KeyboardInterrupt) as e:
        # The point broke (or was stopped) before its own run opened: record it, so a sweep
        # shows every point that did not finish.
        store.record_failure(experiment_id, s.run_name, tags, parent_run_id, e)
        raise

    checkpoints = s.cache / "schedules" / s.key.run
    with store.run(experiment_id, s.run_name, {**tags, **store.environment_tags()}, parent_run_id) as active:
        # Under a MACs budget the ratio is searched (metric budget.ratio; it differs by seed, so a
        # point is the budget, not a ratio).
        mlflow.log_params({**s.params, **({"ratio": "budget"} if s.budget_macs is not None else {})})
        metrics: dict[str, Any] = {
            Metric.at(Metric.DENSE, Metric.TEST_ACCURACY): dense.test_accuracy,
            Metric.at(Metric.DENSE, Metric.VAL_ACCURACY): dense.val_accuracy,
            **perplexity(model, data.test, Metric.at(Metric.DENSE, "test_")),
        }
        store.log_metrics(metrics)
        dense_copy = copy.deepcopy(model)  # the cost ledger's baseline (small at these sizes)

        session = RunSession(
            model, s.ratio, pruner, data, s.train, s.finetune, s.shrink, s.seed, init, s.model, checkpoints
        )
        outcome = prune_schedule(s.schedule, session)  # 6. prune schedule
        metrics.update(outcome.figures)

        val, test = evaluate(outcome.shipped, data.val), evaluate(outcome.shipped, data.test)  # 7. evaluate
        table = layer_table(model, outcome.mask)
        final = scores(outcome.shipped, data.test, "test_", result=test)
        metrics.update(
            {
                Metric.at(Metric.FINETUNED, Metric.TEST_ACCURACY): test["accuracy"],
                Metric.at(Metric.FINETUNED, Metric.VAL_ACCURACY): val["accuracy"],
                Metric.VAL_ACCURACY: val["accuracy"],
                Metric.TEST_LOSS: test["loss"],
                **final,
                **{Metric.at(Metric.FINETUNED, k): v for k, v in final.items() if k == Metric.TEST_PERPLEXITY},
                **sparsity_summary(table, outcome.mask),
            }
        )
        store.log_metrics(metrics)

        handed = None
        if s.handover:  # 8. hand-over
            handed = hand_over(
                outcome.shipped,
                data.mean,
                data.std,
                data.train.x[:1],
                outcome.mask,
                outcome.structured,
                (data.test_raw if data.test_raw is not None else data.test.x.cpu(), data.test.y.cpu()),
                s.quantize,
                data.raw(data.val.x) if s.quantize is not None else None,
                s.codebook,
            )
            metrics.update(handed.accuracies)
        runtimes = {}  # the ONNX forms, timed beside PyTorch when the run quantizes (fp32 and int8)
        if handed is not None and handed.int8 is not None:
            runtimes = {
                role: (OnnxModel(b), len(b))
                for role, b in (("onnx", handed.onnx), ("int8", handed.int8))
                if b is not None
            }
        metrics.update(
            cost_ledger(
                dense_copy,
                model,
                data.train.x[:1],
                outcome.mask,  # 9. ledger
                outcome.shipped if outcome.structured else None,
                s.measure_latency,
                file_bytes=handed.compact_bytes if handed is not None else None,
                runtimes=runtimes,
            )
        )
        store.log_metrics(metrics)  # 10. log
        store.log_artifact_files(_artifacts(s, model, outcome, table, active.info.run_id, handed))
        metrics["run_id"] = active.info.run_id
    shutil.rmtree(checkpoints, ignore_errors=True)  # the FINISHED run holds it all now
    report(s.names, s.ratio, s.budget_macs, metrics, dense.from_cache, s.tracking.uri, s.tracking.ui, experiment_id)
    return metrics


def _artifacts(s: Settings, model: torch.nn.Module, outcome, table, run_id: str, handed) -> dict[str, bytes | str]:
    """The run's files: its config, per-layer table, plan, masked weights, what the scope reported,
    and the hand-over files."""
    weights = io.BytesIO()
    torch.save(
        {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "mask": outcome.mask.to_state()}, weights
    )
    pruned = outcome.pruned
    plan = {
        **pruned.plan,
        "ratio": pruned.ratio,
        "computed_on": {**s.names, "seed": s.seed, "ratio": pruned.ratio, "run_key": s.key.run, "run_id": run_id},
    }
    return {
        Artifact.CONFIG: s.config_yaml,
        Artifact.LAYERS: table.to_csv(index=False),
        Artifact.PLAN: json.dumps(plan, indent=1),
        Artifact.MASKED_WEIGHTS: weights.getvalue(),
        **{name: made() if callable(made) else made for name, made in pruned.report.items()},
        **(handed.files if handed is not None else {}),
    }
