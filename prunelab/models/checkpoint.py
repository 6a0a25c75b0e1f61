"""A trained model to start from (``dense.checkpoint=PATH``): its weights loaded into the built
model, which is then the run's dense model (evaluated, logged, never trained).

Taken: a state dict saved with ``torch.save`` (``.pt`` / ``.pth``, also nested under
``state_dict`` or ``model`` as training scripts and prunelab's own ``masked_weights.pt`` keep it,
with ``DistributedDataParallel``'s ``module.`` prefix dropped), a ``.safetensors`` file, or a whole
module saved with ``torch.save(model)``, whose weights are used (unpickled: load files you trust).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .build import ModelError

log = logging.getLogger(__name__)

SHOWN = 3  # mismatched keys named in the error, of how many there are


def checkpoint_file(path: str | Path) -> Path:
    """``path`` as a file that exists, or a one-line error."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"dense.checkpoint={path}: no such file")
    return file


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights a checkpoint file holds, as a flat state dict."""
    file = checkpoint_file(path)
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ModelError(
                f"dense.checkpoint={path} needs the safetensors package: pip install safetensors"
            ) from None
        try:
            obj: Any = load_file(str(file))
        except Exception as e:  # safetensors' own errors (a header it cannot parse) are no OSError
            raise ModelError(f"dense.checkpoint={path} is not a safetensors file ({_first_line(e)})") from None
    else:
        obj = _torch_load(file, path)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"dense.checkpoint={path} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _torch_load(file: Path, path: str | Path) -> Any:
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # a whole module: classes, not only tensors
            return torch.load(file, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as e:  # a module whose class is not importable here
        raise ModelError(
            f"dense.checkpoint={path} is a saved module whose code is not importable here ({_first_line(e)}): "
            "save its state_dict() instead"
        ) from None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ModelError(f"dense.checkpoint={path} is not a PyTorch checkpoint ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _named(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load ``path`` into ``model`` (in place). Keys missing from either side are an error naming
    the first few (``strict=False``: loaded where they match, the rest named in a warning); a shape
    that differs always is."""
    state = read_state(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if shapes:
        k = shapes[0]
        raise ModelError(
            f"dense.checkpoint={path} does not fit the model: {len(shapes)} shapes differ, e.g. {k} is "
            f"{tuple(state[k].shape)} in the checkpoint and {tuple(own[k].shape)} in the model "
            f"({_named(shapes)}); check model and its options (depth, width, classes)"
        )
    if (missing or unexpected) and strict:
        parts = [
            f"missing {_named(missing)}" if missing else "",
            f"unexpected {_named(unexpected)}" if unexpected else "",
        ]
        raise ModelError(
            f"dense.checkpoint={path} does not fit the model: {'; '.join(p for p in parts if p)}; "
            "check model, or pass dense.strict=false to load the keys that match"
        )
    if missing or unexpected:
        log.warning("dense.checkpoint: %d model keys not in it, %d of its keys unused", len(missing), len(unexpected))
    model.load_state_dict(state, strict=False)
    return model
