"""Plans: how much of each set (a layer's weights, a channel group's channels) a pruning kept.

Every pruning returns its plan (``Mask.plan``); a run logs it as ``plan.json``. ``scope=plan
plan=<file or runs:/RUN_ID/plan.json>`` (:class:`FromPlan`) applies a saved plan to another run:
another seed, another fine-tuning budget, another model whose layer names and shapes match. Each
set then keeps exactly as many units as the plan says, chosen by the run's own criterion, so the
per-layer sparsities are reproduced exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

from .allocation import keep_count
from .contracts import Scope, Units
from .errors import PruningError

FORMAT = 1


def plan_of(kind: str, sets: dict[str, tuple[int, int, tuple]]) -> dict:
    """``sets``: name -> (units, kept, shape of the scores)."""
    return {
        "format": FORMAT,
        "unit": kind,
        "sets": {
            name: {"units": n, "kept": k, "shape": list(shape), "ratio": 1 - k / n if n else 0.0}
            for name, (n, k, shape) in sets.items()
        },
    }


def load_plan(source: str | Path | dict) -> dict:
    """A plan from a dict, a JSON file, or an MLflow artifact URI (``runs:/RUN_ID/plan.json``)."""
    if isinstance(source, dict):
        return source
    if source is None or str(source) == "":
        raise PruningError("scope=plan needs the plan to apply: plan=<file> or plan=runs:/RUN_ID/plan.json")
    text = str(source)
    try:
        if "://" in text or text.startswith("runs:/"):
            import mlflow

            text = Path(mlflow.artifacts.download_artifacts(text)).read_text()
        else:
            text = Path(text).expanduser().read_text()
        plan = json.loads(text)
    except Exception as e:  # a missing file or run, bad JSON: one line naming the source
        raise PruningError(
            f"cannot read the plan {source}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if not isinstance(plan, dict) or "sets" not in plan:
        raise PruningError(f"{source} is not a prunelab plan (no 'sets')")
    return plan


@dataclass
class FromPlan(Scope):
    """Keep in every set exactly the plan's count (the run's ``ratio`` is not used: the plan
    decides). A plan that does not fit the model is one error naming every misfit."""

    source: Any = None

    @override
    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        plan = load_plan(self.source)
        sets = plan["sets"]
        if plan.get("unit", units.kind) != units.kind:
            raise PruningError(f"the plan prunes {plan['unit']}, this method prunes {units.kind}")
        scores = {name: units.score(name) for name in units.sizes}
        missing = sorted(n for n in sets if n not in units.sizes)
        extra = sorted(n for n in units.sizes if n not in sets)
        shapes = sorted(
            f"{n} (plan {tuple(sets[n]['shape'])}, model {tuple(s.shape)})"
            for n, s in scores.items()
            if n in sets and tuple(sets[n]["shape"]) != tuple(s.shape)
        )
        problems = [
            f"layers missing from the model: {', '.join(missing)}" if missing else "",
            f"layers the plan does not cover: {', '.join(extra)}" if extra else "",
            f"different shapes: {', '.join(shapes)}" if shapes else "",
        ]
        if any(problems):
            raise PruningError("the plan does not fit this model: " + "; ".join(p for p in problems if p))
        return {name: keep_count(s, int(sets[name]["kept"])) for name, s in scores.items()}
