"""What a plug-in of each config group must be: the call the run makes, with the arguments the run
passes itself (never options of the config). Everything else a plug-in's class or function takes
is an option, with its default in one home, the plug-in (its schema is derived from it:
``prunelab.config.schema_of``; the YAML option holds ``_target_`` and what differs).

The pruning groups (method, criterion, scope, schedule) have richer contracts, base classes in
``prunelab.pruning.contracts``. Recipes are values, not plug-ins: ``train`` and ``finetune`` typed
by ``prunelab.config.TrainConfig`` / ``FinetuneConfig``.

Annotations only (this module sits below the data, model and deployment code): a plug-in of your
own satisfies a contract by its signature, e.g. ``def my_data(seed: int, root: str = ...) ->
Splits`` for ``dataset._target_=my_pkg.my_data``.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


class Dataset(Protocol):
    """``dataset``: the splits of one seed (the seed draws the validation split and the order), a
    ``prunelab.data.splits.Splits`` (not named here: this module sits below the data code)."""

    def __call__(self, *, seed: int) -> Any: ...


class Model(Protocol):
    """``model``: the network for the dataset's inputs and classes (each passed when the factory
    names it: ``prunelab.models.build``)."""

    def __call__(self, *, in_shape: tuple[int, ...], num_classes: int) -> nn.Module: ...


class Augmentation(Protocol):
    """``augment``: how training batches vary (``prunelab.data.augment`` says when each is used)."""

    def check(self, in_shape: tuple[int, ...]) -> None: ...

    def batch(self, x: torch.Tensor, generator: torch.Generator, mean: Any, std: Any) -> torch.Tensor: ...

    def sample(self, image: torch.Tensor, size: int, resize: int) -> torch.Tensor: ...


class Quantizer(Protocol):
    """``quantize``: the hand-over's ONNX model (bytes) quantized, calibrated on raw inputs."""

    def __call__(self, model: bytes, calibration: torch.Tensor) -> bytes: ...


class Codebook(Protocol):
    """``codebook``: the shared values the compact file stores a layer's kept weights as."""

    def __call__(self, values: np.ndarray) -> np.ndarray: ...


CONTRACTS: dict[str, type] = {
    "dataset": Dataset,
    "model": Model,
    "augment": Augmentation,
    "quantize": Quantizer,
    "codebook": Codebook,
}


def passed_by_the_run(contract: type) -> tuple[str, ...]:
    """The arguments of ``contract``'s call: the run passes them, the config never does."""
    if "__call__" not in vars(contract):  # an object with methods (an augmentation)
        return ()
    return tuple(p for p in inspect.signature(vars(contract)["__call__"]).parameters if p != "self")
