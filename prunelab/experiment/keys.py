"""Run identity, in one place: what a run is, what it is called, where it is filed.

* :func:`identity` gives a run's :class:`RunKey`. The **run key** hashes the config parts that
  change a run's result or its recorded metrics (an allow-list, :data:`RESULT_PARTS`): the same
  experiment run from another folder or against another MLflow store has the same key, and a
  rerun is recognised and skipped. The **point key** is the run key without the seeds (``seed``,
  ``calibration_seed``): runs that share it are seeds of one point, and only those are averaged
  (``prunelab.analysis``). The **dense key** hashes only what dense training depends on, so every
  ratio / method / scope reuses one dense model.
* **Names** come from the option chosen in each config group (``model=lenet5``), in single runs
  and sweeps alike: the experiment ``<model>-<dataset>``, the run ``<method>-<scope>-<ratio>``,
  the ``model`` / ``dataset`` / ``method`` / ``criterion`` / ``scope`` params and tags.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import FinetuneConfig, TrainConfig
from ..data.files import file_digest, folder_digest, listing_digest
from ..names import Role, Tag
from ..paths import conf_dir
from ..plugins import locate, plugin_defaults, read_option
from ..redact import redact_tree

# The groups whose chosen option names a run (params and tags).
NAMED = ("model", "dataset", "method", "criterion", "scope", "schedule")
# What decides a run's result or its metrics (measure_latency, handover: a run without timings
# or hand-over files lacks metrics a run with them has). Everything else (tracking, cache, force,
# hydra, labels) does not.
RESULT_PARTS = (
    "model",
    "dataset",
    "augment",
    "dense",
    "method",
    "criterion",
    "scope",
    "schedule",
    "ratio",
    "seed",
    "train",
    "finetune",
    "quantize",
    "codebook",
    "budget",
    "plan",
    "measure_latency",
    "handover",
    "handover_formats",  # only when it asks for formats: a run without is the run it was
    "calibration_seed",
    "eval",  # only when it asks for something (eval.tasks): a run without is the run it was
)
SEEDS = ("seed", "calibration_seed")
# Fine-tuning's distillation options: in the key only when finetune.distill is on.
DISTILL_OPTIONS = ("distill", "alpha", "temperature")
# Where and how the data are read, not what they are (the loaders check contents by checksum; any
# number of decoding workers gives the same batches).
LOCATION = ("dataset.root", "dataset.url", "dataset.verify", "dataset.workers")
# A dataset with one of these options is a published one, checked by its checksum wherever it lies;
# one without (dataset=text, a folder of your files) is known by its root folder's contents.
VERIFIED = {"url", "sha256", "verify"}
# Folders known by their contents, not their path: a checkpoint moved is the same model, one
# overwritten in place is another (a hub name stays a name, with its model.revision).
CONTENTS = ("model.pretrained", "dataset.tokenizer")
DENSE_PARTS = ("model", "dataset", "augment", "dense", "train", "seed")
# Options added after runs were keyed without them (node -> option names): at their default value
# (the schema's: the train / finetune dataclasses', a plug-in's signature) a run is the run it was,
# its keys unchanged and its dense model's cache still used.
LATER = {
    "train": ("milestones", "gamma", "label_smoothing", "precision", "channels_last", "compile", "sync_bn"),
    "finetune": ("milestones", "lora", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets"),
    "codebook": ("iterations",),
    "quantize": ("batch_size",),
    # Wanda's N:M permutation; DSnoT's refit; FLAP's compensation (Width.samples: only Width's own
    # samples, new with it: the other methods' runs were keyed with theirs)
    "method": ("permute", "refit", "refit_cycles", "refit_threshold", "refit_skip", "compensate", "Width.samples"),
}
# Bumped when the same config starts to give different numbers or files, or is written differently
# (2: inputs scaled to [0, 1] before standardisation; 3: criteria, scopes and methods as plug-ins,
# unstructured keeps one weight per layer; 4: every plug-in a class whose schema is its fields), so
# no earlier run is reused.
FORMAT = 4
DENSE_FORMAT = 2  # dense training has not changed since format 2: cached dense models stay valid


@dataclass(frozen=True)
class RunKey:
    """A run's identity: its result (``run``), its point (``point``: no seeds), and the dense
    model it starts from (``dense``; ``dense_point``: no seed)."""

    run: str
    point: str
    dense: str
    dense_point: str
    # The files the run reads that are known by their contents (a data folder of your own, a
    # checkpoint, a tokenizer, a plan): dotted option -> digest, recorded so that a reproduction
    # names the one that changed.
    contents: dict[str, str] = field(default_factory=dict, compare=False)


def identity(cfg: DictConfig, device_type: str, world: int = 1) -> RunKey:
    """The keys of the run ``cfg`` describes, on a device of ``device_type`` ("auto" means
    different things on different machines: the key says what actually runs), across ``world``
    processes (each with its own BatchNorm statistics: not the run one process makes)."""
    tree = _relevant(cfg, device_type, RESULT_PARTS, world)  # once: a plan's contents may be a download
    dense = {**_relevant(cfg, device_type, DENSE_PARTS, world), "format": DENSE_FORMAT}
    return RunKey(
        _digest(tree),
        _digest(_without_seeds(tree)),
        _digest(dense),
        _digest(_without_seeds(dense)),
        {**_contents(dense), **_contents(tree)},
    )


CONTENT_MARKS = ("files:", "listing:", "sha256:", "sets:")  # what the steps below put in place of a path


def _contents(tree: dict, prefix: str = "") -> dict[str, str]:
    """The options of a keyed ``tree`` that stand for files by their contents (dotted name -> digest)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_contents(value, f"{prefix}{key}."))
        elif isinstance(value, str) and value.startswith(CONTENT_MARKS):
            out[f"{prefix}{key}"] = value
    return out


def _digest(tree) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _without_seeds(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k not in SEEDS}


def _resolved(cfg: DictConfig) -> dict:
    """``cfg`` resolved, as plain dicts and lists."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(tree, dict):  # a DictConfig's container always is
        raise TypeError(f"the config is a {type(tree).__name__}, not a mapping")
    return tree


def _relevant(cfg: DictConfig, device_type: str, parts, world: int = 1) -> dict:
    """The config ``parts`` of ``cfg`` as a key hashes them: each step below drops what leaves the
    run as it was or puts contents in place of a path, in this order (a later step sees an earlier
    one's result)."""
    full = _resolved(cfg)
    tree: dict[str, Any] = {k: full.get(k) for k in parts}
    _drop_unasked(tree)
    _drop_later_defaults(tree, world)
    _checkpoint_by_contents(tree, parts)
    _drop_distillation(tree)
    _own_files_by_contents(tree)
    _drop_location(tree)
    _plan_by_contents(tree)
    _folders_by_contents(tree)
    tree["device"] = device_type
    if world > 1:
        tree["world"] = world
    tree["format"] = FORMAT
    return tree


def _drop_unasked(tree: dict) -> None:
    """Parts that ask for nothing (eval without tasks, augment=none): the run is the one it was
    before they existed."""
    if "eval" in tree and not (tree["eval"] or {}).get("tasks"):
        tree.pop("eval")
    if "augment" in tree and not tree["augment"]:
        tree.pop("augment")
    if tree.get("handover_formats", ()) is None:
        tree.pop("handover_formats")


def _drop_later_defaults(tree: dict, world: int) -> None:
    """Options added after runs were keyed (:data:`LATER`), at their default: the run is the one it
    was. sync_bn in one process synchronises nothing."""
    for part, later in LATER.items():
        node = tree.get(part)
        if not isinstance(node, dict):
            continue
        defaults = _defaults(part, node)
        for entry in later:
            owner, _, option = entry.rpartition(".")  # "Class.option": only that plug-in's
            if owner and not str(node.get("_target_", "")).endswith(f".{owner}"):
                continue
            if option in defaults and node.get(option, defaults[option]) == defaults[option]:
                node.pop(option, None)
        if part == "train" and world == 1:
            node.pop("sync_bn", None)


def _checkpoint_by_contents(tree: dict, parts) -> None:
    """``dense``: only a checkpoint to start from counts, known by its contents wherever it lies."""
    dense = tree.pop("dense", None) or {}
    if "dense" in parts and dense.get("checkpoint"):
        tree["dense"] = {"checkpoint": "sha256:" + checkpoint_digest(dense["checkpoint"]), "strict": dense["strict"]}


def _drop_distillation(tree: dict) -> None:
    """Fine-tuning without distillation: its options change nothing (a run without is the run it was)."""
    tuning = tree.get("finetune")
    if isinstance(tuning, dict) and not tuning.get("distill"):
        for option in DISTILL_OPTIONS:
            tuning.pop(option, None)


def _own_files_by_contents(tree: dict) -> None:
    """A user's own files (dataset=text: no checksum says what they hold) are known by the root
    folder's contents, or by its listing where the plug-in says it is too large to read through
    (an ImageNet folder)."""
    data = tree.get("dataset")
    if isinstance(data, dict) and not VERIFIED & set(data) and isinstance(data.get("root"), str):
        root = Path(data["root"]).expanduser()
        if root.is_dir():
            if _keyed_by_listing(data.get("_target_")):
                data["root"] = "listing:" + listing_digest(root)
            else:
                data["root"] = "files:" + folder_digest(root)


def _drop_location(tree: dict) -> None:
    """Where and how the data are read (:data:`LOCATION`), except a root that now stands for its
    contents."""
    for dotted in LOCATION:
        if dotted == "dataset.root" and str((tree.get("dataset") or {}).get("root", "")).startswith(
            ("files:", "listing:")
        ):
            continue
        parent, leaf = dotted.split(".")
        if isinstance(tree.get(parent), dict):
            tree[parent].pop(leaf, None)


def _plan_by_contents(tree: dict) -> None:
    """A plan by its contents (the scope that reads it too): the same path may hold another plan later."""
    if tree.get("plan"):
        from ..pruning.plan import load_plan

        digest = "sets:" + _digest(load_plan(tree["plan"])["sets"])
        tree["plan"] = digest
        if isinstance(tree.get("scope"), dict) and "source" in tree["scope"]:
            tree["scope"]["source"] = digest


def _folders_by_contents(tree: dict) -> None:
    """Folders of :data:`CONTENTS` (a checkpoint, a tokenizer) by their contents, not their path."""
    for dotted in CONTENTS:
        parent, leaf = dotted.split(".")
        node = tree.get(parent)
        if isinstance(node, dict) and isinstance(node.get(leaf), str) and Path(node[leaf]).expanduser().is_dir():
            node[leaf] = "files:" + folder_digest(Path(node[leaf]).expanduser())


def _defaults(part: str, node: dict) -> dict[str, Any]:
    """The default values of the options of config node ``part``: its schema's (a plug-in's own
    signature, where the node names one)."""
    if part in ("train", "finetune"):
        schema = TrainConfig if part == "train" else FinetuneConfig
        return {f.name: f.default if f.default_factory is MISSING else f.default_factory() for f in fields(schema)}
    try:
        return plugin_defaults(locate(node["_target_"])) if isinstance(node.get("_target_"), str) else {}
    except ImportError:
        return {}


def _keyed_by_listing(target: Any) -> bool:
    """Whether the dataset plug-in ``target`` says its folder is known by its listing."""
    try:
        return bool(getattr(locate(target), "keyed_by_listing", False)) if isinstance(target, str) else False
    except ImportError:
        return False


def checkpoint_digest(path: str) -> str:
    """The SHA-256 of a checkpoint file (read once per process while it is unchanged)."""
    from ..models.checkpoint import checkpoint_file

    return file_digest(checkpoint_file(path))


# --- names ------------------------------------------------------------------------------------


def choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for ``group``, or the plug-in's name where there is none (a config built
    by hand) or its ``_target_`` was overridden (``criterion._target_=pkg.fn``)."""
    chosen = (cfg.get("choices") or {}).get(group)
    if not chosen and "hydra" in cfg:  # a config Hydra composed, its choices not yet copied
        chosen = cfg.hydra.runtime.choices.get(group)
    node = cfg.get(group)
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if chosen and (target is None or _shipped_target(group, chosen) in (None, target)):
        return str(chosen)
    return str(target).rsplit(".", 1)[-1] if target else "none"


@functools.cache
def _shipped_target(group: str, option: str) -> str | None:
    """The ``_target_`` of prunelab's own ``conf/<group>/<option>.yaml`` (None: not one of ours)."""
    path = conf_dir() / group / f"{option}.yaml"
    return read_option(path).get("_target_") if path.is_file() else None


def names(cfg: DictConfig) -> dict[str, str]:
    """The chosen options that name a run (params and tags)."""
    return {g: choice(cfg, g) for g in NAMED}


def experiment_name(cfg: DictConfig) -> str:
    return cfg.tracking.experiment or f"{choice(cfg, 'model')}-{choice(cfg, 'dataset')}"


def run_name(cfg: DictConfig) -> str:
    macs = (cfg.get("budget") or {}).get("macs")
    at = f"macs{macs:g}" if macs is not None else f"{cfg.ratio:g}"
    return f"{choice(cfg, 'method')}-{choice(cfg, 'scope')}-{at}"


def run_tags(key: RunKey, chosen: dict[str, str]) -> dict[str, str]:
    """The tags that identify a pruned run: its keys and the options it was run with."""
    return {
        Tag.ROLE: Role.PRUNED,
        Tag.RUN_KEY: key.run,
        Tag.POINT_KEY: key.point,
        Tag.DENSE_KEY: key.dense,
        **{Tag.group(g): chosen[g] for g in Tag.GROUPS},
    }


def dense_tags(key: RunKey) -> dict[str, str]:
    """The tags that identify a dense run (its run key is the dense key)."""
    return {Tag.ROLE: Role.DENSE, Tag.RUN_KEY: key.dense, Tag.DENSE_KEY: key.dense, Tag.POINT_KEY: key.dense_point}


def params(cfg: DictConfig) -> dict[str, str]:
    """A run's params: the resolved config as ``{"train.lr": "0.002", ...}`` (MLflow params are
    strings; credentials in addresses masked), with the chosen options as ``model``, ``dataset``,
    ``method``, ``criterion``, ``scope`` and ``schedule``."""
    out: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(redact_tree(_resolved(cfg)), "")
    flat = {k: v for k, v in out.items() if not k.endswith("._partial_") and not k.startswith("choices.")}
    return {**flat, **names(cfg)}


def dense_params(cfg: DictConfig, device_type: str) -> dict[str, str]:
    """The dense run's params: what dense training depends on, as the ratio-0 point of a curve."""
    own = {k: v for k, v in params(cfg).items() if k.split(".")[0] in DENSE_PARTS}
    return {**own, "ratio": "0.0", "method": "dense", "scope": "none", "device": device_type}
