"""Shared fixtures: a tiny recipe (digits, a narrow resnet2d, one epoch) that runs in seconds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY: dict[str, Any] = {
    "schema_version": 1,
    "name": "tiny",
    "seed": 0,
    "model": {"zoo": "resnet2d", "width": 8, "train": {"epochs": 2, "lr": 0.01}},
    "data": {"dataset": "digits"},
    "defaults": {"train": {"lr": 0.001, "batch_size": 64}},
    "stages": [
        {"name": "tune", "kind": "finetune", "train": {"epochs": 1}},
        {"name": "tune2", "kind": "finetune", "train": {"epochs": 1}},
        {"name": "quantize", "kind": "ptq_int8", "with": {"calib_samples": 64}},
    ],
    "variants": {
        "edge": {"target": "jetson_orin_nano", "skip": ["quantize"]},
        "end": {"target": "rpi4"},
    },
}


@pytest.fixture
def tiny_recipe() -> dict[str, Any]:
    """A fresh, mutable copy of the tiny recipe as a dict."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe dict (or raw text) to a YAML file in tmp_path and return its path."""

    def write(recipe: dict[str, Any] | str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One uninterrupted run of the tiny recipe, shared by the tests that only read it: (recipe path, RunResult)."""
    import compress

    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path, compress.run(compress.load_recipe(path), out_dir=folder / "runs")


def pytest_configure(config):
    # One torch thread in the test process: on 2 shared cores, two threads contend with other work
    # (10x slower steps under load), while one is nearly as fast when the machine is quiet.
    import torch

    torch.set_num_threads(1)


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run `edgetier ARGS` in-process; (exit code, stdout, stderr)."""
    import sys

    from compress.cli import main

    monkeypatch.setattr(sys, "argv", ["edgetier", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err
