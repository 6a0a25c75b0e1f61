"""``python -m prunelab.reproduce RUN_ID`` (the ``prunelab-reproduce`` command): a recorded run
executed again from its record, and whether it gave the same numbers; given a sweep's parent, its
points (or ``--points K`` of them) and their curves (:mod:`prunelab.reproduce_sweep`).

The steps (read, compose, check, run, compare) are :mod:`prunelab.reproduction`'s; this module
runs them, prints what they find and ends with the verdict's exit status: identical (0), within
``--tolerance`` (0), different (1); input that cannot work is one line (2).
``--dry-run`` prints the ``python -m prunelab`` command of each run and stops.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import sys

from mlflow.exceptions import MlflowException

from .config import TrackingConfig
from .errors import UserError, fail
from .experiment.runner import run
from .experiment.settings import Settings
from .names import Role, Tag
from .redact import install_log_redaction
from .reproduce_sweep import reproduce_sweep
from .reproduction import (
    SUFFIX,
    Record,
    ReproduceError,
    client_of,
    command,
    composed,
    dense_line,
    differences,
    lookup,
    progress,
    read,
    refiled,
    refuse_unfinished,
    rows,
    say_differences,
    say_dry_run,
    table,
    verdict,
)

log = logging.getLogger("prunelab")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prunelab-reproduce",
        description="Execute a recorded run (or a sweep's points) again from its record and compare its metrics "
        "with the recorded ones.",
    )
    p.add_argument("run_id", help="the MLflow run id of a pruned run or a sweep's parent (its page shows this command)")
    p.add_argument("--tracking-uri", default=TrackingConfig.uri, help="the store (default: %(default)s)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="REL",
        help="relative difference a metric may show and still agree (default 0: identical; on a GPU, say 1e-4)",
    )
    p.add_argument("--experiment", help=f"where the reproduction is filed (default: the run's experiment + {SUFFIX})")
    p.add_argument("--dry-run", action="store_true", help="print the python -m prunelab command(s) and stop")
    p.add_argument("--allow", action="store_true", help="go on despite a run not FINISHED or a different environment")
    p.add_argument("--points", type=int, metavar="K", help="a sweep: reproduce K of its points, drawn with --seed")
    p.add_argument("--seed", type=int, default=0, help="a sweep: the draw of --points (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> None:
    """The command (``argv``: its arguments; None: this process's, which ends after it)."""
    if argv is None:
        atexit.register(gc.freeze)  # (see prunelab/__main__.py: seconds of teardown skipped)
    install_log_redaction()
    args = parser().parse_args(argv)
    if not args.tolerance >= 0:
        fail(f"--tolerance {args.tolerance} must be >= 0")
    if args.points is not None and args.points < 1:
        fail(f"--points {args.points} must be >= 1")
    try:
        status = reproduce(args)
    except KeyboardInterrupt:
        fail("interrupted: the reproduction ends KILLED, the record untouched", status=130)
    except (UserError, MlflowException) as e:
        log.debug("failure", exc_info=True)
        fail(e)
    sys.exit(status)


def reproduce(args: argparse.Namespace) -> int:
    """A run, or a sweep's points; the exit status."""
    client = client_of(args.tracking_uri)
    found, experiment = lookup(client, args.run_id, args.tracking_uri)
    if found.data.tags.get(Tag.ROLE) == Role.SWEEP:
        return reproduce_sweep(args, client, found, experiment)
    if args.points is not None:
        raise ReproduceError(f"--points is for a sweep's parent; run {args.run_id} is one run")
    return reproduce_run(args, read(client, found, experiment))


def reproduce_run(args: argparse.Namespace, rec: Record) -> int:
    """Read, compose, check, run, compare one pruned run (see :mod:`prunelab.reproduction`)."""
    if not (args.allow or args.dry_run):
        refuse_unfinished(rec)
    experiment = args.experiment or f"{rec.experiment}{SUFFIX}"
    cfg, lines = composed(refiled(rec.config, args.tracking_uri, experiment))
    s = Settings.from_config(cfg)
    differ = differences(rec, s)
    if args.dry_run:
        return say_dry_run(differ, [command(lines)])
    print(f"run {rec.id} ({rec.run.info.run_name} in {rec.experiment}, {rec.run.info.status})")
    say_differences(differ, s.device, args.allow)
    print(dense_line(s))
    print(f"reproducing into {experiment}: {command(lines)}", flush=True)
    with progress():
        done = run(cfg, None, {Tag.REPRODUCES: rec.id})
    again = client_of(args.tracking_uri).get_run(done["run_id"])
    print(f"reproduced as run {again.info.run_id} in {experiment}")
    found, measured = rows(rec.run.data.metrics, again.data.metrics)
    line, status = verdict(found, measured, args.tolerance)
    print(table(found, args.tolerance))
    print(line)
    return status


if __name__ == "__main__":
    main()
