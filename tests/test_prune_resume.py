"""A long block-by-block prune survives a kill: each finished block is kept in the run's progress
folder, a run of the same work resumes at the block after the last one kept, and ends with the
weights and mask an uninterrupted prune gives, bit for bit; progress of other work is not used."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import cli_env, runs, tiny_overrides
from mlflow import MlflowClient
from torch import nn

from prunelab.models import lm
from prunelab.names import Artifact, Metric
from prunelab.pruning import Global, Local, Magnitude, PruneData, Pruner, SparseGPT, Unstructured, Wanda, layerwise
from prunelab.pruning.progress import PROGRESS

pytest.importorskip("transformers")

RATIO = 0.5
LLAMA = dict(
    model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=32, vocab_size=64,
)  # fmt: skip


def llama() -> nn.Module:
    """A tiny LLaMA of 4 blocks, the same weights every call."""
    torch.manual_seed(0)
    return lm.hf_causal_lm(64, config=LLAMA)


def tokens() -> PruneData:
    x = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(1))
    return PruneData((x, torch.zeros(32, dtype=torch.long)))


class Killed(Exception):
    """Stands in for a SIGKILL: nothing after it runs."""


@pytest.fixture
def blocks_pruned(monkeypatch) -> tuple[list[int], list[int]]:
    """``(pruned, kill_at)``: the index of every block pruned, in order; a block index put in
    ``kill_at`` ends the prune as it reaches that block (after the blocks before it were kept)."""
    pruned: list[int] = []
    kill_at: list[int] = []
    real = layerwise._prune_block

    def counted(block, inputs, prefix, *rest):
        index = int(prefix.rstrip(".").rsplit(".", 1)[1])
        if index in kill_at:
            raise Killed
        pruned.append(index)
        return real(block, inputs, prefix, *rest)

    monkeypatch.setattr(layerwise, "_prune_block", counted)
    return pruned, kill_at


def kept_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model: nn.Module, mask, expected_model: nn.Module, expected_mask) -> None:
    state, expected = model.state_dict(), expected_model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected), [
        k for k in expected if not torch.equal(state[k], expected[k])
    ]
    assert mask.masks.keys() == expected_mask.masks.keys()
    assert all(torch.equal(mask.masks[k], expected_mask.masks[k]) for k in expected_mask.masks)


@pytest.mark.parametrize("method", [SparseGPT, Wanda], ids=["sparsegpt", "wanda"])
def test_a_prune_killed_at_its_third_block_resumes_there_and_ends_with_the_uninterrupted_weights(
    method, tmp_path, blocks_pruned
):
    pruned, kill_at = blocks_pruned
    whole = llama()
    expected = method(samples=32)(whole, RATIO, scope=Local(), data=tokens())  # no folder: as ever
    assert pruned == [0, 1, 2, 3]

    folder = tmp_path / "progress"
    pruned.clear()
    kill_at.append(2)
    with pytest.raises(Killed):
        method(samples=32)(llama(), RATIO, scope=Local(), data=tokens(), progress=folder)
    assert pruned == [0, 1]
    saved = torch.load(folder / PROGRESS, weights_only=True)
    assert saved["done"] == 2  # blocks 0 and 1 kept
    assert saved["work"]["ratio"] == RATIO

    pruned.clear()
    kill_at.clear()
    model = llama()  # the same command again: the same starting model
    result = method(samples=32)(model, RATIO, scope=Local(), data=tokens(), progress=folder)
    assert pruned == [2, 3]  # blocks 0 and 1 restored, not pruned again
    assert result.figures == {Metric.PRUNE_RESUMED_BLOCK: 2}
    assert_same(model, result.mask, whole, expected.mask)
    assert not folder.exists()  # finished: the progress was only for resuming
    assert expected.figures == {}


@pytest.mark.parametrize(
    "other",
    [
        dict(ratio=0.6),  # another ratio: e.g. another round of an iterative schedule
        dict(start="wanda"),  # another starting mask: a level after the one killed
        dict(damp=0.1),  # another option of the method
    ],
    ids=["ratio", "mask", "option"],
)
def test_progress_of_other_work_is_not_resumed_from(other, tmp_path, blocks_pruned):
    pruned, kill_at = blocks_pruned
    folder = tmp_path / "progress"
    kill_at.append(2)
    with pytest.raises(Killed):
        SparseGPT(samples=32)(llama(), RATIO, scope=Local(), data=tokens(), progress=folder)
    assert torch.load(folder / PROGRESS, weights_only=True)["done"] == 2
    kill_at.clear()

    ratio = other.get("ratio", RATIO)
    options = {"damp": other["damp"]} if "damp" in other else {}

    def start(model: nn.Module):
        if "start" not in other:
            return None
        return Wanda(samples=32)(model, 0.25, scope=Local(), data=tokens()).mask

    whole = llama()
    expected = SparseGPT(samples=32, **options)(whole, ratio, scope=Local(), data=tokens(), mask=start(whole))
    model = llama()
    begun = start(model)
    pruned.clear()
    result = SparseGPT(samples=32, **options)(model, ratio, scope=Local(), data=tokens(), mask=begun, progress=folder)
    assert pruned == [0, 1, 2, 3]  # every block pruned: the progress found was not this work's
    assert Metric.PRUNE_RESUMED_BLOCK not in result.figures
    assert_same(model, result.mask, whole, expected.mask)
    assert not folder.exists()


def test_a_method_that_keeps_no_progress_is_not_given_the_folder(tmp_path):
    """``progress`` goes only to a method that takes it (``Method.takes``); the others run as ever."""
    folder = tmp_path / "progress"
    model = llama()
    before = kept_state(model)
    pruned = Pruner(Unstructured(), Magnitude(1), Global())(model, RATIO, progress=folder)
    assert pruned.mask.sparsity == pytest.approx(RATIO, abs=0.01)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # it does not modify it
    assert not folder.exists()
    assert "progress" in SparseGPT.takes
    assert "progress" not in Unstructured.takes


# --- the command line: a real process, SIGKILLed ---------------------------------------------------

# Test-only, imported at the child's start (it is the first sitecustomize on its PYTHONPATH): the
# prune waits at its third block once the first two are kept, so that the test kills it there.
HOLD = """
import pathlib, time
from prunelab.pruning import layerwise
real = layerwise._prune_block
def held(block, inputs, prefix, *rest):
    if prefix.endswith(".2.") and any(pathlib.Path({cache!r}).glob("schedules/*/prune/progress.pt")):
        while True:
            time.sleep(1)
    return real(block, inputs, prefix, *rest)
layerwise._prune_block = held
"""


@pytest.mark.slow
def test_a_sparsegpt_run_killed_after_two_blocks_resumes_at_the_third_and_ends_as_an_uninterrupted_run(
    cli, workdir, tmp_path
):
    import transformers
    from test_tokens import checkpoint_on_wikitext, llama_folder, write_wikitext  # it needs tokenizers too

    corpus = write_wikitext(workdir / "wikitext-2")
    model_folder = llama_folder(workdir, (corpus / "wiki.train.raw").read_text())
    config = transformers.AutoConfig.from_pretrained(model_folder)
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model_folder)
    args = [
        *checkpoint_on_wikitext(model_folder, corpus),  # finetune.epochs=0
        "train.epochs=0",
        "method=sparsegpt",
        "method.samples=8",
        "scope=local",
        f"ratio={RATIO}",
    ]  # and handover=false measure_latency=false (tiny_overrides)

    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "sitecustomize.py").write_text(HOLD.format(cache=str(workdir / "cache")))
    env = cli_env(workdir)
    env["PYTHONPATH"] = f"{hold}:{env['PYTHONPATH']}"
    child = subprocess.Popen(
        [sys.executable, "-m", "prunelab", *tiny_overrides(workdir), *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done, deadline = 0, time.time() + 120
    while done < 2 and child.poll() is None and time.time() < deadline:
        for path in (workdir / "cache" / "schedules").glob(f"*/prune/{PROGRESS}"):
            done = torch.load(path, weights_only=True)["done"]
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert done == 2, "the run ended before its second block was kept"
    (killed,) = runs(workdir, "pruned")
    assert killed.info.status == "RUNNING"  # SIGKILL: nothing could end it

    assert cli(*args).returncode == 0  # the same command: ends the dead run KILLED, then resumes
    statuses = {r.info.run_id: r.info.status for r in runs(workdir)}
    assert statuses[killed.info.run_id] == "KILLED"
    assert "RUNNING" not in statuses.values()
    (resumed,) = [r for r in runs(workdir, "pruned") if r.info.status == "FINISHED"]
    assert resumed.data.metrics[Metric.PRUNE_RESUMED_BLOCK] == 2  # at the third block
    assert not list((workdir / "cache" / "schedules").glob("*/prune"))  # a finished run leaves no progress

    assert cli(*args, "force=true").returncode == 0  # uninterrupted
    (whole,) = [
        r for r in runs(workdir, "pruned") if r.info.status == "FINISHED" and r.info.run_id != resumed.info.run_id
    ]
    assert Metric.PRUNE_RESUMED_BLOCK not in whole.data.metrics
    assert resumed.data.metrics[Metric.TEST_PERPLEXITY] == whole.data.metrics[Metric.TEST_PERPLEXITY]

    def final(run_id: str) -> dict:
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        return torch.load(
            client.download_artifacts(run_id, Artifact.MASKED_WEIGHTS, str(tmp_path / run_id)), weights_only=True
        )

    a, b = final(resumed.info.run_id), final(whole.info.run_id)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
    assert all(torch.equal(a["mask"]["masks"][k], b["mask"]["masks"][k]) for k in b["mask"]["masks"])
