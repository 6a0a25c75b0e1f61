"""LoRA recovery (finetune.lora): low-rank adapters trained on the pruned model, merged with the
mask held.

LLM-Pruner's recovery (horseee/LLM-Pruner ``post_training.py`` at
128a07d977f9b205d60ab14cfbc6a78f8a8e39d2): Hugging Face PEFT's LoRA (``r=8``, ``lora_alpha=16``,
``lora_dropout=0.05`` on every projection of the blocks) trained on the pruned model, every other
weight frozen, then merged. A merged update ``ΔW = B A · alpha / r`` is dense: added as it is it
would refill the pruned weights. Here it is merged masked, ``W += ΔW ⊙ M``, so the model ends with
exactly the sparsity it was pruned to. After width or depth pruning with ``finetune.shrink`` the
adapters train on the shrunk network (nothing pruned left in it: ``M`` is all ones), which is then
written back into the full layout.

The adapters go in through ``peft.inject_adapter_in_model`` (any ``nn.Module``, no ``PeftModel``
wrapper), the update of each is PEFT's own ``get_delta_weight``.
"""

from __future__ import annotations

import fnmatch
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..pruning.blocks import find_blocks
from ..pruning.mask import Mask


@dataclass(frozen=True)
class Lora:
    """The adapters' options (LLM-Pruner's defaults). ``targets``: the layers adapted, by name
    (``fnmatch`` patterns, or a name's last part: ``q_proj``); None: every ``nn.Linear`` of the
    repeated blocks."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"finetune.lora_rank={self.rank} must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"finetune.lora_dropout={self.dropout}: expected 0 <= dropout < 1")
        if importlib.util.find_spec("peft") is None:
            raise ConfigError(
                "finetune.lora=true trains adapters with PEFT, which is not installed: pip install 'prunelab[lora]'"
            )

    def targeted(self, model: nn.Module) -> list[str]:
        """The names of the ``nn.Linear`` layers of ``model`` the adapters go on; one line where
        ``targets`` match none."""
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if self.targets is None:
            found = find_blocks(model)
            inside = [n for n in linear if found is not None and n.startswith(found[0] + ".")]
            if not inside:
                raise ConfigError(
                    "finetune.lora: the model has no repeated blocks; name the layers in finetune.lora_targets"
                )
            return inside
        chosen = [
            n for n in linear if any(fnmatch.fnmatchcase(n, t) or n.rsplit(".", 1)[-1] == t for t in self.targets)
        ]
        if not chosen:
            raise ConfigError(
                f"finetune.lora_targets={list(self.targets)} match no nn.Linear layer of the model "
                f"(e.g. {', '.join(n.rsplit('.', 1)[-1] for n in linear[:4])})"
            )
        return chosen

    def attach(self, model: nn.Module) -> Adapters:
        """Adapters put on ``model`` (in place), every other parameter frozen until :meth:`Adapters.merge`."""
        from peft import LoraConfig, inject_adapter_in_model

        names = self.targeted(model)
        trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=names)
        inject_adapter_in_model(config, model)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
        return Adapters(model, names, trainable)


@dataclass
class Adapters:
    """The adapters on ``model``'s layers ``names``, and what was trainable before them."""

    model: nn.Module
    names: list[str]
    trainable: dict[str, bool]

    def count(self) -> int:
        """How many parameters the adapters train."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @torch.no_grad()
    def merge(self, mask: Mask | None = None) -> nn.Module:
        """Each adapter's update added to its layer's weight, masked by ``mask`` where it holds the
        layer's weight (None: a shrunk network, nothing pruned left in it), and the adapter taken out
        (the layer is again the plain ``nn.Linear``); the parameters trainable again as they were.
        Returns the model."""
        for name in self.names:
            wrapped: Any = self.model.get_submodule(name)  # a PEFT LoRA layer
            base = wrapped.get_base_layer()
            delta = wrapped.get_delta_weight("default").to(base.weight.dtype)
            kept = mask.masks.get(f"{name}.weight") if mask is not None else None
            if kept is not None:
                delta = delta * kept.to(device=delta.device, dtype=delta.dtype)
            base.weight.add_(delta)
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child, base)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self.trainable.get(name, True))
        return self.model


__all__ = ["Adapters", "Lora"]
