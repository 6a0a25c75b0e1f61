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

import contextlib
import copy
import io
import statistics
import time
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.benchmark import Timer

from ..names import Metric
from ..pruning.macs import mac_counts, param_counts

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


def counted(model: nn.Module, example_input: torch.Tensor, form: str = Metric.DENSE) -> dict[str, float]:
    """``model``'s parameter, MAC and file-size figures as the ledger names them for ``form``: the
    dense model's counted before pruning, so that a run that times nothing keeps no copy of it."""
    out: dict[str, float] = {}
    x, training = example_input[:1].detach(), model.training
    model.eval()  # counted as it is used: a training-mode pass would move BatchNorm's statistics
    try:
        with torch.no_grad():
            out[Metric.cost(form, Metric.PARAMS)], out[Metric.cost(form, Metric.NONZERO_PARAMS)] = param_counts(model)
            out[Metric.cost(form, Metric.MACS)], out[Metric.cost(form, Metric.NONZERO_MACS)] = mac_counts(model, x)
    finally:
        model.train(training)
    out[Metric.cost(form, Metric.FILE_BYTES)] = state_bytes(model)
    return {k: float(v) for k, v in out.items()}


def _timed(timed: Mapping[str, Forward], x: torch.Tensor, threads: int) -> dict[str, float]:
    """Each form's latency per batch size (and a language model's tokens per second), timed in
    alternation."""
    out: dict[str, float] = {}
    for (form, b), ms in latencies_ms(timed, x.shape[1:], threads=threads, example=x).items():
        out[Metric.cost(form, Metric.latency_ms(b))] = ms
        if not x.is_floating_point() and b == BATCH_SIZES[-1]:  # a language model: tokens in, a logit each
            out[Metric.cost(form, Metric.TOKENS_PER_S)] = b * x[0].numel() / (ms / 1e3)
    out[Metric.LATENCY_THREADS] = threads
    return out


def _ratios(out: Mapping[str, float], ratios: Mapping[str, str], runtimes: Mapping) -> dict[str, float]:
    """Each form's figure over the dense PyTorch model's."""
    found: dict[str, float] = {}
    for ratio, figure in ratios.items():
        if Metric.cost(Metric.PRUNED, figure) not in out:
            continue
        dense_figure = out[Metric.cost(Metric.DENSE, figure)]
        found[Metric.cost_ratio(ratio)] = out[Metric.cost(Metric.PRUNED, figure)] / dense_figure
        for form in runtimes:
            if Metric.cost(form, figure) in out:
                found[Metric.cost_ratio(ratio, form)] = out[Metric.cost(form, figure)] / dense_figure
    return found


def cost_ledger(
    dense: nn.Module | Mapping[str, float],
    pruned: nn.Module,
    example_input: torch.Tensor,
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
    model in other forms, ``form -> (callable, file bytes)`` (``Metric.ONNX``, ``Metric.INT8``:
    ONNX Runtime fp32 and int8): each gets ``cost.<form>.file_bytes`` / ``latency_b*_ms`` and
    ``cost.ratio.<form>.*`` against the dense PyTorch model, timed in the same alternation.
    Latency (``latency=False`` skips it) is measured on the CPU with ``threads`` threads, on the
    models themselves where they are there (a copy of one on another device); none of the models
    passed in is changed. ``dense`` may be its figures, counted before pruning
    (:func:`counted`), where nothing is timed."""
    if not isinstance(dense, nn.Module) and latency:
        raise ValueError("the ledger times the dense model beside the pruned one: pass it, not its figures")
    with contextlib.ExitStack() as stack:
        models = {Metric.PRUNED: stack.enter_context(_on_cpu(shrunk if shrunk is not None else pruned))}
        if isinstance(dense, nn.Module):
            models = {Metric.DENSE: stack.enter_context(_on_cpu(dense)), **models}
        return _ledger(dense, models, example_input[:1].detach().cpu(), latency, threads, file_bytes, runtimes)


@contextlib.contextmanager
def _on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode on the CPU: itself where it is there already (no copy: a large
    model's weights are held once), else a CPU copy; its training mode restored."""
    here = all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
    net, training = (model if here else copy.deepcopy(model).cpu()), model.training
    net.eval()
    try:
        yield net
    finally:
        model.train(training)


def _ledger(
    dense: nn.Module | Mapping[str, float],
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    latency: bool,
    threads: int,
    file_bytes: int | None,
    runtimes: Mapping[str, tuple[Forward, int]] | None,
) -> dict[str, float]:
    """:func:`cost_ledger`'s figures of ``models`` (on the CPU, in eval mode)."""
    out: dict[str, float] = {} if isinstance(dense, nn.Module) else dict(dense)
    for form, model in models.items():
        out.update(counted(model, x, form))
    if file_bytes is not None:
        out[Metric.cost(Metric.PRUNED, Metric.FILE_BYTES)] = file_bytes
    runtimes = runtimes or {}
    for form, (_, size) in runtimes.items():
        out[Metric.cost(form, Metric.FILE_BYTES)] = size
    # Each ratio's figure, and the figure it divides: a latency's ratio has no unit.
    ratios = {f: f for f in (Metric.PARAMS, Metric.NONZERO_PARAMS, Metric.MACS, Metric.NONZERO_MACS, Metric.FILE_BYTES)}
    if latency:
        timed: dict[str, Forward] = {**models, **{form: fn for form, (fn, _) in runtimes.items()}}
        out.update(_timed(timed, x, threads))
        ratios.update({Metric.latency(b): Metric.latency_ms(b) for b in BATCH_SIZES})
        if not x.is_floating_point():
            ratios[Metric.TOKENS_PER_S] = Metric.TOKENS_PER_S
    out.update(_ratios(out, ratios, runtimes))
    return {k: float(v) for k, v in out.items()}
