"""FLAP's bias compensation (An et al., AAAI 2024) for width pruning, without training.

A removed head or MLP channel fed its output projection a signal whose mean over the calibration
tokens is ``x̄_j``; removing it takes ``W[:, j] x̄_j`` out of the projection's output on average. FLAP
puts it back as a bias: ``b = (x̄ ⊙ removed) Wᵀ`` over the removed input columns of the attention's
output projection and of the MLP's down projection, ``x̄`` measured on the dense model (its blocks
run unpruned on the calibration windows, each window's token mean averaged over the windows).

Matched by reading and by tests/test_compensate.py with CASIA-IVA-Lab/FLAP ``lib/prune.py``
(``compress``, ``prune_flap``) and ``lib/layerwrapper.py`` (``BiasGPT.baseline_inp``) at
3bb57db3449dd2fa04a5c2192de80e87e33be2b1. There the LLaMA model is edited to give ``o_proj`` and
``down_proj`` a bias (zero) that the compensation replaces; here the compensation is added to the
layer's bias (OPT's and GPT-2's have one), and a layer without one gets one where the model's
Hugging Face config can say so (LLaMA's ``attention_bias`` / ``mlp_bias``: the config flag set, and
zero biases on the other projections it covers, so the saved folder loads in ``transformers`` as
it ran). Elsewhere one line refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .blocks import capture, fold_inputs, hf_config

COMPENSATIONS = ("mean",)
SAMPLES = 128  # calibration windows the means are measured on, by default


@dataclass
class Compensation:
    """What compensating adds to a model: ``biases`` added to these layers' (a layer without a bias
    gets one, zeros plus this), and the Hugging Face config fields set (``attention_bias``)."""

    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict[str, bool] = field(default_factory=dict)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """``model`` (in place; returned) with the biases added and its config fields set."""
        for name, bias in self.biases.items():
            layer = model.get_submodule(name)
            assert isinstance(layer, nn.Linear)
            if layer.bias is None:
                w = layer.weight
                layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
            layer.bias.add_(bias.to(layer.bias))
        config = hf_config(model)
        for key, value in self.config.items():
            setattr(config, key, value)
        return model


@torch.no_grad()
def input_means(model: nn.Module, path: str, modules: nn.ModuleList, x: torch.Tensor, inside: list[str]) -> dict:
    """The input means over the tokens of ``x`` of the layers at ``inside`` (paths within a block)
    of every block ``path.<i>``, by full name: the blocks run dense one after another from block 0's
    captured inputs."""

    def add(total, inp):
        rows = inp.reshape(-1, inp.shape[-1]).double()
        return (rows.sum(0), rows.shape[0]) if total is None else (total[0] + rows.sum(0), total[1] + rows.shape[0])

    inputs = capture(model, modules[0], x)
    means: dict[str, torch.Tensor] = {}
    for i, block in enumerate(modules):
        sums, inputs = fold_inputs(block, inputs, {n: block.get_submodule(n) for n in inside}, add)
        means.update({f"{path}.{i}.{n}": total / count for n, (total, count) in sums.items()})
    return means


def bias_for(weight: torch.Tensor, mean: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """FLAP's bias for an output projection: ``(x̄ ⊙ removed) Wᵀ`` over its removed input columns."""
    return (mean.double() * removed.to(mean.device).double()) @ weight.detach().double().T


__all__ = ["COMPENSATIONS", "SAMPLES", "Compensation", "bias_for", "input_means"]
