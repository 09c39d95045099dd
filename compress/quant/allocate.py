"""Choosing one bit width per layer: minimum total sensitivity under a budget, solved exactly.

It is a multiple-choice knapsack: pick exactly one option (width) per layer, the options' costs
(KiB, bits, or milliseconds) sum to at most the budget, and the summed sensitivity is minimal.
It is solved as a 0/1 integer program with `scipy.optimize.milp` (HiGHS branch and bound,
exact): a dynamic program over the budget would need a table as large as the budget in its
smallest unit (a bit), which is millions of cells for a small CNN. Ties in sensitivity go to
the cheaper choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

# option table: layer -> bits -> (cost, sensitivity)
Options = Mapping[str, Mapping[int, tuple[float, float]]]
_TIE = 1e-9  # relative weight of cost in the objective: breaks ties in sensitivity towards cheaper options only


@dataclass(frozen=True)
class Allocation:
    """Bits per layer, their total cost (budget units) and total sensitivity."""

    bits: dict[str, int]
    cost: float
    sensitivity: float


def cost_range(options: Options) -> tuple[float, float]:
    """The cheapest and the most expensive total cost.

    >>> cost_range({"a": {2: (1.0, 0.5), 8: (4.0, 0.0)}, "b": {2: (2.0, 0.1), 8: (8.0, 0.0)}})
    (3.0, 12.0)
    """
    return (sum(min(c for c, _ in o.values()) for o in options.values()),
            sum(max(c for c, _ in o.values()) for o in options.values()))


def allocate(options: Options, budget: float) -> Allocation | None:
    """The exact minimum-sensitivity choice of one option per layer with total cost ≤ `budget`
    (None when even the cheapest choice costs more).

    >>> opts = {"a": {2: (1.0, 0.5), 8: (4.0, 0.0)}, "b": {2: (2.0, 0.1), 8: (8.0, 0.0)}}
    >>> allocate(opts, 6.0)  # 8 bits where it matters (a), 2 bits where it is cheap to lose (b)
    Allocation(bits={'a': 8, 'b': 2}, cost=6.0, sensitivity=0.1)
    >>> allocate(opts, 2.0) is None
    True
    """
    layers = list(options)
    choices = [(layer, b) for layer in layers for b in sorted(options[layer])]
    cost = np.array([options[layer][b][0] for layer, b in choices], dtype=np.float64)
    sens = np.array([options[layer][b][1] for layer, b in choices], dtype=np.float64)
    if cost_range(options)[0] > budget * (1 + 1e-12):
        return None
    cost_scale = max(float(cost.max(initial=0.0)), 1e-30)
    sens_scale = max(float(np.abs(sens).max(initial=0.0)), 1e-30)
    objective = sens + _TIE * sens_scale * cost / cost_scale
    one_each = np.array([[1.0 if layer == name else 0.0 for layer, _ in choices] for name in layers])
    constraints = [LinearConstraint(one_each, 1, 1), LinearConstraint(cost[None, :], -np.inf, budget * (1 + 1e-12))]
    result = milp(objective, constraints=constraints, integrality=np.ones(len(choices)), bounds=Bounds(0, 1))
    if result.x is None:
        return None
    picked = [choices[i] for i in np.flatnonzero(result.x > 0.5)]
    bits = {layer: b for layer, b in picked}
    return Allocation(bits={layer: bits[layer] for layer in layers},
                      cost=float(sum(options[layer][b][0] for layer, b in picked)),
                      sensitivity=float(sum(options[layer][b][1] for layer, b in picked)))


def pareto(options: Options, *, points: int) -> list[Allocation]:
    """Optimal allocations for `points` budgets evenly spaced from the cheapest to the dearest cost
    (duplicates dropped): the sensitivity–cost Pareto curve, cheapest first.

    >>> opts = {"a": {2: (1.0, 0.5), 8: (4.0, 0.0)}, "b": {2: (2.0, 0.1), 8: (8.0, 0.0)}}
    >>> [(a.cost, a.sensitivity) for a in pareto(opts, points=4)]
    [(3.0, 0.6), (6.0, 0.1), (12.0, 0.0)]
    """
    low, high = cost_range(options)
    found: dict[tuple[tuple[str, int], ...], Allocation] = {}
    for budget in np.linspace(low, high, max(points, 2)):
        allocation = allocate(options, float(budget))
        if allocation is not None:
            found.setdefault(tuple(allocation.bits.items()), allocation)
    return sorted(found.values(), key=lambda a: (a.cost, a.sensitivity))
