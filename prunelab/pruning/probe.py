"""Validation accuracy of the model with some parameters masked: the sensitivity scan's trial.

A scan evaluates the model once per set and grid ratio, each time with one set pruned. Everything
the forward pass finishes before the first layer of that set starts computes what it computed on
the unpruned model, so :class:`Probe` keeps those outputs (from the first trial that reaches a set)
and replays them instead of recomputing: pruning ``fc1`` alone no longer runs the convolutions.
The replay is exact (the same tensors, not recomputed ones); a module called more than once per
forward or carrying hooks of its own, and a set whose layers the forward never calls as modules,
are simply recomputed.

Memory: the outputs before one set at a time, and of an ``nn.Sequential``'s children only the last
one (the only one its forward passes on).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._pytree import tree_map

# Replay what runs before the pruned set (the default), or recompute every trial: the same
# accuracies, slower (the tests compare the two through this switch).
REPLAY = True


def _clone(out):
    # a stored output must survive an in-place op downstream (ReLU(inplace=True)), and so must the
    # replayed one
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)


class Probe:
    """``probe(keeps, samples)``: accuracy on the first ``samples`` validation examples of a copy
    of ``model`` with only ``masks_of(keeps)`` applied (a dict param name -> bool mask). The copy is
    made on the first trial, so scopes that never measure never pay for it."""

    def __init__(
        self, model: nn.Module, data, masks_of: Callable[[dict], dict[str, torch.Tensor]], replay: bool | None = None
    ):
        self.model, self.data, self.masks_of = model, data, masks_of
        self.replay = REPLAY if replay is None else replay
        self._copy: nn.Module | None = None

    def _setup(self) -> None:
        self._copy = copy.deepcopy(self.model).eval()
        self._params = dict(self._copy.named_parameters())
        self._original = {n: p.detach().clone() for n, p in self._params.items()}
        self._dirty: set[str] = set()
        self._modules = dict(self._copy.named_modules())
        self._owner = {n: n.rpartition(".")[0] for n in self._params}
        self._order: dict[str, tuple[int, int, int]] | None = None  # name -> (start, end, calls)
        self._stored: tuple = (None, {})  # (start of the set, {(module, chunk): output})

    @property
    def _net(self) -> nn.Module:
        """The copy trials run on (``__call__`` makes it before any forward)."""
        if self._copy is None:
            raise RuntimeError("Probe: no trial has made the model copy yet")
        return self._copy

    @torch.no_grad()
    def __call__(self, keeps: dict[str, torch.Tensor], samples: int | None = None) -> float:
        if self._copy is None:
            self._setup()
        masks = {n: m for n, m in self.masks_of(keeps).items() if not bool(m.all())}
        for n in self._dirty | set(masks):
            p = self._params[n]
            p.copy_(self._original[n])
            if n in masks:
                p.mul_(masks[n].to(p.device, p.dtype))
        self._dirty = set(masks)
        correct = total = 0
        for chunk, (x, y) in enumerate(self.data.chunks(samples)):
            correct += int((self._forward(x, chunk, masks).argmax(1) == y).sum())
            total += len(y)
        return correct / max(total, 1)

    def _forward(self, x: torch.Tensor, chunk: int, masks: dict) -> torch.Tensor:
        if not self.replay:
            return self._net(x)
        order = self._order
        if order is None:
            return self._record(x)
        start = self._start(order, masks)
        skip = self._before(order, start)
        if self._stored[0] != start:
            self._stored = (start, {})
        stored = self._stored[1]
        if all((name, chunk) in stored for name in skip["keep"]):
            return self._replayed(x, chunk, skip)
        return self._storing(x, chunk, skip["keep"], stored)

    def _record(self, x: torch.Tensor) -> torch.Tensor:
        """One plain forward, noting when each module starts and ends and how often it runs."""
        tick, handles = [0], []
        order: dict[str, tuple[int, int, int]] = {}

        def pre(name):
            def hook(*_):
                start, end, calls = order.get(name, (tick[0], -1, 0))
                order[name] = (start, end, calls + 1)
                tick[0] += 1

            return hook

        def post(name):
            def hook(*_):
                start, _end, calls = order[name]  # not `_`: that holds the hook's arguments
                order[name] = (start, tick[0], calls)
                tick[0] += 1

            return hook

        for name, module in self._modules.items():
            if name:
                handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post(name))]
        try:
            out = self._net(x)
        finally:
            for h in handles:
                h.remove()
        self._order = order
        return out

    def _start(self, order: dict[str, tuple[int, int, int]], masks: dict) -> int:
        """When the first module owning a masked parameter first starts (0, replay nothing: a
        parameter whose owner the forward never calls as a module)."""
        return min((order.get(self._owner[n], (0,))[0] for n in masks), default=0)

    def _before(self, order: dict[str, tuple[int, int, int]], start: int) -> dict[str, list[str]]:
        """The outermost modules that finish before ``start`` ("keep": their output is stored and
        replayed; "drop": an nn.Sequential child whose output only its next sibling, also
        replayed, reads)."""
        done = {
            n
            for n, (_, end, calls) in order.items()
            if calls == 1 and end < start and not self._hooked(self._modules[n])
        }
        outer = [n for n in done if not any(a in done for a in _ancestors(n))]
        drop = []
        for n in outer:
            parent, _, child = n.rpartition(".")
            seq = self._modules[parent]
            if type(seq).forward is nn.Sequential.forward:
                names = list(seq._modules)
                i = names.index(child)
                if i + 1 < len(names) and f"{parent + '.' if parent else ''}{names[i + 1]}" in outer:
                    drop.append(n)
        return {"keep": [n for n in outer if n not in drop], "drop": drop}

    @staticmethod
    def _hooked(module: nn.Module) -> bool:
        # a hook of the model's own would see a replayed output and could change it twice
        return bool(module._forward_hooks or module._forward_pre_hooks)

    def _storing(self, x, chunk, keep, stored):
        handles = []
        for name in keep:

            def hook(_m, _a, out, name=name):
                stored[(name, chunk)] = _clone(out)

            handles.append(self._modules[name].register_forward_hook(hook))
        try:
            return self._net(x)
        finally:
            for h in handles:
                h.remove()

    def _replayed(self, x, chunk, skip):
        stored = self._stored[1]
        for name in skip["keep"]:
            self._modules[name].forward = lambda *_, _out=stored[(name, chunk)], **__: _clone(_out)
        for name in skip["drop"]:
            self._modules[name].forward = lambda *_, **__: None
        try:
            return self._net(x)
        finally:
            for name in skip["keep"] + skip["drop"]:
                del self._modules[name].forward


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
