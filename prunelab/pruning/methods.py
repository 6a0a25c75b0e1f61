"""The pruning methods (patterns): what a unit is, and what removing it zeroes.

* :class:`Unstructured`: a unit is one weight; keep W_ij where score(W_ij) > theta.
* :class:`Structured`: a unit is an output channel (a neuron or conv filter), keep channel i where
  its score (||W_i||_p for magnitude) > theta. Channels come from Torch-Pruning's dependency
  graph (``tracing.py``), so channels that must go together (a residual addition, the BatchNorm
  after a conv, the next layer's inputs, the flatten->linear boundary) are scored and removed as
  one unit; a grouped convolution's channels go at the same positions in each of its groups, and
  an attention module's (one that declares ``heads``) in whole heads; groups through a LayerNorm
  (a transformer's residual stream) are left whole. Zeroing all of a channel's parameters makes
  the masked network compute exactly what the network with the channel physically removed
  computes (``shrink.py``).
* :class:`NM`: semi-structured N:M: in every group of M consecutive input weights of a row, the N
  highest-scored survive.

Each is a :class:`~.contracts.Method`: its options are its fields (``conf/method/<option>.yaml``
sets them), and calling it with the model, the ratio, the criterion (``criteria.py``), the scope
(``allocation.py``) and the current ``mask`` returns :class:`~.contracts.Pruned`. Entries the
current mask pruned score ``-inf``, so they stay pruned and count towards ``ratio``, the overall
target (not a fraction of what is left): a schedule can call a method again and again. None
modifies the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .allocation import Global, allocate, as_scope
from .contracts import Criterion, Method, Pruned, Scope, Scorer, Units
from .criteria import Magnitude, as_criterion
from .data import PruneData
from .errors import PruningError, check_nm, check_ratio
from .macs import layer_macs
from .mask import Mask, count, keep_pruned
from .owl import Owl
from .plan import plan_of
from .probe import Probe
from .tracing import (
    PRUNABLE_TYPES,
    Prunable,
    channel_groups,
    check_traceable,
    coupled_layers,
    group_blocks,
    group_heads,
    prunable_layers,
    zero_channels,
)

log = logging.getLogger(__name__)

_INF = float("inf")


def full_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """An all-True mask (on the CPU) for every parameter of ``model``: nothing pruned."""
    return {n: torch.ones_like(p, dtype=torch.bool, device="cpu") for n, p in model.named_parameters()}


def current_entries(mask: Mask | None, name: str, like: torch.Tensor) -> torch.Tensor | None:
    """The current mask's entries for ``name`` (None: nothing pruned yet)."""
    if mask is None or name not in mask.masks:
        return None
    m = mask.masks[name]
    if m.shape != like.shape:
        raise PruningError(
            f"the current mask for {name} has shape {tuple(m.shape)}, the model's is {tuple(like.shape)}"
        )
    return None if bool(m.all()) else m.cpu()


def _held(keep: torch.Tensor, alive: torch.Tensor | None) -> torch.Tensor:
    """``keep`` AND-ed with the current mask's entries (None: nothing pruned yet)."""
    return keep if alive is None else keep & alive


def _without_pruned(scores: torch.Tensor, alive: torch.Tensor | None) -> torch.Tensor:
    # float32, as the threshold is: a float64 score could round past it
    scores = scores.detach().cpu().float()
    return scores if alive is None else scores.masked_fill(~alive, -_INF)


def _setup(model: nn.Module, ratio: float, criterion, scope, data, seed: int) -> tuple[Scorer, Scope, PruneData | None]:
    """The criterion's scorer for ``model``, the scope, and the data as :class:`PruneData`."""
    check_ratio(ratio)
    if data is not None and not isinstance(data, PruneData):
        data = PruneData(data, seed=seed)
    return as_criterion(criterion).prepare(model, data, seed), as_scope(scope), data


def prober(model: nn.Module, data, masks_of: Callable[[dict], dict[str, torch.Tensor]]):
    """``trial(keeps, samples)`` for measuring scopes (``probe.py``); None without data."""
    return None if data is None else Probe(model, data, masks_of)


def _costs(
    model: nn.Module, data, per_unit: Callable[[dict], dict[str, float]], example_inputs: torch.Tensor | None = None
) -> Callable[[str], float]:
    """``cost(name)``: the MACs one unit of set ``name`` accounts for (counted on first use, from
    one forward pass of one example)."""
    found: dict[str, float] = {}

    def cost(name: str) -> float:
        if not found:
            x = example_inputs if example_inputs is not None else (data.train[0][:1] if data is not None else None)
            if x is None:
                raise PruningError("MACs per unit need example_inputs or data")
            found.update(per_unit(layer_macs(model, x[:1])))
        return found[name]

    return cost


def finish(
    keep: Mapping[str, torch.Tensor],
    units: Units,
    masks: MutableMapping[str, torch.Tensor],
    prunable,
    current: Mask | None,
    ratio: float,
    channels: dict[str, torch.Tensor] | None = None,
) -> Pruned:
    """The result: this method's choice (``keep`` per set of ``units``; ``masks`` per parameter),
    AND-ed with the current mask everywhere (whatever method made it, biases and ignored layers
    included: nothing it pruned comes back), with its plan and what the scope reported."""
    keep_pruned(masks, current.masks if current is not None else None)
    mask = Mask(masks, prunable=tuple(prunable), channels=channels or {})
    plan = plan_of(units.kind, {n: (units.sizes[n], count(k), tuple(k.shape)) for n, k in keep.items()})
    return Pruned(mask, plan, dict(units.report), ratio)


# The defaults as objects (what conf/scope/global.yaml and conf/criterion/l2.yaml make).
GLOBAL, L2 = Global(), Magnitude(2)


@dataclass(frozen=True)
class Given:
    """What a pattern chooses with: the criterion's scorer for the model, the scope, the data, the
    current mask, and one batch of example inputs (to trace a structured model, to count MACs)."""

    scorer: Scorer
    scope: Scope
    data: PruneData | None
    mask: Mask | None
    example_inputs: torch.Tensor | None
    seed: int = 0  # what calibration windows a pattern draws are drawn by


class Pattern(Method):
    """What the unstructured, structured and N:M methods share: the call of the contract, which
    prepares the criterion's scorer, the scope and the data, then :meth:`select`, the pattern's own
    choice of what survives."""

    def __call__(
        self,
        model: nn.Module,
        ratio: float,
        *,
        scope: Scope = GLOBAL,
        criterion: Criterion = L2,
        seed: int = 0,
        example_inputs: torch.Tensor | None = None,
        data: PruneData | None = None,
        mask: Mask | None = None,
    ) -> Pruned:
        scorer, scope, prepared = _setup(model, ratio, criterion, scope, data, seed)
        return self.select(model, ratio, Given(scorer, scope, prepared, mask, example_inputs, seed))

    def select(self, model: nn.Module, ratio: float, given: Given) -> Pruned:
        """The pattern's choice: which units of ``model`` survive ``ratio``, as a result."""
        raise NotImplementedError


@dataclass
class Unstructured(Pattern):
    """Mask the lowest-scored ``ratio`` of the weights of all prunable layers.

    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> round(Unstructured()(net, 0.5).mask.sparsity, 3)
    0.5
    """

    ignore: list[str] = field(default_factory=list)  # layer names (fnmatch patterns) never pruned

    def select(self, model: nn.Module, ratio: float, given: Given) -> Pruned:
        scorer, scope, data, mask = given.scorer, given.scope, given.data, given.mask
        layers = prunable_layers(model, self.ignore)
        if not layers:
            raise PruningError("no prunable (Conv/Linear) layer left after method.ignore")
        weights = {f"{name}.weight": m.weight for name, m in layers.items()}
        alive = {n: current_entries(mask, n, w) for n, w in weights.items()}
        units = Units(
            {n: w.numel() for n, w in weights.items()},
            lambda n: _without_pruned(scorer.weights(n, weights[n]), alive[n]),
            trial=prober(model, data, lambda keeps: keeps),
            cost=_costs(
                model, data, lambda macs: {f"{n}.weight": macs[n] / m.weight.numel() for n, m in layers.items()}
            ),
        )
        keep = allocate(units, ratio, scope)
        masks = {n: _held(k, alive[n]) for n, k in keep.items()}
        return finish(dict(masks), units, masks, weights, mask, ratio)


@dataclass
class NM(Pattern):
    """Semi-structured N:M: in every group of ``m`` consecutive weights along a layer's inputs
    (for a convolution: along its input channels, at each kernel position), the ``n``
    highest-scored survive. A layer whose inputs do not divide by ``m`` is left dense and named in
    a warning. ``ratio`` must be ``(m - n) / m``: the pattern fixes it. The scope has nothing to
    allocate (each group decides alone, as the local scope would): it is taken so that N:M sweeps
    beside Wanda and SparseGPT under their ``scope=local``, and every scope gives the same mask.

    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> round(NM(n=2, m=4)(net, 0.5).mask.sparsity, 3)
    0.5
    """

    n: int = 2
    m: int = 4
    ignore: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_nm(self.n, self.m)

    def select(self, model: nn.Module, ratio: float, given: Given) -> Pruned:
        scorer, mask = given.scorer, given.mask
        n, m = self.n, self.m
        check_nm(n, m, ratio)
        if isinstance(given.scope, Owl):  # (the one scope that allocates something N:M fixes)
            raise PruningError(
                f"scope=owl sets each block's own sparsity; {n}:{m} keeps {n} of every {m} weights in every layer: "
                "use scope=local for N:M"
            )
        candidates = prunable_layers(model, self.ignore)
        layers = {name: layer for name, layer in candidates.items() if layer.weight.shape[1] % m == 0}
        skipped = [name for name in candidates if name not in layers]
        if skipped:
            log.warning("method=nm: %s left dense: input size not divisible by m=%d", ", ".join(skipped), m)
        if not layers:
            raise PruningError(f"method=nm: no prunable layer has an input size divisible by m={m}")
        masks = full_masks(model)
        keep = {}
        for name, layer in layers.items():
            pname, w = f"{name}.weight", layer.weight
            alive = current_entries(mask, pname, w)
            s = _without_pruned(scorer.weights(pname, w), alive)
            # Inputs last, then groups of m: (out, in, *k) -> (out, *k, in) -> (-1, m).
            moved = s.movedim(1, -1)
            groups = moved.reshape(-1, m)
            k = torch.zeros_like(groups, dtype=torch.bool)
            k.scatter_(1, groups.topk(n, dim=1).indices, True)
            k = k.view(moved.shape).movedim(-1, 1).contiguous()
            keep[pname] = k
            masks[pname] = k & alive if alive is not None else k
        final = {p: masks[p] for p in keep}
        return finish(
            final, Units({p: k.numel() for p, k in final.items()}, final.__getitem__), masks, final, mask, ratio
        )


@dataclass
class Structured(Pattern):
    """Mask the lowest-scored ``ratio`` of the output channels of all prunable layers.

    Each group's channel scores are divided by their mean (``normalize="mean"``, Torch-Pruning's
    default group normaliser) before a global threshold compares them: raw filter norms grow with
    fan-in, so unnormalised scores would strip the widest-input layers first (within one layer
    the order is unchanged, so local and per-layer scopes are unaffected). Every group keeps at
    least one channel, so no layer is ever emptied. ``example_inputs`` (one batch) is needed to
    trace the dependency graph.
    """

    # the logits layer: removing its outputs would remove classes
    ignore: list[str] = field(default_factory=lambda: ["classifier"])
    normalize: str = "mean"  # divide each group's channel scores by their mean, or "none"

    def __post_init__(self):
        if self.normalize not in ("mean", "none"):
            raise PruningError(f"method.normalize={self.normalize!r} is not allowed: expected one of mean, none")

    def select(self, model: nn.Module, ratio: float, given: Given) -> Pruned:
        scorer, scope, data, mask, example_inputs = (
            given.scorer,
            given.scope,
            given.data,
            given.mask,
            given.example_inputs,
        )
        layers, graph, groups = self._traced(model, example_inputs)
        param_names = {id(p): n for n, p in model.named_parameters()}
        by_root = {name: (module, group) for name, module, group in groups}
        blocks = {name: group_blocks(name, group, len(group[0].idxs)) for name, (_, group) in by_root.items()}
        heads = {name: group_heads(model, graph, name, group, blocks[name]) for name, (_, group) in by_root.items()}
        alive = {
            name: mask.channels[name].cpu() if mask is not None and name in mask.channels else None for name in by_root
        }

        def score(name):
            _, group = by_root[name]
            n = len(group[0].idxs)
            s = scorer.channels(name, coupled_layers(group, graph, n, param_names), n)
            s = _shared_by_unit(s, n, blocks[name], heads[name])
            if self.normalize == "mean":
                s = _mean_normalised(s, alive[name], name)
            return _without_pruned(s, alive[name])

        def masks_of(keeps):
            masks = full_masks(model)
            for name, k in keeps.items():
                zero_channels(masks, graph, by_root[name][0], (~k).nonzero().flatten().tolist(), param_names)
            return masks

        cached: dict[str, torch.Tensor] = {}
        units = Units(
            {name: len(g[0].idxs) for name, (_, g) in by_root.items()},
            lambda name: cached[name] if name in cached else cached.setdefault(name, score(name)),
            kind="channels",
            trial=prober(model, data, masks_of),
            cost=_costs(model, data, _channel_macs(model, graph, by_root), example_inputs),
        )
        keep = _whole_units(allocate(units, ratio, scope), blocks, heads, alive)
        return finish(keep, units, masks_of(keep), (f"{n}.weight" for n in layers), mask, ratio, channels=keep)

    def _traced(self, model: nn.Module, example_inputs: torch.Tensor | None) -> tuple[dict[str, Prunable], Any, list]:
        """The prunable layers, the dependency graph and its channel groups, traced in eval mode; a
        model that cannot be pruned by output channels (untraceable, its output layer not ignored,
        no group left) is refused here, before anything is scored."""
        if example_inputs is None:
            raise PruningError("structured pruning needs example_inputs to trace the model")
        check_traceable(model)  # before the layers are read: a transformers model is refused first
        layers = prunable_layers(model, self.ignore)
        last = list(prunable_layers(model))[-1]
        if last in layers:
            raise PruningError(
                f"structured pruning would remove output classes of {last!r}: "
                f"add it to method.ignore (now {list(self.ignore)})"
            )
        was_training = model.training
        model.eval()
        try:
            graph, groups = channel_groups(model, example_inputs, self.ignore)
        finally:
            model.train(was_training)
        if not groups:
            raise PruningError("no prunable channel group left after method.ignore")
        return layers, graph, groups


def _shared_by_unit(s: torch.Tensor, n: int, blocks: int, heads: int) -> torch.Tensor:
    """The scores of a group's ``n`` channels where a unit spans several: position i of every block
    is one unit (one shared score), and a head is one unit (its channels share their mean score)."""
    if blocks > 1:
        s = s.view(blocks, -1).mean(0).repeat(blocks)
    if heads > 1:
        s = s.view(heads, -1).mean(1).repeat_interleave(n // heads)
    return s


def _mean_normalised(s: torch.Tensor, alive: torch.Tensor | None, name: str) -> torch.Tensor:
    """A group's channel scores over their mean (the channels still alive), so that a global
    threshold compares groups of different fan-in; negative scores have no such comparison."""
    if bool((s < 0).any()):
        raise PruningError(
            f"{name}: the criterion gave negative channel scores, which normalize=mean "
            "cannot compare across layers; use method.normalize=none"
        )
    return s / s.mean().clamp_min(1e-12) if alive is None else s / s[alive].mean().clamp_min(1e-12)


def _channel_macs(model: nn.Module, graph, by_root: dict) -> Callable[[dict], dict[str, float]]:
    """``per_channel(macs)``: a channel's MACs, for scopes that trade accuracy against MACs: its
    share of every layer it is an output of or an input to (``macs``: each layer's, by name)."""
    module_names = {m: n for n, m in model.named_modules()}

    def per_channel(macs):
        out = {}
        for name, (_, group) in by_root.items():
            total, seen = 0.0, set()
            for item in group:
                module = item.dep.target.module
                is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
                if isinstance(module, PRUNABLE_TYPES) and (module, is_out) not in seen:
                    seen.add((module, is_out))
                    width = module.weight.shape[0] if is_out else module.weight.shape[1] * getattr(module, "groups", 1)
                    # entries of this layer per root channel (a conv channel is 49 inputs of the
                    # linear layer after a 7x7 flatten)
                    per_root = len(item.idxs) / max(len(group[0].idxs), 1)
                    total += macs[module_names[module]] * per_root / width
            out[name] = total
        return out

    return per_channel


def _whole_units(
    keep: dict[str, torch.Tensor], blocks: dict[str, int], heads: dict[str, int], alive: dict[str, torch.Tensor | None]
) -> dict[str, torch.Tensor]:
    """The scope's choice in whole units, held to the current mask: a position kept in one block
    only (min_keep) is kept in all, a head partly kept (a tie, min_keep) is kept whole."""
    for name, b in blocks.items():
        if b > 1:
            keep[name] = keep[name].view(b, -1).any(0).repeat(b)
        if heads[name] > 1:
            keep[name] = keep[name].view(heads[name], -1).any(1).repeat_interleave(len(keep[name]) // heads[name])
        keep[name] = _held(keep[name], alive[name])
    return keep
