"""Reproducing a study: ``python -m prunelab.reproduce PARENT_RUN_ID`` for a sweep's parent.

1. points   the pruned runs filed under the parent that finished (a point counts once: its
            latest finished run), or ``--points K`` of them drawn with ``--seed``; the points
            that never finished are named and left out
2. check    each point read, composed and checked as a single run is
            (:mod:`prunelab.reproduction`); a difference of the environment is one line for all
            points, a different run key one line for its point; without ``--allow`` nothing runs
3. run      every point into ``<experiment>-reproduced`` under a new sweep parent (tagged
            ``prunelab.reproduces``), which gets the sweep's summary as a sweep does: its curves
            as metric series, its table as its note, its figures
4. compare  each point metric by metric, each dense model with the recorded dense run of its key,
            and the curves (:func:`prunelab.analysis.curve_series` of the recorded points
            reproduced, against the reproduction's) step by step: one line per point, the rows
            that differ, the curve table and the verdict over all of them
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from .errors import one_line
from .experiment.runner import run
from .experiment.settings import Settings
from .names import Role, Tag
from .reproduction import (
    FINISHED,
    SUFFIX,
    Record,
    ReproduceError,
    Row,
    command,
    composed,
    dense_line,
    differences,
    progress,
    read,
    refiled,
    rows,
    say_differences,
    say_dry_run,
    table,
    verdict,
)
from .sweep import summarise
from .tracking import record, store

if TYPE_CHECKING:
    import pandas as pd

MAX_RUNS = 50_000  # the most runs one search of MLflow's SQL store returns


@dataclass(frozen=True)
class Point:
    """A recorded point, its config composed again for the reproduction's experiment."""

    rec: Record
    cfg: DictConfig
    lines: list[str]
    s: Settings
    experiment: str

    @property
    def name(self) -> str:
        return self.rec.run.info.run_name


def sweep_runs(client: MlflowClient, parent: str) -> list[Run]:
    """Every run filed under sweep ``parent``, in any experiment of the store."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids, f"tags.`{Tag.in_sweep(parent)}` = 'true'", max_results=MAX_RUNS))


def latest_finished(found: Iterable[Run], role: str, key_tag: str) -> dict[str, Run]:
    """The latest FINISHED run of ``role`` for each value of the tag ``key_tag``."""
    out: dict[str, Run] = {}
    for r in sorted(found, key=lambda r: r.info.start_time or 0):
        if r.data.tags.get(Tag.ROLE) == role and r.info.status == FINISHED:
            out[r.data.tags.get(key_tag, r.info.run_id)] = r
    return out


def unfinished(found: Iterable[Run], done: dict[str, Run]) -> list[str]:
    """The points that never finished (no finished run of their key), by name."""
    return sorted(
        {
            r.info.run_name
            for r in found
            if r.data.tags.get(Tag.ROLE) == Role.PRUNED and r.data.tags.get(Tag.RUN_KEY) not in done
        }
    )


def drawn(points: list[Run], k: int | None, seed: int) -> list[Run]:
    """``k`` of ``points`` drawn with ``seed`` (all of them for None), in their order by name."""
    ordered = sorted(points, key=lambda r: (r.info.run_name, r.info.run_id))
    if k is None or k >= len(ordered):
        return ordered
    picked = set(random.Random(seed).sample(range(len(ordered)), k))
    return [r for i, r in enumerate(ordered) if i in picked]


def plan(client: MlflowClient, runs: list[Run], uri: str, experiment: str | None) -> list[Point]:
    """Each point's record, composed again for its reproduction's experiment."""
    points = []
    for r in runs:
        rec = read(client, r, client.get_experiment(r.info.experiment_id).name)
        target = experiment or f"{rec.experiment}{SUFFIX}"
        cfg, lines = composed(refiled(rec.config, uri, target))
        points.append(Point(rec, cfg, lines, Settings.from_config(cfg), target))
    return points


def checked(points: list[Point]) -> list[str]:
    """How running the points here differs from their record: an environment's difference once,
    a key's with its point's name."""
    lines: dict[str, None] = {}
    for p in points:
        for line in differences(p.rec, p.s):
            keyed = line.startswith(("run key", "dense key"))
            lines[f"{p.name}: {line}" if keyed else line] = None
    return list(lines)


def open_parent(client: MlflowClient, uri: str, parent: Run, experiment: str) -> str:
    """The reproduction's sweep parent, in ``experiment``."""
    experiment_id = store.connect(uri, experiment)
    run_ = client.create_run(
        experiment_id,
        run_name=f"{parent.info.run_name}{SUFFIX}",
        tags={
            Tag.ROLE: Role.SWEEP,
            Tag.REPRODUCES: parent.info.run_id,
            Tag.SWEEP_DEFINITION: parent.data.tags.get(Tag.SWEEP_DEFINITION, ""),
            **record.tags(),
        },
    )
    client.set_tag(run_.info.run_id, Tag.SWEEP_ID, run_.info.run_id)
    return run_.info.run_id


def run_points(client: MlflowClient, uri: str, points: list[Point], parent: str) -> dict[str, Run | str]:
    """Each point run under ``parent``: its run, or why it failed (the store holds it FAILED)."""
    out: dict[str, Run | str] = {}
    tags = {Tag.SWEEP_ID: parent, Tag.in_sweep(parent): "true"}
    for i, p in enumerate(points, 1):
        print(dense_line(p.s))
        print(f"point {i}/{len(points)} into {p.experiment}: {command(p.lines)}", flush=True)
        try:
            with progress():
                done = run(p.cfg, parent, {**tags, Tag.REPRODUCES: p.rec.id, Tag.OVERRIDES: " ".join(p.lines)})
            out[p.rec.id] = client.get_run(done["run_id"])
        except Exception as e:  # a point that breaks is recorded FAILED; the others still run
            out[p.rec.id] = one_line(e)
    ids = sorted({store.connect(uri, p.experiment) for p in points})
    status = RunStatus.FAILED
    try:
        summarise(client, parent, ids)
        status = RunStatus.FINISHED
    finally:
        client.set_terminated(parent, RunStatus.to_string(status))
    return out


def frame(uri: str, experiment_ids: list[str], sweep: str, keep: set[str] | None = None) -> pd.DataFrame:
    """The finished runs of ``sweep`` as the analysis loads them (the pruned ones among ``keep``)."""
    from .analysis import load_runs  # (pandas and matplotlib: only for a sweep, at its end)

    mlflow.set_tracking_uri(store.absolute(uri))
    df = load_runs(experiment_ids, sweep_id=sweep)
    df = df[df["status"] == FINISHED]
    if keep is not None:
        df = df[(df["role"] == Role.DENSE) | df["run_id"].isin(keep)]
    return df


def curve_rows(recorded: pd.DataFrame, reproduced: pd.DataFrame) -> list[Row]:
    """The curves of both frames, step by step (``<axis>/<curve>@<step>``, step in per mille)."""
    from .analysis import curve_series

    was, now = curve_series(recorded), curve_series(reproduced)
    out = []
    for name in sorted({*was, *now}):
        a, b = dict(was.get(name, [])), dict(now.get(name, []))
        out += [Row(f"{name}@{step}", a.get(step), b.get(step)) for step in sorted({*a, *b})]
    return out


def reproduce_sweep(args: argparse.Namespace, client: MlflowClient, parent: Run, experiment: str) -> int:
    """Steps 1 to 4 (see the module's docstring); the exit status."""
    uri, sweep = args.tracking_uri, parent.info.run_id
    found = sweep_runs(client, sweep)
    done = latest_finished(found, Role.PRUNED, Tag.RUN_KEY)
    if not done:
        raise ReproduceError(f"sweep {sweep} has no finished point to reproduce")
    points = plan(client, drawn(list(done.values()), args.points, args.seed), uri, args.experiment)
    differ = checked(points)
    if args.dry_run:
        return say_dry_run(differ, [command(p.lines) for p in points])
    left = unfinished(found, done)
    sample = f", {len(points)} drawn with --seed {args.seed}" if len(points) < len(done) else ""
    print(f"sweep {sweep} ({parent.info.run_name} in {experiment}): {len(done)} points finished{sample}")
    for name in left:
        print(f"not finished, not reproduced: {name}")
    say_differences(differ, points[0].s.device, args.allow)
    again_parent = open_parent(client, uri, parent, points[0].experiment)
    again = run_points(client, uri, points, again_parent)
    print(f"reproduced as sweep {again_parent} in {points[0].experiment}")
    return compare(args, client, (sweep, found), points, again, again_parent)


def compare(
    args: argparse.Namespace,
    client: MlflowClient,
    recorded: tuple[str, list[Run]],
    points: list[Point],
    again: dict[str, Run | str],
    again_parent: str,
) -> int:
    """The points, the dense models and the curves of the ``recorded`` sweep (its id and runs)
    and of the reproduction, compared; the verdict's exit status."""
    sweep, found = recorded
    everything: list[Row] = []
    measured: set[str] = set()
    failed = 0
    for p in points:
        result = again[p.rec.id]
        if isinstance(result, str):
            failed += 1
            print(f"point {p.name}: failed: {result}")
            continue
        point_rows, left_out = rows(p.rec.run.data.metrics, result.data.metrics)
        measured.update(left_out)
        print(f"point {p.name}: {verdict(point_rows, [], args.tolerance)[0]}")
        differing = [r for r in point_rows if not r.within(args.tolerance)]
        if differing:
            print(table(differing, args.tolerance))
        everything += [Row(f"{p.name}:{r.metric}", r.recorded, r.reproduced) for r in point_rows]
    recorded_dense = latest_finished(found, Role.DENSE, Tag.DENSE_KEY)
    reproduced_dense = latest_finished(sweep_runs(client, again_parent), Role.DENSE, Tag.DENSE_KEY)
    for key, now in sorted(reproduced_dense.items()):
        if key in recorded_dense:
            dense_rows, _ = rows(recorded_dense[key].data.metrics, now.data.metrics)
            print(f"dense {key}: {verdict(dense_rows, [], args.tolerance)[0]}")
            everything += [Row(f"dense-{key[:8]}:{r.metric}", r.recorded, r.reproduced) for r in dense_rows]
    ids = lambda runs: sorted({r.info.experiment_id for r in runs})
    curves = curve_rows(
        frame(args.tracking_uri, ids(found), sweep, {p.rec.id for p in points}),
        frame(args.tracking_uri, ids(r for r in again.values() if isinstance(r, Run)), again_parent),
    )
    if curves:
        print("curves (step: per mille of the axis)")
        print(table(curves, args.tolerance))
    line, status = verdict(everything + curves, sorted(measured), args.tolerance)
    if failed:
        return _failed(failed, len(points), line)
    print(line)
    return status


def _failed(failed: int, total: int, line: str) -> int:
    print(f"different: {failed} of {total} points failed to run (above); the others: {line}")
    return 1
