"""Post-training pruning layer by layer from calibration data: Wanda and SparseGPT.

Both walk the prunable ``nn.Linear`` layers in the order the model runs them. For each, the
calibration inputs are run through the model *as pruned so far* and the layer's inputs ``X``
(tokens x in_features) are summed into ``XᵀX`` (a hook that stops the forward pass at that layer);
then the layer is pruned, in place, before the next one sees its outputs. That is the papers'
sequential order, one layer at a time.

* Wanda (Sun et al. 2024): score ``|W_ij| * ||X_j||_2``, the lowest ``ratio`` of every output row
  pruned (its comparison group); no weight update.
* SparseGPT (Frantar & Alistarh 2023): for each row, the weights are pruned column by column and
  the error of each is spread onto the columns not yet visited through the inverse Hessian
  ``H = XᵀX + λI`` (``λ = damp * mean(diag H)``), in lazy blocks of ``blocksize`` columns; the mask
  of a block is chosen when the block starts (adaptive mask selection), by ``w² / [H⁻¹]_jj²``, per
  row within the block (``blocksize=None``: the whole row at once).

``n`` / ``m`` give the N:M pattern instead (``n`` kept of every ``m`` consecutive inputs, as
``method=nm``); ``ratio`` must then be ``(m - n) / m``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .allocation import Local, as_scope
from .contracts import Criterion, Method, Pruned, Scope, Units
from .data import PruneData
from .errors import PruningError, check_nm, check_positive
from .mask import Mask
from .methods import finish, prunable_layers


class _Stop(Exception):
    """Raised by the input hook: the rest of the forward pass is not needed."""


def calibration(data, samples: int, seed: int) -> torch.Tensor:
    """``samples`` training inputs drawn by ``seed`` (for text: ``samples x seq_len`` tokens)."""
    if data is None:
        raise PruningError("this method needs calibration data (the run passes the training split)")
    x = data.train[0]
    check_positive(samples, "method.samples")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]
    return x[order.to(x.device)]


@torch.no_grad()
def input_gram(model: nn.Module, layer: nn.Module, x: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, int]:
    """``(XᵀX, rows)`` of ``layer``'s inputs when ``model`` runs on ``x`` (float64 sums)."""
    gram: torch.Tensor | None = None
    rows = 0

    def hook(_module, args):
        nonlocal gram, rows
        inp = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        gram = inp.T @ inp if gram is None else gram + inp.T @ inp
        rows += inp.shape[0]
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            try:
                model(x[start : start + batch_size])
            except _Stop:
                pass
    finally:
        handle.remove()
        model.train(was_training)
    if gram is None:
        raise PruningError("a prunable layer was never run by the model's forward pass: add it to method.ignore")
    return gram, rows


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of the ``k`` lowest scores of every row (True: pruned)."""
    pruned = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        pruned.scatter_(1, scores.topk(k, dim=1, largest=False).indices, True)
    return pruned


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


def wanda_mask(
    weight: torch.Tensor,
    gram: torch.Tensor,
    ratio: float,
    n: int | None = None,
    m: int | None = None,
    alive: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kept entries (bool) of ``weight`` by ``|W_ij| * ||X_j||``, per row (or N:M)."""
    scores = weight.abs().double() * gram.diagonal().clamp_min(0).sqrt()
    if alive is not None:
        scores = scores.masked_fill(~alive, -float("inf"))
    pattern = _pattern(n, m)
    pruned = _nm_lowest(scores, *pattern) if pattern else _lowest(scores, round(ratio * weight.shape[1]))
    return ~pruned


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new weight, kept)``: SparseGPT's reconstruction of ``weight`` (rows x columns) from the
    input Gram matrix ``gram`` (columns x columns)."""
    pattern = _pattern(n, m)
    w = weight.detach().double().clone()
    rows, cols = w.shape
    h = gram.double().clone()
    dead = h.diagonal() == 0  # inputs that are always zero: their weights do nothing
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * h.diagonal().mean() * torch.eye(cols, dtype=h.dtype, device=h.device)
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as exc:  # torch.linalg.LinAlgError
        raise PruningError(
            f"SparseGPT: the calibration Hessian of {name} is not positive definite; raise method.damp (now {damp})"
        ) from exc
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
    model: nn.Module,
    ratio: float,
    method: str,
    prune_layer: Callable,
    scope: Scope,
    ignore: Sequence[str],
    data,
    samples: int,
    seed: int,
    mask: Mask | None,
    n: int | None,
    m: int | None,
) -> Pruned:
    if data is not None and not isinstance(data, PruneData):
        data = PruneData(data, seed=seed)
    if not isinstance(as_scope(scope), Local):
        raise PruningError(
            f"method={method} prunes every layer to the ratio, row by row, as the paper does: use scope=local"
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
    _check_pattern(ratio, n, m, {name: layer.in_features for name, layer in linear.items()})
    x = calibration(data, samples, seed)
    keep = {}
    for name, layer in linear.items():
        key = f"{name}.weight"
        alive = mask.masks[key].to(layer.weight.device) if mask is not None and key in mask.masks else None
        if alive is not None:
            with torch.no_grad():
                layer.weight.mul_(alive)
        gram, _ = input_gram(model, layer, x)
        new, kept = prune_layer(layer.weight, gram.to(layer.weight.device), alive, name)
        if alive is not None:
            kept &= alive
        with torch.no_grad():
            layer.weight.copy_(new * kept)
        keep[key] = kept.cpu()
    weights = {f"{name}.weight": layer.weight for name, layer in linear.items()}
    units = Units({k: w.numel() for k, w in weights.items()}, lambda k: weights[k].abs())
    return finish(keep, units, dict(keep), weights, mask, ratio)


@dataclass
class LayerByLayer(Method):
    """What Wanda and SparseGPT share: their options, the calibration data and the walk through
    the layers; a subclass provides ``prune_layer``."""

    # the logits layer (the papers prune the blocks' linear layers only)
    ignore: list[str] = field(default_factory=lambda: ["classifier"])
    n: int | None = None  # N:M: n kept of every m inputs (both unset: unstructured)
    m: int | None = None
    samples: int = 128  # calibration sequences from the training split (drawn by calibration_seed)

    def __post_init__(self):
        check_nm(self.n, self.m, optional=True)
        check_positive(self.samples, "method.samples")

    def prune_layer(self, ratio: float) -> Callable:
        """``(weight, gram, alive, name) -> (new weight, kept)`` for one layer."""
        raise NotImplementedError

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
    ) -> Pruned:
        return _layerwise(
            model,
            ratio,
            type(self).__name__.lower(),
            self.prune_layer(ratio),
            scope if scope is not None else Local(),
            self.ignore,
            data,
            self.samples,
            seed,
            mask,
            self.n,
            self.m,
        )


@dataclass
class Wanda(LayerByLayer):
    """Wanda, layer by layer (the module docstring). Zeroes the pruned weights in place."""

    def prune_layer(self, ratio: float) -> Callable:
        def prune_layer(weight, gram, alive, name):
            return weight.detach(), wanda_mask(weight.detach(), gram, ratio, self.n, self.m, alive)

        return prune_layer


@dataclass
class SparseGPT(LayerByLayer):
    """SparseGPT, layer by layer (the module docstring). Updates the surviving weights in place:
    the model it returns the mask of is the reconstructed one."""

    blocksize: int | None = 128  # lazy update (and mask selection) block; None: whole rows
    damp: float = 0.01  # of the mean Hessian diagonal, added to it

    def __post_init__(self):
        super().__post_init__()
        if self.damp < 0:
            raise PruningError(f"method.damp={self.damp} must be >= 0")
        if self.blocksize is not None:
            check_positive(self.blocksize, "method.blocksize")

    def prune_layer(self, ratio: float) -> Callable:
        def prune_layer(weight, gram, alive, name):
            return sparsegpt_update(weight, gram, ratio, self.n, self.m, self.blocksize, self.damp, alive, name)

        return prune_layer


__all__ = ["SparseGPT", "Wanda", "calibration", "input_gram", "sparsegpt_update", "wanda_mask"]
