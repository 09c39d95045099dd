"""`unstructured_prune`: magnitude pruning of individual weights, one-shot or gradual (AGP).

Weights with the smallest |w| are set to zero, ranked over all selected layers together
(`scope: global`) or within each layer (`scope: layer`). `schedule: gradual` raises the
sparsity along the cubic schedule of Zhu & Gupta (2017, "To prune, or not to prune"),

    s_t = s_f + (s_i − s_f) · (1 − t / n)³,   t = 0 … n,

over the first `ramp` of the stage's training steps, updating the masks every `every` steps;
the remaining steps fine-tune at the final sparsity. The masks survive training through the
hooks: gradients of pruned weights are zeroed after backward and the weights re-zeroed after
each optimizer step (Adam's momentum would otherwise revive them).

Export honesty: onnxruntime runs the weights dense (its kernels have no sparse path), so latency
does not drop; what shrinks is storage. The ONNX file stores each sparse weight as its kept values
plus one-byte gaps (`export.sparse_store`), which onnxruntime rebuilds when the session starts, so
the file itself is smaller; `compressed_bytes` (DEFLATE of the file) is reported beside it. A
.tflite file stays dense (LiteRT has no such encoding).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import BaseTechnique, Hooks, HookSet, Result
from compress.prune.common import fraction, require_data
from compress.prune.masks import (
    apply_masks,
    layer_sparsity,
    mask_gradients,
    masks_from_scores,
    prunable_weights,
    total_sparsity,
)

WHERE = "unstructured_prune"
EXPORT_NOTE = ("unstructured sparsity runs dense: onnxruntime latency does not drop; the storage gain shows in "
               "the ONNX file (sparse weights stored as kept values + gaps) and in compressed_bytes (DEFLATE of the "
               "exported file, as Deep Compression reports storage after encoding)")


class UnstructuredPruneConfig(TechniqueConfig):
    """Magnitude pruning of individual weights of the selected layers (default: every Conv and Linear).

    >>> UnstructuredPruneConfig(ratio=0.9, schedule="gradual").to_dict()["scope"]
    'global'
    """

    kind: Literal["unstructured_prune"] = "unstructured_prune"
    ratio: float = Field(..., description="final fraction of the selected weights set to zero, in (0, 1)")
    scope: Literal["global", "layer"] = Field("global", description="rank weights over all layers or within each")
    schedule: Literal["oneshot", "gradual"] = Field("oneshot", description="all at once, or the cubic AGP schedule "
                                                    "over the stage's training")
    initial_ratio: float = Field(0.0, ge=0, description="gradual: sparsity at the start of the schedule")
    ramp: float = Field(0.75, gt=0, le=1, description="gradual: fraction of the training steps over which sparsity "
                        "rises; the rest fine-tunes at `ratio`")
    every: int = Field(10, ge=1, le=1_000_000, description="gradual: optimizer steps between two mask updates")
    steps: int | None = Field(None, ge=1, le=10_000_000, description="gradual: optimizer steps the schedule spans; default: the "
                              "stage's train epochs × batches per epoch of the train split")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        return fraction(value, "ratio")

    @model_validator(mode="after")
    def _initial_below_final(self) -> UnstructuredPruneConfig:
        if self.initial_ratio >= self.ratio:
            raise ValueError(f"initial_ratio ({self.initial_ratio}) must be below ratio ({self.ratio})")
        return self

    def check_model(self, model: nn.Module, target: Any) -> None:
        prunable_weights(model, self.targets, self.ignore, where=WHERE)


def agp_sparsity(step: int, *, final: float, ramp_steps: int, initial: float = 0.0) -> float:
    """The sparsity of the cubic AGP schedule after `step` of `ramp_steps` steps (Zhu & Gupta 2017).

    >>> [round(agp_sparsity(t, final=0.9, ramp_steps=4), 4) for t in range(6)]
    [0.0, 0.5203, 0.7875, 0.8859, 0.9, 0.9]
    """
    progress = min(max(step / ramp_steps, 0.0), 1.0) if ramp_steps > 0 else 1.0
    return final + (initial - final) * (1.0 - progress) ** 3


class _Schedule:
    """The live side of one application: masks, step counter and report, updated by the hooks.

    `state` is the dict returned as `Result.state`: the pipeline checkpoints it after the stage's
    training, so it must hold the masks and the step reached then, not at `apply` time; the
    report is likewise the stage's summary written after training.
    """

    def __init__(self, config: UnstructuredPruneConfig, state: dict[str, Any], report: dict[str, Any]) -> None:
        self.config, self.state, self.report = config, state, report
        self.masks: dict[str, torch.Tensor] = state["masks"]
        self.ramp_steps = math.ceil(config.ramp * state["total_steps"]) if state["total_steps"] else 0
        self._refresh_report()

    def after_step(self, model: nn.Module) -> None:
        self.state["step"] += 1
        step = self.state["step"]
        if self.config.schedule == "gradual" and step <= self.ramp_steps and (
                step % self.config.every == 0 or step == self.ramp_steps):
            self.update(model, agp_sparsity(step, final=self.config.ratio, ramp_steps=self.ramp_steps,
                                            initial=self.config.initial_ratio))
        apply_masks(model, self.masks)

    def update(self, model: nn.Module, sparsity: float) -> None:
        weights = {name: model.get_submodule(name).weight for name in self.masks}
        fresh = masks_from_scores({n: w.abs() for n, w in weights.items()}, sparsity, scope=self.config.scope,
                                  previous=self.masks, where=WHERE)
        for name, mask in fresh.items():
            self.masks[name].copy_(mask)  # in place: the hooks and `state` hold these tensors
        apply_masks(model, self.masks)
        self._refresh_report()

    def _refresh_report(self) -> None:
        self.report["sparsity"] = round(total_sparsity(self.masks), 6)
        if self.config.schedule == "gradual":
            self.report["last_update_step"] = self.state["step"]
        self.report["layers"] = layer_sparsity(self.masks)


class UnstructuredPrune(BaseTechnique):
    """Prunes at `apply` (one-shot) or along the hooks' optimizer steps (gradual)."""

    config_type = UnstructuredPruneConfig
    config: UnstructuredPruneConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        cfg = self.config
        weights = prunable_weights(model, cfg.targets, cfg.ignore, where=WHERE)
        masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
        total = self._total_steps(ctx) if cfg.schedule == "gradual" else 0
        state: dict[str, Any] = {"masks": masks, "step": 0, "total_steps": total}
        result, schedule = self._build(model, state)
        first = cfg.ratio if cfg.schedule == "oneshot" else cfg.initial_ratio
        if first > 0:
            schedule.update(model, first)
        return result

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        return self._build(model, state)[0]

    def _build(self, model: nn.Module, state: dict[str, Any]) -> tuple[Result, _Schedule]:
        cfg = self.config
        report: dict[str, Any] = {"ratio": cfg.ratio, "scope": cfg.scope, "schedule": cfg.schedule,
                                  "weights": sum(m.numel() for m in state["masks"].values()), "note": EXPORT_NOTE}
        if cfg.schedule == "gradual":
            report["schedule_steps"] = state["total_steps"]
        schedule = _Schedule(cfg, state, report)
        if cfg.schedule == "gradual":
            report["ramp_steps"] = schedule.ramp_steps
        apply_masks(model, schedule.masks)
        hooks = Hooks(after_backward=lambda m: mask_gradients(m, schedule.masks), after_step=schedule.after_step)
        return Result(model, report, hooks=HookSet([hooks]), state=state), schedule

    def _total_steps(self, ctx: Context) -> int:
        if self.config.steps is not None:
            return self.config.steps
        if ctx.train is None or ctx.train.epochs == 0:
            raise EdgetierError("gradual pruning spreads its schedule over the stage's training, but this stage does "
                                "not train", where=WHERE,
                                fix="add `train: {epochs: N}` to the stage, set `steps` (from Python: the optimizer "
                                    "steps of your loop), or use schedule: oneshot")
        data = require_data(ctx, why="gradual pruning counts the batches of the train split", where=WHERE)
        batches = math.ceil(len(data.train.y) / ctx.train.batch_size)
        return ctx.train.epochs * batches
