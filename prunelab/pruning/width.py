"""Width pruning of a transformer: whole attention heads and MLP channels of every block.

The units are what the architecture couples, which Torch-Pruning's tracer cannot see in a
``transformers`` model (GPT-2's attention, LLaMA's RMSNorm):

* an attention **head** (``heads=kv``, the default): a key/value head with every query head that
  reads it (grouped-query attention: ``heads / kv_heads`` query heads share one), i.e. the query,
  key and value rows of the group and the output projection's columns that read it. With
  ``heads=query`` the key/value heads all stay and query heads go, the same number from each
  group: a unit is then "the r-th least important query head of every group", so the query heads
  per key/value head stay equal in every layer. ``heads=none`` leaves the attention whole.
* an **MLP channel**: an intermediate neuron, i.e. its rows of the gate and up projections
  (SwiGLU) or of the first projection, and its column of the down projection.

``ratio`` is the fraction of the heads and, separately, of the MLP channels removed; the scope
allocates each across the blocks (``local``: the same in every block, which a Hugging Face
config can express; ``global``: one threshold over the blocks' scores, each block's divided by
their mean as Torch-Pruning's default group normaliser does). Every block keeps one unit of each.
A unit's score is the criterion's channel score over the rows and columns it removes
(``Scorer.channels``): magnitude, Taylor, random, and ``criterion=activation``, Wanda's
``|W| * ||X||`` summed over the unit.

The hidden size (the residual stream) stays whole. Zeroing a unit's rows and columns makes the
masked model compute what the model without the unit computes (a zeroed head's output meets zero
columns of the output projection; a zeroed MLP neuron is ``act(0) * 0`` or ``act(0)`` with zero
down-projection weights), and :func:`remove_units` takes them out, setting the attention modules'
head counts and, where the widths are equal in every block, the Hugging Face config's.

Matched against Torch-Pruning's LLM example (VainF/Torch-Pruning ``examples/LLMs/prune_llm.py`` at
e80127d): the same coupled units for a key/value head (its group's query heads, ``num_heads``
per projection) and a SwiGLU channel, and the same attributes updated after removal
(``num_key_value_groups``; the config's ``num_attention_heads``, ``num_key_value_heads``,
``intermediate_size``). It also prunes the hidden size and head dimensions, which this does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .allocation import allocate
from .blocks import hf_config, required_blocks
from .compensate import COMPENSATIONS, SAMPLES, Compensation, bias_for, input_means
from .contracts import Coupled, Pruned, Scorer, Units
from .data import TRAIN
from .errors import PruningError, check_positive
from .mask import Mask, count, keep_pruned
from .methods import Given, Pattern, full_masks, prober
from .plan import plan_of
from .tracing import OUTPUT_LAYERS, prunable_layers

HEADS = ("kv", "query", "none")
# The Hugging Face config field that gives an output projection a bias (LLaMA's), and the other
# projections the same field gives one
_BIAS_FLAGS = {"o": ("attention_bias", ("q", "k", "v", "qkv")), "down": ("mlp_bias", ("gate", "up"))}


@dataclass(frozen=True)
class Layout:
    """Where one block keeps its projections (attribute paths inside the block) and how its
    attention heads are laid out. ``qkv``: one fused projection holding the query, key and value
    rows in that order (GPT-2's ``c_attn``) instead of ``q``, ``k``, ``v``; ``gate``: SwiGLU's."""

    heads: int
    kv_heads: int
    head_dim: int
    o: str
    up: str
    down: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    gate: str | None = None

    def __post_init__(self):
        if (self.qkv is None) == (self.q is None or self.k is None or self.v is None):
            raise PruningError("method.layout: give q, k and v, or one fused qkv")
        if self.qkv is not None and self.kv_heads != self.heads:
            raise PruningError("method.layout: a fused qkv projection needs kv_heads == heads")
        if self.heads < 1 or self.kv_heads < 1 or self.heads % self.kv_heads:
            raise PruningError(
                f"method.layout: heads={self.heads} must be a multiple of kv_heads={self.kv_heads} (both >= 1)"
            )

    @property
    def attention(self) -> str:
        """The module holding the projections (its head counts are updated on removal)."""
        return self.o.rpartition(".")[0]


# Hugging Face architectures by ``config.model_type``: their projections inside one block, and
# the config fields that state the head counts and the MLP width.
_LLAMA = dict(
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
)
KNOWN: dict[str, dict[str, str]] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "opt": dict(
        q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj", up="fc1", down="fc2"
    ),
    "gpt2": dict(qkv="attn.c_attn", o="attn.c_proj", up="mlp.c_fc", down="mlp.c_proj"),
}  # fmt: skip
_MLP_FIELDS = ("intermediate_size", "ffn_dim", "n_inner")
_HEADS_FIELDS = ("num_attention_heads", "n_head")


def layout_of(model: nn.Module, declared: dict | None = None) -> Layout:
    """The declared layout, else the known one of a Hugging Face architecture; one line otherwise."""
    if declared is not None:
        allowed = [f.name for f in dataclasses.fields(Layout)]
        unknown = sorted(set(declared) - set(allowed))
        if unknown:
            raise PruningError(f"method.layout takes no {', '.join(unknown)}: it takes {', '.join(allowed)}")
        try:
            return Layout(**declared)
        except TypeError as e:
            raise PruningError(f"method.layout: {e}") from None
    config = hf_config(model)
    paths = KNOWN.get(getattr(config, "model_type", None) or "")
    if config is None or paths is None:
        kind = f"model_type {config.model_type!r}" if config is not None else type(model).__name__
        raise PruningError(
            f"method=width: the attention layout of {kind} is not known (known: {', '.join(KNOWN)}); declare it "
            "with method.layout={heads, kv_heads, head_dim, q, k, v (or qkv), o, up, gate, down}"
        )
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return Layout(heads=heads, kv_heads=kv, head_dim=head_dim, **paths)


def _rows(layout: Layout, n_units: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """For an attention set of ``n_units`` units (key/value groups, or single query heads with the
    key/value heads left alone): each projection's placement of a weight's entries onto the units,
    ``(n_units, entries)``: the rows it produces, or the output projection's columns."""
    by_rows = lambda t: t.reshape(n_units, -1)
    place: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"o": lambda t: by_rows(t.T)}
    if layout.qkv is not None:
        place["qkv"] = lambda t: t.reshape(3, n_units, -1).transpose(0, 1).reshape(n_units, -1)
    else:
        place["q"] = by_rows
        if n_units == layout.kv_heads:  # whole groups: their key and value heads go too
            place["k"] = place["v"] = by_rows
    return place


@dataclass(frozen=True)
class _Block:
    """One block's projections by role (``q``, ``k``, ``v``, ``qkv``, ``o``, ``gate``, ``up``,
    ``down``), as full module names."""

    index: int
    names: dict[str, str]

    def layer(self, model: nn.Module, role: str) -> nn.Linear:
        return _linear(model, self.names[role])

    def weight(self, model: nn.Module, role: str) -> torch.Tensor:
        return self.layer(model, role).weight


def _blocks(model: nn.Module, path: str, count_: int, layout: Layout) -> list[_Block]:
    roles = ("q", "k", "v", "qkv", "o", "gate", "up", "down")
    blocks = []
    for i in range(count_):
        names = {r: f"{path}.{i}.{p}" for r in roles if (p := getattr(layout, r)) is not None}
        for role, name in names.items():
            module = model.get_submodule(name) if _has(model, name) else None
            if not isinstance(module, nn.Linear):
                raise PruningError(f"method=width: {name} (the {role} projection) is not an nn.Linear of the model")
        blocks.append(_Block(i, names))
    return blocks


def _linear(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise PruningError(f"method=width: {name} is not an nn.Linear of the model")
    return module


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _normalised(scores: torch.Tensor, alive: torch.Tensor, normalize: str, name: str) -> torch.Tensor:
    if normalize == "mean":
        if bool((scores[alive] < 0).any()):
            raise PruningError(
                f"{name}: the criterion gave negative scores, which normalize=mean cannot compare across "
                "blocks; use method.normalize=none"
            )
        scores = scores / scores[alive].mean().clamp_min(1e-12)
    return scores.float().masked_fill(~alive, -float("inf"))


@dataclass
class Width(Pattern):
    """Width pruning (the module docstring): ``ratio`` of the attention heads and of the MLP
    channels of every block."""

    takes: ClassVar[frozenset[str]] = frozenset({"criterion", "scope", "calibration", "example_inputs", "blocks"})

    heads: str = "kv"  # kv: key/value heads with their query heads; query: query heads only; none
    mlp: bool = True  # prune the MLP channels
    normalize: str = "mean"  # divide each block's unit scores by their mean (for global scopes), or "none"
    ignore: list[str] = field(default_factory=lambda: list(OUTPUT_LAYERS))  # layers outside the count
    blocks: str | None = None  # where the repeated blocks are (an attribute path); None: the known places
    # the attention layout of a model that is not a known Hugging Face architecture (Layout's fields)
    layout: dict[str, Any] | None = None
    # mean: FLAP's bias compensation (compensate.py): the removed heads' and channels' mean output
    # put back as a bias of the output and down projections, measured on `samples` calibration windows
    compensate: str | None = None
    samples: int = SAMPLES

    def __post_init__(self):
        if self.compensate is not None and self.compensate not in COMPENSATIONS:
            raise PruningError(f"method.compensate={self.compensate!r}: one of {', '.join(COMPENSATIONS)} (or null)")
        if self.compensate is None and self.samples != SAMPLES:
            raise PruningError(
                "method.samples: the calibration windows of method.compensate; set method.compensate=mean"
            )
        check_positive(self.samples, "method.samples")
        if self.heads not in HEADS:
            raise PruningError(f"method.heads={self.heads!r} is not allowed: expected one of {', '.join(HEADS)}")
        if self.normalize not in ("mean", "none"):
            raise PruningError(f"method.normalize={self.normalize!r} is not allowed: expected one of mean, none")
        if self.heads == "none" and not self.mlp:
            raise PruningError("method=width with heads=none and mlp=false prunes nothing")

    def select(self, model: nn.Module, ratio: float, given: Given) -> Pruned:
        path, modules = required_blocks(model, self.blocks, "width")
        layout = layout_of(model, self.layout)
        scorer, scope, prepared, mask = given.scorer, given.scope, given.data, given.mask
        blocks = _blocks(model, path, len(modules), layout)
        masks = full_masks(model)
        channels: dict[str, torch.Tensor] = {}
        sets: dict[str, tuple[int, int, tuple]] = {}
        report: dict[str, Any] = {}  # what the scope reported for the heads and for the MLP channels
        if self.heads != "none":
            keep, reported = self._heads(model, ratio, scope, scorer, layout, blocks, mask, prepared)
            report.update({f"heads.{k}": v for k, v in reported.items()})
            for block, heads in zip(blocks, keep, strict=True):
                _zero_heads(masks, channels, block, layout, heads)
                sets[_attention_name(block)] = (len(heads), count(heads), (len(heads),))
        if self.mlp:
            keep, reported = self._mlp(model, ratio, scope, scorer, blocks, mask, prepared)
            report.update({f"mlp.{k}": v for k, v in reported.items()})
            for block, neurons in zip(blocks, keep, strict=True):
                _zero_neurons(masks, channels, block, neurons)
                sets[block.names["up"]] = (len(neurons), count(neurons), (len(neurons),))
        compensation = None
        if self.compensate is not None:
            compensation = self._compensation(model, path, modules, layout, blocks, masks, given)
        keep_pruned(masks, mask.masks if mask is not None else None)
        keep_pruned(channels, mask.channels if mask is not None else None)
        prunable = tuple(f"{n}.weight" for n in prunable_layers(model, self.ignore))
        described = {"blocks": path, **{k: v for k, v in dataclasses.asdict(layout).items() if v is not None}}
        result = Mask(masks, prunable, channels=channels, layout=described)
        return Pruned(result, plan_of("width", sets), report, ratio, compensation=compensation)

    def _compensation(self, model, path, modules, layout: Layout, blocks, masks, given: Given) -> Compensation:
        """FLAP's biases for the output projections (``o``, ``down``) of what this prune removes
        (the columns ``masks`` zeroes), and what the model's config must say to hold them; a layer
        without a bias whose config cannot say one is one line, before any calibration pass."""
        roles = [r for r, on in (("o", self.heads != "none"), ("down", self.mlp)) if on]
        config = hf_config(model)
        new = [role for role in roles if blocks[0].layer(model, role).bias is None]  # biases to create
        for role in new:
            flag = _BIAS_FLAGS[role][0]
            if not hasattr(config, flag):
                kind = f"model_type {config.model_type!r}" if config is not None else type(model).__name__
                raise PruningError(
                    f"method.compensate=mean adds a bias to {blocks[0].names[role]}, which has none, and {kind} "
                    f"cannot hold one (its config has no {flag}); use method.compensate=null"
                )
        if given.data is None:
            raise PruningError(
                "method.compensate=mean measures the removed units' mean output: it needs calibration data"
            )
        x = given.data.calibration(self.samples, given.seed, TRAIN)
        means = input_means(model, path, modules, x, [getattr(layout, r) for r in roles])
        biases = {}
        for block in blocks:
            for role in roles:
                name = block.names[role]
                removed = ~masks[f"{name}.weight"].bool().any(dim=0)
                biases[name] = bias_for(block.weight(model, role), means[name], removed)
            for other in (r for role in new for r in _BIAS_FLAGS[role][1]):  # the flag's other projections: zeros
                if other in block.names and block.layer(model, other).bias is None:
                    biases[block.names[other]] = torch.zeros(block.weight(model, other).shape[0])
        for name in biases:  # a new bias is masked as its layer's rows are
            if model.get_submodule(name).bias is None:
                masks[f"{name}.bias"] = masks[f"{name}.weight"].any(dim=1)
        return Compensation(biases, {_BIAS_FLAGS[role][0]: True for role in new})

    # --- the units, scored and allocated ------------------------------------------------------
    def _heads(self, model, ratio, scope, scorer: Scorer, layout: Layout, blocks, mask, data) -> tuple[list, dict]:
        """Each block's query heads kept (``heads`` bools), and what the scope reported."""
        groups = self.heads == "kv" or layout.kv_heads == layout.heads
        n = layout.kv_heads if groups else layout.heads
        per_group = layout.heads // layout.kv_heads
        by_name = {_attention_name(b): b for b in blocks}
        scores, alive_heads = {}, {}
        for name, block in by_name.items():
            place = _rows(layout, n)
            rows = [Coupled(block.names[r] + ".weight", block.weight(model, r), p) for r, p in place.items()]
            alive = _alive_columns(mask, block.names["o"], layout.heads)
            alive_heads[name] = alive
            if groups:  # one unit per key/value group: alive while any of its query heads is
                alive = alive.view(n, -1).any(1)
            scores[name] = _normalised(scorer.channels(name, rows, n).double(), alive, self.normalize, name)
        if groups:
            unit_scores = scores

            def heads_of(_name: str, keep: torch.Tensor, /) -> torch.Tensor:  # each block alike: no name needed
                return keep.repeat_interleave(layout.heads // n)

        else:  # query heads only: unit r of a block is the r-th lowest-scored query head of every group
            ranked = {k: s.view(layout.kv_heads, per_group).sort(dim=1) for k, s in scores.items()}
            unit_scores = {k: r.values.mean(0) for k, r in ranked.items()}

            def heads_of(name: str, keep: torch.Tensor, /) -> torch.Tensor:
                gone = per_group - count(keep)  # the lowest ranks go: the same number in every group
                heads = torch.ones(layout.kv_heads, per_group, dtype=torch.bool)
                heads.scatter_(1, ranked[name].indices[:, :gone], False)
                return heads.flatten() & alive_heads[name]

        def masks_of(keeps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            masks = full_masks(model)
            for name, keep in keeps.items():
                _zero_heads(masks, {}, by_name[name], layout, heads_of(name, keep))
            return masks

        units = Units(
            {k: len(s) for k, s in unit_scores.items()},
            unit_scores.__getitem__,
            kind="heads",
            trial=prober(model, data, masks_of),
        )
        keep = allocate(units, ratio, scope)
        return [heads_of(name, keep[name]) for name in by_name], units.report

    def _mlp(self, model, ratio, scope, scorer: Scorer, blocks, mask, data) -> tuple[list, dict]:
        """Each block's MLP channels kept, and what the scope reported."""
        by_name = {b.names["up"]: b for b in blocks}
        scores = {}
        for name, block in by_name.items():
            n = block.weight(model, "up").shape[0]
            rows = [
                Coupled(block.names[r] + ".weight", block.weight(model, r), _by_rows)
                for r in ("gate", "up")
                if r in block.names
            ]
            rows.append(Coupled(block.names["down"] + ".weight", block.weight(model, "down"), _by_columns))
            alive = _alive_columns(mask, block.names["down"], n)
            scores[name] = _normalised(scorer.channels(name, rows, n).double(), alive, self.normalize, name)

        def masks_of(keeps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            masks = full_masks(model)
            for name, keep in keeps.items():
                _zero_neurons(masks, {}, by_name[name], keep)
            return masks

        units = Units(
            {k: len(s) for k, s in scores.items()},
            scores.__getitem__,
            kind="channels",
            trial=prober(model, data, masks_of),
        )
        keep = allocate(units, ratio, scope)
        return [keep[name] for name in by_name], units.report


def _by_rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _by_columns(t: torch.Tensor) -> torch.Tensor:
    return t.T.reshape(t.shape[1], -1)


def _attention_name(block: _Block) -> str:
    return block.names["o"].rpartition(".")[0]


def _alive_columns(mask: Mask | None, name: str, units: int) -> torch.Tensor:
    """Which of ``units`` equal slices of layer ``name``'s input columns the current mask has not
    removed entirely (all alive without a mask)."""
    if mask is None or f"{name}.weight" not in mask.masks:
        return torch.ones(units, dtype=torch.bool)
    columns = mask.masks[f"{name}.weight"].cpu().any(0)
    return columns.view(units, -1).any(1)


def _expand(keep: torch.Tensor, width: int) -> torch.Tensor:
    return keep.repeat_interleave(width)


def _zero(
    masks: dict[str, torch.Tensor], name: str, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
):
    """Mark removed rows (weight and bias) or input columns (weight) of the layer ``name``."""
    if rows is not None:
        masks[f"{name}.weight"][~rows] = False
        if f"{name}.bias" in masks:
            masks[f"{name}.bias"][~rows] = False
    if cols is not None:
        masks[f"{name}.weight"][:, ~cols] = False


def _zero_heads(masks, channels, block: _Block, layout: Layout, heads: torch.Tensor) -> None:
    """Zero what removing the query heads not in ``heads`` removes (with their key/value heads when
    every query head of a group goes), and record each producing layer's kept rows."""
    d = layout.head_dim
    q_rows = _expand(heads, d)
    if layout.qkv is not None:
        rows = q_rows.repeat(3)
        _zero(masks, block.names["qkv"], rows=rows)
        channels[block.names["qkv"]] = rows
    else:
        kv = heads.view(layout.kv_heads, -1).any(1)
        kv_rows = _expand(kv, d)
        for role, keep in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
            _zero(masks, block.names[role], rows=keep)
            channels[block.names[role]] = keep
    _zero(masks, block.names["o"], cols=q_rows)


def _zero_neurons(masks, channels, block: _Block, neurons: torch.Tensor) -> None:
    for role in ("gate", "up"):
        if role in block.names:
            _zero(masks, block.names[role], rows=neurons)
            channels[block.names[role]] = neurons
    _zero(masks, block.names["down"], cols=neurons)


# --- removal ----------------------------------------------------------------------------------


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """``linear`` (in place) with only the ``rows`` (outputs) and ``cols`` (inputs) kept."""
    with torch.no_grad():
        w = linear.weight
        r = rows.to(w.device) if rows is not None else torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
        c = cols.to(w.device) if cols is not None else torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
        linear.weight = nn.Parameter(w[r][:, c].clone(), requires_grad=w.requires_grad)
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias[r].clone(), requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = int(r.sum()), int(c.sum())


def remove_units(model: nn.Module, mask: Mask) -> nn.Module:
    """``model`` (in place; returned) without the heads and MLP channels a :class:`Width` mask
    removed: projections sliced, each attention module's head counts set, and a Hugging Face
    config's head counts and MLP width set where every block has the same."""
    described = dict(mask.layout)
    path = described.pop("blocks")
    layout = Layout(**described)
    modules = model.get_submodule(path)
    if not isinstance(modules, nn.ModuleList):
        raise PruningError(f"shrink: {path} is not an nn.ModuleList of the model")
    blocks = _blocks(model, path, len(modules), layout)
    d = layout.head_dim
    widths: set[tuple[int, int, int]] = set()
    for block in blocks:
        names = block.names
        q_name = names["qkv"] if layout.qkv is not None else names["q"]
        q_rows = mask.channels.get(q_name)
        if q_rows is None:
            q_rows = torch.ones(block.weight(model, "qkv" if layout.qkv else "q").shape[0], dtype=torch.bool)
        if layout.qkv is not None:
            heads_rows = q_rows.view(3, -1)[0]
            _sliced(block.layer(model, "qkv"), rows=q_rows)
            kv_rows = heads_rows
        else:
            heads_rows = q_rows
            kv_rows = mask.channels.get(names["k"], torch.ones(block.weight(model, "k").shape[0], dtype=torch.bool))
            for role, keep in (("q", heads_rows), ("k", kv_rows), ("v", kv_rows)):
                _sliced(block.layer(model, role), rows=keep)
        _sliced(block.layer(model, "o"), cols=heads_rows)
        heads, kv = count(heads_rows) // d, count(kv_rows) // d
        _set_heads(model.get_submodule(_attention_name(block)), heads, kv, d)
        neurons = mask.channels.get(names["up"])
        if neurons is not None:
            for role in ("gate", "up"):
                if role in names:
                    _sliced(block.layer(model, role), rows=neurons)
            _sliced(block.layer(model, "down"), cols=neurons)
        widths.add((heads, kv, block.weight(model, "up").shape[0]))
    config = hf_config(model)
    if config is not None and len(widths) == 1:
        ((heads, kv, inner),) = widths
        _set_config(config, heads, kv, inner, d)
    return model


# What attention modules keep as head counts, as their forward passes read them (those a module
# has are set on removal): tiny_gpt's ``heads``, OPT's and GPT-2's ``num_heads``, LLaMA's
# ``num_key_value_groups``, GPT-2's ``split_size`` (how its fused projection's output splits).
HEAD_ATTRIBUTES = (
    "heads",
    "num_heads",
    "num_attention_heads",
    "num_key_value_heads",
    "num_key_value_groups",
    "split_size",
)


def _set_heads(attention: nn.Module, heads: int, kv: int, head_dim: int) -> None:
    values = dict(zip(HEAD_ATTRIBUTES, (heads, heads, heads, kv, heads // kv, heads * head_dim), strict=True))
    for attr, value in values.items():
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, value)


def _set_config(config: Any, heads: int, kv: int, inner: int, head_dim: int) -> None:
    """A Hugging Face config stating the new widths. Head counts only where the config states the
    head size itself (LLaMA's ``head_dim``) and its own checks accept them (LLaMA's still wants the
    hidden size a multiple of the heads): otherwise (GPT-2 and OPT derive the head size from the
    hidden size) fewer heads cannot be said, the config keeps its own, and the hand-over says so
    (``deploy/hf.py``)."""
    for key in _MLP_FIELDS:
        if hasattr(config, key):
            setattr(config, key, inner)
    if getattr(config, "head_dim", None) is None:
        return
    fields = [k for k in (*_HEADS_FIELDS, "num_key_value_heads", "head_dim") if hasattr(config, k)]
    before = {k: getattr(config, k) for k in fields}
    wanted = {"num_key_value_heads": kv, "head_dim": head_dim}
    for key in fields:
        setattr(config, key, wanted.get(key, heads))
    try:
        if callable(getattr(config, "validate", None)):
            config.validate()
    except Exception:  # the architecture's own check refuses these counts: keep the stated ones
        for key, value in before.items():
            setattr(config, key, value)


__all__ = ["HEAD_ATTRIBUTES", "KNOWN", "Layout", "Width", "layout_of", "remove_units"]
