"""Names -> plug-in objects for the Python API: ``criterion="taylor"`` is the object that
``conf/criterion/taylor.yaml`` instantiates, so the command line and Python share one registry."""

from __future__ import annotations

import functools

from hydra.utils import instantiate
from omegaconf import OmegaConf

from ..paths import conf_dir
from .errors import PruningError


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def resolve(group: str, value, **kwargs):
    """``value`` itself, or the object conf/<group>/<value>.yaml instantiates (with ``kwargs``)."""
    if not isinstance(value, str):
        return value
    return instantiate(OmegaConf.merge(_option(group, value), kwargs))


@functools.lru_cache(maxsize=None)
def _option(group: str, value: str):
    """conf/<group>/<value>.yaml, read once (its defaults list, the schema, dropped)."""
    path = conf_dir() / group / f"{value}.yaml"
    if not path.is_file():
        raise PruningError(f"{group}={value!r} is not allowed: expected one of {', '.join(options(group))}")
    node = OmegaConf.load(path)
    node.pop("defaults", None)
    return node
