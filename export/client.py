"""The device side of a serving tier: the standard library's HTTP client, stated timeouts, an emulated link.

No Ray and no torch here: `urllib.request` posts an ETW1 message (export.wire) and the answer
must parse as one, or the call fails with one clear error. Every call is bounded by
`timeout_s` (connect and each read), so a device never hangs on a server that is down.

`LinkEmulator` adds the link's delay a real network would: half the round trip and the bytes
over the bandwidth on the way up, the same on the way down — so a measurement on localhost can
be compared with a plan made for Wi-Fi.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.errors import ExportError
from export.wire import WireError, decode, encode

__all__ = ["LinkEmulator", "RemoteBundle", "SegmentClient", "endpoint", "health"]

CONTENT_TYPE = "application/x-edgetier-etw1"
PLAN_HEADER = "X-Edgetier-Plan"


@dataclass(frozen=True)
class LinkEmulator:
    """Delay for a link of `bandwidth_mbps` and `rtt_ms` (None = no delay).

    >>> LinkEmulator(8.0, 2.0).delay_s(1000)  # 1 ms of RTT each way + 1000 B at 8 Mbit/s
    0.002
    """

    bandwidth_mbps: float
    rtt_ms: float

    def delay_s(self, nbytes: int) -> float:
        return (self.rtt_ms / 2 + nbytes * 8 / (self.bandwidth_mbps * 1e6) * 1e3) / 1e3


@dataclass(frozen=True)
class SegmentClient:
    """POST payloads to `url` (`/segment` of a split bundle, `/predict` of a whole one); returns the answer's bytes."""

    url: str
    timeout_s: float = 5.0
    plan_id: str | None = None
    link: LinkEmulator | None = None

    def __call__(self, payload: bytes) -> bytes:
        if self.link:
            time.sleep(self.link.delay_s(len(payload)))
        headers = {"Content-Type": CONTENT_TYPE}
        if self.plan_id:
            headers[PLAN_HEADER] = self.plan_id
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - http(s) URL given by the user
                body = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read(300).decode("utf-8", "replace").strip()
            raise ExportError(f"the serving tier answered HTTP {err.code}: {detail or err.reason}", where=self.url,
                              fix="check that the server serves the bundle this device was paired with") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise ExportError(f"the serving tier is not reachable or did not answer within {self.timeout_s:g} s "
                              f"({reason})", where=self.url,
                              fix="start it with `edgetier serve BUNDLE`, or check the URL and the network") from None
        try:
            decode(body)  # refuse an answer that does not parse before anyone uses it
        except WireError as err:
            raise WireError(f"the serving tier's answer is not an ETW1 message ({err.problem})", where=self.url,
                            fix="point --serve at an `edgetier serve` endpoint") from None
        if self.link:
            time.sleep(self.link.delay_s(len(body)))
        return body


def endpoint(url: str, path: str) -> str:
    """`path` on the server at `url`, whether `url` is the base or already names an endpoint.

    >>> endpoint("http://127.0.0.1:8000/segment", "/health"), endpoint("http://h:1/", "/predict")
    ('http://127.0.0.1:8000/health', 'http://h:1/predict')
    """
    base = url.rstrip("/")
    for known in ("/segment", "/predict", "/health"):
        if base.endswith(known):
            base = base[: -len(known)]
    return base + path


def health(url: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """The serving tier's `/health` answer (kind, variant, plan id); one clear error when it is down or not one."""
    target = endpoint(url, "/health")
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as response:  # noqa: S310 - the user's serving URL
            body = response.read(65536)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise ExportError(f"the serving tier is not reachable or did not answer within {timeout_s:g} s ({reason})",
                          where=target, fix="start it with `edgetier serve BUNDLE`, or check the URL and the network"
                          ) from None
    try:
        info = json.loads(body)
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("kind") not in ("model", "segment"):
        raise WireError(f"the server's /health answer is not an edgetier serving tier's ({body[:60]!r})", where=target,
                        fix="point --serve at an `edgetier serve` endpoint")
    return info


@dataclass(frozen=True)
class RemoteBundle:
    """A whole-model bundle served at `/predict`, behind the two things a cascade tier uses: `predict` and `exits`.

    The server runs the bundle's own exits; to the device it is one answer per row.
    """

    client: SegmentClient
    exits: tuple[dict[str, Any], ...] = ()

    def predict(self, x: np.ndarray, *, return_exits: bool = False,
                batch_size: int = 256) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        parts = []
        for i in range(0, len(x), batch_size):
            rows = np.asarray(x[i:i + batch_size], np.float32)
            answer = decode(self.client(encode({"0": rows})))
            logits = answer.get("0")
            if logits is None or logits.ndim != 2 or len(logits) != len(rows):
                raise WireError(f"the serving tier answered {len(rows)} rows with tensors "
                                f"{ {k: list(v.shape) for k, v in answer.items()} }", where=self.client.url,
                                fix="point --serve at the `edgetier serve` of this run's last bundle")
            parts.append(logits.astype(np.float32))
        out = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return (out, np.zeros(len(out), np.int64)) if return_exits else out
