"""Hardware targets: the frozen schema, the YAML loader and the roofline latency estimator."""

from compress.targets.latency import LatencyEstimate, estimate_latency, transfer_ms
from compress.targets.load import list_targets, load_target, shipped_target_names
from compress.targets.schema import (
    PRECISIONS,
    TIER_RANK,
    TIERS,
    Compute,
    Link,
    Memory,
    Precision,
    Source,
    Target,
    Tier,
    Tolerance,
)

__all__ = [
    "PRECISIONS",
    "TIERS",
    "TIER_RANK",
    "Compute",
    "LatencyEstimate",
    "Link",
    "Memory",
    "Precision",
    "Source",
    "Target",
    "Tier",
    "Tolerance",
    "estimate_latency",
    "list_targets",
    "load_target",
    "shipped_target_names",
    "transfer_ms",
]
