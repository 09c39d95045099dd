"""`structured_prune` per kind of transformer layer (`heads`, `mlp`): apply and restore.

The structure comes from `compress.prune.transformer`; the pruning itself runs group by group
through `graph.prune_step` (each group checked by a forward pass), and is recorded as
torch-pruning's history so that `restore` replays it on a fresh unpruned copy — the way a
Hugging Face BERT reloads (its config cannot express fewer heads of the same size).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.measure import count_macs, count_params
from compress.core.selectors import select
from compress.core.technique import Result
from compress.prune.common import require_data, sample_batches
from compress.prune.graph import ROOT_TYPES, history, output_layers, prune_step, replay
from compress.prune.transformer import build_block_pruner, find_attention, sync_heads

if TYPE_CHECKING:
    from compress.prune.structured import StructuredPruneConfig


def _inputs(example: tuple[torch.Tensor, ...]) -> Any:
    return list(example) if len(example) > 1 else example[0]


def prediction(output: Any) -> torch.Tensor:
    """The logits in a model output: the tensor itself, `.logits`, or item 0 of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise EdgetierError(f"taylor importance needs class logits from the model, and it returns a "
                        f"{type(output).__name__} without `logits`", where="structured_prune",
                        fix="for an embedding model use importance: activation (label-free, scores on train inputs) "
                            "or l1 / l2 (magnitude needs no data)")


def apply_blocks(model: nn.Module, example: tuple[torch.Tensor, ...], ctx: Context, *, heads: float | None,
                 mlp: float | None, config: StructuredPruneConfig, where: str) -> Result:
    """Prune `heads` of every attention module's heads and `mlp` of every MLP hidden layer's channels."""
    keep_names = output_layers(model, example)
    if config.targets or config.ignore:  # selectors narrow what may lose outputs; the structure decides the rest
        chosen = select(model, config.targets, config.ignore, default_types=ROOT_TYPES, where=where)
        keep_names += [n for n, m in model.named_modules() if isinstance(m, ROOT_TYPES) and n not in chosen]
    modules = dict(model.named_modules())
    keep = [modules[n] for n in dict.fromkeys(keep_names)]
    attention0 = find_attention(model)
    heads0 = sum(a.heads for a in attention0)
    params0, macs0 = count_params(model), count_macs(model, example)
    grads = _taylor(model, ctx, batches=config.taylor_batches, where=where) if config.importance == "taylor" else None
    activation = config.importance == "activation"
    pruner, blocks = build_block_pruner(model, _inputs(example), heads=heads, mlp=mlp,
                                        importance="l2" if activation else config.importance,
                                        steps=config.steps, keep=keep, where=where)
    if activation:  # scored afresh before every step, on the model as pruned so far
        from compress.prune.activation import ScoreImportance, activation_scores

        pruner.importance = ScoreImportance()
        batches, masks = _calibration(ctx, samples=config.activation_samples, why="importance activation scores "
                                      "heads and channels on train inputs", where=f"{where}.importance")

        def grads() -> None:
            pruner.importance.scores = activation_scores(model, blocks, batches, masks)
    names = {m: n for n, m in model.named_modules()}
    mlp_layers = [names[m] for m in blocks.mlp]
    widths0 = {n: modules[n].out_features for n in mlp_layers}
    reference = copy.deepcopy(model).eval() if config.reconstruct else None
    inputs0 = {n: m.in_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for _ in range(config.steps):
        prune_step(pruner, model, example, where=where, grads=grads, after_group=lambda: sync_heads(model, mlp_layers))
    config_now = sync_heads(model, mlp_layers)
    model.eval()
    refit = None
    if reference is not None:
        narrowed = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.in_features < inputs0[n]]
        refit = _reconstruct(model, reference, narrowed, ctx, samples=config.reconstruct, where=where)
    params1, macs1 = count_params(model), count_macs(model, example)
    report = {
        "heads": heads, "mlp": mlp, "importance": config.importance, "steps": config.steps,
        "heads_kept": [sum(a.heads for a in find_attention(model)), heads0],
        "attention": {names[a.module]: a.heads for a in find_attention(model)},
        "mlp_channels": {n: [widths0[n], modules[n].out_features] for n in mlp_layers},
        "config": config_now, "kept_outputs": keep_names,
        "params": [params0, params1], "macs": [macs0, macs1], "macs_fraction": round(macs1 / macs0, 4),
        "params_fraction": round(params1 / params0, 4),
    }
    if activation:
        report["activation_samples"] = config.activation_samples
    if refit is not None:
        report["reconstruct"] = {"samples": config.reconstruct, "relative_error": refit}
    return Result(model, report, state={"history": history(pruner), "mlp_layers": mlp_layers})


def restore_blocks(model: nn.Module, example: tuple[torch.Tensor, ...], state: dict[str, Any], *,
                   where: str) -> Result:
    """Replay a recorded per-kind pruning on a fresh unpruned copy, then set the head counts."""
    replay(model, example, state["history"], where=where)
    sync_heads(model, list(state["mlp_layers"]))
    return Result(model, {}, state=state)


def _taylor(model: nn.Module, ctx: Context, *, batches: int, where: str):
    data = require_data(ctx, why="taylor importance scores channels by gradients on train batches", where=where)

    def grads() -> None:
        drawn = sample_batches(data.train.x, data.train.y, batches=batches, batch_size=32, seed=ctx.seed)
        model.zero_grad(set_to_none=True)
        was_training = model.training
        model.eval()
        for x, y in drawn:
            F.cross_entropy(prediction(model(x)), y).backward()
        model.train(was_training)

    return grads


def _reconstruct(model: nn.Module, reference: nn.Module, layers: list[str], ctx: Context, *, samples: int,
                 where: str) -> dict[str, list[float]]:
    """Least-squares refit of `layers` on `samples` train rows (`compress.prune.reconstruct`)."""
    from compress.prune.reconstruct import refit_linears

    batches, masks = _calibration(ctx, samples=samples, why="reconstruct refits layers on train inputs",
                                  where=f"{where}.reconstruct")
    return refit_linears(model, reference, layers, batches, masks=masks)


def _calibration(ctx: Context, *, samples: int, why: str,
                 where: str) -> tuple[list[tuple[torch.Tensor, ...]], list[torch.Tensor | None]]:
    """`samples` train rows drawn with the run's seed, in batches of 32, with their attention masks."""
    from compress.core.train import batch_fields

    x = require_data(ctx, why=why, where=where).train.x
    rows = np.random.default_rng(ctx.seed).permutation(len(x))[:samples]
    batches, masks = [], []
    for start in range(0, len(rows), 32):
        idx = torch.from_numpy(np.sort(rows[start:start + 32]))
        fields = batch_fields(x, idx) if x.dtype.names else (torch.from_numpy(x[idx.numpy()]),)
        names = x.dtype.names or ("input",)
        batches.append(fields)
        masks.append(fields[names.index("attention_mask")] if "attention_mask" in names else None)
    return batches, masks
