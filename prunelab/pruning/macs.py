"""Counting what a network costs: parameters, MACs of one forward pass (in total, nonzero, and per
layer). Pruning uses them to spend a MACs budget and to weigh units by cost; the cost ledger
(``prunelab.deploy.ledger``) reports them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from typing_extensions import override

COUNTED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p.detach() != 0).sum()) for p in params)


class _ReadsValues(Exception):
    """A forward that reads a number back from its tensors: its shapes may depend on it."""


class _MetaValues(TorchDispatchMode):
    """On meta tensors, a truth value read back (``bool(t)``: a model asking whether its batch is
    packed, whether a mask is all ones) reads as True; any other value read back stops the meta
    pass (:class:`_ReadsValues`): a count there could depend on it."""

    @override
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            if args[0].dtype is torch.bool:
                return True
            raise _ReadsValues
        return func(*args, **(kwargs or {}))


class _NoFusedAttention(TorchFunctionMode):
    """Fused attention (``F.scaled_dot_product_attention``) stops the meta pass: which kernel runs
    it, and so what PyTorch's counter counts of it (nothing for the CPU's fused kernel, its
    matrix products for the math one), depends on the device, the mask and the sizes, and a
    model's recorded MACs stay the ones a forward on its device gives. A transformer is counted
    on its weights."""

    @override
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            raise _ReadsValues
        return func(*args, **(kwargs or {}))


def _on_meta(model: nn.Module, x: torch.Tensor) -> None:
    """A forward of ``model`` on ``x`` with its parameters and buffers as meta tensors (shapes
    without values: nothing is computed, nothing is allocated), the model itself untouched."""
    tensors = (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))
    state = {name: torch.empty_like(t, device="meta") for name, t in tensors}  # (a tied weight under each name)
    with _NoFusedAttention(), _MetaValues():
        functional_call(model, state, (x.to("meta"),), strict=False, tie_weights=False)


def _counted_forward(
    model: nn.Module, x: torch.Tensor, counter: FlopCounterMode, restart: Callable[[], None] = lambda: None
) -> None:
    """One forward of ``model`` on ``x`` under ``counter``: on the meta device where the model
    runs there (its MACs follow from its shapes, as the architecture says them: nothing computed,
    at any size: convolutional and fully connected networks), else on its weights (a forward that
    reads numbers back, fused attention, an operator without a meta kernel)."""
    try:
        with counter:
            _on_meta(model, x)
        return
    except Exception:  # (_ReadsValues, an operator without a meta kernel): counted on the weights
        counter.flop_counts.clear()
        restart()
    with counter:
        model(x)


@torch.no_grad()
def mac_counts(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(MACs, nonzero MACs) of one forward pass on ``x``, counted on the meta device where the
    model runs there (:func:`_counted_forward`).

    MACs are ``torch.utils.flop_counter``'s FLOPs / 2. Nonzero MACs are what is left if every
    conv/linear layer skipped its zero weights: the layer's MACs times its weight density (exact
    for both: each weight is used once per output position)."""
    counter = FlopCounterMode(display=False)
    zeros = {
        m: float((m.weight == 0).sum()) / m.weight.numel() for m in model.modules() if isinstance(m, COUNTED_TYPES)
    }
    started, saved = {}, []

    def before(module, _):
        started[module] = counter.get_total_flops()

    def after(module, _, __):
        flops = counter.get_total_flops() - started.pop(module)
        saved.append(flops / 2 * zeros[module])

    def restart() -> None:
        started.clear()
        saved.clear()

    handles = [h for m in zeros for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        _counted_forward(model, x, counter, restart)
    finally:
        for h in handles:
            h.remove()
    macs = counter.get_total_flops() / 2
    return macs, macs - sum(saved)


@torch.no_grad()
def layer_macs(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """MACs of one forward pass on ``x`` per conv/linear layer, by module name (counted on the
    meta device where the model runs there)."""
    counter = FlopCounterMode(display=False)
    _counted_forward(model, x, counter)
    counts = {
        key.split(".", 1)[1]: sum(ops.values()) / 2 for key, ops in counter.get_flop_counts().items() if "." in key
    }
    return {name: counts.get(name, 0.0) for name, m in model.named_modules() if isinstance(m, COUNTED_TYPES)}
