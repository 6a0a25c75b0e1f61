"""What a layer's calibration inputs are summed into while a block's pass runs.

Post-training methods read a layer's inputs ``X`` (tokens x in_features) only through sums: the
Gram matrix ``XᵀX`` (SparseGPT all of it; Wanda and RIA only its diagonal, each input's sum of
squares, which is all that is summed for them: O(tokens · in) where the matrix is O(tokens · in²),
and in float64 values where it is in²: 0.9 GiB for LLaMA-7B's MLP) and, for DSnoT's refit, each input's
mean and variance as its reference code keeps them (``WrappedGPT.add_batch`` of zyxxmu/DSnoT
``lib/layerwrapper.py``): per window (a text sample; a 2-D input's whole batch is one window, as
the reference's ``add_batch`` takes it), the sum over its tokens and the variance over them
(``unbiased=False``), each averaged over the windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def diagonal_of(gram: torch.Tensor) -> torch.Tensor:
    """The diagonal of a Gram matrix given whole (in x in) or as its diagonal already (in)."""
    return gram if gram.dim() == 1 else gram.diagonal()


def gram_part(rows: torch.Tensor) -> torch.Tensor:
    """One batch's ``XᵀX``, to be summed in float64: the product in float32 (as the SparseGPT and
    Wanda code compute it: float64 products took half of SparseGPT's time at OPT-125m's size) unless
    the inputs are float64 already."""
    rows = rows if rows.dtype == torch.float64 else rows.float()
    return (rows.T @ rows).double()


@dataclass
class Seen:
    """One layer's inputs, summed batch by batch (:meth:`add`). ``moments``: also the per-window
    sums and variances DSnoT reads (:attr:`mean`, :attr:`var`); ``full``: the whole Gram matrix,
    else only its diagonal."""

    moments: bool = False
    full: bool = True
    gram: torch.Tensor | None = None  # XᵀX (full), or its diagonal: each input's sum of squares; float64
    rows: int = 0  # tokens seen
    windows: int = 0
    sums: torch.Tensor | None = None  # Σ over windows of each input's sum over the window's tokens
    variances: torch.Tensor | None = None  # Σ over windows of each input's variance within the window

    def add(self, x: torch.Tensor) -> Seen:
        """``x`` (windows x tokens x features, or a batch x features: one window) added; ``self``."""
        rows = x.detach().reshape(-1, x.shape[-1])
        part = gram_part(rows) if self.full else rows.double().square().sum(dim=0)
        self.gram = part if self.gram is None else self.gram + part
        self.rows += rows.shape[0]
        if self.moments:
            per_window = (x if x.dim() > 2 else x.unsqueeze(0)).detach().double()
            per_window = per_window.reshape(per_window.shape[0], -1, per_window.shape[-1])
            sums = per_window.sum(dim=1).sum(dim=0)
            variances = per_window.var(dim=1, unbiased=False).sum(dim=0)
            self.sums = sums if self.sums is None else self.sums + sums
            self.variances = variances if self.variances is None else self.variances + variances
            self.windows += per_window.shape[0]
        return self

    @property
    def mean(self) -> torch.Tensor:
        """Each input's sum over a window's tokens, averaged over the windows (the reference's
        ``sum_metric_row``: DSnoT's expected contribution of a weight is ``W_ij`` times it)."""
        assert self.sums is not None, "Seen(moments=True) keeps the sums"
        return self.sums / self.windows

    @property
    def var(self) -> torch.Tensor:
        """Each input's variance within a window, averaged over the windows (the reference's ``var``)."""
        assert self.variances is not None, "Seen(moments=True) keeps the variances"
        return self.variances / self.windows

    def to(self, device: torch.device | str) -> Seen:
        """The same sums on ``device``."""
        moved = lambda t: None if t is None else t.to(device)
        return Seen(
            self.moments, self.full, moved(self.gram), self.rows, self.windows, moved(self.sums), moved(self.variances)
        )


__all__ = ["Seen", "diagonal_of", "gram_part"]
