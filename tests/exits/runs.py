"""Run a small early-exit recipe once per test module and index its models by variant name."""

from __future__ import annotations

from typing import Any

import yaml

import compress


def run_recipe(tmp_path_factory: Any, recipe: dict[str, Any]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """`recipe` written to a fresh folder, run there; the run's result and its model entries by name."""
    folder = tmp_path_factory.mktemp(recipe["name"].replace("-", "_"))
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = compress.run(compress.load_recipe(folder / "r.yaml"), out_dir=folder / "runs")
    return result, {m["name"]: m for m in result.models}
