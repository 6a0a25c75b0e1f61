"""Depth pruning: whole blocks of a transformer removed, those that change their input least.

A block's importance is the angular distance between the hidden states it receives and those it
returns, ``arccos(cos(x_in, x_out)) / pi`` per token, averaged over calibration tokens: Gromov et
al. 2024 ("The Unreasonable Ineffectiveness of the Deeper Layers", eq. 7, for one block) and Men et
al. 2024 (ShortGPT's Block Influence, ``1 - cos``, which ranks blocks the same way, cos being
monotone in the angle). The ``round(ratio * blocks)`` blocks of smallest distance go, at once
(ShortGPT's removal); every block's distance is the run's ``blocks.csv``.

The mask zeroes every parameter of a removed block (weights, biases, norms). In a pre-norm block,
``x + f(norm(x))`` with every projection after a norm, a zero norm and zero projections make ``f``
return zeros: the masked model computes exactly what the model without those blocks computes, and
:func:`remove_blocks` takes them out (a Hugging Face config's layer count follows). A post-norm
block (``norm(x + f(x))``: OPT-350m) is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from typing_extensions import override

from .blocks import Inputs, capture, required_blocks, run
from .contracts import Criterion, Method, Pruned, Scope
from .data import TRAIN, PruneData
from .errors import PruningError, check_positive
from .mask import Mask, keep_pruned
from .plan import plan_of
from .tracing import OUTPUT_LAYERS, prunable_layers

ORDERS = ("distance", "last")


@torch.no_grad()
def angular_distances(blocks: nn.ModuleList, inputs: list[Inputs]) -> list[float]:
    """Each block's mean angular distance ``arccos(cos(x_in, x_out)) / pi`` over the tokens of
    ``inputs`` (what block 0 receives, batch by batch), walking the blocks in order."""
    distances = []
    for block in blocks:
        total, tokens, outputs = 0.0, 0, []
        for one, out in zip(inputs, run(block, inputs), strict=True):
            x_in = one.args[0] if one.args else one.kwargs["hidden_states"]
            cos = torch.nn.functional.cosine_similarity(x_in.double(), out.double(), dim=-1)
            total += float(torch.arccos(cos.clamp(-1.0, 1.0)).sum()) / math.pi
            tokens += cos.numel()
            outputs.append(out)
        distances.append(total / tokens)
        inputs = [one.replaced(out) for one, out in zip(inputs, outputs, strict=True)]
    return distances


def _check_pre_norm(model: nn.Module) -> None:
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "do_layer_norm_before", True) is False:
            raise PruningError(
                "method=blocks removes pre-norm blocks (x + f(norm(x))); this model normalises after the "
                "residual addition (do_layer_norm_before=false), so a removed block is not a zeroed one"
            )


@dataclass
class Blocks(Method):
    """Depth pruning (the module docstring): ``ratio`` of the repeated blocks removed, by their
    angular distance on ``samples`` calibration inputs. It scores whole blocks itself: the criterion
    and the scope do not apply."""

    takes: ClassVar[frozenset[str]] = frozenset({"calibration", "blocks"})

    ignore: list[str] = field(default_factory=lambda: list(OUTPUT_LAYERS))  # layers outside the count
    samples: int = 32  # calibration inputs (sequences), drawn by calibration_seed
    calibration: str = TRAIN  # from the dataset's training split, or a source it offers (text: c4)
    blocks: str | None = None  # where the repeated blocks are (an attribute path); None: the known places
    # distance: the blocks of least angular distance go; last: the last blocks (the baseline the
    # papers compare with; the distances are still measured and logged)
    order: str = "distance"

    def __post_init__(self):
        check_positive(self.samples, "method.samples")
        if self.order not in ORDERS:
            raise PruningError(f"method.order={self.order!r} is not allowed: expected one of {', '.join(ORDERS)}")

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
    ) -> Pruned:
        path, modules = required_blocks(model, self.blocks, "blocks")
        count = len(modules)
        drop = round(ratio * count)
        if drop >= count:
            raise PruningError(
                f"method=blocks ratio={ratio} removes all {count} blocks of the model: "
                f"the ratio must leave one (ratio < {(count - 0.5) / count:.3g})"
            )
        _check_pre_norm(model)
        if data is None:
            raise PruningError("method=blocks measures the blocks on calibration data: pass data=PruneData(...)")
        gone = set(mask.blocks.get(path, ())) if mask is not None else set()
        x = data.calibration(self.samples, seed, self.calibration)
        distances = angular_distances(modules, capture(model, modules[0], x))
        importance = distances if self.order == "distance" else [-i for i in range(count)]
        order = sorted(range(count), key=lambda i: (i not in gone, importance[i], i))  # removed ones stay removed
        removed = sorted(order[: max(drop, len(gone))])
        return _result(model, path, removed, distances, self.ignore, mask)


def _result(
    model: nn.Module, path: str, removed: list[int], distances: list[float], ignore, mask: Mask | None
) -> Pruned:
    inside = tuple(f"{path}.{i}." for i in removed)
    masks = {
        name: torch.zeros_like(p, dtype=torch.bool, device="cpu")
        for name, p in model.named_parameters()
        if name.startswith(inside)
    }
    prunable = [f"{name}.weight" for name in prunable_layers(model, ignore)]
    for name in prunable:
        masks.setdefault(name, torch.ones_like(model.get_parameter(name), dtype=torch.bool, device="cpu"))
    keep_pruned(masks, mask.masks if mask is not None else None)
    count = len(distances)
    table = "block,angular_distance,removed\n" + "".join(
        f"{i},{d:.6f},{str(i in removed).lower()}\n" for i, d in enumerate(distances)
    )
    plan = plan_of("blocks", {path: (count, count - len(removed), (count,))})
    return Pruned(
        Mask(masks, tuple(prunable), blocks={path: tuple(removed)}), plan, {"blocks.csv": table}, len(removed) / count
    )


def remove_blocks(model: nn.Module, path: str, removed: tuple[int, ...]) -> nn.Module:
    """``model`` (in place; returned) without the blocks ``removed`` of its ``nn.ModuleList`` at
    ``path``: the blocks after them renumbered (a block's attention knows its index, for the key/value
    cache) and a Hugging Face config's layer count (and per-layer types) made the new depth's."""
    blocks = model.get_submodule(path)
    if not isinstance(blocks, nn.ModuleList):
        raise PruningError(f"{path} is not an nn.ModuleList of the model")
    before = len(blocks)
    kept = nn.ModuleList(block for i, block in enumerate(blocks) if i not in set(removed))
    for new, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                setattr(module, "layer_idx", new)  # noqa: B010  (an attribute of some modules only)
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, kept)
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    for config in configs.values():
        if getattr(config, "num_hidden_layers", None) == before:
            config.num_hidden_layers = len(kept)
            types = getattr(config, "layer_types", None)
            if isinstance(types, list) and len(types) == before:
                config.layer_types = [t for i, t in enumerate(types) if i not in set(removed)]
    return model


__all__ = ["Blocks", "angular_distances", "remove_blocks"]
