"""Post-training pruning layer by layer from calibration data: Wanda and SparseGPT.

Both prune the prunable ``nn.Linear`` layers in the order the model runs them, each from the Gram
matrix ``XᵀX`` of its inputs ``X`` (tokens x in_features, float64 sums), each layer seeing its
inputs through the layers already pruned. A transformer's repeated blocks (``blocks.py``) are
walked as the papers' code walks them, so the cost is linear in depth: block 0's inputs are
captured once; per block, one pass over them gathers every sublayer's ``XᵀX``
(``method.sequential=block``; ``layer``: one pass per sublayer, each seeing the block's earlier
sublayers pruned), the block is pruned, and its outputs under the pruned weights become the next
block's inputs. Layers outside the blocks (and every layer of a model without blocks) get their
inputs from a pass through the whole model as pruned so far. Wanda (and RIA) read only the Gram
matrix's diagonal, and only it is summed for them (``Seen(full=False)``).

* Wanda (Sun et al. 2024): score ``|W_ij| * ||X_j||_2``, the lowest ``int(cols * ratio)`` of every
  output row pruned (its comparison group); no weight update.
* SparseGPT (Frantar & Alistarh 2023): the weights are pruned column by column and the error of
  each is spread onto the columns not yet visited through the inverse Hessian ``H = XᵀX + λI``
  (``λ = damp * mean(diag H)``), in lazy blocks of ``blocksize`` columns; the mask of a lazy block
  is chosen when it starts (adaptive mask selection) by ``w² / [H⁻¹]_jj²``, as one group over all
  rows (``selection=block``: rows end at different sparsities) or per row (``selection=row``).

Compared by reading and by this package's tests with IST-DASLab/sparsegpt ``sparsegpt.py``
(``fasterprune``) and ``opt.py`` at 147d2159dc4f3e9f73e47b32c04d7b3708f44436, and locuslab/wanda
``lib/prune.py`` (``prune_wanda``) at 8e8fc87b4a2f9955baa7e76e64d5fce7fa8724a6. One difference kept on
purpose: the reference prunes the scores ``<=`` the ``int(size * ratio)``-th smallest of a lazy
block, one more than the ratio (and any ties); here exactly ``int(size * ratio)``.

The calibration inputs come from the dataset's training split or another source it offers
(``calibration``: e.g. ``c4``, :meth:`PruneData.calibration`). ``block_device``: each block is
moved there while it is pruned and back after, the rest of the model staying where it is (the
papers' code keeps one block on the GPU this way).

A run killed mid-way resumes from its last finished block (``progress``: a folder the runner
gives, ``progress.py``), ending with the weights and mask an uninterrupted run gives.

``n`` / ``m`` give the N:M pattern instead (``n`` kept of every ``m`` consecutive inputs, as
``method=nm``); ``ratio`` must then be ``(m - n) / m``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from typing_extensions import override

from ..heap import give_back
from ..names import Metric
from .allocation import Local, as_scope
from .blocks import Inputs, advance, batch_size_for, capture, find_blocks, fold_inputs
from .contracts import Criterion, Method, Pruned, Scope, Units
from .criteria import Ria
from .data import TRAIN, PruneData
from .dsnot import REFITS, Dsnot, output_error, refit
from .errors import PruningError, check_nm, check_positive
from .mask import Bits, Mask
from .methods import current_entries, finish
from .owl import Owl, block_outliers, block_sparsities
from .progress import BlockProgress, work
from .seen import Seen, diagonal_of
from .tracing import OUTPUT_LAYERS, prunable_layers


class _Stop(Exception):
    """Raised by the input hook: the rest of the forward pass is not needed."""


def calibration(data: PruneData | None, samples: int, seed: int, source: str = TRAIN) -> torch.Tensor:
    """``samples`` inputs drawn by ``seed`` from ``source`` (:meth:`PruneData.calibration`; for
    text: ``samples x seq_len`` tokens)."""
    if data is None:
        raise PruningError("this method needs calibration data (the run passes the training split)")
    return data.calibration(samples, seed, source)


@torch.no_grad()
def input_seen(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor | list[Inputs],
    batch_size: int | None = None,
    summed: Callable[[], Seen] = Seen,
) -> Seen:
    """``layer``'s inputs summed (``summed()``: a :class:`Seen`, by default ``XᵀX``) when ``model``
    runs on ``x``: a batch of model inputs (``batch_size`` at a time; None: as a block's pass takes
    them, ``blocks.batch_size_for``), or the inputs a block captured (``blocks.capture``), batch by
    batch."""
    seen = summed()

    def hook(_module, args):
        seen.add(args[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    size = batch_size or (batch_size_for(x) if isinstance(x, torch.Tensor) else 1)
    try:
        batches = x if isinstance(x, list) else [Inputs((x[i : i + size],), {}) for i in range(0, len(x), size)]
        for one in batches:
            with contextlib.suppress(_Stop):
                model(*one.args, **one.kwargs)
    finally:
        handle.remove()
        model.train(was_training)
    if seen.rows == 0:
        raise PruningError("a prunable layer was never run by the model's forward pass: add it to method.ignore")
    return seen


def block_inputs(
    block: nn.Module, inputs: list[Inputs], layers: dict[str, nn.Module], summed: Callable[[], Seen] = Seen
) -> dict[str, Seen]:
    """Each of ``layers``' inputs summed (by name; ``summed()``: a :class:`Seen`, by default
    ``XᵀX``) in one pass of ``block`` over its captured inputs."""
    add = lambda seen, x: (seen or summed()).add(x)
    return fold_inputs(block, inputs, layers, add, passed_on=False)[0]


def _zero_pruned(mask: Mask | None, name: str, layer: nn.Linear) -> None:
    """Zero what the current mask already pruned, so later layers see the layer as pruned."""
    alive = _alive(mask, f"{name}.weight", layer)
    if alive is not None:
        with torch.no_grad():
            layer.weight.mul_(alive)


def _alive(mask: Mask | None, key: str, layer: nn.Linear) -> torch.Tensor | None:
    """The current mask's entries for ``key`` on the layer's device (None: nothing pruned yet)."""
    alive = current_entries(mask, key, layer.weight)
    return None if alive is None else alive.to(layer.weight.device)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of the ``k`` lowest scores of every row (True: pruned)."""
    pruned = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        pruned.scatter_(1, scores.topk(k, dim=1, largest=False).indices, True)
    return pruned


def _lowest_overall(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of the ``k`` lowest scores of the whole matrix (True: pruned): one threshold
    for every row at once, so rows end at different sparsities."""
    pruned = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        pruned[scores.flatten().topk(k, largest=False).indices] = True
    return pruned.view_as(scores)


def per_row_count(ratio: float, cols: int) -> int:
    """How many of a row's ``cols`` weights Wanda prunes: ``int(cols * ratio)``, as its reference
    code cuts the sorted row (lib/prune.py, ``prune_wanda``)."""
    return int(cols * ratio)


def _pattern(n: int | None, m: int | None) -> tuple[int, int] | None:
    """The N:M pattern ``(n, m)``, or None (``n`` unset: unstructured)."""
    if not n:
        return None
    if m is None:
        raise PruningError(f"method.n={n}, method.m=None: give both (N:M)")
    return n, m


def _nm_lowest(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Pruned: the ``m - n`` lowest of every ``m`` consecutive columns of every row."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    pruned = torch.zeros_like(groups, dtype=torch.bool)
    pruned.scatter_(2, groups.topk(m - n, dim=2, largest=False).indices, True)
    return pruned.reshape(rows, cols)


def _nm_pruned(scores: torch.Tensor, n: int, m: int, permute: bool) -> torch.Tensor:
    """Pruned by N:M (:func:`_nm_lowest`), over the input channels reordered first by
    :func:`reallocated` with ``permute`` (the mask then N:M in that order, as RIA's code leaves it)."""
    if not permute:
        return _nm_lowest(scores, n, m)
    index = reallocated(scores, m)
    pruned = torch.zeros_like(scores, dtype=torch.bool)
    pruned[:, index] = _nm_lowest(scores[:, index], n, m)
    return pruned


def _without(scores: torch.Tensor, alive: torch.Tensor | None) -> torch.Tensor:
    """``scores`` with the entries already pruned (not ``alive``) lowest of all."""
    return scores if alive is None else scores.masked_fill(~alive, -float("inf"))


def wanda_mask(
    weight: torch.Tensor,
    gram: torch.Tensor,
    ratio: float,
    n: int | None = None,
    m: int | None = None,
    alive: torch.Tensor | None = None,
    permute: bool = False,
) -> torch.Tensor:
    """Kept entries (bool) of ``weight`` by ``|W_ij| * ||X_j||``, per row (or N:M, with
    ``permute`` over RIA's reallocated channel order). ``gram``: the inputs' ``XᵀX``, or its
    diagonal (all this reads)."""
    scores = _without(weight.abs().double() * diagonal_of(gram).clamp_min(0).sqrt(), alive)
    pattern = _pattern(n, m)
    if pattern:
        return ~_nm_pruned(scores, *pattern, permute)
    return ~_lowest(scores, per_row_count(ratio, weight.shape[1]))


def ria_scores(weight: torch.Tensor, gram: torch.Tensor, a: float) -> torch.Tensor:
    """RIA's score of each weight (:class:`~.criteria.Ria`): ``(|W|/Σ_rows |W| + |W|/Σ_cols |W|)
    · ‖X_j‖₂^a``. The reference's ``‖X_j‖₂²`` is a mean over its windows, ``Gram_jj`` here their
    sum: a factor common to the layer, which orders its scores the same. ``gram``: ``XᵀX``, or
    its diagonal (all this reads)."""
    w = weight.detach().abs().double()
    relative = w / w.sum(dim=0) + w / w.sum(dim=1, keepdim=True)
    return relative.nan_to_num(0.0) * diagonal_of(gram).double().clamp_min(0).sqrt().pow(a)


def reallocated(scores: torch.Tensor, m: int) -> torch.Tensor:
    """RIA's heuristic channel reallocation before N:M (the reference's ``--reallocation``,
    importance ``sum``): the input channels sorted by their summed score and dealt into the ``m``
    positions of every group, a snake order (every other position reversed), so that each group
    holds channels of every rank. Returns the new column order (``index``: column ``i`` of the
    reordered matrix is column ``index[i]``)."""
    cols = scores.shape[1]
    ranked = torch.sort(scores.sum(dim=0))[1]
    index = torch.zeros_like(ranked)
    for i in range(1, m + 1):
        part = ranked[int(cols * (i - 1) / m) : int(cols * i / m)]
        index[i - 1 :: m] = part if i % 2 == 1 else part.flip(0)
    return index


def ria_mask(
    weight: torch.Tensor,
    gram: torch.Tensor,
    ratio: float,
    a: float = 0.5,
    n: int | None = None,
    m: int | None = None,
    permute: bool = False,
    alive: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kept entries (bool) of ``weight`` by RIA's score: the layer's ``int(numel * ratio)`` lowest
    (one threshold per layer, the reference's default; it prunes one more, the threshold itself,
    and its ties), or the ``m - n`` lowest of every ``m`` inputs (N:M), over the channels
    reordered first by :func:`reallocated` with ``permute`` (the mask then N:M in that order, as
    the reference leaves it)."""
    scores = _without(ria_scores(weight, gram, a), alive)
    pattern = _pattern(n, m)
    if pattern is None:
        return ~_lowest_overall(scores, int(scores.numel() * ratio))
    return ~_nm_pruned(scores, *pattern, permute)


def sparsegpt_update(
    weight: torch.Tensor,
    gram: torch.Tensor,
    ratio: float,
    n: int | None = None,
    m: int | None = None,
    blocksize: int | None = 128,
    damp: float = 0.01,
    alive: torch.Tensor | None = None,
    name: str = "layer",
    selection: str = "block",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new weight, kept)``: SparseGPT's reconstruction of ``weight`` (rows x columns) from the
    input Gram matrix ``gram`` (columns x columns). ``selection``: ``block`` prunes the
    ``int(ratio * size)`` lowest scores of each lazy block as one group (the paper's code), ``row``
    the ``round(ratio * width)`` lowest of each row within it."""
    pattern = _pattern(n, m)
    if selection not in SELECTIONS:
        raise PruningError(f"method.selection={selection!r}: one of {', '.join(SELECTIONS)}")
    w = weight.detach().double().clone()
    rows, cols = w.shape
    w[:, gram.diagonal() == 0] = 0  # inputs that are always zero: their weights do nothing
    hinv = _inverse_hessian(gram, damp, name)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    width = blocksize or cols
    for i1 in range(0, cols, width):
        i2 = min(i1 + width, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        d = hinv1.diagonal()
        if pattern is None:
            scores = w1**2 / d**2
            if alive is not None:
                scores = scores.masked_fill(~alive[:, i1:i2], -float("inf"))
            if selection == "block":
                mask1 = _lowest_overall(scores, int(ratio * scores.numel()))
            else:
                mask1 = _lowest(scores, round(ratio * (i2 - i1)))
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if pattern is not None and i % pattern[1] == 0:
                keep_n, group = pattern
                scores = w1[:, i : i + group] ** 2 / d[i : i + group] ** 2
                if alive is not None:
                    scores = scores.masked_fill(~alive[:, i1 + i : i1 + i + group], -float("inf"))
                mask1[:, i : i + group] = _nm_lowest(scores, keep_n, group)
            q = w1[:, i].masked_fill(mask1[:, i], 0)
            e = (w1[:, i] - q) / d[i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w.to(weight.dtype), ~pruned


def _inverse_hessian(gram: torch.Tensor, damp: float, name: str = "layer") -> torch.Tensor:
    """The upper Cholesky factor of ``(XᵀX + λI)⁻¹`` (``λ = damp * mean(diag)``; an input that is
    always zero given 1 on its diagonal), as SparseGPT's ``fasterprune`` prepares it."""
    h = gram.double().clone()
    diagonal = h.diagonal()  # (a view: changed in place, no identity matrix made)
    diagonal[diagonal == 0] = 1
    diagonal += damp * diagonal.mean()
    del diagonal  # (it holds ``h``'s storage)
    try:  # each step's input released as the next is made: two matrices at a time besides ``gram``
        h = torch.linalg.cholesky(h)
        h = torch.cholesky_inverse(h)
        return torch.linalg.cholesky(h, upper=True)
    except RuntimeError as exc:  # torch.linalg.LinAlgError
        raise PruningError(
            f"SparseGPT: the calibration Hessian of {name} is not positive definite; raise method.damp (now {damp})"
        ) from exc


def _refit_layer(
    method: LayerByLayer,
    dsnot: Dsnot,
    criterion: Criterion | None,
    dense: torch.Tensor,
    new: torch.Tensor,
    kept: torch.Tensor,
    seen: Seen,
    alive: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float, int]]:
    """``(weight, kept, (error before, error after, swaps))``: the method's result for one layer
    (``new`` under ``kept``, from its ``dense`` weights) refitted by DSnoT: the dense weights under
    the refitted mask. ``alive``: what earlier prunes left (the rest is never grown back)."""
    assert seen.gram is not None
    pattern = _pattern(method.n, method.m)
    scores = method.scores(dense, seen.gram, criterion) if pattern else None
    fixed = None if alive is None else ~alive
    pruned, swaps = refit(dense, ~kept, seen, dsnot, pattern, scores, fixed)
    before = output_error(dense, dense - new * kept, seen.gram)
    return dense, ~pruned, (before, output_error(dense, dense * pruned, seen.gram), swaps)


def _refit_figures(refitted: list[tuple[float, float, int]]) -> dict[str, float]:
    """What the refit did (:data:`Metric.REFIT_ERROR_BEFORE` ...): the layers' mean output error
    before and after it, and the swaps, summed."""
    if not refitted:
        return {}
    before, after, swaps = zip(*refitted, strict=True)
    return {
        Metric.REFIT_ERROR_BEFORE: sum(before) / len(before),
        Metric.REFIT_ERROR_AFTER: sum(after) / len(after),
        Metric.REFIT_SWAPS: float(sum(swaps)),
    }


SELECTIONS = ("block", "row")
SEQUENTIAL = ("block", "layer")


def _check_pattern(ratio: float, n: int | None, m: int | None, cols: dict[str, int]) -> None:
    check_nm(n, m, ratio, optional=True)
    if n is None or m is None:
        return
    odd = [name for name, c in cols.items() if c % m]
    if odd:
        raise PruningError(
            f"{n}:{m} needs input sizes divisible by {m}: {', '.join(odd)} are not; add them to method.ignore"
        )


def _layerwise(
    method: LayerByLayer,
    model: nn.Module,
    ratio: float,
    scope: Scope,
    data,
    seed: int,
    mask: Mask | None,
    progress: Path | None = None,
    criterion: Criterion | None = None,
) -> Pruned:
    """Every prunable linear layer pruned by ``method.prune_layer`` from the Gram matrix of its
    inputs (the module docstring): those inside the repeated blocks block by block, then the rest
    through the whole model as pruned so far. ``progress``: the blocks' progress kept there, and
    resumed from (``progress.py``)."""
    if data is not None and not isinstance(data, PruneData):
        data = PruneData(data, seed=seed)
    scope = as_scope(scope)
    linear = _linear_layers(model, type(method).__name__.lower(), scope, method.ignore)
    _check(method, scope, ratio, linear)
    found = find_blocks(model, method.blocks)
    dsnot = method.refitting()
    calibrated = method.needs_gram or isinstance(scope, Owl) or dsnot is not None
    # what a layer's inputs are summed into: the Gram matrix's diagonal where that is all the method
    # reads, DSnoT's moments (and the whole matrix, for its output error) where it refits
    summed = functools.partial(Seen, moments=dsnot is not None, full=method.whole_gram or dsnot is not None)
    x = calibration(data, method.samples, seed, method.calibration) if calibrated else None
    ratio_of, allocated = _allocation(model, scope, found, linear, x, ratio)
    pruners: dict[float, Callable] = {}
    keep = Bits()  # each layer's mask as bits as it is made (a byte per weight else: 1.15 GiB at 1.3B)
    refitted: list[tuple[float, float, int]] = []  # (error before, after, swaps) per refitted layer

    def prune_one(name: str, layer: nn.Linear, seen: Seen | None) -> None:
        key, own = f"{name}.weight", ratio_of(name)
        prune_layer = pruners.setdefault(own, method.prune_layer(own, criterion))
        alive = _alive(mask, key, layer)
        seen = None if seen is None else seen.to(layer.weight.device)
        gram = None if seen is None else seen.gram
        dense = layer.weight.detach().clone() if dsnot is not None and dsnot.refits(name) else None
        new, kept = prune_layer(layer.weight, gram, alive, name)
        if alive is not None:
            kept &= alive
        if dense is not None:
            assert seen is not None
            assert dsnot is not None
            new, kept, done = _refit_layer(method, dsnot, criterion, dense, new, kept, seen, alive)
            refitted.append(done)
        with torch.no_grad():
            layer.weight.copy_(new * kept)
        keep[key] = kept.cpu()

    rest = dict(linear)
    saved = None
    if not method.needs_gram and dsnot is None:  # (magnitude) each layer from its own weights
        for name, layer in linear.items():
            _zero_pruned(mask, name, layer)
            prune_one(name, layer, None)
        rest = {}
    elif found is not None:
        assert x is not None
        if progress is not None:  # what identifies this prune, read before anything is pruned
            options = (
                repr(method)
                + (repr(scope) if isinstance(scope, Owl) else "")
                + (repr(criterion) if isinstance(criterion, Ria) else "")
            )
            saved = BlockProgress(progress, work(options, ratio, seed, model, x, list(linear), mask), keep)
        walk = _Walk(prune_one, method.sequential, method.block_device, summed)
        _walk_blocks(model, *found, x, rest, mask, walk, saved)
    for name, layer in rest.items():  # outside any block (or no blocks): through the whole model
        assert x is not None
        _zero_pruned(mask, name, layer)
        prune_one(name, layer, input_seen(model, layer, x, summed=summed))
    weights = {f"{name}.weight": layer.weight for name, layer in linear.items()}
    units = Units({k: w.numel() for k, w in weights.items()}, lambda k: weights[k].abs())
    pruned = finish(keep, units, keep.copy(), weights, mask, ratio)
    pruned = dataclasses.replace(pruned, figures={**pruned.figures, **allocated, **_refit_figures(refitted)})
    if saved is None:
        return pruned
    saved.remove()  # finished: the progress was only for resuming
    resumed = {Metric.PRUNE_RESUMED_BLOCK: saved.resumed_at} if saved.resumed_at is not None else {}
    return dataclasses.replace(pruned, figures={**pruned.figures, **resumed})


def _check(method: LayerByLayer, scope: Scope, ratio: float, linear: dict[str, nn.Linear]) -> None:
    """What the method, the scope and the ratio ask of the layers, refused before any calibration."""
    _check_pattern(ratio, method.n, method.m, {n: layer.in_features for n, layer in linear.items()})
    if isinstance(scope, Owl) and method.n is not None:
        raise PruningError(
            f"scope=owl sets each block's own sparsity; {method.n}:{method.m} keeps {method.n} of every {method.m} "
            "weights in every layer: use scope=local for N:M"
        )
    if method.sequential not in SEQUENTIAL:
        raise PruningError(f"method.sequential={method.sequential!r}: one of {', '.join(SEQUENTIAL)}")


def _allocation(
    model: nn.Module,
    scope: Scope,
    found: tuple[str, nn.ModuleList] | None,
    linear: dict[str, nn.Linear],
    x: torch.Tensor | None,
    ratio: float,
) -> tuple[Callable[[str], float], dict[str, float]]:
    """Each layer's ratio (by name) and the figures that say how it was chosen: ``ratio`` for
    every layer (the local scope), or OWL's sparsity of the block a layer is in (``owl.py``),
    logged per block."""
    if not isinstance(scope, Owl):
        return (lambda _name: ratio), {}
    if found is None:
        raise PruningError("scope=owl allocates by block: no repeated blocks found (set method.blocks)")
    assert x is not None
    path, modules = found
    prefixes = [f"{path}.{i}." for i in range(len(modules))]
    inside = [{n[len(p) :]: layer for n, layer in linear.items() if n.startswith(p)} for p in prefixes]
    outliers = block_outliers(modules, capture(model, modules[0], x), inside, scope.m)
    sparsity = block_sparsities(outliers, ratio, scope.lmbda)
    own = {name: s for p, s in zip(prefixes, sparsity) for name in linear if name.startswith(p)}
    figures = {
        **{Metric.owl(i, Metric.OWL_OUTLIER_RATIO): d for i, d in enumerate(outliers)},
        **{Metric.owl(i, Metric.OWL_SPARSITY): s for i, s in enumerate(sparsity)},
    }
    return (lambda name: own.get(name, ratio)), figures


def _linear_layers(model: nn.Module, method: str, scope: Scope, ignore: Sequence[str]) -> dict[str, nn.Linear]:
    """The layers to prune, refused here before any calibration data are drawn: the papers prune
    every layer to the ratio (the local scope only), and only ``nn.Linear`` layers."""
    if not isinstance(as_scope(scope), Local | Owl):
        raise PruningError(
            f"method={method} prunes every layer to the ratio, as the paper does: use scope=local (or scope=owl: "
            "each block to OWL's ratio)"
        )
    layers = prunable_layers(model, ignore)
    if not layers:
        raise PruningError("no prunable layer left after method.ignore")
    linear = {name: layer for name, layer in layers.items() if isinstance(layer, nn.Linear)}
    other = [name for name in layers if name not in linear]
    if other:
        raise PruningError(
            f"method={method} prunes nn.Linear layers; {', '.join(other)} are not: add them to method.ignore"
        )
    return linear


@dataclass(frozen=True)
class _Walk:
    """How the blocks are walked: ``prune_one(name, layer, seen)`` prunes a layer from its inputs'
    sums (``summed()``: the :class:`Seen` the method reads), one pass per block or per layer
    (``sequential``), each block on ``block_device`` while it is pruned (None: where it is)."""

    prune_one: Callable[[str, nn.Linear, Seen], None]
    sequential: str
    block_device: str | None
    summed: Callable[[], Seen]


def _walk_blocks(
    model: nn.Module,
    path: str,
    modules: nn.ModuleList,
    x: torch.Tensor,
    rest: dict[str, nn.Linear],
    mask: Mask | None,
    walk: _Walk,
    progress: BlockProgress | None = None,
) -> None:
    """The layers inside the repeated blocks ``path.<i>``, popped from ``rest`` and pruned as the
    papers' code walks them, so the cost is linear in depth: block 0's inputs captured once, each
    block's outputs under its pruned weights the next block's inputs. ``walk.block_device``: only
    the block being pruned (and its inputs) there. ``progress``: each finished block saved there;
    the blocks an earlier run finished are restored from it instead of pruned, and run to make the
    next block's inputs."""
    done = progress.resume(path, len(modules)) if progress is not None else 0
    inputs = capture(model, modules[0], x)
    if walk.block_device is not None:
        inputs = [one.to(walk.block_device) for one in inputs]
    for i, block in enumerate(modules):
        home = next(block.parameters()).device
        if walk.block_device is not None:  # only this block on the device while it is pruned
            block.to(walk.block_device)
        prefix = f"{path}.{i}."
        inside = {name: rest.pop(name) for name in list(rest) if name.startswith(prefix)}
        if i < done:
            assert progress is not None
            progress.restore(i, inside)
        else:
            _prune_block(block, inputs, prefix, inside, mask, walk)
        inputs = advance(block, inputs)
        block.to(home)
        if progress is not None and i >= done:
            progress.finished(i, inside)
        give_back()  # the block's Gram matrices and their inverses, freed: not kept by the heap


def _prune_block(
    block: nn.Module,
    inputs: list[Inputs],
    prefix: str,
    inside: dict[str, nn.Linear],
    mask: Mask | None,
    walk: _Walk,
) -> None:
    """One block's layers (``inside``, named ``prefix`` + their name in the block), what the mask
    pruned already zeroed first so that each sees the others as pruned: every layer from one pass
    of the block over ``inputs`` (``sequential=block``), or each from a pass through the block as
    pruned so far (``layer``)."""
    for name, layer in inside.items():
        _zero_pruned(mask, name, layer)
    if walk.sequential == "block":
        seen = block_inputs(block, inputs, {name[len(prefix) :]: layer for name, layer in inside.items()}, walk.summed)
        for name, layer in inside.items():  # each layer's sums released once it is pruned
            walk.prune_one(name, layer, seen.pop(name[len(prefix) :]))
    else:
        for name, layer in inside.items():
            walk.prune_one(name, layer, input_seen(block, layer, inputs, summed=walk.summed))


@dataclass
class LayerByLayer(Method):
    """What Wanda and SparseGPT share: their options, the calibration data and the walk through
    the layers; a subclass provides ``prune_layer``. They score weights themselves (no criterion)
    and prune every layer to the ratio (the local scope only)."""

    takes: ClassVar[frozenset[str]] = frozenset({"scope", "calibration", "blocks", "progress"})
    needs_gram: ClassVar[bool] = True  # scores from the inputs' Gram matrix (magnitude: the weights only)
    whole_gram: ClassVar[bool] = True  # all of it (SparseGPT's update), or only its diagonal (Wanda, RIA)

    # the logits layer (the papers prune the blocks' linear layers only)
    ignore: list[str] = field(default_factory=lambda: list(OUTPUT_LAYERS))
    n: int | None = None  # N:M: n kept of every m inputs (both unset: unstructured)
    m: int | None = None
    samples: int = 128  # calibration inputs (sequences), drawn by calibration_seed
    calibration: str = TRAIN  # from the dataset's training split, or a source it offers (text: c4)
    # block: each repeated block's layers pruned from one pass of it (the papers' default);
    # layer: each layer from a pass through its block as pruned so far (true-sequential)
    sequential: str = "block"
    blocks: str | None = None  # where the repeated blocks are (an attribute path); None: the known places
    # where each block is pruned (e.g. cuda) while the rest of the model stays where it is (e.g. the
    # CPU, device=cpu): one block's weights and the calibration activations on the device at a time
    block_device: str | None = None
    # dsnot: DSnoT's training-free swaps refit each layer's mask (dsnot.py), at most refit_cycles per
    # row while its expected output change is above refit_threshold; layers matching refit_skip keep
    # the mask they get (the reference's default: the blocks' MLP layers)
    refit: str | None = None
    refit_cycles: int = Dsnot.cycles
    refit_threshold: float = Dsnot.threshold
    refit_skip: list[str] = field(default_factory=lambda: list(Dsnot().skip))

    def __post_init__(self):
        check_nm(self.n, self.m, optional=True)
        check_positive(self.samples, "method.samples")
        if self.sequential not in SEQUENTIAL:
            raise PruningError(f"method.sequential={self.sequential!r}: one of {', '.join(SEQUENTIAL)}")
        if self.refit is not None and self.refit not in REFITS:
            raise PruningError(f"method.refit={self.refit!r}: one of {', '.join(REFITS)} (or null)")
        given, default = Dsnot(self.refit_cycles, self.refit_threshold, list(self.refit_skip)), Dsnot()
        changed = [
            f"method.refit_{f.name}" for f in fields(Dsnot) if getattr(given, f.name) != getattr(default, f.name)
        ]
        if self.refit is None and changed:
            raise PruningError(f"{', '.join(changed)}: options of the refit; set method.refit=dsnot")
        self.refitting()  # its options checked now

    def refitting(self) -> Dsnot | None:
        """DSnoT's options where ``refit`` asks for it."""
        if self.refit is None:
            return None
        return Dsnot(self.refit_cycles, self.refit_threshold, list(self.refit_skip))

    def scores(
        self,
        weight: torch.Tensor,
        gram: torch.Tensor,
        criterion: Criterion | None = None,  # noqa: ARG002 (the subclasses that take one read it)
    ) -> torch.Tensor:
        """The score this method chooses a layer's mask by, higher kept (DSnoT's order within an
        N:M group): Wanda's ``|W_ij| ‖X_j‖`` unless a subclass says otherwise."""
        return weight.detach().abs().double() * diagonal_of(gram).double().clamp_min(0).sqrt()

    def prune_layer(self, ratio: float, criterion: Criterion | None = None) -> Callable:
        """``(weight, gram, alive, name) -> (new weight, kept)`` for one layer; ``criterion``: the
        score in place of the method's own, where it takes one (:attr:`criteria`)."""
        raise NotImplementedError

    @override
    def __call__(
        self,
        model: nn.Module,
        ratio: float,
        *,
        scope: Scope | None = None,
        criterion: Criterion | None = None,
        seed: int = 0,
        example_inputs: torch.Tensor | None = None,
        data: PruneData | None = None,
        mask: Mask | None = None,
        progress: Path | None = None,
    ) -> Pruned:
        """``progress``: a folder of this prune's own where each finished block is kept, so that a
        run killed mid-way resumes from its last finished block, ending with the weights and mask
        an uninterrupted run gives (``progress.py``); emptied when the prune finishes. The runner
        passes its run key's folder in a run of one process (a run across processes does not keep
        its prune's progress: every rank prunes, rank 0's result is kept)."""
        scope = scope if scope is not None else Local()
        return _layerwise(self, model, ratio, scope, data, seed, mask, progress, criterion)


@dataclass
class LayerMagnitude(LayerByLayer):
    """Magnitude pruning as the LLM papers' tables run it: each layer's smallest ``|W|`` (one
    threshold per layer; luuyin/OWL's ``prune_magnitude`` / ``prune_mag_outlier``), from the
    weights alone; with ``scope=owl`` each block to OWL's ratio (its scores need calibration data).
    The reference prunes every weight at or below the ``int(numel * ratio)``-th smallest, one more
    than the ratio (and any ties); here exactly ``int(numel * ratio)``. Unstructured (N:M by
    magnitude: ``method=nm``)."""

    needs_gram: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        if self.n is not None or self.m is not None:
            raise PruningError("method=magnitude is unstructured: N:M by magnitude is method=nm")

    @override
    def prune_layer(self, ratio: float, criterion: Criterion | None = None) -> Callable:
        def prune_layer(weight, _gram, alive, _name):
            scores = _without(weight.detach().abs().double(), alive)
            return weight.detach(), ~_lowest_overall(scores, int(scores.numel() * ratio))

        return prune_layer


@dataclass
class Wanda(LayerByLayer):
    """Wanda, layer by layer (the module docstring). Zeroes the pruned weights in place. With
    ``criterion=ria``, RIA's score and selection in place of Wanda's (:func:`ria_mask`); with
    ``permute`` and N:M, RIA's channel reallocation before the N:M choice (:func:`reallocated`)."""

    takes: ClassVar[frozenset[str]] = LayerByLayer.takes | {"criterion"}
    criteria: ClassVar[frozenset[str] | None] = frozenset({"ria"})
    whole_gram: ClassVar[bool] = False  # |W| times the inputs' norms: the Gram matrix's diagonal

    permute: bool = False  # N:M: reorder the input channels first (RIA's heuristic reallocation)

    def __post_init__(self):
        super().__post_init__()
        if self.permute and self.n is None:
            raise PruningError("method.permute reorders the input channels before N:M: set method.n and method.m")
        if self.permute and self.refit is not None:
            raise PruningError(
                "method.refit=dsnot swaps weights within N:M groups of consecutive inputs; method.permute "
                "groups reordered ones: choose one"
            )

    @override
    def scores(self, weight: torch.Tensor, gram: torch.Tensor, criterion: Criterion | None = None) -> torch.Tensor:
        """Wanda's score, or RIA's with ``criterion=ria``."""
        if isinstance(criterion, Ria):
            return ria_scores(weight, gram, criterion.a)
        return super().scores(weight, gram)

    @override
    def prune_layer(self, ratio: float, criterion: Criterion | None = None) -> Callable:
        n, m, permute = self.n, self.m, self.permute
        if isinstance(criterion, Ria):
            a = criterion.a
            return lambda weight, gram, alive, _name: (
                weight.detach(),
                ria_mask(weight, gram, ratio, a, n, m, permute, alive),
            )

        def prune_layer(weight, gram, alive, _name):  # Wanda's error messages need no layer name
            return weight.detach(), wanda_mask(weight.detach(), gram, ratio, n, m, alive, permute)

        return prune_layer


@dataclass
class SparseGPT(LayerByLayer):
    """SparseGPT, layer by layer (the module docstring). Updates the surviving weights in place:
    the model it returns the mask of is the reconstructed one."""

    blocksize: int | None = 128  # lazy update (and mask selection) block; None: whole rows
    damp: float = 0.01  # of the mean Hessian diagonal, added to it
    selection: str = "block"  # one threshold over each lazy block (the paper's code); row: per row

    def __post_init__(self):
        super().__post_init__()
        if self.damp < 0:
            raise PruningError(f"method.damp={self.damp} must be >= 0")
        if self.blocksize is not None:
            check_positive(self.blocksize, "method.blocksize")
        if self.selection not in SELECTIONS:
            raise PruningError(f"method.selection={self.selection!r}: one of {', '.join(SELECTIONS)}")

    @override
    def scores(self, weight: torch.Tensor, gram: torch.Tensor, criterion: Criterion | None = None) -> torch.Tensor:
        """SparseGPT's ``w² / [H⁻¹]_jj²`` over the whole layer, before any update (as DSnoT's code
        scores with ``--initial_method sparsegpt``)."""
        w = weight.detach().double()
        return w**2 / _inverse_hessian(gram, self.damp).diagonal() ** 2

    @override
    def prune_layer(self, ratio: float, criterion: Criterion | None = None) -> Callable:
        def prune_layer(weight, gram, alive, name):
            return sparsegpt_update(
                weight, gram, ratio, self.n, self.m, self.blocksize, self.damp, alive, name, self.selection
            )

        return prune_layer


__all__ = ["LayerMagnitude", "SparseGPT", "Wanda", "calibration", "input_seen", "sparsegpt_update", "wanda_mask"]
