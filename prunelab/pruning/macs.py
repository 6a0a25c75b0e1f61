"""Counting what a network costs: parameters, MACs of one forward pass (in total, nonzero, and per
layer). Pruning uses them to spend a MACs budget and to weigh units by cost; the cost ledger
(``prunelab.deploy.ledger``) reports them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry
from typing_extensions import override

aten = torch.ops.aten
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


# The ATen kernel ``F.scaled_dot_product_attention`` runs for each backend it may choose (the CPU has
# a flash kernel of its own); which of them PyTorch's counter counts is its formula registry's say.
_ATTENTION_KERNELS = {
    SDPBackend.FLASH_ATTENTION: aten._scaled_dot_product_flash_attention,
    SDPBackend.EFFICIENT_ATTENTION: aten._scaled_dot_product_efficient_attention,
    SDPBackend.CUDNN_ATTENTION: aten._scaled_dot_product_cudnn_attention,
    SDPBackend.OVERRIDEABLE: aten._scaled_dot_product_fused_attention_overrideable,
}
_CPU_ATTENTION_KERNELS = {SDPBackend.FLASH_ATTENTION: aten._scaled_dot_product_flash_attention_for_cpu}


def _attention_counted(
    device: torch.device,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> bool:
    """Whether PyTorch's counter counts the attention a forward on ``device`` runs for these
    arguments (meta tensors: their shapes): the kernel is the one PyTorch chooses there, asked with
    empty tensors of the same shapes on that device (nothing computed; a window's queries and
    mask), and counted where it is the math kernel (its matrix products) or has a formula."""

    def there(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, dtype=t.dtype, device=device)

    mask = there(attn_mask) if isinstance(attn_mask, torch.Tensor) else attn_mask
    choice = torch._fused_sdp_choice(
        there(query), there(key), there(value), mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
    )
    if choice == SDPBackend.MATH.value:
        return True
    kernels = _CPU_ATTENTION_KERNELS if device.type == "cpu" else _ATTENTION_KERNELS
    kernel = next((k for b, k in kernels.items() if b.value == choice), None)
    return kernel is not None and kernel in flop_registry


class _AttentionAsOnDevice(TorchFunctionMode):
    """Fused attention (``F.scaled_dot_product_attention``) on meta tensors counts what a forward on
    the model's device counts: which kernel runs it, and so what PyTorch's counter counts of it
    (nothing for the CPU's flash kernel, the matrix products for the math one and the GPU's fused
    ones), depends on the device, the mask and the sizes. A model's recorded MACs stay the ones a
    forward on its device gives: an uncounted kernel gives a meta output of the right shape."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    @override
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not _attention_counted(self.device, *args, **kwargs):
            query, value = (kwargs[k] if k in kwargs else args[i] for i, k in ((0, "query"), (2, "value")))
            return query.new_empty((*query.shape[:-1], value.shape[-1]))
        return func(*args, **kwargs)


def _on_meta(model: nn.Module, x: torch.Tensor) -> None:
    """A forward of ``model`` on ``x`` with its parameters and buffers as meta tensors (shapes
    without values: nothing is computed, nothing is allocated), the model itself untouched."""
    tensors = (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))
    state = {name: torch.empty_like(t, device="meta") for name, t in tensors}  # (a tied weight under each name)
    with _AttentionAsOnDevice(x.device), _MetaValues():
        functional_call(model, state, (x.to("meta"),), strict=False, tie_weights=False)


def _counted_forward(
    model: nn.Module, x: torch.Tensor, counter: FlopCounterMode, restart: Callable[[], None] = lambda: None
) -> None:
    """One forward of ``model`` on ``x`` under ``counter``: on the meta device where the model
    runs there (its MACs follow from its shapes, as the architecture says them: nothing computed,
    at any size: convolutional, fully connected and transformer networks), else on its weights (a
    forward that reads numbers back, an operator without a meta kernel)."""
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
