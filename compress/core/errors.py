"""The one error type users see.

Every problem caused by input the user controls (a recipe, a file, a target name, a budget)
is raised as an :class:`EdgetierError` that says what is wrong, where, and how to fix it.
The CLI prints it as one paragraph and exits with code 2; Python callers can catch it.
"""

from __future__ import annotations

from export.errors import ExplainedError


class EdgetierError(ExplainedError):
    """A problem with the user's input, explained in one paragraph.

    >>> err = EdgetierError("unknown target 'stm33'", where="recipe.yaml: variants.end.target",
    ...                     fix="run `edgetier targets list` to see the known targets")
    >>> print(err)
    recipe.yaml: variants.end.target: unknown target 'stm33'. Fix: run `edgetier targets list` to see the known targets.
    """


class RecipeError(EdgetierError):
    """A recipe that does not validate (unknown key, wrong type, unknown kind, ...)."""


class TargetError(EdgetierError):
    """An unknown or invalid hardware target, or a model that does not fit one."""


class DataError(EdgetierError):
    """A dataset that cannot be loaded or a factory that does not import."""
