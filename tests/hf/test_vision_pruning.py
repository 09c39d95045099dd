"""Hugging Face ResNet, ConvNeXt, MobileNetV2 and ViT (tiny configs, no wrapper written by the user):
half of their channels removed by `structured_prune`, then exported to an onnxruntime target with
parity checked in the runtime — from the Python API, and from a recipe (`model: {hf: folder}`).

What makes each one hard for channel pruning, and what handles it (torch-pruning's dependency
graph, no per-model code): ResNet's residual adds tie the block outputs to the shortcut; ConvNeXt's
depthwise 7×7, channels-last LayerNorm and layer-scale parameter (an unwrapped `nn.Parameter`) must
lose the same channels as the convolution before them; MobileNetV2's depthwise 3×3 sits between the
expand and project 1×1 convolutions, and its residual adds tie the projections; ViT loses whole heads
and MLP channels (`compress.prune.transformer`). Training is a few batches only: enough for
BatchNorm statistics to be real, not for accuracy (the benchmark trains longer).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import compress
from compress.core.adapter import ModelAdapter
from compress.core.train import TrainSpec, fit
from compress.datasets import Dataset, load
from compress.prune.structured import StructuredPruneConfig
from compress.prune.transformer import find_attention
from tests.hf.tiny import VISION, tiny_vision


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load("digits", seed=0)


def _trained(kind: str, data: Dataset) -> nn.Module:
    model = tiny_vision(kind)
    module = ModelAdapter.from_model(model, torch.from_numpy(data.train.x[:2])).module(model)
    fit(module, (data.train.x[:256], data.train.y[:256]), TrainSpec(epochs=1, lr=3e-3, batch_size=64), seed=0)
    return model.eval()


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _within(entry: dict, ref: np.ndarray) -> bool:
    """The target's own parity rule, as the bundle's report states it."""
    parity = entry["parity"]
    return parity["max_abs_diff"] <= parity["atol"] + parity["rtol"] * float(np.abs(ref).max())


@pytest.mark.parametrize("kind", VISION)
def test_half_the_channels_go_and_the_onnx_export_matches(kind: str, digits: Dataset, tmp_path: Path) -> None:
    model = _trained(kind, digits)
    before, params0 = _widths(model), sum(p.numel() for p in model.parameters())
    x = digits.test.x[:32]
    result = compress.apply(model, StructuredPruneConfig(ratio=0.5), example_inputs=(torch.from_numpy(x[:2]),))
    pruned = result.model
    after = _widths(pruned)
    assert after.pop("classifier.1" if kind == "resnet" else "classifier") == 10  # the classes stay
    if kind == "vit":  # a ratio on a model with attention: half the heads and half the MLP channels
        assert [a.heads for a in find_attention(pruned)] == [2, 2] and pruned.config.num_attention_heads == 2
        assert all(after[n] == before[n] // 2 for n in after if n.endswith(("q_proj", "fc1")))
    else:  # every other Conv/Linear lost half its outputs (ceil rounding keeps 4 of MobileNetV2's 8 → 4)
        assert all(after[n] == before[n] - before[n] // 2 for n in after), {n: (before[n], after[n]) for n in after}
    params1 = sum(p.numel() for p in pruned.parameters())
    assert result.report["params"] == [params0, params1] and params1 < 0.6 * params0
    bundle = compress.export(pruned, target="jetson_orin_nano", out_dir=tmp_path / "b", data=x, name=kind)
    with torch.no_grad():
        ref = pruned(torch.from_numpy(x)).logits.numpy()
    entry = json.loads((tmp_path / "b" / "report.json").read_text())["models"][0]
    assert entry["format"] == "onnx" and _within(entry, ref)
    # the runtime's own answer, independently of the report: fp32 ONNX vs PyTorch differ only by
    # float summation order, a few 1e-6 relative on logits of this size (measured ≤ 1.2e-5 absolute)
    np.testing.assert_allclose(bundle.predict(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_a_recipe_prunes_a_saved_hf_vision_model_and_exports_it(kind: str, digits: Dataset, tmp_path: Path) -> None:
    """ResNet's config has no image_size: the adapter takes the data's shape (it used to assume 224)."""
    folder = tmp_path / kind
    _trained(kind, digits).save_pretrained(folder)
    recipe = {"schema_version": 1, "name": f"hf-{kind}", "seed": 0,
              "model": {"hf": str(folder), "task": "image_classification"}, "data": {"dataset": "digits"},
              "stages": [{"name": "prune", "kind": "structured_prune", "with": {"ratio": 0.5}}],
              "variants": {"edge": {"target": "jetson_orin_nano"}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = compress.run(compress.load_recipe(path), out_dir=tmp_path / "runs")
    cloud, edge = result.models
    assert edge["params"] < 0.6 * cloud["params"]
    manifest = json.loads((result.bundles["edge"] / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"][1:] == [1, 8, 8]
    for entry in (cloud, edge):
        assert entry["format"] == "onnx" and entry["parity"]["max_abs_diff"] <= entry["parity"]["atol"] + (
            entry["parity"]["rtol"] * 100)  # logits of these tiny models stay well under 100 in magnitude
