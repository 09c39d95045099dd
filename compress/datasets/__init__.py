"""Bundled real datasets (digits, MNIST-1D) and user data through a factory, split the same way.

>>> from compress import datasets
>>> ds = datasets.load("digits", seed=0)
>>> x, y = ds.train
>>> x.shape[1:], ds.num_classes
((1, 8, 8), 10)
"""

from __future__ import annotations

from compress.datasets.base import Dataset, Split
from compress.datasets.catalog import DATASETS, check_spec, load

__all__ = ["DATASETS", "Dataset", "Split", "check_spec", "load"]
