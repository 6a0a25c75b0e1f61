"""Physical removal: turn a structured mask into a smaller network.

Masks only multiply zeros in; the speed-up of structured pruning comes from deleting the channels.
Torch-Pruning's dependency graph does the surgery (following layers, BatchNorm, residual additions,
the flatten->linear boundary), driven by the channels prunelab's own mask chose.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .mask import Mask
from .methods import PruningError, dependency_graph


def shrink(model: nn.Module, mask: Mask, example_inputs: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with the channels ``mask`` removed taken out for real.

    The copy computes the same outputs as the masked model (eval mode) with fewer parameters and
    MACs. ``model`` itself is left as it is."""
    if not mask.channels:
        raise PruningError("shrink needs a structured mask (one with channel choices)")
    shrunk = copy.deepcopy(model)
    mask.apply(shrunk)
    was_training = shrunk.training
    shrunk.eval()
    graph = dependency_graph(shrunk, example_inputs)
    for name, keep in mask.channels.items():
        pruned = (~keep).nonzero().flatten().tolist()
        if pruned:
            root = shrunk.get_submodule(name)
            pruner = graph.get_pruner_of_module(root)
            graph.get_pruning_group(root, pruner.prune_out_channels, pruned).prune()
    return shrunk.train(was_training)
