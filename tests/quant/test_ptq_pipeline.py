"""ptq_int8's new options in a recipe run: the calibration and the transforms used are in the report,
the accuracy-aware search reports its numbers, and an int8-only target says it cannot fall back."""

from __future__ import annotations

import json

import compress


def test_ptq_options_in_a_run(tiny_recipe, write_recipe, tmp_path):
    tiny_recipe["stages"][-1]["with"] = {"calib_samples": 64, "calibration": "mse", "equalize": True,
                                         "bias_correction": True, "learned_rounding": True,
                                         "min_agreement": 0.9}
    tiny_recipe["stages"] = [tiny_recipe["stages"][0], tiny_recipe["stages"][-1]]
    tiny_recipe["variants"] = {"edge": {"target": "jetson_orin_nano"}}
    run = compress.run(compress.load_recipe(write_recipe(tiny_recipe)), out_dir=tmp_path / "runs")
    edge = run.models[-1]
    summary = edge["stages"][-1]["summary"]
    assert summary["calibration"] == "mse" and summary["calibration_from"] == "recipe"
    assert summary["equalized_pairs"] >= 1 and summary["bias_corrected_layers"] >= 2
    assert summary["learned_rounding"]["layers"] >= 2
    search = edge["parity"]["accuracy_aware"]
    assert search["bound"] == "min_agreement 90 %" and search["met"]
    assert edge["parity"]["calibration"] == "mse" and edge["precision"] == "int8"
    # bias correction and learned rounding change the fp32 model: the bound is about the model before them,
    # exported into the stage's folder of the run (kept with its checkpoints for a resumed run) ...
    assert "before bias correction" in summary["bound_reference"]
    assert list((tmp_path / "runs").glob("*/checkpoints/edge/*/reference.fp32.onnx"))
    # ... and that build-machine path stays out of the bundle
    manifest = json.loads((run.bundles["edge"] / "manifest.json").read_text())
    assert manifest["export_plan"]["quantize"] == "int8_static" and "reference" not in manifest["export_plan"]


def test_int8_only_target_reports_no_fallback():
    import torch

    from compress.core.context import Context
    from compress.quant.ptq import PTQInt8, PTQInt8Config
    from compress.targets import load_target

    technique = PTQInt8(PTQInt8Config(max_loss=0.5))
    result = technique.apply(torch.nn.Linear(4, 2), Context(example_inputs=(torch.zeros(1, 4),),
                                                            target=load_target("coral_edgetpu")))
    assert result.export.fallback is False and result.export.calibration == "mse"
    assert any("runs int8 only" in note for note in result.report["notes"])


def test_uint8_activations_reach_the_export_plan():
    import torch

    from compress.core.context import Context
    from compress.quant.ptq import PTQInt8, PTQInt8Config
    from compress.targets import load_target

    result = PTQInt8(PTQInt8Config(activations="uint8")).apply(
        torch.nn.Linear(4, 2), Context(example_inputs=(torch.zeros(1, 4),), target=load_target("jetson_orin_nano")))
    assert result.export.activations == "uint8" and result.report["activations"] == "uint8"
    assert result.export.to_dict()["activations"] == "uint8"
    assert PTQInt8Config().activations == "int8"  # the default stays onnxruntime's S8S8


def test_uint8_activations_refused_for_litert_at_load(tiny_recipe, write_recipe):
    import pytest

    from compress.core.errors import RecipeError

    tiny_recipe["stages"] = [{"name": "q", "kind": "ptq_int8", "with": {"activations": "uint8"}}]
    tiny_recipe["variants"] = {"end": {"target": "rpi4"}}
    path = write_recipe(tiny_recipe)
    with pytest.raises(RecipeError, match="activations 'uint8' choose how onnxruntime's quantizer") as err:
        compress.load_recipe(path)
    assert str(path) in str(err.value) and err.value.fix


def test_learned_rounding_is_refused_where_its_integers_are_not_checked_to_survive():
    import pytest

    from compress.core.errors import EdgetierError
    from compress.quant.ptq import PTQInt8Config
    from compress.targets import load_target

    with pytest.raises(EdgetierError, match="learned_rounding"):
        PTQInt8Config(learned_rounding=True).check_target(load_target("stm32h7"))
    PTQInt8Config(learned_rounding=True).check_target(load_target("jetson_orin_nano"))


def test_distill_in_a_run_reports_what_it_did_and_is_refused_where_it_cannot_hold(tiny_recipe, write_recipe,
                                                                                    tmp_path):
    import pytest
    from pydantic import ValidationError

    from compress.core.errors import EdgetierError
    from compress.quant.ptq import PTQInt8Config
    from compress.targets import load_target

    tiny_recipe["stages"][-1]["with"] = {"calib_samples": 64, "equalize": True, "bias_correction": True,
                                         "distill": {"steps": 20, "lr": 1e-4, "batch_size": 32}}
    tiny_recipe["stages"] = [tiny_recipe["stages"][0], tiny_recipe["stages"][-1]]
    tiny_recipe["variants"] = {"edge": {"target": "jetson_orin_nano"}}
    run = compress.run(compress.load_recipe(write_recipe(tiny_recipe)), out_dir=tmp_path / "runs")
    edge = run.models[-1]
    done = edge["stages"][-1]["summary"]["distill"]
    assert done["steps"] == 20 and done["layers"] >= 2 and done["activations"] >= done["layers"]
    assert done["inputs"] == "train split, labels unused"
    need = load_target("jetson_orin_nano").tolerance.quantized_top1_agreement  # int8 file vs the tuned model
    assert edge["precision"] == "int8" and edge["parity"]["top1_agreement"] >= need
    with pytest.raises(EdgetierError, match="distill writes the weights"):
        PTQInt8Config(distill={"steps": 10}).check_target(load_target("stm32h7"))
    with pytest.raises(ValidationError, match="learned_rounding and distill"):
        PTQInt8Config(distill={"steps": 10}, learned_rounding=True)
