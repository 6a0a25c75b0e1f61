"""Training and evaluation loops, used for dense training and for fine-tuning with a mask held.

Batches come from the split (in memory: indexed by a seeded permutation; a folder: streamed by
``DataLoader`` workers), augmented when it says so. The loop is the plain PyTorch loop (benchmarks/
compares it with a hand-written one); the only extra per step is ``after_step`` (the mask
re-zeroing during fine-tuning). A :class:`Recipe` says how a network is trained (the ``train`` and
``finetune`` values of the config), :class:`Speed` how fast (autocast, channels-last, compiled),
:class:`~prunelab.experiment.distributed.Ranks` across how many processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.splits import Split, Splits, labelled
from ..errors import UserError
from ..names import IGNORE, Metric
from .distributed import Ranks, batchnorms, local_batchnorm

log = logging.getLogger(__name__)


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (the loss diverged); the message says what to change."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA): same seed -> same numbers on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# The most logits one evaluation batch holds (float32: 64 MiB; the loss takes as much again, and the
# activations grow with the batch too). A language model's are (batch, vocabulary, seq_len): 0.1G a
# window for OPT's 50k tokens x 2048, so its batches are one window; at 8k tokens x 512, four.
MAX_LOGITS = 1 << 24


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``split`` (eval mode; training mode restored), in
    batches of ``batch_size`` samples or fewer: as many as keep the logits within
    :data:`MAX_LOGITS` (the first batch, one sample, says how large a sample's are)."""
    was_training = model.training
    model.eval()
    loss, correct = torch.zeros((), device=split.device), torch.zeros((), device=split.device)

    def add(x, y):
        logits = model(x)
        loss.add_(F.cross_entropy(logits, y, reduction="sum"))
        correct.add_((logits.argmax(1) == y).sum())
        return logits

    if isinstance(split, Split):
        start, size = 0, 1
        while start < len(split):
            logits = add(split.x[start : start + size], split.y[start : start + size])
            start += size
            size = max(1, min(batch_size, MAX_LOGITS // max(1, logits[0].numel())))
    else:  # streamed: the split's own batches, in order
        for x, y in split.batches(min(batch_size, 256)):
            add(x, y)
    model.train(was_training)
    n = labelled(split.y)  # samples, or tokens for a language model (one label per position)
    return {"loss": loss.item() / n, "accuracy": correct.item() / n}


def scores(model: nn.Module, split: Split, *, stage: str | None = None, result: dict | None = None) -> dict[str, float]:
    """The figures a run logs of its test split: ``test_accuracy``, and ``test_perplexity`` (exp of
    the mean loss per token) where ``split`` has a label per position (a language model's); named
    after a stage when given (``Metric.at``: ``pruned.test_accuracy``). ``result``:
    ``evaluate(model, split)`` when the caller has it already (an LM's test pass costs seconds)."""
    result = evaluate(model, split) if result is None else result
    return {
        _at(stage, Metric.TEST_ACCURACY): result["accuracy"],
        **perplexity(model, split, stage=stage, result=result),
    }


def per_position(split: Split) -> bool:
    """Whether ``split`` has a label per position (a language model's windows)."""
    return split.y.dim() > 1


def perplexity(
    model: nn.Module, split: Split, *, stage: str | None = None, result: dict | None = None
) -> dict[str, float]:
    """``test_perplexity`` (``pruned.test_perplexity`` for a stage) where ``split`` has a label per
    position (a language model's), else nothing, and no evaluation spent on it."""
    if not per_position(split):
        return {}
    result = evaluate(model, split) if result is None else result
    return {_at(stage, Metric.TEST_PERPLEXITY): math.exp(min(result["loss"], 700.0))}


def _at(stage: str | None, figure: str) -> str:
    return Metric.at(stage, figure) if stage else figure


# A training loss other than the cross-entropy: (logits, inputs, labels) -> loss.
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Speed:
    """How fast a step runs, never what it computes beyond rounding: ``precision`` ``"32"``,
    ``"bf16"`` or ``"fp16"`` (autocast; fp16 with a gradient scaler), ``channels_last`` (4-D inputs
    and weights in NHWC, what GPU convolution kernels want) and ``compile`` (``torch.compile`` of the
    training forward). Weights stay float32, so a mask re-applied after each step holds exactly."""

    precision: str = "32"
    channels_last: bool = False
    compile: bool = False

    def network(self, model: nn.Module) -> nn.Module:
        """The module training runs: ``model`` itself, in channels-last layout, or compiled (the
        compiled module shares ``model``'s parameters)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return torch.compile(model) if self.compile else model  # type: ignore[return-value]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def autocast(self, device: torch.device):
        if self.precision == "32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(device.type) if self.precision == "fp16" else None


@dataclass
class EpochResult:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    seed: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    after_step: Callable[[], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    desc: str = "train",
    objective: Objective | None = None,
    speed: Speed = Speed(),
    label_smoothing: float = 0.0,
    ranks: Ranks | None = None,
) -> list[EpochResult]:
    """Train for ``epochs``; ``after_step`` runs after every optimizer step (mask hold),
    ``scheduler`` steps once per batch, ``on_epoch`` receives each epoch's figures. The loss is
    the cross-entropy (with ``label_smoothing``), or ``objective(logits, inputs, labels)``
    (distillation); ``speed`` says how the steps run.

    With ``ranks`` (several processes, ``torch.distributed`` initialised) the model trains as
    ``DistributedDataParallel``: each rank takes its part of every global batch of ``batch_size``
    and its loss is weighted by that part's share, so the averaged gradient is the one process's
    gradient of the whole batch; the epoch's figures are summed over the ranks."""
    device = next(model.parameters()).device
    net = speed.network(model)
    synced = batchnorms(model) if ranks is not None and ranks.sync_bn else {}
    if ranks is not None:
        net = ranks.parallel(net, device)
    loop = _Loop(model, net, optimizer, scheduler, after_step, objective, speed, label_smoothing, ranks, device)
    generator = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    try:
        with ranks.watching() if ranks is not None else contextlib.nullcontext():
            for epoch in range(1, epochs + 1):
                bar = tqdm(
                    train.batches(batch_size, generator, shard=loop.shard),
                    total=steps_per_epoch(len(train), batch_size),
                    leave=False,
                    desc=f"{desc} {epoch}/{epochs}",
                    disable=None if ranks is None or ranks.main else True,
                )
                loss, correct = loop.epoch(bar, batch_size, len(train))
                result = EpochResult(
                    epoch,
                    loss / labelled(train.y),
                    correct / labelled(train.y),
                    # (ranks other than 0 record nothing: their copy of the figure is not computed)
                    evaluate(model, val)["accuracy"] if len(val) and (ranks is None or ranks.main) else float("nan"),
                )
                log.info(
                    "%s epoch %d/%d: loss %.4f, train acc %.4f, val acc %.4f",
                    desc,
                    epoch,
                    epochs,
                    result.loss,
                    result.train_accuracy,
                    result.val_accuracy,
                )
                if not math.isfinite(result.loss):
                    # Checked once an epoch (the epoch's loss is reduced anyway): no extra sync per step.
                    raise TrainingError(
                        f"{desc} diverged: the loss is {result.loss} in epoch {epoch}; "
                        "lower the learning rate (train.lr / finetune.lr) or pick another recipe"
                    )
                history.append(result)
                if on_epoch is not None:
                    on_epoch(result)
            if ranks is not None and epochs > 0:
                ranks.broadcast_buffers(model)
    finally:
        if synced:
            local_batchnorm(model, synced)
        model.zero_grad(set_to_none=True)  # the last step's gradients: a copy of the weights' size, unused
    return history


@dataclass
class _Loop:
    """The steps of :func:`fit`, one epoch at a time."""

    model: nn.Module
    net: nn.Module  # what the forward runs: the model, compiled or DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    after_step: Callable[[], None] | None
    objective: Objective | None
    speed: Speed
    label_smoothing: float
    ranks: Ranks | None
    device: torch.device

    def __post_init__(self):
        self.shard = (self.ranks.rank, self.ranks.world) if self.ranks is not None else (0, 1)
        self.scaler = self.speed.scaler(self.device)

    def epoch(self, batches, batch_size: int, n: int) -> tuple[float, float]:
        """One pass over ``batches``: the summed loss and the correct predictions (over all ranks)."""
        world = self.shard[1]
        # The epoch's figures are kept per step and reduced once at the end: one kernel per step
        # (the argmax) instead of six small ones, ~1% of a LeNet-300-100 step (benchmarks/).
        losses, predictions, labels = [], [], []
        for step, (x, y) in enumerate(batches):
            x = self.speed.inputs(x)
            with self.speed.autocast(self.device):
                logits = self.net(x)
                if len(y) == 0:  # a rank's empty part of a short last batch: still in the average
                    loss = scaled = logits.sum() * 0.0
                else:
                    if self.objective is not None:
                        loss = self.objective(logits, x, y)
                    else:
                        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
                    # several ranks: each one's mean weighted by its share of the global batch
                    scaled = loss * (len(y) * world / min(batch_size, n - step * batch_size)) if world > 1 else loss
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                scaled.backward()
                self.optimizer.step()
            if self.after_step is not None:
                self.after_step()
            if self.scheduler is not None:
                self.scheduler.step()
            losses.append(loss.detach().float())
            predictions.append(logits.detach().argmax(1))
            labels.append(y)
        sizes = torch.stack([(y != IGNORE).sum() for y in labels]).float()  # the labels each mean is over
        totals = torch.stack([torch.stack(losses) @ sizes, (torch.cat(predictions) == torch.cat(labels)).sum().float()])
        if self.ranks is not None:
            totals = self.ranks.sum(totals)
        return totals[0].item(), totals[1].item()


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: ``epochs`` of mini-batches of ``batch_size``, ``optimizer`` (a
    partial ``torch.optim`` class, given the parameters and ``lr``), the learning rate decayed per
    step (``schedule="cosine"``) or not (``"constant"``)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: Callable[..., torch.optim.Optimizer]
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()  # schedule="step": the epochs after which lr is multiplied by gamma
    gamma: float = 0.1
    label_smoothing: float = 0.0
    speed: Speed = field(default_factory=Speed)

    def optimizer_for(self, params, steps: int):
        """The optimizer and its per-step scheduler over ``epochs`` of ``steps`` steps: cosine
        decay, steps at ``milestones`` (epochs), or none (constant)."""
        optimizer = self.optimizer(params, lr=self.lr)
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        if self.schedule == "cosine" and self.epochs > 0:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs * steps)
        elif self.schedule == "step":
            at = [m * steps for m in self.milestones]
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, at, self.gamma)
        return optimizer, scheduler


def train(
    model: nn.Module,
    data: Splits,
    recipe: Recipe,
    seed: int,
    epochs: int | None = None,
    after_step: Callable[[], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    desc: str = "train",
    objective: Objective | None = None,
    ranks: Ranks | None = None,
) -> list[EpochResult]:
    """``recipe`` on ``model`` from its current weights (its learning-rate schedule over
    ``recipe.epochs``), stopped after ``epochs`` (default all); batches shuffled by ``seed``. Dense
    training, a lottery level's retraining and fine-tuning all train through here."""
    trained = (p for p in model.parameters() if p.requires_grad)  # (LoRA: the adapters only)
    optimizer, scheduler = recipe.optimizer_for(trained, steps_per_epoch(len(data.train), recipe.batch_size))
    return fit(
        model,
        data.train,
        data.val,
        optimizer,
        recipe.epochs if epochs is None else epochs,
        recipe.batch_size,
        seed,
        scheduler,
        after_step=after_step,
        on_epoch=on_epoch,
        desc=desc,
        objective=objective,
        speed=recipe.speed,
        label_smoothing=recipe.label_smoothing,
        ranks=ranks,
    )
