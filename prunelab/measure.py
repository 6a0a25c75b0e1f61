"""What pruning removed: per-layer and total parameter counts and sparsity figures."""

from __future__ import annotations

import pandas as pd
from torch import nn

from .pruning import Mask


def layer_table(model: nn.Module, mask: Mask | None = None) -> pd.DataFrame:
    """One row per parameter tensor: total and nonzero entries, sparsity, whether it was prunable,
    and (structured) the output channels kept."""
    prunable = set(mask.prunable) if mask else set()
    channels = {f"{n}.weight": c for n, c in (mask.channels.items() if mask else ())}
    rows = []
    for name, p in model.named_parameters():
        nonzero = int((p.detach() != 0).sum())
        row = {"parameter": name, "shape": "x".join(map(str, p.shape)), "total": p.numel(),
               "nonzero": nonzero, "sparsity": 1 - nonzero / p.numel(), "prunable": name in prunable}
        if name in channels:
            row["channels_kept"], row["channels_total"] = int(channels[name].sum()), channels[name].numel()
        rows.append(row)
    return pd.DataFrame(rows)


def sparsity_summary(table: pd.DataFrame, mask: Mask | None = None) -> dict[str, float]:
    """Totals for the run: counts over all parameters and over the prunable weights."""
    pr = table[table["prunable"]]
    summary = {
        "params.total": int(table["total"].sum()),
        "params.nonzero": int(table["nonzero"].sum()),
        "params.prunable": int(pr["total"].sum()),
        "params.prunable_nonzero": int(pr["nonzero"].sum()),
    }
    summary["sparsity.all"] = 1 - summary["params.nonzero"] / summary["params.total"]
    if summary["params.prunable"]:
        summary["sparsity.prunable"] = 1 - summary["params.prunable_nonzero"] / summary["params.prunable"]
    if mask is not None and mask.channel_sparsity is not None:
        summary["sparsity.channels"] = mask.channel_sparsity
    return summary
