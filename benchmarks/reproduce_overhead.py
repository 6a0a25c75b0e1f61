"""16. Reproduce's own overhead (issue 39): ``python -m prunelab.reproduce RUN_ID`` against the
command it re-executes, run by hand.

A Fashion-MNIST LeNet-5 run (unstructured global 70%, 1 + 1 epochs, the README's defaults
otherwise) is recorded once in a fresh store and cache (its dense model trained and cached then).
Then, in rounds of A B: A is the ``python -m prunelab ...`` command that ``reproduce --dry-run``
prints (forced, into the ``-reproduced`` experiment), B is ``python -m prunelab.reproduce RUN_ID``,
which reads the record, composes and checks it, runs the same config in-process and compares
every metric. Both are fresh processes doing the same run from the same cache; B - A is what
reproducing adds: reading the record, composing the config twice, hashing the data files, the
environment check and the comparison. Both must end as they should (A: exit 0; B: "identical").

    python -m benchmarks.reproduce_overhead            # 3 rounds; printed
    python -m benchmarks.reproduce_overhead --quick    # 1 round
    python -m benchmarks.reproduce_overhead --publish  # also into RESULTS.md, as a kept block

``make bench`` runs it as its section 16.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Section, Verdict, report, spread, table

TARGET_S = 5.0
RUN = ["ratio=0.7", "train.epochs=1", "finetune.epochs=1"]


def _timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return wall, done.stdout


def _recorded(tmp: Path, env: dict[str, str], store: str) -> str:
    """The recorded run's id (the one run in the fresh store)."""
    _timed(["-m", "prunelab", *RUN, f"cache_dir={tmp / 'cache'}", f"tracking.uri={store}"], tmp, env)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    ids = [e.experiment_id for e in client.search_experiments()]
    (found,) = [r for r in client.search_runs(ids) if r.data.tags.get("prunelab.role") == "pruned"]
    return found.info.run_id


def run(quick: bool = False) -> Section:
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="prunelab-bench-reproduce-") as folder:
        tmp = Path(folder)
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg")}
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        run_id = _recorded(tmp, env, store)
        reproduce = ["-m", "prunelab.reproduce", run_id, "--tracking-uri", store]
        _, printed = _timed([*reproduce, "--dry-run"], tmp, env)
        by_hand = shlex.split(printed.strip())[1:]  # python -m prunelab ... (without "python")
        walls: dict[str, list[float]] = {"by hand": [], "reproduce": []}
        for _ in range(rounds):
            walls["by hand"].append(_timed(by_hand, tmp, env)[0])
            wall, out = _timed(reproduce, tmp, env)
            if not out.strip().splitlines()[-1].startswith("identical"):
                raise RuntimeError(f"the reproduction was not identical: {out[-2000:]}")
            walls["reproduce"].append(wall)
    extra = [b - a for a, b in zip(walls["by hand"], walls["reproduce"])]
    rows = [
        ["the run by hand (`python -m prunelab ...` as `--dry-run` prints it)", spread(walls["by hand"])],
        ["`python -m prunelab.reproduce RUN_ID` (the same run, checked and compared)", spread(walls["reproduce"])],
        ["reproduce's own overhead (per round)", spread(extra)],
    ]
    body = (
        f"Fashion-MNIST LeNet-5, `{' '.join(RUN)}`, the dense model cached; {rounds} round(s) of A B, fresh "
        "processes, median (min–max). Each reproduction ended `identical`.\n\n" + table(["", "wall"], rows)
    )
    overhead = statistics.median(extra)
    verdicts = [
        Verdict(
            "reproduce's overhead beyond the run, LeNet-5",
            f"≤ {TARGET_S:g} s",
            f"{overhead:.2f} s",
            overhead <= TARGET_S,
        )
    ]
    return Section("16. Reproducing a run from its record", body, verdicts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round")
    p.add_argument("--publish", action="store_true", help="write it into RESULTS.md (a kept block)")
    args = p.parse_args()
    return report(run(args.quick), "reproduce_overhead" if args.publish else None)


if __name__ == "__main__":
    sys.exit(main())
