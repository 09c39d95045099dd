"""The model adapter reads the prediction of tensors, tuples, dicts and Hugging Face outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.core.adapter import AdapterError, InputSpec, ModelAdapter, OutputSpec
from tests.hf.tiny import tiny_bert, tiny_vit, token_batch


def test_bert_mean_pooling_matches_a_hand_computed_masked_mean():
    model, batch = tiny_bert(), token_batch()
    adapter = ModelAdapter.from_model(model, batch)
    assert adapter.names == ["input_ids", "attention_mask"]
    assert adapter.inputs[0].shape == ("batch", "sequence") and adapter.inputs[0].dtype == "int64"
    assert (adapter.output.select, adapter.output.pooling) == ("last_hidden_state", "mean")
    with torch.no_grad():
        got = adapter.call(model, batch)
        hidden = model(**batch).last_hidden_state
    for row in range(len(got)):
        n = int(batch["attention_mask"][row].sum())
        # same float32 ops in another order: agreement to a few ulps of values of order 1
        torch.testing.assert_close(got[row], hidden[row, :n].mean(0), atol=1e-5, rtol=1e-5)


def test_vit_reads_logits_from_the_model_output_and_takes_arrays():
    model = tiny_vit()
    x = torch.randn(3, 1, 16, 16)
    adapter = ModelAdapter.from_model(model, x)
    assert adapter.output.select == "logits"
    with torch.no_grad():
        got = adapter.call(model, x.numpy())  # numpy batches are accepted too
    torch.testing.assert_close(got, model(x).logits, atol=0, rtol=0)  # same ops, same order


def test_records_carry_several_inputs_as_one_sliceable_array():
    model, batch = tiny_bert(), token_batch(n=5)
    adapter = ModelAdapter.from_model(model, batch)
    records = adapter.records({k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        torch.testing.assert_close(adapter.call(model, records[1:3]),
                                   adapter.call(model, {k: v[1:3] for k, v in batch.items()}), atol=0, rtol=0)


def test_tuple_dict_and_callable_outputs():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    x = torch.ones(2, 3)
    assert ModelAdapter.from_model(Pair(), x).call(Pair(), x).tolist() == [[2.0] * 3] * 2
    pick = ModelAdapter.from_model(Pair(), x, output=OutputSpec(select=1))
    assert pick.call(Pair(), x)[0, 0] == 3.0
    fn = ModelAdapter.from_model(Pair(), x, output=OutputSpec(fn=lambda out, inputs: out[0] + out[1]))
    assert fn.call(Pair(), x)[0, 0] == 5.0
    assert fn.to_dict()["output"]["fn"].startswith("callable")


def test_an_unreadable_output_names_its_type_and_the_fix():
    class Words(nn.Module):
        def forward(self, x):
            return {"hidden": [x], "note": "hi"}

    with pytest.raises(AdapterError) as err:
        ModelAdapter.from_model(Words(), torch.ones(1, 2))
    text = str(err.value)
    assert "dict with fields ['hidden', 'note']" in text and "output: hidden" in text


def test_an_input_spec_that_does_not_match_the_forward_is_refused():
    spec = (InputSpec(name="ids", dtype="int64", shape=("batch", "sequence")),
            InputSpec(name="mask", dtype="int64", shape=("batch", "sequence")),
            InputSpec(name="types", dtype="int64", shape=("batch", "sequence")))

    class One(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(AdapterError, match=r"takes \(x\)"):
        ModelAdapter.from_model(One(), {"ids": torch.ones(1, 2)}, inputs=spec)


def test_adapter_round_trips_through_json():
    adapter = ModelAdapter.from_model(tiny_bert(), token_batch())
    assert ModelAdapter.model_validate(adapter.to_dict()) == adapter
