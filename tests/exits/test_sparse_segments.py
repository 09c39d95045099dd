"""`early_exit` then `unstructured_prune`: the pruned weights of every ONNX segment are stored sparse (kept values +
uint8 gaps, rebuilt in the graph, `export.sparse_store`), with onnxruntime's outputs bit-identical to the dense
segments', and a device gets the reported answers from the smaller files."""

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

    recipe = {**TINY, "name": "exits-sparse",
              "model": {"zoo": "resnet2d", "width": 16, "train": {"epochs": 2, "lr": 0.01}},
              "stages": [{"name": "exits", "kind": "early_exit", "with": {"after": ["layer1"]}, "train": {"epochs": 1}},
                         {"name": "prune", "kind": "unstructured_prune", "with": {"ratio": 0.9},
                          "train": {"epochs": 1}}],
              "variants": {"dense": {"target": "jetson_orin_nano", "skip": ["prune"]},
                           "sparse": {"target": "jetson_orin_nano"}}}
    return run_recipe(tmp_path_factory, recipe)


def test_the_pruned_segments_are_stored_sparse_and_smaller(run) -> None:
    result, by = run
    sparse, dense = by["sparse"], by["dense"]
    stored = sparse["parity"]["sparse_storage"]
    assert stored["bitwise_equal_outputs"] and stored["tensors"] >= 1 and "sparse_storage" not in dense["parity"]
    # 90 % of the conv / linear weights are zeros: a kept fp32 value and its gap take 5 B against 4 B per dense entry,
    # so the re-encoded tensors shrink to about 0.1 * 5 / 4 = 12.5 % (plus fillers and the 5-node rebuild per tensor)
    assert stored["stored_bytes"] < 0.25 * stored["dense_bytes"]
    assert sparse["bytes"] == sum(sparse["exits"]["segment_bytes"]) < 0.5 * dense["bytes"]
    assert any("stored sparse in segment" in note for note in sparse["notes"])
    for spec in load(result.bundles["sparse"]).manifest["model"]["segments"]:
        ops = {n.op_type for n in onnx.load(result.bundles["sparse"] / spec["file"]).graph.node}
        assert "ScatterElements" in ops  # each segment holds pruned convs


def test_the_device_gets_the_reported_accuracy_from_the_sparse_segments(run) -> None:
    result, by = run
    data = load_data("digits", seed=0)
    bundle = load(result.bundles["sparse"])
    accuracy = float((np.asarray(bundle.predict(data.test.x)).argmax(1) == data.test.y).mean())
    assert accuracy == pytest.approx(by["sparse"]["accuracy"], abs=1e-9)  # same files, same policy, same inputs
