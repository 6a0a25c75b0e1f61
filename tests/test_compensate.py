"""FLAP's bias compensation (method=width method.compensate=mean): the bias equal to
CASIA-IVA-Lab/FLAP's ``compress`` at 3bb57db3 (``(baseline_inp * ~mask) @ W.T``, ``baseline_inp``
the running mean of ``BiasGPT.add_batch`` over the dense model's windows, written out here), the
mean output it restores, the Hugging Face folder that holds it, and the lines that refuse it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import runs
from test_depth import CONFIGS, VOCAB, data, tokens
from test_owl import llama_on_wikitext  # noqa: F401 (a fixture)

from prunelab.deploy.hf import write_hf
from prunelab.models import lm
from prunelab.names import Metric
from prunelab.pruning import PruningError, Width, prune, shrink

transformers = pytest.importorskip("transformers")
LLAMA = "model.model.layers.{}"
SAMPLES = 16


def model_of(arch: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return lm.hf_causal_lm(VOCAB, config={**CONFIGS[arch], "vocab_size": VOCAB, **options}).eval()


def reference_baseline(model, names: list[str], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """``BiasGPT.baseline_inp`` of each layer: one window per ``add_batch``, the dense model run on it,
    ``baseline_inp = baseline_inp * n / (n + 1) + mean over the window's tokens / (n + 1)``."""
    baseline = {name: 0.0 for name in names}
    seen = {"n": 0}

    def hook(name):
        def add_batch(_module, args):
            inp = args[0].reshape(-1, args[0].shape[-1]).t().double()
            n = seen["n"]
            baseline[name] = baseline[name] * n / (n + 1) + inp.mean(dim=1) / (n + 1)

        return add_batch

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in names]
    with torch.no_grad():
        for window in windows:
            model(window.unsqueeze(0))
            seen["n"] += 1
    for handle in handles:
        handle.remove()
    return baseline


def pruned_with_compensation(arch: str, **options):
    model = model_of(arch, **options)
    result = prune(model, Width(compensate="mean", samples=SAMPLES), "local", 0.5, data=data())
    return model, result


def test_the_bias_is_the_references_from_the_dense_models_mean_inputs():
    model, result = pruned_with_compensation("llama")
    names = [LLAMA.format(i) + p for i in range(4) for p in (".self_attn.o_proj", ".mlp.down_proj")]
    windows = data().calibration(SAMPLES, 0, "train")

    baseline = reference_baseline(model, names, windows)  # the model is still dense: nothing applied

    for name in names:
        mask = result.mask.masks[f"{name}.weight"].bool().any(dim=0)  # FLAP's attn_mask / mlp_mask: kept
        weight = model.get_submodule(name).weight.detach().double()
        theirs = (baseline[name] * ~mask) @ weight.T
        assert torch.allclose(result.compensation.biases[name], theirs, atol=1e-9), name
        assert bool((~mask).any())


def test_the_compensated_layer_gives_the_dense_mean_output_on_the_calibration_windows():
    dense = model_of("llama")
    model, result = pruned_with_compensation("llama")
    plain = model_of("llama")
    prune(plain, Width(), "local", 0.5, data=data()).apply(plain)  # the same heads and channels, no bias
    result.apply(model)
    x = data().calibration(SAMPLES, 0, "train")

    def mean_output(m) -> torch.Tensor:
        out = []
        handle = m.get_submodule(LLAMA.format(0) + ".self_attn.o_proj").register_forward_hook(
            lambda _m, _a, o: out.append(o.detach().reshape(-1, o.shape[-1]))
        )
        with torch.no_grad():
            m(x)
        handle.remove()
        return torch.cat(out).double().mean(0)

    assert torch.allclose(mean_output(model), mean_output(dense), atol=1e-5)
    assert not torch.allclose(mean_output(plain), mean_output(dense), atol=1e-3)


def test_a_llama_folder_says_its_biases_in_its_config_and_reloads_as_it_ran(tmp_path):
    model, result = pruned_with_compensation("llama")
    result.apply(model)
    small = shrink(model, result.mask, tokens(1))

    assert write_hf(small, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["attention_bias"] is True
    assert config["mlp_bias"] is True
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = tokens()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x).logits.transpose(1, 2), small(x), atol=1e-5, rtol=0)


def test_a_model_whose_projections_have_biases_gets_the_compensation_added():
    model = model_of("opt")
    before = model.get_submodule("model.model.decoder.layers.0.fc2").bias.detach().clone()
    result = prune(model, Width(compensate="mean", samples=SAMPLES, heads="none"), "local", 0.5, data=data())
    result.apply(model)

    assert not result.compensation.config
    added = result.compensation.biases["model.model.decoder.layers.0.fc2"]
    assert torch.allclose(model.get_submodule("model.model.decoder.layers.0.fc2").bias, before + added.float())


def test_compensation_where_the_architecture_cannot_hold_the_bias_is_one_line():
    model = lm.hf_causal_lm(
        VOCAB, config={**CONFIGS["llama"], "model_type": "mistral", "vocab_size": VOCAB, "sliding_window": None}
    )
    with pytest.raises(
        PruningError,
        match=r"^method.compensate=mean adds a bias to model.model.layers.0.self_attn.o_proj, which has none",
    ):
        prune(model, Width(compensate="mean", samples=SAMPLES), "local", 0.5, data=data())
    with pytest.raises(PruningError, match=r"^method.compensate='median': one of mean"):
        Width(compensate="median")
    with pytest.raises(PruningError, match=r"^method.samples: the calibration windows of method.compensate"):
        Width(samples=8)


def test_flap_compensation_runs_through_the_command_line_without_training(cli, workdir, llama_on_wikitext):  # noqa: F811
    width = ["method=width", "criterion=activation", "scope=local", "ratio=0.5"]
    result = cli(
        *llama_on_wikitext, "train.epochs=0", "finetune.epochs=0", *width, "method.compensate=mean", "method.samples=8"
    )

    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    assert run.data.params["method.compensate"] == "mean"
    assert Metric.TEST_PERPLEXITY in run.data.metrics
