"""Bundles: hashed manifest, byte-identical rewrites, refusal of corruption, atomic replace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export import runtime
from export.bundle import sha256_file, unlisted_files, verify_bundle, write_bundle
from export.errors import BundleError


def manifest_for(precision: str = "fp32") -> dict:
    return {
        "model": {"file": "model.onnx", "format": "onnx", "precision": precision},
        "input": {"name": "input", "shape": [None, 1, 40], "dtype": "float32"},
        "output": {"name": "logits"},
        "labels": [str(k) for k in range(10)],
        "variant": "end",
    }


def write(out: Path, model_file: Path | bytes, **overrides: object) -> Path:
    kwargs: dict = {
        "files": {"model.onnx": model_file},
        "manifest": manifest_for(),
        "report": {"recipe": "t", "models": [{"name": "end", "accuracy": np.float64(0.9)}]},
        "report_md": "# t\n",
    }
    kwargs.update(overrides)
    return write_bundle(out, **kwargs)


def test_round_trip(fp32_onnx: Path, tmp_path: Path) -> None:
    bundle = write(tmp_path / "end", fp32_onnx, files={"model.onnx": fp32_onnx, "extra.bin": b"\x00\x01"})
    manifest = verify_bundle(bundle)
    assert manifest["variant"] == "end"
    assert sorted(manifest["files"]) == ["extra.bin", "model.onnx", "report.json", "report.md"]
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}
    assert manifest["files"]["model.onnx"]["sha256"] == sha256_file(fp32_onnx)
    assert json.loads((bundle / "report.json").read_text())["models"][0]["accuracy"] == 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["end"]  # no temporary siblings left


def test_identical_inputs_give_identical_bytes(fp32_onnx: Path, tmp_path: Path) -> None:
    a, b = write(tmp_path / "a", fp32_onnx), write(tmp_path / "b", fp32_onnx)
    for name in ("manifest.json", "report.json", "report.md", "model.onnx"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    text = (a / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_one_changed_byte_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    bundle = write(tmp_path / "end", fp32_onnx)
    expected = sha256_file(bundle / "model.onnx")
    raw = bytearray((bundle / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0x01  # a weight byte, so the file still parses as ONNX
    (bundle / "model.onnx").write_bytes(bytes(raw))
    actual = sha256_file(bundle / "model.onnx")
    for check in (verify_bundle, runtime.load):
        with pytest.raises(BundleError) as err:
            check(bundle)
        message = str(err.value)
        assert "'model.onnx'" in message and expected in message and actual in message
        assert "re-export" in message


def test_missing_file_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    bundle = write(tmp_path / "end", fp32_onnx)
    (bundle / "report.md").unlink()
    with pytest.raises(BundleError, match="'report.md' is listed in manifest.json but missing"):
        verify_bundle(bundle)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: (b / "manifest.json").unlink(), "no manifest.json"),
        (lambda b: (b / "manifest.json").write_text("{not json"), "not valid JSON"),
        (
            lambda b: (b / "manifest.json").write_text('{"files": {"../x": {"sha256": "", "bytes": 0}}}'),
            "'files'",
        ),
        (lambda b: (b / "manifest.json").write_text("[]"), "no valid 'files' table"),
    ],
)
def test_bad_manifest_is_refused(fp32_onnx: Path, tmp_path: Path, damage, message: str) -> None:
    bundle = write(tmp_path / "end", fp32_onnx)
    damage(bundle)
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle folder not found"):
        verify_bundle(tmp_path / "nowhere")


def test_unlisted_file_is_allowed_and_reported(fp32_onnx: Path, tmp_path: Path) -> None:
    bundle = write(tmp_path / "end", fp32_onnx)
    (bundle / "README.txt").write_text("copied by hand")
    assert verify_bundle(bundle)["variant"] == "end"
    assert unlisted_files(bundle) == ["README.txt"]


def test_failed_rewrite_keeps_the_old_bundle(fp32_onnx: Path, tmp_path: Path) -> None:
    bundle = write(tmp_path / "end", fp32_onnx)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    # "a.bin" is written first (sorted order), then the missing source stops the write midway.
    files = {"a.bin": b"new", "model.onnx": tmp_path / "does-not-exist.onnx"}
    with pytest.raises(BundleError, match="does-not-exist.onnx"):
        write(bundle, fp32_onnx, files=files)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    verify_bundle(bundle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["end"]  # the half-written folder is gone


def test_rewrite_replaces_the_old_bundle(fp32_onnx: Path, int8_onnx: Path, tmp_path: Path) -> None:
    bundle = write(tmp_path / "end", fp32_onnx)
    (bundle / "stale.txt").write_text("from the old bundle")
    write(bundle, int8_onnx, manifest=manifest_for("int8"))
    manifest = verify_bundle(bundle)
    assert manifest["model"]["precision"] == "int8"
    assert manifest["files"]["model.onnx"]["sha256"] == sha256_file(int8_onnx)
    assert not (bundle / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["end"]


def test_a_folder_that_is_not_a_bundle_is_never_replaced(fp32_onnx: Path, tmp_path: Path) -> None:
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not lose")
    with pytest.raises(BundleError, match=r"not a bundle \(no manifest.json\); refusing to replace it"):
        write(precious, fp32_onnx)
    assert (precious / "thesis.tex").read_text() == "do not lose"


@pytest.mark.parametrize("name", ["manifest.json", "report.md", "../up.onnx", "sub/model.onnx"])
def test_reserved_or_nested_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="cannot be used in a bundle"):
        write(tmp_path / "end", b"x", files={name: b"x"})
    assert not (tmp_path / "end").exists()


def test_unserializable_report_is_refused_before_writing(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="report cannot be written as JSON"):
        write(tmp_path / "end", fp32_onnx, report={"accuracy": float("nan")})
    assert not (tmp_path / "end").exists()
