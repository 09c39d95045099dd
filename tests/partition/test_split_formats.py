"""Split bundles in their tiers' formats (.tflite end segment for a LiteRT target) and written atomically as a pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import export.split as split_module
from compress.models import build
from export.errors import ExportError
from export.onnx import export_onnx
from export.partitioned import load_split
from export.runtime import make_session
from export.split import write_split_bundles
from tests.partition.test_split import _every_cut

# rpi4's stated tolerance (hw_targets/rpi4.yaml): the .tflite segment is the same fp32 arithmetic in
# another runtime (XNNPACK may reorder sums), the cloud segment is the same ONNX operators.
ATOL, RTOL = 1e-4, 1e-3
END = {"name": "rpi4", "tier": "end", "runtime": "litert", "export_format": "tflite",
       "tolerance": {"atol": ATOL, "rtol": RTOL}}
CLOUD = {"name": "cloud_gpu", "tier": "cloud", "runtime": "onnxruntime", "export_format": "onnx"}
SPEC_IN = {"name": "input", "shape": [None, 1, 40], "dtype": "float32"}
SPEC_OUT = {"name": "logits", "shape": [None, 10]}


def _model(tmp: Path, zoo: str = "resnet1d", **kw: int) -> tuple[Path, list[str]]:
    torch.manual_seed(0)
    model = build(zoo, input_shape=(1, 40), num_classes=10, **kw).eval()
    path = export_onnx(model, tuple(model.example_inputs(batch=1)), tmp / f"{zoo}.onnx")
    cuts = _every_cut(path, stride=1)
    return path, cuts[len(cuts) // 2]  # mid-network: in a residual block (two tensors cross) or between blocks


@pytest.fixture(scope="module")
def litert_pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("litert")
    path, cut = _model(d, width=8)
    calib = np.random.default_rng(1).standard_normal((32, 1, 40)).astype(np.float32)
    dirs = write_split_bundles(path, [cut], d / "split", tiers=[END, CLOUD], crossing_dtype="fp32", calib=calib,
                               input_spec=SPEC_IN, output_spec=SPEC_OUT)
    return {"path": path, "dirs": dirs, "cut": cut}


def test_a_litert_end_segment_ships_as_tflite_and_composes(litert_pair: dict) -> None:
    end, cloud = (json.loads((d / "manifest.json").read_text()) for d in litert_pair["dirs"])
    assert end["model"]["format"] == "tflite" and (litert_pair["dirs"][0] / "model.tflite").is_file()
    assert "format_note" not in end["partition"]
    assert cloud["model"]["format"] == "onnx"
    x = np.random.default_rng(2).standard_normal((20, 1, 40)).astype(np.float32)  # not the check samples
    (ref,) = make_session(litert_pair["path"]).run(None, {"input": x})
    np.testing.assert_allclose(load_split(litert_pair["dirs"]).predict(x), ref, atol=ATOL, rtol=RTOL)


def test_a_segment_that_does_not_convert_ships_as_onnx_and_says_so(tmp_path: Path) -> None:
    # onnx2torch 1.5 has no converter for opset-18 Split (the attention's qkv split), and onnx's
    # version converter has no adapter down from it: the transformer's end segment stays .onnx
    path, cut = _model(tmp_path, "transformer", dim=16)
    dirs = write_split_bundles(path, [cut], tmp_path / "split", tiers=[END, CLOUD], input_spec=SPEC_IN,
                               output_spec=SPEC_OUT)
    end = json.loads((dirs[0] / "manifest.json").read_text())
    assert end["model"]["format"] == "onnx"
    assert "runs .tflite, but this segment ships as .onnx" in end["partition"]["format_note"]
    x = np.random.default_rng(2).standard_normal((4, 1, 40)).astype(np.float32)
    (ref,) = make_session(path).run(None, {"input": x})
    np.testing.assert_allclose(load_split(dirs).predict(x), ref, atol=ATOL, rtol=RTOL)


def test_a_failure_mid_write_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, cut = _model(tmp_path, width=8)
    tiers = [{"tier": "end"}, {"tier": "cloud"}]
    kw = {"tiers": tiers, "input_spec": SPEC_IN, "output_spec": SPEC_OUT}
    out = tmp_path / "split"
    real, calls = split_module.write_bundle, []

    def fail_second(*args: object, **kwargs: object) -> Path:
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")  # the end bundle is complete, the cloud one is not
        return real(*args, **kwargs)

    monkeypatch.setattr(split_module, "write_bundle", fail_second)
    with pytest.raises(OSError, match="disk full"):
        write_split_bundles(path, [cut], out, **kw)
    assert not out.exists() and list(tmp_path.glob(".split*")) == []  # no pair, no staging folder

    monkeypatch.setattr(split_module, "write_bundle", real)
    first = write_split_bundles(path, [cut], out, **kw)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls.clear()
    monkeypatch.setattr(split_module, "write_bundle", fail_second)
    with pytest.raises(OSError, match="disk full"):
        write_split_bundles(path, [cut], out, crossing_dtype="fp16", **kw)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the previous pair, untouched
    assert list(tmp_path.glob(".split*")) == []
    load_split(first)  # still a consistent pair


def test_a_folder_of_other_files_is_not_replaced(tmp_path: Path) -> None:
    path, cut = _model(tmp_path, width=8)
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="refusing to replace"):
        write_split_bundles(path, [cut], tmp_path / "split", tiers=[{"tier": "end"}, {"tier": "cloud"}],
                            input_spec=SPEC_IN, output_spec=SPEC_OUT)
    assert (tmp_path / "split" / "notes.txt").read_text() == "mine"
