"""The dataset catalog: known names, their options and defaults, and `load`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from compress.core.errors import DataError

from .base import Dataset
from .digits import LABELS as _DIGIT_LABELS
from .digits import digits_arrays
from .factory import load_factory, resolve
from .mnist1d import LABELS as _MNIST1D_LABELS
from .mnist1d import mnist1d_arrays
from .splits import make_splits

_SPLIT_OPTIONS: dict[str, Any] = {"val_fraction": 0.1, "test_fraction": 0.2, "calib_samples": 256}


def _split_dataset(name: str, x: Any, y: Any, labels: tuple[str, ...], seed: int,
                   options: dict[str, Any]) -> Dataset:
    splits = make_splits(x, y, seed=seed, where=f"dataset {name!r}", **options)
    return Dataset(name=name, **splits, input_shape=tuple(x.shape[1:]), num_classes=len(labels),
                   labels=labels)


def _digits(*, seed: int, **options: Any) -> Dataset:
    x, y = digits_arrays()
    return _split_dataset("digits", x, y, _DIGIT_LABELS, seed, options)


def _mnist1d(*, seed: int, samples: int, **options: Any) -> Dataset:
    x, y = mnist1d_arrays(samples, seed=seed)
    return _split_dataset("mnist1d", x, y, _MNIST1D_LABELS, seed, options)


def _factory(*, seed: int, factory: str | None, kwargs: dict[str, Any] | None,
             calib_samples: int) -> Dataset:
    return load_factory(str(factory), kwargs=kwargs, seed=seed, calib_samples=calib_samples)


def _text(*, seed: int, **options: Any) -> Dataset:
    from .text import text_dataset  # tokenizers only for text

    return text_dataset(seed=seed, **options)


# name -> (its options with their defaults, its loader); the loader gets the seed and every option.
DATASETS: dict[str, tuple[dict[str, Any], Callable[..., Dataset]]] = {
    "digits": (dict(_SPLIT_OPTIONS), _digits),
    "mnist1d": ({"samples": 10_000, **_SPLIT_OPTIONS}, _mnist1d),
    "factory": ({"factory": None, "kwargs": None, "calib_samples": 256}, _factory),
    # sentences (a built-in offline source or a file of lines) tokenized with the model's tokenizer
    "text": ({"tokenizer": None, "source": "sklearn_descriptions", "file": None, "samples": None, "max_length": 128,
              "calib_samples": 64}, _text),
}


def load(name: str, *, seed: int = 0, **options: Any) -> Dataset:
    """Load dataset ``name`` and split it deterministically for ``seed``.

    ``digits`` and ``mnist1d`` take ``val_fraction`` (0.1), ``test_fraction`` (0.2) and
    ``calib_samples`` (256); ``mnist1d`` also ``samples`` (10000, generated locally from
    ``seed``). ``factory`` takes ``factory="package.module:function"``, ``kwargs`` for it and
    ``calib_samples``; see `compress.datasets.factory`.

    >>> ds = load("digits", seed=0, calib_samples=64)
    >>> ds
    Dataset(name='digits', train=1257, val=180, test=360, calib=64, input_shape=(1, 8, 8), num_classes=10)
    >>> load("cifar")
    Traceback (most recent call last):
    ...
    compress.core.errors.DataError: dataset 'cifar': unknown dataset. Fix: use one of: digits, mnist1d, factory.
    """
    settings = check_spec(name, options, seed=seed)
    return DATASETS[name][1](seed=seed, **settings)


def check_spec(name: str, options: Mapping[str, Any] | None = None, *, seed: int = 0) -> dict[str, Any]:
    """Check a dataset name and its options without loading; the options with defaults filled in.

    A factory is imported (so a typo shows up before any training) but not called.

    >>> check_spec("mnist1d", {"samples": 2000})["test_fraction"]
    0.2
    >>> check_spec("digits", {"samples": 2000})
    Traceback (most recent call last):
    ...
    compress.core.errors.DataError: dataset 'digits': unknown option(s) samples. Fix: use only: val_fraction, test_fraction, calib_samples.
    """
    options = dict(options or {})
    if name not in DATASETS:
        raise DataError("unknown dataset", where=f"dataset {name!r}",
                        fix=f"use one of: {', '.join(DATASETS)}")
    defaults = DATASETS[name][0]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise DataError(f"unknown option(s) {', '.join(unknown)}", where=f"dataset {name!r}",
                        fix=f"use only: {', '.join(defaults)}")
    settings = {**defaults, **options}
    _check_values(name, seed, settings)
    if name == "factory":
        if settings["factory"] is None:
            raise DataError("the factory dataset needs a factory option", where="dataset 'factory'",
                            fix="pass factory='package.module:function' naming your data function")
        resolve(settings["factory"])
    return settings


def _check_values(name: str, seed: int, settings: dict[str, Any]) -> None:
    where = f"dataset {name!r}"

    def whole(key: str, value: Any, minimum: int) -> None:
        # bool is an int subclass; `samples: true` in YAML is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DataError(f"{key} is {value!r}", where=where, fix=f"give {key} as an integer >= {minimum}")

    whole("seed", seed, 0)
    if settings.get("samples") is not None:
        whole("samples", settings["samples"], 10)  # MNIST-1D makes samples // 10 per class
    whole("calib_samples", settings["calib_samples"], 1)
    if name == "text":
        from .text import SOURCES

        whole("max_length", settings["max_length"], 8)
        if settings["file"] is None and settings["source"] not in SOURCES:
            raise DataError(f"unknown text source {settings['source']!r}", where=where,
                            fix=f"use one of {', '.join(SOURCES)}, or give `file: <one text per line>`")
    fractions = [k for k in ("val_fraction", "test_fraction") if k in settings]
    for key in fractions:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise DataError(f"{key} is {value!r}", where=where, fix=f"give {key} as a number between 0 and 1")
    if fractions and sum(settings[k] for k in fractions) >= 1:
        raise DataError(f"val_fraction + test_fraction = {sum(settings[k] for k in fractions):g} "
                        "leaves no training data", where=where, fix="make their sum less than 1")
