"""Export a PyTorch model to one LiteRT (.tflite) file through litert-torch, and check it.

fp32: `litert_torch.convert`. int8: PT2E static quantization (torchao `prepare_pt2e` /
`convert_pt2e` with litert-torch's `PT2EQuantizer`, symmetric int8 weights, per channel by
default), calibrated on real samples; the file then takes and returns int8 tensors, which the
device runtime (`export.runtime`) quantizes and dequantizes with the interpreter's scale and
zero point. The check runs the file through that same runtime, so what is verified is what a
device executes.

The graph is traced at the example inputs' batch size (1): litert-torch cannot lower a dynamic
batch through Conv1d, and a device runs batch 1; the runtime loops over larger batches.
Tensor names (litert-torch writes each tensor's full module path) are debug info the interpreter
never reads; they are replaced by short ones, which saves ~10 KiB per file and keeps the int8/fp32
size ratio about the weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.errors import ExportError, ParityError
from export.onnx import Parity, eval_mode
from export.runtime import open_model

__all__ = ["assert_parity_tflite", "check_parity_tflite", "export_tflite"]


def export_tflite(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    calib: np.ndarray | None = None,
    per_channel: bool = True,
    calibration: str = "mse",
) -> Path:
    """Convert `model` (in eval mode) to a .tflite file at `path`: fp32, or static int8 given `calib`.

    `calib` is a float array of calibration samples `[N, ...]` (the calib split); each sample sets
    the activation ranges of the int8 model, observed by torch.ao's `HistogramObserver` (`calibration="mse"`,
    litert-torch's own choice: the range with the least L2 quantization error) or `MinMaxObserver`
    (`"minmax"`). (The example is skipped in the doctest run: a conversion
    takes ~10 s; tests/export/test_tflite.py runs it.)

    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
    ...     export_tflite(torch.nn.Linear(4, 3), (torch.zeros(1, 4),), pathlib.Path(d) / "m.tflite").name
    'm.tflite'
    """
    with _quiet_import():
        import litert_torch  # heavy (jax, MLIR): imported only when a .tflite is asked for

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example_inputs = tuple(t.detach().cpu() for t in example_inputs)
    with eval_mode(model), _quiet(), torch.no_grad():
        try:
            if calib is None:
                edge = litert_torch.convert(model, example_inputs)
            else:
                graph, quant_config = _pt2e_int8(model, example_inputs, calib, per_channel, calibration)
                edge = litert_torch.convert(graph, example_inputs, quant_config=quant_config)
            data = edge.model_content()
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
            raise ExportError(
                f"litert-torch could not convert the model to .tflite ({str(err).splitlines()[0][:300]})",
                where=str(path),
                fix="replace the unsupported op, or export this variant as onnx (variant `export: [onnx]`)",
            ) from err
    path.write_bytes(_short_tensor_names(data))
    return path


def _pt2e_int8(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], calib: np.ndarray,
               per_channel: bool, calibration: str = "mse") -> tuple[torch.nn.Module, Any]:
    import dataclasses

    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if len(calib) == 0:
        raise ExportError("int8 .tflite needs calibration samples, got none", fix="give a non-empty calib split")
    observers = {"mse": "HistogramObserver", "minmax": "MinMaxObserver"}
    if calibration not in observers:
        raise ExportError(f"calibration {calibration!r} has no PT2E observer for .tflite",
                          fix=f"use one of {', '.join(observers)}")
    config = pq.get_symmetric_quantization_config(is_per_channel=per_channel)
    if calibration == "minmax":  # litert-torch's config observes activations with HistogramObserver
        from torchao.quantization.pt2e import MinMaxObserver

        act = dataclasses.replace(config.input_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    quantizer = pq.PT2EQuantizer().set_global(config)
    graph = torch.export.export(model, example_inputs).module()
    prepared = prepare_pt2e(graph, quantizer)
    batch = example_inputs[0].shape[0]
    xs = torch.from_numpy(np.asarray(calib, dtype=np.float32))
    for start in range(0, len(xs) - batch + 1, batch):  # the graph is traced at a fixed batch size
        prepared(xs[start:start + batch])
    # fold_quantize=True leaves int8 weights the LiteRT lowering rejects (stablehlo.uniform_dequantize).
    converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    # The exported graph's ops are already in eval form; the root's flag only makes litert-torch warn.
    converted.training = False
    return converted, QuantConfig(pt2e_quantizer=quantizer)


def _short_tensor_names(data: bytes) -> bytes:
    """The same model with tensors renamed `t<index>` (graph inputs and outputs keep their names)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for graph in model.subgraphs or []:
        # the object API gives index lists as numpy arrays (no truth value): test against None
        keep = {int(i) for ids in (graph.inputs, graph.outputs) if ids is not None for i in ids}
        for i, tensor in enumerate(graph.tensors or []):
            if i not in keep:
                tensor.name = f"t{i}".encode()
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Importing litert-torch imports torchao, which logs a warning for each CUDA kernel library it
    cannot load on a CPU-only machine, and torch logs a deprecation about one of torchao's enums:
    noise for the user, nothing wrong. Silenced for the import only. The converter's C++ logging
    (absl: "Estimated count of arithmetic ops") reads TF_CPP_MIN_LOG_LEVEL when it loads: warnings
    and up stay visible, and a level the user set is kept."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # litert-torch draws a progress tree on stdout unless this variable says no; restore it afterwards.
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export / torchao deprecation chatter, not about this model
            yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


def check_parity_tflite(
    tflite_path: str | os.PathLike[str],
    model: torch.nn.Module,
    x: np.ndarray,
    *,
    atol: float,
    rtol: float,
) -> Parity:
    """Run `x` through the .tflite file in LiteRT (via `export.runtime`) and `model` in PyTorch; compare.

    Same measures as `export.onnx.check_parity`; int8 outputs are dequantized first.
    """
    got = open_model(tflite_path).run(None, {"input": np.asarray(x, dtype=np.float32)})
    with eval_mode(model), torch.no_grad():
        ref = model(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    refs = [t.detach().cpu().numpy() for t in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    if len(got) != len(refs) or any(a.shape != b.shape for a, b in zip(got, refs, strict=True)):
        raise ParityError(
            f".tflite outputs {[a.shape for a in got]} do not match PyTorch outputs {[b.shape for b in refs]}",
            where=str(tflite_path),
            fix="export again from this model; the file belongs to a different model or input shape",
        )
    abs_diff = np.concatenate([np.abs(a.astype(np.float64) - b).ravel() for a, b in zip(got, refs, strict=True)])
    ref_mag = np.concatenate([np.abs(b.astype(np.float64)).ravel() for b in refs])
    big = ref_mag > atol
    with np.errstate(invalid="ignore"):  # rtol = inf means "top-1 only": 0 * inf must not fail exact zeros
        allowed = atol + np.where(ref_mag > 0, rtol * ref_mag, 0.0)
    n = len(x)
    top1 = np.mean(got[0].reshape(n, -1).argmax(1) == refs[0].reshape(n, -1).argmax(1)) if n else 1.0
    return Parity(
        max_abs_diff=float(abs_diff.max(initial=0.0)),
        max_rel_diff=float((abs_diff[big] / ref_mag[big]).max(initial=0.0)),
        top1_agreement=float(top1),
        passed=bool(np.all(abs_diff <= allowed)),
    )


def assert_parity_tflite(
    tflite_path: str | os.PathLike[str],
    model: torch.nn.Module,
    x: np.ndarray,
    *,
    atol: float,
    rtol: float,
    top1: float | None = None,
) -> Parity:
    """`check_parity_tflite`, raising `ParityError` with the numbers when it fails.

    With `top1` (an int8 file), only top-1 agreement is checked, against that share.
    """
    if top1 is not None:
        parity = check_parity_tflite(tflite_path, model, x, atol=float("inf"), rtol=float("inf"))
        if parity.top1_agreement < top1:
            raise ParityError(
                f"int8 .tflite agrees with PyTorch on top-1 for {parity.top1_agreement:.1%} of {len(x)} samples, "
                f"below the target's {top1:.0%}",
                where=str(tflite_path),
                fix="skip ptq_int8 for this variant, calibrate on more samples, or fine-tune with QAT",
            )
        return parity
    parity = check_parity_tflite(tflite_path, model, x, atol=atol, rtol=rtol)
    if not parity.passed:
        raise ParityError(
            f".tflite output differs from PyTorch on {len(x)} inputs: max |diff| {parity.max_abs_diff:.3g} > "
            f"atol {atol:g} + rtol {rtol:g} * |ref| (top-1 agreement {parity.top1_agreement:.1%})",
            where=str(tflite_path),
            fix="check for ops that convert differently (dropout or batch norm in train mode), or re-export",
        )
    return parity
