"""`importance: activation` of structured_prune (`compress.prune.activation`): heads and MLP channels
are ranked by what they add to the layer reading them on the train inputs, not by weight size —
a head / channel with large weights that contributes nothing goes first; bad input is one error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.prune.structured import StructuredPrune, StructuredPruneConfig
from tests.hf.tiny import tiny_bert, token_batch, token_dataset

HIDDEN, HEADS = 64, 4
SIZE = HIDDEN // HEADS
DEAD_HEAD = 2  # per layer: huge query / key / value weights, output-projection columns near 0
DEAD_CHANNELS = list(range(0, 128, 2))  # half the MLP: large weights, a bias that keeps GELU at 0



def _rigged_bert() -> nn.Module:
    """A tiny BERT whose weight magnitudes point at the wrong units: l2 keeps what adds nothing."""
    model = tiny_bert(hidden=HIDDEN, heads=HEADS, layers=2)
    rows = slice(DEAD_HEAD * SIZE, (DEAD_HEAD + 1) * SIZE)
    with torch.no_grad():
        for layer in model.encoder.layer:
            for proj in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                proj.weight[rows] *= 20
            layer.attention.output.dense.weight[:, rows] *= 1e-4
            dense = layer.intermediate.dense
            dense.weight[DEAD_CHANNELS] *= 5
            dense.bias[DEAD_CHANNELS] = -1e4  # GELU(x) = 0 on every input
    return model


def _kept(model: nn.Module, reference: nn.Module) -> tuple[list[list[int]], list[list[int]]]:
    """Per layer: the original heads (by their value rows) and MLP channels the pruned model kept."""
    heads, channels = [], []
    for layer, before in zip(model.encoder.layer, reference.encoder.layer, strict=True):
        value, value0 = layer.attention.self.value.weight, before.attention.self.value.weight
        heads.append([next(h for h in range(HEADS) if torch.equal(value[i * SIZE:(i + 1) * SIZE],
                                                                  value0[h * SIZE:(h + 1) * SIZE]))
                      for i in range(value.shape[0] // SIZE)])
        w, w0 = layer.intermediate.dense.weight, before.intermediate.dense.weight
        channels.append([next(c for c in range(w0.shape[0]) if torch.equal(w[i], w0[c])) for i in range(w.shape[0])])
    return heads, channels


def _prune(importance: str) -> tuple[list[list[int]], list[list[int]], dict]:
    model, reference = _rigged_bert(), _rigged_bert()
    batch = token_batch()
    ctx = Context(example_inputs=(batch["input_ids"], batch["attention_mask"]), data=token_dataset())
    result = StructuredPrune(StructuredPruneConfig(heads=0.25, mlp=0.5, importance=importance,
                                                   activation_samples=48)).apply(model, ctx)
    return *_kept(model, reference), result.report


def test_activation_removes_the_head_and_channels_that_add_nothing_where_l2_keeps_them():
    heads, channels, report = _prune("activation")
    assert all(DEAD_HEAD not in kept and len(kept) == 3 for kept in heads)
    assert all(sorted(kept) == [c for c in range(128) if c not in DEAD_CHANNELS] for kept in channels)
    assert report["importance"] == "activation" and report["activation_samples"] == 48
    # the same model by weight magnitude keeps the big, useless units: the test tells the scores apart
    heads_l2, channels_l2, _ = _prune("l2")
    assert all(DEAD_HEAD in kept for kept in heads_l2)
    assert all(set(kept) == set(DEAD_CHANNELS) for kept in channels_l2)


def test_activation_needs_train_data():
    model, batch = tiny_bert(hidden=HIDDEN, heads=HEADS, layers=2), token_batch()
    cfg = StructuredPruneConfig(heads=0.25, mlp=0.5, importance="activation")
    with pytest.raises(EdgetierError, match="no data was given"):
        StructuredPrune(cfg).apply(model, Context(example_inputs=(batch["input_ids"], batch["attention_mask"])))


def test_activation_on_a_model_pruned_per_layer_is_one_clear_error():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    cfg = StructuredPruneConfig(ratio=0.5, importance="activation")
    with pytest.raises(EdgetierError, match="importance activation scores attention heads and MLP hidden channels"):
        cfg.check_model(model, None)
    with pytest.raises(EdgetierError, match="heads / mlp"):
        StructuredPrune(cfg).apply(model, Context(example_inputs=(torch.zeros(1, 1, 8, 8),)))
