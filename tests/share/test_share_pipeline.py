"""The weight-sharing kinds in a recipe run: checkpoints restore into the same model the bundle
holds (save -> reload -> export -> onnxruntime parity), and the shipped recipe validates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compress
from compress.core.context import Context
from compress.core.resources import shipped_dir
from compress.datasets import load as load_dataset
from compress.models import build_from_spec
from compress.pipeline import restore_stages
from compress.share.clustering import ClusteredLayer
from compress.share.hashing import HashedLayer
from export import runtime


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    import yaml

    from tests.conftest import TINY

    recipe = {**TINY, "name": "tiny_share"}
    recipe["stages"] = [
        {"name": "hash", "kind": "hash_share", "with": {"compression": 0.25, "targets": ["re:layer3\\..*"]},
         "train": {"epochs": 1}},
        {"name": "cluster", "kind": "cluster",
         "with": {"clusters": 8, "granularity": "channel", "ignore": ["re:layer3\\..*", "stem.conv"]},
         "train": {"epochs": 1, "lr": 0.0001}},
    ]
    recipe["variants"] = {"end": {"target": "rpi4"}}
    folder = tmp_path_factory.mktemp("share")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return compress.load_recipe(path), compress.run(compress.load_recipe(path), out_dir=folder / "runs")


def test_run_reports_the_sharing_decisions(shared_run):
    _, result = shared_run
    end = next(m for m in result.models if m["name"] == "end")
    stages = {s["stage"]: s for s in end["stages"]}
    assert set(stages["hash"]["layers"]) == {"layer3.0.conv1", "layer3.0.conv2", "layer3.0.shortcut.conv"}
    assert all(layer["compression"] == pytest.approx(0.25, abs=0.01) for layer in stages["hash"]["layers"].values())
    assert "layer3.0.conv1" not in stages["cluster"]["layers"] and "head.fc" in stages["cluster"]["layers"]
    assert end["parity"]["max_abs_diff"] < 1e-4  # deploy refuses worse, this states it
    # rpi4 runs LiteRT, which has no codebook / hashed storage: the .tflite holds the dense weights, said plainly
    assert end["format"] == "tflite" and any("stored dense in the .tflite" in note for note in end["notes"])


def test_checkpoint_restores_the_model_the_bundle_holds(shared_run):
    recipe, result = shared_run
    plan = recipe.resolve("end")
    saved = torch.load(result.run_dir / "checkpoints" / "end" / "01-cluster.pt", weights_only=True)
    cloud = build_from_spec(zoo=recipe.model.zoo, options=recipe.model.options, input_shape=(1, 8, 8), num_classes=10)
    cloud.load_state_dict(torch.load(result.run_dir / "checkpoints" / "cloud.pt", weights_only=True)["state_dict"])
    model, _ = restore_stages(cloud, plan, saved, lambda i: Context(example_inputs=cloud.example_inputs()))
    assert isinstance(model.layer3[0].conv1, HashedLayer) and isinstance(model.layer1[0].conv1, ClusteredLayer)
    data = load_dataset(recipe.data.dataset, seed=recipe.seed, **recipe.data.options)
    x = data.test.x[:128]
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    # the bundle's .tflite (dense weights) and the restored PyTorch model: same fp32 weights, summation order aside
    np.testing.assert_allclose(runtime.load(result.bundles["end"]).predict(x), expected, atol=1e-4, rtol=1e-4)


def test_the_shipped_recipe_validates_against_its_model():
    recipe = compress.load_recipe(shipped_dir("recipes") / "weight_sharing.yaml")
    model = build_from_spec(zoo=recipe.model.zoo, options=recipe.model.options, input_shape=(1, 40), num_classes=10)
    for name in recipe.variants:
        plan = recipe.resolve(name)
        for stage in plan.stages:
            stage.config.check_model(model, plan.target)
    assert [s.kind for s in recipe.resolve("edge").stages] == ["hash_share"]
    assert [s.kind for s in recipe.resolve("end").stages] == ["cluster"]


def test_clustering_a_layer_an_earlier_stage_hashes_is_refused_before_training(tmp_path, monkeypatch):
    """The overlap is found on the untrained model, before the cloud model trains (no work lost),
    and the error names the stage's `with` block and the layers."""
    import yaml

    from compress.core import train
    from compress.core.errors import RecipeError
    from tests.conftest import TINY

    recipe = {**TINY, "name": "tiny_overlap"}
    recipe["stages"] = [
        {"name": "hash", "kind": "hash_share", "with": {"compression": 0.25, "targets": ["re:layer3\\..*"]}},
        {"name": "cluster", "kind": "cluster", "with": {"clusters": 8, "ignore": ["stem.conv"]}},
    ]
    recipe["variants"] = {"end": {"target": "rpi4"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the recipe was checked")

    monkeypatch.setattr(train, "fit", no_training)
    monkeypatch.setattr("compress.pipeline.fit", no_training, raising=False)
    with pytest.raises(RecipeError) as info:
        compress.run(compress.load_recipe(path), out_dir=tmp_path / "runs")
    message = str(info.value)
    assert "stages[1].with" in message or "stages.1.with" in message, message
    assert "'layer3.0.conv1'" in message and "hash_share" in message and "ignore" in message
