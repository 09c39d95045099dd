"""The nas stage inside a recipe run: the chosen model flows into later stages and the bundle, the
Pareto plots are linked from report.md, and `--resume` rebuilds the chosen architecture."""

from __future__ import annotations

import json
import re

import compress
from export.manifest import sha256_file

from .conftest import tiny_config


def test_recipe_with_a_nas_stage_runs_reports_and_resumes(tiny_recipe, write_recipe, tmp_path) -> None:
    # the edge variant (jetson_orin_nano, ONNX): a 120 KiB weight budget instead of rpi4's latency
    search = {k: v for k, v in tiny_config(budget={"max_kb": 120}).items() if k != "kind"}
    tiny_recipe["stages"] = [{"name": "search", "kind": "nas", "with": search, "train": {"epochs": 1}},
                             {"name": "tune", "kind": "finetune", "train": {"epochs": 1}}]
    tiny_recipe["variants"] = {"edge": {"target": "jetson_orin_nano"}}
    recipe = compress.load_recipe(write_recipe(tiny_recipe))
    first = compress.run(recipe, out_dir=tmp_path / "runs")
    edge = next(m for m in first.models if m["name"] == "edge")
    stage = next(s for s in edge["stages"] if s["stage"] == "search")
    chosen = stage["summary"]["chosen"]
    assert edge["torch_params"] == chosen["params"] and edge["macs"] == chosen["macs"]  # the searched model shipped
    assert chosen["bytes"] <= 120 * 1024
    report_md = (first.run_dir / "report.md").read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report_md)
    assert len(links) == 2 and all((first.run_dir / link).is_file() for link in links)
    # the bundle is self-contained: its own report.md links the plots inside it, the manifest covers them
    bundle = first.bundles["edge"]
    inside = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (bundle / "report.md").read_text())
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    assert sorted(inside) == ["search-pareto_latency.png", "search-pareto_size.png"]
    assert all(files[name]["sha256"] == sha256_file(bundle / name) for name in inside)
    assert (first.run_dir / "checkpoints" / "edge" / "00-search" / "trials.jsonl").is_file()

    logs: list[str] = []
    again = compress.run(recipe, out_dir=tmp_path / "runs", resume=True, log=logs.append)
    assert any("resuming after stage 'tune'" in line for line in logs)
    assert sha256_file(again.bundles["edge"] / "model.onnx") == sha256_file(first.bundles["edge"] / "model.onnx")
