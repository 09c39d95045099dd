"""`python -m export.split_run`: the partitioned runtime's CLI, local or against a live serving tier (`--serve URL`).

The servers are stdlib threads around the serving tier's request logic (tests/partition/servers.py);
the live Ray Serve round trip is in tests/benchmarks/test_partition.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.models import build
from export.client import LinkEmulator
from export.onnx import export_onnx
from export.partitioned import load_split
from export.split import write_split_bundles
from export.split_run import main, run_split
from tests.partition.servers import free_port, serve_garbage, serve_model, stop
from tests.partition.test_split import _every_cut

SPEC_IN = {"name": "input", "shape": [None, 1, 40], "dtype": "float32"}
SPEC_OUT = {"name": "logits", "shape": [None, 10]}
LINK = {"to": "cloud", "technology": "test", "bandwidth_mbps": 20.0, "rtt_ms": 4.0}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    net = build("resnet1d", input_shape=(1, 40), num_classes=10, width=8).eval()
    path = export_onnx(net, tuple(net.example_inputs(batch=1)), d / "m.onnx")
    singles = [c for c in _every_cut(path, stride=1) if len(c) == 1]
    dirs = write_split_bundles(path, [singles[len(singles) // 2]], d / "split",
                               tiers=[{"tier": "end", "link": LINK}, {"tier": "cloud"}],
                               input_spec=SPEC_IN, output_spec=SPEC_OUT)
    x = np.random.default_rng(0).standard_normal((12, 1, 40)).astype(np.float32)
    np.save(d / "x.npy", x)
    return {"dir": d, "dirs": dirs, "x": x, "local": load_split(dirs).predict(x)}


@pytest.fixture(scope="module")
def cloud(pair: dict) -> Iterator[str]:
    from export.serve import _Model

    httpd, url = serve_model(_Model(str(pair["dirs"][1])))
    yield url
    stop(httpd)


def test_local_composition_from_the_cli(pair: dict, capsys: pytest.CaptureFixture) -> None:
    out = pair["dir"] / "local.npy"
    assert main([*map(str, pair["dirs"]), "--input", str(pair["dir"] / "x.npy"), "--out", str(out)]) == 0
    assert "12 samples" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out), pair["local"])


def test_serve_gives_the_local_answers_through_the_emulated_link(pair: dict, cloud: str,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = pair["dir"] / "live.npy"
    code = main([str(pair["dirs"][0]), "--input", str(pair["dir"] / "x.npy"), "--serve", cloud, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "emulated link 20 Mbit/s, 4 ms RTT" in printed  # the end target's link, from its manifest
    np.testing.assert_array_equal(np.load(out), pair["local"])  # same segments, same bytes on the wire
    result = run_split(pair["dirs"][:1], pair["x"][:2], serve=cloud, link=LinkEmulator(20.0, 4.0))
    # a lower bound, not a speed claim: the emulator sleeps at least the link's RTT per sample
    assert (result.latency_ms >= 4.0).all()


def test_a_server_that_is_down_exits_2_within_the_timeout(pair: dict, capsys: pytest.CaptureFixture) -> None:
    start = time.perf_counter()
    code = main([str(pair["dirs"][0]), "--input", str(pair["dir"] / "x.npy"), "--serve",
                 f"http://127.0.0.1:{free_port()}", "--timeout", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "did not answer within 2 s" in err and "Traceback" not in err
    assert time.perf_counter() - start < 60  # bounded: the point is "never hangs", not "fast"


def test_a_garbage_server_exits_2(pair: dict, capsys: pytest.CaptureFixture) -> None:
    httpd, url = serve_garbage()
    try:
        code = main([str(pair["dirs"][0]), "--input", str(pair["dir"] / "x.npy"), "--serve", url])
    finally:
        stop(httpd)
    err = capsys.readouterr().err
    assert code == 2 and "not an edgetier serving tier" in err


def test_a_server_of_another_plan_exits_2(pair: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from export.serve import _Model

    # the same cut with fp16 crossing: another plan id, so the device must refuse its answers
    cut = [load_split(pair["dirs"]).segments[0].partition["sends"][0]["name"]]
    other = write_split_bundles(pair["dir"] / "m.onnx", [cut], tmp_path / "other", crossing_dtype="fp16",
                                tiers=[{"tier": "end"}, {"tier": "cloud"}], input_spec=SPEC_IN, output_spec=SPEC_OUT)
    httpd, url = serve_model(_Model(str(other[1])))
    try:
        code = main([str(pair["dirs"][0]), "--input", str(pair["dir"] / "x.npy"), "--serve", url])
    finally:
        stop(httpd)
    err = capsys.readouterr().err
    assert code == 2 and "plan" in err and "serve the next split bundle" in err


def test_an_unreadable_input_exits_2(pair: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    assert main([str(pair["dirs"][0]), "--input", str(tmp_path / "x.npy")]) == 2
    assert "cannot read the input rows" in capsys.readouterr().err
