"""The only way a recipe brings in code: an explicit `package.module:function` factory."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from compress.core.errors import EdgetierError


def import_factory(spec: str, *, where: str = "factory", error: type[EdgetierError] = EdgetierError) -> Callable[..., Any]:
    """The callable named by `spec` (`"package.module:function"`).

    >>> import_factory("math:sqrt")(9.0)
    3.0
    >>> import_factory("math.sqrt")
    Traceback (most recent call last):
    ...
    compress.core.errors.EdgetierError: factory: 'math.sqrt' is not of the form 'package.module:function'. Fix: ...
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{spec!r} is not of the form 'package.module:function'", where=where,
                    fix="name the module and the function with a colon, e.g. 'mypkg.models:build'")
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
