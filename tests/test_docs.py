"""The documentation site's generated pages: built from the code and data, complete, and valid.

`make docs-build` (in CI) runs `mkdocs build --strict`; these tests check what the pages say
without a build, so a stale page fails here with a precise message.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from compress.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load("gen_pages")


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_every_config_example_on_the_site_is_a_valid_stage(kind):
    stage = yaml.safe_load(gen.stage_example(kind))["stages"][0]
    config = REGISTRY[kind].config_type.model_validate({"kind": stage["kind"], **stage.get("with", {})})
    assert config.kind == kind


def test_recipe_reference_lists_every_kind_and_its_keys():
    page = gen.recipes_page()
    for kind, tech in REGISTRY.items():
        assert f"### `{kind}`" in page
        for key in tech.config_type.model_fields:
            if key != "kind":
                assert f"| `{key}` |" in page, (kind, key)


def test_targets_page_lists_every_target_with_its_source():
    page = gen.targets_page()
    for path in sorted((ROOT / "hw_targets").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert f"## `{data['name']}`" in page
        assert " ".join(data["source"]["datasheet"].split()) in page


def test_every_notebook_is_a_tutorial_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for nb in gen.notebooks():
        assert f"tutorials/{nb.name}" in nav, f"add tutorials/{nb.name} to the nav in mkdocs.yml"


def test_every_registered_config_gets_a_reference_entry():
    page = gen.configs_page()
    for tech in REGISTRY.values():
        cls = tech.config_type
        assert f"::: {cls.__module__}.{cls.__qualname__}" in page
