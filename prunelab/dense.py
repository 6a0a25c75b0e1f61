"""Train the dense model once per (model, dataset, train config, seed) and cache it on disk.

Several processes of a parallel sweep may ask for the same dense model at once: a file lock makes
one of them train it while the others wait and then load it. Files are written atomically (a
temporary file renamed into place), and the metadata holds the key and the SHA-256 of the
weights: a damaged, truncated or foreign cache file is never loaded, the model is retrained.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import io
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import mlflow
from omegaconf import DictConfig

from . import keys, tracking
from .data import Splits, file_sha256
from .measure import layer_table, sparsity_summary
from .train import EpochResult, perplexity, train_dense

log = logging.getLogger(__name__)


@dataclass
class DenseResult:
    key: str
    history: list[EpochResult]
    val_accuracy: float
    test_accuracy: float
    from_cache: bool


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
    """The cached metadata, after loading weights that match it (raises ValueError otherwise)."""
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable metadata ({e})") from None
    if info.get("key") != key:
        raise ValueError(f"the files belong to dense model {info.get('key')!r}")
    data = weights.read_bytes()  # read once: what is checked is what is loaded
    if info.get("sha256") != hashlib.sha256(data).hexdigest():
        raise ValueError("the weights do not match their checksum (damaged or truncated)")
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return info


def dense_model(model: nn.Module, key: str, cache_dir: Path,
                train: Callable[[nn.Module], tuple[list[EpochResult], float, float]]) -> DenseResult:
    """Load the cached weights for ``key`` into ``model``, or ``train(model)`` and cache them.

    ``train`` returns ``(history, val_accuracy, test_accuracy)``."""
    weights, meta = cache_dir / f"{key}.pt", cache_dir / f"{key}.json"
    with locked(cache_dir / f"{key}.lock"):
        for stale in [*cache_dir.glob(f".{key}.pt.*.tmp"), *cache_dir.glob(f".{key}.json.*.tmp")]:
            stale.unlink(missing_ok=True)  # a writer killed mid-write (we hold the key's lock)
        if weights.is_file() or meta.is_file():
            initial = copy.deepcopy(model.state_dict())  # a load that fails half-way is undone
            try:
                info = _load_verified(model, key, weights, meta)
                log.info("dense model %s loaded from %s (no training)", key, weights)
                return DenseResult(key, [EpochResult(**e) for e in info["history"]],
                                   info["val_accuracy"], info["test_accuracy"], from_cache=True)
            except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
                log.warning("dense model cache %s not used, retraining: %s", weights, e)
                for path in (weights, meta):
                    path.unlink(missing_ok=True)
                model.load_state_dict(initial)
        history, val_acc, test_acc = train(model)
        atomic_save(model.state_dict(), weights, torch.save)
        info = {"key": key, "sha256": file_sha256(weights), "history": [asdict(e) for e in history],
                "val_accuracy": val_acc, "test_accuracy": test_acc}
        atomic_save(info, meta, lambda o, p: Path(p).write_text(json.dumps(o, indent=1)))
        log.info("dense model %s trained and cached in %s", key, weights)
        return DenseResult(key, history, val_acc, test_acc, from_cache=False)


class DenseRun:
    """The dense model's MLflow run, the ratio-0 point of every curve: opened while the model
    trains, so its epochs appear as they finish and an interrupted training leaves a KILLED run
    holding them; or logged from the cache, once per dense model and experiment."""

    def __init__(self, cfg: DictConfig, experiment_id: str, key: str, device_type: str,
                 parent_run_id: str | None, extra_tags: dict[str, str]):
        self.cfg, self.experiment_id, self.key = cfg, experiment_id, key
        self.point_key = keys.dense_point_key(cfg, device_type)
        self.parent_run_id, self.extra_tags = parent_run_id, extra_tags
        self.params = {k: v for k, v in tracking.params(cfg).items()
                       if k.split(".")[0] in ("model", "dataset", "train", "seed")}
        self.params.update(ratio="0.0", method="dense", scope="none", device=device_type)

    def _open(self):
        tags = {tracking.TAG_ROLE: "dense", tracking.TAG_RUN_KEY: self.key, tracking.TAG_DENSE_KEY: self.key,
                tracking.TAG_POINT_KEY: self.point_key, **self.extra_tags, **tracking.environment_tags()}
        return tracking.run(self.experiment_id, f"dense-{self.key[:8]}", tags, self.parent_run_id)

    @staticmethod
    def _log_epoch(e: EpochResult) -> None:
        tracking.log_metrics({"train.loss": e.loss, "train.train_accuracy": e.train_accuracy,
                              "train.val_accuracy": e.val_accuracy}, step=e.epoch)

    @staticmethod
    def _log_result(model, data: Splits, val_accuracy: float, test_accuracy: float) -> None:
        ppl = perplexity(model, data.test, "test_")
        tracking.log_metrics({"test_accuracy": test_accuracy, "val_accuracy": val_accuracy,
                              "dense.test_accuracy": test_accuracy, "dense.val_accuracy": val_accuracy,
                              **ppl, **{f"dense.{k}": v for k, v in ppl.items()},
                              **sparsity_summary(layer_table(model)), "sparsity.prunable": 0.0})

    def train(self, model, data: Splits):
        """Train ``model`` (the dense cache calls this) with the run open."""
        with self._open():
            mlflow.log_params(self.params)
            history, val_accuracy, test_accuracy = train_dense(self.cfg, model, data, on_epoch=self._log_epoch)
            self._log_result(model, data, val_accuracy, test_accuracy)
        return history, val_accuracy, test_accuracy

    def log_cached(self, dense: DenseResult, model, data: Splits, lock_dir: Path) -> None:
        """After the cache: tag this experiment's run of this dense model as one of the sweep's
        points, or log it from the cached history (a lock keeps parallel workers from doing it twice)."""
        with locked(lock_dir / f"{self.key}.mlflow.lock"):
            found = tracking.finished_run(self.experiment_id, role="dense", dense_key=self.key)
            if found is not None:
                tracking.add_tags(found.info.run_id, self.extra_tags)
                return
            with self._open():
                mlflow.log_params(self.params)
                for e in dense.history:
                    self._log_epoch(e)
                self._log_result(model, data, dense.val_accuracy, dense.test_accuracy)
