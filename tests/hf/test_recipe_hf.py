"""A recipe with `model: {hf: folder, task: ...}` and `data: {dataset: text}` runs offline end to end."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from compress.cli import app, main
from compress.recipe import load_recipe
from tests.hf.tiny import tiny_bert, tiny_tokenizer_json

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-bert"
    tiny_bert(vocab=64).save_pretrained(folder)
    tiny_tokenizer_json(folder / "tokenizer.json")
    return folder


def _recipe(tmp_path: Path, folder: Path) -> Path:
    data = yaml.safe_load((RECIPES / "text_embedding.yaml").read_text())
    data["model"]["hf"] = str(folder)
    data["data"].update(samples=None, file=str(tmp_path / "lines.txt"), max_length=16)
    distill = next(s for s in data["stages"] if s["kind"] == "feature_distill")
    distill["with"]["layers"] = [{"student": f"model.encoder.layer.{i}"} for i in range(2)]  # tiny_bert: 2 layers
    (tmp_path / "lines.txt").write_text("\n".join(
        f"the small model runs on device {i}" if i % 2 else f"a text on the edge {i}" for i in range(40)))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_text_embedding_recipe_with_a_tiny_bert(tmp_path):
    result = CliRunner().invoke(app, ["run", str(_recipe(tmp_path, _folder(tmp_path))), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    edge = tmp_path / "runs" / "text-embedding" / "edge"
    manifest = json.loads((edge / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["model"]["precision"] == "int8" and "tokenizer.json" in manifest["files"]
    report = json.loads((edge / "report.json").read_text())["models"][0]
    assert report["int8_method"].startswith("onnxruntime dynamic")
    from export import runtime

    assert runtime.load(edge).predict(["the model runs", "a text"]).shape == (2, 32)
    # the end variant: a quarter of the heads and half the MLP channels gone, distilled without labels, int8
    run = tmp_path / "runs" / "text-embedding"
    cloud, _, report = json.loads((run / "report.json").read_text())["models"]
    prune, distill, quantize = report["stages"]
    assert prune["summary"]["heads_kept"] == [6, 8]
    # the layers reading the pruned heads / channels were refit to the unpruned model's outputs
    refit = prune["summary"]["reconstruct"]["relative_error"]
    assert len(refit) == 4 and all(after < before for before, after in refit.values())
    # the quantize stage says what the export did: dynamic int8, nothing calibrated (not "static, minmax")
    assert "dynamic" in quantize["summary"]["artifact"] and "static" not in quantize["summary"]["artifact"]
    assert quantize["summary"]["calibration"] is None and quantize["summary"]["calib_samples"] == 0
    assert prune["summary"]["config"] == {"num_attention_heads": 3, "head_dim": 8, "intermediate_size": 32}
    assert distill["kind"] == "feature_distill" and distill["val_accuracy"] is None  # no labels, no accuracy
    assert report["precision"] == "int8" and report["torch_params"] < cloud["torch_params"]
    assert report["int8_method"].endswith("(after onnxruntime transformer fusion)")  # 3 heads of 8, hidden 32
    end = run / "end"
    assert runtime.load(end).predict(["the model runs", "a text"]).shape == (2, 32)


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["edgetier", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_a_missing_model_folder_is_one_paragraph_exit_2_nothing_written(tmp_path, monkeypatch, capsys):
    path = _recipe(tmp_path, tmp_path / "nowhere")
    code, err = _main(monkeypatch, capsys, "run", str(path), "--out", str(tmp_path / "runs"))
    assert code == 2
    assert "model.hf: no Hugging Face model" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_an_output_the_model_does_not_have_is_exit_2_nothing_written(tmp_path, monkeypatch, capsys):
    path = _recipe(tmp_path, _folder(tmp_path))
    data = yaml.safe_load(path.read_text())
    data["model"]["output"] = "logits"  # a BertModel has no logits
    path.write_text(yaml.safe_dump(data))
    code, err = _main(monkeypatch, capsys, "run", str(path), "--out", str(tmp_path / "runs"))
    assert code == 2
    assert "has no 'logits'" in err and "last_hidden_state" in err and "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("manifest.json"))


def test_a_folder_without_weights_is_refused_at_load(tmp_path):
    folder = _folder(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(Exception, match="no weights"):
        from compress.models.hf import load_hf

        load_hf(folder, task="sequence_embedding")
    shutil.rmtree(folder)
    with pytest.raises(Exception, match="no Hugging Face model"):
        load_recipe(_recipe(tmp_path, folder))


def test_a_model_folder_without_its_tokenizer_is_exit_2_nothing_written(tmp_path, monkeypatch, capsys):
    folder = _folder(tmp_path)
    (folder / "tokenizer.json").unlink()
    code, err = _main(monkeypatch, capsys, "run", str(_recipe(tmp_path, folder)), "--out", str(tmp_path / "runs"))
    assert code == 2
    assert "no tokenizer.json" in err and "Fix:" in err and "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("manifest.json"))


def test_a_recipe_pruning_heads_of_a_model_without_attention_is_exit_2_before_training(tmp_path, monkeypatch,
                                                                                      capsys):
    recipe = {"schema_version": 1, "name": "no-heads", "seed": 0,
              "model": {"zoo": "resnet2d", "width": 8, "train": {"epochs": 1}}, "data": {"dataset": "digits"},
              "stages": [{"name": "prune", "kind": "structured_prune", "with": {"heads": 0.25}}],
              "variants": {"edge": {"target": "jetson_orin_nano"}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, err = _main(monkeypatch, capsys, "run", str(path), "--out", str(tmp_path / "runs"))
    assert code == 2
    assert "no attention module" in err and "stages[0].with" in err and "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("*.pt")) and not list((tmp_path / "runs").rglob("manifest.json"))
