"""1-D k-means: the initializations are the ones Han et al. describe, and the Lloyd refinement is
the same algorithm as scikit-learn's (checked against it from the same start)."""

import numpy as np
import pytest
from sklearn.cluster import KMeans

from compress.share.kmeans import initial_centroids, kmeans_1d, lloyd, nearest


def test_linear_init_spans_min_to_max_evenly():
    values = np.random.default_rng(0).normal(size=1000)
    c = initial_centroids(values, 5, "linear")
    np.testing.assert_allclose(c, np.linspace(values.min(), values.max(), 5))


def test_density_init_spaces_the_cdf_evenly():
    values = np.arange(101, dtype=float)  # CDF level q sits at value 100 q
    np.testing.assert_allclose(initial_centroids(values, 5, "density"), [0, 25, 50, 75, 100])


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(1)
    values, centroids = rng.normal(size=500), np.sort(rng.normal(size=7))
    brute = np.abs(values[:, None] - centroids[None, :]).argmin(1)
    np.testing.assert_array_equal(nearest(values, centroids), brute)


@pytest.mark.parametrize("init", ["linear", "density"])
def test_lloyd_equals_sklearn_lloyd_from_the_same_start(init):
    values = np.random.default_rng(2).standard_t(3, size=3000)  # heavy tails, like trained weights
    start = initial_centroids(values, 8, init)
    ours = lloyd(values, start, iterations=300)
    ref = KMeans(8, init=start.reshape(-1, 1), n_init=1, max_iter=300, tol=0.0, algorithm="lloyd")
    ref.fit(values.reshape(-1, 1))
    # Same algorithm, same start, run to convergence: equal up to float summation order.
    np.testing.assert_allclose(ours, np.sort(ref.cluster_centers_.ravel()), rtol=0, atol=1e-9)


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_recovers_well_separated_groups(init):
    rng = np.random.default_rng(3)
    means = np.array([-3.0, 0.5, 4.0])
    values = np.concatenate([m + 0.05 * rng.normal(size=200) for m in means])
    got = kmeans_1d(values, 3, init=init, iterations=50, seed=0)
    groups = [values[i * 200:(i + 1) * 200].mean() for i in range(3)]
    np.testing.assert_allclose(got, groups, atol=1e-12)  # each centroid is exactly its group's mean


def test_converged_centroids_are_the_means_of_their_members():
    values = np.random.default_rng(4).normal(size=2000)
    c = kmeans_1d(values, 16, init="linear", iterations=500)
    assign = nearest(values, c)
    for k in range(16):
        np.testing.assert_allclose(c[k], values[assign == k].mean(), atol=1e-12)


def test_fewer_distinct_values_than_clusters_pads_with_unused_centroids():
    got = kmeans_1d(np.array([0.5, 0.5, -1.0, 0.5]), 4, init="linear")
    np.testing.assert_array_equal(got, [-1.0, 0.5, 0.5, 0.5])
