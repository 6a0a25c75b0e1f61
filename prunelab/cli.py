"""The command line: ``python -m prunelab [overrides]`` (one run) or ``-m`` (a sweep).

A thin Hydra wrapper around :func:`prunelab.experiment.runner.run`. Before Hydra starts the app, the config
of every swept value is composed with Hydra's public API and checked by the schema (the only
validator), so a typo gives one readable line (``prunelab: error: ...``) and exit status 2
instead of Hydra's multi-line report, and no MLflow run is ever opened for a bad input.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, not_an_option, register, validate, with_choices
from .errors import UserError, fail
from .names import Metric
from .paths import conf_dir
from .redact import install_log_redaction

log = logging.getLogger("prunelab")


def _points(parsed: list[Override], own_sweeper: bool) -> list[list[str]]:
    """Override lists that between them use every value of every override once: the first value of
    each, then each other value of one override at a time (not the whole product). The values
    are those Hydra's basic sweeper makes of an override (lists, range(...), choice(...), a glob
    over a group's options), spelt as it spells them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    lists = []
    for o in parsed:
        if own_sweeper and o.is_sweep_override() and not o.is_discrete_sweep():
            continue  # interval(...): an optimising sweeper picks the values; each job is validated instead
        try:
            (lines,) = BasicSweeper.split_arguments([o], max_batch_size=None)
        except HydraException:  # (its message names the sweep type, not the way out)
            raise ConfigError(
                f"{o.input_line}: the default sweeper takes lists (a,b,c) or "
                "range(...); interval(...) needs an optimising hydra/sweeper"
            ) from None
        # Hydra's glob also matches the plug-ins' schemas (config.register stores method/nm_schema
        # and the like beside the options), which are no options: not checked, as before.
        schemas = isinstance(o.value(), Glob)
        lists.append([line for (line,) in lines if not (schemas and line.endswith("_schema"))])
    lists = [lines for lines in lists if lines]  # (a glob that matches nothing: left out)
    first = [lines[0] for lines in lists]
    return [first] + [[*first[:i], line, *first[i + 1 :]] for i, lines in enumerate(lists) for line in lines[1:]]


def _parse(parser: OverridesParser, overrides: list[str]) -> list[Override]:
    try:
        return parser.parse_overrides(overrides)
    except Exception as e:  # Hydra's grammar errors
        raise ConfigError(f"cannot parse the overrides: {str(e).splitlines()[0]}") from None


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    """The config Hydra will run, composed with its public API on the real search path (a user's
    own hydra.searchpath folder included) and checked by the schema (ConfigError in one line).
    Runs under the preflight's ``initialize_config_dir``."""
    from hydra import compose
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as e:
        raise ConfigError(_missing_option(e)) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_not_an_option(e, overrides, config_name) or _first_lines(e)) from None
    validate(with_choices(copy.deepcopy(cfg)))
    return cfg


def _own_sweep(cfg: DictConfig) -> tuple[dict, str]:
    """A composed config's own sweep (hydra.sweeper.params) and sweeper."""
    params = cfg.hydra.sweeper.get("params")
    sweeps = OmegaConf.to_container(params, resolve=False) if params else {}
    assert isinstance(sweeps, dict)  # hydra.sweeper.params is a mapping of override -> values
    return sweeps, str(cfg.hydra.runtime.choices.get("hydra/sweeper", "basic"))


def _passes_with(cfg: DictConfig, override) -> bool:
    """Whether ``cfg`` still passes the schema with ``override`` (one parsed ``key=value``) applied,
    when that override only sets a value ``cfg`` already has (no config group, no addition or
    deletion, nothing under ``hydra``): the check composing it again would make, without
    composing. False means: not such an override, or it fails (compose it for Hydra's reason)."""
    key = override.key_or_group
    plain = not (
        override.is_sweep_override()
        or override.is_add()
        or override.is_force_add()
        or override.is_delete()
        or override.package
    )
    if not plain or key == "hydra" or key.startswith("hydra.") or key in cfg.hydra.runtime.choices:
        return False
    if not isinstance(OmegaConf.select(cfg, key, default=None), (int, float, str, bool)):
        return False  # absent, None, a node or a list: composing says what Hydra would
    changed = copy.deepcopy(cfg)
    try:
        OmegaConf.update(changed, key, override.value(), merge=True)
        validate(with_choices(changed))
    except Exception:
        return False
    return True


def _not_an_option(e: BaseException | None, overrides: list[str], config_name: str) -> str | None:
    """An option a plug-in does not take (Hydra: "Key 'x' not in ..."), as one sentence naming the
    options it does take (the config composed without that override says which plug-in it is)."""
    from hydra import compose

    found = None
    while e is not None and found is None:
        found = re.search(r"Key '\w+' (?:is )?not in .*\n\s*full_key: (\S+)", str(e))
        e = e.__cause__
    if found is None:
        return None
    key = found.group(1)
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        cfg = compose(config_name, overrides=rest, return_hydra_config=True)
    except Exception:  # the rest does not compose either: Hydra's own message says more
        return None
    return not_an_option(with_choices(cfg), key)


def _first_lines(e: BaseException | None) -> str:
    """The first line of an error and of what caused it (Hydra wraps OmegaConf's reason)."""
    lines: list[str] = []
    while e is not None and len(lines) < 2:
        text = str(e).strip()
        if text:
            lines.append(text.splitlines()[0].rstrip("."))
        e = e.__cause__
    return ": ".join(lines) or "the config cannot be composed"


def _missing_option(e) -> str:
    """Hydra's "Could not find 'model/foo'" (options listed below it) as one sentence."""
    text = str(e)
    found = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if not found:
        return text.strip().splitlines()[0]
    group, value = found.groups()
    options = getattr(e, "options", None) or re.findall(
        r"^\t(\S+)$", text.split("Available options", 1)[-1], flags=re.M
    )
    options = [o for o in options if not o.endswith("_schema")]  # the plug-ins' schemas are no options
    return f"{group}={value!r} is not allowed: expected one of {', '.join(options) or '(none found)'}"


def preflight(args: list[str]) -> None:
    """Compose the config of every swept value (and of an experiment's own sweep) and check it
    with the schema before Hydra starts the app: ConfigError in one line, no run opened.

    ``-cd``/``-cn`` (another config folder / primary config) are honoured; with ``-cp`` (a path
    relative to a Python module) Hydra checks on its own."""
    from hydra._internal.utils import get_args_parser

    try:
        parsed_args = get_args_parser().parse_args(args)
    except SystemExit:  # argparse already printed its usage message
        raise ConfigError("cannot parse the command line (see usage above)") from None
    if parsed_args.multirun and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        launcher = next((o.split("=", 1)[1] for o in parsed_args.overrides if o.startswith("hydra/launcher=")), "basic")
        raise ConfigError(
            f"torchrun starts the processes of one run, and -m (hydra/launcher={launcher}) starts a sweep's "
            "points: they cannot be combined; run each point as its own torchrun command, or sweep without torchrun"
        )
    if parsed_args.config_path:
        return
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir, config_name = parsed_args.config_dir or str(conf_dir()), parsed_args.config_name or "config"
    register()  # the schema, as Hydra will compose against it
    with initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3"):
        # Parsed as Hydra's sweeper parses them: a glob lists the options of the app's search path.
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        parsed = _parse(parser, parsed_args.overrides)
        own_sweeper = any(o.key_or_group == "hydra/sweeper" for o in parsed)
        first, *others = _points(parsed, own_sweeper)
        base = _compose(first, config_name)
        for job in [first, *others]:
            if job is not first:
                # Another value of one override: a plain value is checked on the first job's config.
                changed = [parser.parse_override(line) for line, was in zip(job, first, strict=True) if line != was]
                if len(changed) == 1 and not _own_sweep(base)[0] and _passes_with(base, changed[0]):
                    continue
            sweeps, sweeper = _own_sweep(base if job is first else _compose(job, config_name))
            if sweeps:  # an experiment's hydra.sweeper.params, less the keys given (Hydra's sweeper: the last wins)
                given = {o.get_key_element() for o in parsed}
                extra = [
                    o
                    for o in _parse(parser, [f"{k}={v}" for k, v in sweeps.items()])
                    if o.get_key_element() not in given
                ]
                for more in _points(extra, own_sweeper or sweeper != "basic"):
                    _compose(more + job, config_name)


def _interrupt(*_signal_args):
    # SIGTERM (a scheduler, `kill`) takes the same path as Ctrl-C: runs end KILLED, not RUNNING.
    raise KeyboardInterrupt


def _task(cfg: DictConfig):
    from mlflow.exceptions import MlflowException

    from .experiment.runner import run
    from .sweep import in_process, job_overrides, parent_run_id, point_tags

    cfg = with_choices(cfg)
    parent = parent_run_id()
    if parent is not None:
        # A sweep point: a failure is recorded as a FAILED child and the sweep goes on; the
        # sweep callback reports it and exits non-zero at the end.
        try:
            # points one after another in this process: each hand-over is made while the next
            # point trains, and the sweep's end collects them (sweep.py)
            return run(cfg, parent, point_tags(parent), defer_handover=in_process())[Metric.TEST_ACCURACY]
        except Exception as e:
            log.error("point %s failed: %s", " ".join(job_overrides()), e, exc_info=True)
            return None
    try:
        return run(cfg).get(Metric.TEST_ACCURACY)  # (a rank other than 0 records nothing)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the run already ended KILLED with what it had logged.
        fail("interrupted: the run ends KILLED; the same command finishes the work", status=130)
    except (UserError, MlflowException) as e:
        # Expected failures (bad values, missing data, impossible pruning, a diverged training,
        # an unusable store): one line, exit 2. Anything else is a bug and keeps its traceback.
        log.debug("failure", exc_info=True)
        fail(e)


def main() -> None:
    install_log_redaction()
    try:
        preflight(sys.argv[1:])
    except ConfigError as e:
        fail(e)
    register()
    signal.signal(signal.SIGTERM, _interrupt)
    # An absolute config_path works from a checkout, from any working directory and from a wheel;
    # a relative "../conf" does not under `python -m`.
    hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_task)()
