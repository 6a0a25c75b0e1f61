"""Run every benchmark and rewrite benchmarks/RESULTS.md: ``make bench`` (= ``python -m benchmarks``).

    python -m benchmarks                 # all default sections -> benchmarks/RESULTS.md
    python -m benchmarks --sweep         # also 5. sweep cost (many minutes)
    python -m benchmarks --quick         # smoke run: tiny sizes, one round, printed only
    python -m benchmarks --only scaling  # some sections, printed only (unless --out is given)

Each section module exposes ``main() -> str`` (its Markdown); prunelab's own also expose
``run(quick, ...) -> Section`` with verdicts for the summary table. A section that fails is
reported in the results (with its error) instead of stopping the others.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import inspect
import re
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch

from .common import RESULTS, Section, Verdict, machine_facts, table

# In report order; sweep_cost only with --sweep; structured_speedup is optional (another module).
SECTIONS = (
    "overhead",
    "masking",
    "global_threshold",
    "same_answer",
    "sweep_cost",
    "scaling",
    "structured_speedup",
    "finetune_shrunk",
    "deploy_int8",
    "compact_files",
    "sensitivity_scan",
    "layerwise_depth",
    "llm_field_size",  # ~25 min: the README's LLM command on an OPT-125m-shaped checkpoint (issue 38)
    "reproduce_overhead",  # ~2 min: reproduce RUN_ID against the run it re-executes (issue 39)
    "lora_step",  # ~2 min: a LoRA step against a full fine-tuning step at OPT-125m's shape (issue 40)
)
OPTIONAL = {"structured_speedup"}
# A block that a long, separately run benchmark writes into RESULTS.md (baseline_recipes.py): kept
# as it is when the default sections are rewritten.
KEPT_BLOCK = re.compile(r"<!-- (\w+):begin -->.*?<!-- \1:end -->\n?", re.S)


def with_kept_blocks(text: str, old: str) -> str:
    blocks = [m.group(0).rstrip("\n") + "\n" for m in KEPT_BLOCK.finditer(old)]
    return "\n".join([text.rstrip("\n") + "\n", *blocks])


def _command() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    return shlex.join([str(exe), "-m", "benchmarks", *sys.argv[1:]])


def run_section(name: str, quick: bool, threads: int) -> Section | None:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as e:
        if name in OPTIONAL and e.name == f"benchmarks.{name}":
            return None  # not written (yet): nothing to report
        return _failed(name, e)
    try:
        if hasattr(module, "run"):
            params = inspect.signature(module.run).parameters
            kwargs = {k: v for k, v in (("quick", quick), ("threads", threads)) if k in params}
            return module.run(**kwargs)
        text = module.main().strip()
        title, _, body = text.partition("\n")
        return Section(title.lstrip("# ").strip(), body)
    except Exception as e:  # one broken section must not cost the others their results
        return _failed(name, e)


def _failed(name: str, error: BaseException) -> Section:
    tail = "".join(traceback.format_exception(error)).strip().splitlines()[-12:]
    body = "This section failed:\n\n```\n" + "\n".join(tail) + "\n```"
    return Section(f"{name}: failed", body, [Verdict(name, "runs", "failed", False)])


def report(sections: list[Section], command: str, elapsed: float, facts, threads: int, quick: bool) -> str:
    verdicts = [v for s in sections for v in s.verdicts]
    lines = [
        "# prunelab benchmarks",
        "",
        f"Written by `{command}`{' (= `make bench`)' if command.endswith('-m benchmarks') else ''}, "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, in {elapsed / 60:.1f} min."
        + (" **Quick smoke run: sizes and rounds cut down; not results.**" if quick else ""),
        "",
        "Every timing alternates its variants (A B A B ...) after a warm-up round and gives the "
        "median (min–max) over the rounds; ratios are taken within a round. PyTorch ran with "
        f"{threads} intra-op thread(s) (`--threads`): on this small shared machine two threads "
        "stall whenever another process holds a core, one does not.",
        "",
        "## Machine",
        "",
        table(["", "this run"], facts),
        "",
        "## Summary",
        "",
        table(
            ["item", "target", "measured (median)", "verdict"],
            [[v.item, v.target, v.measured, v.mark] for v in verdicts],
        ),
        "",
    ]
    lines += [s.markdown() for s in sections]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also run 5. sweep cost (many minutes)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one round")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads (default 1)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the results (default: benchmarks/RESULTS.md for a full "
        "run; a --quick or --only run is printed only)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.only or [n for n in SECTIONS if n != "sweep_cost" or args.sweep]
    facts = machine_facts()  # before the load of our own runs is in the load average
    command = _command()
    start = time.perf_counter()
    sections = []
    for i, name in enumerate(names, 1):
        t = time.perf_counter()
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        section = run_section(name, args.quick, args.threads)
        if section is not None:
            sections.append(section)
            for v in section.verdicts:
                print(f"    {v.item}: {v.measured} (target {v.target}): {v.mark}", file=sys.stderr)
        print(f"    {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    if "sweep_cost" not in names and not args.only:
        at = next((i for i, sec in enumerate(sections) if sec.title.startswith("6.")), len(sections))
        sections.insert(
            at,
            Section(
                "5. Sweep cost",
                "Not run: it takes many minutes. `python -m benchmarks --sweep` runs it too.",
                [Verdict("5. sweep cost", "≤ 1.1 × by hand", "not run (`--sweep`)", None)],
            ),
        )
    text = report(sections, command, time.perf_counter() - start, facts, args.threads, args.quick)
    out = args.out or (None if args.quick or args.only else RESULTS)
    if out is None:
        print(text)
    else:
        out.write_text(with_kept_blocks(text, out.read_text() if out.exists() else ""))
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
