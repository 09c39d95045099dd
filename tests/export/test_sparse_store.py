"""Sparse weight storage in ONNX files (`export.sparse_store`): same tensors, fewer bytes, folded at load."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from export.sparse_store import encode, store_sparse, store_sparse_file


def _identity_model(weight: np.ndarray) -> onnx.ModelProto:
    """A graph whose output is the initializer `W` itself (`Identity`), so decoding can be compared bit for bit."""
    dtype = helper.np_dtype_to_tensor_dtype(weight.dtype)
    graph = helper.make_graph([helper.make_node("Identity", ["W"], ["out"])], "g", [],
                              [helper.make_tensor_value_info("out", dtype, list(weight.shape))],
                              [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint8])
@pytest.mark.parametrize("keep", [0.0, 0.003, 0.05, 0.3])
def test_the_rebuilt_tensor_is_the_stored_one_bit_for_bit(dtype, keep) -> None:
    rng = np.random.default_rng(0)
    shape = (48, 33, 5)  # not a multiple of anything, so runs cross rows
    default = dtype(128) if dtype is np.uint8 else dtype(0)  # QCDQ's uint8 weights have zero at 128
    weight = np.full(shape, default, dtype)
    kept = rng.random(shape) < keep
    weight[kept] = rng.integers(1, 100, kept.sum()).astype(dtype) + (default if dtype is np.uint8 else 0)
    model = _identity_model(weight)
    stored = store_sparse(model)
    assert stored.tensors == 1  # every case here is sparse enough to pay: 30 % kept costs 0.3 * (size + 1) bytes
    assert stored.kept == kept.sum() and stored.elements == weight.size
    assert not [i for i in model.graph.initializer if i.name == "W"]  # the dense copy is gone
    onnx.checker.check_model(model, full_check=True)
    reference = ReferenceEvaluator(model).run(None, {})[0]
    runtime = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert reference.dtype == weight.dtype and np.array_equal(reference, weight)
    assert np.array_equal(runtime, weight)


def test_dense_and_small_tensors_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    dense = _identity_model(rng.standard_normal((64, 64)).astype(np.float32))
    assert store_sparse(dense).tensors == 0
    tiny = np.zeros((8, 8), np.float32)  # 256 B: the graph would cost more than the zeros
    tiny[0, 0] = 1
    assert store_sparse(_identity_model(tiny)).tensors == 0
    values = rng.standard_normal((64, 64)).astype(np.float32)  # no value repeats but the zeros
    half = np.where(rng.random((64, 64)) < 0.5, values, 0)  # 50 % kept: 2.5 B per entry against 4 saves 37 %
    assert store_sparse(_identity_model(half)).tensors == 1
    most = np.where(rng.random((64, 64)) < 0.7, values, 0)  # 70 % kept: 3.5 B against 4 saves 12 %, below 20 %
    assert store_sparse(_identity_model(most)).tensors == 0


def test_encode_spans_long_runs_with_fillers() -> None:
    flat = np.zeros(2000, np.int8)
    flat[[3, 1999]] = [5, -7]
    values, gaps = encode(flat, 0)
    positions = np.cumsum(gaps.astype(np.int64))
    assert gaps.max() <= 255
    assert positions[0] == 3 and positions[-1] == 1999 and (np.diff(positions) > 0).all()
    rebuilt = np.zeros_like(flat)
    rebuilt[positions] = values
    assert np.array_equal(rebuilt, flat)


def test_onnxruntime_folds_the_rebuild_when_the_session_starts(tmp_path) -> None:
    # the promise behind "latency unchanged": the optimized graph onnxruntime runs has no rebuild left in it
    weight = np.zeros((128, 64), np.float32)
    weight[::7, ::3] = 0.5
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
                              [numpy_helper.from_array(weight, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "d.onnx")
    assert store_sparse_file(tmp_path / "d.onnx", tmp_path / "s.onnx").tensors == 1
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node}
    assert ops == {"MatMul"}
    x = np.random.default_rng(2).standard_normal((4, 128)).astype(np.float32)
    assert np.array_equal(session.run(None, {"x": x})[0],
                          ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
                          .run(None, {"x": x})[0])
