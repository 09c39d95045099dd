"""`snip`: single-shot pruning at initialization by connection sensitivity (Lee et al. 2019).

The sensitivity of a connection is |∂L/∂c ⊙ w| with c the (all-ones) mask multiplying w, i.e.
|g ⊙ w| for the loss gradient g on a few train batches. The weights with the lowest sensitivity
over all selected layers are removed, once, before training; the hooks then keep the mask
through the training that follows (the stage's `train` block or the user's own loop).

Meant for an untrained model (`compress.apply` on a freshly built network). In a recipe the
variant starts from the trained cloud model, where the same criterion acts as a one-shot
gradient-times-weight saliency pruning.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.technique import BaseTechnique, HookSet, Result
from compress.prune.common import fraction, require_data, sample_batches
from compress.prune.masks import (
    apply_masks,
    layer_sparsity,
    mask_hooks,
    masks_from_scores,
    prunable_weights,
    total_sparsity,
)
from compress.prune.unstructured import EXPORT_NOTE

WHERE = "snip"


class SnipConfig(TechniqueConfig):
    """Connection-sensitivity pruning before training.

    >>> SnipConfig(ratio=0.9).batches
    1
    """

    kind: Literal["snip"] = "snip"
    ratio: float = Field(..., description="fraction of the selected weights removed, in (0, 1)")
    batches: int = Field(1, ge=1, le=10_000, description="train batches whose summed gradients give the sensitivity")
    batch_size: int = Field(128, ge=1, le=65_536, description="samples per batch (Lee et al. use one batch of 100-128)")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        return fraction(value, "ratio")

    def check_model(self, model: nn.Module, target: Any) -> None:
        prunable_weights(model, self.targets, self.ignore, where=WHERE)


def connection_sensitivity(model: nn.Module, names: list[str], batches: list[tuple[torch.Tensor, torch.Tensor]]
                           ) -> dict[str, torch.Tensor]:
    """|g ⊙ w| of the named modules' weights, g summed over `batches`, computed on a copy of
    `model` in train mode (so `model`'s BatchNorm statistics and gradients stay untouched).

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(3, 2)
    >>> s = connection_sensitivity(model, [""], [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))])
    >>> tuple(s[""].shape), bool((s[""] >= 0).all())
    ((2, 3), True)
    """
    scratch = copy.deepcopy(model).train()
    scratch.zero_grad(set_to_none=True)
    for x, y in batches:
        loss = F.cross_entropy(scratch(x), y)
        # an early-exit model trains its exits too (their weighted losses, as the exits' stage does):
        # without them the exit heads' connections would score zero and be pruned first
        for weight, logits in zip(getattr(scratch, "exit_weights", ()), getattr(scratch, "exit_logits", ()),
                                  strict=False):
            loss = loss + weight * F.cross_entropy(logits, y)
        loss.backward()
    scores = {}
    for name in names:
        weight = scratch.get_submodule(name).weight
        grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
        scores[name] = (grad * weight).abs().detach()
    return scores


class Snip(BaseTechnique):
    config_type = SnipConfig
    config: SnipConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        cfg = self.config
        data = require_data(ctx, why="snip scores connections by gradients on train batches", where=WHERE)
        weights = prunable_weights(model, cfg.targets, cfg.ignore, where=WHERE)
        batches = sample_batches(data.train.x, data.train.y, batches=cfg.batches, batch_size=cfg.batch_size,
                                 seed=ctx.seed)
        scores = connection_sensitivity(model, list(weights), batches)
        masks = masks_from_scores(scores, cfg.ratio, scope="global", where=WHERE)
        apply_masks(model, masks)
        report = {"ratio": cfg.ratio, "batches": cfg.batches, "batch_size": cfg.batch_size,
                  "sparsity": round(total_sparsity(masks), 6), "note": EXPORT_NOTE, "layers": layer_sparsity(masks)}
        return Result(model, report, hooks=HookSet([mask_hooks(masks)]), state={"masks": masks})

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        apply_masks(model, state["masks"])
        return Result(model, {}, hooks=HookSet([mask_hooks(state["masks"])]), state=state)
