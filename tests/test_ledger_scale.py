"""The cost ledger at a language model's size: timed on a bounded window and batch, on the
models as they stand, its file sizes counted as they are written."""

from __future__ import annotations

import io

import torch

from prunelab.deploy import ledger
from prunelab.models import lm
from prunelab.names import Metric


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    return lm.hf_causal_lm(64, config={**config, "num_attention_heads": 4, "max_position_embeddings": 512})


def test_a_language_model_is_timed_on_a_bounded_window_at_the_batches_its_budget_allows(monkeypatch):
    model = tiny_llama()
    windows = torch.randint(0, 64, (4, 512))
    x, batches = ledger.timed_input(model, windows)
    assert x.shape == (1, ledger.LM_TIMED_TOKENS)
    assert batches == (1, 64)  # a tiny model: 64 windows are within the budget
    weights = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(ledger, "LM_BUDGET", 64 * ledger.LM_TIMED_TOKENS * weights - 1)
    assert ledger.timed_input(model, windows)[1] == (1,)  # one window more than the budget: batch 1 only
    costs = ledger.cost_ledger(model, model, windows, latency=True)
    assert costs[Metric.LATENCY_SEQ_LEN] == ledger.LM_TIMED_TOKENS
    assert costs[Metric.cost(Metric.PRUNED, Metric.latency_ms(1))] > 0
    assert Metric.cost(Metric.PRUNED, Metric.latency_ms(64)) not in costs
    assert costs[Metric.cost(Metric.PRUNED, Metric.TOKENS_PER_S)] > 0  # at the largest batch timed


def test_the_file_size_is_that_of_the_saved_state_dict_without_holding_it():
    model = tiny_llama()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert ledger.state_bytes(model) == buffer.getbuffer().nbytes
