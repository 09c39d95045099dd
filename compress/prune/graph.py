"""The torch-pruning side of structured pruning: building the pruner, pruning group by group with a
check after each group, and replaying a recorded pruning on a fresh model (resume).

torch-pruning's dependency graph couples every layer that shares a channel dimension (residual
adds, depthwise / grouped convolutions, normalizations, attention heads), so removing a channel
removes it everywhere at once. What it cannot handle it often does not report: a hard-coded
reshape or a custom parameter can make it produce a model that no longer runs. Each group is
therefore pruned on its own and the model run right after, so such a failure is reported with
the layer at fault and the fix (ignore it), not as a shape error deep inside a later forward.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from compress.core.errors import EdgetierError

ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.LSTM)

IMPORTANCE: dict[str, Callable[[], Any]] = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda: tp.importance.MagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.TaylorImportance(),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
}

History = list[list[Any]]  # [module name, prunes output channels?, channel indices], torch-pruning's format


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@torch.no_grad()
def _forward(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Any:
    was_training = model.training
    model.eval()
    try:
        return model(*example_inputs)
    finally:
        model.train(was_training)


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple / list / dict output."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def output_layers(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """The Conv/Linear layers whose outputs are the model's outputs — the classifier, and each early
    exit's classifier when the model returns several logits — whose output channels are the classes
    and must never be pruned. When no output comes straight from such a layer (`fc(x) * 2`), the
    last one to run.

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> output_layers(model, (torch.zeros(1, 4),))
    ['2']
    """
    produced: dict[int, str] = {}
    order: list[str] = []

    def record(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            order.append(name)
            produced.update(dict.fromkeys((id(t) for t in _tensors(output)), name))
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if isinstance(m, ROOT_TYPES)]
    try:
        outputs = _tensors(_forward(model, example_inputs))
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise EdgetierError(f"{type(model).__name__} runs no convolution or linear layer", where="structured_prune",
                            fix="structured pruning removes channels of Conv/Linear layers; use another technique")
    direct = list(dict.fromkeys(produced[id(t)] for t in outputs if id(t) in produced))
    return direct or [order[-1]]


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """`{qkv: num_heads}` for attention modules written with one `qkv` Linear and a `num_heads`
    attribute (as `compress.models.transformer.Attention` and timm's ViT), so that torch-pruning
    shrinks every head alike. `nn.MultiheadAttention` is left out on purpose: given `num_heads`,
    torch-pruning 1.6.1 silently skips it."""
    return {m.qkv: m.num_heads for m in model.modules()
            if not isinstance(m, nn.MultiheadAttention) and isinstance(getattr(m, "num_heads", None), int)
            and isinstance(getattr(m, "qkv", None), nn.Linear)}


def channel_groups(module: nn.Module, heads: dict[nn.Module, int]) -> int:
    """How many equal parts a layer's output channels come in: a grouped convolution's groups
    (not a depthwise one's, whose channels pair one to one with its input), 3 × heads for an
    attention `qkv` (the reshape into q, k, v of every head needs equal parts), else 1."""
    if module in heads:
        return 3 * heads[module]
    groups = getattr(module, "groups", 1)
    return groups if 1 < groups < getattr(module, "out_channels", 0) else 1


def kept_channels(channels: int, ratio: float, multiple: int) -> int:
    """Channels left when `ratio` of `channels` go, rounded to the nearest multiple (0 = none left).

    >>> kept_channels(64, 0.5, 8), kept_channels(64, 0.3, 8), kept_channels(16, 0.9, 8), kept_channels(4, 0.5, 8)
    (32, 48, 0, 0)
    """
    return min(channels, math.floor(channels * (1 - ratio) / multiple + 0.5) * multiple)  # halves round up


def layer_ratios(graph: tp.DependencyGraph, ignored: list[nn.Module], ratio: float, multiple: int | None,
                 heads: dict[nn.Module, int], names: dict[nn.Module, str], *, where: str) -> dict[nn.Module, float]:
    """Per coupled group of layers, the ratio that leaves a channel count that is a multiple of
    `multiple` and of every layer's channel groups, as close to `ratio` as rounding allows.

    torch-pruning's own `round_to` rounds the total channel count but then removes that many
    channels from *each* channel group of a grouped convolution, which removes the whole layer —
    and torch-pruning then silently skips it. Rounding here, per group, avoids that.
    """
    ratios: dict[nn.Module, float] = {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
        outs = [dep.target.module for dep, _ in group
                if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, ROOT_TYPES)]
        if not outs:
            continue
        step = math.lcm(multiple or 1, *(channel_groups(m, heads) for m in outs))
        channels = graph.get_out_channels(outs[0])
        if step > channels:  # narrower than one multiple: cannot be rounded, so it stays as it is
            continue
        kept = kept_channels(channels, ratio, step)
        if kept < 1:
            layers = ", ".join(repr(names.get(m, "?")) for m in outs)
            raise EdgetierError(f"removing {ratio:.0%} of the channels would remove every channel of layer "
                                f"{names.get(outs[0], '?')!r} ({channels} channels, at least {step} must stay"
                                f"{'; coupled with ' + layers if len(outs) > 1 else ''})", where=where,
                                fix=f"lower the ratio, add {names.get(outs[0], '?')!r} to `ignore`, or set a "
                                    "smaller channel_multiple")
        # just below the exact share, so that torch-pruning's int() lands on `kept`, not one below
        share = max(1.0 - kept / channels - 1e-9, 0.0)
        ratios.update(dict.fromkeys(outs, share))
    return ratios


def build_pruner(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, importance: str, ratio: float,
                 steps: int, ignored: Sequence[str], multiple: int | None,
                 where: str) -> tuple[tp.pruner.MetaPruner, list[str]]:
    """A torch-pruning `MetaPruner` removing about `ratio` of the channels of every layer not in
    `ignored` (module names), in `steps` equal steps, kept counts rounded as `layer_ratios` says;
    and the names of the layers that must lose channels."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    heads = attention_heads(model)
    inputs = list(example_inputs) if len(example_inputs) > 1 else example_inputs[0]
    ignored_modules = [modules[name] for name in ignored]
    try:
        with warnings.catch_warnings():
            # torch-pruning warns about parameters outside standard layers (a transformer's position
            # embedding) and prunes their last non-singleton dimension: right for (1, tokens, dim).
            # A wrong guess is caught when scoring or by the forward check after each group.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
            ratios = layer_ratios(graph, ignored_modules, ratio, multiple, heads, names, where=where)
            pruner = tp.pruner.MetaPruner(
                model, inputs, importance=IMPORTANCE[importance](), pruning_ratio=0.0, pruning_ratio_dict=ratios,
                iterative_steps=steps, ignored_layers=ignored_modules, num_heads=heads)
            return pruner, [names[m] for m, share in ratios.items() if share > 0]
    except EdgetierError:
        raise
    except Exception as exc:  # torch-pruning raises anything from tracing; the user needs one sentence
        raise EdgetierError(f"torch-pruning cannot trace {type(model).__name__} with its example inputs "
                            f"({_first_line(exc)})", where=where,
                            fix="make forward() run on the example inputs without data-dependent Python control "
                                "flow, or prune the layers it cannot follow by hand") from None


def prune_step(pruner: tp.pruner.MetaPruner, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *,
               where: str, grads: Callable[[], None] | None = None,
               after_group: Callable[[], Any] | None = None) -> None:
    """One iterative step of `pruner`, one dependency group at a time, running the model after each.

    `grads` (Taylor importance) computes the gradients the scores need just before scoring;
    `after_group` runs after each group is pruned, before the check (attention head counts).
    """
    names = {m: n for n, m in model.named_modules()}
    reference = [tuple(t.shape) for t in _tensors(_forward(model, example_inputs))]
    if grads is not None:
        grads()
    groups = pruner.step(interactive=True)
    while True:
        try:
            group = next(groups)  # scores every group on the first call
        except StopIteration:
            break
        except Exception as exc:  # raised deep inside torch-pruning's scoring: find the group at fault
            name = _failing_group(pruner, names)
            raise EdgetierError(f"torch-pruning cannot score the channels of layer {name!r} ({_first_line(exc)}): "
                                "the dependency graph does not follow how they are used (a parameter outside a "
                                "standard layer, or a fixed-size reshape)", where=where,
                                fix=f"add {name!r} to `ignore`") from None
        root = group[0].dep.target.module
        name = names.get(root, type(root).__name__)
        try:
            group.prune()
            if after_group is not None:
                after_group()
            shapes = [tuple(t.shape) for t in _tensors(_forward(model, example_inputs))]
            if shapes != reference:
                raise RuntimeError(f"the output shapes changed from {reference} to {shapes}")
        except Exception as exc:  # the model is broken by this group: name the layer, do not crash later
            raise EdgetierError(f"removing channels of layer {name!r} breaks the model ({_first_line(exc)}): the "
                                "dependency graph cannot follow how this layer's output is used", where=where,
                                fix=f"add {name!r} to `ignore` (or reshape by -1 rather than by a fixed size in "
                                    "forward)") from None
    model.zero_grad(set_to_none=True)


def _failing_group(pruner: tp.pruner.MetaPruner, names: dict[nn.Module, str]) -> str:
    """The root layer of the first group torch-pruning cannot score."""
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        try:
            pruner.estimate_importance(group)
        except Exception:
            root = group[0].dep.target.module
            return names.get(root, type(root).__name__)
    return "(unknown)"


def history(pruner: tp.pruner.MetaPruner) -> History:
    """The pruning done so far as plain values (saved in `Result.state`, loaded with `weights_only`)."""
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in pruner.pruning_history()]


def replay(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], recorded: History, *, where: str) -> None:
    """Redo a recorded pruning on a fresh copy of the unpruned model, so its saved weights load."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=list(example_inputs) if len(example_inputs) > 1 else example_inputs[0])
        graph.load_pruning_history([list(entry) for entry in recorded])
    except Exception as exc:
        raise EdgetierError(f"the recorded channel pruning does not fit this model ({_first_line(exc)})", where=where,
                            fix="resume with the same model and recipe that produced the checkpoint") from None
