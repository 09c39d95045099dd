"""Hostile recipes (issue 13, items 1, 2 and 5): refused with one paragraph, before any work, nothing run.

Each reproducer re-creates a case of the outside probe from its description.
"""

from __future__ import annotations

import sys
import time

import pytest
import torch

from compress.core.errors import EdgetierError, RecipeError
from compress.pipeline import run
from compress.recipe import load_recipe
from tests.conftest import run_cli as _cli

# -- item 1: code in a recipe is opt-in -------------------------------------------------------

@pytest.mark.parametrize("section", ["model", "data"])
def test_validate_never_imports_a_factory_and_run_refuses_without_trust(monkeypatch, capsys, tiny_recipe,
                                                                        write_recipe, tmp_path, section):
    marker = tmp_path / "pwned.txt"
    # a module whose import has a side effect: validate must not import it, run must not either
    (tmp_path / "evil_factory_pkg.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                                   "def make(**kw):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    if section == "model":
        tiny_recipe["model"] = {"factory": "evil_factory_pkg:make", "command": "id > pwned.txt"}
    else:
        tiny_recipe["data"] = {"dataset": "factory", "factory": "evil_factory_pkg:make"}
    path = write_recipe(tiny_recipe)
    recipe = load_recipe(path)  # validates without importing
    assert "evil_factory_pkg" not in sys.modules and not marker.exists()
    with pytest.raises(RecipeError) as info:
        run(recipe, out_dir=tmp_path / "runs")
    message = str(info.value)
    assert "evil_factory_pkg:make" in message and "--trust-code" in message and "\n" not in message
    assert not marker.exists() and not (tmp_path / "runs").exists()
    code, out, err = _cli(monkeypatch, capsys, "run", str(path), "--out", str(tmp_path / "runs"))
    assert code == 2 and "--trust-code" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_os_system_factory_is_never_called(monkeypatch, capsys, tiny_recipe, write_recipe, tmp_path):
    monkeypatch.chdir(tmp_path)
    tiny_recipe["model"] = {"factory": "os:system", "command": "echo pwned > pwned.txt"}
    path = write_recipe(tiny_recipe)
    code, out, _ = _cli(monkeypatch, capsys, "validate", str(path))
    assert code in (0, None) and "--trust-code" in out
    code, _, err = _cli(monkeypatch, capsys, "run", str(path), "--out", str(tmp_path / "runs"))
    assert code == 2 and "'os:system'" in err and "--trust-code" in err
    assert not (tmp_path / "pwned.txt").exists() and not (tmp_path / "runs").exists()


def test_a_trusted_factory_runs(tiny_recipe, write_recipe, tmp_path):
    tiny_recipe["model"] = {"factory": "compress.models.resnet:resnet2d", "width": 4, "train": {"epochs": 0}}
    tiny_recipe["stages"], tiny_recipe["variants"] = [], {"end": {"target": "rpi4"}}
    result = run(load_recipe(write_recipe(tiny_recipe)), out_dir=tmp_path / "runs", trust_code=True)
    assert (result.bundles["end"] / "manifest.json").is_file()


# -- item 5: checkpoints resolved from the recipe, regular files, weights-only state dicts -------------

@pytest.mark.parametrize("value,problem", [
    ("/etc/passwd", "not a weights-only torch checkpoint"),
    ("/dev/null", "not a regular file"),
    ("../../etc/hostname-nope", "does not exist"),
    (".", "not a regular file"),
])
def test_checkpoint_paths_are_checked_at_validate(tiny_recipe, write_recipe, value, problem):
    tiny_recipe["model"]["checkpoint"] = value
    with pytest.raises(RecipeError, match=problem) as info:
        load_recipe(write_recipe(tiny_recipe))
    assert "model.checkpoint" in str(info.value)


def test_a_pickle_that_is_not_a_state_dict_is_refused(tiny_recipe, write_recipe, tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "odd.pt")
    tiny_recipe["model"]["checkpoint"] = "odd.pt"
    with pytest.raises(RecipeError, match="does not hold a state dict"):
        load_recipe(write_recipe(tiny_recipe))


def test_teacher_checkpoint_is_relative_to_the_recipe(tiny_recipe, write_recipe, tmp_path, monkeypatch):
    torch.save({"w": torch.zeros(1)}, tmp_path / "teacher.pt")
    tiny_recipe["stages"].append({"name": "kd", "kind": "distill", "with": {"teacher_checkpoint": "teacher.pt"}})
    monkeypatch.chdir("/")  # not the recipe's folder
    recipe = load_recipe(write_recipe(tiny_recipe))
    config = recipe.resolve("end").stages[-1].config
    assert config.teacher_checkpoint == str((tmp_path / "teacher.pt").resolve())
    tiny_recipe["stages"][-1]["with"]["teacher_checkpoint"] = "/etc/passwd"
    with pytest.raises(RecipeError, match=r"stages\[3\]\.with\.teacher_checkpoint"):
        load_recipe(write_recipe(tiny_recipe))


# -- item 5: names, ranges, reserved and duplicate names ------------------------------------------

def _variant(name):
    def mutate(r): r["variants"][name] = {"target": "rpi4"}
    mutate.__name__ = f"variant_{name!r}"[:40]
    return mutate


def _set(path, value, label):
    def mutate(r):
        node = r
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    mutate.__name__ = label
    return mutate


BAD = [
    _variant("report.json"), _variant("report.md"), _variant("checkpoints"), _variant(".hidden"),
    _variant("end\n"), _variant("x" * 100_000), _variant("a/b"),
    _set(("seed",), 10**30, "seed_huge"), _set(("seed",), -1, "seed_negative"), _set(("seed",), True, "seed_bool"),
    _set(("schema_version",), True, "schema_version_true"),
    _set(("data",), {"dataset": "mnist1d", "samples": 10**15}, "samples_huge"),
    _set(("model", "train", "epochs"), 2**63, "epochs_huge"),
    _set(("model", "train", "lr"), 1e308, "lr_huge"),
    _set(("model", "width"), 10**9, "width_huge"),
    _set(("model", "width"), 0, "width_zero"),
    _set(("name",), "y" * 100_000, "name_huge"),
    _set(("stages",), [{"name": "a", "kind": "finetune"}, {"name": "a", "kind": "finetune"}], "duplicate_stage"),
]


@pytest.mark.parametrize("mutate", BAD, ids=lambda f: f.__name__)
def test_bad_values_are_refused_at_load_in_one_short_paragraph(tiny_recipe, write_recipe, mutate):
    mutate(tiny_recipe)
    with pytest.raises(EdgetierError) as info:
        load_recipe(write_recipe(tiny_recipe))
    message = str(info.value)
    assert "\n" not in message.rstrip("\n") and "Fix:" in message
    assert len(message) < 1000  # a 100k-character value is quoted as a short excerpt


def test_cli_refuses_a_reserved_variant_with_exit_2_and_writes_nothing(monkeypatch, capsys, tiny_recipe,
                                                                        write_recipe, tmp_path):
    tiny_recipe["variants"]["report.json"] = {"target": "rpi4"}
    code, _, err = _cli(monkeypatch, capsys, "run", str(write_recipe(tiny_recipe)), "--out", str(tmp_path / "runs"))
    assert code == 2 and "reserved" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# -- item 2: bounded YAML ----------------------------------------------------------------------

def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nschema_version: *a{levels}\n"


def test_billion_laughs_is_refused(write_recipe):
    path = write_recipe(_laughs())
    assert path.stat().st_size < 1000
    with pytest.raises(RecipeError, match="more than 100 aliases|expands to more than"):
        load_recipe(path)


def test_aliases_within_bounds_still_work_and_point_at_lines(tiny_recipe, write_recipe):
    text = ("schema_version: 1\nname: t\nmodel: {zoo: resnet2d, width: 8}\ndata: {dataset: digits}\n"
            "defaults: {train: &tr {epochs: 1, lr: 0.01}}\n"
            "stages:\n  - {name: a, kind: finetune, train: *tr}\n  - {name: b, kind: finetune, train: *tr}\n"
            "variants:\n  end: {target: rpi4}\n")
    recipe = load_recipe(write_recipe(text))
    assert [s.train.epochs for s in recipe.stages] == [1, 1]
    assert recipe.where(("stages", 1, "train")).endswith(":8: stages[1].train")


@pytest.mark.parametrize("text,problem", [
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than|maximum nesting depth"),
    ("a: " + "{b: " * 2000 + "1" + "}" * 2000 + "\n", "nested more than|maximum nesting depth"),
    ("schema_version: 1\nschema_version: 1\n", "appears twice"),
    ("a: [unclosed\n", "not valid YAML"),
])
def test_hostile_yaml_structures(write_recipe, text, problem):
    with pytest.raises(RecipeError, match=problem) as info:
        load_recipe(write_recipe(text))
    assert len(str(info.value)) < 600


def test_a_huge_recipe_is_refused_by_size(write_recipe):
    path = write_recipe("# x\n" * 300_000)
    with pytest.raises(RecipeError, match="bytes, more than"):
        load_recipe(path)
    assert path.stat().st_size > 1_000_000


def test_a_long_value_is_quoted_as_an_excerpt(tiny_recipe, write_recipe):
    tiny_recipe["stages"][2]["with"]["calib_samples"] = "z" * 700_000
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tiny_recipe))
    assert len(str(info.value)) < 600 and "characters" in str(info.value)


@pytest.mark.benchmark
def test_billion_laughs_refused_fast_and_small(write_recipe, capsys):
    """Time and peak Python memory of refusing the 9-level billion-laughs recipe (the probe saw 3.3 GB, 25 s)."""
    import tracemalloc

    path = write_recipe(_laughs(9))
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(RecipeError):
        load_recipe(path)
    took = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    with capsys.disabled():
        print(f"\nbillion laughs ({path.stat().st_size} bytes): refused in {took * 1000:.1f} ms, "
              f"peak traced memory {peak / 2**20:.2f} MiB")
    assert took < 1.0 and peak < 200 * 2**20


def _minimal(kind: str) -> dict:
    return {"early_exit": {"after": ["layer1"]}, "snip": {"ratio": 0.5}, "unstructured_prune": {"ratio": 0.5},
            "structured_prune": {"ratio": 0.5}}.get(kind, {})


def test_every_numeric_field_of_every_stage_kind_has_a_range():
    """10**30 in any scalar int / float field of any stage config is refused (a documented `le`, or a validator)."""
    from pydantic import ValidationError

    from compress.registry import REGISTRY

    accepted = []
    for kind, technique in sorted(REGISTRY.items()):
        cls = technique.config_type
        base = _minimal(kind)
        cls(**base)
        for name, field in cls.model_fields.items():
            if str(field.annotation) not in ("<class 'int'>", "<class 'float'>", "int | None", "float | None"):
                continue
            try:
                cls(**{**base, name: 10**30 if "int" in str(field.annotation) else 1e30})
                accepted.append(f"{kind}.{name}")
            except ValidationError:
                pass
    assert accepted == []
