"""`compress.export`: a verified bundle from any model, in the user's own script.

What it does, in order: read the model through its adapter (`compress.core.adapter`: inputs,
dynamic axes, which output is the prediction); export fp32 for the target's runtime (.onnx, or
.tflite through litert-torch for one-input models); check the file against PyTorch within the
target's tolerance; optionally quantize to int8 — onnxruntime *dynamic* int8 (per-channel) for
MatMul-heavy graphs such as transformers, static QDQ calibrated on `calib` for convolutional
ones, PT2E static int8 for LiteRT — and check it again (top-1 agreement for classifiers, mean
cosine to PyTorch for embeddings); measure bytes and batch-1 latency in the runtime; write the
bundle (manifest listing every input, sha256 of every file, optional `tokenizer.json`, report)
atomically and return it loaded by `export.runtime`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from compress.core.adapter import AdaptedModule, ModelAdapter, OutputSpec
from compress.core.errors import EdgetierError
from compress.core.measure import count_macs, count_nonzero, count_params
from compress.deploy import toolkit_version
from compress.targets import Target, load_target
from export.bundle import write_bundle
from export.errors import ParityError
from export.measure import compressed_bytes, latency_ms, model_stats
from export.onnx import check_parity, eval_mode, export_onnx
from export.quantize import quantize_int8_static
from export.quantize_dynamic import fuse_transformer, int8_method, quantize_int8_dynamic
from export.report import render_markdown
from export.runtime import Bundle, load, open_model
from export.smoothquant import SmoothResult, smooth_activations

__all__ = ["export"]

MIN_EMBEDDING_COSINE = 0.98  # an int8 embedding model must keep this mean cosine to PyTorch (issue 12's bar)
PARITY_ROWS = 64


def export(model: nn.Module, *, target: Target | str, out_dir: str | Path, example_inputs: Any = None,
           data: Any = None, calib: Any = None, name: str = "model", quantize: Literal["none", "int8"] = "none",
           output: OutputSpec | str | None = None, adapter: ModelAdapter | None = None,
           tokenizer: str | Path | None = None, max_length: int = 128, labels: Sequence[str] = (),
           exclude: Sequence[str] = (), smoothquant: float | None = None) -> Bundle:
    """Export `model` for `target` into the bundle folder `out_dir`, verified, and return it loaded.

    `example_inputs` (a tensor, tuple or dict of name -> tensor) or `data` (rows to check parity
    on: an array, a record array with one field per input, or a dict of arrays) say what the
    model takes; `calib` (same forms) calibrates static int8. `output` picks the prediction (an
    `OutputSpec`, or a field name such as "logits"); `tokenizer` is a `tokenizer.json` (or a folder
    holding one) shipped with the bundle so `bundle.predict(["text", ...])` works; `exclude` keeps
    the named MatMul nodes in float under dynamic int8. `smoothquant` (an alpha in (0, 1), e.g. 0.5)
    smooths the activations LayerNorms write into weight MatMuls before int8 (`export.smoothquant`),
    calibrated on the first 256 rows of `calib`; it needs `quantize="int8"`, an ONNX target and
    `calib`.

    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     bundle = export(torch.nn.Linear(4, 3), target="jetson_orin_nano", out_dir=d + "/b",
    ...                     example_inputs=torch.zeros(1, 4))
    ...     bundle.predict(np.zeros((2, 4), np.float32)).shape
    (2, 3)
    """
    spec = load_target(target) if isinstance(target, str) else target
    check = _rows(data if data is not None else example_inputs, where="data / example_inputs")
    if isinstance(output, str):
        output = OutputSpec(select=output)
    if isinstance(model, AdaptedModule) and adapter is None and output is None:
        adapter, model = model.adapter, model.model  # e.g. from compress.models.hf.load_hf: keep its spec
    if adapter is None:
        adapter = ModelAdapter.from_model(model, _first(check, model), output=output)
    rows = adapter.tensors(check)
    module = adapter.module(model).eval()
    example = tuple(v[:1] for v in rows.values())
    x_check = {k: v[:PARITY_ROWS].numpy() for k, v in rows.items()}
    notes: list[str] = []
    fmt = spec.export_format
    if fmt == "tflite" and len(adapter.inputs) > 1:
        notes.append(f"LiteRT: this model takes {len(adapter.inputs)} inputs ({', '.join(adapter.names)}); "
                     "the .tflite path here carries one-input models, so the .onnx was exported and measured in "
                     "onnxruntime instead")
        fmt = "onnx"
    _check_smoothquant(smoothquant, quantize=quantize, fmt=fmt, calib=calib)
    tok_file = _tokenizer_file(tokenizer) if tokenizer is not None else None
    with tempfile.TemporaryDirectory(prefix="edgetier-export-") as tmp:
        tmp_dir = Path(tmp)
        fp32, parity = _export_fp32(module, adapter, example, x_check, tmp_dir, fmt, spec)
        final, precision, method, smoothed = fp32, "fp32", None, None
        extra: dict[str, Any] = {}
        if quantize == "int8":
            final, method, smoothed = _int8(module, adapter, fp32, tmp_dir, fmt, calib, example, exclude, smoothquant)
            precision = "int8"
            extra = _int8_check(final, module, x_check, spec, name, embedding=_is_embedding(adapter))
            if smoothed is not None:
                notes.append(_smooth_note(smoothed))
            notes.append(f"int8 by {method}: " + {
                "onnxruntime dynamic (after onnxruntime transformer fusion)": "Attention / LayerNorm / Gelu fused "
                "into onnxruntime contrib ops (the file runs in onnxruntime only), then weights int8 per output "
                "channel, activations quantized per batch at run time",
                "onnxruntime dynamic": "weights int8 per output channel, activations quantized per batch at run "
                "time (the MatMul-heavy graph of a transformer; no calibration needed)",
                "onnxruntime static QDQ": "int8 weights and activations calibrated on `calib` (a convolutional "
                "graph)",
                "LiteRT PT2E static": "int8 weights and activations calibrated on `calib`"}[method])
        one = {k: v[:1] for k, v in x_check.items()}
        timing = latency_ms(final, one if len(one) > 1 else next(iter(one.values())), threads=1)
        stats = model_stats(final)
        entry = {"name": name, "target": spec.name, "tier": spec.tier,
                 "runtime": "litert" if fmt == "tflite" else "onnxruntime", "format": fmt, "precision": precision,
                 "int8_method": method, "bytes": stats["bytes"], "fp32_bytes": fp32.stat().st_size,
                 "params": stats["params"], "torch_params": count_params(model), "nonzero_params": count_nonzero(model),
                 "compressed_bytes": compressed_bytes(final), "macs": _macs(module, example),
                 "accuracy": None, "torch_accuracy": None, "estimated_latency_ms": None, "latency_ms": timing.median_ms,
                 "latency_p90_ms": timing.p90_ms, "latency_threads": timing.threads,
                 "parity": {"max_abs_diff": parity.max_abs_diff, "top1_agreement": parity.top1_agreement,
                            "samples": len(next(iter(x_check.values()))), "atol": spec.tolerance.atol,
                            "rtol": spec.tolerance.rtol, **extra},
                 "notes": notes}
        if smoothed is not None:
            entry["smoothquant"] = smoothed.to_dict()
        files: dict[str, Path | bytes] = {f"model.{fmt}": final}
        manifest = _manifest(spec, adapter, name, fmt, precision, labels, output_shape=_out_shape(module, example))
        if tok_file is not None:
            files["tokenizer.json"] = tok_file
            manifest["tokenizer"] = {"file": "tokenizer.json", "max_length": max_length,
                                     "padding": "longest in batch", "truncation": max_length}
        report = {"recipe": "python-api", "models": [entry], "notes": notes}
        write_bundle(out_dir, files=files, manifest=manifest, report=report, report_md=render_markdown(report))
    return load(out_dir)


def _rows(x: Any, *, where: str) -> Any:
    if x is None:
        raise EdgetierError("compress.export needs `example_inputs` or `data` to trace and check the model",
                            where=where, fix="pass example_inputs=torch.zeros(1, ...) or data=<a few real rows>")
    return x


def _first(x: Any, model: nn.Module) -> Any:
    """Torch tensors for the adapter's one forward pass (few rows: it only reads types and names)."""
    if isinstance(x, np.ndarray) and x.dtype.names:
        return {n: torch.from_numpy(np.ascontiguousarray(x[n][:2])) for n in x.dtype.names}
    if isinstance(x, Mapping):
        return {k: v[:2] if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)[:2]) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)) for v in x)
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _export_fp32(module: nn.Module, adapter: ModelAdapter, example: tuple[torch.Tensor, ...],
                 x_check: dict[str, np.ndarray], tmp: Path, fmt: str, spec: Target) -> tuple[Path, Any]:
    tol = spec.tolerance
    if fmt == "tflite":
        from export.tflite import check_parity_tflite, export_tflite

        path = export_tflite(module, example, tmp / "model.fp32.tflite")
        parity = check_parity_tflite(path, module, next(iter(x_check.values())), atol=tol.atol, rtol=tol.rtol)
    else:
        path = export_onnx(module, example, tmp / "model.fp32.onnx", input_name=adapter.names,
                           output_name="prediction", dynamic_axes=adapter.dynamic_axes())
        parity = check_parity(path, module, x_check, atol=tol.atol, rtol=tol.rtol)
    if not parity.passed:
        raise ParityError(f"the fp32 {fmt} file differs from PyTorch by {parity.max_abs_diff:.3g} (tolerance atol "
                          f"{tol.atol}, rtol {tol.rtol})", where=str(path.name),
                          fix="check for ops that export differently (dropout or batch norm in train mode, "
                          "data-dependent control flow), or report the model")
    return path, parity


def _attention_shape(module: nn.Module) -> dict[str, int]:
    """Head count and q/k/v width for onnxruntime's Attention fusion, from a Hugging Face config. A
    head-pruned model's heads no longer span the hidden width: the width given is heads × head size
    (onnxruntime then fuses with q/k/v narrower than the input; measured on a pruned BERT: max |diff|
    4.8e-7 to the unfused graph — and the bundle's parity check runs on the result either way)."""
    config = getattr(getattr(module, "model", module), "config", None)
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if not isinstance(heads, int) or not isinstance(hidden, int) or heads < 1:
        return {}
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return {"num_heads": heads, "hidden_size": heads * head_dim}


def _int8(module: nn.Module, adapter: ModelAdapter, fp32: Path, tmp: Path, fmt: str, calib: Any,
          example: tuple[torch.Tensor, ...], exclude: Sequence[str],
          smoothquant: float | None = None) -> tuple[Path, str, SmoothResult | None]:
    if fmt == "tflite":
        from export.tflite import export_tflite

        x = _calib(calib, adapter)
        return (export_tflite(module, example, tmp / "model.tflite", calib=next(iter(x.values()))),
                "LiteRT PT2E static", None)
    if int8_method(fp32) == "dynamic":
        fused = fuse_transformer(fp32, tmp / "model.fused.onnx", **_attention_shape(module))
        method = "onnxruntime dynamic" + (" (after onnxruntime transformer fusion)" if fused else "")
        src, smoothed = _smooth(tmp / "model.fused.onnx", tmp, calib, adapter, smoothquant)
        return quantize_int8_dynamic(src, tmp / "model.onnx", per_channel=True, exclude=exclude), method, smoothed
    x = _calib(calib, adapter)
    if len(x) > 1:
        raise EdgetierError("static int8 of a multi-input convolutional model is not supported",
                            fix="export fp32, or quantize with quantization-aware training (qat)")
    src, smoothed = _smooth(fp32, tmp, calib, adapter, smoothquant, insert_mul=False)
    return quantize_int8_static(src, tmp / "model.onnx", next(iter(x.values()))), "onnxruntime static QDQ", smoothed


def _check_smoothquant(alpha: float | None, *, quantize: str, fmt: str, calib: Any) -> None:
    """Refuse `smoothquant` where it cannot act, before anything is exported or written."""
    if alpha is None:
        return
    where = "compress.export(smoothquant=...)"
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise EdgetierError(f"smoothquant alpha {alpha!r} is not a number strictly between 0 and 1", where=where,
                            fix="pass smoothquant=0.5 (SmoothQuant's default) or leave it out")
    if quantize != "int8":
        raise EdgetierError("smoothquant prepares the graph for int8 but quantize is not 'int8'", where=where,
                            fix="pass quantize='int8', or leave smoothquant out")
    if fmt != "onnx":
        raise EdgetierError(f"smoothquant rewrites the ONNX graph before onnxruntime's quantizer; this target exports "
                            f"{fmt} (int8 by PT2E)", where=where,
                            fix="leave smoothquant out for this target, or export to an onnxruntime target")
    if calib is None:
        raise EdgetierError("smoothquant needs calibration rows to measure activation ranges", where=where,
                            fix="pass calib=<a few hundred representative inputs, no labels needed>")


def _smooth(src: Path, tmp: Path, calib: Any, adapter: ModelAdapter, alpha: float | None, *,
            insert_mul: bool = True) -> tuple[Path, SmoothResult | None]:
    """Static QDQ smooths only what folds into a LayerNorm: it would quantize an inserted Mul's input,
    outliers and all (measured 2026-12-07 on a tiny ViT with injected outlier channels: the Mul form left the
    static int8 error at 0.21 of the output norm vs 0.22 without smoothing; folded, 0.09)."""
    if alpha is None:
        return src, None
    result = smooth_activations(src, tmp / "model.smooth.onnx", _calib(calib, adapter), alpha=float(alpha),
                                insert_mul=insert_mul)
    if not result.matmuls:
        raise EdgetierError(
            "smoothquant found no LayerNorm output read by weight MatMuls to smooth in this graph" + (
                "" if insert_mul else " (static int8: only a LayerNorm read by MatMuls alone can take the scales; "
                "a convolutional graph has none)"), where="compress.export(smoothquant=...)",
            fix="leave smoothquant out for this model")
    return tmp / "model.smooth.onnx", result


def _smooth_note(result: SmoothResult) -> str:
    return (f"SmoothQuant-style smoothing (alpha {result.alpha}) before int8: {len(result.folded) + len(result.mul)} "
            f"LayerNorm outputs smoothed ({len(result.folded)} folded into their LayerNorm, {len(result.mul)} divided "
            f"by an inserted Mul), weight rows of {result.matmuls} MatMuls scaled; channel-range spread (max / median "
            f"of per-channel max|x|) {result.spread_before:.1f} -> {result.spread_after:.1f} on {result.calib_rows} "
            "calibration rows")


def _calib(calib: Any, adapter: ModelAdapter) -> dict[str, np.ndarray]:
    if calib is None:
        raise EdgetierError("static int8 needs calibration rows", where="compress.export(calib=...)",
                            fix="pass calib=<a few hundred representative inputs> (e.g. the training split)")
    return {k: v.numpy() for k, v in adapter.tensors(calib).items()}


def _is_embedding(adapter: ModelAdapter) -> bool:
    """Pooled or hidden-state outputs are embeddings (compared by cosine); the rest are class scores."""
    out = adapter.output
    return out.pooling != "none" or out.normalize or out.select in ("last_hidden_state", "pooler_output")


def _int8_check(path: Path, module: nn.Module, x_check: dict[str, np.ndarray], spec: Target,
                name: str, *, embedding: bool) -> dict[str, Any]:
    """How close the int8 file is to PyTorch: top-1 agreement for classifiers, mean cosine always."""
    session = open_model(path, threads=2)
    if len(x_check) == 1:
        got = session.run(None, {session.get_inputs()[0].name: next(iter(x_check.values()))})[0]
    else:
        got = session.run(None, x_check)[0]
    with eval_mode(module), torch.no_grad():
        ref = module(*(torch.from_numpy(v) for v in x_check.values())).numpy()
    got, ref = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    cosine = float(np.mean((got * ref).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1),
                                                           1e-12)))
    top1 = float(np.mean(got.argmax(1) == ref.argmax(1)))
    out = {"int8_mean_cosine": cosine, "int8_top1_agreement": top1}
    if not embedding and top1 < spec.tolerance.quantized_top1_agreement:
        raise ParityError(f"int8 agrees with PyTorch on top-1 for {top1:.1%} of {len(got)} rows, below the "
                          f"target's {spec.tolerance.quantized_top1_agreement:.0%}", where=name,
                          fix="export fp32, or fine-tune with quantization-aware training")
    if embedding and cosine < MIN_EMBEDDING_COSINE:
        raise ParityError(f"int8 outputs keep a mean cosine of {cosine:.4f} to PyTorch on {len(got)} rows, below "
                          f"{MIN_EMBEDDING_COSINE}", where=name,
                          fix="keep the most sensitive MatMuls in float with exclude=[...], or export fp32")
    return out


def _macs(module: nn.Module, example: tuple[torch.Tensor, ...]) -> int:
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:  # FlopCounterMode trips over parameters used under no_grad (see compress.deploy)
        p.requires_grad_(False)
    try:
        with eval_mode(module):
            return count_macs(module, example)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _out_shape(module: nn.Module, example: tuple[torch.Tensor, ...]) -> list[int | None]:
    with eval_mode(module), torch.no_grad():
        out = module(*example)
    return [None, *out.shape[1:]]


def _manifest(spec: Target, adapter: ModelAdapter, name: str, fmt: str, precision: str, labels: Sequence[str],
              *, output_shape: list[int | None]) -> dict[str, Any]:
    inputs = adapter.to_manifest()
    return {
        "format_version": 1,
        "toolkit": {"name": "edgetier", "version": toolkit_version()},
        "recipe": {"name": "python-api", "sha256": None},
        "variant": name,
        "target": {"name": spec.name, "tier": spec.tier, "runtime": spec.runtime,
                   "compute": spec.compute.model_dump(mode="json"),
                   "link": spec.link.model_dump(mode="json") if spec.link else None,
                   "tolerance": spec.tolerance.model_dump(mode="json")},
        "input": {k: inputs[0][k] for k in ("name", "shape", "dtype")},  # what one-input readers look at
        "inputs": inputs,
        "output": {"name": "prediction" if fmt == "onnx" else "output_0", "shape": output_shape,
                   "adapter": adapter.to_dict()["output"]},
        "labels": list(labels),
        "model": {"file": f"model.{fmt}", "format": fmt, "precision": precision},
    }


def _tokenizer_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise EdgetierError(f"no tokenizer.json at {path}", where=str(path),
                            fix="point tokenizer= at the model folder holding tokenizer.json (a Hugging Face "
                            "fast tokenizer), or leave it out and feed token ids")
    return p
