"""Every default has one home: a plug-in's options in its class or signature (the YAML option
holds ``_target_`` and what differs), the top-level options in the schema (``Config``), a
recipe's values in its YAML. A value written in two homes drifts apart the day one changes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from omegaconf import OmegaConf

from prunelab import config
from prunelab.paths import conf_dir
from prunelab.plugins import RUNTIME, locate, plugin_defaults

SPECIAL = {"_target_", "_partial_", "defaults"}


def schema_defaults(schema: type) -> dict[str, Any]:
    """A dataclass's field defaults (nested dataclasses as dicts)."""
    out = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def plugin_option_defaults(node: dict, group: str = "") -> dict[str, Any]:
    target = locate(node["_target_"])
    if dataclasses.is_dataclass(target):
        return schema_defaults(target)
    return {k: v for k, v in plugin_defaults(target).items() if k not in RUNTIME.get(group, ())}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return (
        type(a) is type(b)
        and a == b
        or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and a == b)
    )


def twice(node: dict, defaults: dict[str, Any], where: str) -> list[str]:
    """``where.key`` for each value of ``node`` equal to its default (nested plug-ins by theirs)."""
    found = []
    for key, value in node.items():
        if key in SPECIAL or key not in defaults:
            continue
        if isinstance(value, dict) and "_target_" in value:  # a nested plug-in (an optimizer)
            found += twice(value, plugin_option_defaults(value), f"{where}.{key}")
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            found += twice(value, defaults[key], f"{where}.{key}")
        elif same(value, defaults[key]):
            found.append(f"{where}.{key}={value}")
    return found


def written_twice() -> list[str]:
    found = []
    top = OmegaConf.to_container(OmegaConf.load(conf_dir() / "config.yaml"), resolve=False)
    found += twice({k: v for k, v in top.items() if k != "hydra"}, schema_defaults(config.Config), "config.yaml")
    for group in config.TYPED_GROUPS:
        for path in sorted((conf_dir() / group).glob("*.yaml")):
            node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            if "_target_" in node:
                found += twice(node, plugin_option_defaults(node, group), f"{group}/{path.stem}")
    schemas = {"train": config.TrainConfig, "finetune": config.FinetuneConfig}
    for path in sorted((conf_dir() / "recipe").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        for part, schema in schemas.items():
            found += twice(node.get(part) or {}, schema_defaults(schema), f"recipe/{path.stem}.{part}")
    return found


def test_no_default_is_written_in_two_homes():
    assert written_twice() == []


def test_the_check_sees_a_default_written_twice(tmp_path, monkeypatch):
    """A copy of conf/ with a plug-in default, a schema default and an optimizer default restated."""
    import shutil

    copy = tmp_path / "conf"
    shutil.copytree(conf_dir(), copy)
    with open(copy / "model" / "vgg_small.yaml", "a") as f:
        f.write("width: 32\n")
    with open(copy / "config.yaml", "a") as f:
        f.write("seed: 0\n")
    sgd = copy / "recipe" / "sgd.yaml"
    sgd.write_text(
        sgd.read_text().replace("    weight_decay: 0.0005\n", "    weight_decay: 0.0005\n    dampening: 0\n")
    )
    monkeypatch.setattr("test_defaults.conf_dir", lambda: copy)
    found = written_twice()
    assert {"model/vgg_small.width=32", "config.yaml.seed=0", "recipe/sgd.train.optimizer.dampening=0"} <= set(found)


@pytest.mark.parametrize("group", config.TYPED_GROUPS)
def test_every_shipped_option_composes_against_its_plugins_schema(group):
    for path in sorted((conf_dir() / group).glob("*.yaml")):
        node = OmegaConf.load(path)
        if "_target_" in node:
            assert list(node.defaults) == [config.schema_name(locate(node._target_)), "_self_"], path
