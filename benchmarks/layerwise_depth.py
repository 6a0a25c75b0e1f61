"""12. Post-training pruning cost against depth

Wanda and SparseGPT (unstructured 50%, scope local) on ``tiny_gpt``-shaped models of the same width (128, 4 heads, MLP 512, 128-token windows, a
256-token vocabulary) at 2 and 16 blocks, 64 calibration windows, one prune call each.

The time per block should not grow with depth: block 0's inputs are captured once and each block
runs on its predecessor's outputs (``prunelab/pruning/blocks.py``), as the papers' code does. Before
that, each layer's statistics came from a pass through the whole model up to it (measured on
69eb766: 3.5–4.2× the per-block time at 8 blocks as at 1). Each call starts from the same weights
(restored, untimed).
"""

from __future__ import annotations

import statistics

import torch

from prunelab.models import lm
from prunelab.pruning import Local, PruneData, SparseGPT, Wanda

from .common import Section, Verdict, alternate, num, spread, table

WIDTH, HEADS, SEQ, VOCAB, SAMPLES = 128, 4, 128, 256, 64
DEPTHS = (2, 16)
TARGET = 1.3  # per-block time at 16 blocks within 1.3x that at 2
METHODS = {"wanda": Wanda, "sparsegpt": SparseGPT}


def build(depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return lm.tiny_gpt((SEQ,), VOCAB, d_model=WIDTH, layers=depth, heads=HEADS)


def run(quick: bool = False) -> Section:
    depths = (2, 4) if quick else DEPTHS
    samples = 16 if quick else SAMPLES
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (samples, SEQ), generator=g)
    data = PruneData((x, torch.zeros(samples, dtype=torch.long)))
    models = {d: build(d) for d in depths}
    saved = {d: {k: v.clone() for k, v in m.state_dict().items()} for d, m in models.items()}
    variants = {
        (name, d): (lambda name=name, d=d: METHODS[name](samples=samples)(models[d], 0.5, scope=Local(), data=data))
        for name in METHODS
        for d in depths
    }
    timings = alternate(
        variants,  # type: ignore[arg-type]
        repeats=1 if quick else 3,
        before=lambda key: models[key[1]].load_state_dict(saved[key[1]]),  # type: ignore[index]
    )
    rows, verdicts = [], []
    for name in METHODS:
        per_block = {d: [t / d for t in timings.wall[(name, d)]] for d in depths}  # type: ignore[index]
        ratios = [b / a for a, b in zip(per_block[depths[0]], per_block[depths[1]], strict=True)]
        rows.append([name, *(spread(per_block[d]) for d in depths), spread(ratios, "x")])
        verdicts.append(
            Verdict(
                f"12. {name} per block, {depths[1]} vs {depths[0]} blocks",
                f"≤ {TARGET}×",
                f"{num(statistics.median(ratios))}×",
                statistics.median(ratios) <= TARGET,
            )
        )
    body = (
        (__doc__ or "").split("\n", 1)[1].strip()
        + "\n\n"
        + table(["method", *(f"s per block at {d} blocks" for d in depths), f"{depths[1]} / {depths[0]}"], rows)
    )
    return Section((__doc__ or "").split("\n", 1)[0], body, verdicts)


def main() -> str:
    return run().markdown()


if __name__ == "__main__":
    print(main())
