"""prunelab's benchmarks, side by side with plain PyTorch, torch.nn.utils.prune and the seed code.

``make bench`` (= ``python -m benchmarks``) runs them all and rewrites benchmarks/RESULTS.md; see
``benchmarks/__main__.py`` for the options and ``benchmarks/common.py`` for how timing and memory
are measured.
"""
