"""A roofline estimate of one inference's latency on a target, and of a transfer over its link.

The estimate is for planning (which variant goes where, where to cut a model, whether an early
exit pays off), not a measurement: the report always shows the latency measured in the runtime
next to it. Its assumptions, each of which can be wrong for a given model:

1. **Batch 1, one stream.** One input at a time, the device otherwise idle.
2. **Whole model as one roofline point.** Compute time is total MACs over the sustained
   throughput at the chosen precision; memory time is the bytes moved over the memory
   bandwidth. Per-layer rooflines would be tighter (a model can be memory-bound in its first
   layers and compute-bound later); the whole-model point underestimates such mixed models.
3. **Compute and memory overlap perfectly**, so the slower of the two sets the time:
   `ms = max(compute_ms, memory_ms) + overhead_ms`.
4. **Every weight byte and every activation byte crosses memory once.** No re-reads from cache
   misses or tiling, no on-chip reuse beyond that, no spills. `activation_bytes` is what the
   caller counts (typically the sum of every layer's output tensor).
5. **One efficiency factor** (`compute.efficiency`, the share of peak a real small CNN reaches)
   for every layer and precision. It scales compute only: bandwidth is taken at its peak.
6. **A fixed overhead** per inference (`compute.overhead_ms`): interpreter dispatch, kernel
   launches, driver calls. It does not grow with the number of layers.
7. **Steady state**: warm caches, no thermal throttling, clocks at the datasheet values, no
   first-run compilation or weight upload.

Units: 1 GMAC/s = 1e9 MAC/s, 1 GB/s = 1e9 B/s, 1 Mbit/s = 1e6 bit/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compress.core.errors import TargetError
from compress.targets.schema import Link, Target


@dataclass(frozen=True)
class LatencyEstimate:
    """The parts of a roofline latency estimate, all in milliseconds."""

    ms: float
    compute_ms: float
    memory_ms: float
    overhead_ms: float
    bound: Literal["compute", "memory"]


def estimate_latency(
    target: Target, *, macs: int, weight_bytes: int, activation_bytes: int, precision: str
) -> LatencyEstimate:
    """Estimate one batch-1 inference on `target` (see the module docstring for the assumptions).

    `compute_ms = macs / (throughput_gmacs[precision] * 1e9 * efficiency) * 1e3`,
    `memory_ms = (weight_bytes + activation_bytes) / (memory_bandwidth_gbs * 1e9) * 1e3`,
    `ms = max(compute_ms, memory_ms) + overhead_ms`.

    >>> from compress.targets import load_target
    >>> est = estimate_latency(load_target("stm32h7"), macs=2_000_000, weight_bytes=50_000,
    ...                        activation_bytes=20_000, precision="int8")
    >>> est.bound, round(est.compute_ms, 3), round(est.memory_ms, 4), round(est.ms, 3)
    ('compute', 5.208, 0.0365, 5.258)
    """
    for label, value in (("macs", macs), ("weight_bytes", weight_bytes), ("activation_bytes", activation_bytes)):
        if value < 0:
            raise ValueError(f"{label} must be >= 0, got {value}")
    compute = target.compute
    if precision not in compute.throughput_gmacs:
        supported = ", ".join(target.supported_precisions)
        raise TargetError(
            f"target {target.name!r} does not run {precision!r}; it supports {supported}",
            where=f"target {target.name}: compute.throughput_gmacs",
            fix=f"choose one of {supported}, or a target that supports {precision}",
        )
    compute_ms = macs / (compute.throughput_gmacs[precision] * 1e9 * compute.efficiency) * 1e3
    memory_ms = (weight_bytes + activation_bytes) / (compute.memory_bandwidth_gbs * 1e9) * 1e3
    # A tie counts as compute-bound: more bandwidth would not help, fewer MACs would.
    bound: Literal["compute", "memory"] = "compute" if compute_ms >= memory_ms else "memory"
    return LatencyEstimate(
        ms=max(compute_ms, memory_ms) + compute.overhead_ms,
        compute_ms=compute_ms,
        memory_ms=memory_ms,
        overhead_ms=compute.overhead_ms,
        bound=bound,
    )


def transfer_ms(link: Link, nbytes: int) -> float:
    """Time to send `nbytes` over `link`: one round trip plus serialisation at the link's bandwidth.

    `rtt_ms + nbytes * 8 / (bandwidth_mbps * 1e6) * 1e3` — a request/response exchange whose
    payload goes one way; no TCP slow start, no retransmissions, no protocol headers.

    >>> from compress.targets import load_target
    >>> link = load_target("jetson_orin_nano").link
    >>> round(transfer_ms(link, 125_000), 3)  # 1 Mbit over 100 Mbit/s with a 30 ms round trip
    40.0
    """
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    return link.rtt_ms + nbytes * 8 / (link.bandwidth_mbps * 1e6) * 1e3
