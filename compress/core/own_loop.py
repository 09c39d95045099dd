"""A guard for the user's own loop: an optimizer built before `compress.apply` trains nothing.

Techniques that swap layers (QAT, structured pruning, weight sharing) give the model new
`nn.Parameter` objects; an optimizer built earlier still holds the old ones, so every step
leaves the model unchanged and accuracy silently freezes. `compress.apply` notices when the
parameters changed identity and puts `stale_optimizer_guard` first in the returned hooks: at the
first step it snapshots the parameters that have a gradient (`after_backward`) and, after
`optimizer.step()` (`after_step`), raises if none of them moved. Later steps cost nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.core.errors import EdgetierError
from compress.core.technique import Hooks

__all__ = ["StaleOptimizerError", "stale_optimizer_guard"]


class StaleOptimizerError(EdgetierError):
    """The optimizer updates parameters the model no longer has."""


def stale_optimizer_guard(replaced: int) -> Hooks:
    """Hooks that raise `StaleOptimizerError` at the first step if no parameter with a gradient moved.

    `replaced` is how many parameters `apply` replaced (said in the message).

    >>> model = nn.Linear(2, 1); guard = stale_optimizer_guard(2)
    >>> stale = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)  # holds another model's parameters
    >>> model(torch.ones(1, 2)).sum().backward(); guard.after_backward(model); stale.step()
    >>> guard.after_step(model)
    Traceback (most recent call last):
    ...
    compress.core.own_loop.StaleOptimizerError: compress.apply: the optimizer step changed none of the model's parameters: compress.apply replaced 2 of them (new layers), and an optimizer built before apply still updates the old ones. Fix: build the optimizer after compress.apply (optimizer = torch.optim.Adam(model.parameters(), ...)), or rebuild it now.
    """
    state: dict[str, object] = {"armed": True, "snapshot": None}

    def after_backward(model: nn.Module) -> None:
        if state["armed"]:
            state["snapshot"] = [(p, p.detach().clone()) for p in model.parameters()
                                 if p.grad is not None and bool(p.grad.abs().sum() > 0)]

    def after_step(model: nn.Module) -> None:
        snapshot = state["snapshot"]
        if not state["armed"] or snapshot is None:
            return
        state["armed"], state["snapshot"] = False, None
        if snapshot and all(torch.equal(p.detach(), before) for p, before in snapshot):  # type: ignore[union-attr]
            raise StaleOptimizerError(
                f"the optimizer step changed none of the model's parameters: compress.apply replaced {replaced} of "
                "them (new layers), and an optimizer built before apply still updates the old ones",
                where="compress.apply",
                fix="build the optimizer after compress.apply (optimizer = torch.optim.Adam(model.parameters(), "
                "...)), or rebuild it now")

    return Hooks(after_backward=after_backward, after_step=after_step)
