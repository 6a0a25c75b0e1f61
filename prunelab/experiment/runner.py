"""One experiment, top to bottom. :func:`run` reads as its stages, each a function of the module
that owns its concern, taking and returning values:

1. settings        the config checked and resolved into values         experiment/settings.py
2. identity        the run's keys; runs of its key left RUNNING by a    experiment/keys.py,
                   dead process ended KILLED; a finished run reused     experiment/recorder.py
3. data, model     the splits and the network                          data/, models/
4. pruner          method x criterion x scope, tried on an untrained    pruning/pruner.py
                   copy first (a bad combination fails before training)
5. dense           trained, or loaded from the cache                   experiment/dense.py
6. prune schedule  prune and fine-tune as the schedule says (taught    experiment/session.py,
                   by the dense model with finetune.distill; low-rank  distill.py, lora.py
                   adapters merged with the mask held: finetune.lora)
7. evaluate        accuracy (and perplexity, zero-shot tasks), what    experiment/train.py, measure.py,
                   was removed                                         zeroshot.py
8. hand-over       the files that ship, checked: now, or in a sweep    experiment/handover_stage.py,
                   while the next point trains; a transformers model   deploy/handover.py, hf.py
                   also as a Hugging Face folder
9. ledger          what the pruned model costs next to the dense one   deploy/ledger.py
10. log            the run's metrics and files                         tracking/store.py

``run(cfg)`` is pure of Hydra: the command line (``cli.py``), sweeps and tests call it with a
composed config. Two objects carry what is not a stage: the process layout
(:mod:`~prunelab.experiment.processes`: one process, or torchrun's ranks, rank 0 deciding and the
others taking its decisions) and the recorder (:mod:`~prunelab.experiment.recorder`: MLflow on rank
0, nothing on the others, which run the same stages up to the prune schedule).

The weights held: the model, once. A second copy only while something needs it: the initial
weights for a schedule that rewinds (a lottery), the trained dense model while distillation
teaches or the ledger times it beside the pruned one (else the ledger takes its figures, counted
before pruning), the hand-over's CPU copy while the files are made. Where a stage that frees much
ends (the prune, the hand-over's check), the C library's heap hands what was freed back to the
system (:mod:`prunelab.heap`): a stage that maps a second copy of the weights does not stack on it.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..data.splits import Splits, in_memory
from ..deploy.handover import HandedOver, formats, weights_shipped
from ..deploy.ledger import cost_ledger, counted
from ..deploy.onnx import OnnxModel
from ..heap import give_back
from ..models.build import build
from ..models.checkpoint import load_checkpoint
from ..names import Artifact, Metric
from ..pruning.data import PruneData
from ..pruning.pruner import Pruner
from .dense import DenseResult, complete, dense_model, figures_once
from .handover_stage import HandoverStage
from .measure import layer_table, sparsity_summary
from .processes import OneProcess, processes
from .protocol import protocol
from .recorder import Recorder, Silent
from .session import Outcome, RunSession, prune_schedule
from .settings import Settings
from .train import evaluate, scores, seed_everything

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
    with processes(s).running() as proc:
        recorder = proc.recorder(s, parent_run_id, dict(sweep_tags or {}))
        done = proc.decide(recorder.finished())  # 2. identity
        if done is not None:
            return done
        handover = HandoverStage(s, defer_handover and proc.alone)
        with recorder.point():
            data, model = _data_and_model(s)  # 3. data, model
            pruner = _pruner(s, data, model)  # 4. pruner
            init = copy.deepcopy(model.state_dict()) if s.schedule.rewinds else None  # a lottery's rewind point
            dense = _dense(s, proc, recorder, model, data)  # 5. dense
        with recorder.run() as active:
            metrics = {**proc.figures(), **(_dense_figures(s, dense, model, data) if active.records else {})}
            active.log_metrics(metrics)
            teacher, timed, baseline = _baseline(s, model, data)  # distillation's teacher, the ledger's dense
            session = RunSession(active, s, model, pruner, data, init, _checkpoints(s), teacher, proc)
            outcome = prune_schedule(s.schedule, session)  # 6. prune schedule
            give_back()  # what the prune freed, before anything maps a second copy of the weights
            active.log_params(protocol(data, pruner.data, s.calibration_seed))  # what perplexities compare under
            agreed = proc.agreement(model)  # the processes ended with one model
            active.log_metrics(agreed)
            if not active.records:  # a process that records nothing is done: the stages below record
                return {**metrics, **agreed}
            table = layer_table(model, outcome.mask)
            _artifacts(s, model, outcome, table, active.id, handover.files())
            handover.begin(active, outcome, data, baseline[Metric.cost(Metric.DENSE, Metric.FILE_BYTES)])
            figures = {**outcome.figures, **_evaluate(s, outcome, data, table)}  # 7. evaluate
            active.log_metrics(figures)
            handed = handover.made()  # 8. hand-over
            give_back()  # (the reloaded folder's check), before the ledger reads the dense model back
            costs = _ledger(s, timed, baseline, model, outcome, data, handed)  # 9. ledger
            metrics.update({**agreed, **figures, **handover.end(costs, handed)}, run_id=active.id)  # 10. log
    shutil.rmtree(_checkpoints(s), ignore_errors=True)  # the run holds it all now
    recorder.report(metrics, dense)
    return metrics


def _data_and_model(s: Settings) -> tuple[Splits, torch.nn.Module]:
    """The splits (augmented for training as configured) and the network, from a checkpoint when
    ``dense.checkpoint`` names one; the same on every rank."""
    seed_everything(s.seed)
    data = s.dataset(seed=s.seed)
    if s.augment is not None:
        s.augment.check(data.in_shape)  # before any run opens: augment=crop_flip on text is one line
    data = data.augmented(s.augment).to(s.device)
    model = _model(s, data)
    if s.zeroshot is not None:
        s.zeroshot.check(model)
    if s.lora is not None:
        s.lora.targeted(model)  # targets that match nothing: one line before any run opens
    if s.handover and s.handover_formats is not None:  # hf of a model that is not a transformers one: now
        formats(model, s.handover_formats)
    return data, model


def _model(s: Settings, data: Splits) -> torch.nn.Module:
    """The network as built, from its checkpoint when ``dense.checkpoint`` names one, on the device."""
    model = build(s.model, data.in_shape, data.num_classes)
    if s.checkpoint is not None:
        load_checkpoint(model, s.checkpoint, s.strict)
    return model.to(s.device)


def _pruner(s: Settings, data: Splits, model: torch.nn.Module) -> Pruner:
    """The configured pruning, tried on an untrained copy (and the schedule's first target) where
    the dense stage trains: a method, scope or schedule the model cannot take fails before the
    training it would waste. A model evaluated, not trained (a checkpoint) is checked by its own
    prune: the trial would be a second prune and a second copy of the weights."""
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
    if s.dense_recipe.epochs > 0:
        s.schedule.check(pruner.check(model, [s.schedule.first(s.ratio), s.ratio]).mask)
    return pruner


def _dense(
    s: Settings, proc: OneProcess, recorder: Recorder | Silent, model: torch.nn.Module, data: Splits
) -> DenseResult:
    """The dense model, trained (its run open while it trains) or loaded from the cache; its run
    logged from the cache when this experiment lacks it."""
    dense_run = recorder.dense_run()
    train = lambda m: dense_run.train(m, data, s.dense_recipe, s.seed, proc.ranks)
    look_up = lambda train: dense_model(model, s.key.dense, s.cache, train, s.dense_recipe.epochs > 0)
    dense = proc.dense(model, look_up, train)
    dense_run.log_cached(dense, model, data, s.cache)
    return dense


def _baseline(
    s: Settings, model: torch.nn.Module, data: Splits
) -> tuple[torch.nn.Module | None, Callable[[], torch.nn.Module] | None, dict[str, float]]:
    """The trained dense model as the stages after the prune schedule need it: a copy while
    distillation teaches (the teacher); for the ledger to time beside the pruned model, read back
    from its checkpoint when it is one (no copy held meanwhile), else that copy or one of its own;
    and its figures (params, MACs, file size), counted now."""
    teacher = copy.deepcopy(model) if s.distill is not None else None
    timed: Callable[[], torch.nn.Module] | None = None
    if s.measure_latency and teacher is None and s.pretrained and s.strict:
        timed = lambda: _model(s, data).eval()  # read back when the ledger runs
    elif s.measure_latency:
        kept = teacher if teacher is not None else copy.deepcopy(model)
        timed = lambda: kept
    return teacher, timed, counted(model, data.train.example())


def _checkpoints(s: Settings) -> Path:
    """This run key's folder of resumable state (a schedule's)."""
    return s.cache / "schedules" / s.key.run


def _dense_figures(s: Settings, dense: DenseResult, model: torch.nn.Module, data: Splits) -> dict[str, Any]:
    """The dense model's figures, which the pruned run records beside its own."""
    return {
        **{Metric.at(Metric.DENSE, k): v for k, v in complete(dense, model, data).items()},
        **({Metric.at(Metric.DENSE, k): v for k, v in _dense_zeroshot(s, model).items()} if s.zeroshot else {}),
    }


def _dense_zeroshot(s: Settings, model: torch.nn.Module) -> dict[str, float]:
    """The dense model's zero-shot scores, measured once per dense model and ``eval`` config."""
    assert s.zeroshot is not None
    zeroshot = s.zeroshot
    return figures_once(s.cache, s.key.dense, zeroshot.digest, lambda: zeroshot(model, s.device))


def _evaluate(s: Settings, outcome: Outcome, data: Splits, table) -> dict[str, float]:
    """The shipped network's figures (the run's result, zero-shot scores too) and what pruning
    removed. The masked network as last pruned and evaluated, unchanged since, is not evaluated
    again; the validation split only where the run validates."""
    reuse = outcome.evaluated if not outcome.structured else {}  # (shrunk: its own pass, as it ships)
    test = reuse.get("test") or evaluate(outcome.shipped, data.test)
    val = (reuse.get("val") or evaluate(outcome.shipped, data.val)) if outcome.validates else None
    final = scores(outcome.shipped, data.test, result=test)
    validated = {} if val is None else {Metric.at(Metric.FINETUNED, Metric.VAL_ACCURACY): val["accuracy"]}
    return {
        Metric.at(Metric.FINETUNED, Metric.TEST_ACCURACY): test["accuracy"],
        **validated,
        **({Metric.VAL_ACCURACY: val["accuracy"]} if val is not None else {}),
        Metric.TEST_LOSS: test["loss"],
        **final,
        **{Metric.at(Metric.FINETUNED, k): v for k, v in final.items() if k == Metric.TEST_PERPLEXITY},
        **sparsity_summary(table, outcome.mask),
        **(s.zeroshot(outcome.shipped, s.device) if s.zeroshot is not None else {}),
    }


def _ledger(
    s: Settings,
    dense: Callable[[], torch.nn.Module] | None,
    figures: dict[str, float],
    model: torch.nn.Module,
    outcome: Outcome,
    data: Splits,
    handed: HandedOver | None,
) -> dict[str, float]:
    """Structured: the network with the channels physically removed is costed; unstructured: its
    compact file's size. A run that quantizes times its ONNX forms beside PyTorch (fp32, int8).
    The dense model (``dense()``) is timed beside them when the run measures latency, else its
    ``figures`` are it."""
    runtimes = {}
    if handed is not None and handed.int8 is not None:
        runtimes = {
            role: (OnnxModel(path), path.stat().st_size)
            for role, path in (("onnx", handed.onnx), ("int8", handed.int8))
            if path is not None
        }
    return cost_ledger(
        dense() if s.measure_latency and dense is not None else figures,
        model,
        data.train.example(),
        outcome.shipped if outcome.structured else None,
        s.measure_latency,
        file_bytes=len(handed.compact) if handed is not None and handed.compact is not None else None,
        runtimes=runtimes,
    )


def _artifacts(s: Settings, model: torch.nn.Module, outcome: Outcome, table, run_id: str, folder: Path) -> None:
    """The run's own files, written into ``folder`` (the masked weights streamed to disk, not held
    as bytes): its per-layer table, plan, masked weights, what the scope reported (its config
    was logged when it opened). Where a large model's hand-over holds its weights, the mask alone
    (as bits): the weights are in the hand-over's folder."""
    pruned = outcome.pruned
    plan = {
        **pruned.plan,
        "ratio": pruned.ratio,
        "computed_on": {**s.names, "seed": s.seed, "ratio": pruned.ratio, "run_key": s.key.run, "run_id": run_id},
    }
    texts = {
        Artifact.LAYERS: table.to_csv(index=False),
        Artifact.PLAN: json.dumps(plan, indent=1),
        **{name: made() if callable(made) else made for name, made in pruned.report.items()},
    }
    for rel, content in texts.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content.encode() if isinstance(content, str) else content)
    (folder / Artifact.MASKED_WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    if s.handover and weights_shipped(outcome.shipped, s.handover_formats):
        torch.save(outcome.mask.to_state(packed=True), folder / Artifact.MASK)
        return
    weights = {k: v.cpu() for k, v in model.state_dict().items()}  # (no copy of a model on the CPU)
    torch.save({"state_dict": weights, "mask": outcome.mask.to_state()}, folder / Artifact.MASKED_WEIGHTS)
