"""Real compression: the physically shrunk network computes what the masked one does, the cost
ledger's figures add up, and the hand-over files run in a fresh Python without prunelab."""

from __future__ import annotations

import copy
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from conftest import randomised, runs
from prunelab import models
from prunelab.data import synthetic
from prunelab.handover import decode_sparse, handover, sparse_file
from prunelab.ledger import cost_ledger, mac_counts
from prunelab.pruning import prune, shrink


class DepthwiseResidualNet(nn.Module):
    """A user model (reachable as ``model._target_=test_compression.DepthwiseResidualNet``): an
    inverted-residual block (1x1 expand, depthwise 3x3, 1x1 project, added to its input), then a
    grouped convolution and a flatten -> linear head."""

    def __init__(self, in_shape=(1, 16, 16), num_classes: int = 10, groups: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
                                       nn.BatchNorm2d(32), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=groups),
                                     nn.BatchNorm2d(32), nn.ReLU())
        flat = 32 * math.ceil(in_shape[1] / 2) * math.ceil(in_shape[2] / 2)
        self.head = nn.Linear(flat, 24)
        self.classifier = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.project(self.depthwise(self.expand(x))))
        return self.classifier(torch.relu(self.head(self.grouped(x).flatten(1))))


MODELS = {"lenet300_100": models.lenet300_100, "lenet5": models.lenet5, "vgg_small": models.vgg_small,
          "resnet20": models.resnet20, "user_depthwise_residual": DepthwiseResidualNet}
SHAPE = (1, 16, 16)


def pruned_pair(name: str, scope: str = "global", ratio: float = 0.5):
    """(dense, masked, shrunk, mask, inputs) for a built-in or the user model."""
    torch.manual_seed(0)
    dense = randomised(MODELS[name](in_shape=SHAPE))
    x = torch.randn(8, *SHAPE)
    mask = prune(dense, "structured", scope, ratio, example_inputs=x[:1])
    masked = mask.apply(copy.deepcopy(dense)).eval()
    return dense, masked, shrink(masked, mask, x[:1]).eval(), mask, x


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("scope", ["global", "local"])
def test_shrunk_model_computes_what_the_masked_model_computes(name, scope):
    dense, masked, shrunk, _, x = pruned_pair(name, scope)
    with torch.no_grad():
        assert (masked(x) - shrunk(x)).abs().max() <= 1e-4
    assert n_params(shrunk) < 0.6 * n_params(dense)


def sgd_steps(model: nn.Module, x: torch.Tensor, steps: int = 3, after_step=None) -> None:
    """Fine-tuning steps as the default recipe takes them: SGD, momentum, weight decay, train mode."""
    model.train()
    y = torch.arange(len(x)) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if after_step is not None:
            after_step()


@pytest.mark.parametrize("name", list(MODELS))
def test_fine_tuning_the_shrunk_network_equals_fine_tuning_the_masked_one(name):
    """Why the shrunk network can be fine-tuned instead of the masked one: the same steps leave
    the kept weights (and BatchNorm statistics) the same, to float precision."""
    _, masked, shrunk, mask, x = pruned_pair(name)
    sgd_steps(masked, x, after_step=mask.hold(masked))
    sgd_steps(shrunk, x)
    kept = shrink(masked, mask, x[:1]).state_dict()  # the masked network's kept entries, shrunk layout
    diffs = {k: (kept[k].double() - v.double()).abs().max().item() for k, v in shrunk.state_dict().items()
             if v.is_floating_point()}
    assert max(diffs.values()) <= 1e-5, {k: d for k, d in diffs.items() if d > 1e-5}


def test_grouped_convolution_loses_the_same_positions_in_every_group():
    _, masked, shrunk, mask, _ = pruned_pair("user_depthwise_residual", "local")
    blocks = mask.channels["project.0"].view(4, -1)  # the channels feeding the groups=4 conv
    assert bool((blocks == blocks[0]).all()) and 0 < int(blocks[0].sum()) < blocks.shape[1]
    out_blocks = mask.channels["grouped.0"].view(4, -1)
    assert bool((out_blocks == out_blocks[0]).all())
    conv = shrunk.grouped[0]
    assert conv.groups == 4 and conv.in_channels == int(mask.channels["project.0"].sum())
    dw = shrunk.depthwise[0]
    assert dw.groups == dw.in_channels == dw.out_channels < 32  # depthwise stays depthwise


def test_ledger_counts_the_shrunk_network_for_structured_pruning():
    dense, masked, shrunk, mask, x = pruned_pair("vgg_small", "local")
    ledger = cost_ledger(dense, masked, x[:1], mask, shrunk, latency=False)
    assert ledger["cost.dense.params"] == n_params(dense)
    assert ledger["cost.pruned.params"] == ledger["cost.pruned.nonzero_params"] == n_params(shrunk)
    # Half the channels of every conv: about a quarter of the MACs (the first conv keeps all inputs).
    assert 0.2 < ledger["cost.ratio.macs"] < 0.3
    assert ledger["cost.pruned.macs"] == mac_counts(shrunk, x[:1])[0]
    assert ledger["cost.ratio.file_bytes"] < 0.35
    assert ledger["cost.ratio.macs"] == ledger["cost.pruned.macs"] / ledger["cost.dense.macs"]
    assert not any("latency" in k for k in ledger)


def test_macs_are_the_textbook_count():
    # LeNet-5 on 1x16x16: conv 6x16x16 outputs x 25 taps, conv 16x8x8 x (6 x 25), fc 256-120-84-10.
    expected = 6 * 256 * 25 + 16 * 64 * 150 + 256 * 120 + 120 * 84 + 84 * 10
    assert mac_counts(models.lenet5(in_shape=SHAPE), torch.zeros(1, *SHAPE)) == (expected, expected)


def test_ledger_nonzero_macs_follow_the_density_for_unstructured_pruning():
    torch.manual_seed(0)
    dense = models.lenet5(in_shape=SHAPE)
    mask = prune(dense, "unstructured", "local", 0.7)  # every layer keeps 30% of its weights
    pruned = mask.apply(copy.deepcopy(dense))
    ledger = cost_ledger(dense, pruned, torch.zeros(1, *SHAPE), mask, latency=False)
    assert ledger["cost.pruned.macs"] == ledger["cost.dense.macs"]  # same dense kernels
    assert ledger["cost.ratio.nonzero_macs"] == pytest.approx(0.3, abs=0.005)
    assert ledger["cost.ratio.nonzero_params"] == pytest.approx(0.3, abs=0.01)  # biases kept
    # bitmask (1 bit per weight) + 30% of the 32-bit values, plus torch.save's headers
    assert 0.3 < ledger["cost.ratio.file_bytes"] < 0.4


def test_latency_is_measured_at_batch_1_and_64():
    dense = models.lenet5()
    mask = prune(dense, "structured", "global", 0.5, example_inputs=torch.zeros(1, 1, 28, 28))
    masked = mask.apply(copy.deepcopy(dense))
    # (how cheap this is, is a matter for benchmarks/, not for a timed test)
    ledger = cost_ledger(dense, masked, torch.zeros(1, 1, 28, 28), mask, shrink(masked, mask, torch.zeros(1, 1, 28, 28)))
    for key in ("dense.latency_b1_ms", "pruned.latency_b1_ms", "dense.latency_b64_ms", "pruned.latency_b64_ms"):
        assert ledger[f"cost.{key}"] > 0
    assert ledger["cost.ratio.latency_b64"] == ledger["cost.pruned.latency_b64_ms"] / ledger["cost.dense.latency_b64_ms"]
    assert ledger["cost.latency_threads"] == 1


def test_sparse_file_decodes_to_the_masked_weights_and_masks():
    torch.manual_seed(0)
    model = models.lenet5(in_shape=SHAPE)
    mask = prune(model, "unstructured", "global", 0.8)
    mask.apply(model)
    state, masks = decode_sparse(torch.load(io.BytesIO(sparse_file(model, mask)), weights_only=True))
    assert set(masks) == set(mask.prunable)
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name
    for name in mask.prunable:
        assert torch.equal(masks[name], mask.masks[name]), name


# The reader of the hand-over files: PyTorch only. It fails if prunelab gets imported.
READER = """
import sys, torch
folder, inputs, outputs = sys.argv[1:4]
net = torch.export.load(f"{folder}/program.pt2").module()
data = torch.load(inputs, weights_only=True)
with torch.no_grad():
    out = {"logits": net(data["x"]), "one": net(data["x"][:1])}
if "y" in data:
    out["accuracy"] = (out["logits"].argmax(1) == data["y"]).float().mean().item()
torch.save(out, outputs)
assert not any(m.startswith("prunelab") for m in sys.modules), "prunelab was imported"
"""


def read_in_fresh_python(folder: Path, data: dict, tmp_path: Path) -> dict:
    torch.save(data, tmp_path / "inputs.pt")
    result = subprocess.run([sys.executable, "-c", READER, str(folder), str(tmp_path / "inputs.pt"),
                             str(tmp_path / "outputs.pt")], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "outputs.pt", weights_only=True)


def write(files: dict[str, bytes], root: Path) -> Path:
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return root / "model"


def test_structured_handover_runs_in_a_fresh_python_without_prunelab(tmp_path):
    _, masked, shrunk, mask, x = pruned_pair("user_depthwise_residual")
    files = handover(masked, x[:1], mask, shrunk)
    assert {"model/program.pt2", "model/state_dict.pt", "model/architecture.txt", "model/README.md"} <= set(files)
    out = read_in_fresh_python(write(files, tmp_path), {"x": x}, tmp_path)
    with torch.no_grad():
        assert (out["logits"] - masked(x)).abs().max() <= 1e-4
        assert (out["one"] - masked(x[:1])).abs().max() <= 1e-4  # the batch size is not fixed
    state = torch.load(tmp_path / "model" / "state_dict.pt", weights_only=True)
    assert sum(v.numel() for k, v in state.items() if k in dict(shrunk.named_parameters())) == n_params(shrunk)


def test_unstructured_handover_holds_program_and_compressed_weights(tmp_path):
    torch.manual_seed(0)
    model = models.lenet5(in_shape=SHAPE)
    mask = prune(model, "unstructured", "global", 0.8)
    mask.apply(model)
    x = torch.randn(5, *SHAPE)
    files = handover(model, x[:1], mask)
    assert {"model/program.pt2", "model/sparse_weights.pt", "model/README.md"} <= set(files)
    out = read_in_fresh_python(write(files, tmp_path), {"x": x}, tmp_path)
    with torch.no_grad():
        assert (out["logits"] - model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("args", [
    ("method=structured", "model._target_=test_compression.DepthwiseResidualNet", "measure_latency=true"),
    ("method=unstructured", "measure_latency=false"),
])
def test_a_run_logs_the_ledger_and_a_handover_that_reproduces_its_test_accuracy(cli, workdir, tmp_path, args):
    result = cli(*args, "ratio=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    m = run.data.metrics
    assert m["cost.pruned.macs"] > 0 and m["cost.dense.file_bytes"] > m["cost.pruned.file_bytes"]
    if "method=structured" in args:
        assert m["cost.ratio.macs"] < 0.6 and m["cost.ratio.params"] < 0.6
        assert m["cost.dense.latency_b1_ms"] > 0 and m["cost.pruned.latency_b64_ms"] > 0
    else:
        assert m["cost.ratio.macs"] == 1 and m["cost.ratio.nonzero_macs"] < 1
        assert not any("latency" in k for k in m)
    folder = Path(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").download_artifacts(
        run.info.run_id, "model", str(tmp_path)))
    test = synthetic(seed=0).test  # the tiny runs' dataset (conftest: dataset=synthetic, seed 0)
    out = read_in_fresh_python(folder, {"x": test.x, "y": test.y}, tmp_path)
    assert out["accuracy"] == pytest.approx(m["test_accuracy"], abs=0.5 / len(test))


def test_the_gpu_checks_skip_clearly_without_cuda_and_dry_run_on_the_cpu(capsys):
    from benchmarks import gpu

    if not torch.cuda.is_available():
        assert gpu.main([]) == 0
        assert capsys.readouterr().out.startswith("skipped: PyTorch sees no CUDA device")
    rows = gpu.measure(torch.device("cpu"), min_run_time=0.01)
    assert [r[0] for r in rows] == ["dense"] + [f"{v}, ratio {r}" for r in gpu.RATIOS for v in ("masked", "shrunk")]
    assert all(float(r[2]) > 0 for r in rows)
