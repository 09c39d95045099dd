"""`edgetier cascade RUN_DIR --serve URL`: the calibrated cascade on the test split with its last tier live.

The last tier's bundle is served by `edgetier serve` (Ray Serve, `/predict`); the tiers before it
run here in their runtimes. Every hand-off crosses the link of the tier it leaves, emulated on
the client (export.client.LinkEmulator: half the RTT plus the bytes over the bandwidth, each way),
so the measured latency per sample is comparable with the simulation's estimate. Samples are
sent one at a time, as a device would. The server is checked first (`/health`: it must serve
the run's last bundle), every call is bounded by the timeout, and a garbage answer is refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress.core.errors import EdgetierError
from compress.targets import load_target
from export.cascade import Cascade, Tier
from export.client import LinkEmulator, RemoteBundle, SegmentClient, endpoint, health
from export.runtime import Bundle

__all__ = ["run_live"]


@dataclass(frozen=True)
class _Linked:
    """A local tier reached over an emulated link: the rows go up, the answers come back."""

    bundle: Bundle
    link: LinkEmulator

    @property
    def exits(self) -> list[dict[str, Any]]:
        return self.bundle.exits

    def predict(self, x: np.ndarray, *, return_exits: bool = False) -> Any:
        time.sleep(self.link.delay_s(int(np.asarray(x, np.float32).nbytes)))
        logits, taken = self.bundle.predict(x, return_exits=True)
        time.sleep(self.link.delay_s(int(logits.nbytes)))
        return (logits, taken) if return_exits else logits


def _link(bundle: Bundle) -> LinkEmulator | None:
    link = load_target(bundle.manifest["target"]["name"]).link
    return LinkEmulator(link.bandwidth_mbps, link.rtt_ms) if link else None


def run_live(names: Sequence[str], bundles: Sequence[Bundle], handoffs: Sequence[dict[str, Any] | None],
             x: np.ndarray, y: np.ndarray, local_logits: np.ndarray, url: str, *, timeout_s: float) -> dict[str, Any]:
    """Run the cascade with its last tier at `url`; measured latency and agreement with the local cascade."""
    info = health(url, timeout_s=timeout_s)
    last = bundles[-1].manifest
    if info.get("kind") != "model" or info.get("variant") != last.get("variant"):
        raise EdgetierError(f"the server serves {info.get('kind')} {info.get('variant')!r}, the cascade's last tier "
                            f"is bundle {names[-1]!r} (variant {last.get('variant')!r})", where=endpoint(url, "/health"),
                            fix=f"serve the run's last bundle: `edgetier serve RUN_DIR/{names[-1]}`")
    links = [_link(b) for b in bundles[:-1]]
    tiers = []
    for t, (name, bundle, handoff) in enumerate(zip(names, bundles, handoffs, strict=True)):
        runner: Any = bundle
        if t == len(bundles) - 1:
            runner = RemoteBundle(SegmentClient(endpoint(url, "/predict"), timeout_s=timeout_s, link=links[t - 1]))
        elif t and links[t - 1] is not None:
            runner = _Linked(bundle, links[t - 1])
        tiers.append(Tier(name, runner, handoff))
    cascade = Cascade(tiers)
    logits, ms = [], []
    for i in range(len(x)):
        start = time.perf_counter()
        logits.append(cascade.predict(x[i:i + 1]))
        ms.append((time.perf_counter() - start) * 1e3)
    got, latency = np.concatenate(logits), np.asarray(ms)
    return {"url": url, "timeout_s": timeout_s, "samples": len(x),
            "accuracy": float((got.argmax(1) == y).mean()),
            "same_prediction_as_local": float((got.argmax(1) == local_logits.argmax(1)).mean()),
            "mean_latency_ms": float(latency.mean()), "p95_latency_ms": float(np.percentile(latency, 95)),
            "links": [{"bandwidth_mbps": lk.bandwidth_mbps, "rtt_ms": lk.rtt_ms} if lk else None for lk in links]}
