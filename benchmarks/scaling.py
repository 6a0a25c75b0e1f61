"""6. Pruning cost at scale: one global structured and one global unstructured pruning call
(scoring + allocation + ``mask.apply``) on prunelab's own ResNet at widths 1x, 2x and 4x, the
largest ResNet-50-sized, to show how the cost grows with the parameter count.

Structured pruning traces Torch-Pruning's dependency graph on one 3x32x32 example input. Each
call starts from the same weights (restored, untimed, before every call). Peak memory: the rise
of the peak RSS of one call in a fresh process (``python -m benchmarks.scaling --peak ...``).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from prunelab.models import ResNet
from prunelab.pruning import prune

from .common import (
    FIXED_MMAP_THRESHOLD,
    Section,
    Verdict,
    alternate,
    num,
    peak_rss_bytes,
    peaks_mib,
    reset_peak,
    rss_bytes,
    spread,
    table,
)

BLOCKS = 4  # basic blocks per stage: 3 stages, 24 blocks, 28 convolutions + the classifier
BASE_WIDTH = 32
WIDTHS = (1, 2, 4)
IN_SHAPE = (3, 32, 32)
METHODS = {"structured": ("structured", 0.5), "unstructured": ("unstructured", 0.9)}
LINEAR_SLACK = 1.25  # "linear": the cost per parameter at 4x width within 1.25x of that at 1x


def build(factor: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return ResNet(BLOCKS, IN_SHAPE, 10, BASE_WIDTH * factor)


def prune_and_apply(model: torch.nn.Module, method: str) -> None:
    kind, ratio = METHODS[method]
    prune(model, kind, "global", ratio, example_inputs=torch.zeros(1, *IN_SHAPE)).mask.apply(model)


def peak(factor: int, method: str) -> dict:
    # Load lazily imported code first, on a model too small to leave reusable heap behind.
    prune_and_apply(ResNet(1, IN_SHAPE, 10, 8), method)
    model = build(factor)
    reset_peak()
    base = rss_bytes()
    prune_and_apply(model, method)
    return {
        "peak_extra": peak_rss_bytes() - base,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }


def run(quick: bool = False, threads: int | None = None) -> Section:
    threads = threads or torch.get_num_threads()
    repeats = 1 if quick else 3
    widths = WIDTHS[:2] if quick else WIDTHS
    models = {f: build(f) for f in widths}
    saved = {f: {k: v.clone() for k, v in m.state_dict().items()} for f, m in models.items()}
    variants = {
        (f, method): (lambda f=f, method=method: prune_and_apply(models[f], method))
        for f in widths
        for method in METHODS
    }

    def restore(key):
        models[key[0]].load_state_dict(saved[key[0]])

    times = alternate(variants, repeats, warmup=1, before=restore)
    memory = {
        key: peaks_mib(
            "benchmarks.scaling", "--peak", str(key[0]), key[1], "--threads", str(threads), runs=1 if quick else 3
        )
        for key in variants
    }
    live = {
        key: peaks_mib(
            "benchmarks.scaling",
            "--peak",
            str(key[0]),
            key[1],
            "--threads",
            str(threads),
            runs=1,
            env=FIXED_MMAP_THRESHOLD,
        )[0]
        for key in variants
    }
    param_mib = {f: sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20 for f, m in models.items()}
    params = {f: sum(p.numel() for p in m.parameters()) for f, m in models.items()}
    rows, verdicts = [], []
    for method in METHODS:
        per_param = {}
        for f in widths:
            t = times.wall[(f, method)]
            mem = memory[(f, method)]
            per_param[f] = statistics.median(t) / params[f]
            rows.append(
                [
                    method,
                    f"{f}× ({BASE_WIDTH * f})",
                    f"{params[f] / 1e6:.2f}M",
                    spread(t),
                    f"{num(per_param[f] * 1e9)} ms",
                    spread(mem, "MiB"),
                    spread([m / param_mib[f] for m in mem], "x", 2),
                    f"{live[(f, method)]:.0f} MiB ({live[(f, method)] / param_mib[f]:.2f}×)",
                ]
            )
        first, last = widths[0], widths[-1]
        growth = per_param[last] / per_param[first]
        verdicts.append(
            Verdict(
                f"6. {method} pruning cost vs size",
                "grows ≤ linearly",
                f"time per parameter at {last}× width = {growth:.2f} × at {first}×",
                growth <= LINEAR_SLACK,
            )
        )
    body = (
        f"prunelab's `ResNet({BLOCKS}, {IN_SHAPE}, 10, width)` (CIFAR-style, {BLOCKS} basic blocks "
        f"per stage), widths {', '.join(str(BASE_WIDTH * f) for f in widths)}: 4× the width is "
        '16× the parameters. One call = `prune(model, method, "global", ratio, '
        "example_inputs=...)` + `mask.apply(model)`: structured at channel ratio 0.5 (L2, "
        "Torch-Pruning's dependency graph traced on one 3x32x32 input, classifier ignored), "
        f"unstructured at 0.9 (L1). {repeats} rounds alternating all six calls after a warm-up "
        f"round; {threads} intra-op thread(s). Peak memory: rise of the peak RSS over one call in "
        "a fresh process, median (min–max) of three processes, and that over the size of all the "
        "parameters; the last column is one more process with glibc's mmap threshold fixed "
        f"(`{FIXED_MMAP_THRESHOLD['GLIBC_TUNABLES']}`), which stops the C allocator from keeping "
        "freed blocks resident: what the call really holds at its peak.\n\n"
        + table(
            [
                "method",
                "width",
                "parameters",
                "time",
                "time per million parameters",
                "peak extra memory",
                "÷ parameters",
                "peak, fixed mmap threshold",
            ],
            rows,
        )
        + f"\n\nTarget: cost linear in the parameter count (time per parameter at the largest "
        f"width within {LINEAR_SLACK}× that at the smallest; fixed per-layer costs such as graph "
        "tracing make small models relatively dearer)."
    )
    return Section("6. Pruning cost at scale", body, verdicts)


def main() -> str:
    return run().markdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--peak", type=int, choices=WIDTHS, required=True)
    parser.add_argument("method", choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(peak(args.peak, args.method)))
