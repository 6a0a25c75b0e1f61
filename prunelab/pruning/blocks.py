"""A transformer's repeated blocks, run one at a time on captured inputs.

Post-training pruning of a deep model is linear in its depth only if no block is run twice from the
model's input: the papers' code (IST-DASLab/sparsegpt ``opt.py`` / ``llama.py``, locuslab/wanda
``lib/prune.py``) captures what block 0 receives once, then runs each block on what the previous one
returned. This module finds the blocks and does that capture and that walk; ``layerwise.py`` does
the pruning between the steps.

What a block receives besides the hidden states (an attention mask, position ids, rotary
embeddings) is captured with them and handed to every block unchanged, as the papers' code does;
a key/value cache is dropped (passed by keyword or by position; ``use_cache`` off) so that
running a block again does not grow it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import PruningError

# Where known architectures keep their blocks: tiny_gpt, LLaMA / Mistral / Qwen2, OPT, GPT-2;
# each also under ``model.`` (prunelab's CausalLM wraps a Hugging Face model there).
KNOWN = ("blocks", "model.layers", "model.decoder.layers", "transformer.h")
_CACHE_KEYS = ("past_key_value", "past_key_values")
T = TypeVar("T")


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def _is_cache(value: Any) -> bool:
    """A key/value cache (``transformers``' ``Cache`` classes), however it is passed."""
    return hasattr(value, "get_seq_length") and not isinstance(value, torch.Tensor)


def _get(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return None
    return module


def hf_config(model: nn.Module) -> Any:
    """The Hugging Face config of ``model`` (or of the model it wraps); None for other models."""
    return next((c for m in model.modules() if hasattr(c := getattr(m, "config", None), "model_type")), None)


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList] | None:
    """``(attribute path, blocks)``: the ``path`` the user declared, else the first known place
    holding an ``nn.ModuleList``; None when the model has no repeated blocks there."""
    if path is not None:
        found = _get(model, path)
        if not isinstance(found, nn.ModuleList):
            raise PruningError(f"method.blocks={path!r} is not an nn.ModuleList of the model")
        return path, found
    for known in KNOWN:
        for prefix in ("", "model."):
            found = _get(model, prefix + known)
            if isinstance(found, nn.ModuleList) and len(found):
                return prefix + known, found
    return None


def required_blocks(model: nn.Module, path: str | None, method: str) -> tuple[str, nn.ModuleList]:
    """:func:`find_blocks`, for a method that needs them: one line naming ``method`` where there are none."""
    found = find_blocks(model, path)
    if found is None:
        raise PruningError(
            f"method={method}: the model has no repeated blocks where known models keep them; set "
            "method.blocks to the attribute path of its nn.ModuleList of blocks"
        )
    return found


@dataclass
class Inputs:
    """What one block receives for one batch: positional and keyword arguments, the hidden states
    either the first positional one or the keyword ``hidden_states``."""

    args: tuple
    kwargs: dict

    def to(self, device: torch.device | str) -> Inputs:
        """The same inputs on ``device`` (tensors inside tuples and lists too, e.g. rotary
        embeddings' ``(cos, sin)``)."""
        return Inputs(_moved(self.args, device), {k: _moved(v, device) for k, v in self.kwargs.items()})

    def replaced(self, hidden: torch.Tensor) -> Inputs:
        if self.args:
            return Inputs((hidden, *self.args[1:]), self.kwargs)
        return Inputs((), {**self.kwargs, "hidden_states": hidden})


def _moved(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(v, device) for v in value)
    return value


# Calibration values per batch of a block's pass (a text window's tokens, an image's pixels): what
# bounds its working set. A block's attention scores grow with the batch (32 windows of 512 tokens
# through 12 heads: 400 MiB of scores, and a layer's float64 Gram input as much again); in batches
# of 2,048 tokens they stay a few tens of MiB at OPT-125m's width, one window per batch from 2,048
# tokens up, as the SparseGPT and Wanda code runs its samples.
BATCH_VALUES = 2048


def batch_size_for(x: torch.Tensor) -> int:
    """How many of the samples ``x`` one pass of a block takes (:data:`BATCH_VALUES`)."""
    return max(1, BATCH_VALUES // max(1, x[0].numel())) if len(x) else 1


@torch.no_grad()
def capture(model: nn.Module, first: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> list[Inputs]:
    """What ``first`` (block 0) receives when ``model`` runs on ``x``, batch by batch (None: as
    :func:`batch_size_for` says); the model runs only up to it."""
    batch_size = batch_size or batch_size_for(x)
    seen: list[Inputs] = []

    def hook(_module, args, kwargs):
        kwargs = {k: None if k in _CACHE_KEYS or _is_cache(v) else v for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        seen.append(Inputs(tuple(None if _is_cache(a) else a for a in args), kwargs))
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            with contextlib.suppress(_Stop):
                model(x[start : start + batch_size])
    finally:
        handle.remove()
        model.train(was_training)
    if len(seen) != -(-len(x) // batch_size):
        raise PruningError("the model's forward pass did not reach its first block once per batch")
    return seen


@torch.no_grad()
def run(block: nn.Module, inputs: list[Inputs]) -> Iterator[torch.Tensor]:
    """``block``'s hidden-state outputs, batch by batch (a tuple's first element)."""
    was_training = block.training
    block.eval()
    try:
        for one in inputs:
            out = block(*one.args, **one.kwargs)
            yield out[0] if isinstance(out, (tuple, list)) else out
    finally:
        block.train(was_training)


def advance(block: nn.Module, inputs: list[Inputs]) -> list[Inputs]:
    """The next block's inputs: ``block``'s outputs in place of the hidden states."""
    return [one.replaced(out) for one, out in zip(inputs, run(block, inputs), strict=True)]


@torch.no_grad()
def fold_inputs(
    block: nn.Module,
    inputs: list[Inputs],
    layers: dict[str, nn.Module],
    add: Callable[[T | None, torch.Tensor], T],
    passed_on: bool = True,
) -> tuple[dict[str, T], list[Inputs]]:
    """One pass of ``block`` over ``inputs``: each of ``layers``' inputs (a batch of them, as the
    layer receives it) folded batch by batch into a total by ``add(total or None, inputs)`` (squared
    norms, a ``seen.Seen``), and the next block's inputs (``passed_on=False``: none kept, []
    returned; the outputs are dropped batch by batch). A layer the pass never reaches is one
    :class:`PruningError`."""
    totals: dict[str, T] = {}

    def hook(name):
        def gather(_module, args):
            totals[name] = add(totals.get(name), args[0].detach())

        return gather

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    after: list[Inputs] = []
    try:
        if passed_on:
            after = advance(block, inputs)
        else:
            for _ in run(block, inputs):
                pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in totals]
    if missing:
        raise PruningError(f"{', '.join(missing)} never ran in its block's forward pass: add it to method.ignore")
    return totals, after


__all__ = ["KNOWN", "Inputs", "advance", "capture", "find_blocks", "fold_inputs", "hf_config", "required_blocks", "run"]
