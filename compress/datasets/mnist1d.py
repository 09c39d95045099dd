"""MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package — never downloaded."""

from __future__ import annotations

import random

import numpy as np
from mnist1d.data import get_dataset_args, make_dataset

LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))
SEQUENCE_LENGTH = 40


def mnist1d_arrays(samples: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` signals as ``x`` (N, 1, 40) float32 and ``y`` (N,) int64, from ``seed``.

    The generator makes ``samples // 10`` signals per class, so N is ``samples`` rounded down to
    a multiple of 10. Its other arguments keep the package's defaults. Numpy's and Python's
    global random states are the same afterwards as before.

    >>> x, y = mnist1d_arrays(20, seed=0)
    >>> x.shape, x.dtype, sorted(set(y.tolist())) == list(range(10))
    ((20, 1, 40), dtype('float32'), True)
    """
    args = get_dataset_args()
    args.num_samples = samples
    args.seed = seed
    # make_dataset reseeds numpy's and Python's global RNGs (mnist1d.utils.set_seed) and draws
    # from them; put them back so that loading data never changes the caller's random stream.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    # make_dataset cuts its own 80/20 split; rejoin it so that our stratified splits apply.
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None, :]
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return x, y
