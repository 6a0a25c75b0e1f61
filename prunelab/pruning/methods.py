"""The pruning methods: what a "unit" is, how it is scored, and what zeroing it means.

* :func:`unstructured` keeps W_ij where score(W_ij) > theta.
* :func:`structured` keeps output channel i (a neuron or conv filter) where ||W_i||_p > theta.
  Channels are taken from Torch-Pruning's dependency graph, so channels that must go together
  (a residual addition, the BatchNorm after a conv, the next layer's inputs, the flatten->linear
  boundary) are scored and removed as one unit; a grouped convolution's channels are removed at
  the same positions in each of its groups. Zeroing all of a channel's parameters makes the
  masked network compute exactly what the network with that channel physically removed computes
  (see ``shrink.py``).

Both return a :class:`~prunelab.pruning.mask.Mask`; neither modifies the model.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

from .allocation import allocate
from .importance import channel_scores, weight_scores
from .mask import Mask

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class PruningError(ValueError):
    """The requested pruning cannot be done on this model; the message says why."""


def prunable_layers(model: nn.Module, ignore: Sequence[str] = ()) -> dict[str, nn.Module]:
    """Conv/Linear layers by name, minus those matching an ``ignore`` pattern (fnmatch-style)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES) and not any(fnmatch(name, pat) for pat in ignore)}


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise PruningError(f"ratio={ratio} is out of range: expected 0 <= ratio < 1")


def _full_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p, dtype=torch.bool, device="cpu") for n, p in model.named_parameters()}


def unstructured(model: nn.Module, ratio: float, scope: str = "global", criterion: str = "l1",
                 ignore: Sequence[str] = (), seed: int = 0, **_) -> Mask:
    """Mask the lowest-scored ``ratio`` of the weights of all prunable layers.

    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> round(unstructured(net, 0.5).sparsity, 3)
    0.5
    """
    _check_ratio(ratio)
    layers = prunable_layers(model, ignore)
    if not layers:
        raise PruningError("no prunable (Conv/Linear) layer left after method.ignore")
    weights = {f"{name}.weight": m.weight for name, m in layers.items()}
    keep = allocate(
        {n: w.numel() for n, w in weights.items()},
        lambda n: weight_scores(weights[n], criterion, n, seed).cpu(),
        ratio, scope,
    )
    masks = {n: k for n, k in keep.items()}
    return Mask(masks, prunable=tuple(weights))


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)


def channel_groups(model: nn.Module, example_inputs: torch.Tensor, ignore: Sequence[str] = ()):
    """Torch-Pruning's groups of coupled output channels, one per independent channel set.

    Returns ``(graph, [(root_name, root_module, group)])``. A group that contains an ignored layer's
    outputs is skipped entirely (its channels cannot go without changing that layer)."""
    names = {m: n for n, m in model.named_modules()}
    ignored = [m for n, m in model.named_modules()
               if isinstance(m, PRUNABLE_TYPES) and any(fnmatch(n, pat) for pat in ignore)]
    graph = dependency_graph(model, example_inputs)
    groups = graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE_TYPES)
    return graph, [(names[g[0].dep.target.module], g[0].dep.target.module, g) for g in groups]


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
        raise PruningError(f"{root_name}: its {n} channels feed a convolution with groups={blocks} "
                           "but do not split into equal blocks; add it to method.ignore")
    return blocks


def _out_rows(group, graph, n: int) -> list[torch.Tensor]:
    """Each coupled layer's weight rows, placed at the root channel index they belong to."""
    rows = []
    for item in group:
        module = item.dep.target.module
        if isinstance(module, PRUNABLE_TYPES) and graph.is_out_channel_pruning_fn(item.dep.handler):
            w = module.weight.detach()
            w = w.reshape(w.shape[0], -1)
            placed = w.new_zeros(n, w.shape[1])
            placed[torch.as_tensor(item.root_idxs)] = w[torch.as_tensor(item.idxs)]
            rows.append(placed)
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


def structured(model: nn.Module, ratio: float, scope: str = "global", criterion: str = "l2",
               ignore: Sequence[str] = ("classifier",), seed: int = 0,
               example_inputs: torch.Tensor | None = None, normalize: str = "mean", **_) -> Mask:
    """Mask the lowest-scored ``ratio`` of the output channels of all prunable layers.

    Global scope compares channels across layers after dividing each group's scores by their mean
    (``normalize="mean"``, Torch-Pruning's default group normaliser): raw filter norms grow with
    fan-in, so unnormalised scores would strip the widest-input layers first. Every group keeps
    at least one channel, so no layer is ever emptied. ``example_inputs`` (one batch) is needed to
    trace the dependency graph.
    """
    _check_ratio(ratio)
    if example_inputs is None:
        raise PruningError("structured pruning needs example_inputs to trace the model")
    if normalize not in ("mean", "none"):
        raise PruningError(f"normalize={normalize!r}: expected 'mean' or 'none'")
    layers = prunable_layers(model, ignore)
    last = list(prunable_layers(model))[-1]
    if last in layers:
        raise PruningError(f"structured pruning would remove output classes of {last!r}: "
                           f"add it to method.ignore (now {list(ignore)})")
    was_training = model.training
    model.eval()
    try:
        graph, groups = channel_groups(model, example_inputs, ignore)
    finally:
        model.train(was_training)
    if not groups:
        raise PruningError("no prunable channel group left after method.ignore")
    by_root = {name: (module, group) for name, module, group in groups}
    blocks = {name: _blocks(name, group, len(group[0].idxs)) for name, (_, group) in by_root.items()}

    def score(name):
        module, group = by_root[name]
        n = len(group[0].idxs)
        s = channel_scores(_out_rows(group, graph, n), n, criterion, name, seed)
        if blocks[name] > 1:  # position i of every block is one unit: one shared score
            s = s.view(blocks[name], -1).mean(0).repeat(blocks[name])
        return s / s.mean().clamp_min(1e-12) if scope == "global" and normalize == "mean" else s

    keep = allocate({name: len(g[0].idxs) for name, (_, g) in by_root.items()}, score, ratio, scope,
                    min_keep=1)
    for name, b in blocks.items():
        if b > 1:  # min_keep may have kept a position in one block only: keep it in all
            keep[name] = keep[name].view(b, -1).any(0).repeat(b)
    masks = _full_masks(model)
    param_names = {id(p): n for n, p in model.named_parameters()}
    for name, (module, _) in by_root.items():
        pruned = (~keep[name]).nonzero().flatten().tolist()
        _zero_channel_masks(masks, graph, module, pruned, param_names)
    prunable = tuple(f"{n}.weight" for n in layers)
    return Mask(masks, prunable=prunable, channels=keep)
