"""A pruned Hugging Face causal LM handed over as a Hugging Face folder.

``model/hf/`` holds what ``save_pretrained`` writes (the config, of the new depth after depth
pruning, and the weights in the architecture's own layout) and the tokenizer the run used: it
loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``, without
prunelab, and gives the pruned model's logits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from ..models.lm import CausalLM, hf_state_dict
from ..paths import pretrained_source

FOLDER = "model/hf"


def hf_files(net: nn.Module, tokenizer: str | None = None) -> dict[str, bytes]:
    """``{"model/hf/<file>": bytes}`` for a :class:`~prunelab.models.lm.CausalLM` (the model's and,
    given its folder or hub name, the tokenizer's files); nothing for any other network."""
    if not isinstance(net, CausalLM):
        return {}
    with tempfile.TemporaryDirectory(prefix="prunelab-hf-") as tmp:
        inner = net.model
        inner.save_pretrained(tmp, state_dict=hf_state_dict(inner))  # type: ignore[operator]
        source = pretrained_source(tokenizer) if tokenizer else None
        if source is not None:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
        return {
            f"{FOLDER}/{p.relative_to(tmp).as_posix()}": p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()
        }
