"""What pruning removed: per-layer and total parameter counts and sparsity figures."""

from __future__ import annotations

import pandas as pd
from torch import nn

from ..names import Metric
from ..pruning.mask import Mask


def layer_table(model: nn.Module, mask: Mask | None = None) -> pd.DataFrame:
    """One row per parameter tensor: total and nonzero entries, sparsity, whether it was prunable,
    and (structured) the output channels kept."""
    prunable = set(mask.prunable) if mask else set()
    channels = {f"{n}.weight": c for n, c in (mask.channels.items() if mask else ())}
    rows = []
    for name, p in model.named_parameters():
        nonzero = int((p.detach() != 0).sum())
        row = {
            "parameter": name,
            "shape": "x".join(map(str, p.shape)),
            "total": p.numel(),
            "nonzero": nonzero,
            "sparsity": 1 - nonzero / p.numel(),
            "prunable": name in prunable,
        }
        if name in channels:
            row["channels_kept"], row["channels_total"] = int(channels[name].sum()), channels[name].numel()
        rows.append(row)
    return pd.DataFrame(rows)


def sparsity_summary(table: pd.DataFrame, mask: Mask | None = None) -> dict[str, float]:
    """Totals for the run: counts over all parameters and over the prunable weights."""
    pr = table[table["prunable"]]
    total, nonzero = int(table["total"].sum()), int(table["nonzero"].sum())
    prunable, prunable_nonzero = int(pr["total"].sum()), int(pr["nonzero"].sum())
    summary: dict[str, float] = {
        Metric.PARAMS_TOTAL: total,
        Metric.PARAMS_NONZERO: nonzero,
        Metric.PARAMS_PRUNABLE: prunable,
        Metric.PARAMS_PRUNABLE_NONZERO: prunable_nonzero,
        Metric.SPARSITY_ALL: 1 - nonzero / total,
    }
    if prunable:
        summary[Metric.SPARSITY_PRUNABLE] = 1 - prunable_nonzero / prunable
    if mask is not None and mask.channel_sparsity is not None:
        summary[Metric.SPARSITY_CHANNELS] = mask.channel_sparsity
    return summary
