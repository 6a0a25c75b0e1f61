"""Schedules (``conf/schedule/``): when to prune and how to train in between.

A schedule is a ``schedule._target_`` plug-in (the contract: :class:`~.contracts.Schedule`)
called with a :class:`~.contracts.Session`, the run's model after dense training, and returns the
final mask and the shrunk network (structured) or None. It prunes through
``session.prune(ratio, mask)`` (the run's method, criterion and scope, starting from ``mask``, so
nothing pruned is revived and ``ratio`` is the overall target) and trains through
``session.fine_tune``; both log to the run with a step, so its trajectory is one MLflow chart.

* :class:`Oneshot` (the default): prune to ``ratio``, fine-tune ``finetune.epochs``.
* :class:`Iterative`: ``rounds`` of prune -> fine-tune; every round removes the same fraction of
  what remains (Han et al. 2015; open_lth), the last reaching ``ratio``.
* :class:`Gradual`: automated gradual pruning during fine-tuning (Zhu & Gupta 2017): the target
  rises along ``torch.ao.pruning``'s cubic schedule and the mask is recomputed every ``every`` steps.
* :class:`Lottery`: iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et
  al. 2020): every level prunes ``fraction`` of the remaining weights of the trained network,
  rewinds the survivors to their initial values (or to those after ``rewind`` epochs of dense
  training) and retrains them with the dense recipe; ``control=reinit`` also trains each level's
  mask from a fresh random initialisation. Levels are checkpointed: a killed run, rerun, resumes.
* :class:`Dynamic`: dynamic sparse training at a fixed sparsity (RigL, Evci et al. 2020) during
  fine-tuning: every ``every`` steps each layer drops the lowest-magnitude ``f_t`` of its surviving
  weights and regrows as many where the dense gradient is largest (zero-initialised), ``f_t``
  cosine-decayed from ``fraction`` to 0 at ``end``; ``static=true`` is the control (the same
  initial mask, never updated). ``scope=erk criterion=random`` gives RigL's ERK initialisation.

A user's own schedule is a :class:`~.contracts.Schedule` subclass (or a plain function of the
session) given by ``schedule._target_``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL
from typing_extensions import override

from ..names import Metric
from .contracts import Schedule, Session
from .errors import PruningError, check_positive
from .mask import Mask


def as_schedule(schedule) -> Schedule:
    """``schedule`` itself, or a plain function ``fn(session) -> (mask, shrunk)`` as a
    :class:`~.contracts.Schedule` (no first target of its own, nothing it refuses)."""
    if isinstance(schedule, Schedule):
        return schedule
    if not callable(schedule):
        raise PruningError(f"schedule {schedule!r} is neither a Schedule nor a function of a session")
    return FunctionSchedule(schedule)


@dataclass(frozen=True)
class FunctionSchedule(Schedule):
    rewinds: ClassVar[bool] = True  # a plain function may read session.init: the run keeps it
    fn: Callable[[Session], tuple[Mask, nn.Module | None]]

    def __call__(self, s: Session):
        return self.fn(s)


@dataclass
class Oneshot(Schedule):
    def __call__(self, s: Session):
        mask = s.prune(s.ratio, None)
        return mask, s.fine_tune(mask, s.epochs)


def _check_epochs(value: int | None, name: str) -> None:
    if value is not None and value < 0:
        raise PruningError(f"schedule.{name}={value} must be >= 0")


@dataclass
class Iterative(Schedule):
    rounds: int = 3
    # fine-tuning epochs after each round; None: finetune.epochs spread over the rounds (the same
    # total as oneshot, the last rounds taking the remainder)
    epochs_per_round: int | None = None

    def __post_init__(self):
        check_positive(self.rounds, "schedule.rounds")
        _check_epochs(self.epochs_per_round, "epochs_per_round")

    def first(self, ratio: float) -> float:
        return self.targets(ratio)[0]

    def targets(self, ratio: float) -> list[float]:
        """Overall ratio after each round: each keeps the same fraction of what was left."""
        return [1 - (1 - ratio) ** (k / self.rounds) for k in range(1, self.rounds + 1)]

    def epochs(self, total: int) -> list[int]:
        if self.epochs_per_round is not None:
            return [self.epochs_per_round] * self.rounds
        base, extra = divmod(total, self.rounds)
        return [base + (1 if k >= self.rounds - extra else 0) for k in range(self.rounds)]

    def __call__(self, s: Session):
        mask = shrunk = None
        for k, (target, epochs) in enumerate(zip(self.targets(s.ratio), self.epochs(s.epochs)), start=1):
            mask = s.prune(target, mask, step=k)
            shrunk = s.fine_tune(mask, epochs)
        return mask, shrunk


@dataclass
class Gradual(Schedule):
    initial: float = 0.0  # s_i, the sparsity of the first update
    start: float = 0.0  # t_0, as a fraction of the fine-tuning steps
    end: float = 0.75  # the fraction of the fine-tuning steps by which the target reaches ratio
    every: int = 100  # delta t: steps between mask updates

    def __post_init__(self):
        if not 0 <= self.initial < 1:
            raise PruningError(f"schedule.initial={self.initial} is out of range: expected 0 <= initial < 1")
        if not 0 <= self.start < self.end <= 1:
            raise PruningError(f"schedule.start={self.start}, schedule.end={self.end}: expected 0 <= start < end <= 1")
        check_positive(self.every, "schedule.every")

    @override
    def first(self, ratio: float) -> float:
        return self.initial

    def updates(self, ratio: float, total_steps: int) -> dict[int, float]:
        """Step -> target sparsity: s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n dt))^3 at
        t = t_0, t_0 + dt, ..., t_0 + n dt (the last at or before ``end``)."""
        t0 = int(self.start * total_steps)
        n = (min(int(self.end * total_steps), total_steps - 1) - t0) // self.every  # steps run 0 .. total - 1
        if n < 1:
            raise PruningError(
                f"schedule=gradual: {total_steps} fine-tuning steps leave no room for an update every "
                f"{self.every} steps between start={self.start} and end={self.end}; lower schedule.every"
            )
        steps = [t0 + j * self.every for j in range(n + 1)]
        return {t: CubicSL.sparsity_compute_fn(self.initial, ratio, t, t0, self.every, n) for t in steps}

    def __call__(self, s: Session):
        updates = self.updates(s.ratio, s.epochs * s.steps_per_epoch)
        state: dict = {"step": 0, "mask": None, "hold": None}

        def after_step():
            t = state["step"]
            state["step"] += 1
            if t in updates:
                state["mask"] = s.prune(updates[t], state["mask"], step=t, target=updates[t])
                state["hold"] = state["mask"].hold(s.model)
            elif state["hold"] is not None:
                state["hold"]()

        s.fine_tune(None, s.epochs, after_step=after_step)
        return state["mask"], s.shrunk(state["mask"])


@dataclass
class Lottery(Schedule):
    rewinds: ClassVar[bool] = True  # the survivors restart from the initialisation (or an early epoch)
    fraction: float = 0.2  # of the remaining weights, pruned at every level
    rewind: int = 0  # the dense-training epoch the survivors restart from (0: the initialisation)
    control: str = "ticket"  # ticket | reinit: each level's mask also trained from a fresh initialisation
    # the output layer's own fraction per level (Frankle & Carbin: half the others'); None: it is
    # pruned with the other layers by the scope
    output_fraction: float | None = None

    def __post_init__(self):
        for name in ("fraction", "output_fraction"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise PruningError(f"schedule.{name}={value} is out of range: expected 0 < {name} < 1")
        _check_epochs(self.rewind, "rewind")
        if self.control not in ("ticket", "reinit"):
            raise PruningError(f"schedule.control={self.control!r} is not allowed: expected one of ticket, reinit")

    def targets(self, ratio: float) -> list[float]:
        """Overall ratio after each level: ``fraction`` of what is left, until ``ratio`` (the last
        level stops there): 0.2 a level reaches 3.6% of the weights at level 15."""
        if ratio <= 0:
            return [0.0]
        levels = max(1, math.ceil(math.log(1 - ratio) / math.log(1 - self.fraction) - 1e-9))
        return [min(1 - (1 - self.fraction) ** k, ratio) for k in range(1, levels + 1)]

    def first(self, ratio: float) -> float:
        return self.targets(ratio)[0]

    def __call__(self, s: Session):
        targets = self.targets(s.ratio)
        saved = s.resume()
        if saved is None:
            assert s.init is not None, "a lottery rewinds: the runner keeps the initial weights"
            if self.rewind:
                rewound = copy.deepcopy(s.model)
                rewound.load_state_dict(s.init)
                # dense training's first epochs again (the same seed, batches and schedule)
                s.train(rewound, None, seed=0, epochs=self.rewind, desc=f"lottery: rewind point, epoch {self.rewind}")
                rewind = copy.deepcopy(rewound.state_dict())
            else:
                rewind = s.init  # read from (load_state_dict copies), never changed: no second copy
            val, test = s.evaluate(s.model)
            saved = {
                "level": 0,
                "rewind": rewind,
                "mask": None,
                "weights": None,
                "reinit": None,
                "history": [
                    (0, {Metric.LEVEL_TEST_ACCURACY: test, Metric.LEVEL_VAL_ACCURACY: val, Metric.LEVEL_REMAINING: 1.0})
                ],
            }
        else:
            s.model.load_state_dict(saved["weights"])
            s.log({Metric.SCHEDULE_RESUMED_AFTER: saved["level"]}, saved["level"])
        for step, metrics in saved["history"]:  # a resumed run shows the levels done before, too
            s.log(metrics, step)
        mask = Mask.from_state(saved["mask"]) if saved["mask"] is not None else None
        reinit = saved["reinit"]
        for level in range(saved["level"] + 1, len(targets) + 1):
            # by the trained weights (magnitude, or the run's criterion)
            last = None if self.output_fraction is None else 1 - (1 - self.output_fraction) ** level
            mask = s.prune(targets[level - 1], mask, step=level, target=targets[level - 1], last=last)
            s.model.load_state_dict(saved["rewind"])
            mask.apply(s.model)
            s.train(s.model, mask, seed=level, desc=f"lottery level {level}/{len(targets)}")
            val, test = s.evaluate(s.model)
            metrics = {
                Metric.LEVEL_TEST_ACCURACY: test,
                Metric.LEVEL_VAL_ACCURACY: val,
                Metric.LEVEL_REMAINING: 1 - mask.sparsity,
            }
            if self.control == "reinit":
                control = copy.deepcopy(s.model)
                control.load_state_dict(s.fresh(level))
                mask.apply(control)
                s.train(control, mask, seed=level, desc=f"lottery level {level}/{len(targets)}, reinit")
                reinit = copy.deepcopy(control.state_dict())
                val, test = s.evaluate(control)
                metrics.update({Metric.REINIT_TEST_ACCURACY: test, Metric.REINIT_VAL_ACCURACY: val})
            s.log(metrics, level)
            # a resumed run logs the history again, the level's target too (the analysis reads it)
            done = {**metrics, Metric.SCHEDULE_TARGET: targets[level - 1]}
            saved.update(
                level=level,
                mask=mask.to_state(),
                weights=copy.deepcopy(s.model.state_dict()),
                reinit=reinit,
                history=[*saved["history"], (level, done)],
            )
            s.checkpoint(saved)
        if self.control == "reinit":  # the run's result is the control's
            s.model.load_state_dict(reinit)
        return mask, s.shrunk(mask)


@dataclass
class Dynamic(Schedule):
    every: int = 100  # delta T: steps between mask updates
    fraction: float = 0.3  # alpha: the share of each layer's surviving weights moved at the first update
    end: float = 0.75  # T_end, a fraction of the fine-tuning steps: no update after it
    static: bool = False  # the control: the same initial mask, never updated

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise PruningError(f"schedule.fraction={self.fraction} is out of range: expected 0 < fraction <= 1")
        if not 0 < self.end <= 1:
            raise PruningError(f"schedule.end={self.end} is out of range: expected 0 < end <= 1")
        check_positive(self.every, "schedule.every")

    def moved(self, t: int, t_end: int) -> float:
        """f_t = alpha / 2 (1 + cos(pi t / T_end)): the share moved at step t (0 from T_end on)."""
        return self.fraction / 2 * (1 + math.cos(math.pi * t / t_end)) if t < t_end else 0.0

    def check(self, mask: Mask) -> None:
        if mask.structural:
            raise PruningError("schedule=dynamic moves single weights: use method=unstructured")

    def __call__(self, s: Session):
        mask = s.prune(s.ratio, None)
        self.check(mask)
        t_end = int(self.end * s.epochs * s.steps_per_epoch)
        params = dict(s.model.named_parameters())
        step, hold = 0, mask.hold(s.model)

        def after_step() -> None:
            nonlocal step, mask, hold
            t = step
            step += 1
            if not self.static and t > 0 and t % self.every == 0 and t < t_end:
                f = self.moved(t, t_end)
                new = regrow(mask, params, f)
                changed = sum(int((new.masks[n] != mask.masks[n]).sum()) for n in new.prunable)
                mask, hold = new, new.hold(s.model)
                s.log(
                    {
                        Metric.SCHEDULE_SPARSITY: new.sparsity,
                        Metric.SCHEDULE_CHANGED: changed,
                        Metric.SCHEDULE_FRACTION: f,
                    },
                    t,
                )
            hold()

        s.fine_tune(None, s.epochs, after_step=after_step)
        return mask, None


def regrow(mask: Mask, params: dict, fraction: float) -> Mask:
    """RigL's update of every prunable layer: drop the ``fraction`` of its surviving weights with
    the smallest magnitude, then grow as many where the last backward pass's gradient is largest
    in magnitude among the weights now off (a dropped one may come back). Counts are unchanged."""
    masks = dict(mask.masks)
    for name in mask.prunable:
        w, keep = params[name], mask.masks[name]
        alive = int(keep.sum())
        k = int(fraction * alive)
        if k == 0 or w.grad is None:
            continue
        flat = keep.flatten().clone()
        magnitude = w.detach().abs().flatten().cpu().masked_fill(~flat, float("inf"))
        flat[magnitude.topk(k, largest=False).indices] = False
        gradient = w.grad.detach().abs().flatten().cpu().masked_fill(flat, -1.0)
        flat[gradient.topk(k).indices] = True
        masks[name] = flat.view_as(keep).to(keep.device)
    return Mask(masks, mask.prunable, mask.channels)
