"""Weight masks for unstructured sparsity: scores → masks, applying them, and the hooks that keep them.

A mask is a bool tensor shaped like one module's `weight` (True = kept), keyed by the module's
name in `model.named_modules()`. Masks are plain tensors so they can live in `Result.state`
(checkpoints load with `weights_only=True`) and be re-attached to a fresh model on resume.
Unstructured, lottery-ticket and SNIP pruning all share this file; they differ only in the
score they rank weights by (|w|, |w| after retraining, |g ⊙ w|).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from compress.core.errors import EdgetierError
from compress.core.selectors import select
from compress.core.technique import Hooks

Scope = Literal["global", "layer"]


def prunable_weights(model: nn.Module, targets: Sequence[str] = (), ignore: Sequence[str] = (), *,
                     where: str = "pruning") -> dict[str, nn.Parameter]:
    """The `weight` of every selected module (default: every Conv and Linear), by module name.

    Only weights of two or more dimensions count (convolutions, linear layers, embeddings):
    a selector like `re:layer1\\..*` also matches normalization layers, whose 1-D scales are
    not connections and stay dense.

    >>> model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    >>> {name: tuple(w.shape) for name, w in prunable_weights(model).items()}
    {'0': (4, 1, 3), '3': (2, 8)}
    """
    chosen = select(model, targets, ignore, where=where)
    weights = {name: m.weight for name, m in chosen.items()
               if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2}
    if not weights:
        raise EdgetierError(f"the selectors leave no module with a `weight` to prune (selected: "
                            f"{', '.join(chosen) or 'nothing'})", where=where,
                            fix="select convolutions or linear layers, e.g. targets: ['type:Conv1d', 'type:Linear']")
    return weights


def masks_from_scores(scores: Mapping[str, torch.Tensor], sparsity: float, *, scope: Scope,
                      previous: Mapping[str, torch.Tensor] | None = None,
                      where: str = "pruning") -> dict[str, torch.Tensor]:
    """Masks that remove the `sparsity` fraction of entries with the lowest scores, ranked over all
    tensors together (`global`) or within each tensor (`layer`).

    Entries pruned in `previous` stay pruned (they rank below everything), so a schedule that
    raises the sparsity never regrows a weight. Exactly `round(sparsity · n)` entries go; ties
    break by position, so the result is deterministic. Removing every entry of one tensor would
    disconnect the network: that is an error naming the layer.

    >>> scores = {"a": torch.tensor([3.0, 1.0, 2.0, 4.0]), "b": torch.tensor([0.5, 5.0])}
    >>> {k: v.tolist() for k, v in masks_from_scores(scores, 0.5, scope="global").items()}
    {'a': [True, False, False, True], 'b': [False, True]}
    >>> {k: v.tolist() for k, v in masks_from_scores(scores, 0.5, scope="layer").items()}
    {'a': [True, False, False, True], 'b': [False, True]}
    """
    ranked = {}
    for name, score in scores.items():
        score = score.detach().float().clone()
        if previous is not None and name in previous:
            score[~previous[name]] = -float("inf")
        ranked[name] = score
    if scope == "global":
        flat = torch.cat([s.flatten() for s in ranked.values()])
        keep = _keep_flags(flat, sparsity)
        masks, offset = {}, 0
        for name, score in ranked.items():
            masks[name] = keep[offset:offset + score.numel()].reshape(score.shape)
            offset += score.numel()
    else:
        masks = {name: _keep_flags(score.flatten(), sparsity).reshape(score.shape) for name, score in ranked.items()}
    for name, mask in masks.items():
        if not bool(mask.any()):
            raise EdgetierError(f"pruning {sparsity:.1%} of the weights ({scope} scope) removes every weight of "
                                f"layer {name!r}, which would disconnect the network", where=where,
                                fix=f"lower the ratio, use scope: layer, or add {name!r} to `ignore`")
    return masks


def _keep_flags(flat: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_prune = round(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if n_prune > 0:
        keep[torch.argsort(flat, stable=True)[:n_prune]] = False
    return keep


def _weight(model: nn.Module, name: str, mask: torch.Tensor) -> torch.Tensor:
    try:
        weight = model.get_submodule(name).weight
    except AttributeError:
        raise EdgetierError(f"a pruning mask refers to layer {name!r}, which the model no longer has",
                            where="pruning masks",
                            fix="apply unstructured pruning to the same architecture it was computed on") from None
    if weight.shape != mask.shape:
        raise EdgetierError(f"the pruning mask of {name!r} has shape {tuple(mask.shape)} but the weight now has "
                            f"{tuple(weight.shape)} (a later stage changed the layer)", where="pruning masks",
                            fix="run structured_prune before unstructured pruning, not after it")
    return weight


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place.

    >>> layer = nn.Linear(2, 1, bias=False)
    >>> apply_masks(layer, {"": torch.tensor([[True, False]])})
    >>> layer.weight.detach()[0, 1].item() == 0  # -0.0 where the random weight was negative
    True
    """
    for name, mask in masks.items():
        weight = _weight(model, name, mask)
        weight.mul_(mask.to(weight.device, weight.dtype))


@torch.no_grad()
def mask_gradients(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the gradients of pruned weights, so that plain SGD never moves them."""
    for name, mask in masks.items():
        weight = _weight(model, name, mask)
        if weight.grad is not None:
            weight.grad.mul_(mask.to(weight.grad.device, weight.grad.dtype))


def mask_hooks(masks: Mapping[str, torch.Tensor]) -> Hooks:
    """Hooks that keep `masks` through training: gradients masked after backward, and weights
    re-masked after each optimizer step (Adam's momentum moves a weight even with a zero grad).

    The hooks read `masks` when called, so updating the tensors in place updates the hooks.
    """
    return Hooks(after_backward=lambda model: mask_gradients(model, masks),
                 after_step=lambda model: apply_masks(model, masks))


def layer_sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float | int]]:
    """Per layer: weights and the fraction pruned (the report's `layers`).

    >>> layer_sparsity({"fc": torch.tensor([True, False, False, False])})
    {'fc': {'weights': 4, 'kept': 1, 'sparsity': 0.75}}
    """
    return {name: {"weights": mask.numel(), "kept": int(mask.sum()),
                   "sparsity": round(1.0 - float(mask.sum()) / max(mask.numel(), 1), 6)}
            for name, mask in masks.items()}


def total_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of all masked weights that are pruned.

    >>> total_sparsity({"a": torch.tensor([True, False]), "b": torch.tensor([False, False])})
    0.75
    """
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0
