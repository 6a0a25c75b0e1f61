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

Not here yet: 2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``) needs the
N:M method of the "composable pruning" issue; the script says so when it runs.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Callable

import torch
from torch import nn
from torch.utils import benchmark

from benchmarks.common import machine_facts, table
from prunelab import models
from prunelab.pruning import prune, shrink

RATIOS = (0.3, 0.5, 0.7)
BATCH, SHAPE, CLASSES = 128, (1, 28, 28), 10
HEADING = "## GPU: a fine-tuning step, dense vs masked vs shrunk (structured)"


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            after_step: Callable[[], None] | None = None) -> Callable[[], None]:
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
        mask = prune(masked, "structured", "global", ratio, criterion="l2", example_inputs=x[:1])
        mask.apply(masked)
        shrunk = shrink(masked, mask, x[:1]).train()
        masked_ms = ms(step_fn(masked, x, y, after_step=mask.hold(masked)))
        shrunk_ms = ms(step_fn(shrunk, x, y))
        rows += [[f"masked, ratio {ratio}", f"{ratio}", f"{masked_ms:.2f}", f"{masked_ms / dense_ms:.2f}"],
                 [f"shrunk, ratio {ratio}", f"{ratio}", f"{shrunk_ms:.2f}", f"{shrunk_ms / dense_ms:.2f}"]]
    return rows


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
    print("\n".join([
        HEADING, "",
        f"`python -m benchmarks.gpu --device {args.device}` on {name}: VGG-small (w=32), batch {BATCH} of "
        f"1x28x28, one SGD step (forward + backward + step; masked: + mask re-applied), median ms.", "",
        table(["variant", "channel ratio", "ms / step", "vs dense"], rows), "",
        "2:4 semi-structured (torch.sparse.to_sparse_semi_structured): not measured, the N:M method "
        "(issue \"composable pruning\") has not landed.", "",
        table(["fact", "value"], machine_facts()),
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
