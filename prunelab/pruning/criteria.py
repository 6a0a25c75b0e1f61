"""Criteria (importance): how much each weight, or each output channel, matters.

A criterion only scores; how many entries to cut and where is the scope's job
(``allocation.py``). The contract (``contracts.py``): a :class:`~.contracts.Criterion` prepares a
:class:`~.contracts.Scorer` for the model, or a plain function ``fn(weight) -> scores`` shaped like
``weight`` (it may also take ``name=`` and ``seed=``), e.g. ``criterion._target_=mypkg.my_score
+criterion._partial_=true``, which :func:`as_criterion` wraps.

Structured methods score a channel from every layer whose output channel it is (a residual
addition couples several): see :class:`~.contracts.Coupled` and ``Scorer.channels``.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from .contracts import Coupled, Criterion, Scorer
from .data import PruneData
from .errors import PruningError, check_positive


def as_criterion(criterion) -> Criterion:
    """``criterion`` itself, or a plain scoring function as a :class:`~.contracts.Criterion`."""
    if isinstance(criterion, Criterion):
        return criterion
    if not callable(criterion):
        raise PruningError(f"criterion {criterion!r} is neither a Criterion nor a function of a weight")
    return FunctionCriterion(criterion)


@dataclass(frozen=True)
class FunctionCriterion(Criterion):
    """A plain function ``fn(weight, [name=, seed=]) -> scores shaped like weight``."""

    fn: Callable[..., torch.Tensor]

    @override
    def prepare(self, model, data, seed):
        return _FunctionScorer(self.fn, seed)


class _FunctionScorer(Scorer):
    def __init__(self, fn: Callable, seed: int):
        params: Mapping[str, inspect.Parameter]
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self.fn, self.extra = fn, [k for k in ("name", "seed") if takes_all or k in params]
        self.seed = seed

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        given = {"name": name, "seed": self.seed}
        scores = self.fn(weight.detach(), **{k: given[k] for k in self.extra})
        if not isinstance(scores, torch.Tensor) or scores.shape != weight.shape:
            raise PruningError(
                f"criterion {getattr(self.fn, '__name__', self.fn)} returned "
                f"{getattr(scores, 'shape', type(scores).__name__)} for {name}, "
                f"expected a tensor shaped {tuple(weight.shape)}"
            )
        return scores


# --- the built-in criteria -------------------------------------------------------------------


@dataclass(frozen=True)
class Magnitude(Criterion, Scorer):
    """|w| per weight, for every p: |w|^p ranks weights alike, and squaring in float32 would tie
    weights that differ (l1 and l2 keep the same weights, exactly those of
    ``torch.nn.utils.prune``'s L1). ||W_i||_p per channel (l1: p=1, l2: p=2): there p matters."""

    p: float = 2

    def __post_init__(self):
        if not self.p > 0:
            raise PruningError(f"criterion.p={self.p} must be > 0")

    @override
    def prepare(self, model, data, seed):
        return self

    @override
    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().abs()

    @override
    def channels(self, name: str, rows: Sequence[Coupled], n: int) -> torch.Tensor:
        total = torch.zeros(n, dtype=torch.float64)
        for c in rows:
            total += c.place(c.weight.detach().double()).abs().pow(self.p).sum(dim=1).cpu()
        return total.pow(1.0 / self.p).float()


def _generator(name: str, seed: int) -> torch.Generator:
    # A per-layer stream: the random baseline does not depend on layer order.
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


@dataclass(frozen=True)
class Random(Criterion):
    """The baseline: the scope's allocation with a random choice (seeded by the run's calibration
    seed, per layer)."""

    @override
    def prepare(self, model, data, seed):
        return _RandomScores(seed)


@dataclass(frozen=True)
class _RandomScores(Scorer):
    seed: int

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return torch.rand(weight.shape, generator=_generator(name, self.seed)).to(weight.device)

    @override
    def channels(self, name: str, rows: Sequence[Coupled], n: int) -> torch.Tensor:
        return torch.rand(n, generator=_generator(name, self.seed))


@dataclass(frozen=True)
class Taylor(Criterion):
    """First-order Taylor importance (Molchanov et al. 2019): |w * dL/dw| per weight, summed over
    ``batches`` training mini-batches (the loss is the mean cross-entropy of each batch, the model
    in eval mode so BatchNorm statistics are left alone); per channel, the sum over its weights."""

    batches: int = 8

    def __post_init__(self):
        check_positive(self.batches, "criterion.batches")

    @override
    def prepare(self, model: nn.Module, data: PruneData | None, seed: int):
        if data is None:
            raise PruningError("criterion taylor needs training batches: pass data=(x, y) or PruneData")
        params = {n: p for n, p in model.named_parameters() if p.dim() > 1}
        scores = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        was_training, grads = model.training, [p.requires_grad for p in params.values()]
        model.eval()
        try:
            for p in params.values():
                p.requires_grad_(True)
            seen = 0
            for x, y in data.batches(self.batches):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                for n, p in params.items():
                    if p.grad is None:  # a weight the forward pass never reaches
                        raise PruningError(f"criterion taylor: {n} got no gradient (unused in the forward pass)")
                    scores[n] += (p.detach().double() * p.grad.double()).abs()
                seen += 1
            if not seen:
                raise PruningError("criterion taylor got no training batch")
        finally:
            model.zero_grad(set_to_none=True)
            for p, g in zip(params.values(), grads):
                p.requires_grad_(g)
            model.train(was_training)
        return _TaylorScores(scores)


class _TaylorScores(Scorer):
    def __init__(self, scores: dict[str, torch.Tensor]):
        self.scores = scores

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if name not in self.scores:
            raise PruningError(f"taylor: no gradient was taken for {name}")
        return self.scores[name].to(weight.device)


@dataclass(frozen=True)
class FPGM(Criterion, Scorer):
    """Filter pruning via geometric median (He et al. 2019): a filter close to all the others
    (small summed Euclidean distance to them) is redundant. Filters only: structured methods."""

    @override
    def prepare(self, model, data, seed):
        return self

    @override
    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        raise PruningError("criterion fpgm compares whole filters: use it with method=structured")

    @override
    def channels(self, name: str, rows: Sequence[Coupled], n: int) -> torch.Tensor:
        w = torch.cat([c.place(c.weight.detach().double()).cpu() for c in rows], dim=1)
        return torch.cdist(w, w).sum(dim=1).float()


@dataclass(frozen=True)
class Activation(Criterion):
    """Wanda's score as a criterion (Sun et al. 2023): ``|W_ij| * ||X_j||_2``, the weight's
    magnitude times the norm of its input feature over the tokens of ``batches`` training
    mini-batches (one forward pass each, the model in eval mode); per channel or unit, the sum over
    its weights. The score of ``method=wanda`` (locuslab/wanda ``lib/prune.py``), here for any
    method: e.g. the heads and MLP channels of ``method=width``. A convolution's input feature is
    an input channel, its norm over every sample and position (each group's own channels)."""

    batches: int = 8

    def __post_init__(self):
        check_positive(self.batches, "criterion.batches")

    @override
    @torch.no_grad()
    def prepare(self, model: nn.Module, data: PruneData | None, seed: int):
        if data is None:
            raise PruningError("criterion activation needs training batches: pass data=(x, y) or PruneData")
        names = {id(p): n for n, p in model.named_parameters()}
        squares: dict[str, torch.Tensor] = {}

        def hook(module, args, _out):
            x = args[0].detach().double()
            if isinstance(module, nn.Linear):
                summed = x.reshape(-1, module.in_features).pow(2).sum(0)
            else:  # (batch, channels, *positions)
                summed = x.transpose(0, 1).reshape(x.shape[1], -1).pow(2).sum(1)
            name = names[id(module.weight)]
            squares[name] = squares.get(name, 0) + summed.cpu()

        layers = [m for m in model.modules() if isinstance(m, _SEEN) and id(m.weight) in names]
        handles = [m.register_forward_hook(hook) for m in layers]
        was_training = model.training
        model.eval()
        try:
            seen = 0
            for x, _ in data.batches(self.batches):
                model(x)
                seen += 1
            if not seen:
                raise PruningError("criterion activation got no training batch")
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        return _ActivationScores({n: s.sqrt() for n, s in squares.items()})


_SEEN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _ActivationScores(Scorer):
    def __init__(self, norms: dict[str, torch.Tensor]):
        self.norms = norms

    def weights(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if name not in self.norms:
            raise PruningError(f"criterion activation: {name} is not the weight of a layer the data reached")
        norms = self.norms[name].to(weight.device, weight.dtype)
        out, inputs = weight.shape[:2]
        groups = norms.numel() // inputs  # a grouped convolution: each output sees its group's channels
        per_output = norms.view(groups, inputs).repeat_interleave(out // groups, dim=0)
        return weight.detach().abs() * per_output.view(out, inputs, *([1] * (weight.dim() - 2)))


@dataclass(frozen=True)
class Ria(Criterion):
    """RIA, relative importance and activations (Zhang et al., ICLR 2024), as ``method=wanda``'s
    score in place of Wanda's: ``(|W_ij| / Σ_i |W_ij| + |W_ij| / Σ_j |W_ij|) · ‖X_j‖₂^a``, each
    weight's share of its input column's and of its output row's magnitude, weighed by its input's
    norm to the power ``a`` (scored in ``layerwise.ria_scores``: it needs the calibration
    activations a layer-by-layer method gathers). Matched: biomedical-cybernetics/Relative-
    importance-and-activation-pruning at 7bc55b06, ``lib/prune.py`` ``prune_ria``."""

    a: float = 0.5  # the activations' exponent (the reference's --a)

    @override
    def prepare(self, model: nn.Module, data: PruneData | None, seed: int) -> Scorer:
        raise PruningError("criterion=ria scores weights with their calibration activations: use it with method=wanda")
