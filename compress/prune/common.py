"""Small pieces the pruning techniques share: fraction checks and access to the training data."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from compress.core.context import Context
from compress.core.errors import EdgetierError

if TYPE_CHECKING:
    from compress.datasets import Dataset


def fraction(value: float, name: str) -> float:
    """`value` if it lies strictly between 0 and 1, else a `ValueError` that says what it means.

    >>> fraction(0.5, "ratio")
    0.5
    >>> fraction(1.0, "ratio")
    Traceback (most recent call last):
    ...
    ValueError: ratio must be strictly between 0 and 1 (0.2 = remove 20 %), got 1.0
    """
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1 (0.2 = remove 20 %), got {value}")
    return value


def require_data(ctx: Context, *, why: str, where: str) -> Dataset:
    """The context's dataset, or an error saying which technique needs it and why."""
    if ctx.data is None:
        raise EdgetierError(f"{why}, but no data was given", where=where,
                            fix="pass data=compress.datasets.load(...) to compress.apply (a recipe run always has data)")
    return ctx.data


def sample_batches(x: np.ndarray, y: np.ndarray, *, batches: int, batch_size: int,
                   seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`batches` random mini-batches (without replacement across them) from `(x, y)`, seeded.

    >>> x, y = np.zeros((10, 1, 4), np.float32), np.arange(10)
    >>> [tuple(b[0].shape) for b in sample_batches(x, y, batches=3, batch_size=4, seed=0)]
    [(4, 1, 4), (4, 1, 4), (2, 1, 4)]
    """
    order = np.random.default_rng(seed).permutation(len(y))[:batches * batch_size]
    return [(torch.from_numpy(x[order[i:i + batch_size]]), torch.from_numpy(y[order[i:i + batch_size]]))
            for i in range(0, len(order), batch_size)]
