"""User data through an explicit ``"package.module:function"`` factory.

The function is called with the recipe's ``kwargs`` and returns a mapping with ``train``,
``val`` and ``test`` (each ``(x, y)``), and optionally ``calib`` (same form) and ``labels``.
When ``calib`` is missing, a seeded subset of ``train`` is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from compress.core.errors import DataError
from compress.core.imports import import_factory

from .base import Dataset, Split
from .splits import calib_subset

REQUIRED = ("train", "val", "test")
OPTIONAL = ("calib", "labels")
_SHAPE_FIX = ("return {'train': (x, y), 'val': (x, y), 'test': (x, y)} with x of shape (N, ...) "
              "and y of N integer class ids; 'calib' and 'labels' are optional")


def resolve(spec: str) -> Callable[..., Any]:
    """Import the function named by ``"package.module:function"``; a `DataError` if that fails.

    >>> resolve("compress.datasets.digits:digits_arrays").__name__
    'digits_arrays'
    """
    return import_factory(spec, where=f"data factory {spec!r}", error=DataError)


def load_factory(spec: str, *, kwargs: Mapping[str, Any] | None = None, seed: int = 0,
                 calib_samples: int = 256) -> Dataset:
    """Call the factory and check what it returns; the dataset is named after the factory.

    >>> ds = load_factory("compress.datasets.factory:example_factory", kwargs={"n": 40},
    ...                   calib_samples=8)
    >>> ds.input_shape, ds.labels, len(ds.calib.y)
    ((3,), ('neg', 'pos'), 8)
    """
    where = f"data factory {spec!r}"
    function = resolve(spec)
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise DataError(f"kwargs is a {type(kwargs).__name__}, not a mapping of names to values",
                        where=where, fix="give kwargs as a mapping, e.g. {path: data.npz}")
    returned = function(**kwargs)
    if not isinstance(returned, Mapping):
        raise DataError(f"the factory returned a {type(returned).__name__}, not a mapping", where=where,
                        fix=_SHAPE_FIX)
    missing = [k for k in REQUIRED if k not in returned]
    unknown = sorted(str(k) for k in returned if k not in REQUIRED + OPTIONAL)
    if missing or unknown:
        problem = "; ".join(p for p in (missing and f"missing keys {missing}",
                                        unknown and f"unknown keys {unknown}") if p)
        raise DataError(f"the factory's result has {problem}", where=where,
                        fix=f"{_SHAPE_FIX} (known keys: {', '.join(REQUIRED + OPTIONAL)})")

    splits = {name: _as_split(returned[name], f"{where}: {name}") for name in REQUIRED}
    if "calib" in returned:
        splits["calib"] = _as_split(returned["calib"], f"{where}: calib")
    else:
        x, y = splits["train"]
        chosen = calib_subset(np.arange(len(y)), calib_samples, seed=seed)
        splits["calib"] = Split(x[chosen], y[chosen])

    shapes = {name: s.x.shape[1:] for name, s in splits.items()}
    if len(set(shapes.values())) != 1:
        raise DataError(f"the splits' samples differ in shape: {shapes}", where=where,
                        fix="return every split with the same per-sample shape")
    largest = max(int(s.y.max()) for s in splits.values())
    labels = _labels(returned.get("labels"), largest, where)
    return Dataset(name=spec, **splits, input_shape=tuple(int(d) for d in shapes["train"]),
                   num_classes=len(labels), labels=labels)


def _as_split(value: Any, where: str) -> Split:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise DataError(f"expected a pair (x, y), got a {type(value).__name__}", where=where, fix=_SHAPE_FIX)
    try:
        x = np.asarray(value[0], dtype=np.float32)
        y_raw = np.asarray(value[1])
    except (TypeError, ValueError) as exc:
        raise DataError(f"x is not numeric: {exc}", where=where, fix=_SHAPE_FIX) from exc
    if x.ndim < 2 or y_raw.ndim != 1:
        raise DataError(f"x has shape {x.shape} and y has shape {y_raw.shape}", where=where,
                        fix="x needs a batch axis and at least one feature axis, y one axis: " + _SHAPE_FIX)
    if len(x) != len(y_raw):
        raise DataError(f"x has {len(x)} samples but y has {len(y_raw)}", where=where,
                        fix="return one label per sample")
    if len(y_raw) == 0:
        raise DataError("the split is empty", where=where, fix="give every split at least one sample")
    if not np.isfinite(x).all():
        raise DataError("x contains NaN or infinite values", where=where, fix="clean or impute the inputs")
    # Whole-valued floats (e.g. labels read from a CSV) are accepted; 1.5 is not a class.
    if not np.issubdtype(y_raw.dtype, np.number) or np.any(y_raw != np.round(y_raw)) or y_raw.min() < 0:
        raise DataError(f"y must hold class ids 0, 1, 2, ...; got dtype {y_raw.dtype}", where=where,
                        fix="map each class to a non-negative integer")
    return Split(x, y_raw.astype(np.int64))


def _labels(given: Any, largest: int, where: str) -> tuple[str, ...]:
    if given is None:
        return tuple(str(c) for c in range(largest + 1))
    if isinstance(given, str) or not all(isinstance(name, str) for name in given):
        raise DataError("labels must be a list of class names (strings)", where=f"{where}: labels",
                        fix="return labels like ['cat', 'dog'], in class-id order")
    if len(given) <= largest:
        raise DataError(f"{len(given)} labels for class ids up to {largest}", where=f"{where}: labels",
                        fix="give one name per class id")
    return tuple(given)


def example_factory(n: int = 40) -> dict[str, Any]:
    """A tiny two-class factory, a template for users and the docstring example above."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return {"train": (x, y), "val": (x[:4], y[:4]), "test": (x[4:8], y[4:8]), "labels": ["neg", "pos"]}
