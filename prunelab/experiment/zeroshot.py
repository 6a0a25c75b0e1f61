"""Zero-shot accuracy of a language model, as Wanda and SparseGPT report it beside perplexity:
EleutherAI's lm-evaluation-harness (``pip install 'prunelab[lmeval]'``) run in this process on the
model object itself (the pruned weights as they are, nothing saved and reloaded).

``eval.tasks``: the harness's task names (``boolq``, ``piqa``, ...; their data comes from the
Hugging Face hub) or tasks of your own, defined by YAML files in ``eval.include`` (a folder; e.g.
``dataset_path: json`` over a local file). Every numeric figure of a task (``acc``, ``acc_norm``)
is logged as ``zeroshot.<task>.<figure>``; the pruned run logs the dense model's as
``dense.zeroshot.<task>.<figure>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ConfigError
from ..data.files import folder_digest
from ..data.tokens import Tokens
from ..models.lm import CausalLM
from ..names import Metric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZeroShot:
    """What ``eval`` asks for, as values."""

    tasks: tuple[str, ...]
    tokenizer: str | None  # the dataset's tokenizer: the model's own
    include: str | None = None  # a folder of task YAMLs
    limit: int | None = None  # items per task (None: all)
    batch_size: int = 8
    num_fewshot: int = 0
    seed: int = 0  # of a few-shot example's choice

    @property
    def digest(self) -> str:
        """What these scores are of (tasks, their files, the harness's options): the name the dense
        model's scores are cached under."""
        include = Path(self.include).expanduser() if self.include else None
        files = folder_digest(include) if include is not None and include.is_dir() else None
        spec = {**asdict(self), "include": files}
        return "zeroshot-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def check(self, model: nn.Module) -> None:
        """Fail before any training when the harness cannot run on this model."""
        if not isinstance(model, CausalLM):
            raise ConfigError(f"eval.tasks needs model=hf_causal_lm (a Hugging Face LM), not {type(model).__name__}")
        if self.tokenizer is None:
            raise ConfigError("eval.tasks needs the model's tokenizer: set dataset.tokenizer (or model.pretrained)")
        if self.include is not None and not Path(self.include).expanduser().is_dir():
            raise ConfigError(f"eval.include={self.include}: no such folder")
        _harness()

    def __call__(self, model: nn.Module, device: Any) -> dict[str, float]:
        """``zeroshot.<task>.<figure>`` of ``model`` (a :class:`CausalLM`), e.g. ``acc``."""
        assert isinstance(model, CausalLM)
        assert self.tokenizer is not None
        lm_eval, hflm, task_manager = _harness()
        tokenizer = Tokens(self.tokenizer).hf
        was_training = model.training
        try:
            results = lm_eval.simple_evaluate(
                model=hflm(pretrained=model.model, tokenizer=tokenizer, batch_size=self.batch_size, device=str(device)),
                tasks=list(self.tasks),
                task_manager=_tasks(task_manager, self.tasks, self.include),
                num_fewshot=self.num_fewshot,
                limit=self.limit,
                bootstrap_iters=0,
                log_samples=False,
                random_seed=None,  # leave the run's random state alone
                numpy_random_seed=None,
                torch_random_seed=None,
                fewshot_random_seed=self.seed,
            )
        finally:
            model.train(was_training)
        return figures(results["results"], self.tasks)


def figures(results: dict[str, dict[str, Any]], tasks: Sequence[str]) -> dict[str, float]:
    """The harness's per-task results (``{"acc,none": 0.61, "acc_stderr,none": ...}``) as metrics."""
    out = {}
    for task in tasks:
        for key, value in results.get(task, {}).items():
            name, comma, _filter = key.partition(",")  # a figure is "<metric>,<filter>"
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if comma and numeric and not name.endswith("_stderr"):
                out[Metric.zeroshot(task, name)] = float(value)
    return out


def _harness() -> tuple[Any, Any, Any]:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ConfigError(f"eval.tasks needs lm-evaluation-harness: pip install 'prunelab[lmeval]' ({e})") from None
    return lm_eval, HFLM, TaskManager


def _tasks(task_manager: Any, tasks: Sequence[str], include: str | None) -> Any:
    """The harness's task index: only the ``include`` folder's when it holds every task asked for
    (indexing the built-in tasks takes seconds), else the built-in ones too."""
    path = str(Path(include).expanduser()) if include else None
    if path is not None:
        local = task_manager(include_path=path, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    manager = task_manager(include_path=path)
    unknown = sorted(set(tasks) - set(manager.all_tasks))
    if unknown:
        raise ConfigError(f"eval.tasks: no task named {', '.join(unknown)} (built-in, or in eval.include)")
    return manager


__all__ = ["ZeroShot", "figures"]
