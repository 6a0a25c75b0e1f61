"""Width pruning of transformers: whole heads (grouped key/value heads kept whole) and MLP channels
go, the shrunk model computes what the masked one does, and the smaller model is handed over as a
folder that loads in a fresh process without prunelab."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import mlflow
import pytest
import torch
from conftest import runs
from test_depth import CONFIGS, VOCAB, data, tokens
from test_lm import LM_RUN, write_fortunes

from prunelab.cli import preflight
from prunelab.config import ConfigError
from prunelab.deploy.hf import write_hf
from prunelab.models import lm
from prunelab.names import Metric
from prunelab.pruning import PruneData, PruningError, prune, shrink, unshrink

transformers = pytest.importorskip("transformers")

# LLaMA with 8 query heads in 4 key/value groups of 2 (grouped-query attention); OPT and GPT-2
# with 4 heads each (one query head per key/value head).
WIDE = {
    "llama": {**CONFIGS["llama"], "num_attention_heads": 8, "num_key_value_heads": 4},
    "opt": CONFIGS["opt"],
    "gpt2": CONFIGS["gpt2"],
}
ATTENTION = {"llama": "model.model.layers.{}.self_attn", "opt": "model.model.decoder.layers.{}.self_attn"}
ATTENTION["gpt2"] = "model.transformer.h.{}.attn"


def model_of(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return lm.hf_causal_lm(VOCAB, config={**WIDE[arch], "vocab_size": VOCAB}).eval()


def heads_of(model, arch: str, i: int) -> tuple[int, int]:
    """(query heads, key/value heads) of block ``i``, counted from its projections' rows."""
    attention = model.get_submodule(ATTENTION[arch].format(i))
    d = 32 // (8 if arch == "llama" else 4)
    if arch == "gpt2":
        return (attention.c_attn.out_features // 3 // d,) * 2
    return attention.q_proj.out_features // d, attention.k_proj.out_features // d


def same_logits(a, b, x) -> bool:
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", list(WIDE))
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_the_shrunk_model_is_the_masked_one_with_fewer_whole_heads_and_channels(arch, ratio):
    model = model_of(arch)
    pruned = prune(model, method="width", scope="local", ratio=ratio, data=data())
    small = shrink(model, pruned.mask, tokens(1))
    assert same_logits(small, pruned.mask.apply(copy.deepcopy(model)), tokens())
    heads, kv = (8, 4) if arch == "llama" else (4, 4)
    for i in range(4):
        q, k = heads_of(small, arch, i)
        assert k == kv - round(ratio * kv)
        assert q == k * (heads // kv)
        inner = small.get_submodule(ATTENTION[arch].format(i).rpartition(".")[0])
        up = {"llama": "mlp.up_proj", "opt": "fc1", "gpt2": "mlp.c_fc"}[arch]
        assert inner.get_submodule(up).out_features == (128 if arch == "gpt2" else 64) * (1 - ratio)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_query_heads_go_as_many_from_every_group_and_the_key_value_heads_stay():
    model = model_of("llama")
    pruned = prune(model, method="width", heads="query", scope="global", ratio=0.25, data=data(), mlp=False)
    small = shrink(model, pruned.mask, tokens(1))
    counts = [heads_of(small, "llama", i) for i in range(4)]
    assert all(k == 4 and q % 4 == 0 for q, k in counts)  # the same number of query heads per key/value head
    assert sum(q for q, _ in counts) == 32 - 8  # a quarter of the query heads, wherever the scope put them
    for i, (q, _) in enumerate(counts):
        attention = small.get_submodule(ATTENTION["llama"].format(i))
        assert attention.num_key_value_groups == q // 4
    assert same_logits(small, pruned.mask.apply(copy.deepcopy(model)), tokens())


def test_a_key_value_group_scores_the_rows_and_columns_it_removes():
    """l2: a group's score is the norm of its query, key and value rows and its output columns."""
    model = model_of("llama")
    pruned = prune(model, method="width", scope="local", ratio=0.25, data=data(), mlp=False)
    attention = model.model.model.layers[0].self_attn
    d = 4

    def norm(i):  # group i: query heads 2i, 2i+1; key/value head i
        parts = [
            attention.q_proj.weight[2 * d * i : 2 * d * (i + 1)],
            attention.k_proj.weight[d * i : d * (i + 1)],
            attention.v_proj.weight[d * i : d * (i + 1)],
            attention.o_proj.weight[:, 2 * d * i : 2 * d * (i + 1)],
        ]
        return sum(float(p.detach().double().pow(2).sum()) for p in parts) ** 0.5

    weakest = min(range(4), key=norm)
    kept = pruned.mask.channels["model.model.layers.0.self_attn.k_proj"].view(4, d).all(1)
    assert kept.tolist() == [i != weakest for i in range(4)]


def test_the_activation_criterion_is_wandas_score():
    from prunelab.pruning import Activation

    model = model_of("opt")
    x = tokens(16)
    layer = model.model.model.decoder.layers[1].fc1
    seen = []
    handle = layer.register_forward_hook(lambda _m, args, _out: seen.append(args[0].reshape(-1, 32)))
    with torch.no_grad():
        model(x[:8]), model(x[8:])
    handle.remove()
    norms = torch.cat(seen).double().pow(2).sum(0).sqrt()
    scorer = Activation(batches=2).prepare(model, PruneData((x, x), batch_size=8, seed=0), seed=0)
    name = "model.model.decoder.layers.1.fc1.weight"
    expected = layer.weight.detach().abs() * norms.float()
    assert torch.allclose(scorer.weights(name, layer.weight), expected, rtol=1e-5)


RELOAD = """
import json, sys, torch
from pathlib import Path
folder = Path(sys.argv[1])
if (folder / "load_pruned.py").exists():  # the loader written where the config cannot state the widths
    sys.path.insert(0, str(folder))
    from load_pruned import load
    model = load(folder)
else:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
with torch.no_grad():
    torch.save(model(input_ids=torch.load(sys.argv[2])).logits, sys.argv[3])
print(json.dumps(any(m.startswith("prunelab") for m in sys.modules)))
"""


@pytest.mark.parametrize(
    ("arch", "options", "loadable"),
    [
        ("llama", dict(scope="local"), True),  # the config states heads, key/value heads, MLP width
        ("opt", dict(scope="local", heads="none"), True),
        ("gpt2", dict(scope="local", heads="none"), True),
        ("gpt2", dict(scope="local"), False),  # its config derives the head size from the hidden size
        ("llama", dict(scope="global"), False),  # blocks of different widths
        ("llama", dict(scope="local", ratio=0.25), False),  # 6 heads: LLaMA's config wants hidden % heads == 0
    ],
    ids=["llama", "opt-mlp", "gpt2-mlp", "gpt2-heads", "llama-global", "llama-6-heads"],
)
def test_the_folder_loads_in_a_fresh_process_without_prunelab(arch, options, loadable, tmp_path, caplog):
    model = model_of(arch)
    small = shrink(model, prune(model, method="width", **{"ratio": 0.5, **options}, data=data()).mask, tokens(1))
    assert write_hf(small, tmp_path / "model" / "hf")
    assert (tmp_path / "model" / "hf" / "model.safetensors").exists() == loadable
    assert (tmp_path / "model" / "hf" / "load_pruned.py").exists() == (not loadable)
    assert any("cannot state the pruned widths" in r.message for r in caplog.records) == (not loadable)
    x = tokens()
    torch.save(x, tmp_path / "x.pt")
    args = [str(tmp_path / "model" / "hf"), str(tmp_path / "x.pt"), str(tmp_path / "logits.pt")]
    done = subprocess.run([sys.executable, "-c", RELOAD, *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) is False  # prunelab was not imported
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "logits.pt").transpose(1, 2), small(x), atol=1e-5, rtol=0)
    if loadable and arch == "llama":
        config = json.loads((tmp_path / "model" / "hf" / "config.json").read_text())
        assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (4, 2, 32)


def test_a_shrunk_model_fine_tuned_writes_back_into_the_full_layout():
    model = model_of("llama")
    mask = prune(model, method="width", scope="global", ratio=0.5, data=data()).mask
    small = shrink(model, mask, tokens(1))
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.01)
    full = unshrink(small, mask, mask.apply(copy.deepcopy(model)))
    assert same_logits(full, small, tokens())


def test_a_model_of_unknown_layout_is_refused_in_one_line_and_a_declared_one_is_pruned():
    model = lm.tiny_gpt((16,), VOCAB, d_model=32, layers=2, heads=4).eval()
    with pytest.raises(PruningError, match=r"^method=width: the attention layout of TinyGPT is not known .*layout="):
        prune(model, method="width", ratio=0.5, data=data())
    layout = dict(heads=4, kv_heads=4, head_dim=8, q="attn.q", k="attn.k", v="attn.v", o="attn.o", up="mlp.0")
    pruned = prune(model, method="width", ratio=0.5, scope="local", data=data(), layout={**layout, "down": "mlp.2"})
    small = shrink(model, pruned.mask, tokens(1))
    assert [b.attn.heads for b in small.blocks] == [2, 2]
    assert same_logits(small, pruned.mask.apply(copy.deepcopy(model)), tokens())
    with pytest.raises(PruningError, match=r"^method.layout takes no wrong: it takes heads, "):
        prune(model, method="width", ratio=0.5, data=data(), layout={**layout, "down": "mlp.2", "wrong": 1})


def test_the_command_line_checks_the_options():
    preflight(["method=width", "method.heads=query", "criterion=activation"])
    with pytest.raises(ConfigError, match="method.heads='all' is not allowed: expected one of kv, query, none"):
        preflight(["method=width", "method.heads=all"])


def test_a_width_pruned_language_model_is_distilled_and_handed_over_as_a_folder(cli, workdir):
    write_fortunes(workdir / "fortunes", count=400)
    result = cli(
        *[a for a in LM_RUN if not a.startswith(("model", "finetune", "scope"))],
        "model=hf_causal_lm",
        "model.config={model_type: llama, vocab_size: 256, hidden_size: 32, intermediate_size: 64,"
        " num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 32}",
        "method=width",
        "criterion=activation",
        "scope=local",
        "ratio=0.5",
        "finetune.epochs=1",
        "finetune.distill=true",
        "handover=true",
        f"dataset.root={workdir / 'fortunes'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    metrics = run.data.metrics
    assert metrics[Metric.cost_ratio(Metric.PARAMS)] < 0.8
    assert Metric.FINETUNE_KD_LOSS in metrics
    config = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model/hf/config.json"))
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (2, 1, 32)


def test_the_command_line_refuses_an_unknown_layout_in_one_line_before_training(cli, workdir):
    write_fortunes(workdir / "fortunes", count=100)
    result = cli(*LM_RUN, "method=width", f"dataset.root={workdir / 'fortunes'}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("prunelab: error: method=width: the attention layout")
    assert all(r.info.status != "RUNNING" for r in runs(workdir))
    assert not runs(workdir, "dense")


def test_a_measuring_scope_trials_the_heads_and_the_channels_on_validation_data():
    x = tokens(64)
    pruned = prune(
        model_of("llama"), method="width", scope="sensitivity", ratio=0.5, data=PruneData((x, x), (x[:16], x[:16]))
    )
    assert {"heads.sensitivity.csv", "mlp.sensitivity.csv"} <= set(pruned.report)
    assert pruned.mask.channel_sparsity == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("heads", ["kv", "query"])
def test_pruning_again_from_the_current_mask_never_revives_a_head_or_channel(heads):
    model = model_of("llama")
    first = prune(model, method="width", heads=heads, scope="global", ratio=0.25, data=data()).mask
    again = prune(
        first.apply(copy.deepcopy(model)),
        method="width",
        heads=heads,
        scope="global",
        ratio=0.5,
        data=data(),
        mask=first,
    ).mask
    for name, keep in first.masks.items():
        assert not (again.masks[name] & ~keep).any(), name
    assert again.channel_sparsity > first.channel_sparsity
    small = shrink(model, again, tokens(1))
    assert same_logits(small, again.apply(copy.deepcopy(model)), tokens())
