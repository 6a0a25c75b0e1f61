"""Depth pruning: the blocks of smallest angular distance go, the masked model computes what the
model without them computes, and a Hugging Face model keeps a config of its new depth."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import mlflow
import pytest
import torch
from conftest import runs
from test_lm import write_fortunes
from test_tokens import ARCHITECTURES, llama_folder

from prunelab.cli import preflight
from prunelab.config import ConfigError
from prunelab.deploy.hf import write_hf
from prunelab.models import lm
from prunelab.names import Metric
from prunelab.pruning import Blocks, PruneData, PruningError, prune, shrink, unshrink
from prunelab.pruning.blocks import find_blocks

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 96, 16
# The tiny LLaMA (grouped KV heads), OPT and GPT-2 configs of test_tokens, four blocks deep.
LAYERS = {"llama": "num_hidden_layers", "opt": "num_hidden_layers", "gpt2": "n_layer"}
CONFIGS = {arch: {**options, LAYERS[arch]: 4} for arch, options in ARCHITECTURES.items()}


def model_of(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "tiny_gpt":
        return lm.tiny_gpt((SEQ,), VOCAB, d_model=32, layers=4, heads=4).eval()
    return lm.hf_causal_lm(VOCAB, config={**CONFIGS[arch], "vocab_size": VOCAB}).eval()


def tokens(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def data() -> PruneData:
    x = tokens(64)
    return PruneData((x, x), seed=0)


def hand_distances(model, x) -> list[float]:
    """arccos(cos) / pi between what each block receives and returns, hooked on the blocks."""
    _, blocks = find_blocks(model)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module, args, kwargs, out):
        x_in = args[0] if args else kwargs["hidden_states"]
        seen.append((x_in, out[0] if isinstance(out, tuple) else out))

    handles = [b.register_forward_hook(hook, with_kwargs=True) for b in blocks]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    distances = []
    for x_in, x_out in seen:
        rows = [
            math.acos(max(-1.0, min(1.0, float(torch.dot(a, b) / (a.norm() * b.norm()))))) / math.pi
            for a, b in zip(x_in.reshape(-1, x_in.shape[-1]).double(), x_out.reshape(-1, x_out.shape[-1]).double())
        ]
        distances.append(sum(rows) / len(rows))
    return distances


@pytest.mark.parametrize("arch", ["tiny_gpt", *CONFIGS])
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_the_blocks_of_least_angular_distance_go_and_the_shrunk_model_is_the_masked_one(arch, ratio):
    model = model_of(arch)
    pruned = prune(model, method="blocks", ratio=ratio, data=data(), samples=8)
    ((path, removed),) = pruned.mask.blocks.items()
    distances = [float(row.split(",")[1]) for row in pruned.report["blocks.csv"].splitlines()[1:]]
    assert distances == pytest.approx(hand_distances(model, data().calibration(8, 0)), abs=1e-6)
    assert sorted(removed) == sorted(sorted(range(4), key=distances.__getitem__)[: round(4 * ratio)])

    masked = pruned.mask.apply(copy.deepcopy(model))
    small = shrink(model, pruned.mask, tokens(1))
    x = tokens()
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-5, rtol=0)
    assert len(small.get_submodule(path)) == 4 - len(removed)
    if arch != "tiny_gpt":
        assert small.model.config.num_hidden_layers == 4 - len(removed)
        assert model.model.config.num_hidden_layers == 4  # the model itself is left as it was


def test_a_shrunk_model_fine_tuned_writes_back_into_the_blocks_it_came_from():
    model = model_of("llama")
    mask = prune(model, method="blocks", ratio=0.5, data=data(), samples=8).mask
    small = shrink(model, mask, tokens(1))
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.01)
    full = unshrink(small, mask, mask.apply(copy.deepcopy(model)))
    x = tokens()
    with torch.no_grad():
        assert torch.allclose(full(x), small(x), atol=1e-5, rtol=0)


RELOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    torch.save(model(input_ids=torch.load(sys.argv[2])).logits, sys.argv[3])
AutoTokenizer.from_pretrained(sys.argv[1])
print(json.dumps([model.config.num_hidden_layers, any(m.startswith("prunelab") for m in sys.modules)]))
"""


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_the_hugging_face_folder_loads_in_a_fresh_process_without_prunelab(arch, tmp_path):
    """The hand-over's model/hf/: depth and logits as pruned, GPT-2's projections back in its layout."""
    model = model_of(arch)
    mask = prune(model, method="blocks", ratio=0.25, data=data(), samples=8).mask
    small = shrink(model, mask, tokens(1))
    tokenizer = llama_folder(tmp_path, "a small corpus of words, to train a tokenizer on " * 20)
    assert write_hf(small, tmp_path / "model" / "hf", str(tokenizer))
    x = tokens()
    torch.save(x, tmp_path / "x.pt")
    args = [str(tmp_path / "model" / "hf"), str(tmp_path / "x.pt"), str(tmp_path / "logits.pt")]
    done = subprocess.run([sys.executable, "-c", RELOAD, *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [3, False]
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "logits.pt").transpose(1, 2), small(x), atol=1e-5, rtol=0)


def test_the_baseline_order_removes_the_last_blocks_and_still_logs_every_distance():
    pruned = prune(model_of("llama"), method="blocks", ratio=0.5, data=data(), samples=8, order="last")
    assert list(pruned.mask.blocks.values()) == [(2, 3)]
    assert len(pruned.report["blocks.csv"].splitlines()) == 1 + 4


def test_blocks_already_removed_stay_removed():
    model = model_of("llama")
    first = prune(model, method="blocks", ratio=0.25, data=data(), samples=8).mask
    second = prune(
        first.apply(copy.deepcopy(model)), method="blocks", ratio=0.5, data=data(), samples=8, mask=first
    ).mask
    (earlier,), (now,) = first.blocks.values(), second.blocks.values()
    assert set(earlier) < set(now)
    assert len(now) == 2


def test_a_ratio_that_leaves_no_block_is_refused_in_one_line():
    with pytest.raises(PruningError, match=r"^method=blocks ratio=0.9 removes all 4 blocks of the model: .*$"):
        prune(model_of("tiny_gpt"), method="blocks", ratio=0.9, data=data())


def test_a_post_norm_model_is_refused():
    model = lm.hf_causal_lm(VOCAB, config={**CONFIGS["opt"], "vocab_size": VOCAB, "do_layer_norm_before": False})
    with pytest.raises(PruningError, match="do_layer_norm_before=false"):
        prune(model, method="blocks", ratio=0.25, data=data())


def test_blocks_takes_no_criterion_option():
    with pytest.raises(Exception, match="takes no option 'normalize'"):
        prune(model_of("tiny_gpt"), method="blocks", ratio=0.25, data=data(), normalize="none")


def test_a_depth_pruned_run_logs_its_blocks_and_fine_tunes_the_shallower_model(cli, workdir):
    write_fortunes(workdir / "fortunes", count=400)  # a small corpus in the package's layout
    small = ["model.layers=4", "model.d_model=32", "model.heads=4", "dataset.seq_len=32", "method.samples=4"]
    data = ["dataset=fortunes", f"dataset.root={workdir / 'fortunes'}"]
    result = cli("model=tiny_gpt", *data, "method=blocks", "ratio=0.5", *small)
    assert result.returncode == 0
    (run,) = runs(workdir, "pruned")
    params = {form: run.data.metrics[Metric.cost(form, Metric.PARAMS)] for form in (Metric.DENSE, Metric.PRUNED)}
    assert params[Metric.PRUNED] < params[Metric.DENSE]  # two blocks fewer
    assert math.isfinite(run.data.metrics[Metric.TEST_PERPLEXITY])
    table = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/blocks.csv").splitlines()
    assert table[0] == "block,angular_distance,removed"
    assert sum(r.endswith(",true") for r in table[1:]) == 2


def test_the_command_line_knows_its_options():
    preflight(["method=blocks", "method.samples=8"])
    with pytest.raises(ConfigError, match="method=blocks takes no option 'normalize'"):
        preflight(["method=blocks", "method.normalize=none"])
    assert Blocks(samples=8).samples == 8
