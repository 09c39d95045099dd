"""Resume rebuilds what structural stages did: `Technique.restore` re-creates the structure and
the hooks from `Result.state`, then the checkpointed weights load without a size mismatch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

import compress
from compress.core.config import TechniqueConfig
from compress.core.technique import BaseTechnique, Hooks, HookSet, Result
from compress.pipeline import RunResult
from compress.recipe import Recipe
from compress.registry import REGISTRY
from export.manifest import sha256_file

CALLS: list[str] = []


class WidenConfig(TechniqueConfig):
    kind: Literal["test_widen"] = "test_widen"
    hidden: int = 24


class Widen(BaseTechnique):
    """Replaces the classifier by a two-layer head (a structural change) and clamps it after each step."""

    config_type = WidenConfig

    def _build(self, model: nn.Module, hidden: int) -> Result:
        fc = model.head.fc
        model.head.fc = nn.Sequential(nn.Linear(fc.in_features, hidden), nn.ReLU(), nn.Linear(hidden, fc.out_features))

        def after_step(m: nn.Module) -> None:
            CALLS.append("after_step")
            with torch.no_grad():
                m.head.fc[0].weight.clamp_(-0.1, 0.1)

        return Result(model, {"hidden": hidden}, hooks=HookSet([Hooks(after_step=after_step)]),
                      state={"hidden": hidden})

    def apply(self, model, ctx):
        return self._build(model, self.config.hidden)

    def restore(self, model, state, ctx):
        return self._build(model, state["hidden"])


class CrashConfig(TechniqueConfig):
    kind: Literal["test_crash"] = "test_crash"


class Crash(BaseTechnique):
    config_type = CrashConfig
    armed = True

    def apply(self, model, ctx):
        if Crash.armed:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a stage
        return Result(model)


def interrupt_and_resume(recipe: Recipe, out_dir: Path, crash: type) -> tuple[RunResult, list[str]]:
    """Run `recipe` into `out_dir` with `crash` (a stage class with an `armed` flag) armed, so that the
    run stops with KeyboardInterrupt in that stage, then resume it; the resumed result and its log."""
    crash.armed = True
    with pytest.raises(KeyboardInterrupt):
        compress.run(recipe, out_dir=out_dir)
    crash.armed = False
    logs: list[str] = []
    return compress.run(recipe, out_dir=out_dir, resume=True, log=logs.append), logs


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(REGISTRY, "test_widen", Widen)
    monkeypatch.setitem(REGISTRY, "test_crash", Crash)
    CALLS.clear()


def test_resume_restores_structure_and_hooks(registered, tiny_recipe, write_recipe, tmp_path):
    tiny_recipe["stages"] = [
        {"name": "widen", "kind": "test_widen", "train": {"epochs": 1}},
        {"name": "crash", "kind": "test_crash"},
        {"name": "tune", "kind": "finetune", "train": {"epochs": 1}},
    ]
    tiny_recipe["variants"] = {"end": {"target": "rpi4"}}
    recipe = compress.load_recipe(write_recipe(tiny_recipe))

    Crash.armed = False
    whole = compress.run(recipe, out_dir=tmp_path / "a")
    CALLS.clear()  # the interrupted run trains "widen" too; only the resumed run's calls count below
    resumed, logs = interrupt_and_resume(recipe, tmp_path / "b", Crash)

    assert any("resuming after stage 'widen'" in line for line in logs)
    # the restored hook runs in the later stage's training (one call per optimizer step)
    assert CALLS and set(CALLS) == {"after_step"}
    # the end target (rpi4) runs LiteRT: its bundle holds model.tflite, the bytes of which must match too
    assert (resumed.bundles["end"] / "model.tflite").is_file()
    assert sha256_file(resumed.bundles["end"] / "model.tflite") == sha256_file(whole.bundles["end"] / "model.tflite")
    assert resumed.models[-1]["torch_params"] == whole.models[-1]["torch_params"]


class PickyConfig(TechniqueConfig):
    kind: Literal["test_picky"] = "test_picky"
    layer: str = "layer9"

    def check_model(self, model, target):
        from compress.core.selectors import select

        select(model, [self.layer])


class Picky(BaseTechnique):
    config_type = PickyConfig

    def apply(self, model, ctx):  # pragma: no cover - the run must stop before any stage
        raise AssertionError("apply ran although check_model failed")


def test_check_model_runs_before_any_training(monkeypatch, tiny_recipe, write_recipe, tmp_path):
    from compress.core.errors import RecipeError

    monkeypatch.setitem(REGISTRY, "test_picky", Picky)
    tiny_recipe["stages"].append({"name": "picky", "kind": "test_picky", "with": {"layer": "layer9"}})
    recipe = compress.load_recipe(write_recipe(tiny_recipe))
    with pytest.raises(RecipeError) as info:
        compress.run(recipe, out_dir=tmp_path / "runs")
    assert "stages[3].with" in str(info.value) and "layer9" in str(info.value)
    assert not (tmp_path / "runs" / "tiny" / "checkpoints").exists()  # nothing was trained
