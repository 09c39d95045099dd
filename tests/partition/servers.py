"""Stdlib HTTP servers for the serving-tier tests: the real request logic (export.serve._Model) without Ray's
start-up, and misbehaving ones. Each returns (server, base URL); call `stop(server)` when done."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from export.client import PLAN_HEADER
from export.errors import ExplainedError


def serve_model(model: Any) -> tuple[ThreadingHTTPServer, str]:
    """`model` is an export.serve._Model: POST answers as Ray Serve's deployment does, GET /health its info."""
    import json

    def respond(handler: BaseHTTPRequestHandler, status: int, out: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(out)))
        handler.end_headers()
        handler.wfile.write(out)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            info = {"kind": model.kind, "variant": model.variant, "plan_id": model.plan_id}
            respond(self, 200, json.dumps(info).encode())

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                status, out = model.answer(self.path, body, self.headers.get(PLAN_HEADER))
            except ExplainedError as err:
                status, out = 400, str(err).encode()
            respond(self, status, out)

        def log_message(self, *args: object) -> None:
            pass

    return _start(Handler)


def serve_garbage() -> tuple[ThreadingHTTPServer, str]:
    """Answers every request with 200 and an HTML page."""

    class Handler(BaseHTTPRequestHandler):
        def _garbage(self) -> None:
            if self.command == "POST":
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
            out = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = _garbage  # noqa: N815 - http.server's names

        def log_message(self, *args: object) -> None:
            pass

    return _start(Handler)


def _start(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def stop(httpd: ThreadingHTTPServer) -> None:
    httpd.shutdown()
    httpd.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
