"""What a technique is: a config, `apply(model, ctx) -> Result`, and training hooks.

Training-time techniques hand the trainer — ours or the user's own loop — a `Hooks` object
with the loss terms and callbacks to call. Nothing wraps the user's optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ModelFn = Callable[[nn.Module], None]
EpochFn = Callable[[nn.Module, int], None]


@dataclass(frozen=True)
class ExportPlan:
    """What the exporter must do beyond a plain fp32 export (techniques that act on the artifact).

    `quantize="int8_static"` asks for onnxruntime static int8 quantization calibrated on
    `calib_samples` samples of the calibration split, activation ranges by `calibration`; with
    `max_loss` or `min_agreement` the exporter keeps the most sensitive layers in fp32 until the
    bound holds on the validation split (`compress.quant.accuracy_aware`). `exporter` says how the graph is written:
    `"onnx"` (torch.onnx, float weights) or `"qcdq"` (a brevitas-quantized model exported as a
    QuantizeLinear / DequantizeLinear graph whose weights are stored as int8 / int4 / int2).
    """

    quantize: str | None = None
    per_channel: bool = True
    calib_samples: int = 256
    exporter: str = "onnx"
    calibration: str = "minmax"  # activation ranges: minmax / percentile / entropy / mse (export.calibrate)
    max_loss: float | None = None  # accuracy-aware int8: fall back layers until the loss (points) is within this
    min_agreement: float | None = None  # ... or until top-1 agreement with fp32 is at least this
    fallback: bool = True  # False on int8-only targets: the bound is measured and reported, never met by fp32 layers
    activations: str = "int8"  # int8_static's activation storage: int8 or uint8 (export.quantize explains when)
    smoothquant: float | None = None  # SmoothQuant alpha: smooth LayerNorm outputs before int8 (export.smoothquant)
    # fp32 ONNX of the model before int8 preparation (bias correction, learned rounding, int8 distillation): the
    # accuracy-aware bound is measured against it and fp32 layers take its weights (compress.quant.accuracy_aware)
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"quantize": self.quantize, "per_channel": self.per_channel, "calib_samples": self.calib_samples,
                "exporter": self.exporter, "calibration": self.calibration, "max_loss": self.max_loss,
                "min_agreement": self.min_agreement, "fallback": self.fallback, "activations": self.activations,
                "smoothquant": self.smoothquant, "reference": self.reference}


@dataclass(frozen=True)
class Hooks:
    """The calls a training loop makes for one technique; every field is optional.

    - `loss(model, inputs, outputs, targets)` returns an extra loss term to add;
    - `after_backward(model)` runs after `loss.backward()` and before `optimizer.step()`;
    - `after_step(model)` runs after `optimizer.step()` (e.g. re-apply masks);
    - `epoch_end(model, epoch)` runs after each epoch.

    Hooks of a stage stay active in the training of every later stage. A run resumed after a
    stage rebuilds them with `Technique.restore` from the `Result.state` that `apply` returned.
    """

    loss: LossFn | None = None
    after_backward: ModelFn | None = None
    after_step: ModelFn | None = None
    epoch_end: EpochFn | None = None


@dataclass(frozen=True)
class HookSet:
    """Several techniques' hooks called together, in stage order.

    >>> hooks = HookSet([Hooks(after_step=lambda m: None)])
    >>> model = nn.Linear(2, 2)
    >>> x = torch.zeros(1, 2)
    >>> float(hooks.loss(model, x, model(x), torch.zeros(1, dtype=torch.long)))
    0.0
    """

    hooks: Sequence[Hooks] = ()

    def __iter__(self) -> Iterator[Hooks]:
        return iter(self.hooks)

    def __add__(self, other: HookSet) -> HookSet:
        return HookSet([*self.hooks, *other.hooks])

    def loss(self, model: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # `outputs` may be a Hugging Face ModelOutput (feature distillation of an embedding model)
        total = outputs.new_zeros(()) if isinstance(outputs, torch.Tensor) else torch.zeros(())
        for h in self.hooks:
            if h.loss is not None:
                total = total + h.loss(model, inputs, outputs, targets)
        return total

    def after_backward(self, model: nn.Module) -> None:
        for h in self.hooks:
            if h.after_backward is not None:
                h.after_backward(model)

    def after_step(self, model: nn.Module) -> None:
        for h in self.hooks:
            if h.after_step is not None:
                h.after_step(model)

    def epoch_end(self, model: nn.Module, epoch: int) -> None:
        for h in self.hooks:
            if h.epoch_end is not None:
                h.epoch_end(model, epoch)


@dataclass
class Result:
    """What `apply` returns. Unpacks as `model, report = result`; the rest rides along.

    - `hooks`: calls for the training loop (see `Hooks`);
    - `export`: what the exporter must do beyond a plain fp32 export;
    - `state`: what `restore` needs to rebuild this stage's structure and hooks on a fresh copy
      of the model it was applied to (pruned channel counts, masks, codebook layout, ...):
      plain values and tensors only, since it is saved in checkpoints loaded with
      `weights_only=True`.
    """

    model: nn.Module
    report: dict[str, Any] = field(default_factory=dict)
    hooks: HookSet = field(default_factory=HookSet)
    export: ExportPlan | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.report))


class Technique(Protocol):
    """A compression technique: built from its config, applied to a model."""

    config_type: ClassVar[type[TechniqueConfig]]
    config: TechniqueConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result: ...

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result: ...


class BaseTechnique:
    """Convenience base: stores the config; techniques override `apply`."""

    config_type: ClassVar[type[TechniqueConfig]] = TechniqueConfig

    def __init__(self, config: TechniqueConfig) -> None:
        if not isinstance(config, self.config_type):
            raise TypeError(f"{type(self).__name__} takes a {self.config_type.__name__}, got {type(config).__name__}")
        self.config = config

    def apply(self, model: nn.Module, ctx: Context) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        """Rebuild what `apply` did to `model`'s structure and hooks from `Result.state`, without
        training or data; the caller then loads the weights saved after the stage.

        The default suits techniques that change only weights (or nothing): nothing to rebuild.
        """
        return Result(model)
