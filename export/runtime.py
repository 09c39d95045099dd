"""The device runtime: load a verified bundle and run it with numpy + onnxruntime or LiteRT only.

A device has no torch and no `compress`; this module and everything it imports use only the
standard library, numpy, onnxruntime and (for .tflite bundles, imported on first use)
ai-edge-litert — a test checks that importing it loads no torch. `.onnx` and `.tflite` models
run behind the same session calls (`export.litert.TFLiteSession` adapts the interpreter).

Manifest keys read here: `files` (verified before anything is opened), `model.file`,
`model.format`, `input.name`, `input.shape`, `input.dtype`, `output.name`, `labels`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

from export import inputs as model_inputs
from export.bundle_check import check_input_array, model_file_error, open_bundle
from export.errors import BundleError, ExportError
from export.litert import TFLiteSession
from export.policy import exits as policy_exits
from export.profile import profile

__all__ = ["Bundle", "input_dtype", "int8_sums_can_saturate", "load", "make_session", "open_model", "profile", "run_all_exits",
           "run_segments"]

FORMATS = {".onnx": "onnx", ".tflite": "tflite"}

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx_vnni_int8"})


def int8_sums_can_saturate(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """True when onnxruntime's fast int8 kernels may saturate on this CPU: x86-64 without VNNI.

    onnxruntime runs int8 Conv / MatMul as uint8 activations x int8 weights. Without VNNI
    (`vpdpbusd`, which adds four products straight into int32) its AVX2 / AVX-512BW kernels add
    pairs of products in int16 first (`vpmaddubsw`), which saturates when two large products meet
    (255 x 127 x 2 > 32767): the int8 file then computes something else than it means. On such a CPU
    `make_session` turns on onnxruntime's `session.x64quantprecision` (uint8 x uint8 kernels, exact).
    Measured on EfficientNet-Lite0's MinMax int8 file (tests/benchmarks/test_ptq.py, 300 held-out
    views, 2026-12-07): 94.3 % top-1 agreement with fp32 on an AVX-512 VNNI host (logits off by
    0.22 rms); the earlier runs on another host gave the same file 78.7 % (0.58 rms) with the same
    weights-only error (0.17), which is what saturated sums would do. Linux's /proc/cpuinfo tells; elsewhere on x86-64 the answer is
    True (exact kernels: slower, never wrong). ARM and other machines: False.

    >>> int8_sums_can_saturate("flags : fpu sse avx2 avx512bw", "x86_64")
    True
    >>> int8_sums_can_saturate("flags : fpu sse avx2 avx512bw avx512_vnni", "x86_64")
    False
    >>> int8_sums_can_saturate("", "aarch64")
    False
    """
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "x64"):
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return True
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return not flags & _VNNI_FLAGS


def make_session(path: str | os.PathLike[str], *, threads: int = 1,
                 exact_int8: bool | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session with a fixed thread count and sequential execution.

    Fixed threads make latency comparable between runs and hosts; one inter-op thread and
    sequential execution match what a small device does. `exact_int8` turns on onnxruntime's
    `session.x64quantprecision` (int8 kernels that cannot saturate); the default, None, turns it on
    where the fast kernels can saturate (`int8_sums_can_saturate`: x86-64 without VNNI). On a VNNI
    host it is not needed and costs time: EfficientNet-Lite0's int8 file took 35.3 ms against 23.7 ms
    at batch 1 with it (one thread, loaded AVX-512 VNNI host, 2026-12-07), with the same outputs.

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     s = make_session(tiny_onnx(pathlib.Path(d) / "m.onnx"), threads=1)
    >>> [i.name for i in s.get_inputs()]
    ['input']
    """
    if threads < 1:
        raise ExportError(f"threads must be at least 1, got {threads}", fix="pass threads=1 or more")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if exact_int8 if exact_int8 is not None else int8_sums_can_saturate():
        opts.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])


def open_model(path: str | os.PathLike[str], *, threads: int = 1,
               exact_int8: bool | None = None) -> ort.InferenceSession | TFLiteSession:
    """A session for an .onnx (onnxruntime) or .tflite (LiteRT) file, chosen by its suffix (`exact_int8`:
    see `make_session`; LiteRT ignores it).

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     type(open_model(tiny_onnx(pathlib.Path(d) / "m.onnx"))).__name__
    'InferenceSession'
    """
    suffix = Path(path).suffix
    if suffix not in FORMATS:
        raise ExportError(f"unknown model file type {suffix!r}", where=os.fspath(path),
                          fix=f"use one of {', '.join(FORMATS)}")
    if FORMATS[suffix] == "tflite":
        return TFLiteSession(path, threads=threads)
    return make_session(path, threads=threads, exact_int8=exact_int8)


def input_dtype(session: ort.InferenceSession | TFLiteSession, index: int = 0) -> np.dtype:
    """The numpy dtype an onnxruntime session expects for one of its inputs.

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_onnx
    >>> with tempfile.TemporaryDirectory() as d:
    ...     input_dtype(make_session(tiny_onnx(pathlib.Path(d) / "m.onnx")))
    dtype('float32')
    """
    if isinstance(session, TFLiteSession):
        return np.dtype(np.float32)  # the adapter quantizes float input itself
    kind = session.get_inputs()[index].type
    if kind not in _ORT_DTYPES:
        raise ExportError(f"model input type {kind} is not supported here", fix="export with a float32 input")
    return np.dtype(_ORT_DTYPES[kind])


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its folder, its verified manifest, and its model's session (onnxruntime or LiteRT)."""

    path: Path
    manifest: dict[str, Any]
    session: ort.InferenceSession | TFLiteSession = field(repr=False)
    segments: tuple[ort.InferenceSession | TFLiteSession, ...] = field(default=(), repr=False)
    tokenizer: Any = field(default=None, repr=False)  # export.tokenizer.TextEncoder when the bundle has one

    @property
    def exits(self) -> list[dict[str, Any]]:
        """The exit policy: per exit, its `criterion` and calibrated `threshold` (empty without exits)."""
        return list(self.manifest.get("exits", []))

    @property
    def labels(self) -> list[Any]:
        """Class labels from the manifest, in logit order (empty when the manifest has none)."""
        return list(self.manifest.get("labels", []))

    def iter_predict(self, x: np.ndarray, batch_size: int = 256, *, allow_nonfinite: bool = False
                     ) -> Iterator[np.ndarray]:
        """Yield float32 logits for consecutive batches of `x`, so memory stays bounded.

        >>> import tempfile, pathlib, numpy as np
        >>> from export._examples import tiny_bundle
        >>> with tempfile.TemporaryDirectory() as d:
        ...     b = load(tiny_bundle(pathlib.Path(d) / "b"))
        ...     [y.shape for y in b.iter_predict(np.ones((5, 4)), batch_size=2)]
        [(2, 3), (2, 3), (1, 3)]
        """
        if batch_size < 1:
            raise ExportError(
                f"batch_size must be at least 1, got {batch_size}", fix="pass batch_size=1 or more"
            )
        if self.segments:
            x = self._checked_input(x, allow_nonfinite=allow_nonfinite)
            for start in range(0, len(x), batch_size):
                yield self.predict(x[start:start + batch_size], batch_size=batch_size, allow_nonfinite=allow_nonfinite)
            return
        if "inputs" in self.manifest:  # several inputs, or text: see export.inputs
            texts = model_inputs.is_texts(x)
            step = range(0, len(x), batch_size) if texts else [None]
            for start in step:  # text is tokenized per batch, so each batch pads to its own longest text
                part = x[start:start + batch_size] if start is not None else x
                feed = model_inputs.bundle_feed(self.manifest, part, self.tokenizer, where=str(self.path))
                for rows in model_inputs.rows(feed, batch_size):
                    (out,) = self.session.run([self.manifest["output"]["name"]], rows)
                    yield np.asarray(out, dtype=np.float32)
            return
        x = self._checked_input(x, allow_nonfinite=allow_nonfinite)
        in_name, out_name = self.manifest["input"]["name"], self.manifest["output"]["name"]
        for start in range(0, len(x), batch_size):
            (logits,) = self.session.run([out_name], {in_name: x[start : start + batch_size]})
            yield np.asarray(logits, dtype=np.float32)

    def predict(self, x: np.ndarray, *, batch_size: int = 256, return_exits: bool = False,
                allow_nonfinite: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Float32 logits for all of `x` (cast to the manifest's input dtype), run in batches.

        A bundle with early exits runs its segments progressively: each sample stops at the
        first exit whose criterion passes its threshold. `return_exits=True` also returns the
        exit index each sample took (the final classifier is `len(bundle.exits)`). NaN or infinite
        inputs are refused unless `allow_nonfinite=True` (a quantized model turns them into finite garbage).

        >>> import tempfile, pathlib, numpy as np
        >>> from export._examples import tiny_bundle
        >>> with tempfile.TemporaryDirectory() as d:
        ...     b = load(tiny_bundle(pathlib.Path(d) / "b"))
        ...     b.predict(np.ones((2, 4))).astype(float).round(2).tolist()
        [[0.4, 0.0, -0.4], [0.4, 0.0, -0.4]]
        """
        if self.segments:
            x = self._checked_input(x, allow_nonfinite=allow_nonfinite)
            parts = [run_segments(self.segments, self.manifest["model"]["segments"], self.exits,
                                  x[i:i + batch_size]) for i in range(0, max(len(x), 1), batch_size)]
            logits = np.concatenate([p[0] for p in parts])
            taken = np.concatenate([p[1] for p in parts])
            return (logits, taken) if return_exits else logits
        batches = list(self.iter_predict(x, batch_size, allow_nonfinite=allow_nonfinite))
        if batches or "inputs" in self.manifest:
            logits = np.concatenate(batches, axis=0)
        else:  # no rows: run an empty batch so the result still has the right trailing shape
            in_name, out_name = self.manifest["input"]["name"], self.manifest["output"]["name"]
            (empty,) = self.session.run([out_name], {in_name: self._checked_input(x, allow_nonfinite=allow_nonfinite)})
            logits = np.asarray(empty, dtype=np.float32)
        return (logits, np.zeros(len(logits), dtype=np.int64)) if return_exits else logits

    def _checked_input(self, x: np.ndarray, *, allow_nonfinite: bool = False) -> np.ndarray:
        spec = self.manifest["input"]
        return check_input_array(x, spec["dtype"], spec.get("shape"), allow_nonfinite=allow_nonfinite,
                                 where=str(self.path))


def load(bundle_dir: str | os.PathLike[str], *, threads: int = 1, public_key: Any = None) -> Bundle:
    """Verify a bundle's hashes, then open its model; refuse anything that does not match.

    With `public_key` (an Ed25519 key, PEM bytes or a PEM file path) the signature `manifest.sig`
    is verified before anything else is read (`export.signing`); the checks of every file are
    those of `export.bundle_check.open_bundle`. An unsigned bundle loads without a key.

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_bundle
    >>> with tempfile.TemporaryDirectory() as d:
    ...     b = load(tiny_bundle(pathlib.Path(d) / "b"))
    ...     b.manifest["model"]["format"], b.labels
    ('onnx', ['a', 'b', 'c'])
    """
    root = Path(bundle_dir)
    manifest = open_bundle(root, public_key=public_key)
    if "segments" in manifest.get("model", {}):
        return _load_segments(root, manifest, threads)
    model = _spec(manifest, "model", ("file", "format"), root)
    if model["format"] not in FORMATS.values() or FORMATS.get(Path(model["file"]).suffix) != model["format"]:
        raise BundleError(
            f"model format '{model['format']}' of file '{model['file']}' is not supported: this runtime runs "
            f"{' and '.join(f'{f} ({s})' for s, f in FORMATS.items())} files",
            where=str(root / "manifest.json"),
            fix="re-export the bundle for a target whose runtime is onnxruntime or litert",
        )
    if model["file"] not in manifest["files"]:
        raise BundleError(
            f"model file '{model['file']}' is not listed in the manifest's files, so it cannot be verified",
            where=str(root / "manifest.json"),
            fix="re-export the bundle with export.bundle.write_bundle",
        )
    inp = _spec(manifest, "input", ("name", "dtype"), root)
    out = _spec(manifest, "output", ("name",), root)
    try:
        np.dtype(inp["dtype"])
    except TypeError:
        raise BundleError(
            f"input dtype '{inp['dtype']}' is not a numpy dtype",
            where=str(root / "manifest.json"),
            fix="re-export the bundle",
        ) from None
    try:
        session = open_model(root / model["file"], threads=threads)
    except (Fail, InvalidGraph, InvalidProtobuf) as err:
        raise BundleError(
            f"onnxruntime cannot open '{model['file']}' ({str(err).splitlines()[0]})",
            where=str(root),
            fix="re-export the bundle; if it was exported fine, use an opset this onnxruntime supports",
        ) from None
    except ExportError:
        raise
    except Exception as err:  # a parser's own errors (struct.error, ValueError, ...) for a truncated file
        raise model_file_error(model["file"], root, err) from None
    tokenizer = _tokenizer(root, manifest)
    if isinstance(session, TFLiteSession):  # .tflite tensors are named by position (args_0, output_0)
        return Bundle(path=root, manifest=manifest, session=session, tokenizer=tokenizer)
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    wanted = [e.get("name") for e in model_inputs.specs(manifest)]
    if any(n not in names[0] for n in wanted) or out["name"] not in names[1]:
        raise BundleError(
            f"the manifest names input {', '.join(repr(w) for w in wanted)} and output '{out['name']}', but the model has "
            f"inputs {names[0]} and outputs {names[1]}",
            where=str(root / "manifest.json"),
            fix="re-export the bundle so the manifest and model agree",
        )
    return Bundle(path=root, manifest=manifest, session=session, tokenizer=tokenizer)


def _tokenizer(root: Path, manifest: dict[str, Any]) -> Any:
    """The bundle's text encoder (export.tokenizer), when the manifest lists a verified tokenizer file."""
    entry = manifest.get("tokenizer")
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("file") not in manifest["files"]:
        raise BundleError("the manifest's tokenizer entry names no file listed in its files",
                          where=str(root / "manifest.json"), fix="re-export the bundle with its tokenizer")
    from export.tokenizer import TextEncoder  # `tokenizers` is needed only by text bundles

    return TextEncoder(root / entry["file"], max_length=int(entry.get("max_length", 128)))


def _spec(manifest: dict[str, Any], key: str, needed: tuple[str, ...], root: Path) -> dict[str, Any]:
    entry = manifest.get(key)
    if not isinstance(entry, dict) or any(k not in entry for k in needed):
        raise BundleError(
            f"manifest entry '{key}' is missing or lacks {', '.join(repr(k) for k in needed)}",
            where=str(root / "manifest.json"),
            fix="re-export the bundle",
        )
    return entry


def _load_segments(root: Path, manifest: dict[str, Any], threads: int) -> Bundle:
    specs = manifest["model"]["segments"]
    if manifest["model"].get("format") not in FORMATS.values():
        raise BundleError(f"model format '{manifest['model'].get('format')}' is not supported: this runtime runs "
                          f"{', '.join(FORMATS.values())}", where=str(root / "manifest.json"), fix="re-export the bundle")
    if len(manifest.get("exits", [])) != len(specs) - 1:
        raise BundleError(f"{len(specs)} segments need {len(specs) - 1} exits, the manifest has "
                          f"{len(manifest.get('exits', []))}", where=str(root / "manifest.json"),
                          fix="re-export the bundle")
    sessions = []
    for spec in specs:
        if spec.get("file") not in manifest["files"]:
            raise BundleError(f"segment file {spec.get('file')!r} is not listed in the manifest's files",
                              where=str(root / "manifest.json"), fix="re-export the bundle")
        try:
            sessions.append(open_model(root / spec["file"], threads=threads))
        except ExportError:
            raise
        except Exception as err:  # a truncated or random segment file
            raise model_file_error(spec["file"], root, err) from None
    return Bundle(path=root, manifest=manifest, session=sessions[0], segments=tuple(sessions))


def run_segments(sessions: Sequence[ort.InferenceSession], specs: Sequence[dict[str, Any]],
                 exits: Sequence[dict[str, Any]], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run segments progressively on `x`: logits, and the exit each sample left at.

    Segment k (k < len(exits)) returns exit-k logits and features; samples whose exit score
    passes exit k's threshold stop there, the others' features go on to segment k+1.
    """
    n = len(x)
    out: np.ndarray | None = None
    taken = np.full(n, len(exits), dtype=np.int64)
    active = np.arange(n)
    feed = x
    for k, (session, spec) in enumerate(zip(sessions, specs, strict=True)):
        results = session.run(None, {spec["input"]: feed})
        logits = np.asarray(results[0], dtype=np.float32)
        if out is None:
            out = np.zeros((n, logits.shape[1]), dtype=np.float32)
        if k == len(exits):
            out[active] = logits
            break
        leave = policy_exits(logits, exits[k]["criterion"], exits[k]["threshold"])
        out[active[leave]] = logits[leave]
        taken[active[leave]] = k
        active, feed = active[~leave], results[1][~leave]
        if not len(active):
            break
    return (out if out is not None else np.zeros((0, 0), np.float32)), taken


def run_all_exits(sessions: Sequence[ort.InferenceSession], specs: Sequence[dict[str, Any]],
                  x: np.ndarray) -> list[np.ndarray]:
    """Every exit's logits and the final logits for all of `x` (no early stopping): for calibration."""
    out, feed = [], x
    for session, spec in zip(sessions, specs, strict=True):
        results = session.run(None, {spec["input"]: feed})
        out.append(np.asarray(results[0], dtype=np.float32))
        if len(results) > 1:
            feed = results[1]
    return out
