"""Datasets as in-memory :class:`Splits`: images (``images.py``) and text as tokens (``text.py``).

A dataset is a ``dataset._target_`` plug-in (``conf/dataset/``): a function called with its
options and the run's ``seed`` that returns :class:`Splits`.
"""

from .cifar import cifar10, cifar100
from .files import DataError, cache_dir, file_sha256
from .folder import FolderSplit, imagefolder
from .images import digits, fashion_mnist, synthetic
from .splits import Split, Splits, make_splits
from .text import c4, fortunes, ptb, text_files, wikitext2

__all__ = [
    "DataError",
    "FolderSplit",
    "Split",
    "Splits",
    "c4",
    "cache_dir",
    "cifar10",
    "cifar100",
    "digits",
    "fashion_mnist",
    "file_sha256",
    "fortunes",
    "imagefolder",
    "make_splits",
    "ptb",
    "synthetic",
    "text_files",
    "wikitext2",
]
