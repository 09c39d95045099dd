"""The model zoo: one explicit dict of builders, `build`, and the recipe-facing spec helpers."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from compress.core.errors import EdgetierError
from compress.core.imports import check_factory, import_factory

from .resnet import resnet1d, resnet2d
from .transformer import transformer

ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet1d": resnet1d,
    "resnet2d": resnet2d,
    "transformer": transformer,
}

_SHAPE_ARGS = ("input_shape", "num_classes")

# Sane ranges of the zoo models' parameters (name -> (type, low, high)); `blocks` is per stage.
# Far beyond what fits any target, far below what would exhaust memory while building.
RANGES: dict[str, tuple[type, float, float]] = {
    "width": (int, 1, 4096), "dim": (int, 1, 4096), "heads": (int, 1, 64), "kernel_size": (int, 1, 63),
    "growth": (int, 1, 8), "mlp_ratio": (float, 0.25, 16), "patch": (int, 1, 64), "blocks": (int, 0, 16),
}


def _check_values(zoo: str, options: Mapping[str, Any]) -> None:
    for name, value in options.items():
        if name not in RANGES or (name == "patch" and value is None):
            continue
        kind, low, high = RANGES[name]
        items = value if name == "blocks" and isinstance(value, (list, tuple)) else [value]
        ok = name != "blocks" or (isinstance(value, (list, tuple)) and len(value) == 3)
        for item in items:
            numeric = isinstance(item, int) or (kind is float and isinstance(item, float))
            ok = ok and not isinstance(item, bool) and numeric and low <= item <= high
        if not ok:
            text = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            shape = "three integers" if name == "blocks" else ("an integer" if kind is int else "a number")
            raise EdgetierError(f"{name} is {text}", where=f"model {zoo!r}",
                                fix=f"give {name} as {shape} from {low:g} to {high:g}")


def _parameters(builder: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(builder).parameters.items() if n not in _SHAPE_ARGS}


def check_zoo(zoo: str, options: Mapping[str, Any]) -> Callable[..., nn.Module]:
    """The builder for ``zoo`` after checking the name and the option names (not their values).

    >>> check_zoo("resnet1d", {"width": 32}).__name__
    'resnet1d'
    >>> check_zoo("resnet1d", {"depth": 3})
    Traceback (most recent call last):
    ...
    compress.core.errors.EdgetierError: model 'resnet1d': unknown parameter(s) depth. Fix: use only: width=64, blocks=(1, 1, 1), kernel_size=5, growth=1.
    """
    if zoo not in ZOO:
        raise EdgetierError(f"unknown zoo model {zoo!r}", where="model",
                            fix=f"use one of: {', '.join(ZOO)}, or bring your own with factory: 'pkg.module:function'")
    builder = ZOO[zoo]
    known = _parameters(builder)
    unknown = sorted(set(options) - set(known))
    if unknown:
        listing = ", ".join(f"{n}={p.default!r}" for n, p in known.items())
        raise EdgetierError(f"unknown parameter(s) {', '.join(unknown)}", where=f"model {zoo!r}",
                            fix=f"use only: {listing}")
    _check_values(zoo, options)
    return builder


def build(zoo: str, *, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build reference model ``zoo`` for inputs of ``input_shape`` (per sample) and ``num_classes``.

    Initialization draws only from torch's global RNG, so ``torch.manual_seed`` fixes it.

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=8)
    >>> tuple(model(*model.example_inputs(batch=4)).shape)
    (4, 10)
    """
    builder = check_zoo(zoo, kwargs)
    return builder(input_shape=input_shape, num_classes=num_classes, **kwargs)


def check_spec(*, zoo: str | None = None, factory: str | None = None,
               options: Mapping[str, Any] | None = None, imports: bool = True) -> None:
    """Check a recipe's model without building it: zoo name and parameter names, or that the factory imports.

    With `imports=False` (what recipe validation does) the factory is checked without importing
    it — no code of the user's runs — so its parameter names are checked only when it is built.

    >>> check_spec(zoo="transformer", options={"dim": 32})
    >>> check_spec(factory="compress.models:build", options={})
    """
    options = dict(options or {})
    if (zoo is None) == (factory is None):
        raise EdgetierError("the model needs exactly one of zoo or factory", where="model",
                            fix="write `zoo: resnet1d` (a reference model) or `factory: package.module:function`")
    if zoo is not None:
        check_zoo(zoo, options)
        return
    if not imports:
        check_factory(factory, where=f"model factory {factory!r}")
        return
    function = import_factory(str(factory), where=f"model factory {factory!r}")
    _factory_arguments(function, str(factory), options, input_shape=None, num_classes=None)


def build_from_spec(*, zoo: str | None = None, factory: str | None = None,
                    options: Mapping[str, Any] | None = None, input_shape: tuple[int, ...],
                    num_classes: int) -> nn.Module:
    """Build a zoo model, or call a user factory, for a recipe's ``model`` section.

    A factory gets the options as keyword arguments, plus ``input_shape`` and ``num_classes`` if
    it declares parameters of those names; it must return an ``nn.Module``.

    >>> model = build_from_spec(zoo="resnet1d", options={"width": 8}, input_shape=(1, 40), num_classes=10)
    >>> type(model).__name__
    'ResNet'
    """
    check_spec(zoo=zoo, factory=factory, options=options)
    options = dict(options or {})
    if zoo is not None:
        return build(zoo, input_shape=input_shape, num_classes=num_classes, **options)
    function = import_factory(str(factory), where=f"model factory {factory!r}")
    arguments = _factory_arguments(function, str(factory), options, input_shape=input_shape,
                                   num_classes=num_classes)
    model = function(**arguments)
    if not isinstance(model, nn.Module):
        raise EdgetierError(f"the factory returned a {type(model).__name__}, not a torch.nn.Module",
                            where=f"model factory {factory!r}", fix="return the model instance from the factory")
    return model


def _factory_arguments(function: Callable[..., Any], spec: str, options: dict[str, Any], *,
                       input_shape: tuple[int, ...] | None, num_classes: int | None) -> dict[str, Any]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # some builtins have no signature; let the call decide
        return options
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(options) - set(parameters))
    if unknown and not takes_any:
        raise EdgetierError(f"the factory takes no parameter(s) {', '.join(unknown)}",
                            where=f"model factory {spec!r}",
                            fix=f"use only: {', '.join(n for n in parameters if n not in _SHAPE_ARGS) or '(none)'}")
    arguments = dict(options)
    for name, value in (("input_shape", input_shape), ("num_classes", num_classes)):
        if name in parameters and value is not None:
            arguments[name] = value
    return arguments
