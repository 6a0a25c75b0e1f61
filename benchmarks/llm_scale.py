"""Post-training pruning at a published model's size: SparseGPT, unstructured 50%, on a GPT-2-small
-shaped model (12 blocks of width 768, 12 heads, MLP 3072, a 50,257-token vocabulary; random
weights: the time does not depend on them), 128 calibration windows of 512 tokens, the papers'
block-by-block walk, on this machine's CPU with both cores. The target: ≤ 10 min.

Run on its own (``python -m benchmarks.llm_scale``, ~10 min): it writes its section into
``benchmarks/RESULTS.md`` between markers, which ``make bench`` keeps. Peak memory: the rise of the
process's peak RSS during the prune over what it held before (the model, its inputs).
"""

from __future__ import annotations

import argparse
import time

import torch

from prunelab.models import lm
from prunelab.pruning import Local, PruneData, SparseGPT

from .common import Verdict, peak_rss_bytes, publish, reset_peak, rss_bytes, table, verdict_lines

BLOCK = "llm_scale"
GPT2_SMALL = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}
VOCAB, SAMPLES, SEQ = 50257, 128, 512
TARGET_S = 600.0


def run(samples: int = SAMPLES, seq: int = SEQ, layers: int = 12, threads: int = 2) -> tuple[str, Verdict]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = lm.hf_causal_lm(VOCAB, config={**GPT2_SMALL, "n_layer": layers, "vocab_size": VOCAB})
    x = torch.randint(0, VOCAB, (samples, seq), generator=torch.Generator().manual_seed(1))
    data = PruneData((x, torch.zeros(samples, dtype=torch.long)))
    params = sum(p.numel() for p in model.parameters())
    reset_peak()
    base = rss_bytes()
    start = time.perf_counter()
    pruned = SparseGPT(samples=samples, ignore=["*lm_head*"])(model, 0.5, scope=Local(), data=data)
    wall = time.perf_counter() - start
    peak = (peak_rss_bytes() - base) / 2**20
    rows = [
        ["model", f"GPT-2-small-shaped ({params / 1e6:.0f}M parameters, {layers} blocks)"],
        ["calibration", f"{samples} windows of {seq} tokens"],
        ["threads", threads],
        ["wall time", f"{wall:.0f} s ({wall / layers:.1f} s per block)"],
        ["sparsity of the pruned layers", f"{pruned.mask.sparsity:.3f}"],
        ["peak memory over the model and inputs", f"{peak:.0f} MiB"],
    ]
    text = "## 13. SparseGPT at GPT-2-small's size\n\n" + (__doc__ or "").strip() + "\n\n" + table(["", ""], rows)
    verdict = Verdict(
        "13. SparseGPT 50%, GPT-2-small shape, 128 x 512", f"≤ {TARGET_S:.0f} s", f"{wall:.0f} s", wall <= TARGET_S
    )
    return text, verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llm_scale")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 blocks, 8 windows of 128; printed only")
    args = parser.parse_args(argv)
    text, verdict = run(8, 128, 2) if args.quick else run()
    publish(f"{text}\n\n{verdict_lines([verdict])}\n", None if args.quick else BLOCK)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
