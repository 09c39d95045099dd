"""The serving tier: a bundle (whole model) or a split bundle's segment behind HTTP, with Ray Serve.

`edgetier serve BUNDLE_DIR --tier cloud` runs this on the cloud (or edge) machine. Endpoints:

- `POST /segment` — a split bundle's segment: ETW1 in (what the tier below sent), ETW1 out (the
  logits, or what goes on to the next tier). A request whose `X-Edgetier-Plan` header names
  another plan is refused with 409, so a device never gets answers from a segment it was not cut with.
  A middle segment (the edge of end -> edge -> cloud, `--next URL`) forwards what it computes to
  the next tier's `/segment` and relays the answer.
- `POST /predict` — a whole-model bundle: ETW1 tensor "0" (the input) in, tensor "0" (logits) out.
- `POST /echo` — answers the request's bytes unchanged, running nothing: the serving overhead alone
  (HTTP, Ray Serve's proxy, the hop to a replica), to set beside a plan that has no term for it.
- `GET /health` — JSON: the bundle's variant, kind and plan id.

The bundle runs with the runtimes only (export.runtime / export.partitioned: numpy + onnxruntime).
Ray Serve scales the same deployment from this machine to a cluster: start Ray on the cluster
(`ray start --head`, then `ray start --address=HEAD:6379` on the workers) and run
`edgetier serve BUNDLE --address auto --host 0.0.0.0` on the head node; `--replicas N` sets how
many copies serve requests. By default the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from export.client import CONTENT_TYPE, PLAN_HEADER
from export.errors import ExplainedError

__all__ = ["ServedBundle", "start", "stop"]

MAX_BODY = 64 << 20


class _Model:
    """What the deployment holds: a split segment or a whole bundle (loaded once per replica)."""

    def __init__(self, bundle_dir: str, next_url: str | None = None, timeout_s: float = 5.0) -> None:
        from export.client import SegmentClient
        from export.manifest import read_manifest

        manifest = read_manifest(bundle_dir)
        self.kind = "segment" if "partition" in manifest else "model"
        if self.kind == "segment":
            from export.partitioned import load_segment

            self.segment = load_segment(bundle_dir)
            self.plan_id = self.segment.partition["plan_id"]
            self.variant = manifest.get("variant")
            part = self.segment.partition
            if (next_url is None) != (part["index"] == part["segments"] - 1):
                from export.errors import BundleError

                raise BundleError(f"segment {part['index']} of {part['segments']} " + (
                    "is not the last one: it needs the next tier's URL to forward to" if next_url is None
                    else "is the last one: it has no next tier to forward to"), where=bundle_dir,
                    fix="pass --next URL for a middle segment (e.g. the edge of end -> edge -> cloud), not for the last")
            # a middle tier (the edge of end -> edge -> cloud) hands its crossing tensors on and relays the answer
            self.forward = SegmentClient(next_url, timeout_s=timeout_s, plan_id=self.plan_id) if next_url else None
        else:
            from export.runtime import load

            self.bundle = load(bundle_dir)
            self.plan_id = None
            self.variant = manifest.get("variant")

    def answer(self, path: str, body: bytes, plan: str | None) -> tuple[int, bytes]:
        from export.wire import decode, encode

        if path == "/echo":
            return 200, body
        if path == "/segment" and self.kind == "segment":
            if plan is not None and plan != self.plan_id:
                return 409, f"this server holds plan {self.plan_id}, the request is for plan {plan}".encode()
            out = self.segment.handle(body)
            return 200, self.forward(out) if self.forward else out
        if path == "/predict" and self.kind == "model":
            tensors = decode(body)
            if "0" not in tensors:
                return 400, b"the message must carry the input as tensor '0'"
            return 200, encode({"0": self.bundle.predict(tensors["0"])})
        return 404, f"this server holds a {self.kind}; POST to /{'segment' if self.kind == 'segment' else 'predict'}".encode()


@serve.deployment(name="edgetier", ray_actor_options={"num_cpus": 0})
class ServedBundle:
    """The Ray Serve deployment: one replica holds one loaded bundle."""

    def __init__(self, bundle_dir: str, next_url: str | None = None, timeout_s: float = 5.0) -> None:
        self.model = _Model(bundle_dir, next_url, timeout_s)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        if request.method == "GET" and path == "/health":
            info = {"kind": self.model.kind, "variant": self.model.variant, "plan_id": self.model.plan_id}
            return Response(json.dumps(info), media_type="application/json")
        if request.method != "POST":
            return Response("POST an ETW1 message", status_code=405)
        body = await request.body()
        if len(body) > MAX_BODY:
            return Response("message too large", status_code=413)
        try:
            status, out = self.model.answer(path, body, request.headers.get(PLAN_HEADER))
        except ExplainedError as err:  # a bad message is the client's problem: say what, never a traceback
            return Response(str(err), status_code=400)
        media = CONTENT_TYPE if status == 200 else "text/plain"
        return Response(out, status_code=status, media_type=media)


def start(bundle_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          replicas: int = 1, next_url: str | None = None, timeout_s: float = 5.0) -> str:
    """Start Ray (local unless `address`) and serve `bundle_dir`; return the base URL. Non-blocking."""
    import ray

    from export.manifest import verify_bundle

    root = Path(bundle_dir).resolve()
    verify_bundle(root)  # refuse a corrupted bundle before starting anything
    _Model(str(root), next_url, timeout_s)  # and a middle segment without its next tier (or a last one with one)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": 1, "include_dashboard": False}
        ray.init(log_to_driver=False, configure_logging=False, **kwargs)
    serve.start(http_options={"host": host, "port": port})
    serve.run(ServedBundle.options(num_replicas=replicas).bind(str(root), next_url, timeout_s), name="edgetier", route_prefix="/")
    return f"http://{host}:{port}"


def stop() -> None:
    """Shut the Serve application and the local Ray down."""
    import ray

    serve.shutdown()
    ray.shutdown()
