"""End → edge → cloud cascade inference over bundles (BranchyNet / DDNN; survey III-B-1).

Each tier runs its bundle progressively (its own early exits first). A sample the tier answers
confidently stops there; otherwise its input is handed to the next tier. A tier "answers" when
one of its early exits takes the sample, or when its final classifier's score passes the
tier's hand-off threshold; the last tier answers everything. Numpy + onnxruntime only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import BundleError
from export.policy import exits as passes
from export.runtime import Bundle, load


@dataclass(frozen=True)
class Tier:
    name: str
    bundle: Bundle
    handoff: dict[str, Any] | None  # {"criterion", "threshold"} on the final output; None on the last tier


@dataclass(frozen=True)
class Route:
    """Where each sample was answered: tier index and the exit index within that tier."""

    tier: np.ndarray
    exit: np.ndarray


class Cascade:
    """Tiers in order (end first). `predict(x)` returns logits, and with `return_route=True` the route."""

    def __init__(self, tiers: list[Tier]) -> None:
        if not tiers or tiers[-1].handoff is not None:
            raise BundleError("a cascade needs at least one tier and its last tier answers everything",
                              fix="give the last tier no hand-off threshold")
        self.tiers = tuple(tiers)

    def predict(self, x: np.ndarray, *, return_route: bool = False) -> np.ndarray | tuple[np.ndarray, Route]:
        n = len(x)
        out: np.ndarray | None = None
        tier_of = np.full(n, -1, dtype=np.int64)
        exit_of = np.full(n, -1, dtype=np.int64)
        active = np.arange(n)
        for t, tier in enumerate(self.tiers):
            if not len(active):
                break
            logits, taken = tier.bundle.predict(x[active], return_exits=True)
            if out is None:
                out = np.zeros((n, logits.shape[1]), dtype=np.float32)
            answered = taken < len(tier.bundle.exits)  # left at an early exit
            if tier.handoff is None:
                answered[:] = True
            else:
                answered |= passes(logits, tier.handoff["criterion"], tier.handoff["threshold"])
            out[active[answered]] = logits[answered]
            tier_of[active[answered]] = t
            exit_of[active[answered]] = taken[answered]
            active = active[~answered]
        out = out if out is not None else np.zeros((0, 0), np.float32)
        return (out, Route(tier_of, exit_of)) if return_route else out


def load_cascade(run_dir: str | Path, *, threads: int = 1) -> Cascade:
    """The cascade that `edgetier cascade` calibrated for a run folder (its `cascade.json`)."""
    root = Path(run_dir)
    path = root / "cascade.json"
    if not path.is_file():
        raise BundleError("no cascade.json in the run folder", where=str(root),
                          fix=f"run `edgetier cascade {root}` first")
    spec = json.loads(path.read_text(encoding="utf-8"))
    return Cascade([Tier(t["bundle"], load(root / t["bundle"], threads=threads), t["handoff"])
                    for t in spec["tiers"]])
