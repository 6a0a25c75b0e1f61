"""Structured pruning of a LLaMA-architecture model, for real: tokens per second of the shrunk model
against the dense one, as every run's cost ledger times them (``prunelab.deploy.ledger.latencies_ms``:
one CPU thread, batch 64 windows of 256 tokens, the variants timed in alternation, median over the
rounds). Half the key/value groups (with their query heads) and half the SwiGLU channels of every
block (``method=width``, ``scope=local``), and a quarter of the blocks (``method=blocks``), on two
shapes with random weights (speed does not depend on them):

* the ``lm_structured_hf`` study's checkpoint (4 blocks of width 256, 8 query / 4 key-value heads,
  SwiGLU 688, vocabulary 4096): its logits layer is a fifth of its MACs, which caps what removing
  structure from the blocks can buy;
* the same architecture at proportions closer to the published LLMs' (8 blocks of width 512, SwiGLU
  1376, the same vocabulary): the logits layer is 8% of the MACs (LLaMA-7B's: 2%).

Run on its own (``python -m benchmarks.llm_structured_speed``, ~5 min): it writes its section into
``benchmarks/RESULTS.md`` between markers, which ``make bench`` keeps. Targets (issue "Structured
pruning of real LLM architectures"): heads + MLP at 50% ≥ 1.6×, depth at 25% ≥ 1.25×.
"""

from __future__ import annotations

import argparse

import torch

from prunelab.deploy.ledger import latencies_ms
from prunelab.models import lm
from prunelab.pruning import PruneData, prune, shrink
from prunelab.pruning.macs import mac_counts

from .common import Verdict, publish, table, verdict_lines

BLOCK = "llm_structured_speed"
VOCAB, SEQ, BATCH = 4096, 256, 64
LLAMA = {"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": SEQ}
SHAPES = {
    "study checkpoint (4 x 256)": {**LLAMA, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4},
    "LLM proportions (8 x 512)": {**LLAMA, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8},
}
TARGETS = {"width 0.5": 1.6, "blocks 0.25": 1.25}


def variants(config: dict, seq: int) -> tuple[dict[str, torch.nn.Module], torch.Tensor, float]:
    """The dense model and its shrunk variants, an example window, and the logits layer's share of the MACs."""
    torch.manual_seed(0)
    model = lm.hf_causal_lm(VOCAB, config={**config, "vocab_size": VOCAB}).eval()
    x = torch.randint(0, VOCAB, (8, seq), generator=torch.Generator().manual_seed(1))
    data = PruneData((x, x), seed=0)
    width = prune(model, method="width", scope="local", ratio=0.5, data=data).mask
    depth = prune(model, method="blocks", ratio=0.25, data=data, samples=4, order="last").mask
    models = {"dense": model, "width 0.5": shrink(model, width, x[:1]), "blocks 0.25": shrink(model, depth, x[:1])}
    macs = mac_counts(model, x[:1])[0]
    head = VOCAB * config["hidden_size"] * seq
    return {k: m.eval() for k, m in models.items()}, x, head / macs


def run(seq: int = SEQ, batch: int = BATCH, budget_s: float = 20.0) -> tuple[str, list[Verdict]]:
    torch.set_num_threads(1)
    rows, verdicts = [], []
    for shape, config in SHAPES.items():
        models, x, head_share = variants(config, seq)
        with torch.no_grad():
            ms = latencies_ms(models, x.shape[1:], batch_sizes=(batch,), threads=1, budget_s=budget_s, example=x)
        dense_macs = mac_counts(models["dense"], x[:1])[0]
        for name, model in models.items():
            speed = ms[("dense", batch)] / ms[(name, batch)]
            macs = mac_counts(model, x[:1])[0] / dense_macs
            tokens = batch * seq / (ms[(name, batch)] / 1e3)
            rows.append([shape, name, f"{head_share:.2f}", f"{macs:.3f}", f"{tokens:,.0f}", f"{speed:.2f}×"])
            if name in TARGETS and shape.startswith("LLM"):
                verdicts.append(
                    Verdict(
                        f"14. {name} of a LLaMA, tokens/s",
                        f"≥ {TARGETS[name]}×",
                        f"{speed:.2f}×",
                        speed >= TARGETS[name],
                    )
                )
    text = (
        "## 14. Width and depth pruning of a LLaMA: tokens per second\n\n"
        + (__doc__ or "").strip()
        + "\n\n"
        + table(["shape", "model", "logits layer, share of MACs", "MACs (× dense)", "tokens/s", "speed-up"], rows)
    )
    return text, verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llm_structured_speed")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 windows of 32 tokens; printed only")
    args = parser.parse_args(argv)
    text, verdicts = run(32, 4, 0.2) if args.quick else run()
    publish(f"{text}\n\n{verdict_lines(verdicts)}\n", None if args.quick else BLOCK)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
