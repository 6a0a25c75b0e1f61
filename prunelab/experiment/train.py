"""Training and evaluation loops, used for dense training and for fine-tuning with a mask held.

Data are in-memory tensors, batched by indexing with a seeded permutation. The loop is the plain
PyTorch loop (benchmarks/ compares it with a hand-written one); the only extra per step is
``after_step`` (the mask re-zeroing during fine-tuning). A :class:`Recipe` says how a network is
trained (the ``train`` and ``finetune`` values of the config).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.splits import Split, Splits, labelled
from ..errors import UserError
from ..names import IGNORE

log = logging.getLogger(__name__)


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (the loss diverged); the message says what to change."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA): same seed -> same numbers on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batches(
    split: Split, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``split``: shuffled when a generator is given, in order otherwise."""
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.x.device) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            yield split.x[start : start + batch_size], split.y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield split.x[idx], split.y[idx]


# The most logits one evaluation batch holds (float32: 256 MiB). A language model's are (batch,
# vocabulary, seq_len): 0.1G a window for OPT's 50k tokens x 2048, so its batches are a window or two.
MAX_LOGITS = 1 << 26


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``split`` (eval mode; training mode restored), in
    batches of ``batch_size`` samples or fewer: as many as keep the logits within
    :data:`MAX_LOGITS` (the first batch, one sample, says how large a sample's are)."""
    was_training = model.training
    model.eval()
    loss, correct = torch.zeros((), device=split.x.device), torch.zeros((), device=split.x.device)
    start, size = 0, 1
    while start < len(split):
        x, y = split.x[start : start + size], split.y[start : start + size]
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        start += size
        size = max(1, min(batch_size, MAX_LOGITS // max(1, logits[0].numel())))
    model.train(was_training)
    n = labelled(split.y)  # samples, or tokens for a language model (one label per position)
    return {"loss": loss.item() / n, "accuracy": correct.item() / n}


def scores(model: nn.Module, split: Split, prefix: str = "", result: dict | None = None) -> dict[str, float]:
    """``{prefix}accuracy``, and ``{prefix}perplexity`` (exp of the mean loss per token) where
    ``split`` has a label per position (a language model's): the figures a run logs. ``result``:
    ``evaluate(model, split)`` when the caller has it already (an LM's test pass costs seconds)."""
    result = evaluate(model, split) if result is None else result
    return {f"{prefix}accuracy": result["accuracy"], **perplexity(model, split, prefix, result)}


def perplexity(model: nn.Module, split: Split, prefix: str = "", result: dict | None = None) -> dict[str, float]:
    """``{prefix}perplexity`` where ``split`` has a label per position (a language model's), else
    nothing, and no evaluation spent on it."""
    if split.y.dim() <= 1:
        return {}
    result = evaluate(model, split) if result is None else result
    return {f"{prefix}perplexity": math.exp(min(result["loss"], 700.0))}


# A training loss other than the cross-entropy: (logits, inputs, labels) -> loss.
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
) -> list[EpochResult]:
    """Train for ``epochs``; ``after_step`` runs after every optimizer step (mask hold),
    ``scheduler`` steps once per batch, ``on_epoch`` receives each epoch's figures. The loss is
    the cross-entropy, or ``objective(logits, inputs, labels)`` (distillation)."""
    generator = torch.Generator().manual_seed(seed)
    history = []
    steps = (len(train) + batch_size - 1) // batch_size
    model.train()
    for epoch in range(1, epochs + 1):
        # The epoch's figures are kept per step and reduced once at the end: one kernel per step
        # (the argmax) instead of six small ones, ~1% of a LeNet-300-100 step (benchmarks/).
        losses, predictions, labels = [], [], []
        bar = tqdm(
            batches(train, batch_size, generator),
            total=steps,
            leave=False,
            desc=f"{desc} {epoch}/{epochs}",
            disable=None,
        )
        for x, y in bar:
            logits = model(x)
            loss = F.cross_entropy(logits, y) if objective is None else objective(logits, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
            predictions.append(logits.detach().argmax(1))
            labels.append(y)
        sizes = torch.stack([(y != IGNORE).sum() for y in labels]).float()  # the labels each mean is over
        total_loss = torch.stack(losses).float() @ sizes
        correct = (torch.cat(predictions) == torch.cat(labels)).sum()
        result = EpochResult(
            epoch,
            total_loss.item() / labelled(train.y),
            correct.item() / labelled(train.y),
            evaluate(model, val)["accuracy"] if len(val) else float("nan"),
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
    return history


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

    def optimizer_for(self, params, steps: int):
        """The optimizer and, for a cosine schedule, its per-step scheduler over ``epochs`` of
        ``steps`` steps."""
        optimizer = self.optimizer(params, lr=self.lr)
        scheduler = None
        if self.schedule == "cosine" and self.epochs > 0:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs * steps)
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
) -> list[EpochResult]:
    """``recipe`` on ``model`` from its current weights (its learning-rate schedule over
    ``recipe.epochs``), stopped after ``epochs`` (default all); batches shuffled by ``seed``. Dense
    training, a lottery level's retraining and fine-tuning all train through here."""
    optimizer, scheduler = recipe.optimizer_for(model.parameters(), steps_per_epoch(len(data.train), recipe.batch_size))
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
    )
