"""One selector grammar for every technique.

A selector is one of
- an exact module name as in `model.named_modules()` (`layer1.0.conv1`),
- `re:<regex>`, matched against the full module name (`re:layer[12]\\..*conv.*`),
- `type:<Class>`, matching modules whose class, or a base class, has that name (`type:Conv1d`).

`ignore` wins over `targets`. A selector that matches nothing is an error that names it:
a typo must never silently turn a technique into a no-op.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from torch import nn

from compress.core.errors import EdgetierError

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _matcher(selector: str, *, where: str):
    if selector.startswith("re:"):
        try:
            pattern = re.compile(selector[3:])
        except re.error as exc:
            raise EdgetierError(f"selector {selector!r} is not a valid regular expression ({exc})", where=where,
                                fix="write a Python regular expression after `re:`") from None
        return lambda name, module: pattern.fullmatch(name) is not None
    if selector.startswith("type:"):
        cls_name = selector[5:]
        return lambda name, module: any(c.__name__ == cls_name for c in type(module).__mro__)
    return lambda name, module: name == selector


def matches(model: nn.Module, selector: str, *, where: str = "selector") -> list[str]:
    """Names of the modules of `model` that `selector` matches (the root module is never matched).

    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> matches(model, "type:Linear"), matches(model, "re:[02]"), matches(model, "1")
    (['0', '2'], ['0', '2'], ['1'])
    """
    match = _matcher(selector, where=where)
    return [name for name, module in model.named_modules() if name and match(name, module)]


def select(model: nn.Module, targets: Sequence[str] = (), ignore: Sequence[str] = (), *,
           default_types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
           where: str = "selectors") -> dict[str, nn.Module]:
    """The modules a technique acts on: `targets` (or every module of `default_types`) minus `ignore`.

    >>> model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    >>> list(select(model))
    ['0', '3']
    >>> list(select(model, ignore=["type:Linear"]))
    ['0']
    >>> select(model, ["conv9"])
    Traceback (most recent call last):
    ...
    compress.core.errors.EdgetierError: selectors: selector 'conv9' matches no module of Sequential. Fix: ...
    """
    names = [name for name, _ in model.named_modules() if name]
    chosen: dict[str, None] = {}
    if targets:
        for selector in targets:
            found = matches(model, selector, where=where)
            if not found:
                raise _no_match(model, selector, names, where)
            chosen.update(dict.fromkeys(found))
    else:
        chosen.update(dict.fromkeys(n for n, m in model.named_modules() if n and isinstance(m, default_types)))
    for selector in ignore:
        found = matches(model, selector, where=where)
        if not found:
            raise _no_match(model, selector, names, where)
        for name in found:
            chosen.pop(name, None)
    modules = dict(model.named_modules())
    return {name: modules[name] for name in chosen}


def _no_match(model: nn.Module, selector: str, names: list[str], where: str) -> EdgetierError:
    close = difflib.get_close_matches(selector.removeprefix("re:").removeprefix("type:"), names, n=3)
    hint = f"close names: {', '.join(close)}" if close else f"module names look like: {', '.join(names[:5])}"
    return EdgetierError(f"selector {selector!r} matches no module of {type(model).__name__}", where=where,
                         fix=f"use an exact module name, re:<regex> or type:<Class> ({hint})")
