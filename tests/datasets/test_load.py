"""Bundled datasets: shapes, values, deterministic stratified splits, no global side effects."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from compress.core.errors import DataError
from compress.datasets import Dataset, check_spec, load
from compress.datasets.digits import digits_arrays
from compress.datasets.splits import split_indices

# Small enough to generate in well under a second, large enough for every class in every split.
MNIST1D_SAMPLES = 1000


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    return load("mnist1d", samples=MNIST1D_SAMPLES, seed=0)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load("digits", seed=0)


def row_hashes(x: np.ndarray) -> list[str]:
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in x]


def test_digits_shapes_dtypes_and_range(digits: Dataset) -> None:
    assert (digits.input_shape, digits.num_classes, digits.labels) == ((1, 8, 8), 10, tuple("0123456789"))
    for split in (digits.train, digits.val, digits.test, digits.calib):
        x, y = split
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0]
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert set(np.unique(y)) <= set(range(10))
    # Pixels are 0..16 before scaling, so the brightest is exactly 1 and the grid is 1/16.
    assert digits.train.x.max() == 1.0
    assert np.array_equal(digits.train.x * 16, np.round(digits.train.x * 16))
    assert len(digits.train.y) + len(digits.val.y) + len(digits.test.y) == 1797
    assert (len(digits.train.y), len(digits.val.y), len(digits.test.y), len(digits.calib.y)) == (1257, 180, 360, 256)


def test_mnist1d_shapes_dtypes_and_scale(mnist1d: Dataset) -> None:
    assert (mnist1d.input_shape, mnist1d.num_classes) == ((1, 40), 10)
    xs = [mnist1d.train.x, mnist1d.val.x, mnist1d.test.x]
    assert all(x.dtype == np.float32 and x.shape[1:] == (1, 40) for x in xs)
    assert all(y.dtype == np.int64 for y in (mnist1d.train.y, mnist1d.val.y, mnist1d.test.y))
    everything = np.concatenate(xs).astype(np.float64)
    assert everything.shape[0] == MNIST1D_SAMPLES and np.isfinite(everything).all()
    # The generator standardizes the whole set in float64; 1e-4 only absorbs the float32 cast.
    assert abs(everything.mean()) < 1e-4 and abs(everything.std() - 1.0) < 1e-4
    assert np.bincount(np.concatenate([mnist1d.train.y, mnist1d.val.y, mnist1d.test.y])).tolist() == [100] * 10


def test_mnist1d_rounds_samples_down_to_whole_classes() -> None:
    ds = load("mnist1d", samples=305, seed=0)
    assert sum(len(s.y) for s in (ds.train, ds.val, ds.test)) == 300


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_same_seed_same_arrays_other_seed_other_split(name: str) -> None:
    options = {"samples": 300} if name == "mnist1d" else {}
    a, b, c = (load(name, seed=s, **options) for s in (0, 0, 1))
    for split in ("train", "val", "test", "calib"):
        for field in (0, 1):
            assert np.array_equal(getattr(a, split)[field], getattr(b, split)[field])
    assert set(row_hashes(a.test.x)) != set(row_hashes(c.test.x))


def test_splits_are_disjoint_and_cover_everything_by_index() -> None:
    x, y = digits_arrays()
    idx = split_indices(y, seed=3, val_fraction=0.1, test_fraction=0.2, calib_samples=100)
    parts = [set(idx.train.tolist()), set(idx.val.tolist()), set(idx.test.tolist())]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == len(y)
    assert set(idx.calib.tolist()) <= parts[0]
    # The loader returns exactly these rows, so the bookkeeping above is about the real splits.
    ds = load("digits", seed=3, calib_samples=100)
    for name in ("train", "val", "test", "calib"):
        assert np.array_equal(getattr(ds, name).x, x[getattr(idx, name)])


def test_splits_are_disjoint_by_row_content(mnist1d: Dataset) -> None:
    # MNIST-1D rows carry continuous noise, so equal hashes can only mean the same sample.
    train, val, test = (set(row_hashes(s.x)) for s in (mnist1d.train, mnist1d.val, mnist1d.test))
    assert len(train) + len(val) + len(test) == MNIST1D_SAMPLES
    assert not (train & val or train & test or val & test)
    calib = set(row_hashes(mnist1d.calib.x))
    assert len(calib) == 256 and calib <= train


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_splits_are_stratified(name: str, digits: Dataset, mnist1d: Dataset) -> None:
    ds = {"digits": digits, "mnist1d": mnist1d}[name]
    all_y = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    total = np.bincount(all_y, minlength=10)
    for split, fraction in ((ds.test, 0.2), (ds.val, 0.1)):
        counts = np.bincount(split.y, minlength=10)
        # Stratification rounds each class's share to a whole sample: test is off by at most 1;
        # val, cut from what test left, by at most 1 + 0.125 (its share of test's rounding).
        # A random, unstratified split of 360 digits misses by ~5 per class.
        assert np.abs(counts - fraction * total).max() <= 1.125 + 1e-9, (counts, fraction * total)


def test_calib_is_capped_by_train_size() -> None:
    ds = load("digits", seed=0, calib_samples=10_000)
    # Asking for more than train holds gives all of train, in train's order.
    assert np.array_equal(ds.calib.x, ds.train.x) and np.array_equal(ds.calib.y, ds.train.y)


def test_loading_mnist1d_leaves_global_rngs_untouched() -> None:
    np.random.seed(1234)
    random.seed(1234)
    numpy_before, python_before = np.random.get_state(), random.getstate()
    load("mnist1d", samples=100, seed=5, test_fraction=0.5, val_fraction=0.2)
    numpy_after = np.random.get_state()
    assert numpy_before[0] == numpy_after[0] and np.array_equal(numpy_before[1], numpy_after[1])
    assert numpy_before[2:] == numpy_after[2:]
    assert random.getstate() == python_before


@pytest.mark.parametrize(("name", "options", "fragments"), [
    ("cifar10", {}, ["unknown dataset", "digits, mnist1d, factory"]),
    ("digits", {"samples": 10}, ["unknown option(s) samples", "val_fraction, test_fraction, calib_samples"]),
    ("mnist1d", {"val_fraction": 1.5}, ["val_fraction is 1.5", "between 0 and 1"]),
    ("mnist1d", {"val_fraction": 0.5, "test_fraction": 0.5}, ["leaves no training data"]),
    ("mnist1d", {"samples": 5}, ["samples is 5", "an integer from 10 to"]),  # 0 per class would crash mnist1d
    ("digits", {"calib_samples": True}, ["calib_samples is True"]),
    ("factory", {}, ["needs a factory option"]),
])
def test_bad_names_and_options_are_data_errors(name: str, options: dict, fragments: list[str]) -> None:
    with pytest.raises(DataError) as caught:
        load(name, **options)
    for fragment in fragments:
        assert fragment in str(caught.value)
    with pytest.raises(DataError):
        check_spec(name, options)


def test_too_few_samples_to_stratify_is_a_data_error() -> None:
    # 20 signals leave 4 for test: fewer than the 10 classes a stratified split must place.
    with pytest.raises(DataError, match="cannot make stratified splits of 20 samples"):
        load("mnist1d", samples=20)
