"""Zero-shot accuracy through lm-evaluation-harness, in process, offline: a task of our own (a
local YAML over a local JSON file) scored on the model object as it is, dense and pruned."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import runs
from test_tokens import llama_folder, write_wikitext

from prunelab.config import ConfigError
from prunelab.experiment.zeroshot import ZeroShot, figures
from prunelab.models import lm
from prunelab.names import Metric

transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

TASK = "colours_mc"
COLOURS = ["red", "green", "blue", "yellow"]


def write_task(folder, items: int = 24):
    """A multiple-choice task as the harness defines one: a YAML over a local JSON-lines file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    data = folder / f"{TASK}.jsonl"
    with data.open("w") as f:
        for i in range(items):
            thing = rng.choice(["comet", "harbour", "violin", "bridge"])
            choices = rng.sample(COLOURS, k=4)  # each item its own order: no fixed answer scores by luck
            item = {"question": f"The {thing} number {i} is", "choices": choices, "label": rng.randrange(4)}
            f.write(json.dumps(item) + "\n")
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
        "metadata:\n  version: 1.0\n"
    )
    return folder, data


def by_hand(model, tokenizer, data) -> float:
    """The harness's multiple-choice accuracy written out: each choice scored by the summed
    log-probability of its tokens after the question (" " + choice, the text tokenized whole and
    split after the question's tokens); the best-scored choice right or not."""
    right = 0
    items = [json.loads(line) for line in data.read_text().splitlines()]
    with torch.no_grad():
        for item in items:
            scores = []
            for choice in item["choices"]:
                context = tokenizer.encode(item["question"])
                whole = tokenizer.encode(item["question"] + " " + choice)
                logits = model(input_ids=torch.tensor([whole[:-1]])).logits[0].log_softmax(-1)
                scores.append(sum(float(logits[i - 1, whole[i]]) for i in range(len(context), len(whole))))
            right += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    return right / len(items)


@pytest.fixture
def task(tmp_path, monkeypatch):
    for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    folder, data = write_task(tmp_path / "tasks")
    wiki = write_wikitext(tmp_path / "wikitext-2")
    return folder, data, wiki, llama_folder(tmp_path, (wiki / "wiki.train.raw").read_text())


def test_the_harness_scores_the_model_object_as_it_is(task):
    folder, data, _, model_folder = task
    model = lm.hf_causal_lm(1, pretrained=str(model_folder))
    zeroshot = ZeroShot((TASK,), str(model_folder), str(folder))
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_folder)
    dense = zeroshot(model, "cpu")
    assert dense == {Metric.zeroshot(TASK): pytest.approx(by_hand(model.model, tokenizer, data))}
    with torch.no_grad():  # another model in the same object: its own score
        for p in model.parameters():
            p.mul_((torch.rand_like(p) > 0.5).to(p.dtype))
    assert zeroshot(model, "cpu")[Metric.zeroshot(TASK)] == pytest.approx(by_hand(model.model, tokenizer, data))


def test_a_run_logs_the_dense_and_the_pruned_models_zero_shot_accuracy(cli, workdir, task, monkeypatch):
    folder, data, wiki, model_folder = task
    options = [
        "model=hf_causal_lm",
        f"model.pretrained={model_folder}",
        "dataset=wikitext2",
        f"dataset.root={wiki}",
        "dataset.url=null",
        "dataset.seq_len=32",
        "finetune.epochs=0",
        "method=sparsegpt",
        "method.samples=8",
        "scope=local",
        "ratio=0.7",
        "handover=false",
        f"eval.tasks=[{TASK}]",
        f"eval.include={folder}",
    ]
    result = cli(*options)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    dense = transformers.AutoModelForCausalLM.from_pretrained(model_folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_folder)
    key = Metric.zeroshot(TASK)
    assert run.data.metrics[Metric.at(Metric.DENSE, key)] == pytest.approx(by_hand(dense, tokenizer, data))
    assert 0 <= run.data.metrics[key] <= 1
    assert run.data.params["eval.tasks"] == f"['{TASK}']"

    # another point over the same checkpoint: the dense model's scores are read, not measured again
    scored = []
    harness = ZeroShot.__call__
    monkeypatch.setattr(ZeroShot, "__call__", lambda self, *a: scored.append(1) or harness(self, *a))
    assert cli(*options, "ratio=0.5").returncode == 0
    again = next(r for r in runs(workdir, "pruned") if r.info.run_id != run.info.run_id)
    assert len(scored) == 1  # the pruned model's
    assert again.data.metrics[Metric.at(Metric.DENSE, key)] == run.data.metrics[Metric.at(Metric.DENSE, key)]


def test_the_harness_results_become_metrics():
    results = {TASK: {"alias": TASK, "acc,none": 0.5, "acc_stderr,none": "N/A", "acc_norm,none": 0.25}}
    assert figures(results, [TASK]) == {f"zeroshot.{TASK}.acc": 0.5, f"zeroshot.{TASK}.acc_norm": 0.25}


def test_zero_shot_tasks_need_a_hugging_face_model_and_its_tokenizer(task):
    _, _, _, model_folder = task
    with pytest.raises(ConfigError, match=r"^eval.tasks needs model=hf_causal_lm"):
        ZeroShot((TASK,), str(model_folder)).check(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"^eval.tasks needs the model's tokenizer"):
        ZeroShot((TASK,), None).check(lm.hf_causal_lm(1, pretrained=str(model_folder)))
