"""The mask: which parameter entries survive pruning.

A :class:`Mask` maps parameter names (as in ``model.named_parameters()``) to boolean tensors of the
same shape (``True`` = kept). It is checked against the model before it touches it, applying it is
one call, and :meth:`Mask.hold` returns the cheap per-step function that keeps pruned entries at
exactly zero during fine-tuning. On the CPU the masks are held as bits (:class:`Bits`: a bool
tensor takes a byte per entry, half a bfloat16 model's weights; bits an eighth of that) and each is
unpacked when it is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError


def count(keep: torch.Tensor) -> int:
    """True entries of a bool tensor, counted by NumPy in place (torch's sum copies to int64)."""
    return int(np.count_nonzero(keep.detach().cpu().numpy()))


def keep_pruned(
    new: MutableMapping[str, torch.Tensor], current: Mapping[str, torch.Tensor] | None
) -> MutableMapping[str, torch.Tensor]:
    """``new`` (in place; returned) AND-ed with ``current`` everywhere: nothing an earlier mask
    pruned comes back, whatever method made it (an entry only ``current`` names is taken as is)."""
    for name, old in (current or {}).items():
        new[name] = new[name] & old.cpu() if name in new else old.cpu()
    return new


def _ones(bits: np.ndarray) -> int:
    """The set bits of a packed array (its padding is zeros)."""
    if hasattr(np, "bitwise_count"):  # NumPy 2
        return int(np.bitwise_count(bits).sum(dtype=np.int64))
    return int(np.count_nonzero(np.unpackbits(bits)))


def _packed(m: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """A CPU bool tensor as its bits (``np.packbits`` of it flattened: a uint8 tensor) and its shape."""
    return torch.from_numpy(np.packbits(m.detach().numpy().reshape(-1))), m.shape


def _unpacked(bits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The bool tensor of ``shape`` whose bits :func:`_packed` gave (a new one)."""
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=math.prod(shape)).view(np.bool_).reshape(tuple(shape)))


class MaskError(UserError, ValueError):
    """A mask does not fit the model it is applied to."""


class Bits(MutableMapping[str, torch.Tensor]):
    """Masks by name, each CPU bool tensor held packed eight entries to a byte (``np.packbits``)
    and unpacked into a new tensor when it is read (a mask on another device is held as it is).
    A mask read is a copy: change one by setting it whole."""

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None):
        self._held: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Size]] = {}
        for name, m in (masks or {}).items():
            self[name] = m

    def __setitem__(self, name: str, m: torch.Tensor) -> None:
        if m.dtype != torch.bool:
            raise MaskError(f"mask for {name} has dtype {m.dtype}, expected torch.bool")
        cpu = m.device.type == "cpu"
        self._held[name] = _packed(m) if cpu else m

    def __delitem__(self, name: str) -> None:
        del self._held[name]

    def copy(self) -> Bits:
        """Another mapping of the same masks (their bits shared: they are never changed in place)."""
        other = Bits()
        other._held = dict(self._held)
        return other

    def __getitem__(self, name: str) -> torch.Tensor:
        held = self._held[name]
        if isinstance(held, torch.Tensor):
            return held
        return _unpacked(*held)

    def packed(self, name: str) -> tuple[torch.Tensor, list[int]]:
        """A mask's bits (as :func:`_packed` gives them) and its shape, without unpacking it."""
        held = self._held[name]
        bits, shape = _packed(held.cpu()) if isinstance(held, torch.Tensor) else held
        return bits, list(shape)

    def shape(self, name: str) -> torch.Size:
        """A mask's shape, without unpacking it."""
        held = self._held[name]
        return held.shape if isinstance(held, torch.Tensor) else held[1]

    def kept(self, name: str) -> int:
        """A mask's True entries, counted on its bits."""
        held = self._held[name]
        return count(held) if isinstance(held, torch.Tensor) else _ones(held[0].numpy())

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)


@dataclass
class Mask:
    masks: Mapping[str, torch.Tensor]  # held as Bits
    # Names of the weights that pruning chose among (the "prunable weights" of the reports).
    prunable: tuple[str, ...] = ()
    # Structured pruning only: per pruned layer, which output channels were kept.
    channels: dict[str, torch.Tensor] = field(default_factory=dict)
    # Depth pruning only: per nn.ModuleList of blocks (its attribute path), the blocks removed
    # (every parameter of theirs masked: pruning.depth).
    blocks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Width pruning of a transformer only: where its blocks are and the projections' layout inside
    # one (pruning.width.Layout's fields), for taking the heads and channels out.
    layout: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.masks, Bits):  # (it checks each mask's dtype)
            self.masks = Bits(self.masks)
        missing = [n for n in self.prunable if n not in self.masks]
        if missing:
            raise MaskError(f"prunable weights without a mask: {', '.join(missing)}")

    # --- figures ---------------------------------------------------------------------------
    def _count(self, names) -> tuple[int, int]:
        bits = self._bits
        return sum(bits.kept(n) for n in names), sum(math.prod(bits.shape(n)) for n in names)

    @property
    def _bits(self) -> Bits:
        assert isinstance(self.masks, Bits)
        return self.masks

    @property
    def density(self) -> float:
        """Fraction of prunable weights kept."""
        kept, total = self._count(self.prunable)
        return kept / total if total else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights removed."""
        return 1.0 - self.density

    @property
    def structural(self) -> bool:
        """Whether the mask removes structure (channels or blocks) that :func:`~prunelab.pruning.shrink.shrink`
        can take out for real."""
        return bool(self.channels or self.blocks)

    @property
    def channel_sparsity(self) -> float | None:
        """Fraction of output channels removed (structured masks only)."""
        if not self.channels:
            return None
        kept = sum(count(c) for c in self.channels.values())
        return 1.0 - kept / sum(c.numel() for c in self.channels.values())

    # --- using it on a model -------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Check names and shapes against ``model``; return the masked parameters by name."""
        params = dict(model.named_parameters())
        unknown = [n for n in self.masks if n not in params]
        if unknown:
            raise MaskError(f"mask names parameters the model does not have: {', '.join(unknown)}")
        for name in self.masks:
            shape = self._bits.shape(name)
            if shape != params[name].shape:
                raise MaskError(
                    f"mask for {name} has shape {tuple(shape)}, the parameter has {tuple(params[name].shape)}"
                )
        return {n: params[n] for n in self.masks}

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the pruned entries of ``model`` in place (and return it).

        Converts one mask at a time (unlike :meth:`hold`, which keeps them all converted for the
        per-step calls): a one-off application then needs one layer's float mask of extra memory,
        not a float copy of every mask."""
        for name, p in self.validate(model).items():
            if self._prunes(name):
                p.mul_(self.masks[name].to(device=p.device, dtype=p.dtype))
        return model

    def _prunes(self, name: str) -> bool:
        """Whether the mask of ``name`` prunes anything (counted on its bits)."""
        return self._bits.kept(name) < math.prod(self._bits.shape(name))

    def hold(self, model: nn.Module) -> Callable[[], None]:
        """Return a function that re-zeroes the pruned entries; call it after every optimizer step.

        Re-masking the weights (rather than gradients) is what keeps them exactly zero whatever
        the optimizer does (momentum, Adam moments and weight decay would otherwise revive them).
        Masks are converted once to the parameters' dtype/device so each call is one in-place
        multiply per masked tensor."""
        params = self.validate(model)
        pairs = [(p, self.masks[n].to(device=p.device, dtype=p.dtype)) for n, p in params.items() if self._prunes(n)]

        @torch.no_grad()
        def reapply():
            for p, m in pairs:
                p.mul_(m)

        return reapply

    def to_state(self, packed: bool = False) -> dict:
        """A plain dict (tensors, lists) for ``torch.save``; loads with ``weights_only=True``.
        ``packed``: each mask as its bits (``np.packbits`` of it flattened, a uint8 tensor) and its
        shape, an eighth of the bool tensors' bytes, for a file of the mask alone."""
        blocks = {path: list(removed) for path, removed in self.blocks.items()}
        masks: dict[str, Any] = (
            {"packed": {n: self._bits.packed(n) for n in self.masks}} if packed else {"masks": dict(self.masks)}
        )
        return {
            **masks,
            "prunable": list(self.prunable),
            "channels": self.channels,
            "blocks": blocks,
            "layout": self.layout,
        }

    def digest(self) -> str:
        """A SHA-256 of what is kept (the same on any device): masks compared across processes."""
        digest = hashlib.sha256()
        for name in sorted(self.masks):
            digest.update(name.encode())
            digest.update(self.masks[name].detach().to("cpu", torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def to(self, device) -> Mask:
        return dataclasses.replace(
            self,
            masks={n: m.to(device) for n, m in self.masks.items()},
            channels={n: c.to(device) for n, c in self.channels.items()},
        )

    @classmethod
    def from_state(cls, state: dict) -> Mask:
        blocks = {path: tuple(removed) for path, removed in state.get("blocks", {}).items()}
        layout = dict(state.get("layout", {}))
        masks = state["masks"] if "masks" in state else {n: _unpacked(*p) for n, p in state["packed"].items()}
        return cls(dict(masks), tuple(state["prunable"]), dict(state["channels"]), blocks, layout)
