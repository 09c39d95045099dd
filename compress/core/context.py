"""Everything a technique may need besides the model, passed in explicitly (never global)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from compress.core.train import TrainSpec
    from compress.datasets import Dataset
    from compress.targets import Target


class Progress(Protocol):
    """Where long work reports how far it is. `compress.train` and the CLI provide rich bars."""

    def task(self, description: str, total: int | None) -> Any: ...
    def advance(self, task: Any, n: int = 1) -> None: ...
    def done(self, task: Any) -> None: ...


class SilentProgress:
    """A `Progress` that shows nothing (tests, notebooks that do not want bars)."""

    def task(self, description: str, total: int | None) -> None:
        return None

    def advance(self, task: Any, n: int = 1) -> None:
        pass

    def done(self, task: Any) -> None:
        pass


@dataclass
class Context:
    """Inputs to `Technique.apply`: target, example inputs, data, teacher, seed, progress, and
    `train` — how the stage will train after `apply` (None when it does not), so gradual
    techniques can spread a schedule over `train.epochs` epochs of the train split.

    `workdir` is the stage's own folder in the run (`<run>/checkpoints/<variant>/<NN>-<stage>/`,
    None outside a pipeline run): where a stage keeps files that must survive an interruption
    (the NAS journal) and figures for the report. It is emptied with the variant's checkpoints
    when a run starts without `--resume`. `executor` (e.g. "ray") overrides where techniques that
    run parallel work (NAS trials) run it; None keeps each stage's own setting.
    """

    example_inputs: tuple[torch.Tensor, ...]
    target: Target | None = None
    data: Dataset | None = None
    teacher: nn.Module | None = None
    seed: int = 0
    progress: Progress = field(default_factory=SilentProgress)
    train: TrainSpec | None = None
    workdir: Path | None = None
    executor: str | None = None
