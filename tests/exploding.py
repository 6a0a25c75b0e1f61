"""User models reached through model._target_: one that fails during fine-tuning, and two that
prunelab cannot prune (for the bad-input tests)."""

import os

import torch
from torch import nn


class Exploding(nn.Module):
    """Trains normally for the dense phase, then raises once pruning has started."""

    def __init__(self, in_shape, num_classes, explode_after: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), 16), nn.ReLU())
        self.classifier = nn.Linear(16, num_classes)
        self.explode_after, self.pruned_forwards = explode_after, 0

    def forward(self, x):
        if self.training and bool((self.net[1].weight == 0).any()):
            self.pruned_forwards += 1
            if self.pruned_forwards > self.explode_after:
                raise RuntimeError("boom: a bug in a user model")
        return self.classifier(self.net(x))


class RawWeights(nn.Module):
    """Logistic regression on a bare nn.Parameter: nothing prunelab can prune (no Linear/Conv)."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, int(torch.tensor(in_shape).prod())))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def logistic_regression(in_shape, num_classes) -> nn.Module:
    """One Linear layer, the classifier: structured pruning has nothing it may remove."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), num_classes))


class StaysHome(nn.Module):
    """A small net that cannot be rebuilt in another process (its hand-over, deferred to a worker
    process, fails there); copies in its own process are fine."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.home = os.getpid()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), 16), nn.ReLU())
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(self.net(x))

    def __setstate__(self, state):
        if state.get("home") != os.getpid():
            raise RuntimeError("StaysHome cannot be rebuilt in another process")
        super().__setstate__(state)
