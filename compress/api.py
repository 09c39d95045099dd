"""`compress.apply`: one technique on one model, from the user's own script."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context, Progress, SilentProgress
from compress.core.errors import EdgetierError
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
    _check_arguments(model, config, target, example_inputs)
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


def _check_arguments(model: object, config: object, target: object, example_inputs: object) -> None:
    """Wrong argument types as one paragraph, not an AttributeError from deep inside a technique."""
    if not isinstance(model, nn.Module):
        raise EdgetierError(f"model is a {type(model).__name__}, not a torch.nn.Module", where="compress.apply(model)",
                            fix="pass the PyTorch model instance")
    if isinstance(config, type) and issubclass(config, TechniqueConfig):
        raise EdgetierError(f"config is the class {config.__name__}, not an instance of it",
                            where="compress.apply(config)", fix=f"pass {config.__name__}() with its settings")
    if not isinstance(config, TechniqueConfig):
        raise EdgetierError(f"config is a {type(config).__name__}, not a technique config",
                            where="compress.apply(config)",
                            fix="pass a config instance such as compress.quant.ptq.PTQInt8Config(); from a dict, "
                                "use the config class's model_validate(d)")
    if target is not None and not isinstance(target, (str, Target)):
        raise EdgetierError(f"target is a {type(target).__name__}, not a target name or Target",
                            where="compress.apply(target)", fix="pass a name such as 'rpi4' (edgetier targets list)")
    if example_inputs is not None and (not isinstance(example_inputs, tuple)
                                       or not all(isinstance(t, torch.Tensor) for t in example_inputs)):
        raise EdgetierError(f"example_inputs is a {type(example_inputs).__name__}, not a tuple of tensors",
                            where="compress.apply(example_inputs)", fix="pass e.g. (torch.zeros(1, 1, 40),)")
