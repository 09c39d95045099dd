"""scikit-learn's bundled 8×8 handwritten digits (1,797 real images, no download)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``x`` (N, 1, 8, 8) float32 in [0, 1] and ``y`` (N,) int64.

    >>> x, y = digits_arrays()
    >>> x.shape, x.dtype, float(x.max()), y.dtype
    ((1797, 1, 8, 8), dtype('float32'), 1.0, dtype('int64'))
    """
    bunch = load_digits()
    # Pixels are counts of set cells in a 4×4 block of the original 32×32 bitmap: 0..16.
    x = (bunch.images[:, None, :, :] / 16.0).astype(np.float32)
    return x, bunch.target.astype(np.int64)
