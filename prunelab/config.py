"""The typed config schema, registered in Hydra's ConfigStore, and its early validation.

``conf/config.yaml`` pulls ``prunelab_schema`` in first, and each shipped plug-in option
(``conf/{method,criterion,scope,schedule}/<option>.yaml``) the schema of its class: the class's
own fields, with their types and defaults (:func:`schema_of`), so a plug-in's options, defaults
and checks have one home, the class. Every YAML value is type-checked while Hydra composes; range
and choice checks that types cannot express run in ``__post_init__`` (by :func:`validate`), and
every plug-in's options are checked against its ``_target_``'s signature (``prunelab.plugins``).
The command line composes and validates every swept config before Hydra starts (``cli.py``). One
readable sentence, raised as a :class:`~prunelab.errors.UserError`.

Nothing here imports the pruning code at load time: the plug-ins' schemas are derived when
:func:`register` runs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from .errors import UserError
from .paths import conf_dir
from .plugins import RUNTIME, check_options, locate, read_option

# Config groups whose chosen option names a run (the experiment, the run, its params).
GROUPS = (
    "model",
    "dataset",
    "augment",
    "method",
    "criterion",
    "scope",
    "schedule",
    "recipe",
    "quantize",
    "codebook",
)
# Groups whose shipped options compose against a schema derived from their plug-in (its class's
# fields or its function's parameters): the plug-in holds the defaults, the YAML what differs.
TYPED_GROUPS = ("method", "criterion", "scope", "schedule", "dataset", "model", "augment", "quantize", "codebook")
# Groups whose plug-ins are built whole, never partial (their runs were keyed without _partial_).
WHOLE_GROUPS = ("augment",)
# Plug-in nodes whose options are checked against their _target_ (group -> where it sits).
PLUGIN_NODES = {
    "model": "model",
    "dataset": "dataset",
    "augment": "augment",
    "method": "method",
    "criterion": "criterion",
    "scope": "scope",
    "schedule": "schedule",
    "quantize": "quantize",
    "codebook": "codebook",
    "optimizer": "train.optimizer",
}


class ConfigError(UserError, ValueError):
    """A config value is out of range or not one of the allowed options."""


def check_choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        options = ", ".join(allowed) if allowed else "(none are installed)"
        raise ConfigError(f"{key}={value!r} is not allowed: expected one of {options}")


def _ratio(value: Any) -> None:
    from .pruning.errors import check_ratio

    check_ratio(value)


@dataclass
class BudgetConfig:
    # Prune to at most this fraction of the dense model's MACs: the ratio is searched (any scope).
    macs: float | None = None

    def __post_init__(self):
        if self.macs is not None:
            from .pruning.budget import check_budget

            check_budget(self.macs)


# A recipe (conf/recipe/) holds the values of train and finetune it sets (MISSING here: a config
# composes with one, conf/config.yaml's default); the defaults below are those of options a recipe
# may leave out.
@dataclass
class TrainConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    # A partial optimizer (torch.optim.X with _partial_: true); lr is passed separately.
    optimizer: Any = MISSING
    schedule: str = MISSING  # cosine | step (lr x gamma after each of milestones, in epochs) | constant
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    label_smoothing: float = 0.0
    # How fast, also for fine-tuning: autocast (32 | bf16 | fp16), NHWC layout, torch.compile.
    precision: str = "32"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False  # several processes: BatchNorm statistics over the global batch

    def __post_init__(self):
        if self.epochs < 0:  # 0: the model as built is the dense model (a pretrained checkpoint)
            raise ConfigError(f"train.epochs={self.epochs} must be >= 0")
        for key in ("batch_size", "lr", "gamma"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be > 0")
        check_schedule("train", self.schedule, self.milestones, self.epochs)
        if self.schedule != "step" and self.gamma != 0.1:
            raise ConfigError(f"train.gamma={self.gamma} is the step schedule's: set train.schedule=step")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"train.label_smoothing={self.label_smoothing}: expected 0 <= label_smoothing < 1")
        check_choice("train.precision", str(self.precision), ("32", "bf16", "fp16"))


def check_schedule(where: str, schedule: str, milestones, epochs: int) -> None:
    check_choice(f"{where}.schedule", schedule, ("cosine", "step", "constant"))
    if schedule == "step" and not milestones:
        raise ConfigError(f"{where}.schedule=step needs {where}.milestones, e.g. [100, 150] (epochs)")
    if schedule != "step" and milestones:
        raise ConfigError(f"{where}.milestones are the step schedule's: set {where}.schedule=step")
    if list(milestones) != sorted(set(milestones)) or any(m < 1 for m in milestones):
        raise ConfigError(f"{where}.milestones={list(milestones)}: expected increasing epochs >= 1")
    if epochs and milestones and milestones[-1] > epochs:  # (0 epochs: a checkpoint, nothing trains)
        raise ConfigError(
            f"{where}.milestones={list(milestones)}: {where}.epochs={epochs} never reaches {milestones[-1]}"
        )


@dataclass
class FinetuneConfig:
    epochs: int = MISSING
    lr: float = MISSING
    schedule: str = MISSING
    milestones: list[int] = field(default_factory=list)
    # Structured: fine-tune the physically shrunk network (same function, fewer channels, faster);
    # false fine-tunes the masked full-size one. Unstructured always fine-tunes masked.
    shrink: bool = True
    # Recovery by distillation (prunelab/experiment/distill.py): the dense model teaches, the loss
    # alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy, T = temperature.
    distill: bool = False
    alpha: float = 0.5
    temperature: float = 2.0
    # Recovery by LoRA (prunelab/experiment/lora.py; pip install 'prunelab[lora]'): adapters of rank
    # lora_rank (scaled lora_alpha / lora_rank, dropout lora_dropout) on the lora_targets layers (None:
    # every linear layer of the repeated blocks) train, every other weight frozen; merged with the mask held.
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None

    def __post_init__(self):
        if self.epochs < 0:
            raise ConfigError(f"finetune.epochs={self.epochs} must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"finetune.lr={self.lr} must be > 0")
        check_schedule("finetune", self.schedule, self.milestones, self.epochs)
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"finetune.alpha={self.alpha}: expected 0 <= alpha <= 1")
        if not self.temperature > 0:
            raise ConfigError(f"finetune.temperature={self.temperature} must be > 0")
        for option in ("alpha", "temperature"):
            if not self.distill and getattr(self, option) != getattr(FinetuneConfig, option):
                raise ConfigError(f"finetune.{option} is distillation's option: it needs finetune.distill=true")
        for option in ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets"):
            if not self.lora and getattr(self, option) != getattr(FinetuneConfig, option):
                raise ConfigError(f"finetune.{option} is LoRA's option: it needs finetune.lora=true")


@dataclass
class DenseConfig:
    # A trained model to start from instead of training one: a state dict (.pt/.pth/.safetensors)
    # or a module saved whole. It is the dense model: evaluated and logged, never trained.
    checkpoint: str | None = None
    strict: bool = True  # every key of the model and the checkpoint matched (false: the ones that match)


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None  # default: <model>-<dataset>
    ui: str | None = None  # the UI's address in printed links; default: see prunelab/tracking/ui.py


@dataclass
class EvalConfig:
    # Zero-shot tasks of lm-evaluation-harness (pip install 'prunelab[lmeval]'), run on the dense and
    # the pruned language model: built-in names or tasks defined by YAML files in include (a folder).
    tasks: list[str] = field(default_factory=list)
    include: str | None = None
    limit: int | None = None  # items per task; null: all
    batch_size: int = 8
    num_fewshot: int = 0

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit={self.limit} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size={self.batch_size} must be >= 1")
        if self.num_fewshot < 0:
            raise ConfigError(f"eval.num_fewshot={self.num_fewshot} must be >= 0")


@dataclass
class Config:
    model: Any = MISSING
    dataset: Any = MISSING
    augment: Any = None  # conf/augment/: none (empty) or the training batches' augmentation plug-in
    method: Any = MISSING  # conf/method/: the pattern plug-in
    criterion: Any = MISSING  # conf/criterion/: the importance plug-in
    scope: Any = MISSING  # conf/scope/: the allocation plug-in
    schedule: Any = MISSING  # conf/schedule/: when to prune and how to train in between
    plan: str | None = None  # scope=plan: a plan.json file or runs:/RUN_ID/plan.json
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # The option chosen in each config group (model=lenet5 ...), filled in from Hydra when the
    # config is composed (with_choices); names experiments, runs and params.
    choices: dict[str, str] = field(default_factory=dict)
    recipe: str | None = None  # the recipe option that set train/finetune (a label; values rule)
    quantize: Any = None  # conf/quantize/: none (empty) or a partial int8 quantizer (prunelab.deploy.int8)
    codebook: Any = None  # conf/codebook/: shared values of the unstructured compact file
    ratio: float = 0.5
    seed: int = 0
    # The seed of the data pruning looks at (calibration samples, a criterion's batches) and of its
    # random choices; None: the run's seed. Like seed, it tells seeds of one point apart.
    calibration_seed: int | None = None
    device: str = "auto"
    train: TrainConfig = MISSING  # the recipe's (conf/recipe/)
    dense: DenseConfig = field(default_factory=DenseConfig)
    finetune: FinetuneConfig = MISSING  # the recipe's
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache_dir: str | None = None  # dense-model cache; default: ~/.cache/prunelab/dense
    force: bool = False  # rerun a point even if a FINISHED run with its key exists
    measure_latency: bool = True  # time dense and pruned forward passes on the CPU (cost ledger)
    handover: bool = True  # write the deployment files (model/: program.pt2, model.onnx, ...) and check them
    # Which of them (deploy/handover.py FORMATS: hf, weights, program, onnx, compact); None: every
    # one that applies below LARGE_BYTES of weights, above it the Hugging Face folder or the weights
    handover_formats: list[str] | None = None

    def __post_init__(self):
        _ratio(self.ratio)
        node = self.schedule or {}
        target = str(node.get("_target_", "") if isinstance(node, dict) else getattr(node, "_target_", ""))
        if self.budget.macs is not None and target and not target.endswith(".Oneshot"):
            raise ConfigError(f"budget.macs works with schedule=oneshot only (the schedule is {target})")
        if isinstance(self.augment, dict) and self.augment and "_target_" not in self.augment:
            raise ConfigError(
                f"augment=none takes no options ({', '.join(self.augment)}): choose augment=crop_flip or imagenet"
            )
        if self.quantize and not self.handover:
            raise ConfigError("quantize=int8 quantizes the hand-over's ONNX model: it needs handover=true")
        from .deploy.handover import check_formats

        check_formats(self.handover_formats, bool(self.quantize))
        if not (self.device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"device={self.device!r} is not allowed: expected auto, cpu, cuda, cuda:N or mps")


# --- the plug-ins' schemas, derived from their classes ----------------------------------------


def schema_of(target: Any, runtime: tuple[str, ...] = (), partial: bool = True) -> type:
    """A structured-config dataclass with ``target``'s options (names, types, defaults) plus
    ``_target_`` and ``_partial_``: a dataclass plug-in's fields (composing runs its own checks on
    the values; for a ``_target_`` overridden to another plug-in, that one's options are checked by
    :func:`validate`), or a function's or class's keyword parameters less the ``runtime`` ones the
    run passes itself. The YAML option then holds only ``_target_`` and what differs. ``partial``:
    the option may be ``_partial_`` (a plug-in built whole, an augmentation, has no such field)."""
    if dataclasses.is_dataclass(target) and isinstance(target, type):
        return _dataclass_schema(target, partial)
    hints = _hints(target)
    own = []
    for p in inspect.signature(target).parameters.values():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name in runtime:
            continue
        default = MISSING if p.default is inspect.Parameter.empty else p.default
        own.append((p.name, _composable(hints.get(p.name, Any), default), _field(default)))
    return dataclasses.make_dataclass(f"{target.__name__}_Config", [*_special(partial), *own])


def _special(partial: bool) -> list[tuple[str, Any, Any]]:
    """The fields Hydra reads: ``_target_``, and ``_partial_`` where the plug-in may be partial."""
    target = [("_target_", str, field(default=MISSING))]
    return [*target, ("_partial_", bool, field(default=False))] if partial else target


def _dataclass_schema(cls: type, partial: bool = True) -> type:
    target = f"{cls.__module__}.{cls.__qualname__}"

    def __post_init__(self):
        if self._target_ in (target, _public_path(cls)):
            cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    hints = typing.get_type_hints(cls)
    own = [
        (
            f.name,
            _composable(hints[f.name], f.default),
            field(default=f.default)
            if f.default is not dataclasses.MISSING
            else field(default_factory=f.default_factory),
        )
        for f in dataclasses.fields(cls)
        if f.init
    ]
    return dataclasses.make_dataclass(
        f"{cls.__name__}Config", [*_special(partial), *own], namespace={"__post_init__": __post_init__}
    )


def _hints(target: Any) -> dict[str, Any]:
    """``target``'s resolved annotations (none where a name in them only exists for type checkers)."""
    try:
        init = vars(target).get("__init__") if isinstance(target, type) else None
        return typing.get_type_hints(init or target)
    except Exception:
        return {}


def _field(default: Any) -> Any:
    """A dataclass field holding ``default`` (a fresh list or dict each time: they are mutable)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default))
    return field(default=default)


@functools.cache
def _composable_cached(hint: Any) -> Any:
    try:
        OmegaConf.structured(dataclasses.make_dataclass("Probe", [("x", hint, field(default=MISSING))]))
    except Exception:
        return Any
    return hint


def _composable(hint: Any, default: Any) -> Any:
    """``hint`` where OmegaConf can check it (and the default fits it), else ``Any``: a type like
    ``Sequence[int]`` or ``Path`` is left to the plug-in, which checks its own arguments. A mapping
    is ``Any`` too: OmegaConf cannot merge a command line's ``model.config={...}`` into a typed
    mapping that is None."""
    if dict in (typing.get_origin(hint), hint) or any(dict in (typing.get_origin(a), a) for a in typing.get_args(hint)):
        return Any
    try:
        hint = _composable_cached(hint)
    except TypeError:  # unhashable
        return Any
    if hint is Any or default is MISSING or default is dataclasses.MISSING:
        return hint
    try:
        OmegaConf.structured(dataclasses.make_dataclass("Probe", [("x", hint, _field(default))]))
    except Exception:
        return Any
    return hint


def _public_path(cls: type) -> str:
    """``prunelab.pruning.Structured``: the path the shipped YAML names (the package re-exports)."""
    return f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__qualname__}"


def schema_name(target: Any) -> str:
    """The ConfigStore name a YAML option pulls its plug-in's schema in by (``structured_schema``,
    ``fashion_mnist_schema``)."""
    return f"{target.__name__.lower()}_schema"


@functools.cache
def plugin_schemas() -> dict[tuple[str, str], tuple[Any, type]]:
    """(group, schema name) -> (plug-in, schema) for every shipped option's plug-in."""
    found = {}
    for group in TYPED_GROUPS:
        for path in sorted((conf_dir() / group).glob("*.yaml")):
            target = read_option(path).get("_target_")
            if target is None:  # none.yaml: the group's empty choice
                continue
            plugin = locate(target)
            schema = schema_of(plugin, RUNTIME.get(group, ()), partial=group not in WHOLE_GROUPS)
            found[(group, schema_name(plugin))] = (plugin, schema)
    return found


def register() -> None:
    """Store the schema and the plug-ins' schemas in Hydra's ConfigStore (before composing)."""
    store = ConfigStore.instance()
    store.store(name="prunelab_schema", node=Config)
    for (group, name), (_, schema) in plugin_schemas().items():
        store.store(group=group, name=name, node=schema)


def not_an_option(cfg: DictConfig, full_key: str) -> str | None:
    """Why ``full_key`` (``method.normalise``) cannot be set in ``cfg`` (composed without it), in
    the sentence :func:`prunelab.plugins.check_options` says, naming the options the plug-in takes;
    None when ``full_key`` is not an option of a plug-in."""
    for group, where in PLUGIN_NODES.items():
        if full_key.startswith(f"{where}.") and "." not in full_key[len(where) + 1 :]:
            node = OmegaConf.select(cfg, where)
            target = node.get("_target_") if isinstance(node, DictConfig) else None
            if target is None:
                return None
            chosen = (cfg.get("choices") or {}).get(group)
            label = f"{group}={chosen}" if chosen else f"{where}._target_={target}"
            try:
                check_options(group, label, locate(target), [full_key[len(where) + 1 :]])
            except UserError as e:
                return str(e)
            except ImportError:
                return None
    return None


# --- composing and validating -----------------------------------------------------------------


def with_choices(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``choices`` filled in from Hydra's runtime choices (a config composed with
    ``return_hydra_config=True``, or the running Hydra app's), the ``hydra`` node dropped."""
    from hydra.core.hydra_config import HydraConfig

    runtime = None
    if "hydra" in cfg:
        runtime = cfg.hydra.runtime.choices
    elif HydraConfig.initialized():
        runtime = HydraConfig.get().runtime.choices
    overrides = cfg.hydra.overrides.task if "hydra" in cfg else HydraConfig.get().overrides.task if runtime else []
    with open_dict(cfg):
        if runtime is not None:
            cfg.choices = {g: str(runtime[g]) for g in GROUPS if runtime.get(g) is not None}
        cfg.pop("hydra", None)
    _check_taken(cfg, [str(o) for o in overrides])
    return cfg


def _check_taken(cfg: DictConfig, overrides: list[str]) -> None:
    """A criterion or scope chosen on the command line (``overrides``) for a method that does not
    take one is refused (:attr:`prunelab.pruning.contracts.Method.takes`); one that comes with the
    defaults or an experiment's overlay is the method's to ignore."""
    from .pruning.contracts import CHOSEN, refuse_untaken

    given = {o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] for o in overrides if "=" in o}
    chosen = {g: str((cfg.get("choices") or {}).get(g, "?")) for g in CHOSEN if g in given}
    target = OmegaConf.select(cfg, "method._target_")
    if not chosen or not isinstance(target, str):
        return
    try:
        method = locate(target)
    except ImportError:
        return  # validate() says it in its own line
    label = f"method={(cfg.get('choices') or {}).get('method', target)}"
    try:
        refuse_untaken(method, label, chosen)
    except UserError as e:
        raise ConfigError(str(e)) from None


def compose(*overrides: str) -> DictConfig:
    """``conf/config.yaml`` composed with ``overrides``, as ``python -m prunelab`` would (no sweep)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return with_choices(hydra_compose("config", overrides=list(overrides), return_hydra_config=True))


def validate(cfg: DictConfig) -> None:
    """Run every ``__post_init__`` check on a composed config, import every ``_target_`` and check
    every plug-in's options against it (raises :class:`~prunelab.errors.UserError`), so a bad
    value, an option a plug-in does not take or a typo in a plug-in's dotted path stops before any
    data is loaded or any run is opened."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(tree, dict):  # a DictConfig's container always is
            raise ConfigError(f"the config is a {type(tree).__name__}, not a mapping")
        check_targets(tree)
        _check_plugin_options(tree)
        OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except UserError as e:  # a plug-in's own check (its class's __post_init__), or an option it lacks
        raise ConfigError(str(e)) from None
    except Exception as e:  # OmegaConf's own type errors, e.g. from a programmatic compose
        if isinstance(e.__cause__, UserError):
            raise ConfigError(str(e.__cause__)) from None
        raise ConfigError(str(e).splitlines()[0]) from None


def _at(tree: dict, where: str) -> Any:
    """The value at the dotted path ``where`` of ``tree`` (None where a level is missing)."""
    node: Any = tree
    for key in where.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _check_plugin_options(tree: dict) -> None:
    choices = tree.get("choices") or {}
    for group, where in PLUGIN_NODES.items():
        node = _at(tree, where)
        if isinstance(node, dict) and isinstance(node.get("_target_"), str):
            label = f"{group}={choices[group]}" if group in choices else f"{where}._target_={node['_target_']}"
            check_options(group, label, locate(node["_target_"]), list(node))


def check_targets(tree, path: str = "") -> None:
    """Every ``_target_`` in ``tree`` names something importable."""
    if isinstance(tree, dict):
        target = tree.get("_target_")
        if isinstance(target, str):
            try:
                locate(target)
            except Exception as e:
                reason = str(e).splitlines()[-1].strip() if str(e).strip() else type(e).__name__
                raise ConfigError(f"{path}_target_={target} cannot be imported: {reason}") from None
        for key, value in tree.items():
            check_targets(value, f"{path}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_targets(value, f"{path}{i}.")
