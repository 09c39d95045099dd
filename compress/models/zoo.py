"""The model zoo: one explicit dict of builders, `build`, and the recipe-facing spec helpers."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from compress.core.errors import EdgetierError
from compress.core.imports import import_factory

from .resnet import resnet1d, resnet2d
from .transformer import transformer

ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet1d": resnet1d,
    "resnet2d": resnet2d,
    "transformer": transformer,
}

_SHAPE_ARGS = ("input_shape", "num_classes")


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
               options: Mapping[str, Any] | None = None) -> None:
    """Check a recipe's model without building it: zoo name and parameter names, or that the factory imports.

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
