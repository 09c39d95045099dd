"""`compress.export` turns tiny Hugging Face models (random init, built here) into verified bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import compress
from compress.core.adapter import AdapterError
from export import runtime
from tests.hf.tiny import tiny_bert, tiny_vit, token_batch


def test_two_input_bert_exports_with_dynamic_batch_and_sequence(tmp_path):
    model, batch = tiny_bert(), token_batch(n=6, seq=9)
    bundle = compress.export(model, target="jetson_orin_nano", out_dir=tmp_path / "b", data=batch, name="bert")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [(i["name"], i["dtype"], i["dynamic_axes"]) for i in manifest["inputs"]] == [
        ("input_ids", "int64", {"0": "batch", "1": "sequence"}),
        ("attention_mask", "int64", {"0": "batch", "1": "sequence"})]
    # another batch size and sequence length than the export's example
    other = token_batch(n=3, seq=13, seed=1)
    got = bundle.predict({k: v.numpy() for k, v in other.items()})
    with torch.no_grad():
        hidden = model(**other).last_hidden_state
    ref = (hidden * other["attention_mask"][..., None]).sum(1) / other["attention_mask"].sum(1, keepdim=True)
    # fp32 graph vs eager fp32: reassociated sums over 32 features, values of order 1
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["models"][0]["parity"]["max_abs_diff"] < 1e-4


def test_int8_for_a_transformer_is_dynamic_and_smaller(tmp_path):
    model, batch = tiny_bert(hidden=64), token_batch(n=16, seq=9)
    model.set_attn_implementation("eager")  # as load_hf loads: the attention graph onnxruntime's fusion knows
    compress.export(model, target="jetson_orin_nano", out_dir=tmp_path / "b", data=batch, quantize="int8")
    entry = json.loads((tmp_path / "b" / "report.json").read_text())["models"][0]
    assert entry["int8_method"].startswith("onnxruntime dynamic")
    assert entry["bytes"] < 0.5 * entry["fp32_bytes"]  # int8 weights: ~4x smaller linear layers, fp32 rest
    assert entry["parity"]["int8_mean_cosine"] >= 0.98
    # onnxruntime's Attention fusion ran (its head count given from the config: the graph's dynamic
    # sequence axis hides it), so attention is one quantized QAttention op per layer
    assert entry["int8_method"].endswith("(after onnxruntime transformer fusion)")
    import onnx

    ops = [n.op_type for n in onnx.load(str(tmp_path / "b" / "model.onnx")).graph.node]
    assert ops.count("QAttention") == 2  # tiny_bert: 2 layers
    # every weighted MatMul is int8 (3 MatMulInteger per layer besides QAttention, fused to DynamicQuantizeMatMul at session load) and
    # the MLP's Gelu is onnxruntime's FastGelu (tanh form; the exact erf form was the slowest float op left)
    assert "MatMul" not in ops and ops.count("MatMulInteger") == 6 and ops.count("FastGelu") == 2
    # the fused residual + LayerNorm is split back into Sum + LayerNormalization (the faster CPU kernel)
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 4 and ops.count("Sum") == 4


def test_vit_one_input_exports_logits_and_takes_a_plain_array(tmp_path):
    model = tiny_vit()
    x = torch.randn(8, 1, 16, 16)
    bundle = compress.export(model, target="jetson_orin_nano", out_dir=tmp_path / "b", example_inputs=x)
    with torch.no_grad():
        ref = model(x).logits.numpy()
    np.testing.assert_allclose(bundle.predict(x.numpy()), ref, atol=1e-4, rtol=1e-4)  # fp32 reassociation
    assert bundle.manifest["output"]["adapter"]["select"] == "logits"


def test_an_unreadable_output_writes_nothing(tmp_path):
    class Words(torch.nn.Module):
        def forward(self, x):
            return {"hidden": [x]}

    with pytest.raises(AdapterError, match="output: hidden"):
        compress.export(Words(), target="jetson_orin_nano", out_dir=tmp_path / "b", example_inputs=torch.ones(1, 2))
    assert not (tmp_path / "b").exists()


def test_runtime_bundle_refuses_text_without_a_tokenizer(tmp_path):
    model, batch = tiny_bert(), token_batch()
    compress.export(model, target="jetson_orin_nano", out_dir=tmp_path / "b", data=batch)
    with pytest.raises(Exception, match="no tokenizer"):
        runtime.load(tmp_path / "b").predict(["some text"])
