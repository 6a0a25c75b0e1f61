"""LoRA recovery (finetune.lora): PEFT's adapters trained on the pruned model, merged with the mask
held (the sparsity after the merge is the pruned one), after unstructured, width and depth
pruning and with distillation, and the lines that refuse it."""

from __future__ import annotations

import pytest
import torch
from conftest import runs
from test_depth import model_of, tokens
from test_owl import llama_on_wikitext  # noqa: F401 (a fixture)

from prunelab.config import ConfigError
from prunelab.experiment.lora import Lora
from prunelab.names import Metric
from prunelab.pruning import prune

pytest.importorskip("peft")


def trained(model, adapters, steps: int = 5) -> None:
    """A few steps of next-token loss on the adapters (LoRA's B starts at zero: no update yet)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = tokens(8)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x)[:, :, :-1], x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert adapters.count() > 0


def test_only_the_adapters_train_and_the_merged_model_keeps_the_pruned_sparsity():
    model = model_of("llama")
    result = prune(model, "unstructured", "local", 0.5)
    result.apply(model)
    zeros = {n: int((p == 0).sum()) for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    adapters = Lora().attach(model)
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    trained(model, adapters)
    adapters.merge(result.mask)

    assert {n: int((p == 0).sum()) for n, p in model.named_parameters()} == zeros
    assert all(type(model.get_submodule(n)) is torch.nn.Linear for n in adapters.names)
    assert all(p.requires_grad for p in model.parameters())
    q = "model.model.layers.0.self_attn.q_proj.weight"
    kept = result.mask.masks[q]
    assert not torch.equal(dict(model.named_parameters())[q][kept], before[q][kept])  # the kept weights moved


def test_an_unmasked_merge_computes_what_the_adapted_model_computed():
    model = model_of("llama")
    adapters = Lora(targets=("q_proj", "v_proj")).attach(model)
    trained(model, adapters)
    x = tokens(2, seed=5)
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        adapters.merge()
        assert torch.allclose(model(x), adapted, atol=1e-5)
    assert len(adapters.names) == 8  # q and v of four blocks


def test_lora_options_outside_their_use_are_one_line():
    with pytest.raises(ConfigError, match=r"^finetune.lora_targets=\['wq'\] match no nn.Linear layer of the model"):
        Lora(targets=("wq",)).targeted(model_of("llama"))
    with pytest.raises(ConfigError, match=r"^finetune.lora_rank=0 must be >= 1"):
        Lora(rank=0)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["method=wanda", "scope=local", "method.samples=8", "ratio=0.5"], id="unstructured"),
        pytest.param(["method=width", "criterion=activation", "scope=local", "ratio=0.5"], id="width"),
        pytest.param(["method=blocks", "ratio=0.5"], id="blocks"),
        pytest.param(
            ["method=width", "criterion=activation", "scope=local", "finetune.distill=true"], id="width-distill"
        ),
    ],
)
def test_lora_recovers_after_each_pruning_through_the_command_line(cli, workdir, llama_on_wikitext, options):  # noqa: F811
    plain = cli(*llama_on_wikitext, "train.epochs=0", "finetune.epochs=1", *options)
    result = cli(*llama_on_wikitext, "train.epochs=0", "finetune.epochs=1", "finetune.lora=true", *options)

    assert plain.returncode == 0, plain.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    with_lora, without = sorted(runs(workdir, "pruned"), key=lambda r: "finetune.lora" not in r.data.params)
    metrics = with_lora.data.metrics
    assert with_lora.data.params["finetune.lora"] == "True"
    assert 0 < metrics[Metric.FINETUNE_TRAINABLE] < metrics[Metric.cost(Metric.DENSE, Metric.PARAMS)] / 3
    # the merged model holds the mask: as many nonzero weights as the mask-held full fine-tuning
    assert metrics[Metric.PARAMS_PRUNABLE_NONZERO] == without.data.metrics[Metric.PARAMS_PRUNABLE_NONZERO]
    assert metrics[Metric.TEST_PERPLEXITY] != without.data.metrics[Metric.TEST_PERPLEXITY]


def test_lora_targets_that_match_nothing_are_one_line_before_any_run(cli, workdir, llama_on_wikitext):  # noqa: F811
    result = cli(*llama_on_wikitext, "train.epochs=0", "finetune.lora=true", "finetune.lora_targets=[wq]")

    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("prunelab: error: finetune.lora_targets=['wq'] match no")
    assert all(r.info.status == "FAILED" for r in runs(workdir))  # none left RUNNING, none FINISHED


def test_lora_without_peft_installed_is_one_line(cli, workdir, llama_on_wikitext, monkeypatch):  # noqa: F811
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find(name, *a))
    result = cli(*llama_on_wikitext, "train.epochs=0", "finetune.lora=true")

    assert result.returncode != 0
    assert "PEFT, which is not installed: pip install 'prunelab[lora]'" in result.stderr.strip().splitlines()[-1]
    assert all(r.info.status == "FAILED" for r in runs(workdir))  # none left RUNNING, none FINISHED


def test_lora_options_without_lora_are_one_line(cli, llama_on_wikitext):  # noqa: F811
    result = cli(*llama_on_wikitext, "train.epochs=0", "finetune.lora_rank=4")

    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("finetune.lora_rank is LoRA's option: it needs finetune.lora=true")
    )
