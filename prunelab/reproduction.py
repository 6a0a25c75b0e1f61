"""What reproducing a recorded run takes, step by step (the command is
:mod:`prunelab.reproduce`; a sweep's points: :mod:`prunelab.reproduce_sweep`):

1. read     the run, its ``config.yaml`` and ``environment.json``, from the store; one line for
            input that cannot work: an unknown id, a store that does not answer, a run that did
            not finish (``--allow`` runs it anyway), a record from before ``environment.json``
2. compose  the recorded config again as the command line would (:func:`overrides`: the option
            of each group that differs from the defaults, then each value those options do not
            give), checked by the schema; it must come out equal to the record
3. check    this environment against the recorded one (:func:`prunelab.tracking.record.differences`:
            commit and uncommitted changes, package versions, device, threads, determinism) and
            the run key the config gives here (data folders and checkpoints by their contents)
            against the recorded key: one line each, and without ``--allow`` nothing runs
4. run      (the command) the config into its own experiment (``<experiment>-reproduced``),
            forced: the record is never written to, and never taken for its own reproduction
5. compare  every metric either run logged except the measured ones (durations, latencies:
            :meth:`prunelab.names.Metric.measured`), as a table, and the verdict: identical,
            within ``--tolerance``, or different (exit status 0, 0, 1)
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import shlex
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, ListConfig, OmegaConf
from sqlalchemy.exc import SQLAlchemyError

from .config import GROUPS, ConfigError, compose, validate
from .data.files import file_digest
from .errors import UserError, one_line
from .experiment.dense import cached
from .experiment.settings import Settings
from .names import Artifact, Metric, Role, Tag
from .redact import redact
from .tracking import record, store

log = logging.getLogger("prunelab")

SUFFIX = "-reproduced"  # the default experiment: the recorded one's name and this
FINISHED = "FINISHED"


class ReproduceError(UserError):
    """A run that cannot be reproduced as asked: one sentence saying why, and what to do."""


# --- 1. read -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """What the store holds of a run: the run, its experiment's name, its resolved config and its
    environment (None: recorded before ``environment.json``; its tags say part of it)."""

    run: Run
    experiment: str
    config: dict[str, Any]
    environment: dict[str, Any] | None

    @property
    def id(self) -> str:
        return self.run.info.run_id


def client_of(uri: str) -> MlflowClient:
    """A client of the store at ``uri``, which must exist and answer (it is read, never created)."""
    store.check_store(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
        if not path.is_file():
            raise store.TrackingError(f"no MLflow store at {path} (--tracking-uri {redact(uri)})")
    return MlflowClient(store.absolute(uri))


def lookup(client: MlflowClient, run_id: str, uri: str) -> tuple[Run, str]:
    """Run ``run_id`` of the store at ``uri`` and its experiment's name (one line if there is none)."""
    try:
        run = client.get_run(run_id)
        return run, client.get_experiment(run.info.experiment_id).name
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ReproduceError(f"no run {run_id} in {redact(uri)}") from None
        raise store.TrackingError(f"MLflow store {redact(uri)}: {one_line(e)}") from None
    except SQLAlchemyError as e:
        raise store.TrackingError(f"MLflow store {redact(uri)} is damaged or unreadable: {one_line(e)}") from None


def read(client: MlflowClient, run: Run, experiment: str) -> Record:
    """The record of ``run``, a pruned run (:class:`ReproduceError` for one that is not, or that
    has no config to execute)."""
    run_id = run.info.run_id
    role = run.data.tags.get(Tag.ROLE)
    if role == Role.DENSE:
        raise ReproduceError(f"run {run_id} is a dense model's run: reproduce a pruned run, which reproduces it too")
    if role != Role.PRUNED:
        raise ReproduceError(f"run {run_id} is not a prunelab run (no {Tag.ROLE} tag)")
    files = {a.path for a in client.list_artifacts(run_id)}
    if Artifact.CONFIG not in files:
        raise ReproduceError(
            f"run {run_id} has no {Artifact.CONFIG}: it ended before it logged its config "
            "(runs recorded since reproduce exists log it as they open), so there is nothing to execute"
        )
    config = _tree(OmegaConf.create(_artifact(client, run_id, Artifact.CONFIG)), resolve=False)  # (resolved already)
    environment = json.loads(_artifact(client, run_id, Artifact.ENVIRONMENT)) if Artifact.ENVIRONMENT in files else None
    return Record(run, experiment, config, environment)


def _artifact(client: MlflowClient, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory(prefix="prunelab-") as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def refuse_unfinished(rec: Record) -> None:
    """A run that did not finish, or was recorded before its environment was, is reproduced only
    when asked (``--allow``)."""
    status = rec.run.info.status
    if status != FINISHED:
        error = rec.run.data.tags.get(Tag.ERROR)
        why = f" ({one_line(error)[:200]})" if error else ""
        raise ReproduceError(f"run {rec.id} is {status}, not {FINISHED}{why}: --allow reproduces it anyway")
    if rec.environment is None:
        raise ReproduceError(
            f"run {rec.id} was recorded before runs recorded their environment (no {Artifact.ENVIRONMENT}: "
            "its package versions and commit are known from its tags, not its device, threads or uncommitted "
            "changes): --allow reproduces it, checking what its tags say"
        )


# --- 2. compose --------------------------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z_][\w-]*")  # a config key that a dotted override can name
_PLAIN = re.compile(r"[\w/.@:%*?|+-]+")  # a string an override may spell without quotes


def overrides(config: dict[str, Any]) -> list[str]:
    """The command-line overrides that compose the resolved ``config`` (as a run's config.yaml
    holds it) again: the option of each config group that differs from the default one, then
    each value that those options do not give. Only the groups that differ are named: naming a
    criterion for a method that takes none is refused, as on the command line."""
    chosen = config.get("choices") or {}
    default = _compose([])
    groups = [f"{g}={chosen[g]}" for g in GROUPS if g in chosen and chosen[g] != _chosen(default).get(g)]
    base = _tree(_compose(groups) if groups else default)
    values = list(_changes(base, {k: v for k, v in config.items() if k != "choices"}, ""))
    return groups + values


def _changes(base: dict[str, Any], wanted: dict[str, Any], prefix: str) -> Iterator[str]:
    """``key=value`` for each value of ``wanted`` that ``base`` lacks or holds otherwise."""
    for key, value in wanted.items():
        path = f"{prefix}{key}"
        if key not in base:
            yield override(f"++{path}", value)
        elif _nested(value) and isinstance(base[key], dict):
            yield from _changes(base[key], value, f"{path}.")
        elif _canonical(base[key]) != _canonical(value):
            yield override(path, value)


def _nested(value: Any) -> bool:
    """A mapping whose keys a dotted override can name (else it is set whole)."""
    return isinstance(value, dict) and bool(value) and all(isinstance(k, str) and _KEY.fullmatch(k) for k in value)


def override(key: str, value: Any) -> str:
    """``key=value`` as Hydra's parser reads it back (checked: it must give ``value`` back)."""
    line = f"{key}={_spelt(value)}"
    parsed: Any
    try:
        parsed = _hydra_parser().parse_override(line).value()
    except Exception:
        parsed = _Unparsed()
    if _canonical(parsed) != _canonical(value):
        raise ConfigError(f"the recorded {key.lstrip('+')}={value!r} cannot be written as an override")
    return line


@functools.cache
def _hydra_parser() -> OverridesParser:
    return OverridesParser.create()


class _Unparsed:
    """What an override that does not parse gives back: equal to nothing."""


def _spelt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_spelt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_spelt(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text) and not re.fullmatch(r"[-+]?[\d.eE+-]+|true|false|null|[-+]?inf|nan", text, re.I):
        return text
    # Quoted, as Hydra reads a quoted value: a backslash is itself except before a quote or at
    # the end, "${" is an interpolation unless escaped.
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    quoted = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted).replace("${", "\\${")
    return f"'{quoted}'"


def _canonical(value: Any) -> str:
    """``value`` as text that tells 1 from 1.0 and True (what the run was given, not just its equal)."""
    return json.dumps(value, sort_keys=True, default=str)


def _compose(lines: list[str]) -> DictConfig:
    """The config of ``lines``, composed as the command line composes it (ConfigError in one line)."""
    try:
        return compose(*lines)
    except UserError:
        raise
    except Exception as e:  # Hydra's and OmegaConf's own errors: an option this checkout lacks, say
        raise ConfigError(f"the recorded config does not compose here: {one_line(e)}") from None


def _tree(cfg: DictConfig | ListConfig, resolve: bool = True) -> dict[str, Any]:
    """A config as plain values; a mapping (a run's config.yaml is one) by its keys as text."""
    tree = OmegaConf.to_container(cfg, resolve=resolve)
    if not isinstance(tree, dict):
        raise ConfigError(f"the config is a {type(tree).__name__}, not a mapping")
    return {str(k): v for k, v in tree.items()}


def _chosen(cfg: DictConfig) -> dict[str, str]:
    return dict(cfg.get("choices") or {})


def refiled(config: dict[str, Any], uri: str, experiment: str) -> dict[str, Any]:
    """What reproducing a run changes in its ``config``: where it is filed (``experiment`` of the
    store at ``uri``), and that it runs although a run of its key has finished (the record)."""
    return {
        **config,
        "tracking": {**(config.get("tracking") or {}), "uri": uri, "experiment": experiment},
        "force": True,
    }


def composed(wanted: dict[str, Any]) -> tuple[DictConfig, list[str]]:
    """The config ``wanted`` composed again, checked by the schema, and its overrides; ConfigError
    where it does not come out equal to ``wanted`` (prunelab's config has changed since)."""
    lines = overrides(wanted)
    cfg = _compose(lines)
    validate(cfg)
    differing = next(_differing(wanted, _tree(cfg), ""), None)
    if differing is not None:
        where, was, now = differing
        raise ConfigError(f"the recorded config does not compose here: {where} is {now!r} here, {was!r} in the record")
    return cfg, lines


def _differing(a: Any, b: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted({*a, *b}):
            yield from _differing(a.get(key), b.get(key), f"{where}{key}.")
    elif _canonical(a) != _canonical(b):
        yield where.rstrip("."), a, b


def command(lines: list[str]) -> str:
    """The command line that runs the config of ``lines`` (credentials masked)."""
    return redact(" ".join(["python -m prunelab", *(shlex.quote(line) for line in lines)]))


# --- 3. check ----------------------------------------------------------------------------------


def differences(rec: Record, s: Settings) -> list[str]:
    """How running ``s`` here differs from the record: its environment, and its run key and
    dense key (a different key: data or checkpoint files with other contents, another device
    type, another key format)."""
    recorded = rec.environment if rec.environment is not None else record.from_tags(rec.run.data.tags)
    lines = record.differences(recorded, record.environment(s.device, s.key.contents))
    lines += data_changes((rec.environment or {}).get("data") or {})
    for what, tag, key in (("run key", Tag.RUN_KEY, s.key.run), ("dense key", Tag.DENSE_KEY, s.key.dense)):
        was = rec.run.data.tags.get(tag)
        if was != key:
            lines.append(f"{what}: recorded {was}, here {key} (data or checkpoint files, device type or key format)")
    return lines


def data_changes(recorded: dict[str, str]) -> list[str]:
    """A line for each data file the run read that is here with other contents (a file that is
    not here is not one: the reproduction finds its data as its config says, and checks the
    checksums the dataset publishes)."""
    lines = []
    for path, was in recorded.items():
        if Path(path).is_file() and (now := file_digest(Path(path))) != was:
            lines.append(f"data file {path}: its contents changed (SHA-256 recorded {was[:16]}, here {now[:16]})")
    return lines


def say_dry_run(differ: list[str], commands: list[str]) -> int:
    """``--dry-run``: each difference from the record on stderr, the commands that reproduce on
    stdout; exit status 0."""
    for line in differ:
        print(f"differs: {line}", file=sys.stderr)
    for line in commands:
        print(line)
    return 0


def say_differences(differ: list[str], device: torch.device, allow: bool) -> None:
    """Print each difference from the record (or, with none, the environment as recorded) and stop
    with :class:`ReproduceError` where there is one and ``allow`` is not given."""
    for line in differ:
        print(f"differs: {line}")
    if not differ:
        print(f"environment as recorded: {record.summary(record.environment(device))}")
    if differ and not allow:
        raise ReproduceError(f"{len(differ)} difference(s) from the record (above): --allow reproduces it anyway")


def dense_line(s: Settings) -> str:
    """Where the reproduction's dense model comes from: the cache holds it under its key, or not."""
    if cached(s.cache, s.key.dense):
        return f"dense model {s.key.dense}: in the cache ({s.cache}), taken from it"
    made = "trained" if s.dense_recipe.epochs else "evaluated"
    return f"dense model {s.key.dense}: not in the cache ({s.cache}), {made} again"


# --- 5. compare --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One metric of the record beside the reproduction's (None: that run did not log it)."""

    metric: str
    recorded: float | None
    reproduced: float | None

    @property
    def identical(self) -> bool:
        a, b = self.recorded, self.reproduced
        return a is not None and b is not None and (a == b or (math.isnan(a) and math.isnan(b)))

    def within(self, tolerance: float) -> bool:
        """Equal, or apart by at most ``tolerance`` of the larger magnitude."""
        apart = self.apart
        return self.identical or (apart is not None and apart <= tolerance)

    @property
    def apart(self) -> float | None:
        """How far apart the two values are, relative to the larger (None: one is missing or not finite)."""
        a, b = self.recorded, self.reproduced
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            return None
        return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b))

    @property
    def difference(self) -> str:
        if self.recorded is None or self.reproduced is None:
            return "missing"
        return "0" if self.identical else f"{self.reproduced - self.recorded:+.3g}"


def rows(recorded: dict[str, float], reproduced: dict[str, float]) -> tuple[list[Row], list[str]]:
    """The rows to compare, by metric name, and the measured metrics left out."""
    names = sorted({*recorded, *reproduced})
    measured = [n for n in names if Metric.measured(n)]
    return [Row(n, recorded.get(n), reproduced.get(n)) for n in names if not Metric.measured(n)], measured


def table(found: list[Row], tolerance: float) -> str:
    """Recorded, reproduced, difference, metric by metric; a metric beyond the tolerance marked."""
    shown = lambda v: "-" if v is None else f"{v:.10g}"
    lines = [("metric", "recorded", "reproduced", "difference", "")] + [
        (r.metric, shown(r.recorded), shown(r.reproduced), r.difference, "" if r.within(tolerance) else "<- differs")
        for r in found
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        + (f"  {line[4]}" if line[4] else "")
        for line in lines
    )


def verdict(found: list[Row], measured: list[str], tolerance: float) -> tuple[str, int]:
    """The last line and the exit status: identical (0), within tolerance (0), different (1)."""
    left_out = f"; measured, not compared: {', '.join(measured)}" if measured else ""
    beyond = [r for r in found if not r.within(tolerance)]
    if beyond:
        named = ", ".join(f"{r.metric} (recorded {r.recorded}, reproduced {r.reproduced})" for r in beyond)
        return f"different: {len(beyond)} of {len(found)} metrics beyond --tolerance {tolerance:g}: {named}", 1
    if all(r.identical for r in found):
        return f"identical: all {len(found)} metrics equal{left_out}", 0
    differ = sum(not r.identical for r in found)
    worst = max((a for a in (r.apart for r in found) if a is not None), default=0.0)
    return (
        f"within tolerance: {differ} of {len(found)} metrics differ, by at most {worst:.3g} relative "
        f"(--tolerance {tolerance:g}){left_out}",
        0,
    )


@contextlib.contextmanager
def progress() -> Iterator[None]:
    """The run's log lines on stderr while it runs (the command line's Hydra shows them there)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    ours = logging.getLogger("prunelab")
    level = ours.level
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
