"""Packaging: every package is listed in pyproject.toml, and a non-editable install finds recipes and targets."""

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".") for top in ("compress", "export")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set(), "add these packages to [tool.setuptools] packages"


def test_wheel_ships_recipes_and_targets_and_they_are_found(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("edgetier-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("recipes", "hw_targets"):
        for path in (ROOT / folder).glob("*.yaml"):
            assert f"compress/_shipped/{folder}/{path.name}" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import compress, compress.targets as t; from compress.core.resources import shipped_dir;"
             "print(compress.__file__); print(shipped_dir('recipes')); print(t.load_target('rpi4').tier)")
    # run from an empty folder with only the installed copy first on the path: not the source tree
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""},
                         check=True, capture_output=True, text=True).stdout.split("\n")
    assert out[0].startswith(str(site)) and out[1].startswith(str(site)) and out[2] == "end"
