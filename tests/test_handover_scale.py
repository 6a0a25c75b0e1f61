"""A hand-over that scales: files written to disk as they are made, a transformers model's
Hugging Face folder checked by the perplexity it gives reloaded, and the formats that do not scale
(an export, ONNX, the compact file) made for a large model only when asked for."""

from __future__ import annotations

import mlflow
import pytest
import torch
from safetensors.torch import load_file
from test_ledger_scale import tiny_llama
from test_tokens import checkpoint_on_wikitext, llama_folder, runs, write_wikitext
from test_weights import tensors_like

from prunelab import models
from prunelab.deploy import handover as handover_module
from prunelab.deploy.handover import HandoverError, formats, handover
from prunelab.deploy.onnx import deployed
from prunelab.experiment import handover_stage
from prunelab.experiment.runner import run
from prunelab.names import Artifact, Metric
from prunelab.pruning import prune
from prunelab.pruning.mask import Mask


def listing(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_the_hugging_face_folder_of_a_pruned_checkpoint_reloads_with_the_runs_perplexity(cli, workdir, arch):
    wiki = write_wikitext(workdir / "wikitext-2")
    folder = llama_folder(workdir, (wiki / "wiki.train.raw").read_text(), arch=arch)
    result = cli(
        *checkpoint_on_wikitext(folder, wiki),
        "train.epochs=0",
        "method=sparsegpt",
        "scope=local",
        "ratio=0.5",
        "method.samples=4",
        "handover=true",
        "handover_formats=[hf]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (pruned,) = runs(workdir, "pruned")
    m = pruned.data.metrics
    assert m[Metric.HANDOVER_HF_PERPLEXITY] == pytest.approx(m[Metric.HANDOVER_PERPLEXITY], rel=1e-5)
    # the tiny test split fits in the checked sample: the run's own figure
    assert m[Metric.HANDOVER_PERPLEXITY] == pytest.approx(m[Metric.TEST_PERPLEXITY], rel=1e-5)
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(pruned.info.run_id, "model/hf")}
    assert "model/hf/config.json" in files
    top = {a.path for a in mlflow.MlflowClient().list_artifacts(pruned.info.run_id, "model")}
    assert not {"model/program.pt2", "model/model.onnx", "model/sparse_weights.pt"} & top  # only what was asked


def test_a_large_transformers_model_hands_over_its_folder_only_unless_more_is_asked(tmp_path, monkeypatch):
    model = tiny_llama()
    x = torch.randint(0, 64, (1, 16))
    assert formats(model) == {"hf", "weights", "program", "onnx", "compact"}  # small: everything that applies
    monkeypatch.setattr(handover_module, "LARGE_BYTES", 1024)  # this model is now "large"
    assert formats(model) == {"hf"}
    made = listing(handover(deployed(model, 0.0, 1.0), x, tmp_path / "default").folder)
    assert {f for f in made if not f.startswith("model/hf/")} == {"model/README.md"}
    assert "model/hf/config.json" in made
    readme = (tmp_path / "default" / "model" / "README.md").read_text()
    assert "handover_formats=[hf,weights,program,onnx,compact]" in readme  # how to get the rest
    asked = listing(
        handover(deployed(model, 0.0, 1.0), x, tmp_path / "asked", made=formats(model, ["hf", "onnx"])).folder
    )
    assert "model/model.onnx" in asked
    assert "model/program.pt2" not in asked


def test_a_large_vision_model_hands_over_its_weights_file(tmp_path, monkeypatch):
    model = models.lenet5(in_shape=(1, 16, 16))
    mask = prune(model, "unstructured", "local", 0.5).mask
    monkeypatch.setattr(handover_module, "LARGE_BYTES", 1024)
    assert formats(model) == {"weights"}
    made = listing(handover(deployed(model, 0.0, 1.0), torch.zeros(1, 1, 16, 16), tmp_path, mask).folder)
    assert made == {"model/sparse_weights.pt", "model/README.md"}


def test_formats_that_do_not_exist_or_apply_are_refused():
    with pytest.raises(HandoverError, match="pdf is not a format"):
        formats(models.lenet5(), ["pdf"])
    with pytest.raises(HandoverError, match="hf is the Hugging Face folder of a transformers model"):
        formats(models.lenet5(), ["hf"])
    bf16 = tiny_llama().to(torch.bfloat16)
    assert "compact" not in formats(bf16)  # NumPy has no bfloat16: the rest is made
    with pytest.raises(HandoverError, match="NumPy has no bfloat16"):
        formats(bf16, ["compact"])


def test_the_hand_over_makes_no_copy_of_a_model_on_the_cpu(make_cfg, monkeypatch):
    """The hand-over writes the weights the run holds (a sweep's worker, which runs beside the next
    point, takes a copy; see test_sweep)."""
    seen: list[int] = []
    made = handover_stage.hand_over

    def counting(job, folder):
        weight = next(p for p in job.net.parameters() if p.dim() > 1)
        storage = weight.untyped_storage().data_ptr()
        seen.append(
            tensors_like(weight, lambda o: o.untyped_storage().data_ptr() != storage and torch.equal(o, weight))
        )
        return made(job, folder)

    monkeypatch.setattr(handover_stage, "hand_over", counting)
    run(make_cfg("handover=true"))
    assert seen == [0]


def test_a_large_models_run_records_its_mask_alone_where_the_hand_over_holds_its_weights(cli, workdir, monkeypatch):
    """At a billion parameters the weights are gigabytes: the Hugging Face folder holds them once,
    and the run's own record keeps the mask beside it (as bits), not another copy of the weights."""
    wiki = write_wikitext(workdir / "wikitext-2")
    folder = llama_folder(workdir, (wiki / "wiki.train.raw").read_text())
    monkeypatch.setattr(handover_module, "LARGE_BYTES", 1024)  # this model is now "large"
    args = [*checkpoint_on_wikitext(folder, wiki), "train.epochs=0", "method=sparsegpt", "scope=local", "ratio=0.5"]
    result = cli(*args, "method.samples=4", "handover=true")
    assert result.returncode == 0, result.stderr[-3000:]
    (pruned,) = runs(workdir, "pruned")
    client = mlflow.MlflowClient()
    top = {a.path for a in client.list_artifacts(pruned.info.run_id, "model")}
    assert Artifact.MASK in top
    assert Artifact.MASKED_WEIGHTS not in top
    mask = Mask.from_state(torch.load(client.download_artifacts(pruned.info.run_id, Artifact.MASK), weights_only=True))
    assert mask.sparsity == pytest.approx(pruned.data.metrics[Metric.SPARSITY_PRUNABLE])
    shipped = load_file(client.download_artifacts(pruned.info.run_id, "model/hf/model.safetensors"))
    for name in mask.prunable:  # every entry the mask prunes is zero in the folder's weights
        assert not shipped[name.removeprefix("model.")][~mask.masks[name]].any()  # (the wrapper's prefix)
