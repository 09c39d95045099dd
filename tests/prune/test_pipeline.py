"""The four kinds in a recipe run: smaller exported models, reports, and a resumed run that ends with the same
files as an uninterrupted one (structured shapes replayed, masks re-attached, no size mismatch)."""

from __future__ import annotations

import json
import shutil
from typing import Literal

import pytest

import compress
from compress.core.config import TechniqueConfig
from compress.core.technique import BaseTechnique, Result
from compress.registry import REGISTRY
from export.manifest import sha256_file
from tests.test_resume_restore import interrupt_and_resume


class CrashConfig(TechniqueConfig):
    kind: Literal["test_prune_crash"] = "test_prune_crash"


class Crash(BaseTechnique):
    config_type = CrashConfig
    armed = False

    def apply(self, model, ctx):
        if Crash.armed:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return Result(model)


@pytest.fixture
def recipe(monkeypatch, tiny_recipe, write_recipe):
    monkeypatch.setitem(REGISTRY, "test_prune_crash", Crash)
    tiny_recipe["model"] = {"zoo": "resnet2d", "width": 16, "train": {"epochs": 2, "lr": 0.01}}
    tiny_recipe["stages"] = [
        {"name": "channels", "kind": "structured_prune", "with": {"ratio": 0.5}, "train": {"epochs": 1}},
        {"name": "weights", "kind": "unstructured_prune", "with": {"ratio": 0.6, "schedule": "gradual", "every": 2},
         "train": {"epochs": 1}},
        {"name": "snip", "kind": "snip", "with": {"ratio": 0.5}, "train": {"epochs": 1}},
        {"name": "ticket", "kind": "lottery_ticket", "with": {"rounds": 1, "epochs": 1, "ratio": 0.5}},
        {"name": "crash", "kind": "test_prune_crash"},
        {"name": "tune", "kind": "finetune", "train": {"epochs": 1}},
    ]
    # edge: snip, lottery, tune — all finished before the crash, so resuming restores every one of them;
    # end: structured + gradual unstructured, then the crash
    tiny_recipe["variants"] = {"edge": {"target": "jetson_orin_nano", "skip": ["channels", "weights", "crash"]},
                               "end": {"target": "rpi4", "skip": ["snip", "ticket"]}}
    return compress.load_recipe(write_recipe(tiny_recipe))


def test_resume_after_pruning_stages_gives_the_same_files(recipe, tmp_path) -> None:
    Crash.armed = False
    whole = compress.run(recipe, out_dir=tmp_path / "a")
    cloud, edge, end = whole.models
    # structured: the exported end model is physically smaller (channels of 16/32/64 halved)
    assert end["params"] < 0.35 * cloud["params"] and end["bytes"] < 0.4 * cloud["bytes"]
    stages = {s["stage"]: s for s in end["stages"]}
    assert stages["channels"]["summary"]["macs_fraction"] <= 0.35
    assert stages["channels"]["layers"]["stem.conv"]["channels"] == [16, 8]
    # unstructured (gradual over the stage's 10 steps): the summary shows the sparsity reached after training
    assert stages["weights"]["summary"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert end["nonzero_params"] < 0.5 * end["torch_params"]
    edge_stages = {s["stage"]: s for s in edge["stages"]}
    assert len(edge_stages["ticket"]["summary"]["rounds"]) == 2
    assert edge["nonzero_params"] < 0.8 * edge["torch_params"]

    (tmp_path / "b" / "tiny" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "tiny" / "checkpoints" / "cloud.pt", tmp_path / "b" / "tiny" / "checkpoints")
    resumed, logs = interrupt_and_resume(recipe, tmp_path / "b", Crash)
    assert any("end: resuming after stage 'weights'" in line for line in logs)
    assert any("edge: resuming after stage 'tune'" in line for line in logs)
    for name in ("edge", "end"):  # the end target runs LiteRT, the edge target onnxruntime: both files must match
        model = json.loads((whole.bundles[name] / "manifest.json").read_text())["model"]["file"]
        assert sha256_file(resumed.bundles[name] / model) == sha256_file(whole.bundles[name] / model)
