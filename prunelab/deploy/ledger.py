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

Latency is the median of ``torch.utils.benchmark`` measurements on the models' device (on the CPU
with a fixed thread count, 1 by default), the models timed as they stand (no copies) in fine
alternation so that a busy machine slows both alike. A language model is timed on windows of at
most :data:`LM_TIMED_TOKENS` tokens (``cost.latency_seq_len`` says how many), at the batch sizes whose
work (tokens x weights) is within :data:`LM_BUDGET` (batch 1 always): seconds a run at OPT-1.3B's
size, where batches of 64 windows of 2048 tokens took hours.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.benchmark import Timer

from ..names import Metric
from ..pruning.macs import mac_counts, param_counts

BATCH_SIZES = (1, 64)
# A language model's timed window (tokens) and the most multiply-adds of weights x tokens one timed
# call may take (about a second on one CPU thread): GPT-2-small's 124M weights time batch 1 only.
LM_TIMED_TOKENS = 128
LM_BUDGET = 1 << 36

Forward = Callable[[torch.Tensor], torch.Tensor]  # what is timed: a module, or a runtime's session


class _Counting:
    """A file that only counts what is written to it."""

    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        self.size += memoryview(data).nbytes
        return memoryview(data).nbytes

    def flush(self) -> None:
        pass


def state_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())``: the file a user would ship (counted as it is
    written, not held: a large model's file is gigabytes)."""
    counter = _Counting()
    torch.save(model.state_dict(), counter)  # type: ignore[arg-type]  # a writable file is all it needs
    return counter.size


def timed_input(model: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """What the ledger times ``model`` on, and at which batch sizes: one sample of ``example`` and
    :data:`BATCH_SIZES`; for a language model (token ids) a window of at most
    :data:`LM_TIMED_TOKENS` tokens, at the batch sizes within :data:`LM_BUDGET`."""
    x = example[:1].detach()
    if x.is_floating_point():
        return x, BATCH_SIZES
    x = x[..., :LM_TIMED_TOKENS]
    weights = sum(p.numel() for p in model.parameters())
    return x, tuple(b for b in BATCH_SIZES if b == 1 or b * x.numel() * weights <= LM_BUDGET)


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
            x = torch.randn(b, *in_shape, device=example.device if example is not None else "cpu")
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


def _timed(timed: Mapping[str, Forward], x: torch.Tensor, batches: tuple[int, ...], threads: int) -> dict[str, float]:
    """Each form's latency per batch size (and a language model's tokens per second, at the largest
    batch, and the window it was timed on), timed in alternation."""
    out: dict[str, float] = {}
    for (form, b), ms in latencies_ms(timed, x.shape[1:], batches, threads=threads, example=x).items():
        out[Metric.cost(form, Metric.latency_ms(b))] = ms
        if not x.is_floating_point() and b == batches[-1]:  # a language model: tokens in, a logit each
            out[Metric.cost(form, Metric.TOKENS_PER_S)] = b * x[0].numel() / (ms / 1e3)
    out[Metric.LATENCY_THREADS] = threads
    if not x.is_floating_point():
        out[Metric.LATENCY_SEQ_LEN] = x[0].numel()
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
    Latency (``latency=False`` skips it) is measured on the models as they stand (no copies), on
    their device (on the CPU with ``threads`` threads), at :func:`timed_input`'s batch sizes; none of
    the models passed in is changed. ``dense`` may be its figures, counted before pruning
    (:func:`counted`), where nothing is timed."""
    if not isinstance(dense, nn.Module) and latency:
        raise ValueError("the ledger times the dense model beside the pruned one: pass it, not its figures")
    with contextlib.ExitStack() as stack:
        models = {Metric.PRUNED: stack.enter_context(_evaluating(shrunk if shrunk is not None else pruned))}
        if isinstance(dense, nn.Module):
            models = {Metric.DENSE: stack.enter_context(_evaluating(dense)), **models}
        device = next(iter(models[Metric.PRUNED].parameters())).device
        return _ledger(dense, models, example_input.to(device), latency, threads, file_bytes, runtimes)


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` itself in eval mode (a large model's weights are held once), its mode restored."""
    training = model.training
    model.eval()
    try:
        yield model
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
    """:func:`cost_ledger`'s figures of ``models`` (in eval mode; ``x`` on their device)."""
    out: dict[str, float] = {} if isinstance(dense, nn.Module) else dict(dense)
    for form, model in models.items():
        out.update(counted(model, x[:1], form))
    if file_bytes is not None:
        out[Metric.cost(Metric.PRUNED, Metric.FILE_BYTES)] = file_bytes
    runtimes = runtimes or {}
    for form, (_, size) in runtimes.items():
        out[Metric.cost(form, Metric.FILE_BYTES)] = size
    # Each ratio's figure, and the figure it divides: a latency's ratio has no unit.
    ratios = {f: f for f in (Metric.PARAMS, Metric.NONZERO_PARAMS, Metric.MACS, Metric.NONZERO_MACS, Metric.FILE_BYTES)}
    if latency:
        timed: dict[str, Forward] = {**models, **{form: fn for form, (fn, _) in runtimes.items()}}
        sample, batches = timed_input(models[Metric.PRUNED], x)
        out.update(_timed(timed, sample, batches, threads))
        ratios.update({Metric.latency(b): Metric.latency_ms(b) for b in batches})
        if not x.is_floating_point():
            ratios[Metric.TOKENS_PER_S] = Metric.TOKENS_PER_S
    out.update(_ratios(out, ratios, runtimes))
    return {k: float(v) for k, v in out.items()}
