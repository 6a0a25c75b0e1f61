"""Baseline recipes: prunelab against a plain PyTorch pruning script, 50-98% unstructured sparsity.

Three variants per (model, seed), on the same Fashion-MNIST split:

* **plain**: a plain PyTorch script. Its own training loop (shuffled batches from a seeded
  permutation, ``torch.optim`` with a per-step cosine schedule), pruning with
  ``torch.nn.utils.prune.global_unstructured`` / ``l1_unstructured`` over every Conv/Linear weight,
  fine-tuning with the pruning hooks in place. Its numbers (optimizer, learning rates, epochs)
  are those of a composed prunelab config, so "the same recipe" means the same numbers.
* **prunelab, same recipe**: ``prunelab.experiment.runner.run`` (MLflow store, dense cache, everything) with
  the overrides that give that recipe. Same seeds and batch order: the two should agree exactly.
* **prunelab, defaults**: ``python -m prunelab`` as shipped, with only ``ratio`` / ``scope`` /
  ``seed`` set.

Then one-factor changes, each a list of overrides applied to one side, isolate what makes the
difference at 95% and 98%. Every job runs in its own process with one PyTorch thread, two at a
time (both cores). Writes its section into ``benchmarks/RESULTS.md`` (between markers, so
``make bench`` keeps it) unless ``--quick``::

    python -m benchmarks.baseline_recipes            # the whole study (about 1.5 h on 2 cores)
    python -m benchmarks.baseline_recipes --quick    # smoke run: 1 epoch, 1 seed, 2 ratios
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from .common import Verdict, publish
from .common import table as table_md

RATIOS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
SCOPES = ("global", "local")
SEEDS = (0, 1, 2)
# The plain script's recipe, as prunelab overrides (conf/recipe/sgd.yaml is that recipe).
PLAIN = ("recipe=sgd",)
MODELS = {"LeNet-5": "lenet5_classic", "LeNet-300-100": "lenet300_100"}
POINTS = Path(__file__).resolve().parent / "baseline_recipes.csv"  # every measured point, all parts
BLOCK = "baseline_recipes"  # its markers in RESULTS.md


@dataclass(frozen=True)
class Job:
    """One (variant, model, seed): a dense model and its pruned + fine-tuned points."""

    variant: str
    runner: str  # "plain" | "prunelab"
    overrides: tuple[str, ...]
    seed: int
    points: tuple[tuple[str, float], ...]  # (scope, ratio)
    cache: str = ""  # a dense cache shared by the study's prunelab jobs ("": one of its own)
    same_as: str = ""  # a variant that composes to the very same config: its points, not rerun


@dataclass
class Point:
    variant: str
    seed: int
    scope: str
    ratio: float
    dense: float
    pruned: float
    finetuned: float


# --- the plain script -------------------------------------------------------------------------


def _epochs(model, opt, sched, split, epochs: int, batch_size: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(split.y), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(split.x[idx]), split.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()


@torch.no_grad()
def _accuracy(model, split) -> float:
    model.eval()
    correct = sum(
        int((model(split.x[i : i + 1000]).argmax(1) == split.y[i : i + 1000]).sum())
        for i in range(0, len(split.y), 1000)
    )
    model.train()
    return correct / len(split.y)


def _optimizer(cfg, model, lr: float, epochs: int, steps: int, schedule: str):
    from hydra.utils import instantiate

    opt = instantiate(cfg.train.optimizer)(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps) if schedule == "cosine" else None
    return opt, sched


def plain(job: Job) -> list[Point]:
    """The plain PyTorch script: train, then per point prune a copy with torch.nn.utils.prune and
    fine-tune it with the hooks in place."""
    from hydra.utils import instantiate

    from prunelab.config import compose
    from prunelab.models import build

    cfg = compose(*job.overrides, f"seed={job.seed}")
    torch.manual_seed(job.seed)
    data = instantiate(cfg.dataset)(seed=job.seed)
    model = build(instantiate(cfg.model), data.in_shape, data.num_classes)
    t, f = cfg.train, cfg.finetune
    steps = math.ceil(len(data.train.y) / t.batch_size)
    _epochs(
        model, *_optimizer(cfg, model, t.lr, t.epochs, steps, t.schedule), data.train, t.epochs, t.batch_size, job.seed
    )
    dense = _accuracy(model, data.test)
    out = []
    for scope, ratio in job.points:
        m = copy.deepcopy(model)
        params = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        if scope == "global":
            torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=ratio)
        else:
            for mod, name in params:
                torch_prune.l1_unstructured(mod, name, amount=ratio)
        pruned = _accuracy(m, data.test)
        _epochs(
            m, *_optimizer(cfg, m, f.lr, f.epochs, steps, f.schedule), data.train, f.epochs, t.batch_size, job.seed + 1
        )
        out.append(Point(job.variant, job.seed, scope, ratio, dense, pruned, _accuracy(m, data.test)))
    return out


# --- prunelab ---------------------------------------------------------------------------------


def prunelab(job: Job) -> list[Point]:
    """``prunelab.experiment.runner.run`` per point, against a fresh store and dense cache of its own."""
    import logging

    from prunelab.config import compose
    from prunelab.experiment.runner import run
    from prunelab.experiment.train import TrainingError

    logger = logging.getLogger("prunelab")
    level, out = logger.level, []
    logger.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for scope, ratio in job.points:
            cfg = compose(
                *job.overrides,
                f"seed={job.seed}",
                f"scope={scope}",
                f"ratio={ratio}",
                "measure_latency=false",
                f"cache_dir={job.cache or tmp + '/cache'}",
                f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            )
            try:
                m = run(cfg)
            except TrainingError as e:  # kept as a point (NaN): a recipe that diverges is a finding
                print(f"  {job.variant} seed {job.seed}: {e}", file=sys.stderr, flush=True)
                m = dict.fromkeys(("dense.test_accuracy", "pruned.test_accuracy", "finetuned.test_accuracy"), math.nan)
            out.append(
                Point(
                    job.variant,
                    job.seed,
                    scope,
                    ratio,
                    m["dense.test_accuracy"],
                    m["pruned.test_accuracy"],
                    m["finetuned.test_accuracy"],
                )
            )
    logger.setLevel(level)
    return out


def _run_job(job: Job) -> tuple[Job, list[Point], float]:
    torch.set_num_threads(1)
    start = time.perf_counter()
    points = (plain if job.runner == "plain" else prunelab)(job)
    return job, points, time.perf_counter() - start


def run_jobs(jobs: list[Job], workers: int = 2) -> list[Point]:
    """``workers`` processes (spawned: no forked PyTorch thread pools), jobs in the given order."""
    import multiprocessing

    points = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for job, result, seconds in pool.map(_run_job, [j for j in jobs if not j.same_as]):
            print(
                f"  {job.variant} seed {job.seed}: {len(result)} points in {seconds:.0f} s", file=sys.stderr, flush=True
            )
            for p in result:
                print(f"    {p}", file=sys.stderr, flush=True)
            points += result
    for job in jobs:
        if job.same_as:
            points += [
                replace(p, variant=job.variant) for p in points if p.variant == job.same_as and p.seed == job.seed
            ]
    return points


# --- the study --------------------------------------------------------------------------------


@dataclass
class Study:
    ratios: tuple[float, ...] = RATIOS
    seeds: tuple[int, ...] = SEEDS
    quick_overrides: tuple[str, ...] = ()
    factor_ratios: tuple[float, ...] = (0.95, 0.98)
    factor_seeds: tuple[int, ...] = (0,)  # one seed: the factors that matter move by points
    models: dict = field(default_factory=lambda: dict(MODELS))


def main_jobs(study: Study) -> list[Job]:
    from omegaconf import OmegaConf

    from prunelab.config import compose

    points = tuple((s, r) for s in SCOPES for r in study.ratios)
    jobs = []
    for label, model in study.models.items():
        same = (f"model={model}", *PLAIN, *study.quick_overrides)
        defaults = (
            f"model={model}" if model != "lenet5_classic" else "model=lenet5",  # as shipped
            *study.quick_overrides,
        )
        # Where the defaults are the plain recipe, the defaults' points are those same runs.
        identical = OmegaConf.to_container(compose(*same)) == OmegaConf.to_container(compose(*defaults))
        for seed in study.seeds:
            jobs += [
                Job(f"{label} | plain script", "plain", same, seed, points),
                Job(f"{label} | prunelab, same recipe", "prunelab", same, seed, points),
                Job(
                    f"{label} | prunelab defaults",
                    "prunelab",
                    defaults,
                    seed,
                    points,
                    same_as=f"{label} | prunelab, same recipe" if identical else "",
                ),
            ]
    return jobs


# One factor at a time, from the old defaults (LeNet-5 as shipped, the adamw recipe) towards the plain
# script (the classic LeNet-5, the sgd recipe), then fine-tuning on top of sgd.
FACTORS = {
    "adamw (the old defaults)": ("recipe=adamw",),
    "adamw, architecture lenet5_classic": ("recipe=adamw", "model=lenet5_classic"),
    "adamw, weight decay 5e-4": ("recipe=adamw", "train.optimizer.weight_decay=0.0005"),
    "adamw, fine-tune lr 5e-4": ("recipe=adamw", "finetune.lr=0.0005"),
    "adamw, fine-tune 2 epochs": ("recipe=adamw", "finetune.epochs=2"),
    "adamw, fine-tune 12 epochs": ("recipe=adamw", "finetune.epochs=12"),
    "sgd (optimizer, lr, weight decay)": ("recipe=sgd",),
    "sgd, fine-tune lr 0.002": ("recipe=sgd", "finetune.lr=0.002"),
    "sgd, fine-tune lr 0.05 (= sgd_rewind, the new defaults)": ("recipe=sgd", "finetune.lr=0.05"),
    "plain script (lenet5_classic, sgd)": ("model=lenet5_classic", "recipe=sgd"),
}


def factor_jobs(study: Study, cache: str) -> list[Job]:
    points = tuple((s, r) for s in SCOPES for r in study.factor_ratios)
    return [
        Job(f"factor | {label}", "prunelab", (*overrides, *study.quick_overrides), seed, points, cache)
        for seed in study.factor_seeds
        for label, overrides in FACTORS.items()
    ]


CAFFE_RATIO = round(1 - 1 / 12, 4)  # Han et al. 2015: LeNet-5 (Caffe) pruned 12x with no loss
# The default recipe, and the same at the learning rate of Caffe's LeNet solver (base_lr 0.01): the
# default 0.05 can diverge on this network (no activation between its convolutions).
CAFFE = {
    "LeNet-5 (Caffe) | prunelab defaults": ("model=lenet5_caffe",),
    "LeNet-5 (Caffe) | sgd_rewind at Caffe's lr 0.01": ("model=lenet5_caffe", "train.lr=0.01", "finetune.lr=0.01"),
}


def caffe_jobs(study: Study, cache: str) -> list[Job]:
    return [
        Job(label, "prunelab", (*overrides, *study.quick_overrides), seed, (("global", CAFFE_RATIO),), cache)
        for label, overrides in CAFFE.items()
        for seed in study.seeds
    ]


def pct(values: list[float]) -> str:
    """Mean ± std over seeds in percent (the mean alone for one seed); diverged (NaN) runs are
    counted apart, not averaged."""
    ok = [100 * v for v in values if math.isfinite(v)]
    text = "–" if not ok else f"{statistics.fmean(ok):.2f}" + (f" ± {statistics.stdev(ok):.2f}" if len(ok) > 1 else "")
    return text + (f" ({len(values) - len(ok)} diverged)" if len(ok) < len(values) else "")


def mean(values: list[float]) -> float:
    """Mean in percent; NaN if any run diverged."""
    return 100 * statistics.fmean(values)


def collect(points: list[Point]) -> dict:
    """``(variant, scope, ratio) -> [Point per seed]``, seeds in order."""
    table: dict = {}
    for p in sorted(points, key=lambda p: p.seed):
        table.setdefault((p.variant, p.scope, p.ratio), []).append(p)
    return table


def main_section(study: Study, table: dict) -> tuple[str, list[Verdict]]:
    lines, verdicts, behind = [], [], []
    for label in study.models:
        plain_, same, default = (
            f"{label} | {v}" for v in ("plain script", "prunelab, same recipe", "prunelab defaults")
        )
        if (plain_, SCOPES[0], study.ratios[0]) not in table:
            continue
        dense = {v: pct([p.dense for p in table[(v, SCOPES[0], study.ratios[0])]]) for v in (plain_, default)}
        rows, same_diff = [], 0.0
        for scope in SCOPES:
            for ratio in study.ratios:
                a, b, c = (table[(v, scope, ratio)] for v in (plain_, same, default))
                diff = max(abs(x.finetuned - y.finetuned) for x, y in zip(a, b))
                same_diff = max(same_diff, diff)
                gap = mean([p.finetuned for p in c]) - mean([p.finetuned for p in a])
                if not gap >= 0:  # a diverged (NaN) point counts as behind
                    behind.append(f"{label} {scope} {ratio:g} ({gap:+.2f})")
                rows.append(
                    [
                        scope,
                        f"{ratio:g}",
                        pct([p.finetuned for p in a]),
                        pct([p.finetuned for p in b]),
                        "identical" if diff == 0 else f"{100 * diff:.2f}",
                        pct([p.finetuned for p in c]),
                        f"{gap:+.2f}",
                        pct([p.pruned for p in a]),
                        pct([p.pruned for p in c]),
                    ]
                )
        lines += [
            f"### {label}",
            "",
            f"Dense test accuracy: plain script {dense[plain_]} %, prunelab defaults {dense[default]} %.",
            "",
            table_md(
                [
                    "scope",
                    "ratio",
                    "plain script",
                    "prunelab, same recipe",
                    r"max \|diff\| (points)",
                    "prunelab defaults",
                    "defaults − plain",
                    "plain, before fine-tuning",
                    "defaults, before fine-tuning",
                ],
                rows,
            ),
            "",
        ]
        verdicts.append(
            Verdict(
                f"{label}: prunelab with the plain recipe vs the plain script",
                "equal within noise",
                "identical" if same_diff == 0 else f"max diff {100 * same_diff:.2f} points",
                same_diff <= 0.002,
            )
        )
    if verdicts:
        verdicts.append(
            Verdict(
                "defaults ≥ plain script, 0.5–0.98, global and local (mean of seeds)",
                "every ratio",
                "at every ratio" if not behind else "behind at " + ", ".join(behind),
                not behind,
            )
        )
    return "\n".join(lines), verdicts


def factor_section(study: Study, table: dict) -> str:
    """Fine-tuned accuracy per setting (change vs the first factor), the dense accuracy, and the
    accuracy right after pruning at the first setting (how much magnitude alone keeps)."""
    settings = [(s, r) for s in SCOPES for r in study.factor_ratios]
    base = "factor | " + next(iter(FACTORS))
    if (base, *settings[0]) not in table:
        return ""
    rows = []
    for label in FACTORS:
        v = f"factor | {label}"
        first = table[(v, *settings[0])]
        cells = []
        for s, r in settings:
            ft = [p.finetuned for p in table[(v, s, r)]]
            delta = mean(ft) - mean([p.finetuned for p in table[(base, s, r)]])
            cells.append(f"{pct(ft)} ({delta:+.2f})" if v != base else pct(ft))
        rows.append([label, pct([p.dense for p in first]), pct([p.pruned for p in first]), *cells])
    s0, r0 = settings[0]
    return table_md(
        [
            "change from the old defaults",
            "dense",
            f"{s0} {r0:g} before fine-tuning",
            *(f"{s} {r:g}" for s, r in settings),
        ],
        rows,
    )


def caffe_section(table: dict) -> tuple[str, list[Verdict]]:
    rows, verdicts = [], []
    for label, overrides in CAFFE.items():
        ps = table.get((label, "global", CAFFE_RATIO))
        if not ps:
            continue
        # NaN: stopped as diverged; a dense model at chance level diverged before prunelab checked.
        ps = [p if p.dense > 0.11 else replace(p, dense=math.nan, pruned=math.nan, finetuned=math.nan) for p in ps]
        diverged = sum(not math.isfinite(p.dense) for p in ps)
        loss = statistics.fmean(100 * (p.dense - p.finetuned) for p in ps if math.isfinite(p.dense))
        rows.append(
            [
                label.split(" | ")[1],
                f"`{' '.join(overrides)}`",
                len(ps),
                pct([p.dense for p in ps]),
                pct([p.pruned for p in ps]),
                pct([p.finetuned for p in ps]),
                f"{loss:.2f}",
                f"{diverged} of {len(ps)}",
            ]
        )
        if not diverged:
            verdicts.append(
                Verdict(
                    f"lenet5_caffe ({label.split(' | ')[1]}), global, 1/12 of the weights: loss vs dense",
                    "≤ 0.3 points",
                    f"{loss:.2f} points",
                    loss <= 0.3,
                )
            )
    if not rows:
        return "", []
    text = (
        f"Weights kept: {1 - CAFFE_RATIO:.4f} (1/12), global unstructured, one-shot + 6 epochs of "
        "fine-tuning.\n\n"
        + table_md(
            [
                "recipe",
                "overrides",
                "seeds",
                "dense",
                "pruned, before fine-tuning",
                "fine-tuned",
                "loss (points, seeds that trained)",
                "dense training diverged",
            ],
            rows,
        )
    )
    return text, verdicts


def report(study: Study, points: list[Point], seconds: float, parts: list[str]) -> str:
    table = collect(points)
    main_text, verdicts = main_section(study, table)
    caffe_text, caffe_verdicts = caffe_section(table)
    verdicts += caffe_verdicts
    factors = factor_section(study, table)
    out = [
        "## Baseline recipes: prunelab vs a plain PyTorch pruning script, 50–98% unstructured",
        "",
        "Written by `python -m benchmarks.baseline_recipes` (its parts can run apart: `--part main caffe "
        "factors`; every point is kept in [baseline_recipes.csv](baseline_recipes.csv), and `--part` alone "
        "renders this report from it); "
        + (f"the last run ({' '.join(parts)}) took {seconds / 60:.0f} min" if parts else "rendered from the CSV")
        + f", two jobs at a time, one PyTorch thread each. {len(study.seeds)} seeds for the main tables and "
        "LeNet-5 (Caffe), "
        f"{len(study.factor_seeds)} for the one-factor table; fine-tuned test "
        "accuracy in %, mean ± std over seeds. Plain script: its own loop, "
        "`torch.nn.utils.prune.global_unstructured` / `l1_unstructured` over every Conv/Linear weight, "
        "fine-tuning with the pruning hooks in place, the `sgd` recipe's numbers "
        "(conf/recipe/sgd.yaml). *prunelab, same recipe*: `prunelab.runner.run` with "
        f"`{' '.join(PLAIN)}` and the same model. *prunelab defaults*: `python -m prunelab` as shipped "
        "(only ratio, scope and seed set; for LeNet-5 the default model).",
        "",
        table_md(["item", "target", "measured", "verdict"], [[v.item, v.target, v.measured, v.mark] for v in verdicts]),
        "",
        main_text,
    ]
    if factors:
        out += [
            "### One factor at a time (LeNet-5, fine-tuned test accuracy, change vs the old defaults in points)",
            "",
            factors,
            "",
        ]
    if caffe_text:
        out += ["### LeNet-5 (Caffe) at 1/12 of its weights (Han et al. 2015: 12× with no loss)", "", caffe_text, ""]
    return "\n".join(out)


def merge_points(new: list[Point], path: Path = POINTS) -> list[Point]:
    """The points of earlier runs with this run's replacing those of the same (variant, seed)."""
    import csv
    from dataclasses import asdict, fields

    old = []
    if path.exists():
        with open(path, newline="") as f:
            types = {f.name: f.type for f in fields(Point)}
            old = [
                Point(
                    **{
                        k: (v if types[k] == "str" else int(v) if types[k] == "int" else float(v))
                        for k, v in row.items()
                    }
                )
                for row in csv.DictReader(f)
            ]
    rerun = {(p.variant, p.seed) for p in new}
    merged = [p for p in old if (p.variant, p.seed) not in rerun] + new
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, [f.name for f in fields(Point)])
        writer.writeheader()
        writer.writerows(asdict(p) for p in merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline_recipes")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 1 seed, 2 ratios; printed only")
    parser.add_argument("--workers", type=int, default=2, help="processes at a time (1 PyTorch thread each)")
    parser.add_argument(
        "--part",
        choices=("main", "factors", "caffe"),
        nargs="*",
        default=["main", "factors", "caffe"],
        help="what to run (the report also shows earlier parts, from baseline_recipes.csv)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip the (variant, seed) jobs that baseline_recipes.csv already holds"
    )
    parser.add_argument("--cache", help="dense cache of the prunelab jobs (default: a new temporary folder)")
    args = parser.parse_args(argv)
    study = Study()
    if args.quick:
        study = Study(
            ratios=(0.5, 0.98),
            seeds=(0,),
            factor_ratios=(0.98,),
            factor_seeds=(0,),
            quick_overrides=("train.epochs=1", "finetune.epochs=1"),
        )
    start = time.perf_counter()
    cache = args.cache or tempfile.mkdtemp(prefix="prunelab-recipes-")
    jobs = (
        (main_jobs(study) if "main" in args.part else [])
        + (caffe_jobs(study, cache) if "caffe" in args.part else [])
        + (factor_jobs(study, cache) if "factors" in args.part else [])
    )
    jobs.sort(key=lambda j: "model=lenet300_100" in j.overrides)  # the short jobs last: both cores busy
    if args.resume and POINTS.exists():
        done = {(p.variant, p.seed) for p in merge_points([])}
        jobs = [j for j in jobs if (j.variant, j.seed) not in done]
    points = run_jobs(jobs, args.workers)
    if not args.quick:
        points = merge_points(points)
    publish(report(study, points, time.perf_counter() - start, args.part), None if args.quick else BLOCK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
