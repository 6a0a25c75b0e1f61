"""One experiment, top to bottom. :func:`run` reads as its stages, each a function of the module
that owns its concern, taking and returning values:

1. settings        the config checked and resolved into values         experiment/settings.py
2. identity        the run's keys; runs of its key left RUNNING by a    experiment/keys.py,
                   dead process ended KILLED; a finished run reused     tracking/store.py
3. data, model     the splits and the network                          data/, models/
4. pruner          method x criterion x scope, tried on an untrained    pruning/pruner.py
                   copy first (a bad combination fails before training)
5. dense           trained, or loaded from the cache                   experiment/dense.py
6. prune schedule  prune and fine-tune as the schedule says (taught    experiment/session.py,
                   by the dense model with finetune.distill)           distill.py
7. evaluate        accuracy (and perplexity, zero-shot tasks), what    experiment/train.py, measure.py,
                   was removed                                         zeroshot.py
8. hand-over       the files that ship, checked (in a sweep, while     deploy/handover.py, hf.py,
                   the next point trains); a transformers model also   experiment/deferred.py
                   as a Hugging Face folder
9. ledger          what the pruned model costs next to the dense one   deploy/ledger.py
10. log            the run's metrics and files                         tracking/store.py

``run(cfg)`` is pure of Hydra: the command line (``cli.py``), sweeps and tests call it with a
composed config. Started by torchrun, every rank runs the stages up to the prune schedule (rank 0
deciding, the others following: :func:`_follow`); rank 0 alone records, evaluates and hands over.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import shutil
from typing import Any

import torch
from omegaconf import DictConfig

from ..data.splits import Splits, in_memory
from ..deploy.handover import HandedOver, HandoverJob, hand_over
from ..deploy.ledger import cost_ledger, state_bytes
from ..deploy.onnx import OnnxModel
from ..models.build import build
from ..models.checkpoint import load_checkpoint
from ..names import Artifact, Metric, Tag
from ..pruning.data import PruneData
from ..pruning.pruner import Pruner
from ..tracking import store
from ..tracking.ui import run_link
from . import deferred, distributed
from .dense import DenseResult, DenseRun, dense_model
from .keys import run_tags
from .measure import layer_table, sparsity_summary
from .report import handover_line, report
from .session import Outcome, RunSession, prune_schedule
from .settings import Settings
from .train import evaluate, perplexity, scores, seed_everything, train

log = logging.getLogger(__name__)


def run(
    cfg: DictConfig,
    parent_run_id: str | None = None,
    sweep_tags: dict[str, str] | None = None,
    defer_handover: bool = False,
) -> dict[str, Any]:
    """Run one experiment and return its metrics (the sweeper can optimise any of them).

    In a sweep, ``parent_run_id`` nests the run under the sweep's parent and ``sweep_tags`` mark
    it (and a reused earlier run of the same config, and its dense model) as one of the sweep's
    points. ``defer_handover``: make the hand-over files while the caller goes on (the next point
    trains); the run stays RUNNING until :func:`prunelab.experiment.deferred.collect` logs them
    (its returned metrics lack their accuracies). A run that quantizes hands over at once: its
    ledger times the quantized model."""
    s = Settings.from_config(cfg)  # 1. settings
    ranks = s.ranks
    if ranks is not None:
        distributed.start(ranks, s.device)
        if not ranks.main:
            return _follow(s, ranks)
    sweep_tags = dict(sweep_tags or {})
    experiment_id = store.connect(s.tracking.uri, s.experiment)  # 2. identity
    done = _identity(s, experiment_id, sweep_tags)
    if ranks is not None:
        ranks.broadcast(done is not None)
    if done is not None:
        return done
    defer_handover = defer_handover and s.handover and s.quantize is None and ranks is None
    if defer_handover:
        deferred.start()  # the worker imports while this point trains

    tags = {**run_tags(s.key, s.names), **sweep_tags}
    try:
        data, model = _data_and_model(s)  # 3. data, model
        if s.zeroshot is not None:
            s.zeroshot.check(model)
        pruner = _pruner(s, data, model)  # 4. pruner
        init = copy.deepcopy(model.state_dict())  # before dense training: a lottery rewinds to it
        dense_run = DenseRun(experiment_id, s.key, s.dense_params, parent_run_id, sweep_tags)  # 5. dense
        recipe = s.dense_recipe
        trained = []

        def train_dense(m):
            trained.append(True)
            if ranks is not None:
                ranks.broadcast("train")  # the other ranks train along
            return dense_run.train(m, data, recipe, s.seed, ranks)

        dense = dense_model(model, s.key.dense, s.cache, train_dense, recipe.epochs > 0)
        if ranks is not None:
            if not trained:
                ranks.broadcast("loaded")
            ranks.broadcast_state(model)
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
        active.log_params({**s.params, **({"ratio": "budget"} if s.budget_macs is not None else {})})
        metrics = _dense_figures(dense, model, data)
        if ranks is not None:
            metrics[Metric.RANKS_WORLD] = ranks.world
        if s.zeroshot is not None:
            metrics.update({Metric.at(Metric.DENSE, k): v for k, v in s.zeroshot(model, s.device).items()})
        active.log_metrics(metrics)
        # The cost ledger's baseline and distillation's teacher: the dense model, as trained.
        dense_copy = copy.deepcopy(model)

        session = RunSession(active, s, model, pruner, data, init, checkpoints, teacher=dense_copy)
        outcome = prune_schedule(s.schedule, session)  # 6. prune schedule
        if ranks is not None:  # the other ranks are done; they ended with these weights too
            metrics[Metric.RANKS_WEIGHTS_IDENTICAL] = float(ranks.all_agree(_weights_digest(model)))
            active.log_metrics({Metric.RANKS_WEIGHTS_IDENTICAL: metrics[Metric.RANKS_WEIGHTS_IDENTICAL]})
        table = layer_table(model, outcome.mask)
        job = _handover_job(s, outcome, data) if s.handover else None
        files = _artifacts(s, model, outcome, table, active.id)
        later = job if defer_handover else None  # the hand-over the worker does
        if later is not None and not s.measure_latency:  # the worker starts at once, beside the evaluation
            _defer(s, active, later, files, dense_copy)

        figures = {**outcome.figures, **_evaluate(outcome, data, table)}  # 7. evaluate
        if s.zeroshot is not None:
            figures.update(s.zeroshot(outcome.shipped, s.device))
        active.log_metrics(figures)
        metrics.update(figures)
        handed = hand_over(job) if job is not None and later is None else None  # 8. hand-over
        if s.measure_latency:
            deferred.collect()  # the timings share the machine with no hand-over
        costs = _ledger(s, dense_copy, model, outcome, data, handed)  # 9. ledger
        if later is not None:  # the worker logs the compact file's size, the hand-over and the run's files
            for key in _COMPACT_COSTS if _compact(later) else ():
                costs.pop(key)
            if s.measure_latency:
                _defer(s, active, later, files, dense_copy)
        metrics.update({**costs, **(handed.accuracies if handed else {})})
        active.log_metrics({**costs, **(handed.accuracies if handed else {})})  # 10. log
        if later is None:
            active.log_files({**files, **(handed.files if handed else {})})
        metrics["run_id"] = active.id
    shutil.rmtree(checkpoints, ignore_errors=True)  # the run holds it all now
    if ranks is not None:
        distributed.stop()
    origin = "from cache" if dense.from_cache else ("trained" if s.dense_recipe.epochs else "evaluated, not trained")
    report(s.names, s.ratio, s.budget_macs, metrics, origin, s.tracking.uri, s.tracking.ui, experiment_id)
    return metrics


def _data_and_model(s: Settings) -> tuple[Splits, torch.nn.Module]:
    """The splits (augmented for training as configured) and the network, from a checkpoint when
    ``dense.checkpoint`` names one; the same on every rank."""
    seed_everything(s.seed)
    data = s.dataset(seed=s.seed)
    if s.augment is not None:
        s.augment.check(data.in_shape)  # before any run opens: augment=crop_flip on text is one line
    data = data.augmented(s.augment).to(s.device)
    model = build(s.model, data.in_shape, data.num_classes)
    if s.checkpoint is not None:
        load_checkpoint(model, s.checkpoint, s.strict)
    return data, model.to(s.device)


def _follow(s: Settings, ranks: distributed.Ranks) -> dict[str, Any]:
    """A rank other than 0: the stages up to the prune schedule, as rank 0 runs them and deciding
    nothing (rank 0 says whether the run is done and whether the dense model trains), recording
    nothing, and logging only warnings (rank 0 reports the run). Its training steps are the
    collectives that make the run one run."""
    logging.getLogger("prunelab").setLevel(logging.WARNING)
    with ranks.watching():
        if ranks.broadcast():  # rank 0 found a finished run of this config
            return {}
        data, model = _data_and_model(s)
        pruner = _pruner(s, data, model)
        init = copy.deepcopy(model.state_dict())
        if ranks.broadcast() == "train":
            train(model, data, s.dense_recipe, s.seed, desc="dense", ranks=ranks)
        ranks.broadcast_state(model)
        teacher = copy.deepcopy(model)
        checkpoints = s.cache / "schedules" / s.key.run
        session = RunSession(distributed.Unrecorded(), s, model, pruner, data, init, checkpoints, teacher)
        prune_schedule(s.schedule, session)
        ranks.all_agree(_weights_digest(model))
    distributed.stop()
    return {}


def _weights_digest(model: torch.nn.Module) -> str:
    """A SHA-256 of every weight and buffer: the ranks' models compared."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _compact(job: HandoverJob | None) -> bool:
    """Whether the hand-over makes a compact file (unstructured, with a codebook): the file the
    ledger costs an unstructured model by."""
    return job is not None and not job.structured and job.codebook is not None


def _defer(
    s: Settings,
    active: store.Run,
    job: HandoverJob,
    files: dict[str, bytes | str],
    dense: torch.nn.Module,
) -> None:
    """Hand the run's hand-over, files and the compact file's cost to the worker; the run stays open
    until it ends it."""
    active.keep_open()
    work = deferred.Deferred(job, files, state_bytes(dense) if _compact(job) else None)
    deferred.defer(
        work,
        store.absolute(s.tracking.uri),
        active.id,
        lambda figures: log.info("run %s: %s", active.id, handover_line(figures)),
    )


def _identity(s: Settings, experiment_id: str, sweep_tags: dict[str, str]) -> dict[str, Any] | None:
    """End the runs of this key that a dead process left RUNNING; return the metrics of the run
    that already holds this config, if there is one (and it is not forced)."""
    for key in (s.key.run, s.key.dense):
        store.end_dead_runs(experiment_id, {Tag.RUN_KEY: key})
    if s.force:
        return None
    done = store.reuse_finished(experiment_id, s.key.run, sweep_tags)
    if done is None:
        return None
    log.info(
        "skipped: run %s already holds this exact config (key %s); force=true reruns it\n  MLflow UI: %s",
        done.info.run_id,
        s.key.run,
        run_link(s.tracking.uri, s.tracking.ui, experiment_id, done.info.run_id),
    )
    return {**done.data.metrics, "run_id": done.info.run_id, "skipped": True}


def _pruner(s: Settings, data: Splits, model: torch.nn.Module) -> Pruner:
    """The configured pruning, tried on an untrained copy (and the schedule's first target)."""
    pruner = Pruner(
        s.method,
        s.criterion,
        s.scope,
        seed=s.calibration_seed,
        data=PruneData(
            in_memory(data.train, seed=s.calibration_seed),
            in_memory(data.val, seed=s.calibration_seed),
            s.train.batch_size,
            s.calibration_seed,
            data.calibration,
        ),
        example_inputs=data.train.example(),
        budget_macs=s.budget_macs,
    )
    s.schedule.check(pruner.check(model, [s.schedule.first(s.ratio), s.ratio]).mask)
    return pruner


def _dense_figures(dense: DenseResult, model: torch.nn.Module, data: Splits) -> dict[str, Any]:
    return {
        Metric.at(Metric.DENSE, Metric.TEST_ACCURACY): dense.test_accuracy,
        Metric.at(Metric.DENSE, Metric.VAL_ACCURACY): dense.val_accuracy,
        **perplexity(model, data.test, Metric.at(Metric.DENSE, "test_")),
    }


def _evaluate(outcome: Outcome, data: Splits, table) -> dict[str, float]:
    """The shipped network's figures (the run's result) and what pruning removed."""
    val, test = evaluate(outcome.shipped, data.val), evaluate(outcome.shipped, data.test)
    final = scores(outcome.shipped, data.test, "test_", result=test)
    return {
        Metric.at(Metric.FINETUNED, Metric.TEST_ACCURACY): test["accuracy"],
        Metric.at(Metric.FINETUNED, Metric.VAL_ACCURACY): val["accuracy"],
        Metric.VAL_ACCURACY: val["accuracy"],
        Metric.TEST_LOSS: test["loss"],
        **final,
        **{Metric.at(Metric.FINETUNED, k): v for k, v in final.items() if k == Metric.TEST_PERPLEXITY},
        **sparsity_summary(table, outcome.mask),
    }


# The ledger's figures of an unstructured model's file: the compact file's, made by the hand-over.
_COMPACT_COSTS = (Metric.cost("pruned", "file_bytes"), Metric.cost_ratio("file_bytes"))


def _handover_job(s: Settings, outcome: Outcome, data: Splits) -> HandoverJob:
    """What the hand-over needs, as values."""
    # A dataset built without make_splits has no raw inputs: its standardisation is the identity.
    test = in_memory(data.test)  # a streamed split: a sample of it
    raw_test = data.test_raw if data.test_raw is not None else data.raw(test.x)
    return HandoverJob(
        copy.deepcopy(outcome.shipped).cpu(),
        data.mean,
        data.std,
        data.train.example().cpu(),
        outcome.mask,
        outcome.structured,
        (raw_test, test.y.cpu()),
        s.codebook,
        s.quantize,
        data.raw(in_memory(data.val).x) if s.quantize is not None else None,
        s.tokenizer,
    )


def _ledger(
    s: Settings,
    dense: torch.nn.Module,
    model: torch.nn.Module,
    outcome: Outcome,
    data: Splits,
    handed: HandedOver | None,
) -> dict[str, float]:
    """Structured: the network with the channels physically removed is costed; unstructured: its
    compact file's size. A run that quantizes times its ONNX forms beside PyTorch (fp32, int8)."""
    runtimes = {}
    if handed is not None and handed.int8 is not None:
        runtimes = {
            role: (OnnxModel(b), len(b)) for role, b in (("onnx", handed.onnx), ("int8", handed.int8)) if b is not None
        }
    return cost_ledger(
        dense,
        model,
        data.train.example(),
        outcome.mask,
        outcome.shipped if outcome.structured else None,
        s.measure_latency,
        file_bytes=len(handed.compact) if handed is not None and handed.compact is not None else None,
        runtimes=runtimes,
    )


def _artifacts(s: Settings, model: torch.nn.Module, outcome: Outcome, table, run_id: str) -> dict[str, bytes | str]:
    """The run's own files: its config, per-layer table, plan, masked weights, what the scope
    reported."""
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
    }
