"""Tracing a model: which of its layers can be pruned, and which output channels go together.

The pruning methods (``methods.py``) choose what survives; what they choose among comes from
here. Channels come from Torch-Pruning's dependency graph, so channels that must go together (a
residual addition, the BatchNorm after a conv, the next layer's inputs, the flatten->linear
boundary) form one group; a grouped convolution's channels fall into equal blocks, an attention
module's (one that declares ``heads``) into whole heads, and groups through a LayerNorm (a
transformer's residual stream) are left out. Physical removal (``shrink.py``) traces the same
graph, so the masked and the shrunk network agree. The only prunelab module that imports
Torch-Pruning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from fnmatch import fnmatch
from typing import TypeAlias

import torch
import torch_pruning as tp
from torch import nn

from .contracts import Coupled
from .errors import PruningError

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
Prunable: TypeAlias = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear  # a layer PRUNABLE_TYPES admits
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


def check_traceable(model: nn.Module) -> None:
    """Refuse a ``transformers`` model for structured pruning: Torch-Pruning cannot trace GPT-2's
    attention, and their own RMSNorm classes would let the residual stream be masked where removing
    it changes the result."""
    if any(type(m).__module__.startswith("transformers.") for m in model.modules()):
        raise PruningError(
            "method=structured cannot trace a transformers model: use method=width (attention heads and "
            "MLP channels) or method=blocks (whole blocks), or a sparse pattern: method=unstructured, nm, "
            "wanda or sparsegpt"
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


def group_blocks(root_name: str, group, n: int) -> int:
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


def group_heads(model: nn.Module, graph, root_name: str, group, blocks: int) -> int:
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


def coupled_layers(group, graph, n: int, param_names) -> list[Coupled]:
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


def zero_channels(masks, graph, root, idxs, param_names) -> None:
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
                    # channels go at the same positions in every group (see group_blocks).
                    masks[full][:, ix % p.shape[1]] = False
            elif p.dim() >= 1:
                masks[full][ix] = False


__all__ = [
    "OUTPUT_LAYERS",
    "PRUNABLE_TYPES",
    "Prunable",
    "channel_groups",
    "check_traceable",
    "coupled_layers",
    "dependency_graph",
    "group_blocks",
    "group_heads",
    "head_count",
    "prunable_layers",
    "zero_channels",
]
