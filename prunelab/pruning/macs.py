"""Counting what a network costs: parameters, MACs of one forward pass (in total, nonzero, and per
layer). Pruning uses them to spend a MACs budget and to weigh units by cost; the cost ledger
(``prunelab.deploy.ledger``) reports them."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

COUNTED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p.detach() != 0).sum()) for p in params)


@torch.no_grad()
def mac_counts(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(MACs, nonzero MACs) of one forward pass on ``x``.

    MACs are ``torch.utils.flop_counter``'s FLOPs / 2. Nonzero MACs are what is left if every
    conv/linear layer skipped its zero weights: the layer's MACs times its weight density (exact
    for both: each weight is used once per output position)."""
    counter = FlopCounterMode(display=False)
    started, saved = {}, []

    def before(module, _):
        started[module] = counter.get_total_flops()

    def after(module, _, __):
        flops = counter.get_total_flops() - started.pop(module)
        w = module.weight.detach()
        saved.append(flops / 2 * float((w == 0).sum()) / w.numel())

    handles = [
        h
        for m in model.modules()
        if isinstance(m, COUNTED_TYPES)
        for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))
    ]
    try:
        with counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    macs = counter.get_total_flops() / 2
    return macs, macs - sum(saved)


@torch.no_grad()
def layer_macs(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """MACs of one forward pass on ``x`` per conv/linear layer, by module name."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    counts = {
        key.split(".", 1)[1]: sum(ops.values()) / 2 for key, ops in counter.get_flop_counts().items() if "." in key
    }
    return {name: counts.get(name, 0.0) for name, m in model.named_modules() if isinstance(m, COUNTED_TYPES)}
