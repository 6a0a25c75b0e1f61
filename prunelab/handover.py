"""Hand-over: the pruned model as files anyone can load and run, without prunelab.

* ``program.pt2``: a ``torch.export`` program of the network that ships (the physically shrunk
  one for structured pruning, the masked one for unstructured), with its weights and a dynamic
  batch dimension. ``torch.export.load(path).module()`` runs it: no Python class, no prunelab.
* structured: ``state_dict.pt`` + ``architecture.txt``, the shrunk weights and the printed module
  tree, as a fallback for tools that want plain tensors.
* unstructured: ``sparse_weights.pt``, the masked weights and their masks in a compressed
  encoding (a bitmask plus the kept values, :func:`sparse_file`); :func:`decode_sparse` shows the
  ten lines that read it back.
* ``README.md``: how to do all that.

The runner logs these under the run's ``model/`` artifacts.
"""

from __future__ import annotations

import copy
import io
import logging
import math

import numpy as np
import torch
from torch import nn

from .pruning import Mask

log = logging.getLogger(__name__)

SPARSE_FORMAT = "prunelab-sparse-v1"


def sparse_state(model: nn.Module, mask: Mask) -> dict:
    """``model``'s state with each masked weight stored as a bitmask (``np.packbits`` of the mask,
    flattened) and the values it keeps; every other entry as it is."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sparse = {}
    for name in mask.prunable:
        keep = mask.masks[name].cpu()
        weight = state.pop(name)
        sparse[name] = {"shape": list(keep.shape),
                        "bitmask": torch.from_numpy(np.packbits(keep.flatten().numpy())),
                        "values": weight[keep].clone()}
    return {"format": SPARSE_FORMAT, "dense": state, "sparse": sparse}


def sparse_file(model: nn.Module, mask: Mask) -> bytes:
    """:func:`sparse_state` as ``torch.save`` bytes (loads with ``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(sparse_state(model, mask), buffer)
    return buffer.getvalue()


def decode_sparse(saved: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state_dict with the masked weights in place, masks) from a loaded ``sparse_weights.pt``."""
    state, masks = dict(saved["dense"]), {}
    for name, entry in saved["sparse"].items():
        shape = entry["shape"]
        bits = np.unpackbits(entry["bitmask"].numpy(), count=math.prod(shape))
        keep = torch.from_numpy(bits.astype(bool)).reshape(shape)
        weight = torch.zeros(shape, dtype=entry["values"].dtype).masked_scatter(keep, entry["values"])
        state[name], masks[name] = weight, keep
    return state, masks


def export_program(model: nn.Module, example_input: torch.Tensor) -> bytes | None:
    """``model`` (eval mode, on the CPU) as ``torch.export.save`` bytes, batch size left dynamic;
    None (with a warning) if the model cannot be exported."""
    model = copy.deepcopy(model).cpu().eval()
    # A batch of 2: a batch of 1 would be specialised to exactly 1.
    x = example_input[:1].detach().cpu().expand(2, *example_input.shape[1:]).contiguous()
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:  # data-dependent control flow and the like: the state dict remains
        log.warning("the pruned model could not be exported with torch.export (%s); "
                    "hand-over has no program.pt2", str(e).splitlines()[0])
        return None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


README = """# The pruned model

{what}

Load and run it with PyTorch alone (no prunelab):

```python
import torch

net = torch.export.load("program.pt2").module()   # eval mode, any batch size
with torch.no_grad():
    logits = net(x)                                 # x: float32, shape (batch, {shape})
```

Inputs are standardised as in training (the training split's mean and std).

{extra}"""

STRUCTURED = """`state_dict.pt` holds the same weights as plain tensors and `architecture.txt` the module
tree they fit (`torch.load("state_dict.pt", weights_only=True)`).
"""

UNSTRUCTURED = """`sparse_weights.pt` holds the masked weights and masks, compressed (bitmask + kept values):

```python
import math, numpy as np, torch

saved = torch.load("sparse_weights.pt", weights_only=True)
state, masks = dict(saved["dense"]), {}
for name, e in saved["sparse"].items():
    bits = np.unpackbits(e["bitmask"].numpy(), count=math.prod(e["shape"]))
    masks[name] = torch.from_numpy(bits.astype(bool)).reshape(e["shape"])
    state[name] = torch.zeros(e["shape"]).masked_scatter(masks[name], e["values"])
```
"""


def handover(pruned: nn.Module, example_input: torch.Tensor, mask: Mask | None = None,
             shrunk: nn.Module | None = None) -> dict[str, bytes]:
    """The hand-over files as ``{"model/<name>": bytes}``: the exported program of ``shrunk``
    (structured) or of the masked ``pruned`` model, plus the weights (see the module docstring).
    ``example_input`` (one batch) fixes the input shape."""
    files: dict[str, bytes] = {}
    shape = ", ".join(map(str, example_input.shape[1:]))
    if shrunk is not None:
        shipped = copy.deepcopy(shrunk).cpu().eval()
        buffer = io.BytesIO()
        torch.save(shipped.state_dict(), buffer)
        files["model/state_dict.pt"] = buffer.getvalue()
        files["model/architecture.txt"] = f"{shipped}\n".encode()
        what, extra = "Structured pruning: the channels are physically removed.", STRUCTURED
    else:
        shipped = copy.deepcopy(pruned).cpu().eval()
        what = "Unstructured pruning: the pruned weights are zeros in dense tensors."
        extra = ""
        if mask is not None:
            files["model/sparse_weights.pt"] = sparse_file(shipped, mask)
            extra = UNSTRUCTURED
    program = export_program(shipped, example_input)
    if program is not None:
        files["model/program.pt2"] = program
    else:
        what += "\n\n**torch.export failed for this model: there is no program.pt2, only the weights.**"
    files["model/README.md"] = README.format(what=what, shape=shape, extra=extra).encode()
    return files
