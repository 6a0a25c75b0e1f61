"""What every benchmark shares: interleaved timing, peak memory in a fresh process, the figures'
formatting, the machine facts, and the reference models.

Timing is noisy on a small shared machine, so variants are never timed back to back in blocks:
each round runs every variant once (A B A B ...), after warm-up rounds that are not recorded, and
the report gives the median with the min-max over the rounds. Ratios are taken per round (variant
over baseline within the same round) so slow drift of the machine cancels out.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# --- timing -------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Seconds per call, per variant: wall-clock, and this process's CPU time (user + system,
    all threads). Time lost to other processes on a shared machine shows in ``wall`` only."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def alternate(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    before: Callable[[str], Any] | None = None,
    warm: dict[str, Callable[[], Any]] | None = None,
) -> Timings:
    """Time each variant over ``repeats`` rounds of A B A B ... after ``warmup`` unrecorded
    rounds (which call ``warm[name]`` instead, if given: a shorter run of the same code).
    ``before(name)`` (untimed) runs before each call, e.g. to reset a model."""
    out = Timings({name: [] for name in variants}, {name: [] for name in variants})
    for round_ in range(warmup + repeats):
        for name, fn in variants.items():
            if round_ < warmup and warm is not None:
                fn = warm[name]
            if before is not None:
                before(name)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if round_ >= warmup:
                out.wall[name].append(wall)
                out.cpu[name].append(cpu)
    return out


def ratios(times: dict[str, list[float]], name: str, base: str) -> list[float]:
    """Per-round ratio ``name / base`` (same round, so drift cancels)."""
    return [a / b for a, b in zip(times[name], times[base])]


def spread(values: Sequence[float], unit: str = "s", digits: int = 3) -> str:
    """``median (min–max) unit``, the one way every figure is written."""
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "x": 1.0, "MiB": 1.0}[unit]
    med, lo, hi = (num(scale * v, digits) for v in (statistics.median(values), min(values), max(values)))
    suffix = "×" if unit == "x" else f" {'µs' if unit == 'us' else unit}"
    return f"{med} ({lo}–{hi}){suffix}"


def num(value: float, digits: int = 3) -> str:
    """``digits`` significant digits, without switching to exponents for large values."""
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


@dataclass
class Verdict:
    """One line of the summary: a target and what was measured against it."""

    item: str
    target: str
    measured: str
    met: bool | None  # None: nothing to meet (a reference figure)

    @property
    def mark(self) -> str:
        return {True: "met", False: "**not met**", None: "–"}[self.met]


@dataclass
class Section:
    """What one benchmark returns: its Markdown and its verdicts for the summary table."""

    title: str
    body: str
    verdicts: list[Verdict] = field(default_factory=list)

    def markdown(self) -> str:
        return f"## {self.title}\n\n{self.body.strip()}\n"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- data -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def fashion_mnist():
    """Fashion-MNIST as prunelab loads it (55k train / 5k validation / 10k test), loaded once."""
    from prunelab.data import fashion_mnist as load

    return load()


@lru_cache(maxsize=1)
def config():
    """The composed default config: the optimizer, learning rates, batch size and epochs a plain
    ``python -m prunelab`` run uses (its recipe)."""
    from prunelab.config import compose

    return compose()


@lru_cache(maxsize=1)
def vgg_small_one_epoch() -> nn.Module:
    """VGG-small (width 32) after one epoch of the configured dense training on Fashion-MNIST
    (about two minutes): trained enough that pruning keeps the channels a trained network keeps.
    Shared by the sections that need it; copy it before changing it."""
    from prunelab import models
    from prunelab.data import Split
    from prunelab.experiment.train import fit

    data = fashion_mnist()
    torch.manual_seed(0)
    model = models.vgg_small(in_shape=data.in_shape, width=32)
    fit(
        model,
        data.train,
        Split(data.val.x[:0], data.val.y[:0]),
        configured_optimizer(model.parameters()),
        1,
        config().train.batch_size,
        0,
        desc="vgg_small, 1 dense epoch (benchmarks)",
    )
    return model.eval()


def vgg_small_pruned(ratio: float, trained: bool = True):
    """(dense, masked, mask, shrunk): VGG-small (width 32), after one dense epoch unless
    ``trained=False`` (a quick run: the channel counts matter, not their accuracy), pruned
    structured global L2 at ``ratio``; fresh copies, free to change."""
    import copy

    from prunelab import models
    from prunelab.pruning import prune, shrink

    data = fashion_mnist()
    if trained:
        dense = copy.deepcopy(vgg_small_one_epoch())
    else:
        torch.manual_seed(0)
        dense = models.vgg_small(in_shape=data.in_shape, width=32).eval()
    masked = copy.deepcopy(dense)
    mask = prune(masked, "structured", "global", ratio, criterion="l2", example_inputs=data.train.x[:1]).mask
    mask.apply(masked)
    return dense, masked, mask, shrink(masked, mask, data.train.x[:1])


def configured_optimizer(params, stage: str = "train") -> torch.optim.Optimizer:
    """The configured optimizer (``train.optimizer``) at ``stage``'s learning rate."""
    from hydra.utils import instantiate

    cfg = config()
    return instantiate(cfg.train.optimizer)(params, lr=cfg[stage].lr)


def optimizer_name() -> str:
    opt = config().train.optimizer
    extra = ", ".join(f"{k}={v}" for k, v in opt.items() if not k.startswith("_"))
    return opt._target_.rsplit(".", 1)[-1] + (f"({extra})" if extra else "")


# --- peak memory ------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Current resident set size (VmRSS) of this process."""
    return status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size (VmHWM) since the process started or the last :func:`reset_peak`."""
    return status_kb("VmHWM") * 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if not allowed,
    in which case the peak is the process's lifetime peak (ru_maxrss)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_kb(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` field in KiB (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


# glibc raises its mmap threshold each time a large block is freed, after which freed blocks of
# that size stay in the heap (resident) instead of going back to the kernel: the peak RSS then
# includes memory nobody uses any more, by an amount that varies from run to run. A fixed
# threshold turns that off and leaves what the call really holds at once.
FIXED_MMAP_THRESHOLD = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}


def in_subprocess(module: str, *args: str, timeout: float = 600, env: dict | None = None) -> dict:
    """Run ``python -m module args...`` in a fresh interpreter and return the JSON object it
    prints last on stdout. A fresh process per variant keeps one variant's freed-but-retained
    heap from hiding another's peak."""
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peaks_mib(module: str, *args: str, runs: int = 3, env: dict | None = None) -> list[float]:
    """The ``peak_extra`` bytes that ``runs`` fresh processes of ``module`` report, in MiB. Runs
    differ by tens of percent: how much freed memory the C allocator keeps varies."""
    return [in_subprocess(module, *args, env=env)["peak_extra"] / 2**20 for _ in range(runs)]


# --- machine facts --------------------------------------------------------------------------


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"git {commit}" + (" with uncommitted changes" if dirty else "")


def machine_facts() -> list[tuple[str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    def dist(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    except OSError:
        mem = "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable by this process)"),
        ("Memory", mem),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        (
            "PyTorch",
            f"{torch.__version__} ({torch.get_num_threads()} intra-op threads, "
            f"{torch.get_num_interop_threads()} inter-op)",
        ),
        ("NumPy", np.__version__),
        ("Torch-Pruning", dist("torch-pruning")),
        ("prunelab", f"{dist('prunelab')} ({_git_commit()})"),
        ("Load average at start (1, 5, 15 min)", load),
    ]


# --- reference models -----------------------------------------------------------------------

# (width, output width, blocks) of ResNet-50's four bottleneck stages.
RESNET50_STAGES = ((64, 256, 3), (128, 512, 4), (256, 1024, 6), (512, 2048, 3))


class Resnet50Shaped(nn.Module):
    """The Conv2d/Linear layers of ResNet-50, with ResNet-50's weight shapes (25.5M weights,
    random initialisation), as a flat list: only the weights matter to global selection, not
    the forward pass (no torchvision needed)."""

    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False)]
        c_in = 64
        for width, out, blocks in RESNET50_STAGES:
            for b in range(blocks):
                layers += [
                    nn.Conv2d(c_in, width, 1, bias=False),
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.Conv2d(width, out, 1, bias=False),
                ]
                if b == 0:
                    layers.append(nn.Conv2d(c_in, out, 1, bias=False))  # projection shortcut
                c_in = out
        layers.append(nn.Linear(2048, 1000))
        self.layers = nn.ModuleList(layers)


def weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


# --- RESULTS.md blocks --------------------------------------------------------------------------


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"  # what make bench writes; long benchmarks add blocks


def verdict_lines(verdicts: Sequence[Verdict]) -> str:
    """The verdicts as a section's last lines (what RESULTS.md's summary is made of)."""
    return "\n".join(f"Verdict: {v.item}: {v.measured} (target {v.target}): {v.mark}" for v in verdicts)


def publish(text: str, block: str | None = None) -> None:
    """Print a benchmark's ``text``; with ``block``, also write it into RESULTS.md as that kept
    block (a long benchmark run on its own; ``make bench`` keeps it)."""
    print(text)
    if block is not None:
        write_block(block, text, RESULTS)
        print(f"wrote {RESULTS}", file=sys.stderr)


def report(section: Section, block: str | None = None) -> int:
    """Publish ``section`` with its verdicts; the exit status: 0 when every target was met."""
    publish(section.markdown() + "\n" + verdict_lines(section.verdicts) + "\n", block)
    return 0 if all(v.met for v in section.verdicts) else 1


def write_block(name: str, text: str, path: Path) -> None:
    """Put ``text`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``, replacing
    the block of an earlier run; a long benchmark run on its own writes its section this way and
    ``make bench`` keeps it (benchmarks/__main__.py)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.strip()}\n{end}\n"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)
