"""Label-free repair after structured pruning: refit, by least squares, the layers that lost inputs.

Removing attention heads or MLP hidden channels leaves the layers reading them (a transformer
block's attention output projection and its MLP's second Linear) summing fewer terms than they
were trained for. Each of them is linear, so the best weights for its new inputs have a closed
form: on calibration inputs, choose weight and bias so that its outputs on the *pruned* model's
own activations match the *unpruned* model's outputs of the same layer (ridge least squares).
The layers are refit in forward order, so each one also absorbs what the refits before it
changed. No labels, no gradients, a few forward passes per layer — the layer-wise
reconstruction of Kwon et al., "A Fast Post-Training Pruning Framework for Transformers"
(NeurIPS 2022). On all-MiniLM-L6-v2 with 25 % of heads and 50 % of MLP channels pruned it lifts
the mean embedding cosine to the unpruned model from 0.62 to 0.84 on 512 sentences, before any
training (tests/benchmarks/test_your_own_model.py); distillation then starts from there.

`prune_and_refit` also *chooses* what to remove the same way, for channels that one pointwise layer
reads (a 1x1 convolution or a Linear: an inverted-residual block's projection, a classifier): from
the Gram matrix of that layer's inputs on calibration data it drops, one at a time, the input
channel whose removal raises the least-squares error least (the Optimal Brain Surgeon update for a
linear layer, as in He et al., "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV
2017, and Kurtic et al., "ZipLM", NeurIPS 2023), removes those channels and everything that only
produced them with torch-pruning, and gives the layer the least-squares weights for the channels
left. Block by block in forward order, each fit also absorbs the drift of the blocks before it.
With `allocate="cost"` it also chooses how many channels each layer loses, from the same greedy
costs on the unpruned model: one share of the parameters, spread where it costs least.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from compress.core.errors import EdgetierError

__all__ = ["prune_and_refit", "refit_linears"]


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A layer's activations as rows, keeping real tokens only when a [batch, sequence] mask matches."""
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def _capture(model: nn.Module, layer: nn.Linear, parent: nn.Module | None, inputs: Sequence[torch.Tensor], *,
             output: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's input (or output) on `inputs`, and the residual its parent adds to that output."""
    got: list[torch.Tensor] = []
    residual: list[torch.Tensor] = []

    def keep_residual(_m: nn.Module, args: tuple[Any, ...]) -> None:
        # Hugging Face's BertSelfOutput / BertOutput / ViTOutput: forward(hidden_states, input_tensor)
        if len(args) >= 2 and isinstance(args[1], torch.Tensor) and args[1].shape[-1] == layer.out_features:
            residual.append(args[1])

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        got.append(out if output else args[0])
        raise _Stop

    handles = [layer.register_forward_hook(hook)]
    if parent is not None:
        handles.append(parent.register_forward_pre_hook(keep_residual))
    try:
        model(*inputs)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return got[0], (residual[0] if residual else None)


def _parent(modules: dict[str, nn.Module], name: str) -> nn.Module | None:
    return modules.get(name.rsplit(".", 1)[0]) if "." in name else None


@torch.no_grad()
def refit_linears(model: nn.Module, reference: nn.Module, layers: Sequence[str],
                  batches: Sequence[tuple[torch.Tensor, ...]], *, masks: Sequence[torch.Tensor | None] = (),
                  ridge: float = 1e-2) -> dict[str, list[float]]:
    """Refit the Linear layers `layers` of `model` (in forward order) so that their outputs match
    `reference`'s layers of the same names on `batches`; returns each layer's relative error
    (residual norm / target norm) before and after.

    When a layer's parent adds a residual to its output (Hugging Face's `forward(hidden_states,
    input_tensor)` of BertSelfOutput, BertOutput, ViTOutput), the target is the unpruned block's
    sum: the layer also makes up for how far the pruned model's residual stream has drifted
    (measured on all-MiniLM-L6-v2: mean embedding cosine 0.844 after the refit, 0.829 matching the
    layer's output alone).

    `masks[i]` (a [batch, sequence] 0/1 tensor, e.g. the attention mask) keeps padding out of the
    fit. `ridge` adds that share of the mean input energy to the normal equations' diagonal, so
    channels that are nearly constant on the calibration data cannot take huge weights.

    >>> _ = torch.manual_seed(0)
    >>> ref = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    >>> pruned = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 4))  # half the hidden channels
    >>> _ = pruned[0].load_state_dict({"weight": ref[0].weight[:3], "bias": ref[0].bias[:3]})
    >>> _ = pruned[2].load_state_dict({"weight": ref[2].weight[:, :3], "bias": ref[2].bias})
    >>> errors = refit_linears(pruned, ref, ["2"], [(torch.randn(256, 8),)])
    >>> errors["2"][1] < errors["2"][0]
    True
    """
    named, reference_named = dict(model.named_modules()), dict(reference.named_modules())
    was = model.training, reference.training
    model.eval()
    reference.eval()
    errors: dict[str, list[float]] = {}
    try:
        for name in layers:
            layer, target_layer = named[name], reference_named[name]
            if not isinstance(layer, nn.Linear) or not isinstance(target_layer, nn.Linear):
                raise TypeError(f"{name} is not a Linear layer in both models")
            bias = layer.bias is not None  # the bias is one more input, constantly 1
            width = layer.in_features + bias
            xtx = torch.zeros(width, width, dtype=torch.float64)
            xty = torch.zeros(width, layer.out_features, dtype=torch.float64)
            current = layer.weight.T.double()
            if bias:
                current = torch.cat([current, layer.bias[None].double()])
            before, total = 0.0, 0.0
            for i, inputs in enumerate(batches):
                mask = masks[i] if i < len(masks) else None
                x, residual = _capture(model, layer, _parent(named, name), inputs, output=False)
                y, target_residual = _capture(reference, target_layer, _parent(reference_named, name), inputs,
                                              output=True)
                if residual is not None and target_residual is not None and residual.shape == y.shape:
                    y = y + target_residual - residual  # match the unpruned block's sum, not just this layer
                x, y = _rows(x, mask).double(), _rows(y, mask).double()
                if bias:
                    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                xtx += x.T @ x
                xty += x.T @ y
                before += float((x @ current - y).pow(2).sum())
                total += float(y.pow(2).sum())
            system = xtx.clone()
            n_weights = layer.in_features
            system.diagonal()[:n_weights] += ridge * float(xtx.diagonal()[:n_weights].mean())
            solution = torch.linalg.solve(system, xty)
            # the fitted layer's squared error from the normal equations (no second pass over the data)
            fitted = float((solution * (xtx @ solution)).sum() - 2 * (solution * xty).sum()) + total
            layer.weight.copy_(solution[:n_weights].T.to(layer.weight.dtype))
            if bias:
                layer.bias.copy_(solution[n_weights].to(layer.bias.dtype))
            scale = max(total, 1e-30)
            errors[name] = [round((before / scale) ** 0.5, 4), round((max(fitted, 0.0) / scale) ** 0.5, 4)]
    finally:
        model.train(was[0])
        reference.train(was[1])
    return errors


_POINTWISE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _check_pointwise(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.Linear):
        return
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d)) or layer.groups != 1 or \
            any(k != 1 for k in layer.kernel_size) or any(s != 1 for s in layer.stride) or \
            (isinstance(layer.padding, tuple) and any(p != 0 for p in layer.padding)):  # "valid" / "same" pad nothing
        raise EdgetierError(f"layer {name!r} ({type(layer).__name__}) is not a pointwise layer: prune_and_refit "
                            "refits a Linear or a 1x1 convolution (stride 1, no padding, groups 1) from the "
                            "channels it reads", where="prune_and_refit(layers=...)",
                            fix="name the layer that reads the channels to prune, e.g. a block's projection")


def _in_width(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """[N, C, *spatial] (or [..., C] for a Linear's input) as rows of C."""
    return x.movedim(1, -1).reshape(-1, x.shape[1]) if x.dim() > 2 else x.reshape(-1, x.shape[-1])


class _Tap:
    """Forward hooks that keep a layer's input, its norm's output and a target module's output."""

    def __init__(self, model: nn.Module, layer: nn.Module, norm: nn.Module | None, target: nn.Module | None) -> None:
        self.model, self.got = model, {}
        self.handles = [layer.register_forward_pre_hook(lambda _m, a: self.got.__setitem__("input", a[0])),
                        layer.register_forward_hook(lambda _m, _a, o: self.got.__setitem__("output", o))]
        if norm is not None:
            self.handles.append(norm.register_forward_hook(lambda _m, _a, o: self.got.__setitem__("norm", o)))
        self.handles.append((target or layer).register_forward_hook(self._stop))

    def _stop(self, _m: nn.Module, _a: Any, out: torch.Tensor) -> None:
        self.got["target"] = out
        raise _Stop

    def __call__(self, inputs: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        self.got = {}
        try:
            self.model(*inputs, **(kwargs or {}))
        except _Stop:
            pass
        return self.got

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _chain_calls(reference: nn.Module, blocks: Sequence[str],
                 inputs: tuple[torch.Tensor, ...]) -> list[tuple[tuple[Any, ...], dict[str, Any]]] | None:
    """When `blocks` run once each, in this order, each on the previous one's output (its other
    arguments no tensors), the other arguments each is called with; otherwise None. Then a block's
    input on a batch can be cached and the block run alone on it: a layer's fit costs ~3 block passes
    instead of running both models up to it (16 blocks: ~17 model passes each)."""
    named = dict(reference.named_modules())
    seen: list[tuple[nn.Module, tuple[Any, ...], dict[str, Any], Any]] = []
    handles = [named[name].register_forward_hook(lambda m, a, kw, out: seen.append((m, a, kw, out)), with_kwargs=True)
               for name in blocks]
    try:
        reference(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    if [m for m, *_ in seen] != [named[n] for n in blocks]:
        return None
    calls = []
    for i, (_m, args, kwargs, out) in enumerate(seen):
        if not isinstance(out, torch.Tensor) or not args or (i and args[0] is not seen[i - 1][3]) or \
                any(isinstance(v, torch.Tensor) for v in (*args[1:], *kwargs.values())):
            return None
        calls.append((args[1:], kwargs))
    return calls


def _run_to(model: nn.Module, module: nn.Module, inputs: tuple[torch.Tensor, ...], *, output: bool) -> torch.Tensor:
    """`module`'s first input (or its output) when `model` runs on `inputs`; the rest is not run."""
    got: list[torch.Tensor] = []

    def stop(_m: nn.Module, args: tuple[Any, ...], out: Any = None) -> None:
        got.append(out if output else args[0])
        raise _Stop

    handle = module.register_forward_hook(stop) if output else module.register_forward_pre_hook(stop)
    try:
        model(*inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def _norm_after(model: nn.Module, layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str | None:
    """The name of the BatchNorm that reads `layer`'s output directly, if one does."""
    out: list[torch.Tensor] = []
    found: list[str] = []
    handles = [layer.register_forward_hook(lambda _m, _a, o: out.append(o))]
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(
                lambda _m, a, n=name: found.append(n) if out and a[0] is out[-1] else None))
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _greedy_drop(gram: torch.Tensor, cross: torch.Tensor, drop: int, weight: torch.Tensor,
                 costs: list[float] | None = None) -> torch.Tensor:
    """Indices of the `drop` input columns (never the last, the constant) whose removal, one at a time,
    raises the weighted least-squares error least: the OBS update on the inverse Gram matrix. Each
    step's rise of the error is appended to `costs` when given."""
    k = gram.shape[0] - 1
    inverse = torch.linalg.inv(gram)
    solution = inverse @ cross
    dropped: list[int] = []
    for _ in range(drop):
        cost = (solution[:k].pow(2) * weight).sum(1) / inverse.diagonal()[:k].clamp_min(1e-30)
        cost[dropped] = float("inf")
        j = int(cost.argmin())
        if costs is not None:
            costs.append(float(cost[j]))
        column = inverse[:, j].clone()
        solution -= torch.outer(column, solution[j]) / column[j]
        inverse -= torch.outer(column, column) / column[j]
        inverse[j], inverse[:, j], solution[j] = 0.0, 0.0, 0.0
        dropped.append(j)
    return torch.tensor(sorted(dropped), dtype=torch.long)


def _fit_error(solution: torch.Tensor, cols: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor,
               energy: torch.Tensor, weight: torch.Tensor) -> float:
    """Relative weighted residual of `solution` on columns `cols`, from the normal equations."""
    squared = (solution * (gram[cols][:, cols] @ solution)).sum(0) - 2 * (solution * cross[cols]).sum(0) + energy
    total = (energy * weight).sum().clamp_min(1e-30)
    return round(float((squared.clamp_min(0) * weight).sum() / total) ** 0.5, 4)


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv1d | nn.Conv2d) and module.groups == module.in_channels > 1


def _check_group(name: str, layer: nn.Module, group: Any, names: dict[int, str]) -> None:
    """The channels must be made by one layer and read by `layer` alone (depthwise convolutions and
    norms in between): another reader would be left with the wrong inputs, and channels that several
    layers add up (a residual stream) or that come from the model's input cannot go."""
    producers = [names.get(id(dep.target.module), "?") for dep, _idxs in group if getattr(dep.handler, "__name__", "") == "prune_out_channels"
                 and isinstance(dep.target.module, _POINTWISE) and not _depthwise(dep.target.module)]
    where, fix = "prune_and_refit(layers=...)", "name layers whose inputs one layer makes and no other layer reads " \
                                                "(inside a block, not the residual stream)"
    if not producers:
        raise EdgetierError(f"no layer produces the input channels of {name!r} (they come from the model's input, "
                            "or through an operation torch-pruning cannot shrink)", where=where, fix=fix)
    if len(producers) > 1:
        raise EdgetierError(f"the input channels of {name!r} are the sum or concatenation of several layers' outputs "
                            f"({', '.join(producers)}), a residual stream", where=where, fix=fix)
    for dep, _idxs in group:
        module = dep.target.module
        if module is layer or getattr(dep.handler, "__name__", "") != "prune_in_channels" or _depthwise(module):
            continue
        raise EdgetierError(f"the input channels of {name!r} are also read by {type(module).__name__} "
                            f"{names.get(id(module), '?')!r}, which a refit of {name!r} cannot make up for", where=where, fix=fix)


def _prune_fn(layer: nn.Module) -> Any:
    import torch_pruning as tp

    return tp.prune_linear_in_channels if isinstance(layer, nn.Linear) else tp.prune_conv_in_channels


def _channel_params(model: nn.Module, layers: Sequence[str], example_inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """How many parameters one input channel of each layer costs: everything torch-pruning removes
    with it (the layer's column, the depthwise filter, norms, the expansion's row), counted by
    removing one channel of each layer from a copy. Each layer's group is checked on the way."""
    import torch_pruning as tp

    scratch = copy.deepcopy(model)
    with torch.enable_grad():  # torch-pruning traces the graph with autograd
        graph = tp.DependencyGraph().build_dependency(scratch, example_inputs=example_inputs)
    named = dict(scratch.named_modules())
    names = {id(m): n for n, m in named.items()}
    count = lambda: sum(p.numel() for p in scratch.parameters())  # noqa: E731
    params: dict[str, int] = {}
    for name in layers:
        layer = named[name]
        group = graph.get_pruning_group(layer, _prune_fn(layer), idxs=[0])
        _check_group(name, layer, group, names)
        before = count()
        group.prune()
        params[name] = before - count()
    return params


def _cost_curves(reference: nn.Module, layers: Sequence[str], batches: Sequence[tuple[torch.Tensor, ...]],
                 norms: Mapping[str, str | None], targets: Mapping[str, str], ridge: float,
                 most: Mapping[str, int]) -> dict[str, list[float]]:
    """For each layer of the unpruned `reference`, the rise of its target's squared error as the
    greedy OBS order removes its input channels one by one (up to `most[layer]`), over the target's
    energy about its mean: one forward pass per batch for all layers at once."""
    named = dict(reference.named_modules())
    grams: dict[str, torch.Tensor] = {}
    moments: dict[str, list[torch.Tensor]] = {}

    def gram_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = _channels_last(args[0]).double()
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            grams[name] = grams.get(name, 0) + x.T @ x
        return hook

    def energy_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, out: torch.Tensor) -> None:
            y = _channels_last(out).double()
            got = [y.sum(0), y.pow(2).sum(0), torch.tensor(float(len(y)), dtype=torch.float64)]
            moments[name] = [a + b for a, b in zip(moments[name], got, strict=True)] if name in moments else got
        return hook

    handles = []
    for name in layers:
        handles.append(named[name].register_forward_pre_hook(gram_hook(name)))
        handles.append(named[targets[name]].register_forward_hook(energy_hook(name)))
    try:
        for inputs in batches:
            reference(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    curves: dict[str, list[float]] = {}
    for name in layers:
        layer, gram = named[name], grams[name]
        k = gram.shape[0] - 1
        current = layer.weight.reshape(layer.weight.shape[0], -1).T.double()  # the layer's own output: its weights
        bias = layer.bias.double() if layer.bias is not None else torch.zeros(current.shape[1], dtype=torch.float64)
        cross = gram @ torch.cat([current, bias[None]])
        norm = named[norms[name]] if norms[name] else None
        weight = ((norm.weight / (norm.running_var + norm.eps).sqrt()).double().pow(2) if norm is not None
                  else torch.ones(current.shape[1], dtype=torch.float64))
        system = gram.clone()
        system.diagonal()[:k] += ridge * float(gram.diagonal()[:k].mean())
        total, squares, n = moments[name]
        spread = float((squares - total.pow(2) / n).sum().clamp_min(1e-30))
        costs: list[float] = []
        _greedy_drop(system, cross, most[name], weight, costs)
        curves[name] = [c / spread for c in costs]
    return curves


def _allocate(ratio: float, channels: Mapping[str, int], params: Mapping[str, int],
              curves: Mapping[str, list[float]]) -> dict[str, int]:
    """How many channels each layer loses so that `ratio` of the parameters the layers' channels hold
    go, cheapest relative error per parameter first (each layer's curve made non-decreasing, so
    that a layer's channels go in its greedy order)."""
    items = []
    for name, curve in curves.items():
        worst = 0.0
        for j, cost in enumerate(curve):
            worst = max(worst, cost)
            items.append((worst / params[name], j, name))
    items.sort(key=lambda item: item[0])  # stable: a layer's equal costs stay in order
    budget = ratio * sum(channels[n] * params[n] for n in channels)
    drops, used = dict.fromkeys(channels, 0), 0
    for _value, j, name in items:
        if used >= budget:
            break
        if j == drops[name]:
            drops[name] += 1
            used += params[name]
    if used < budget:
        raise EdgetierError(f"cannot remove {ratio:.0%} of the layers' channel parameters with at most max_ratio of "
                            "each layer's channels", where="prune_and_refit(ratio / max_ratio)",
                            fix="lower ratio or raise max_ratio")
    return drops


@torch.no_grad()
def prune_and_refit(model: nn.Module, reference: nn.Module, layers: Sequence[str],
                    batches: Sequence[tuple[torch.Tensor, ...]], *, ratio: float | Mapping[str, float],
                    example_inputs: tuple[torch.Tensor, ...], match: Mapping[str, str] | None = None,
                    ridge: float = 1e-3, multiple: int | None = None, allocate: str = "uniform",
                    max_ratio: float = 0.6,
                    log: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Remove `ratio` of the input channels of each pointwise layer in `layers` (forward order) from
    `model`, chosen and refit so that the layer's output matches unpruned `reference`'s on `batches`
    (unlabeled inputs); returns per layer the channel counts and relative errors. `ratio` may be a
    mapping from layer to ratio; 0 refits a layer without removing anything (e.g. an expansion that
    reads a drifted residual stream, refit before its block's projection is pruned).

    The channels go with everything that only produced them (the depthwise convolution, norms and
    expansion before a projection), removed by torch-pruning; a layer whose inputs another layer
    also reads (a residual stream) is refused. When a BatchNorm reads the layer's output, the fit is
    made through it (its running mean takes the new bias). `match[layer]` names a module whose
    output is the target instead — e.g. the block, so that a residual block's sum matches the
    unpruned one and the projection also makes up for the drift of the residual stream; that
    module's output must be the layer's (or its norm's) output plus terms that do not depend on it.
    `allocate="cost"` spreads the cut instead: `ratio` is then the share of the parameters the layers'
    channels hold (each channel counted with everything torch-pruning removes with it) to remove, and
    the channels go where the least-squares error of the layer's target, relative to the target's
    spread, rises least per parameter (from the greedy order on the unpruned model, one extra forward
    pass), at most `max_ratio` of any layer's channels. On EfficientNet-Lite0 at 30 % this cuts the
    late, wide blocks most and keeps far more of the model's answers than 30 % of every block (see
    tests/benchmarks/test_ptq.py), but saves fewer MACs, since those blocks run at 7x7.
    When every layer has a `match` block and those blocks feed each other in a chain, each block's
    input is cached for both models and a layer's fit runs its block alone (16 blocks: ~3 block
    passes per layer instead of both models up to the layer); otherwise both models run from their
    inputs for every layer, with the same result.
    `multiple` rounds each pruned layer's kept channels to the nearest multiple of it (at least one
    multiple): onnxruntime's convolutions run much slower at odd channel counts (EfficientNet-Lite0
    with 30 % of its hidden channels sliced, batch 1, one thread: 15.8 ms at the exact counts, 7.3 ms
    at multiples of 8, 9.9 ms unpruned). `ridge` adds that share of the mean input energy to the Gram
    matrix's diagonal. Errors are the fit's residual over the target's norm, on `batches`:
    `error_kept_all` with every channel refit, `error` after the removal. A layer that cannot be
    pruned this way is refused before its calibration pass.

    >>> import copy
    >>> _ = torch.manual_seed(0)
    >>> ref = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    >>> model = copy.deepcopy(ref)
    >>> report = prune_and_refit(model, ref, ["2"], [(torch.randn(256, 8),)], ratio=0.5,
    ...                          example_inputs=(torch.randn(1, 8),))
    >>> model[0].out_features, model[2].in_features, report["2"]["channels"]
    (3, 3, [6, 3])
    """
    import torch_pruning as tp

    if allocate not in ("uniform", "cost"):
        raise EdgetierError(f"allocate must be 'uniform' or 'cost', got {allocate!r}",
                            where="prune_and_refit(allocate=...)",
                            fix="'uniform': each layer loses `ratio` of its channels; 'cost': `ratio` of their "
                                "parameters go where the least-squares error rises least")
    if allocate == "cost" and (isinstance(ratio, Mapping) or not 0.0 < ratio <= max_ratio < 1.0):
        raise EdgetierError(f"allocate='cost' spreads one ratio over the layers: it needs 0 < ratio <= max_ratio < 1, "
                            f"got ratio={ratio}, max_ratio={max_ratio}", where="prune_and_refit(ratio / max_ratio)",
                            fix="give one share of the layers' channel parameters to remove, e.g. ratio=0.3")
    ratios = dict(ratio) if isinstance(ratio, Mapping) else {name: ratio for name in layers}
    bad = {n: r for n, r in ratios.items() if not 0.0 <= r < 1.0 or n not in layers}
    if bad or set(ratios) != set(layers):
        raise EdgetierError(f"ratio must be in [0, 1) for each of the layers, got {bad or ratio}",
                            where="prune_and_refit(ratio=...)",
                            fix="give the share of each layer's input channels to remove, e.g. 0.3 (0: refit only)")
    if multiple is not None and multiple < 1:
        raise EdgetierError(f"multiple must be a positive channel count, got {multiple}",
                            where="prune_and_refit(multiple=...)", fix="use e.g. 8 or 16, or leave it out")
    match = dict(match or {})
    named_reference = dict(reference.named_modules())
    unknown = [n for n in [*layers, *match.values()] if n not in dict(model.named_modules()) or n not in named_reference]
    if unknown:
        raise EdgetierError(f"no module named {', '.join(map(repr, unknown))} in both models",
                            where="prune_and_refit(layers / match)", fix="use names from model.named_modules()")
    was = {module: module.training for module in (*model.modules(), *reference.modules())}
    model.eval()
    reference.eval()
    report: dict[str, dict[str, Any]] = {}
    try:
        if allocate == "cost":
            named = dict(model.named_modules())
            for name in layers:
                _check_pointwise(name, named[name])
            params = _channel_params(model, layers, example_inputs)
            norms = {name: _norm_after(reference, named_reference[name], batches[0]) for name in layers}
            channels = {name: _in_width(named[name]) for name in layers}
            curves = _cost_curves(reference, layers, batches, norms,
                                  {name: match.get(name, norms[name] or name) for name in layers}, ridge,
                                  {name: int(max_ratio * channels[name]) for name in layers})
            drops = _allocate(ratio, channels, params, curves)
            ratios = {name: drops[name] / channels[name] for name in layers}
            if log is not None:
                log("allocate", {"channels_removed": drops, "params_per_channel": params})
        blocks = [match.get(name) for name in layers]
        calls = _chain_calls(reference, blocks, batches[0]) if all(blocks) and len(set(blocks)) == len(blocks) else None
        if calls is not None:  # each block's input, cached for both models
            named = dict(model.named_modules())
            student_in = [_run_to(model, named[blocks[0]], inputs, output=False) for inputs in batches]
            teacher_in = [_run_to(reference, named_reference[blocks[0]], inputs, output=False) for inputs in batches]
        for index, name in enumerate(layers):
            named = dict(model.named_modules())
            layer = named[name]
            _check_pointwise(name, layer)
            norm_name = _norm_after(model, layer, batches[0])
            norm = named[norm_name] if norm_name else None
            target_name = match.get(name, norm_name or name)
            prune_fn = _prune_fn(layer)
            graph = None
            if ratios[name] > 0:  # the channels' dependency group, checked before the calibration pass
                with torch.enable_grad():  # torch-pruning traces the graph with autograd
                    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
                _check_group(name, layer, graph.get_pruning_group(layer, prune_fn, idxs=[0]),
                             {id(m): n for n, m in model.named_modules()})
            cached = calls is not None and {id(layer), id(norm)} <= {id(m) for m in [*named[target_name].modules(), None]}
            if cached:  # the block alone, on its cached inputs
                block, (extra, kwargs) = named[target_name], calls[index]
                student = _Tap(block, layer, norm, block)
                teacher_out = [named_reference[target_name](x, *extra, **kwargs) for x in teacher_in]
                pairs = ((student((x, *extra), kwargs), want) for x, want in zip(student_in, teacher_out, strict=True))
            else:
                student = _Tap(model, layer, norm, named[target_name] if target_name != name else None)
                teacher = _Tap(reference, named_reference[name], None,
                               named_reference[target_name] if target_name != name else None)
                pairs = ((student(inputs), teacher(inputs)["target"]) for inputs in batches)
            k = _in_width(layer)
            outs = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            gram = torch.zeros(k + 1, k + 1, dtype=torch.float64)
            cross = torch.zeros(k + 1, outs, dtype=torch.float64)
            energy = torch.zeros(outs, dtype=torch.float64)
            if norm is not None:
                scale = (norm.running_var + norm.eps).sqrt() / norm.weight
                shift = norm.bias
            try:
                for got, want in pairs:
                    if target_name not in (name, norm_name):  # the module adds the rest: keep the student's rest
                        mine = got["norm"] if norm is not None else got["output"]
                        if mine.shape != want.shape:
                            raise EdgetierError(f"{target_name!r}'s output is not {name!r}'s "
                                                f"{'norm ' if norm is not None else ''}output plus other terms",
                                                where=f"prune_and_refit(match[{name!r}])",
                                                fix="match the block that adds the layer's output to its input")
                        want = want - (got["target"] - mine)
                    if norm is not None:  # the layer output that gives `want` after the norm
                        view = (1, -1) + (1,) * (want.dim() - 2)
                        want = (want - shift.view(view)) * scale.view(view) + norm.running_mean.view(view)
                    x = _channels_last(got["input"]).double()
                    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                    y = _channels_last(want).double()
                    gram += x.T @ x
                    cross += x.T @ y
                    energy += y.pow(2).sum(0)
            finally:
                student.close()
                if not cached:
                    teacher.close()
            weight = (1.0 / scale).double().pow(2) if norm is not None else torch.ones(outs, dtype=torch.float64)
            system = gram.clone()
            system.diagonal()[:k] += ridge * float(gram.diagonal()[:k].mean())
            keep = k - int(round(ratios[name] * k))
            if multiple and keep < k:
                keep = min(k, max(multiple, int(round(keep / multiple)) * multiple))
            drop = min(k - keep, k - 1)
            dropped = _greedy_drop(system, cross, drop, weight).tolist()
            kept = torch.tensor(sorted(set(range(k + 1)) - set(dropped)))  # with the constant, column k
            solution = torch.linalg.solve(system[kept][:, kept], cross[kept])
            full = torch.linalg.solve(system, cross)
            fit = (gram, cross, energy, weight)
            entry = {"channels": [k, k - len(dropped)], "error_kept_all": _fit_error(full, torch.arange(k + 1), *fit),
                     "error": _fit_error(solution, kept, *fit), "norm": norm_name, "target": target_name,
                     "removed": [int(i) for i in dropped]}
            touched: set[int] = set()
            if dropped and graph is not None:
                group = graph.get_pruning_group(layer, prune_fn, idxs=dropped)
                touched = {id(dep.target.module) for dep, _idxs in group} & {id(m) for m in model.modules()}
                group.prune()
            weights = solution[:-1].T.to(layer.weight.dtype)
            layer.weight.data = weights.reshape(weights.shape + (1,) * (layer.weight.dim() - 2)).contiguous()
            bias = solution[-1].to(layer.weight.dtype)
            if layer.bias is not None:
                layer.bias.data = bias.clone()
            elif norm is not None:
                norm.running_mean.sub_(bias)
            else:
                layer.bias = nn.Parameter(bias.clone())
                entry["bias_added"] = True
            if calls is not None:  # the next block's inputs
                if not cached:
                    calls = None
                elif touched <= {id(m) for m in block.modules()}:
                    student_in = [block(x, *extra, **kwargs) for x in student_in]
                    teacher_in = teacher_out
                else:  # something before the block lost channels too (e.g. the stem, for the first block)
                    student_in = [_run_to(model, block, inputs, output=True) for inputs in batches]
                    teacher_in = teacher_out
            report[name] = entry
            if log is not None:
                log(name, entry)
    finally:
        for module, training in was.items():  # as they were, module by module
            module.training = training
    return report

