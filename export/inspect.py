"""What a bundle holds, verified: files and hashes, input spec, operators, tensor precisions, sizes, parity.

Torch-free, so `edgetier inspect` and a device see the same thing. Parity is re-run from the
bundle alone: `parity.npz` (written by the exporter) holds a few test inputs and the PyTorch
outputs for them; the model is run again in its runtime and compared with the manifest's
tolerance (atol / rtol for float models, top-1 agreement for quantized ones).
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle_check import model_file_error, read_parity
from export.errors import BundleError

__all__ = ["PARITY_FILE", "describe", "parity_npz", "rerun_parity"]

PARITY_FILE = "parity.npz"


def parity_npz(x: np.ndarray, reference: np.ndarray) -> bytes:
    """The bytes of `parity.npz`: inputs `x` and the PyTorch outputs `reference` for them.

    >>> data = np.load(io.BytesIO(parity_npz(np.zeros((2, 4), np.float32), np.ones((2, 3), np.float32))))
    >>> data["x"].shape, data["reference"].shape
    ((2, 4), (2, 3))
    """
    buf = io.BytesIO()
    np.savez(buf, x=np.asarray(x, np.float32), reference=np.asarray(reference, np.float32))
    return buf.getvalue()


def rerun_parity(bundle_dir: str | os.PathLike[str], *, public_key: Any = None) -> dict[str, Any] | None:
    """Run the stored inputs through the bundle's model again; None when the bundle has no `parity.npz`."""
    from export.runtime import load

    root = Path(bundle_dir)
    bundle = load(root, public_key=public_key)
    if PARITY_FILE not in bundle.manifest["files"]:
        return None
    x, ref = read_parity(root, bundle.manifest)
    got = bundle.predict(x)
    tol = bundle.manifest.get("target", {}).get("tolerance") or {}
    diff = np.abs(got.astype(np.float64) - ref)
    top1 = float(np.mean(got.argmax(1) == ref.argmax(1))) if len(x) else 1.0
    if bundle.manifest["model"].get("precision", "fp32") == "fp32" and not bundle.segments:
        passed = bool(np.all(diff <= tol.get("atol", 1e-4) + tol.get("rtol", 1e-3) * np.abs(ref)))
        rule = f"|diff| <= atol {tol.get('atol', 1e-4):g} + rtol {tol.get('rtol', 1e-3):g} * |ref|"
    else:  # quantized (or exit-policy) outputs are compared by their decision
        need = tol.get("quantized_top1_agreement", 0.97)
        passed, rule = top1 >= need, f"top-1 agreement >= {need:.0%}"
    return {"samples": len(x), "max_abs_diff": float(diff.max(initial=0.0)), "top1_agreement": top1,
            "rule": rule, "passed": passed}


def describe(bundle_dir: str | os.PathLike[str], *, public_key: Any = None) -> dict[str, Any]:
    """Verify every hash, then list the bundle's files, input, model files with operators and tensor dtypes.

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_bundle
    >>> with tempfile.TemporaryDirectory() as d:
    ...     info = describe(tiny_bundle(pathlib.Path(d) / "b"))
    >>> info["models"][0]["operators"], info["models"][0]["tensor_precisions"]
    ({'Gemm': 1}, {'float32': 2})
    """
    root = Path(bundle_dir)
    from export.runtime import load

    # the runtime's own load first: a file it cannot open gives the paragraph a device would give
    manifest = load(root, public_key=public_key).manifest
    model = manifest.get("model", {})
    files = [s["file"] for s in model.get("segments", [])] or [model.get("file")]
    files += [a["file"] for a in model.get("alternates", [])]
    models = []
    for name in files:
        if name not in manifest["files"]:
            raise BundleError(f"model file {name!r} is not listed in the manifest's files", where=str(root),
                              fix="re-export the bundle")
        try:
            graph = _graph(root / name)
        except Exception as err:  # protobuf DecodeError, flatbuffer struct.error, ...: a truncated or random file
            raise model_file_error(name, root, err) from None
        models.append({"file": name, "bytes": manifest["files"][name]["bytes"], **graph})
    return {"manifest": manifest, "files": manifest["files"], "input": manifest.get("input"), "models": models}


def _graph(path: Path) -> dict[str, Any]:
    if path.suffix == ".tflite":
        from ai_edge_litert import schema_py_generated as schema

        m = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
        codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        ops: Counter[str] = Counter()
        tensors: Counter[str] = Counter()
        for graph in m.subgraphs or []:
            for op in graph.operators or []:
                code = m.operatorCodes[op.opcodeIndex]
                ops[codes.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")] += 1
            for t in graph.tensors or []:
                tensors[types.get(t.type, str(t.type))] += 1
        return {"format": "tflite", "operators": dict(sorted(ops.items())), "tensor_precisions": dict(sorted(tensors.items()))}
    import onnx
    from onnx import helper

    g = onnx.load(os.fspath(path)).graph
    ops = Counter(n.op_type for n in g.node)
    tensors = Counter(np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).name for t in g.initializer)
    return {"format": "onnx", "operators": dict(sorted(ops.items())), "tensor_precisions": dict(sorted(tensors.items()))}
