"""Post-training pruning block by block: a transformer's blocks walked once each, in the papers'
order, and SparseGPT's mask chosen over each lazy block as its reference code chooses it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from prunelab.models import lm
from prunelab.pruning import Local, PruneData, PruningError, SparseGPT, Wanda
from prunelab.pruning.blocks import BATCH_VALUES, batch_size_for, capture, find_blocks, run
from prunelab.pruning.layerwise import input_seen, per_row_count, sparsegpt_update, wanda_mask
from prunelab.pruning.tracing import prunable_layers

RATIO = 0.5


def gpt(layers: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return lm.tiny_gpt((16,), 64, d_model=32, layers=layers, heads=2)


def tokens(count: int = 64, seed: int = 1) -> PruneData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (count, 16), generator=g)
    return PruneData((x, torch.zeros(count, dtype=torch.long)))


def by_hand(method: str, layer: nn.Linear, gram: torch.Tensor) -> torch.Tensor:
    """Prune one layer in place; its kept entries."""
    if method == "wanda":
        new, kept = layer.weight.detach(), wanda_mask(layer.weight.detach(), gram, RATIO)
    else:
        new, kept = sparsegpt_update(layer.weight, gram, RATIO)
    with torch.no_grad():
        layer.weight.copy_(new * kept)
    return kept


def method(name: str, **options) -> Wanda | SparseGPT:
    return (Wanda if name == "wanda" else SparseGPT)(samples=64, **options)


@pytest.mark.parametrize("name", ["wanda", "sparsegpt"])
def test_one_pass_per_block_equals_pruning_the_blocks_one_after_another_by_hand(name):
    model, hand, data = gpt(), gpt(), tokens()
    pruned = method(name)(model, RATIO, scope=Local(), data=data).mask
    x = data.train[0]
    with torch.no_grad():  # the blocks' first inputs, as TinyGPT.forward makes them
        h = hand.tokens(x) + hand.positions(torch.arange(x.shape[1]))
    for i, block in enumerate(hand.blocks):
        layers = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        grams = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in layers.items()}

        def gather(n, grams=grams):
            def hook(_m, args):
                inp = args[0].reshape(-1, args[0].shape[-1]).double()
                grams[n] += inp.T @ inp

            return hook

        handles = [m.register_forward_pre_hook(gather(n)) for n, m in layers.items()]
        with torch.no_grad():
            block(h)  # one pass: every sublayer's statistics from the block as it was
        for handle in handles:
            handle.remove()
        for n, layer in layers.items():
            assert torch.equal(pruned.masks[f"blocks.{i}.{n}.weight"], by_hand(name, layer, grams[n])), n
        with torch.no_grad():
            h = block(h)  # the next block's inputs, under the pruned weights
    for (n, p), q in zip(model.named_parameters(), hand.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=0), n


@pytest.mark.parametrize("name", ["wanda", "sparsegpt"])
def test_true_sequential_inside_blocks_equals_layer_by_layer_through_the_whole_model(name):
    model, hand, data = gpt(), gpt(), tokens()
    pruned = method(name, sequential="layer")(model, RATIO, scope=Local(), data=data).mask
    for n, layer in prunable_layers(hand, ["classifier"]).items():
        kept = by_hand(name, layer, input_seen(hand, layer, data.train[0]).gram)  # the whole model, every time
        assert torch.equal(pruned.masks[f"{n}.weight"], kept), n
    for (n, p), q in zip(model.named_parameters(), hand.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=0), n


def test_a_deeper_model_runs_each_block_once_per_batch_not_once_per_layer_below_it():
    calls = {"first": 0, "last": 0}
    model = gpt(layers=4)
    model.blocks[0].register_forward_hook(lambda *_: calls.__setitem__("first", calls["first"] + 1))
    model.blocks[3].register_forward_hook(lambda *_: calls.__setitem__("last", calls["last"] + 1))
    data = tokens()
    Wanda(samples=64)(model, RATIO, scope=Local(), data=data)
    # one statistics pass and one output pass per block and batch, the same at any depth
    batches = -(-64 // batch_size_for(data.train[0]))
    assert calls == {"first": 2 * batches, "last": 2 * batches}


def test_a_block_takes_its_calibration_windows_in_batches_of_a_bounded_number_of_tokens():
    assert batch_size_for(torch.zeros(32, 512, dtype=torch.long)) == BATCH_VALUES // 512  # OPT-125m's protocol
    assert batch_size_for(torch.zeros(128, 2048, dtype=torch.long)) == 1  # one window at a time, as the papers' code
    assert batch_size_for(torch.zeros(64, 16, dtype=torch.long)) == 128


HF_CONFIGS = [
        dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32),
        dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=32, word_embed_proj_dim=32),
        dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=32),
]  # fmt: skip


@pytest.mark.parametrize("config", HF_CONFIGS, ids=lambda c: c["model_type"])
def test_hugging_face_blocks_get_what_their_model_hands_them(config):
    """Rotary embeddings, attention masks and position ids captured at block 0 reach every block:
    true-sequential block by block equals layer by layer through the whole model."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = lm.hf_causal_lm(64, config={**config, "vocab_size": 64})
    hand = copy.deepcopy(model)
    path, modules = find_blocks(model)
    data = tokens(64)  # two batches
    inputs = capture(model, modules[0], data.train[0])
    first, again = list(run(modules[0], inputs)), list(run(modules[0], inputs))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # no cache grew in between
    pruned = SparseGPT(samples=64, sequential="layer")(model, RATIO, scope=Local(), data=data)
    assert "model.lm_head.weight" not in pruned.mask.prunable  # the logits layer, kept by default
    for n, layer in prunable_layers(hand, ["*lm_head"]).items():
        kept = by_hand("sparsegpt", layer, input_seen(hand, layer, data.train[0]).gram)
        assert torch.equal(pruned.mask.masks[f"{n}.weight"], kept), n
    assert pruned.mask.sparsity == pytest.approx(RATIO, abs=0.01)


@pytest.mark.parametrize("config", HF_CONFIGS, ids=lambda c: c["model_type"])
def test_each_hugging_face_block_reads_what_the_pruned_blocks_below_it_give(config):
    """Block by block, each block's inputs are what the whole model, pruned below it, hands it:
    the first layer of every block (it reads the block's input) is masked by Wanda from the same
    statistics a pass through the finished model gives it."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = lm.hf_causal_lm(64, config={**config, "vocab_size": 64})
    original = copy.deepcopy(model)
    data = tokens(64)  # two batches
    pruned = Wanda(samples=64)(model, RATIO, scope=Local(), data=data).mask
    path, modules = find_blocks(model)
    for i, block in enumerate(modules):
        name, layer = next((n, m) for n, m in block.named_modules() if isinstance(m, nn.Linear))
        weight = original.get_submodule(f"{path}.{i}.{name}").weight
        gram = input_seen(model, layer, data.train[0]).gram
        assert torch.equal(pruned.masks[f"{path}.{i}.{name}.weight"], wanda_mask(weight, gram, RATIO)), (i, name)


def test_blocks_pruned_on_a_device_one_at_a_time_give_the_same_model():
    blocks_pruned_on("cpu")  # the path itself; on a GPU: test_cuda.py


def blocks_pruned_on(device: str) -> None:
    """method.block_device: the model stays on the CPU, each block visits the device while it is
    pruned (and only then), and the masks and weights are those of pruning it where it is."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = lm.hf_causal_lm(64, config={**HF_CONFIGS[0], "vocab_size": 64})
    here = copy.deepcopy(model)
    _, modules = find_blocks(model)
    seen = []

    def where(block):
        def hook(_module, _args):
            seen.append([next(b.parameters()).device.type for b in modules])

        return block.register_forward_pre_hook(hook)

    handles = [where(block) for block in modules]
    pruned = SparseGPT(samples=64, block_device=device)(model, RATIO, scope=Local(), data=tokens(64)).mask
    for handle in handles:
        handle.remove()
    expected = SparseGPT(samples=64)(here, RATIO, scope=Local(), data=tokens(64)).mask
    assert all(torch.equal(pruned.masks[k], expected.masks[k]) for k in expected.masks)
    for (name, a), b in zip(model.named_parameters(), here.parameters(), strict=True):
        assert a.device.type == "cpu", name
        assert torch.allclose(a, b, atol=1e-5), name
    # while block i ran (capture excepted: the model's own pass), block i alone was on the device
    on_device = [devices for devices in seen if device in devices]
    assert on_device
    assert all(devices.count(device) == 1 or device == "cpu" for devices in on_device)


def test_a_declared_blocks_attribute_that_is_not_a_module_list_is_one_line():
    with pytest.raises(PruningError, match="method.blocks='tokens' is not an nn.ModuleList"):
        Wanda(samples=8, blocks="tokens")(gpt(), RATIO, scope=Local(), data=tokens(8))


# --- SparseGPT's mask selection -----------------------------------------------------------------


def rows_of_different_scale(rows: int = 32, cols: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(rows, cols, generator=g) * torch.logspace(-1, 1, rows).unsqueeze(1)
    mix = torch.randn(cols, cols, generator=g) / math.sqrt(cols) + torch.eye(cols)
    x = (torch.randn(1024, cols, generator=g) * torch.rand(cols, generator=g) * 3) @ mix
    return weight, x, x.double().T @ x.double()


def test_one_threshold_per_lazy_block_leaves_rows_at_different_sparsities_and_the_layer_at_the_ratio():
    weight, _, gram = rows_of_different_scale()
    _, kept = sparsegpt_update(weight, gram, RATIO, blocksize=32)
    per_row = (~kept).sum(1)
    assert int((~kept).sum()) == weight.numel() // 2
    assert int((~kept[:, :32]).sum()) == int((~kept[:, 32:]).sum()) == weight.numel() // 4  # each lazy block
    assert per_row[0] > 48
    assert per_row[-1] < 16


def test_block_wide_selection_reconstructs_no_worse_than_per_row():
    weight, x, gram = rows_of_different_scale()
    errors = {}
    for selection in ("block", "row"):
        new, kept = sparsegpt_update(weight, gram, RATIO, blocksize=32, selection=selection)
        assert int(kept.sum()) == weight.numel() // 2
        errors[selection] = (x @ weight.T - x @ (new * kept).T).norm().item()
    assert errors["block"] <= errors["row"], errors


@pytest.mark.parametrize(("ratio", "cols", "count"), [(0.5, 10, 5), (0.6, 10, 6), (0.7, 10, 7), (0.7, 64, 44)])
def test_wanda_cuts_each_row_as_its_reference_code_does(ratio, cols, count):
    assert per_row_count(ratio, cols) == int(cols * ratio) == count
    weight = torch.randn(4, cols, generator=torch.Generator().manual_seed(0))
    assert (~wanda_mask(weight, torch.eye(cols, dtype=torch.float64), ratio)).sum(1).tolist() == [count] * 4


@pytest.mark.parametrize(
    ("name", "options", "whole"),
    [("wanda", {}, False), ("wanda", {"refit": "dsnot"}, True), ("sparsegpt", {}, True)],
    ids=["wanda", "wanda+dsnot", "sparsegpt"],
)
def test_a_layers_gram_matrix_is_summed_whole_only_where_the_method_reads_it_whole(monkeypatch, name, options, whole):
    """Wanda reads only the diagonal (each input's sum of squares): only it is summed, O(in) a
    layer where the matrix is O(in²); its masks stay those of the whole matrix (the by-hand test
    above)."""
    from prunelab.pruning.seen import Seen

    dims = set()
    add = Seen.add
    monkeypatch.setattr(Seen, "add", lambda self, x: dims.add(add(self, x).gram.dim()) or self)
    method(name, **options)(gpt(), RATIO, scope=Local(), data=tokens())
    assert dims == {2 if whole else 1}
