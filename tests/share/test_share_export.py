"""Exported shared-weight models are small on disk, match PyTorch in onnxruntime after a checkpoint
round trip, and onnxruntime folds the weight-building subgraphs when the session starts."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import compress
from compress.core.context import Context
from compress.models import build
from compress.registry import build as build_technique
from compress.share.clustering import ClusterConfig, ClusteredLayer
from compress.share.hashing import HashShareConfig
from export.measure import onnx_stats
from export.onnx import assert_parity, export_onnx

# The ops that rebuild weights; none may survive onnxruntime's session-start optimization.
BUILD_OPS = {"BitwiseAnd", "BitShift", "GatherElements", "Gather", "Range", "Mod", "Where", "Concat", "Cast"}


def resnet(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "resnet1d":
        model = build("resnet1d", input_shape=(1, 40), num_classes=10, width=32)
    else:
        model = build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=16)
    with torch.no_grad():  # trained-looking BatchNorm statistics, so that nothing is trivially constant
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for t in (m.weight, m.bias, m.running_mean, m.running_var):
                    t.uniform_(0.5, 1.5)
    return model.eval()


# At these widths (32 and 16 channels) each layer's graph (~1-2 KB of nodes) weighs more than at
# the benchmarks' width 64, hence the loose ratios; tests/benchmarks check the issue's 0.2 bars.
CASES = [
    ("resnet1d", ClusterConfig(clusters=16), 0.4),
    ("resnet1d", ClusterConfig(clusters=4, granularity="channel", preserve_sparsity=True, ignore=("stem.conv",)), 0.45),
    ("resnet2d", ClusterConfig(clusters=64, init="kmeans++"), 0.5),
    ("resnet1d", HashShareConfig(compression=0.125), 0.45),
    ("resnet2d", HashShareConfig(compression=0.25, init="scratch", layers={"head.fc": 0.5}), 0.5),
]


def initializer_bytes(graph: onnx.GraphProto) -> int:
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in graph.initializer)


@pytest.mark.parametrize(("kind", "config", "max_ratio"), CASES, ids=lambda v: getattr(v, "kind", str(v)))
def test_checkpoint_round_trip_exports_small_and_matches(kind, config, max_ratio, tmp_path):
    model = resnet(kind)
    dense_bytes = os.path.getsize(export_onnx(model, model.example_inputs(), tmp_path / "dense.onnx"))
    result = compress.apply(model, config, seed=3)
    with torch.no_grad():  # stands in for fine-tuning: the saved weights differ from those at apply time
        for p in result.model.parameters():
            p.mul_(1.01)
    torch.save({"state": result.state, "weights": result.model.state_dict()}, tmp_path / "ckpt.pt")

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    fresh = resnet(kind)
    fresh = build_technique(config).restore(fresh, saved["state"], Context(example_inputs=fresh.example_inputs())).model
    fresh.load_state_dict(saved["weights"])
    path = export_onnx(fresh.eval(), fresh.example_inputs(), tmp_path / "shared.onnx")

    x = np.random.default_rng(0).normal(size=(64, *fresh.input_shape)).astype(np.float32)
    # fp32 on both sides, same weights; only the convolutions' summation order differs.
    assert_parity(path, result.model.eval(), x, atol=1e-4, rtol=1e-4)
    assert os.path.getsize(path) <= max_ratio * dense_bytes
    # The file stores what the state_dict stores (codes, codebooks, buckets, BatchNorm), nothing
    # rebuilt: a dense weight folded in at export time would add kilobytes. Slack: the zero column
    # that preserve_sparsity concatenates to each codebook, and shape constants.
    stored = sum(t.numel() * t.element_size() for t in fresh.state_dict().values())
    assert initializer_bytes(onnx.load(path).graph) <= stored + 1024
    # The report's `params` are the learned values the file stores — codebooks or buckets, not the
    # dense weights the graph rebuilds — so they match PyTorch's count of the same layers, exactly:
    # + the pinned zero of each sparsity-preserving codebook (folded into the stored codebook)
    # + the bias that folding BatchNorm gives a dense conv; - BatchNorm, which stays its own op
    # after a shared conv and whose scales are not layer parameters.
    norms = sum(p.numel() for m in fresh.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                for p in m.parameters(recurse=False))
    pinned = sum(m.groups for m in fresh.modules() if isinstance(m, ClusteredLayer) and m.preserve_sparsity)
    folded = sum(m.out_channels for m in fresh.modules() if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d)
                 and m.bias is None)
    expected = sum(p.numel() for p in fresh.parameters()) - norms + pinned + folded
    assert onnx_stats(path)["params"] == expected

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx").graph
    left = {n.op_type for n in optimized.node} & BUILD_OPS
    assert not left, f"onnxruntime left weight-building ops in the graph: {left}"
