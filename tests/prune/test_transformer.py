"""structured_prune on transformers: whole heads (q/k/v/o consistent), MLP hidden channels, the head
count in the modules and the config, the parameter count, save → reload, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.prune.structured import StructuredPrune, StructuredPruneConfig
from compress.prune.transformer import find_attention
from tests.hf.tiny import tiny_bert, tiny_vit, token_batch

HIDDEN, HEADS, LAYERS = 64, 4, 2  # tiny_bert: head size 16, intermediate 2 × hidden = 128


def _bert() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    batch = token_batch()
    return tiny_bert(hidden=HIDDEN, heads=HEADS, layers=LAYERS), (batch["input_ids"], batch["attention_mask"])


def _prune(model: nn.Module, example: tuple[torch.Tensor, ...], **amounts: float):
    return StructuredPrune(StructuredPruneConfig(**amounts)).apply(model, Context(example_inputs=example))


def test_bert_loses_whole_heads_and_the_config_says_how_many():
    model, example = _bert()
    original = copy.deepcopy(model)
    result = _prune(model, example, heads=0.25, mlp=0.5)
    size = HIDDEN // HEADS
    for layer, before in zip(model.encoder.layer, original.encoder.layer, strict=True):
        attn, attn0 = layer.attention.self, before.attention.self
        assert attn.num_attention_heads == 3 and attn.all_head_size == 3 * size == attn.query.out_features
        # every kept block of `size` rows of q, k and v is one whole original head, the same heads in all three
        kept = []
        for proj in ("query", "key", "value"):
            rows, rows0 = getattr(attn, proj).weight, getattr(attn0, proj).weight
            heads = [next(h for h in range(HEADS) if torch.equal(rows[i * size:(i + 1) * size],
                                                                 rows0[h * size:(h + 1) * size])) for i in range(3)]
            kept.append(heads)
        assert kept[0] == kept[1] == kept[2]
        # the output projection reads exactly those heads' columns
        cols = torch.cat([before.attention.output.dense.weight[:, h * size:(h + 1) * size] for h in kept[0]], 1)
        assert torch.equal(layer.attention.output.dense.weight, cols)
        assert layer.intermediate.dense.out_features == 64 == layer.output.dense.in_features
        assert layer.output.dense.out_features == HIDDEN  # the residual stream keeps its width
    assert model.config.num_attention_heads == 3 and model.config.intermediate_size == 64
    assert result.report["heads_kept"] == [6, 8]


def test_parameter_count_after_25_percent_heads_and_50_percent_mlp():
    model, example = _bert()
    before = sum(p.numel() for p in model.parameters())
    _prune(model, example, heads=0.25, mlp=0.5)
    size, removed_heads, removed_mlp = HIDDEN // HEADS, 1, HIDDEN  # ceil(0.25 × 4) heads, half of 128 channels
    per_layer = (3 * removed_heads * size * (HIDDEN + 1)  # q, k, v rows and biases
                 + removed_heads * size * HIDDEN  # the output projection's input columns
                 + removed_mlp * (HIDDEN + 1)  # intermediate.dense rows and biases
                 + removed_mlp * HIDDEN)  # output.dense input columns
    assert sum(p.numel() for p in model.parameters()) == before - LAYERS * per_layer


def test_bert_restore_replays_the_pruning_so_the_saved_weights_reload(tmp_path):
    model, example = _bert()
    result = _prune(model, example, heads=0.25, mlp=0.5)
    torch.save({"state_dict": model.state_dict(), "state": result.state}, tmp_path / "pruned.pt")
    saved = torch.load(tmp_path / "pruned.pt", weights_only=True)
    fresh = tiny_bert(hidden=HIDDEN, heads=HEADS, layers=LAYERS, seed=1)  # the unpruned config, other weights
    StructuredPrune(StructuredPruneConfig(heads=0.25, mlp=0.5)).restore(fresh, saved["state"],
                                                                         Context(example_inputs=example))
    fresh.load_state_dict(saved["state_dict"])
    assert fresh.config.num_attention_heads == 3
    with torch.no_grad():  # same weights, same ops: equal up to float summation order (identical in practice)
        torch.testing.assert_close(fresh(*example).last_hidden_state, model(*example).last_hidden_state)


def test_vit_reloads_from_a_saved_folder_with_from_pretrained(tmp_path):
    from transformers import ViTForImageClassification

    model, x = tiny_vit(), torch.randn(2, 1, 16, 16)
    _prune(model, (x,), heads=0.5, mlp=0.5)
    assert [a.heads for a in find_attention(model)] == [2, 2] and model.classifier.out_features == 10
    model.save_pretrained(tmp_path)
    again = ViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits)


def test_a_plain_ratio_on_bert_prunes_heads_and_mlp_not_the_residual_stream():
    model, example = _bert()
    result = _prune(model, example, ratio=0.5)  # the old per-layer path failed on output.dense shapes
    assert result.report["heads_kept"] == [4, 8]
    assert all(layer.output.dense.out_features == HIDDEN for layer in model.encoder.layer)
    assert model(*example).last_hidden_state.shape == (*example[0].shape, HIDDEN)


def test_pruning_heads_of_a_model_without_attention_is_one_clear_error():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(EdgetierError, match="no attention module"):
        StructuredPruneConfig(heads=0.25).check_model(model, None)
    with pytest.raises(EdgetierError, match="no attention module"):
        _prune(model, (torch.zeros(1, 4),), heads=0.25)


def test_heads_and_ratio_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        StructuredPruneConfig(heads=0.25, ratio=0.5)


def test_compress_save_and_load_round_trip_a_head_pruned_bert(tmp_path):
    import compress

    model, example = _bert()
    pruned = compress.apply(model, StructuredPruneConfig(heads=0.25, mlp=0.5), example_inputs=example).model
    compress.save(pruned, tmp_path / "bert.pt")
    again = compress.load(tmp_path / "bert.pt", tiny_bert(hidden=HIDDEN, heads=HEADS, layers=LAYERS, seed=3),
                          example_inputs=example)
    assert again.config.num_attention_heads == 3
    with torch.no_grad():  # same weights and ops: equal up to float summation order (identical in practice)
        torch.testing.assert_close(again(*example).last_hidden_state, pruned(*example).last_hidden_state)
