"""The device-side client: a server that is down, slow, or answers garbage gives one clear error, in bounded time.

The misbehaving servers here are stdlib `http.server` threads on 127.0.0.1 (what is tested is the
client, not Ray Serve; the live Ray Serve round trip is in tests/benchmarks/test_partition.py).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from export.client import LinkEmulator, SegmentClient
from export.errors import ExportError
from export.wire import WireError, decode, encode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    mode = "echo"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.mode == "slow":
            time.sleep(2.0)
        status, out = {"echo": (200, body), "garbage": (200, b"<html>hello</html>"),
                       "error": (500, b"boom"), "slow": (200, body)}[self.mode]
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("H", (_Handler,), {"mode": request.param})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/segment"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


PAYLOAD = encode({"0": np.ones((1, 4), np.float32)})


@pytest.mark.parametrize("server", ["echo"], indirect=True)
def test_a_good_answer_is_returned(server: str) -> None:
    assert decode(SegmentClient(server, timeout_s=5)(PAYLOAD))["0"].tolist() == [[1.0] * 4]


def test_a_server_that_is_down_fails_fast_and_clearly() -> None:
    start = time.perf_counter()
    with pytest.raises(ExportError, match="not reachable"):
        SegmentClient(f"http://127.0.0.1:{_free_port()}/segment", timeout_s=2)(PAYLOAD)
    assert time.perf_counter() - start < 30  # generous: the point is "bounded", not "fast"


@pytest.mark.parametrize("server", ["garbage"], indirect=True)
def test_a_garbage_answer_is_refused(server: str) -> None:
    with pytest.raises(WireError, match="not an ETW1 message"):
        SegmentClient(server, timeout_s=5)(PAYLOAD)


@pytest.mark.parametrize("server", ["error"], indirect=True)
def test_an_http_error_is_reported_with_its_body(server: str) -> None:
    with pytest.raises(ExportError, match="HTTP 500: boom"):
        SegmentClient(server, timeout_s=5)(PAYLOAD)


@pytest.mark.parametrize("server", ["slow"], indirect=True)
def test_a_slow_server_times_out(server: str) -> None:
    with pytest.raises(ExportError, match="did not answer within 0.3 s"):
        SegmentClient(server, timeout_s=0.3)(PAYLOAD)


def test_link_emulator_delay_follows_the_link_model() -> None:
    # 3 ms round trip split both ways, 1250 bytes at 100 Mbit/s = 0.1 ms
    assert LinkEmulator(100.0, 3.0).delay_s(1250) == pytest.approx(0.0016)


def test_device_side_modules_load_no_torch_no_ray_no_compress(tmp_path) -> None:
    import subprocess
    import sys

    code = ("import sys, export.partitioned, export.client, export.wire; "
            "print(sorted(m for m in ('torch', 'compress', 'ray', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
