"""Runs under stress (issue 13, items 6 and 7): concurrent runs, interrupted swaps, diverged training,
bad Python API input, and third-party C++ log lines in the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from filelock import FileLock
from torch import nn

import compress
from compress.core.errors import EdgetierError
from compress.core.train import DivergedError, TrainSpec, fit
from compress.runlock import RunLockedError, clean_leftovers, run_lock
from export import bundle as bundle_module
from export._examples import tiny_bundle
from export.bundle import write_bundle
from export.manifest import verify_bundle

EDGETIER = str(Path(sys.executable).with_name("edgetier"))


# -- item 7: one writer per run folder ------------------------------------------------------------

def test_a_second_run_into_a_locked_folder_refuses_and_writes_nothing(tiny_recipe, write_recipe, tmp_path,
                                                                         monkeypatch, capsys):
    from compress.cli import main

    path = write_recipe(tiny_recipe)
    out = tmp_path / "runs"
    out.mkdir()
    with FileLock(str(out / ".tiny.lock"), timeout=0):  # what a running `edgetier run` holds
        monkeypatch.setattr(sys, "argv", ["edgetier", "run", str(path), "--out", str(out)])
        with pytest.raises(SystemExit) as info:
            main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and "another edgetier run is writing" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [".tiny.lock"]  # no run folder was started


def test_the_lock_is_released_after_a_failed_run(tmp_path):
    with pytest.raises(ValueError), run_lock(tmp_path / "q"):
        raise ValueError("boom")
    with run_lock(tmp_path / "q"):  # free again
        pass
    with run_lock(tmp_path / "q"), pytest.raises(RunLockedError), run_lock(tmp_path / "q"):
        pass


@pytest.mark.slow
def test_two_concurrent_cli_runs_never_mix(tiny_recipe, tmp_path):
    """Two real `edgetier run` processes into one --out: one runs, the other refuses; the folder is one run's."""
    tiny_recipe["stages"], tiny_recipe["variants"] = [], {"end": {"target": "rpi4"}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen([EDGETIER, "run", str(path), "--out", str(out), "--seed", "7"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:  # wait until the first holds the lock
        try:
            with FileLock(str(out / ".tiny.lock"), timeout=0):
                pass
        except Exception:
            break
        time.sleep(0.2)
    second = subprocess.run([EDGETIER, "run", str(path), "--out", str(out), "--seed", "8"], env=env,
                            capture_output=True, text=True, timeout=600)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert second.returncode == 2 and "another edgetier run" in second.stderr and "Traceback" not in second.stderr
    run = json.loads((out / "tiny" / "run.json").read_text())
    assert run["seed"] == 7
    assert {json.loads((out / "tiny" / b / "manifest.json").read_text())["seed"] for b in ("cloud", "end")} == {7}


# -- item 7: leftovers of killed writes -------------------------------------------------------------

def test_leftovers_are_cleaned_and_a_set_aside_bundle_is_put_back(tmp_path):
    run_dir = tmp_path / "q"
    tiny_bundle(run_dir / ".end.old-1a2b3c4d")  # killed between the two renames: end/ is missing
    tiny_bundle(run_dir / "edge")
    tiny_bundle(run_dir / ".edge.old-5e6f7a8b")  # edge/ exists: the old copy is stale
    (run_dir / ".edge.tmp-9c0d1e2f").mkdir()  # a half-written bundle
    (run_dir / "checkpoints" / "end").mkdir(parents=True)
    (run_dir / "checkpoints" / ".cloud.pt.tmp-abcd1234").write_bytes(b"half")
    (run_dir / "checkpoints" / "end" / ".00-tune.pt.tmp-abcd1234").write_bytes(b"half")
    (run_dir / ".report.json.tmp-0a0b0c0d").write_text("{")
    done = clean_leftovers(run_dir)
    assert "restored end" in done
    assert verify_bundle(run_dir / "end") and verify_bundle(run_dir / "edge")
    leftovers = [p for p in run_dir.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_replacing_a_bundle_never_leaves_it_missing(tmp_path, monkeypatch):
    out = tiny_bundle(tmp_path / "end")
    seen_missing = []
    real_rename = os.rename

    def watching_rename(a, b):  # any rename during the swap: is the bundle still there?
        seen_missing.append(not out.exists())
        return real_rename(a, b)

    monkeypatch.setattr(bundle_module.os, "rename", watching_rename)
    write_bundle(out, files={"model.onnx": (out / "model.onnx").read_bytes()}, manifest={"variant": "new"},
                 report={}, report_md="")
    assert verify_bundle(out)["variant"] == "new"
    if sys.platform.startswith("linux"):
        assert seen_missing == []  # exchanged atomically: no rename, no gap
    assert not any(p.name.startswith(".end.") for p in tmp_path.iterdir())


# -- item 6: diverged training and Python API misuse ---------------------------------------------------

def test_diverged_training_stops_with_its_own_message():
    # inputs ~1e3 make gradients ~1e3; times lr 1e37 the first step puts the weights past float32's
    # 3.4e38, so the next loss is not finite (the probe's `lr: 1e308`, within what TrainSpec accepts)
    x = 1e3 * np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    with pytest.raises(DivergedError, match="training diverged") as info:
        fit(model, (x, y), TrainSpec(epochs=5, lr=1e37, optimizer="sgd", batch_size=16), description="end: tune")
    assert "end: tune" in str(info.value) and "lower the learning rate" in str(info.value)


def test_nan_data_is_a_divergence_not_an_export_mismatch():
    x = np.full((16, 4), np.nan, np.float32)
    with pytest.raises(DivergedError, match="loss became nan"):
        fit(nn.Linear(4, 2), (x, np.zeros(16, np.int64)), TrainSpec(epochs=1, batch_size=8))


def _api_cases():
    from compress.prune.structured import StructuredPruneConfig
    from compress.quant.ptq import PTQInt8Config

    lin = nn.Linear(4, 2)
    return [
        ((None, StructuredPruneConfig(ratio=0.5)), {}, "model is a NoneType"),
        (("model", PTQInt8Config()), {}, "model is a str"),
        ((lin, {"kind": "ptq_int8"}), {}, "config is a dict"),
        ((lin, "ptq_int8"), {}, "config is a str"),
        ((lin, None), {}, "config is a NoneType"),
        ((lin, PTQInt8Config), {}, "the class PTQInt8Config"),
        ((lin, PTQInt8Config()), {"target": 3}, "target is a int"),
        ((lin, PTQInt8Config()), {"example_inputs": torch.zeros(1, 4)}, "example_inputs is a Tensor"),
    ]


@pytest.mark.parametrize("args,kwargs,problem", _api_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_apply_explains_wrong_arguments(args, kwargs, problem):
    with pytest.raises(EdgetierError, match=problem) as info:
        compress.apply(*args, **kwargs)
    assert "Fix:" in str(info.value)


# -- item 8: no third-party C++ log lines in the CLI ------------------------------------------------------

@pytest.mark.slow
def test_a_litert_cli_run_prints_no_cpp_log_lines(tiny_recipe, tmp_path):
    tiny_recipe["model"]["train"]["epochs"] = 1
    tiny_recipe["stages"] = [{"name": "quantize", "kind": "ptq_int8", "with": {"calib_samples": 32}}]
    tiny_recipe["variants"] = {"end": {"target": "rpi4", "export": ["tflite"]}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    done = subprocess.run([EDGETIER, "run", str(path), "--out", str(tmp_path / "runs")], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    for line in ("absl::InitializeLog", "XNNPACK delegate", "TensorFlow Lite"):
        assert line not in text
    assert "measured at batch 1 in" in (tmp_path / "runs" / "tiny" / "report.md").read_text()
