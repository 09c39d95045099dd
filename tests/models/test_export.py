"""Every zoo model exports to ONNX (TorchScript exporter, opset 17) and runs the same in onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compress.models import build

CASES = [("resnet2d", (1, 8, 8)), ("resnet1d", (1, 40)), ("transformer", (1, 40)), ("transformer", (1, 8, 8))]

# Control flow would make a graph whose work depends on the data: segments, pruning and LiteRT
# conversion all assume a straight-line graph.
CONTROL_FLOW = {"If", "Loop", "Scan"}


@pytest.mark.parametrize(("zoo", "shape"), CASES, ids=[f"{z}-{len(s) - 1}d" for z, s in CASES])
def test_onnx_export_matches_pytorch(zoo: str, shape: tuple[int, ...], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build(zoo, input_shape=shape, num_classes=10)
    # A few training-mode passes move BatchNorm's running statistics off their (0, 1) start,
    # so a wrong folding of BN into the convolutions would show in the comparison.
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 0.5)
    model.eval()
    (x,) = model.example_inputs(batch=4)
    path = tmp_path / f"{zoo}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo=False is deprecated in torch 2.13, and chosen on purpose
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert not CONTROL_FLOW & {node.op_type for node in graph.graph.node}

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (4, 10)
    # Both sides compute in fp32 but fuse and order the sums differently (BN folded into the
    # conv, other GEMM kernels): measured differences are <= 3e-7 on logits of 0.1-2. 1e-4
    # leaves room for other CPUs' kernels and still catches a real mismatch (a wrong op, a
    # badly folded BatchNorm, a lost weight), which moves logits by ~1e-2 or more.
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
