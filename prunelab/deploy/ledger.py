"""The cost ledger: what the pruned model costs next to its dense original.

Parameters, nonzero parameters, MACs, file size and measured CPU latency for both, plus
pruned / dense ratios, as flat MLflow metric names (``cost.dense.macs``, ``cost.ratio.macs``, ...).

* Structured pruning is costed on the physically shrunk network (:func:`prunelab.pruning.shrink`):
  fewer channels are fewer MACs, a smaller file and, measured, a faster forward pass.
* Unstructured pruning keeps the dense shapes, and zeros cost a dense kernel as much as any other
  weight: its MACs and latency stay those of the dense model. What a sparse kernel could save is
  ``nonzero_macs`` (each conv/linear layer's MACs times its weight density), and the file size is
  that of its compact hand-over file (``compact.py``: a shared-value codebook, relative indices,
  LZMA), which the runner passes in.
* The runtimes the pruned model ships to (ONNX Runtime fp32 and int8, ``deploy.py``) are timed in the
  same alternation when given, against the same dense PyTorch model.

Latency is the median of ``torch.utils.benchmark`` measurements on the CPU with a fixed thread
count (1 by default), the models timed in fine alternation so that a busy machine slows both
alike.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.benchmark import Timer

from ..pruning.macs import mac_counts, param_counts
from ..pruning.mask import Mask

BATCH_SIZES = (1, 64)

Forward = Callable[[torch.Tensor], torch.Tensor]  # what is timed: a module, or a runtime's session


def state_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())``: the file a user would ship."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@torch.no_grad()
def latencies_ms(
    models: Mapping[str, Forward],
    in_shape,
    batch_sizes=BATCH_SIZES,
    threads: int = 1,
    budget_s: float = 0.75,
    block_s: float = 0.01,
    max_rounds: int = 25,
    example: torch.Tensor | None = None,
) -> dict[tuple[str, int], float]:
    """Median CPU latency in ms of one forward pass, per (model name, batch size).

    Per batch size: every model is warmed up and its block size (calls per timed block, about
    ``block_s``) set by one short ``blocked_autorange``; then the models are timed one block each
    in turn, the order reversed every round, for about ``budget_s`` (at least 3 rounds, at most
    ``max_rounds``). Fine interleaving matters on a shared machine: a busy phase then slows every
    model alike instead of whichever happened to be measured during it. The latency is the median
    over the rounds. Inputs are random, or ``example`` repeated when it is not floating point
    (token ids, which must stay valid ids)."""
    out = {}
    for b in batch_sizes:
        if example is not None and not example.is_floating_point():
            x = example[:1].repeat(b, *[1] * (example.dim() - 1))
        else:
            x = torch.randn(b, *in_shape)
        timers = {
            name: Timer("model(x)", globals={"model": m, "x": x}, num_threads=threads) for name, m in models.items()
        }
        number = {}
        for name, timer in timers.items():
            once = timer.blocked_autorange(min_run_time=block_s).median
            number[name] = max(1, round(block_s / once))
        times: dict[str, list[float]] = {name: [] for name in models}
        order, start = list(timers), time.perf_counter()
        while len(times[order[0]]) < max_rounds and (
            len(times[order[0]]) < 3 or time.perf_counter() - start < budget_s
        ):
            for name in order:
                times[name].append(timers[name].timeit(number[name]).median)
            order.reverse()
        out.update({(name, b): statistics.median(t) * 1e3 for name, t in times.items()})
    return out


def cost_ledger(
    dense: nn.Module,
    pruned: nn.Module,
    example_input: torch.Tensor,
    mask: Mask | None = None,
    shrunk: nn.Module | None = None,
    latency: bool = True,
    threads: int = 1,
    file_bytes: int | None = None,
    runtimes: Mapping[str, tuple[Forward, int]] | None = None,
) -> dict[str, float]:
    """The cost metrics of one run: ``cost.{dense,pruned}.{params,nonzero_params,macs,
    nonzero_macs,file_bytes,latency_b1_ms,latency_b64_ms}`` and ``cost.ratio.*`` (pruned / dense).

    ``pruned`` is the (masked) model as trained; ``shrunk``, for structured pruning, its physically
    smaller twin, which is what gets costed when given. ``example_input`` fixes the input shape
    (MACs are per sample). ``file_bytes`` is the size of the pruned model's hand-over file when
    it is not a plain state dict (unstructured: the compact file). ``runtimes`` are the pruned
    model in other forms, ``name -> (callable, file bytes)`` (ONNX Runtime fp32 and int8): each
    gets ``cost.<name>.file_bytes`` / ``latency_b*_ms`` and ``cost.ratio.<name>.*`` against the
    dense PyTorch model, timed in the same alternation. Latency (``latency=False`` skips it) is
    measured on CPU copies with ``threads`` threads; none of the models passed in is changed."""
    deployed = shrunk if shrunk is not None else pruned
    models = {"dense": copy.deepcopy(dense).cpu().eval(), "pruned": copy.deepcopy(deployed).cpu().eval()}
    x = example_input[:1].detach().cpu()
    out: dict[str, float] = {}
    for role, model in models.items():
        out[f"cost.{role}.params"], out[f"cost.{role}.nonzero_params"] = param_counts(model)
        out[f"cost.{role}.macs"], out[f"cost.{role}.nonzero_macs"] = mac_counts(model, x)
        out[f"cost.{role}.file_bytes"] = state_bytes(model)
    if file_bytes is not None:
        out["cost.pruned.file_bytes"] = file_bytes
    runtimes = runtimes or {}
    for role, (_, size) in runtimes.items():
        out[f"cost.{role}.file_bytes"] = size
    names = ["params", "nonzero_params", "macs", "nonzero_macs", "file_bytes"]
    if latency:
        timed: dict[str, Forward] = {**models, **{role: fn for role, (fn, _) in runtimes.items()}}
        measured = latencies_ms(timed, x.shape[1:], threads=threads, example=x)
        for (role, b), ms in measured.items():
            out[f"cost.{role}.latency_b{b}_ms"] = ms
            if not x.is_floating_point() and b == BATCH_SIZES[-1]:  # a language model: tokens in, a logit each
                out[f"cost.{role}.tokens_per_s"] = b * x[0].numel() / (ms / 1e3)
        out["cost.latency_threads"] = threads
        names += [f"latency_b{b}" for b in BATCH_SIZES]
        if not x.is_floating_point():
            names.append("tokens_per_s")
    for name in names:
        key = f"{name}_ms" if name.startswith("latency") else name
        if f"cost.pruned.{key}" not in out:
            continue
        out[f"cost.ratio.{name}"] = out[f"cost.pruned.{key}"] / out[f"cost.dense.{key}"]
        for role in runtimes:
            if f"cost.{role}.{key}" in out:
                out[f"cost.ratio.{role}.{name}"] = out[f"cost.{role}.{key}"] / out[f"cost.dense.{key}"]
    return {k: float(v) for k, v in out.items()}
