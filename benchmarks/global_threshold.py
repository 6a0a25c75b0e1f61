"""3. Global threshold: global unstructured selection at ratio 0.9 over ResNet-50-shaped weights.

prunelab (``prunelab.pruning.Unstructured``: scores, the global k-th smallest, the masks) vs
``torch.nn.utils.prune.global_unstructured(L1Unstructured)`` vs the seed notes' recipe (every
magnitude into a Python list, then ``np.percentile``), plus two threshold-only primitives for
scale. Times alternate in this process; each peak memory comes from a fresh process per variant
(``python -m benchmarks.global_threshold --peak VARIANT``): the rise of the kernel's peak-RSS mark
(VmHWM, reset just before the call) over the RSS just before it, so it counts everything the call
allocates, PyTorch's and NumPy's buffers included, and the masks it returns.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunelab.pruning import Unstructured, prunable_layers

from .common import (
    FIXED_MMAP_THRESHOLD,
    Resnet50Shaped,
    Section,
    Verdict,
    alternate,
    num,
    peak_rss_bytes,
    peaks_mib,
    ratios,
    reset_peak,
    rss_bytes,
    spread,
    table,
    weight_count,
)

RATIO = 0.9
TIME_TARGET_S = 0.2
MEMORY_TARGET = 1.3  # x the weights' own size
SPEEDUP_TARGET = 15.0  # x faster than global_unstructured


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in prunable_layers(model).values()]


def prunelab_masks(model: nn.Module, ratio: float = RATIO):
    return Unstructured()(model, ratio).mask.masks


def torch_global_unstructured(model: nn.Module, ratio: float = RATIO):
    """Modifies ``model`` (weight -> weight_orig + weight_mask + a hook): pass a copy."""
    layers = prunable_layers(model)
    torch_prune.global_unstructured(
        [(m, "weight") for m in layers.values()], pruning_method=torch_prune.L1Unstructured, amount=ratio
    )
    return {f"{n}.weight": m.weight_mask.bool() for n, m in layers.items()}


def seed_notes(model: nn.Module, ratio: float = RATIO):
    """The seed notes' recipe: one Python list of every magnitude, then np.percentile."""
    magnitudes = []
    for w in _weights(model):
        magnitudes += list(w.abs().numpy().flatten())
    theta = np.percentile(magnitudes, 100 * ratio)
    return {n: m.weight.detach().abs() > theta for n, m in prunable_layers(model).items()}


def kthvalue_only(model: nn.Module, ratio: float = RATIO) -> float:
    flat = torch.cat([w.abs().flatten() for w in _weights(model)])
    return float(flat.kthvalue(round(ratio * flat.numel())).values)


def partition_only(model: nn.Module, ratio: float = RATIO) -> float:
    flat = torch.cat([w.abs().flatten() for w in _weights(model)]).numpy()
    k = round(ratio * flat.size)
    flat.partition(k - 1)
    return float(flat[k - 1])


VARIANTS = {
    "prunelab `Unstructured()(model, ratio)`": prunelab_masks,
    "torch `global_unstructured(L1Unstructured)`": torch_global_unstructured,
    "seed notes: Python list + `np.percentile`": seed_notes,
    "threshold only: `torch.kthvalue` of the concatenated magnitudes": kthvalue_only,
    "threshold only: `np.partition` of the concatenated magnitudes": partition_only,
}
KEYS = {"prunelab": 0, "torch": 1, "seed": 2, "kthvalue": 3, "partition": 4}
NAMES = list(VARIANTS)


def model(pruned: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = Resnet50Shaped()
    if pruned:  # an already pruned model: 90% of the weights are exactly zero
        Unstructured()(net, RATIO).mask.apply(net)
    return net


def peak(key: str, pruned: bool, ratio: float) -> dict:
    """Run one variant once in this (fresh) process and return its peak memory."""
    net = model(pruned)
    fn = VARIANTS[NAMES[KEYS[key]]]
    fn(nn.Sequential(nn.Linear(600, 600), nn.Linear(600, 600)), 0.5)  # load lazy code first
    reset_peak()
    base = rss_bytes()
    fn(net, ratio)
    return {"peak_extra": peak_rss_bytes() - base, "weights": 4 * weight_count(net)}


def _time(net: nn.Module, names: list[str], ratio: float, repeats: int):
    copies = {}

    def before(name):  # global_unstructured rewires the model it prunes: give it a fresh copy
        copies[name] = copy.deepcopy(net) if VARIANTS[name] is torch_global_unstructured else net

    variants = {name: (lambda name=name: VARIANTS[name](copies[name], ratio)) for name in names}
    return alternate(variants, repeats, warmup=1, before=before), copies


def run(quick: bool = False, threads: int | None = None) -> Section:
    threads = threads or torch.get_num_threads()
    repeats = 1 if quick else 3
    net = model()
    n = weight_count(net)
    times, copies = _time(net, NAMES, RATIO, repeats)
    # Same answer: prunelab's masks vs global_unstructured's on these weights.
    ours = prunelab_masks(net)
    # The layers by the unpruned model's names: under torch's pruning a weight is no parameter.
    pruned_by_torch = copies[NAMES[1]]
    theirs = {f"{k}.weight": pruned_by_torch.get_submodule(k).weight_mask.bool() for k in prunable_layers(net)}
    differ = sum(int((ours[k] != theirs[k]).sum()) for k in ours)
    # prunelab's peak in three processes (the allocator makes it vary), the references' in one.
    memory = {
        name: peaks_mib(
            "benchmarks.global_threshold", "--peak", key, "--threads", str(threads), runs=3 if key == "prunelab" else 1
        )
        for key, name in zip(KEYS, NAMES)
    }
    live = peaks_mib(
        "benchmarks.global_threshold", "--peak", "prunelab", "--threads", str(threads), runs=1, env=FIXED_MMAP_THRESHOLD
    )[0]
    weights_mib = 4 * n / 2**20
    rows = []
    base = NAMES[0]
    for name in NAMES:
        r = ratios(times.wall, name, base)
        mem = memory[name]
        rows.append(
            [
                name,
                spread(times.wall[name]),
                "reference" if name == base else spread(r, "x", 3),
                spread(mem, "MiB") if len(mem) > 1 else f"{mem[0]:,.0f} MiB",
                spread([m / weights_mib for m in mem], "x", 2) if len(mem) > 1 else f"{mem[0] / weights_mib:.2f}×",
            ]
        )
    # Already pruned weights: 90% exact zeros, i.e. a score tied 23M times.
    pruned = model(pruned=True)
    tied_names = [NAMES[0], NAMES[3], NAMES[4]]
    tied, _ = _time(pruned, tied_names, 0.95, repeats)
    tied_rows = [
        [name, spread(tied.wall[name]), "reference" if name == base else spread(ratios(tied.wall, name, base), "x", 3)]
        for name in tied_names
    ]

    t_med = statistics.median(times.wall[base])
    speedup = statistics.median(ratios(times.wall, NAMES[1], base))
    mem_ratio = statistics.median(memory[base]) / weights_mib
    verdicts = [
        Verdict("3. global threshold, time", f"≤ {TIME_TARGET_S} s", f"{num(t_med)} s", t_med <= TIME_TARGET_S),
        Verdict(
            "3. global threshold, vs global_unstructured",
            f"≥ {SPEEDUP_TARGET:g}× faster",
            f"{speedup:.1f}× faster",
            speedup >= SPEEDUP_TARGET,
        ),
        Verdict(
            "3. global threshold, peak memory",
            f"≤ {MEMORY_TARGET} × weights",
            f"{mem_ratio:.2f}× ({statistics.median(memory[base]):.0f} MiB)",
            mem_ratio <= MEMORY_TARGET,
        ),
    ]
    body = (
        f"ResNet-50's 54 Conv2d/Linear weight shapes, {n:,} random weights ({weights_mib:.0f} MiB of "
        f"float32), global L1 selection at ratio {RATIO} (the first three compute every mask; the "
        f"last two only the threshold, for scale). {repeats} rounds alternating all variants after "
        f"a warm-up round; {threads} intra-op thread(s). Ratio = variant / prunelab within a round "
        "(higher = prunelab faster). Peak memory: extra peak RSS of one call in a fresh process "
        "(masks returned included; prunelab: median (min–max) of three processes), and that over "
        "the weights' own size.\n\n"
        + table(["variant", "time", "ratio to prunelab", "peak extra memory", "÷ weights"], rows)
        + f"\n\nWith glibc's mmap threshold fixed (`{FIXED_MMAP_THRESHOLD['GLIBC_TUNABLES']}`), "
        "so that freed blocks go back to the kernel instead of staying resident in the heap, "
        f"prunelab's peak is {live:.0f} MiB ({live / weights_mib:.2f}× the weights): the masks it "
        "returns (one byte per weight) plus one layer's scores; the rest of the figure above is "
        "freed memory the allocator kept."
        + f"\n\nprunelab's masks vs global_unstructured's: {differ} of {n:,} entries differ."
        + "\n\nThe same selection on already pruned weights (those weights after a 90% mask, "
        "re-pruned to 0.95: 90% of the scores tied at zero). NumPy's partition (prunelab's "
        "selection before this benchmark) degrades badly on ties; prunelab's sampled bracket "
        "counts tied values instead of moving them:\n\n"
        + table(["variant", "time", "ratio to prunelab"], tied_rows)
        + f"\n\nTargets: prunelab ≤ {TIME_TARGET_S} s, ≥ {SPEEDUP_TARGET:g}× faster than "
        f"global_unstructured, peak ≤ {MEMORY_TARGET} × the weights."
    )
    return Section("3. Global threshold over ResNet-50-shaped weights", body, verdicts)


def main() -> str:
    return run().markdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--peak", choices=list(KEYS), required=True)
    parser.add_argument("--pruned", action="store_true")
    parser.add_argument("--ratio", type=float, default=RATIO)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(peak(args.peak, args.pruned, args.ratio)))
