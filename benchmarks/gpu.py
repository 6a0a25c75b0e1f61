"""GPU checks, ready for a machine with one: what structured pruning buys a fine-tuning step on
CUDA, dense vs masked (prunelab's fine-tuning today: full-size network, mask re-applied after each
step) vs shrunk (the channels physically removed), side by side in one run.

    python -m benchmarks.gpu                  # on a CUDA machine; a clear skip (exit 0) elsewhere
    python -m benchmarks.gpu --device cpu     # the same measurement on the CPU (a dry run)

VGG-small (width 32) on Fashion-MNIST-shaped input (1x28x28, batch 128, 10 classes), structured
global pruning at channel ratios 0.3 / 0.5 / 0.7 (the classifier kept), one SGD step (momentum
0.9, weight decay 5e-4: the default recipe's optimizer) of forward + backward + step, timed with
``torch.utils.benchmark`` (which synchronises CUDA) on random inputs and seeded random weights:
the time of a step does not depend on the weight values.

Then 2:4 semi-structured sparsity: prunelab's ``nm`` method (2 of every 4 along the input) on the
linear layers of a transformer MLP block (d 4096 -> 16384 -> 4096, 4096 tokens, fp16, inference),
the weights handed to ``torch.sparse.to_sparse_semi_structured`` (which refuses a mask that is not
exactly 2:4), dense vs sparse forward timed side by side, and the outputs compared. CUDA only
(compute capability 8.0 or newer); the CPU dry run says so.

Last, an epoch of ResNet-56 on CIFAR-shaped data (50,000 images on the GPU, 512 in the CPU dry
run) through prunelab's ``fit``: float32 vs bf16 autocast vs bf16 + channels-last, images/s.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils import benchmark

from benchmarks.common import machine_facts, table
from prunelab import models
from prunelab.pruning import prune, shrink

RATIOS = (0.3, 0.5, 0.7)
BATCH, SHAPE, CLASSES = 128, (1, 28, 28), 10
HEADING = "## GPU: a fine-tuning step, dense vs masked vs shrunk (structured)"


def step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, after_step: Callable[[], None] | None = None
) -> Callable[[], None]:
    """One training step of ``model`` as prunelab's fine-tuning does it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if after_step is not None:
            after_step()

    return step


def measure(device: torch.device, min_run_time: float) -> list[list[str]]:
    torch.manual_seed(0)
    x = torch.randn(BATCH, *SHAPE, device=device)
    y = torch.randint(CLASSES, (BATCH,), device=device)
    dense = models.vgg_small(in_shape=SHAPE, num_classes=CLASSES, width=32).to(device).train()

    def ms(fn: Callable[[], None]) -> float:
        fn()  # warm-up: kernels chosen, optimizer state allocated
        return benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e3

    dense_ms = ms(step_fn(dense, x, y))
    rows = [["dense", "–", f"{dense_ms:.2f}", "1.00"]]
    for ratio in RATIOS:
        masked = copy.deepcopy(dense)
        mask = prune(masked, "structured", "global", ratio, criterion="l2", example_inputs=x[:1]).mask
        mask.apply(masked)
        shrunk = shrink(masked, mask, x[:1]).train()
        masked_ms = ms(step_fn(masked, x, y, after_step=mask.hold(masked)))
        shrunk_ms = ms(step_fn(shrunk, x, y))
        rows += [
            [f"masked, ratio {ratio}", f"{ratio}", f"{masked_ms:.2f}", f"{masked_ms / dense_ms:.2f}"],
            [f"shrunk, ratio {ratio}", f"{ratio}", f"{shrunk_ms:.2f}", f"{shrunk_ms / dense_ms:.2f}"],
        ]
    return rows


D_MODEL, D_HIDDEN, TOKENS = 4096, 16384, 4096


def semi_structured(device: torch.device, min_run_time: float) -> tuple[list[list[str]], str]:
    """Dense vs 2:4 forward of an MLP block pruned by prunelab's ``nm`` method: (rows, note)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return [], "2:4 semi-structured: not measured (needs CUDA with compute capability 8.0 or newer)."
    from torch.sparse import to_sparse_semi_structured

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(D_MODEL, D_HIDDEN), nn.GELU(), nn.Linear(D_HIDDEN, D_MODEL))
    mask = prune(dense, "nm", "local", 0.5, n=2, m=4).mask
    mask.apply(dense)
    dense = dense.half().to(device).eval()
    sparse = copy.deepcopy(dense)
    for layer in (sparse[0], sparse[2]):
        layer.weight = nn.Parameter(to_sparse_semi_structured(layer.weight), requires_grad=False)
    x = torch.randn(TOKENS, D_MODEL, device=device, dtype=torch.half)
    with torch.no_grad():
        err = ((sparse(x) - dense(x)).abs().max() / dense(x).abs().max()).item()
        times = {}
        for name, model in (("dense (2:4 zeros stored)", dense), ("2:4 semi-structured", sparse)):
            model(x)
            times[name] = (
                benchmark.Timer("m(x)", globals={"m": model, "x": x})
                .blocked_autorange(min_run_time=min_run_time)
                .median
                * 1e3
            )
    base = times["dense (2:4 zeros stored)"]
    rows = [[name, f"{t:.3f}", f"{t / base:.2f}"] for name, t in times.items()]
    return rows, (
        f"MLP block {D_MODEL}->{D_HIDDEN}->{D_MODEL}, {TOKENS} tokens, fp16, forward; "
        f"max |sparse - dense| / max |dense| = {err:.1e}."
    )


def block_offload(device: torch.device) -> tuple[list[list[str]], str]:
    """SparseGPT 50% of a GPT-2-small-shaped model (random weights, 64 windows of 512 tokens),
    the whole model on the device vs the model on the CPU and each block moved to the device while
    it is pruned (``method.block_device``): the device's peak memory and the wall time of each."""
    if device.type != "cuda":
        return [], "Block offload: not measured (the device's peak memory needs CUDA)."
    import time

    from prunelab.models import lm
    from prunelab.pruning import Local, PruneData, SparseGPT

    config = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}
    vocab, samples, seq = 50257, 64, 512
    x = torch.randint(0, vocab, (samples, seq), generator=torch.Generator().manual_seed(1))
    rows = []
    for name, offload in (("whole model on the GPU", False), ("model on the CPU, one block on the GPU", True)):
        torch.manual_seed(0)
        model = lm.hf_causal_lm(vocab, config={**config, "vocab_size": vocab})
        if not offload:
            model.to(device)
        data = PruneData((x.to(device) if not offload else x, torch.zeros(samples, dtype=torch.long)))
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        method = SparseGPT(samples=samples, block_device=str(device) if offload else None)
        method(model, 0.5, scope=Local(), data=data)
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        on_device = weights if not offload else 0.0  # what of the weights lives on the GPU
        rows.append([name, f"{peak:.0f}", f"{peak - on_device:.0f}", f"{wall:.1f}"])
        del model, data
        torch.cuda.empty_cache()
    return rows, (
        f"SparseGPT 50%, GPT-2-small shape (12 blocks of 768), {samples} windows of {seq} tokens, fp32; "
        "beyond the weights held on the GPU: one block's working set (its weights, Hessians, activations)."
    )


def ledger_on_device(device: torch.device) -> tuple[list[list[str]], str]:
    """The cost ledger of a GPT-2-small-shaped model (random weights) and its 50% magnitude-pruned
    twin, both on ``device``: timed there as they stand (``prunelab.deploy.ledger.cost_ledger``, as
    a run on that device times them), the wall time of the whole ledger beside its figures."""
    import time

    from prunelab.deploy.ledger import cost_ledger
    from prunelab.models import lm
    from prunelab.names import Metric

    config = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}
    vocab = 50257
    torch.manual_seed(0)
    dense = lm.hf_causal_lm(vocab, config={**config, "vocab_size": vocab}).to(device)
    pruned = copy.deepcopy(dense)
    prune(pruned, "unstructured", "local", 0.5, ignore=["*lm_head*"]).mask.apply(pruned)
    x = torch.randint(0, vocab, (1, 512), device=device)
    start = time.perf_counter()
    costs = cost_ledger(dense, pruned, x, latency=True)
    wall = time.perf_counter() - start
    rows = [
        [
            form,
            f"{costs[Metric.cost(form, Metric.latency_ms(1))]:.2f}",
            f"{costs[Metric.cost(form, Metric.TOKENS_PER_S)]:,.0f}",
        ]
        for form in (Metric.DENSE, Metric.PRUNED)
    ]
    note = (
        f"GPT-2-small shape, unstructured 50%, both models on {device.type}; windows of "
        f"{costs[Metric.LATENCY_SEQ_LEN]:.0f} tokens; the whole ledger (counts, file sizes, timings) took {wall:.1f} s."
    )
    return rows, note


def cifar_epoch(device: torch.device, images: int) -> tuple[list[list[str]], str]:
    """One epoch of ResNet-56 on CIFAR-shaped data held on the device (as prunelab holds CIFAR-10),
    ``augment=crop_flip`` on the device, batch 128, through prunelab's ``fit``: float32 vs bf16
    autocast vs bf16 + channels-last, each after a warm-up epoch, from the same weights."""
    from prunelab.data.augment import CropFlip
    from prunelab.data.splits import Split
    from prunelab.experiment.train import Speed, fit

    torch.manual_seed(0)
    x = torch.randn(images, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (images,), device=device)
    crop_flip = CropFlip()
    train = Split(x, y, lambda b, g: crop_flip.batch(b, g, 0.0, 1.0))
    template = models.resnet_cifar(depth=56).to(device)
    rows, base = [], None
    for name, speed in (
        ("float32", Speed()),
        ("bf16 autocast", Speed("bf16")),
        ("bf16 + channels_last", Speed("bf16", channels_last=True)),
    ):
        model = copy.deepcopy(template)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        timings = []
        for _ in range(2):  # the first epoch warms up (cuDNN's choices, allocator)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fit(model, train, Split(x[:0], y[:0]), optimizer, 1, 128, 0, speed=speed)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
        seconds = timings[-1]
        base = base or seconds
        rows.append([name, f"{seconds:.2f}", f"{images / seconds:,.0f}", f"{seconds / base:.2f}×"])
    note = (
        f"ResNet-56 (0.86M parameters), {images:,} CIFAR-shaped images on the device, crop_flip on the device, "
        "batch 128, SGD; the second of two epochs. A CIFAR-10 epoch is 45,000 training images "
        "(5,000 held out), so a study point (200 dense + 100 fine-tuning epochs) takes about 300 × the "
        "epoch time scaled to 45,000."
    )
    return rows, note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per variant")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: PyTorch sees no CUDA device (run this on a GPU machine; --device cpu for a dry run)")
        return 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = measure(device, args.min_run_time)
    nm_rows, nm_note = semi_structured(device, args.min_run_time)
    offload_rows, offload_note = block_offload(device)
    ledger_rows, ledger_note = ledger_on_device(device)
    cifar_rows, cifar_note = cifar_epoch(device, 50_000 if device.type == "cuda" else 512)
    print(
        "\n".join(
            [
                HEADING,
                "",
                f"`python -m benchmarks.gpu --device {args.device}` on {name}: VGG-small (w=32), batch {BATCH} of "
                f"1x28x28, one SGD step (forward + backward + step; masked: + mask re-applied), median ms.",
                "",
                table(["variant", "channel ratio", "ms / step", "vs dense"], rows),
                "",
                "### 2:4 semi-structured (prunelab `method=nm`, `torch.sparse.to_sparse_semi_structured`)",
                "",
                nm_note,
                "",
                *([table(["variant", "ms / forward", "vs dense"], nm_rows), ""] if nm_rows else []),
                "### Post-training pruning with one block on the GPU (`method.block_device`)",
                "",
                offload_note,
                "",
                *(
                    [table(["placement", "peak GPU MiB", "beyond the weights on it, MiB", "wall s"], offload_rows), ""]
                    if offload_rows
                    else []
                ),
                "### The cost ledger on the run's device",
                "",
                ledger_note,
                "",
                table(["model", "latency batch 1 ms", "tokens/s"], ledger_rows),
                "",
                "### A CIFAR epoch: float32 vs bf16 vs bf16 + channels-last (`train.precision`, `train.channels_last`)",
                "",
                cifar_note,
                "",
                table(["precision / layout", "s / epoch", "images/s", "vs float32"], cifar_rows),
                "",
                table(["fact", "value"], machine_facts()),
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
