"""Language models: a small decoder-only transformer, and a user's Hugging Face causal LM.

Both take token ids ``(batch, seq_len)`` and return logits ``(batch, vocab, seq_len)``: the class
dimension second, as ``F.cross_entropy`` wants it, so training, evaluation and every pruning
method treat a language model like any other classifier (``text.py`` says why). Every projection
is an ``nn.Linear``; the layer that produces the logits is ``classifier``, as in ``models.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import one_line
from ..paths import pretrained_source
from .build import ModelError


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q / k / v / o projections."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ModelError(f"model.d_model={d_model} does not split into model.heads={heads}")
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, hidden: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A GPT-2-style decoder (pre-norm blocks, learned positions), untied output layer."""

    def __init__(self, vocab: int, seq_len: int, d_model: int, layers: int, heads: int, hidden: int):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, d_model), nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, hidden) for _ in range(layers))
        self.ln = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, vocab)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x) + self.positions(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.classifier(self.ln(h)).transpose(1, 2)


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


def tiny_gpt(
    in_shape: Sequence[int] = (128,),
    num_classes: int = 256,
    d_model: int = 192,
    layers: int = 4,
    heads: int = 6,
    mlp_ratio: int = 4,
) -> TinyGPT:
    """``in_shape``: ``(seq_len,)``; ``num_classes``: the vocabulary (both from the dataset)."""
    if len(in_shape) != 1:
        raise ModelError(
            f"tiny_gpt reads token sequences (batch, seq_len), not inputs of shape {tuple(in_shape)}: "
            "use a text dataset (dataset=fortunes)"
        )
    return TinyGPT(num_classes, in_shape[0], d_model, layers, heads, mlp_ratio * d_model)


class CausalLM(nn.Module):
    """A Hugging Face causal LM as a prunelab model: token ids in, ``(batch, vocab, seq)`` out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no key/value cache: nothing here generates, and a cache handed to the blocks would grow
        # each time one is run again (block-by-block pruning runs each twice)
        return self.model(input_ids=x, use_cache=False).logits.transpose(1, 2)


# The fresh model ``model=hf_causal_lm`` builds when given neither a checkpoint nor a config.
FRESH = {"model_type": "gpt2", "vocab_size": 256, "n_positions": 128, "n_embd": 128, "n_layer": 2, "n_head": 4}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_config_keys(model_type: str, options: dict) -> None:
    """Refuse a key of ``model.config`` that the architecture's config class does not know, naming
    the closest it does: ``AutoConfig.for_model`` would keep a misspelt key as an unused attribute
    and build the architecture's default instead (``num_hidden_layer`` -> LLaMA's 32 layers)."""
    import difflib
    import inspect

    from transformers import CONFIG_MAPPING, PretrainedConfig

    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING), n=3)
        raise ModelError(
            f"model.config.model_type={model_type!r} is not an architecture transformers knows"
            + (f": did you mean {', '.join(close)}?" if close else "")
        )
    cls = CONFIG_MAPPING[model_type]
    known = set(cls().to_dict()) | set(getattr(cls, "attribute_map", {}))
    for c in (cls, PretrainedConfig):
        known |= {p for p in inspect.signature(c.__init__).parameters if p not in ("self", "kwargs")}
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f": did you mean {close[0]}?" if close else ""
            raise ModelError(f"model.config.{key} is not an option of {cls.__name__} ({model_type}){hint}")


def hf_causal_lm(
    num_classes: int = 256,
    pretrained: str | None = None,
    config: dict | None = None,
    revision: str | None = None,
    dtype: str = "float32",
    in_shape: Sequence[int] | None = None,
) -> CausalLM:
    """A ``transformers`` causal LM (``pip install prunelab[llm]``): ``pretrained`` (a hub name or a
    folder) or a fresh one from ``config`` (``model_type`` and its options, e.g. ``{model_type:
    llama, hidden_size: 64, ...}``; neither: :data:`FRESH`, a small GPT-2). GPT-2's ``Conv1D``
    projections become the ``nn.Linear`` they are (weight transposed), so every method prunes them.
    ``revision``: the hub revision of ``pretrained``; ``dtype``: its weights' type. The vocabulary
    must hold the dataset's tokens (``num_classes``: 256 for bytes) and the context its windows
    (``in_shape``: ``(seq_len,)``)."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        raise ModelError("model=hf_causal_lm needs transformers: pip install 'prunelab[llm]'") from e
    if pretrained is not None and config is not None:
        raise ModelError("hf_causal_lm takes model.pretrained or model.config, not both")
    if dtype not in DTYPES:
        raise ModelError(f"model.dtype={dtype!r}: one of {', '.join(DTYPES)}")
    if pretrained is not None:
        source = pretrained_source(pretrained)
        if source is None:
            raise ModelError(f"model.pretrained={pretrained}: no such folder")
        try:
            model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=DTYPES[dtype])
        except (OSError, ValueError) as e:
            raise ModelError(f"model.pretrained={pretrained}: no causal LM loaded ({one_line(e)})") from None
    else:
        options = dict(FRESH if config is None else config)
        if "model_type" not in options:
            raise ModelError(f"model.config needs a model_type (e.g. llama, gpt2, opt); it has {sorted(options)}")
        kind = options.pop("model_type")
        check_config_keys(kind, options)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **options))
    embeddings = model.get_input_embeddings()
    if not isinstance(embeddings, nn.Embedding):
        raise ModelError(f"the model's input embeddings are a {type(embeddings).__name__}, not an nn.Embedding")
    vocab = embeddings.num_embeddings
    if vocab < num_classes:
        raise ModelError(f"the model's vocabulary ({vocab}) is smaller than the dataset's ({num_classes} tokens)")
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if in_shape is not None and context is not None and in_shape[0] > context:
        raise ModelError(f"dataset.seq_len={in_shape[0]} exceeds the model's context of {context} tokens")
    linearize(model)
    return CausalLM(model)


class Conv1DLinear(nn.Linear):
    """The ``nn.Linear`` that replaced a ``transformers`` ``Conv1D``: its weight is the Conv1D's
    transposed, and transposed back in :func:`hf_state_dict`."""


def linearize(model: nn.Module) -> int:
    """Replace ``transformers``' ``Conv1D`` layers (``y = x W + b``, weight ``(in, out)``) by the
    equal ``nn.Linear``; returns how many. Anything else that is not Linear/Conv stays unpruned."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return 0
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D)]
    for name, m in found:
        n_in, n_out = m.weight.shape
        linear = Conv1DLinear(n_in, n_out, device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(m.weight.T)
            linear.bias.copy_(m.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
    return len(found)


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A Hugging Face model's state dict in its own layout: the weights :func:`linearize` turned
    into ``nn.Linear`` transposed back to ``Conv1D``'s ``(in, out)``, so ``save_pretrained`` writes
    what ``from_pretrained`` reads."""
    state = model.state_dict()
    for name, m in model.named_modules():
        if isinstance(m, Conv1DLinear):
            state[f"{name}.weight" if name else "weight"] = m.weight.detach().T.contiguous()
    return state
