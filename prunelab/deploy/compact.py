"""Compact files for unstructured pruning: Deep Compression (Han et al. 2016), stage 2 and 3.

A pruned weight's kept values are replaced by the nearest of a few shared values per layer (the
codebook: k-means over the layer's kept values, or evenly spaced levels), each stored as its
codebook index (one byte); where they are is stored as relative indices (the gap to the previous
kept entry, one byte; a gap over 256 inserts a filler entry of value zero, as in the paper). The
whole file is then entropy-coded with LZMA (Python's ``lzma``, which ends in a range coder): the
paper's Huffman stage, done by a maintained compressor. Biases and other small tensors stay float32.

The codebook is computed once after fine-tuning and not fine-tuned itself (the paper fine-tunes
the shared values; here the network is fine-tuned before quantization, with the mask held).

:func:`decode` needs only ``json``, ``lzma``, NumPy and PyTorch: the run's ``model/README.md``
ships its source, and the tests run it in a process where prunelab cannot be imported.
"""

from __future__ import annotations

import inspect
import json
import lzma
import math
from typing import Any

import numpy as np
import torch

FORMAT = "prunelab-compact-v1"
_GAP = 256  # one byte holds gaps 1..256


def kmeans_codebook(values: np.ndarray, bits: int = 5, iterations: int = 50) -> np.ndarray:
    """``2**bits - 1`` shared values for ``values`` (1-D): Lloyd's k-means from a linear
    initialisation over [min, max] (the initialisation Han et al. found best: it keeps the rare
    large weights, which matter most). One level is left for the filler zero."""
    levels = min(2**bits - 1, 255)
    values = np.sort(values.astype(np.float64))
    if values.size == 0:
        return np.zeros(0, np.float32)
    centroids = np.linspace(values[0], values[-1], levels)
    prefix = np.concatenate([[0.0], np.cumsum(values)])
    for _ in range(iterations):
        # Sorted values: each cluster is a contiguous run between midpoints.
        edges = np.searchsorted(values, (centroids[1:] + centroids[:-1]) / 2)
        starts, ends = np.concatenate([[0], edges]), np.concatenate([edges, [values.size]])
        counts = ends - starts
        updated = np.where(counts > 0, (prefix[ends] - prefix[starts]) / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = updated
    return centroids.astype(np.float32)


def linear_codebook(values: np.ndarray, bits: int = 8) -> np.ndarray:
    """``2**bits - 1`` evenly spaced levels over [min, max] of ``values``: 8-bit linear quantization."""
    levels = min(2**bits - 1, 255)
    if values.size == 0:
        return np.zeros(0, np.float32)
    return np.linspace(values.min(), values.max(), levels).astype(np.float32)


def _nearest(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook entry of each value (``codebook`` sorted ascending)."""
    return np.searchsorted((codebook[1:] + codebook[:-1]) / 2, values).astype(np.uint8)


def _relative(positions: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gap - 1, code + 1) per stored entry, with (255, 0) fillers for gaps over 256."""
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // _GAP
    total = len(gaps) + int(fillers.sum())
    # Entry i lands after the fillers of entries 0..i.
    where = np.arange(len(gaps)) + np.cumsum(fillers)
    stored_gaps = np.full(total, _GAP - 1, dtype=np.uint8)
    stored_codes = np.zeros(total, dtype=np.uint8)
    stored_gaps[where] = gaps - fillers * _GAP - 1
    stored_codes[where] = codes + 1
    return stored_gaps, stored_codes


def encode(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], codebook=kmeans_codebook) -> bytes:
    """The compact file of ``state`` (a state dict) whose tensors named in ``masks`` are pruned:
    those are stored as codebook indices + relative positions, everything else as it is."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    header = {"format": FORMAT, "tensors": tensors}
    for name, tensor in state.items():
        array = tensor.detach().cpu().numpy()
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "dtype": str(array.dtype)}
        if name in masks and array.dtype == np.float32:
            keep = masks[name].cpu().numpy().reshape(-1)
            positions = np.flatnonzero(keep)
            kept = array.reshape(-1)[positions]
            levels = np.sort(np.asarray(codebook(kept), dtype=np.float32))
            gaps, codes = _relative(positions, _nearest(kept, levels) if len(levels) else np.zeros(0, np.uint8))
            table = np.concatenate([[0.0], levels]).astype(np.float32)  # code 0: the filler zero
            entry.update(kind="sparse", entries=len(gaps), levels=len(table))
            chunks += [table.tobytes(), gaps.tobytes(), codes.tobytes()]
        else:
            entry["kind"] = "dense"
            chunks.append(np.ascontiguousarray(array).tobytes())
        tensors.append(entry)
    head = json.dumps(header).encode()
    payload = len(head).to_bytes(4, "little") + head + b"".join(chunks)
    return lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME)


def decode(blob: bytes) -> dict:
    """The state dict stored in a prunelab compact file (pruned weights as their shared values)."""
    data = lzma.decompress(blob)
    size = int.from_bytes(data[:4], "little")
    header, offset = json.loads(data[4 : 4 + size]), 4 + size
    state = {}
    for t in header["tensors"]:
        count = math.prod(t["shape"])
        if t["kind"] == "dense":
            array = np.frombuffer(data, np.dtype(t["dtype"]), count, offset).copy()
            offset += array.nbytes
        else:
            table = np.frombuffer(data, np.float32, t["levels"], offset)
            offset += table.nbytes
            gaps = np.frombuffer(data, np.uint8, t["entries"], offset)
            codes = np.frombuffer(data, np.uint8, t["entries"], offset + t["entries"])
            offset += 2 * t["entries"]
            array = np.zeros(count, np.float32)
            array[np.cumsum(gaps.astype(np.int64) + 1) - 1] = table[codes]
        state[t["name"]] = torch.from_numpy(array.reshape(t["shape"]))
    return state


def decoder_source() -> str:
    """The decoder as a self-contained snippet (imports included), for the hand-over README."""
    return "import json, lzma, math\nimport numpy as np, torch\n\n\n" + inspect.getsource(decode)
