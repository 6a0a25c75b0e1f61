"""The CIFAR networks of the pruning papers: their published sizes, every depth built, and
structured pruning of each whose shrunk network computes what the masked one does."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomised
from hydra.utils import instantiate

from prunelab.config import compose
from prunelab.models import ModelError, build, resnet_cifar, vgg_cifar
from prunelab.pruning import prune
from prunelab.pruning.shrink import shrink


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# He et al. 2016, table 6 (option A shortcuts): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M at 10 classes. The
# projection shortcuts add two 1x1 convolutions + BatchNorm: 16*32 + 32*64 + 2*(32 + 64) = 2,752.
PAPER_RESNET = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
PROJECTIONS = 16 * 32 + 32 * 64 + 2 * (32 + 64)


@pytest.mark.parametrize("depth", sorted(PAPER_RESNET))
def test_resnet_cifar_has_the_papers_parameter_count_plus_its_projections(depth):
    model = resnet_cifar(depth=depth)
    assert n_params(model) == PAPER_RESNET[depth] + PROJECTIONS
    assert round(n_params(model) / 1e6, 2) == {20: 0.27, 32: 0.47, 44: 0.66, 56: 0.86, 110: 1.73}[depth]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 6n + 1 convolutions of 3x3, and the classifier


@pytest.mark.parametrize(("depth", "millions"), [(11, 9.23), (13, 9.41), (16, 14.72), (19, 20.04)])
def test_vgg_cifar_has_the_published_size(depth, millions):
    model = vgg_cifar(depth=depth)
    assert round(n_params(model) / 1e6, 2) == millions
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == depth - 3
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_depth_the_papers_do_not_have_is_refused_in_one_line():
    with pytest.raises(ModelError, match="model.depth=50 is not a CIFAR ResNet depth: expected one of 20, 32"):
        resnet_cifar(depth=50)
    with pytest.raises(ModelError, match="model.depth=12 is not a VGG depth"):
        vgg_cifar(depth=12)


@pytest.mark.parametrize(("factory", "depth"), [(resnet_cifar, 20), (resnet_cifar, 56), (vgg_cifar, 11)])
@pytest.mark.parametrize("scope", ["global", "local"])
def test_structured_pruning_shrinks_to_what_the_masked_network_computes(factory, depth, scope):
    torch.manual_seed(0)
    dense = randomised(factory(depth=depth))
    x = torch.randn(4, 3, 32, 32)
    mask = prune(dense, "structured", scope, 0.5, example_inputs=x[:1]).mask
    masked = mask.apply(copy.deepcopy(dense)).eval()
    shrunk = shrink(masked, mask, x[:1]).eval()
    with torch.no_grad():
        assert (masked(x) - shrunk(x)).abs().max() <= 1e-4
    assert n_params(shrunk) < 0.6 * n_params(dense)


def test_the_config_group_builds_each_with_its_depth():
    for model, depth, size in (("resnet_cifar", 110, 1_730_714), ("vgg_cifar", 19, 20_035_018)):
        net = build(instantiate(compose(f"model={model}", f"model.depth={depth}").model), (3, 32, 32), 100)
        assert net.classifier.out_features == 100
        features = net.classifier.in_features  # 90 more logits than at 10 classes, a weight per feature + bias
        assert n_params(net) == size + 90 * (features + 1)


def test_a_factory_taking_kwargs_gets_num_classes_only_as_torchvision_and_timm_take_it():
    seen = {}

    def torchvision_like(*, weights=None, progress=True, **kwargs):  # noqa: ARG001 (torchvision's signature)
        seen.update(kwargs)
        return torch.nn.Linear(3, kwargs.get("num_classes", 1000))

    build(torchvision_like, (3, 224, 224), 10)
    assert seen == {"num_classes": 10}
