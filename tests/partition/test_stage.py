"""The `partition` stage kind in a recipe: the run report carries the plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.pipeline import run
from compress.recipe import load_recipe


@pytest.mark.slow  # trains the tiny cloud model and exports it: about a minute on two busy cores
def test_partition_stage_puts_the_plan_in_the_run_report(tiny_recipe, write_recipe, tmp_path: Path) -> None:
    tiny_recipe["stages"] = [{"name": "plan", "kind": "partition",
                              "with": {"tiers": ["edge", "cloud"], "crossing_dtype": "int8"}}]
    tiny_recipe["variants"] = {"edge": {"target": "jetson_orin_nano"}}
    result = run(load_recipe(write_recipe(tiny_recipe)), out_dir=tmp_path / "runs")
    text = json.dumps(json.loads((result.run_dir / "report.json").read_text()))
    assert "all on cloud" in text and "jetson_orin_nano" in text and "speedup_vs_better_extreme" in text
    md = (result.run_dir / "edge" / "report.md").read_text()
    assert "partition plan over jetson_orin_nano -> cloud_gpu" in md
