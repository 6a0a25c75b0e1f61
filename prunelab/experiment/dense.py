"""Train the dense model once per (model, dataset, train config, seed) and cache it on disk.

Several processes of a parallel sweep may ask for the same dense model at once: a file lock makes
one of them train it while the others wait and then load it. Files are written atomically (a
temporary file renamed into place), and the metadata holds the key and the SHA-256 of the
weights: a damaged, truncated or foreign cache file is never loaded, the model is retrained.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.files import file_sha256
from ..data.splits import Splits
from ..names import Metric, Role, Tag
from ..tracking import record, store
from .distributed import Ranks
from .keys import RunKey, dense_tags
from .measure import layer_table, sparsity_summary
from .train import EpochResult, Recipe, evaluate, per_position, perplexity, scores, train

log = logging.getLogger(__name__)


# The dense model's figures, evaluated once (when it is trained or first evaluated) and cached with
# it: every later run and sweep point over it reads them instead of evaluating it again. A language
# model evaluated, not trained (a checkpoint) has no validation figure: the papers' protocol reports
# its test split, and nothing chooses on the validation split.
FIGURES = (Metric.VAL_ACCURACY, Metric.TEST_ACCURACY, Metric.TEST_PERPLEXITY)


@dataclass
class DenseResult:
    key: str
    history: list[EpochResult]
    figures: dict[str, float]  # FIGURES by the names the dense run logs them (perplexity: a language model's)
    from_cache: bool

    @property
    def test_accuracy(self) -> float:
        return self.figures[Metric.TEST_ACCURACY]


def complete(dense: DenseResult, model: nn.Module, data: Splits) -> dict[str, float]:
    """The dense model's figures: the cached ones, its perplexity evaluated only where a cache
    written before perplexity was cached lacks it (a language model's)."""
    if Metric.TEST_PERPLEXITY in dense.figures:
        return dense.figures
    return {**dense.figures, **perplexity(model, data.test)}


def figures_once(cache_dir: Path, key: str, what: str, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Figures of dense model ``key`` that a run asks for beyond :data:`FIGURES` (its zero-shot
    scores for one evaluation config, named by ``what``: a digest of that config): measured by the
    first run that asks (``measure``), cached beside the dense model, read by every later run and
    sweep point over it."""
    path = cache_dir / f"{key}.{what}.json"
    with locked(cache_dir / f"{key}.{what}.lock"):
        with contextlib.suppress(OSError, ValueError):
            found = json.loads(path.read_text())
            if isinstance(found, dict) and all(isinstance(v, float) for v in found.values()):
                log.info("dense model %s: %s read from %s", key, what, path)
                return found
        figures = {k: float(v) for k, v in measure().items()}
        atomic_save(figures, path, lambda o, p: Path(p).write_text(json.dumps(o, indent=1)))
        return figures


@contextmanager
def locked(path: Path):
    """An exclusive advisory lock on ``path`` held for the ``with`` block (across processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def atomic_save(obj, path: Path, save: Callable) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_verified(model: nn.Module, key: str, weights: Path, meta: Path) -> dict:
    """The cached metadata, after loading weights that match it (raises ValueError otherwise).
    A model that was not trained (``train.epochs=0``: the checkpoint it was built from is the dense
    model) has no weights cached, only its evaluation."""
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable metadata ({e})") from None
    if info.get("key") != key:
        raise ValueError(f"the files belong to dense model {info.get('key')!r}")
    if info.get("trained") is False:
        return info
    data = weights.read_bytes()  # read once: what is checked is what is loaded
    if info.get("sha256") != hashlib.sha256(data).hexdigest():
        raise ValueError("the weights do not match their checksum (damaged or truncated)")
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return info


def cached(cache_dir: Path, key: str) -> bool:
    """Whether the cache holds dense model ``key`` (:func:`dense_model` checks its files as it loads them)."""
    return (cache_dir / f"{key}.json").is_file()


def dense_model(
    model: nn.Module,
    key: str,
    cache_dir: Path,
    train: Callable[[nn.Module], tuple[list[EpochResult], dict[str, float]]],
    trains: bool = True,
) -> DenseResult:
    """Load the cached weights for ``key`` into ``model``, or ``train(model)`` and cache them.

    ``train`` returns ``(history, figures)``: :data:`FIGURES`, cached with the weights (a cache
    written before perplexity was cached lacks it: the caller evaluates it). ``trains=False`` (no epochs: the
    model as built is the dense model, e.g. a pretrained checkpoint): ``train`` only evaluates it,
    and only that evaluation is cached, not a copy of the weights."""
    weights, meta = cache_dir / f"{key}.pt", cache_dir / f"{key}.json"
    with locked(cache_dir / f"{key}.lock"):
        for stale in [*cache_dir.glob(f".{key}.pt.*.tmp"), *cache_dir.glob(f".{key}.json.*.tmp")]:
            stale.unlink(missing_ok=True)  # a writer killed mid-write (we hold the key's lock)
        if weights.is_file() or meta.is_file():
            # a load that fails half-way is undone (a model that is not trained is not loaded)
            initial = copy.deepcopy(model.state_dict()) if trains else None
            try:
                info = _load_verified(model, key, weights, meta)
                log.info("dense model %s loaded from %s (no training)", key, weights)
                figures = {k: float(info[k]) for k in FIGURES if k in info}
                if Metric.TEST_ACCURACY not in figures:
                    raise KeyError("the dense model's test accuracy")
                return DenseResult(key, [EpochResult(**e) for e in info["history"]], figures, from_cache=True)
            except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
                log.warning("dense model cache %s not used, retraining: %s", weights, e)
                for path in (weights, meta):
                    path.unlink(missing_ok=True)
                if initial is not None:
                    model.load_state_dict(initial)
        history, figures = train(model)
        if trains:
            atomic_save(model.state_dict(), weights, torch.save)
        info = {
            "key": key,
            "trained": trains,
            "sha256": file_sha256(weights) if trains else None,
            "history": [asdict(e) for e in history],
            **figures,  # under the names the dense run logs them by
        }
        atomic_save(info, meta, lambda o, p: Path(p).write_text(json.dumps(o, indent=1)))
        log.info("dense model %s %s and cached in %s", key, "trained" if trains else "evaluated", meta)
        return DenseResult(key, history, dict(figures), from_cache=False)


class DenseRun:
    """The dense model's MLflow run, the ratio-0 point of every curve: opened while the model
    trains, so its epochs appear as they finish and an interrupted training leaves a KILLED run
    holding them; or logged from the cache, once per dense model and experiment."""

    def __init__(
        self,
        experiment_id: str,
        key: RunKey,
        params: dict[str, str],
        parent_run_id: str | None = None,
        sweep_tags: dict[str, str] | None = None,
    ):
        self.experiment_id, self.key, self.params = experiment_id, key, params
        self.parent_run_id, self.sweep_tags = parent_run_id, dict(sweep_tags or {})

    def _open(self):
        tags = {**dense_tags(self.key), **self.sweep_tags, **record.tags()}
        return store.run(self.experiment_id, f"dense-{self.key.dense[:8]}", tags, self.parent_run_id)

    @staticmethod
    def _log_epoch(run: store.Run, e: EpochResult) -> None:
        run.log_metrics(
            {
                Metric.TRAIN_LOSS: e.loss,
                Metric.TRAIN_ACCURACY: e.train_accuracy,
                Metric.TRAIN_VAL_ACCURACY: e.val_accuracy,
            },
            step=e.epoch,
        )

    @staticmethod
    def _log_result(run: store.Run, model, figures: dict[str, float]) -> None:
        run.log_metrics(
            {
                **figures,
                **{Metric.at(Metric.DENSE, k): v for k, v in figures.items()},
                **sparsity_summary(layer_table(model)),
                Metric.SPARSITY_PRUNABLE: 0.0,
            }
        )

    def train(
        self, model, data: Splits, recipe: Recipe, seed: int, ranks: Ranks | None = None
    ) -> tuple[list[EpochResult], dict[str, float]]:
        """Train ``model`` (the dense cache calls this) with the run open; returns its history and
        its figures (:data:`FIGURES`, one pass over each split). With ``ranks`` (rank 0's call) the
        other ranks train along."""
        with self._open() as run:
            run.log_params(self.params)
            on_epoch = lambda e: self._log_epoch(run, e)
            history = train(model, data, recipe, seed, on_epoch=on_epoch, desc="dense", ranks=ranks)
            validates = recipe.epochs > 0 or not per_position(data.test)  # (FIGURES: a checkpoint LM's is test only)
            val = {Metric.VAL_ACCURACY: evaluate(model, data.val)["accuracy"]} if validates else {}
            figures = {**val, **scores(model, data.test)}
            self._log_result(run, model, figures)
        return history, figures

    def log_cached(self, dense: DenseResult, model, data: Splits, lock_dir: Path) -> None:
        """After the cache: tag this experiment's run of this dense model as one of the sweep's
        points, or log it from the cached history (a lock keeps parallel workers from doing it twice)."""
        with locked(lock_dir / f"{self.key.dense}.mlflow.lock"):
            found = store.finished_run(self.experiment_id, {Tag.ROLE: Role.DENSE, Tag.DENSE_KEY: self.key.dense})
            if found is not None:
                store.add_tags(found.info.run_id, self.sweep_tags)
                return
            with self._open() as run:
                run.log_params(self.params)
                for e in dense.history:
                    self._log_epoch(run, e)
                self._log_result(run, model, complete(dense, model, data))
