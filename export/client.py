"""The device side of a serving tier: the standard library's HTTP client, stated timeouts, an emulated link.

No Ray and no torch here: `urllib.request` posts an ETW1 message (export.wire) and the answer
must parse as one, or the call fails with one clear error. Every call is bounded by
`timeout_s` (connect and each read), so a device never hangs on a server that is down.

`LinkEmulator` adds the link's delay a real network would: half the round trip and the bytes
over the bandwidth on the way up, the same on the way down — so a measurement on localhost can
be compared with a plan made for Wi-Fi.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from export.errors import ExportError
from export.wire import WireError, decode

__all__ = ["LinkEmulator", "SegmentClient"]

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
