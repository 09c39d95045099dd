"""Model inputs as the manifest lists them, and the feeds built from what a caller passes.

Torch-free (numpy only): the device runtime uses it. A bundle's manifest carries `inputs`, one
entry per model input: `{"name", "dtype", "shape", "dynamic_axes"}` where `shape` holds null for
every dynamic axis and `dynamic_axes` names them (`{"0": "batch", "1": "sequence"}`). Older
bundles carry only `input` (one entry without `dynamic_axes`); `specs` reads both.

A caller passes a batch as a dict of arrays (name -> array), a numpy record array with one field
per input (what multi-input datasets hold), or a single array for a one-input model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from export.errors import ExportError

__all__ = ["batch_len", "feed", "rows", "specs"]


def specs(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The manifest's input entries (a one-entry list for bundles that list only `input`).

    >>> specs({"input": {"name": "input", "dtype": "float32", "shape": [None, 4]}})[0]["name"]
    'input'
    """
    if "inputs" in manifest:
        return list(manifest["inputs"])
    return [dict(manifest["input"])]


def feed(entries: list[dict[str, Any]], x: Any, *, where: str = "") -> dict[str, np.ndarray]:
    """Name -> array in each input's dtype, checked against its fixed sizes.

    >>> entries = [{"name": "ids", "dtype": "int64", "shape": [None, None]},
    ...            {"name": "mask", "dtype": "int64", "shape": [None, None]}]
    >>> f = feed(entries, {"ids": [[1, 2]], "mask": [[1, 0]]})
    >>> {k: (v.dtype.name, v.shape) for k, v in f.items()}
    {'ids': ('int64', (1, 2)), 'mask': ('int64', (1, 2))}
    >>> feed(entries, np.ones((1, 2)))
    Traceback (most recent call last):
    ...
    export.errors.ExportError: the model takes 2 inputs ['ids', 'mask'], got one array. Fix: pass a dict of arrays keyed by input name.
    """
    names = [e["name"] for e in entries]
    if isinstance(x, np.ndarray) and x.dtype.names:
        x = {n: x[n] for n in x.dtype.names}
    if not isinstance(x, Mapping):
        if len(entries) != 1:
            raise ExportError(f"the model takes {len(entries)} inputs {names}, got one array", where=where,
                              fix="pass a dict of arrays keyed by input name")
        x = {names[0]: x}
    missing = [n for n in names if n not in x]
    if missing:
        raise ExportError(f"inputs {missing} are missing (given: {sorted(x)})", where=where,
                          fix=f"pass every input the model takes: {names}")
    out = {}
    for entry in entries:
        arr = np.asarray(x[entry["name"]], dtype=np.dtype(entry["dtype"]))
        shape = entry.get("shape")
        if shape is not None and not (arr.ndim == len(shape) and all(
                d is None or d == n for d, n in zip(shape, arr.shape, strict=True))):
            raise ExportError(f"input '{entry['name']}' of shape {list(arr.shape)} does not fit the model's "
                              f"shape {shape} (null = any size)", where=where,
                              fix="reshape the input to the shape the manifest lists")
        out[entry["name"]] = arr
    lengths = {len(a) for a in out.values()}
    if len(lengths) > 1:
        raise ExportError(f"the inputs have different batch sizes {sorted(lengths)}", where=where,
                          fix="give every input the same number of rows")
    return out


def batch_len(f: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(f.values())))


def rows(f: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive row slices of a feed.

    >>> [b["a"].tolist() for b in rows({"a": np.arange(5)}, 2)]
    [[0, 1], [2, 3], [4]]
    """
    n = batch_len(f)
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in f.items()}


def is_texts(x: Any) -> bool:
    """True for a list / tuple of strings (what a text bundle's tokenizer takes)."""
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(t, str) for t in x)


def bundle_feed(manifest: Mapping[str, Any], x: Any, tokenizer: Any, *, where: str = "") -> dict[str, np.ndarray]:
    """The feed for a bundle: strings go through its tokenizer, arrays are checked against its inputs."""
    entries = specs(manifest)
    if is_texts(x) or isinstance(x, str):
        if tokenizer is None:
            raise ExportError("this bundle carries no tokenizer, so it cannot take text", where=where,
                              fix="pass token id arrays as a dict, or export with the tokenizer")
        x = tokenizer.encode(x, names=[e["name"] for e in entries])
    return feed(entries, x, where=where)
