"""Plug-ins: a config group's option as an object, and the check that it takes the options given.

A user's choice is a config group of ``_target_`` plug-ins (``conf/<group>/<option>.yaml``). The
command line composes them with Hydra; the Python API names them (``criterion="taylor"`` is the
object ``conf/criterion/taylor.yaml`` makes: :func:`resolve`), so both share one registry. Either
way, an option the plug-in does not take is an error naming the ones it does
(:func:`check_options`), never silently ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hydra._internal.utils import _locate
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .contracts import CONTRACTS, passed_by_the_run
from .errors import UserError
from .paths import conf_dir

# What the run passes a plug-in itself, per group: never an option of the config (the groups'
# contracts say it, prunelab/contracts.py; a plain function criterion or scope, and an optimizer,
# are called as below).
RUNTIME = {
    **{group: passed_by_the_run(contract) for group, contract in CONTRACTS.items()},
    "criterion": ("weight", "name", "seed"),  # a plain scoring function's arguments
    "scope": ("units", "ratio"),  # a plain allocating function's arguments
    "optimizer": ("params", "lr"),
}


class OptionError(UserError, ValueError):
    """A plug-in was given an option it does not take, or an option name that does not exist."""


def locate(path: str) -> Any:
    """The object a ``_target_`` names (raises ImportError; quietly: Hydra's public ``get_object``
    logs every failure as an error before raising it)."""
    return _locate(path)


def read_option(path: Path) -> DictConfig:
    """An option's YAML file (``conf/<group>/<option>.yaml``), which is a mapping."""
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise OptionError(f"{path} is not a mapping of options")
    return node


def options(group: str) -> list[str]:
    """The options shipped for ``group`` (``conf/<group>/*.yaml``)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def accepted(target: Callable) -> tuple[list[str], bool]:
    """The keyword options ``target`` (a class or function) takes, and whether it takes any
    (``**kwargs``)."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def plugin_defaults(target: Callable) -> dict[str, Any]:
    """The default value of each keyword option ``target`` (a class or function) takes (a
    dataclass field's default factory called)."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return {}
    made = (
        {
            f.name: f.default_factory()
            for f in dataclasses.fields(target)
            if f.default_factory is not dataclasses.MISSING
        }
        if dataclasses.is_dataclass(target)
        else {}
    )
    return {p.name: made.get(p.name, p.default) for p in params if p.default is not inspect.Parameter.empty}


def check_options(group: str, label: str, target: Callable, given: Iterable[str]) -> None:
    """Raise :class:`OptionError` for the first of ``given`` (option names, ``_target_`` and the
    like excluded) that ``target`` does not take, or that the run passes it itself."""
    names, takes_all = accepted(target)
    runtime = RUNTIME.get(group, ())
    own = [n for n in names if n not in runtime]
    for key in given:
        if key.startswith("_"):
            continue
        if key in runtime and key in names:
            raise OptionError(f"{group}.{key} is given by the run, not by the config: remove it ({label})")
        if key not in names and not takes_all:
            takes = f"its options are {', '.join(own)}" if own else "it takes no options"
            raise OptionError(f"{label} takes no option {key!r}: {takes}")


def resolve(group: str, value: Any, **options_given) -> Any:
    """The object ``conf/<group>/<value>.yaml`` makes, or ``value`` itself (an object), with
    ``options_given`` instead of its own where given."""
    if not isinstance(value, str):
        if not options_given:
            return value
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            raise OptionError(f"{group}: options ({', '.join(options_given)}) go with a name or a dataclass plug-in")
        check_options(group, f"{group}={type(value).__name__}", type(value), options_given)
        return dataclasses.replace(value, **options_given)
    node = _option(group, value)
    target = locate(node["_target_"])
    check_options(group, f"{group}={value}", target, [*map(str, node.keys()), *options_given])
    return instantiate(OmegaConf.merge(node, options_given))


@functools.cache
def _option(group: str, value: str) -> DictConfig:
    """conf/<group>/<value>.yaml, read once (its defaults list, the schema, dropped)."""
    path = conf_dir() / group / f"{value}.yaml"
    if not path.is_file():
        raise OptionError(f"{group}={value!r} is not allowed: expected one of {', '.join(options(group))}")
    node = read_option(path)
    node.pop("defaults", None)
    return node
