"""Hand-over: the pruned model as files anyone can load and run, without prunelab.

* ``program.pt2``: a ``torch.export`` program of the network that ships (the physically shrunk
  one for structured pruning, the masked one for unstructured) behind its input standardisation
  (:class:`prunelab.deploy.onnx.Deployed`), with its weights and a dynamic batch dimension: raw [0, 1]
  inputs in, logits out. ``torch.export.load(path).module()`` runs it: no Python class, no prunelab.
* ``model.onnx``: the same program for ONNX Runtime (input ``pixels``, or ``tokens`` for a language
  model, output ``logits``; its weights in ``model.onnx.data`` above 2 GB);
  ``model.int8.onnx`` beside it when the run quantizes (``quantize=int8``).
* structured: ``state_dict.pt`` + ``architecture.txt``, the shrunk weights and the printed module
  tree, as a fallback for tools that want plain tensors.
* unstructured: ``sparse_weights.pt``, the masked weights and their masks in a lossless compressed
  encoding (a bitmask plus the kept values, :func:`sparse_state`; :func:`decode_sparse` shows the
  ten lines that read it back), and ``weights.compact``, the smallest, Deep-Compression file
  (``compact.py``: shared values per layer, its decoder in the README).
* a ``transformers`` model: ``hf/``, its Hugging Face folder (``hf.py``).
* ``README.md``: how to do all that.

Which of them a run makes is :func:`formats`' rule: every one that applies to a model whose
weights are at most :data:`LARGE_BYTES`; above it only the one that scales with the model (the
Hugging Face folder, else the weights file), the others on request (``handover_formats``).
:func:`hand_over` writes them into a folder as they are made (never all held in memory) and checks
them: the test accuracy of every file that does not run the fine-tuned network's own PyTorch
operations, and a language model's Hugging Face folder by its perplexity, reloaded, on a bounded
sample of the test split. The runner logs the folder under the run's ``model/`` artifacts.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..heap import give_back
from ..models.lm import CausalLM
from ..names import IGNORE, Metric
from ..pruning.mask import Mask
from .compact import decode, decoder_source, encode
from .hf import load_hf, write_hf
from .onnx import (
    OUTPUT,
    PIXELS,
    TOKENS,
    Deployed,
    OnnxModel,
    accuracy,
    export,
    input_name,
    onnx_model,
)

log = logging.getLogger(__name__)

SPARSE_FORMAT = "prunelab-sparse-v1"

# What a hand-over can hold: a transformers model's Hugging Face folder (model/hf/), the weights
# file (state_dict.pt or sparse_weights.pt), program.pt2, model.onnx (and the int8 model a run that
# quantizes makes of it), weights.compact (unstructured, with a codebook).
FORMATS = ("hf", "weights", "program", "onnx", "compact")
# Weights above this (256 MiB: OPT-125m's 0.5 GB is above, every vision model of the seed below)
# get only the format that scales unless more are asked for: an export traces the model and an ONNX
# translation holds it in memory again, minutes and gigabytes at a billion parameters.
LARGE_BYTES = 1 << 28
# The tokens of the test split a language model's Hugging Face folder is checked on, reloaded (and
# the run's model beside it): 4 windows of 512 tokens, two forward passes of them; any weight the
# folder holds otherwise moves the perplexity far beyond the 1e-5 it must agree to.
CHECK_TOKENS = 1 << 11


def weight_bytes(net: nn.Module) -> int:
    """The bytes of ``net``'s parameters and buffers (a tensor shared by two names counted once)."""
    tensors = {t.untyped_storage().data_ptr(): t for t in (*net.parameters(), *net.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class HandoverError(UserError, ValueError):
    """A hand-over asked for in formats that do not exist or do not apply to the model."""


def check_formats(asked: Sequence[str] | None, quantize: bool = False) -> None:
    """:class:`HandoverError` unless ``asked`` (``handover_formats``) names formats that exist, ONNX among
    them where the run quantizes it (None: the default, always fine)."""
    if asked is None:
        return
    unknown = [f for f in asked if f not in FORMATS]
    if unknown:
        raise HandoverError(
            f"handover_formats: {', '.join(unknown)} is not a format; the formats: {', '.join(FORMATS)}"
        )
    if quantize and "onnx" not in asked:
        raise HandoverError("quantize=int8 quantizes the hand-over's ONNX model: add onnx to handover_formats")


def formats(net: nn.Module, asked: Sequence[str] | None = None) -> frozenset[str]:
    """The formats a hand-over of ``net`` makes: those ``asked`` for, or by default every one that
    applies (:func:`not_applying`) where the weights are at most :data:`LARGE_BYTES`, else only the
    Hugging Face folder, or the weights file. A format that does not exist or does not apply is a
    :class:`HandoverError`."""
    excluded = not_applying(net)
    if asked is not None:
        check_formats(asked)
        for f in asked:
            if f in excluded:
                raise HandoverError(f"handover_formats: {excluded[f]}: drop {f}")
        return frozenset(asked)
    if weight_bytes(net) <= LARGE_BYTES:
        return frozenset(f for f in FORMATS if f not in excluded)
    return frozenset({"weights" if "hf" in excluded else "hf"})


def weights_shipped(net: nn.Module, asked: Sequence[str] | None = None) -> bool:
    """Whether a hand-over of ``net`` (in the formats ``asked``, else the default ones) is above
    :data:`LARGE_BYTES` and holds its weights whole (the Hugging Face folder or the weights file):
    the run's own record then keeps the mask alone, not a further copy of the weights (at a billion
    parameters, gigabytes of disk per run)."""
    return weight_bytes(net) > LARGE_BYTES and bool({"hf", "weights"} & formats(net, asked))


def not_applying(net: nn.Module) -> dict[str, str]:
    """The formats that do not apply to ``net``, each with why: the Hugging Face folder to all but a
    ``transformers`` model, the compact file (NumPy arrays) to bfloat16 weights."""
    out = {}
    if not isinstance(net, CausalLM):
        out["hf"] = (
            "hf is the Hugging Face folder of a transformers model (model=hf_causal_lm) and this model is not one"
        )
    if any(p.dtype == torch.bfloat16 for p in net.parameters()):
        out["compact"] = "compact stores NumPy arrays, and NumPy has no bfloat16 (model.dtype=bfloat16)"
    return out


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
{sections}"""

PROGRAM = """
Run it with PyTorch alone (no prunelab):

```python
import torch

net = torch.export.load("program.pt2").module()   # eval mode, any batch size
with torch.no_grad():
    logits = net(x)
```
"""

ONNX = """
Run it with ONNX Runtime:

```python
import onnxruntime as ort

session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
logits, = session.run(["{output}"], {{"{input}": x.numpy()}})
```
"""

OTHERS = """
Other files ({missing}) are made on request: `handover_formats=[{asked}]` (this model's weights, {size},
are above the {limit} that makes them all by default).
"""

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
    """What :func:`handover` wrote into ``folder`` (under ``model/``) and what the runner checks:
    the ONNX models, the compact file, the Hugging Face folder."""

    folder: Path
    onnx: Path | None = None
    int8: Path | None = None
    compact: bytes | None = None
    hf: Path | None = None


def handover(
    shipped: Deployed,
    example_input: torch.Tensor,
    folder: Path,
    mask: Mask | None = None,
    structured: bool = False,
    quantize: Callable[[bytes], bytes] | None = None,
    compact: bytes | None = None,
    tokenizer: str | None = None,
    made: frozenset[str] | None = None,
) -> Handover:
    """The hand-over files of ``shipped`` written into ``folder/model/``, each as it is made: the
    network that ships (the shrunk one for structured pruning, the masked one otherwise) behind its
    standardisation, see :func:`prunelab.deploy.onnx.deployed`, in the formats ``made``
    (:func:`formats`' default when None). ``example_input`` (one batch) fixes the input shape;
    ``mask`` makes the unstructured weights file sparse, ``compact`` (:func:`compact_file`) is the
    compact file, ``quantize`` (ONNX bytes -> int8 ONNX bytes) makes the quantized model, and a
    Hugging Face causal LM's folder holds ``tokenizer``'s files."""
    net, name = shipped.net, input_name(example_input)
    made = formats(net) if made is None else made
    out = Handover(folder)
    root = folder / "model"
    root.mkdir(parents=True, exist_ok=True)
    if "hf" in made and write_hf(net, root / "hf", tokenizer):
        out.hf = root / "hf"
    what, weights = _weights(net, root, made, mask, structured, compact, out)
    what, programs = _programs(shipped, example_input, root, made, quantize, what, out)
    sections = programs + weights + ([HF] if out.hf is not None else [])
    missing = [f for f in FORMATS if f not in made and f not in not_applying(net)]
    size = weight_bytes(net)
    if missing and size > LARGE_BYTES:
        asked = ",".join(f for f in FORMATS if f in made or f in missing)
        sections.append(
            OTHERS.format(missing=", ".join(missing), asked=asked, size=_mib(size), limit=_mib(LARGE_BYTES))
        )
    shape = ", ".join(map(str, example_input.shape[1:]))
    inputs = INPUTS[name].format(shape=shape, mean=_numbers(shipped.mean), std=_numbers(shipped.std))
    (root / "README.md").write_text(README.format(what=what, inputs=inputs, sections="".join(sections)))
    return out


def _weights(
    net: nn.Module,
    root: Path,
    made: frozenset[str],
    mask: Mask | None,
    structured: bool,
    compact: bytes | None,
    out: Handover,
) -> tuple[str, list[str]]:
    """The weights files (``weights``, ``compact``) written; what the pruning did, and the
    README's sections on them."""
    sections = []
    if structured:
        if "weights" in made:
            torch.save(net.state_dict(), root / "state_dict.pt")
            (root / "architecture.txt").write_text(f"{net}\n")
            sections.append(STRUCTURED)
        return "Structured pruning: the channels are physically removed.", sections
    if mask is not None and "weights" in made:
        torch.save(sparse_state(net, mask), root / "sparse_weights.pt")
        sections.append(UNSTRUCTURED)
    if compact is not None and "compact" in made:
        out.compact = compact
        (root / "weights.compact").write_bytes(compact)
        sections.append(COMPACT.format(decoder=decoder_source()))
    return "Unstructured pruning: the pruned weights are zeros in dense tensors.", sections


def _programs(
    shipped: Deployed,
    example_input: torch.Tensor,
    root: Path,
    made: frozenset[str],
    quantize: Callable[[bytes], bytes] | None,
    what: str,
    out: Handover,
) -> tuple[str, list[str]]:
    """``program.pt2`` and the ONNX models written, as ``made`` asks; ``what`` with a word where
    the export failed, and the README's sections on them."""
    if not made & {"program", "onnx"}:
        return what, []
    program = export(shipped, example_input)
    if program is None:
        return what + "\n\n**torch.export failed for this model: there is no program.pt2, only the weights.**", []
    sections = []
    if "program" in made:
        torch.export.save(program, root / "program.pt2")
        sections.append(PROGRAM)
    if "onnx" in made:
        name = input_name(example_input)
        out.onnx = onnx_model(program, root / "model.onnx", name)
        if out.onnx is not None:
            sections.append(ONNX.format(input=name, output=OUTPUT))
            if quantize is not None:
                out.int8 = root / "model.int8.onnx"
                out.int8.write_bytes(quantize(out.onnx.read_bytes()))
                sections.append(INT8)
    return what, sections


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def compact_file(shipped: Deployed, mask: Mask, codebook: Callable) -> bytes:
    """The unstructured hand-over's smallest file (``compact.py``): ``shipped``'s state with the
    weights ``mask`` prunes on ``codebook``'s shared values."""
    return encode(shipped.state_dict(), {f"net.{n}": mask.masks[n] for n in mask.prunable}, codebook)


@dataclass
class HandedOver:
    """The run's hand-over: the ``folder`` its files are in (under ``model/``), the figures each
    file that runs on its own is checked by (``handover.onnx.test_accuracy``, ``int8.*``,
    ``compact.*``; a language model's reloaded Hugging Face folder's ``handover.hf.test_perplexity``
    beside the run's model's ``handover.test_perplexity`` on the same sample), the ONNX models the
    cost ledger times when the run quantizes, and the compact file it costs."""

    folder: Path
    accuracies: dict[str, float]
    onnx: Path | None = None
    int8: Path | None = None
    compact: bytes | None = None  # the smallest file of an unstructured model: the ledger's file size


@dataclass
class HandoverJob:
    """What the hand-over of a run needs, as plain values (it can run in another process): the
    network that ships (shrunk, or masked) and its input standardisation, the example input, the
    mask (unstructured: the sparse weights file, and with a codebook the compact file,
    :func:`compact_file`), the raw test inputs and labels the files are checked on, and the
    quantizer (ONNX bytes and raw calibration inputs -> int8 ONNX bytes) with its calibration
    inputs; the formats asked for (None: :func:`formats`' default)."""

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
    formats: Sequence[str] | None = None


def hand_over(job: HandoverJob, folder: Path) -> HandedOver:
    """The run's hand-over files, written into ``folder`` and checked: the test accuracy of every
    file that does not run the fine-tuned network's own PyTorch operations (ONNX Runtime's fp32 and
    int8 models, the compact file's shared values), and a language model's Hugging Face folder by
    its perplexity, reloaded, on the first :data:`CHECK_TOKENS` of the test split beside the run's
    model's on the same windows. ``job.net`` is not changed (its training mode restored)."""
    training = job.net.training
    ship = Deployed(job.net.eval(), job.mean, job.std).eval()
    try:
        return _hand_over(job, ship, folder)
    finally:
        job.net.train(training)


def _hand_over(job: HandoverJob, ship: Deployed, folder: Path) -> HandedOver:
    made = formats(job.net, job.formats)
    compact = None
    if "compact" in made and not job.structured and job.mask is not None and job.codebook is not None:
        compact = compact_file(ship, job.mask, job.codebook)
    quantize, calibration = job.quantize, job.calibration
    if quantize is not None and calibration is None:
        raise ValueError("a hand-over that quantizes needs calibration inputs")
    out = handover(
        ship,
        job.example_input,
        folder,
        job.mask,
        structured=job.structured,
        quantize=(lambda onnx: quantize(onnx, calibration))
        if quantize is not None and calibration is not None
        else None,
        compact=compact,
        tokenizer=job.tokenizer,
        made=made,
    )
    x, y = job.test
    checked = {}
    if out.compact is not None:  # the shared values change the weights: its own accuracy
        decoded = copy.deepcopy(ship)
        decoded.load_state_dict(decode(out.compact))
        checked[Metric.COMPACT_ACCURACY] = accuracy(decoded, x, y)
        del decoded
    for name, model in ((Metric.HANDOVER_ONNX_ACCURACY, out.onnx), (Metric.INT8_ACCURACY, out.int8)):
        if model is not None:
            checked[name] = accuracy(OnnxModel(model), x, y)
    if out.hf is not None and y.dim() > 1:  # a language model: by perplexity, on a bounded sample
        windows = max(1, CHECK_TOKENS // y.shape[-1])
        sample = x[:windows], y[:windows]
        checked[Metric.HANDOVER_PERPLEXITY] = perplexity(ship, *sample)
        give_back()  # what its passes freed (~18 MiB a block at width 2048), before the folder is mapped
        reloaded = load_hf(out.hf)  # no key/value cache: it would hold every block's keys and values
        checked[Metric.HANDOVER_HF_PERPLEXITY] = perplexity(
            lambda t: reloaded(t, use_cache=False).logits.transpose(1, 2), *sample
        )
        del reloaded
    return HandedOver(folder, checked, out.onnx, out.int8, out.compact)


@torch.no_grad()
def perplexity(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """exp of the mean loss per predicted token of ``model`` (token ids -> logits ``(batch,
    vocabulary, positions)``) on windows ``x`` with next-token labels ``y`` (:data:`IGNORE` not
    counted), a window at a time (a window's logits can be a gigabyte)."""
    loss = 0.0
    for i in range(len(x)):
        logits = model(x[i : i + 1])
        loss += float(F.cross_entropy(logits.float(), y[i : i + 1], ignore_index=IGNORE, reduction="sum"))
    return math.exp(min(loss / int((y != IGNORE).sum()), 700.0))
