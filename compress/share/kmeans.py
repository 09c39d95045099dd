"""One-dimensional k-means for weight clustering (Han et al., Deep Compression, section 3).

Three centroid initializations, as the paper compares them:
- `linear`: centroids evenly spaced between the smallest and largest weight — the paper's
  best, because it keeps the few large weights, which matter most, as their own centroids;
- `density`: evenly spaced in the weights' cumulative distribution (quantiles), so centroids
  crowd where weights are dense;
- `kmeans++`: scikit-learn's `KMeans` with k-means++ seeding (random, seeded).

`linear` and `density` are refined with Lloyd iterations here: in one dimension the nearest
centroid is a binary search among the midpoints of the sorted centroids, so an iteration
costs a sort and two `bincount` s.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

Init = Literal["linear", "density", "kmeans++"]


def initial_centroids(values: np.ndarray, k: int, init: Literal["linear", "density"]) -> np.ndarray:
    """`k` starting centroids for `values` (sorted ascending).

    >>> initial_centroids(np.array([0.0, 1.0, 1.0, 4.0]), 3, "linear")
    array([0., 2., 4.])
    >>> initial_centroids(np.array([0.0, 1.0, 1.0, 4.0]), 3, "density")
    array([0., 1., 4.])
    """
    if init == "linear":
        return np.linspace(values.min(), values.max(), k)
    if init == "density":
        return np.quantile(values, np.linspace(0.0, 1.0, k))
    raise ValueError(f"unknown init {init!r}")


def nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted `centroids` for each value (ties go to the lower one).

    >>> nearest(np.array([-1.0, 0.4, 0.6, 9.0]), np.array([0.0, 1.0]))
    array([0, 0, 1, 1])
    """
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values, side="left")


def lloyd(values: np.ndarray, centroids: np.ndarray, *, iterations: int) -> np.ndarray:
    """Refine sorted `centroids` by Lloyd iterations; a centroid that loses all its values stays put.

    >>> lloyd(np.array([0.0, 0.2, 5.0, 5.4]), np.array([0.0, 1.0]), iterations=10)
    array([0.1, 5.2])
    """
    c = np.sort(centroids.astype(np.float64))
    for _ in range(iterations):
        assign = nearest(values, c)
        counts = np.bincount(assign, minlength=len(c))
        sums = np.bincount(assign, weights=values, minlength=len(c))
        new = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
        if np.array_equal(new, c):
            break
        c = new
    return c


def kmeans_1d(values: np.ndarray, k: int, *, init: Init, iterations: int = 30, seed: int = 0) -> np.ndarray:
    """`k` sorted centroids for the 1-D `values`. Fewer distinct values than `k` give each its own
    centroid and repeat the largest for the rest (those codes then stay unused).

    >>> kmeans_1d(np.array([1.0, 1.1, 3.0, 3.1, 8.0]), 3, init="linear")
    array([1.05, 3.05, 8.  ])
    >>> kmeans_1d(np.array([2.0, 2.0, 5.0]), 3, init="kmeans++")
    array([2., 5., 5.])
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return np.zeros(k)
    distinct = np.unique(values)
    if len(distinct) <= k:
        return np.concatenate([distinct, np.full(k - len(distinct), distinct[-1])])
    if init == "kmeans++":
        from sklearn.cluster import KMeans

        with warnings.catch_warnings():
            # Heavily repeated values (pruned or tiny layers) make sklearn warn about fewer clusters found;
            # the centroids it returns are still the best it found, and unused codes are harmless.
            warnings.simplefilter("ignore")
            fit = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=max(iterations, 1),
                         random_state=seed).fit(values.reshape(-1, 1))
        return np.sort(fit.cluster_centers_.reshape(-1))
    return lloyd(values, initial_centroids(values, k, init), iterations=iterations)
