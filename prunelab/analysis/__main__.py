"""``python -m prunelab.analysis EXPERIMENT [EXPERIMENT ...] --out DIR``: figures + Markdown table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from . import load_runs, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prunelab.analysis", description=__doc__)
    parser.add_argument("experiments", nargs="+", help="MLflow experiment names (or ids)")
    parser.add_argument("--out", type=Path, required=True, help="folder for PNGs, CSV and summary.md")
    parser.add_argument("--uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--sweep", default=None, help="only the points of this sweep (parent run id)")
    args = parser.parse_args(argv)
    mlflow.set_tracking_uri(args.uri)
    try:
        df = load_runs(args.experiments, sweep_id=args.sweep)
    except ValueError as e:
        print(f"prunelab.analysis: error: {e}", file=sys.stderr)
        return 2
    if df.empty:
        print(f"prunelab.analysis: error: no runs in {', '.join(args.experiments)}", file=sys.stderr)
        return 2
    for path in write_report(df, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
