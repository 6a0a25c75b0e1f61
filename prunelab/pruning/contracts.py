"""The four plug-in kinds and what they hand each other, in one place.

A user's choice is a config group of ``_target_`` plug-ins (``conf/<group>/``); each kind has one
base class here that states what a plug-in must provide and what it may override:

* a **criterion** (``conf/criterion/``) only scores: :class:`Criterion` prepares a :class:`Scorer`
  for the model (and the data, if it looks at them), which scores every weight and, for
  structured methods, every channel. A plain function ``fn(weight) -> scores`` is a criterion too.
* a **scope** (``conf/scope/``) only allocates: :class:`Scope` turns scored :class:`Units` into
  which units survive, at an overall ratio.
* a **method** (``conf/method/``) defines the unit and what removing it zeroes: :class:`Method`
  scores its units with the criterion, lets the scope allocate, and returns :class:`Pruned`.
* a **schedule** (``conf/schedule/``) decides when to prune and how to train in between:
  :class:`Schedule` drives a :class:`Session`, the run as the runner offers it.

A plug-in's options are its constructor's arguments (the dataclass fields): an option it does not
take is an error naming the ones it does (``plugins.py``), from the command line and from Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .compensate import Compensation
from .data import PruneData
from .mask import Mask

# --- scope ------------------------------------------------------------------------------------


@dataclass
class Units:
    """What a method asks its scope to allocate: named sets of scored units (a layer's weights, a
    channel group's channels).

    ``sizes``: units per set; ``score(name)``: the set's scores (the same values on every call;
    units pruned earlier score ``-inf``, so they stay pruned and count towards the ratio);
    ``kind``: ``weights`` or ``channels``; ``cost(name)``: the MACs one unit of the set accounts
    for (for scopes that trade accuracy against MACs); ``trial(keeps, samples)``: validation
    accuracy of the model with only the given sets pruned as ``keeps`` says (for scopes that
    measure, like the sensitivity scan); ``report``: files the scope leaves for the run
    (``sensitivity.csv``), name -> str, bytes or a function returning them (made only when the run
    logs it, e.g. a figure)."""

    sizes: dict[str, int]
    score: Callable[[str], torch.Tensor]
    kind: str = "weights"
    trial: Callable[..., float] | None = None
    cost: Callable[[str], float] | None = None
    report: dict[str, Any] = field(default_factory=dict)


class Scope:
    """Allocation: ``scope(units, ratio) -> {set name: bool tensor shaped like its scores}`` (True =
    kept), removing ``ratio`` of all units. Must provide ``__call__``; may set or override:

    * ``measures = True``: it evaluates the model (``units.trial``). The runner's check before
      dense training, on untrained weights, then stands it in by the local scope;
    * ``for_budget()``: the scope a MACs-budget search uses (one that can spend its choice on
      MACs says so here); itself by default.
    """

    measures: ClassVar[bool] = False

    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def for_budget(self) -> Scope:
        return self


# --- criterion --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coupled:
    """One layer of a channel group: its weight's name, the weight, and ``place``, which turns a
    tensor shaped like that weight into rows indexed by the group's channels, ``(channels, -1)``."""

    name: str
    weight: torch.Tensor
    place: Callable[[torch.Tensor], torch.Tensor]


class Scorer:
    """Scores for one model. Must provide ``weights(name, weight)`` (shaped like ``weight``); may
    override ``channels``, a channel group's scores from every layer whose output channel it is
    (``rows``: one :class:`Coupled` each; a residual addition couples several). By default a
    channel scores the sum of its weights' scores (Taylor's "summed over the channel group")."""

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def channels(self, name: str, rows: Sequence[Coupled], n: int) -> torch.Tensor:
        del name  # the default needs no group name: each row names its layer
        total = torch.zeros(n, dtype=torch.float64)
        for c in rows:
            total += c.place(self.weights(c.name, c.weight).double()).sum(dim=1).cpu()
        return total.float()


class Criterion:
    """Importance: ``prepare(model, data, seed) -> Scorer``. Criteria that look at the network or
    at data first (Taylor runs a few training batches) do it here; data reach a criterion through
    :class:`PruneData` only (``data.batches(n)``: ``n`` seeded training mini-batches)."""

    def prepare(self, model: nn.Module, data: PruneData | None, seed: int) -> Scorer:
        raise NotImplementedError


# --- method -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pruned:
    """What pruning returns: the mask, the plan (how much of each set was kept: ``plan.py``, logged
    as ``plan.json``), the files the scope reported, the overall ratio pruned (a MACs budget
    search finds it), and figures the method logs of its own work (a resumed prune's
    ``prune.resumed_block``)."""

    mask: Mask
    plan: dict
    report: dict = field(default_factory=dict, repr=False)
    ratio: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)
    # what the model gets besides the mask, once (method.compensate: FLAP's biases; compensate.py)
    compensation: Compensation | None = None

    def apply(self, model: nn.Module) -> nn.Module:
        """``model`` (in place; returned) pruned: the compensation where the method made one (its
        new biases, which the mask covers), then the mask. Apply it once: the mask alone is what
        later steps hold."""
        if self.compensation is not None:
            self.compensation.apply(model)
        return self.mask.apply(model)


# What a method may take besides the model and the ratio: the plug-ins a user chooses (criterion,
# scope) and the inputs the runner supplies, each with the words an error says it in.
TAKEABLE = {
    "criterion": "a criterion",
    "scope": "a scope",
    "calibration": "calibration data",
    "example_inputs": "example inputs",
    "blocks": "the model's repeated blocks",
    "progress": "a folder to resume from",
}
CHOSEN = ("criterion", "scope")  # the takeable things that are config groups


class Method:
    """A pattern: ``method(model, ratio, scope=, criterion=, seed=, example_inputs=, data=, mask=)
    -> Pruned``. Must provide ``__call__``, which does not modify the model (post-training methods
    that reconstruct the weights, SparseGPT, say so) and starts from ``mask``: entries it pruned
    score ``-inf``, so they stay pruned and count towards ``ratio``, the overall target. Its options
    are its fields; ``ignore`` (fnmatch patterns of layers left dense) is one of them.

    ``takes`` declares what it uses of :data:`TAKEABLE`: a criterion or scope it does not take is
    refused when a user chooses one (``method=wanda criterion=l1`` is one line saying what Wanda
    takes), and the default one it is passed anyway means nothing. A method that takes
    ``progress`` is also passed ``progress=`` (a folder of its own, one per run key, where it keeps
    what a killed run resumes from; None: nothing kept) by a run that keeps it; no other is."""

    ignore: Sequence[str] = ()
    takes: ClassVar[frozenset[str]] = frozenset({"criterion", "scope", "calibration", "example_inputs"})
    # The criteria it takes, where it takes only some (None: any): Wanda takes RIA's score in place
    # of its own, and no other; the default one it is passed otherwise means its own score.
    criteria: ClassVar[frozenset[str] | None] = None

    def __call__(
        self,
        model: nn.Module,
        ratio: float,
        *,
        scope: Scope,
        criterion: Criterion,
        seed: int = 0,
        example_inputs: torch.Tensor | None = None,
        data: PruneData | None = None,
        mask: Mask | None = None,
    ) -> Pruned:
        raise NotImplementedError


def refuse_untaken(method: Any, label: str, chosen: dict[str, str]) -> None:
    """Raise :class:`~.errors.PruningError` for the first of ``chosen`` (group -> the option a user
    chose: ``{"criterion": "l1"}``) that the method (class or object) ``label`` names does not take."""
    from .errors import PruningError

    takes = getattr(method, "takes", frozenset(TAKEABLE))
    for group, option in chosen.items():
        if group not in takes:
            what = ", ".join(words for name, words in TAKEABLE.items() if name in takes) or "nothing but the ratio"
            raise PruningError(f"{label} takes no {group} ({group}={option}): it takes {what}; drop {group}={option}")
    criteria = getattr(method, "criteria", None)
    criterion = chosen.get("criterion")
    if criterion is not None and criteria is not None and criterion not in criteria:
        allowed = " or ".join(f"criterion={c}" for c in sorted(criteria))
        raise PruningError(
            f"{label} takes {allowed} in place of its own score, not criterion={criterion}; drop criterion={criterion}"
        )


# --- schedule ---------------------------------------------------------------------------------


class Session:
    """The run as a schedule sees it (the runner provides it: ``prunelab.experiment.session``).

    Attributes: ``model`` (trained dense, modified in place), the overall ``ratio``, the configured
    fine-tuning ``epochs`` and ``steps_per_epoch``, ``init`` (the model's weights before dense
    training; kept only for a schedule that says it ``rewinds``, else None). Methods below; each
    logs to the run with a step, so a schedule's trajectory is one MLflow chart."""

    model: nn.Module
    ratio: float
    epochs: int
    steps_per_epoch: int
    init: dict | None

    def prune(
        self,
        ratio: float,
        mask: Mask | None,
        step: int | None = None,
        target: float | None = None,
        last: float | None = None,
    ) -> Mask:
        """The run's method, criterion and scope to ``ratio`` from ``mask``, applied to the model
        (``last``: the output layer pruned on its own to that ratio, the rest to ``ratio``); logs
        ``pruned.*`` and, at ``step``, ``schedule.sparsity`` / ``channels`` / ``changed`` /
        ``target``."""
        raise NotImplementedError

    def fine_tune(
        self, mask: Mask | None, epochs: int, after_step: Callable[[], None] | None = None
    ) -> nn.Module | None:
        """Train ``epochs`` with ``mask`` held (``after_step`` instead, when given: it holds the mask
        itself), logging ``finetune.*`` per epoch, numbered on from the previous call; returns the
        shrunk network (structured) or None."""
        raise NotImplementedError

    def shrunk(self, mask: Mask | None) -> nn.Module | None:
        """The physically shrunk twin of the model (structured), else None."""
        raise NotImplementedError

    def train(
        self, net: nn.Module, mask: Mask | None, seed: int, epochs: int | None = None, desc: str = "train"
    ) -> None:
        """The dense-training recipe on ``net`` from its current weights, ``mask`` held (None:
        dense), stopped after ``epochs`` (default all); batches shuffled by ``seed`` (0: dense
        training's own order)."""
        raise NotImplementedError

    def fresh(self, seed: int) -> dict:
        """Another initialisation of the model (its state dict)."""
        raise NotImplementedError

    def evaluate(self, net: nn.Module) -> tuple[float, float]:
        """(validation, test) accuracy of ``net``."""
        raise NotImplementedError

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def resume(self) -> dict | None:
        """The last checkpoint of this run's key (None: start afresh)."""
        raise NotImplementedError

    def checkpoint(self, state: dict) -> None:
        """Write a checkpoint (``torch.save``-able values) atomically."""
        raise NotImplementedError


class Schedule:
    """When to prune and how to train in between: ``schedule(session) -> (mask, shrunk or None)``.
    Must provide ``__call__``; may override ``first(ratio)``, its first target, which the runner
    tries on an untrained copy before dense training (N:M, whose ratio is fixed, cannot step
    through others), and ``check(mask)``, given that trial's mask, to refuse a pattern it cannot
    work with, also then. ``rewinds = True``: it reads ``session.init``, the weights before dense
    training (a second copy of the model, which the run keeps only for such a schedule)."""

    rewinds: ClassVar[bool] = False

    def __call__(self, session: Session) -> tuple[Mask, nn.Module | None]:
        raise NotImplementedError

    def first(self, ratio: float) -> float:
        return ratio

    def check(self, mask: Mask) -> None:
        """Raise for a mask this schedule cannot work with; by default every mask will do."""
