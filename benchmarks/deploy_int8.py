"""8. What pruning + int8 buys at deployment: VGG-small structured 0.5, then int8 with ONNX Runtime,
against the dense fp32 model, CPU latency at batch 1 and 64 and test accuracy, in one run.

The pipeline is the runner's (``prunelab.deploy``): the network behind its standardisation,
``torch.export`` -> ONNX -> ONNX Runtime's static int8 quantizer calibrated on 8 validation
batches of 64. VGG-small (width 32) after one dense epoch, pruned structured global L2 at 0.5 and
fine-tuned one epoch as the runner does it (shrunk, the configured optimizer at the fine-tuning
learning rate). Latency: ``prunelab.ledger.latencies_ms`` (every variant timed in fine
alternation, median of rounds) with 1 thread for PyTorch and for ONNX Runtime alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prunelab.deploy.ledger import latencies_ms
from prunelab.deploy.onnx import OnnxModel, accuracy, deployed, export, int8, onnx_model
from prunelab.experiment.train import fit

from .common import Section, Verdict, config, configured_optimizer, fashion_mnist, num, table, vgg_small_pruned

TARGET_LATENCY, TARGET_ACCURACY = 0.30, 1.0
RATIO = 0.5


def run(quick: bool = False, threads: int = 1) -> Section:
    data = fashion_mnist()
    dense, _, _, shrunk = vgg_small_pruned(RATIO, trained=not quick)
    if not quick:
        fit(
            shrunk,
            data.train,
            data.val,
            configured_optimizer(shrunk.parameters(), "finetune"),
            1,
            config().train.batch_size,
            1,
            desc="fine-tune shrunk (benchmark)",
        )
    shrunk.eval()
    raw_val = data.raw(data.val.x)
    forms = {}
    with tempfile.TemporaryDirectory() as tmp:  # the ONNX files, as the hand-over writes them
        for name, net in (("dense", dense), ("pruned", shrunk)):
            ship = deployed(net, data.mean, data.std)
            program = export(ship, data.train.x[:1])
            onnx = onnx_model(program, Path(tmp) / f"{name}.onnx") if program is not None else None
            if onnx is None:
                raise RuntimeError(f"the {name} VGG-small could not be exported to ONNX")
            forms[f"{name}, PyTorch fp32"] = ship
            forms[f"{name}, ONNX Runtime fp32"] = OnnxModel(onnx, threads)  # (the session holds the model)
            forms[f"{name}, ONNX Runtime int8"] = OnnxModel(int8(onnx.read_bytes(), raw_val), threads)
    test = (data.test_raw[:1000], data.test.y[:1000]) if quick else (data.test_raw, data.test.y)
    acc = {name: accuracy(fn, *test) for name, fn in forms.items()}
    lat = latencies_ms(forms, data.in_shape, threads=threads, budget_s=0.2 if quick else 1.5)
    base = "dense, PyTorch fp32"
    rows = [
        [
            name,
            f"{acc[name]:.4f}",
            f"{100 * (acc[name] - acc[base]):+.2f}",
            num(lat[name, 1]),
            num(lat[name, 64]),
            f"{lat[name, 1] / lat[base, 1]:.3f}×",
            f"{lat[name, 64] / lat[base, 64]:.3f}×",
        ]
        for name in forms
    ]
    best = "pruned, ONNX Runtime int8"
    r64 = lat[best, 64] / lat[base, 64]
    drop = 100 * (acc["pruned, PyTorch fp32"] - acc[best])
    body = (
        f"VGG-small (width 32), Fashion-MNIST, structured global L2 at {RATIO}"
        f"{' (quick: untrained, 1,000 test images)' if quick else ''}; {threads} thread(s).\n\n"
        + table(
            [
                "model",
                "test accuracy",
                "points vs dense",
                "latency batch 1 (ms)",
                "latency batch 64 (ms)",
                "ratio batch 1",
                "ratio batch 64",
            ],
            rows,
        )
        + f"\n\nRatios are to the dense PyTorch fp32 model. Targets: pruned + int8 batch-64 latency ≤ "
        f"{TARGET_LATENCY} × dense fp32, accuracy within {TARGET_ACCURACY} point of the fp32 pruned model."
    )
    verdicts = [
        Verdict(
            "8. structured 0.5 + int8, vgg_small batch-64 latency",
            f"≤ {TARGET_LATENCY} × dense fp32",
            f"{r64:.3f}× (ONNX Runtime fp32 dense: {lat['dense, ONNX Runtime fp32', 64] / lat[base, 64]:.3f}×)",
            r64 <= TARGET_LATENCY,
        ),
        Verdict(
            "8. structured 0.5 + int8, accuracy vs fp32 pruned",
            f"within {TARGET_ACCURACY} point",
            f"{drop:+.2f} points lost",
            abs(drop) <= TARGET_ACCURACY,
        ),
    ]
    return Section("8. Pruning + int8 at deployment (ONNX Runtime)", body, verdicts)


def main() -> str:
    return run().markdown()
