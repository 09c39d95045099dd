"""QCDQ export: weights really stored at their width (INT8 as offset UINT8, INT4, packed INT2), and the
file in onnxruntime agrees with the brevitas model within one output quantization step."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compress.core.train import predict
from compress.quant.qat import QAT, QATConfig
from export.measure import onnx_stats
from export.qcdq import export_qcdq, pack_weights
from tests.quant.parity import assert_within_steps


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("bits", "kind", "bytes_per_weight"), [(8, "int8", 1.0), (4, "int4", 0.5), (2, "int2", 0.25)])
def test_weights_stored_at_their_width_and_parity_within_one_step(model, ctx, digits, tmp_path, bits, kind,
                                                                  bytes_per_weight):
    qmodel = QAT(QATConfig(weight_bits=bits)).apply(model, ctx).model
    out = export_qcdq(qmodel, ctx.example_inputs, tmp_path / "m.onnx")
    assert {p.kind for p in out.weights.values()} == {kind} and len(out.weights) == 10
    assert out.precision == kind and not out.float_weights
    proto = onnx.load(str(out.path))
    inits = {t.name: t for t in proto.graph.initializer}
    # int2 weights are the output of the unpacking nodes; their bytes are the `.packed` initializer
    stored = sum(len(inits[n if kind != "int2" else f"{n}.packed"].raw_data) for n in out.weights)
    params = sum(p.params for p in out.weights.values())
    # packing rounds each tensor up to whole bytes: at most one byte of slack per layer
    assert params * bytes_per_weight <= stored <= params * bytes_per_weight + len(out.weights)
    # the report's parameter count sees every weight element, however narrow or packed its storage:
    # the quantized weights plus the classifier's float bias, plus one bias per channel of each
    # BatchNorm: with per-channel weight scales every BN is folded into its conv's scales and a bias
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    folded = sum(m.num_features for m in qmodel.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert onnx_stats(out.path)["params"] == params + qmodel.head.fc.bias.numel() + folded
    # onnxruntime vs brevitas on the 360 test digits, in int8 output steps (tests/quant/parity.py)
    got = _session(out.path).run(None, {"input": digits.test.x})[0]
    assert_within_steps(got, predict(qmodel, digits.test.x), out.output_step)
    assert out.output_step > 0


def test_per_tensor_scales_and_unquantized_layers(model, ctx, digits, tmp_path):
    config = QATConfig(weight_bits=4, layers={"head.fc": 8}, ignore=("stem.conv",), per_channel=False)
    qmodel = QAT(config).apply(model, ctx).model
    assert qmodel.layer1[0].conv1.quant_weight().scale.numel() == 1  # one scale per tensor
    out = export_qcdq(qmodel, ctx.example_inputs, tmp_path / "m.onnx")
    assert out.precision == "int4/int8 mixed + fp32" and len(out.float_weights) == 1  # the float stem
    # one scale per tensor cannot absorb BatchNorm's per-channel factors: every BN of a quantized conv
    # stays its own op (the float stem's BN torch's exporter fuses into the float weight itself)
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in qmodel.modules())
    assert [n.op_type for n in onnx.load(str(out.path)).graph.node].count("BatchNormalization") == bns - 1
    got = _session(out.path).run(None, {"input": digits.test.x})[0]
    assert_within_steps(got, predict(qmodel, digits.test.x), out.output_step)


def _dq_graph(weight: np.ndarray, clip: tuple[int, int] | None, axis_scale: np.ndarray) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(axis_scale, "s"),
             numpy_helper.from_array(np.zeros(len(axis_scale), np.int8), "zp")]
    nodes, source = [], "w"
    if clip is not None:
        inits += [numpy_helper.from_array(np.array(v, np.int8), n) for n, v in zip(("lo", "hi"), clip, strict=True)]
        nodes.append(helper.make_node("Clip", ["w", "lo", "hi"], ["c"]))
        source = "c"
    nodes.append(helper.make_node("DequantizeLinear", [source, "s", "zp"], ["y"], axis=0))
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, weight.shape)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(("clip", "kind", "opset"), [(None, "int8", 17), ((-127, 127), "int8", 17),
                                                     ((-7, 7), "int4", 21), ((-1, 1), "int2", 18)])
def test_packed_graph_dequantizes_to_the_same_values(clip, kind, opset):
    rng = np.random.default_rng(0)
    low, high = clip or (-128, 127)
    weight = rng.integers(low, high + 1, size=(6, 5, 3)).astype(np.int8)  # 90 values: not a multiple of 4
    scale = rng.uniform(0.01, 0.1, size=6).astype(np.float32)
    original = _dq_graph(weight, clip, scale)
    packed, stored = pack_weights(original)
    onnx.checker.check_model(packed, full_check=True)
    assert [p.kind for p in stored.values()] == [kind] and packed.opset_import[0].version == opset
    expected = weight.astype(np.float32) * scale[:, None, None]
    for proto in (original, packed):  # onnxruntime runs per-channel DequantizeLinear on each storage
        got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
        np.testing.assert_array_equal(got, expected)
