"""Data factories for the factory tests: one well-formed, the others each wrong in one way."""

from __future__ import annotations

from typing import Any

import numpy as np

NOT_CALLABLE = 3
CALLS: list[dict[str, Any]] = []


def _pair(n: int, *, offset: int = 0, features: int = 6) -> tuple[np.ndarray, np.ndarray]:
    x = (np.arange(n * features, dtype=np.float64).reshape(n, 1, features) + offset * 1000) / 100
    return x, np.arange(n) % 3


def good(n: int = 30, scale: float = 1.0) -> dict[str, Any]:
    CALLS.append({"n": n, "scale": scale})
    (xt, yt), (xv, yv), (xs, ys) = _pair(n), _pair(6, offset=1), _pair(9, offset=2)
    return {"train": (xt * scale, yt), "val": (xv, yv), "test": (xs, ys), "labels": ["a", "b", "c"]}


def with_calib() -> dict[str, Any]:
    return {**good(), "calib": _pair(4, offset=3)}


def explodes() -> dict[str, Any]:
    raise AssertionError("check_spec must import a factory, not call it")


def returns_list() -> list[Any]:
    return [_pair(4), _pair(4), _pair(4)]


def missing_test() -> dict[str, Any]:
    return {"train": _pair(4), "val": _pair(4)}


def extra_key() -> dict[str, Any]:
    return {**good(), "extras": 1}


def mismatched() -> dict[str, Any]:
    x, y = _pair(10)
    return {**good(), "train": (x, y[:9])}


def fractional_labels() -> dict[str, Any]:
    x, y = _pair(10)
    return {**good(), "val": (x, y + 0.5)}


def shape_mismatch() -> dict[str, Any]:
    return {**good(), "test": _pair(5, features=7)}


def too_few_labels() -> dict[str, Any]:
    return {**good(), "labels": ["a", "b"]}


def not_a_pair() -> dict[str, Any]:
    return {**good(), "val": _pair(4)[0]}


def with_nan() -> dict[str, Any]:
    x, y = _pair(4)
    x[0, 0, 0] = np.nan
    return {**good(), "test": (x, y)}
