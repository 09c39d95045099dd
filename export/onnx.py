"""Export a PyTorch model to one self-contained ONNX file and check it against PyTorch.

The TorchScript exporter (`dynamo=False`) is used on purpose: it writes the weights inside
the `.onnx` file (no `.onnx.data` side file to lose when a bundle is copied) and gives the
same bytes for the same weights, so a bundle's sha256 identifies its model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.errors import ExportError, ParityError
from export.inputs import batch_len, feed
from export.runtime import input_dtype

__all__ = ["Parity", "assert_parity", "check_parity", "export_onnx"]


@dataclass(frozen=True)
class Parity:
    """How far the ONNX outputs are from PyTorch's on one batch.

    `max_rel_diff` is taken over elements whose reference magnitude exceeds `atol` (near zero
    a relative difference means nothing; `atol` governs there). `top1_agreement` compares the
    argmax of the first output, row by row. `passed` is `np.allclose(onnx, torch, rtol, atol)`.
    """

    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    passed: bool


def export_onnx(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    input_name: str | Sequence[str] = "input",
    output_name: str | Sequence[str] = "logits",
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Path:
    """Export `model` in eval mode to a single ONNX file at `path` (its train/eval mode is restored).

    With `dynamic_batch`, dimension 0 of every input and output is named `batch` and may vary.
    `dynamic_axes` (input name -> {dim: axis name}, e.g. `{1: "sequence"}` for token ids) adds
    more dynamic axes; an output shares an input's named axis when its dim has that input's size
    (the sequence axis of per-token outputs).

    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = export_onnx(torch.nn.Linear(4, 3), (torch.zeros(1, 4),), pathlib.Path(d) / "m.onnx")
    ...     sorted(q.name for q in p.parent.iterdir())
    ['m.onnx']
    """
    path = Path(path)
    inputs, outputs = _names(input_name), _names(output_name)
    if len(inputs) != len(example_inputs):
        raise ExportError(
            f"{len(example_inputs)} example inputs but {len(inputs)} input names {inputs}",
            where=str(path),
            fix="pass one input name per example input",
        )
    axes: dict[str, dict[int, str]] | None = (
        {name: {0: "batch"} for name in inputs + outputs} if dynamic_batch else None)
    if dynamic_axes:
        axes = axes or {}
        for name, dims in dynamic_axes.items():
            axes.setdefault(name, {}).update({int(k): v for k, v in dims.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with eval_mode(model), warnings.catch_warnings():
        # The legacy-exporter deprecation is expected: dynamo=False is a deliberate choice (see module doc).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            torch.onnx.export(
                model,
                tuple(example_inputs),
                os.fspath(path),
                dynamo=False,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        except RuntimeError as err:  # torch.onnx.OnnxExporterError is one
            raise ExportError(
                f"torch.onnx could not export the model at opset {opset} ({str(err).splitlines()[0]})",
                where=str(path),
                fix="replace the unsupported op, or try another opset",
            ) from err
    side_files = sorted(p.name for p in path.parent.glob(path.name + ".data"))
    if side_files:
        raise ExportError(
            f"the export wrote weights to a side file {side_files}; bundles need one self-contained file",
            where=str(path),
            fix="keep the model under 2 GB so its weights fit inside the .onnx file",
        )
    onnx.checker.check_model(os.fspath(path))
    return path


def check_parity(
    onnx_path: str | os.PathLike[str],
    model: torch.nn.Module,
    x: np.ndarray,
    *,
    atol: float,
    rtol: float,
) -> Parity:
    """Run `x` through the ONNX file in onnxruntime and through `model` in PyTorch; compare.

    >>> import tempfile, pathlib, torch, numpy as np
    >>> m = torch.nn.Linear(4, 3)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = export_onnx(m, (torch.zeros(1, 4),), pathlib.Path(d) / "m.onnx")
    ...     check_parity(p, m, np.ones((8, 4), np.float32), atol=1e-5, rtol=1e-5).passed
    True
    """
    session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    # several inputs come as a dict or a record array; `model` takes them positionally in graph order
    entries = [{"name": i.name, "dtype": input_dtype(session, k).name, "shape": None}
               for k, i in enumerate(session.get_inputs())]
    inputs = feed(entries, x, where=str(onnx_path))
    got = session.run(None, inputs)
    with eval_mode(model), torch.no_grad():
        ref = model(*(torch.from_numpy(a).to(_device(model)) for a in inputs.values()))
    n = batch_len(inputs)
    refs = [t.detach().cpu().numpy() for t in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    if len(got) != len(refs) or any(a.shape != b.shape for a, b in zip(got, refs, strict=True)):
        raise ParityError(
            f"ONNX outputs {[a.shape for a in got]} do not match PyTorch outputs {[b.shape for b in refs]}",
            where=str(onnx_path),
            fix="export again from this model; the file belongs to a different model or input shape",
        )
    abs_diff = np.concatenate(
        [np.abs(a.astype(np.float64) - b).ravel() for a, b in zip(got, refs, strict=True)]
    )
    ref_mag = np.concatenate([np.abs(b.astype(np.float64)).ravel() for b in refs])
    big = ref_mag > atol
    top1 = (
        np.mean(got[0].reshape(n, -1).argmax(1) == refs[0].reshape(n, -1).argmax(1))
        if n
        else 1.0
    )
    return Parity(
        max_abs_diff=float(abs_diff.max(initial=0.0)),
        max_rel_diff=float((abs_diff[big] / ref_mag[big]).max(initial=0.0)),
        top1_agreement=float(top1),
        passed=bool(np.all(abs_diff <= atol + _scaled(rtol, ref_mag))),
    )


def assert_parity(
    onnx_path: str | os.PathLike[str],
    model: torch.nn.Module,
    x: np.ndarray,
    *,
    atol: float,
    rtol: float,
) -> Parity:
    """`check_parity`, raising `ParityError` with the numbers when it does not pass.

    >>> import tempfile, pathlib, torch, numpy as np
    >>> m = torch.nn.Linear(4, 3)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = export_onnx(m, (torch.zeros(1, 4),), pathlib.Path(d) / "m.onnx")
    ...     with torch.no_grad():
    ...         _ = m.bias.add_(1.0)  # now the file is stale
    ...     assert_parity(p, m, np.ones((8, 4), np.float32), atol=1e-5, rtol=0.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    export.errors.ParityError: ...max |diff| 1 > atol 1e-05 + rtol 0 * |ref|...
    """
    parity = check_parity(onnx_path, model, x, atol=atol, rtol=rtol)
    if not parity.passed:
        raise ParityError(
            f"ONNX output differs from PyTorch on {_rows(x)} inputs: max |diff| {parity.max_abs_diff:.3g} > "
            f"atol {atol:g} + rtol {rtol:g} * |ref| (max relative diff {parity.max_rel_diff:.3g}, "
            f"top-1 agreement {parity.top1_agreement:.1%})",
            where=str(onnx_path),
            fix="check for ops that export differently (dropout or batch norm in train mode, data-dependent "
            "control flow), re-export if the model changed, or use the target's tolerance if this is a "
            "quantized model",
        )
    return parity


def _scaled(rtol: float, ref_mag: np.ndarray) -> np.ndarray:
    # An infinite rtol ("only top-1 matters") must not turn 0 * inf into NaN and fail exact zeros.
    with np.errstate(invalid="ignore"):
        return np.where(ref_mag > 0, rtol * ref_mag, 0.0)


def _rows(x: object) -> int:
    return len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)  # type: ignore[arg-type]


def _names(name: str | Sequence[str]) -> list[str]:
    return [name] if isinstance(name, str) else list(name)


def _device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with `model` in eval mode, then give every module back the mode it had.

    >>> m = torch.nn.Sequential(torch.nn.Dropout()).train()
    >>> with eval_mode(m):
    ...     m.training
    False
    >>> m.training
    True
    """
    # Export and compare in eval mode, but hand the model back as it came: the caller may be mid-training.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
