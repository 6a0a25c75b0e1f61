"""The edge between the config and the code: a composed config, checked, as the typed values the
runner's stages take (plug-ins instantiated, recipes built, names and keys worked out). Below the
runner nothing reads the config.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..config import Config, ConfigError, TrackingConfig, validate
from ..contracts import Augmentation, Codebook, Dataset, Model, Quantizer
from ..models.checkpoint import checkpoint_file
from ..paths import cache_dir as user_cache_dir
from ..pruning.contracts import Criterion, Method, Schedule, Scope
from ..pruning.schedules import as_schedule
from ..redact import redact
from .distill import Distill
from .distributed import Ranks, from_environment
from .keys import RunKey, dense_params, experiment_name, identity, names, params, run_name
from .lora import Lora
from .train import Recipe, Speed
from .zeroshot import ZeroShot


@dataclass(frozen=True)
class Settings:
    """One run, as values."""

    names: dict[str, str]  # the option chosen in each group that names a run
    experiment: str  # the MLflow experiment
    run_name: str
    key: RunKey
    params: dict[str, str]  # the pruned run's MLflow params
    dense_params: dict[str, str]  # the dense run's
    config_yaml: str  # the resolved config, credentials masked (the run's config.yaml)
    model: Model  # the factory (prunelab.models.build calls it)
    dataset: Dataset  # the loader, given the seed
    augment: Augmentation | None  # the training batches' augmentation plug-in (prunelab.data.augment)
    checkpoint: Path | None  # dense.checkpoint: the trained weights the dense model is
    strict: bool  # dense.strict: every key of model and checkpoint must match
    ranks: Ranks | None  # the processes of this run (torchrun), or None for one
    method: Method
    criterion: Criterion
    scope: Scope
    schedule: Schedule
    ratio: float
    seed: int
    calibration_seed: int  # the seed of what pruning looks at (the run's seed unless set)
    budget_macs: float | None
    device: torch.device
    train: Recipe  # dense training (and a lottery level's retraining)
    pretrained: bool  # built from a checkpoint (model.pretrained, dense.checkpoint): it is the dense model
    finetune: Recipe  # fine-tuning: its epochs, lr and schedule, train's optimizer and batch size
    shrink: bool  # structured: fine-tune the physically shrunk network
    distill: Distill | None  # fine-tuning taught by the dense model (finetune.distill)
    lora: Lora | None  # fine-tuning of low-rank adapters, merged with the mask held (finetune.lora)
    tracking: TrackingConfig
    cache: Path  # the dense-model cache and the schedules' checkpoints
    force: bool
    measure_latency: bool
    handover: bool
    handover_formats: tuple[str, ...] | None  # None: the hand-over's default by the model's size
    quantize: Quantizer | None  # ONNX bytes, raw calibration inputs -> int8 ONNX bytes
    codebook: Codebook | None  # the compact file's shared values
    zeroshot: ZeroShot | None  # eval.tasks, when there are any
    tokenizer: str | None  # a language model's tokenizer (dataset.tokenizer): handed over with it

    @property
    def dense_recipe(self) -> Recipe:
        """The dense stage's training: none for a checkpoint (evaluated as it is) or train.epochs=0."""
        return dataclasses.replace(self.train, epochs=0) if self.pretrained else self.train

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Settings:
        """Check ``cfg`` (:func:`prunelab.config.validate`) and resolve it."""
        validate(cfg)
        ranks = from_environment()
        device = resolve_device(cfg.device, ranks)
        if ranks is not None and re.fullmatch(r"cuda:\d+", cfg.device):
            raise ConfigError(
                f"device={cfg.device} under torchrun: each rank takes its own GPU (LOCAL_RANK); use device=cuda"
            )
        if ranks is not None and cfg.train.sync_bn:
            if device.type != "cuda":
                raise ConfigError("train.sync_bn=true needs CUDA devices: PyTorch's SyncBatchNorm runs on GPUs only")
            ranks = dataclasses.replace(ranks, sync_bn=True)
        c = OmegaConf.to_object(cfg)  # the typed schema: train, finetune, tracking as dataclasses
        if not isinstance(c, Config):
            raise ConfigError("the config was not composed against prunelab's schema (prunelab_schema)")

        def make(node):
            return instantiate(node, _convert_="all") if node else None

        optimizer = make(cfg.train.optimizer)
        t = c.train
        speed = Speed(str(t.precision), t.channels_last, t.compile)
        train = Recipe(
            t.epochs, t.batch_size, t.lr, optimizer, t.schedule, tuple(t.milestones), t.gamma, t.label_smoothing, speed
        )
        finetune = dataclasses.replace(
            train,
            epochs=c.finetune.epochs,
            lr=c.finetune.lr,
            schedule=c.finetune.schedule,
            milestones=tuple(c.finetune.milestones),
        )
        checkpoint = checkpoint_file(c.dense.checkpoint) if c.dense.checkpoint else None
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else user_cache_dir() / "dense"
        tokenizer = cfg.dataset.get("tokenizer")  # a language model's own (None: bytes)
        return cls(
            names=names(cfg),
            experiment=experiment_name(cfg),
            run_name=run_name(cfg),
            key=identity(cfg, device.type, ranks.world if ranks else 1),
            params=params(cfg),
            dense_params=dense_params(cfg, device.type),
            config_yaml=redact(OmegaConf.to_yaml(cfg, resolve=True)),
            model=make(cfg.model),
            dataset=make(cfg.dataset),
            augment=make(cfg.augment),
            checkpoint=checkpoint,
            strict=c.dense.strict,
            ranks=ranks,
            method=make(cfg.method),
            criterion=make(cfg.criterion),
            scope=make(cfg.scope),
            schedule=as_schedule(make(cfg.schedule)),
            ratio=cfg.ratio,
            seed=cfg.seed,
            calibration_seed=cfg.seed if cfg.calibration_seed is None else cfg.calibration_seed,
            budget_macs=cfg.budget.macs,
            device=device,
            train=train,
            pretrained=bool(cfg.model.get("pretrained")) or checkpoint is not None,
            finetune=finetune,
            shrink=c.finetune.shrink,
            distill=Distill(c.finetune.alpha, c.finetune.temperature, t.label_smoothing)
            if c.finetune.distill
            else None,
            lora=Lora(
                c.finetune.lora_rank,
                c.finetune.lora_alpha,
                c.finetune.lora_dropout,
                tuple(c.finetune.lora_targets) if c.finetune.lora_targets is not None else None,
            )
            if c.finetune.lora
            else None,
            tracking=c.tracking,
            cache=cache,
            force=cfg.force,
            measure_latency=cfg.measure_latency,
            handover=cfg.handover,
            handover_formats=tuple(cfg.handover_formats) if cfg.handover_formats is not None else None,
            quantize=make(cfg.quantize),
            codebook=make(cfg.codebook),
            zeroshot=ZeroShot(
                tuple(c.eval.tasks),
                tokenizer,
                c.eval.include,
                c.eval.limit,
                c.eval.batch_size,
                c.eval.num_fewshot,
                cfg.seed,
            )
            if c.eval.tasks
            else None,
            tokenizer=tokenizer,
        )


def resolve_device(name: str, ranks: Ranks | None = None) -> torch.device:
    """The device ``name`` means here; each of several processes on a machine takes its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but PyTorch sees no CUDA device")
    if name == "cuda" and ranks is not None:
        return torch.device("cuda", ranks.local_rank)
    return torch.device(name)
