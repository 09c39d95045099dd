"""DADS: the latency-optimal placement of a DAG as a minimum s-t cut (networkx max-flow).

Two tiers (Hu et al., DADS): every operator v gets an edge source->v weighted by its remote
(cloud) latency and v->sink by its local (end) latency; an activation edge u->v is weighted by
the transfer of u's output, with a virtual node when u has several consumers so the tensor is
paid once (the survey's Step 4); infinite reverse edges forbid data flowing back down.

Three tiers (end -> edge -> cloud, two cuts) use the same construction stacked once per link
(Ishikawa's layered graph): node v has one copy per level boundary, the chain
source -> v[2] -> v[1] -> sink carries its cloud, edge and end latency, and the copy on layer k
is on the sink side exactly when v runs on level k or above. A tensor that goes from end to
cloud is relayed through the edge and pays both links, as it would on the wire. The cut is
exact: every term is submodular.

Constants that a cut cannot express — one round trip per link used and one runtime overhead
per tier used — are handled by solving once per set of two or more tiers (1 solve for two
tiers, 4 for three) with the other tiers forbidden, pricing each solution exactly with
`costs.evaluate`, and comparing with the all-on-one-tier placements. This is exact: a set's
solution minimises the variable cost among placements using at most those tiers, and its
constants are at most the set's, so the best over all sets is the optimum.
"""

from __future__ import annotations

from itertools import combinations

import networkx as nx

from compress.partition.costs import Breakdown, Problem, evaluate
from compress.partition.graph import INPUT_PREFIX

__all__ = ["dads"]

_S, _T = "__source__", "__sink__"
# networkx's max-flow is exact only on integer capacities ("rounding errors can cause the algorithm to
# fail" on floats): with float ms it returned a cut 8 % above the optimum on a random residual DAG,
# depending on the hash seed's node order. Capacities are integer femtoseconds: each rounds by at most
# 5e-13 ms, far below any real difference, and the chosen placement is priced exactly by `evaluate`.
_UNITS_PER_MS = 10**12


def _units(ms: float) -> int:
    return round(ms * _UNITS_PER_MS)


def dads(problem: Problem) -> Breakdown:
    """The placement with the lowest end-to-end latency (exact, by min-cut).

    >>> from compress.partition.costs import LinkCost, Problem, TierCost
    >>> from compress.partition.graph import OpGraph, OpNode, Tensor
    >>> g = OpGraph((OpNode("input:x", "input", (), ("x",)), OpNode("a", "Conv", ("x",), ("h",)),
    ...              OpNode("b", "Gemm", ("h",), ("y",))),
    ...             {"x": Tensor("x", "input:x", ("a",), (1, 4000), 4000, 4),
    ...              "h": Tensor("h", "a", ("b",), (1, 10), 10, 4), "y": Tensor("y", "b", (), (1, 10), 10, 4)},
    ...             ("x",), ("y",))
    >>> p = Problem(g, (TierCost("end", "e", {"a": 1.0, "b": 50.0}, 0.0, "roofline"),
    ...                 TierCost("cloud", "c", {"a": 0.1, "b": 0.1}, 0.0, "roofline")), (LinkCost("wifi", 8.0, 1.0),))
    >>> best = dads(p)
    >>> dict(best.levels), best.cut_tensors  # the small tensor h crosses, not the 16 kB input
    ({'a': 0, 'b': 1}, (('h',),))
    """
    n_levels = len(problem.tiers)
    ops = [n.name for n in problem.graph.ops]
    # One tier alone needs no cut; every other set of used tiers gets one min-cut solve.
    candidates = [dict.fromkeys(ops, k) for k in range(n_levels)]
    for size in range(2, n_levels + 1):
        candidates += [_solve(problem, frozenset(allowed)) for allowed in combinations(range(n_levels), size)]
    best: Breakdown | None = None
    for levels in candidates:
        if levels is not None:
            candidate = evaluate(problem, levels)
            if best is None or candidate.total_ms < best.total_ms - 1e-12:
                best = candidate
    assert best is not None  # the all-on-one-tier sets always have a finite cut
    return best


def _solve(problem: Problem, allowed: frozenset[int]) -> dict[str, int] | None:
    graph, n_levels = problem.graph, len(problem.tiers)
    g = nx.DiGraph()
    g.add_node(_S)
    g.add_node(_T)
    outputs = {problem.graph.tensors[o].producer: o for o in graph.outputs}

    def copy(v: str, k: int) -> tuple[str, int]:
        return (v, k)

    for n in graph.nodes:
        v = n.name
        pinned = v.startswith(INPUT_PREFIX)
        # chain source -> v[L-1] -> ... -> v[1] -> sink; the edge cut on it is v's level's cost
        chain = [_S, *(copy(v, k) for k in range(n_levels - 1, 0, -1)), _T]
        for pos, (a, b) in enumerate(zip(chain, chain[1:], strict=False)):
            level = n_levels - 1 - pos
            if pinned:
                cost = 0.0 if level == 0 else None
            elif level not in allowed:
                cost = None
            else:
                cost = problem.tiers[level].node_ms[v]
                if v in outputs:  # the result goes back down every link below
                    cost += sum(problem.links[k].ms(problem.output_bytes(outputs[v])) for k in range(level))
            if cost is None:
                g.add_edge(a, b)  # no capacity attribute = infinite in networkx
            else:
                g.add_edge(a, b, capacity=_units(cost))
            if a != _S and b != _T:
                g.add_edge(b, a)  # a copy above may be on the sink side only if the one below is
    for t in graph.tensors.values():
        if not t.consumers:
            continue
        for k in range(1, n_levels):
            w = problem.links[k - 1].ms(problem.tensor_bytes(t))
            u = copy(t.producer, k)
            if len(t.consumers) == 1:
                g.add_edge(u, copy(t.consumers[0], k), capacity=_units(w))
            else:
                hub = ("__tensor__", t.name, k)
                g.add_edge(u, hub, capacity=_units(w))
                for c in t.consumers:
                    g.add_edge(hub, copy(c, k))
            for c in t.consumers:
                g.add_edge(copy(c, k), u)  # precedence: a consumer below layer k forces its producer below
    try:
        _, (source_side, _) = nx.minimum_cut(g, _S, _T)
    except nx.NetworkXUnbounded:  # every placement is forbidden for this set of tiers
        return None
    return {n.name: sum(1 for k in range(1, n_levels) if copy(n.name, k) not in source_side) for n in graph.ops}
