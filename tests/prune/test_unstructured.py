"""unstructured_prune: one-shot and gradual (AGP) magnitude pruning, hooks in a user's loop, restore, bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

import compress
from compress.core.context import Context
from compress.core.errors import EdgetierError, RecipeError
from compress.core.train import TrainSpec, fit
from compress.prune.unstructured import UnstructuredPrune, UnstructuredPruneConfig, agp_sparsity


def _selected(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_agp_matches_the_cubic_formula() -> None:
    # Zhu & Gupta (2017), eq. 1: s_t = s_f + (s_i - s_f)(1 - t/n)^3
    for t in range(0, 11):
        assert agp_sparsity(t, final=0.9, ramp_steps=10, initial=0.1) == pytest.approx(
            0.9 + (0.1 - 0.9) * (1 - t / 10) ** 3)
    assert agp_sparsity(25, final=0.9, ramp_steps=10) == 0.9  # after the ramp: the final sparsity


def test_oneshot_global_removes_the_smallest_magnitudes(small) -> None:
    model = small()
    dense = {n: w.clone() for n, w in _selected(model).items()}
    model, report = compress.apply(model, UnstructuredPruneConfig(ratio=0.8))
    after = _selected(model)
    total = sum(w.numel() for w in dense.values())
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert zeros == round(0.8 * total)
    kept = torch.cat([dense[n][after[n] != 0].abs().flatten() for n in dense])
    gone = torch.cat([dense[n][after[n] == 0].abs().flatten() for n in dense])
    assert float(gone.max()) <= float(kept.min())
    assert report["sparsity"] == pytest.approx(0.8, abs=1 / total)
    assert set(report["layers"]) == set(dense) and "onnxruntime latency does not drop" in report["note"]


def test_layer_scope_prunes_each_layer_by_the_ratio(small) -> None:
    _, report = compress.apply(small(), UnstructuredPruneConfig(ratio=0.5, scope="layer"))
    for name, layer in report["layers"].items():
        # each layer loses round(0.5 · n) weights: exactly half, or half ± 1/(2n) for odd n
        assert layer["sparsity"] == pytest.approx(0.5, abs=0.5 / layer["weights"] + 1e-6), name


def test_gradual_follows_agp_in_a_users_own_loop(small) -> None:
    model = small()
    steps = 40
    config = UnstructuredPruneConfig(ratio=0.9, schedule="gradual", steps=steps, ramp=0.5, every=5)
    result = compress.apply(model, config)
    hooks, report = result.hooks, result.report
    assert report["sparsity"] == 0.0 and report["ramp_steps"] == 20
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    seen = {}
    for step in range(1, steps + 1):
        out = model(x)
        loss = F.cross_entropy(out, y) + hooks.loss(model, x, out, y)
        optimizer.zero_grad()
        loss.backward()
        hooks.after_backward(model)
        optimizer.step()
        hooks.after_step(model)
        seen[step] = report["sparsity"]
    n = report["weights"]
    for step in (5, 10, 15, 20):  # mask updates: every 5 steps up to the end of the ramp
        assert seen[step] == pytest.approx(agp_sparsity(step, final=0.9, ramp_steps=20), abs=1 / n)
    assert seen[4] == seen[1] == 0.0 and seen[40] == pytest.approx(0.9, abs=1 / n)
    weights = _selected(model)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(0.9 * n)  # the Adam steps after the last update did not revive a weight


def test_gradual_needs_to_know_the_training_length(small) -> None:
    with pytest.raises(EdgetierError, match="this stage does not train") as info:
        compress.apply(small(), UnstructuredPruneConfig(ratio=0.5, schedule="gradual"))
    assert "steps" in str(info.value) and "oneshot" in str(info.value)


def test_gradual_spans_the_stage_training(small, digits) -> None:
    spec = TrainSpec(epochs=2, batch_size=100)
    ctx = Context(example_inputs=(torch.zeros(1, 1, 8, 8),), data=digits, train=spec)
    result = UnstructuredPrune(UnstructuredPruneConfig(ratio=0.7, schedule="gradual", every=3)).apply(small(), ctx)
    assert result.report["schedule_steps"] == 2 * math.ceil(len(digits.train.y) / 100)  # 2 epochs of 13 batches
    fit(result.model, digits.train, spec, hooks=result.hooks)
    assert result.report["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert result.state["step"] == 26 and result.state["masks"] is not None


def test_restore_rebuilds_masks_and_hooks_on_a_fresh_model(small, digits) -> None:
    model, fresh = small(), small()
    spec = TrainSpec(epochs=1, batch_size=128)
    ctx = Context(example_inputs=(torch.zeros(1, 1, 8, 8),), data=digits, train=spec)
    technique = UnstructuredPrune(UnstructuredPruneConfig(ratio=0.6, schedule="gradual", every=2))
    result = technique.apply(model, ctx)
    fit(model, digits.train, spec, hooks=result.hooks)
    saved = torch.load(_roundtrip(result.state), weights_only=True)  # as a checkpoint stores it
    # the state holds the masks reached after training (the pipeline saves it then), not apply's
    assert all(torch.equal(~mask, model.get_submodule(n).weight == 0) for n, mask in saved["masks"].items())
    restored = technique.restore(fresh, saved, ctx)
    fresh.load_state_dict(model.state_dict())
    x = torch.from_numpy(digits.test.x[:16])
    assert torch.equal(fresh.eval()(x), model.eval()(x))
    fit(fresh, digits.train, TrainSpec(epochs=1, lr=0.05), hooks=restored.hooks)  # later stages keep the mask
    for name, mask in saved["masks"].items():
        weight = fresh.get_submodule(name).weight.detach()
        assert float(weight[~mask].abs().max()) == 0.0 and float(weight[mask].abs().min()) > 0.0


def _roundtrip(state: dict) -> object:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": 0.0}, "ratio must be strictly between 0 and 1"),
    ({"ratio": 1.0}, "ratio must be strictly between 0 and 1"),
    ({"ratio": -0.2}, "ratio must be strictly between 0 and 1"),
    ({"ratio": 0.5, "initial_ratio": 0.6}, "initial_ratio (0.6) must be below ratio (0.5)"),
    ({"ratio": 0.5, "scope": "model"}, "'global' or 'layer'"),
])
def test_bad_values_are_refused_when_the_config_is_built(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        UnstructuredPruneConfig(**kwargs)


def test_bad_values_in_a_recipe_name_the_key(tiny_recipe, write_recipe) -> None:
    tiny_recipe["stages"] = [{"name": "prune", "kind": "unstructured_prune", "with": {"ratio": 1.5}}]
    tiny_recipe["variants"] = {"end": {"target": "rpi4"}}
    with pytest.raises(RecipeError) as info:
        compress.load_recipe(write_recipe(tiny_recipe))
    assert "stages[0].with.ratio" in str(info.value) and "strictly between 0 and 1" in str(info.value)


def test_a_selector_that_matches_nothing_is_an_error(small) -> None:
    config = UnstructuredPruneConfig(ratio=0.5, targets=("layer9",))
    with pytest.raises(EdgetierError, match="'layer9' matches no module"):
        config.check_model(small(), None)
    with pytest.raises(EdgetierError, match="'layer9' matches no module"):
        compress.apply(small(), config)


def test_targets_and_ignore_limit_the_pruned_layers(small) -> None:
    model = small()
    fc = model.head.fc.weight.detach().clone()
    _, report = compress.apply(model, UnstructuredPruneConfig(ratio=0.5, ignore=("head.fc",)))
    assert "head.fc" not in report["layers"] and torch.equal(model.head.fc.weight, fc)
    assert np.isclose(report["sparsity"], 0.5, atol=1e-4)
    model = copy.deepcopy(small())
    _, report = compress.apply(model, UnstructuredPruneConfig(ratio=0.5, targets=("re:layer1\\..*",)))
    assert set(report["layers"]) == {"layer1.0.conv1", "layer1.0.conv2"}
