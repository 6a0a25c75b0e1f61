"""The pretrained model of the ``lm_pretrained_posttrain`` study, made here: a byte-level BPE
tokenizer trained on the training split of Debian's fortunes, and a small LLaMA (RMSNorm, rotary
positions, SwiGLU, grouped key/value heads) trained on it by prunelab (``prunelab.experiment.train``),
both saved as one ordinary Hugging Face folder (``save_pretrained``): what the study then loads
through ``model.pretrained=FOLDER``, the path a published checkpoint takes.

    python experiments/make_checkpoint.py            # -> ~/.cache/prunelab/checkpoints/fortunes-llama

Prints the test perplexity and the time it took. Options: ``--out``, ``--epochs``, ``--seed``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time
from pathlib import Path

import torch

from prunelab.data.files import cache_dir
from prunelab.data.text import fortunes, fortunes_texts
from prunelab.experiment.train import Recipe, evaluate, seed_everything, train
from prunelab.models.lm import hf_causal_lm

VOCAB = 4096
CONTEXT = 256
LLAMA = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,  # grouped: two query heads share a key/value head
    "max_position_embeddings": CONTEXT,
    "tie_word_embeddings": False,
}


def default_folder() -> Path:
    return cache_dir() / "checkpoints" / "fortunes-llama"


def make_tokenizer(folder: Path) -> None:
    """A byte-level BPE of :data:`VOCAB` tokens from the training split alone (no test text seen),
    a ``<s>`` before every text as LLaMA's tokenizer puts one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    train_text = fortunes_texts()[0].decode("utf-8", errors="replace")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(train_text.split("\n\n"), trainer)
    bos = ("<s>", bpe.token_to_id("<s>"))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=CONTEXT
    )
    tokenizer.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_folder())
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    make_tokenizer(args.out)
    data = fortunes(tokenizer=str(args.out), seq_len=CONTEXT)
    seed_everything(args.seed)
    from transformers import AutoTokenizer

    special = AutoTokenizer.from_pretrained(args.out)
    config = {**LLAMA, "vocab_size": data.num_classes, "bos_token_id": special.bos_token_id}
    config["eos_token_id"] = special.eos_token_id
    model = hf_causal_lm(data.num_classes, config=config, in_shape=data.in_shape)
    optimizer = functools.partial(torch.optim.AdamW, weight_decay=0.1)
    train(model, data, Recipe(args.epochs, 32, 2e-3, optimizer, "cosine"), args.seed)
    model.model.save_pretrained(args.out)
    perplexity = math.exp(evaluate(model, data.test)["loss"])
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.out}: {params / 1e6:.2f}M parameters, {len(data.train)} training windows of {CONTEXT} tokens, "
        f"test perplexity {perplexity:.3f}, {(time.perf_counter() - start) / 60:.1f} min on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
