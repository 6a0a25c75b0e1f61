"""Models: vision networks (``vision.py``), language models (``lm.py``), and :func:`build`, which
makes any of them (or a user's ``nn.Module`` factory, by ``model._target_``) for a dataset."""

from .build import ModelError, build
from .lm import CausalLM, TinyGPT, hf_causal_lm, tiny_gpt
from .vision import (
    ResNet,
    lenet5,
    lenet5_caffe,
    lenet5_classic,
    lenet300_100,
    resnet,
    resnet20,
    resnet_cifar,
    vgg_cifar,
    vgg_small,
)

__all__ = [
    "CausalLM",
    "ModelError",
    "ResNet",
    "TinyGPT",
    "build",
    "hf_causal_lm",
    "lenet5",
    "lenet5_caffe",
    "lenet5_classic",
    "lenet300_100",
    "resnet",
    "resnet20",
    "resnet_cifar",
    "tiny_gpt",
    "vgg_cifar",
    "vgg_small",
]
