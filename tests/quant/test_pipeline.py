"""`qat` and `mixed_precision` in a recipe run: low-bit bundles that say what they store, per-layer bits in
the report, and a resumed run (quant layers rebuilt by `restore`) that writes the same model files."""

from __future__ import annotations

import json
import shutil

import onnx

import compress
from export.manifest import sha256_file
from tests.quant.parity import MAX_STEPS


def test_recipe_run_and_resume(tiny_recipe, write_recipe, tmp_path):
    tiny_recipe["stages"] = [
        {"name": "qat", "kind": "qat", "with": {"weight_bits": 4, "layers": {"stem.conv": 8}}, "train": {"epochs": 1}},
        {"name": "mixed", "kind": "mixed_precision",
         "with": {"bits": [2, 4, 8], "budget": {"weights_kb": 8}, "pareto_points": 4,
                  "trials": 1, "trial_epochs": 0}, "train": {"epochs": 1}},
    ]
    tiny_recipe["variants"] = {"end": {"target": "rpi4", "skip": ["mixed"]},
                               "edge": {"target": "jetson_orin_nano", "skip": ["qat"]}}
    recipe = compress.load_recipe(write_recipe(tiny_recipe))
    first = compress.run(recipe, out_dir=tmp_path / "a")
    cloud, end, edge = first.models
    assert end["precision"] == "int4/int8 mixed"
    assert edge["precision"].startswith("int2/") or edge["precision"].startswith("int4/")
    for m in (end, edge):
        manifest = json.loads((first.bundles[m["name"]] / "manifest.json").read_text())
        assert manifest["model"]["precision"] == m["precision"]
        assert manifest["export_plan"]["exporter"] == "qcdq"
        assert m["parity"]["max_diff_steps"] <= MAX_STEPS + 1e-4  # onnxruntime vs brevitas (tests/quant/parity.py)
        assert m["bytes"] < 0.3 * cloud["bytes"]
        assert abs(m["accuracy"] - m["torch_accuracy"]) <= 0.01  # 360 test digits: at most 3 flips
        # every quantized weight (INT4 and packed int2 included), the classifier's float bias, and the
        # conv biases that BatchNorm folded into (one per channel; per-channel scales fold every BN)
        graph = onnx.load(str(first.bundles[m["name"]] / "model.onnx")).graph
        assert "BatchNormalization" not in {n.op_type for n in graph.node}
        dims = {t.name: t.dims for t in graph.initializer}
        folded = sum(dims[n.input[2]][0] for n in graph.node if n.op_type == "Conv" and len(n.input) > 2)
        assert folded > 0
        assert m["params"] == sum(v["params"] for v in m["stages"][0]["layers"].values()) + 10 + folded
    stage = edge["stages"][0]
    assert stage["summary"]["chosen"]["weights_kb"] <= 8 and stage["summary"]["pareto"]
    assert {v["weight_bits"] for v in stage["layers"].values()} <= {2, 4, 8}
    assert end["stages"][0]["layers"]["stem.conv"]["weight_bits"] == 8
    # the sensitivity-size plot ships in the edge bundle (sha256 in its manifest) and shows in both report.md
    assert edge["figures"] == ["mixed-pareto.png"] and stage["summary"]["figures"] == {"pareto.png": "mixed-pareto.png"}
    figure = first.bundles["edge"] / "mixed-pareto.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((first.bundles["edge"] / "manifest.json").read_text())
    assert manifest["files"]["mixed-pareto.png"]["sha256"] == sha256_file(figure)
    assert "](mixed-pareto.png)" in (first.bundles["edge"] / "report.md").read_text()
    assert "](edge/mixed-pareto.png)" in (first.run_dir / "report.md").read_text()
    graph = onnx.load(str(first.bundles["end"] / "model.onnx"))
    assert graph.opset_import[0].version == 21  # INT4 initializers

    # a run resumed after the last stage restores the quant layers and exports the same bytes
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    resumed = compress.run(recipe, out_dir=tmp_path / "b", resume=True)
    for name in ("end", "edge"):
        assert sha256_file(resumed.bundles[name] / "model.onnx") == sha256_file(first.bundles[name] / "model.onnx")
