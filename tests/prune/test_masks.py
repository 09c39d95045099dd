"""Masks: exact counts, ranking, no regrowth, the disconnected-layer error, and hooks that hold under Adam."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.core.errors import EdgetierError
from compress.prune.masks import (
    apply_masks,
    layer_sparsity,
    mask_hooks,
    masks_from_scores,
    prunable_weights,
    total_sparsity,
)


def test_global_ranks_across_layers_and_removes_exactly_the_lowest() -> None:
    torch.manual_seed(0)
    scores = {"a": torch.rand(10, 10), "b": torch.rand(50) * 0.5}  # b holds smaller scores on average
    masks = masks_from_scores(scores, 0.3, scope="global")
    flat = torch.cat([scores["a"].flatten(), scores["b"]])
    kept = torch.cat([masks["a"].flatten(), masks["b"]])
    assert int((~kept).sum()) == 45  # round(0.3 · 150)
    assert float(flat[~kept].max()) <= float(flat[kept].min())  # every removed score is below every kept one
    assert layer_sparsity(masks)["b"]["sparsity"] > layer_sparsity(masks)["a"]["sparsity"]


def test_layer_scope_gives_each_layer_the_same_share() -> None:
    torch.manual_seed(0)
    masks = masks_from_scores({"a": torch.rand(10, 10), "b": torch.rand(50) * 0.5}, 0.3, scope="layer")
    assert layer_sparsity(masks) == {"a": {"weights": 100, "kept": 70, "sparsity": 0.3},
                                     "b": {"weights": 50, "kept": 35, "sparsity": 0.3}}
    assert total_sparsity(masks) == pytest.approx(0.3)


def test_previously_pruned_entries_never_regrow() -> None:
    scores = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    previous = {"a": torch.tensor([False, True, True, True, True])}  # the largest score was pruned before
    masks = masks_from_scores(scores, 0.4, scope="global", previous=previous)
    assert masks["a"].tolist() == [False, True, True, True, False]


def test_removing_a_whole_layer_is_an_error_naming_it() -> None:
    scores = {"big": torch.ones(100), "tiny": torch.full((4,), 0.01)}
    with pytest.raises(EdgetierError, match="every weight of layer 'tiny'") as info:
        masks_from_scores(scores, 0.5, scope="global")
    assert "ignore" in str(info.value) and "scope: layer" in str(info.value)


def test_prunable_weights_follow_the_selectors() -> None:
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(8, 2))
    assert list(prunable_weights(model, ignore=["type:Linear"])) == ["0"]
    with pytest.raises(EdgetierError, match="'conv9' matches no module"):
        prunable_weights(model, ["conv9"])
    with pytest.raises(EdgetierError, match="no module with a `weight`"):
        prunable_weights(model, ["type:Flatten"])


def test_hooks_keep_pruned_weights_at_zero_through_adam_in_a_users_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    masks = masks_from_scores({"0": model[0].weight.abs()}, 0.75, scope="layer")
    apply_masks(model, masks)
    hooks = mask_hooks(masks)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    before = model[0].weight.detach().clone()
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        hooks.after_backward(model)
        assert float(model[0].weight.grad[~masks["0"]].abs().max()) == 0.0  # gradients of pruned weights zeroed
        optimizer.step()
        hooks.after_step(model)
    weight = model[0].weight.detach()
    assert float(weight[~masks["0"]].abs().max()) == 0.0
    assert not torch.equal(weight[masks["0"]], before[masks["0"]])  # the survivors did train


def test_a_mask_that_no_longer_fits_is_a_clear_error() -> None:
    model = nn.Linear(4, 2)
    with pytest.raises(EdgetierError, match="run structured_prune before unstructured"):
        apply_masks(model, {"": torch.ones(3, 4, dtype=torch.bool)})
