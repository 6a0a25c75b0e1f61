"""One experiment, top to bottom: config -> data + model -> dense (trained or cached) -> rounds of
prune -> fine-tune with the mask held -> evaluate -> measure -> log to MLflow. Returns the metrics.

Identity (keys, names) lives in ``keys.py``, the dense model's cache and run in ``dense.py``, the
skip policy in ``tracking.py``; the runner only puts them in order.

``run(cfg)`` is pure of Hydra: the command line (``cli.py``), sweeps and tests call it with a
composed config.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import keys, tracking, ui
from .config import ConfigError, validate
from .data import Splits, cache_dir as user_cache_dir
from .dense import DenseRun, atomic_save, dense_model
from .compact import decode
from .deploy import OnnxModel, accuracy, deployed
from .handover import handover
from .ledger import cost_ledger
from .measure import layer_table, sparsity_summary
from .models import build
from .pruning import Local, Mask, PruneData, PruningError, prunable_layers, prune, shrink, unshrink
from .pruning.budget import check_reachable
from .redact import redact
from .schedules import Session
from .train import EpochResult, evaluate, fit, optimizer_for, perplexity, scores, seed_everything, steps_per_epoch, train_recipe

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but PyTorch sees no CUDA device")
    return torch.device(name)


def fine_tune(cfg: DictConfig, model: torch.nn.Module, mask: Mask | None, data: Splits, epochs: int | None = None,
              after_step=None, first_epoch: int = 0, seed: int = 1) -> torch.nn.Module | None:
    """Fine-tune the pruned ``model`` (mask applied) as configured (``epochs`` of them, default
    ``finetune.epochs``); return its physically shrunk twin for structured masks (None otherwise).
    A schedule's ``after_step`` holds its own, changing mask (``mask`` None): the model trains
    full-size. Epochs are logged as steps ``first_epoch + 1 ...``; batches are shuffled by
    ``cfg.seed + seed``.

    Structured with ``finetune.shrink`` (the default): the shrunk network is what trains, and its
    weights are written back into ``model``'s full-size layout afterwards (the masked and shrunk
    networks compute the same function, so this is the masked fine-tuning done with fewer
    channels; the optimizer starts fresh either way). Otherwise the full-size ``model`` trains
    with the mask re-applied after every step."""
    f, x1 = cfg.finetune, data.train.x[:1]
    epochs = f.epochs if epochs is None else epochs
    shrunk = shrink(model, mask, x1) if mask is not None and mask.channels and f.shrink else None
    net = shrunk if shrunk is not None else model
    optimizer, scheduler = optimizer_for(cfg, net.parameters(), f.lr, epochs,
                                         steps_per_epoch(len(data.train), cfg.train.batch_size), f.schedule)

    def on_epoch(e: EpochResult):
        tracking.log_metrics({"finetune.loss": e.loss, "finetune.train_accuracy": e.train_accuracy,
                              "finetune.val_accuracy": e.val_accuracy}, step=first_epoch + e.epoch)

    if after_step is None and shrunk is None:
        after_step = mask.hold(model)
    fit(net, data.train, data.val, optimizer, epochs, cfg.train.batch_size, cfg.seed + seed, scheduler,
        after_step=after_step, on_epoch=on_epoch, desc="fine-tune")
    if shrunk is not None:
        unshrink(shrunk, mask, model)
    elif mask is not None and mask.channels:
        shrunk = shrink(model, mask, x1)
    return shrunk


def _quantizer(cfg: DictConfig, data: Splits):
    """``quantize``'s option as ONNX bytes -> quantized ONNX bytes, calibrated on the validation
    split's raw inputs; None for ``quantize=none``."""
    if not cfg.quantize:
        return None
    quantize = instantiate(cfg.quantize)
    raw_val = data.raw(data.val.x)
    return lambda onnx: quantize(onnx, raw_val)


def _check_handover(handed, ship: torch.nn.Module, sessions: dict[str, OnnxModel], data: Splits
                    ) -> dict[str, float]:
    """Test accuracy of the hand-over files that do not run the fine-tuned network's own PyTorch
    operations, on the raw test inputs: ONNX Runtime's fp32 and int8 models and the decoded compact
    file (``program.pt2`` runs the same operations as the evaluated network: the tests check that
    it reproduces ``test_accuracy`` in a fresh process)."""
    # A dataset built without make_splits has no raw inputs: its standardisation is the identity.
    x = data.test_raw if data.test_raw is not None else data.test.x.cpu()
    y = data.test.y.cpu()
    out = {}
    if handed.compact is not None:
        decoded = copy.deepcopy(ship)
        decoded.load_state_dict(decode(handed.compact))
        out["compact.test_accuracy"] = accuracy(decoded, x, y)
    for role, session in sessions.items():
        out[f"{'handover.onnx' if role == 'onnx' else role}.test_accuracy"] = accuracy(session, x, y)
    return out


class Pruner:
    """The configured method x criterion x scope (and MACs budget), as one call per round:
    ``pruner(model, ratio, mask)`` -> the new mask, starting from ``mask``."""

    def __init__(self, cfg: DictConfig, data: Splits):
        self.method, self.criterion = instantiate(cfg.method), instantiate(cfg.criterion)
        self.scope = instantiate(cfg.scope)
        self.seed = cfg.seed if cfg.calibration_seed is None else cfg.calibration_seed
        self.data = PruneData(data.train, data.val, cfg.train.batch_size, self.seed)
        self.example, self.budget, self.ratio = data.train.x[:1], cfg.budget.macs, cfg.ratio
        self.ignore = list(cfg.method.get("ignore") or ())  # the layers the method leaves dense

    def __call__(self, model, ratio: float, mask: Mask | None = None, scope=None, budget=True,
                 last: float | None = None) -> Mask:
        """``last``: the output layer (the last prunable one) is pruned on its own to this ratio of
        its weights, the other layers by the scope to ``ratio`` of theirs."""
        if last is not None:
            return self._apart(model, ratio, mask, scope, budget, last)
        return self._prune(model, ratio, mask, scope, budget)

    def _prune(self, model, ratio, mask, scope, budget, ignore=None) -> Mask:
        return prune(model, self.method, scope or self.scope, ratio, self.criterion, seed=self.seed,
                     example_inputs=self.example, data=self.data, mask=mask, ignore=ignore,
                     budget_macs=self.budget if budget else None)

    def _apart(self, model, ratio, mask, scope, budget, last: float) -> Mask:
        layers = list(prunable_layers(model))
        output, kept = layers[-1], list(prunable_layers(model, self.ignore))
        if output not in kept:
            raise PruningError(f"the output layer {output} is pruned on its own (schedule.output_fraction) "
                               f"but method.ignore leaves it dense; drop one of the two")
        if len(kept) < 2:
            raise PruningError(f"pruning the output layer {output} on its own needs another prunable layer")
        rest = self._prune(model, ratio, mask, scope, budget, ignore=[*self.ignore, output])
        alone = self._prune(model, last, rest, Local(), False, ignore=[*self.ignore, *kept[:-1]])
        out = Mask(alone.masks, prunable=(*rest.prunable, *alone.prunable), channels={**rest.channels, **alone.channels})
        out.plan = {**rest.plan, "sets": {**rest.plan["sets"], **alone.plan["sets"]}}
        out.report = rest.report
        return out

    def check(self, model, first: float | None = None) -> Mask:
        """Prune an untrained copy to the ratio (and to a schedule's ``first`` target): a method,
        criterion, scope, plan or schedule this model cannot take fails now, not after dense
        training (a measuring scope is stood in for by local: its scan would cost a second time
        and say nothing on random weights). Returns the mask at ``ratio``."""
        scope = Local() if getattr(self.scope, "measures", False) else None
        probe = copy.deepcopy(model)
        for ratio in dict.fromkeys([first if first is not None else self.ratio, self.ratio]):
            mask = self(probe, ratio, scope=scope, budget=False)
        if self.budget is not None:  # a budget this method cannot meet, or nm's fixed ratio
            check_reachable(lambda r: self(probe, r, scope=scope, budget=False), probe, self.example, self.budget)
        return mask


def session(cfg: DictConfig, model: torch.nn.Module, pruner: Pruner, data: Splits, metrics: dict,
            init: dict, checkpoints: Path) -> Session:
    """The run as a schedule sees it (``schedules.py``): pruning and fine-tuning ``model`` in place,
    each logged with a step; ``metrics`` gets the latest ``pruned.*``. ``init``: the weights before
    dense training; ``checkpoints``: the folder of this run key's resumable state."""
    budget = cfg.budget.macs is not None
    done = {"epochs": 0, "calls": 0, "mask": None}

    def prune_to(ratio: float, mask: Mask | None, step: int | None = None, target: float | None = None,
                 last: float | None = None) -> Mask:
        start = time.perf_counter()
        new = pruner(model, ratio, mask, last=last)
        metrics["time.prune_s"] = time.perf_counter() - start  # the mask (and SparseGPT's update), no evaluation
        new.apply(model)
        metrics.update(scores(model, data.test, "pruned.test_"))
        metrics["pruned.val_accuracy"] = evaluate(model, data.val)["accuracy"]
        if budget:
            metrics["budget.ratio"] = new.plan["ratio"]
        if step is None:
            tracking.log_metrics(metrics)
        else:  # a schedule's trajectory: one point per update
            last = done["mask"] or mask  # the previous update's mask, whatever the schedule passed
            changed = sum(int((new.masks[n] != last.masks[n]).sum()) for n in new.prunable) if last else 0
            tracking.log_metrics({**metrics, "schedule.sparsity": new.sparsity, "schedule.changed": changed,
                                  **({"schedule.channels": new.channel_sparsity} if new.channels else {}),
                                  **({"schedule.target": target} if target is not None else {})}, step=step)
        done["mask"] = new
        return new

    def tune(mask: Mask | None, epochs: int, after_step=None) -> torch.nn.Module | None:
        done["calls"] += 1
        shrunk = fine_tune(cfg, model, mask, data, epochs, after_step, first_epoch=done["epochs"], seed=done["calls"])
        done["epochs"] += epochs
        return shrunk

    def train(net: torch.nn.Module, mask: Mask | None, seed: int, epochs: int | None = None, desc: str = "train"):
        train_recipe(cfg, net, data, epochs=epochs, after_step=mask.hold(net) if mask is not None else None,
                     seed=seed, desc=desc)

    def fresh(seed: int) -> dict:
        torch.manual_seed(cfg.seed + 10_000 + seed)
        return build(instantiate(cfg.model), data.in_shape, data.num_classes).to(data.train.x.device).state_dict()

    path = checkpoints / "schedule.pt"
    return Session(
        model, cfg.ratio, cfg.finetune.epochs, steps_per_epoch(len(data.train), cfg.train.batch_size), prune_to, tune,
        shrunk=lambda mask: shrink(model, mask, data.train.x[:1]) if mask.channels else None,
        train=train, init=init, fresh=fresh,
        evaluate=lambda net: (evaluate(net, data.val)["accuracy"], evaluate(net, data.test)["accuracy"]),
        log=lambda m, step: tracking.log_metrics(m, step=step),
        resume=lambda: torch.load(path, map_location=data.train.x.device, weights_only=True) if path.is_file() else None,
        checkpoint=lambda state: (path.parent.mkdir(parents=True, exist_ok=True), atomic_save(state, path, torch.save)))


def run(cfg: DictConfig, parent_run_id: str | None = None,
        extra_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one experiment and return its metrics (the sweeper can optimise any of them).

    In a sweep, ``parent_run_id`` nests the run under the sweep's parent and ``extra_tags`` mark
    it (and a reused earlier run of the same config) as one of the sweep's points."""
    validate(cfg)
    device = resolve_device(cfg.device)
    extra_tags = dict(extra_tags or {})
    experiment_id = tracking.connect(cfg.tracking.uri, keys.experiment_name(cfg))
    name, chosen = keys.run_name(cfg), keys.names(cfg)
    tags = {**keys.run_tags(cfg, device.type), **extra_tags}
    key = tags[tracking.TAG_RUN_KEY]
    if not cfg.force:
        done = tracking.reuse_finished(experiment_id, key, extra_tags)
        if done is not None:
            log.info("skipped: run %s already holds this exact config (key %s); force=true reruns it\n"
                     "  MLflow UI: %s", done.info.run_id, key,
                     ui.run_link(cfg.tracking, experiment_id, done.info.run_id))
            return {**done.data.metrics, "run_id": done.info.run_id, "skipped": True}

    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else user_cache_dir() / "dense"
    try:
        seed_everything(cfg.seed)
        data = instantiate(cfg.dataset)(seed=cfg.seed).to(device)
        model = build(instantiate(cfg.model), data.in_shape, data.num_classes).to(device)
        pruner, schedule = Pruner(cfg, data), instantiate(cfg.schedule)
        checked = pruner.check(model, schedule.first(cfg.ratio) if hasattr(schedule, "first") else None)
        if hasattr(schedule, "check"):  # e.g. a schedule that moves single weights refuses channels
            schedule.check(checked)
        init = copy.deepcopy(model.state_dict())  # before dense training: a lottery rewinds to it
        dense_run = DenseRun(cfg, experiment_id, keys.dense_key(cfg, device.type), device.type, parent_run_id,
                             extra_tags)
        dense = dense_model(model, dense_run.key, cache, lambda m: dense_run.train(m, data))
        dense_run.log_cached(dense, model, data, cache)
    except (Exception, KeyboardInterrupt) as e:
        # The point broke (or was stopped) before its own run opened: record it, so a sweep
        # shows every point that did not finish.
        tracking.record_failure(experiment_id, name, tags, parent_run_id, e)
        raise

    tags.update({tracking.TAG_DENSE_KEY: dense.key, **tracking.environment_tags()})
    with tracking.run(experiment_id, name, tags, parent_run_id) as active:
        # Under a MACs budget the ratio is searched (metric budget.ratio; it differs by seed, so a
        # point is the budget, not a ratio).
        budget = cfg.budget.macs is not None
        mlflow.log_params({**tracking.params(cfg), **({"ratio": "budget"} if budget else {})})
        metrics = {"dense.test_accuracy": dense.test_accuracy, "dense.val_accuracy": dense.val_accuracy,
                   **perplexity(model, data.test, "dense.test_")}

        dense_copy = copy.deepcopy(model)  # the cost ledger's baseline (small at these sizes)
        checkpoints = cache / "schedules" / key
        mask, shrunk = schedule(session(cfg, model, pruner, data, metrics, init, checkpoints))

        shipped = shrunk if shrunk is not None else model
        final_val, final_test = evaluate(shipped, data.val), evaluate(shipped, data.test)
        table = layer_table(model, mask)
        final = scores(shipped, data.test, "test_", result=final_test)
        metrics.update({
            "finetuned.test_accuracy": final_test["accuracy"], "finetuned.val_accuracy": final_val["accuracy"],
            "test_accuracy": final_test["accuracy"], "val_accuracy": final_val["accuracy"],
            "test_loss": final_test["loss"], **sparsity_summary(table, mask),
            **final, **{f"finetuned.{k}": v for k, v in final.items() if "perplexity" in k},
        })
        tracking.log_metrics(metrics)

        handed, runtimes, file_bytes = None, {}, None
        if cfg.handover:
            ship = deployed(shipped, data.mean, data.std)
            handed = handover(ship, data.train.x[:1], mask, structured=shrunk is not None, quantize=_quantizer(cfg, data),
                              codebook=instantiate(cfg.codebook) if cfg.codebook else None)
            # One ONNX Runtime session per file, for its accuracy check and for the ledger's timing
            # (which times the ONNX forms when the run quantizes: fp32 and int8 side by side).
            onnx_files = {role: b for role, b in (("onnx", handed.onnx), ("int8", handed.int8)) if b is not None}
            sessions = {role: OnnxModel(b) for role, b in onnx_files.items()}
            metrics.update(_check_handover(handed, ship, sessions, data))
            if "int8" in onnx_files:
                runtimes = {role: (sessions[role], len(b)) for role, b in onnx_files.items()}
            file_bytes = len(handed.compact) if handed.compact is not None else None
        # Structured: cost the network with the channels physically removed.
        metrics.update(cost_ledger(dense_copy, model, data.train.x[:1], mask, shrunk, cfg.measure_latency,
                                   file_bytes=file_bytes, runtimes=runtimes))
        tracking.log_metrics(metrics)

        weights = io.BytesIO()
        torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "mask": mask.to_state()}, weights)
        plan = {**mask.plan, "computed_on": {**chosen, "seed": cfg.seed, "ratio": mask.plan["ratio"], "run_key": key,
                                             "run_id": active.info.run_id}}
        tracking.log_artifact_files({
            "config.yaml": redact(OmegaConf.to_yaml(cfg, resolve=True)),
            "layers.csv": table.to_csv(index=False),
            "plan.json": json.dumps(plan, indent=1),
            "model/masked_weights.pt": weights.getvalue(),
            **{name: made() if callable(made) else made for name, made in mask.report.items()},
            **(handed.files if handed is not None else {}),
        })
        metrics["run_id"] = active.info.run_id
    shutil.rmtree(checkpoints, ignore_errors=True)  # the FINISHED run holds it all now
    _report(cfg, chosen, metrics, dense.from_cache, experiment_id)
    return metrics


def _handover_lines(m) -> list[str]:
    lines = []
    files = [f"{name} {m[key]:.4f}" for name, key in (
        ("model.onnx", "handover.onnx.test_accuracy"),
        ("model.int8.onnx", "int8.test_accuracy"), ("weights.compact", "compact.test_accuracy")) if key in m]
    if files:
        lines.append("  hand-over files (raw inputs), test accuracy: " + " | ".join(files))
    if "cost.ratio.int8.latency_b64" in m:
        lines.append(f"  ONNX Runtime / dense PyTorch fp32: latency batch 64 fp32 {m['cost.ratio.onnx.latency_b64']:.3f},"
                     f" int8 {m['cost.ratio.int8.latency_b64']:.3f} | int8 file {m['cost.ratio.int8.file_bytes']:.3f}")
    return lines


def _report(cfg, chosen, m, dense_from_cache: bool, experiment_id: str) -> None:
    lines = [
        f"{chosen['method']} / {chosen['scope']} / {chosen['criterion']}, ratio "
        f"{m.get('budget.ratio', cfg.ratio):.4g}" + (f" (budget.macs={cfg.budget.macs:g})" if cfg.budget.macs else "") +
        f" (dense model {'from cache' if dense_from_cache else 'trained'})",
        f"  test accuracy: dense {m['dense.test_accuracy']:.4f} | pruned {m['pruned.test_accuracy']:.4f}"
        f" | fine-tuned {m['finetuned.test_accuracy']:.4f}",
        *([f"  test perplexity: dense {m['dense.test_perplexity']:.3f} | pruned {m['pruned.test_perplexity']:.3f}"
           f" | fine-tuned {m['finetuned.test_perplexity']:.3f}"] if "test_perplexity" in m else []),
        f"  sparsity: prunable weights {m['sparsity.prunable']:.4f} | all parameters {m['sparsity.all']:.4f}"
        + (f" | channels {m['sparsity.channels']:.4f}" if "sparsity.channels" in m else ""),
        f"  parameters: {m['params.nonzero']:,} nonzero of {m['params.total']:,}",
        f"  cost, pruned / dense: MACs {m['cost.ratio.macs']:.3f} | nonzero MACs {m['cost.ratio.nonzero_macs']:.3f}"
        + (f" | CPU latency batch 1 {m['cost.ratio.latency_b1']:.3f}, batch 64 {m['cost.ratio.latency_b64']:.3f}"
           if "cost.ratio.latency_b64" in m else ""),
        *_handover_lines(m),
        f"  MLflow run {m['run_id']} in {redact(cfg.tracking.uri)}",
        f"  MLflow UI: {ui.run_link(cfg.tracking, experiment_id, m['run_id'])}",
    ]
    log.info("\n".join(lines))
