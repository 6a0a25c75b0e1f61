"""Physical removal: turn a structured mask into a smaller network.

Masks only multiply zeros in; the speed-up of structured pruning comes from deleting the channels.
Torch-Pruning's dependency graph does the surgery (following layers, BatchNorm, residual additions,
the flatten->linear boundary), driven by the channels prunelab's own mask chose.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .depth import remove_blocks
from .errors import PruningError
from .mask import Mask
from .tracing import dependency_graph, head_count
from .width import remove_units


def shrink(model: nn.Module, mask: Mask, example_inputs: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with the channels or blocks ``mask`` removed taken out for real.

    The copy computes the same outputs as the masked model (eval mode) with fewer parameters and
    MACs. ``model`` itself is left as it is."""
    if not mask.structural:
        raise PruningError("shrink needs a structured mask (one with channel or block choices)")
    if mask.layout and mask.blocks:
        raise PruningError("shrink: a mask that removes both blocks and heads or channels is not supported")
    shrunk = copy.deepcopy(model)
    mask.apply(shrunk)
    if mask.layout:  # a transformer's heads and MLP channels (pruning.width)
        return remove_units(shrunk, mask)
    for path, removed in mask.blocks.items():
        remove_blocks(shrunk, path, removed)
    if not mask.channels:
        return shrunk
    was_training = shrunk.training
    shrunk.eval()
    graph = dependency_graph(shrunk, example_inputs)
    for name, keep in mask.channels.items():
        pruned = (~keep).nonzero().flatten().tolist()
        if pruned:
            root = shrunk.get_submodule(name)
            pruner = graph.get_pruner_of_module(root)
            group = graph.get_pruning_group(root, pruner.prune_out_channels, pruned)
            attention = head_count(shrunk, graph, group)
            group.prune()
            if attention is not None:  # whole heads went: the module splits its projections into fewer
                module, attr, heads = attention
                setattr(module, attr, heads * int(keep.sum()) // len(keep))
    return shrunk.train(was_training)


@torch.no_grad()
def unshrink(shrunk: nn.Module, mask: Mask, into: nn.Module) -> nn.Module:
    """Write ``shrunk``'s weights back into the full-size layout of ``into`` (in place; returned).

    The inverse of :func:`shrink` on the kept entries: a structured mask keeps the cartesian product
    of kept output and input channels, in order, so each shrunk tensor fills its full tensor's kept
    entries in row-major order. BatchNorm statistics follow their layer's weight mask; entries the
    mask removed are left as they are in ``into`` (zeros, for a masked model). This is how a
    network fine-tuned physically smaller reports in the full layout (masks, ``layers.csv``)."""
    full = into.state_dict()
    for name, small in shrunk.state_dict().items():
        name = _full_name(name, mask.blocks)
        target = full.get(name)
        if target is None:
            raise PruningError(f"unshrink: {name} is not in the full-size model")
        if target.shape == small.shape:
            target.copy_(small)
            continue
        keep = mask.masks.get(name)
        if keep is None:  # a buffer (BatchNorm statistics): shaped like its layer's weight
            keep = mask.masks.get(f"{name.rpartition('.')[0]}.weight")
        if keep is None or keep.dim() != small.dim() or int(keep.sum()) != small.numel():
            raise PruningError(
                f"unshrink: {name} has shape {tuple(small.shape)} in the shrunk model and "
                f"{tuple(target.shape)} in the full one, and its mask does not map one onto the other"
            )
        target[keep.to(target.device)] = small.flatten().to(target.dtype)
    return into


def _full_name(name: str, blocks: dict[str, tuple[int, ...]]) -> str:
    """A shrunk model's parameter name in the full-size model: a block after removed ones numbered
    as it was."""
    for path, removed in blocks.items():
        if name.startswith(f"{path}."):
            index, _, rest = name[len(path) + 1 :].partition(".")
            if index.isdigit():
                kept = [i for i in range(int(index) + len(removed) + 1) if i not in set(removed)]
                return f"{path}.{kept[int(index)]}.{rest}"
    return name
