"""Recipe runs with Hugging Face models (`model: {hf: ..., task: ...}`): load, and deploy through the adapter.

The pipeline calls `cloud_hf` instead of building a zoo model, and `deploy_adapted` instead of
`compress.deploy.deploy` for a model wrapped in its adapter (`AdaptedModule`): the bundle is
written by `compress.export` (every input in the manifest, dynamic batch / sequence axes, int8
chosen per graph, the tokenizer shipped for text models).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from compress.bundle_api import export
from compress.core.adapter import AdaptedModule, OutputSpec
from compress.core.report import StageReport
from compress.core.technique import ExportPlan
from compress.datasets import Dataset
from compress.deploy import BundleSpec
from compress.models.hf import hf_folder, load_hf
from compress.recipe import Recipe, hf_source

__all__ = ["cloud_hf", "deploy_adapted", "is_adapted"]


def is_adapted(model: nn.Module) -> bool:
    return isinstance(model, AdaptedModule)


def cloud_hf(recipe: Recipe, data: Dataset, plans: list[Any], *, check: Callable[[nn.Module, list[Any]], None],
             log: Callable[[str], None]) -> tuple[nn.Module, str]:
    """The pretrained model with its task's adapter; it is used as is (not retrained)."""
    spec = recipe.model
    folder = hf_folder(hf_source(recipe))
    output = OutputSpec(select=spec.output) if spec.output else None
    # image models: the adapter's example has the data's shape (a ResNet config has no image_size)
    image_shape = tuple(data.input_shape) if spec.task == "image_classification" else None
    model = load_hf(folder, task=spec.task, output=output, image_shape=image_shape)  # type: ignore[arg-type]
    if plans:
        check(model, plans)
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in (".json", ".safetensors", ".bin", ".txt"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    log(f"cloud model: {folder} ({spec.task}), pretrained, loaded offline")
    return model.eval(), digest.hexdigest()


def deploy_adapted(model: nn.Module, spec: BundleSpec, *, data: Dataset, example_inputs: Any,
                   export_plan: ExportPlan | None, stages: list[StageReport], out_dir: Path) -> dict[str, Any]:
    """`compress.export` for a variant of a recipe run; returns the report entry."""
    tokenizer = _tokenizer_of(model)
    bundle = export(model, target=spec.target, out_dir=out_dir, data=data.test.x[:64], calib=data.calib.x,
                    name=spec.name, quantize="int8" if export_plan and export_plan.quantize else "none",
                    tokenizer=tokenizer, labels=data.labels,
                    smoothquant=export_plan.smoothquant if export_plan else None)
    report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    entry = report["models"][0]
    entry["stages"] = [_as_exported(s.to_dict(), entry.get("int8_method")) for s in stages]
    if data.num_classes:
        entry["accuracy"] = float((bundle.predict(data.test.x).argmax(1) == data.test.y).mean())
    return entry


def _as_exported(stage: dict[str, Any], method: str | None) -> dict[str, Any]:
    """A ptq_int8 stage's summary as the export carried it out. The stage plans static int8 (QDQ,
    calibrated); `compress.export` chooses per graph and quantizes a MatMul-heavy graph (a
    transformer) with onnxruntime dynamic int8 instead, which calibrates nothing.

    >>> stage = {"kind": "ptq_int8", "summary": {"artifact": "int8 QDQ ONNX (static)", "calibration": "minmax"}}
    >>> _as_exported(stage, "onnxruntime dynamic")["summary"]["calibration"] is None
    True
    """
    if stage.get("kind") != "ptq_int8" or not method or "dynamic" not in method:
        return stage
    summary = {**stage["summary"], "artifact": f"int8 ONNX by {method}: weights int8 per output channel, "
               "activations quantized per batch at run time (dynamic)", "calibration": None,
               "calibration_from": "none: dynamic int8 measures each batch's activation range at run time",
               "calib_samples": 0}
    if summary.get("smoothquant"):  # the calib rows set the smoothing scales, not int8 ranges
        summary["calibration_from"] += "; smoothquant's channel scales come from the calib split's first 256 rows"
    return {**stage, "summary": summary}


def _tokenizer_of(model: nn.Module) -> Path | None:
    inner = model.model if isinstance(model, AdaptedModule) else model
    folder = getattr(getattr(inner, "config", None), "_name_or_path", None)
    if folder and (Path(folder) / "tokenizer.json").is_file():
        return Path(folder) / "tokenizer.json"
    return None


