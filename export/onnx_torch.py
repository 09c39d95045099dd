"""An ONNX graph as a PyTorch module (onnx2torch), so an ONNX segment can go through the LiteRT export path.

A split bundle's segments are cut from the exported ONNX graph (export.split); a LiteRT end target
needs its segment as .tflite, and the project's .tflite path (export.tflite, litert-torch) starts
from a PyTorch module. onnx2torch (maintained, ENOT-AutoDL) turns the ONNX segment back into an
`fx.GraphModule` with the segment's own weights.

onnx2torch imports torchvision at import time, for its NMS and RoiAlign converters only, and
torchvision's wheels do not load against this project's CPU torch build (STACK.md: its C
extension is refused, and an installed-but-broken torchvision also breaks libraries that probe
for it). So the package is installed without torchvision, and while onnx2torch is imported a
placeholder stands in for it that raises if an NMS or RoiAlign node is ever converted — a
classifier segment has neither.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

from export.errors import ExportError

__all__ = ["onnx_to_torch"]


def _placeholder() -> dict[str, types.ModuleType]:
    def unavailable(*_: Any, **__: Any) -> Any:
        raise ExportError("this ONNX graph has an NMS or RoiAlign node, which needs torchvision",
                          fix="export this segment as .onnx (target runtime onnxruntime)")

    vision, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = unavailable  # type: ignore[attr-defined]
    vision.ops = ops  # type: ignore[attr-defined]
    return {"torchvision": vision, "torchvision.ops": ops}


def _import_onnx2torch() -> Any:
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    stand_ins = {} if importlib.util.find_spec("torchvision") else _placeholder()
    added = [name for name in stand_ins if name not in sys.modules]
    sys.modules.update({n: stand_ins[n] for n in added})
    try:
        return importlib.import_module("onnx2torch")
    except ImportError as err:
        raise ExportError(f"onnx2torch is not installed ({err})",
                          fix="run `make setup` (it installs onnx2torch for LiteRT split segments)") from None
    finally:
        for name in added:  # nothing else in the process should mistake the placeholder for torchvision
            sys.modules.pop(name, None)


def _prepared(path: str | os.PathLike[str]) -> Any:
    """The graph in the form onnx2torch 1.5 reads.

    - The torch exporter shares equal bias initializers through Identity nodes; onnx2torch looks a
      Conv's bias up among the initializers only, so the identities are folded (onnxoptimizer).
    - onnx2torch 1.5 converts operators up to opset 17 (Split-18 has no converter): the graph is
      converted to opset 17 with onnx's own version converter, which rewrites those operators.
    """
    import onnx
    import onnxoptimizer
    from onnx import version_converter

    model = onnxoptimizer.optimize(onnx.load(os.fspath(path)), ["eliminate_identity"])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    return version_converter.convert_version(model, 17) if opset > 17 else model


def onnx_to_torch(path: str | os.PathLike[str]) -> Any:
    """The ONNX model at `path` as a torch `fx.GraphModule` in eval mode (outputs in the graph's output order).

    >>> import tempfile, pathlib, numpy as np, torch
    >>> from export._examples import tiny_onnx
    >>> from export.runtime import make_session
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = tiny_onnx(pathlib.Path(d) / "m.onnx")
    ...     x = np.ones((2, 4), np.float32)
    ...     (ref,) = make_session(p).run(None, {"input": x})
    ...     got = onnx_to_torch(p)(torch.from_numpy(x)).detach().numpy()
    >>> bool(np.allclose(got, ref, atol=1e-6))
    True
    """
    module = _import_onnx2torch()
    try:
        return module.convert(_prepared(path)).eval()
    except (NotImplementedError, RuntimeError, ValueError, KeyError) as err:
        raise ExportError(f"onnx2torch cannot convert the graph ({str(err).splitlines()[0][:200]})",
                          where=os.fspath(path), fix="export this segment as .onnx (target runtime onnxruntime)") from None
