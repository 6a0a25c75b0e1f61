"""5. Sweep cost: a 10-point Fashion-MNIST LeNet-5 sweep through ``python -m prunelab -m ratio=...``
(Hydra multirun, MLflow tracking, the dense-model cache) vs the same work by hand in one process:
one dense training, then for each ratio prune, fine-tune and evaluate (the same validation and
test evaluations a sweep point reports), with prunelab's own ``fit`` / ``prune`` / ``evaluate``
and nothing else (no Hydra, no MLflow, no cache, no artifacts, no cost ledger).

Not run by ``python -m benchmarks`` unless ``--sweep`` is given: it takes many minutes. Alone::

    python -m benchmarks.sweep_cost --train-epochs 1 --finetune-epochs 1 --repeats 1

Both variants run as fresh processes (interpreter start and imports count for both) with the same
thread count, each in a fresh temporary folder (so the sweep trains its dense model once, like the
hand-written run). The ledger's latency timing is switched off (``measure_latency=false``) unless
``--with-latency``: it is extra measurement, not sweep overhead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

from .common import Section, Verdict, alternate, config, configured_optimizer, ratios, spread, table

BATCH = config().train.batch_size

# Where that time goes, from a py-spy profile of a 2-point sweep (1 + 1 epochs, 1 thread) taken
# when this benchmark was written: rerun py-spy to refresh it after the sweep code changes.
PROFILE = (
    " Where it goes (py-spy profile of a 2-point sweep, 52 s in all, taken when this benchmark "
    "was written): every point reloads Fashion-MNIST from its .gz files, checksum and "
    "standardisation included (`prunelab.data.fashion_mnist` through `runner.run`: ~1.5 s per "
    "point, once by hand); the sweep process imports MLflow, Hydra, `prunelab.sweep`, "
    "`prunelab.analysis` and `prunelab.handover` and creates the MLflow SQLite store (~7 s once); "
    "logging, artifacts and the ledger take ~0.5 s per point. Training and evaluation are the "
    "same calls in both. With the configured epochs the same fixed costs are a far smaller "
    "share."
)
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TARGET = 1.10


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def sweep_command(folder: str, train_epochs: int, finetune_epochs: int, ratios_: tuple,
                  with_latency: bool) -> list[str]:
    return [sys.executable, "-m", "prunelab", "-m", "model=lenet5", "dataset=fashion_mnist",
            "method=unstructured", "scope=global", f"ratio={','.join(map(str, ratios_))}",
            f"train.epochs={train_epochs}", f"finetune.epochs={finetune_epochs}",
            f"tracking.uri=sqlite:///{folder}/mlflow.db", f"cache_dir={folder}/dense",
            f"hydra.sweep.dir={folder}/multirun", f"measure_latency={str(with_latency).lower()}"]


def by_hand(train_epochs: int, finetune_epochs: int, ratios_: tuple) -> dict:
    """The same experiments as the sweep (conf/config.yaml's optimizer, learning rates, schedules,
    batch size, seeds), by hand."""
    from prunelab import models
    from prunelab.data import fashion_mnist
    from prunelab.pruning import prune
    from prunelab.train import evaluate, fit, seed_everything

    cfg = config()

    def optimizer(model, stage, epochs):
        opt = configured_optimizer(model.parameters(), stage)
        if cfg[stage].schedule != "cosine":
            return opt, None
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs * steps, 1))

    seed_everything(0)
    data = fashion_mnist(seed=0)
    steps = -(-len(data.train) // BATCH)
    dense = models.lenet5(in_shape=data.in_shape, num_classes=data.num_classes)
    opt, sched = optimizer(dense, "train", train_epochs)
    fit(dense, data.train, data.val, opt, train_epochs, BATCH, 0, sched, desc="dense")
    # The accuracies each sweep point reports: dense, right after pruning, after fine-tuning.
    evaluate(dense, data.val)
    results = {"dense": evaluate(dense, data.test)["accuracy"]}
    for ratio in ratios_:
        model = copy.deepcopy(dense)
        mask = prune(model, "unstructured", "global", ratio)
        mask.apply(model)
        evaluate(model, data.test), evaluate(model, data.val)
        opt, sched = optimizer(model, "finetune", finetune_epochs)
        fit(model, data.train, data.val, opt, finetune_epochs, BATCH, 1, sched,
            after_step=mask.hold(model), desc="fine-tune")
        evaluate(model, data.val)
        results[str(ratio)] = evaluate(model, data.test)["accuracy"]
    return results


def run(quick: bool = False, threads: int | None = None, train_epochs: int = 1,
        finetune_epochs: int = 1, repeats: int = 1, with_latency: bool = False) -> Section:
    threads = threads or torch.get_num_threads()
    ratios_ = RATIOS[:2] if quick else RATIOS
    hand_cmd = [sys.executable, "-m", "benchmarks.sweep_cost", "--by-hand",
                "--train-epochs", str(train_epochs), "--finetune-epochs", str(finetune_epochs),
                "--ratios", ",".join(map(str, ratios_))]
    accuracy = {}

    def launch(name):
        with tempfile.TemporaryDirectory(prefix="prunelab-sweep-cost-") as folder:
            cmd = hand_cmd if name == "by hand" else sweep_command(
                folder, train_epochs, finetune_epochs, ratios_, with_latency)
            out = subprocess.run(cmd, cwd=folder if name != "by hand" else None, env=_env(threads),
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
            if name == "by hand":
                accuracy.update(json.loads(out.stdout.strip().splitlines()[-1]))

    times = alternate({"by hand": lambda: launch("by hand"), "sweep": lambda: launch("sweep")},
                      repeats, warmup=0)
    r = ratios(times.wall, "sweep", "by hand")
    med = statistics.median(r)
    extra = (statistics.median(times.wall["sweep"]) - statistics.median(times.wall["by hand"])) / len(ratios_)
    rows = [["by hand, one process", spread(times.wall["by hand"]), "reference"],
            [f"`python -m prunelab -m ratio=...` ({len(ratios_)} points)", spread(times.wall["sweep"]),
             spread(r, "x")]]
    body = (
        f"LeNet-5 on Fashion-MNIST, global L1 unstructured at ratios {', '.join(map(str, ratios_))}: "
        f"dense training {train_epochs} epoch(s), fine-tuning {finetune_epochs} epoch(s) per point "
        f"(reduced from the configured {config().train.epochs} and {config().finetune.epochs} to fit a "
        f"benchmark run), {threads} thread(s), "
        f"{repeats} round(s) alternating by hand / sweep, each a fresh process in a fresh folder; "
        f"the ledger's latency timing {'on' if with_latency else 'off'}.\n\n"
        + table(["variant", "wall time", "ratio to by hand"], rows)
        + "\n\nTest accuracy by hand (dense, then per ratio): "
        + ", ".join(f"{k}: {v:.3f}" for k, v in accuracy.items())
        + f"\n\nThe sweep's extra time: {extra:.1f} s per point."
        + PROFILE
        + f"\n\nTarget: sweep ≤ {TARGET} × by hand."
    )
    verdicts = [Verdict("5. sweep cost", f"≤ {TARGET} × by hand", f"{med:.3f}×", med <= TARGET)]
    return Section("5. Sweep cost", body, verdicts)


def main() -> str:
    return run().markdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep_cost")
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--with-latency", action="store_true")
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)), help=argparse.SUPPRESS)
    parser.add_argument("--by-hand", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.by_hand:
        print(json.dumps(by_hand(args.train_epochs, args.finetune_epochs,
                                 tuple(float(x) for x in args.ratios.split(",")))))
    else:
        print(run(threads=args.threads, train_epochs=args.train_epochs,
                  finetune_epochs=args.finetune_epochs, repeats=args.repeats,
                  with_latency=args.with_latency).markdown())
