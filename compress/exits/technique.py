"""`early_exit`: attach exit branches after named stages and train them jointly (eq. 6).

The joint loss is Σ_n w_n · L_n over the exits and the final classifier (survey eq. 6). Our
trainer (and a user's loop) already adds the final cross-entropy once, so the loss hook adds
Σ_k w_k · CE(exit_k) + (w_final − 1) · CE(final). Thresholds are calibrated after training, on
the validation split, on the exported segments in their runtime (see `compress.deploy_exits`),
so the policy shipped in the manifest is measured on what the device runs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import BaseTechnique, Hooks, HookSet, Result
from compress.exits.branches import EarlyExitModel, ExitHead, is_chain, stage_shapes


class EarlyExitConfig(TechniqueConfig):
    """Where the exits go, how they are trained, and how their thresholds are chosen.

    >>> EarlyExitConfig(after=("layer1", "layer2")).criterion
    'normalized_entropy'
    """

    kind: Literal["early_exit"] = "early_exit"
    after: tuple[str, ...] = Field(min_length=1, description="top-level stages to attach an exit after, in order")
    head: Literal["pool_fc", "conv_pool_fc", "sepconv_pool_fc"] = Field(
        "pool_fc", description="exit branch: pool+FC, conv+pool+FC (BranchyNet), or two depthwise-separable "
                               "conv blocks (the first strided, 2x channels) + pool + FC: a wider receptive field "
                               "for exits after early stages")
    head_kernel: int = Field(3, ge=1, le=31, description="kernel size of the head's convs (odd; e.g. the backbone's)")
    weights: tuple[float, ...] | None = Field(
        None, description="loss weight per exit and then the final classifier (eq. 6); default all 1")
    criterion: Literal["confidence", "entropy", "normalized_entropy"] = "normalized_entropy"
    target_accuracy: float | None = Field(
        None, gt=0, le=1, description="accuracy the samples leaving at each exit must reach on the validation "
                                      "split; default: the final classifier's validation accuracy")
    exit_rate: float | None = Field(None, gt=0, le=1, description="instead: share of samples to leave at each exit")
    thresholds: tuple[float, ...] | None = Field(
        None, description="instead: fixed thresholds, one per exit (confidence or normalized entropy, in [0, 1])")

    @model_validator(mode="after")
    def _consistent(self) -> EarlyExitConfig:
        if self.head_kernel % 2 == 0:
            raise ValueError(f"head_kernel must be odd so that padding keeps the length, got {self.head_kernel}")
        if len(set(self.after)) != len(self.after):
            raise ValueError(f"after lists a stage twice: {list(self.after)}")
        if self.weights is not None and len(self.weights) != len(self.after) + 1:
            raise ValueError(f"weights needs {len(self.after) + 1} values (one per exit, then the final classifier), "
                             f"got {len(self.weights)}")
        if self.weights is not None and any(w < 0 for w in self.weights):
            raise ValueError("weights must not be negative")
        chosen = [k for k in ("target_accuracy", "exit_rate", "thresholds") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give one of target_accuracy, exit_rate or thresholds, not {' and '.join(chosen)}")
        if self.thresholds is not None:
            if len(self.thresholds) != len(self.after):
                raise ValueError(f"thresholds needs one value per exit ({len(self.after)}), got {len(self.thresholds)}")
            if self.criterion == "entropy":
                raise ValueError("fixed thresholds need a bounded criterion: confidence or normalized_entropy")
            if any(not 0 <= t <= 1 for t in self.thresholds):
                raise ValueError(f"thresholds must lie in [0, 1], got {list(self.thresholds)}")
        return self

    def check_model(self, model: nn.Module, target: Any) -> None:
        children = [name for name, _ in model.named_children()]
        missing = [name for name in self.after if name not in children]
        if missing:
            raise EdgetierError(f"early_exit after {missing}: not top-level stages of {type(model).__name__}",
                                fix=f"use stage names among: {', '.join(children[:-1])}")
        if children and self.after[-1] == children[-1]:
            raise EdgetierError(f"an exit after the last stage {children[-1]!r} would be the final classifier",
                                fix="attach exits after earlier stages")
        order = [children.index(name) for name in self.after]
        if order != sorted(order):
            raise EdgetierError(f"after must follow the model's order ({', '.join(children)})",
                                fix=f"write them as {sorted(self.after, key=children.index)}")


class EarlyExit(BaseTechnique):
    config_type = EarlyExitConfig
    config: EarlyExitConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        exit_model = self._attach(model, ctx)
        heads = {name: sum(p.numel() for p in head.parameters()) for name, head in exit_model.exits.items()}
        report = {"after": list(self.config.after), "head": self.config.head,
                  "head_kernel": self.config.head_kernel, "criterion": self.config.criterion,
                  "weights": list(self._weights()), "layers": {name: {"exit_params": n} for name, n in heads.items()}}
        return Result(exit_model, report, hooks=self._hooks())

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        return Result(self._attach(model, ctx), hooks=self._hooks())

    def _weights(self) -> tuple[float, ...]:
        return self.config.weights or (1.0,) * (len(self.config.after) + 1)

    def _attach(self, model: nn.Module, ctx: Context) -> EarlyExitModel:
        if isinstance(model, EarlyExitModel):
            raise EdgetierError("the model already has early exits", fix="use one early_exit stage per recipe")
        self.config.check_model(model, ctx.target)
        if not ctx.example_inputs or not is_chain(model, ctx.example_inputs):
            raise EdgetierError(f"{type(model).__name__}'s forward is not its top-level children in order, so "
                                "it cannot be cut at exits", fix="use a chain model (every reference model is one)")
        shapes = stage_shapes(model, ctx.example_inputs)
        num_classes = shapes[list(shapes)[-1]][-1]
        layout = getattr(model, "feature_layout", "channels_first")
        heads = {name: ExitHead(shapes[name], num_classes, kind=self.config.head, layout=layout,
                                 kernel=self.config.head_kernel)
                 for name in self.config.after}
        exit_model = EarlyExitModel(model, heads, self._weights()[:-1])
        exit_model.policy = {"criterion": self.config.criterion, "target_accuracy": self.config.target_accuracy,
                             "exit_rate": self.config.exit_rate, "thresholds": self.config.thresholds}
        return exit_model

    def _hooks(self) -> HookSet:
        weights = self._weights()

        def loss(model: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            total = (weights[-1] - 1.0) * F.cross_entropy(outputs, targets)
            for weight, logits in zip(weights[:-1], getattr(model, "exit_logits", ()), strict=False):
                total = total + weight * F.cross_entropy(logits, targets)
            return total

        return HookSet([Hooks(loss=loss)])
