"""Memory a stage freed goes back to the system where it ends: the C library's heap keeps freed
blocks under one still in use, and a later stage (a second copy of a large model's weights, mapped
to be checked or timed) would stack on them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from test_blocks import RATIO, gpt, method, tokens
from test_ledger_scale import tiny_llama

from prunelab import heap
from prunelab.deploy import handover as handover_module
from prunelab.deploy.handover import HandoverJob, hand_over
from prunelab.names import Metric
from prunelab.pruning import Local

pytestmark = pytest.mark.skipif(not heap.give_back(), reason="the C library has no malloc_trim")

FRAGMENTED = textwrap.dedent(
    """
    import torch
    from prunelab import heap

    def anonymous():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon"))

    torch.ones(1 << 22)  # made and freed, 16 MiB: glibc serves smaller blocks from its heap since
    held = [torch.ones(1 << 20) for _ in range(101)]  # 101 x 4 MiB, touched
    last = held.pop()  # the heap cannot shrink below the block still in use at its top
    del held
    before = anonymous()
    heap.give_back()
    print(before, anonymous())
    """
)


def test_the_heap_hands_back_what_was_freed_under_a_block_still_in_use():
    out = subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, text=True, check=True).stdout
    before, after = (int(kib) for kib in out.split())
    assert before - after > 300 * 1024  # of the 400 MiB freed, the heap kept them until handed back


@pytest.mark.parametrize("name", ["wanda", "sparsegpt"])
def test_a_block_by_block_prune_hands_memory_back_after_each_block(monkeypatch, name):
    calls = []
    monkeypatch.setattr(heap, "_trim", lambda: lambda pad: calls.append(pad) or 1)  # a counting malloc_trim
    method(name)(gpt(layers=3), RATIO, scope=Local(), data=tokens())
    assert len(calls) == 3


def test_a_run_hands_memory_back_after_its_prune_and_its_hand_over(make_cfg, monkeypatch):
    from prunelab.experiment.runner import run

    calls = []
    monkeypatch.setattr(heap, "_trim", lambda: lambda pad: calls.append(pad) or 1)  # a counting malloc_trim
    run(make_cfg("handover=true"))
    assert len(calls) == 2  # (a LeNet has no repeated blocks)


def test_a_language_models_hand_over_check_hands_memory_back_before_it_maps_the_folder(tmp_path, monkeypatch):
    """The run's model's passes free their activations into the heap; the reloaded folder, mapped
    beside the weights, would stack on them. Its own passes keep no key/value cache."""
    events: list = []
    monkeypatch.setattr(heap, "_trim", lambda: lambda _pad: events.append("hand back") or 1)
    reload = handover_module.load_hf

    def reloaded(folder):
        model = reload(folder)
        events.append("map the folder")
        model.register_forward_hook(lambda _m, _a, out: events.append(("cache", out.past_key_values)))
        return model

    monkeypatch.setattr(handover_module, "load_hf", reloaded)
    x = torch.randint(0, 64, (2, 16))
    job = HandoverJob(tiny_llama(), 0.0, 1.0, x[:1], None, False, (x, x.roll(-1, 1)), formats=["hf"])
    checked = hand_over(job, tmp_path).accuracies
    assert events == ["hand back", "map the folder", ("cache", None), ("cache", None)]
    assert checked[Metric.HANDOVER_HF_PERPLEXITY] == pytest.approx(checked[Metric.HANDOVER_PERPLEXITY], rel=1e-5)
