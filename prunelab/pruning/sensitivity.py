"""Automatic per-layer ratios from a sensitivity scan (``scope=sensitivity``).

The scan (Distiller's sensitivity analysis, NNI's sensitivity pruner): each set (layer, or
channel group) is pruned alone at every ratio of a grid, by the run's criterion, and the model is
evaluated on a bounded subset of the validation split, with no fine-tuning (each trial replays
what the forward pass computes before the set instead of recomputing it: ``probe.py``). A set's predicted loss
at ratio r is the accuracy drop, made non-decreasing in r and linear between grid points.

The choice: the per-set ratios that remove the requested overall ``ratio`` of all units with the
least summed predicted loss (each set's loss curve taken as its lower convex hull over the units
it removes, then the Lagrangian solution: every set removes units while one more costs at most
lambda, lambda bisected). Where sets reach lambda together, the step is shared in proportion, so
the overall ratio is met exactly. The scan is logged as ``sensitivity.csv`` and
``sensitivity.png`` (a heatmap); the choice is the run's ``plan.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .allocation import counts, keep_count, keep_ratio
from .contracts import Scope, Units
from .errors import PruningError, check_positive

GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998)


@dataclass
class Sensitivity(Scope):
    grid: list[float] = field(default_factory=lambda: list(GRID))
    samples: int = 1000  # validation examples per evaluation
    # What `ratio` is a fraction of, and what the choice spends the predicted loss on: "units"
    # (weights or channels, like every other scope) or "macs" (a unit weighs the MACs it accounts
    # for); "auto": macs under a MACs budget (budget.macs), units otherwise.
    cost: str = "auto"
    measures = True  # it evaluates the model: pointless on untrained weights (runner's pre-check)

    def __post_init__(self) -> None:
        if self.cost not in ("auto", "units", "macs"):
            raise PruningError(f"scope.cost={self.cost!r} is not allowed: expected one of auto, units, macs")
        if not self.grid or not all(0 < r < 1 for r in self.grid):
            raise PruningError(f"scope.grid={list(self.grid)}: expected ratios in (0, 1)")
        check_positive(self.samples, "scope.samples")
        self.grid = [float(r) for r in self.grid]
        self._scans: dict = {}

    def for_budget(self) -> Sensitivity:
        """Under a MACs budget, ``cost=auto`` spends the predicted loss on MACs."""
        return dataclasses.replace(self, cost="macs") if self.cost == "auto" else self

    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        table = self.scan(units)
        units.report["sensitivity.csv"] = table.to_csv(index=False)
        units.report["sensitivity.png"] = functools.partial(heatmap, table)  # drawn when logged, not in the scan
        weights = None
        if self.cost == "macs":
            if units.cost is None:
                raise PruningError("scope.cost=macs weighs units by their MACs: this method gives no cost per unit")
            weights = {n: units.cost(n) for n in units.sizes}
        # units pruned before (a schedule's earlier rounds) stay pruned: each set's floor
        done = {n: int((~torch.isfinite(units.score(n))).sum()) for n in units.sizes}
        ratios = choose(table, units.sizes, ratio, weights, {n: done[n] / units.sizes[n] for n in units.sizes})
        kept = counts(ratios, units.sizes, None if weights else ratio, done)
        return {name: keep_count(units.score(name), kept[name]) for name in units.sizes}

    def scan(self, units: Units) -> pd.DataFrame:
        """Accuracy with each set pruned alone at each grid ratio (one row per set and ratio,
        ratio 0 = the unpruned model). Kept per model state: a budget search that prunes the same
        model at many ratios scans it once."""
        if units.trial is None:
            raise PruningError("scope=sensitivity evaluates on validation data: pass data=PruneData(train, val)")
        scores = {name: units.score(name) for name in units.sizes}
        key = tuple((n, s.shape, float(s[torch.isfinite(s)].double().sum())) for n, s in scores.items())
        if key not in self._scans:
            base = units.trial({}, self.samples)
            rows = [{"set": name, "units": units.sizes[name], "ratio": 0.0, "accuracy": base} for name in units.sizes]
            for name, s in scores.items():
                for r in self.grid:
                    rows.append(
                        {
                            "set": name,
                            "units": units.sizes[name],
                            "ratio": float(r),
                            "accuracy": units.trial({name: _at_least_one(keep_ratio(s, r), s)}, self.samples),
                        }
                    )
            table = pd.DataFrame(rows)
            table["loss"] = base - table["accuracy"]
            self._scans = {key: table}  # one model state at a time
        return self._scans[key]


def _at_least_one(keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return keep if bool(keep.any()) else keep_count(scores, 1)


def _envelopes(table: pd.DataFrame, sizes: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per set: grid ratios (from 0, capped so one unit is left) and the non-decreasing loss."""
    out = {}
    for name, n in sizes.items():
        rows = table[table["set"] == name].sort_values("ratio")
        r = np.minimum(rows["ratio"].to_numpy(float), (n - 1) / n)
        loss = np.maximum.accumulate(np.maximum(rows["loss"].to_numpy(float), 0.0))
        out[name] = (r, loss)
    return out


def _hull(r: np.ndarray, loss: np.ndarray, n: float) -> tuple[np.ndarray, np.ndarray]:
    """The lower convex hull of (units removed, predicted loss), from (0, 0): along it each
    further unit costs at least as much as the one before (increasing slopes)."""
    hull: list[tuple[float, float]] = []
    for x, y in zip(r * n, loss):
        if hull and x <= hull[-1][0]:
            continue
        while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (x - hull[-1][0]) >= (y - hull[-1][1]) * (
            hull[-1][0] - hull[-2][0]
        ):
            hull.pop()
        hull.append((float(x), float(y)))
    xs, ys = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    return xs, np.diff(ys) / np.diff(xs)


def choose(
    table: pd.DataFrame,
    sizes: dict[str, int],
    ratio: float,
    weights: dict[str, float] | None = None,
    floor: dict[str, float] | None = None,
) -> dict[str, float]:
    """Per-set ratios that remove ``ratio`` of all units with the least summed predicted loss
    (with ``weights``, a cost per unit of each set: ``ratio`` of the total cost), none below its
    ``floor`` (the fraction of the set already pruned).

    Each set's predicted loss, as a function of the units it removes, is replaced by its lower
    convex hull; then every set removes units while the next one costs at most lambda (accuracy
    per unit), and lambda is bisected until the sets together remove ``ratio`` of all units (the
    Lagrangian solution, optimal for the hulls). Where sets reach lambda at once, the step is
    shared in proportion, so the overall ratio is met exactly."""
    env = _envelopes(table, sizes)
    weights = weights or {name: 1.0 for name in sizes}
    floor = floor or {}
    size = {name: sizes[name] * weights[name] for name in sizes}  # a set's total cost
    hulls = {name: _hull(r, loss, size[name]) for name, (r, loss) in env.items()}
    total = sum(size.values())

    def at(lam):
        # a set takes its hull's vertices up to the last whose segment costs <= lam per unit of cost
        ratios = {
            name: max(
                float(xs[int(np.searchsorted(slopes, lam, side="right"))] / size[name]) if size[name] else 0.0,
                floor.get(name, 0.0),
            )
            for name, (xs, slopes) in hulls.items()
        }
        return ratios, sum(size[n] * x for n, x in ratios.items()) / total

    _, reach = at(np.inf)
    if ratio > reach + 1e-12:
        raise PruningError(
            f"scope=sensitivity: the scan's grid (up to {max(table['ratio']):g} per layer) "
            f"removes at most {reach:.4f} of the units, below ratio={ratio:g}"
        )
    top = max((float(sl.max()) for _, sl in hulls.values() if len(sl)), default=0.0)
    lo, hi = -1.0, top + 1.0  # lambda < 0 removes nothing; above every slope, all the grid allows
    for _ in range(100):
        mid = (lo + hi) / 2
        if at(mid)[1] >= ratio:
            hi = mid
        else:
            lo = mid
    (low, below), (high, above) = at(lo), at(hi)
    share = 0.0 if above <= below else (ratio - below) / (above - below)
    return {name: low[name] + min(max(share, 0.0), 1.0) * (high[name] - low[name]) for name in sizes}


def heatmap(table: pd.DataFrame) -> bytes:
    """The scan as a PNG: accuracy drop per set (rows) and ratio (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = table[table["ratio"] > 0].pivot(index="set", columns="ratio", values="loss")
    grid = grid.reindex(list(dict.fromkeys(table["set"])))
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * grid.shape[1], 1.2 + 0.4 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy() * 100, cmap="magma_r", aspect="auto", vmin=0)
    ax.set_xticks(range(grid.shape[1]), [f"{c:g}" for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xlabel("ratio pruned in this set alone")
    fig.colorbar(image, ax=ax, label="validation accuracy drop (points)")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()
