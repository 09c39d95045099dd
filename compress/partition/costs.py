"""What a placement costs: per-operator latency on each tier, transfers over each link, and the total.

A placement gives every node a level (0 = the first tier of the plan, e.g. end; 1 = the next,
...); data only flows up (a node's level is at least its inputs'). The objective is
end-to-end latency of one batch-1 request:

    sum over used tiers (compute of its nodes + its runtime overhead)
  + sum over used links (one round trip + crossing bytes x 8 / bandwidth)
  + the result's way back down (its bytes over every link it crossed)

A tensor made on level a and read up to level b crosses links a .. b-1 once each, at the
crossing dtype (fp32 4 B, fp16 2 B, int8 1 B per element plus an 8-byte scale and zero point).
Per-operator compute is the target's roofline applied to one operator (`max(MACs / sustained
throughput, (weight + output bytes) / memory bandwidth)`), or a device profile's measured
ms per MAC; the per-inference overhead is paid once per tier that runs anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from compress.core.errors import EdgetierError
from compress.partition.graph import INPUT_PREFIX, OpGraph, Tensor
from compress.targets.schema import Target

CrossingDtype = Literal["fp32", "fp16", "int8"]
ITEMSIZE: dict[str, int] = {"fp32": 4, "fp16": 2, "int8": 1}
QPARAM_BYTES = 8  # a float32 scale and an int32 zero point travel with every int8 tensor

__all__ = ["Breakdown", "LinkCost", "Problem", "TierCost", "crossing_bytes", "evaluate", "make_problem",
           "node_ms"]


@dataclass(frozen=True)
class TierCost:
    """One tier of a plan: its target and each operator's batch-1 latency there."""

    tier: str
    target: str
    node_ms: Mapping[str, float]
    overhead_ms: float
    source: str  # "roofline" or "profile"


@dataclass(frozen=True)
class LinkCost:
    """The link from one tier of the plan to the next."""

    name: str
    bandwidth_mbps: float
    rtt_ms: float

    def ms(self, nbytes: int) -> float:
        return nbytes * 8 / (self.bandwidth_mbps * 1e6) * 1e3


@dataclass(frozen=True)
class Problem:
    """Everything the planners need: the graph, per-tier costs, the links between tiers, the crossing dtype."""

    graph: OpGraph
    tiers: tuple[TierCost, ...]
    links: tuple[LinkCost, ...]
    crossing_dtype: CrossingDtype = "fp32"

    def tensor_bytes(self, t: Tensor) -> int:
        return crossing_bytes(t, self.crossing_dtype)

    def output_bytes(self, name: str) -> int:
        return self.graph.tensors[name].nbytes  # results travel back as the model writes them


@dataclass(frozen=True)
class Breakdown:
    """A placement's cost, split per tier and per link."""

    levels: Mapping[str, int]
    total_ms: float
    compute_ms: tuple[float, ...]    # per tier, including its overhead when used
    transfer_ms: tuple[float, ...]   # per link, including its round trip when used
    sent_bytes: tuple[int, ...]      # per link, up (activations) and down (results)
    cut_tensors: tuple[tuple[str, ...], ...]  # per link, the tensors that cross it going up

    def to_dict(self, problem: Problem) -> dict[str, Any]:
        ops = [n.name for n in problem.graph.ops]
        return {"total_ms": self.total_ms,
                "tiers": [{"tier": t.tier, "target": t.target, "compute_ms": ms,
                           "ops": sum(1 for o in ops if self.levels[o] == k)}
                          for k, (t, ms) in enumerate(zip(problem.tiers, self.compute_ms, strict=True))],
                "links": [{"link": lk.name, "transfer_ms": ms, "bytes": b, "cut_tensors": list(c)}
                          for lk, ms, b, c in zip(problem.links, self.transfer_ms, self.sent_bytes,
                                                  self.cut_tensors, strict=True)]}


def crossing_bytes(t: Tensor, dtype: str) -> int:
    """Bytes of tensor `t` on the wire at `dtype` (non-float tensors travel as they are).

    >>> from compress.partition.graph import Tensor
    >>> t = Tensor("x", "a", ("b",), (1, 8, 40), 320, 4)
    >>> [crossing_bytes(t, d) for d in ("fp32", "fp16", "int8")]
    [1280, 640, 328]
    """
    if not t.floating:
        return t.nbytes
    return t.elements * ITEMSIZE[dtype] + (QPARAM_BYTES if dtype == "int8" else 0)


def node_ms(graph: OpGraph, target: Target, *, precision: str = "fp32",
            profile: Mapping[str, Any] | None = None, fmt: str = "onnx") -> TierCost:
    """Each operator's batch-1 latency on `target` (roofline, or ms-per-MAC from a matching device profile).

    >>> from compress.targets import load_target
    >>> from compress.partition.graph import OpGraph, OpNode
    >>> g = OpGraph((OpNode("conv", "Conv", (), ("y",), macs=2_400_000, weight_bytes=4_000, output_bytes=8_000),),
    ...             {}, (), ("y",))
    >>> round(node_ms(g, load_target("rpi4")).node_ms["conv"], 4)  # 2.4 MMAC / (24 GMAC/s x 0.3)
    0.3333
    """
    from export.profile import latency_from_profile

    compute = target.compute
    if precision not in compute.throughput_gmacs:
        raise EdgetierError(f"target {target.name!r} does not run {precision}", where=f"target {target.name}",
                            fix=f"plan with one of {', '.join(target.supported_precisions)}")
    if profile is not None and profile.get("target") == target.name:
        per = {n.name: latency_from_profile(dict(profile), target=target.name, fmt=fmt, precision=precision,
                                            macs=n.macs) for n in graph.ops}
        if all(v is not None for v in per.values()):
            # The profile measured whole inferences: their fixed overhead is spread over the MACs already.
            return TierCost(target.tier, target.name, {k: float(v or 0.0) for k, v in per.items()}, 0.0, "profile")
    rate = compute.throughput_gmacs[precision] * 1e9 * compute.efficiency
    bandwidth = compute.memory_bandwidth_gbs * 1e9
    ms = {n.name: max(n.macs / rate, (n.weight_bytes + n.output_bytes) / bandwidth) * 1e3 for n in graph.ops}
    return TierCost(target.tier, target.name, ms, compute.overhead_ms, "roofline")


def make_problem(graph: OpGraph, targets: Sequence[Target], *, crossing_dtype: CrossingDtype = "fp32",
                 bandwidth_mbps: float | None = None, rtt_ms: float | None = None,
                 profile: Mapping[str, Any] | None = None) -> Problem:
    """A planning problem over `targets` in order (end first); each target but the last needs a link.

    `bandwidth_mbps` / `rtt_ms` override the first link's figures (what-if planning).
    """
    if len(targets) < 2:
        raise EdgetierError("a partition needs at least two tiers", where="tiers", fix="e.g. --tiers end,cloud")
    if crossing_dtype not in ITEMSIZE:
        raise EdgetierError(f"unknown crossing dtype {crossing_dtype!r}", where="crossing_dtype",
                            fix=f"use one of {', '.join(ITEMSIZE)}")
    links = []
    for k, (low, high) in enumerate(zip(targets, targets[1:], strict=False)):
        if low.link is None:
            raise EdgetierError(f"tier {low.tier} ({low.name}) has no link to {high.tier} ({high.name}): only the top "
                                "tier may lack one", where=f"hw_targets/{low.name}.yaml: link",
                                fix="order tiers from the device up (end, edge, cloud) and give every lower target a link")
        bw = bandwidth_mbps if (k == 0 and bandwidth_mbps is not None) else low.link.bandwidth_mbps
        rtt = rtt_ms if (k == 0 and rtt_ms is not None) else low.link.rtt_ms
        if bw <= 0 or rtt < 0:
            raise EdgetierError(f"bandwidth must be > 0 and RTT >= 0, got {bw} Mbit/s and {rtt} ms",
                                where="--bandwidth / --rtt", fix="pass a positive bandwidth in Mbit/s")
        links.append(LinkCost(f"{low.tier}->{high.tier} ({low.link.technology})", float(bw), float(rtt)))
    tiers = tuple(node_ms(graph, t, profile=profile) for t in targets)
    return Problem(graph, tiers, tuple(links), crossing_dtype)


def evaluate(problem: Problem, levels: Mapping[str, int]) -> Breakdown:
    """The exact cost of a placement (levels for every operator; inputs are on level 0).

    >>> from compress.partition.graph import OpGraph, OpNode, Tensor
    >>> g = OpGraph((OpNode("input:x", "input", (), ("x",)), OpNode("a", "Relu", ("x",), ("y",))),
    ...             {"x": Tensor("x", "input:x", ("a",), (1, 250), 250, 4), "y": Tensor("y", "a", (), (1, 250), 250, 4)},
    ...             ("x",), ("y",))
    >>> p = Problem(g, (TierCost("end", "e", {"a": 5.0}, 0.0, "roofline"), TierCost("cloud", "c", {"a": 1.0}, 0.0,
    ...             "roofline")), (LinkCost("wifi", 8.0, 2.0),))
    >>> evaluate(p, {"a": 0}).total_ms, evaluate(p, {"a": 1}).total_ms  # 1 + 2 ms RTT + 1000 B up + 1000 B down
    (5.0, 5.0)
    """
    graph, n_links = problem.graph, len(problem.links)
    level = {n.name: (0 if n.name.startswith(INPUT_PREFIX) else levels[n.name]) for n in graph.nodes}
    compute = [0.0] * len(problem.tiers)
    used = [False] * len(problem.tiers)
    for n in graph.ops:
        k = level[n.name]
        compute[k] += problem.tiers[k].node_ms[n.name]
        used[k] = True
    for k, t in enumerate(problem.tiers):
        compute[k] += t.overhead_ms if used[k] else 0.0
    sent = [0] * n_links
    cut: list[list[str]] = [[] for _ in range(n_links)]
    for t in graph.tensors.values():
        a = level[t.producer]
        b = max((level[c] for c in t.consumers), default=a)
        if b < a:
            raise EdgetierError(f"tensor {t.name} would flow down from tier {a} to tier {b}", where="placement",
                                fix="a node must run on the same tier as its inputs or a higher one")
        for k in range(a, b):
            sent[k] += problem.tensor_bytes(t)
            cut[k].append(t.name)
    for o in graph.outputs:
        for k in range(level[graph.tensors[o].producer]):
            sent[k] += problem.output_bytes(o)
    top = max(level.values(), default=0)
    transfer = [problem.links[k].ms(sent[k]) + (problem.links[k].rtt_ms if k < top else 0.0) for k in range(n_links)]
    return Breakdown({n.name: level[n.name] for n in graph.ops}, sum(compute) + sum(transfer), tuple(compute),
                     tuple(transfer), tuple(sent), tuple(tuple(c) for c in cut))
