"""The structured rounds of `lottery_ticket`: whole channels go, not single weights.

Each round removes `ratio` of the remaining output channels of every selected layer, scored by
the L2 norm of the trained weights (torch-pruning's dependency graph keeps residual and grouped
layers consistent), then applies the very same channel removal to the rewind weights and
retrains those survivors. The ticket is physically smaller after every round, so unlike the
unstructured rounds there is no mask to keep. The control is the same architecture drawn
fresh. Whether structured tickets beat their controls is an open question (Liu et al. 2019,
"Rethinking the value of network pruning", found they often do not): the report shows both.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from compress.core.context import Context
from compress.core.measure import count_macs, count_params
from compress.core.train import TrainSpec, evaluate, fit
from compress.prune.graph import replay
from compress.prune.structured import (
    StructuredPruneConfig,
    _example,
    _layers,
    _multiple,
    _prune,
    _shapes,
)

History = list[list[Any]]


def structured_rounds(ticket: nn.Module, rewind: nn.Module, *, cfg: Any, spec: TrainSpec, ctx: Context,
                      control: Any, where: str) -> tuple[nn.Module, list[dict[str, Any]], History, dict[str, Any]]:
    """Run rounds 1..R on `ticket` (trained in round 0) with `rewind` (same architecture, the rewind
    weights). Returns the last ticket, the per-round entries, the whole pruning history (for
    `restore`) and the per-layer channel counts. `control(ticket, seed)` trains the fresh draw."""
    data = ctx.data
    example = _example(ticket, ctx)
    plan = StructuredPruneConfig(ratio=cfg.ratio, importance="l2", targets=cfg.targets, ignore=cfg.ignore)
    multiple = _multiple(plan, ctx.target)
    _, ignored, _ = _layers(ticket, plan, example)
    before, params0, macs0 = _shapes(ticket), count_params(ticket), count_macs(ticket, example)
    recorded: History = []
    rounds: list[dict[str, Any]] = []
    for r in range(1, cfg.rounds + 1):
        step = _prune(ticket, example, plan, cfg.ratio, ignored, multiple)  # scored on the trained weights
        replay(rewind, example, step, where=where)  # the same channels leave the rewind weights
        recorded += step
        ticket = copy.deepcopy(rewind)
        fit(ticket, data.train, spec, seed=ctx.seed + r, progress=ctx.progress,
            description=f"lottery_ticket: round {r} ticket (structured)")
        params = count_params(ticket)
        entry = {"round": r, "sparsity": round(1 - params / params0, 6), "params": params,
                 "macs_fraction": round(count_macs(ticket, example) / macs0, 4),
                 "ticket_accuracy": evaluate(ticket, data.val), "control_accuracy": None}
        if cfg.control == "every_round" or (cfg.control == "last_round" and r == cfg.rounds):
            entry["control_accuracy"] = control(ticket, ctx.seed + r)
        rounds.append(entry)
    after = _shapes(ticket)
    layers = {name: {"channels": [before[name], after[name]]} for name in before}
    return ticket, rounds, recorded, layers
