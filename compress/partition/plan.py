"""A partition plan: the best placement (DADS), the extremes and Neurosurgeon's sweep side by side, a bandwidth sweep.

>>> import tempfile, pathlib
>>> from export._examples import tiny_onnx
>>> with tempfile.TemporaryDirectory() as d:
...     plan = plan_partition(tiny_onnx(pathlib.Path(d) / "m.onnx"), ["rpi4", "cloud_gpu"], crossing_dtype="int8")
>>> plan.is_split, sorted(plan.extremes)   # one Gemm: nothing to split
(False, ['all on cloud', 'all on end'])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.partition.chain import CutPoint, neurosurgeon
from compress.partition.costs import Breakdown, CrossingDtype, Problem, evaluate, make_problem
from compress.partition.graph import OpGraph, load_graph
from compress.partition.mincut import dads
from compress.targets import load_target
from compress.targets.schema import Target

__all__ = ["PartitionPlan", "plan_partition", "sweep_bandwidth"]


@dataclass(frozen=True)
class PartitionPlan:
    """The chosen placement and its alternatives for one graph, tiers and link."""

    problem: Problem
    best: Breakdown
    extremes: dict[str, Breakdown]  # "all on <tier>" for each tier
    cuts: list[CutPoint] = field(repr=False)

    @property
    def better_extreme(self) -> tuple[str, Breakdown]:
        return min(self.extremes.items(), key=lambda kv: kv[1].total_ms)

    @property
    def speedup(self) -> float:
        """How many times faster the best placement is than the better extreme (1.0 = no cut helps)."""
        return self.better_extreme[1].total_ms / self.best.total_ms

    @property
    def is_split(self) -> bool:
        return len({*self.best.levels.values()}) > 1

    @property
    def cut_tensors(self) -> tuple[tuple[str, ...], ...]:
        return self.best.cut_tensors

    def to_dict(self) -> dict[str, Any]:
        p = self.problem
        best_cut = min(self.cuts, key=lambda c: c.total_ms) if self.cuts else None
        return {
            "model": p.graph.source, "operators": len(p.graph.ops), "crossing_dtype": p.crossing_dtype,
            "tiers": [{"tier": t.tier, "target": t.target, "latency_source": t.source} for t in p.tiers],
            "links": [{"link": lk.name, "bandwidth_mbps": lk.bandwidth_mbps, "rtt_ms": lk.rtt_ms} for lk in p.links],
            "best": self.best.to_dict(p), "split": self.is_split,
            "extremes": {k: v.to_dict(p) for k, v in self.extremes.items()},
            "speedup_vs_better_extreme": self.speedup,
            "neurosurgeon": {"cut_points": len(self.cuts),
                             "best_after": best_cut.after if best_cut else None,
                             "best_ms": best_cut.total_ms if best_cut else None,
                             "energy": "not computed: no target states power figures"},
            "verdict": self.verdict(),
        }

    def verdict(self) -> str:
        name, extreme = self.better_extreme
        if not self.is_split:
            return (f"no cut beats the extremes here: {name} ({extreme.total_ms:.3f} ms) is the best placement "
                    "at this link")
        return (f"split wins: {self.best.total_ms:.3f} ms vs {extreme.total_ms:.3f} ms {name} "
                f"({self.speedup:.2f}x)")

    def render(self) -> str:
        """A markdown table of the best placement next to the extremes."""
        p = self.problem
        head = "| placement | " + " | ".join(f"{t.tier} ms" for t in p.tiers) + " | " + " | ".join(
            f"{lk.name.split(' ')[0]} ms (bytes)" for lk in p.links) + " | total ms |"
        lines = [f"Partition of {p.graph.source or 'the model'} ({len(p.graph.ops)} operators), crossing tensors as "
                 f"{p.crossing_dtype}; " + "; ".join(f"{lk.name}: {lk.bandwidth_mbps:g} Mbit/s, RTT {lk.rtt_ms:g} ms"
                                                    for lk in p.links), "", head,
                 "|" + "---|" * (2 + len(p.tiers) + len(p.links))]
        for label, b in [("best (DADS min-cut)", self.best), *self.extremes.items()]:
            lines.append(f"| {label} | " + " | ".join(f"{ms:.3f}" for ms in b.compute_ms) + " | " + " | ".join(
                f"{ms:.3f} ({n:,})" for ms, n in zip(b.transfer_ms, b.sent_bytes, strict=True))
                + f" | {b.total_ms:.3f} |")
        for k, cut in enumerate(self.best.cut_tensors):
            if cut:
                lines.append(f"\ncut on link {k} ({p.links[k].name}): {', '.join(cut)}")
        lines.append(f"\n{self.verdict()}. Energy on the device: not computed (no target states power figures).")
        return "\n".join(lines)


def resolve_targets(tiers: Sequence[str | Target]) -> list[Target]:
    return [t if isinstance(t, Target) else load_target(t) for t in tiers]


def plan_graph(graph: OpGraph, targets: Sequence[Target], *, crossing_dtype: CrossingDtype = "fp32",
               bandwidth_mbps: float | None = None, rtt_ms: float | None = None,
               profile: Mapping[str, Any] | None = None, sweep: bool = True) -> PartitionPlan:
    problem = make_problem(graph, targets, crossing_dtype=crossing_dtype, bandwidth_mbps=bandwidth_mbps,
                           rtt_ms=rtt_ms, profile=profile)
    ops = [n.name for n in graph.ops]
    extremes = {f"all on {t.tier}": evaluate(problem, dict.fromkeys(ops, k)) for k, t in enumerate(problem.tiers)}
    return PartitionPlan(problem, dads(problem), extremes, neurosurgeon(problem) if sweep else [])


def plan_partition(model: str | os.PathLike[str], tiers: Sequence[str | Target], *,
                   crossing_dtype: CrossingDtype = "fp32", bandwidth_mbps: float | None = None,
                   rtt_ms: float | None = None, profile: Mapping[str, Any] | None = None) -> PartitionPlan:
    """Plan the partition of an ONNX model over `tiers` (target names or Targets, end first)."""
    return plan_graph(load_graph(Path(model)), resolve_targets(tiers), crossing_dtype=crossing_dtype,
                      bandwidth_mbps=bandwidth_mbps, rtt_ms=rtt_ms, profile=profile)


def sweep_bandwidth(graph: OpGraph, targets: Sequence[Target], *, crossing_dtype: CrossingDtype = "fp32",
                    low_mbps: float = 0.1, high_mbps: float = 1000.0, points: int = 25,
                    rtt_ms: float | None = None) -> list[dict[str, Any]]:
    """The plan at `points` bandwidths of the first link (log-spaced): best, extremes, the cut chosen."""
    out = []
    for i in range(points):
        bw = low_mbps * (high_mbps / low_mbps) ** (i / max(points - 1, 1))
        plan = plan_graph(graph, targets, crossing_dtype=crossing_dtype, bandwidth_mbps=bw, rtt_ms=rtt_ms, sweep=False)
        out.append({"bandwidth_mbps": bw, "best_ms": plan.best.total_ms,
                    **{k: v.total_ms for k, v in plan.extremes.items()},
                    "cut": " | ".join(",".join(c) or "-" for c in plan.best.cut_tensors),
                    "speedup": plan.speedup})
    return out


def sweep_plot(path: str | os.PathLike[str], sweep: Sequence[Mapping[str, Any]], *, title: str) -> Path:
    """Latency against bandwidth: the best placement, each extreme, and a mark where the chosen cut changes."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.add_subplot()
    bws = [s["bandwidth_mbps"] for s in sweep]
    for key in [k for k in sweep[0] if k.startswith("all on ")]:
        ax.plot(bws, [s[key] for s in sweep], linestyle="--", label=key)
    ax.plot(bws, [s["best_ms"] for s in sweep], color="black", linewidth=2, label="best cut (DADS)")
    for prev, cur in zip(sweep, sweep[1:], strict=False):
        if prev["cut"] != cur["cut"]:
            x = math.sqrt(prev["bandwidth_mbps"] * cur["bandwidth_mbps"])
            ax.axvline(x, color="tab:red", alpha=0.4, linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("first-link bandwidth (Mbit/s)")
    ax.set_ylabel("end-to-end latency (ms, planned)")
    ax.set_title(title + " (red: the chosen cut changes)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
