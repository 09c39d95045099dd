"""`export.smoothquant`: SmoothQuant-style smoothing of the activations LayerNorms write into weight
MatMuls. The fp32 function must not change; with outlier channels, int8 error must drop; the
recipe and `compress.export` carry it and say what they did; where it cannot act it is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from pydantic import ValidationError

import compress
from compress.core.errors import EdgetierError
from compress.quant.ptq import PTQInt8Config
from compress.targets import load_target
from export.quantize import quantize_int8_static
from export.quantize_dynamic import fuse_transformer, quantize_int8_dynamic
from export.smoothquant import smooth_activations
from tests.hf.tiny import tiny_bert, tiny_tokenizer_json, tiny_vision, tiny_vit, token_batch

OUTLIERS = (3, 17)  # hidden channels given a 50x range (tiny_vit: 32 wide)


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) == 1 and len(feed) == 1:
        feed = {names[0]: next(iter(feed.values()))}
    return session.run(None, {k: feed[k] for k in names})[0]


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _bert_fused(tmp_path: Path) -> Path:
    model = tiny_bert(hidden=64)
    model.set_attn_implementation("eager")  # as load_hf loads: the attention graph onnxruntime's fusion knows
    compress.export(model, target="jetson_orin_nano", out_dir=tmp_path / "fp32", data=token_batch(n=8, seq=9))
    assert "Attention" in fuse_transformer(tmp_path / "fp32" / "model.onnx", tmp_path / "fused.onnx", num_heads=4,
                                           hidden_size=64)
    return tmp_path / "fused.onnx"


def _numpy(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}


def _with_outliers(model: torch.nn.Module, factor: float = 50.0) -> torch.nn.Module:
    """The same function with outlier channels: pre-LN ViT's LayerNorm outputs feed only the next
    MatMuls, so gamma / beta of a few channels x `factor` and those weight rows / `factor` cancel."""
    with torch.no_grad():
        for layer in model.vit.layers:
            for norm, readers in ((layer.layernorm_before, (layer.attention.q_proj, layer.attention.k_proj,
                                                            layer.attention.v_proj)),
                                  (layer.layernorm_after, (layer.mlp.fc1,))):
                for c in OUTLIERS:
                    norm.weight[c] *= factor
                    norm.bias[c] *= factor
                    for linear in readers:
                        linear.weight[:, c] /= factor
    return model


def _vit_file(tmp_path: Path, seed: int, *, outliers: bool) -> tuple[Path, np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    calib, test = torch.randn(64, 1, 16, 16, generator=g), torch.randn(64, 1, 16, 16, generator=g)
    model = tiny_vit(seed=seed)
    if outliers:
        with torch.no_grad():
            ref = model(test).logits
            model = _with_outliers(model)
            # the injection keeps the function: float32 reassociation only (values of order 0.2)
            torch.testing.assert_close(model(test).logits, ref, atol=1e-5, rtol=1e-4)
    out = tmp_path / f"vit{seed}"
    compress.export(model, target="jetson_orin_nano", out_dir=out, example_inputs=test[:8])
    return out / "model.onnx", calib.numpy(), test.numpy()


def test_bert_fp32_function_unchanged_through_one_shared_mul(tmp_path):
    fused = _bert_fused(tmp_path)
    calib, test = _numpy(token_batch(n=32, seq=9, seed=1)), _numpy(token_batch(n=16, seq=11, seed=2))
    result = smooth_activations(fused, tmp_path / "s.onnx", calib, alpha=0.5)
    # post-LN BERT: every LayerNorm output is also the residual, so nothing folds; 2 layers x (the
    # fused Attention's input, the FFN up projection's input); the FFN down projection (GELU output) is left
    assert (len(result.mul), len(result.folded), result.matmuls) == (4, 0, 4)
    assert _ops(tmp_path / "s.onnx").count("Mul") == _ops(fused).count("Mul") + 4
    assert result.spread_after < result.spread_before
    # float32: x / s then rows x s, sums over 64 features reassociated; outputs of order 1
    np.testing.assert_allclose(_run(tmp_path / "s.onnx", test), _run(fused, test), atol=1e-4, rtol=1e-4)
    # the fused Attention still quantizes to QAttention
    ops = _ops(quantize_int8_dynamic(tmp_path / "s.onnx", tmp_path / "q.onnx"))
    assert ops.count("QAttention") == 2


def test_vit_fp32_function_unchanged_folded_into_the_layernorms(tmp_path):
    path, calib, test = _vit_file(tmp_path, 0, outliers=False)
    result = smooth_activations(path, tmp_path / "s.onnx", {"x": calib}, alpha=0.5)
    # pre-LN ViT: each LayerNorm output feeds only q/k/v or fc1 (and a Shape): all folded, no Mul
    assert (len(result.folded), len(result.mul), result.matmuls) == (4, 0, 8)
    assert _ops(tmp_path / "s.onnx") == _ops(path)
    # float32 reassociation through 2 layers; logits of order 0.2
    np.testing.assert_allclose(_run(tmp_path / "s.onnx", {"x": test}), _run(path, {"x": test}), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outlier_channels_int8_error_drops(tmp_path, seed):
    path, calib, test = _vit_file(tmp_path, seed, outliers=True)
    smoothed = tmp_path / "s.onnx"
    result = smooth_activations(path, smoothed, {"x": calib}, alpha=0.5)
    assert result.spread_before > 20 and result.spread_after < 3  # the 50x channels are spread back
    ref = _run(path, {"x": test})
    np.testing.assert_allclose(_run(smoothed, {"x": test}), ref, atol=1e-5, rtol=1e-4)  # fp32: the same model
    dynamic = {k: _rel(_run(quantize_int8_dynamic(src, tmp_path / f"d{k}.onnx"), {"x": test}), ref)
               for k, src in (("plain", path), ("smooth", smoothed))}
    # measured 2026-12-07 (seeds 0-2): 0.164 / 0.208 / 0.180 -> 0.011 / 0.013 / 0.011, 14-17x less
    assert dynamic["smooth"] * 4 < dynamic["plain"]
    folded = tmp_path / "f.onnx"  # static QDQ smooths only what folds (here: all of it)
    assert smooth_activations(path, folded, {"x": calib}, alpha=0.5, insert_mul=False).folded == result.folded
    static = {k: _rel(_run(quantize_int8_static(src, tmp_path / f"s{k}.onnx", calib), {"x": test}), ref)
              for k, src in (("plain", path), ("smooth", folded))}
    # measured 2026-12-07 (seeds 0-2): 0.221 / 0.299 / 0.201 -> 0.090 / 0.147 / 0.065, 2.0-3.1x less
    assert static["smooth"] * 1.5 < static["plain"]


def test_export_api_reports_what_it_smoothed(tmp_path):
    model, batch = tiny_bert(hidden=64), token_batch(n=16, seq=9)
    model.set_attn_implementation("eager")
    compress.export(model, target="jetson_orin_nano", out_dir=tmp_path / "b", data=batch, quantize="int8",
                    calib=token_batch(n=32, seq=9, seed=3), smoothquant=0.5)
    entry = json.loads((tmp_path / "b" / "report.json").read_text())["models"][0]
    assert entry["smoothquant"]["alpha"] == 0.5 and entry["smoothquant"]["mul"] == 4
    assert entry["smoothquant"]["activations"] == 4 and entry["smoothquant"]["calib_rows"] == 32
    assert any(n.startswith("SmoothQuant-style smoothing (alpha 0.5)") for n in entry["notes"])
    assert _ops(tmp_path / "b" / "model.onnx").count("QAttention") == 2
    # without the keyword: no entry (the existing behaviour)
    compress.export(model, target="jetson_orin_nano", out_dir=tmp_path / "c", data=batch, quantize="int8")
    assert "smoothquant" not in json.loads((tmp_path / "c" / "report.json").read_text())["models"][0]


def test_export_api_static_vit_folds(tmp_path):
    x = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    compress.export(_with_outliers(tiny_vit()), target="jetson_orin_nano", out_dir=tmp_path / "b", example_inputs=x,
                    quantize="int8", calib=x, smoothquant=0.5)
    entry = json.loads((tmp_path / "b" / "report.json").read_text())["models"][0]
    assert entry["int8_method"] == "onnxruntime static QDQ"  # ViT's patch Conv: the static path
    assert (entry["smoothquant"]["folded"], entry["smoothquant"]["mul"]) == (4, 0)


def test_recipe_ptq_int8_smoothquant_reaches_the_report(tmp_path):
    folder = tmp_path / "tiny-bert"
    tiny_bert(vocab=64).save_pretrained(folder)
    tiny_tokenizer_json(folder / "tokenizer.json")
    (tmp_path / "lines.txt").write_text("\n".join(f"the small model runs on device {i}" for i in range(40)))
    recipe = {"schema_version": 1, "name": "sq", "seed": 0,
              "model": {"hf": str(folder), "task": "sequence_embedding"},
              "data": {"dataset": "text", "file": str(tmp_path / "lines.txt"), "samples": None, "max_length": 16},
              "stages": [{"name": "quantize", "kind": "ptq_int8", "with": {"smoothquant": {"alpha": 0.8}}}],
              "variants": {"edge": {"target": "jetson_orin_nano"}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = compress.run(compress.load_recipe(path), out_dir=tmp_path / "runs")
    assert json.loads((result.bundles["edge"] / "report.json").read_text())["models"][0]["smoothquant"]["alpha"] == 0.8
    models = json.loads((tmp_path / "runs" / "sq" / "report.json").read_text())["models"]
    entry = next(m for m in models if m["name"] == "edge")
    assert entry["smoothquant"]["alpha"] == 0.8 and entry["smoothquant"]["activations"] == 4
    assert entry["stages"][0]["summary"]["smoothquant"]["alpha"] == 0.8
    assert "smoothquant's channel scales" in entry["stages"][0]["summary"]["calibration_from"]
    # the same stage for a LiteRT target: refused when the recipe loads, before any work
    recipe["variants"]["end"] = {"target": "rpi4"}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(EdgetierError, match="smoothquant rewrites the ONNX graph"):
        compress.run(compress.load_recipe(path), out_dir=tmp_path / "runs2")
    assert not (tmp_path / "runs2").exists()


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1])
def test_alpha_outside_0_1_is_refused(tmp_path, alpha):
    with pytest.raises(ValidationError, match="alpha"):
        PTQInt8Config(smoothquant={"alpha": alpha})
    with pytest.raises(EdgetierError, match="strictly between 0 and 1"):
        compress.export(tiny_bert(), target="jetson_orin_nano", out_dir=tmp_path / "b", data=token_batch(),
                        quantize="int8", calib=token_batch(), smoothquant=alpha)
    assert not (tmp_path / "b").exists()


def test_smoothquant_where_it_cannot_act_is_one_clear_error_nothing_written(tmp_path):
    with pytest.raises(EdgetierError, match="smoothquant rewrites the ONNX graph.*rpi4"):
        PTQInt8Config(smoothquant={"alpha": 0.5}).check_target(load_target("rpi4"))
    with pytest.raises(EdgetierError, match="exported by the static QDQ path"):
        PTQInt8Config(smoothquant={}).check_model(torch.nn.Linear(4, 2), load_target("jetson_orin_nano"))
    x = torch.randn(8, 1, 8, 8)
    cases = [  # (kwargs, message)
        ({"target": "rpi4", "quantize": "int8", "calib": x}, "exports tflite"),
        ({"target": "jetson_orin_nano", "quantize": "none", "calib": x}, "quantize is not 'int8'"),
        ({"target": "jetson_orin_nano", "quantize": "int8"}, "needs calibration rows"),
        ({"target": "jetson_orin_nano", "quantize": "int8", "calib": x}, "no LayerNorm output"),  # a ResNet
    ]
    for i, (kwargs, message) in enumerate(cases):
        with pytest.raises(EdgetierError, match=message):
            compress.export(tiny_vision("resnet"), out_dir=tmp_path / f"b{i}", example_inputs=x, smoothquant=0.5,
                            **kwargs)
        assert not (tmp_path / f"b{i}").exists()
