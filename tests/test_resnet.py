"""``model=resnet``: the ImageNet ResNets at their published sizes, with torchvision's names, so a
torchvision checkpoint file loads strictly without torchvision."""

from __future__ import annotations

import pytest
import torch

from prunelab.models import ModelError, resnet
from prunelab.models.checkpoint import load_checkpoint
from prunelab.pruning import PruningError, prune, shrink

# torchvision's model table (parameters at 1000 classes)
PUBLISHED = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


def torchvision_state(depth: int) -> dict[str, torch.Size]:
    """The parameter and buffer names and shapes of torchvision's ``resnet{depth}``, written from
    its layout (stem conv1/bn1, layer1..4 of BasicBlock or Bottleneck with a downsample.0/.1
    projection where the shape changes, fc), not from prunelab's model."""
    bottleneck = depth >= 50
    counts = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    shapes: dict[str, torch.Size] = {}

    def bn(name, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{leaf}"] = torch.Size([c])
        shapes[f"{name}.num_batches_tracked"] = torch.Size([])

    shapes["conv1.weight"] = torch.Size([64, 3, 7, 7])
    bn("bn1", 64)
    c = 64
    for stage, count in enumerate(counts):
        planes = 64 * 2**stage
        out = planes * (4 if bottleneck else 1)
        for i in range(count):
            p = f"layer{stage + 1}.{i}"
            convs = (
                [(c, planes, 1), (planes, planes, 3), (planes, out, 1)]
                if bottleneck
                else [(c, planes, 3), (planes, planes, 3)]
            )
            for j, (cin, cout, k) in enumerate(convs, start=1):
                shapes[f"{p}.conv{j}.weight"] = torch.Size([cout, cin, k, k])
                bn(f"{p}.bn{j}", cout)
            if i == 0 and (stage > 0 or c != out):
                shapes[f"{p}.downsample.0.weight"] = torch.Size([out, c, 1, 1])
                bn(f"{p}.downsample.1", out)
            c = out
    shapes["fc.weight"], shapes["fc.bias"] = torch.Size([1000, c]), torch.Size([1000])
    return shapes


@pytest.mark.parametrize("depth", sorted(PUBLISHED))
def test_each_depth_has_its_published_parameter_count(depth):
    assert sum(p.numel() for p in resnet(depth=depth).parameters()) == PUBLISHED[depth]


@pytest.mark.parametrize("depth", [18, 50])
def test_a_state_dict_with_torchvisions_names_loads_strictly(depth, tmp_path):
    torch.manual_seed(0)
    state = {name: torch.randn(shape) if shape else torch.tensor(7) for name, shape in torchvision_state(depth).items()}
    torch.save(state, tmp_path / f"resnet{depth}.pth")
    model = load_checkpoint(resnet(depth=depth), tmp_path / f"resnet{depth}.pth", strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_an_unknown_depth_is_one_line():
    with pytest.raises(
        ModelError, match="model.depth=20 is not an ImageNet ResNet depth: expected one of 18, 34, 50, 101"
    ):
        resnet(depth=20)


def test_structured_pruning_keeps_the_classes_when_fc_is_ignored():
    torch.manual_seed(0)
    model, x = resnet(depth=18, num_classes=10).eval(), torch.randn(2, 3, 64, 64)
    with pytest.raises(PruningError, match="would remove output classes of 'fc'"):
        prune(model, "structured", "global", 0.3, example_inputs=x[:1])
    mask = prune(model, "structured", "global", 0.3, example_inputs=x[:1], ignore=["fc"]).mask
    masked = mask.apply(model)
    small = shrink(masked, mask, x[:1])
    assert sum(p.numel() for p in small.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-4)
