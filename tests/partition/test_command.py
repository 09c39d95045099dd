"""`edgetier partition` on a bundle: plan printed, partition.json/.md/.png and split bundles written; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.bundle import write_bundle
from export.onnx import export_onnx
from export.partitioned import load_split
from export.runtime import make_session
from tests.conftest import run_cli as _cli


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder with a cloud bundle (a chain whose first conv shrinks the input 4x, then 1.2 M MACs of
    Linear layers: a microcontroller should cut right after the conv) and an end bundle naming rpi4."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 8, stride=8), nn.ReLU(), nn.Flatten(), nn.Linear(100, 1024), nn.ReLU(),
                          nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)).eval()
    onnx_path = export_onnx(model, (torch.zeros(1, 1, 400),), tmp_path / "m.onnx")
    base = {"format_version": 1, "variant": "cloud", "input": {"name": "input", "shape": [None, 1, 400],
            "dtype": "float32"}, "output": {"name": "logits", "shape": [None, 10]}, "labels": list(range(10)),
            "model": {"file": "model.onnx", "format": "onnx", "precision": "fp32"}}
    run = tmp_path / "run"
    write_bundle(run / "cloud", files={"model.onnx": onnx_path}, report={}, report_md="",
                 manifest={**base, "target": {"name": "cloud_gpu", "tier": "cloud"}})
    write_bundle(run / "end", files={"model.onnx": onnx_path}, report={}, report_md="",
                 manifest={**base, "variant": "end", "target": {"name": "rpi4", "tier": "end"}})
    return run


def test_partition_writes_plan_plot_and_split_bundles(run_dir: Path, monkeypatch, capsys, tmp_path: Path) -> None:
    calib = tmp_path / "calib.npy"
    x = np.random.default_rng(0).standard_normal((64, 1, 400)).astype(np.float32)
    np.save(calib, x)
    # stm32h7 -> cloud at 1 Mbit/s, no round trip: the planned split (after the conv) is 2.3x faster than the
    # better extreme (all in the cloud) by the targets' figures, far from any rounding tie
    code, out, err = _cli(monkeypatch, capsys, "partition", str(run_dir), "--tiers", "stm32h7,cloud", "--bandwidth",
                          "1", "--rtt", "0", "--crossing-dtype", "int8", "--out", str(tmp_path / "out"),
                          "--calib", str(calib))
    assert code == 0, err
    assert "all on end" in out and "all on cloud" in out
    plan = json.loads((tmp_path / "out" / "partition.json").read_text())
    assert (tmp_path / "out" / "partition.png").stat().st_size > 1000
    assert plan["best"]["total_ms"] <= min(e["total_ms"] for e in plan["extremes"].values()) + 1e-9
    assert plan["split"] and plan["best"]["links"][0]["cut_tensors"] == ["/0/Conv_output_0"]
    # stm32h7 runs LiteRT: its segment (a Conv1d) ships as .tflite, checked against the ONNX segment
    end_manifest = json.loads((Path(plan["split_bundles"][0]) / "manifest.json").read_text())
    assert end_manifest["model"]["file"] == "model.tflite", end_manifest["partition"].get("format_note")
    assert "(model.tflite)" in out
    split = load_split([Path(p) for p in plan["split_bundles"]])
    (ref,) = make_session(run_dir / "cloud" / "model.onnx").run(None, {"input": x})
    # int8 crossing of the calibrated conv output: top-1 agrees on the calibration inputs at the targets' 0.97 bar
    assert (split.predict(x).argmax(1) == ref.argmax(1)).mean() >= 0.97


@pytest.mark.parametrize(("args", "message"), [
    (["--tiers", "cloud_gpu,rpi4"], "has no link"),
    (["--tiers", "end,edge"], "no bundle for tier 'edge'"),
    (["--crossing-dtype", "int4"], "unknown crossing dtype"),
])
def test_bad_partition_input_exits_2(run_dir: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    code, _, err = _cli(monkeypatch, capsys, "partition", str(run_dir), *args)
    assert code == 2 and message in err.replace("\n", " ")
    assert not (run_dir / "partition.json").exists()


def test_partition_of_a_folder_that_is_no_run(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = _cli(monkeypatch, capsys, "partition", str(tmp_path))
    assert code == 2 and "not a bundle" in err
