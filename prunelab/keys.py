"""Run identity, in one place: what a run is, what it is called, where it is filed.

* The **run key** hashes the config parts that change a run's result or its recorded metrics (an
  allow-list, :data:`RESULT_PARTS`): the same experiment run from another folder or against
  another MLflow store has the same key, and a rerun is recognised and skipped. The dense model's
  key hashes only what its training depends on, so every ratio / method / scope reuses it.
* The **point key** is the run key without the seeds (``seed``, ``calibration_seed``): runs that
  share it are seeds of one point,
  and only those are averaged (``prunelab.analysis``).
* **Names** come from the option chosen in each config group (``model=lenet5``), in single runs
  and sweeps alike: the experiment ``<model>-<dataset>``, the run ``<method>-<scope>-<ratio>``,
  the ``model`` / ``dataset`` / ``method`` / ``criterion`` / ``scope`` params and tags.
"""

from __future__ import annotations

import functools
import hashlib
import json

from omegaconf import DictConfig, OmegaConf, open_dict

# Config groups whose chosen option names a run.
GROUPS = ("model", "dataset", "method", "criterion", "scope", "schedule", "recipe", "quantize", "codebook")
# What decides a run's result or its metrics (measure_latency, handover: a run without timings
# or hand-over files lacks metrics a run with them has). Everything else (tracking, cache, force, hydra, labels) does not.
RESULT_PARTS = ("model", "dataset", "method", "criterion", "scope", "schedule", "ratio", "seed", "train", "finetune",
                "quantize", "codebook", "budget", "plan", "measure_latency", "handover", "calibration_seed")
# Parts added since format 3, keyed only when they differ from what every format-3 run did: the
# keys of runs already in a store stay valid.
_ADDED = {"handover": True, "schedule": {"_target_": "prunelab.schedules.Oneshot"}, "calibration_seed": None}
# Where the data lie, not what they are (the loaders check contents by checksum).
LOCATION = ("dataset.root", "dataset.url", "dataset.verify")
_DENSE_PARTS = ("model", "dataset", "train", "seed")
# Bumped when the same config starts to give different numbers or files (2: inputs scaled to [0, 1]
# before standardisation; 3: criteria, scopes and methods as plug-ins, unstructured keeps one
# weight per layer), so no earlier run or dense model is reused.
_FORMAT = 3
_DENSE_FORMAT = 2  # dense training has not changed since format 2: cached dense models stay valid


def with_choices(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``choices`` filled in from Hydra's runtime choices (a config composed with
    ``return_hydra_config=True``, or the running Hydra app's), the ``hydra`` node dropped."""
    from hydra.core.hydra_config import HydraConfig

    runtime = None
    if "hydra" in cfg:
        runtime = cfg.hydra.runtime.choices
    elif HydraConfig.initialized():
        runtime = HydraConfig.get().runtime.choices
    with open_dict(cfg):
        if runtime is not None:
            cfg.choices = {g: str(runtime[g]) for g in GROUPS if runtime.get(g) is not None}
        cfg.pop("hydra", None)
    return cfg


def choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for ``group``, or the plug-in's function name where there is none (a
    config built by hand) or its ``_target_`` was overridden (``criterion._target_=pkg.fn``)."""
    chosen = (cfg.get("choices") or {}).get(group)
    if not chosen and "hydra" in cfg:  # a config Hydra composed, its choices not yet copied
        chosen = cfg.hydra.runtime.choices.get(group)
    node = cfg.get(group)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if chosen and (target is None or _shipped_target(group, chosen) in (None, target)):
        return str(chosen)
    return str(target).rsplit(".", 1)[-1] if target else "none"


@functools.lru_cache(maxsize=None)
def _shipped_target(group: str, option: str) -> str | None:
    """The ``_target_`` of prunelab's own ``conf/<group>/<option>.yaml`` (None: not one of ours)."""
    from .paths import conf_dir

    path = conf_dir() / group / f"{option}.yaml"
    return OmegaConf.load(path).get("_target_") if path.is_file() else None


def names(cfg: DictConfig) -> dict[str, str]:
    """The chosen options that name a run (params and tags)."""
    return {g: choice(cfg, g) for g in ("model", "dataset", "method", "criterion", "scope", "schedule")}


def experiment_name(cfg: DictConfig) -> str:
    return cfg.tracking.experiment or f"{choice(cfg, 'model')}-{choice(cfg, 'dataset')}"


def run_name(cfg: DictConfig) -> str:
    budget = cfg.get("budget") or {}
    at = f"macs{budget.macs:g}" if budget.get("macs") is not None else f"{cfg.ratio:g}"
    return f"{choice(cfg, 'method')}-{choice(cfg, 'scope')}-{at}"


def run_tags(cfg: DictConfig, device_type: str) -> dict[str, str]:
    """The tags that identify a pruned run: its keys and the options it was run with."""
    from .tracking import TAG_POINT_KEY, TAG_ROLE, TAG_RUN_KEY

    chosen = names(cfg)
    tree = _relevant(cfg, device_type)  # once: a plan's contents may be a download
    return {TAG_ROLE: "pruned", TAG_RUN_KEY: _digest(tree), TAG_POINT_KEY: _digest(_without_seed(tree)),
            **{f"prunelab.{g}": chosen[g] for g in ("method", "scope", "criterion")}}


def _digest(tree) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _without_seed(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k not in ("seed", "calibration_seed")}


def _relevant(cfg: DictConfig, device_type: str, parts=RESULT_PARTS) -> dict:
    full = OmegaConf.to_container(cfg, resolve=True)
    tree = {k: full.get(k) for k in parts if not (k in _ADDED and full.get(k, _ADDED[k]) == _ADDED[k])}
    for dotted in LOCATION:
        parent, leaf = dotted.split(".")
        if isinstance(tree.get(parent), dict):
            tree[parent].pop(leaf, None)
    if tree.get("plan"):  # a plan by its contents: the same path may hold another plan later
        from .pruning.plan import load_plan

        digest = "sets:" + _digest(load_plan(tree["plan"])["sets"])
        tree["plan"] = digest
        if isinstance(tree.get("scope"), dict) and "source" in tree["scope"]:
            tree["scope"]["source"] = digest
    # "auto" means different things on different machines: key on what actually runs.
    tree["device"] = device_type
    tree["format"] = _FORMAT
    return tree


def run_key(cfg: DictConfig, device_type: str) -> str:
    """Key of one experiment point (everything in :data:`RESULT_PARTS`, the device type)."""
    return _digest(_relevant(cfg, device_type))


def point_key(cfg: DictConfig, device_type: str) -> str:
    """The run key without the seed: what the seeds of one point share."""
    return _digest(_without_seed(_relevant(cfg, device_type)))


def _dense_tree(cfg: DictConfig, device_type: str) -> dict:
    # Only what dense training reads (no plan to load), under the dense models' own format number.
    return {**_relevant(cfg, device_type, _DENSE_PARTS), "format": _DENSE_FORMAT}


def dense_key(cfg: DictConfig, device_type: str) -> str:
    """Key of the dense model: only what training it depends on."""
    return _digest(_dense_tree(cfg, device_type))


def dense_point_key(cfg: DictConfig, device_type: str) -> str:
    """The dense key without the seed (the dense runs' point)."""
    return _digest(_without_seed(_dense_tree(cfg, device_type)))
