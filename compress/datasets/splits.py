"""Deterministic, stratified train / val / test splits and the calibration subset of train."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.model_selection import train_test_split

from compress.core.errors import DataError

from .base import Split


class SplitIndices(NamedTuple):
    """Row indices into the full arrays; ``calib`` indexes the full arrays too, not ``train``."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    calib: np.ndarray


def split_indices(y: np.ndarray, *, seed: int, val_fraction: float, test_fraction: float,
                  calib_samples: int, where: str = "dataset") -> SplitIndices:
    """Stratified, seeded split of ``range(len(y))`` into train, val and test, plus calib ⊂ train.

    >>> import numpy as np
    >>> idx = split_indices(np.repeat([0, 1], 50), seed=0, val_fraction=0.1, test_fraction=0.2,
    ...                     calib_samples=8)
    >>> [len(i) for i in idx]
    [70, 10, 20, 8]
    >>> bool(np.isin(idx.calib, idx.train).all())
    True
    """
    everything = np.arange(len(y))
    try:
        rest, test = train_test_split(everything, test_size=test_fraction, stratify=y, random_state=seed)
        # The second split sees only the rest, so scale val's share to keep it a fraction of the whole.
        train, val = train_test_split(rest, test_size=val_fraction / (1.0 - test_fraction),
                                      stratify=y[rest], random_state=seed)
    except ValueError as exc:  # sklearn says so when a class is too small to reach every split
        raise DataError(f"cannot make stratified splits of {len(y)} samples: {exc}", where=where,
                        fix="use more samples, or larger val_fraction / test_fraction so that every "
                            "split can hold at least one sample of each class") from exc
    return SplitIndices(train, val, test, calib_subset(train, calib_samples, seed=seed))


def calib_subset(train: np.ndarray, calib_samples: int, *, seed: int) -> np.ndarray:
    """A seeded choice of ``calib_samples`` entries of ``train`` (all of it if it is smaller).

    >>> calib_subset(np.arange(10, 20), 3, seed=0).tolist()
    [15, 16, 19]
    """
    # A generator of its own: drawing from numpy's global RNG would be a side effect on the caller.
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train), size=min(calib_samples, len(train)), replace=False)
    return train[np.sort(chosen)]


def make_splits(x: np.ndarray, y: np.ndarray, *, seed: int, val_fraction: float, test_fraction: float,
                calib_samples: int, where: str = "dataset") -> dict[str, Split]:
    """Split ``(x, y)`` into the four named `Split` s with `split_indices`.

    >>> import numpy as np
    >>> parts = make_splits(np.zeros((100, 1, 4), np.float32), np.repeat([0, 1], 50), seed=0,
    ...                     val_fraction=0.1, test_fraction=0.2, calib_samples=8)
    >>> {name: s.x.shape[0] for name, s in parts.items()}
    {'train': 70, 'val': 10, 'test': 20, 'calib': 8}
    """
    idx = split_indices(y, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                        calib_samples=calib_samples, where=where)
    return {name: Split(x[i], y[i]) for name, i in idx._asdict().items()}
