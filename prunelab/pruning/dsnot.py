"""DSnoT (Zhang et al., ICLR 2024): a training-free refit of a post-training mask.

A pruned row ``i`` changes its output, on average over the calibration windows, by
``e_i = Σ_{j pruned} W_ij · x̄_j`` (``x̄_j``: input ``j``'s sum over a window's tokens, averaged over
the windows, :attr:`Seen.mean`). DSnoT swaps, row by row and one pair per cycle, a pruned weight
back in and a kept one out so that ``e_i`` shrinks, for at most ``cycles`` cycles and while
``|e_i| > threshold``:

* **grown back**: with ``e_i > 0`` the pruned weight of largest ``W_ij x̄_j / var_j`` (``var_j``:
  the input's variance within a window, averaged, :attr:`Seen.var`), with ``e_i ≤ 0`` the smallest;
* **pruned** (unstructured): with ``e_i < 0`` a kept weight of positive ``W_ij x̄_j`` (the one of
  lowest Wanda score ``|W_ij| ‖X_j‖`` among them), else one of negative ``W_ij x̄_j`` (lowest Wanda
  score first); (N:M) the kept weight of lowest initial score in the grown weight's group of ``m``,
  so the pattern holds, and only while the swap leaves the sign of ``e_i`` as it was.

The weights are the layer's dense ones under the new mask, nothing is updated: after SparseGPT,
its mask is refitted and its reconstruction given up, as DSnoT's code runs SparseGPT
(``--initial_method sparsegpt`` takes SparseGPT's scores and updates no weight).

Matched by reading and by this package's tests (tests/test_dsnot.py) with zyxxmu/DSnoT
``lib/prune.py`` (``prune_DSnoT``, ``return_reorder_indice``) and ``lib/layerwrapper.py``
(``WrappedGPT``) at 4c029dfa66cae3dba7f4a77c78a524e272fc638c, with its defaults
(``--max_cycle_time 50``, ``--update_threshold 0.1``, ``--pow_of_var_regrowing 1``,
``--skip_layer mlp``: the blocks' MLP layers keep the initial mask). Its ``--without_same_sign`` is
declared ``type=bool, default=True``, so the sign check is off for unstructured masks whatever is
passed; here too (N:M keeps it, as there). Two differences kept on purpose:

* The reference moves a row's candidate pointers on after the row has stopped, and takes the next
  candidate even where it is a kept weight (grown) or a pruned one (pruned): on a narrow layer
  (fewer pruned weights of one sign in a row than cycles) that prunes kept weights and the
  sparsity grows past the ratio. Here a row stops where it stops, or where its next candidate is
  not one (the sparsity, and an N:M pattern, stay exactly as the mask had them).
* The reference orders kept weights with ``W_ij x̄_j = 0`` (rare: a zero weight or input) as column
  0; here between the negative and the positive ones, in Wanda order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .errors import PruningError, check_positive
from .seen import Seen, diagonal_of

REFITS = ("dsnot",)


@dataclass(frozen=True)
class Dsnot:
    """DSnoT's options (the reference's names in brackets)."""

    cycles: int = 50  # at most this many swaps per row (max_cycle_time)
    threshold: float = 0.1  # a row stops once |e_i| is at most this (update_threshold), in x̄'s units
    # layers left with the initial mask, by name (skip_layer=mlp: the blocks' MLP layers)
    skip: Sequence[str] = field(default_factory=lambda: ["*.mlp.*"])

    def __post_init__(self):
        check_positive(self.cycles, "method.refit_cycles")
        if self.threshold < 0:
            raise PruningError(f"method.refit_threshold={self.threshold} must be >= 0")

    def refits(self, name: str) -> bool:
        """Whether layer ``name`` is refitted (not matched by :attr:`skip`)."""
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.skip)


def output_error(weight: torch.Tensor, removed: torch.Tensor, gram: torch.Tensor) -> float:
    """``‖(W − Ŵ) X‖² / ‖W X‖²`` over the calibration tokens, from the Gram matrix (``removed``:
    ``W − Ŵ``): what the refit is for, logged before and after it."""
    g = gram.double()
    w, d = weight.double(), removed.double()
    total = float(((w @ g) * w).sum())
    return float(((d @ g) * d).sum()) / total if total > 0 else 0.0


def _pruning_order(dsnot: torch.Tensor, wanda: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Every row's columns in the order the pruning side takes them: the kept weights of negative
    ``W x̄`` by Wanda score ascending, those of zero, those of positive ``W x̄`` by Wanda score
    descending (the low pointer takes from the front, the high one from the back of the kept), the
    pruned ones last (never candidates)."""
    rows, cols = dsnot.shape
    by_wanda = torch.sort(wanda.masked_fill(pruned, float("inf")), dim=1, stable=True)[1]
    value = dsnot.gather(1, by_wanda)
    kept = ~pruned.gather(1, by_wanda)
    place = torch.arange(cols, device=dsnot.device).expand(rows, cols)
    kind = torch.where(value < 0, 0, torch.where(value == 0, 1, 2))
    key = kind * cols + torch.where(kind == 2, cols - 1 - place, place)
    key = torch.where(kept, key, 3 * cols + place)
    return by_wanda.gather(1, torch.argsort(key, dim=1))


@torch.no_grad()
def refit(
    weight: torch.Tensor,
    pruned: torch.Tensor,
    seen: Seen,
    options: Dsnot,
    pattern: tuple[int, int] | None = None,
    scores: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """``(pruned, swaps)``: ``pruned`` (True: pruned) of the dense ``weight`` refitted by DSnoT's
    swaps (the module docstring), and how many were made. ``pattern``: N:M ``(n, m)``, each swap
    within a group of ``m``, the pruning side by ``scores`` (the method's own: its lowest kept
    weight in the group goes). ``fixed``: weights pruned before this prune, never grown back."""
    w = weight.detach().double()
    pruned = pruned.clone()
    dsnot = w * seen.mean.double().to(w.device)
    error = (dsnot * pruned).sum(dim=1)
    sign = torch.sign(error)
    growable = pruned if fixed is None else pruned & ~fixed
    grow_order = torch.sort((dsnot * pruned) / seen.var.double().to(w.device), dim=1, stable=True)[1]
    rows, cols = w.shape
    row = torch.arange(rows, device=w.device)
    grow_at = torch.stack([torch.zeros(rows, dtype=torch.long, device=w.device), torch.full_like(row, cols - 1)])
    if pattern is None:
        wanda = w.abs() * diagonal_of(seen.gram).clamp_min(0).sqrt().to(w.device)  # type: ignore[arg-type]
        prune_order = _pruning_order(dsnot, wanda, pruned)
        prune_at = torch.stack([torch.zeros_like(row), (~pruned).sum(dim=1) - 1])
    else:
        m = pattern[1]
        initial = (scores if scores is not None else w.abs()).double().masked_fill(pruned, float("inf"))
        groups = torch.arange(m, device=w.device)
    active = torch.ones(rows, dtype=torch.bool, device=w.device)
    swaps = 0
    for _ in range(options.cycles):
        if not active.any():
            break
        high = error > 0
        grow = grow_order[row, grow_at[high.long(), row].clamp(0, cols - 1)]
        if pattern is None:
            low = error < 0
            cut = prune_order[row, prune_at[low.long(), row].clamp(0, cols - 1)]
            candidate = prune_at[low.long(), row] >= 0
        else:
            group = (grow - grow % m).unsqueeze(1) + groups
            choice = initial.gather(1, group).argmin(dim=1)
            cut = group[row, choice]
            candidate = initial[row, cut].isfinite()
            initial[row, cut] = float("inf")
        after = error + dsnot[row, cut] - dsnot[row, grow]
        ok = active & (error.abs() > options.threshold) & growable[row, grow] & ~pruned[row, cut] & candidate
        if pattern is not None:
            ok &= sign == torch.sign(after)
        pruned[row[ok], cut[ok]] = True
        pruned[row[ok], grow[ok]] = False
        growable[row[ok], grow[ok]] = False
        error = torch.where(ok, after, error)
        swaps += int(ok.sum())
        grow_at[high.long(), row] += torch.where(high, -1, 1)
        if pattern is None:
            prune_at[low.long(), row] += torch.where(low, -1, 1)
        active = ok
    return pruned, swaps


__all__ = ["REFITS", "Dsnot", "output_error", "refit"]
