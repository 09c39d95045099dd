"""`early_exit` then `ptq_int8`: every exported segment is int8 (onnxruntime QDQ, LiteRT PT2E), calibrated on the
float features before it, and the exit policy is calibrated on — and the report measured with — the int8 chain."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compress.datasets import load as load_data
from export.runtime import load
from tests.exits.runs import run_recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.conftest import TINY

    recipe = {**TINY, "name": "exits-int8",
              "model": {"zoo": "resnet2d", "width": 16, "train": {"epochs": 2, "lr": 0.01}},
              "stages": [{"name": "exits", "kind": "early_exit", "with": {"after": ["layer1"]}, "train": {"epochs": 1}},
                         {"name": "int8", "kind": "ptq_int8", "with": {"calib_samples": 64}}],
              "variants": {"float": {"target": "jetson_orin_nano", "skip": ["int8"]},
                           "edge": {"target": "jetson_orin_nano"}, "end": {"target": "rpi4"}}}
    return run_recipe(tmp_path_factory, recipe)


def test_the_onnx_segments_are_int8_and_smaller(run) -> None:
    result, by = run
    edge, float_ = by["edge"], by["float"]
    assert edge["precision"] == "int8" and float_["precision"] == "fp32"
    for spec in load(result.bundles["edge"]).manifest["model"]["segments"]:
        graph = onnx.load(result.bundles["edge"] / spec["file"]).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1 for t in graph.initializer)
    # int8 weights (1 B) instead of fp32 (4 B), plus scales and Q/DQ nodes (which outweigh the gain on a segment of
    # a few small convs: measured 22.5 -> 15.5 KB for the stem + layer1 at width 16, 294 -> 94 KB for the rest)
    assert edge["bytes"] < 0.5 * float_["bytes"]
    assert edge["bytes"] == sum(edge["exits"]["segment_bytes"])


def test_the_chain_keeps_the_float_answers(run) -> None:
    _, by = run
    for name in ("edge", "end"):
        parity = by[name]["parity"]
        # static int8 vs float on 256 test digits: the targets ask >= 97 % top-1 agreement of the final answer
        assert parity["top1_agreement"] >= 0.97
        assert len(parity["segment_top1_agreement"]) == 2
        assert any("segments quantized to int8" in note for note in by[name]["notes"])


def test_the_litert_segments_are_int8(run) -> None:
    result, by = run
    from export.measure import tflite_stats

    for spec in load(result.bundles["end"]).manifest["model"]["segments"]:
        assert spec["file"].endswith(".tflite")
        assert tflite_stats(result.bundles["end"] / spec["file"])["precision_counts"].get("int8", 0) > 0


def test_the_device_gets_the_reported_accuracy(run) -> None:
    result, by = run
    data = load_data("digits", seed=0)
    for name in ("edge", "end"):
        bundle = load(result.bundles[name])
        assert bundle.manifest["model"]["precision"] == "int8"
        accuracy = float((np.asarray(bundle.predict(data.test.x)).argmax(1) == data.test.y).mean())
        assert accuracy == pytest.approx(by[name]["accuracy"], abs=1e-9)  # same files, same policy, same inputs
