"""Load on the tracking store, as several studies running at once put it: P processes x R runs x
M metrics with S-step histories, against the team set-up (an MLflow server on PostgreSQL, started
here by ``prunelab.tracking.team_server``) and against the default SQLite file, side by side in one run.

    python -m benchmarks.tracking_load            # 4 x 50 x 30, 10 steps; a few minutes
    python -m benchmarks.tracking_load --quick    # 2 x 5 x 30, 3 steps: a smoke run

Each process logs as prunelab does: create the run, one ``log_batch`` per step holding every
metric, end the run FINISHED. Every call is timed. Afterwards the store is read back through
MLflow's API: runs found and their status, every metric's whole history, runs misfiled to the
"Default" experiment. Writes its section into ``benchmarks/RESULTS.md`` between markers (kept by
``make bench``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import table, write_block

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BLOCK = "tracking_load"


@dataclass
class Load:
    processes: int
    runs: int
    metrics: int
    steps: int


def worker(args: tuple[str, str, int, Load]) -> dict:
    """One process's share: returns the calls' latencies (s), runs attempted and errors."""
    uri, experiment, index, load = args
    from mlflow.entities import Metric, RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    latencies, attempted, errors = [], 0, []
    first = time.time()  # wall clock, comparable across processes (process start-up excluded)

    def timed(call, *a, **kw):
        started = time.perf_counter()
        try:
            return call(*a, **kw)
        finally:
            latencies.append(time.perf_counter() - started)

    for r in range(load.runs):
        attempted += 1
        try:
            run = timed(
                client.create_run,
                experiment_id,
                run_name=f"p{index}-r{r}",
                tags={"load.process": str(index), "load.run": str(r)},
            )
            run_id = run.info.run_id
            for step in range(load.steps):
                stamp = int(time.time() * 1000)
                timed(
                    client.log_batch,
                    run_id,
                    metrics=[
                        Metric(f"m{k:02d}", float(index * 1e6 + r * 1e3 + step + k / 100), stamp, step)
                        for k in range(load.metrics)
                    ],
                )
            timed(client.set_terminated, run_id, RunStatus.to_string(RunStatus.FINISHED))
        except Exception as e:  # counted and reported: a lost run is a finding, not a crash
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return {"latencies": latencies, "attempted": attempted, "errors": errors, "first": first, "last": time.time()}


def check(uri: str, experiment: str, load: Load) -> dict:
    """What the store holds afterwards, read through MLflow's API."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    found, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            break
    values = sum(len(client.get_metric_history(r.info.run_id, f"m{k:02d}")) for r in found for k in range(load.metrics))
    keys = {(r.data.tags.get("load.process"), r.data.tags.get("load.run")) for r in found}
    return {
        "found": len(found),
        "distinct": len(keys),
        "finished": sum(r.info.status == "FINISHED" for r in found),
        "running": sum(r.info.status == "RUNNING" for r in found),
        "values": values,
        "default": len(client.search_runs(["0"], max_results=10)),
    }


def measure(name: str, uri: str, load: Load) -> dict:
    from prunelab.tracking import store as tracking

    experiment = f"load-{int(time.time())}"
    tracking.connect(uri, experiment)  # created once, before any worker starts (as a sweep does)
    with multiprocessing.get_context("spawn").Pool(load.processes) as pool:
        parts = pool.map(worker, [(uri, experiment, i, load) for i in range(load.processes)])
    wall = max(p["last"] for p in parts) - min(p["first"] for p in parts)  # first call to last
    latencies = sorted(x for p in parts for x in p["latencies"])
    result = {
        "store": name,
        "wall": wall,
        "calls": len(latencies),
        "attempted": sum(p["attempted"] for p in parts),
        "errors": [e for p in parts for e in p["errors"]],
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        **check(uri, experiment, load),
    }
    print(
        f"{name}: {result['found']}/{result['attempted']} runs, {result['values']} metric values, "
        f"{wall:.1f} s, p50 {result['p50'] * 1e3:.1f} ms, p95 {result['p95'] * 1e3:.1f} ms, "
        f"{len(result['errors'])} errors",
        file=sys.stderr,
    )
    return result


def report(results: list[dict], load: Load, command: str) -> str:
    expected = load.processes * load.runs * load.metrics * load.steps
    rows = [
        [
            r["store"],
            f"{r['attempted']}",
            f"{r['found']} ({r['finished']} FINISHED)",
            f"{r['values']:,} / {expected:,}",
            f"{r['wall']:.1f}",
            f"{r['calls'] / r['wall']:.0f}",
            f"{r['p50'] * 1e3:.1f}",
            f"{r['p95'] * 1e3:.1f}",
            f"{len(r['errors'])}",
            f"{r['default']}",
            f"{r['running']}",
        ]
        for r in results
    ]
    text = [
        "## Tracking store under load",
        "",
        f"`{command}`: {load.processes} processes at once, each {load.runs} runs of {load.metrics} metrics "
        f"with {load.steps}-step histories (one `log_batch` per step, as prunelab logs), on this machine's "
        "2 cores shared by the clients and the server. Latency is per MLflow client call (create, "
        'log_batch, end); "found" is read back through MLflow\'s API afterwards.',
        "",
        table(
            [
                "store",
                "runs attempted",
                "runs found",
                "metric values found / logged",
                "wall s",
                "calls/s",
                "p50 ms",
                "p95 ms",
                "errors",
                "runs in Default",
                "RUNNING at the end",
            ],
            rows,
        ),
        "",
    ]
    for r in results:
        if r["errors"]:
            text += [f"{r['store']} errors (first 3): " + "; ".join(f"`{e}`" for e in r["errors"][:3]), ""]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 x 5 x 30, 3 steps")
    p.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = p.parse_args(argv)
    load = Load(2, 5, 30, 3) if args.quick else Load(4, 50, 30, 10)
    from prunelab.tracking.team_server import team_server

    results = []
    with tempfile.TemporaryDirectory(prefix="prunelab-load-") as tmp:
        with team_server(Path(tmp) / "team") as team:
            results.append(measure("MLflow server on PostgreSQL", team.uri, load))
        results.append(measure("SQLite file", f"sqlite:///{tmp}/mlflow.db", load))
    command = "python -m benchmarks.tracking_load" + (" --quick" if args.quick else "")
    text = report(results, load, command)
    print(text)
    if not args.no_write and not args.quick:
        write_block(BLOCK, text, RESULTS)
        print(f"wrote {RESULTS}", file=sys.stderr)
    lost = any(r["found"] != r["attempted"] or r["running"] or r["default"] for r in results)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
