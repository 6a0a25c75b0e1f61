"""Hand-over: the pruned model as files anyone can load and run, without prunelab.

* ``program.pt2``: a ``torch.export`` program of the network that ships (the physically shrunk
  one for structured pruning, the masked one for unstructured) behind its input standardisation
  (:class:`prunelab.deploy.onnx.Deployed`), with its weights and a dynamic batch dimension: raw [0, 1]
  inputs in, logits out. ``torch.export.load(path).module()`` runs it: no Python class, no prunelab.
* ``model.onnx``: the same program for ONNX Runtime (input ``pixels``, or ``tokens`` for a language
  model, output ``logits``);
  ``model.int8.onnx`` beside it when the run quantizes (``quantize=int8``).
* structured: ``state_dict.pt`` + ``architecture.txt``, the shrunk weights and the printed module
  tree, as a fallback for tools that want plain tensors.
* unstructured: ``sparse_weights.pt``, the masked weights and their masks in a lossless compressed
  encoding (a bitmask plus the kept values, :func:`sparse_file`; :func:`decode_sparse` shows the
  ten lines that read it back), and ``weights.compact``, the smallest, Deep-Compression file
  (``compact.py``: shared values per layer, its decoder in the README).
* ``README.md``: how to do all that.

:func:`hand_over` makes them for the run and checks them: the test accuracy of every file that does
not run the fine-tuned network's own PyTorch operations. The runner logs them under the run's
``model/`` artifacts.
"""

from __future__ import annotations

import copy
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..names import Metric
from ..pruning.mask import Mask
from .compact import decode, decoder_source, encode
from .hf import hf_files
from .onnx import (
    OUTPUT,
    PIXELS,
    TOKENS,
    Deployed,
    OnnxModel,
    accuracy,
    deployed,
    export,
    input_name,
    onnx_model,
    program_bytes,
)

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
        sparse[name] = {
            "shape": list(keep.shape),
            "bitmask": torch.from_numpy(np.packbits(keep.flatten().numpy())),
            "values": weight[keep].clone(),
        }
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


README = """# The pruned model

{what}

{inputs}

Run it with PyTorch alone (no prunelab):

```python
import torch

net = torch.export.load("program.pt2").module()   # eval mode, any batch size
with torch.no_grad():
    logits = net(x)
```

or with ONNX Runtime:

```python
import onnxruntime as ort

session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
logits, = session.run(["{output}"], {{"{input}": x.numpy()}})
```
{int8}
{extra}"""

COMPACT = """
`weights.compact` is the smallest form (Deep Compression, Han et al. 2016): each pruned layer's kept
weights share a few values per layer (a codebook), stored as one-byte codebook indices with one-byte
relative positions, LZMA-compressed. Its weights are those shared values, so its accuracy is the
run's `compact.test_accuracy`, not the fp32 one. Decode it with NumPy and PyTorch alone and load it
into the program (same parameter names, standardisation included):

```python
{decoder}

net = torch.export.load("program.pt2").module()
net.load_state_dict(decode(open("weights.compact", "rb").read()))
```
"""


def _numbers(t: torch.Tensor) -> str:
    """A standardisation buffer as the README writes it: ``0.2861`` or ``(0.485, 0.456, 0.406)``."""
    values = [f"{v:.6g}" for v in t.flatten().tolist()]
    return values[0] if len(values) == 1 else f"({', '.join(values)})"


INPUTS = {
    PIXELS: """Inputs are raw: float32 in [0, 1] (8-bit pixels / 255), shape (batch, {shape}). Both files
standardise them themselves, as in training: (x - {mean}) / {std} (the training split's
mean and std; three numbers: one per channel).""",
    TOKENS: """Inputs are token ids: int64, shape (batch, {shape}), as they are (no standardisation).
The logits have shape (batch, vocabulary, {shape}): one prediction per position.""",
}

INT8 = """
`model.int8.onnx` is the same network quantized to int8 (weights per output channel, activations
calibrated on validation batches) by ONNX Runtime; it runs the same way.
"""

STRUCTURED = """`state_dict.pt` holds the same weights as plain tensors and `architecture.txt` the module
tree they fit (`torch.load("state_dict.pt", weights_only=True)`); these take standardised inputs.
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


HF = """
`hf/` is the model as a Hugging Face folder (its config says its depth and widths; the tokenizer
beside it):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("hf")
tokenizer = AutoTokenizer.from_pretrained("hf")   # where the run had one
```

Where the config cannot state the pruned widths (blocks of different widths; fewer heads in GPT-2
or OPT), `hf/` holds `pruned.safetensors`, the original config, `widths.json` and
`load_pruned.py` instead: `from load_pruned import load; model = load("hf")` (transformers only).
"""


@dataclass
class Handover:
    """The hand-over files (``{"model/<name>": bytes}``) and what the runner checks them with."""

    files: dict[str, bytes] = field(default_factory=dict)
    onnx: bytes | None = None
    int8: bytes | None = None
    compact: bytes | None = None


def handover(
    shipped: Deployed,
    example_input: torch.Tensor,
    mask: Mask | None = None,
    structured: bool = False,
    quantize: Callable[[bytes], bytes] | None = None,
    compact: bytes | None = None,
    tokenizer: str | None = None,
) -> Handover:
    """The hand-over files of ``shipped``: the network that ships (the shrunk one for structured
    pruning, the masked one otherwise) behind its standardisation, see :func:`prunelab.deploy.onnx.deployed`.
    ``example_input`` (one batch) fixes the input shape; ``mask`` adds the unstructured sparse
    weights file, and ``compact`` (:func:`compact_file`) the compact file; ``quantize`` (ONNX
    bytes -> int8 ONNX bytes) the quantized model. A Hugging Face causal LM is also handed over as
    a Hugging Face folder (``hf.py``), with ``tokenizer``'s files."""
    out = Handover()
    files, net, name = out.files, shipped.net, input_name(example_input)
    files.update(hf_files(net, tokenizer))
    hf = HF if files else ""
    shape = ", ".join(map(str, example_input.shape[1:]))
    if structured:
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        files["model/state_dict.pt"] = buffer.getvalue()
        files["model/architecture.txt"] = f"{net}\n".encode()
        what, extra = "Structured pruning: the channels are physically removed.", STRUCTURED
    else:
        what = "Unstructured pruning: the pruned weights are zeros in dense tensors."
        extra = ""
        if mask is not None:
            files["model/sparse_weights.pt"] = sparse_file(net, mask)
            extra = UNSTRUCTURED
            if compact is not None:
                out.compact = files["model/weights.compact"] = compact
                extra += COMPACT.format(decoder=decoder_source())
    program = export(shipped, example_input)
    if program is not None:
        files["model/program.pt2"] = program_bytes(program)
        out.onnx = onnx_model(program, name)
    else:
        what += "\n\n**torch.export failed for this model: there is no program.pt2, only the weights.**"
    if out.onnx is not None:
        files["model/model.onnx"] = out.onnx
        if quantize is not None:
            out.int8 = files["model/model.int8.onnx"] = quantize(out.onnx)
    inputs = INPUTS[name].format(shape=shape, mean=_numbers(shipped.mean), std=_numbers(shipped.std))
    files["model/README.md"] = README.format(
        what=what,
        inputs=inputs,
        extra=extra + hf,
        input=name,
        output=OUTPUT,
        int8=INT8 if out.int8 is not None else "",
    ).encode()
    return out


def compact_file(shipped: Deployed, mask: Mask, codebook: Callable) -> bytes:
    """The unstructured hand-over's smallest file (``compact.py``): ``shipped``'s state with the
    weights ``mask`` prunes on ``codebook``'s shared values."""
    return encode(shipped.state_dict(), {f"net.{n}": mask.masks[n] for n in mask.prunable}, codebook)


@dataclass
class HandedOver:
    """The run's hand-over: its files (``{"model/<name>": bytes}``), the test accuracy of each file
    that runs on its own (``handover.onnx.test_accuracy``, ``int8.*``, ``compact.*``), the ONNX
    models the cost ledger times when the run quantizes, and the compact file it costs."""

    files: dict[str, bytes]
    accuracies: dict[str, float]
    onnx: bytes | None = None
    int8: bytes | None = None
    compact: bytes | None = None  # the smallest file of an unstructured model: the ledger's file size


@dataclass
class HandoverJob:
    """What the hand-over of a run needs, as plain values (it can run in another process): the
    network that ships (shrunk, or masked) and its input standardisation, the example input, the
    mask (unstructured: the sparse weights file, and with a codebook the compact file,
    :func:`compact_file`), the raw test inputs and labels the files are checked on, and the
    quantizer (ONNX bytes and raw calibration inputs -> int8 ONNX bytes) with its calibration
    inputs."""

    net: nn.Module
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    example_input: torch.Tensor
    mask: Mask | None
    structured: bool
    test: tuple[torch.Tensor, torch.Tensor]
    codebook: Callable | None = None
    quantize: Callable[[bytes, torch.Tensor], bytes] | None = None
    calibration: torch.Tensor | None = None
    tokenizer: str | None = None  # a language model's (its folder or hub name): handed over beside it


def hand_over(job: HandoverJob) -> HandedOver:
    """The run's hand-over files, made and checked: the test accuracy of every file that does not
    run the fine-tuned network's own PyTorch operations (ONNX Runtime's fp32 and int8 models, the
    compact file's shared values)."""
    ship = deployed(job.net, job.mean, job.std)
    compact = None
    if not job.structured and job.mask is not None and job.codebook is not None:
        compact = compact_file(ship, job.mask, job.codebook)
    quantize, calibration = job.quantize, job.calibration
    if quantize is not None and calibration is None:
        raise ValueError("a hand-over that quantizes needs calibration inputs")
    made = handover(
        ship,
        job.example_input,
        job.mask,
        structured=job.structured,
        quantize=(lambda onnx: quantize(onnx, calibration))
        if quantize is not None and calibration is not None
        else None,
        compact=compact,
        tokenizer=job.tokenizer,
    )
    x, y = job.test
    checked = {}
    if made.compact is not None:  # the shared values change the weights: its own accuracy
        decoded = copy.deepcopy(ship)
        decoded.load_state_dict(decode(made.compact))
        checked[Metric.COMPACT_ACCURACY] = accuracy(decoded, x, y)
    for name, model in ((Metric.HANDOVER_ONNX_ACCURACY, made.onnx), (Metric.INT8_ACCURACY, made.int8)):
        if model is not None:
            checked[name] = accuracy(OnnxModel(model), x, y)
    return HandedOver(made.files, checked, made.onnx, made.int8, made.compact)
