"""17. LoRA recovery against full fine-tuning (issue 40): memory and time of a training step.

On a causal LM of OPT-125m's shape (hidden 768, 12 blocks of 12 heads, MLP 3072, a vocabulary of
8,192 in place of its 50,272; random weights, float32: 91.5M parameters), one AdamW step on a
batch of 2 windows of 256 tokens, each mode in a fresh process on this machine's CPU:

* full fine-tuning: every parameter trains (what ``finetune.epochs`` does without ``finetune.lora``);
* LoRA (``finetune.lora=true``: rank 8, alpha 16, every linear layer of the blocks, everything else
  frozen), prunelab's :class:`~prunelab.experiment.lora.Lora` attached as a run attaches it.

Measured: the parameters the optimizer holds, its state's bytes after the steps (AdamW keeps two
moments per trained parameter), the median wall time of a step (after one warm-up step), and the
process's peak resident memory.

    python -m benchmarks.lora_step            # 3 timed steps a mode; printed
    python -m benchmarks.lora_step --quick    # a tiny model, 1 step
    python -m benchmarks.lora_step --publish  # also into RESULTS.md, as a kept block

``make bench`` runs it as its section 17.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from .common import Section, Verdict, peak_rss_bytes, report, table

SHAPE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072}
QUICK = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 256}
VOCAB, BATCH, SEQ = 8192, 2, 256
TARGET = 0.5  # LoRA's optimizer memory at most this fraction of full fine-tuning's (the issue's)


def child(mode: str, quick: bool, steps: int) -> dict:
    """One mode's figures, in this (fresh) process."""
    import torch

    from prunelab.experiment.lora import Lora
    from prunelab.models import lm

    torch.manual_seed(0)
    config = {"model_type": "opt", **(QUICK if quick else SHAPE), "vocab_size": VOCAB, "max_position_embeddings": SEQ}
    config["word_embed_proj_dim"] = config["hidden_size"]
    model = lm.hf_causal_lm(VOCAB, config=config).train()
    if mode == "lora":
        Lora().attach(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    walls = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x)[:, :, :-1], x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:  # the first step is a warm-up (allocations, the optimizer's state)
            walls.append(time.perf_counter() - start)
    state = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
    )
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trained": sum(p.numel() for p in trained),
        "state_bytes": state,
        "step_s": statistics.median(walls),
        # VmHWM: this process's own peak (ru_maxrss keeps across exec the RSS of the process forked)
        "peak_rss": peak_rss_bytes(),
    }


def _measured(mode: str, quick: bool, steps: int) -> dict:
    argv = [sys.executable, "-m", "benchmarks.lora_step", "--child", mode, "--steps", str(steps)]
    done = subprocess.run([*argv, *(["--quick"] if quick else [])], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{mode}: exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    mib = n / 2**20
    return f"{mib:,.0f} MiB" if mib >= 10 else f"{mib:.2f} MiB"


def run(quick: bool = False) -> Section:
    steps = 1 if quick else 3
    full, lora = _measured("full", quick, steps), _measured("lora", quick, steps)
    rows = [
        [
            name,
            f"{m['trained']:,} of {m['params']:,}",
            _mib(m["state_bytes"]),
            f"{m['step_s']:.2f} s",
            _mib(m["peak_rss"]),
        ]
        for name, m in (("full fine-tuning", full), ("LoRA (r=8, the blocks' linear layers)", lora))
    ]
    ratio = lora["state_bytes"] / full["state_bytes"]
    shape = "a tiny OPT" if quick else "OPT-125m's shape"
    body = (
        f"A causal LM of {shape} (random weights, float32), one AdamW step on {BATCH} windows of {SEQ} "
        f"tokens, median of {steps} step(s) after a warm-up, each mode a fresh process.\n\n"
        + table(["", "parameters trained", "optimizer state", "step", "peak RSS"], rows)
        + f"\n\nLoRA's optimizer state: {ratio:.4f} of full fine-tuning's; its step "
        f"{lora['step_s'] / full['step_s']:.2f}×, its peak memory {lora['peak_rss'] / full['peak_rss']:.2f}× full "
        "fine-tuning's (the activations and the frozen weights' memory stay)."
    )
    verdicts = [
        Verdict(
            "LoRA's optimizer memory against full fine-tuning's", f"≤ {TARGET:g}×", f"{ratio:.4f}×", ratio <= TARGET
        ),
        Verdict(
            "LoRA's step time against full fine-tuning's", "(reported)", f"{lora['step_s'] / full['step_s']:.2f}×", None
        ),
    ]
    return Section("17. LoRA recovery against full fine-tuning", body, verdicts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny model, one step")
    p.add_argument("--publish", action="store_true", help="write it into RESULTS.md (a kept block)")
    p.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.quick, args.steps)))
        return 0
    return report(run(args.quick), "lora_step" if args.publish else None)


if __name__ == "__main__":
    sys.exit(main())
