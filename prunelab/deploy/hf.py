"""A pruned Hugging Face causal LM handed over as a Hugging Face folder.

``model/hf/`` holds what ``save_pretrained`` writes (the config, of the new depth and widths after
depth or width pruning, and the weights in the architecture's own layout) and the tokenizer the run
used: it loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``,
without prunelab, and gives the pruned model's logits.

Where the config cannot state the pruned widths (blocks of different widths after a global scope;
fewer heads in GPT-2 or OPT, whose configs derive the head size from the hidden size), the folder
holds the state dict instead (``pruned.safetensors``), the original config, each attention module's
new head counts (``widths.json``) and ``load_pruned.py``, which builds the model from them with
``transformers`` alone: the hand-over says so in one line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.lm import CausalLM, hf_state_dict
from ..paths import pretrained_source
from ..pruning.width import HEAD_ATTRIBUTES

log = logging.getLogger(__name__)

FOLDER = "model/hf"

LOADER = '''"""Load this folder's pruned model with transformers alone: ``load(folder)``.

The config here is the unpruned model's (it cannot state the pruned widths); each projection
takes the shape its saved tensor has, and each attention module the head counts in widths.json."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D


def load(folder=Path(__file__).parent):
    folder = Path(folder)
    state = load_file(str(folder / "pruned.safetensors"))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if isinstance(module, (torch.nn.Linear, Conv1D)) and weight is not None and weight.shape != module.weight.shape:
            if isinstance(module, Conv1D):  # weight (in, out)
                new = Conv1D(weight.shape[1], weight.shape[0])
            else:
                new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
    for name, counts in json.loads((folder / "widths.json").read_text()).items():
        for key, value in counts.items():
            setattr(model.get_submodule(name), key, value)
    model.load_state_dict(state, assign=True)  # the saved tensors as they are (their dtype too)
    return model.eval()
'''


# The largest safetensors file ``save_pretrained`` writes; a larger model is sharded, with an index.
SHARD_SIZE = "2GB"


def write_hf(net: nn.Module, folder: Path, tokenizer: str | None = None) -> bool:
    """Write a :class:`~prunelab.models.lm.CausalLM` into ``folder`` as a Hugging Face folder (and,
    given its folder or hub name, the tokenizer's files), each file as it is made: safetensors,
    sharded above :data:`SHARD_SIZE`. False, writing nothing, for any other network."""
    if not isinstance(net, CausalLM):
        return False
    inner: Any = net.model  # a transformers PreTrainedModel
    state = hf_state_dict(inner)
    reference = _as_configured(inner)
    stated = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    differ = sorted(k for k, v in state.items() if stated.get(k) != tuple(v.shape))
    folder.mkdir(parents=True, exist_ok=True)
    if not differ:
        inner.save_pretrained(folder, state_dict=state, max_shard_size=SHARD_SIZE)
    else:
        log.warning(
            "model/hf/ holds the state dict, widths.json and load_pruned.py, not a from_pretrained folder: "
            "%s's config cannot state the pruned widths (%s is %s, the config makes %s)",
            inner.config.model_type,
            differ[0],
            tuple(state[differ[0]].shape),
            stated.get(differ[0]),
        )
        _write_state(folder, inner, reference, state)
    source = pretrained_source(tokenizer) if tokenizer else None
    if source is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return True


def load_hf(folder: Path) -> nn.Module:
    """A hand-over's ``hf/`` folder loaded as its README says a user loads it (``from_pretrained``,
    or its ``load_pruned.py``), in the dtype it was saved in, in eval mode."""
    if (folder / "load_pruned.py").exists():
        import importlib.util

        spec = importlib.util.spec_from_file_location("load_pruned", folder / "load_pruned.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.load(folder)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="auto").eval()


def _as_configured(inner: Any) -> nn.Module:
    """What ``inner``'s config builds (on the meta device: shapes only)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(inner.config)


def _write_state(folder: Path, inner: Any, reference: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory (tied embeddings): a copy of those only
    seen: set[int] = set()
    tensors = {}
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        tensors[k] = t.clone() if t.untyped_storage().data_ptr() in seen else t
        seen.add(t.untyped_storage().data_ptr())
    save_file(tensors, str(folder / "pruned.safetensors"))
    inner.config.save_pretrained(folder)
    stated = dict(reference.named_modules())
    widths = {
        name: counts
        for name, module in inner.named_modules()
        if (
            counts := {
                a: getattr(module, a)
                for a in HEAD_ATTRIBUTES
                if isinstance(getattr(module, a, None), int)
                and getattr(module, a) != getattr(stated.get(name), a, None)
            }
        )
    }
    (folder / "widths.json").write_text(json.dumps(widths, indent=1) + "\n")
    (folder / "load_pruned.py").write_text(LOADER)
