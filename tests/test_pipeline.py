"""The runner end to end on the tiny recipe: bundles, reports re-measured, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import compress
from compress.core.errors import RecipeError
from compress.datasets import load as load_dataset
from export import runtime
from export.manifest import sha256_file


def test_bundles_for_cloud_and_every_variant(tiny_run):
    _, result = tiny_run
    assert set(result.bundles) == {"cloud", "edge", "end"}
    by_name = {m["name"]: m for m in result.models}
    assert by_name["end"]["precision"] == "int8" and by_name["edge"]["precision"] == "fp32"
    assert by_name["end"]["tier"] == "end" and by_name["edge"]["tier"] == "edge" and by_name["cloud"]["tier"] == "cloud"
    for entry in result.models:
        for key in ("bytes", "params", "macs", "accuracy", "latency_ms", "estimated_latency_ms"):
            assert entry[key] is not None and entry[key] > 0, (entry["name"], key)
    # int8 weights: the file must really be smaller than the fp32 one of the same network
    assert by_name["end"]["bytes"] < 0.6 * by_name["edge"]["bytes"]
    report = json.loads((result.run_dir / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["cloud", "edge", "end"]
    assert "| end |" in (result.run_dir / "report.md").read_text()


def test_report_numbers_are_re_measured_from_the_files(tiny_run):
    recipe_path, result = tiny_run
    recipe = compress.load_recipe(recipe_path)
    data = load_dataset(recipe.data.dataset, seed=recipe.seed, **recipe.data.options)
    for entry in result.models:
        bundle = runtime.load(result.bundles[entry["name"]])
        model_file = result.bundles[entry["name"]] / bundle.manifest["model"]["file"]
        assert entry["bytes"] == model_file.stat().st_size
        accuracy = float((bundle.predict(data.test.x).argmax(1) == data.test.y).mean())
        # the same file, inputs and runtime: only batching differs, which cannot flip a top-1 here
        assert accuracy == pytest.approx(entry["accuracy"], abs=1 / len(data.test.y))
        report = json.loads((result.bundles[entry["name"]] / "report.json").read_text())
        assert report["models"][0]["bytes"] == entry["bytes"]


def test_cloud_checkpoint_is_reused(tiny_run):
    recipe_path, result = tiny_run
    logs: list[str] = []
    compress.run(compress.load_recipe(recipe_path), out_dir=result.run_dir.parent, variants=["edge"], log=logs.append)
    assert any("cloud model reused" in line for line in logs)
    assert not any("training the cloud model" in line for line in logs)


def test_user_checkpoint_and_a_checkpoint_that_does_not_fit(tiny_recipe, write_recipe, tmp_path):
    from compress.models import build

    torch.manual_seed(3)
    model = build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=8)
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    tiny_recipe["model"] = {"zoo": "resnet2d", "width": 8, "checkpoint": "mine.pt"}
    tiny_recipe["variants"] = {"end": {"target": "rpi4", "skip": ["tune", "tune2"]}}
    logs: list[str] = []
    result = compress.run(compress.load_recipe(write_recipe(tiny_recipe)), out_dir=tmp_path / "runs", log=logs.append)
    assert any("loaded from" in line for line in logs)
    assert result.models[0]["torch_params"] == sum(p.numel() for p in model.parameters())
    tiny_recipe["model"]["width"] = 16
    with pytest.raises(RecipeError, match="does not fit the model"):
        compress.run(compress.load_recipe(write_recipe(tiny_recipe)), out_dir=tmp_path / "runs2")


def _edgetier(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compress", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _model_file(bundle: Path) -> Path:
    """The bundle's model file (model.onnx or model.tflite, by its target's runtime), from its manifest."""
    return bundle / json.loads((bundle / "manifest.json").read_text())["model"]["file"]


def _model_hashes(run_dir: Path) -> dict[str, str]:
    return {name: sha256_file(_model_file(run_dir / name)) for name in ("cloud", "edge", "end")}


def test_resume_after_sigkill_ends_with_the_same_model_files(tiny_recipe, write_recipe, tmp_path):
    tiny_recipe["stages"][1]["train"] = {"epochs": 12}  # a stage long enough to be killed inside
    path = write_recipe(tiny_recipe)
    whole = _edgetier("run", str(path), "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    killed = _edgetier("run", str(path), "--out", str(tmp_path / "b"), cwd=tmp_path)
    first_stage = tmp_path / "b" / "tiny" / "checkpoints" / "end" / "00-tune.pt"
    deadline = time.monotonic() + 600
    while not first_stage.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    # killed inside the second stage: its checkpoint and the end bundle do not exist yet
    assert first_stage.exists() and not (first_stage.parent / "01-tune2.pt").exists()
    assert not (tmp_path / "b" / "tiny" / "end").exists()

    resumed = _edgetier("run", str(path), "--out", str(tmp_path / "b"), "--resume", cwd=tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resuming after stage 'tune'" in output
    assert _model_hashes(tmp_path / "b" / "tiny") == _model_hashes(tmp_path / "a" / "tiny")


def test_seed_changes_the_result(tiny_recipe, write_recipe, tmp_path):
    tiny_recipe["variants"] = {"edge": {"target": "jetson_orin_nano", "skip": ["tune", "tune2", "quantize"]}}
    recipe = compress.load_recipe(write_recipe(tiny_recipe))
    a = compress.run(recipe, out_dir=tmp_path / "a", seed=1)
    b = compress.run(recipe, out_dir=tmp_path / "b", seed=2)
    assert sha256_file(a.bundles["edge"] / "model.onnx") != sha256_file(b.bundles["edge"] / "model.onnx")
    assert np.isfinite(a.models[0]["accuracy"])


def test_unstructured_sparsity_says_plainly_that_latency_does_not_drop(tiny_recipe, write_recipe, tmp_path):
    tiny_recipe["stages"] = [{"name": "sparsify", "kind": "unstructured_prune", "with": {"ratio": 0.8}}]
    tiny_recipe["variants"] = {"end": {"target": "jetson_orin_nano"}}
    result = compress.run(compress.load_recipe(write_recipe(tiny_recipe)), out_dir=tmp_path / "runs")
    end = result.models[-1]
    assert end["nonzero_params"] < 0.3 * end["torch_params"]
    # the note reaches the bundle's report.md, next to the compressed size it points at
    text = (result.bundles["end"] / "report.md").read_text()
    assert "latency does not drop" in text and "Compressed (KiB)" in text
    # the file stores the 80 % zeros as gaps (export.sparse_store): 20 % x (4 B + 1 B) of the conv weights' 4 B
    stored = end["parity"]["sparse_storage"]
    assert stored["stored_bytes"] < 0.4 * stored["dense_bytes"] and end["bytes"] < 0.6 * result.models[0]["bytes"]
