"""Language models: byte-level text data, the transformer models, and post-training pruning (Wanda,
SparseGPT) layer by layer from calibration data."""

from __future__ import annotations

import copy
import hashlib
import io
import math
import zipfile
from types import SimpleNamespace

import mlflow
import onnx
import pytest
import torch
from conftest import runs
from mlflow import MlflowClient
from torch import nn

from prunelab import analysis
from prunelab.data import DataError
from prunelab.data.text import fortunes, unigram_perplexity, wikitext2, windows
from prunelab.experiment import keys
from prunelab.experiment.train import evaluate, scores
from prunelab.models import lm
from prunelab.models.build import ModelError
from prunelab.names import Artifact, Metric
from prunelab.pruning import Local, PruneData, PruningError, SparseGPT, Wanda, prune, shrink
from prunelab.pruning.layerwise import calibration, sparsegpt_update, wanda_mask

TEXT = ("The quick brown fox jumps over the lazy dog. " * 3).encode()


def per_row_magnitude(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Kept: all but the round(ratio * columns) smallest |w| of every row."""
    k = round(ratio * weight.shape[1])
    kept = torch.ones_like(weight, dtype=torch.bool)
    kept.scatter_(1, weight.abs().topk(k, dim=1, largest=False).indices, False)
    return kept


def correlated_inputs(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Inputs with unequal scales and correlated features, as a layer inside a network sees them."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / math.sqrt(cols) + torch.eye(cols)
    return (torch.randn(rows, cols, generator=g) * torch.rand(cols, generator=g) * 3) @ mix


# --- text data ------------------------------------------------------------------------------


def test_windows_pair_each_byte_with_the_next():
    split = windows(b"abcdefg", 3)
    assert split.x.tolist() == [list(b"abc"), list(b"def")]
    assert split.y.tolist() == [list(b"bcd"), list(b"efg")]


def write_fortunes(folder, count: int = 60):
    folder.mkdir(parents=True, exist_ok=True)
    records = [f"fortune number {i}: {TEXT.decode()}" for i in range(count)]
    split = count * 2 // 3
    (folder / "jokes").write_text("\n%\n".join(records[:split]) + "\n%\n")
    (folder / "jokes.dat").write_bytes(b"\x00index")  # strfile's index: not text
    (folder / "quotes").write_text("\n%\n".join(records[split:]) + "\n")
    (folder / "quotes.u8").symlink_to(folder / "quotes")  # the package's links: read once


def test_fortunes_are_split_by_position_every_20th_to_test_the_next_to_validation(tmp_path):
    write_fortunes(tmp_path / "fortunes")
    splits = fortunes(root=tmp_path / "fortunes", seq_len=16)
    text = {
        name: bytes(s.x.flatten().tolist())
        for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }
    assert text["test"].startswith(b"fortune number 0:")
    assert b"fortune number 20:" in text["test"]
    assert text["val"].startswith(b"fortune number 1:")
    assert b"fortune number 41:" in text["val"]
    assert text["train"].startswith(b"fortune number 2:")
    assert b"fortune number 59:" in text["train"]
    assert b"fortune number 0:" not in text["train"]
    assert b"index" not in text["train"]
    assert text["train"].count(b"fortune number 45:") == 1  # the .u8 link is not read twice
    assert splits.num_classes == 256
    assert splits.in_shape == (16,)


def test_fortunes_missing_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match="apt-get install fortunes"):
        fortunes(root=tmp_path)


def wikitext_zip(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in (("train", TEXT * 4), ("valid", TEXT), ("test", TEXT * 2)):
            z.writestr(f"wikitext-2-raw/wiki.{name}.raw", text)
    path = tmp_path / "served" / "wikitext-2-raw-v1.zip"
    path.parent.mkdir()
    path.write_bytes(buf.getvalue())
    return path, hashlib.sha256(buf.getvalue()).hexdigest()


def test_wikitext2_is_downloaded_once_checked_and_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    served, digest = wikitext_zip(tmp_path)
    splits = wikitext2(seq_len=32, url=served.as_uri(), sha256=digest)
    assert len(splits.train) == (len(TEXT * 4) - 1) // 32
    assert len(splits.test) == (len(TEXT * 2) - 1) // 32
    served.unlink()  # a second load needs no download
    assert torch.equal(wikitext2(seq_len=32, url=served.as_uri(), sha256=digest).test.x, splits.test.x)


def test_a_corrupted_wikitext2_download_is_refused_and_not_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    served, _ = wikitext_zip(tmp_path)
    with pytest.raises(DataError, match="checksum mismatch"):
        wikitext2(url=served.as_uri(), sha256="0" * 64)
    assert not list((tmp_path / "cache").rglob("*.raw"))
    assert not list((tmp_path / "cache").rglob("*.zip"))


# --- models and metrics ---------------------------------------------------------------------


def test_a_language_model_is_scored_per_token_and_its_perplexity_is_exp_of_the_loss():
    torch.manual_seed(0)
    split = windows(TEXT * 8, 16)
    model = lm.tiny_gpt((16,), 256, d_model=32, layers=1, heads=2)
    out = model(split.x)
    assert out.shape == (len(split), 256, 16)
    loss = nn.functional.cross_entropy(out, split.y).item()
    result = evaluate(model, split)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["accuracy"] == pytest.approx((out.argmax(1) == split.y).float().mean().item())
    assert scores(model, split)[Metric.TEST_PERPLEXITY] == pytest.approx(math.exp(loss), rel=1e-5)
    assert math.exp(loss) == pytest.approx(256, rel=0.05)  # an untrained LM: about uniform over bytes


def test_an_evaluation_batch_holds_a_bounded_number_of_logits(monkeypatch):
    """A large vocabulary times a long window makes one sample's logits large (OPT: 0.1G numbers):
    evaluation takes as many samples a batch as fit the bound, and gives the same figures."""
    from prunelab.experiment import train

    torch.manual_seed(0)
    split = windows(TEXT * 8, 16)
    model = lm.tiny_gpt((16,), 256, d_model=32, layers=1, heads=2)
    whole = evaluate(model, split)
    sizes = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    monkeypatch.setattr(train, "MAX_LOGITS", 3 * 256 * 16)  # three windows' logits
    bounded = evaluate(model, split)
    assert sizes[0] == 1
    assert set(sizes[1:-1]) == {3}
    assert sum(sizes) == len(split)
    assert bounded["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert bounded["accuracy"] == whole["accuracy"]


def test_the_unigram_baseline_is_the_byte_frequency_perplexity():
    split = windows(b"aab" * 100_000, 30)  # long enough for add-one smoothing over 256 bytes not to matter
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))  # nats per byte
    assert unigram_perplexity(SimpleNamespace(train=split, test=split)) == pytest.approx(math.exp(entropy), rel=2e-3)


# --- Wanda and SparseGPT: the maths ---------------------------------------------------------


def test_wanda_with_equal_input_norms_selects_magnitude_per_row():
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        wanda_mask(weight, 3.0 * torch.eye(64, dtype=torch.float64), 0.5), per_row_magnitude(weight, 0.5)
    )


def test_sparsegpt_per_row_with_an_identity_hessian_is_per_row_magnitude_without_update():
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(2))
    new, kept = sparsegpt_update(
        weight, torch.eye(64, dtype=torch.float64), 0.5, blocksize=None, damp=0.0, selection="row"
    )
    assert torch.equal(kept, per_row_magnitude(weight, 0.5))
    assert torch.equal(new[kept], weight[kept])  # no survivor moved


@pytest.mark.parametrize("pattern", [dict(ratio=0.5), dict(ratio=0.5, n=2, m=4), dict(ratio=0.5, n=4, m=8)])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda_at_the_same_density(pattern):
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(48, 64, generator=g)
    x = correlated_inputs(2048, 64)
    gram = x.double().T @ x.double()
    ratio, n, m = pattern["ratio"], pattern.get("n"), pattern.get("m")
    new, kept = sparsegpt_update(weight, gram, ratio, n, m)
    candidates = {
        "sparsegpt": new * kept,
        "wanda": weight * wanda_mask(weight, gram, ratio, n, m),
        "magnitude": weight * (wanda_mask(weight, torch.eye(64, dtype=torch.float64), ratio, n, m)),
    }
    errors = {name: (x @ weight.T - x @ w.T).norm().item() for name, w in candidates.items()}
    assert {name: int((w != 0).sum()) for name, w in candidates.items()} == dict.fromkeys(candidates, 48 * 32)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_n_m_masks_keep_n_of_every_m_inputs(n, m):
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    gram = correlated_inputs(512, 32).double().T @ correlated_inputs(512, 32).double()
    for kept in (wanda_mask(weight, gram, (m - n) / m, n, m), sparsegpt_update(weight, gram, (m - n) / m, n, m)[1]):
        assert kept.view(16, -1, m).sum(-1).eq(n).all()


# --- layer by layer, on a model -------------------------------------------------------------


def two_layers():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def test_each_layer_sees_its_inputs_through_the_layers_already_pruned():
    model, fresh, x = two_layers(), two_layers(), correlated_inputs(64, 16)
    mask = Wanda(ignore=[], samples=64)(
        model, 0.5, scope=Local(), data=PruneData((x, torch.zeros(64, dtype=torch.long)))
    ).mask
    assert torch.equal(mask.masks["0.weight"], wanda_mask(fresh[0].weight, x.double().T @ x.double(), 0.5))
    hidden = torch.relu(model[0](x))  # through the first layer as pruned (in place)
    assert torch.equal(mask.masks["2.weight"], wanda_mask(fresh[2].weight, hidden.double().T @ hidden.double(), 0.5))
    dense_hidden = torch.relu(fresh[0](x))  # what a one-shot (not sequential) pass would have used
    assert not torch.equal(
        mask.masks["2.weight"], wanda_mask(fresh[2].weight, dense_hidden.double().T @ dense_hidden.double(), 0.5)
    )
    assert all(bool((p[~mask.masks[n]] == 0).all()) for n, p in model.named_parameters() if n in mask.prunable)


def test_sparsegpt_updates_the_survivors_and_continues_from_a_mask_without_reviving():
    model, x = two_layers(), correlated_inputs(64, 16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = PruneData((x, torch.zeros(64, dtype=torch.long)))
    sparsegpt = SparseGPT(ignore=[], samples=64)
    first = sparsegpt(model, 0.5, scope=Local(), data=data).mask
    kept = first.masks["0.weight"]
    assert not torch.equal(model[0].weight[kept], before["0.weight"][kept])  # reconstructed, not just masked
    again = sparsegpt(model, 0.75, scope=Local(), data=data, mask=first).mask
    for name in first.prunable:
        assert not bool((again.masks[name] & ~first.masks[name]).any())  # nothing revived
    assert again.sparsity == pytest.approx(0.75, abs=1e-3)


@pytest.mark.parametrize("first", ["unstructured", "nm", "wanda"])
@pytest.mark.parametrize("then", ["wanda", "sparsegpt"])
def test_a_mask_made_by_another_method_survives_a_layerwise_prune_on_top(first, then):
    model, x = two_layers(), correlated_inputs(64, 16)
    data = PruneData((x, torch.zeros(64, dtype=torch.long)))
    mask = prune(model, first, "local", 0.5, ignore=[], data=data, **({"n": 2, "m": 4} if first == "nm" else {})).mask
    mask.apply(model)
    again = prune(model, then, "local", 0.75, ignore=[], data=data, mask=mask).mask
    for name, keep in mask.masks.items():
        assert not (again.masks[name] & ~keep).any(), f"{first} then {then}: {name} revived"
    assert again.sparsity == pytest.approx(0.75, abs=1e-3)


def test_post_training_methods_refuse_a_global_scope_and_a_wrong_n_m_ratio_in_one_line():
    data = PruneData((correlated_inputs(8, 16), torch.zeros(8, dtype=torch.long)))
    with pytest.raises(PruningError, match="use scope=local"):
        prune(two_layers(), "wanda", "global", 0.5, data=data, ignore=[])
    with pytest.raises(PruningError, match="ratio must be 0.5"):
        prune(two_layers(), "sparsegpt", "local", 0.7, data=data, n=2, m=4, ignore=[])


def randomised_gpt(heads: int = 4) -> nn.Module:
    """A tiny_gpt with large random weights, so that every head and neuron matters to the output."""
    torch.manual_seed(0)
    model = lm.tiny_gpt((16,), 256, d_model=32, layers=2, heads=heads, mlp_ratio=2)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval()


@pytest.mark.parametrize("scope", ["local", "global"])
def test_structured_pruning_of_the_lm_removes_whole_heads_and_mlp_neurons_and_masked_equals_shrunk(scope):
    model, x = randomised_gpt(), torch.randint(256, (4, 16))
    mask = prune(model, "structured", scope, 0.5, example_inputs=x[:1]).mask
    # One unit set per block for the heads (q, k, v and the output projection's inputs, coupled by the
    # dependency graph through the attention op) and one for the MLP neurons; the residual stream,
    # which goes through LayerNorms, is left whole.
    attention = {n: k for n, k in mask.channels.items() if ".attn." in n}
    assert sorted(mask.channels) == sorted([*attention, "blocks.0.mlp.0", "blocks.1.mlp.0"])
    assert len(attention) == 2
    for keep in attention.values():
        per_head = keep.view(4, 8)  # 4 heads of 32 / 4 channels: each kept or removed whole
        assert bool((per_head.all(1) | ~per_head.any(1)).all())
        assert 0 < int(per_head.all(1).sum()) < 4
    masked = mask.apply(copy.deepcopy(model)).eval()
    shrunk = shrink(masked, mask, x[:1]).eval()
    with torch.no_grad():
        assert (masked(x) - shrunk(x)).abs().max() <= 1e-5
        assert (model(x) - masked(x)).abs().max() > 0.1  # the pruning did change the model
    for i, block in enumerate(shrunk.blocks):
        kept_heads = int(mask.channels[next(n for n in attention if n.startswith(f"blocks.{i}."))].sum()) // 8
        assert block.attn.heads == kept_heads
        assert block.attn.q.out_features == block.attn.o.in_features == 8 * kept_heads
        assert block.mlp[0].out_features == int(mask.channels[f"blocks.{i}.mlp.0"].sum())
    assert mask.channel_sparsity == pytest.approx(0.5, abs=0.06)  # within a head of the ratio


def test_structured_pruning_of_a_transformers_model_is_refused_in_one_line():
    pytest.importorskip("transformers")
    model = lm.hf_causal_lm(
        config={"model_type": "gpt2", "vocab_size": 256, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}
    )
    with pytest.raises(
        PruningError, match="cannot trace a transformers model: use method=width .* or method=blocks"
    ) as e:
        prune(model, "structured", "local", 0.5, example_inputs=torch.randint(256, (1, 16)), ignore=["model.lm_head"])
    assert "\n" not in str(e.value)


# --- end to end -----------------------------------------------------------------------------

LM_RUN = [
    "model=tiny_gpt",
    "model.d_model=32",
    "model.layers=1",
    "model.heads=2",
    "dataset=fortunes",
    "dataset.seq_len=32",
    "train.epochs=1",
    "finetune.epochs=0",
    "scope=local",
]


def test_a_post_training_sweep_of_the_lm_logs_perplexity_tokens_per_second_and_its_curves(cli, workdir):
    write_fortunes(workdir / "fortunes", count=400)
    result = cli(
        "-m",
        *LM_RUN,
        f"dataset.root={workdir / 'fortunes'}",
        "method=wanda,sparsegpt",
        "ratio=0.5",
        "calibration_seed=0,1",
        "measure_latency=true",
        "tracking.experiment=lm",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pruned, (dense,) = runs(workdir, "pruned"), runs(workdir, "dense")
    assert len(pruned) == 4
    for run in pruned:
        m = run.data.metrics
        assert m[Metric.SPARSITY_PRUNABLE] == pytest.approx(0.5, abs=1e-3)
        before, after_pruning, after_tuning = (m[Metric.at(s, Metric.TEST_PERPLEXITY)] for s in Metric.STAGES)
        assert before == pytest.approx(dense.data.metrics[Metric.TEST_PERPLEXITY])
        assert 1 <= before < 256  # trained a little: better than uniform over bytes
        assert m[Metric.TEST_PERPLEXITY] == after_tuning == after_pruning  # no fine-tuning
        assert m[Metric.cost(Metric.DENSE, Metric.TOKENS_PER_S)] > 0
        assert m[Metric.cost_ratio(Metric.TOKENS_PER_S)] > 0
        assert 0 < m[Metric.PRUNE_SECONDS] < 60  # measured: the one-shot prune alone
    by_seed = {
        (r.data.params["method"], r.data.params["calibration_seed"]): r.data.metrics[Metric.TEST_PERPLEXITY]
        for r in pruned
    }
    assert by_seed[("sparsegpt", "0")] != by_seed[("sparsegpt", "1")]  # other calibration samples, other result

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    df = analysis.load_runs(["lm"])
    points = analysis.aggregate_seeds(df, Metric.TEST_PERPLEXITY)
    assert sorted(points["method"]) == ["sparsegpt", "wanda"]
    assert set(points["test_perplexity_count"]) == {2}
    series = analysis.curve_series(df)
    assert series["perplexity_vs_sparsity/dense"][0][1] == pytest.approx(dense.data.metrics[Metric.TEST_PERPLEXITY])
    assert {k for k in series if k.startswith("perplexity_vs_sparsity/")} >= {  # no criterion: they take none
        "perplexity_vs_sparsity/sparsegpt-local",
        "perplexity_vs_sparsity/wanda-local",
    }
    speed = analysis.speed_points(df).set_index("method")
    for method in ("sparsegpt", "wanda"):  # the speed table: each point's runs averaged
        ms = [r.data.metrics for r in pruned if r.data.params["method"] == method]
        assert speed.loc[method, "tokens_per_s"] == pytest.approx(
            sum(m[Metric.cost_ratio(Metric.TOKENS_PER_S)] for m in ms) / 2
        )
        assert speed.loc[method, "perplexity"] == pytest.approx(sum(m[Metric.TEST_PERPLEXITY] for m in ms) / 2)
        assert speed.loc[method, "perplexity_pruned"] == pytest.approx(
            sum(m[Metric.at(Metric.PRUNED, Metric.TEST_PERPLEXITY)] for m in ms) / 2
        )
    written = analysis.write_report(df, workdir / "report")
    assert workdir / "report" / "perplexity_vs_sparsity.png" in written
    assert workdir / "report" / "perplexity_vs_tokens_per_s.png" in written
    summary = (workdir / "report" / Artifact.SUMMARY).read_text()
    assert "## Perplexity vs sparsity" in summary
    assert "## Perplexity vs tokens per second" in summary


def test_a_structured_lm_run_fine_tunes_the_shrunk_model_and_its_hand_over_files_score_per_token(cli, workdir):
    write_fortunes(workdir / "fortunes", count=400)
    run_args = [a for a in LM_RUN if a != "finetune.epochs=0"]
    result = cli(
        *run_args,
        f"dataset.root={workdir / 'fortunes'}",
        "method=structured",
        "ratio=0.5",
        "finetune.epochs=1",
        "quantize=int8",
        "handover=true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    m = run.data.metrics
    assert m[Metric.SPARSITY_CHANNELS] == pytest.approx(0.5, abs=1e-3)  # local: 1 of 2 heads, half the neurons
    assert m[Metric.cost_ratio(Metric.MACS)] < 0.9
    assert m[Metric.at(Metric.FINETUNED, Metric.TEST_PERPLEXITY)] < m[Metric.at(Metric.PRUNED, Metric.TEST_PERPLEXITY)]
    # The exported ONNX file (token ids in, no standardisation) scores what the fine-tuned network does,
    # and its int8 form (calibrated on token ids) about as well.
    assert m[Metric.HANDOVER_ONNX_ACCURACY] == pytest.approx(m[Metric.TEST_ACCURACY], abs=1e-4)
    assert m[Metric.TEST_ACCURACY] <= 1
    assert m[Metric.INT8_ACCURACY] == pytest.approx(m[Metric.TEST_ACCURACY], abs=0.05)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    for name in ("model.onnx", "model.int8.onnx"):
        path = client.download_artifacts(run.info.run_id, f"model/{name}", str(workdir))
        (graph_input,) = onnx.load(path).graph.input
        assert graph_input.name == "tokens"
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_calibration_seeds_are_seeds_of_one_point_over_one_dense_model(make_cfg):
    a, b = make_cfg("calibration_seed=0"), make_cfg("calibration_seed=1")
    assert keys.identity(a, "cpu").run != keys.identity(b, "cpu").run
    assert keys.identity(a, "cpu").point == keys.identity(b, "cpu").point  # averaged together, like seeds
    assert keys.identity(a, "cpu").dense == keys.identity(b, "cpu").dense  # and pruned from the same dense model
    assert keys.identity(make_cfg(), "cpu").run == keys.identity(make_cfg("calibration_seed=null"), "cpu").run


def test_the_calibration_draw_depends_on_its_seed_only():
    data = PruneData((torch.arange(100).view(50, 2), torch.zeros(50, dtype=torch.long)))
    assert torch.equal(calibration(data, 8, 0), calibration(data, 8, 0))
    assert not torch.equal(calibration(data, 8, 0), calibration(data, 8, 1))
    assert len(calibration(data, 8, 0).unique(dim=0)) == 8  # without replacement


def test_a_transformers_causal_lm_is_pruned_by_target_end_to_end(cli, workdir):
    pytest.importorskip("transformers")
    write_fortunes(workdir / "fortunes", count=400)
    result = cli(
        *[a for a in LM_RUN if not a.startswith("model")],
        "model=hf_causal_lm",
        # another architecture than the default's, as the README gives it
        "model.config={model_type: llama, vocab_size: 256, hidden_size: 32, intermediate_size: 64,"
        " num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 32}",
        "method=sparsegpt",
        "method.ignore=[model.lm_head]",
        "method.samples=8",
        "method.n=2",
        "method.m=4",
        "ratio=0.5",
        f"dataset.root={workdir / 'fortunes'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    assert run.data.metrics[Metric.SPARSITY_PRUNABLE] == pytest.approx(0.5, abs=1e-3)
    assert math.isfinite(run.data.metrics[Metric.TEST_PERPLEXITY])


def test_gpt2_conv1d_layers_become_equal_linears():
    pytest.importorskip("transformers")
    model = lm.hf_causal_lm(
        config={"model_type": "gpt2", "vocab_size": 256, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}
    )
    assert not [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    raw = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("gpt2", vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    ).eval()
    assert any(isinstance(m, Conv1D) for m in raw.modules())
    x = torch.randint(256, (2, 16))
    expected = raw(input_ids=x).logits.transpose(1, 2)
    lm.linearize(raw)
    assert torch.allclose(lm.CausalLM(raw)(x), expected, atol=1e-5)


def test_a_logits_layer_tied_to_the_embeddings_is_not_pruned():
    """GPT-2's lm_head is its input embeddings: magnitude pruning leaves both whole (a mask on it
    would prune the embeddings) and prunes everything else to the ratio."""
    pytest.importorskip("transformers")
    model = lm.hf_causal_lm(
        config={"model_type": "gpt2", "vocab_size": 256, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}
    )
    assert model.model.lm_head.weight is model.model.transformer.wte.weight
    embeddings = model.model.transformer.wte.weight.detach().clone()
    mask = prune(model, "unstructured", "local", 0.5).mask
    assert not [k for k in mask.masks if "lm_head" in k]
    assert torch.equal(model.model.transformer.wte.weight, embeddings)
    assert mask.sparsity == pytest.approx(0.5, abs=0.01)


def test_a_misspelt_model_config_key_is_one_line_naming_the_closest():
    """AutoConfig would keep ``num_hidden_layer`` as an unused attribute and build LLaMA's 32 layers."""
    config = {"model_type": "llama", "hidden_size": 32, "num_hidden_layer": 2, "num_attention_heads": 2}
    typo = r"^model.config.num_hidden_layer is not an option of LlamaConfig \(llama\): did you mean num_hidden_layers"
    with pytest.raises(ModelError, match=typo):
        lm.hf_causal_lm(config=config)
    with pytest.raises(
        ModelError, match=r"model_type='lama' is not an architecture transformers knows: did you mean llama"
    ):
        lm.hf_causal_lm(config={"model_type": "lama"})
    gpt2 = lm.hf_causal_lm(config={"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "vocab_size": 300})
    assert gpt2.model.config.n_layer == 1  # the architecture's own names and their aliases pass


def test_a_post_training_language_model_run_prints_perplexity_and_no_fine_tuned_figure(caplog):
    """What the summary says of a language model pruned without training: its perplexity at the
    two stages there were, no token accuracy and no fine-tuned figure equal to the pruned one."""
    from prunelab.experiment.report import report

    m: dict = {Metric.at(stage, Metric.TEST_ACCURACY): 0.0 for stage in Metric.STAGES}  # token accuracy
    m |= {Metric.at(Metric.DENSE, Metric.TEST_PERPLEXITY): 20.5, Metric.TEST_PERPLEXITY: 31.25}
    m |= {Metric.at(stage, Metric.TEST_PERPLEXITY): 31.25 for stage in (Metric.PRUNED, Metric.FINETUNED)}
    m |= {Metric.SPARSITY_PRUNABLE: 0.5, Metric.SPARSITY_ALL: 0.4, Metric.PARAMS_NONZERO: 5, Metric.PARAMS_TOTAL: 10}
    m |= {Metric.cost_ratio(Metric.MACS): 1.0, Metric.cost_ratio(Metric.NONZERO_MACS): 0.5, "run_id": "r1"}
    chosen = {"method": "sparsegpt", "scope": "local", "criterion": "l2"}
    with caplog.at_level("INFO", logger="prunelab.experiment.report"):
        report(chosen, 0.5, None, m, "evaluated, not trained", "sqlite:///x.db", None, "1")
    summary = caplog.records[-1].getMessage().splitlines()
    assert summary[1] == "  test perplexity: dense 20.500 | pruned 31.250"
    assert not [line for line in summary if "accuracy" in line or "fine-tuned" in line]


def test_a_sweep_over_one_dense_model_evaluates_its_test_split_once(cli, workdir, monkeypatch):
    """Five points over one dense model (evaluated, not trained): its test figures, perplexity
    included, are computed when it is first evaluated, cached with it and read by every point."""
    import prunelab.experiment.dense as dense_stage
    import prunelab.experiment.runner as runner
    import prunelab.experiment.session as session
    import prunelab.experiment.train as training

    tests, passes = set(), []
    load = runner._data_and_model

    def loading(s):
        data, model = load(s)
        tests.add(data.test.x.data_ptr())
        return data, model

    def counting(evaluate):
        def counted(model, split, *args, **kwargs):
            weights = [p for p in model.parameters() if p.dim() > 1]
            if split.x.data_ptr() in tests and all(bool((w != 0).all()) for w in weights):
                passes.append(1)  # the dense model's test split
            return evaluate(model, split, *args, **kwargs)

        return counted

    monkeypatch.setattr(runner, "_data_and_model", loading)
    for module in (dense_stage, runner, session, training):
        monkeypatch.setattr(module, "evaluate", counting(training.evaluate))
    result = cli("-m", *LM_RUN, "train.epochs=0", "method=unstructured", "ratio=0.1,0.2,0.3,0.4,0.5", "handover=false")
    assert result.returncode == 0, result.stderr[-3000:]
    pruned = runs(workdir, "pruned")
    assert len(pruned) == 5
    assert len(passes) == 1
    (dense,) = runs(workdir, "dense")
    for run in pruned:  # every point records the dense perplexity, read from the cache
        dense_ppl = run.data.metrics[Metric.at(Metric.DENSE, Metric.TEST_PERPLEXITY)]
        assert dense_ppl == dense.data.metrics[Metric.TEST_PERPLEXITY]
