"""Deployment: the pruned network as it ships, in PyTorch's and ONNX Runtime's formats, and int8.

* :class:`Deployed` puts the input standardisation (the training split's mean/std) in front of the
  network, so every hand-over file takes raw inputs in [0, 1] and gives logits.
* :func:`export` traces it once with ``torch.export`` (batch size dynamic); the same program is
  saved as ``program.pt2`` and translated to ONNX (:func:`onnx_model`).
* :func:`int8` quantizes the ONNX model after training with ONNX Runtime's static quantizer,
  calibrated on validation batches: ``torch.ao.quantization`` is being retired, and ONNX Runtime
  is what such a model is served with on a CPU.
* :class:`OnnxModel` runs an ONNX model like a module (tensors in, tensors out), so the cost ledger
  times it next to the PyTorch models.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.splits import labelled

log = logging.getLogger(__name__)

PIXELS, TOKENS, OUTPUT = "pixels", "tokens", "logits"


def input_name(x: torch.Tensor) -> str:
    """The hand-over files' input name for inputs like ``x``: ``tokens`` for token ids (a language
    model's integer inputs, which go in as they are), ``pixels`` for raw [0, 1] floats."""
    return PIXELS if x.is_floating_point() else TOKENS


class Deployed(nn.Module):
    """``net`` behind its input standardisation: raw [0, 1] inputs in, logits out. Token ids
    (integer inputs, a language model's) go to ``net`` as they are."""

    mean: torch.Tensor  # buffers (saved with the state dict), registered in __init__
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: float | tuple[float, ...], std: float | tuple[float, ...]):
        super().__init__()
        self.net = net

        def buffer(value):  # one number, or one per channel of N x C x H x W images
            t = torch.tensor(value, dtype=torch.float32)
            return t.view(-1, 1, 1) if t.dim() == 1 else t

        self.register_buffer("mean", buffer(mean))
        self.register_buffer("std", buffer(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std if x.is_floating_point() else x)


def deployed(net: nn.Module, mean: float | tuple[float, ...], std: float | tuple[float, ...]) -> Deployed:
    """A CPU, eval-mode copy of ``net`` behind its standardisation (``net`` is not changed)."""
    return Deployed(copy.deepcopy(net).cpu().eval(), mean, std).eval()


def export(model: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram | None:
    """``model`` traced by ``torch.export`` with a dynamic batch size; None (with a warning) if it
    cannot be (data-dependent control flow and the like)."""
    # A batch of 2: a batch of 1 would be specialised to exactly 1.
    x = example_input[:1].detach().cpu().expand(2, *example_input.shape[1:]).contiguous()
    try:
        return torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:
        log.warning(
            "the pruned model could not be exported with torch.export (%s); "
            "hand-over has no program.pt2 and no model.onnx",
            str(e).splitlines()[0],
        )
        return None


@contextmanager
def _quiet(*loggers: str):
    """Silence chatty library loggers (the ONNX exporter warns about every missing torchvision op)."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def onnx_model(program: torch.export.ExportedProgram, path: Path, input: str = PIXELS) -> Path | None:
    """The exported program written to ``path`` as an ONNX model (input named ``input``, see
    :func:`input_name`, output ``logits``, dynamic batch), its weights in ``<path>.data`` beside it
    above ONNX's 2 GB limit; None (with a warning) if a layer has no ONNX translation."""
    try:
        with _quiet("torch.onnx", "onnxscript", "onnx_ir"):
            # The exporter's graph optimisation stays on (about a second a run): without it the
            # graph can hold clashing value names (e.g. a BatchNorm's "mean") that ONNX Runtime rejects.
            onnx_program = torch.onnx.export(program, verbose=False, input_names=[input], output_names=[OUTPUT])
    except Exception as e:
        log.warning(
            "the pruned model could not be translated to ONNX (%s); hand-over has no model.onnx", str(e).splitlines()[0]
        )
        return None
    if onnx_program is None:  # only the legacy TorchScript exporter returns none, never used here
        raise RuntimeError("torch.onnx.export returned no ONNX program for an exported program")
    onnx_program.save(path)  # external data above 2 GB (ONNXProgram.save decides)
    return path


class OnnxModel:
    """An ONNX model in an ONNX Runtime CPU session with ``threads`` threads, called like a module."""

    def __init__(self, model: bytes | Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        source = str(model) if isinstance(model, Path) else model
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run([OUTPUT], {self.input: x.detach().cpu().numpy()})
        return torch.from_numpy(out)


@torch.no_grad()
def accuracy(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of ``model`` (any callable: module, exported program, :class:`OnnxModel`),
    per label: per token for a language model (one label per position), as ``train.evaluate``."""
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(1).cpu() == y[start : start + batch_size].cpu()).sum())
    return correct / labelled(y)


def int8(
    model: bytes,
    calibration: torch.Tensor,
    per_channel: bool = True,
    calibration_batches: int = 8,
    batch_size: int = 64,
) -> bytes:
    """``model`` (ONNX, fp32) with int8 weights and activations: ONNX Runtime's static quantizer
    (QDQ format, weights int8 per output channel, activations uint8), its activation ranges
    calibrated (min-max) on the first ``calibration_batches`` batches of ``calibration`` (raw
    validation inputs).

    This is the quantizer interface of ``conf/quantize/``: ONNX bytes and raw inputs in, ONNX bytes
    out; a user's own quantizer plugs in through ``quantize._target_``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load_model_from_string(model).graph.input[0].name

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                calibration[i * batch_size : (i + 1) * batch_size]
                for i in range(min(calibration_batches, -(-len(calibration) // batch_size)))
            )

        def get_next(self):
            batch = next(self.batches, None)
            if batch is None:
                return None
            x = batch.detach().cpu().numpy()
            return {name: x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x}  # token ids stay integers

    with tempfile.TemporaryDirectory(prefix="prunelab-int8-") as tmp, _quiet("root"):
        fp32, prepared, quantized = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(model)
        quant_pre_process(str(fp32), str(prepared))  # shape inference + graph optimisation first
        quantize_static(
            str(prepared),
            str(quantized),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return quantized.read_bytes()
