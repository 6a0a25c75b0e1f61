"""15. Models of the field's size on the default path (issue 38)

The README's language-model command, run for real (``python -m prunelab`` in a fresh process, as a
user runs it) on a checkpoint of a published model's shape: each run's wall time and peak memory,
and the figures it recorded in its own MLflow store. The rows, one run of each:

* README path: ``... finetune.epochs=0 handover=false measure_latency=false``, as the README gives it,
  as a first run (the dense model's test split evaluated too, once per checkpoint) and again in the
  user cache the first left (the dense figures cached: every later run, a sweep's next point);
* default path: the same without those two options (the hand-over files and the cost ledger's
  timings on);
* one evaluation + loading: a fresh process that does only what any run must do (import
  prunelab, tokenize and cut the splits, load the checkpoint, evaluate the test windows once, with
  prunelab's own functions): with ``time.prune_s``, the floor the README path is held to;
* ``--reference PATH``: IST-DASLab/sparsegpt's own ``opt.py`` (a checkout, imported by
  ``sys.path`` in a fresh process) on the same calibration and test windows, beside the README path,
  both runs (the second is the same work as the reference, which evaluates no dense model).

Commands (the times measured on this 2-core machine):

    python -m benchmarks.llm_field_size              # ~10 min: OPT-125m's shape, README path (a
                                                     # first run, then again with the dense
                                                     # figures cached) and default path (make
                                                     # bench's section 15); printed
    python -m benchmarks.llm_field_size --reference /tmp/sparsegpt-ref   # ~15 min: README path
                                                     # beside the paper's code; writes a block
    python -m benchmarks.llm_field_size --size 1.3b  # ~25 min: OPT-1.3B's shape in bfloat16, the
                                                     # default path; writes a block
    python -m benchmarks.llm_field_size --size 1.3b --dtype float32  # the same in float32 (5.2 GB
                                                     # of weights); writes a block of its own
    python -m benchmarks.llm_field_size --quick      # ~2 min: a tiny OPT, end to end; printed only

The 125m rows are ``make bench``'s section 15 (``benchmarks/__main__.py``); run on its own, this
prints them, and writes them into RESULTS.md only with ``--publish``. The opt-in rows (``--size
1.3b``, ``--reference``) are not part of ``make bench``: they write their own block between markers
(``llm_field_size_1_3b``, ``llm_field_size_reference``, ``llm_field_size_1_3b_reference``), which
``make bench`` keeps. A reference checkout: ``git clone https://github.com/IST-DASLab/sparsegpt
/tmp/sparsegpt-ref`` (or ``git --git-dir=<a mirror> worktree add /tmp/sparsegpt-ref HEAD``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .common import Section, Verdict, num, publish, status_kb, table, verdict_lines

BLOCK = "llm_field_size"
TITLE = "15. Models of the field's size on the default path"
GiB = 2**30
POLL_S = 0.2  # how often the process tree's RSS is sampled
FORTUNES = Path("/usr/share/games/fortunes")
PROJECT = Path(__file__).resolve().parent.parent  # where `python -m benchmarks...` finds this module


@dataclass(frozen=True)
class Shape:
    """An OPT checkpoint's shape and the work done on it."""

    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int  # the BPE tokenizer's (OPT's own has 50,272 tokens)
    seq: int  # dataset.seq_len
    samples: int  # method.samples
    dtype: str  # model.dtype: what the checkpoint is saved in and the run loads
    timeout_s: float  # per process


SHAPES = {
    "125m": Shape("OPT-125m", 768, 12, 12, 3072, 8192, 512, 32, "float32", 3 * 3600),
    "1.3b": Shape("OPT-1.3B", 2048, 24, 32, 8192, 8192, 512, 32, "bfloat16", 12 * 3600),
    "quick": Shape("a tiny OPT", 64, 2, 4, 256, 512, 64, 8, "float32", 900),
}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
README_OPTIONS = ["handover=false", "measure_latency=false"]

# opt.py's command-line defaults at the reference's commit (its argparse lives under __main__, so it
# cannot be read from the module); reference_child sets --sparsity 0.5 and --nsamples on top.
REFERENCE_DEFAULTS = dict(
    dataset="wikitext2",
    seed=0,
    nsamples=128,
    percdamp=0.01,
    sparsity=0.0,
    prunen=0,
    prunem=0,
    blocksize=128,
    gmp=False,
    wbits=16,
    minlayer=-1,
    maxlayer=1000,
    prune_only="",
    invert=False,
    save="",
    log_wandb=False,
)


# --- measuring a process ------------------------------------------------------------------------


@dataclass
class Measured:
    """One child process: wall time from start to exit, and its peak resident memory."""

    wall_s: float
    tree_peak: int  # bytes: the largest sum of RSS over the process and its descendants, sampled
    # bytes: the kernel's peak RSS of one process of the tree (VmHWM, read while it runs), the
    # highest. Not ru_maxrss: across exec it keeps the RSS of the process forked (here, a benchmark
    # process that holds gigabytes after the sections before it).
    own_peak: int
    returncode: int
    log: Path

    @property
    def peak(self) -> int:
        """Both are lower bounds of the tree's true peak (sampling can miss a spike; the kernel's
        figure is one process's, exact): the larger one."""
        return max(self.tree_peak, self.own_peak)


def _tree_rss(root) -> tuple[int, int]:
    """The process tree's summed RSS, and the largest peak RSS (VmHWM) of one of its processes."""
    import psutil

    total, hwm = 0, 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        with contextlib.suppress(psutil.Error, OSError, RuntimeError):
            total += p.memory_info().rss
            hwm = max(hwm, status_kb("VmHWM", p.pid) * 1024)
    return total, hwm


def _kill_tree(root) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        for p in [*root.children(recursive=True), root]:
            with contextlib.suppress(psutil.Error):
                p.kill()


def measure(argv: list[str], cwd: Path, env: dict[str, str], log: Path, timeout_s: float) -> Measured:
    """Run ``argv`` (output to ``log``), sampling its process tree's RSS every :data:`POLL_S`."""
    import psutil

    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        root, peak, own = psutil.Process(proc.pid), 0, 0
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout_s:
                _kill_tree(root)
                pid, status, _ = os.wait4(proc.pid, 0)
                break
            tree, hwm = _tree_rss(root)
            peak, own = max(peak, tree), max(own, hwm)
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return Measured(wall, peak, own, proc.returncode, log)


def _tail(log: Path, lines: int = 6) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " / ".join(line.strip() for line in text[-lines:])


# --- the checkpoint and the text ----------------------------------------------------------------


def _records(folder: Path) -> list[tuple[str, str]]:
    """(file name, fortune) in file-name order, each fortune's lines joined into one paragraph."""
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.is_symlink() and p.suffix != ".dat")
    out = []
    for path in files:
        for record in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(line.strip() for line in record.splitlines() if line.strip() and line.strip() != "%")
            if text:
                out.append((path.name, text))
    return out


def write_wikitext(folder: Path, fortunes: Path = FORTUNES) -> Path:
    """Debian's fortunes as ``wiki.{train,valid,test}.raw`` in WikiText-2's published layout (an
    article per fortune file, `` = Title = `` headings, paragraphs and blank lines led by a space);
    every 20th fortune in test and the next in validation, as ``dataset=fortunes`` splits them."""
    folder.mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict[str, list[str]]] = {"train": {}, "valid": {}, "test": {}}
    for i, (name, text) in enumerate(_records(fortunes)):
        split = {0: "test", 1: "valid"}.get(i % 20, "train")
        splits[split].setdefault(name, []).append(text)
    for split, articles in splits.items():
        body = "".join(
            f" \n = {name} = \n \n" + "".join(f" {p} \n \n" for p in paragraphs)
            for name, paragraphs in articles.items()
        )
        (folder / f"wiki.{split}.raw").write_text(body, encoding="utf-8")
    return folder


def write_checkpoint(folder: Path, shape: Shape, corpus: str) -> int:
    """An ``OPTForCausalLM`` of ``shape`` (random weights) and its own byte-level BPE tokenizer,
    trained on ``corpus``, saved into ``folder`` as a Hugging Face checkpoint; its parameter count."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids: pad 1, bos = eos 2
    bpe.train_from_iterator(
        [corpus], trainers.BpeTrainer(vocab_size=shape.vocab, special_tokens=specials, show_progress=False)
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.save_pretrained(folder)
    config = transformers.OPTConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        ffn_dim=shape.ffn,
        word_embed_proj_dim=shape.hidden,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(config).to(getattr(torch, shape.dtype))
    model.save_pretrained(folder)
    params = model.num_parameters()
    del model
    return params


def empty_store(path: Path) -> Path:
    """An MLflow SQLite store with its schema made (seconds, once): each run starts from a copy."""
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


# --- the rows -------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    measured: Measured | None = None
    figures: dict[str, Any] = field(default_factory=dict)  # what the run recorded, or the child reported
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.measured is not None and self.error is None


@dataclass
class Work:
    """Everything the rows share: the folders, the shape, the fresh environment of each process."""

    root: Path
    shape: Shape
    wiki: Path
    model: Path
    store: Path

    def env(self, row: str) -> dict[str, str]:
        """A row's own empty user cache (tokens, dense figures, cached as on a first run); a row of
        :data:`AGAIN` runs in the user cache its first run left."""
        cache = self.root / AGAIN.get(row, row) / "xdg"
        env = {**os.environ, "XDG_CACHE_HOME": str(cache), "HYDRA_FULL_ERROR": "1"}
        env.pop("PRUNELAB_DATA", None)
        return env

    def folder(self, row: str) -> Path:
        path = self.root / row
        path.mkdir(parents=True, exist_ok=True)
        return path

    def overrides(self) -> list[str]:
        s = self.shape
        return [
            "model=hf_causal_lm",
            f"model.pretrained={self.model}",
            *([f"model.dtype={s.dtype}"] if s.dtype != "float32" else []),
            "dataset=wikitext2",
            f"dataset.root={self.wiki}",
            "dataset.url=null",
            f"dataset.seq_len={s.seq}",
            "method=sparsegpt",
            "scope=local",
            "ratio=0.5",
            "finetune.epochs=0",
            f"method.samples={s.samples}",
        ]


def cli_row(work: Work, name: str, extra: list[str]) -> Row:
    """One run of ``python -m prunelab`` with ``extra`` options, and what its MLflow store holds."""
    from prunelab.names import Metric

    folder = work.folder(name)
    shutil.copy(work.store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    argv = [sys.executable, "-m", "prunelab", *work.overrides(), *extra, f"tracking.uri={uri}"]
    print(f"    {name}: {' '.join(argv[3:])}", file=sys.stderr, flush=True)
    measured = measure(argv, folder, work.env(name), folder / "log.txt", work.shape.timeout_s)
    row = Row(name, measured)
    metrics = _pruned_metrics(uri)
    if measured.returncode != 0 or metrics is None:
        row.error = f"exit {measured.returncode}: {_tail(measured.log)}"
        return row
    wanted = {
        "prune_s": Metric.PRUNE_SECONDS,
        "ppl": Metric.TEST_PERPLEXITY,
        "dense_ppl": Metric.at(Metric.DENSE, Metric.TEST_PERPLEXITY),
        "sparsity": Metric.SPARSITY_PRUNABLE,
    }
    row.figures = {k: metrics.get(m) for k, m in wanted.items()}
    return row


def _pruned_metrics(uri: str) -> dict[str, float] | None:
    """The metrics of the one FINISHED pruned run in the store at ``uri`` (None if there is none)."""
    from mlflow import MlflowClient

    from prunelab.names import Role, Tag

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = [
        r for r in client.search_runs(ids) if r.data.tags.get(Tag.ROLE) == Role.PRUNED and r.info.status == "FINISHED"
    ]
    return dict(runs[0].data.metrics) if len(runs) == 1 else None


def child_row(work: Work, name: str, args: list[str]) -> Row:
    """One child of this module (``--child floor|reference``), which writes its figures as JSON."""
    folder = work.folder(name)
    out = folder / "figures.json"
    argv = [sys.executable, "-m", "benchmarks.llm_field_size", "--child", name, "--out", str(out), *args]
    print(f"    {name}: {' '.join(argv[3:])}", file=sys.stderr, flush=True)
    measured = measure(argv, PROJECT, work.env(name), folder / "log.txt", work.shape.timeout_s)
    row = Row(name, measured)
    if measured.returncode != 0 or not out.exists():
        row.error = f"exit {measured.returncode}: {_tail(measured.log)}"
    else:
        row.figures = json.loads(out.read_text())
    return row


def data_args(work: Work) -> list[str]:
    s = work.shape
    return ["--wiki", str(work.wiki), "--model", str(work.model), "--seq", str(s.seq), "--samples", str(s.samples)]


# --- the children -----------------------------------------------------------------------------------


def floor_child(a: argparse.Namespace) -> dict[str, Any]:
    """What any run must do, with prunelab's own functions, timed; and prunelab's calibration and
    test windows saved (``a.windows``) for the reference to be checked against."""
    t = [time.perf_counter()]
    import torch

    from prunelab.data import wikitext2
    from prunelab.experiment.train import evaluate
    from prunelab.models import lm
    from prunelab.pruning import PruneData

    t.append(time.perf_counter())
    splits = wikitext2(a.wiki, seq_len=a.seq, url=None, sha256=None, tokenizer=str(a.model))
    t.append(time.perf_counter())
    model = lm.hf_causal_lm(splits.num_classes, pretrained=str(a.model), dtype=a.dtype, in_shape=(a.seq,))
    t.append(time.perf_counter())
    with torch.no_grad():
        loss = evaluate(model, splits.test)["loss"]
    t.append(time.perf_counter())
    # the windows a run calibrates on: method.samples of the training windows, drawn by calibration_seed=0
    calibration = PruneData(splits.train).calibration(a.samples, 0)
    torch.save({"calibration": calibration, "test": splits.test.x}, a.windows)
    steps = ("imports", "tokenize", "load", "evaluate")
    return {
        **{k: t[i + 1] - t[i] for i, k in enumerate(steps)},
        "test_windows": len(splits.test),
        "train_windows": len(splits.train),
        "ppl": math.exp(loss),
    }


def _hf_rows(path: Path) -> list[str]:
    """The rows the Hugging Face ``wikitext`` loader gives of a raw file (what the reference's
    ``get_wikitext2`` joins): each line with its newline, a blank line empty."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line + "\n" if line.strip() else "" for line in lines]


def reference_child(a: argparse.Namespace) -> dict[str, Any]:
    """IST-DASLab/sparsegpt's ``opt.py`` on the same work: its data tokenized as its
    ``get_wikitext2`` does (the files for ``load_dataset``), the calibration windows drawn as
    prunelab draws them (checked equal to prunelab's), then ``opt_sequential`` and ``opt_eval``."""
    t = [time.perf_counter()]
    sys.path.insert(0, str(a.reference))
    import torch

    if not torch.cuda.is_available():  # fasterprune synchronises CUDA after every layer
        torch.cuda.synchronize = lambda *_args, **_kwargs: None
    import opt as ref  # the checkout's opt.py
    from transformers import AutoTokenizer

    t.append(time.perf_counter())
    tok = AutoTokenizer.from_pretrained(str(a.model))
    train = tok(" ".join(_hf_rows(a.wiki / "wiki.train.raw")), return_tensors="pt").input_ids
    test = tok("\n\n".join(_hf_rows(a.wiki / "wiki.test.raw")), return_tensors="pt")
    n = train.shape[1] // a.seq
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: a.samples]
    calibration = train[0, : n * a.seq].view(n, a.seq)[order]
    t.append(time.perf_counter())
    ref.args = argparse.Namespace(model=str(a.model), **{**REFERENCE_DEFAULTS, "sparsity": 0.5, "nsamples": a.samples})
    model = ref.get_opt(str(a.model))
    model.eval()
    model.seqlen = a.seq  # get_opt sets the model's context (2,048); the windows here are dataset.seq_len
    t.append(time.perf_counter())
    dev = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    ref.opt_sequential(model, [(w[None], w[None]) for w in calibration], dev)
    t.append(time.perf_counter())
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ref.opt_eval(model, test, dev, "wikitext2")
    t.append(time.perf_counter())
    (ppl,) = re.findall(r"Perplexity: (\S+)", printed.getvalue())
    made = torch.load(a.windows)
    same_test = test.input_ids[0, : made["test"].numel()].view_as(made["test"])
    steps = ("imports", "tokenize", "load", "prune", "evaluate")
    return {
        **{k: t[i + 1] - t[i] for i, k in enumerate(steps)},
        "ppl": float(ppl),
        "same_calibration": bool(torch.equal(made["calibration"], calibration)),
        "same_test": bool(torch.equal(made["test"], same_test)),
        "sparsity": float(sum((p == 0).sum() for p in model.model.decoder.layers.parameters() if p.dim() == 2))
        / sum(p.numel() for p in model.model.decoder.layers.parameters() if p.dim() == 2),
    }


# --- the section ----------------------------------------------------------------------------------


def _commit(path: Path) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def _s(x: float | None) -> str:
    return "–" if x is None else f"{x:,.1f} s"


def _ppl(x: float | None) -> str:
    return "–" if x is None else f"{x:,.2f}"


def prepare(root: Path, shape: Shape) -> tuple[Work, int]:
    """The text, the checkpoint and an empty MLflow store under ``root``; the parameter count."""
    wiki = write_wikitext(root / "wikitext-2")
    model = root / "checkpoint"
    params = write_checkpoint(model, shape, (wiki / "wiki.train.raw").read_text(encoding="utf-8"))
    return Work(root, shape, wiki, model, empty_store(root / "empty-mlflow.db")), params


# A row that runs again in the user cache another row left (the tokens and the dense model's figures
# cached: a later run over the checkpoint, a sweep's next point), in a store of its own.
AGAIN = {"readme_cached": "readme"}


def rows_for(size: str, reference: Path | None) -> list[str]:
    """What a run measures: with a reference, the README path beside it; else 125m both paths (make
    bench's; the README path also run again, the dense figures cached), 1.3b the default path. The
    floor beside the README path (it also writes the windows the reference is checked against)."""
    if reference is not None:
        return ["floor", "readme", "readme_cached", "reference"]
    return ["floor", "readme", "readme_cached", "default"] if size == "125m" else ["default"]


def measure_rows(work: Work, names: list[str], reference: Path | None) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    windows = work.root / "windows.pt"
    common = [*data_args(work), "--dtype", work.shape.dtype, "--windows", str(windows)]
    for name in names:
        if name == "floor":
            rows[name] = child_row(work, name, common)
        elif name in ("readme", "readme_cached"):
            rows[name] = cli_row(work, name, README_OPTIONS)
        elif name == "default":
            rows[name] = cli_row(work, name, [])
        else:
            rows[name] = child_row(work, name, [*common, "--reference", str(reference)])
    return rows


def run(
    quick: bool = False,
    size: str = "125m",
    reference: Path | None = None,
    keep: Path | None = None,
    dtype: str | None = None,
) -> Section:
    """Measure the rows (make bench: 125m, README and default paths); ``keep``: a folder to work in
    and leave (the checkpoint, the logs, the stores), else a temporary one; ``dtype``: the
    checkpoint's and the runs' weights, else the shape's own."""
    shape = SHAPES["quick" if quick else size]
    shape = replace(shape, dtype=dtype or shape.dtype)
    with contextlib.ExitStack() as stack:
        root = keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llm_field_size-")))
        print(f"    preparing {shape.name} in {root} ...", file=sys.stderr, flush=True)
        work, params = prepare(root, shape)
        rows = measure_rows(work, rows_for(size, reference), reference)
        return section(work, params, rows, reference, quick)


def section(work: Work, params: int, rows: dict[str, Row], reference: Path | None, quick: bool) -> Section:
    s = work.shape
    weights = params * BYTES[s.dtype]
    test_bytes = (work.wiki / "wiki.test.raw").stat().st_size
    about = (
        f"The checkpoint: an `OPTForCausalLM` shaped like {s.name} (width {s.hidden}, {s.layers} blocks, "
        f"{s.heads} heads, MLP {s.ffn}; random weights: time and memory do not depend on them, and the "
        "perplexities stay near the vocabulary's size) with its own byte-level BPE tokenizer of "
        f"{s.vocab:,} tokens (OPT's has 50,272), {params / 1e6:,.1f}M parameters in {s.dtype} = "
        f"**{_size(weights)} of weights**, written by `save_pretrained` into one folder. "
        "The text: Debian's fortunes as `wiki.{train,valid,test}.raw` in WikiText-2's layout (an article per "
        f"fortune file; every 20th fortune in test, the next in validation; the test file {_size(test_bytes)}, "
        "WikiText-2's 1.3 MB). Every run: "
        f"`python -m prunelab {' '.join(_shown(work.overrides()))}` (+ `tracking.uri`), with "
        f"{len(os.sched_getaffinity(0))} usable cores and PyTorch's default threads, its own empty user "
        "cache (`XDG_CACHE_HOME`: the tokens and the dense model's figures computed, as on a first run) "
        "and its own MLflow store (a copy of an empty one). Wall: process start to exit. Peak RSS: the "
        f"larger of the process tree's summed RSS sampled every {POLL_S} s (psutil) and the kernel's peak "
        "RSS of one process (the largest `VmHWM` in `/proc/<pid>/status` of the tree's processes, read as "
        "they run; not `ru_maxrss`, which keeps across `exec` the RSS of the process forked); both are in the table. `time.prune_s` and the "
        "perplexities: read back from the run's MLflow store."
        + (" **Quick smoke run: a tiny model; not results.**" if quick else "")
    )
    parts = [about, _runs_table(rows, weights)]
    if "floor" in rows:
        parts.append(_floor_text(rows["floor"], [r.figures.get("dense_ppl") for r in rows.values()]))
    if reference is not None and "reference" in rows:
        parts.append(_reference_text(rows, reference, s))
    failed = [f"* {r.name}: **failed** ({r.error})" for r in rows.values() if r.error]
    if failed:
        parts.append("\n".join(failed))
    verdicts = _verdicts(rows, weights, prefix="15.")
    own = s == SHAPES["125m"] and reference is None  # make bench's section
    title = TITLE if own else f"{TITLE}: {s.name}" + ("" if s.dtype == "float32" else f" in {s.dtype}")
    title += ", beside the paper's code" if reference is not None else ""
    return Section(title, "\n\n".join(parts), verdicts)


def _shown(overrides: list[str]) -> list[str]:
    """The overrides with the temporary folders named by what they are."""
    return [re.sub(r"=/.*/(checkpoint|wikitext-2)$", r"=<\1>", o) for o in overrides]


LABELS = {"readme": "README path", "default": "default path", "readme_cached": "README path, dense figures cached"}
ROW_NAMES = {
    "readme": "README path (`handover=false measure_latency=false`)",
    "readme_cached": "README path again, the dense model's figures cached (a later run, a sweep's next point)",
    "default": "default path",
    "floor": "one evaluation + loading (prunelab's functions)",
    "reference": "IST-DASLab/sparsegpt `opt.py`",
}


def _runs_table(rows: dict[str, Row], weights: int) -> str:
    out = []
    for row in rows.values():
        m, f = row.measured, row.figures
        prune = f.get("prune_s", f.get("prune"))
        dense = f.get("dense_ppl")
        ppl = "failed" if row.error else (f"{_ppl(dense)} → {_ppl(f.get('ppl'))}" if dense else _ppl(f.get("ppl")))
        out.append(
            [
                ROW_NAMES[row.name],
                _s(m.wall_s) if m else "–",
                _s(prune),
                ppl,
                f"{_mib(m.peak)} ({num(m.peak / weights)}× weights)" if m else "–",
                f"{_mib(m.tree_peak)} / {_mib(m.own_peak)}" if m else "–",
            ]
        )
    header = ["row", "wall", "prune", "test perplexity", "peak RSS", "tree sampled / largest process"]
    return table(header, out)


def _floor_text(row: Row, dense: list[float | None]) -> str:
    """The floor's steps; its dense perplexity against the one the runs recorded (the same work)."""
    f = row.figures
    if row.error or row.measured is None:
        return "One evaluation + loading: failed."
    keys = ("imports", "tokenize", "load", "evaluate")
    recorded = [d for d in dense if d is not None]
    same = (
        "the one the runs recorded"
        if recorded and all(abs(d / f["ppl"] - 1) < 1e-5 for d in recorded)
        else f"**not** the one the runs recorded ({', '.join(_ppl(d) for d in recorded) or 'none'})"
    )
    rest = row.measured.wall_s - sum(f[k] for k in keys)
    steps = ", ".join(f"{k} {_s(f[k])}" for k in keys)
    return (
        f"One evaluation + loading, a fresh process ({_s(row.measured.wall_s)} in all): {steps}, the rest "
        f"(interpreter, PyTorch, saving the windows) {_s(rest)} "
        f"(`prunelab.data.wikitext2`, `prunelab.models.lm.hf_causal_lm`, `prunelab.experiment.train.evaluate` "
        f"on the {f['test_windows']} test windows; a pruned model costs the same, dense kernels). Its dense "
        f"perplexity, {_ppl(f['ppl'])}, is {same}. A run does more: on a first run of a checkpoint it "
        "evaluates the dense model's test split once (cached for every later run and sweep point; a "
        "checkpoint's validation split only where the run trains), then the pruned model's, and logs to MLflow."
    )


def _reference_text(rows: dict[str, Row], reference: Path, s: Shape) -> str:
    ref = rows["reference"]
    f = ref.figures
    checked = (
        "checked equal to prunelab's (calibration and test windows)"
        if f.get("same_calibration") and f.get("same_test")
        else "**not equal to prunelab's** (see `same_calibration`, `same_test`: "
        f"{f.get('same_calibration')}, {f.get('same_test')})"
    )
    steps = ", ".join(f"{k} {_s(f[k])}" for k in ("imports", "tokenize", "load", "prune", "evaluate") if k in f)
    return (
        f"The reference: IST-DASLab/sparsegpt at `{_commit(reference)}`, its `opt.py` imported from the "
        "checkout by `sys.path` in a fresh process (nothing of it copied here); its module-global `args` "
        f"set to its command line's defaults with `--sparsity 0.5 --nsamples {s.samples}`; its data "
        "tokenized in that process as its `get_wikitext2` does (the rows of the same files, joined by "
        f"`' '` and `'\\n\\n'`), the {s.samples} calibration windows of {s.seq} tokens drawn as prunelab draws "
        f"them, {checked}; `get_opt`, `opt_sequential`, `opt_eval` on `dev = cpu` (no GPU here) with "
        f"`model.seqlen = {s.seq}`. Worked around: `torch.cuda.synchronize` (called by `fasterprune` after "
        "each layer) is a no-op in that process, since this PyTorch has no CUDA; `opt_eval` prints its "
        "perplexity, read from its output. Its command line also evaluates PTB and C4 after pruning: not "
        f"here (no data). Its steps: {steps}; the pruned layers' sparsity {f.get('sparsity', float('nan')):.4f}."
    )


def _verdicts(rows: dict[str, Row], weights: int, prefix: str) -> list[Verdict]:
    readme, default, floor, ref = (rows.get(k) for k in ("readme", "default", "floor", "reference"))
    out = []
    if readme and default:
        out.append(_ratio(f"{prefix} default path wall vs README path", default, readme, 1.15, "wall"))
    cached = rows.get("readme_cached")
    if readme and floor:  # a first run also evaluates the dense model's test split, once per checkpoint
        item = f"{prefix} README path (a first run) wall vs prune + one evaluation + loading"
        out.append(_floor_verdict(item, readme, floor))
    if cached and floor:  # the dense figures cached: what every later run and sweep point does
        item = f"{prefix} README path again, the dense figures cached, wall vs prune + one evaluation + loading"
        out.append(_floor_verdict(item, cached, floor))
    for row, times in ((readme, 1.5), (cached, 1.5), (default, 2.0)):
        if row:
            out.append(_peak_verdict(f"{prefix} peak RSS, {LABELS[row.name]}", row, times, weights))
    if readme and ref:
        out.append(_ratio(f"{prefix} README path wall vs the reference", readme, ref, 1.2, "wall"))
        out.append(_ratio(f"{prefix} README path peak RSS vs the reference", readme, ref, 1.2, "peak"))
        out.append(_same_perplexity(f"{prefix} pruned test perplexity vs the reference", readme, ref))
    if cached and ref:  # the same work: the reference evaluates no dense model
        item = f"{prefix} README path with the dense figures cached, wall vs the reference (the same work)"
        out.append(_ratio(item, cached, ref, 1.2, "wall"))
        out.append(
            _ratio(
                f"{prefix} README path with the dense figures cached, peak RSS vs the reference",
                cached,
                ref,
                1.2,
                "peak",
            )
        )
    return out


def _floor_verdict(item: str, readme: Row, floor: Row) -> Verdict:
    if not (readme.ok and floor.ok and readme.measured and floor.measured and readme.figures.get("prune_s")):
        return Verdict(item, "≤ 1.3×", "failed", False)
    prune, wall, rest = readme.figures["prune_s"], readme.measured.wall_s, floor.measured.wall_s
    x = wall / (prune + rest)
    return Verdict(item, "≤ 1.3×", f"{x:.2f}× ({_s(wall)} / ({_s(prune)} + {_s(rest)}))", x <= 1.3)


def _peak_verdict(item: str, row: Row, times: float, weights: int) -> Verdict:
    limit = times * weights + 1.5 * GiB
    target = f"≤ {times}× weights + 1.5 GiB = {_mib(int(limit))}"
    if not (row.ok and row.measured):
        return Verdict(item, target, "failed", False)
    return Verdict(item, target, _mib(row.measured.peak), row.measured.peak <= limit)


def _same_perplexity(item: str, row: Row, ref: Row) -> Verdict:
    a, b = row.figures.get("ppl"), ref.figures.get("ppl")
    if not (row.ok and ref.ok and a and b):
        return Verdict(item, "within 1%", "failed", False)
    if not (ref.figures.get("same_calibration") and ref.figures.get("same_test")):
        return Verdict(item, "within 1%", "not the same windows", False)
    return Verdict(item, "within 1%", f"{_ppl(a)} vs {_ppl(b)} ({(a / b - 1) * 100:+.2f}%)", abs(a / b - 1) <= 0.01)


def _ratio(item: str, row: Row, base: Row, target: float, what: str) -> Verdict:
    if not (row.ok and base.ok and row.measured and base.measured):
        return Verdict(item, f"≤ {target}×", "failed", False)
    a, b = (getattr(r.measured, "wall_s" if what == "wall" else "peak") for r in (row, base))
    show = _s if what == "wall" else (lambda v: _mib(int(v)))
    return Verdict(item, f"≤ {target}×", f"{a / b:.2f}× ({show(a)} vs {show(b)})", a / b <= target)


# --- entry point ----------------------------------------------------------------------------------


def block_name(size: str, reference: Path | None, dtype: str | None = None) -> str:
    """The opt-in rows' block: one per size, reference and weights' dtype (when not the shape's own)."""
    own = dtype is None or dtype == SHAPES[size].dtype
    return (
        BLOCK
        + ("_1_3b" if size == "1.3b" else "")
        + ("_reference" if reference is not None else "")
        + ("" if own else f"_{dtype}")
    )


def _child_main(a: argparse.Namespace) -> int:
    result = floor_child(a) if a.child == "floor" else reference_child(a)
    Path(a.out).write_text(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llm_field_size", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="a tiny OPT, end to end (~2 min); printed only")
    parser.add_argument("--size", choices=["125m", "1.3b"], default="125m", help="the checkpoint's shape")
    parser.add_argument("--reference", type=Path, help="a checkout of IST-DASLab/sparsegpt: run it beside")
    parser.add_argument(
        "--dtype", choices=sorted(BYTES), help="the weights' dtype (default: the shape's own, 1.3b bfloat16)"
    )
    parser.add_argument("--publish", action="store_true", help="write into RESULTS.md whatever ran (--quick too)")
    parser.add_argument("--keep", type=Path, help="work in this folder and leave it (checkpoint, logs, stores)")
    child = parser.add_argument_group("a child process of this benchmark (internal)")
    child.add_argument("--child", choices=["floor", "reference"], help=argparse.SUPPRESS)
    for name in ("--out", "--wiki", "--model", "--windows"):
        child.add_argument(name, type=Path, help=argparse.SUPPRESS)
    child.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    child.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.child:
        return _child_main(a)
    if a.reference is not None and not (a.reference / "opt.py").is_file():
        parser.error(f"--reference {a.reference}: no opt.py there (a checkout of IST-DASLab/sparsegpt)")
    result = run(a.quick, a.size, a.reference, a.keep, a.dtype)
    opt_in = a.size != "125m" or a.reference is not None or a.dtype not in (None, SHAPES[a.size].dtype)
    block = block_name(a.size, a.reference, a.dtype) if a.publish or (opt_in and not a.quick) else None
    publish(f"{result.markdown()}\n{verdict_lines(result.verdicts)}\n", block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
