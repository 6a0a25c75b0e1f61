"""What a run prints when it ends: its figures in a few lines, and where its MLflow page is."""

from __future__ import annotations

import logging
from typing import Any

from ..names import Metric
from ..redact import redact
from ..tracking.ui import run_link

log = logging.getLogger(__name__)


def handover_line(m: dict[str, Any]) -> str:
    """The hand-over files' own test accuracies in ``m``, as one line ("" if there are none)."""
    files = [
        f"{name} {m[key]:.4f}"
        for name, key in (
            ("model.onnx", Metric.HANDOVER_ONNX_ACCURACY),
            ("model.int8.onnx", Metric.INT8_ACCURACY),
            ("weights.compact", Metric.COMPACT_ACCURACY),
        )
        if key in m
    ]
    return "hand-over files (raw inputs), test accuracy: " + " | ".join(files) if files else ""


def _handover_lines(m: dict[str, Any]) -> list[str]:
    lines = []
    if handover_line(m):
        lines.append(f"  {handover_line(m)}")
    latency = Metric.latency(64)
    if Metric.cost_ratio(latency, Metric.INT8) in m:
        lines.append(
            f"  ONNX Runtime / dense PyTorch fp32: latency batch 64 fp32 "
            f"{m[Metric.cost_ratio(latency, Metric.ONNX)]:.3f}, int8 {m[Metric.cost_ratio(latency, Metric.INT8)]:.3f}"
            f" | int8 file {m[Metric.cost_ratio(Metric.FILE_BYTES, Metric.INT8)]:.3f}"
        )
    return lines


def _stages_line(m: dict[str, Any], label: str, figure: str, spec: str) -> str:
    """``figure`` at each stage; the fine-tuned one where fine-tuning changed the model (a
    post-training run's result is the pruned model)."""
    dense, pruned, tuned = (m[Metric.at(stage, figure)] for stage in Metric.STAGES)
    line = f"  {label}: dense {dense:{spec}} | pruned {pruned:{spec}}"
    return line + (f" | fine-tuned {tuned:{spec}}" if tuned != pruned else "")


def report(
    chosen: dict[str, str],
    ratio: float,
    budget_macs: float | None,
    m: dict[str, Any],
    dense_origin: str,
    uri: str,
    ui: str | None,
    experiment_id: str,
) -> None:
    """Log the run's summary: accuracy (and perplexity) per stage, sparsity, parameters, costs,
    hand-over checks, and the run's MLflow page."""
    lines = [
        f"{chosen['method']} / {chosen['scope']} / {chosen['criterion']}, ratio "
        f"{m.get(Metric.BUDGET_RATIO, ratio):.4g}"
        + (f" (budget.macs={budget_macs:g})" if budget_macs else "")
        + f" (dense model {dense_origin})",
        # a language model's result is its perplexity (its token accuracy says little)
        _stages_line(m, "test perplexity", Metric.TEST_PERPLEXITY, ".3f")
        if Metric.TEST_PERPLEXITY in m
        else _stages_line(m, "test accuracy", Metric.TEST_ACCURACY, ".4f"),
        f"  sparsity: prunable weights {m[Metric.SPARSITY_PRUNABLE]:.4f} | all parameters {m[Metric.SPARSITY_ALL]:.4f}"
        + (f" | channels {m[Metric.SPARSITY_CHANNELS]:.4f}" if Metric.SPARSITY_CHANNELS in m else ""),
        f"  parameters: {m[Metric.PARAMS_NONZERO]:,} nonzero of {m[Metric.PARAMS_TOTAL]:,}",
        f"  cost, pruned / dense: MACs {m[Metric.cost_ratio(Metric.MACS)]:.3f} | nonzero MACs "
        f"{m[Metric.cost_ratio(Metric.NONZERO_MACS)]:.3f}"
        + (
            f" | CPU latency batch 1 {m[Metric.cost_ratio(Metric.latency(1))]:.3f}, batch 64 "
            f"{m[Metric.cost_ratio(Metric.latency(64))]:.3f}"
            if Metric.cost_ratio(Metric.latency(64)) in m
            else ""
        ),
        *_handover_lines(m),
        f"  MLflow run {m['run_id']} in {redact(uri)}",
        f"  MLflow UI: {run_link(uri, ui, experiment_id, m['run_id'])}",
    ]
    log.info("\n".join(lines))
