"""The typed config schema, registered in Hydra's ConfigStore, and its early validation.

``conf/config.yaml`` pulls ``prunelab_schema`` in first (and each ``conf/method/`` option its own
method schema), so every YAML value is type-checked against these dataclasses while Hydra
composes. Range and choice checks that types cannot express live in ``__post_init__`` (run by
:func:`validate`): the schema is the only validator. The command line composes and validates every
swept config before Hydra starts (``cli.py``); the pruning API shares the ratio and normalize
checks (``prunelab.pruning``). One readable sentence, raised as :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .pruning.errors import PruningError, check_ratio as pruning_check_ratio
from .pruning.methods import check_normalize


class ConfigError(ValueError):
    """A config value is out of range or not one of the allowed options."""


def check_ratio(value: Any) -> float:
    try:
        return pruning_check_ratio(value)
    except PruningError as e:
        raise ConfigError(str(e)) from None


def check_choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        options = ", ".join(allowed) if allowed else "(none are installed)"
        raise ConfigError(f"{key}={value!r} is not allowed: expected one of {options}")


# Each method option has its own schema (conf/method/<option>.yaml pulls it in), so a field one
# method has and another lacks composes where it belongs and is an error elsewhere.
@dataclass
class MethodConfig:
    _target_: str = MISSING
    _partial_: bool = True
    ignore: list[str] = field(default_factory=list)


@dataclass
class UnstructuredConfig(MethodConfig):
    pass


@dataclass
class StructuredConfig(MethodConfig):
    normalize: str = "mean"

    def __post_init__(self):
        try:
            check_normalize(self.normalize)
        except PruningError as e:
            raise ConfigError(str(e)) from None


@dataclass
class NMConfig(MethodConfig):
    n: int = 2
    m: int = 4

    def __post_init__(self):
        if not 0 < self.n < self.m:
            raise ConfigError(f"method.n={self.n}, method.m={self.m}: expected 0 < n < m")


@dataclass
class LayerwiseConfig(MethodConfig):
    """Wanda and SparseGPT (``pruning/layerwise.py``): unstructured, or N:M when n and m are set."""
    ignore: list[str] = field(default_factory=lambda: ["classifier"])
    n: Optional[int] = None
    m: Optional[int] = None
    samples: int = 128  # calibration sequences from the training split (drawn by calibration_seed)

    def __post_init__(self):
        if (self.n is None) != (self.m is None) or (self.n is not None and not 0 < self.n < self.m):
            raise ConfigError(f"method.n={self.n}, method.m={self.m}: expected both unset, or 0 < n < m")
        if self.samples < 1:
            raise ConfigError(f"method.samples={self.samples} must be >= 1")


@dataclass
class SparseGPTConfig(LayerwiseConfig):
    blocksize: Optional[int] = 128  # lazy update (and mask selection) block; None: whole rows
    damp: float = 0.01  # of the mean Hessian diagonal, added to it

    def __post_init__(self):
        super().__post_init__()
        if self.damp < 0:
            raise ConfigError(f"method.damp={self.damp} must be >= 0")


# The shipped schedules' schemas: each schedule's own dataclass fields (one home for their names,
# types and defaults) plus ``_target_``; composing checks the values with the class itself.
def _schedule_schema(cls):
    def __post_init__(self):
        try:
            cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})
        except PruningError as e:
            raise ConfigError(str(e)) from None

    hints = typing.get_type_hints(cls)
    return dataclasses.make_dataclass(
        f"{cls.__name__}Config", [("_target_", str, MISSING)] + [(f.name, hints[f.name], f.default)
                                                                  for f in dataclasses.fields(cls)],
        namespace={"__post_init__": __post_init__})


@dataclass
class BudgetConfig:
    # Prune to at most this fraction of the dense model's MACs: the ratio is searched (any scope).
    macs: Optional[float] = None

    def __post_init__(self):
        if self.macs is not None and not 0 < self.macs <= 1:
            raise ConfigError(f"budget.macs={self.macs} is out of range: expected 0 < budget.macs <= 1")


# The values of train and finetune come from the recipe group (conf/recipe/); these defaults are only
# the schema's fallback when a config is composed without one.
@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    # A partial optimizer (torch.optim.X with _partial_: true); lr is passed separately.
    optimizer: Any = field(default_factory=lambda: {"_target_": "torch.optim.AdamW", "_partial_": True})
    schedule: str = "cosine"

    def __post_init__(self):
        _positive("train", self)
        check_choice("train.schedule", self.schedule, ("cosine", "constant"))


@dataclass
class FinetuneConfig:
    epochs: int = 6
    lr: float = 2e-3
    schedule: str = "cosine"
    # Structured: fine-tune the physically shrunk network (same function, fewer channels, faster);
    # false fine-tunes the masked full-size one. Unstructured always fine-tunes masked.
    shrink: bool = True

    def __post_init__(self):
        if self.epochs < 0:
            raise ConfigError(f"finetune.epochs={self.epochs} must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"finetune.lr={self.lr} must be > 0")
        check_choice("finetune.schedule", self.schedule, ("cosine", "constant"))


def _positive(prefix: str, cfg) -> None:
    for key in ("epochs", "batch_size", "lr"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"{prefix}.{key}={getattr(cfg, key)} must be > 0")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: Optional[str] = None  # default: <model>-<dataset>
    ui: Optional[str] = None  # the UI's address in printed links; default: see prunelab/ui.py


@dataclass
class Config:
    model: Any = MISSING
    dataset: Any = MISSING
    method: Any = MISSING  # one of the method schemas above, by option
    criterion: Any = MISSING  # conf/criterion/: the importance plug-in
    scope: Any = MISSING  # conf/scope/: the allocation plug-in
    schedule: Any = MISSING  # conf/schedule/: when to prune and how to train in between
    plan: Optional[str] = None  # scope=plan: a plan.json file or runs:/RUN_ID/plan.json
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # The option chosen in each config group (model=lenet5 ...), filled in from Hydra when the
    # config is composed (prunelab.keys.with_choices); names experiments, runs and params.
    choices: dict[str, str] = field(default_factory=dict)
    recipe: Optional[str] = None  # the recipe option that set train/finetune (a label; values rule)
    quantize: Any = None  # conf/quantize/: none (empty) or a partial int8 quantizer (prunelab.deploy.int8)
    codebook: Any = None  # conf/codebook/: shared values of the unstructured compact file (compact.py)
    ratio: float = 0.5
    seed: int = 0
    # The seed of the data pruning looks at (calibration samples, a criterion's batches) and of its
    # random choices; None: the run's seed. Like seed, it tells seeds of one point apart.
    calibration_seed: Optional[int] = None
    device: str = "auto"
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cache_dir: Optional[str] = None  # dense-model cache; default: ~/.cache/prunelab/dense
    force: bool = False  # rerun a point even if a FINISHED run with its key exists
    measure_latency: bool = True  # time dense and pruned forward passes on the CPU (cost ledger)
    handover: bool = True  # write the deployment files (model/: program.pt2, model.onnx, ...) and check them

    def __post_init__(self):
        check_ratio(self.ratio)
        node = self.schedule or {}
        target = str(node.get("_target_", "") if isinstance(node, dict) else getattr(node, "_target_", ""))
        if self.budget.macs is not None and target and not target.endswith(".Oneshot"):
            raise ConfigError(f"budget.macs works with schedule=oneshot only (the schedule is {target})")
        if self.quantize and not self.handover:
            raise ConfigError("quantize=int8 quantizes the hand-over's ONNX model: it needs handover=true")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"device={self.device!r} is not allowed: expected auto, cpu, cuda, cuda:N or mps")


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="prunelab_schema", node=Config)
    for name, node in (("unstructured", UnstructuredConfig), ("structured", StructuredConfig), ("nm", NMConfig),
                       ("wanda", LayerwiseConfig), ("sparsegpt", SparseGPTConfig)):
        store.store(group="method", name=f"{name}_schema", node=node)
    from .schedules import Dynamic, Gradual, Iterative, Lottery

    for cls in (Iterative, Gradual, Lottery, Dynamic):
        store.store(group="schedule", name=f"{cls.__name__.lower()}_schema", node=_schedule_schema(cls))


def compose(*overrides: str) -> DictConfig:
    """``conf/config.yaml`` composed with ``overrides``, as ``python -m prunelab`` would (no sweep)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from .paths import conf_dir

    from .keys import with_choices

    register()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return with_choices(hydra_compose("config", overrides=list(overrides), return_hydra_config=True))


def validate(cfg: DictConfig) -> None:
    """Run every ``__post_init__`` check on a composed config and import every ``_target_``
    (raises :class:`ConfigError`), so a bad value or a typo in a plug-in's dotted path stops
    before any data is loaded or any run is opened."""
    try:
        OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as e:  # OmegaConf's own type errors, e.g. from a programmatic compose
        raise ConfigError(str(e).splitlines()[0]) from None
    check_targets(OmegaConf.to_container(cfg, resolve=True))


def check_targets(tree, path: str = "") -> None:
    """Every ``_target_`` in ``tree`` names something importable."""
    from hydra._internal.utils import _locate

    if isinstance(tree, dict):
        target = tree.get("_target_")
        if isinstance(target, str):
            try:
                _locate(target)
            except Exception as e:
                reason = str(e).splitlines()[-1].strip() if str(e).strip() else type(e).__name__
                raise ConfigError(f"{path}_target_={target} cannot be imported: {reason}") from None
        for key, value in tree.items():
            check_targets(value, f"{path}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_targets(value, f"{path}{i}.")
