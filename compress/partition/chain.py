"""Neurosurgeon (every cut point of the layer order) and an exhaustive search over all valid placements.

Neurosurgeon cuts a chain once: layers 1..k on the device, k+1..n remote, every k tried. On a DAG
the same sweep walks a topological order, so it sees only the cuts that are prefixes of that
order; DADS (`mincut.dads`) sees them all. `exhaustive` enumerates every valid placement (each
operator on a tier no lower than its inputs'): the ground truth the min-cut is tested against on
small graphs.

Energy: Neurosurgeon also minimises the device's energy. None of the shipped targets states
power figures (hw_targets/*.yaml have no watts), so `energy_mj` is None and the report says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from compress.partition.costs import Breakdown, Problem, evaluate

__all__ = ["CutPoint", "exhaustive", "neurosurgeon"]


@dataclass(frozen=True)
class CutPoint:
    """One Neurosurgeon cut: the first `k` operators (topological order) run on the first tier."""

    k: int
    after: str | None  # the last operator on the device, None = everything remote
    total_ms: float
    energy_mj: float | None = None  # no target states power figures (see the module docstring)

    def levels(self, problem: Problem) -> dict[str, int]:
        top = len(problem.tiers) - 1
        return {n.name: (0 if i < self.k else top) for i, n in enumerate(problem.graph.ops)}


def neurosurgeon(problem: Problem) -> list[CutPoint]:
    """Every prefix cut of the topological order between the first and the last tier, priced in O(n).

    Each tensor crosses the cuts between its producer and its last consumer; prefix sums give
    every cut's bytes at once (`costs.evaluate` on one cut gives the same total, tested).

    >>> from compress.partition.costs import LinkCost, TierCost
    >>> from compress.partition.graph import OpGraph, OpNode, Tensor
    >>> g = OpGraph((OpNode("input:x", "input", (), ("x",)), OpNode("a", "Conv", ("x",), ("y",))),
    ...             {"x": Tensor("x", "input:x", ("a",), (1, 10), 10, 4), "y": Tensor("y", "a", (), (1, 2), 2, 4)},
    ...             ("x",), ("y",))
    >>> p = Problem(g, (TierCost("end", "e", {"a": 3.0}, 0.0, "roofline"),
    ...                 TierCost("cloud", "c", {"a": 0.5}, 0.0, "roofline")), (LinkCost("l", 1000.0, 1.0),))
    >>> [(c.after, round(c.total_ms, 4)) for c in neurosurgeon(p)]
    [(None, 1.5004), ('a', 3.0)]
    """
    ops = [n.name for n in problem.graph.ops]
    n, top = len(ops), len(problem.tiers) - 1
    index = {o: i for i, o in enumerate(ops)}
    low, high = problem.tiers[0], problem.tiers[top]
    links = problem.links  # a tensor going from the first to the last tier crosses every link
    ms_per_byte = sum(lk.ms(1) for lk in links)
    rtt = sum(lk.rtt_ms for lk in links)
    end_prefix = [0.0]
    for o in ops:
        end_prefix.append(end_prefix[-1] + low.node_ms[o])
    remote_suffix = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        remote_suffix[i] = remote_suffix[i + 1] + high.node_ms[ops[i]]
    diff = [0.0] * (n + 2)  # bytes crossing cut k (k ops on the device)
    for t in problem.graph.tensors.values():
        p = index.get(t.producer, -1)
        q = max((index[c] for c in t.consumers), default=p)
        if q > p:
            diff[p + 1] += problem.tensor_bytes(t)
            diff[q + 1] -= problem.tensor_bytes(t)
    back = [0.0] * (n + 2)  # result bytes returning when their producer is remote (k <= producer)
    for o in problem.graph.outputs:
        p = index.get(problem.graph.tensors[o].producer, -1)
        back[0] += problem.output_bytes(o)
        back[p + 1] -= problem.output_bytes(o)
    out, crossing, returning = [], 0.0, 0.0
    for k in range(n + 1):
        crossing += diff[k]
        returning += back[k]
        used_low, used_high = k > 0, k < n
        total = (end_prefix[k] + (low.overhead_ms if used_low else 0.0) + remote_suffix[k]
                 + (high.overhead_ms if used_high else 0.0)
                 + ((crossing + returning) * ms_per_byte + rtt if used_high else 0.0))
        out.append(CutPoint(k, ops[k - 1] if k else None, total))
    return out


def exhaustive(problem: Problem, *, limit: int = 200_000) -> Breakdown:
    """The best placement by trying every valid one (small graphs only: raises past `limit` placements)."""
    best: Breakdown | None = None
    for count, levels in enumerate(_placements(problem), start=1):
        if count > limit:
            raise ValueError(f"more than {limit} valid placements: use mincut.dads")
        candidate = evaluate(problem, levels)
        if best is None or candidate.total_ms < best.total_ms:
            best = candidate
    assert best is not None
    return best


def _placements(problem: Problem) -> Iterator[dict[str, int]]:
    ops = [n.name for n in problem.graph.ops]
    preds = problem.graph.predecessors()
    n_levels = len(problem.tiers)
    levels: dict[str, int] = {n.name: 0 for n in problem.graph.nodes if n.name not in ops}

    def walk(i: int) -> Iterator[dict[str, int]]:
        if i == len(ops):
            yield {o: levels[o] for o in ops}
            return
        low = max((levels[p] for p in preds[ops[i]]), default=0)
        for level in range(low, n_levels):
            levels[ops[i]] = level
            yield from walk(i + 1)
        del levels[ops[i]]

    yield from walk(0)
