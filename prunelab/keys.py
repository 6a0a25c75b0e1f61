"""Run identity from content: a run's key is a hash of the config parts that decide its result.

Tracking, caching and launcher settings do not change a result, nor does where the data files lie,
so they are left out: the same experiment run from another folder or against another MLflow store
has the same key, and a dense model is reused by every ratio / method / scope of a study.
"""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# Keys that never change a result (dotted paths, removed before hashing).
IRRELEVANT = ("tracking", "cache_dir", "force", "measure_latency", "hydra", "dataset.root", "dataset.url",
               "dataset.verify")
_DENSE_PARTS = ("model", "dataset", "train", "seed")
# Bumped when the same config starts to give different numbers or files (2: inputs scaled to [0, 1]
# before standardisation, hand-over files take raw inputs), so no earlier run or dense model is reused.
_FORMAT = 2


def _digest(tree) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _relevant(cfg: DictConfig, device_type: str) -> dict:
    tree = OmegaConf.to_container(cfg, resolve=True)
    for dotted in IRRELEVANT:
        *parents, leaf = dotted.split(".")
        node = tree
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    # "auto" means different things on different machines: key on what actually runs.
    tree["device"] = device_type
    tree["format"] = _FORMAT
    return tree


def run_key(cfg: DictConfig, device_type: str) -> str:
    """Key of one experiment point (model, data, training, pruning, fine-tuning, seed, device)."""
    return _digest(_relevant(cfg, device_type))


def dense_key(cfg: DictConfig, device_type: str) -> str:
    """Key of the dense model: only what training it depends on."""
    tree = _relevant(cfg, device_type)
    return _digest({k: tree.get(k) for k in (*_DENSE_PARTS, "device", "format")})
