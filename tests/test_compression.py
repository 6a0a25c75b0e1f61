"""Real compression: the physically shrunk network computes what the masked one does, the cost
ledger's figures add up, and the hand-over files run in a fresh Python without prunelab."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import randomised, runs
from mlflow.tracking import MlflowClient
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from prunelab import models
from prunelab.data import synthetic
from prunelab.deploy.compact import decode, encode, kmeans_codebook, linear_codebook
from prunelab.deploy.handover import compact_file, decode_sparse, handover, sparse_state
from prunelab.deploy.ledger import cost_ledger
from prunelab.deploy.onnx import deployed
from prunelab.names import Metric
from prunelab.pruning import prune, shrink, unshrink
from prunelab.pruning.macs import mac_counts


class DepthwiseResidualNet(nn.Module):
    """A user model (reachable as ``model._target_=test_compression.DepthwiseResidualNet``): an
    inverted-residual block (1x1 expand, depthwise 3x3, 1x1 project, added to its input), then a
    grouped convolution and a flatten -> linear head."""

    def __init__(self, in_shape=(1, 16, 16), num_classes: int = 10, groups: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=groups), nn.BatchNorm2d(32), nn.ReLU()
        )
        flat = 32 * math.ceil(in_shape[1] / 2) * math.ceil(in_shape[2] / 2)
        self.head = nn.Linear(flat, 24)
        self.classifier = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.project(self.depthwise(self.expand(x))))
        return self.classifier(torch.relu(self.head(self.grouped(x).flatten(1))))


MODELS = {
    "lenet300_100": models.lenet300_100,
    "lenet5": models.lenet5,
    "vgg_small": models.vgg_small,
    "resnet20": models.resnet20,
    "user_depthwise_residual": DepthwiseResidualNet,
}
SHAPE = (1, 16, 16)


def pruned_pair(name: str, scope: str = "global", ratio: float = 0.5):
    """(dense, masked, shrunk, mask, inputs) for a built-in or the user model."""
    torch.manual_seed(0)
    dense = randomised(MODELS[name](in_shape=SHAPE))
    x = torch.randn(8, *SHAPE)
    mask = prune(dense, "structured", scope, ratio, example_inputs=x[:1]).mask
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
    the kept weights (and BatchNorm statistics) the same, to rounding (in float64, so that the
    summation order of the two networks' kernels, which differs with their widths, does not
    grow through the steps into a difference of its own)."""
    _, masked, shrunk, mask, x = pruned_pair(name)
    masked, shrunk, x = masked.double(), shrunk.double(), x.double()
    sgd_steps(masked, x, after_step=mask.hold(masked))
    sgd_steps(shrunk, x)
    kept = shrink(masked, mask, x[:1]).state_dict()  # the masked network's kept entries, shrunk layout
    diffs = {
        k: (kept[k].double() - v.double()).abs().max().item()
        for k, v in shrunk.state_dict().items()
        if v.is_floating_point()
    }
    assert max(diffs.values()) <= 1e-10, {k: d for k, d in diffs.items() if d > 1e-10}


def test_grouped_convolution_loses_the_same_positions_in_every_group():
    _, masked, shrunk, mask, _ = pruned_pair("user_depthwise_residual", "local")
    blocks = mask.channels["project.0"].view(4, -1)  # the channels feeding the groups=4 conv
    assert bool((blocks == blocks[0]).all())
    assert 0 < int(blocks[0].sum()) < blocks.shape[1]
    out_blocks = mask.channels["grouped.0"].view(4, -1)
    assert bool((out_blocks == out_blocks[0]).all())
    conv = shrunk.grouped[0]
    assert conv.groups == 4
    assert conv.in_channels == int(mask.channels["project.0"].sum())
    dw = shrunk.depthwise[0]
    assert dw.groups == dw.in_channels == dw.out_channels < 32  # depthwise stays depthwise


def test_ledger_counts_the_shrunk_network_for_structured_pruning():
    dense, masked, shrunk, mask, x = pruned_pair("vgg_small", "local")
    ledger = cost_ledger(dense, masked, x[:1], shrunk, latency=False)
    assert ledger[Metric.cost(Metric.DENSE, Metric.PARAMS)] == n_params(dense)
    assert (
        ledger[Metric.cost(Metric.PRUNED, Metric.PARAMS)]
        == ledger[Metric.cost(Metric.PRUNED, Metric.NONZERO_PARAMS)]
        == n_params(shrunk)
    )
    # Half the channels of every conv: about a quarter of the MACs (the first conv keeps all inputs).
    assert 0.2 < ledger[Metric.cost_ratio(Metric.MACS)] < 0.3
    assert ledger[Metric.cost(Metric.PRUNED, Metric.MACS)] == mac_counts(shrunk, x[:1])[0]
    assert ledger[Metric.cost_ratio(Metric.FILE_BYTES)] < 0.35
    assert (
        ledger[Metric.cost_ratio(Metric.MACS)]
        == ledger[Metric.cost(Metric.PRUNED, Metric.MACS)] / ledger[Metric.cost(Metric.DENSE, Metric.MACS)]
    )
    assert not any("latency" in k for k in ledger)


def test_macs_are_the_textbook_count():
    # LeNet-5 on 1x16x16: conv 6x16x16 outputs x 25 taps, conv 16x8x8 x (6 x 25), fc 256-120-84-10.
    expected = 6 * 256 * 25 + 16 * 64 * 150 + 256 * 120 + 120 * 84 + 84 * 10
    assert mac_counts(models.lenet5(in_shape=SHAPE), torch.zeros(1, *SHAPE)) == (expected, expected)


class Devices(TorchFunctionMode):
    """The devices of the tensors that reach a linear or convolution while it is on."""

    def __init__(self):
        super().__init__()
        self.devices: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.linear, F.conv2d):
            self.devices.update(a.device.type for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


def _real(monkeypatch, model, x):
    """The counts a forward on the weights gives (the meta pass disabled)."""
    import prunelab.pruning.macs as macs

    with monkeypatch.context() as m:
        m.setattr(macs, "_on_meta", lambda *_: (_ for _ in ()).throw(RuntimeError("no meta")))
        return mac_counts(model, x), macs.layer_macs(model, x)


def _on_meta(model, x):
    """The counts, and the devices the weights' computations saw."""
    import prunelab.pruning.macs as macs

    with Devices() as seen:
        counted = mac_counts(model, x), macs.layer_macs(model, x)
    return counted, seen.devices


def test_macs_are_counted_from_the_shapes_without_computing_and_equal_a_real_forward(monkeypatch):
    torch.manual_seed(0)
    resnet = models.resnet(depth=18)
    prune(resnet, "unstructured", "local", 0.5).mask.apply(resnet)
    for model, x in ((models.lenet5(in_shape=SHAPE), torch.zeros(1, *SHAPE)), (resnet, torch.zeros(1, 3, 224, 224))):
        counted, devices = _on_meta(model, x)
        assert devices == {"meta"}, type(model).__name__  # the weights never enter a computation
        assert counted == _real(monkeypatch, model, x), type(model).__name__
    macs_, nonzero = mac_counts(resnet, torch.zeros(1, 3, 224, 224))
    assert macs_ == pytest.approx(1.82e9, rel=0.01)  # ResNet-18's published 1.8 GMACs
    assert nonzero < 0.6 * macs_  # half of every conv's weights are zero


TINY_HF = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64}


@pytest.mark.parametrize(
    "config",
    [
        None,  # prunelab's tiny_gpt
        {"model_type": "llama", "intermediate_size": 64, "num_key_value_heads": 2, **TINY_HF},
        {"model_type": "opt", "ffn_dim": 64, "word_embed_proj_dim": 32, **TINY_HF},
        {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
    ],
    ids=["tiny_gpt", "llama", "opt", "gpt2"],
)
def test_a_transformer_is_counted_on_the_meta_device_as_a_forward_on_its_device_counts_it(monkeypatch, config):
    """The MACs of a transformer follow from its shapes too, and stay what a forward on the CPU
    counts (which does not count the CPU's fused attention kernel)."""
    from prunelab.models import lm

    torch.manual_seed(0)
    if config is None:
        model = lm.tiny_gpt((32,), 64, d_model=32, layers=2, heads=4)
    else:
        model = lm.hf_causal_lm(64, config={"vocab_size": 64, **config}).eval()
    x = torch.randint(0, 64, (1, 32))
    counted, devices = _on_meta(model, x)
    assert devices == {"meta"}
    assert counted == _real(monkeypatch, model, x)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counted[0][0] == counter.get_total_flops() / 2


class Attention(nn.Module):
    """A projection, then attention over ``heads`` heads, or over one (3-D tensors, which the CPU's
    fused kernel does not take: the math kernel runs it)."""

    def __init__(self, heads: int | None):
        super().__init__()
        self.heads, self.proj = heads, nn.Linear(16, 16)

    def forward(self, x):
        q = self.proj(x)
        if self.heads:
            q = q.view(*q.shape[:2], self.heads, -1).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q, is_causal=True)


def test_attention_counts_what_the_kernel_chosen_on_the_device_counts(monkeypatch):
    x = torch.zeros(1, 8, 16)
    projection = 8 * 16 * 16
    for heads, attention in ((4, 0), (None, 2 * 8 * 8 * 16)):  # the CPU's fused kernel: not counted
        counted, devices = _on_meta(Attention(heads), x)
        assert devices == {"meta"}
        assert counted == _real(monkeypatch, Attention(heads), x)
        assert counted[0][0] == projection + attention


def test_a_forward_that_reads_values_is_counted_on_the_weights():
    class ReadsValues(nn.Module):  # a shape that depends on the data: no meta pass can run it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x[: int(x.sum().item()) or 1])

    model = ReadsValues()
    assert mac_counts(model, torch.ones(2, 4)) == (2 * 4 * 3, 2 * 4 * 3)


def test_ledger_nonzero_macs_follow_the_density_for_unstructured_pruning():
    torch.manual_seed(0)
    dense = models.lenet5(in_shape=SHAPE)
    mask = prune(dense, "unstructured", "local", 0.7).mask  # every layer keeps 30% of its weights
    pruned = mask.apply(copy.deepcopy(dense))
    compact = encode(pruned.state_dict(), {n: mask.masks[n] for n in mask.prunable})
    ledger = cost_ledger(dense, pruned, torch.zeros(1, *SHAPE), latency=False, file_bytes=len(compact))
    dense_macs, pruned_macs = (ledger[Metric.cost(form, Metric.MACS)] for form in (Metric.DENSE, Metric.PRUNED))
    assert pruned_macs == dense_macs  # same dense kernels
    assert ledger[Metric.cost_ratio(Metric.NONZERO_MACS)] == pytest.approx(0.3, abs=0.005)
    assert ledger[Metric.cost_ratio(Metric.NONZERO_PARAMS)] == pytest.approx(0.3, abs=0.01)  # biases kept
    # the compact file: 30% of the weights, a byte of position and ~5 bits of value each
    assert ledger[Metric.cost(Metric.PRUNED, Metric.FILE_BYTES)] == len(compact)
    assert 0.03 < ledger[Metric.cost_ratio(Metric.FILE_BYTES)] < 0.15


def test_latency_is_measured_at_batch_1_and_64():
    dense = models.lenet5()
    mask = prune(dense, "structured", "global", 0.5, example_inputs=torch.zeros(1, 1, 28, 28)).mask
    masked = mask.apply(copy.deepcopy(dense))
    # (how cheap this is, is a matter for benchmarks/, not for a timed test)
    ledger = cost_ledger(dense, masked, torch.zeros(1, 1, 28, 28), shrink(masked, mask, torch.zeros(1, 1, 28, 28)))
    for form in (Metric.DENSE, Metric.PRUNED):
        for batch in (1, 64):
            assert ledger[Metric.cost(form, Metric.latency_ms(batch))] > 0
    assert (
        ledger[Metric.cost_ratio(Metric.latency(64))]
        == ledger[Metric.cost(Metric.PRUNED, Metric.latency_ms(64))]
        / ledger[Metric.cost(Metric.DENSE, Metric.latency_ms(64))]
    )
    assert ledger[Metric.LATENCY_THREADS] == 1


def test_sparse_file_decodes_to_the_masked_weights_and_masks(tmp_path):
    torch.manual_seed(0)
    model = models.lenet5(in_shape=SHAPE)
    mask = prune(model, "unstructured", "global", 0.8).mask
    mask.apply(model)
    torch.save(sparse_state(model, mask), tmp_path / "sparse_weights.pt")
    state, masks = decode_sparse(torch.load(tmp_path / "sparse_weights.pt", weights_only=True))
    assert set(masks) == set(mask.prunable)
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name
    for name in mask.prunable:
        assert torch.equal(masks[name], mask.masks[name]), name


READER = Path(__file__).resolve().parents[1] / "scripts" / "read_handover.py"


def read_in_fresh_python(folder: Path, data: dict, tmp_path: Path) -> dict:
    torch.save(data, tmp_path / "inputs.pt")
    result = subprocess.run(
        [sys.executable, str(READER), str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "outputs.pt", weights_only=True)


def listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_structured_handover_runs_in_a_fresh_python_without_prunelab(tmp_path):
    _, masked, shrunk, mask, x = pruned_pair("user_depthwise_residual")
    folder = handover(deployed(shrunk, 0.25, 2.0), x[:1], tmp_path, mask, structured=True).folder
    files = listing(folder)
    assert {
        "model/program.pt2",
        "model/model.onnx",
        "model/state_dict.pt",
        "model/architecture.txt",
        "model/README.md",
    } <= set(files)
    raw = x * 2.0 + 0.25  # the files standardise raw inputs themselves: (raw - 0.25) / 2
    out = read_in_fresh_python(folder / "model", {"x": raw}, tmp_path)
    with torch.no_grad():
        assert (out["logits"] - masked(x)).abs().max() <= 1e-4
        assert (out["one"] - masked(x[:1])).abs().max() <= 1e-4  # the batch size is not fixed
    state = torch.load(tmp_path / "model" / "state_dict.pt", weights_only=True)
    assert sum(v.numel() for k, v in state.items() if k in dict(shrunk.named_parameters())) == n_params(shrunk)


def test_unstructured_handover_holds_program_and_compressed_weights(tmp_path):
    torch.manual_seed(0)
    model = models.lenet5(in_shape=SHAPE)
    mask = prune(model, "unstructured", "global", 0.8).mask
    mask.apply(model)
    x = torch.randn(5, *SHAPE)
    shipped = deployed(model, 0.0, 1.0)
    folder = handover(shipped, x[:1], tmp_path, mask, compact=compact_file(shipped, mask, kmeans_codebook)).folder
    files = listing(folder)
    assert {
        "model/program.pt2",
        "model/model.onnx",
        "model/sparse_weights.pt",
        "model/weights.compact",
        "model/README.md",
    } <= set(files)
    out = read_in_fresh_python(folder / "model", {"x": x}, tmp_path)
    with torch.no_grad():
        assert (out["logits"] - model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "args",
    [
        (
            "method=structured",
            "model._target_=test_compression.DepthwiseResidualNet",
            "measure_latency=true",
            "quantize=int8",
            "handover=true",
        ),
        ("method=unstructured", "measure_latency=false", "handover=true"),
    ],
)
def test_a_run_logs_the_ledger_and_hand_over_files_that_reproduce_its_test_accuracy(cli, workdir, tmp_path, args):
    result = cli(*args, "ratio=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(workdir, "pruned")
    m = run.data.metrics
    assert m[Metric.cost(Metric.PRUNED, Metric.MACS)] > 0
    assert m[Metric.cost(Metric.DENSE, Metric.FILE_BYTES)] > m[Metric.cost(Metric.PRUNED, Metric.FILE_BYTES)]
    if "method=structured" in args:
        assert m[Metric.cost_ratio(Metric.MACS)] < 0.6
        assert m[Metric.cost_ratio(Metric.PARAMS)] < 0.6
        assert m[Metric.cost(Metric.DENSE, Metric.latency_ms(1))] > 0
        assert m[Metric.cost(Metric.PRUNED, Metric.latency_ms(64))] > 0
        for form in (Metric.ONNX, Metric.INT8):  # ONNX Runtime fp32 and int8, against the dense PyTorch model
            latency = m[Metric.cost(form, Metric.latency_ms(64))]
            assert latency > 0
            assert m[Metric.cost(form, Metric.FILE_BYTES)] > 0
            assert (
                m[Metric.cost_ratio(Metric.latency(64), form)]
                == latency / m[Metric.cost(Metric.DENSE, Metric.latency_ms(64))]
            )
        int8, onnx = (m[Metric.cost(form, Metric.FILE_BYTES)] for form in (Metric.INT8, Metric.ONNX))
        assert int8 < 0.8 * onnx  # int8 weights (+ QDQ scales)
    else:
        assert m[Metric.cost_ratio(Metric.MACS)] == 1
        assert m[Metric.cost_ratio(Metric.NONZERO_MACS)] < 1
        assert not any("latency" in k for k in m)
        assert not any(Metric.INT8 in k.split(".") for k in m)  # quantize=none
    folder = Path(
        MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").download_artifacts(run.info.run_id, "model", str(tmp_path))
    )
    data = synthetic(seed=0)  # the tiny runs' dataset (conftest: dataset=synthetic, seed 0)
    out = read_in_fresh_python(folder, {"x": data.test_raw, "y": data.test.y}, tmp_path)
    # Raw inputs in, the logged accuracies out, exactly.
    assert out["accuracy"] == m[Metric.TEST_ACCURACY]
    assert out["model.onnx"] == m[Metric.HANDOVER_ONNX_ACCURACY] == m[Metric.TEST_ACCURACY]
    if "quantize=int8" in args:
        assert out["model.int8.onnx"] == m[Metric.INT8_ACCURACY]
        assert abs(m[Metric.INT8_ACCURACY] - m[Metric.TEST_ACCURACY]) <= 0.05
    else:
        assert out["weights.compact"] == m[Metric.COMPACT_ACCURACY]
        assert m[Metric.cost(Metric.PRUNED, Metric.FILE_BYTES)] == (folder / "weights.compact").stat().st_size


def test_the_gpu_checks_skip_clearly_without_cuda_and_dry_run_on_the_cpu(capsys):
    from benchmarks import gpu

    if not torch.cuda.is_available():
        assert gpu.main([]) == 0
        assert capsys.readouterr().out.startswith("skipped: PyTorch sees no CUDA device")
    rows = gpu.measure(torch.device("cpu"), min_run_time=0.01)
    assert [r[0] for r in rows] == ["dense"] + [f"{v}, ratio {r}" for r in gpu.RATIOS for v in ("masked", "shrunk")]
    assert all(float(r[2]) > 0 for r in rows)


@pytest.mark.parametrize("name", ["vgg_small", "resnet20", "user_depthwise_residual"])
def test_unshrink_writes_the_shrunk_weights_back_into_the_full_layout(name):
    _, masked, shrunk, mask, x = pruned_pair(name)
    with torch.no_grad():  # give every kept entry a new value, as fine-tuning would
        for p in shrunk.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p))
    full = unshrink(shrunk, mask, copy.deepcopy(masked)).eval()
    with torch.no_grad():
        assert (full(x) - shrunk.eval()(x)).abs().max() <= 1e-4
    for n, p in full.named_parameters():
        assert not bool(p[~mask.masks[n]].any()), n  # pruned entries stay zero


def test_the_runner_fine_tunes_the_shrunk_network_to_the_masked_result(make_cfg):
    """finetune.shrink=true trains the smaller network; written back, it is what masked fine-tuning
    gives (one epoch of synthetic data, SGD with momentum and weight decay)."""
    from prunelab.experiment.session import RunSession
    from prunelab.experiment.settings import Settings
    from prunelab.pruning import Pruner
    from prunelab.tracking import store

    results = {}
    for shrink_it in (True, False):
        cfg = make_cfg(
            "method=structured",
            "model=vgg_small",
            "model.width=4",
            "finetune.epochs=1",
            f"finetune.shrink={str(shrink_it).lower()}",
        )
        s = Settings.from_config(cfg)
        data = synthetic(in_shape=SHAPE, seed=0)
        torch.manual_seed(0)
        model = models.vgg_small(in_shape=SHAPE, width=4)
        mask = prune(model, "structured", "global", 0.5, example_inputs=data.train.x[:1]).mask
        mask.apply(model)
        experiment = store.connect(cfg.tracking.uri, "fine-tune")
        with store.run(experiment, "fine-tune", {}) as active:  # fine-tuning logs its epochs into it
            session = RunSession(
                active, s, model, Pruner(s.method, s.criterion, s.scope), data, model.state_dict(), s.cache
            )
            shrunk = session.fine_tune(mask, s.finetune.epochs)
        assert n_params(shrunk) < 0.6 * n_params(model)
        results[shrink_it] = model.eval()
    # Pruned channels' BatchNorm statistics differ (only the masked network updates them); they
    # multiply zeros, so the parameters and the function are what must agree.
    params = dict(results[True].named_parameters())
    assert max((params[n] - p).abs().max().item() for n, p in results[False].named_parameters()) <= 1e-4
    x = synthetic(in_shape=SHAPE, seed=0).test.x
    with torch.no_grad():
        assert (results[True](x) - results[False](x)).abs().max() <= 1e-3


def test_compact_file_round_trip_codebook_and_relative_indices():
    torch.manual_seed(0)
    weight = torch.randn(40, 300)
    keep = torch.rand(40, 300) < 0.1
    keep[5, :] = False
    keep[6, :] = False  # a gap of over 600 entries: needs filler entries
    weight = weight * keep
    state = {"fc.weight": weight, "fc.bias": torch.randn(40), "steps": torch.tensor(7)}
    decoded = decode(encode(state, {"fc.weight": keep}, lambda v: kmeans_codebook(v, bits=4)))
    assert torch.equal(decoded["fc.bias"], state["fc.bias"])
    assert int(decoded["steps"]) == 7
    got = decoded["fc.weight"]
    assert torch.equal(got != 0, keep)  # positions exact, fillers decoded as zeros
    assert len(torch.unique(got[keep])) <= 15  # 2^4 - 1 shared values
    assert (got - weight).abs().max() < 0.5
    assert (got - weight)[keep].abs().mean() < 0.1


def test_kmeans_codebook_finds_the_clusters_and_linear_is_evenly_spaced():
    import numpy as np

    values = np.concatenate([np.full(50, -1.0), np.full(30, 0.5), np.full(20, 2.0)]).astype(np.float32)
    centroids = kmeans_codebook(values, bits=2)  # three shared values
    assert np.allclose(np.sort(centroids), [-1.0, 0.5, 2.0])
    levels = linear_codebook(np.array([-1.0, 3.0], np.float32), bits=3)
    assert np.allclose(levels, np.linspace(-1, 3, 7))
