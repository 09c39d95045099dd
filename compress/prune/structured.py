"""`structured_prune`: remove whole channels / filters with torch-pruning's dependency graph.

The model becomes physically smaller — fewer parameters and MACs, a smaller exported file and
a faster runtime — unlike unstructured sparsity. The amount is a `ratio` of channels per
layer, or a MACs budget (`macs_ratio`: keep at most that fraction of the model's MACs; the
channel ratio that meets it is found by bisection on copies). Pruning runs in `steps` equal
steps with `finetune_epochs` of training on the train split between them (the stage's own
`train` block fine-tunes after the last step). Channel counts are rounded to the target's
`channel_multiple`; the classifier (every Conv/Linear whose output is a model output) keeps its
outputs.

Transformers (`compress.prune.transformer`): `heads` and `mlp` give a ratio per kind — the
share of every attention module's heads removed whole, and of every MLP hidden layer's channels.
A `ratio` on a model with query/key/value attention (Hugging Face BERT, ViT) means the same ratio
for both; the residual stream keeps its width either way.

`importance: least_squares` (CNNs, label-free) cuts only channels that one pointwise layer reads —
an inverted residual's or a bottleneck's hidden channels, made by a selected layer — choosing them
by the least-squares error of the reading layer's block and refitting that layer to the unpruned
block on `reconstruct` train inputs (`compress.prune.reconstruct`); `allocate: cost` spreads `ratio`
of those channels' parameters where that error rises least. Its `state` records the channels each
layer lost, and `restore` cuts them again.

Resume: `state` holds torch-pruning's pruning history (layer names and channel indices);
`restore` replays it on a fresh copy of the unpruned model, after which the saved weights load.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.measure import count_macs, count_params
from compress.core.selectors import select
from compress.core.technique import BaseTechnique, Result
from compress.core.train import TrainSpec, fit
from compress.prune.blocks import apply_blocks, restore_blocks
from compress.prune.common import fraction, require_data, sample_batches
from compress.prune.graph import (
    ROOT_TYPES,
    attention_heads,
    build_pruner,
    channel_groups,
    history,
    output_layers,
    prune_step,
    replay,
)
from compress.prune.transformer import find_attention, no_attention_error

WHERE = "structured_prune"
BISECTIONS = 12  # at most: ratio resolution 2^-12, finer than one channel of any layer under 2048 channels


class StructuredPruneConfig(TechniqueConfig):
    """Channel pruning of the selected layers (default: every Conv and Linear but the classifier).

    >>> StructuredPruneConfig(ratio=0.5, importance="l1", steps=2).to_dict()["macs_ratio"] is None
    True
    """

    kind: Literal["structured_prune"] = "structured_prune"
    ratio: float | None = Field(None, description="fraction of the output channels removed from each selected "
                                "layer, in (0, 1); give this, macs_ratio, or heads / mlp")
    heads: float | None = Field(None, description="transformers: fraction of every attention module's heads "
                                "removed (whole heads: q, k, v and the output projection together), in (0, 1)")
    mlp: float | None = Field(None, description="transformers: fraction of every MLP hidden layer's channels "
                              "removed, in (0, 1)")
    macs_ratio: float | None = Field(None, description="MACs budget: keep at most this fraction of the model's MACs, "
                                     "in (0, 1); give this or ratio")
    importance: Literal["l1", "l2", "taylor", "bn_scale", "activation", "least_squares"] = Field(
        "l2", description="channel score: weight magnitude (l1, l2), first-order Taylor |g·w| on train batches, "
                          "BatchNorm scale (network slimming), or — transformers pruned by heads / mlp, no labels "
                          "needed — activation: each head's / MLP channel's contribution to the layer reading it "
                          "on train inputs (`compress.prune.activation`), or — CNNs, no labels needed — "
                          "least_squares: the channels of selected layers that one pointwise layer reads (an "
                          "inverted residual's or bottleneck's hidden channels) chosen by the least-squares error "
                          "of that layer's block and the layer refit to the unpruned block on `reconstruct` train "
                          "inputs (`compress.prune.reconstruct.prune_and_refit`)")
    allocate: Literal["uniform", "cost"] = Field(
        "uniform", description="least_squares: uniform removes `ratio` of every eligible layer's channels; cost "
                               "removes `ratio` of the parameters those channels hold, where the least-squares error "
                               "per parameter rises least (at most 60 % of a layer)")
    steps: int = Field(1, ge=1, le=100, description="iterative pruning steps, each removing an equal share")
    finetune_epochs: int = Field(0, ge=0, le=10_000, description="epochs of training on the train split after every step "
                                 "but the last")
    finetune_lr: float = Field(1e-3, gt=0, le=10, description="learning rate of the fine-tuning between steps")
    taylor_batches: int = Field(8, ge=1, le=10_000, description="taylor: train batches whose gradients score the channels")
    activation_samples: int = Field(256, ge=1, le=100_000, description="activation: train samples whose forward "
                                    "passes score the heads and channels")
    channel_multiple: int | None = Field(None, ge=1, le=1024, description="round kept channels to multiples of this; "
                                         "default: the target's channel_multiple")
    reconstruct: int = Field(0, ge=0, le=100_000, description="transformers (heads / mlp): train samples on which "
                             "each layer reading pruned heads or channels is refit by least squares to the unpruned "
                             "model's outputs (label-free, `compress.prune.reconstruct`); 0: off. importance "
                             "least_squares: the train samples it chooses and refits on (needed)")

    @field_validator("ratio", "macs_ratio", "heads", "mlp")
    @classmethod
    def _fraction(cls, value: float | None, info: ValidationInfo) -> float | None:
        return None if value is None else fraction(value, info.field_name)

    @model_validator(mode="after")
    def _one_amount(self) -> StructuredPruneConfig:
        if self.allocate != "uniform" and self.importance != "least_squares":
            raise ValueError(f"allocate: {self.allocate} spreads the cut by least-squares cost; it needs importance: "
                             "least_squares")
        if self.importance == "least_squares":
            wrong = [key for key, bad in (("heads / mlp", self.heads is not None or self.mlp is not None),
                                          ("macs_ratio", self.macs_ratio is not None), ("steps", self.steps != 1))
                     if bad]
            if wrong or self.ratio is None or not self.reconstruct:
                raise ValueError("importance least_squares prunes once, by a channel ratio, on train inputs: give "
                                 "ratio and reconstruct (train samples, e.g. 512)"
                                 + (f", without {', '.join(wrong)}" if wrong else ""))
            if self.allocate == "cost" and self.ratio > 0.6:
                raise ValueError("allocate: cost removes at most 60 % of any layer's channels, so ratio must be at "
                                 "most 0.6")
            return self
        if self.heads is not None or self.mlp is not None:
            if self.ratio is not None or self.macs_ratio is not None:
                raise ValueError("give either heads / mlp (ratios per kind of transformer layer) or one of ratio / "
                                 "macs_ratio, not both")
            return self
        if (self.ratio is None) == (self.macs_ratio is None):
            raise ValueError("give exactly one of ratio (fraction of channels to remove) or macs_ratio (fraction of "
                             "the MACs to keep)")
        return self

    def check_model(self, model: nn.Module, target: Any) -> None:
        _check_activation(self, model)
        if self.importance == "least_squares":
            if hasattr(model, "example_inputs"):
                _least_squares_layers(model, tuple(model.example_inputs()), self)
            else:
                _layers(model, self)
            return
        if _per_kind(self, model) is not None:
            if self.heads and not find_attention(model):
                raise no_attention_error(model, where=WHERE)
            return
        if not hasattr(model, "example_inputs"):
            _layers(model, self)  # selectors only: tracing needs example inputs, checked again in apply
            return
        _plan(copy.deepcopy(model), tuple(model.example_inputs()), self, _multiple(self, target))


def _check_activation(config: StructuredPruneConfig, model: nn.Module) -> None:
    if config.importance == "activation" and _per_kind(config, model) is None:
        raise EdgetierError("importance activation scores attention heads and MLP hidden channels by what they add "
                            f"to the layer reading them; {type(model).__name__} is pruned per layer here (no "
                            "heads / mlp, and no query/key/value attention for a plain ratio)",
                            where=f"{WHERE}.importance",
                            fix="prune a transformer with heads / mlp, or use importance: l1, l2 or taylor")


def _multiple(config: StructuredPruneConfig, target: Any) -> int | None:
    multiple = config.channel_multiple or (target.channel_multiple if target is not None else None)
    return multiple if multiple and multiple > 1 else None


def _layers(model: nn.Module, config: StructuredPruneConfig,
            example_inputs: tuple[torch.Tensor, ...] | None = None) -> tuple[list[str], list[str], list[str]]:
    """(layers whose output channels may go, layers torch-pruning must leave alone, the classifiers)."""
    chosen = select(model, config.targets, config.ignore, default_types=ROOT_TYPES, where=WHERE)
    classifiers = output_layers(model, example_inputs) if example_inputs is not None else []
    prunable = [n for n, m in chosen.items() if isinstance(m, ROOT_TYPES) and n not in classifiers]
    ignored = [n for n, m in model.named_modules() if isinstance(m, ROOT_TYPES) and n not in prunable]
    if not prunable:
        raise EdgetierError("the selectors leave no convolution or linear layer to prune (the classifier "
                            f"{', '.join(classifiers) or '-'} always keeps its outputs)", where=WHERE,
                            fix="select convolutions or linear layers, e.g. targets: ['type:Conv1d']")
    if config.importance == "bn_scale" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                   for m in model.modules()):
        raise EdgetierError(f"importance bn_scale scores channels by their BatchNorm scale, and "
                            f"{type(model).__name__} has no BatchNorm layer", where=WHERE,
                            fix="use importance: l1, l2 or taylor")
    return prunable, ignored, classifiers


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LSTM):
        return module.hidden_size
    return module.out_channels


def _prune(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], config: StructuredPruneConfig, ratio: float,
           ignored: list[str], multiple: int | None, *, between: Callable[[int], None] | None = None,
           grads: Callable[[], None] | None = None) -> list[list[Any]]:
    pruner, expected = build_pruner(model, example_inputs, ratio=ratio, steps=config.steps, ignored=ignored,
                                    importance="l2" if grads is None and config.importance == "taylor"
                                    else config.importance, multiple=multiple, where=WHERE)
    before = _shapes(model)
    for step in range(config.steps):
        prune_step(pruner, model, example_inputs, where=WHERE, grads=grads)
        if between is not None and step < config.steps - 1:
            between(step)
    after = _shapes(model)
    stuck = [name for name in expected if after[name] == before[name]]
    if stuck:  # torch-pruning declines such groups silently; a no-op the user asked for is an error
        listing = ", ".join(repr(name) for name in stuck)
        raise EdgetierError(f"torch-pruning left layer(s) {listing} unpruned: their channels are used in a way its "
                            "dependency graph cannot follow (a parameter outside a standard layer, a fixed-size "
                            "reshape, ...)", where=WHERE, fix=f"add {listing} to `ignore` to prune the other layers")
    return history(pruner)


def _plan(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], config: StructuredPruneConfig,
          multiple: int | None) -> tuple[float, list[str], list[str], list[str]]:
    """The channel ratio to apply (the MACs budget turned into a ratio) after checking that it
    prunes `model` cleanly; `model` is a scratch copy and ends up pruned."""
    prunable, ignored, classifiers = _layers(model, config, example_inputs)
    if config.ratio is not None:
        _prune(model, example_inputs, config, config.ratio, ignored, multiple)
        return config.ratio, prunable, ignored, classifiers
    # Channel counts do not depend on the scores (each layer loses the same share), so the
    # budget is searched with magnitude scores on copies; MACs fall as the ratio rises.
    dense, budget = count_macs(model, example_inputs), config.macs_ratio * count_macs(model, example_inputs)
    modules = dict(model.named_modules())
    heads = attention_heads(model)
    # the largest ratio at which every layer keeps one rounding step of channels (beyond it the
    # layer would lose every channel); the margin absorbs float error
    steps = {n: math.lcm(multiple or 1, channel_groups(modules[n], heads)) for n in prunable}
    high = min((1 - steps[n] / (2 * _out_channels(modules[n])) for n in prunable
                if steps[n] <= _out_channels(modules[n])), default=0.0) - 1e-6

    def macs_at(ratio: float) -> int:
        trial = copy.deepcopy(model)
        _prune(trial, example_inputs, config, ratio, ignored, multiple)
        return count_macs(trial, example_inputs)

    least = macs_at(high) if high > 0 else dense
    if least > budget:
        raise EdgetierError(f"a MACs budget of {config.macs_ratio:.0%} cannot be met: removing as many channels as "
                            f"every layer can lose (ratio {max(high, 0):.2f}) still leaves {least / dense:.0%} of the MACs",
                            where=WHERE, fix="raise macs_ratio, select more layers, or lower channel_multiple")
    low = 0.0
    # channel counts change in steps of one channel of the widest layer: half of that is fine enough
    widest = max(_out_channels(modules[n]) for n in prunable)
    for _ in range(min(BISECTIONS, math.ceil(math.log2(2 * widest)))):
        middle = (low + high) / 2
        low, high = (low, middle) if macs_at(middle) <= budget else (middle, high)
    _prune(model, example_inputs, config, high, ignored, multiple)
    return high, prunable, ignored, classifiers


class StructuredPrune(BaseTechnique):
    """Plans on a copy (budget search, checks), then prunes the model itself step by step."""

    config_type = StructuredPruneConfig
    config: StructuredPruneConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        cfg = self.config
        example = _example(model, ctx)
        _check_activation(cfg, model)
        if cfg.importance == "least_squares":
            return _least_squares(model, example, ctx, cfg, _multiple(cfg, ctx.target))
        kinds = _per_kind(cfg, model)
        if kinds is None and cfg.reconstruct:
            raise EdgetierError("reconstruct refits the layers that read pruned attention heads or MLP channels; this "
                                "model is pruned per layer", where=f"{WHERE}.reconstruct",
                                fix="remove reconstruct, or prune a transformer with heads / mlp")
        if kinds is not None:
            return apply_blocks(model, example, ctx, heads=kinds[0], mlp=kinds[1], config=cfg, where=WHERE)
        multiple = _multiple(cfg, ctx.target)
        ratio, prunable, ignored, classifiers = _plan(copy.deepcopy(model), example, cfg, multiple)
        before = _shapes(model)
        params0, macs0 = count_params(model), count_macs(model, example)
        between: Callable[[int], None] | None = None
        grads: Callable[[], None] | None = None
        if cfg.finetune_epochs > 0 and cfg.steps > 1:
            data = require_data(ctx, why="structured_prune fine-tunes between its steps", where=WHERE)
            spec = TrainSpec(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                             batch_size=ctx.train.batch_size if ctx.train else 128)

            def between(step: int) -> None:
                fit(model, data.train, spec, seed=ctx.seed + step, progress=ctx.progress,
                    description=f"structured_prune: fine-tune after step {step + 1}")
        if cfg.importance == "taylor":
            grads = _taylor_grads(model, ctx, batches=cfg.taylor_batches)
        recorded = _prune(model, example, cfg, ratio, ignored, multiple, between=between, grads=grads)
        model.eval()
        after = _shapes(model)
        params1, macs1 = count_params(model), count_macs(model, example)
        removed = 1 - sum(after[n] for n in prunable) / sum(before[n] for n in prunable)
        report = {
            "ratio": cfg.ratio, "macs_ratio": cfg.macs_ratio, "channels_removed": round(removed, 4),
            "importance": cfg.importance, "steps": cfg.steps, "finetune_epochs": cfg.finetune_epochs,
            "channel_multiple": multiple, "classifiers": classifiers,
            "params": [params0, params1], "macs": [macs0, macs1], "macs_fraction": round(macs1 / macs0, 4),
            "params_fraction": round(params1 / params0, 4),
            # selected layers narrower than one rounding step (channel_multiple × channel groups)
            "unchanged": [n for n in prunable if before[n] == after[n]],
            "layers": {n: {"channels": [before[n], after[n]]} for n in before},
        }
        return Result(model, report, state={"history": recorded})

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        if "least_squares" in state:
            from compress.prune.refit_layers import remove_inputs

            remove_inputs(model, _example(model, ctx), state["least_squares"], where=WHERE)
            return Result(model, {}, state=state)
        if "mlp_layers" in state:  # pruned per kind (heads / mlp)
            return restore_blocks(model, _example(model, ctx), state, where=WHERE)
        replay(model, _example(model, ctx), state["history"], where=WHERE)
        return Result(model, {}, state=state)


def _least_squares_layers(model: nn.Module, example: tuple[torch.Tensor, ...],
                          config: StructuredPruneConfig) -> tuple[list[str], dict[str, str]]:
    """The pointwise layers whose input channels importance least_squares cuts (made by a selected
    layer, read by that pointwise layer alone), and the block each is matched to."""
    from compress.prune.refit_layers import pointwise_readers

    if _per_kind(config, model) is not None:
        raise EdgetierError("importance least_squares cuts CNN channels that one pointwise layer reads; "
                            f"{type(model).__name__} has query/key/value attention", where=f"{WHERE}.importance",
                            fix="prune a transformer with heads / mlp, importance: activation and reconstruct")
    prunable, _ignored, _classifiers = _layers(model, config, example)
    layers, match = pointwise_readers(model, example, producers=prunable)
    if not layers:
        raise EdgetierError("importance least_squares found no selected layer whose output channels one pointwise "
                            "layer (a 1x1 convolution or a Linear) reads alone: it cuts the hidden channels of "
                            "inverted residual or bottleneck blocks, not a residual stream", where=f"{WHERE}.importance",
                            fix="use importance l1 / l2 / taylor for this model, or select the layers inside its blocks")
    return layers, match


def _least_squares(model: nn.Module, example: tuple[torch.Tensor, ...], ctx: Context,
                   cfg: StructuredPruneConfig, multiple: int | None) -> Result:
    from compress.prune.blocks import _calibration
    from compress.prune.reconstruct import prune_and_refit

    layers, match = _least_squares_layers(model, example, cfg)
    batches, _masks = _calibration(ctx, samples=cfg.reconstruct, why="importance least_squares chooses and refits "
                                   "channels on train inputs", where=f"{WHERE}.reconstruct")
    params0, macs0 = count_params(model), count_macs(model, example)
    reference = copy.deepcopy(model).eval()
    task = ctx.progress.task(f"{WHERE}: least-squares cut and refit", total=len(layers))

    def log(name: str, _entry: dict[str, Any]) -> None:
        if name != "allocate":
            ctx.progress.advance(task)

    report = prune_and_refit(model, reference, layers, batches, ratio=cfg.ratio or 0.0, example_inputs=example,
                             match=match, multiple=multiple, allocate=cfg.allocate, log=log)
    ctx.progress.done(task)
    model.eval()
    params1, macs1 = count_params(model), count_macs(model, example)
    removed = [[name, entry.pop("removed"), entry.pop("bias_added", False)] for name, entry in report.items()]
    return Result(model, {
        "ratio": cfg.ratio, "importance": "least_squares", "allocate": cfg.allocate, "samples": cfg.reconstruct,
        "channel_multiple": multiple, "params": [params0, params1], "macs": [macs0, macs1],
        "params_fraction": round(params1 / params0, 4), "macs_fraction": round(macs1 / macs0, 4),
        "layers": report}, state={"least_squares": removed})


def _per_kind(config: StructuredPruneConfig, model: nn.Module) -> tuple[float | None, float | None] | None:
    """(heads, mlp) ratios when the model is pruned per kind of transformer layer, else None: the
    config says so, or a `ratio` meets separate query/key/value attention (whose channels the
    per-layer path would spread across heads)."""
    if config.heads is not None or config.mlp is not None:
        return config.heads, config.mlp
    if config.ratio is not None and any(len(a.projections) == 3 for a in find_attention(model)):
        return config.ratio, config.ratio
    return None


def _example(model: nn.Module, ctx: Context) -> tuple[torch.Tensor, ...]:
    if ctx.example_inputs:
        return tuple(ctx.example_inputs)
    if hasattr(model, "example_inputs"):
        return tuple(model.example_inputs())
    raise EdgetierError("structured pruning traces the model and needs example inputs", where=WHERE,
                        fix="pass example_inputs=(torch.randn(1, *input_shape),) to compress.apply")


def _shapes(model: nn.Module) -> dict[str, int]:
    return {n: _out_channels(m) for n, m in model.named_modules() if isinstance(m, ROOT_TYPES)}


def _taylor_grads(model: nn.Module, ctx: Context, *, batches: int) -> Callable[[], None]:
    data = require_data(ctx, why="taylor importance scores channels by gradients on train batches", where=WHERE)

    def grads() -> None:
        drawn = sample_batches(data.train.x, data.train.y, batches=batches, batch_size=64, seed=ctx.seed)
        model.zero_grad(set_to_none=True)
        was_training = model.training
        model.eval()  # scores of the model as deployed; BatchNorm statistics stay untouched
        for x, y in drawn:
            F.cross_entropy(model(x), y).backward()
        model.train(was_training)

    return grads
