"""Recipes and the canonical models: a recipe is one word that sets the optimizer, learning rates and
epochs, and the run key carries it; given the plain script's recipe, prunelab computes exactly what
a plain PyTorch script with ``torch.nn.utils.prune`` computes."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from benchmarks.baseline_recipes import Job, plain, prunelab
from prunelab import models
from prunelab.experiment.keys import identity


def test_a_recipe_sets_the_optimizer_rates_and_epochs_in_one_word(make_cfg):
    cfg = make_cfg("recipe=sgd")
    optimizer = instantiate(cfg.train.optimizer)([torch.zeros(1, requires_grad=True)], lr=cfg.train.lr)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 5e-4
    assert (cfg.recipe, cfg.train.lr, cfg.finetune.lr) == ("sgd", 0.05, 0.01)
    adamw = make_cfg("recipe=adamw")
    assert adamw.train.optimizer._target_ == "torch.optim.AdamW"
    assert adamw.train.optimizer.weight_decay == 0.05


def test_the_default_recipe_is_sgd_with_the_learning_rate_rewound_for_fine_tuning(make_cfg):
    cfg = make_cfg()
    assert cfg.recipe == "sgd_rewind"
    assert cfg.train.optimizer._target_ == "torch.optim.SGD"
    assert cfg.finetune.lr == cfg.train.lr == 0.05


def test_an_override_on_top_of_a_recipe_wins(make_cfg):
    assert make_cfg("recipe=sgd", "finetune.lr=0.003").finetune.lr == 0.003


def test_the_run_key_and_the_dense_key_carry_the_recipe(make_cfg):
    sgd, adamw = make_cfg("recipe=sgd"), make_cfg("recipe=adamw")
    assert identity(sgd, "cpu").run != identity(adamw, "cpu").run
    assert identity(sgd, "cpu").dense != identity(adamw, "cpu").dense


@pytest.mark.parametrize(
    ("factory", "params", "weights"),
    [
        (models.lenet5_classic, 61_706, 61_470),  # the textbook count
        (models.lenet5_caffe, 431_080, 430_500),  # Han et al. 2015, Table 1: 431K weights
        (models.lenet5, 107_786, 107_550),
    ],
)
def test_the_lenet5_variants_have_their_published_sizes(factory, params, weights):
    model = factory()
    assert sum(p.numel() for p in model.parameters()) == params
    assert (
        sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))) == weights
    )
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_model_too_large_for_the_input_says_so_in_one_line():
    from prunelab.models import ModelError

    with pytest.raises(ModelError, match="lenet5_classic cannot take 1x8x8 inputs"):
        models.lenet5_classic(in_shape=(1, 8, 8))


@pytest.mark.parametrize("model", ["lenet5", "lenet300_100"])
def test_prunelab_with_the_plain_recipe_reproduces_the_plain_pytorch_script_exactly(workdir, model):
    overrides = (
        f"model={model}",
        "recipe=sgd",
        "dataset=digits",
        "train.epochs=4",
        "train.batch_size=32",
        "finetune.epochs=2",
    )
    points = (("global", 0.9), ("local", 0.8))
    by_hand = plain(Job("plain", "plain", overrides, 1, points))
    ours = prunelab(Job("prunelab", "prunelab", overrides, 1, points, str(workdir / "cache")))
    assert [(p.dense, p.pruned, p.finetuned) for p in ours] == [(p.dense, p.pruned, p.finetuned) for p in by_hand]
    # The runs learned and pruning cost something: equal is not trivially equal.
    assert all(p.finetuned > 0.85 and p.pruned < p.dense for p in ours)


def test_the_study_block_in_results_survives_make_bench_and_is_replaced_not_repeated(tmp_path):
    from benchmarks.__main__ import with_kept_blocks
    from benchmarks.common import write_block

    results = tmp_path / "RESULTS.md"
    results.write_text("# prunelab benchmarks\n\nold sections\n")
    write_block("baseline_recipes", "## Baseline recipes\n\nfirst", results)
    write_block("baseline_recipes", "## Baseline recipes\n\nsecond", results)
    text = results.read_text()
    assert text.count("## Baseline recipes") == 1
    assert "second" in text
    assert "old sections" in text
    rewritten = with_kept_blocks("# prunelab benchmarks\n\nnew sections\n", text)
    assert "new sections" in rewritten
    assert "old sections" not in rewritten
    assert rewritten.count("## Baseline recipes") == 1
    assert "second" in rewritten
