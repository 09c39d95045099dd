"""Bad input gets one clear error: bits outside 2-8, a budget no allowed width meets, a precision the
target lacks, and QAT on a model with nothing to quantize — from Python and from a recipe, before training."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from torch import nn

import compress
from compress.core.errors import EdgetierError, RecipeError
from compress.quant.mixed_precision import MixedPrecisionConfig
from compress.quant.qat import QATConfig
from compress.targets import load_target


@pytest.mark.parametrize("kwargs", [{"weight_bits": 1}, {"weight_bits": 9}, {"act_bits": 0}, {"act_bits": 16},
                                    {"layers": {"stem.conv": 12}}])
def test_qat_bits_outside_2_to_8(kwargs):
    with pytest.raises(ValidationError, match="must be between 2 and 8 bits"):
        QATConfig(**kwargs)


def test_mixed_bits_and_budget_shape():
    with pytest.raises(ValidationError, match="bits must be between 2 and 8 bits, got 1"):
        MixedPrecisionConfig(bits=[1, 4], budget={"avg_bits": 4})
    with pytest.raises(ValidationError, match="set exactly one of weights_kb, avg_bits, latency_ms"):
        MixedPrecisionConfig(budget={"avg_bits": 4, "weights_kb": 10})
    with pytest.raises(ValidationError, match="weight_only keeps activations float"):
        QATConfig(weight_only=True, act_bits=8)
    with pytest.raises(EdgetierError, match="no budget and no target"):
        MixedPrecisionConfig().resolved_budget(None)


def test_budget_below_the_smallest_width_names_what_it_takes(model):
    params = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    smallest_kb = params * 2 / 8 / 1024  # every layer at 2 bits, stored as INT2
    config = MixedPrecisionConfig(bits=[2, 4, 8], budget={"weights_kb": smallest_kb * 0.9})
    with pytest.raises(EdgetierError, match="cannot be met") as err:
        config.check_model(model, load_target("rpi4"))
    assert f"{smallest_kb:.4g}" in err.value.problem and f"{smallest_kb:.4g}" in err.value.fix
    MixedPrecisionConfig(bits=[2, 4, 8], budget={"weights_kb": smallest_kb * 1.01}).check_model(model, None)
    # on an int8-only target the smallest width is 8 bits, so the same budget is 4x out of reach
    with pytest.raises(EdgetierError, match=r"at 8 bits \(the smallest width allowed on coral_edgetpu\)"):
        MixedPrecisionConfig(budget={"weights_kb": smallest_kb * 3}).check_model(model, load_target("coral_edgetpu"))
    # a latency budget below the target's fixed overhead is out of reach whatever the bits
    with pytest.raises(EdgetierError, match="cannot be met"):
        MixedPrecisionConfig(budget={"latency_ms": 0.01}).check_model(model, load_target("rpi4"))


def test_nothing_to_quantize(model):
    with pytest.raises(EdgetierError, match="has no Conv1d, Conv2d or Linear layer"):
        QATConfig().check_model(nn.Sequential(nn.ReLU(), nn.Flatten()), None)
    with pytest.raises(EdgetierError, match="has no Conv1d, Conv2d or Linear layer"):
        compress.apply(nn.Sequential(nn.ReLU()), QATConfig(), example_inputs=())
    with pytest.raises(EdgetierError, match="matches none of the .* quantized layers"):
        QATConfig(layers={"type:BatchNorm2d": 4}).check_model(model, None)
    with pytest.raises(EdgetierError, match="matches no module"):
        QATConfig(targets=("layer9",)).check_model(model, None)


def _recipe(tiny_recipe, stage):
    tiny_recipe["stages"] = [stage]
    tiny_recipe["variants"] = {"end": {"target": "rpi4"}, "tpu": {"target": "coral_edgetpu"}}
    return tiny_recipe


@pytest.mark.parametrize(("stage", "problem"), [
    ({"name": "q", "kind": "qat", "with": {"weight_bits": 4}}, "4-bit weights, which target 'coral_edgetpu' cannot"),
    ({"name": "q", "kind": "qat", "with": {"act_bits": 4}}, "4-bit activations need int4"),
    ({"name": "q", "kind": "mixed_precision", "with": {"bits": [2, 4], "budget": {"avg_bits": 3}}},
     "which target 'coral_edgetpu' cannot run"),
    ({"name": "q", "kind": "mixed_precision", "with": {"budget": {"avg_bits": 4}}},
     "avg_bits 4 is below the smallest width allowed on coral_edgetpu"),
    ({"name": "q", "kind": "qat", "with": {"weight_bits": 9}}, "between 2 and 8 bits"),
])
def test_recipe_load_refuses(tiny_recipe, write_recipe, stage, problem):
    path = write_recipe(_recipe(tiny_recipe, stage))
    with pytest.raises(RecipeError, match=problem) as err:
        compress.load_recipe(path)
    assert str(path) in str(err.value) and err.value.fix


def test_impossible_budget_fails_before_any_training(tiny_recipe, write_recipe, tmp_path):
    recipe = compress.load_recipe(write_recipe(_recipe(
        tiny_recipe, {"name": "q", "kind": "mixed_precision", "with": {"budget": {"weights_kb": 0.5}},
                      "train": {"epochs": 1}})))
    with pytest.raises(RecipeError, match="budget weights_kb 0.5 cannot be met") as err:
        compress.run(recipe, out_dir=tmp_path / "runs", variants=["end"])
    assert "stages[0].with" in err.value.where
    assert not (tmp_path / "runs" / "tiny" / "checkpoints" / "cloud.pt").exists()  # nothing was trained


def test_ptq_after_qat_is_refused(model, ctx):
    from compress.quant.ptq import PTQInt8, PTQInt8Config
    from compress.quant.qat import QAT

    quantized = QAT(QATConfig(weight_bits=8, targets=("head.fc",))).apply(model, ctx).model
    with pytest.raises(EdgetierError, match="already quantized by a qat"):
        PTQInt8(PTQInt8Config()).apply(quantized, ctx)
