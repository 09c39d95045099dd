"""An unstructured-pruned variant ships its sparse weights stored sparse (`export.sparse_store`), through the
pipeline: fp32 and static int8 ONNX, the same answers, and a file that is smaller itself (not only once DEFLATEd)."""

from __future__ import annotations

import numpy as np
import pytest

import compress
from export.runtime import load


@pytest.fixture
def sparse_recipe(tiny_recipe, write_recipe):
    tiny_recipe["model"] = {"zoo": "resnet2d", "width": 16, "train": {"epochs": 2, "lr": 0.01}}
    tiny_recipe["stages"] = [{"name": "sparse", "kind": "unstructured_prune", "with": {"ratio": 0.9},
                              "train": {"epochs": 1}},
                             {"name": "int8", "kind": "ptq_int8", "with": {"calib_samples": 64}}]
    tiny_recipe["variants"] = {"edge": {"target": "jetson_orin_nano", "skip": ["int8"]},
                               "edge8": {"target": "jetson_orin_nano"}}
    return compress.load_recipe(write_recipe(tiny_recipe))


def test_a_pruned_variant_ships_a_smaller_file_with_the_same_answers(sparse_recipe, tmp_path) -> None:
    result = compress.run(sparse_recipe, out_dir=tmp_path)
    by = {m["name"]: m for m in result.models}
    cloud = by["cloud"]
    for name in ("edge", "edge8"):
        model = by[name]
        stored = model["parity"]["sparse_storage"]
        assert stored["bitwise_equal_outputs"] and stored["tensors"] >= 4  # the 3x3 convs of 16+ channels are 90 % zeros
        assert any("stored as kept values" in note for note in model["notes"])
        # 10 % kept costs 10 % x (value + 1 B gap), plus fillers and a small graph: well under half the dense bytes
        assert stored["stored_bytes"] < 0.5 * stored["dense_bytes"]
        assert model["params"] == cloud["params"]  # the learned-value count is the dense one; sparsity is separate
        assert model["nonzero_params"] < 0.2 * model["torch_params"]
    assert by["edge"]["bytes"] < 0.3 * cloud["bytes"]  # the fp32 file itself, not only its DEFLATE size
    bundle = load(result.bundles["edge8"])  # the runtime opens it, verifies it and answers like the report says
    x = np.asarray(compress.datasets.load("digits", seed=0).test.x)
    accuracy = float((bundle.predict(x).argmax(1) == compress.datasets.load("digits", seed=0).test.y).mean())
    assert accuracy == pytest.approx(by["edge8"]["accuracy"], abs=1e-9)
