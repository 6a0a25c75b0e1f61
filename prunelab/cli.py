"""The command line: ``python -m prunelab [overrides]`` (one run) or ``-m`` (a sweep).

A thin Hydra wrapper around :func:`prunelab.runner.run`. Before Hydra composes anything, the
overrides are checked here against the config groups and value ranges, so a typo gives one
readable line (``prunelab: error: ...``) and exit status 2 instead of Hydra's multi-line report,
and no MLflow run is ever opened for a bad input.
"""

from __future__ import annotations

import logging
import signal
import sys

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from .config import ConfigError, check_choice, check_ratio, register
from .paths import conf_dir, experiments_dir
from .redact import install_log_redaction, redact

log = logging.getLogger("prunelab")

GROUPS = ("model", "dataset", "method", "scope", "recipe")


def _options(group: str) -> list[str]:
    folder = experiments_dir() / "experiment" if group == "experiment" else conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _values(override, own_sweeper: bool) -> list[str]:
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            if not own_sweeper:
                raise ConfigError(f"{override.input_line}: the default sweeper takes lists (a,b,c) or "
                                  "range(...); interval(...) needs an optimising hydra/sweeper")
            return []  # an optimising sweeper picks the values; each job is validated instead
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def preflight(args: list[str]) -> None:
    """Reject bad group options and values in the command-line overrides (raises ConfigError)."""
    from hydra._internal.utils import get_args_parser

    try:
        overrides = get_args_parser().parse_args(args).overrides
    except SystemExit:  # argparse already printed its usage message
        raise ConfigError("cannot parse the command line (see usage above)") from None
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # Hydra's grammar errors
        raise ConfigError(f"cannot parse the overrides: {str(e).splitlines()[0]}") from None
    own_sweeper = any(o.key_or_group == "hydra/sweeper" for o in parsed)
    for o in parsed:
        if o.is_delete():
            continue
        key = o.key_or_group
        for value in _values(o, own_sweeper):
            if key in (*GROUPS, "experiment"):
                check_choice(key, value, _options(key))
            elif key == "ratio":
                check_ratio(value)
            elif key == "method.criterion":
                from .pruning import CRITERIA
                check_choice(key, value, CRITERIA)
            elif key == "scope.name":
                from .pruning import SCOPES
                check_choice(key, value, SCOPES)


def _interrupt(signum, frame):
    # SIGTERM (a scheduler, `kill`) takes the same path as Ctrl-C: runs end KILLED, not RUNNING.
    raise KeyboardInterrupt


def _task(cfg: DictConfig):
    from mlflow.exceptions import MlflowException

    from .data import DataError
    from .pruning import MaskError, PruningError
    from .runner import run
    from .sweep import in_sweep_tag, job_overrides, parent_run_id
    from .tracking import TrackingError
    from .train import TrainingError

    parent = parent_run_id()
    if parent is not None:
        # A sweep point: a failure is recorded as a FAILED child and the sweep goes on; the
        # sweep callback reports it and exits non-zero at the end.
        tags = {"prunelab.sweep_id": parent, in_sweep_tag(parent): "true",
                "prunelab.overrides": redact(" ".join(job_overrides()))}
        try:
            return run(cfg, parent, tags)["test_accuracy"]
        except Exception as e:
            log.error("point %s failed: %s", " ".join(job_overrides()), e, exc_info=True)
            return None
    try:
        return run(cfg)["test_accuracy"]
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the run already ended KILLED with what it had logged.
        fail("interrupted: the run ends KILLED; the same command finishes the work", status=130)
    except (ConfigError, DataError, PruningError, MaskError, MlflowException, TrackingError, TrainingError) as e:
        # Expected failures (bad values, missing data, impossible pruning, a diverged training):
        # one line, exit 2.
        # Anything else is a bug and keeps its traceback.
        log.debug("failure", exc_info=True)
        fail(e)


def fail(error: BaseException | str, status: int = 2):
    """The one line a user sees for an expected failure (credentials masked), and the exit."""
    print(f"prunelab: error: {redact(str(error))}", file=sys.stderr)
    sys.exit(status)


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
