"""How a network trains: augmentation on training batches only, the field's schedules and label
smoothing, mixed precision and channels-last with the mask still held exactly, and a trained
checkpoint as the dense model."""

from __future__ import annotations

import io

import pytest
import torch
from mlflow.tracking import MlflowClient

from prunelab.data.augment import CropFlip
from prunelab.data.splits import Split
from prunelab.experiment.keys import identity
from prunelab.experiment.runner import run
from prunelab.experiment.train import Recipe, Speed, fit
from prunelab.models import ModelError, lenet5, resnet_cifar
from prunelab.models.checkpoint import load_checkpoint
from prunelab.names import Artifact, Metric, Role, Tag


def runs(cfg, role=Role.PRUNED):
    client = MlflowClient(cfg.tracking.uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.`{Tag.ROLE}` = '{role}'")
    return client, found


def stored_weights(cfg, run_id: str) -> dict:
    client = MlflowClient(cfg.tracking.uri)
    path = client.download_artifacts(run_id, Artifact.MASKED_WEIGHTS)
    return torch.load(path, weights_only=True)


# --- augmentation ------------------------------------------------------------------------------


def test_crop_flip_pads_with_black_in_the_standardised_scale_and_only_training_batches_change():
    mean, std = 0.4, 0.25
    x = (torch.ones(64, 3, 8, 8) - mean) / std  # white images, standardised
    augment = CropFlip(padding=2)
    split = Split(x, torch.zeros(64, dtype=torch.long), lambda b, g: augment.batch(b, g, mean, std))
    (train, _), *_ = split.batches(64, torch.Generator().manual_seed(0))
    black = torch.tensor((0.0 - mean) / std)
    assert torch.equal(train.unique(), torch.stack([black, x[0, 0, 0, 0]]))  # shifted: black borders came in
    assert (train == black).any(dim=(1, 2, 3)).float().mean() > 0.5
    (again, _), *_ = split.batches(64, torch.Generator().manual_seed(0))
    assert torch.equal(train, again)  # seeded
    (evaluated, _), *_ = split.batches(64)  # in order: an evaluation's batches are never augmented
    assert torch.equal(evaluated, x)


def test_augmentation_is_part_of_the_run_and_its_dense_model(make_cfg):
    plain, augmented = make_cfg(), make_cfg("augment=crop_flip")
    assert identity(plain, "cpu").dense != identity(augmented, "cpu").dense
    assert identity(plain, "cpu").run != identity(augmented, "cpu").run
    run(augmented)
    run(plain)
    _, found = runs(augmented, Role.DENSE)
    by_augment = {r.data.params.get("augment.padding"): r for r in found}
    assert by_augment["4"].info.status == "FINISHED"
    assert by_augment["4"].data.metrics[Metric.TRAIN_LOSS] != by_augment[None].data.metrics[Metric.TRAIN_LOSS]


# --- schedules, label smoothing ------------------------------------------------------------------


def test_the_step_schedule_multiplies_the_rate_by_gamma_after_each_milestone():
    recipe = Recipe(6, 10, 0.1, torch.optim.SGD, "step", (2, 4), 0.1)
    optimizer, scheduler = recipe.optimizer_for([torch.nn.Parameter(torch.zeros(1))], steps=3)
    rates = []
    for _ in range(18):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1] * 6 + [0.01] * 6 + [0.001] * 6)


def test_label_smoothing_changes_the_loss_it_trains_on():
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    losses = []
    for smoothing in (0.0, 0.1):
        torch.manual_seed(1)  # the same network each time, not trained (lr 0): only the loss differs
        model = lenet5(in_shape=(1, 8, 8))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        losses.append(fit(model, Split(x, y), Split(x, y), opt, 1, 32, 0, label_smoothing=smoothing)[0].loss)
    assert losses[1] != losses[0]


# --- precision and layout --------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_the_cpu_runs_end_to_end_and_the_mask_holds_exactly(make_cfg, precision):
    cfg = make_cfg(f"train.precision={precision}", "ratio=0.7", "handover=true")
    metrics = run(cfg)
    stored = stored_weights(cfg, metrics["run_id"])
    for name, mask in stored["mask"]["masks"].items():
        assert torch.count_nonzero(stored["state_dict"][name][~mask]) == 0  # pruned weights exactly 0
    assert metrics[Metric.SPARSITY_PRUNABLE] == pytest.approx(0.7, abs=0.01)
    full = run(make_cfg("ratio=0.7"))  # float32: autocast did change the numbers
    assert metrics[Metric.TEST_LOSS] != full[Metric.TEST_LOSS]
    assert identity(cfg, "cpu").dense != identity(make_cfg("ratio=0.7"), "cpu").dense


def test_autocast_computes_in_bf16_while_the_weights_stay_float32():
    model = lenet5(in_shape=(1, 8, 8))
    with Speed("bf16").autocast(torch.device("cpu")):
        out = model(torch.randn(2, 1, 8, 8))
    assert out.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_channels_last_trains_the_same_function_in_another_layout():
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    results = []
    for layout in (False, True):
        torch.manual_seed(1)
        model = resnet_cifar(in_shape=(3, 16, 16), depth=20)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        # one step: a ResNet with BatchNorm on random labels turns rounding (which threads and
        # layouts change) into 1e-4 in one step and 1e-3 in two; a layout gone wrong is ~0.1
        fit(model, Split(x, y), Split(x[:8], y[:8]), opt, 1, 64, 0, speed=Speed(channels_last=layout))
        results.append(model)
    conv = results[1].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(results[0].parameters(), results[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-3)
    with torch.no_grad():  # the same function: the trained float32 model's logits in either layout
        logits = results[0].eval()(x)
        moved = results[0].to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(logits, moved, atol=1e-5)


# --- a checkpoint as the dense model ---------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    """A LeNet-5 for the synthetic data, trained by someone else (random weights here)."""
    torch.manual_seed(123)
    model = lenet5(in_shape=(1, 8, 8))
    path = tmp_path / "lenet5.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_a_checkpoint_is_the_dense_model_evaluated_never_trained(make_cfg, checkpoint):
    path, model = checkpoint
    cfg = make_cfg(f"dense.checkpoint={path}", "train.epochs=5", "finetune.epochs=0")
    metrics = run(cfg)
    client, dense = runs(cfg, Role.DENSE)
    assert len(dense) == 1
    assert Metric.TRAIN_LOSS not in dense[0].data.metrics
    from prunelab.data import synthetic
    from prunelab.experiment.train import evaluate

    data = synthetic(in_shape=(1, 8, 8), seed=0)
    assert metrics[Metric.at(Metric.DENSE, Metric.TEST_ACCURACY)] == pytest.approx(
        evaluate(model.eval(), data.test)["accuracy"]
    )


def test_the_run_key_follows_the_checkpoints_contents_not_its_path(make_cfg, checkpoint, tmp_path):
    path, model = checkpoint
    first = identity(make_cfg(f"dense.checkpoint={path}"), "cpu")
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(path.read_bytes())
    assert identity(make_cfg(f"dense.checkpoint={moved}"), "cpu") == first
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, path)
    changed = identity(make_cfg(f"dense.checkpoint={path}"), "cpu")
    assert changed.dense != first.dense
    assert changed.run != first.run
    assert identity(make_cfg(), "cpu").dense not in (first.dense, changed.dense)


def test_a_whole_module_or_a_nested_state_dict_loads_too(tmp_path, checkpoint):
    _, model = checkpoint
    for name, obj in (("module.pt", model), ("nested.pt", {"state_dict": model.state_dict(), "epoch": 3})):
        torch.save(obj, tmp_path / name)
        loaded = load_checkpoint(lenet5(in_shape=(1, 8, 8)), tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    ddp = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from DistributedDataParallel
    buffer = io.BytesIO()
    torch.save(ddp, buffer)
    (tmp_path / "ddp.pt").write_bytes(buffer.getvalue())
    load_checkpoint(lenet5(in_shape=(1, 8, 8)), tmp_path / "ddp.pt")


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_first_keys(tmp_path):
    state = resnet_cifar(depth=20).state_dict()
    torch.save(state, tmp_path / "r20.pt")
    with pytest.raises(
        ModelError, match=r"51 shapes differ, e\.g\. layers\.3\.conv1\.weight is \(32, 16, 3, 3\) in the"
    ):
        load_checkpoint(resnet_cifar(depth=32), tmp_path / "r20.pt")  # stage 2 starts at block 3 of ResNet-20
    with pytest.raises(ModelError, match=r"shapes differ, e\.g\. classifier\.weight is \(10, 64\) in the checkpoint"):
        load_checkpoint(resnet_cifar(depth=20, num_classes=100), tmp_path / "r20.pt")
    renamed = {("fc." + k.split(".", 1)[1] if k.startswith("classifier.") else k): v for k, v in state.items()}
    torch.save({**renamed, "extra.step": torch.tensor(3)}, tmp_path / "renamed.pt")
    with pytest.raises(ModelError, match=r"missing classifier\.weight, classifier\.bias; unexpected fc\.weight, fc"):
        load_checkpoint(resnet_cifar(depth=20), tmp_path / "renamed.pt")
    partial = load_checkpoint(resnet_cifar(depth=20), tmp_path / "renamed.pt", strict=False)
    assert torch.equal(partial.conv1.weight, state["conv1.weight"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="is not a PyTorch checkpoint"):
        load_checkpoint(lenet5(), tmp_path / "junk.pt")


def test_a_compiled_training_forward_takes_the_eager_steps_and_the_mask_holds():
    from prunelab.pruning import prune

    torch.manual_seed(0)
    x, y = torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))
    template = lenet5(in_shape=(1, 8, 8))
    mask = prune(template, "unstructured", "global", 0.7).mask
    mask.apply(template)
    trained = []
    for compiled in (False, True):
        model = lenet5(in_shape=(1, 8, 8))
        model.load_state_dict(template.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        hold = mask.hold(model)
        fit(model, Split(x, y), Split(x[:32], y[:32]), opt, 1, 64, 0, after_step=hold, speed=Speed(compile=compiled))
        trained.append(dict(model.named_parameters()))
    for name, keep in mask.masks.items():
        assert torch.count_nonzero(trained[1][name][~keep]) == 0
    for name, tensor in trained[0].items():
        assert torch.allclose(tensor, trained[1][name], atol=1e-5)


def test_crop_flip_pads_each_channel_with_its_own_standardised_black():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = (torch.ones(32, 3, 8, 8) - m) / s
    out = CropFlip(padding=3).batch(x, torch.Generator().manual_seed(0), mean, std)
    for c in range(3):
        assert torch.allclose(out[:, c].unique(), torch.tensor([-mean[c] / std[c], (1 - mean[c]) / std[c]]))


def test_a_safetensors_checkpoint_loads(tmp_path, checkpoint):
    from safetensors.torch import save_file

    _, model = checkpoint
    save_file(model.state_dict(), str(tmp_path / "lenet5.safetensors"))
    loaded = load_checkpoint(lenet5(in_shape=(1, 8, 8)), tmp_path / "lenet5.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_crop_flip_on_a_dataset_of_tokens_is_refused_before_any_run_opens(make_cfg):
    from prunelab.data import DataError

    cfg = make_cfg("model=tiny_gpt", "dataset=fortunes", "augment=crop_flip")
    with pytest.raises(DataError, match="augment=crop_flip augments images .*: use augment=none"):
        run(cfg)
    client, found = runs(cfg)
    assert [r.info.status for r in found] == [] or all(r.info.status != "RUNNING" for r in found)


def test_step_milestones_scale_with_a_schedules_rounds_of_fine_tuning(make_cfg):
    from prunelab.experiment.session import RunSession
    from prunelab.experiment.settings import Settings

    s = Settings.from_config(make_cfg("recipe=cifar", "finetune.epochs=100", "train.epochs=1", "train.milestones=[1]"))
    session = RunSession.__new__(RunSession)
    session.finetune, session.epochs = s.finetune, s.finetune.epochs
    assert session._finetune_for(100).milestones == (60, 80)
    assert session._finetune_for(33).milestones == (20, 26)  # a round of an iterative schedule
