"""Deployment: the pruned network as files anyone can run (``handover.py``: ``torch.export``,
ONNX, int8 in ``onnx.py``; the compact file of unstructured pruning in ``compact.py``) and what it
costs next to the dense one (``ledger.py``). The quantizer and codebook plug-ins
(``conf/quantize/``, ``conf/codebook/``) are named here."""

from .compact import kmeans_codebook, linear_codebook
from .onnx import int8

__all__ = ["int8", "kmeans_codebook", "linear_codebook"]
