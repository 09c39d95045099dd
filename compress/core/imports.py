"""The only way a recipe brings in code: an explicit `package.module:function` factory.

Code in a recipe is opt-in (like `trust_remote_code` in transformers): `check_factory` — what
`edgetier validate` runs — checks the form and that the top-level package is installed without
importing anything, and `compress.run` calls a factory only with `trust_code=True`
(`edgetier run --trust-code`).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from typing import Any

from compress.core.errors import EdgetierError

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_SPEC = re.compile(rf"({_DOTTED}):({_DOTTED})")


def _split(spec: object, *, where: str, error: type[EdgetierError]) -> tuple[str, str]:
    match = _SPEC.fullmatch(spec) if isinstance(spec, str) and len(spec) <= 200 else None
    if match is None:
        shown = repr(spec) if len(repr(spec)) <= 80 else repr(spec)[:77] + "..."
        raise error(f"{shown} is not of the form 'package.module:function'", where=where,
                    fix="name the module and the function with a colon, e.g. 'mypkg.models:build'")
    return match.group(1), match.group(2)


def check_factory(spec: object, *, where: str = "factory", error: type[EdgetierError] = EdgetierError) -> None:
    """Check a factory name without running any of its code: its form, and that its top-level package exists.

    Only the top-level name is looked up: `importlib.util.find_spec("a.b")` would import `a`
    (running its `__init__`), while finding a top-level package only asks the path finders.

    >>> check_factory("os:system")
    >>> check_factory("no_such_pkg_x.models:build")
    Traceback (most recent call last):
    ...
    compress.core.errors.EdgetierError: factory: factory module 'no_such_pkg_x.models' does not import: no installed package 'no_such_pkg_x'. Fix: ...
    """
    module_name, _ = _split(spec, where=where, error=error)
    top = module_name.partition(".")[0]
    try:
        found = top in sys.modules or importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise error(f"factory module {module_name!r} does not import: no installed package {top!r}", where=where,
                    fix="install the package or add its folder to PYTHONPATH, and check the module name")


def import_factory(spec: str, *, where: str = "factory", error: type[EdgetierError] = EdgetierError) -> Callable[..., Any]:
    """The callable named by `spec` (`"package.module:function"`). This imports, so runs, the module.

    >>> import_factory("math:sqrt")(9.0)
    3.0
    >>> import_factory("math.sqrt")
    Traceback (most recent call last):
    ...
    compress.core.errors.EdgetierError: factory: 'math.sqrt' is not of the form 'package.module:function'. Fix: ...
    """
    module_name, attr = _split(spec, where=where, error=error)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import can fail in any way inside user code; report it as one message
        raise error(f"factory module {module_name!r} does not import ({type(exc).__name__}: {exc})", where=where,
                    fix="install the package or add its folder to PYTHONPATH, and check the module name") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"module {module_name!r} has no attribute {attr!r}", where=where,
                        fix="check the function name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{spec!r} is not callable", where=where, fix="point at a function or class")
    return obj
