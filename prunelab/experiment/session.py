"""The prune-schedule stage: the run as a schedule sees it (:class:`RunSession`, the runner's
:class:`~prunelab.pruning.contracts.Session`), and :func:`prune_schedule`, which runs the
configured schedule on the trained dense model and returns what it left (:class:`Outcome`).

Pruning and fine-tuning happen to the model in place and are logged as they go, each with a step,
so a schedule's trajectory is one MLflow chart. The latest pruning's figures (``pruned.*``) and
result (mask, plan, report) are kept on the session for the stages after it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.splits import Splits
from ..models.build import build
from ..names import Metric
from ..pruning.contracts import Pruned, Schedule, Session
from ..pruning.errors import PruningError
from ..pruning.mask import Mask
from ..pruning.pruner import Pruner
from ..pruning.shrink import shrink, unshrink
from ..tracking import store
from .dense import atomic_save
from .processes import OneProcess
from .recorder import Unrecorded
from .settings import Settings
from .train import EpochResult, Recipe, evaluate, per_position, scores, steps_per_epoch, train


class RunSession(Session):
    """The runner's session, recording into ``run``: ``model`` (trained dense, pruned and fine-tuned
    in place) with the run's ``pruner`` and ``data``, and from its settings the ratio, the recipes,
    the seed that shuffles the batches (each call its own) and the model factory (fresh
    initialisations); ``checkpoints`` is this run key's folder of resumable state (a schedule's,
    and a block-by-block prune's progress, kept by a run of one process that records: a run across
    processes does not keep its prune's progress); ``processes`` the run's process layout (one by
    default), which says what every process keeps."""

    def __init__(
        self,
        run: store.Run | Unrecorded,
        settings: Settings,
        model: nn.Module,
        pruner: Pruner,
        data: Splits,
        init: dict | None,
        checkpoints: Path,
        teacher: nn.Module | None = None,
        processes: OneProcess | None = None,
    ):
        self.run, self.model, self.ratio, self.init = run, model, settings.ratio, init
        # finetune.distill: the dense model teaches every fine-tuning
        self.distill = settings.distill.teaching(teacher) if settings.distill and teacher is not None else None
        self.lora = settings.lora
        self.epochs = settings.finetune.epochs
        self.steps_per_epoch = steps_per_epoch(len(data.train), settings.finetune.batch_size)
        self.pruner, self.data, self.train_recipe, self.finetune = pruner, data, settings.train, settings.finetune
        self.shrink_finetuned, self.seed, self.factory = settings.shrink, settings.seed, settings.model
        self.processes = processes or OneProcess()
        self.checkpoints = checkpoints / "schedule.pt"
        alone = self.run.records and self.processes.ranks is None
        self.progress = checkpoints / "prune" if alone else None  # what a killed prune resumes from
        self.last: Pruned | None = None  # the latest pruning's result
        self.figures: dict[str, float] = {}  # and its figures: pruned.*, time.prune_s, budget.ratio
        self._mask: Mask | None = None  # the latest mask a pruning made
        self._epochs_done = self._calls = 0
        # The model as last pruned, evaluated (split -> evaluate()): the run's result where nothing
        # trains after it; a language model's post-training run has no use for its validation split
        # (nothing chooses on it: the papers' protocol reports the test split).
        self.evaluated: dict[str, dict[str, float]] = {}
        self.validates = not (settings.finetune.epochs == 0 and per_position(data.test))

    def prune(self, ratio, mask, step=None, target=None, last=None) -> Mask:
        start = time.perf_counter()
        result = self.pruner(self.model, ratio, mask, last=last, progress=self.progress)
        seconds = time.perf_counter() - start  # the mask (and SparseGPT's update), no evaluation
        kept, agreed = self.processes.keep(result.mask)
        result = dataclasses.replace(result, mask=kept)
        result.apply(self.model)  # the mask, and a method's compensation (FLAP's biases)
        self.processes.share(self.model)  # a reconstructing method (SparseGPT) changed the weights too
        figures = {**agreed, **result.figures, Metric.PRUNE_SECONDS: seconds}
        self.evaluated = {}
        if self.run.records:  # a run that records nothing is not evaluated
            if self.validates:
                self.evaluated["val"] = evaluate(self.model, self.data.val)
                figures[Metric.at(Metric.PRUNED, Metric.VAL_ACCURACY)] = self.evaluated["val"]["accuracy"]
            self.evaluated["test"] = evaluate(self.model, self.data.test)
            figures.update(scores(self.model, self.data.test, stage=Metric.PRUNED, result=self.evaluated["test"]))
        if self.pruner.budget is not None:
            figures[Metric.BUDGET_RATIO] = result.ratio
        new = result.mask
        if step is None:
            self.run.log_metrics(figures)
        else:  # a schedule's trajectory: one point per update
            before = self._mask or mask  # the previous update's mask, whatever the schedule passed
            changed = sum(int((new.masks[n] != before.masks[n]).sum()) for n in new.prunable) if before else 0
            self.run.log_metrics(
                {
                    **figures,
                    Metric.SCHEDULE_SPARSITY: new.sparsity,
                    Metric.SCHEDULE_CHANGED: changed,
                    **({Metric.SCHEDULE_CHANNELS: new.channel_sparsity} if new.channel_sparsity is not None else {}),
                    **({Metric.SCHEDULE_TARGET: target} if target is not None else {}),
                },
                step=step,
            )
        self.last, self.figures, self._mask = result, figures, new
        return new

    def fine_tune(self, mask, epochs, after_step=None) -> nn.Module | None:
        """Structured with ``finetune.shrink`` (the default): the shrunk network is what trains, and
        its weights are written back into the model's full-size layout afterwards (the masked and
        shrunk networks compute the same function, so this is the masked fine-tuning done with
        fewer channels; the optimizer starts fresh either way). Otherwise the full-size model
        trains with the mask re-applied after every step."""
        self._calls += 1
        x1 = self.data.train.example()
        shrunk = (
            shrink(self.model, mask, x1) if mask is not None and mask.structural and self.shrink_finetuned else None
        )
        net = shrunk if shrunk is not None else self.model
        first = self._epochs_done

        def on_epoch(e: EpochResult):
            self.run.log_metrics(
                {
                    Metric.FINETUNE_LOSS: e.loss,
                    Metric.FINETUNE_ACCURACY: e.train_accuracy,
                    Metric.FINETUNE_VAL_ACCURACY: e.val_accuracy,
                    **({Metric.FINETUNE_KD_LOSS: self.distill.epoch_kd_loss()} if self.distill else {}),
                },
                step=first + e.epoch,
            )

        adapters = self.lora.attach(net) if self.lora is not None and epochs > 0 else None
        if adapters is not None:  # the pruned weights are frozen: only the adapters train
            self.run.log_metrics({Metric.FINETUNE_TRAINABLE: adapters.count()})
        elif after_step is None and shrunk is None and mask is not None:
            after_step = mask.hold(self.model)
        train(
            net,
            self.data,
            self._finetune_for(epochs),
            self.seed + self._calls,
            after_step=after_step,
            on_epoch=on_epoch,
            desc="fine-tune",
            objective=self.distill,
            ranks=self.processes.ranks,
        )
        if adapters is not None:
            adapters.merge(mask if shrunk is None else None)
        self._epochs_done += epochs
        if epochs > 0:
            self.evaluated = {}  # the model trained since it was evaluated
        if shrunk is not None:
            unshrink(shrunk, mask, self.model)
        elif mask is not None and mask.structural:
            shrunk = shrink(self.model, mask, x1)
        return shrunk

    def _finetune_for(self, epochs: int) -> Recipe:
        """The fine-tuning recipe over ``epochs`` (a schedule may split finetune.epochs into rounds):
        cosine decays over them, and step milestones scale with them, as in the whole budget."""
        milestones = self.finetune.milestones
        if milestones and self.epochs and epochs != self.epochs:
            milestones = tuple(sorted({max(1, round(m * epochs / self.epochs)) for m in milestones}))
        return dataclasses.replace(self.finetune, epochs=epochs, milestones=milestones)

    def shrunk(self, mask):
        return shrink(self.model, mask, self.data.train.example()) if mask is not None and mask.structural else None

    def train(self, net, mask, seed, epochs=None, desc="train") -> None:
        train(
            net,
            self.data,
            self.train_recipe,
            self.seed + seed,
            epochs,
            after_step=mask.hold(net) if mask is not None else None,
            desc=desc,
            ranks=self.processes.ranks,
        )

    def fresh(self, seed: int) -> dict:
        torch.manual_seed(self.seed + 10_000 + seed)
        data = self.data
        return build(self.factory, data.in_shape, data.num_classes).to(data.device).state_dict()

    def evaluate(self, net) -> tuple[float, float]:
        return evaluate(net, self.data.val)["accuracy"], evaluate(net, self.data.test)["accuracy"]

    def log(self, metrics, step) -> None:
        self.run.log_metrics(metrics, step=step)

    def resume(self) -> dict | None:
        return self.processes.resume(self.checkpoints, self.data.device)

    def checkpoint(self, state: dict) -> None:
        if not self.run.records:  # the process that records keeps the state
            return
        self.checkpoints.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(state, self.checkpoints, torch.save)


@dataclass(frozen=True)
class Outcome:
    """What a schedule left: the final mask, the network that ships (the physically shrunk one for
    structured masks, else the masked model), the last pruning's result and its figures;
    ``evaluated``: the masked model's evaluation (split -> ``evaluate()``) where nothing changed it
    since (no fine-tuning, no rewind), which the run reports instead of evaluating it again;
    ``validates``: whether the run evaluates its validation split at all."""

    mask: Mask
    shipped: nn.Module
    structured: bool
    pruned: Pruned
    figures: dict[str, Any]
    evaluated: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    validates: bool = True


def prune_schedule(schedule: Schedule, session: RunSession) -> Outcome:
    """Run ``schedule`` on the session's trained dense model."""
    mask, shrunk = schedule(session)
    if session.last is None:
        raise PruningError(f"schedule {type(schedule).__name__} returned without pruning (session.prune)")
    return Outcome(
        mask,
        shrunk if shrunk is not None else session.model,
        shrunk is not None,
        session.last,
        dict(session.figures),
        dict(session.evaluated) if not schedule.rewinds else {},
        session.validates,
    )
