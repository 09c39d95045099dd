"""Hostile bundles (issue 13, items 3 and 4): every malformed or tampered file gives one `BundleError`
paragraph, the same in `edgetier inspect` (exit 2, no traceback) and in `export.runtime.load`."""

from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from compress.cli import main
from export._examples import tiny_model
from export.bundle import dumps_json, write_bundle
from export.errors import BundleError, ExplainedError
from export.inspect import parity_npz, rerun_parity
from export.manifest import sha256_file
from export.runtime import load
from export.signing import generate_keypair, sign_bundle

X = np.linspace(-1, 1, 8 * 4, dtype=np.float32).reshape(8, 4)
# tiny_model is x @ W + b with W's columns (0.1, 0, -0.1): the reference outputs, computed exactly
REF = (X.sum(1, keepdims=True) * np.array([[0.1, 0.0, -0.1]], np.float32)).astype(np.float32)
ENTRY = {"name": "end", "target": "rpi4", "precision": "fp32", "bytes": 1, "params": 15, "macs": 12,
         "accuracy": 0.5, "latency_ms": 0.01, "estimated_latency_ms": None}


def make_bundle(path: Path) -> Path:
    manifest = {"format_version": 1, "variant": "end", "model": {"file": "model.onnx", "format": "onnx",
                "precision": "fp32"}, "input": {"name": "input", "shape": [None, 4], "dtype": "float32"},
                "output": {"name": "logits", "shape": [None, 3]}, "labels": ["a", "b", "c"],
                "target": {"name": "rpi4", "tier": "end", "runtime": "onnxruntime",
                           "tolerance": {"atol": 1e-4, "rtol": 1e-3, "quantized_top1_agreement": 0.97}}}
    return write_bundle(path, files={"model.onnx": tiny_model().SerializeToString(), "parity.npz": parity_npz(X, REF)},
                        manifest=manifest, report={"models": [ENTRY]}, report_md="# end\n")


def rehash(bundle: Path, edit=lambda m: None) -> None:
    """What a tamperer does: edit the manifest and rewrite every hash so they match again."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    for name in list(manifest["files"]):
        if len(name) < 200 and (bundle / name).is_file():
            manifest["files"][name] = {"sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}
    (bundle / "manifest.json").write_text(dumps_json(manifest))


def _write(name, content):
    def case(b):
        (b / name).write_bytes(content(b) if callable(content) else content)
        rehash(b)
    return case


def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy():
    buf = io.BytesIO()
    np.save(buf, X)
    return buf.getvalue()


def _manifest(edit):
    return lambda b: rehash(b, edit)


def _symlink_model(b):
    outside = b.parent / "outside.onnx"
    outside.write_bytes((b / "model.onnx").read_bytes())
    (b / "model.onnx").unlink()
    (b / "model.onnx").symlink_to(outside)


def _deep(b):
    (b / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)


def _long_name(b):
    rehash(b, lambda m: m["files"].__setitem__("n" * 300, {"sha256": "0" * 64, "bytes": 1}))


def _unlisted_report(b):
    rehash(b, lambda m: m["files"].pop("report.json"))


def _negated(b):
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string((b / "model.onnx").read_bytes())
    w = model.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), w.name))
    (b / "model.onnx").write_bytes(model.SerializeToString())
    rehash(b, lambda m: m["target"]["tolerance"].__setitem__("atol", 1e9))


CASES = {
    "parity_pickled_object": (_write("parity.npz", _npz(x=np.array([{"a": 1}], dtype=object), reference=REF)), "parity.npz"),
    "parity_raw_pickle": (_write("parity.npz", pickle.dumps({"x": X})), "parity.npz"),
    "parity_is_npy": (_write("parity.npz", _npy()), "parity.npz"),
    "parity_missing_key": (_write("parity.npz", _npz(x=X)), "parity.npz"),
    "parity_wrong_shape": (_write("parity.npz", _npz(x=X[:, :3], reference=REF)), "parity.npz"),
    "parity_nan": (_write("parity.npz", _npz(x=X * np.nan, reference=REF)), "parity.npz"),
    "report_not_json": (_write("report.json", b"{not json"), "report.json"),
    "report_no_models": (_write("report.json", b'{"notes": []}'), "report.json"),
    "report_bad_entry": (_write("report.json", b'{"models": [{"name": 1}]}'), "report.json"),
    "report_unlisted": (_unlisted_report, "report.json"),
    "model_truncated": (_write("model.onnx", lambda b: (b / "model.onnx").read_bytes()[:40]), "model.onnx"),
    "model_random": (_write("model.onnx", bytes(range(256)) * 4), "model.onnx"),
    "manifest_no_variant": None,  # accepted: inspect shows '?' (no KeyError); see the test below
    "manifest_deep_json": (_deep, "nested too deeply"),
    "manifest_not_json": (lambda b: (b / "manifest.json").write_text("{"), "not valid JSON"),
    "manifest_no_model": (_manifest(lambda m: m.pop("model")), "'model'"),
    "manifest_object_dtype": (_manifest(lambda m: m["input"].__setitem__("dtype", "object")), "input.dtype"),
    "manifest_bad_shape": (_manifest(lambda m: m["input"].__setitem__("shape", [None, -4])), "input.shape"),
    "manifest_huge_atol": (_manifest(lambda m: m["target"]["tolerance"].__setitem__("atol", 1e9)), "tolerance"),
    "manifest_long_file_name": (_long_name, "plain file names"),
    "manifest_labels_not_list": (_manifest(lambda m: m.__setitem__("labels", {"a": 1})), "labels"),
    "negated_weights_rehashed": (_negated, "tolerance"),
    "symlink_model": (_symlink_model, "symlink"),
    "unlisted_external_data": (lambda b: (b / "weights.bin").write_bytes(b"\0" * 64), "not listed"),
    "hash_mismatch": (lambda b: (b / "model.onnx").write_bytes(b"\0" + (b / "model.onnx").read_bytes()[1:]),
                      "does not match"),
}


def _inspect(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["edgetier", "inspect", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_the_clean_bundle_passes(tmp_path, monkeypatch, capsys):
    bundle = make_bundle(tmp_path / "end")
    code, out, err = _inspect(monkeypatch, capsys, bundle)
    assert code in (0, None), err
    assert "passed" in out and "unsigned" in out
    assert rerun_parity(bundle)["passed"]


@pytest.mark.parametrize("case", [k for k, v in CASES.items() if v], ids=str)
def test_hostile_bundle_one_paragraph_in_inspect_and_runtime(tmp_path, monkeypatch, capsys, case):
    tamper, fragment = CASES[case]
    bundle = make_bundle(tmp_path / "end")
    tamper(bundle)
    code, _, err = _inspect(monkeypatch, capsys, bundle)
    assert code == 2, err
    assert "Traceback" not in err and fragment in err and "Fix:" in err
    with pytest.raises(ExplainedError) as info:  # the runtime path: load, then what inspect reads besides
        rerun_parity(bundle)
        from export.bundle_check import read_report
        read_report(bundle, load(bundle).manifest)
    assert str(info.value) in " ".join(err.split()) or " ".join(str(info.value).split()) in " ".join(err.split())


def test_a_manifest_without_variant_is_shown_not_a_traceback(tmp_path, monkeypatch, capsys):
    bundle = make_bundle(tmp_path / "end")
    rehash(bundle, lambda m: m.pop("variant"))
    code, out, err = _inspect(monkeypatch, capsys, bundle)
    assert code in (0, None) and "variant ?" in out and "Traceback" not in err


@pytest.mark.parametrize("value", [np.array([[np.nan, 0, 0, 0]]), np.array([[np.inf, 0, 0, 0]]),
                                   np.ones((1, 4), complex), None, np.array([["a", "b", "c", "d"]])],
                         ids=["nan", "inf", "complex", "none", "str"])
def test_predict_refuses_what_would_be_garbage(tmp_path, value):
    bundle = load(make_bundle(tmp_path / "end"))
    with pytest.raises(ExplainedError):
        bundle.predict(value)


def test_predict_allows_nonfinite_when_asked(tmp_path):
    bundle = load(make_bundle(tmp_path / "end"))
    out = bundle.predict(np.array([[np.nan, 0, 0, 0]], np.float32), allow_nonfinite=True)
    assert out.shape == (1, 3)


# -- signatures ----------------------------------------------------------------------------------

@pytest.fixture
def signed(tmp_path):
    private, public = generate_keypair(tmp_path / "key.pem")
    bundle = make_bundle(tmp_path / "end")
    sign_bundle(bundle, private)
    return bundle, private, public


def test_a_signed_bundle_loads_and_inspect_says_so(signed, monkeypatch, capsys):
    bundle, _, public = signed
    assert load(bundle, public_key=public).manifest["variant"] == "end"
    assert load(bundle).manifest["variant"] == "end"  # without a key it loads as before
    code, out, _ = _inspect(monkeypatch, capsys, bundle, "--public-key", public)
    assert code in (0, None) and "signed, verified" in out
    _, out, _ = _inspect(monkeypatch, capsys, bundle)
    assert "not verified" in out


def _every_byte_position(path: Path, count: int = 6) -> list[int]:
    size = path.stat().st_size
    return sorted({0, size - 1, *np.linspace(0, size - 1, count).astype(int).tolist()})


@pytest.mark.parametrize("name", ["manifest.json", "model.onnx", "parity.npz", "report.json", "report.md"])
def test_any_changed_byte_of_a_signed_bundle_is_refused(signed, monkeypatch, capsys, name):
    bundle, _, public = signed
    path = bundle / name
    original = path.read_bytes()
    for pos in _every_byte_position(path):
        data = bytearray(original)
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
        if name != "manifest.json":
            rehash(bundle)  # the tamperer also rewrites the hash: the signature still catches it
        with pytest.raises(BundleError):
            load(bundle, public_key=public)
        monkeypatch.setattr(sys, "argv", ["edgetier", "verify", str(bundle), "--public-key", str(public)])
        with pytest.raises(SystemExit) as info:
            main()
        assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err
        path.write_bytes(original)
        if name != "manifest.json":
            rehash(bundle)
    load(bundle, public_key=public)  # restored: valid again


def test_wrong_key_and_unsigned_bundle_with_a_key_are_refused(signed, tmp_path):
    bundle, _, _ = signed
    _, other = generate_keypair(tmp_path / "other.pem")
    with pytest.raises(BundleError, match="another key"):
        load(bundle, public_key=other)
    (bundle / "manifest.sig").unlink()
    with pytest.raises(BundleError, match="not signed"):
        load(bundle, public_key=other)


def test_cli_keygen_sign_verify(tmp_path, monkeypatch, capsys):
    bundle = make_bundle(tmp_path / "end")
    for args in (["keygen", tmp_path / "k.pem"], ["sign", bundle, "--key", tmp_path / "k.pem"],
                 ["verify", bundle, "--public-key", tmp_path / "k.pub.pem"]):
        monkeypatch.setattr(sys, "argv", ["edgetier", *map(str, args)])
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), capsys.readouterr().err
    assert "signature valid" in capsys.readouterr().out
