"""`split_skip_layernorm`: onnxruntime's fused SkipLayerNormalization rewritten as Sum + the standard
LayerNormalization — same outputs, and onnxruntime does not fuse it back when it opens the file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.quantize_dynamic import split_skip_layernorm

H, S = 48, 5


def _skip_layernorm_graph(*, opset: int = 18, read_mean: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(1, 0.2, H).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.2, H).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.normal(0, 0.5, H).astype(np.float32), "bias")]
    x, skip = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, S, H]) for n in ("x", "skip"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, S, H])]
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"],
                            ["y", "mean", "", "total"], domain="com.microsoft", epsilon=1e-5, name="sln")
    nodes = [node, helper.make_node("Relu", ["total"], ["r"])]  # the 4th output (input + skip + bias) is read too
    outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, S, H]))
    if read_mean:
        outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [x, skip], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray], optimized: str | None = None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    if optimized:
        options.optimized_model_filepath = optimized
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["y", "r"], feed)


def test_split_gives_the_fused_outputs_and_is_not_fused_back(tmp_path):
    rng = np.random.default_rng(1)
    feed = {"x": rng.normal(0, 1, (2, S, H)).astype(np.float32), "skip": rng.normal(0, 3, (2, S, H)).astype(np.float32)}
    fused = _skip_layernorm_graph()
    ref = _run(fused, feed)
    split = _skip_layernorm_graph()
    assert split_skip_layernorm(split) == 1
    assert [n.op_type for n in split.graph.node] == ["Sum", "LayerNormalization", "Relu"]
    got = _run(split, feed, optimized=str(tmp_path / "opt.onnx"))
    # float32 normalisation of 48 values of order 1-3, summed in another order by the other kernel
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # as onnxruntime opens it (all graph optimizations on): still the split form
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops


def test_left_fused_when_the_split_cannot_express_it():
    old = _skip_layernorm_graph(opset=16)  # LayerNormalization is an ONNX op from opset 17
    assert split_skip_layernorm(old) == 0
    assert old.graph.node[0].op_type == "SkipLayerNormalization"
    mean_read = _skip_layernorm_graph(read_mean=True)  # LayerNormalization's Mean output has another shape
    assert split_skip_layernorm(mean_read) == 0
    assert mean_read.graph.node[0].op_type == "SkipLayerNormalization"
