"""5. Sweep cost: a Fashion-MNIST LeNet-5 sweep through ``python -m prunelab -m ...`` (Hydra
multirun, MLflow tracking, the dense-model cache, artifacts, the cost ledger) vs the same work by
hand in one process: one dense training, then for each point prune, fine-tune and evaluate (the
same validation and test evaluations a sweep point reports), with prunelab's own ``fit`` /
``prune`` / ``evaluate`` and nothing else (no Hydra, no MLflow, no cache, no artifacts, no ledger).

Two presets:

* the default (issues 5 and 26): 10 unstructured global ratios with 1 + 1 epochs, the ledger's
  latency timing off (``measure_latency=false``; ``--with-latency`` turns it on) and the hand-over
  files on, as a run makes them by default (a sweep makes each point's files in a worker process
  while the next point trains: ``prunelab/experiment/deferred.py``): the framework's own cost per
  point, in a few minutes. The same sweep with the hand-over files off is timed beside it and
  reported, without a target;
* ``--study`` (issue 3): the study ``-m ratio=0.1,0.3,0.5,0.7,0.9 method=structured,unstructured
  scope=global,local`` exactly as a user runs it (configured epochs, latency timing on), against
  one dense training + 20 fine-tunings by hand: about 45 minutes on a 2-core CPU.

Not run by ``python -m benchmarks`` unless ``--sweep`` is given (the default preset). Alone::

    python -m benchmarks.sweep_cost                 # default preset
    python -m benchmarks.sweep_cost --study --out benchmarks/RESULTS-study.md   # the issue-3 study

Both variants run as fresh processes (interpreter start and imports count for both) with the same
thread count, each in a fresh temporary folder (so the sweep trains its dense model once, like the
hand-written run). The sweep's test accuracies are compared with those by hand, point by point, to
show both did the same work.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .common import Section, Verdict, alternate, config, configured_optimizer, machine_facts, ratios, spread, table

BATCH = config().train.batch_size

# Where that time goes, from a py-spy profile taken when this benchmark was last changed: rerun
# py-spy to refresh it after the sweep code changes.
PROFILE = (
    " Where it goes (py-spy profile of the 10-point sweep with the hand-over files, 1 + 1 epochs, latency "
    "timing off, and the points' start and end times in its store): once per sweep, importing MLflow and Hydra "
    "(~1.4 s), Hydra's own check of every point's config (~0.9 s) and its composing each point's config (~0.1 s "
    "a point), the preflight's check (~0.3 s: the config composed once, each other value of a swept option "
    "checked on it), opening the new store (a copy of a blank MLflow store built once per MLflow version: "
    "~0.1 s instead of ~1.3 s of schema migrations) and the summary (~0.7 s); per point, settings, identity, "
    "logging and the run's files ~0.3 s. The hand-over files of a point are made, checked and logged by a "
    "worker process on the other core while the next point trains (prunelab/experiment/deferred.py), started "
    "as soon as the point's fine-tuning ends: what is left of them on the sweep's path is the last point's, "
    "beside its own final evaluation and the summary's imports. Both processes end without the interpreter's "
    "cyclic collections over everything they imported (gc.freeze at exit: ~0.4 s from the summary to the "
    "shell instead of ~3.4 s). Fashion-MNIST is read, checked and standardised once per process, as by hand. "
    "Training and evaluation are the same calls in both."
)


@dataclass(frozen=True)
class Preset:
    ratios: tuple[float, ...]
    methods: tuple[str, ...]
    scopes: tuple[str, ...]
    train_epochs: int
    finetune_epochs: int
    with_latency: bool
    target: float
    with_handover: bool = True

    @property
    def points(self) -> list[tuple[str, str, float]]:
        return list(itertools.product(self.methods, self.scopes, self.ratios))


DEFAULT = Preset(
    (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    ("unstructured",),
    ("global",),
    1,
    1,
    False,
    1.10,
    with_handover=True,
)
STUDY = Preset(
    (0.1, 0.3, 0.5, 0.7, 0.9),
    ("structured", "unstructured"),
    ("global", "local"),
    config().train.epochs,
    config().finetune.epochs,
    True,
    1.15,
)


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def sweep_command(folder: str, preset: Preset, handover: bool | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prunelab",
        "-m",
        "model=lenet5",
        "dataset=fashion_mnist",
        f"method={','.join(preset.methods)}",
        f"scope={','.join(preset.scopes)}",
        f"ratio={','.join(map(str, preset.ratios))}",
        f"train.epochs={preset.train_epochs}",
        f"finetune.epochs={preset.finetune_epochs}",
        f"tracking.uri=sqlite:///{folder}/mlflow.db",
        f"cache_dir={folder}/dense",
        f"hydra.sweep.dir={folder}/multirun",
        f"measure_latency={str(preset.with_latency).lower()}",
        f"handover={str(preset.with_handover if handover is None else handover).lower()}",
    ]


def point_name(method: str, scope: str, ratio) -> str:
    return f"{method}/{scope}/{float(ratio):g}"


def by_hand(preset: Preset) -> dict[str, float]:
    """The same experiments as the sweep (conf/config.yaml's optimizer, learning rates, schedules,
    batch size, seeds), by hand; returns the test accuracy of the dense model and of every point."""
    from prunelab import models
    from prunelab.data import fashion_mnist
    from prunelab.experiment.train import evaluate, fit, seed_everything
    from prunelab.pruning import prune

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
    opt, sched = optimizer(dense, "train", preset.train_epochs)
    fit(dense, data.train, data.val, opt, preset.train_epochs, BATCH, 0, sched, desc="dense")
    # The accuracies each sweep point reports: dense, right after pruning, after fine-tuning.
    evaluate(dense, data.val)
    results = {"dense": evaluate(dense, data.test)["accuracy"]}
    for method, scope, ratio in preset.points:
        model = copy.deepcopy(dense)
        mask = prune(model, method, scope, ratio, example_inputs=data.train.x[:1]).mask
        mask.apply(model)
        evaluate(model, data.test), evaluate(model, data.val)
        opt, sched = optimizer(model, "finetune", preset.finetune_epochs)
        fit(
            model,
            data.train,
            data.val,
            opt,
            preset.finetune_epochs,
            BATCH,
            1,
            sched,
            after_step=mask.hold(model),
            desc="fine-tune",
        )
        evaluate(model, data.val)
        results[point_name(method, scope, ratio)] = evaluate(model, data.test)["accuracy"]
    return results


def sweep_accuracies(folder: str) -> dict[str, float]:
    """Test accuracy of the dense model and of every point, as the sweep logged them."""
    import mlflow

    from prunelab.analysis import load_runs

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    runs = load_runs(["lenet5-fashion_mnist"])  # the experiment sweep_command's points log to
    return {
        "dense" if r.role == "dense" else point_name(r.method, r.scope, r.ratio): r.test_accuracy
        for r in runs.itertuples()
    }


def run(
    quick: bool = False,
    threads: int | None = None,
    preset: Preset = DEFAULT,
    repeats: int = 2,
    title: str = "5. Sweep cost",
) -> Section:
    threads = threads or torch.get_num_threads()
    if quick:
        preset = replace(
            preset,
            ratios=preset.ratios[:2],
            methods=preset.methods[:1],
            scopes=preset.scopes[:1],
            train_epochs=1,
            finetune_epochs=1,
        )
    points = preset.points
    hand_cmd = [sys.executable, "-m", "benchmarks.sweep_cost", "--by-hand", "--preset", json.dumps(preset.__dict__)]
    accuracy: dict[str, dict[str, float]] = {}

    # timed beside the target's sweep: the other setting of the hand-over files
    other = "sweep, hand-over files off" if preset.with_handover else "sweep, hand-over files on"

    def launch(name):
        with tempfile.TemporaryDirectory(prefix="prunelab-sweep-cost-") as folder:
            handover = None if name != other else not preset.with_handover
            cmd = hand_cmd if name == "by hand" else sweep_command(folder, preset, handover)
            out = subprocess.run(
                cmd,
                cwd=folder if name != "by hand" else None,
                env=_env(threads),
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
            accuracy[name] = (
                json.loads(out.stdout.strip().splitlines()[-1]) if name == "by hand" else sweep_accuracies(folder)
            )

    variants = ["by hand", "sweep", other]
    times = alternate({v: (lambda v=v: launch(v)) for v in variants}, repeats, warmup=0)
    r = ratios(times.wall, "sweep", "by hand")
    med = statistics.median(r)
    extra = (statistics.median(times.wall["sweep"]) - statistics.median(times.wall["by hand"])) / len(points)
    hand, swept = accuracy["by hand"], accuracy["sweep"]
    missing = sorted(set(hand) - set(swept))
    diff = max(abs(hand[k] - other[k]) for v in variants[1:] for other in [accuracy[v]] for k in hand if k in other)
    sweep_args = " ".join(sweep_command("F", preset)[4:9])
    rows = [
        ["by hand, one process", spread(times.wall["by hand"]), "reference"],
        [f"`python -m prunelab -m {sweep_args}` ({len(points)} points)", spread(times.wall["sweep"]), spread(r, "x")],
    ]
    rows.append(
        [
            f"the same with `handover={str(not preset.with_handover).lower()}` (no target)",
            spread(times.wall[other]),
            spread(ratios(times.wall, other, "by hand"), "x"),
        ]
    )
    on, off = ("sweep", other) if preset.with_handover else (other, "sweep")
    per_file = (statistics.median(times.wall[on]) - statistics.median(times.wall[off])) / len(points)
    configured = (preset.train_epochs, preset.finetune_epochs) == (config().train.epochs, config().finetune.epochs)
    body = (
        f"LeNet-5 on Fashion-MNIST, {len(points)} points ({', '.join(preset.methods)} × "
        f"{', '.join(preset.scopes)} × ratios {', '.join(map(str, preset.ratios))}): "
        f"dense training {preset.train_epochs} epoch(s), fine-tuning {preset.finetune_epochs} epoch(s) per point"
        + (
            " (the configured defaults)"
            if configured
            else f" (reduced from the configured {config().train.epochs} and {config().finetune.epochs})"
        )
        + f", {threads} thread(s), {repeats} round(s) alternating by hand / sweep, each a fresh "
        f"process in a fresh folder; the ledger's latency timing {'on' if preset.with_latency else 'off'}, the "
        f"hand-over files {'on' if preset.with_handover else 'off'}.\n\n"
        + table(["variant", "wall time", "ratio to by hand"], rows)
        + f"\n\nSame work: the sweep logged {len(swept)} test accuracies (dense + points), by hand "
        f"gave {len(hand)}; largest difference {diff:.4f}"
        + (f"; missing in the sweep: {', '.join(missing)}" if missing else "")
        + ". Dense test accuracy by hand "
        + f"{hand['dense']:.4f}."
        + f"\n\nThe sweep's extra time: {extra:.1f} s per point"
        + f"; the hand-over files (program.pt2, model.onnx, the compact file, and their accuracy checks) "
        f"add {per_file:.2f} s per point to the sweep's wall time."
        + PROFILE
        + f"\n\nTarget: sweep ≤ {preset.target} × by hand."
    )
    verdicts = [Verdict(title.lower(), f"≤ {preset.target} × by hand", f"{med:.3f}×", med <= preset.target)]
    return Section(title, body, verdicts)


def main() -> str:
    return run().markdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep_cost")
    parser.add_argument(
        "--study",
        action="store_true",
        help="the issue-3 study: 5 ratios × 2 methods × 2 scopes, configured epochs (~45 min)",
    )
    parser.add_argument("--train-epochs", type=int, help="override the preset's dense epochs")
    parser.add_argument("--finetune-epochs", type=int, help="override the preset's fine-tuning epochs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 points, 1 + 1 epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--with-latency", action="store_true", help="latency timing on (the study has it on)")
    parser.add_argument("--out", help="also write the section, with the machine facts, to this Markdown file")
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--by-hand", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.by_hand:
        preset = Preset(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.preset).items()})
        print(json.dumps(by_hand(preset)))
    else:
        preset = STUDY if args.study else DEFAULT
        preset = replace(
            preset,
            train_epochs=args.train_epochs or preset.train_epochs,
            finetune_epochs=args.finetune_epochs or preset.finetune_epochs,
            with_latency=preset.with_latency or args.with_latency,
        )
        title = "5b. Study sweep cost (issue 3)" if args.study else "5. Sweep cost"
        facts, start = machine_facts(), time.perf_counter()
        section = run(args.quick, args.threads, preset, args.repeats, title)
        print(section.markdown())
        if args.out:
            from .__main__ import report

            command = shlex.join(["python", "-m", "benchmarks.sweep_cost", *sys.argv[1:]])
            Path(args.out).write_text(
                report([section], command, time.perf_counter() - start, facts, args.threads, args.quick)
            )
