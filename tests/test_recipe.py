"""Recipes: valid ones resolve into typed plans; every kind of mistake fails at load time, naming
the file, the key path (with the line) and the fix."""

from __future__ import annotations

import pytest

from compress.core.errors import RecipeError
from compress.core.resources import shipped_dir
from compress.quant.ptq import PTQInt8Config
from compress.recipe import load_recipe, recipe_json_schema


def test_shipped_recipes_load():
    for path in shipped_dir("recipes").glob("*.yaml"):
        recipe = load_recipe(path)
        assert recipe.variants


def test_resolve_gives_a_typed_plan(tiny_recipe, write_recipe):
    tiny_recipe["variants"]["end"]["overrides"] = {"quantize": {"per_channel": False}}
    recipe = load_recipe(write_recipe(tiny_recipe))
    end = recipe.resolve("end")
    assert end.target.name == "rpi4" and end.target.tier == "end"
    assert [s.name for s in end.stages] == ["tune", "tune2", "quantize"]
    quant = end.stages[2].config
    assert isinstance(quant, PTQInt8Config) and quant.per_channel is False and quant.calib_samples == 64
    # stage train merges over defaults.train over the built-in defaults
    assert end.stages[0].train.epochs == 1 and end.stages[0].train.lr == 0.001 and end.stages[0].train.batch_size == 64
    assert end.stages[2].train is None
    edge = recipe.resolve("edge")
    assert [s.name for s in edge.stages] == ["tune", "tune2"] and edge.target.tier == "edge"


def test_a_stage_can_train_with_dropout_off(tiny_recipe, write_recipe):
    tiny_recipe["stages"][0]["train"]["dropout"] = False
    end = load_recipe(write_recipe(tiny_recipe)).resolve("end")
    assert end.stages[0].train.dropout is False and end.stages[1].train.dropout is True  # the default


def test_recipe_hash_follows_content(tiny_recipe, write_recipe):
    a = load_recipe(write_recipe(tiny_recipe, "a.yaml")).sha256
    assert load_recipe(write_recipe(tiny_recipe, "b.yaml")).sha256 == a
    tiny_recipe["seed"] = 1
    assert load_recipe(write_recipe(tiny_recipe, "c.yaml")).sha256 != a


def _mutations():
    def unknown_top(r): r["stagez"] = []
    def unknown_stage_key(r): r["stages"][2]["with"]["bits"] = 4
    def wrong_type(r): r["stages"][2]["with"]["calib_samples"] = "many"
    def wrong_train_type(r): r["stages"][0]["train"]["epochs"] = -1
    def unknown_kind(r): r["stages"][1]["kind"] = "prune_everything"
    def unknown_target(r): r["variants"]["end"]["target"] = "stm33"
    def missing_checkpoint(r): r["model"]["checkpoint"] = "nowhere.pt"
    def bad_factory(r): r["model"] = {"factory": "no_such_pkg.models:build"}
    def bad_factory_form(r): r["model"] = {"factory": "no_colon"}
    def override_unknown_stage(r): r["variants"]["end"]["overrides"] = {"prune": {"ratio": 0.5}}
    def override_bad_key(r): r["variants"]["end"]["overrides"] = {"quantize": {"ratio": 0.5}}
    def skip_unknown_stage(r): r["variants"]["end"]["skip"] = ["nope"]
    def unknown_zoo(r): r["model"]["zoo"] = "resnet99"
    def unknown_zoo_param(r): r["model"]["depth"] = 3
    def unknown_dataset(r): r["data"] = {"dataset": "cifar"}
    def no_variants(r): r["variants"] = {}
    def reserved_variant(r): r["variants"]["cloud"] = {"target": "rpi4"}
    def wrong_schema_version(r): r["schema_version"] = 2
    return [
        (unknown_top, "unknown key 'stagez'", "stagez"),
        (unknown_stage_key, "unknown key 'bits'", "stages[2].with.bits"),
        (wrong_type, "calib_samples", "stages[2].with.calib_samples"),
        (wrong_train_type, "greater than or equal to 0", "stages[0].train.epochs"),
        (unknown_kind, "unknown stage kind 'prune_everything'", "stages[1].kind"),
        (unknown_target, "stm33", "variants.end.target"),
        (missing_checkpoint, "does not exist", "model.checkpoint"),
        (bad_factory, "does not import", "model.factory"),
        (bad_factory_form, "package.module:function", "model.factory"),
        (override_unknown_stage, "stage 'prune', which does not exist", "variants.end.overrides.prune"),
        (override_bad_key, "unknown key 'ratio'", "variants.end.overrides.quantize.ratio"),
        (skip_unknown_stage, "stage 'nope', which does not exist", "variants.end.skip[0]"),
        (unknown_zoo, "resnet99", "model.zoo"),
        (unknown_zoo_param, "depth", "model.zoo"),
        (unknown_dataset, "cifar", "data"),
        (no_variants, "at least one variant", "variants"),
        (reserved_variant, "reserved", "variants"),
        (wrong_schema_version, "schema_version", "schema_version"),
    ]


@pytest.mark.parametrize("mutate,problem,key_path", _mutations(), ids=lambda v: getattr(v, "__name__", None))
def test_bad_recipes_name_file_key_and_fix(tiny_recipe, write_recipe, mutate, problem, key_path):
    mutate(tiny_recipe)
    path = write_recipe(tiny_recipe)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert problem in message
    assert key_path in message
    assert str(path) in message
    assert "Fix:" in message
    assert "\n" not in message  # one paragraph


def test_error_points_at_the_yaml_line(write_recipe):
    path = write_recipe("""schema_version: 1
name: tiny
model: {zoo: resnet2d, width: 8}
data: {dataset: digits}
stages:
  - name: quantize
    kind: ptq_int8
    with:
      calib_samples: lots
variants:
  end: {target: rpi4}
""")
    with pytest.raises(RecipeError, match=r"recipe\.yaml:9: stages\[0\]\.with\.calib_samples"):
        load_recipe(path)


def test_stage_the_target_cannot_run_is_refused(tiny_recipe, write_recipe, tmp_path):
    import yaml

    target = yaml.safe_load((shipped_dir("hw_targets") / "cloud_gpu.yaml").read_text())
    target.update(name="fp32_only", tier="end", link={"to": "edge", "technology": "Ethernet",
                                                      "bandwidth_mbps": 100, "rtt_ms": 1})
    target["compute"]["throughput_gmacs"] = {"fp32": 10.0}
    (tmp_path / "fp32_only.yaml").write_text(yaml.safe_dump(target))
    tiny_recipe["variants"]["end"]["target"] = "fp32_only.yaml"  # a target file beside the recipe
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tiny_recipe))
    assert "does not run int8" in str(info.value) and "variants.end.target" in str(info.value)
    tiny_recipe["variants"]["end"]["skip"] = ["quantize"]
    assert load_recipe(write_recipe(tiny_recipe)).resolve("end").target.name == "fp32_only"


@pytest.mark.parametrize("text,problem", [
    ("", "recipe is empty"),
    ("# only a comment\n", "recipe is empty"),
    ("just some words", "must be a YAML mapping"),
    ("name: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
])
def test_files_that_are_not_recipes(write_recipe, text, problem):
    with pytest.raises(RecipeError, match=problem):
        load_recipe(write_recipe(text))


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "absent.yaml")
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x80\x81\xff\x00")
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(binary)


def test_schema_lists_kinds_and_their_keys():
    schema = recipe_json_schema()
    stage = schema["$defs"]["Stage"]
    assert "ptq_int8" in stage["properties"]["kind"]["enum"]
    ptq = next(rule for rule in stage["allOf"] if rule["if"]["properties"]["kind"]["const"] == "ptq_int8")
    assert "calib_samples" in ptq["then"]["properties"]["with"]["properties"]
    assert "with" in stage["properties"]  # the YAML name, not the Python alias
