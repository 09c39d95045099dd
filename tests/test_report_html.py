"""report.html: written beside report.md by a run, self-contained, and rendered by a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from export.report_html import write_report_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _names(run_dir: Path) -> list[str]:
    # The shared tiny run may be re-run with fewer variants by another test (which rewrites its
    # report): the page must match whatever the folder's report.json lists now.
    return [m["name"] for m in json.loads((run_dir / "report.json").read_text())["models"]]


def test_a_run_writes_a_self_contained_page(tiny_run):
    _, result = tiny_run
    page = (result.run_dir / "report.html").read_text()
    names = _names(result.run_dir)
    assert len(names) >= 2
    for name in names:
        assert f"<td>{name}</td>" in page
    # two plots inline (size and latency), with the models' names as text inside them
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == 2 and all(f">{names[-1]}</text>" in s for s in svgs)
    # nothing the browser would fetch: no src/href to any scheme (data: URIs included would show as 'data:')
    assert re.findall(r'(?:src|href)="(?!data:)[a-z]+:', page) == []
    # every bundle's files were re-verified when the page was written, and parity is shown
    assert page.count('<span class="ok">verified</span>') == len(names)
    assert "Parity with PyTorch" in page


def test_a_tampered_bundle_shows_as_failed(tiny_run, tmp_path):
    _, result = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(result.run_dir, copy)
    names = _names(copy)
    model = next(p for p in (copy / names[-1]).iterdir() if p.suffix in (".onnx", ".tflite"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    page = write_report_html(copy).read_text()
    assert page.count('<span class="ok">verified</span>') == len(names) - 1
    assert '<span class="bad">FAILED</span>' in page and model.name in page


def test_cascade_results_join_the_page(tiny_run, tmp_path):
    _, result = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(result.run_dir, copy)
    (copy / "cascade.json").write_text(
        '{"simulation": {"tiers": ["end", "cloud"], "cascade": {"accuracy": 0.9, "mean_latency_ms": 0.5, '
        '"p95_latency_ms": 1.5, "bytes_sent_per_sample": 12, "share_per_tier": [0.8, 0.2]}, '
        '"cloud_only": {"accuracy": 0.92}, "end_only": {}, "notes": ["simulated"]}}')
    page = write_report_html(copy).read_text()
    assert "Cascade simulation" in page and "cascade end → cloud" in page
    assert "90.00 %" in page and "end: 80.0 %" in page


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian: apt-get install chromium)")
def test_the_page_renders_in_headless_chromium(tiny_run, tmp_path):
    _, result = tiny_run
    shot = tmp_path / "shot.png"
    # The flags keep a root, offline, display-less Chromium from reaching for the network or a GPU.
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
         "--enable-logging=stderr", "--v=0", (result.run_dir / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no script errors or warnings reached the page's console
    from matplotlib.image import imread

    pixels = imread(shot)
    # A blank page is one colour; the table, text and plots give thousands of distinct pixels.
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    distinct = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(distinct) > 50, len(distinct)
    # and the console capture does work: a page with a script error is reported
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>nosuch();</script></body></html>")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile2'}", "--enable-logging=stderr", "--v=0", "--dump-dom",
         bad.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert any(":CONSOLE" in line and "nosuch" in line for line in proc.stderr.splitlines())


def test_render_refuses_a_report_without_models(tmp_path: Path):
    from export.errors import ExportError
    from export.report_html import render_html

    with pytest.raises(ExportError, match="no 'models' list"):
        render_html({"recipe": "x"})
