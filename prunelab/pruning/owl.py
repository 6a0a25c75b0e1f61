"""OWL, outlier-weighed layerwise sparsity (Yin et al., ICML 2024): each repeated block of a
language model gets its own sparsity, lower where its weights meet more outlier activations, the
blocks' mean equal to the run's ratio. ``scope=owl`` with the layer-by-layer methods
(``method=magnitude``, ``wanda``, ``sparsegpt``).

Matched: luuyin/OWL at dddb7a4bffe27c73e4c8cf692b3a5e36401532c8, ``lib/prune_all.py``
(``prune_wanda_outlier``, ``prune_mag_outlier``, ``prune_sparsegpt_outlier``: the same allocation):

1. the dense model runs block by block on the calibration windows, each block on the dense outputs
   of the one before; in block ``i`` every linear layer's Wanda scores ``|W_jk| · ‖X_k‖₂`` are
   taken (``X``: its inputs, ``‖X_k‖₂²`` as ``WrappedGPT.scaler_row`` sums it, a mean over the
   windows: a factor common to the block, which the ratio below does not see);
2. the block's outlier ratio ``D_i``: the percentage of all its layers' scores, taken together,
   above ``m`` times their mean (``check_outlier_mean``; the reference's ``Hyper_m``);
3. ``density_i = (D_i - min D) / (max D - min D) · 2λ``, minus the mean of those, plus
   ``1 - ratio`` (the reference's ``Lamda``): the sparsity ``1 - density_i`` spreads ``±λ`` around
   ``ratio``, lowest for the block with the most outliers; its mean is ``ratio``.

The reference's defaults for LLaMA (its README): ``Hyper_m`` 5, ``Lamda`` 0.08. Where every block
has the same outlier ratio (``max D = min D``, a division by zero in the reference) each gets
``ratio``. N:M has its own allocation in the reference (``..._structure``): refused here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from typing_extensions import override

from .blocks import Inputs, fold_inputs
from .contracts import Scope, Units
from .errors import PruningError


@dataclass(frozen=True)
class Owl(Scope):
    """Each block's sparsity from its share of outlier Wanda scores (the module docstring)."""

    m: float = 5.0  # a score is an outlier above m times its block's mean score (Hyper_m)
    lmbda: float = 0.08  # the blocks' sparsities spread +-lmbda around the ratio (Lamda)

    def __post_init__(self):
        if not self.m > 0:
            raise PruningError(f"scope.m={self.m} must be > 0")
        if not 0 <= self.lmbda < 1:
            raise PruningError(f"scope.lmbda={self.lmbda} must be in [0, 1)")

    @override
    def __call__(self, units: Units, ratio: float) -> dict[str, torch.Tensor]:
        raise PruningError(
            "scope=owl sets each block's sparsity from calibration data: use it with method=magnitude, "
            "method=wanda or method=sparsegpt"
        )


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """The percentage of all ``scores`` (taken together) above ``m`` times their mean."""
    total = sum(float(s.double().sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    threshold = total / count * m
    return 100.0 * sum(int((s > threshold).sum()) for s in scores) / count


def block_sparsities(outliers: Sequence[float], ratio: float, lmbda: float) -> list[float]:
    """Each block's sparsity from its outlier ratio (step 3 of the module docstring), checked to
    lie in [0, 1)."""
    d = torch.tensor(outliers, dtype=torch.float64)
    spread = float(d.max() - d.min())
    scaled = (d - d.min()) / spread * (2 * lmbda) if spread > 0 else torch.zeros_like(d)
    density = scaled - scaled.mean() + (1 - ratio)
    sparsity = [float(1 - x) for x in density]
    outside = [(i, s) for i, s in enumerate(sparsity) if not 0 <= s < 1]
    if outside:
        i, s = outside[0]
        raise PruningError(
            f"scope=owl: ratio={ratio} with lmbda={lmbda} gives block {i} a sparsity of {s:.4f}, outside [0, 1): "
            "lower scope.lmbda or the ratio"
        )
    return sparsity


@torch.no_grad()
def block_outliers(
    modules: nn.ModuleList, inputs: list[Inputs], layers: Sequence[dict[str, nn.Linear]], m: float
) -> list[float]:
    """Each block's outlier ratio (steps 1 and 2): ``layers[i]``, block ``i``'s linear layers,
    scored on the inputs the dense blocks pass on, starting from ``inputs`` (block 0's)."""
    out = []
    for block, inside in zip(modules, layers, strict=True):
        add = lambda total, x: x.reshape(-1, x.shape[-1]).float().pow(2).sum(0) + (0 if total is None else total)
        squares, inputs = fold_inputs(block, inputs, dict(inside), add)  # (and the next block's inputs)
        scores = [w.weight.detach().abs() * squares[name].sqrt().to(w.weight.dtype) for name, w in inside.items()]
        out.append(outlier_ratio(scores, m) if scores else 0.0)
    return out


__all__ = ["Owl", "block_outliers", "block_sparsities", "outlier_ratio"]
