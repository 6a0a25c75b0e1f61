"""The pruning methods (patterns): what a unit is, and what removing it zeroes.

* :class:`Unstructured`: a unit is one weight; keep W_ij where score(W_ij) > theta.
* :class:`Structured`: a unit is an output channel (a neuron or conv filter), keep channel i where
  its score (||W_i||_p for magnitude) > theta. Channels come from Torch-Pruning's dependency
  graph, so channels that must go together (a residual addition, the BatchNorm after a conv, the
  next layer's inputs, the flatten->linear boundary) are scored and removed as one unit; a grouped
  convolution's channels go at the same positions in each of its groups, and an attention
  module's (one that declares ``heads``) in whole heads; groups through a LayerNorm (a
  transformer's residual stream) are left whole. Zeroing all of a
  channel's parameters makes the masked network compute exactly what the network with the channel
  physically removed computes (``shrink.py``).
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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import TypeAlias

import torch
import torch_pruning as tp
from torch import nn

from .allocation import Global, allocate, as_scope
from .contracts import Coupled, Criterion, Method, Pruned, Scope, Scorer, Units
from .criteria import Magnitude, as_criterion
from .data import PruneData
from .errors import PruningError, check_nm, check_ratio
from .macs import layer_macs
from .mask import Mask, count, keep_pruned
from .plan import plan_of
from .probe import Probe

log = logging.getLogger(__name__)

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
Prunable: TypeAlias = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear  # a layer PRUNABLE_TYPES admits
_INF = float("inf")
# The logits layer as prunelab's models (``classifier``) and Hugging Face's (``lm_head``, often
# tied to the input embeddings) name it: the methods that keep it ignore these by default.
OUTPUT_LAYERS = ("classifier", "*lm_head")


def prunable_layers(model: nn.Module, ignore: Sequence[str] = ()) -> dict[str, Prunable]:
    """Conv/Linear layers by name, minus those matching an ``ignore`` pattern (fnmatch-style). A
    pattern that matches no layer is warned about (a misspelt name would leave the layer pruned),
    except :data:`OUTPUT_LAYERS`: the defaults of the methods that keep the logits layer, which a
    given model may name otherwise. A layer whose weight is another module's (GPT-2's logits layer,
    tied to the input embeddings) is not prunable: its mask would be the embeddings'."""
    owner = {id(p): name for name, p in model.named_parameters()}  # a shared weight: its first name
    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES) and owner.get(id(m.weight)) == f"{name}.weight"
    }
    for pat in ignore:
        if pat not in OUTPUT_LAYERS and not any(fnmatch(name, pat) for name in layers):
            warnings.warn(
                f"method.ignore: {pat!r} matches no prunable layer (they are: {', '.join(layers)})", stacklevel=2
            )
    return {name: m for name, m in layers.items() if not any(fnmatch(name, pat) for pat in ignore)}


def _full_masks(model: nn.Module) -> dict[str, torch.Tensor]:
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


def _prober(model: nn.Module, data, masks_of: Callable[[dict], dict[str, torch.Tensor]]):
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
    keep: dict[str, torch.Tensor],
    units: Units,
    masks: dict[str, torch.Tensor],
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


class _Pattern(Method):
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
        return self.select(model, ratio, Given(scorer, scope, prepared, mask, example_inputs))

    def select(self, model: nn.Module, ratio: float, given: Given) -> Pruned:
        """The pattern's choice: which units of ``model`` survive ``ratio``, as a result."""
        raise NotImplementedError


@dataclass
class Unstructured(_Pattern):
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
            trial=_prober(model, data, lambda keeps: keeps),
            cost=_costs(
                model, data, lambda macs: {f"{n}.weight": macs[n] / m.weight.numel() for n, m in layers.items()}
            ),
        )
        keep = allocate(units, ratio, scope)
        masks = {n: _held(k, alive[n]) for n, k in keep.items()}
        return finish(dict(masks), units, masks, weights, mask, ratio)


@dataclass
class NM(_Pattern):
    """Semi-structured N:M: in every group of ``m`` consecutive weights along a layer's inputs
    (for a convolution: along its input channels, at each kernel position), the ``n``
    highest-scored survive. A layer whose inputs do not divide by ``m`` is left dense and named in
    a warning. ``ratio`` must be ``(m - n) / m``: the pattern fixes it. The scope has nothing to
    allocate (each group decides alone); it is accepted so every scope composes.

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
        candidates = prunable_layers(model, self.ignore)
        layers = {name: layer for name, layer in candidates.items() if layer.weight.shape[1] % m == 0}
        skipped = [name for name in candidates if name not in layers]
        if skipped:
            log.warning("method=nm: %s left dense: input size not divisible by m=%d", ", ".join(skipped), m)
        if not layers:
            raise PruningError(f"method=nm: no prunable layer has an input size divisible by m={m}")
        masks = _full_masks(model)
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


def check_traceable(model: nn.Module) -> None:
    """Refuse a ``transformers`` model for structured pruning: Torch-Pruning cannot trace GPT-2's
    attention, and their own RMSNorm classes would let the residual stream be masked where removing
    it changes the result."""
    if any(type(m).__module__.startswith("transformers.") for m in model.modules()):
        raise PruningError(
            "structured pruning of a transformers model is not supported: use method=unstructured, "
            "nm, wanda or sparsegpt (model=tiny_gpt loses whole heads and MLP neurons)"
        )


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, traced on ``example_inputs``.

    ``transformers`` models are refused (:func:`check_traceable`)."""
    check_traceable(model)
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as e:
        raise PruningError(
            f"Torch-Pruning could not trace the model for structured pruning ({type(e).__name__}: {e})"
        ) from e


# Normalisations whose statistics span the channels: a zeroed channel still counts in the mean and
# variance, so masking it is not removing it. Groups through them are left whole.
_ACROSS_CHANNELS = tuple(t for t in (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None)) if t)


def channel_groups(model: nn.Module, example_inputs: torch.Tensor, ignore: Sequence[str] = ()):
    """Torch-Pruning's groups of coupled output channels, one per independent channel set.

    Returns ``(graph, [(root_name, root_module, group)])``. A group that contains an ignored layer's
    outputs is skipped entirely (its channels cannot go without changing that layer), and so is a
    group that passes a LayerNorm / GroupNorm / RMSNorm (a transformer's residual stream): there
    the masked network would not compute what the shrunk one does."""
    names = {m: n for n, m in model.named_modules()}
    ignored = [
        m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and any(fnmatch(n, pat) for pat in ignore)
    ]
    graph = dependency_graph(model, example_inputs)
    groups = [
        g
        for g in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE_TYPES)
        if not any(isinstance(item.dep.target.module, _ACROSS_CHANNELS) for item in g)
    ]
    return graph, [(names[g[0].dep.target.module], g[0].dep.target.module, g) for g in groups]


def head_count(model: nn.Module, graph, group) -> tuple[nn.Module, str, int] | None:
    """The attention module whose heads the group's channels are: ``(module, attribute, heads)``.

    An attention module declares its heads as an int attribute ``heads`` or ``num_heads`` and holds
    its projections as child layers; when those layers' outputs are in the group (the dependency
    graph couples q, k, v and the output projection's inputs through the attention op), the group's
    channels go in whole heads of ``channels / heads`` consecutive ones, and the count is updated
    when the network shrinks. A zeroed head attends to zeros, so it adds nothing: masked == shrunk."""
    parents = {id(child): m for m in model.modules() for child in m.children()}
    found = set()
    for item in group:
        parent = parents.get(id(item.dep.target.module))
        if (
            isinstance(item.dep.target.module, PRUNABLE_TYPES)
            and parent is not None
            and graph.is_out_channel_pruning_fn(item.dep.handler)
        ):
            attr = next((a for a in ("heads", "num_heads") if isinstance(getattr(parent, a, None), int)), None)
            if attr is not None:
                found.add((parent, attr, getattr(parent, attr)))
    if len(found) > 1:
        raise PruningError(
            "one channel group spans the heads of several attention modules; add their projections to method.ignore"
        )
    return found.pop() if found else None


def _blocks(root_name: str, group, n: int) -> int:
    """Into how many equal blocks the group's ``n`` channels fall.

    A grouped convolution (1 < groups, not depthwise) holds one weight slice per group, all of one
    shape, so it can only lose the same channel positions in each of its ``groups`` blocks, on its
    inputs as on its outputs. Such a group is pruned block-uniformly (what Torch-Pruning's
    MetaPruner does too). Depthwise convolutions need nothing: their inputs and outputs are one
    coupled channel set."""
    blocks = 1
    for item in group:
        m = item.dep.target.module
        if isinstance(m, PRUNABLE_TYPES[:3]) and 1 < m.groups < m.out_channels:
            blocks = max(blocks, m.groups)
    if n % blocks:
        raise PruningError(
            f"{root_name}: its {n} channels feed a convolution with groups={blocks} "
            "but do not split into equal blocks; add it to method.ignore"
        )
    return blocks


def _heads(model: nn.Module, graph, root_name: str, group, blocks: int) -> int:
    """Into how many attention heads the group's channels fall (1: not an attention group)."""
    found = head_count(model, graph, group)
    if found is None:
        return 1
    n, heads = len(group[0].idxs), found[2]
    if n % heads or blocks > 1:
        raise PruningError(
            f"{root_name}: its {n} channels do not split into {heads} equal attention heads; "
            "add the attention projections to method.ignore"
        )
    return heads


def _coupled(group, graph, n: int, param_names) -> list[Coupled]:
    """The layers whose output channels the group's channels are, each with its row placement."""
    rows = []
    for item in group:
        module = item.dep.target.module
        if isinstance(module, PRUNABLE_TYPES) and graph.is_out_channel_pruning_fn(item.dep.handler):
            src, dst = torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs)

            def place(t, src=src, dst=dst):
                t = t.reshape(t.shape[0], -1).cpu()
                placed = t.new_zeros(n, t.shape[1])
                placed[dst] = t[src]
                return placed

            rows.append(Coupled(param_names[id(module.weight)], module.weight, place))
    return rows


def _zero_channel_masks(masks, graph, root, idxs, param_names) -> None:
    """Mark, in ``masks``, every parameter entry that removing channels ``idxs`` of ``root``
    would delete: output rows, biases, BatchNorm affine entries, and the inputs of the
    layers that consume those channels."""
    if not idxs:
        return
    pruner = graph.get_pruner_of_module(root)
    for dep, item_idxs in graph.get_pruning_group(root, pruner.prune_out_channels, idxs):
        module, ix = dep.target.module, torch.as_tensor(item_idxs, dtype=torch.long)
        out_fn = graph.is_out_channel_pruning_fn(dep.handler)
        for pname, p in module.named_parameters(recurse=False):
            full = param_names[id(p)]
            if isinstance(module, PRUNABLE_TYPES) and not out_fn:
                if pname == "weight":
                    # A grouped conv's weight holds in_channels / groups inputs per output; the
                    # channels go at the same positions in every group (see _blocks).
                    masks[full][:, ix % p.shape[1]] = False
            elif p.dim() >= 1:
                masks[full][ix] = False


@dataclass
class Structured(_Pattern):
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
        param_names = {id(p): n for n, p in model.named_parameters()}
        by_root = {name: (module, group) for name, module, group in groups}
        blocks = {name: _blocks(name, group, len(group[0].idxs)) for name, (_, group) in by_root.items()}
        heads = {name: _heads(model, graph, name, group, blocks[name]) for name, (_, group) in by_root.items()}
        alive = {
            name: mask.channels[name].cpu() if mask is not None and name in mask.channels else None for name in by_root
        }

        def score(name):
            module, group = by_root[name]
            n = len(group[0].idxs)
            s = scorer.channels(name, _coupled(group, graph, n, param_names), n)
            if blocks[name] > 1:  # position i of every block is one unit: one shared score
                s = s.view(blocks[name], -1).mean(0).repeat(blocks[name])
            if heads[name] > 1:  # a head is one unit: its channels share their mean score
                s = s.view(heads[name], -1).mean(1).repeat_interleave(n // heads[name])
            if self.normalize == "mean":
                if bool((s < 0).any()):
                    raise PruningError(
                        f"{name}: the criterion gave negative channel scores, which normalize=mean "
                        "cannot compare across layers; use method.normalize=none"
                    )
                s = s / s.mean().clamp_min(1e-12) if alive[name] is None else s / s[alive[name]].mean().clamp_min(1e-12)
            return _without_pruned(s, alive[name])

        def masks_of(keeps):
            masks = _full_masks(model)
            for name, k in keeps.items():
                _zero_channel_masks(masks, graph, by_root[name][0], (~k).nonzero().flatten().tolist(), param_names)
            return masks

        module_names = {m: n for n, m in model.named_modules()}

        def per_channel(macs):
            """A channel's MACs: its share of every layer it is an output of or an input to."""
            out = {}
            for name, (_, group) in by_root.items():
                total, seen = 0.0, set()
                for item in group:
                    module = item.dep.target.module
                    is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
                    if isinstance(module, PRUNABLE_TYPES) and (module, is_out) not in seen:
                        seen.add((module, is_out))
                        width = (
                            module.weight.shape[0] if is_out else module.weight.shape[1] * getattr(module, "groups", 1)
                        )
                        # entries of this layer per root channel (a conv channel is 49 inputs of the
                        # linear layer after a 7x7 flatten)
                        per_root = len(item.idxs) / max(len(group[0].idxs), 1)
                        total += macs[module_names[module]] * per_root / width
                out[name] = total
            return out

        cached: dict[str, torch.Tensor] = {}
        units = Units(
            {name: len(g[0].idxs) for name, (_, g) in by_root.items()},
            lambda name: cached[name] if name in cached else cached.setdefault(name, score(name)),
            kind="channels",
            trial=_prober(model, data, masks_of),
            cost=_costs(model, data, per_channel, example_inputs),
        )
        keep = allocate(units, ratio, scope)
        for name, b in blocks.items():
            if b > 1:  # min_keep may have kept a position in one block only: keep it in all
                keep[name] = keep[name].view(b, -1).any(0).repeat(b)
            if heads[name] > 1:  # a head partly kept (a tie, min_keep) is kept whole
                keep[name] = keep[name].view(heads[name], -1).any(1).repeat_interleave(len(keep[name]) // heads[name])
            keep[name] = _held(keep[name], alive[name])
        return finish(keep, units, masks_of(keep), (f"{n}.weight" for n in layers), mask, ratio, channels=keep)
