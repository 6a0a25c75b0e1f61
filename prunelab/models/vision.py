"""The built-in vision models: LeNets, a small VGG, and the CIFAR networks of the pruning papers'
tables (ResNet-20/32/44/56/110, VGG-11/13/16/19 with BatchNorm).

Each factory takes the input shape and class count from the dataset, so every model runs on every
dataset (LeNet-300-100 on 8x8 digits gets 64 inputs). The layer that produces the logits is always
called ``classifier``: structured pruning ignores it by default (removing its outputs would remove
classes).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .build import ModelError


def _flat_size(features: nn.Module, in_shape, model: str) -> int:
    """Features per sample after ``features``; a readable error if the input is too small for it."""
    try:
        with torch.no_grad():
            return features(torch.zeros(1, *in_shape)).flatten(1).shape[1]
    except RuntimeError as e:
        raise ModelError(
            f"model {model} cannot take {'x'.join(map(str, in_shape))} inputs ({str(e).splitlines()[0]})"
        ) from None


def lenet300_100(in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Module:
    """LeNet-300-100: the fully connected net of the classic pruning papers."""
    head = nn.Sequential(
        nn.Linear(math.prod(in_shape), 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, num_classes)
    )
    return _Classified(nn.Identity(), head)


class _Classified(nn.Module):
    """features -> flatten -> head, with the last head layer reachable as ``classifier``."""

    def __init__(self, features: nn.Module, head: nn.Sequential):
        super().__init__()
        self.features = features
        self.head = head[:-1]
        self.classifier = head[-1]

    def forward(self, x):
        return self.classifier(self.head(self.features(x).flatten(1)))


def lenet5(in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Module:
    """LeNet-5 with ReLU and max-pooling; both convolutions are padded so 8x8 inputs work too.

    Not the textbook network (that is :func:`lenet5_classic`): the padded second convolution keeps
    a 7x7 map, so the first fully connected layer has 784 inputs and holds 94k of the 108k weights
    (87%; 78% in the classic one). Kept for small inputs and for earlier results."""
    return _lenet5(in_shape, num_classes, conv2_padding=2)


def lenet5_classic(in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Module:
    """The textbook LeNet-5 (LeCun et al. 1998, with ReLU and max-pooling): 6 and 16 filters of
    5x5, 120 and 84 units, 61.7k parameters on 28x28 inputs. The first convolution pads by 2, so a
    28x28 image is seen as the 32x32 of the paper; the second is unpadded (5x5 map, 400 features)."""
    return _lenet5(in_shape, num_classes, conv2_padding=0)


def _lenet5(in_shape, num_classes: int, conv2_padding: int) -> nn.Module:
    c = in_shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=conv2_padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    flat = _flat_size(features, in_shape, "lenet5" if conv2_padding else "lenet5_classic")
    head = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))
    return _Classified(features, head)


def lenet5_caffe(in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Module:
    """Caffe's LeNet (``examples/mnist/lenet.prototxt``), the "LeNet-5" of Han et al. 2015: 20 and
    50 unpadded 5x5 filters, each followed by max-pooling and no activation, then 500 ReLU units:
    431k parameters on 28x28 inputs, 93% of them in the first fully connected layer. Train it at
    Caffe's learning rate (``train.lr=0.01 finetune.lr=0.01``): at the default 0.05 its training
    diverged for one seed in three (benchmarks/RESULTS.md, "Baseline recipes")."""
    c = in_shape[0]
    features = nn.Sequential(nn.Conv2d(c, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2))
    flat = _flat_size(features, in_shape, "lenet5_caffe")
    head = nn.Sequential(nn.Linear(flat, 500), nn.ReLU(), nn.Linear(500, num_classes))
    return _Classified(features, head)


def vgg_small(in_shape=(1, 28, 28), num_classes: int = 10, width: int = 32) -> nn.Module:
    """A small VGG: three stages of two 3x3 conv + BatchNorm + ReLU, widths w, 2w, 4w."""
    layers, c = [], in_shape[0]
    for stage, out in enumerate((width, 2 * width, 4 * width)):
        for _ in range(2):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        # Pool only while the map is large enough (8x8 digits keep a 2x2 map).
        if min(in_shape[1:]) // 2 ** (stage + 1) >= 2:
            layers.append(nn.MaxPool2d(2))
    layers.append(nn.AdaptiveAvgPool2d(1))
    features = nn.Sequential(*layers)
    head = nn.Sequential(nn.Linear(c, 4 * width), nn.ReLU(), nn.Linear(4 * width, num_classes))
    return _Classified(features, head)


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN projection where the shape changes (option B)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, in_shape=(3, 32, 32), num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, c = [], width
        for stage in range(3):
            out = width * 2**stage
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(c, out, 2 if stage > 0 and i == 0 else 1))
                c = out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.classifier(self.pool(self.layers(x)).flatten(1))


def resnet20(in_shape=(3, 32, 32), num_classes: int = 10, width: int = 16) -> nn.Module:
    """CIFAR-style ResNet-20 (3 stages x 3 basic blocks, widths w, 2w, 4w)."""
    return ResNet(3, in_shape, num_classes, width)


RESNET_CIFAR_DEPTHS = (20, 32, 44, 56, 110)


def resnet_cifar(in_shape=(3, 32, 32), num_classes: int = 10, depth: int = 56, width: int = 16) -> nn.Module:
    """The CIFAR ResNets of He et al. 2016 (section 4.2): ``depth = 6n + 2``, three stages of ``n``
    basic blocks at widths w, 2w, 4w. The shortcut where the shape changes is a 1x1 convolution +
    BatchNorm (option B) rather than the paper's zero-padded identity (option A): it gives the
    residual channels a layer of their own to prune with, and adds 2,752 parameters to the paper's
    count (ResNet-56: 853,018 -> 855,770; ResNet-110: 1,727,962 -> 1,730,714, at 10 classes)."""
    if depth not in RESNET_CIFAR_DEPTHS:
        depths = ", ".join(map(str, RESNET_CIFAR_DEPTHS))
        raise ModelError(f"model.depth={depth} is not a CIFAR ResNet depth: expected one of {depths}")
    return ResNet((depth - 2) // 6, in_shape, num_classes, width)


# Convolution widths of VGG's configurations A, B, D and E (Simonyan & Zisserman 2015); "M": 2x2 max-pool.
VGG_CIFAR_LAYERS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


def vgg_cifar(in_shape=(3, 32, 32), num_classes: int = 10, depth: int = 16) -> nn.Module:
    """VGG-11/13/16/19 with BatchNorm after every convolution, as the CIFAR pruning papers use it:
    the ImageNet network's convolutions, one linear classifier on the 512 features of the 1x1 map
    (VGG-16: 14.7M parameters at 10 classes). A pool is skipped where the map is already 1x1, so
    smaller inputs work too."""
    if depth not in VGG_CIFAR_LAYERS:
        raise ModelError(f"model.depth={depth} is not a VGG depth: expected one of 11, 13, 16, 19")
    layers: list[nn.Module] = []
    c, side = in_shape[0], min(in_shape[1:])
    for v in VGG_CIFAR_LAYERS[depth]:
        if v == "M":
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU()]
            c = int(v)
    layers.append(nn.AdaptiveAvgPool2d(1))
    return _Classified(nn.Sequential(*layers), nn.Sequential(nn.Linear(c, num_classes)))


# --- ImageNet ResNets, in torchvision's layout ------------------------------------------------


class _Basic(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34); torchvision's names: conv1, bn1, conv2, bn2, downsample."""

    widening = 1

    def __init__(self, c_in: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    """1x1, 3x3 (strided: "ResNet v1.5", as torchvision), 1x1 x4 (ResNet-50/101); torchvision's
    names: conv1..3, bn1..3, downsample."""

    widening = 4

    def __init__(self, c_in: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


# depth -> (block, blocks per stage): He et al. 2016, table 1
RESNET_DEPTHS: dict[int, tuple[type[_Basic] | type[_Bottleneck], tuple[int, int, int, int]]] = {
    18: (_Basic, (2, 2, 2, 2)),
    34: (_Basic, (3, 4, 6, 3)),
    50: (_Bottleneck, (3, 4, 6, 3)),
    101: (_Bottleneck, (3, 4, 23, 3)),
}


class ImageNetResNet(nn.Module):
    """The ImageNet ResNet: a 7x7/2 stem and 3x3/2 max-pool, four stages at widths 64..512 (x4 for
    bottlenecks), average pool, ``fc``. Module and parameter names are torchvision's, so one of
    its checkpoint files loads strictly through ``dense.checkpoint`` without torchvision; the logits
    layer is ``fc`` there (structured pruning: ``method.ignore=[fc]``)."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 1000):
        super().__init__()
        block, counts = RESNET_DEPTHS[depth]
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c, stages = 64, []
        for stage, count in enumerate(counts):
            planes, stride = 64 * 2**stage, 1 if stage == 0 else 2
            blocks = []
            for i in range(count):
                shape_changes = i == 0 and (stride != 1 or c != planes * block.widening)
                downsample = (
                    nn.Sequential(
                        nn.Conv2d(c, planes * block.widening, 1, stride, bias=False),
                        nn.BatchNorm2d(planes * block.widening),
                    )
                    if shape_changes
                    else None
                )
                blocks.append(block(c, planes, stride if i == 0 else 1, downsample))
                c = planes * block.widening
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages  # torchvision's names
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet(in_shape=(3, 224, 224), num_classes: int = 1000, depth: int = 50) -> nn.Module:
    """ResNet-18 / 34 / 50 / 101 for ImageNet-size inputs (He et al. 2016), torchvision's layout
    and names (:class:`ImageNetResNet`): 11.69M / 21.80M / 25.56M / 44.55M parameters at 1000
    classes."""
    if depth not in RESNET_DEPTHS:
        raise ModelError(f"model.depth={depth} is not an ImageNet ResNet depth: expected one of 18, 34, 50, 101")
    return ImageNetResNet(depth, in_shape[0], num_classes)
