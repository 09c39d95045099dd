"""`compress.apply`: one technique on one model, from the user's own script."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context, Progress, SilentProgress
from compress.core.own_loop import stale_optimizer_guard
from compress.core.technique import HookSet, Result
from compress.persist import applied, record
from compress.registry import build
from compress.targets import Target, load_target

if TYPE_CHECKING:
    from compress.datasets import Dataset


def apply(model: nn.Module, config: TechniqueConfig, *, target: Target | str | None = None,
          example_inputs: tuple[torch.Tensor, ...] | None = None, data: Dataset | None = None,
          teacher: nn.Module | None = None, seed: int = 0, progress: Progress | None = None) -> Result:
    """Apply one technique to `model`; returns a `Result` that unpacks as `(model, report)`.

    Training-time techniques also return `result.hooks`, to call in your own loop: add
    `hooks.loss(...)` to the loss, call `hooks.after_backward(model)`, `hooks.after_step(model)`
    and `hooks.epoch_end(model, epoch)` (see README).

    >>> from compress.quant.ptq import PTQInt8Config
    >>> model, report = apply(nn.Linear(4, 2), PTQInt8Config(), target="rpi4")
    >>> report["per_channel"]
    True
    """
    if isinstance(target, str):
        target = load_target(target)
    if target is not None:
        config.check_target(target)
    if example_inputs is None:
        if not hasattr(model, "example_inputs"):
            example_inputs = ()
        else:
            example_inputs = tuple(model.example_inputs())
    ctx = Context(example_inputs=example_inputs, target=target, data=data, teacher=teacher, seed=seed,
                  progress=progress or SilentProgress())
    before = {id(p) for p in model.parameters()}
    earlier = applied(model)
    result = build(config).apply(model, ctx)
    record(earlier, result.model, config, result.state)  # what compress.save replays (compress.persist)
    replaced = sum(1 for p in result.model.parameters() if id(p) not in before)
    if replaced:  # an optimizer built before this call would train nothing: the guard says so at step 1
        result = dataclasses.replace(result, hooks=HookSet([stale_optimizer_guard(replaced)]) + result.hooks)
    return result
