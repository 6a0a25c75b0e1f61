"""A pretrained language model with its own tokenizer: WikiText-2 cut in the model's tokens as the
pruning papers cut it, a checkpoint folder as the dense model (evaluated, never trained), and one
readable line for each input that cannot work."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import runs
from torch.nn import functional as F

from prunelab.data import DataError
from prunelab.data import text as text_data
from prunelab.data import tokens as tokens_data
from prunelab.experiment.train import evaluate
from prunelab.models import ModelError, lm
from prunelab.names import Metric, Tag

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SEQ = 32
ARTICLE = (
    " = {title} = \n \n The {title} is a small thing , known for {n} @,@ 000 years . It was first seen in"
    " the north , and later in the south . \n \n = = History = = \n \n In 19{n} the {title} was moved"
    ' to a new home . Its keepers wrote that it " grew every spring " . \n \n'
)


def write_wikitext(folder, articles: int = 12):
    """wiki.{train,valid,test}.raw in the published layout: ' = Title = ' headings, ' ' blank lines."""
    folder.mkdir(parents=True, exist_ok=True)
    titles = ["lobster", "bridge", "comet", "harbour", "violin", "glacier"]
    for split, offset in (("train", 0), ("valid", 1), ("test", 2)):
        body = "".join(ARTICLE.format(title=titles[(i + offset) % 6], n=10 + i + offset) for i in range(articles))
        (folder / f"wiki.{split}.raw").write_text(body, encoding="utf-8")
    return folder


# Tiny configs of the three architectures the papers prune (vocabulary and special tokens added).
ARCHITECTURES = {
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "opt": dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64, word_embed_proj_dim=32),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=64),
}  # fmt: skip


def llama_folder(tmp_path, corpus: str, vocab: int = 300, model_vocab: int | None = None, arch: str = "llama"):
    """A tiny model (LLaMA by default) and its own BPE tokenizer (trained here), saved as one
    Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([corpus], trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"]))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    folder = tmp_path / f"tiny-{arch}"
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    options = dict(ARCHITECTURES[arch])
    config = transformers.AutoConfig.for_model(
        options.pop("model_type"),
        vocab_size=model_vocab or len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **options,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def checkpoint_on_wikitext(model_folder, folder) -> list[str]:
    """The overrides that prune a checkpoint folder on the local WikiText-2 files, no fine-tuning."""
    return [
        "model=hf_causal_lm",
        f"model.pretrained={model_folder}",
        "dataset=wikitext2",
        f"dataset.root={folder}",
        "dataset.url=null",
        f"dataset.seq_len={SEQ}",
        "finetune.epochs=0",
    ]


@pytest.fixture
def wiki(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = write_wikitext(tmp_path / "wikitext-2")
    return folder, llama_folder(tmp_path, (folder / "wiki.train.raw").read_text())


def papers_perplexity(model_folder, test_file) -> float:
    """The evaluation loop of the papers' code, written out: the rows joined by "\\n\\n", tokenized
    once, non-overlapping windows, each window's loss over its own next tokens."""
    tok = transformers.AutoTokenizer.from_pretrained(model_folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_folder).eval()
    with open(test_file, encoding="utf-8") as f:
        rows = [row if row.strip() else "" for row in f]  # the Hugging Face wikitext loader's rows
    ids = tok("\n\n".join(rows), return_tensors="pt").input_ids
    windows = ids.numel() // SEQ
    nlls = []
    with torch.no_grad():
        for i in range(windows):
            batch = ids[:, i * SEQ : (i + 1) * SEQ]
            logits = model(input_ids=batch).logits
            loss = F.cross_entropy(logits[0, :-1].float(), batch[0, 1:])
            nlls.append(loss * SEQ)
    return math.exp(torch.stack(nlls).sum().item() / (windows * SEQ))


def test_wikitext2_in_the_models_tokens_gives_the_papers_perplexity(wiki):
    folder, model_folder = wiki
    splits = text_data.wikitext2(folder, seq_len=SEQ, url=None, sha256=None, tokenizer=str(model_folder))
    tok = transformers.AutoTokenizer.from_pretrained(model_folder)
    assert splits.num_classes == len(tok)
    assert splits.test.x.shape[1] == SEQ
    assert bool((splits.test.y[:, -1] == -100).all())
    model = lm.hf_causal_lm(splits.num_classes, pretrained=str(model_folder), in_shape=(SEQ,))
    ours = math.exp(evaluate(model, splits.test)["loss"])
    assert ours == pytest.approx(papers_perplexity(model_folder, folder / "wiki.test.raw"), rel=1e-6)


def test_a_split_is_tokenized_once_and_read_back_from_the_cache(wiki, tmp_path):
    folder, model_folder = wiki
    tok = tokens_data.load_tokenizer(str(model_folder))
    text = (folder / "wiki.test.raw").read_text()
    first = tokens_data.encode(tok, text)
    (cached,) = (tmp_path / "cache" / "prunelab" / "tokens").glob("*.pt")
    torch.save(torch.arange(5), cached)  # what the cache holds is what comes back
    assert torch.equal(tokens_data.encode(tok, text), torch.arange(5))
    assert not torch.equal(tokens_data.encode(tok, text + " more"), torch.arange(5))  # other text, other entry
    assert torch.equal(first, torch.as_tensor(tok(text)["input_ids"]))


def test_a_pretrained_folder_is_the_dense_model_of_every_point_and_is_not_trained(cli, workdir, wiki):
    folder, model_folder = wiki
    result = cli(
        "-m",
        *checkpoint_on_wikitext(model_folder, folder),
        "train.epochs=0",
        "method=sparsegpt",
        "method.samples=8",
        "scope=local",
        "ratio=0.5,0.6",
        "handover=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (dense,), pruned = runs(workdir, "dense"), runs(workdir, "pruned")
    assert len(pruned) == 2
    assert {r.data.tags[Tag.DENSE_KEY] for r in pruned} == {dense.data.tags[Tag.DENSE_KEY]}
    assert Metric.TRAIN_LOSS not in dense.data.metrics  # evaluated, not trained
    expected = papers_perplexity(model_folder, folder / "wiki.test.raw")
    assert dense.data.metrics[Metric.TEST_PERPLEXITY] == pytest.approx(expected, rel=1e-5)
    for run in pruned:
        ratio = float(run.data.params["ratio"])
        assert run.data.metrics[Metric.SPARSITY_PRUNABLE] == pytest.approx(ratio, abs=0.01)
        assert run.data.metrics[Metric.at(Metric.DENSE, Metric.TEST_PERPLEXITY)] == pytest.approx(expected, rel=1e-5)
        assert math.isfinite(run.data.metrics[Metric.TEST_PERPLEXITY])


def test_the_dense_key_follows_the_checkpoints_files_not_their_path(make_cfg, wiki, tmp_path):
    import shutil

    from prunelab.experiment.keys import identity

    _, model_folder = wiki
    moved = tmp_path / "elsewhere"
    shutil.copytree(model_folder, moved)
    keys = [
        identity(make_cfg("model=hf_causal_lm", f"model.pretrained={p}"), "cpu").dense for p in (model_folder, moved)
    ]
    assert keys[0] == keys[1]
    (moved / "config.json").write_text(
        (moved / "config.json").read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05')
    )
    assert identity(make_cfg("model=hf_causal_lm", f"model.pretrained={moved}"), "cpu").dense != keys[0]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_each_architectures_folder_goes_through_every_post_training_method(cli, workdir, wiki, tmp_path, arch):
    """LLaMA, OPT and GPT-2 checkpoints with their own tokenizers: magnitude, Wanda and SparseGPT,
    unstructured and 2:4, each reaching its sparsity, each pruned model's perplexity logged."""
    folder, _ = wiki
    model_folder = llama_folder(tmp_path, (folder / "wiki.train.raw").read_text(), arch=arch)
    common = ["-m", *checkpoint_on_wikitext(model_folder, folder), "scope=local", "ratio=0.5", "handover=false"]
    two_of_four = ["method=nm,wanda,sparsegpt", "++method.n=2", "++method.m=4"]
    for pattern in (["method=unstructured,wanda,sparsegpt"], two_of_four):
        result = cli(*common, *pattern)
        failed = [r.data.tags.get(Tag.ERROR) for r in runs(workdir, "pruned") if r.info.status != "FINISHED"]
        assert result.returncode == 0, failed
    pruned = runs(workdir, "pruned")
    (dense,) = runs(workdir, "dense")
    pattern_of = {r.info.run_id: r.data.params.get("method.n", "None").replace("None", "-") for r in pruned}
    assert sorted((r.data.params["method"], pattern_of[r.info.run_id]) for r in pruned) == [
        ("nm", "2"), ("sparsegpt", "-"), ("sparsegpt", "2"), ("unstructured", "-"), ("wanda", "-"), ("wanda", "2")
    ]  # fmt: skip
    for run in pruned:
        assert run.data.metrics[Metric.SPARSITY_PRUNABLE] == pytest.approx(0.5, abs=0.01), run.data.params["method"]
        assert math.isfinite(run.data.metrics[Metric.TEST_PERPLEXITY])
        assert (
            run.data.metrics[Metric.at(Metric.DENSE, Metric.TEST_PERPLEXITY)]
            == dense.data.metrics[Metric.TEST_PERPLEXITY]
        )


# --- bad input, one line each ---------------------------------------------------------------------


def test_a_model_folder_that_does_not_exist(tmp_path):
    with pytest.raises(ModelError, match=r"^model.pretrained=.*nowhere: no such folder$"):
        lm.hf_causal_lm(pretrained=str(tmp_path / "nowhere"))


def test_a_window_longer_than_the_models_context(wiki):
    _, model_folder = wiki
    with pytest.raises(ModelError, match=r"dataset.seq_len=128 exceeds the model's context of 64 tokens"):
        lm.hf_causal_lm(100, pretrained=str(model_folder), in_shape=(128,))


def test_a_tokenizer_that_is_missing(wiki, tmp_path):
    folder, _ = wiki
    empty = tmp_path / "no-tokenizer"
    empty.mkdir()
    with pytest.raises(DataError, match=r"^no tokenizer found at dataset.tokenizer=.*no-tokenizer") as e:
        text_data.wikitext2(folder, seq_len=SEQ, url=None, sha256=None, tokenizer=str(empty))
    assert "\n" not in str(e.value)


def test_a_dataset_whose_vocabulary_exceeds_the_models(wiki, tmp_path):
    folder, _ = wiki
    small = llama_folder(tmp_path / "small", (folder / "wiki.train.raw").read_text(), model_vocab=100)
    with pytest.raises(ModelError, match=r"vocabulary \(100\) is smaller than the dataset's"):
        lm.hf_causal_lm(len(transformers.AutoTokenizer.from_pretrained(small)), pretrained=str(small))
