"""One error path for everything read from a bundle: the runtime and `edgetier inspect` share it.

A bundle may have been copied over a network, edited, or built by someone hostile. Before any
model is opened, `open_bundle` checks, in this order: the signature when a public key is given
(on the manifest's exact bytes, before they are parsed); the manifest's size, JSON nesting and
shape, with every numeric field range-checked (tolerance, shapes, dtype from an allow-list);
that the folder holds no symlink and no file the manifest does not list (a model's external
data must be listed, so it is hashed); then every file's size and sha256. The readers of the
other files (`read_parity`, `read_report`, `model_file_error`) turn any malformed content into
the same kind of `BundleError` paragraph: what is wrong, which file, re-export or re-copy.

>>> import tempfile, pathlib
>>> from export._examples import tiny_bundle
>>> with tempfile.TemporaryDirectory() as d:
...     b = tiny_bundle(pathlib.Path(d) / "b")
...     _ = (b / "weights.bin").write_bytes(b"extra")
...     open_bundle(b)
Traceback (most recent call last):
...
export.errors.BundleError: ...b: the bundle holds 'weights.bin', which is not listed in the manifest, so it is not verified. Fix: ...
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import BundleError, ExportError
from export.manifest import MANIFEST, is_plain_name, sha256_file
from export.signing import SIGNATURE, PublicKeyLike, read_manifest_bytes, verify_signature

__all__ = ["DTYPES", "check_input_array", "check_manifest", "model_file_error", "open_bundle", "read_json",
           "read_parity", "read_report"]

DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
MAX_JSON_BYTES = 4 << 20
MAX_NAME = 128  # file names in a bundle; far below the 255 bytes a file system allows
MAX_DIM = 1 << 24
MAX_RANK = 8
MAX_LABELS = 100_000
MAX_PARITY_SAMPLES = 10_000
_FIX = "re-export the bundle, or re-copy the whole folder from its source"


def _fail(problem: str, where: Path | str, fix: str = _FIX) -> BundleError:
    return BundleError(problem, where=str(where), fix=fix)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_json(data: bytes, where: Path) -> Any:
    """Parse bounded JSON bytes; too deep, not UTF-8, not JSON or non-finite numbers are a `BundleError`."""
    if len(data) > MAX_JSON_BYTES:
        raise _fail(f"{where.name} is larger than {MAX_JSON_BYTES:,} bytes", where)
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise _fail(f"{where.name} is nested too deeply to be a bundle's JSON", where) from None
    except (UnicodeDecodeError, ValueError) as err:
        raise _fail(f"{where.name} is not valid JSON ({str(err)[:80]})", where) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high


def _shape(value: Any) -> bool:
    return isinstance(value, list) and 1 <= len(value) <= MAX_RANK and all(d is None or _whole(d, 1, MAX_DIM) for d in value)


def _plain(name: Any) -> bool:
    return is_plain_name(name) and len(name) <= MAX_NAME and not name.startswith(".")


def check_manifest(manifest: Any, where: Path) -> dict[str, Any]:
    """Shape and range of every manifest field the runtime or `inspect` reads; the manifest if it passes."""
    if not isinstance(manifest, dict):
        raise _fail(f"{MANIFEST} holds a {type(manifest).__name__}, not an object", where)
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok and not problems:
            problems.append(what)

    files = manifest.get("files")
    need(isinstance(files, dict) and all(
        _plain(n) and isinstance(e, dict) and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64
        and _whole(e.get("bytes"), 0, 1 << 40) for n, e in files.items()),
        "'files' must map plain file names (at most 128 characters) to {sha256: 64 hex, bytes: int}")
    files = files if isinstance(files, dict) else {}
    model = manifest.get("model")
    need(isinstance(model, dict), "'model' is missing or not an object")
    model = model if isinstance(model, dict) else {}
    # (which model files must be listed, and their formats, the runtime checks with its own messages)
    need(all(isinstance(x, dict) for x in [*model.get("segments", []), *model.get("alternates", [])]),
         "model.segments and model.alternates must be lists of objects")
    if "variant" in manifest:
        need(_plain(manifest["variant"]), f"variant {_short(manifest['variant'])} is not a plain name")
    for key in ("input", "output"):
        if key in manifest:
            spec = manifest[key]
            need(isinstance(spec, dict) and isinstance(spec.get("name"), str) and len(spec["name"]) <= 256,
                 f"'{key}' must be an object with a 'name'")
            if isinstance(spec, dict) and spec.get("shape") is not None:
                need(_shape(spec["shape"]), f"{key}.shape {_short(spec['shape'])} must be 1 to {MAX_RANK} sizes, "
                     f"each null or 1..{MAX_DIM}")
    if isinstance(manifest.get("input"), dict):
        need(manifest["input"].get("dtype") in DTYPES,
             f"input.dtype {_short(manifest['input'].get('dtype'))} is not one of {', '.join(DTYPES)}")
    if "labels" in manifest:
        labels = manifest["labels"]
        need(isinstance(labels, list) and len(labels) <= MAX_LABELS
             and all(isinstance(x, (str, int)) and len(str(x)) <= 256 for x in labels), "labels must be a list of names")
    target = manifest.get("target")
    tolerance = target.get("tolerance") if isinstance(target, dict) else None
    if tolerance is not None:
        # the shipped targets use atol 1e-4, rtol 1e-3, agreement 0.95-0.97; 0.1 is already meaningless
        need(isinstance(tolerance, dict) and _number(tolerance.get("atol", 0), 0, 0.1)
             and _number(tolerance.get("rtol", 0), 0, 0.1)
             and _number(tolerance.get("quantized_top1_agreement", 1), 0.5, 1),
             f"target.tolerance {_short(tolerance)} is out of range (atol, rtol 0..0.1; quantized_top1_agreement 0.5..1)")
    for i, ex in enumerate(manifest.get("exits", []) if isinstance(manifest.get("exits", []), list) else [None]):
        need(isinstance(ex, dict) and isinstance(ex.get("criterion"), str) and _number(ex.get("threshold"), -1e6, 1e6),
             f"exits[{i}] needs a criterion and a finite threshold")
    if problems:
        raise _fail(f"{MANIFEST} is malformed: {problems[0]}", where)
    return manifest


def _check_folder(root: Path, files: dict[str, Any]) -> None:
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        name = entry.name
        if entry.is_symlink():
            raise _fail(f"the bundle holds a symlink {_short(name)}; a bundle's files must be inside it", root)
        if name in (MANIFEST, SIGNATURE):
            continue
        if name not in files:
            raise _fail(f"the bundle holds {_short(name)}, which is not listed in the manifest, so it is not verified",
                        root, fix="remove the file, or re-export the bundle (a model's external data must be listed)")
        if not entry.is_file(follow_symlinks=False):
            raise _fail(f"{_short(name)} is not a regular file", root)


def open_bundle(bundle_dir: str | os.PathLike[str], *, public_key: PublicKeyLike | None = None) -> dict[str, Any]:
    """Everything about a bundle checked before a model is opened; returns the manifest."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise _fail("bundle folder not found", root,
                    fix="export the variant again, or check the path; if a write was interrupted, a "
                        f"'.{root.name}.old-*' folder next to it holds the previous bundle")
    if public_key is not None:
        verify_signature(root, public_key)
    data = read_manifest_bytes(root)  # (a swap between the two reads is caught by the signature's own read)
    manifest = check_manifest(read_json(data, root / MANIFEST), root / MANIFEST)
    files = manifest["files"]
    _check_folder(root, files)
    for name, entry in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise _fail(f"file '{name}' is listed in {MANIFEST} but missing", root)
        size, actual = path.stat().st_size, sha256_file(path)
        if actual != entry["sha256"] or size != entry["bytes"]:
            raise _fail(f"file '{name}' does not match {MANIFEST}: sha256 {actual} ({size} bytes) on disk, "
                        f"{entry['sha256']} ({entry['bytes']} bytes) expected; the file is corrupted or was edited",
                        path)
    return manifest


def read_report(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """`report.json`, listed and hashed, with a `models` list whose entries have the summary's keys."""
    path = root / "report.json"
    if "report.json" not in manifest["files"]:
        raise _fail(f"report.json is not listed in {MANIFEST}", root)
    report = read_json(path.read_bytes(), path)
    models = report.get("models") if isinstance(report, dict) else None
    keys = ("name", "target", "precision", "bytes", "params", "macs", "accuracy", "latency_ms", "estimated_latency_ms")
    if not isinstance(models, list) or not all(isinstance(m, dict) and all(k in m for k in keys) for m in models):
        raise _fail(f"report.json has no valid 'models' list (each entry with {', '.join(keys)})", path)
    for m in models:
        if not all(isinstance(m[k], str) for k in keys[:3]) or not all(
                m[k] is None or _number(m[k], 0, 1e18) for k in keys[3:]):
            raise _fail("report.json has a model entry with values of the wrong type", path)
    return report


def read_parity(root: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The stored parity inputs and PyTorch outputs: an .npz of float32 `x` and `reference`, no pickles."""
    path = root / "parity.npz"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _fail(f"parity.npz cannot be read as numpy arrays without pickles ({str(err)[:80]})", path) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _fail("parity.npz holds a single array, not the arrays 'x' and 'reference'", path)
    try:
        with loaded as data:
            if sorted(data.files) != ["reference", "x"]:
                raise _fail(f"parity.npz holds {_short(sorted(data.files))}, not exactly 'x' and 'reference'", path)
            x, ref = data["x"], data["reference"]
    except BundleError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _fail(f"parity.npz has an unreadable array ({str(err)[:80]})", path) from None
    shape = (manifest.get("input") or {}).get("shape")
    ok = (x.dtype == np.float32 and ref.dtype == np.float32 and ref.ndim == 2 and x.ndim >= 1
          and len(x) == len(ref) <= MAX_PARITY_SAMPLES and np.isfinite(x).all() and np.isfinite(ref).all()
          and (shape is None or (x.ndim == len(shape) and all(d is None or d == n for d, n in zip(shape, x.shape, strict=False)))))
    if not ok:
        raise _fail(f"parity.npz arrays do not fit the bundle: x {x.dtype}{list(x.shape)}, reference "
                    f"{ref.dtype}{list(ref.shape)}, input shape {shape}", path)
    return x, ref


def model_file_error(name: str, root: Path, err: BaseException) -> BundleError:
    """The paragraph for a model file its runtime or parser cannot read (truncated, random, wrong type)."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
    return _fail(f"model file '{name}' cannot be read ({type(err).__name__}: {first})", root,
                 fix="re-export the bundle; if it was exported fine, use a runtime version that supports it")


def check_input_array(x: Any, dtype: str, shape: list[Any] | None, *, allow_nonfinite: bool, where: str) -> np.ndarray:
    """The caller's input as the bundle's dtype, refusing what would give silent garbage.

    >>> check_input_array([[1, 2]], "float32", [None, 2], allow_nonfinite=False, where="b").dtype
    dtype('float32')
    >>> check_input_array([[float("nan"), 2]], "float32", [None, 2], allow_nonfinite=False, where="b")
    Traceback (most recent call last):
    ...
    export.errors.ExportError: b: the input holds 1 NaN or infinite value(s). Fix: ...
    """
    arr = x if isinstance(x, np.ndarray) else np.asarray(x) if x is not None else None
    if arr is None or arr.dtype.kind not in "biuf":
        kind = "None" if arr is None else f"{arr.dtype} values"
        raise ExportError(f"the input is {kind}; the bundle takes numbers ({dtype})", where=where,
                          fix="pass a numpy array of real numbers (complex, object and string arrays are refused)")
    if arr.dtype.kind == "f" and not allow_nonfinite:
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ExportError(f"the input holds {bad} NaN or infinite value(s)", where=where,
                              fix="clean the input, or pass allow_nonfinite=True if the model is meant to see them")
    arr = arr.astype(np.dtype(dtype), copy=False)
    if shape is not None:
        fits = arr.ndim == len(shape) and all(d is None or d == n for d, n in zip(shape, arr.shape, strict=True))
        if not fits:
            raise ExportError(f"input of shape {list(arr.shape)} does not fit the bundle's input shape {shape} "
                              "(null = any size)", where=where,
                              fix="reshape the input to the shape in manifest.json 'input.shape'")
    return arr
