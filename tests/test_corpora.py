"""The corpora the papers publish on, in a model's own tokens: C4 (evaluation cut and calibration
windows as the papers' ``get_c4`` makes them), the Penn Treebank, a user's own files; windows as
long as the model's context by default; the calibration source chosen by ``method.calibration``."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import torch
from conftest import runs
from test_tokens import ARTICLE, llama_folder

from prunelab.data import DataError, c4, ptb, text_files
from prunelab.data import c4_shards as c4_files
from prunelab.data.tokens import Tokens
from prunelab.names import Metric
from prunelab.pruning import Local, PruneData, PruningError, Wanda

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

SEQ = 16
WORDS = [
    "the",
    "of",
    "a",
    "harbour",
    "comet",
    "violin",
    "glacier",
    "bridge",
    "lobster",
    "keeper",
    "spring",
    "north",
    "south",
    "moved",
    "grew",
]


def document(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def write_c4(folder, train_docs: int = 300, validation_docs: int = 2300):
    """The two shards in the published format: gzip-compressed JSON lines of text, timestamp, url;
    documents of every length, short ones included."""
    rng = random.Random(7)
    (folder / "en").mkdir(parents=True, exist_ok=True)
    for name, count in ((c4_files.C4_TRAIN, train_docs), (c4_files.C4_VALIDATION, validation_docs)):
        with gzip.open(folder / "en" / name, "wt", encoding="utf-8") as f:
            for i in range(count):
                record = {
                    "text": document(rng, rng.choice([2, 5, 30, 80])),
                    "timestamp": "2019-04-25T12:57:54Z",
                    "url": f"https://example.com/{i}",
                }
                f.write(json.dumps(record) + "\n")
    return folder


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    rng = random.Random(0)
    text = " ".join(document(rng, 40) for _ in range(200)) + ARTICLE
    return write_c4(tmp_path / "c4"), llama_folder(tmp_path, text, vocab=300)


def papers_c4(model_folder, folder, samples: int, seed: int, seq_len: int):
    """SparseGPT's get_c4, written out over the local shards."""
    tok = transformers.AutoTokenizer.from_pretrained(model_folder)

    def rows(name):
        with gzip.open(folder / "en" / name, "rt", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f]

    train, validation = rows(c4_files.C4_TRAIN), rows(c4_files.C4_VALIDATION)
    random.seed(seed)
    windows = []
    for _ in range(samples):
        while True:
            i = random.randint(0, len(train) - 1)
            enc = tok(train[i], return_tensors="pt").input_ids
            if enc.shape[1] > seq_len:
                break
        i = random.randint(0, enc.shape[1] - seq_len - 1)
        windows.append(enc[0, i : i + seq_len])
    valenc = tok(" ".join(validation[:1100]), return_tensors="pt").input_ids[:, : 256 * seq_len]
    return torch.stack(windows), valenc


def test_c4_calibration_and_evaluation_are_the_papers_windows(corpus):
    folder, model_folder = corpus
    splits = c4(folder, seq_len=SEQ, url=None, tokenizer=str(model_folder))
    calibration, valenc = papers_c4(model_folder, folder, samples=8, seed=3, seq_len=SEQ)
    assert torch.equal(splits.calibration["c4"](8, 3), calibration)
    assert not torch.equal(splits.calibration["c4"](8, 4), calibration)  # the seed draws them
    assert splits.test.x.shape == (256, SEQ)
    assert torch.equal(splits.test.x.flatten(), valenc.flatten())
    assert bool((splits.test.y[:, -1] == -100).all())
    assert torch.equal(splits.test.y[:, :-1], splits.test.x[:, 1:])


def test_c4_calibration_is_cached_and_read_back(corpus, tmp_path):
    folder, model_folder = corpus
    tokens = Tokens(str(model_folder))
    first = c4_files.c4_calibration(tokens, SEQ, 4, 0, root=folder, url=None)
    (cached,) = (tmp_path / "cache" / "prunelab" / "calibration").glob("*.pt")
    torch.save(torch.zeros(4, SEQ, dtype=torch.long), cached)  # what the cache holds is what comes back
    assert not c4_files.c4_calibration(tokens, SEQ, 4, 0, root=folder, url=None).any()
    assert first.shape == (4, SEQ)
    assert first.any()


def test_a_shard_changed_after_it_was_first_read_is_refused(corpus):
    folder, model_folder = corpus
    c4(folder, seq_len=SEQ, url=None, tokenizer=str(model_folder))
    shard = folder / "en" / c4_files.C4_VALIDATION
    assert (shard.parent / (shard.name + ".sha256")).is_file()
    with gzip.open(shard, "at", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one more", "timestamp": "", "url": ""}) + "\n")
    with pytest.raises(DataError, match=r"does not match its SHA-256 \(taken when it was first read\)"):
        c4(folder, seq_len=SEQ, url=None, tokenizer=str(model_folder))


def test_ptb_sentences_are_joined_by_spaces_in_the_models_tokens(corpus, tmp_path):
    _, model_folder = corpus
    folder = tmp_path / "ptb"
    folder.mkdir()
    rng = random.Random(1)
    for split in ("train", "valid", "test"):  # Mikolov's layout: " sentence \n", <unk> for rare words
        lines = [f" {document(rng, 12)[:-1]} <unk> \n" for _ in range(60)]
        (folder / f"ptb.{split}.txt").write_text("".join(lines), encoding="utf-8")
    splits = ptb(folder, seq_len=SEQ, url=None, tokenizer=str(model_folder))
    tok = transformers.AutoTokenizer.from_pretrained(model_folder)
    lines = (folder / "ptb.test.txt").read_text(encoding="utf-8").splitlines()
    ids = tok(" ".join(line.strip() for line in lines)).input_ids
    n = len(ids) // SEQ
    assert torch.equal(splits.test.x.flatten(), torch.tensor(ids[: n * SEQ]))
    assert splits.num_classes == len(tok)


def test_a_users_text_files_as_bytes_or_tokens(tmp_path, corpus):
    _, model_folder = corpus
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / name).write_text(ARTICLE.format(title=name, n=12) * 4, encoding="utf-8")
    as_bytes = text_files(tmp_path, seq_len=SEQ)
    assert as_bytes.num_classes == 256
    assert as_bytes.test.x.shape[1] == SEQ
    assert bytes(as_bytes.test.x[0].tolist()) == (tmp_path / "test.txt").read_bytes()[:SEQ]
    as_tokens = text_files(tmp_path, tokenizer=str(model_folder))
    assert as_tokens.test.x.shape[1] == 64  # the model's context (max_position_embeddings)
    assert text_files(tmp_path, tokenizer=str(model_folder), max_seq_len=24).test.x.shape[1] == 24
    with pytest.raises(DataError, match=r"^dataset=text: no such file .*nothing.txt"):
        text_files(tmp_path, test="nothing.txt")


def test_c4_offline_without_the_file_is_one_line(corpus):
    _, model_folder = corpus
    with pytest.raises(DataError, match=r"^C4's c4-train.00000-of-01024.json.gz is not in .* set PRUNELAB_DATA") as e:
        c4_files.c4_calibration(Tokens(str(model_folder)), SEQ, 4, 0, url="http://127.0.0.1:9/{revision}/{file}")
    assert "\n" not in str(e.value)


def test_calibration_comes_from_the_source_the_method_names():
    x = torch.arange(64 * 8).view(64, 8)
    c4_windows = torch.full((4, 8), 7)
    data = PruneData((x, torch.zeros(64, dtype=torch.long)), sources={"c4": lambda *_: c4_windows})
    assert torch.equal(data.calibration(4, 0, "c4"), c4_windows)
    assert data.calibration(4, 0).shape == (4, 8)
    assert not torch.equal(data.calibration(4, 0), c4_windows)
    with pytest.raises(PruningError, match=r"^method.calibration=ptb: this dataset offers train, c4$"):
        data.calibration(4, 0, "ptb")
    model = torch.nn.Sequential(torch.nn.Embedding(600, 8), torch.nn.Linear(8, 8))
    with pytest.raises(PruningError, match=r"method.calibration=c4: this dataset offers train$"):
        Wanda(calibration="c4", ignore=[])(
            model, 0.5, scope=Local(), data=PruneData((x, torch.zeros(64, dtype=torch.long)))
        )


def test_a_run_calibrated_on_c4_prunes_a_pretrained_folder(cli, workdir, corpus):
    import shutil

    from test_tokens import write_wikitext

    folder, model_folder = corpus
    wiki = write_wikitext(folder.parent / "wikitext-2")
    shutil.copytree(folder, workdir / "xdg-cache" / "prunelab" / "c4")  # C4 found in the user cache
    result = cli(
        "-m",
        "model=hf_causal_lm",
        f"model.pretrained={model_folder}",
        "dataset=wikitext2",
        f"dataset.root={wiki}",
        "dataset.url=null",
        "finetune.epochs=0",
        "method=wanda",
        "method.samples=4",
        "method.calibration=train,c4",
        "scope=local",
        "ratio=0.5",
        "handover=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pruned = {run.data.params["method.calibration"]: run for run in runs(workdir, "pruned")}
    assert set(pruned) == {"train", "c4"}
    for run in pruned.values():
        assert run.data.metrics[Metric.SPARSITY_PRUNABLE] == pytest.approx(0.5, abs=0.01)
    # other calibration windows, another model: the C4 windows reached the method
    assert pruned["c4"].data.metrics[Metric.TEST_PERPLEXITY] != pruned["train"].data.metrics[Metric.TEST_PERPLEXITY]


def test_a_users_text_folder_is_known_by_its_files_not_its_path(make_cfg, tmp_path):
    """Two folders of the same files are one dataset (one dense model, one run); other files in
    the same folder are another."""
    import shutil

    from prunelab.experiment.keys import identity

    first = tmp_path / "mine"
    first.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (first / name).write_text(ARTICLE.format(title=name, n=12), encoding="utf-8")
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)

    def keys(folder):
        return identity(make_cfg("dataset=text", f"dataset.root={folder}"), "cpu")

    assert keys(first) == keys(copy)
    (copy / "train.txt").write_text("other words", encoding="utf-8")
    assert keys(copy).dense != keys(first).dense
    assert keys(copy).run != keys(first).run
