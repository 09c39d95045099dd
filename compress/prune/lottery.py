"""`lottery_ticket`: iterative magnitude pruning with rewinding (Frankle & Carbin 2019).

Inside `apply`, on the train split: train the model as given (round 0), then for each of
`rounds` rounds remove `ratio` of the *remaining* weights with the smallest |w| (so after R
rounds 1 − (1 − ratio)^R are gone), rewind the survivors to their starting values — the
weights `apply` received (`rewind: init`) or those after k optimizer steps of round 0
(`rewind: k`, late rewinding, Frankle et al. 2020) — and retrain with the mask held by hooks.

The LTH control: the same mask on a fresh random initialization (each module's
`reset_parameters`), trained the same way. A winning ticket trains to at least the control's
accuracy; the report shows both per round, on the validation split, so the user sees whether
one was found. Note that in a recipe the variant starts from the trained cloud model, so
`rewind: init` rewinds to those trained weights — the classic experiment starts from an
untrained model, which `compress.apply` allows.

`granularity: structured` removes whole channels instead (compress/prune/lottery_structured.py):
the ticket is physically smaller, and `restore` replays the channel removal.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import BaseTechnique, Hooks, HookSet, Result
from compress.core.train import TrainSpec, evaluate, fit
from compress.prune.common import fraction, require_data
from compress.prune.graph import replay
from compress.prune.lottery_structured import structured_rounds
from compress.prune.masks import (
    apply_masks,
    layer_sparsity,
    mask_hooks,
    masks_from_scores,
    prunable_weights,
    total_sparsity,
)
from compress.prune.structured import _example
from compress.prune.unstructured import EXPORT_NOTE

WHERE = "lottery_ticket"


class LotteryTicketConfig(TechniqueConfig):
    """Iterative magnitude pruning with rewinding; trains inside `apply` with these settings.

    >>> LotteryTicketConfig(rounds=5, ratio=0.2, rewind=100).to_dict()["rewind"]
    100
    """

    kind: Literal["lottery_ticket"] = "lottery_ticket"
    rounds: int = Field(5, ge=1, le=50, description="prune-rewind-retrain rounds")
    ratio: float = Field(0.2, description="fraction of the remaining weights removed each round, in (0, 1)")
    granularity: Literal["unstructured", "structured"] = Field(
        "unstructured", description="remove single weights (masks; the file stays dense) or whole output channels "
                                    "of every selected layer (torch-pruning; the model gets physically smaller)")
    scope: Literal["global", "layer"] = Field("global", description="unstructured: rank weights over all layers or "
                                              "within each (structured rounds are always per layer)")
    rewind: Literal["init"] | int = Field("init", description="rewind survivors to the weights apply received "
                                          "(init) or to those after this many optimizer steps of round 0")
    epochs: int = Field(5, ge=1, le=10_000, description="training epochs of every round (round 0 included)")
    lr: float = Field(1e-3, gt=0, le=10, description="learning rate of every round (Adam)")
    batch_size: int = Field(128, ge=1, le=65_536, description="batch size of every round")
    control: Literal["every_round", "last_round", "none"] = Field(
        "every_round", description="train the random-reinitialization control in every round, the last, or never")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        return fraction(value, "ratio")

    @field_validator("rewind")
    @classmethod
    def _rewind(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 0:
            raise ValueError(f"rewind must be 'init' or a number of optimizer steps >= 0, got {value}")
        return value

    def check_model(self, model: nn.Module, target: Any) -> None:
        prunable_weights(model, self.targets, self.ignore, where=WHERE)


def reinitialize(model: nn.Module, *, seed: int) -> None:
    """Draw fresh weights with every module's own `reset_parameters`, seeded, leaving the global
    RNG as it was. Parameters of modules without `reset_parameters` keep their values.

    >>> layer = nn.Linear(3, 2); before = layer.weight.clone()
    >>> reinitialize(layer, seed=1); bool(torch.equal(before, layer.weight))
    False
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class LotteryTicket(BaseTechnique):
    """Runs the whole IMP experiment in `apply`; returns the last round's trained ticket."""

    config_type = LotteryTicketConfig
    config: LotteryTicketConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        cfg = self.config
        data = require_data(ctx, why="lottery_ticket trains its rounds on the train split", where=WHERE)
        weights = prunable_weights(model, cfg.targets, cfg.ignore, where=WHERE)
        spec = TrainSpec(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size)
        steps = cfg.epochs * math.ceil(len(data.train.y) / cfg.batch_size)
        if cfg.rewind != "init" and cfg.rewind > steps:
            raise EdgetierError(f"rewind to step {cfg.rewind}, but round 0 trains only {steps} optimizer steps "
                                f"({cfg.epochs} epochs of {len(data.train.y)} samples)", where=WHERE,
                                fix=f"use rewind: init or a step below {steps} (late rewinding uses ~1-5 % of training)")
        rewind_to = _snapshot(model)
        counter = {"step": 0}

        def capture(m: nn.Module) -> None:  # late rewinding: remember the weights after k steps
            counter["step"] += 1
            if counter["step"] == cfg.rewind:
                rewind_to.update(_snapshot(m))

        fit(model, data.train, spec, hooks=HookSet([Hooks(after_step=capture)]), seed=ctx.seed,
            progress=ctx.progress, description="lottery_ticket: round 0 (dense)")
        rounds = [{"round": 0, "sparsity": 0.0, "ticket_accuracy": evaluate(model, data.val), "control_accuracy": None}]
        if cfg.granularity == "structured":
            rewind = copy.deepcopy(model)
            rewind.load_state_dict(rewind_to)

            def control(ticket: nn.Module, seed: int) -> float:
                return self._control(ticket, {}, spec, data, seed=seed, ctx=ctx)

            model, later, recorded, layers = structured_rounds(model, rewind, cfg=cfg, spec=spec, ctx=ctx,
                                                               control=control, where=WHERE)
            model.eval()
            return Result(model, self._report(rounds + later, layers, note=None), state={"history": recorded})
        masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
        for r in range(1, cfg.rounds + 1):
            sparsity = 1.0 - (1.0 - cfg.ratio) ** r
            trained = {name: model.get_submodule(name).weight.abs() for name in masks}
            masks = masks_from_scores(trained, sparsity, scope=cfg.scope, previous=masks, where=WHERE)
            hooks = HookSet([mask_hooks(masks)])
            model.load_state_dict(rewind_to)
            apply_masks(model, masks)
            fit(model, data.train, spec, hooks=hooks, seed=ctx.seed + r, progress=ctx.progress,
                description=f"lottery_ticket: round {r} ticket")
            entry = {"round": r, "sparsity": round(total_sparsity(masks), 6),
                     "ticket_accuracy": evaluate(model, data.val), "control_accuracy": None}
            if cfg.control == "every_round" or (cfg.control == "last_round" and r == cfg.rounds):
                entry["control_accuracy"] = self._control(model, masks, spec, data, seed=ctx.seed + r, ctx=ctx)
            rounds.append(entry)
        report = self._report(rounds, layer_sparsity(masks), note=EXPORT_NOTE)
        return Result(model, report, hooks=HookSet([mask_hooks(masks)]), state={"masks": masks})

    def _report(self, rounds: list[dict[str, Any]], layers: dict[str, Any], *, note: str | None) -> dict[str, Any]:
        cfg, last = self.config, rounds[-1]
        return {
            "rounds": rounds, "ratio_per_round": cfg.ratio, "rewind": cfg.rewind, "granularity": cfg.granularity,
            "scope": cfg.scope if cfg.granularity == "unstructured" else "layer",
            "sparsity": last["sparsity"], "accuracy_split": "val",
            "winning_ticket": (None if last["control_accuracy"] is None
                               else last["ticket_accuracy"] >= last["control_accuracy"]),
            "note": note, "layers": layers,
        }

    def _control(self, ticket: nn.Module, masks: dict[str, torch.Tensor], spec: TrainSpec, data: Any, *, seed: int,
                 ctx: Context) -> float:
        control = copy.deepcopy(ticket)
        reinitialize(control, seed=seed + 10_000)  # a draw no ticket round uses
        apply_masks(control, masks)
        fit(control, data.train, spec, hooks=HookSet([mask_hooks(masks)] if masks else []), seed=seed,
            progress=ctx.progress,
            description="lottery_ticket: random-reinit control")
        return evaluate(control, data.val)

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        if "history" in state:  # structured rounds: replay the channel removal, then the weights load
            replay(model, _example(model, ctx), state["history"], where=WHERE)
            return Result(model, {}, state=state)
        apply_masks(model, state["masks"])
        return Result(model, {}, hooks=HookSet([mask_hooks(state["masks"])]), state=state)
