"""The command line: exit codes, one-paragraph errors without tracebacks, nothing half-written."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli as _cli


def _bad_recipes():
    def unknown_key(r): r["modle"] = {}
    def wrong_type(r): r["seed"] = "zero"
    def unknown_kind(r): r["stages"][0]["kind"] = "magic"
    def unknown_target(r): r["variants"]["end"]["target"] = "pdp11"
    def missing_checkpoint(r): r["model"]["checkpoint"] = "gone.pt"
    def factory_not_importing(r): r["model"] = {"factory": "not_a_module_anywhere:make"}
    def override_missing_stage(r): r["variants"]["edge"]["overrides"] = {"prune": {"ratio": 0.5}}
    return [unknown_key, wrong_type, unknown_kind, unknown_target, missing_checkpoint, factory_not_importing,
            override_missing_stage]


@pytest.mark.parametrize("mutate", _bad_recipes(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_bad_recipe_exit_2_one_paragraph_nothing_written(monkeypatch, capsys, tiny_recipe, write_recipe, tmp_path,
                                                          mutate, command):
    mutate(tiny_recipe)
    path = write_recipe(tiny_recipe)
    extra = ["--out", str(tmp_path / "runs")] if command == "run" else []
    code, out, err = _cli(monkeypatch, capsys, command, str(path), *extra)
    assert code == 2
    assert err.startswith("error: ") and str(path) in err and "Fix:" in err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text", ["", "\x00\x01binary", "not: [valid", "- just\n- a list\n"])
def test_files_that_are_not_recipes(monkeypatch, capsys, write_recipe, text):
    code, _, err = _cli(monkeypatch, capsys, "validate", str(write_recipe(text)))
    assert code == 2 and "Traceback" not in err and "Fix:" in err


def test_validate_prints_each_variant(monkeypatch, capsys, tiny_recipe, write_recipe):
    code, out, _ = _cli(monkeypatch, capsys, "validate", str(write_recipe(tiny_recipe)))
    assert code == 0
    assert "end: rpi4" in out and "quantize (ptq_int8)" in out and "edge: jetson_orin_nano" in out


def test_inspect_verifies_and_refuses_a_changed_byte(monkeypatch, capsys, tiny_run, tmp_path):
    # the tiny recipe's end variant targets rpi4 (runtime litert): its bundle holds an int8 .tflite
    _, result = tiny_run
    bundle = tmp_path / "end"
    shutil.copytree(result.bundles["end"], bundle)
    code, out, _ = _cli(monkeypatch, capsys, "inspect", str(bundle))
    assert code == 0 and "every sha256 verified" in out and "model.tflite" in out and "rpi4" in out
    assert "operators: " in out and "CONV_2D" in out and "int8" in out
    assert "parity re-run on 16 stored samples" in out and "passed" in out
    data = bytearray((bundle / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.tflite").write_bytes(bytes(data))
    code, out, err = _cli(monkeypatch, capsys, "inspect", str(bundle))
    assert code == 2 and "model.tflite" in err and "Traceback" not in err


def test_inspect_onnx_bundle(monkeypatch, capsys, tiny_run):
    _, result = tiny_run
    code, out, _ = _cli(monkeypatch, capsys, "inspect", str(result.bundles["edge"]))
    assert code == 0 and "model.onnx" in out and "Conv x" in out and "passed" in out


def test_variant_over_its_storage_budget_fails_and_keeps_earlier_work(monkeypatch, capsys, tiny_recipe,
                                                                      write_recipe, tmp_path):
    import yaml

    from compress.targets import load_target

    small = load_target("jetson_orin_nano").model_dump(mode="json")
    small["name"], small["memory"]["storage_kb"] = "small_store", 1  # every model here is > 1 KiB
    target = tmp_path / "small_store.yaml"
    target.write_text(yaml.safe_dump(small))
    tiny_recipe["variants"] = {"edge": {"target": "jetson_orin_nano", "skip": ["quantize"]},
                               "small": {"target": str(target), "skip": ["quantize"]}}
    code, out, err = _cli(monkeypatch, capsys, "run", str(write_recipe(tiny_recipe)), "--out", str(tmp_path / "runs"))
    assert code == 2 and "Traceback" not in err
    assert "variant small" in err and "storage budget of 1 KiB" in err and "Fix:" in err
    assert (tmp_path / "runs" / "tiny" / "edge" / "manifest.json").is_file()  # the variant before it is kept
    assert not (tmp_path / "runs" / "tiny" / "small").exists()


def test_profile_is_written_and_scales_by_macs(monkeypatch, capsys, tiny_run, tmp_path):
    _, result = tiny_run
    profile = tmp_path / "jetson.json"
    code, out, _ = _cli(monkeypatch, capsys, "profile", str(result.bundles["edge"]), "--out", str(profile))
    assert code == 0 and profile.is_file()
    prof = json.loads(profile.read_text())
    assert prof["target"] == "jetson_orin_nano" and prof["models"][0]["latency_ms"] > 0

    from export.profile import latency_from_profile

    entry = prof["models"][0]
    # the same model at the profiled MACs is estimated at exactly the measured time
    assert latency_from_profile(prof, target="jetson_orin_nano", fmt="onnx", precision="fp32",
                                macs=entry["macs"]) == pytest.approx(entry["latency_ms"])


def test_targets_and_schema(monkeypatch, capsys):
    code, out, _ = _cli(monkeypatch, capsys, "targets", "list")
    for name in ("stm32h7", "ethos_u55", "rpi4", "coral_edgetpu", "jetson_orin_nano", "snapdragon_8gen2", "cloud_gpu"):
        assert name in out
    code, out, _ = _cli(monkeypatch, capsys, "targets", "show", "stm32h7")
    assert code == 0 and "datasheet" in out and "480" in out
    code, _, err = _cli(monkeypatch, capsys, "targets", "show", "stm33")
    assert code == 2 and "stm32h7" in err  # the message lists the known names
    code, out, _ = _cli(monkeypatch, capsys, "schema")
    assert code == 0 and json.loads(out)["title"] == "Recipe"
